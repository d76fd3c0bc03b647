"""The toy metrics a bad student cannot hide behind (mct.metrics.toy): off-mode mass, per-mode
recall and the log-density gap, checked against closed forms on exact samples, a collapsed
student and a student with mass on the ring between the modes."""

import math

import pytest
import torch

from mct.metrics.toy import ball_mass, in_mode_balls, logp_gap, off_mode_mass, per_mode_recall, toy_metrics
from mct.teachers.gmm import GMMDenoiser, ring_gmm

N = 20000
P_OFF = math.exp(-4.5)  # P(|N(0, I_2)| > 3): chi with 2 dof, P(r > 3) = exp(-9/2) = 0.011109


def binomial_tol(p: float, n: int, z: float = 4.0) -> float:
    return z * math.sqrt(p * (1 - p) / n)


@pytest.fixture(scope="module")
def ring():
    return ring_gmm()  # 8 modes of std 0.25 on a circle of radius 4, weights 1..8 / 36


@pytest.fixture(scope="module")
def exact(ring):
    g = torch.Generator().manual_seed(0)
    return ring.sample(N, g), ring.sample(N, g)  # (samples, reference), independent


def _between(ring, n: int, seed: int) -> torch.Tensor:
    """Points uniform in angle on the circle of the modes (radius 4): the ring between them."""
    theta = 2 * math.pi * torch.rand(n, generator=torch.Generator().manual_seed(seed))
    return 4.0 * torch.stack([theta.cos(), theta.sin()], 1)


def test_ball_mass_closed_form_and_monte_carlo(ring):
    # well-separated modes (neighbours 3.06 apart, balls of radius 0.75): q_k = w_k (1 - e^-4.5)
    q = ball_mass(ring)
    assert torch.allclose(q, ring.weights.double() * (1 - P_OFF), rtol=0, atol=1e-12)
    # overlapping modes of unequal std: the noncentral chi-square series against 200,000 draws
    mix = GMMDenoiser(torch.tensor([[0.0, 0.0], [0.5, 0.0], [3.0, 1.0]]), torch.tensor([0.3, 0.6, 1.0]),
                      torch.tensor([1.0, 2.0, 3.0]))
    q = ball_mass(mix)
    own = mix.weights.double() * (1 - P_OFF)
    assert (q > own + 0.05).all()  # the other components' mass is counted
    x = mix.sample(200_000, generator=torch.Generator().manual_seed(1))
    got = in_mode_balls(x, mix).double().mean(0)
    for qk, gk in zip(q.tolist(), got.tolist()):
        assert abs(gk - qk) <= binomial_tol(qk, 200_000), (qk, gk)


def test_exact_samples(ring, exact):
    x, ref = exact
    off = off_mode_mass(x, ring)
    assert abs(off - P_OFF) <= binomial_tol(P_OFF, N), off  # 4 sd = 0.0030
    recall = per_mode_recall(x, ring)
    # clipped at 1: each mode within 4 sd of 1, sd = sqrt((1 - q_k) / (N q_k)) (0.038 for the smallest)
    q = ball_mass(ring)
    assert ((recall - 1).abs() <= 4 * ((1 - q) / (N * q)).sqrt()).all(), recall
    assert recall.min() > 0.9
    gap = logp_gap(x, ring, ref)
    # log p of a sample has std about 1.2 nats here: the gap of two sets of N has sd about 0.012
    lp = ring.log_prob(ref).double()
    assert abs(gap) <= 4 * lp.std().item() * math.sqrt(2 / N), gap
    m = toy_metrics(x, ring, ref)
    assert m["off_mode_mass"] == off and m["logp_gap"] == gap and m["min_mode_recall"] == float(recall.min())
    assert m["mode_recall"] == [round(float(r), 5) for r in recall] and len(m["mode_recall"]) == 8
    # mean log p of exact samples: sum_k w_k log w_k - log(2 pi s^2) - 1 = -2.002 (separated modes)
    w = ring.weights.double()
    expect = float((w * w.log()).sum()) - math.log(2 * math.pi * 0.25 ** 2) - 1
    assert abs(expect - (-2.002)) < 1e-3 and abs(m["mean_true_logpdf"] - expect) <= 4 * lp.std().item() / math.sqrt(N)


@pytest.mark.parametrize("modes", [(0, 1), (6, 7)])
def test_collapsed_student(ring, exact, modes):
    """All samples on two modes (in proportion to their weights, exact within each mode)."""
    _, ref = exact
    g = torch.Generator().manual_seed(2)
    w = ring.weights[list(modes)]
    k = torch.tensor(modes)[torch.multinomial(w / w.sum(), N, replacement=True, generator=g)]
    x = ring.means[k] + 0.25 * torch.randn(N, 2, generator=g)
    m = toy_metrics(x, ring, ref)
    recall = torch.tensor(m["mode_recall"])
    others = [i for i in range(8) if i not in modes]
    assert m["min_mode_recall"] == 0.0 and (recall[others] == 0).all() and (recall[list(modes)] > 0.9).all()
    assert m["modes_covered"] == 2 and abs(m["off_mode_mass"] - P_OFF) <= binomial_tol(P_OFF, N)
    # the gap's closed form: sum_k w_k log w_k - sum_{k in modes} (w_k / sum w) log w_k; the
    # within-mode terms cancel. Two light modes: +1.185 nats; two heavy ones: -0.370 (denser than
    # the data) -- the gap alone does not show a collapse, the recall does
    wa = ring.weights.double()
    ws = wa[list(modes)] / wa[list(modes)].sum()
    expect = float((wa * wa.log()).sum() - (ws * wa[list(modes)].log()).sum())
    assert expect == pytest.approx(1.185 if modes == (0, 1) else -0.370, abs=1e-3)
    assert abs(m["logp_gap"] - expect) <= 0.05, (m["logp_gap"], expect)


def test_mass_on_the_ring_between_modes(ring, exact):
    """Half the samples exact, half uniform on the circle through the modes: every mode still
    holds its nearest-mode share (modes covered 8/8), but the ring's points are mostly off-mode."""
    x_exact, ref = exact
    x = torch.cat([x_exact[: N // 2], _between(ring, N // 2, seed=3)])
    m = toy_metrics(x, ring, ref)
    assert m["modes_covered"] == 8
    # a point on the circle is within 0.75 of a mode iff its angle is within 2 asin(0.75 / 8) of it
    on_ring_off = 1 - 8 * 2 * 2 * math.asin(0.75 / 8) / (2 * math.pi)  # 0.5218
    expect = 0.5 * P_OFF + 0.5 * on_ring_off  # 0.2665
    assert abs(m["off_mode_mass"] - expect) <= binomial_tol(expect, N), (m["off_mode_mass"], expect)
    assert m["off_mode_mass"] > 20 * P_OFF
    assert m["logp_gap"] > 2  # the ring between modes lies where the density is tiny
    # recall: half of each mode's own mass plus the ring's arc inside its ball (0.0598 of the ring);
    # the heaviest mode (q = 0.2198) is the least covered, at (0.5 q + 0.5 a) / q = 0.636
    q, a = ball_mass(ring), 2 * 2 * math.asin(0.75 / 8) / (2 * math.pi)
    expect = ((0.5 * q + 0.5 * a) / q).clamp(max=1)
    m_k = 0.5 * q + 0.5 * a
    tol = 4 * (m_k * (1 - m_k) / N).sqrt() / q
    assert ((torch.tensor(m["mode_recall"], dtype=torch.float64) - expect).abs() <= tol + 1e-5).all()
    assert m["min_mode_recall"] == pytest.approx(0.636, abs=0.05) and m["mode_recall"][:2] == [1.0, 1.0]


def test_each_component_has_its_own_radius_and_nonfinite_samples_are_off_mode():
    mix = GMMDenoiser(torch.tensor([[0.0, 0.0], [10.0, 0.0]]), torch.tensor([0.1, 1.0]), torch.tensor([1.0, 1.0]))
    x = torch.tensor([[0.25, 0.0],   # 2.5 std from the narrow mode: on
                      [0.35, 0.0],   # 3.5 std from the narrow mode: off
                      [12.9, 0.0],   # 2.9 std from the wide mode: on
                      [13.1, 0.0],   # 3.1 std from the wide mode: off
                      [float("nan"), 0.0], [float("inf"), 0.0]])
    assert off_mode_mass(x, mix) == pytest.approx(4 / 6)
    q = ball_mass(mix)
    assert per_mode_recall(x, mix).tolist() == pytest.approx([min(1.0, (1 / 6) / q[0].item()),
                                                               min(1.0, (1 / 6) / q[1].item())])
    # half a mode's true share is a recall of 0.5
    half = torch.cat([torch.zeros(1, 2), torch.full((1, 2), 100.0)])
    one = GMMDenoiser(torch.zeros(1, 2), torch.ones(1), torch.ones(1))
    assert per_mode_recall(half, one).item() == pytest.approx(0.5 / (1 - P_OFF))
