"""OpenAI ADM (guided-diffusion) checkpoints as EDM denoisers.

A released ADM checkpoint (``128x128_diffusion.pt``) is a plain state dict; it is read with
``torch.load(weights_only=True)`` (nothing in it can run) and loaded with strict key and shape
matching into MCT's :class:`mct.nets.adm.ADMUNet` built from guided-diffusion's flags
(:data:`mct.nets.adm.ADM128_FLAGS` by default).

The model predicts eps on the discrete linear VP schedule (``diffusion_steps`` = 1000,
betas 1e-4..0.02). :func:`adm_denoiser` wraps it with :class:`mct.teachers.base.VPToEDM`:
``sigma_edm = sqrt((1 - abar_t) / abar_t)``, the network sees ``x_t = x_s / sqrt(1 + sigma^2)``
at the *interpolated* fractional timestep whose sigma is ``sigma`` (linear in log sigma
between neighbouring steps; ADM's sinusoidal embedding accepts fractional t), and
``D = x_s - sigma * eps_hat`` with eps_hat the first three output channels (the learned
variance half is ignored). Noise levels outside [sigma(0), sigma(999)] ~ [0.01, 157] are
clamped to the end of the schedule.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional

import torch

from ..checkpoint import load_state_strict, read_checkpoint
from ..errors import CheckpointError
from ..nets.adm import ADM128_FLAGS, ADMEps, ADMUNet, adm_kwargs_from_flags
from .base import VPToEDM, linear_vp_alphas_cumprod

DIFFUSION_FLAGS = ("diffusion_steps", "noise_schedule")
ADM_KEY_HINTS = ("time_embed.0.weight", "input_blocks.0.0.weight", "out.2.weight")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A ``torch.save``-d state dict, read with ``weights_only=True`` (CheckpointError otherwise)."""
    sd = read_checkpoint(path, expected_format=None)
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"checkpoint {path} is not a state dict of tensors")
    return sd


def is_adm_state_dict(sd: dict) -> bool:
    return all(k in sd for k in ADM_KEY_HINTS)


def split_flags(flags: Optional[dict]) -> tuple[dict, dict]:
    """Separate model flags from the diffusion flags (diffusion_steps, noise_schedule)."""
    flags = dict(flags or {})
    diffusion = {"diffusion_steps": 1000, "noise_schedule": "linear"}
    for k in DIFFUSION_FLAGS:
        if k in flags:
            diffusion[k] = flags.pop(k)
    return flags, diffusion


def adm_kwargs(flags: Optional[dict] = None) -> dict:
    """ADMUNet kwargs from guided-diffusion flags (ADM128_FLAGS filled in for missing ones)."""
    model_flags, _ = split_flags(flags)
    try:
        return adm_kwargs_from_flags(model_flags)
    except ValueError as exc:
        raise CheckpointError(f"ADM flags: {exc}") from None


def build_adm(flags: Optional[dict] = None, empty: bool = True) -> ADMUNet:
    """The network the flags describe. ``empty``: uninitialised memory (to be loaded into; fast);
    otherwise guided-diffusion-style random initialisation."""
    kwargs = adm_kwargs(flags)
    if not empty:
        return ADMUNet(**kwargs)
    with torch.device("meta"):
        net = ADMUNet(**kwargs)
    return net.to_empty(device="cpu")


def load_adm_unet(path: str | Path, flags: Optional[dict] = None, amp_dtype: Optional[torch.dtype] = None) -> ADMUNet:
    """Read an ADM ``.pt`` and load it (strict) into the network its flags describe."""
    sd = read_state_dict(path)
    if not is_adm_state_dict(sd):
        raise CheckpointError(f"checkpoint {path} is not a guided-diffusion UNetModel state dict "
                              f"(no {', '.join(ADM_KEY_HINTS)})")
    net = build_adm(flags)
    load_state_strict(net, sd, "ADM U-Net", path)
    net.amp_dtype = amp_dtype
    return net.eval().requires_grad_(False)


def vp_alphas_cumprod(diffusion_flags: dict) -> torch.Tensor:
    schedule = diffusion_flags.get("noise_schedule", "linear")
    steps = int(diffusion_flags.get("diffusion_steps", 1000))
    if schedule != "linear":
        raise CheckpointError(f"noise_schedule {schedule!r} is not supported for ADM teachers (only 'linear')")
    return linear_vp_alphas_cumprod(steps)


def adm_denoiser(unet: ADMUNet, flags: Optional[dict] = None) -> VPToEDM:
    """Wrap an ADM U-Net as an EDM denoiser D(x, sigma, cond) (interpolated timesteps)."""
    _, diffusion = split_flags(flags)
    return VPToEDM(ADMEps(unet), vp_alphas_cumprod(diffusion), quantize=False)


def load_adm_denoiser(path: str | Path, flags: Optional[dict] = None,
                      amp_dtype: Optional[torch.dtype] = None) -> VPToEDM:
    """The whole path: ADM ``.pt`` -> strict load -> VP-to-EDM denoiser (eval, frozen)."""
    return adm_denoiser(load_adm_unet(path, flags, amp_dtype), flags).eval().requires_grad_(False)


def _indices(sd: dict, prefix: str) -> list[int]:
    pat = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    return sorted({int(m.group(1)) for k in sd if (m := pat.match(k))})


def infer_adm_structure(sd: dict) -> dict[str, Any]:
    """What a guided-diffusion state dict itself says about its architecture (image size and
    attention heads are not stored in weights)."""
    mc = int(sd["time_embed.0.weight"].shape[1])
    in_ch = int(sd["input_blocks.0.0.weight"].shape[1])
    out_ch = int(sd["out.2.weight"].shape[0])
    n_out = len(_indices(sd, "output_blocks"))
    n_in = len(_indices(sd, "input_blocks"))

    def has(prefix):
        return any(k.startswith(prefix + ".") for k in sd)

    def layer_count(i):
        return len(_indices(sd, f"output_blocks.{i}"))

    ups = []
    resblock_updown = False
    for i in range(n_out):
        for j in range(1, layer_count(i) + 1):
            p = f"output_blocks.{i}.{j}"
            if has(p + ".in_layers"):
                ups.append(i)
                resblock_updown = True
            elif f"{p}.conv.weight" in sd:
                ups.append(i)
    per_level = ups[0] + 1 if ups else n_out
    levels = n_out // per_level if per_level else 0
    mults, attn_ds = [], []
    for lvl in range(levels):
        i = (levels - 1 - lvl) * per_level
        mults.append(int(sd[f"output_blocks.{i}.0.out_layers.3.weight"].shape[0]) / mc)
        if f"output_blocks.{i}.1.qkv.weight" in sd:
            attn_ds.append(2 ** lvl)
    blk = "input_blocks.1.0"
    scale_shift = (f"{blk}.emb_layers.1.weight" in sd and sd[f"{blk}.emb_layers.1.weight"].shape[0]
                   == 2 * sd[f"{blk}.in_layers.2.weight"].shape[0])
    return {
        "model_channels": mc, "in_channels": in_ch, "out_channels": out_ch, "learn_sigma": out_ch == 2 * in_ch,
        "num_classes": int(sd["label_emb.weight"].shape[0]) if "label_emb.weight" in sd else None,
        "num_res_blocks": per_level - 1, "channel_mult": tuple(int(m) if float(m).is_integer() else m for m in mults),
        "attention_ds": tuple(attn_ds), "resblock_updown": resblock_updown, "use_scale_shift_norm": bool(scale_shift),
        "input_blocks": n_in, "output_blocks": n_out,
    }


__all__ = ["ADM128_FLAGS", "read_state_dict", "load_adm_unet", "adm_denoiser", "load_adm_denoiser",
           "infer_adm_structure", "is_adm_state_dict", "build_adm"]
