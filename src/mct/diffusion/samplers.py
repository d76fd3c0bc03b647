"""Stateless EDM samplers with one signature: ``sample(denoiser, x_T, sigmas, cond)``, and
:func:`sample_at_nfe`, the one way the pipeline samples a teacher at a given NFE.

``x_T`` is already scaled by ``sigmas[0]``. :class:`CountingDenoiser` counts denoiser
calls (NFE); Heun with N steps costs 2N - 1 evaluations, Euler with N steps N."""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from .edm import as_sigma, karras_sigmas


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


def steps_for_nfe(nfe: int, sampler: str = "heun") -> int:
    """Sampler steps that cost exactly ``nfe`` denoiser calls (Heun: (nfe + 1) / 2, Euler: nfe)."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r} (known: {', '.join(SAMPLERS)})")
    if sampler == "heun":
        return heun_steps_for_nfe(nfe)
    if nfe < 1:
        raise ValueError(f"NFE must be >= 1, got {nfe}")
    return nfe


def sigmas_for_nfe(nfe: int, sampler: str = "heun", sigma_min: float = 0.002, sigma_max: float = 80.0,
                   rho: float = 7.0, device="cpu") -> Tensor:
    """EDM's Karras time steps (with the final 0) for ``sampler`` at ``nfe`` evaluations."""
    return karras_sigmas(steps_for_nfe(nfe, sampler), sigma_min, sigma_max, rho, device=device)


@torch.no_grad()
def sample_at_nfe(denoiser, noise: Tensor, nfe: int, cond=None, *, sigma_min: float = 0.002,
                  sigma_max: float = 80.0, rho: float = 7.0, sampler: str = "heun",
                  batch_size: Optional[int] = None, out_device=None, progress: bool = False,
                  desc: Optional[str] = None) -> tuple[Tensor, int]:
    """Sample ``denoiser`` from unit Gaussian ``noise`` (N, ...) with ``sampler`` on the Karras
    schedule that costs ``nfe`` evaluations; returns (images, measured NFE per batch).

    ``noise`` is scaled by the first sigma (= sigma_max) here; callers draw it as their
    protocol says, so the same noise gives the same images whatever ``batch_size`` (up to
    the denoiser's own batch dependence). ``cond`` is split with the noise into batches of
    ``batch_size`` (None: one batch, and ``cond`` is passed as it is, whatever its type).
    Each batch's output is moved to ``out_device`` (None: it stays on the noise's device),
    which keeps large sample sets off the accelerator. The measured NFE counts the calls on
    one batch; it differing from ``nfe`` would be a sampler or schedule bug, so it is checked."""
    from tqdm.auto import tqdm

    sample = SAMPLERS.get(sampler)
    if sample is None:
        raise ValueError(f"unknown sampler {sampler!r} (known: {', '.join(SAMPLERS)})")
    sigmas = sigmas_for_nfe(nfe, sampler, sigma_min, sigma_max, rho, device=noise.device)
    n = noise.shape[0]
    bs = n if batch_size is None else int(batch_size)
    if bs < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if cond is not None and bs < n and not (isinstance(cond, Tensor) and cond.shape[0] == n):
        raise ValueError(f"batching needs cond as a tensor with one row per noise sample ({n})")
    out, measured = [], 0
    for i in tqdm(range(0, n, bs), disable=not progress, desc=desc or f"{sampler} nfe={nfe}", leave=False):
        counter = CountingDenoiser(denoiser)
        c = cond if cond is None or bs >= n else cond[i:i + bs]
        x = sample(counter, noise[i:i + bs] * sigmas[0], sigmas, c)
        out.append(x if out_device is None else x.to(out_device))
        measured = counter.nfe
    if measured != nfe:
        raise RuntimeError(f"{sampler} on {len(sigmas) - 1} steps made {measured} denoiser calls, expected {nfe}")
    return torch.cat(out), measured
