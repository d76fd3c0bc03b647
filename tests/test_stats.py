"""mct.stats against closed forms: the t-interval, paired and Welch differences, verdicts."""

import math

import pytest

from mct.errors import MCTError
from mct.records import Interval
from mct.stats import difference, interval, verdict


def test_interval_matches_the_t_formula():
    iv = interval([1.0, 2.0, 3.0, 4.0, 5.0])
    # mean 3, sample std sqrt(2.5), t_{0.975, 4} = 2.7764451
    assert iv.mean == 3.0 and iv.n == 5
    assert iv.std == pytest.approx(math.sqrt(2.5), rel=1e-12)
    half = 2.7764451052 * math.sqrt(2.5) / math.sqrt(5)
    assert (iv.lo, iv.hi) == (pytest.approx(3 - half, rel=1e-8), pytest.approx(3 + half, rel=1e-8))


def test_one_value_has_no_interval_and_is_inconclusive():
    iv = interval([0.7])
    assert (iv.mean, iv.n, iv.std, iv.lo, iv.hi) == (0.7, 1, None, None, None)
    assert verdict(iv, "lower") == "inconclusive"


def test_paired_difference_cancels_the_seed_effect():
    # seed effects +-10 dominate, the per-seed difference is always -1: paired sees it, Welch would not
    base = {0: 10.0, 1: 20.0, 2: 30.0}
    var = {0: 9.0, 1: 19.1, 2: 28.9}
    iv, paired, seeds = difference(var, base)
    assert paired and seeds == [0, 1, 2]
    assert iv.mean == pytest.approx(-1.0) and iv.hi < 0
    assert verdict(iv, "lower") == "holds" and verdict(iv, "higher") == "reversed"


def test_welch_when_the_seeds_differ():
    a, b = {0: 1.0, 1: 2.0, 2: 3.0}, {10: 2.0, 11: 4.0, 12: 6.0}
    iv, paired, seeds = difference(a, b)
    assert not paired and seeds == []
    se = math.sqrt(1.0 / 3 + 4.0 / 3)
    df = (1 / 3 + 4 / 3) ** 2 / ((1 / 3) ** 2 / 2 + (4 / 3) ** 2 / 2)
    from scipy.stats import t
    half = t.ppf(0.975, df) * se
    assert iv.mean == pytest.approx(-2.0) and iv.std == pytest.approx(se)
    assert (iv.lo, iv.hi) == (pytest.approx(-2.0 - half), pytest.approx(-2.0 + half))
    assert verdict(iv, "lower") == "inconclusive"


def test_verdict_needs_the_whole_interval_on_one_side():
    assert verdict(Interval(mean=-0.5, n=3, std=1, lo=-1.0, hi=0.1), "lower") == "inconclusive"
    assert verdict(Interval(mean=-0.5, n=3, std=1, lo=-1.0, hi=-0.1), "lower") == "holds"
    assert verdict(Interval(mean=0.5, n=3, std=1, lo=0.1, hi=1.0), "lower") == "reversed"
    assert verdict(Interval(mean=0.5, n=3, std=1, lo=0.1, hi=1.0), "higher", margin=0.2) == "inconclusive"
    with pytest.raises(MCTError):
        verdict(Interval(mean=0.0, n=1), "smaller")


def test_non_finite_values_are_refused():
    with pytest.raises(MCTError, match="not a finite number"):
        interval([1.0, float("nan")])
