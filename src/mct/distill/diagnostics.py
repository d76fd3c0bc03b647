"""Diagnostics of the method that the benchmarks report (not part of training)."""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from ..diffusion.edm import SigmaDist, sample_sigma
from .em import EMConfig, dmd_normalizer, e_step, m_step_loss


def mstep_gradient_variance(generator: nn.Module, teacher: Callable, student: Callable,
                            sample_latents: Callable, em: EMConfig, sigma_dist: SigmaDist, batch_size: int,
                            n_batches: int, seed: int, device) -> dict:
    """Variance of the M-step gradient (w.r.t. the generator's parameters) across ``n_batches``
    fixed batches, with and without noise cancellation on the *same* E-step chains.

    For each batch (z0, eps0, sigma, cond and the chain's noise fixed by ``seed``) one E-step
    is run, then the surrogate's gradient is taken once with eps_used = eps_K - nu_K and once
    with eps_K. Returns, per setting, the total variance sum_p Var_b[grad_p] (unbiased over
    batches), the squared norm of the mean gradient and their ratio."""
    params = [p for p in generator.parameters() if p.requires_grad]
    grads: dict[bool, list[Tensor]] = {True: [], False: []}
    for b in range(n_batches):
        rng = torch.Generator(device=device).manual_seed(seed + 7919 * b)
        z0, cond = sample_latents(batch_size, rng)
        eps0 = torch.randn(z0.shape, generator=rng, device=device)
        sigma = sample_sigma(z0.shape[0], sigma_dist, rng, device)
        res = e_step(generator, teacher, student, z0, eps0, sigma, cond, em, rng)
        for nc in (True, False):
            g_out = generator(res.z, cond)
            norm = dmd_normalizer(g_out, res.teacher_last) if em.dmd_normalize else None
            loss = m_step_loss(g_out, res.eps_used(nc), sigma, em, norm)
            gs = torch.autograd.grad(loss, params)
            grads[nc].append(torch.cat([g.flatten() for g in gs]).double())
    out = {}
    for nc, name in ((True, "nc"), (False, "no_nc")):
        g = torch.stack(grads[nc])
        mean = g.mean(0)
        var = float(((g - mean) ** 2).sum(1).sum() / (g.shape[0] - 1))
        sq = float((mean ** 2).sum())
        out[f"mstep_grad_var_{name}"] = var
        out[f"mstep_grad_mean_sq_{name}"] = sq
        out[f"mstep_grad_noise_to_signal_{name}"] = var / max(sq, 1e-30)
    out["mstep_grad_var"] = out["mstep_grad_var_nc" if em.noise_cancel else "mstep_grad_var_no_nc"]
    out["mstep_grad_batches"] = n_batches
    return out
