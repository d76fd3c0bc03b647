"""From every training seed of every variant to the numbers a reader may trust: the summary's
interval per metric, the comparisons between variants, and the paper's claims, each decided by an
interval (mct.stats) and never by one value per side.

Why a module of its own: summarize (mct.benchmarks.base) and every benchmark's claims read the same
seed table, and a claim must say in words what it was decided on (variants, metric, seeds, paired
or Welch, level) the same way everywhere."""

from __future__ import annotations

import math
import re
from typing import Callable, Optional

from ..records import Claim, Comparison, Interval, SeedRun, SummaryRow
from ..records.names import METRICS
from ..stats import LEVEL, difference, interval, verdict

# the K-sweep: variants named k<K>, and mct itself (its K is the main run's)
SWEEP = re.compile(r"^k\d+$")
# ablation -> what it removes (each is compared against mct)
ABLATIONS = ("no-nc", "no-reparam", "random-init")


class SeedTable:
    """Per variant, the :class:`SeedRun` of each training seed. A record written before seeds existed
    (or by a benchmark whose evaluate writes none) counts as one seed: its own scores."""

    def __init__(self, recs: list):
        self.runs: dict[str, list[SeedRun]] = {}
        self.settings: dict[str, dict] = {}
        for r in recs:
            self.runs[r.variant] = r.seed_runs()
            self.settings[r.variant] = dict(r.settings)

    def __contains__(self, variant: str) -> bool:
        return variant in self.runs

    def values(self, variant: str, metric: str) -> dict[int, float]:
        """Training seed -> the metric's value, for the seeds that have a finite one."""
        return self.derived(variant, lambda run: run.scores.metrics.get(metric))

    def derived(self, variant: str, fn: Callable[[SeedRun], Optional[float]]) -> dict[int, float]:
        """Training seed -> ``fn(seed run)`` (e.g. the first point of the FID curve), finite ones only."""
        out = {}
        for run in self.runs.get(variant, []):
            v = fn(run)
            if v is not None and math.isfinite(float(v)):
                out[run.seed] = float(v)
        return out

    def mean(self, variant: str, metric: str) -> Optional[float]:
        v = self.values(variant, metric)
        return sum(v.values()) / len(v) if v else None

    def row(self, rec) -> SummaryRow:
        """The summary row of ``rec``'s variant: each metric's mean over the seeds and its interval."""
        stats = {}
        for m in dict.fromkeys(k for run in self.runs[rec.variant] for k in run.scores.metrics):
            vals = self.values(rec.variant, m)
            if vals:
                stats[m] = interval(list(vals.values()), what=f"{rec.variant} {m}")
        return SummaryRow(variant=rec.variant, nfe=rec.nfe, settings=rec.settings,
                          metrics={m: st.mean for m, st in stats.items()},
                          seeds=[run.seed for run in self.runs[rec.variant]], stats=stats)

    def best_k(self, metric: str) -> Optional[str]:
        """The K-sweep variant with K > 1 (k<K> or mct) whose mean of ``metric`` is best (direction from
        mct.records.names), or None. Chosen on the same seeds it is then compared on: the basis says so."""
        better = METRICS.get(metric, ("", ""))[1]
        cands = [v for v in self.runs if (SWEEP.match(v) or v == "mct") and int(self.settings[v].get("K", 1)) > 1
                 and self.mean(v, metric) is not None]
        if not cands or better not in ("lower", "higher"):
            return None
        return (min if better == "lower" else max)(cands, key=lambda v: self.mean(v, metric))


def comparison_pairs(table: SeedTable, headline: str) -> list[tuple[str, str]]:
    """(variant, baseline): mct vs k1, each ablation vs mct, the best K vs k1 (the headline metric's mean)."""
    pairs = [("mct", "k1")] + [(a, "mct") for a in ABLATIONS]
    best = table.best_k(headline)
    if best is not None:
        pairs.append((best, "k1"))
    return [p for p in dict.fromkeys(pairs) if p[0] in table and p[1] in table and p[0] != p[1]]


def comparisons(table: SeedTable, headline: str, metrics: tuple[str, ...]) -> list[Comparison]:
    """Every pair of :func:`comparison_pairs` on every metric both variants have."""
    out = []
    for variant, baseline in comparison_pairs(table, headline):
        for m in metrics:
            a, b = table.values(variant, m), table.values(baseline, m)
            if a and b:
                diff, paired, seeds = difference(a, b)
                out.append(Comparison(variant=variant, baseline=baseline, metric=m, diff=diff, paired=paired,
                                      seeds=seeds))
    return out


def _seeds(seeds) -> str:
    seeds = sorted(seeds)
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}-{seeds[-1]}"
    return ", ".join(map(str, seeds))


def decide(text: str, metric: str, better: str, a: dict[int, float], b: dict[int, float], names: tuple[str, str],
           what: str = "", threshold: float = 0.0, note: str = "", how: str = "") -> Optional[Claim]:
    """The claim that ``names[0]`` (per-seed values ``a``) beats ``names[1]`` (``b``) on ``metric``
    in the direction ``better``: decided on the interval of a - b (paired over shared seeds, else
    Welch) compared with ``threshold`` instead of zero ('within 10 % of the teacher': lower,
    threshold 0.1 x the teacher's value). None when either side has no value."""
    if not a or not b:
        return None
    diff, paired, seeds = difference(a, b)
    shifted = Interval(mean=diff.mean - threshold, n=diff.n, std=diff.std,
                       lo=None if diff.lo is None else diff.lo - threshold,
                       hi=None if diff.hi is None else diff.hi - threshold, level=diff.level)
    how = how or (f"paired over seeds {_seeds(seeds)} (n = {len(seeds)})" if paired else
                  f"Welch, n = {len(a)} vs {len(b)} (seeds {_seeds(a)} vs {_seeds(b)})")
    if diff.lo is None:
        how += ": no interval (a side has one value), so inconclusive"
    bar = "" if threshold == 0 else f"; holds when the interval lies {'below' if better == 'lower' else 'above'} " \
                                    f"{threshold:.4g} instead of 0"
    basis = f"{names[0]} - {names[1]} on {what or metric}, {how}, {round(LEVEL * 100)} % t-interval{bar}" + (
        f"; {note}" if note else "")
    return Claim(claim=text, verdict=verdict(shifted, better), metric=metric, better=better, basis=basis, diff=diff,
                 values={names[0]: sum(a.values()) / len(a), names[1]: sum(b.values()) / len(b)},
                 threshold=threshold)


def versus(table: SeedTable, text: str, variant: str, baseline: str, metric: str, better: Optional[str] = None,
           note: str = "") -> Optional[Claim]:
    """``variant`` beats ``baseline`` on ``metric`` (direction from mct.records.names unless given)."""
    better = better or METRICS.get(metric, ("", "lower"))[1] or "lower"
    return decide(text, metric, better, table.values(variant, metric), table.values(baseline, metric),
                  (variant, baseline), note=note)


def versus_value(table: SeedTable, text: str, variant: str, metric: str, ref_name: str, ref: float,
                 better: str, threshold: float, note: str = "") -> Optional[Claim]:
    """``variant``'s seeds against one reference number (the teacher, exact samples: no seeds of its
    own): the interval of (value - ref) over the variant's seeds, compared with ``threshold``."""
    a = table.values(variant, metric)
    if not a or ref is None or not math.isfinite(ref):
        return None
    how = f"over {variant}'s seeds {_seeds(a)} (n = {len(a)}), {ref_name} one number ({ref:.4g})"
    c = decide(text, metric, better, {s: v - ref for s, v in a.items()}, {s: 0.0 for s in a}, (variant, ref_name),
               threshold=threshold, note=note, how=how)
    c.values = {variant: sum(a.values()) / len(a), ref_name: float(ref)}
    return c


def first_fid(run: SeedRun) -> Optional[float]:
    """The FID at the first evaluation point of the training curve (how fast it starts to converge)."""
    return run.fid_curve[0].fid if run.fid_curve else None


def mean_curve_fid(run: SeedRun) -> Optional[float]:
    """The area under the FID-vs-iteration curve divided by its length (trapezoids; one point: itself)."""
    pts = sorted((p.iteration, p.fid) for p in run.fid_curve)
    if len(pts) < 2:
        return pts[0][1] if pts else None
    area = sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in zip(pts, pts[1:]))
    return area / (pts[-1][0] - pts[0][0])


def keep(*claims: Optional[Claim]) -> list[Claim]:
    return [c for c in claims if c is not None]


def more_k(table: SeedTable, headline: str, metrics: tuple[str, ...], label: str = "") -> tuple[Optional[str], list]:
    """'More Langevin steps cover more modes': the K-sweep's best variant (by ``headline``'s mean, named
    ``label`` in the note) against K = 1 on each of ``metrics`` -> (the best variant or None, claims)."""
    best = table.best_k(headline)
    if best is None or "k1" not in table:
        return best, []
    k = table.settings[best].get("K")
    note = f"{best} (K = {k}) is the K-sweep's best {label or headline} mean on these seeds"
    return best, keep(*(versus(table, f"more Langevin steps cover more modes: K = {k} beats K = 1 on {m}", best,
                               "k1", m, note=note) for m in metrics))
