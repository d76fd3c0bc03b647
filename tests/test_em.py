"""The method against closed forms (docs/method.md#noise-cancellation, #reverse-kl-limit, #exact-teachers)."""

import math

import pytest
import torch

from mct.diffusion.edm import append_dims
from mct.distill.em import EMConfig, e_step, em_generator_loss
from mct.nets.mlp import MLPGenerator, mlp_denoiser
from mct.teachers import ring_gmm


class Recorder:
    """Wraps a denoiser and records every output, to rebuild the drift independently."""

    def __init__(self, fn):
        self.fn, self.outputs = fn, []

    def __call__(self, x, sigma, cond=None):
        out = self.fn(x, sigma, cond)
        self.outputs.append(out.detach().clone())
        return out


def _toy_setup(dtype=torch.float64, n=64, seed=0):
    torch.manual_seed(seed)
    teacher = ring_gmm().to(dtype)
    gen = MLPGenerator(2, 32, 2).to(dtype)
    student = mlp_denoiser(2, 32, 2).to(dtype)
    z0 = torch.randn(n, 2, dtype=dtype)
    eps0 = torch.randn(n, 2, dtype=dtype)
    sigma = torch.exp(torch.empty(n, dtype=dtype).uniform_(math.log(0.1), math.log(4.0)))
    return teacher, gen, student, z0, eps0, sigma


@pytest.mark.parametrize("reparam,gamma_z", [(True, 0.0), (True, 0.05), (False, 0.0)])
def test_noise_cancellation_identity(reparam, gamma_z):
    """eps_K - nu_K equals the drift-only sum  sum_k (1-g)^(K-1-k) g sigma delta_k.
    (Non-reparametrised with z moving, eps = (x - g(z)) / sigma is not a linear chain: see em.py.)"""
    teacher, gen, student, z0, eps0, sigma = _toy_setup()
    t_rec, s_rec = Recorder(teacher), Recorder(student)
    cfg = EMConfig(num_steps=6, gamma_eps=0.1, gamma_z=gamma_z, reparam=reparam)
    res = e_step(lambda z, c: gen(z), t_rec, s_rec, z0, eps0, sigma, None, cfg, torch.Generator().manual_seed(3))
    g, K = cfg.gamma_eps, cfg.num_steps
    s = append_dims(sigma, 2)
    drift = torch.zeros_like(eps0)
    for k, (dt, ds) in enumerate(zip(t_rec.outputs, s_rec.outputs)):
        delta = (dt - ds) / s**2
        drift += (1 - g) ** (K - 1 - k) * g * s * delta
    assert len(t_rec.outputs) == K
    torch.testing.assert_close(res.eps - res.nu, drift, rtol=1e-9, atol=1e-10)
    # and the noise term is not trivially zero: it is what noise cancellation removes
    assert (res.nu.abs() > 1e-3).float().mean() > 0.9


def test_k1_gradient_equals_reverse_kl():
    """K = 1, gamma_z = 0, NC on: the generator gradient is (D_T - D_psi)^T dg/dtheta (DMD / Diff-Instruct)."""
    teacher, gen, student, z0, eps0, sigma = _toy_setup()
    cfg = EMConfig(num_steps=1, gamma_eps=0.1, gamma_z=0.0, noise_cancel=True)
    loss, _, _ = em_generator_loss(lambda z, c: gen(z), teacher, student, z0, eps0, sigma, None, cfg,
                                   torch.Generator().manual_seed(5))
    grads = torch.autograd.grad(loss, list(gen.parameters()))

    # independent reverse-KL gradient: x = g(z) + sigma eps;  grad = -mean_i (D_T(x_i) - D_psi(x_i))^T dg(z_i)/dtheta
    out = gen(z0)
    x = out.detach() + sigma[:, None] * eps0
    with torch.no_grad():
        direction = teacher(x, sigma) - student(x, sigma)
    ref_loss = -(direction * out).sum(1).mean()
    ref = torch.autograd.grad(ref_loss, list(gen.parameters()))
    for a, b in zip(grads, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-9)
    # the gradient is not zero (the test could not pass by accident)
    assert sum(float(r.abs().sum()) for r in ref) > 1e-3


def test_no_nc_k1_gradient_differs_from_reverse_kl():
    """Without noise cancellation the K = 1 gradient carries the linear noise term."""
    teacher, gen, student, z0, eps0, sigma = _toy_setup()
    cfg = EMConfig(num_steps=1, gamma_eps=0.1, gamma_z=0.0, noise_cancel=False)
    loss, res, _ = em_generator_loss(lambda z, c: gen(z), teacher, student, z0, eps0, sigma, None, cfg,
                                     torch.Generator().manual_seed(5))
    cfg_nc = EMConfig(num_steps=1, gamma_eps=0.1, gamma_z=0.0, noise_cancel=True)
    loss_nc, _, _ = em_generator_loss(lambda z, c: gen(z), teacher, student, z0, eps0, sigma, None, cfg_nc,
                                      torch.Generator().manual_seed(5))
    assert abs(float(loss.detach()) - float(loss_nc.detach())) > 1e-3


def _gaussian_denoiser(mean, cov):
    """Exact denoiser of N(mean, cov): D(x) = x - sigma^2 (cov + sigma^2 I)^-1 (x - mean)."""

    def d(x, sigma, cond=None):
        s2 = float(sigma.reshape(-1)[0]) ** 2
        prec = torch.linalg.inv(cov + s2 * torch.eye(cov.shape[0], dtype=cov.dtype))
        return x - s2 * (x - mean) @ prec.T

    return d


@pytest.mark.parametrize("reparam,z_step", [(True, "constant"), (False, "constant"), (True, "sigma2")])
def test_langevin_matches_closed_form_joint(reparam, z_step):
    """Linear generator + Gaussian teacher + exact student score: long-run chains reach the
    closed-form joint rho(x_s, z) of docs/method.md#exact-teachers."""
    torch.manual_seed(0)
    dt = torch.float64
    A = torch.tensor([[1.2, 0.3], [-0.4, 0.7]], dtype=dt)
    b = torch.tensor([0.5, -1.0], dtype=dt)
    m = torch.tensor([2.0, 1.0], dtype=dt)
    S0 = torch.tensor([[0.8, 0.2], [0.2, 0.5]], dtype=dt)
    sig = 0.8
    eye = torch.eye(2, dtype=dt)
    teacher = _gaussian_denoiser(m, S0)
    student = _gaussian_denoiser(b, A @ A.T)  # p_theta(x_s) = N(b, A A^T + sigma^2 I)
    gen = lambda z, c: z @ A.T + b  # noqa: E731

    n, steps = 4000, 800
    g = torch.Generator().manual_seed(1)
    z0 = torch.randn(n, 2, generator=g, dtype=dt)
    eps0 = torch.randn(n, 2, generator=g, dtype=dt)
    sigma = torch.full((n,), sig, dtype=dt)
    cfg = EMConfig(num_steps=steps, gamma_eps=0.03, gamma_z=0.03, reparam=reparam, z_step=z_step, z_step_ref=0.5)
    res = e_step(gen, teacher, student, z0, eps0, sigma, None, cfg, g)
    x, z = res.x, res.z

    Sz = torch.linalg.inv(eye + A.T @ A / sig**2)
    ez = Sz @ A.T @ (m - b) / sig**2
    cz = Sz + Sz @ A.T @ (S0 + sig**2 * eye) @ A @ Sz / sig**4
    cx = S0 + sig**2 * eye
    # the start (the student's own joint) is far from the target, so agreement is earned
    assert (gen(z0, None).mean(0) - m).abs().max() > 0.5
    torch.testing.assert_close(x.mean(0), m, atol=0.05, rtol=0)
    torch.testing.assert_close(z.mean(0), ez, atol=0.05, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), cx, atol=0.08, rtol=0.06)
    torch.testing.assert_close(torch.cov(z.T), cz, atol=0.05, rtol=0.06)
    # x_s is consistent with the final (eps, z)
    torch.testing.assert_close(x, gen(z, None) + sig * res.eps)
