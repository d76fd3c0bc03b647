"""The EM distillation method as pure functions of tensors and callables
(docs/method.md#the-em-objective to #reverse-kl-limit). Nothing here knows which teacher or network it has.

Shapes: ``z`` and ``eps`` have the data's shape (N, ...); ``sigma`` is (N,).
``generator(z, cond)`` is the one-step generator g_theta; ``teacher`` and
``student`` are denoisers D(x, sigma, cond)."""

from __future__ import annotations

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
    z_step: 'constant' uses gamma_z at every noise level (docs/method.md#z-step-schedule); 'sigma2' uses
        gamma_z * sigma^2 / (sigma^2 + z_step_ref^2). Why: the eps-drift sigma*delta is O(1) at every
        sigma (the point of the reparametrisation), but the z-drift J^T delta scales like 1/sigma^2
        where teacher and student disagree, so a constant gamma_z makes the z-chain unstable at
        small sigma (measured on toy2d: K >= 4 diverges when the student score lags).
    reparam: sample (eps, z) (default) or (x_s, z) (ablation, step eta_x = eta_x_scale * gamma_eps * sigma^2).
    noise_cancel: feed eps_K - nu_K (the linear noise term removed) to the M-step.
    weighting: w(sigma) of the M-step surrogate; 'sigma2_over_gamma' makes the K = 1 update
        exactly the distribution-matching gradient (D_T - D_psi)^T dg/dtheta.
    dmd_normalize: divide each sample's surrogate by mean |g(z) - D_T(x_s)| (as DMD does).
    """

    num_steps: int = 8
    gamma_eps: float = 0.1
    gamma_z: float = 0.05
    z_step: str = "constant"
    z_step_ref: float = 1.0
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
        if self.z_step not in ("constant", "sigma2"):
            raise ConfigError(f"z_step must be 'constant' or 'sigma2', got {self.z_step!r}")
        if self.z_step_ref <= 0:
            raise ConfigError(f"z_step_ref must be > 0, got {self.z_step_ref!r}")
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
    g_out: Optional[Tensor] = None  # g_theta(z_K) with its graph to theta (only with keep_graph=True)

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


def score_difference(teacher: Callable, student: Callable, x: Tensor, sigma: Tensor, cond,
                     sigma2: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """delta(x) = s_T(x) - s_psi(x) = (D_T(x) - D_psi(x)) / sigma^2, and D_T(x).
    ``sigma2``: sigma^2 already shaped like x (saves recomputing it at every step)."""
    with torch.no_grad():
        d_t = teacher(x, sigma, cond)
        d_s = student(x, sigma, cond)
    if sigma2 is None:
        sigma2 = append_dims(sigma, x.ndim) ** 2
    return (d_t - d_s) / sigma2, d_t


def _generator_final(generator: Callable, z: Tensor, cond, keep_graph: bool):
    """g(z) at the chain's last z (no VJP needed there): with its graph to theta when the
    M-step will reuse it (``keep_graph``), else without any graph."""
    if keep_graph:
        with torch.enable_grad():
            out = generator(z.detach(), cond)
        return out.detach(), out
    with torch.no_grad():
        return generator(z, cond), None


def e_step(generator: Callable, teacher: Callable, student: Callable, z0: Tensor, eps0: Tensor,
           sigma: Tensor, cond, cfg: EMConfig, rng: Optional[torch.Generator] = None,
           keep_graph: bool = False, noise: Optional[Callable[[Tensor], Tensor]] = None,
           train_generator: Optional[Callable] = None) -> EStepResult:
    """K Langevin steps on rho(eps, z) (reparam) or rho(x_s, z), started from the student:
    x_0 = g(z_0) + sigma eps_0. Returns the final state and the linear noise term
    nu_K (nu_0 = eps_0, nu_{k+1} = (1-g) nu_k + sqrt(2g) n_k) for noise cancellation.

    ``keep_graph``: also return ``g_out = g_theta(z_K)`` with its graph to theta, the
    generator pass the M-step needs, so that it is not run a second time (the E-step
    evaluates g at z_K anyway). The generator runs K + 1 times when z moves (K of them
    with a VJP to z) and once when z is frozen (gamma_z = 0).

    Data-parallel training (mct.distributed): ``noise(like)`` draws the Langevin noise of
    ``like``'s shape (default: ``torch.randn`` from ``rng``; the trainer draws the global
    batch's and keeps this rank's rows), and ``train_generator`` runs the one pass kept for
    the M-step (``keep_graph``; default ``generator``; the trainer passes its DDP wrapper,
    the other passes need no gradient synchronisation)."""
    assert z0.shape[0] == eps0.shape[0] == sigma.shape[0], (z0.shape, eps0.shape, sigma.shape)
    s = append_dims(sigma, eps0.ndim)
    s2 = s * s
    g_e, g_z = cfg.gamma_eps, cfg.gamma_z
    c_e, c_z = math.sqrt(2 * g_e), math.sqrt(2 * g_z)
    need_vjp = g_z > 0
    z_scale = None
    if need_vjp and cfg.z_step == "sigma2":
        z_scale = s2 / (s2 + cfg.z_step_ref**2)
        g_zs = g_z * z_scale
        c_zs = (2 * g_zs).sqrt()
    if not cfg.reparam:
        eta_x = (cfg.eta_x_scale * g_e) * s2
        noise_x = (2 * eta_x).sqrt()
    if noise is None:
        def noise(t: Tensor) -> Tensor:
            return torch.randn(t.shape, generator=rng, device=t.device, dtype=t.dtype)
    final_gen = train_generator if (keep_graph and train_generator is not None) else generator
    eps, z, nu = eps0.detach(), z0.detach(), eps0.detach()
    g_out = None
    if need_vjp:
        gz, vjp = _generator_and_vjp(generator, z, cond, True)
    else:
        (gz, g_out), vjp = _generator_final(final_gen, z, cond, keep_graph), None
    # The updates below are written fused (addcmul, add with alpha): the same arithmetic as
    #   eps <- eps + g (sigma delta - eps) + sqrt(2g) n,  z <- z + g_z (J^T v - z) + sqrt(2 g_z) n_z,
    #   nu <- (1 - g) nu + sqrt(2g) n,  x_s = g(z) + sigma eps
    # in fewer passes over the tensors (the E-step's own cost next to the network passes).
    x = torch.addcmul(gz, s, eps)
    d_t = None
    for k in range(cfg.num_steps):
        delta, d_t = score_difference(teacher, student, x, sigma, cond, s2)
        n_eps = noise(eps)
        if cfg.reparam:
            jtv = vjp(delta) if need_vjp else None
            eps = torch.addcmul(eps * (1 - g_e), s, delta, value=g_e).add_(n_eps, alpha=c_e)
        else:
            resid = (x - gz) / s2
            jtv = vjp(resid) if need_vjp else None
            x = torch.addcmul(torch.addcmul(x, eta_x, delta - resid), noise_x, n_eps)
        nu = (nu * (1 - g_e)).add_(n_eps, alpha=c_e)
        if need_vjp:
            n_z = noise(z)
            if z_scale is None:
                z = torch.add(z * (1 - g_z), jtv, alpha=g_z).add_(n_z, alpha=c_z)
            else:  # per-sample step gamma_z(sigma)
                z = (z + g_zs * (jtv - z)).addcmul_(c_zs, n_z)
            if k < cfg.num_steps - 1:
                gz, vjp = _generator_and_vjp(generator, z, cond, True)
            else:  # the last z: no VJP follows; the M-step may reuse this pass
                (gz, g_out), vjp = _generator_final(final_gen, z, cond, keep_graph), None
        if cfg.reparam:
            x = torch.addcmul(gz, s, eps)
    if not cfg.reparam:
        eps = (x - gz) / s
    return EStepResult(eps=eps.detach(), z=z.detach(), nu=nu.detach(), x=x.detach(), teacher_last=d_t, g_out=g_out)


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
                      sigma: Tensor, cond, cfg: EMConfig, rng: Optional[torch.Generator] = None,
                      noise: Optional[Callable[[Tensor], Tensor]] = None, train_generator: Optional[Callable] = None):
    """One E-step followed by the M-step surrogate (with the graph to theta).
    Returns (loss, EStepResult, g_out). ``noise``, ``train_generator``: see :func:`e_step`."""
    res = e_step(generator, teacher, student, z0, eps0, sigma, cond, cfg, rng, keep_graph=True, noise=noise,
                 train_generator=train_generator)
    g_out = res.g_out  # g_theta(z_K) from the E-step's last generator pass, graph to theta kept
    norm = dmd_normalizer(g_out, res.teacher_last) if cfg.dmd_normalize else None
    loss = m_step_loss(g_out, res.eps_used(cfg.noise_cancel), sigma, cfg, norm)
    return loss, res, g_out
