"""Exact metrics for a 2-D mixture teacher: which modes are covered, per-mode mass
against the true weights, mean true log-density, and the energy distance; and the ones a
student cannot hide behind: mass off every mode, recall of each mode, and the log-density
gap to exact samples (docs/benchmarks.md#toy2d).

"Near mode k" means inside the ball B_k = {x : |x - mu_k| <= c s_k} with c = ``MODE_STDS``
(3) component standard deviations. Nearest-mode counts (``mode_masses``) give every point
of the plane to some mode, so mass on the ring between the modes still counts as covered;
the balls do not."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..teachers.gmm import GMMDenoiser

MODE_STDS = 3.0  # "near a mode": within this many of its component's standard deviations


def mode_masses(samples: Tensor, teacher: GMMDenoiser) -> Tensor:
    """Fraction of samples assigned to each mode (by the true posterior at sigma -> 0)."""
    r = teacher.responsibilities(samples, torch.full((samples.shape[0],), 1e-3))
    labels = r.argmax(dim=1)
    return torch.bincount(labels, minlength=teacher.means.shape[0]).float() / samples.shape[0]


def energy_distance(x: Tensor, y: Tensor) -> float:
    """2 E|X-Y| - E|X-X'| - E|Y-Y'| (zero iff the distributions agree); V-statistic."""
    xy = torch.cdist(x, y).mean()
    xx = torch.cdist(x, x).mean()
    yy = torch.cdist(y, y).mean()
    return float(2 * xy - xx - yy)


def in_mode_balls(samples: Tensor, teacher: GMMDenoiser, stds: float = MODE_STDS) -> Tensor:
    """(N, K) booleans: sample n lies within ``stds`` x s_k of mode k's mean (a non-finite
    sample lies in no ball)."""
    dist = torch.cdist(samples.double(), teacher.means.double())
    return dist <= stds * teacher.stds.double()[None]


def off_mode_mass(samples: Tensor, teacher: GMMDenoiser, stds: float = MODE_STDS) -> float:
    """Share of the samples farther than ``stds`` x s_k from every mode mean mu_k (non-finite
    samples count as off-mode). Exact samples of well-separated D-dimensional modes give
    P(chi_D > stds): exp(-stds^2 / 2) = exp(-4.5) = 0.0111 for D = 2, stds = 3."""
    return float((~in_mode_balls(samples, teacher, stds).any(dim=1)).double().mean())


def ball_mass(teacher: GMMDenoiser, stds: float = MODE_STDS) -> Tensor:
    """q_k = P_{x ~ p}(|x - mu_k| <= stds s_k), the true mass in mode k's ball from every component,
    exactly: for x from component j, |x - mu_k|^2 / s_j^2 is noncentral chi-square (D degrees
    of freedom, noncentrality lam = |mu_j - mu_k|^2 / s_j^2), whose CDF at t is the
    Poisson(lam / 2) mixture sum_i Pois(i) P(chi^2_{D + 2i} <= t). Components more than 12 of
    their std beyond the ball add < exp(-72) each and are skipped. Float64, (K,)."""
    means, s, w = teacher.means.double(), teacher.stds.double(), teacher.weights.double()
    d2 = torch.cdist(means, means) ** 2
    half_dim = teacher.dim / 2
    q = torch.zeros(means.shape[0], dtype=torch.float64)
    for k in range(means.shape[0]):
        radius = stds * s[k]
        for j in range(means.shape[0]):
            if d2[j, k].sqrt() - radius > 12 * s[j]:
                continue
            lam, t = float(d2[j, k] / s[j] ** 2), float(radius ** 2 / s[j] ** 2)
            terms = int(lam / 2 + 12 * (lam / 2) ** 0.5 + 30)
            i = torch.arange(terms, dtype=torch.float64)
            log_pois = i * math.log(lam / 2) - lam / 2 - torch.lgamma(i + 1) if lam > 0 else \
                torch.where(i == 0, 0.0, -math.inf)
            cdf = torch.special.gammainc(half_dim + i, torch.full_like(i, t / 2))
            q[k] += w[j] * (log_pois.exp() * cdf).sum()
    return q


def per_mode_recall(samples: Tensor, teacher: GMMDenoiser, stds: float = MODE_STDS) -> Tensor:
    """recall_k = min(1, m_k / q_k): m_k the share of the samples inside mode k's ball (non-finite
    samples count, in no ball), q_k the true share (:func:`ball_mass`). For exact samples
    E[m_k] = q_k, so the ratio is 1 in expectation (for any mixture, overlapping or not); the
    clip (a mode cannot be more than covered) lowers that by about sd / sqrt(2 pi), with
    sd = sqrt((1 - q_k) / (N q_k)) (0.017 for the smallest default mode at N = 20,000). A mode
    the samples miss scores 0; one given half its mass, 0.5. (K,) float64."""
    m = in_mode_balls(samples, teacher, stds).double().mean(dim=0)
    return (m / ball_mass(teacher, stds)).clamp(max=1.0)


def logp_gap(samples: Tensor, teacher: GMMDenoiser, reference: Tensor) -> float:
    """Mean true log p of exact ``reference`` samples minus that of the (finite) ``samples``, the
    reference cut to the same number. 0 for exact samples (up to noise); > 0 the samples sit
    where the density is lower (off the modes, between them); < 0 they sit where it is higher
    than the data does (e.g. piled onto the heaviest modes): the gap alone does not show a
    collapse, :func:`per_mode_recall` does."""
    samples = samples[torch.isfinite(samples).all(dim=1)]
    assert reference.shape[0] >= samples.shape[0], (reference.shape, samples.shape)
    ref = reference[:samples.shape[0]]
    return float(teacher.log_prob(ref).double().mean() - teacher.log_prob(samples).double().mean())


def toy_metrics(samples: Tensor, teacher: GMMDenoiser, reference: Tensor, covered_fraction: float = 0.25,
                energy_points: int = 2000) -> dict:
    """``modes_covered`` counts modes holding at least ``covered_fraction`` of their true weight.
    ``reference``: samples from the teacher (fixed seed, at least as many as ``samples``) for the
    energy distance and the log-density gap. Off-mode mass and per-mode recall count every sample
    (a non-finite one is off-mode); the other metrics drop non-finite samples."""
    assert samples.ndim == 2 and samples.shape[1] == teacher.dim, samples.shape
    recall = per_mode_recall(samples, teacher)
    off = off_mode_mass(samples, teacher)
    gap = logp_gap(samples, teacher, reference)
    finite = torch.isfinite(samples).all(dim=1)
    samples = samples[finite]
    mass = mode_masses(samples, teacher)
    w = teacher.weights
    return {
        "mode_mass_tv": float(0.5 * (mass - w).abs().sum()),
        "modes_covered": int((mass >= covered_fraction * w).sum()),
        "num_modes": int(w.shape[0]),
        "mean_true_logpdf": float(teacher.log_prob(samples).mean()),
        "energy_distance": energy_distance(samples[:energy_points], reference[:energy_points]),
        "mode_mass": [round(float(m), 5) for m in mass],
        "true_mode_weight": [round(float(v), 5) for v in w],
        "nonfinite_samples": int((~finite).sum()),
        "off_mode_mass": off,
        "mode_recall": [round(float(r), 5) for r in recall],
        "min_mode_recall": float(recall.min()),
        "logp_gap": gap,
    }
