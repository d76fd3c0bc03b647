"""Stateless EDM samplers with one signature: ``sample(denoiser, x_T, sigmas, cond)``.

``x_T`` is already scaled by ``sigmas[0]``. The denoiser is wrapped in
:class:`CountingDenoiser` by the caller when it wants the number of function
evaluations (NFE); Heun with N steps costs 2N - 1 evaluations."""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from .edm import as_sigma


class CountingDenoiser:
    """Counts denoiser calls per sample batch (one NFE = one call on the batch)."""

    def __init__(self, denoiser: Callable):
        self.denoiser = denoiser
        self.nfe = 0

    def __call__(self, x, sigma, cond=None):
        self.nfe += 1
        return self.denoiser(x, sigma, cond)


def _d(denoiser, x, sigma, cond):
    return (x - denoiser(x, as_sigma(sigma, x), cond)) / sigma


@torch.no_grad()
def sample_euler(denoiser, x: Tensor, sigmas: Tensor, cond: Optional[Tensor] = None) -> Tensor:
    """Euler on the probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma."""
    for s_cur, s_next in zip(sigmas[:-1], sigmas[1:]):
        x = x + (s_next - s_cur) * _d(denoiser, x, s_cur, cond)
    return x


@torch.no_grad()
def sample_heun(denoiser, x: Tensor, sigmas: Tensor, cond: Optional[Tensor] = None) -> Tensor:
    """EDM's deterministic 2nd-order Heun sampler (Algorithm 1, S_churn = 0)."""
    for s_cur, s_next in zip(sigmas[:-1], sigmas[1:]):
        d_cur = _d(denoiser, x, s_cur, cond)
        x_next = x + (s_next - s_cur) * d_cur
        if s_next > 0:
            d_next = _d(denoiser, x_next, s_next, cond)
            x_next = x + (s_next - s_cur) * 0.5 * (d_cur + d_next)
        x = x_next
    return x


SAMPLERS = {"euler": sample_euler, "heun": sample_heun}


def heun_steps_for_nfe(nfe: int) -> int:
    """Heun with N steps costs 2N - 1 NFE; the NFE values 7, 15, 35, 79 map to 4, 8, 18, 40 steps."""
    if nfe < 1 or nfe % 2 == 0:
        raise ValueError(f"Heun NFE must be odd and >= 1, got {nfe}")
    return (nfe + 1) // 2


@torch.no_grad()
def sample_at_nfe(denoiser, noise: Tensor, nfe: int, cond: Optional[Tensor] = None, *, sampler: str = "heun",
                  sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
                  batch_size: Optional[int] = None, progress: bool = False) -> tuple[Tensor, int]:
    """Samples from unit ``noise`` with ``sampler`` on EDM's Karras levels at ``nfe`` function
    evaluations, in batches of ``batch_size``: (images on the CPU, NFE measured per batch)."""
    from tqdm.auto import tqdm

    from .edm import karras_sigmas

    steps = heun_steps_for_nfe(nfe) if sampler == "heun" else nfe
    sigmas = karras_sigmas(steps, sigma_min, sigma_max, rho, device=noise.device)
    x_t = noise * sigmas[0]
    bs = batch_size or noise.shape[0]
    out, measured = [], 0
    for i in tqdm(range(0, noise.shape[0], bs), disable=not progress, desc=f"{sampler} nfe={nfe}", leave=False):
        counter = CountingDenoiser(denoiser)
        out.append(SAMPLERS[sampler](counter, x_t[i:i + bs], sigmas, None if cond is None else cond[i:i + bs]).cpu())
        measured = counter.nfe
    return torch.cat(out), measured
