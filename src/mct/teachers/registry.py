"""One registry from a teacher kind to its loader and its architecture rebuild.

``load(kind, path, **options) -> (denoiser, arch)`` reads a teacher file into a frozen denoiser
``D(x, sigma, cond)`` and the record ``arch`` that rebuilds the same architecture;
``rebuild(arch, empty=False)`` builds that architecture again (random weights, or uninitialised
memory to load a checkpoint into). Adding a teacher format means one entry here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ..errors import ConfigError


@dataclass(frozen=True)
class TeacherKind:
    load: Callable[..., tuple]
    rebuild: Callable[..., torch.nn.Module]
    doc: str


def _load_edm(path, *, snapshot_key: str = "ema", amp_dtype: Optional[torch.dtype] = None, **_):
    from .edm_pickle import load_edm_denoiser

    net = load_edm_denoiser(path, snapshot_key, amp_dtype=amp_dtype)
    return net, {"kind": "edm-pickle", "init_kwargs": dict(net.init_kwargs)}


def _rebuild_edm(arch: dict, empty: bool = False):
    from ..nets.dhariwal import DhariwalDenoiser, uninitialized

    if empty:
        with uninitialized():
            return DhariwalDenoiser.from_init_kwargs(arch["init_kwargs"])
    return DhariwalDenoiser.from_init_kwargs(arch["init_kwargs"])


def _load_adm(path, *, adm_flags: Optional[dict] = None, amp_dtype: Optional[torch.dtype] = None, **_):
    from .openai_adm import load_adm_denoiser

    flags = dict(adm_flags or {})
    net = load_adm_denoiser(path, flags, amp_dtype=amp_dtype)
    return net, {"kind": "openai-adm", "flags": flags}


def _rebuild_adm(arch: dict, empty: bool = False):
    from .openai_adm import adm_denoiser, build_adm

    return adm_denoiser(build_adm(arch["flags"], empty=empty), arch["flags"])


def _load_trained(path, *, expect: Optional[dict] = None, device="cpu", **_):
    from .trained import load_trained_teacher

    net, state = load_trained_teacher(path, "ema", expect=expect, device=device)
    return net, {"kind": "trained", "unet": net.model.arch(), "sigma_data": float(net.sigma_data)}


def _rebuild_trained(arch: dict, empty: bool = False):
    from .trained import build_teacher_net

    return build_teacher_net(arch["unet"], arch["sigma_data"])


KINDS: dict[str, TeacherKind] = {
    "edm-pickle": TeacherKind(_load_edm, _rebuild_edm, "EDM snapshot (.pkl), read by the safe unpickler"),
    "openai-adm": TeacherKind(_load_adm, _rebuild_adm, "OpenAI guided-diffusion ADM state dict (.pt), VP -> EDM"),
    "trained": TeacherKind(_load_trained, _rebuild_trained, "EDM teacher trained by the pipeline (mct-teacher-v1)"),
}


def kind_of(name: str) -> TeacherKind:
    if name not in KINDS:
        raise ConfigError(f"unknown teacher kind {name!r} (known: {', '.join(KINDS)})")
    return KINDS[name]


def load(kind: str, path, **options) -> tuple:
    """(frozen denoiser in eval mode, architecture record) of the teacher file ``path``."""
    net, arch = kind_of(kind).load(path, **options)
    return net.eval().requires_grad_(False), arch


def rebuild(arch: dict, empty: bool = False) -> torch.nn.Module:
    """The architecture ``arch`` (from :func:`load`) with fresh weights, or uninitialised when ``empty``."""
    if not isinstance(arch, dict) or "kind" not in arch:
        raise ConfigError(f"not a teacher architecture record: {arch!r}"[:200])
    return kind_of(arch["kind"]).rebuild(arch, empty=empty)
