"""Exact teachers and wrappers: the GMM denoiser, the VP->EDM wrapper, guidance, samplers."""

import math

import numpy as np
import pytest
import torch

from mct.diffusion.edm import EDMPrecond, karras_sigmas
from mct.diffusion.samplers import CountingDenoiser, heun_steps_for_nfe, sample_euler, sample_heun
from mct.teachers import GMMDenoiser, GuidedDenoiser, VPToEDM, linear_vp_alphas_cumprod, ring_gmm


def test_gmm_denoiser_equals_monte_carlo_posterior_mean():
    teacher = ring_gmm(modes=4, radius=2.0, std=0.4)
    g = torch.Generator().manual_seed(0)
    x = teacher.sample(400_000, generator=g).double()
    for sigma in (0.3, 1.0, 2.5):
        query = torch.tensor([[1.2, 0.9], [-0.3, -1.7], [0.0, 0.0]], dtype=torch.float64)
        logw = -((query[:, None, :] - x[None]) ** 2).sum(-1) / (2 * sigma**2)
        w = torch.softmax(logw, dim=1)
        mc = w @ x
        exact = teacher.double()(query, torch.full((3,), sigma, dtype=torch.float64))
        torch.testing.assert_close(exact, mc, atol=0.03, rtol=0)


def test_gmm_log_prob_normalised():
    teacher = ring_gmm(modes=3, radius=1.0, std=0.5)
    grid = torch.linspace(-5, 5, 401)
    xx, yy = torch.meshgrid(grid, grid, indexing="xy")
    p = teacher.log_prob(torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)).exp()
    assert abs(float(p.sum() * (grid[1] - grid[0]) ** 2) - 1) < 1e-3


def _interp_sigma(t, abar):
    """The VP model's own noise level at a (fractional) timestep, from its own table."""
    log_sig = np.log(np.sqrt((1 - abar) / abar))
    return np.exp(np.interp(t, np.arange(len(abar)), log_sig))


@pytest.mark.parametrize("quantize", [False, True])
def test_vp_wrapper_of_gmm_equals_edm_gmm(quantize):
    """An eps-predictor built from the exact GMM, in VP form, wrapped back to EDM, gives the EDM denoiser."""
    teacher = ring_gmm(modes=5, radius=3.0, std=0.3).double()
    abar = linear_vp_alphas_cumprod(1000)
    abar_np = abar.numpy()

    def eps_model(x_t, t, cond):
        sig = torch.as_tensor(_interp_sigma(t.double().numpy(), abar_np))[:, None]
        x_s = x_t * torch.sqrt(1 + sig**2)  # undo the VP scaling with the model's own sigma
        return (x_s - teacher(x_s, sig[:, 0])) / sig

    wrapped = VPToEDM(eps_model, abar, quantize=quantize).double()
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(6, 2, generator=g) * 3).double()
    if quantize:  # on the discrete grid the nearest step is exact
        sigmas = torch.exp(wrapped.log_sigmas[[10, 200, 500, 900, 999, 0]]).double()
    else:
        sigmas = torch.tensor([0.05, 0.3, 1.0, 3.7, 20.0, 80.0], dtype=torch.float64)
    got = wrapped(x, sigmas)
    want = teacher(x, sigmas)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_vp_wrapper_uses_scaled_input():
    """The network must see x_t = x_s / sqrt(1 + sigma^2) and D = x_s - sigma eps."""
    abar = linear_vp_alphas_cumprod(1000)
    seen = {}

    def eps_model(x_t, t, cond):
        seen["x_t"] = x_t
        return torch.ones_like(x_t)

    w = VPToEDM(eps_model, abar)
    x = torch.full((1, 2), 3.0)
    out = w(x, torch.tensor([2.0]))
    torch.testing.assert_close(seen["x_t"], x / math.sqrt(5.0))
    torch.testing.assert_close(out, x - 2.0)


def test_guidance_wrapper_identities():
    def d(x, sigma, cond):
        return x * 0.5 + cond.float()[:, None]

    x = torch.randn(4, 3)
    sigma = torch.ones(4)
    cond = torch.tensor([1, 2, 3, 4])
    uncond = torch.tensor(0)
    torch.testing.assert_close(GuidedDenoiser(d, 1.0, uncond)(x, sigma, cond), d(x, sigma, cond))
    torch.testing.assert_close(GuidedDenoiser(d, 0.0, uncond)(x, sigma, cond), d(x, sigma, torch.zeros(4, dtype=torch.long)))
    w = 3.0
    expect = d(x, sigma, torch.zeros(4, dtype=torch.long)) + w * (d(x, sigma, cond) - d(x, sigma, torch.zeros(4, dtype=torch.long)))
    torch.testing.assert_close(GuidedDenoiser(d, w, uncond)(x, sigma, cond), expect)


def test_heun_nfe_and_gmm_sampling():
    """Heun on the exact GMM denoiser reproduces the mixture weights; NFE = 2N - 1."""
    teacher = ring_gmm(modes=4, radius=3.0, std=0.3, weights="linear")
    counter = CountingDenoiser(teacher)
    n_steps = heun_steps_for_nfe(35)
    sigmas = karras_sigmas(n_steps, 0.002, 80.0)
    g = torch.Generator().manual_seed(0)
    x = sample_heun(counter, torch.randn(20000, 2, generator=g) * sigmas[0], sigmas)
    assert counter.nfe == 35
    mass = torch.bincount(teacher.responsibilities(x, 1e-3).argmax(1), minlength=4).float() / x.shape[0]
    torch.testing.assert_close(mass, teacher.weights, atol=0.02, rtol=0)
    assert float(teacher.log_prob(x).mean()) > float(teacher.log_prob(teacher.sample(20000, g)).mean()) - 0.3
    euler = CountingDenoiser(teacher)
    sample_euler(euler, torch.randn(10, 2) * 80, karras_sigmas(7))
    assert euler.nfe == 7


def test_edm_precond_boundary_behaviour():
    """c_skip -> 1, c_out -> 0 as sigma -> 0: the denoiser returns its input."""
    net = EDMPrecond(lambda x, c, cond: torch.full_like(x, 7.0), sigma_data=0.5)
    x = torch.randn(3, 2)
    torch.testing.assert_close(net(x, torch.full((3,), 1e-6)), x, atol=1e-5, rtol=0)
    big = net(x, torch.full((3,), 1e4))
    torch.testing.assert_close(big, torch.full_like(x, 3.5), atol=1e-3, rtol=0)
