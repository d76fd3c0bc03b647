"""Numbers over training seeds as the report shows them, and the sentences written from them.

Why one module: every cell that compares variants, every error bar and every caption must read
a difference the same way (mct.stats: Student-t intervals over seeds), so that a difference
inside the seed-to-seed noise never reads as a result. A variant's interval comes from
``summary.json`` (what ``mct summarize`` wrote) when it has one, else from the run's
``seeds`` through the same :func:`mct.stats.interval`, else it is one seed with no interval.
Each caption function takes numbers and returns text, so a test can feed it opposite data."""

from __future__ import annotations

from typing import Mapping, Optional

from ..records import METRICS, Interval
from ..stats import difference, interval
from .collect import BenchResults
from .tables import MISSING, METRICS as FORMATS, Cell, fmt_auto, fmt_int, metric_label


# --------------------------------------------------------------------------- numbers

def seed_values(b: BenchResults, variant: str, metric: str) -> dict[int, float]:
    """Training seed -> value of ``metric`` (the run's ``seeds``; a run without them is its one seed)."""
    r = b.runs.get(variant)
    return {} if r is None else {s.seed: s.scores.metrics[metric] for s in r.seed_runs() if metric in s.scores.metrics}


def stat(b: BenchResults, variant: str, metric: str) -> Optional[Interval]:
    """``metric`` of ``variant`` over its training seeds (None when no record has it)."""
    row = next((r for r in (b.summary.rows if b.summary else []) if r.variant == variant), None)
    if row is not None and metric in row.stats:
        return row.stats[metric]
    vals = seed_values(b, variant, metric)
    return interval(list(vals.values())) if vals else None


def compare(b: BenchResults, variant: str, baseline: str, metric: str) -> Optional[tuple[Interval, bool]]:
    """``variant`` minus ``baseline``: summarize's comparison when it made one, else mct.stats.difference."""
    for c in (b.summary.comparisons if b.summary else []):
        if (c.variant, c.baseline, c.metric) == (variant, baseline, metric):
            return c.diff, c.paired
    a, z = seed_values(b, variant, metric), seed_values(b, baseline, metric)
    if not a or not z:
        return None
    diff, paired, _ = difference(a, z)
    return diff, paired


def better(metric: str) -> str:
    return METRICS.get(metric, ("", ""))[1]


def fmt_value(v: float, metric: str, mean_of_many: bool = False) -> str:
    """``v`` as the metric's column shows it (KID x 10^3 everywhere); a mean of an integer count over
    several seeds keeps one decimal, its interval ends too (7.6 covered modes is not 8)."""
    spec = FORMATS.get(metric)
    f = spec.fmt if spec else fmt_auto
    if f is fmt_int and mean_of_many:
        return f"{v:.1f}"
    return f(float(v))


def seeds_word(n: int) -> str:
    return f"{n} seed" + ("" if n == 1 else "s")


def fmt_interval(iv: Optional[Interval], metric: str, with_n: bool = True) -> str:
    """'5.31 [5.10, 5.52], 3 seeds' (95 % interval of the mean); '5.31, 1 seed' without an interval."""
    if iv is None:
        return "\u2014"
    many = iv.n > 1
    if many and iv.std == 0:
        return fmt_value(iv.mean, metric) + (f", the same in all {iv.n} seeds" if with_n else " (no spread)")
    f = lambda v: fmt_value(v, metric, many)  # noqa: E731
    if iv.lo is not None and iv.hi is not None and f(iv.lo) == f(iv.hi):
        digits = fine_digits(iv.lo, iv.hi, metric)  # the column's rounding would hide the interval
        f = lambda v: fmt_fine(v, metric, digits)  # noqa: E731
    text = f(iv.mean)
    if iv.lo is not None and iv.hi is not None:
        text += f" [{f(iv.lo)}, {f(iv.hi)}]"
    return text + (f", {seeds_word(iv.n)}" if with_n else "")


def fmt_fine(v: float, metric: str, digits: int = 3) -> str:
    """``digits`` significant figures on the metric's scale (KID x 10^3)."""
    v = v * 1e3 if metric in ("kid_mean", "kid_std") else v
    return f"{v:.{digits}g}"


def fine_digits(lo: float, hi: float, metric: str) -> int:
    """The fewest significant figures (3 to 8) that tell ``lo`` from ``hi``: an interval narrower than
    the column's rounding shows its width ('2.6276 [..]') instead of '2.63 [2.63, 2.63]'."""
    for d in range(3, 9):
        if fmt_fine(lo, metric, d) != fmt_fine(hi, metric, d):
            return d
    return 8


def interval_title(iv: Interval, metric: str) -> str:
    """The tooltip of an interval cell: what the numbers are."""
    if iv.lo is None:
        return f"{metric}: {iv.mean!r}, one training seed (no interval)"
    return (f"{metric}: mean {iv.mean!r} over {iv.n} training seeds, std {iv.std!r}, "
            f"{iv.level:.0%} t-interval of the mean [{iv.lo!r}, {iv.hi!r}]")


def plain_label(metric: str) -> str:
    """The metric's label without its better-direction arrow (for sentences)."""
    return metric_label(metric).rstrip(" \u2193\u2191")


def interval_cell(iv: Optional[Interval], metric: str, missing_title: str = "not measured") -> Cell:
    """A table cell of a variant's metric over its seeds (a grey dash when no record has it)."""
    if iv is None:
        return Cell(MISSING, "num missing", missing_title)
    return Cell(fmt_interval(iv, metric), "num" + ("" if iv.lo is not None else " single"), interval_title(iv, metric))


def overlap(a: Interval, b: Interval) -> Optional[bool]:
    """Do the two intervals overlap? None when either is one seed (no interval: cannot tell)."""
    if None in (a.lo, a.hi, b.lo, b.hi):
        return None
    return a.lo <= b.hi and b.lo <= a.hi


def n_note(ivs: Mapping[str, Interval]) -> str:
    """A sentence when the points of one figure or table rest on different numbers of seeds."""
    ns = {v: iv.n for v, iv in ivs.items()}
    if len(set(ns.values())) <= 1:
        return ""
    return "Seeds differ between points: " + ", ".join(f"{v} {seeds_word(n)}" for v, n in ns.items()) + "."


# --------------------------------------------------------------------------- captions

def spread_caption(ivs: Mapping[str, Interval], metric: str) -> str:
    """Whether the variants differ in ``metric`` beyond their seed intervals at all: 'no
    difference beyond seed noise' when one value lies inside every interval. Variants with one
    seed have no interval; they are named, and left out of the judgement."""
    ivs = {v: iv for v, iv in ivs.items() if iv is not None}
    single = [v for v, iv in ivs.items() if iv.lo is None]
    multi = {v: iv for v, iv in ivs.items() if iv.lo is not None}
    label = plain_label(metric)
    tail = f" ({', '.join(single)}: one seed, no interval, not judged)" if single else ""
    if len(multi) < 2:
        return f"{label}: too few variants with several seeds to judge differences{tail}." if single else ""
    if max(iv.lo for iv in multi.values()) <= min(iv.hi for iv in multi.values()):
        means = [iv.mean for iv in multi.values()]
        return (f"{label}: no difference beyond seed noise (the means span {fmt_value(min(means), metric, True)} "
                f"to {fmt_value(max(means), metric, True)} and every 95 % interval contains a common value){tail}.")
    return f"{label}: the intervals do not all overlap{tail}."


def best_caption(ivs: Mapping[str, Interval], metric: str) -> str:
    """Which variant is best on ``metric`` (by its better direction) and whether its interval is
    clear of every other variant's (else: which ones it cannot be told apart from)."""
    ivs = {v: iv for v, iv in ivs.items() if iv is not None}
    way = better(metric)
    if len(ivs) < 2 or not way or all(iv.lo is None for iv in ivs.values()):
        return ""
    pick = min if way == "lower" else max
    best = pick(ivs, key=lambda v: ivs[v].mean)
    word = "Lowest" if way == "lower" else "Highest"
    name = plain_label(metric)
    text = f"{word} {name}: {best} ({fmt_interval(ivs[best], metric)})"
    others = {v: overlap(ivs[best], iv) for v, iv in ivs.items() if v != best}
    tied = [v for v, o in others.items() if o]
    unknown = [v for v, o in others.items() if o is None]
    if unknown:
        text += f"; against {', '.join(unknown)} it cannot be judged (one seed, no interval)"
    if tied:
        text += f"; its interval overlaps {', '.join(tied)}'s, so it is not separated from them"
    elif not unknown:
        text += "; its interval is clear of every other variant's"
    return text + "."


def curve_caption(first_last: Mapping[str, Mapping[int, tuple[float, float]]], metric: str) -> str:
    """Per variant, whether ``metric`` at the last evaluation during training differs from the
    first beyond the seed interval (``first_last``: variant -> seed -> (first, last))."""
    parts = []
    for v, per_seed in first_last.items():
        if not per_seed:
            continue
        first = {s: fl[0] for s, fl in per_seed.items()}
        last = {s: fl[1] for s, fl in per_seed.items()}
        f_mean, l_mean = sum(first.values()) / len(first), sum(last.values()) / len(last)
        diff, _, _ = difference(last, first)
        head = f"{v} {fmt_value(f_mean, metric)} \u2192 {fmt_value(l_mean, metric)}"
        if diff.lo is None:
            parts.append(f"{head} (1 seed: no interval)")
        elif diff.hi < 0:
            parts.append(f"{head} (lower at the end, beyond the {seeds_word(diff.n)}' interval)")
        elif diff.lo > 0:
            parts.append(f"{head} (higher at the end, beyond the {seeds_word(diff.n)}' interval)")
        else:
            parts.append(f"{head} (no change beyond seed noise over {seeds_word(diff.n)})")
    return "; ".join(parts)


def collapse_note(metrics: Mapping[str, float]) -> str:
    """'collapsed: ...' when the scores show a collapse (precision near 1 with recall near 0: the
    samples sit on the data but cover almost none of it; a mixture mode with no samples)."""
    p, r = metrics.get("precision"), metrics.get("recall")
    if p is not None and r is not None and p >= 0.95 and r <= 0.05:
        return (f"collapsed: precision {p:.2f}, recall {r:.2f}: its samples sit on the real data "
                "but cover almost none of it")
    mr, cov, nm = metrics.get("min_mode_recall"), metrics.get("modes_covered"), metrics.get("num_modes")
    if mr is not None and mr <= 0.0:
        missed = f" ({int(nm - cov)} of {int(nm)} modes below a quarter of their weight)" if cov is not None and nm else ""
        return f"collapsed onto part of the mixture: at least one mode gets no samples{missed}"
    return ""
