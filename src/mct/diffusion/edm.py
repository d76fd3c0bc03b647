"""EDM preconditioning, loss and noise-level distributions (Karras et al., 2022).

Conventions: ``x`` is NCHW (or N x d), ``sigma`` a tensor of shape (N,) (a scalar
is broadcast), ``cond`` is None, integer labels (N,) or an embedding tensor."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn


def append_dims(v: Tensor, ndim: int) -> Tensor:
    """Reshape a per-sample tensor (N,) to (N, 1, ..., 1) with ``ndim`` dims."""
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))


def as_sigma(sigma, x: Tensor) -> Tensor:
    """Per-sample noise levels of shape (N,), in x's floating dtype, on x's device."""
    dtype = x.dtype if x.dtype.is_floating_point else torch.float32
    sigma = torch.as_tensor(sigma, device=x.device).to(dtype)
    if sigma.ndim == 0:
        sigma = sigma.expand(x.shape[0])
    sigma = sigma.reshape(-1)
    assert sigma.shape[0] == x.shape[0], (sigma.shape, x.shape)
    return sigma


def score_from_denoiser(d: Tensor, x: Tensor, sigma: Tensor) -> Tensor:
    """score(x_s) = (D(x_s) - x_s) / sigma^2."""
    return (d - x) / append_dims(sigma, x.ndim) ** 2


class EDMPrecond(nn.Module):
    """D(x, sigma, cond) = c_skip x + c_out F(c_in x, c_noise, cond): the preconditioning
    kept apart from the inner network ``model`` (k-diffusion's Denoiser wrapper)."""

    def __init__(self, model: nn.Module, sigma_data: float = 0.5):
        super().__init__()
        self.model = model
        self.sigma_data = float(sigma_data)

    def forward(self, x: Tensor, sigma, cond: Optional[Tensor] = None) -> Tensor:
        sigma = as_sigma(sigma, x)
        sd = self.sigma_data
        s = append_dims(sigma, x.ndim).to(x.dtype)
        c_skip = sd**2 / (s**2 + sd**2)
        c_out = s * sd / (s**2 + sd**2).sqrt()
        c_in = 1 / (sd**2 + s**2).sqrt()
        c_noise = sigma.log() / 4
        f = self.model(c_in * x, c_noise, cond)
        assert f.shape == x.shape, (f.shape, x.shape)
        return c_skip * x + c_out * f.to(x.dtype)


def edm_weight(sigma: Tensor, sigma_data: float = 0.5) -> Tensor:
    """EDM loss weight lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def edm_loss(denoiser, x0: Tensor, sigma: Tensor, cond=None, noise: Optional[Tensor] = None,
             sigma_data: float = 0.5) -> Tensor:
    """Mean of lambda(sigma) ||D(x0 + sigma n, sigma) - x0||^2 (per element), the
    denoising score matching loss used for the teacher and for the student score."""
    if noise is None:
        noise = torch.randn_like(x0)
    s = append_dims(sigma, x0.ndim)
    d = denoiser(x0 + s * noise, sigma, cond)
    w = append_dims(edm_weight(sigma, sigma_data), x0.ndim)
    return (w * (d - x0) ** 2).mean()


@dataclass(frozen=True)
class SigmaDist:
    """A noise-level distribution. ``loguniform``: log sigma uniform in [lo, hi];
    ``lognormal``: log sigma ~ N(p_mean, p_std^2) (EDM training), clamped to [lo, hi]."""

    kind: str = "loguniform"
    lo: float = 0.002
    hi: float = 80.0
    p_mean: float = -1.2
    p_std: float = 1.2

    def __post_init__(self):
        from ..errors import ConfigError

        if self.kind not in ("loguniform", "lognormal"):
            raise ConfigError(f"kind must be 'loguniform' or 'lognormal', got {self.kind!r}")
        if not (0 < self.lo < self.hi):
            raise ConfigError(f"range needs 0 < lo < hi, got lo={self.lo}, hi={self.hi}")
        if self.p_std <= 0:
            raise ConfigError(f"p_std must be > 0, got {self.p_std}")


def sample_sigma(n: int, dist: SigmaDist, generator: Optional[torch.Generator] = None,
                 device="cpu") -> Tensor:
    if dist.kind == "loguniform":
        u = torch.rand(n, generator=generator, device=device)
        return torch.exp(math.log(dist.lo) + u * (math.log(dist.hi) - math.log(dist.lo)))
    r = torch.randn(n, generator=generator, device=device)
    return torch.exp(dist.p_mean + dist.p_std * r).clamp(dist.lo, dist.hi)


def karras_sigmas(num_steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0,
                  rho: float = 7.0, device="cpu") -> Tensor:
    """EDM time steps sigma_0 > ... > sigma_{N-1}, followed by a final 0."""
    assert num_steps >= 1
    i = torch.arange(num_steps, dtype=torch.float64, device=device)
    if num_steps == 1:
        s = torch.tensor([sigma_max], dtype=torch.float64, device=device)
    else:
        s = (sigma_max ** (1 / rho) + i / (num_steps - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([s, torch.zeros(1, dtype=torch.float64, device=device)]).float()
