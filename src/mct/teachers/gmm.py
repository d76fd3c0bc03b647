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


def ring_gmm(modes: int = 8, radius: float = 4.0, std: float = 0.25, weights: str = "linear") -> GMMDenoiser:
    """Modes on a circle; ``weights='linear'`` gives weights proportional to 1..modes."""
    angles = torch.arange(modes, dtype=torch.float32) * (2 * math.pi / modes)
    means = radius * torch.stack([angles.cos(), angles.sin()], dim=1)
    if weights == "linear":
        w = torch.arange(1, modes + 1, dtype=torch.float32)
    elif weights == "equal":
        w = torch.ones(modes)
    else:
        raise ValueError(f"unknown weights {weights!r}")
    return GMMDenoiser(means, torch.full((modes,), std), w)
