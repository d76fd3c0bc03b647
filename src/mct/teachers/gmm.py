"""Exact mixture-of-Gaussians teacher (docs/method.md#exact-teachers).

For sum_k pi_k N(mu_k, s_k^2 I) with v_k = s_k^2 + sigma^2 and responsibilities
r_k(x) prop pi_k N(x; mu_k, v_k I):
    D(x, sigma) = sum_k r_k(x) [mu_k + (s_k^2 / v_k)(x - mu_k)]."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from ..diffusion.edm import as_sigma


class GMMDenoiser(nn.Module):
    def __init__(self, means: Tensor, stds: Tensor, weights: Tensor):
        super().__init__()
        means = torch.as_tensor(means, dtype=torch.float32)
        stds = torch.as_tensor(stds, dtype=torch.float32).reshape(-1)
        weights = torch.as_tensor(weights, dtype=torch.float32).reshape(-1)
        assert means.ndim == 2 and stds.shape[0] == means.shape[0] == weights.shape[0]
        assert (stds > 0).all() and (weights > 0).all()
        self.register_buffer("means", means)
        self.register_buffer("stds", stds)
        self.register_buffer("weights", weights / weights.sum())

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def _log_components(self, x: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """log pi_k N(x; mu_k, v_k I) for each sample and component, and v (N, K)."""
        v = self.stds[None, :] ** 2 + sigma[:, None] ** 2
        sq = ((x[:, None, :] - self.means[None]) ** 2).sum(-1)
        logp = self.weights.log()[None] - 0.5 * sq / v - 0.5 * self.dim * torch.log(2 * math.pi * v)
        return logp, v

    def responsibilities(self, x: Tensor, sigma) -> Tensor:
        logp, _ = self._log_components(x, as_sigma(sigma, x))
        return torch.softmax(logp, dim=1)

    def forward(self, x: Tensor, sigma, cond: Optional[Tensor] = None) -> Tensor:
        sigma = as_sigma(sigma, x).to(x.dtype)
        logp, v = self._log_components(x, sigma)
        r = torch.softmax(logp, dim=1)
        shrink = self.stds[None] ** 2 / v  # (N, K)
        post = self.means[None] + shrink[..., None] * (x[:, None, :] - self.means[None])
        return (r[..., None] * post).sum(1)

    def log_prob(self, x: Tensor, sigma=0.0) -> Tensor:
        """Log density of the noisy marginal p(x_s) (sigma = 0: the data density)."""
        sigma = as_sigma(sigma, x)
        logp, _ = self._log_components(x, sigma)
        return torch.logsumexp(logp, dim=1)

    def sample(self, n: int, generator: Optional[torch.Generator] = None, return_labels: bool = False):
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        x = self.means[k] + self.stds[k, None] * torch.randn(n, self.dim, generator=generator)
        return (x, k) if return_labels else x


def mixture_weights(modes: int, weights) -> Tensor:
    """'linear' (proportional to 1..modes), 'equal', or an explicit list of ``modes`` positive
    numbers (normalised by GMMDenoiser)."""
    if weights == "linear":
        return torch.arange(1, modes + 1, dtype=torch.float32)
    if weights == "equal":
        return torch.ones(modes)
    if isinstance(weights, str):
        raise ValueError(f"unknown weights {weights!r}")
    w = torch.as_tensor([float(v) for v in weights], dtype=torch.float64)
    if w.shape != (modes,) or not (torch.isfinite(w) & (w > 0)).all():
        raise ValueError(f"weights must be {modes} finite positive numbers, got {list(weights)!r}")
    return w.float()


def ring_gmm(modes: int = 8, radius: float = 4.0, std: float = 0.25, weights="linear") -> GMMDenoiser:
    """Modes on a circle of ``radius``, the first at angle 0; weights as :func:`mixture_weights`."""
    angles = torch.arange(modes, dtype=torch.float32) * (2 * math.pi / modes)
    means = radius * torch.stack([angles.cos(), angles.sin()], dim=1)
    return GMMDenoiser(means, torch.full((modes,), std), mixture_weights(modes, weights))


def grid_gmm(modes: int = 9, radius: float = 4.0, std: float = 0.25, weights="equal") -> GMMDenoiser:
    """An n x n grid (``modes`` = n^2) spanning [-radius, radius]^2, row by row from (-radius,
    -radius) with x varying fastest; weights as :func:`mixture_weights` in that order."""
    n = math.isqrt(modes)
    if n * n != modes or n < 2:
        raise ValueError(f"a grid needs modes = n^2 with n >= 2, got {modes}")
    axis = torch.linspace(-radius, radius, n)
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    means = torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)
    return GMMDenoiser(means, torch.full((modes,), std), mixture_weights(modes, weights))


LAYOUTS = {"ring": ring_gmm, "grid": grid_gmm}


def toy_gmm(layout: str = "ring", modes: int = 8, radius: float = 4.0, std: float = 0.25, weights="linear"):
    """The 2-D toy mixture of ``layout`` ('ring' or 'grid')."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r} (known: {', '.join(LAYOUTS)})")
    return LAYOUTS[layout](modes, radius, std, weights)
