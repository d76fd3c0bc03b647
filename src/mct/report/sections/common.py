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
    """The settings of ``variant`` that differ from the main run, in words (from the records)."""
    ref = b.reference
    if variant == ref:
        return "main run"
    if ref is None or variant not in b.runs:
        return ""
    diff = setting_diff(b.runs[ref], b.runs[variant])
    return ", ".join(describe_setting(k, v) for k, v in diff.items()) or "same settings"


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
    """The K = 1 baseline (reverse-KL gradient): the run with K = 1 closest to the main run."""
    ref = b.reference
    cands = [v for v, r in b.runs.items() if r.settings.get("K") == 1 and v != ref]
    if not cands or ref is None:
        return cands[0] if cands else None
    return min(cands, key=lambda v: len(setting_diff(b.runs[ref], b.runs[v])))


def k_label(variant: str, r: RunMetrics, ref: Optional[str]) -> str:
    k = r.settings.get("K")
    base = f"K = {k}" if k is not None else variant
    return f"{variant} ({base})" if variant == ref or (k is not None and variant.lower() != f"k{k}") else base


def compare_caption(b: BenchResults, variants: list[str], metric: str) -> str:
    """'mct FID 5.31; no-nc 5.77 (+0.46, worse); ...' against the main run, with the
    seed-to-seed spread when a seed-only variant exists."""
    ref = b.reference
    if ref is None or metric not in b.runs[ref].scores.metrics:
        return ""
    base = b.runs[ref].scores.metrics[metric]
    spread = b.seed_spread(metric)
    parts = [f"{ref} {metric_label(metric)} {fmt(base, metric)}"]
    for v in variants:
        if v == ref or metric not in b.runs[v].scores.metrics:
            continue
        x = b.runs[v].scores.metrics[metric]
        d = x - base
        verdict = ""
        if better(metric) and d != 0:
            worse = d > 0 if better(metric) == "lower" else d < 0
            noise = spread is not None and abs(d) <= spread
            verdict = ", within seed noise" if noise else (", worse" if worse else ", better")
        sign = "+" if d >= 0 else "\u2212"
        parts.append(f"{v} {fmt(x, metric)} ({sign}{fmt(abs(d), metric)}{verdict})")
    text = "; ".join(parts) + "."
    if spread is not None:
        text += f" Seed-to-seed difference of the main setting: {fmt(spread, metric)}; smaller differences are noise."
    return text
