"""Helpers the sections share: which metrics a benchmark has, how a variant differs from the
main run, and captions written from the numbers."""

from __future__ import annotations

from typing import Optional

from ...records import METRICS, RunMetrics, TeacherRow
from ..collect import BenchResults, setting_diff
from ..tables import metric_label, number_cell

# the order metric columns appear in; only those a benchmark's records hold are shown
TABLE_METRICS = ["fid", "kid_mean", "precision", "recall", "clip_score", "class_accuracy", "class_entropy",
                 "classes_covered", "mode_mass_tv", "modes_covered", "off_mode_mass", "min_mode_recall",
                 "mean_true_logpdf", "logp_gap", "energy_distance"]
# the headline metrics of a figure: the first two of these a benchmark has
PRIMARY = ["fid", "mode_mass_tv", "clip_score", "recall", "energy_distance", "class_accuracy"]
SETTING_LABELS = {"K": "K", "reparam": "reparametrised", "noise_cancel": "noise cancellation", "init": "init",
                  "gamma_eps": "\u03b3_eps", "gamma_z": "\u03b3_z", "seed": "seed", "sigma_g": "\u03c3_g"}


def metric_cols(b: BenchResults) -> list[str]:
    have = b.metric_names()
    return [m for m in TABLE_METRICS if m in have]


def primary(b: BenchResults, n: int = 2) -> list[str]:
    have = b.metric_names()
    return [m for m in PRIMARY if m in have][:n]


def fmt(value, metric: str) -> str:
    return number_cell(value, metric).text


def better(metric: str) -> str:
    """'lower', 'higher' or '' (from mct.records.METRICS)."""
    return METRICS.get(metric, ("", ""))[1]


def describe_setting(key: str, value) -> str:
    label = SETTING_LABELS.get(key, key)
    if isinstance(value, bool):
        return f"{label}: {'on' if value else 'off'}"
    return f"{label} = {value:g}" if isinstance(value, float) else f"{label} = {value}"


def what_changes(b: BenchResults, variant: str) -> str:
    """The settings of ``variant`` that differ from the main run, in words (from the records).
    When K changes and gamma_z does not, the z chain's state is said too: a K = 1 run with z
    moving and one with z frozen are different experiments."""
    ref = b.reference
    if variant == ref:
        return "main run"
    if ref is None or variant not in b.runs:
        return ""
    r = b.runs[variant]
    diff = setting_diff(b.runs[ref], r)
    parts = [describe_setting(k, v) for k, v in diff.items()]
    gz = r.settings.get("gamma_z")
    if "K" in diff and "gamma_z" not in diff and gz is not None:
        parts.append(f"\u03b3_z = {gz:g} as the main run (z {'moving' if gz else 'frozen'})")
    elif "gamma_z" in diff and gz is not None:
        parts[list(diff).index("gamma_z")] += f" (z {'moving' if gz else 'frozen'})"
    return ", ".join(parts) or "same settings"


def runs_differing_in(b: BenchResults, allowed: set[str], required: Optional[str] = None) -> list[str]:
    """Variants (main run first) whose settings differ from the main run only in ``allowed``
    keys, and in ``required`` when given."""
    ref = b.reference
    if ref is None:
        return []
    out = [ref]
    for v, r in b.runs.items():
        if v == ref:
            continue
        diff = set(setting_diff(b.runs[ref], r))
        if diff and diff <= allowed and (required is None or required in diff):
            out.append(v)
    return out


def exact_row(b: BenchResults) -> Optional[TeacherRow]:
    """The teacher row of exact samples (an analytic teacher's ``teacher_eval``): the reference row
    of a toy table, scored by the students' metrics against the students' reference."""
    return next((r for r in (b.teacher.rows if b.teacher else []) if r.sampler == "exact"), None)


EXACT_LABEL = "Exact samples of the mixture (reference)"


def k1_variant(b: BenchResults) -> Optional[str]:
    """The K = 1 baseline (reverse-KL gradient of Diff-Instruct/DMD, no z chain): among the runs
    with K = 1, those with the z chain frozen (gamma_z 0 or unset) first, then the one closest to
    the main run. A K = 1 run with z moving is a z-chain ablation, not the baseline."""
    ref = b.reference
    cands = [v for v, r in b.runs.items() if r.settings.get("K") == 1 and v != ref]
    if not cands:
        return None
    frozen = lambda v: not b.runs[v].settings.get("gamma_z")  # noqa: E731
    close = (lambda v: len(setting_diff(b.runs[ref], b.runs[v]))) if ref is not None else (lambda v: 0)
    return min(cands, key=lambda v: (not frozen(v), close(v), v))


def k_sweep(b: BenchResults) -> tuple[list[str], list[str]]:
    """(one run per K, main run included, sorted by K; the z-chain variants left out). Runs that differ
    from the main run only in K and gamma_z are candidates; at K = 1 the baseline (:func:`k1_variant`)
    is the point, at any other K the run keeping the main run's gamma_z. A second run at the same K
    (z frozen where the sweep moves it, or the other way round) is a z-chain ablation: it goes to its
    own table, never averaged into the point."""
    ref = b.reference
    if ref is None:
        return [], []
    cands = runs_differing_in(b, {"K", "gamma_z"})  # (gamma_z alone: a z-chain variant at the main run's K)
    gz = b.runs[ref].settings.get("gamma_z")
    k1 = k1_variant(b)
    by_k: dict = {}
    for v in cands:
        by_k.setdefault(b.runs[v].settings.get("K"), []).append(v)
    points, zchain = [], []
    for k, vs in by_k.items():
        if ref in vs:
            pick = ref
        elif k == 1 and k1 in vs:
            pick = k1
        else:
            pick = next((v for v in vs if b.runs[v].settings.get("gamma_z") == gz), vs[0])
        points.append(pick)
        zchain += [v for v in vs if v != pick]
    points.sort(key=lambda v: b.runs[v].settings.get("K", 0))
    return points, zchain


def k_label(variant: str, r: RunMetrics, ref: Optional[str]) -> str:
    k = r.settings.get("K")
    base = f"K = {k}" if k is not None else variant
    return f"{variant} ({base})" if variant == ref or (k is not None and variant.lower() != f"k{k}") else base


def compare_caption(b: BenchResults, variants: list[str], metric: str) -> str:
    """'mct FID 5.31 [..], 3 seeds; no-nc 5.77 (+0.46 [..], paired over 3 seeds: worse); ...': each
    run against the main one by the interval of the difference (mct.stats), never by the means alone."""
    from ...stats import verdict
    from ..seeds import compare, fmt_interval, stat

    ref = b.reference
    base = stat(b, ref, metric) if ref is not None else None
    if base is None:
        return ""
    parts = [f"{ref} {metric_label(metric)} {fmt_interval(base, metric)}"]
    for v in variants:
        iv = stat(b, v, metric)
        if v == ref or iv is None:
            continue
        cmp = compare(b, v, ref, metric)
        if cmp is None:
            continue
        d, paired = cmp
        if d.lo is None:
            word = "one seed: not judged"
        else:
            way = better(metric)
            got = verdict(d, way) if way else ""
            word = {"holds": "better", "reversed": "worse"}.get(got, "within seed noise" if way else "")
            word = f"{'paired' if paired else 'Welch'}, {seeds_n(d.n)}" + (f": {word}" if word else "")
        parts.append(f"{v} {fmt(iv.mean, metric)} ({fmt_signed(d.mean, metric)}, {word})")
    return "; ".join(parts) + "."


def seeds_n(n: int) -> str:
    return f"{n} seed" + ("" if n == 1 else "s")


def fmt_signed(d: float, metric: str) -> str:
    return ("+" if d >= 0 else "\u2212") + fmt(abs(d), metric)
