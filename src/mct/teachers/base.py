"""The one teacher interface and the wrappers that bring other conventions to it.

Every teacher is a :class:`Denoiser`: ``D(x, sigma, cond) ~= E[x | x_s]`` in the
EDM convention ``x_s = x + sigma n`` (docs/method.md#edm-convention). The algorithm never
knows which teacher it has."""

from __future__ import annotations

from typing import Callable, Optional, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from ..diffusion.edm import append_dims, as_sigma


@runtime_checkable
class Denoiser(Protocol):
    def __call__(self, x: Tensor, sigma: Tensor, cond: Optional[Tensor] = None) -> Tensor: ...


class GuidedDenoiser(nn.Module):
    """Classifier-free guidance as a wrapper: D_w = D_uncond + w (D_cond - D_uncond).

    ``uncond`` is the null conditioning for one sample (the null label index, or the
    embedding of the empty prompt); it is expanded to the batch. Both branches run
    in one batched call. ``scale = 1`` returns the conditional denoiser itself."""

    def __init__(self, denoiser: Callable, scale: float, uncond: Tensor):
        super().__init__()
        self.denoiser = denoiser
        self.scale = float(scale)
        self.register_buffer("uncond", torch.as_tensor(uncond), persistent=False)

    def forward(self, x: Tensor, sigma, cond: Optional[Tensor] = None) -> Tensor:
        sigma = as_sigma(sigma, x)
        if cond is None:
            raise ValueError("GuidedDenoiser needs a conditioning tensor")
        if self.scale == 1.0:
            return self.denoiser(x, sigma, cond)
        n = x.shape[0]
        unc = self.uncond.to(cond.device).unsqueeze(0).expand((n,) + tuple(self.uncond.shape))
        out = self.denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]), torch.cat([cond, unc.to(cond.dtype)]))
        d_cond, d_uncond = out[:n], out[n:]
        return d_uncond + self.scale * (d_cond - d_uncond)


class VPToEDM(nn.Module):
    """Wraps an eps-predicting discrete variance-preserving model ``eps(x_t, t, cond)``
    (x_t = alpha_t x + sigma_t n) into an EDM denoiser.

    sigma_edm(t) = sqrt((1 - abar_t) / abar_t); the network sees
    x_t = x_s / sqrt(1 + sigma^2) and D = x_s - sigma * eps_hat. The timestep passed
    is the *interpolated* fractional t whose sigma_edm equals sigma (linear in
    log sigma between the two neighbouring discrete steps), as k-diffusion does;
    ``quantize=True`` passes the nearest discrete t instead (for models that only
    accept integer steps). sigma outside the schedule's range is clamped."""

    def __init__(self, eps_model: Callable, alphas_cumprod: Tensor, quantize: bool = False):
        super().__init__()
        self.eps_model = eps_model
        abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        self.register_buffer("log_sigmas", (((1 - abar) / abar).sqrt()).log().float(), persistent=False)
        self.quantize = quantize

    @property
    def sigma_min(self) -> float:
        return float(self.log_sigmas[0].exp())

    @property
    def sigma_max(self) -> float:
        return float(self.log_sigmas[-1].exp())

    def sigma_to_t(self, sigma: Tensor) -> Tensor:
        log_sigma = sigma.float().log().clamp(self.log_sigmas[0], self.log_sigmas[-1])
        dists = log_sigma[:, None] - self.log_sigmas[None, :]
        if self.quantize:
            return dists.abs().argmin(dim=1).float()
        low = (dists >= 0).cumsum(dim=1).argmax(dim=1).clamp(max=self.log_sigmas.shape[0] - 2)
        high = low + 1
        lo, hi = self.log_sigmas[low], self.log_sigmas[high]
        w = ((lo - log_sigma) / (lo - hi)).clamp(0, 1)
        return (1 - w) * low.float() + w * high.float()

    def forward(self, x: Tensor, sigma, cond: Optional[Tensor] = None) -> Tensor:
        sigma = as_sigma(sigma, x)
        s = append_dims(sigma, x.ndim).to(x.dtype)
        x_t = x / (1 + s**2).sqrt()
        eps = self.eps_model(x_t, self.sigma_to_t(sigma), cond)
        return x - s * eps.to(x.dtype)


def linear_vp_alphas_cumprod(num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """The discrete linear beta schedule of DDPM / guided-diffusion (betas scaled for 1000 steps)."""
    scale = 1000 / num_steps
    betas = torch.linspace(scale * beta_start, scale * beta_end, num_steps, dtype=torch.float64)
    return torch.cumprod(1 - betas, dim=0)


def scaled_linear_alphas_cumprod(num_steps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> Tensor:
    """Stable Diffusion's 'scaled_linear' schedule: betas linear in sqrt."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_steps, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, dim=0)
