"""Numbers over training seeds: the interval of a mean, of a difference between two variants, and
the verdict a claim gets from it.

Why here and not in the report: every comparison the project prints (summary.csv, the claims,
the report's error bars) must come from the same rule, so that a difference inside the
seed-to-seed noise reads "inconclusive" everywhere. Student-t intervals (the seeds are few:
3 to 5); a paired difference when both variants ran the same seeds (same initialisation and
data order, so the seed's own luck cancels), else Welch's interval."""

from __future__ import annotations

import math
from typing import Mapping, Sequence

from .errors import MCTError
from .records.parts import Interval

LEVEL = 0.95


def _t(level: float, df: float) -> float:
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2, df))


def _finite(values: Sequence[float], what: str) -> list[float]:
    out = [float(v) for v in values]
    if not out:
        raise MCTError(f"{what}: no values")
    bad = [v for v in out if not math.isfinite(v)]
    if bad:
        raise MCTError(f"{what}: {bad[0]} is not a finite number")
    return out


def interval(values: Sequence[float], level: float = LEVEL, what: str = "interval") -> Interval:
    """Mean, sample std (ddof 1) and the ``level`` t-interval of the mean of ``values``; std and
    interval are None for a single value (no spread is known)."""
    x = _finite(values, what)
    n = len(x)
    mean = sum(x) / n
    if n == 1:
        return Interval(mean=mean, n=1, level=level)
    std = math.sqrt(sum((v - mean) ** 2 for v in x) / (n - 1))
    half = _t(level, n - 1) * std / math.sqrt(n)
    return Interval(mean=mean, n=n, std=std, lo=mean - half, hi=mean + half, level=level)


def difference(variant: Mapping[int, float], baseline: Mapping[int, float],
               level: float = LEVEL) -> tuple[Interval, bool, list[int]]:
    """``variant`` minus ``baseline`` (each: training seed -> value) -> (interval, paired, seeds).

    Paired over the shared seeds when there are at least two of them (the interval of the
    per-seed differences); otherwise Welch's interval of the difference of the means (needs two
    values on each side; with fewer, the interval is None and any verdict on it inconclusive)."""
    shared = sorted(set(variant) & set(baseline))
    if len(shared) >= 2:
        diffs = [variant[s] - baseline[s] for s in shared]
        return interval(diffs, level, "paired difference"), True, shared
    a, b = _finite(list(variant.values()), "variant"), _finite(list(baseline.values()), "baseline")
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    n = min(len(a), len(b))
    if len(a) < 2 or len(b) < 2:
        return Interval(mean=ma - mb, n=n, level=level), False, shared
    va = sum((v - ma) ** 2 for v in a) / (len(a) - 1) / len(a)
    vb = sum((v - mb) ** 2 for v in b) / (len(b) - 1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return Interval(mean=ma - mb, n=n, std=0.0, lo=ma - mb, hi=ma - mb, level=level), False, shared
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = _t(level, df) * se
    return Interval(mean=ma - mb, n=n, std=se, lo=ma - mb - half, hi=ma - mb + half, level=level), False, shared


def verdict(diff: Interval, better: str, margin: float = 0.0) -> str:
    """'holds' when the whole interval of ``diff`` lies beyond ``margin`` on the side ``better``
    says ('lower': diff < -margin, 'higher': diff > margin), 'reversed' when it lies wholly on the
    other side of zero, else 'inconclusive' (also when there is no interval: one seed)."""
    if better not in ("lower", "higher"):
        raise MCTError(f"better must be 'lower' or 'higher', got {better!r}")
    if diff.lo is None or diff.hi is None:
        return "inconclusive"
    lo, hi = (diff.lo, diff.hi) if better == "higher" else (-diff.hi, -diff.lo)
    if lo > margin:
        return "holds"
    if hi < 0:
        return "reversed"
    return "inconclusive"
