"""A teacher the pipeline trained itself (``mct teacher train``): an EDMPrecond around
a :class:`~mct.nets.unet.SmallUNet`, stored as a plain ``torch.save`` dict that
``torch.load(weights_only=True)`` opens (no pickled code).

Format ``mct-teacher-v1``::

    {"format": "mct-teacher-v1", "arch": SmallUNet.arch(), "sigma_data": float,
     "ema": state_dict, "net": state_dict, "iteration": int, "meta": {...}}

:func:`load_trained_teacher` rebuilds the network from ``arch`` and loads the weights
strictly. A missing file, a truncated or foreign file, another format, an ``arch``
that differs from what the caller expects, or weights that do not fit the stored
``arch`` are each one :class:`~mct.errors.CheckpointError` naming the file."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from ..checkpoint import load_state_strict, read_checkpoint
from ..diffusion.edm import EDMPrecond
from ..errors import CheckpointError, ConfigError
from ..nets.unet import SmallUNet, unet_from_arch

TEACHER_FORMAT = "mct-teacher-v1"


def teacher_checkpoint(net: EDMPrecond, ema: EDMPrecond, iteration: int, meta: Optional[dict] = None) -> dict:
    """The ``mct-teacher-v1`` dict for an EDMPrecond(SmallUNet) and its EMA (what the loader reads)."""
    if not isinstance(ema.model, SmallUNet):
        raise TypeError("teacher_checkpoint expects EDMPrecond around a SmallUNet")
    return {"format": TEACHER_FORMAT, "arch": ema.model.arch(), "sigma_data": float(ema.sigma_data),
            "ema": ema.state_dict(), "net": net.state_dict(), "iteration": int(iteration), "meta": dict(meta or {})}


def build_teacher_net(arch: dict, sigma_data: float) -> EDMPrecond:
    return EDMPrecond(unet_from_arch(arch), sigma_data=sigma_data)


def load_trained_teacher(path: str | Path, which: str = "ema", expect: Optional[dict] = None,
                         device: str | torch.device = "cpu") -> tuple[EDMPrecond, dict]:
    """The teacher denoiser D(x, sigma, cond) (frozen, eval mode) and the checkpoint dict.

    ``which``: 'ema' (default; what is sampled and distilled) or 'net' (raw weights).
    ``expect``: architecture entries the caller needs (e.g. ``{"label_dim": 10,
    "img_resolution": 8}``); a differing entry is a CheckpointError."""
    if which not in ("ema", "net"):
        raise ValueError(f"which must be 'ema' or 'net', got {which!r}")
    state = read_checkpoint(path, TEACHER_FORMAT)
    arch = state.get("arch")
    if not isinstance(arch, dict):
        raise CheckpointError(f"checkpoint {path} has no architecture record ('arch')")
    for key, want in (expect or {}).items():
        have = arch.get(key)
        if isinstance(have, list):
            have = list(have)
            want = list(want) if isinstance(want, (list, tuple)) else want
        if have != want:
            raise CheckpointError(f"checkpoint {path} holds another architecture: {key}={have!r}, "
                                  f"this config needs {key}={want!r} (retrain the teacher)")
    try:
        net = build_teacher_net(arch, float(state.get("sigma_data", 0.5)))
    except (ConfigError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} has an unusable architecture record: {exc}") from None
    load_state_strict(net, state.get(which), f"teacher ({which})", path)
    net.to(device).eval().requires_grad_(False)
    return net, state


