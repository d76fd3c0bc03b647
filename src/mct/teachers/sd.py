"""Stable Diffusion (v1.x) through diffusers, as an EDM teacher in latent space.

The teacher is the diffusers ``UNet2DConditionModel`` (eps or v prediction), its
scheduler's discrete variance-preserving schedule (``alphas_cumprod`` computed by
diffusers' own ``DDPMScheduler`` from the scheduler config), the CLIP text encoder
and tokenizer, and the ``AutoencoderKL`` (used to decode for evaluation only).

Latent space and the EDM convention (docs/method.md#variance-preserving-teachers): the data ``x`` is the
VAE latent already multiplied by the VAE's ``scaling_factor`` (from its config),
``x_s = x + sigma n``; the U-Net sees ``x_t = x_s / sqrt(1 + sigma^2)`` at the
fractional timestep whose ``sigma_edm = sqrt((1 - abar_t) / abar_t)`` equals
``sigma`` (linear in log sigma between the two neighbouring discrete steps, as
k-diffusion does for Stable Diffusion; ``quantize=True`` uses the nearest integer
step), and ``D = x_s - sigma * eps_hat``. sigma outside the schedule's range
[sigma_min, sigma_max] ~ [0.029, 14.6] for SD v1.5 is clamped to it for the timestep.

Conditioning ``cond`` is the text encoder's last hidden state ``(N, 77, 768)``
(``encoder_hidden_states``); classifier-free guidance is
:class:`~mct.teachers.base.GuidedDenoiser` with the embedding of the empty prompt
as the unconditional branch. The generator and the student score start as copies
of the teacher U-Net; the generator is ``g(z, c) = D_theta(sigma_g z, sigma_g, c)``
(:class:`mct.nets.onestep.OneStepGenerator`).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from ..diffusion.edm import append_dims, as_sigma
from ..errors import CheckpointError
from ..nets.onestep import OneStepGenerator
from .base import GuidedDenoiser, VPToEDM

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
PREDICTION_TYPES = ("epsilon", "v_prediction")


class UNetEps(nn.Module):
    """``eps(x_t, t, cond)`` (or ``v``) of a diffusers ``UNet2DConditionModel``: ``cond`` is
    ``encoder_hidden_states``. Inputs are cast to the U-Net's dtype; the output is float32.
    ``autocast``: a dtype (bf16/fp16) to run the U-Net under CUDA autocast (mixed precision
    with float32 weights), or None."""

    def __init__(self, unet: nn.Module, autocast: Optional[torch.dtype] = None):
        super().__init__()
        self.unet = unet
        self.autocast = autocast

    def forward(self, x_t: Tensor, t: Tensor, cond: Optional[Tensor]) -> Tensor:
        if cond is None:
            raise ValueError("the Stable Diffusion U-Net needs text embeddings as cond")
        dtype = self.unet.dtype
        use_amp = self.autocast is not None and x_t.device.type == "cuda"
        with torch.autocast("cuda", dtype=self.autocast, enabled=use_amp) if use_amp else contextlib.nullcontext():
            out = self.unet(x_t.to(dtype), t.to(x_t.device), encoder_hidden_states=cond.to(dtype),
                            return_dict=False)[0]
        return out.float()



class SDUNetDenoiser(VPToEDM):
    """EDM denoiser ``D(x, sigma, cond)`` of a diffusers U-Net on a discrete VP schedule.

    ``prediction_type='epsilon'``: D = x_s - sigma eps_hat (VPToEDM).
    ``'v_prediction'``: x_t = a x + b n with a = 1/sqrt(1+sigma^2), b = sigma a, and
    D = a x_t - b v_hat."""

    def __init__(self, unet: nn.Module, alphas_cumprod: Tensor, prediction_type: str = "epsilon",
                 quantize: bool = False, autocast: Optional[torch.dtype] = None):
        if prediction_type not in PREDICTION_TYPES:
            raise CheckpointError(f"scheduler prediction_type {prediction_type!r} is not supported "
                                  f"(supported: {', '.join(PREDICTION_TYPES)})")
        super().__init__(UNetEps(unet, autocast), alphas_cumprod, quantize=quantize)
        self.prediction_type = prediction_type

    @property
    def unet(self) -> nn.Module:
        return self.eps_model.unet

    def forward(self, x: Tensor, sigma, cond: Optional[Tensor] = None) -> Tensor:
        if self.prediction_type == "epsilon":
            return super().forward(x, sigma, cond)
        sigma = as_sigma(sigma, x)
        s = append_dims(sigma, x.ndim).to(x.dtype)
        a = 1 / (1 + s**2).sqrt()
        x_t = a * x
        v = self.eps_model(x_t, self.sigma_to_t(sigma), cond).to(x.dtype)
        return a * x_t - s * a * v


def reinit_parameters(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random re-initialisation of every submodule that has ``reset_parameters`` (the
    'random-init' ablation: same architecture, no teacher weights)."""
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        for m in module.modules():
            if hasattr(m, "reset_parameters") and m is not module:
                m.reset_parameters()
    finally:
        torch.random.set_rng_state(state)
    return module


def alphas_cumprod_from_scheduler_config(config: dict) -> tuple[Tensor, str]:
    """``alphas_cumprod`` (float64) and ``prediction_type`` from a diffusers scheduler config,
    computed by diffusers' own DDPMScheduler (so every beta schedule diffusers knows works)."""
    from diffusers import DDPMScheduler

    keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
            "prediction_type", "rescale_betas_zero_snr")
    cfg = {k: config[k] for k in keys if k in config and config[k] is not None}
    try:
        sched = DDPMScheduler(**cfg)
    except Exception as exc:  # diffusers raises NotImplementedError / ValueError on unknown schedules
        raise CheckpointError(f"scheduler config cannot be used: {type(exc).__name__}: {exc}") from None
    abar = sched.alphas_cumprod.double()
    if float(abar[-1]) <= 0:
        log.warning("the schedule has zero terminal SNR; clamping alphas_cumprod[-1] to 1e-8 for the EDM wrapper")
        abar = abar.clamp_min(1e-8)
    return abar, sched.config.prediction_type


def encode_prompts(tokenizer, text_encoder: nn.Module, prompts: Sequence[str], device=None) -> Tensor:
    """CLIP text embeddings (N, L, D) as Stable Diffusion uses them: tokens padded to the
    tokenizer's max length, no attention mask, the encoder's last hidden state."""
    device = device or next(text_encoder.parameters()).device
    tok = tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt")
    with torch.no_grad():
        out = text_encoder(tok.input_ids.to(device))
    hidden = out[0] if isinstance(out, (tuple, list)) else out.last_hidden_state
    return hidden.float()


def _is_local(source: str) -> bool:
    return os.path.isdir(source)


def _load(component: str, loader, source: str, local_files_only: bool, revision: Optional[str],
          cache_dir: Optional[str], **kwargs):
    kw = dict(subfolder=component, local_files_only=local_files_only, **kwargs)
    if revision and not _is_local(source):
        kw["revision"] = revision
    if cache_dir:
        kw["cache_dir"] = cache_dir
    try:
        return loader(source, **kw)
    except Exception as exc:  # OSError, EnvironmentError, ValueError, HF hub errors
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = ""
        if local_files_only and not _is_local(source):
            hint = (" (local_files_only is set and it is not in the local cache: run "
                    "`mct teacher fetch --bench sd15` or point model at a local directory)")
        elif _is_local(source):
            hint = f" (expected a diffusers layout with a {component}/ folder)"
        raise CheckpointError(f"cannot load the Stable Diffusion {component} from {source}{hint}: "
                              f"{type(exc).__name__}: {first[:300]}") from None


@dataclass
class SDTeacher:
    """The pieces of a Stable Diffusion checkpoint, and the EDM denoisers built from them."""

    unet: nn.Module
    text_encoder: nn.Module
    tokenizer: object
    vae: nn.Module
    alphas_cumprod: Tensor
    prediction_type: str = "epsilon"
    quantize: bool = False

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        cfg = self.unet.config
        size = cfg.sample_size if isinstance(cfg.sample_size, int) else tuple(cfg.sample_size)[0]
        return (int(cfg.in_channels), int(size), int(size))

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def denoiser(self, unet: Optional[nn.Module] = None, autocast: Optional[torch.dtype] = None) -> SDUNetDenoiser:
        """The EDM denoiser of ``unet`` (default: the frozen teacher U-Net)."""
        unet = self.unet if unet is None else unet
        den = SDUNetDenoiser(unet, self.alphas_cumprod, self.prediction_type, self.quantize, autocast)
        return den.to(next(unet.parameters()).device)

    @property
    def sigma_min(self) -> float:
        return self.denoiser().sigma_min

    @property
    def sigma_max(self) -> float:
        return self.denoiser().sigma_max

    def encode(self, prompts: Sequence[str]) -> Tensor:
        return encode_prompts(self.tokenizer, self.text_encoder, prompts, self.device)

    def null_embedding(self) -> Tensor:
        """The embedding of the empty prompt (L, D): the unconditional branch of CFG."""
        return self.encode([""])[0]

    def guided(self, scale: float) -> GuidedDenoiser:
        """The frozen teacher with classifier-free guidance ``scale`` (1 = conditional only)."""
        return GuidedDenoiser(self.denoiser(), scale, self.null_embedding())

    def trainable_unet(self, init: str = "teacher", seed: int = 0, dtype=torch.float32) -> nn.Module:
        """A trainable copy of the teacher U-Net ('teacher') or the same architecture at random ('random')."""
        if init not in ("teacher", "random"):
            raise ValueError(f"init must be 'teacher' or 'random', got {init!r}")
        unet = copy.deepcopy(self.unet).to(dtype).train().requires_grad_(True)
        if init == "random":
            reinit_parameters(unet, seed)
        return unet

    def make_generator(self, sigma_g: float, init: str = "teacher", seed: int = 0,
                       autocast: Optional[torch.dtype] = None) -> OneStepGenerator:
        return OneStepGenerator(self.denoiser(self.trainable_unet(init, seed), autocast), sigma_g)

    def make_student(self, init: str = "teacher", seed: int = 0,
                     autocast: Optional[torch.dtype] = None) -> SDUNetDenoiser:
        return self.denoiser(self.trainable_unet(init, seed + 1), autocast)

    @torch.no_grad()
    def decode(self, latents: Tensor, batch_size: int = 8) -> Tensor:
        """Scaled latents -> images in [-1, 1] (N, 3, H, W), float32, through the VAE."""
        outs = []
        vdtype = self.vae.dtype
        for chunk in latents.split(batch_size):
            img = self.vae.decode((chunk / self.scaling_factor).to(self.device, vdtype), return_dict=False)[0]
            outs.append(img.float().clamp(-1, 1))
        return torch.cat(outs)


def load_sd_teacher(source: str | os.PathLike, *, local_files_only: bool = False, revision: Optional[str] = None,
                    cache_dir: Optional[str] = None, dtype: str | torch.dtype = "float32", device="cpu",
                    variant: Optional[str] = None, quantize: bool = False) -> SDTeacher:
    """Load a Stable Diffusion checkpoint in the diffusers layout (``unet/``, ``vae/``,
    ``text_encoder/``, ``tokenizer/``, ``scheduler/``) from a hub id or a local directory.
    ``local_files_only`` never touches the network. Any failure is a CheckpointError."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    source = str(source)
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise CheckpointError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        dtype = DTYPES[dtype]
    if not _is_local(source) and (source.startswith((".", "/", "~")) or source.count("/") > 1 or "\\" in source):
        raise CheckpointError(f"Stable Diffusion directory {source} does not exist")
    common = dict(source=source, local_files_only=local_files_only, revision=revision, cache_dir=cache_dir)
    wkw = {"variant": variant} if variant else {}
    # low_cpu_mem_usage: diffusers builds the network on the meta device and fills it from the file
    # (accelerate's path), so a paper-scale U-Net is not first initialised at random in host RAM;
    # transformers 5 always loads that way (it ignores the flag)
    lowmem = {"low_cpu_mem_usage": True}
    unet = _load("unet", UNet2DConditionModel.from_pretrained, torch_dtype=dtype, **lowmem, **wkw, **common)
    vae = _load("vae", AutoencoderKL.from_pretrained, torch_dtype=dtype, **lowmem, **wkw, **common)
    text_encoder = _load("text_encoder", CLIPTextModel.from_pretrained, dtype=dtype, **wkw, **common)
    tokenizer = _load("tokenizer", CLIPTokenizer.from_pretrained, **common)
    sched_cfg = _load("scheduler", DDPMScheduler.load_config, **common)
    abar, prediction_type = alphas_cumprod_from_scheduler_config(dict(sched_cfg))
    for m in (unet, vae, text_encoder):
        m.to(device).eval().requires_grad_(False)
    return SDTeacher(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, vae=vae, alphas_cumprod=abar,
                     prediction_type=prediction_type, quantize=quantize)


# Stable Diffusion v1.5's unet/config.json, the keys that differ from UNet2DConditionModel's defaults
# (the rest of its defaults are SD v1's U-Net): 859,520,964 parameters
SD15_UNET_CONFIG = {"sample_size": 64, "cross_attention_dim": 768}


def sd15_unet_on_meta() -> nn.Module:
    """SD v1.5's U-Net on the meta device: its shapes and dtypes, no memory (for size estimates)."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel(**SD15_UNET_CONFIG)


SD_FILES = ("model_index.json", "scheduler/*", "tokenizer/*", "text_encoder/config.json", "unet/config.json",
            "vae/config.json")


def fetch_sd(repo_id: str, out_dir: str | os.PathLike, revision: Optional[str] = None,
             variant: Optional[str] = None, sha256: Optional[dict] = None) -> Path:
    """Download the diffusers-layout files of ``repo_id`` at ``revision`` into ``out_dir``
    (resumable: huggingface_hub skips complete files), then check every file listed in
    ``sha256`` ({relative path: hex digest}). Weights only as safetensors."""
    from ..errors import DownloadError

    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - diffusers depends on it
        raise DownloadError("huggingface_hub is not installed") from None
    suffix = f".{variant}.safetensors" if variant else ".safetensors"
    patterns = list(SD_FILES) + [f"unet/diffusion_pytorch_model{suffix}", f"vae/diffusion_pytorch_model{suffix}",
                                 f"text_encoder/model{suffix}"]
    out_dir = Path(out_dir)
    try:
        snapshot_download(repo_id, revision=revision, local_dir=str(out_dir), allow_patterns=patterns)
    except Exception as exc:
        raise DownloadError(f"downloading {repo_id}@{revision or 'main'} failed: {type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    verify_sha256(out_dir, sha256 or {})
    return out_dir


def verify_sha256(root: str | os.PathLike, expected: dict) -> None:
    """Check files under ``root`` against {relative path: sha256 hex}; DownloadError on mismatch."""
    import hashlib

    from ..errors import DownloadError

    for rel, want in expected.items():
        path = Path(root) / rel
        if not path.exists():
            raise DownloadError(f"{path} is missing after download")
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        if h.hexdigest() != want.lower():
            raise DownloadError(f"{path}: sha256 {h.hexdigest()} does not match the pinned {want}")
