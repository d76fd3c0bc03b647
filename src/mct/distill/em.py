"""The EM distillation method as pure functions of tensors and callables
(ALGORITHM.md sections 3-7). Nothing here knows which teacher or network it has.

Shapes: ``z`` and ``eps`` have the data's shape (N, ...); ``sigma`` is (N,).
``generator(z, cond)`` is the one-step generator g_theta; ``teacher`` and
``student`` are denoisers D(x, sigma, cond)."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

from ..diffusion.edm import append_dims
from ..errors import ConfigError

WEIGHTINGS = ("sigma2_over_gamma", "sigma2", "one")


@dataclass(frozen=True)
class EMConfig:
    """Every knob of the E- and M-step.

    num_steps: K Langevin steps in the E-step (K = 1 with gamma_z = 0 is reverse KL).
    gamma_eps, gamma_z: Langevin step sizes on eps and z (gamma_z = 0 freezes z).
    reparam: sample (eps, z) (default) or (x_s, z) (ablation, step eta_x = eta_x_scale * gamma_eps * sigma^2).
    noise_cancel: feed eps_K - nu_K (the linear noise term removed) to the M-step.
    weighting: w(sigma) of the M-step surrogate; 'sigma2_over_gamma' makes the K = 1 update
        exactly the distribution-matching gradient (D_T - D_psi)^T dg/dtheta.
    dmd_normalize: divide each sample's surrogate by mean |g(z) - D_T(x_s)| (as DMD does).
    """

    num_steps: int = 8
    gamma_eps: float = 0.1
    gamma_z: float = 0.05
    reparam: bool = True
    noise_cancel: bool = True
    weighting: str = "sigma2_over_gamma"
    dmd_normalize: bool = False
    eta_x_scale: float = 1.0

    def __post_init__(self):
        if not isinstance(self.num_steps, int) or self.num_steps < 1:
            raise ConfigError(f"num_steps (K) must be an integer >= 1, got {self.num_steps!r}")
        if not (0 < self.gamma_eps < 1):
            raise ConfigError(f"gamma_eps must be in (0, 1), got {self.gamma_eps!r}")
        if not (0 <= self.gamma_z < 1):
            raise ConfigError(f"gamma_z must be in [0, 1), got {self.gamma_z!r}")
        if self.weighting not in WEIGHTINGS:
            raise ConfigError(f"weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        if self.eta_x_scale <= 0:
            raise ConfigError(f"eta_x_scale must be > 0, got {self.eta_x_scale!r}")


@dataclass
class EStepResult:
    eps: Tensor        # eps_K (for the non-reparametrised chain: (x_K - g(z_K)) / sigma)
    z: Tensor          # z_K
    nu: Tensor         # the tracked linear noise term nu_K
    x: Tensor          # x_s at the final state
    teacher_last: Tensor  # D_T at the last evaluated state (for DMD-style normalisation)

    def eps_used(self, noise_cancel: bool) -> Tensor:
        return self.eps - self.nu if noise_cancel else self.eps


def _generator_and_vjp(generator: Callable, z: Tensor, cond, need_vjp: bool):
    """g(z) and a function v -> J_g(z)^T v (None when z is frozen)."""
    if not need_vjp:
        with torch.no_grad():
            return generator(z, cond), None
    z_ = z.detach().requires_grad_(True)
    with torch.enable_grad():
        gz = generator(z_, cond)

    def vjp(v: Tensor) -> Tensor:
        (g,) = torch.autograd.grad(gz, z_, grad_outputs=v)
        return g

    return gz.detach(), vjp


def score_difference(teacher: Callable, student: Callable, x: Tensor, sigma: Tensor, cond) -> tuple[Tensor, Tensor]:
    """delta(x) = s_T(x) - s_psi(x) = (D_T(x) - D_psi(x)) / sigma^2, and D_T(x)."""
    with torch.no_grad():
        d_t = teacher(x, sigma, cond)
        d_s = student(x, sigma, cond)
    return (d_t - d_s) / append_dims(sigma, x.ndim) ** 2, d_t


def e_step(generator: Callable, teacher: Callable, student: Callable, z0: Tensor, eps0: Tensor,
           sigma: Tensor, cond, cfg: EMConfig, rng: Optional[torch.Generator] = None) -> EStepResult:
    """K Langevin steps on rho(eps, z) (reparam) or rho(x_s, z), started from the student:
    x_0 = g(z_0) + sigma eps_0. Returns the final state and the linear noise term
    nu_K (nu_0 = eps_0, nu_{k+1} = (1-g) nu_k + sqrt(2g) n_k) for noise cancellation."""
    assert z0.shape[0] == eps0.shape[0] == sigma.shape[0], (z0.shape, eps0.shape, sigma.shape)
    s = append_dims(sigma, eps0.ndim)
    g_e, g_z = cfg.gamma_eps, cfg.gamma_z
    need_vjp = g_z > 0
    eps, z, nu = eps0.detach(), z0.detach(), eps0.detach().clone()
    gz, vjp = _generator_and_vjp(generator, z, cond, need_vjp)
    x = gz + s * eps
    d_t = None
    for _ in range(cfg.num_steps):
        delta, d_t = score_difference(teacher, student, x, sigma, cond)
        n_eps = torch.randn(eps.shape, generator=rng, device=eps.device, dtype=eps.dtype)
        if cfg.reparam:
            grad_eps = s * delta - eps
            grad_z = vjp(delta) - z if need_vjp else None
            eps = eps + g_e * grad_eps + math.sqrt(2 * g_e) * n_eps
        else:
            resid = (x - gz) / s**2
            grad_x = delta - resid
            grad_z = vjp(resid) - z if need_vjp else None
            eta_x = cfg.eta_x_scale * g_e * s**2
            x = x + eta_x * grad_x + (2 * eta_x).sqrt() * n_eps
        nu = (1 - g_e) * nu + math.sqrt(2 * g_e) * n_eps
        if need_vjp:
            n_z = torch.randn(z.shape, generator=rng, device=z.device, dtype=z.dtype)
            z = z + g_z * grad_z + math.sqrt(2 * g_z) * n_z
            gz, vjp = _generator_and_vjp(generator, z, cond, True)
        if cfg.reparam:
            x = gz + s * eps
    if not cfg.reparam:
        eps = (x - gz) / s
    return EStepResult(eps=eps.detach(), z=z.detach(), nu=nu.detach(), x=x.detach(), teacher_last=d_t)


def m_step_weight(sigma: Tensor, cfg: EMConfig) -> Tensor:
    if cfg.weighting == "sigma2_over_gamma":
        return sigma**2 / cfg.gamma_eps
    if cfg.weighting == "sigma2":
        return sigma**2
    return torch.ones_like(sigma)


def m_step_loss(g_out: Tensor, eps_used: Tensor, sigma: Tensor, cfg: EMConfig,
                normalizer: Optional[Tensor] = None) -> Tensor:
    """Surrogate L_theta = -E[w(sigma)/sigma <sg(eps_used), g_theta(sg(z_K))>]; its gradient
    is the EM learning gradient (1/sigma) eps^T dg/dtheta weighted by w(sigma).
    ``g_out`` must carry the graph to theta; everything else is held fixed."""
    assert g_out.shape == eps_used.shape, (g_out.shape, eps_used.shape)
    coef = m_step_weight(sigma, cfg) / sigma
    inner = (eps_used.detach() * g_out).flatten(1).sum(1)
    if normalizer is not None:
        inner = inner / normalizer.detach()
    return -(coef.detach() * inner).mean()


def dmd_normalizer(g_out: Tensor, teacher_out: Tensor, floor: float = 1e-8) -> Tensor:
    """Per-sample mean |g(z) - D_T(x_s)| (DMD's gradient normalisation)."""
    return (g_out.detach() - teacher_out).abs().flatten(1).mean(1).clamp_min(floor)


def em_generator_loss(generator: Callable, teacher: Callable, student: Callable, z0: Tensor, eps0: Tensor,
                      sigma: Tensor, cond, cfg: EMConfig, rng: Optional[torch.Generator] = None):
    """One E-step followed by the M-step surrogate (with the graph to theta).
    Returns (loss, EStepResult, g_out)."""
    res = e_step(generator, teacher, student, z0, eps0, sigma, cond, cfg, rng)
    g_out = generator(res.z, cond)
    norm = dmd_normalizer(g_out, res.teacher_last) if cfg.dmd_normalize else None
    loss = m_step_loss(g_out, res.eps_used(cfg.noise_cancel), sigma, cfg, norm)
    return loss, res, g_out
