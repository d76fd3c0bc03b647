"""sample_at_nfe: the one "NFE -> Karras sigmas -> counted sampling, batched" path. It must
equal what the digits benchmark sampled (bit for bit), spend exactly the NFE it is asked
for, and solve the probability-flow ODE: checked against the closed form for Gaussian data."""

from __future__ import annotations

import math

import pytest
import torch

from mct.diffusion.edm import karras_sigmas
from mct.diffusion.samplers import (CountingDenoiser, heun_steps_for_nfe, sample_at_nfe, sigmas_for_nfe,
                                    steps_for_nfe)

SIGMA_MAX = 80.0
S = 0.5                                   # data std per dimension
MU = torch.tensor([-1.5, 0.0, 2.0])       # data mean of each class


def gaussian_denoiser(x, sigma, cond):
    """Exact D for data N(MU[c], S^2 I): E[x0 | x] = (S^2 x + sigma^2 mu) / (S^2 + sigma^2)."""
    s2 = sigma.reshape(-1, *([1] * (x.ndim - 1))) ** 2
    mu = MU.to(x)[cond].reshape(-1, *([1] * (x.ndim - 1)))
    return (S**2 * x + s2 * mu) / (S**2 + s2)


def exact_ode_solution(noise, cond):
    """The PF-ODE dx/dsigma = sigma (x - mu) / (S^2 + sigma^2) keeps (x - mu) / sqrt(S^2 + sigma^2)
    constant, so x(0) = mu + (sigma_max n - mu) S / sqrt(S^2 + sigma_max^2)."""
    mu = MU[cond].reshape(-1, *([1] * (noise.ndim - 1))).double()
    a = S / math.sqrt(S**2 + SIGMA_MAX**2)
    return mu + (SIGMA_MAX * noise.double() - mu) * a


def _noise(n, shape=(1, 2, 2), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((n, *shape), generator=g), torch.arange(n) % len(MU)


def _relative_error(sampler, nfe, noise, cond):
    """max |x - exact| / |exact - mu|: the map noise -> sample is affine, so this is the relative
    error of its slope, the same for every sample."""
    exact = exact_ode_solution(noise, cond)
    x, _ = sample_at_nfe(gaussian_denoiser, noise, nfe, cond, sigma_max=SIGMA_MAX, sampler=sampler)
    mu = MU[cond].reshape(-1, 1, 1, 1).double()
    return float(((x.double() - exact) / (exact - mu)).abs().max())


def test_heun_solves_the_gaussian_ode_to_second_order():
    noise, cond = _noise(300)
    heun = {nfe: _relative_error("heun", nfe, noise, cond) for nfe in (35, 79, 159)}
    euler = {nfe: _relative_error("euler", nfe, noise, cond) for nfe in (40, 80, 160)}
    # doubling the steps divides the error by ~4 for Heun (2nd order), by ~2 for Euler (1st order);
    # measured: Heun 5.5e-2, 9.9e-3, 2.4e-3; Euler 7.1e-2, 3.6e-2, 1.8e-2
    assert heun[35] / heun[79] > 3 and heun[79] / heun[159] > 3
    assert 1.7 < euler[40] / euler[80] < 2.3 and 1.7 < euler[80] / euler[160] < 2.3
    assert heun[79] < euler[80] and heun[159] < euler[160]
    assert heun[159] < 5e-3


def test_samples_have_the_data_mean_and_std():
    n = 60_000
    noise, cond = _noise(n, shape=(1, 1, 1))
    x, nfe = sample_at_nfe(gaussian_denoiser, noise, 159, cond, sigma_max=SIGMA_MAX, batch_size=15_000)
    assert nfe == 159
    a = S / math.sqrt(S**2 + SIGMA_MAX**2)
    for c, mu in enumerate(MU.tolist()):
        xs = x[cond == c].double().flatten()   # 20,000 values per class
        m = xs.numel()
        # Exact law of the ODE output: N(mu (1 - a), (sigma_max a)^2): the sampler starts from
        # N(0, sigma_max^2) instead of N(mu, S^2 + sigma_max^2), a mean shift of mu a <= 0.0125.
        # Tolerances: 5 standard errors (S / sqrt(m) = 0.0035 for the mean, S / sqrt(2 m) = 0.0025
        # for the std) plus the discretisation error at 159 NFE, below 5e-3 relative to
        # |x - mu| (test above): at most 5e-3 (S + |mu| a) on the mean and 5e-3 S on the std.
        disc_mean, disc_std = 5e-3 * (S + abs(mu) * a), 5e-3 * S
        assert abs(float(xs.mean()) - mu * (1 - a)) < 5 * S / math.sqrt(m) + disc_mean
        assert abs(float(xs.std()) - SIGMA_MAX * a) < 5 * S / math.sqrt(2 * m) + disc_std
        # and against the data distribution itself, with the prior-mismatch shift as known bias
        assert abs(float(xs.mean()) - mu) < abs(mu) * a + 5 * S / math.sqrt(m) + disc_mean
        assert abs(float(xs.std()) - S) < 5 * S / math.sqrt(2 * m) + disc_std


def test_measured_nfe_is_2n_minus_1_for_heun_and_n_for_euler():
    noise, cond = _noise(10)
    for nfe in (1, 3, 7, 15, 35):
        total = CountingDenoiser(gaussian_denoiser)
        _, measured = sample_at_nfe(total, noise, nfe, cond, batch_size=4)
        n_steps = heun_steps_for_nfe(nfe)
        assert measured == 2 * n_steps - 1 == nfe
        assert total.nfe == 3 * nfe  # three batches (4, 4, 2), each paying the full NFE
        assert len(sigmas_for_nfe(nfe)) == n_steps + 1
    for nfe in (1, 4, 10):
        _, measured = sample_at_nfe(gaussian_denoiser, noise, nfe, cond, sampler="euler")
        assert measured == nfe == steps_for_nfe(nfe, "euler")
    with pytest.raises(ValueError, match="odd"):
        sample_at_nfe(gaussian_denoiser, noise, 4, cond)
    with pytest.raises(ValueError, match="unknown sampler"):
        sample_at_nfe(gaussian_denoiser, noise, 3, cond, sampler="dpm")
    with pytest.raises(ValueError, match="one row per noise sample"):
        sample_at_nfe(gaussian_denoiser, noise, 3, cond[:5], batch_size=4)


def test_batching_and_output_device_do_not_change_samples():
    noise, cond = _noise(23)
    whole, _ = sample_at_nfe(gaussian_denoiser, noise, 7, cond)
    for bs in (1, 5, 23, 100):
        parts, _ = sample_at_nfe(gaussian_denoiser, noise, 7, cond, batch_size=bs, out_device="cpu")
        assert torch.equal(parts, whole), bs


def test_sigmas_are_edms_karras_schedule():
    assert torch.equal(sigmas_for_nfe(15, "heun", 0.002, 80.0, 7.0), karras_sigmas(8, 0.002, 80.0, 7.0))
    assert torch.equal(sigmas_for_nfe(6, "euler", 0.01, 10.0, 3.0), karras_sigmas(6, 0.01, 10.0, 3.0))


