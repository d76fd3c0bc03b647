"""Section 2: per task, the paper's reported numbers (paper_results.yaml) beside the teacher
and the one-step students measured here, the benchmark's claims checked with numbers, and
the teacher's quality against NFE with the students at NFE 1."""

from __future__ import annotations

from typing import Optional

from .. import figures as F
from ..collect import BenchResults
from ..context import Inputs
from ..tables import MISSING, Cell, Row, Table, metric_label, number_cell
from ..seeds import fmt_interval, interval_cell, seeds_word, stat
from .common import EXACT_LABEL, exact_row, fmt, k1_variant, metric_cols

PAPER_COLS = ["fid", "kid_mean", "precision", "recall", "clip_score"]


def _metric_cells(metrics: dict, kid_std: Optional[float], keep: list[str], missing: str) -> list[Cell]:
    cells = []
    for c in keep:
        cell = number_cell(metrics.get(c), c, missing)
        if c == "kid_mean" and kid_std is not None and "missing" not in cell.cls:
            cell.text += f" \u00b1 {kid_std * 1e3:.2f}"  # the same x10^3 scale as the mean
        cells.append(cell)
    return cells


VERDICT_CLS = {"holds": "claim-holds", "reversed": "claim-reversed", "inconclusive": "claim-inconclusive"}


def _test_of(b: BenchResults, c) -> str:
    """'paired over 3 seeds' / 'Welch, 3 vs 5 seeds' for a claim, from the comparison summarize made
    with the same interval (the claim's own record says n only)."""
    d = c.diff
    if d is None:
        return "no interval"
    match = next((x for x in (b.summary.comparisons if b.summary else []) if x.metric == c.metric
                  and set(c.values) == {x.variant, x.baseline}
                  and (x.diff.mean, x.diff.lo, x.diff.hi) == (d.mean, d.lo, d.hi)), None)
    if match is not None:
        how = f"paired over {seeds_word(len(match.seeds) or d.n)}" if match.paired else "Welch (unpaired)"
        return f"{how} ({match.variant} \u2212 {match.baseline})"
    if d.lo is None:
        return f"{seeds_word(d.n)}: no interval"
    return f"n = {d.n} (the basis says how)"


def claims_table(b: BenchResults) -> Optional[Table]:
    """Each claim with the difference it was decided on (mean [95 % interval]), the seeds and the
    test behind it, and its verdict (holds / reversed / inconclusive), each styled apart."""
    if not b.summary or not b.summary.claims:
        return None
    t = Table(columns=[("Claim", ""), ("Metric", "the claim's metric and the direction it says is better"),
                       ("Difference", "mean [95 % interval] of the difference over training seeds"),
                       ("Seeds, test", "paired: the same training seeds on both sides; Welch: unpaired"),
                       ("Basis", "what was compared (summarize)"), ("Verdict", "from the interval (mct.stats.verdict)")],
              kind=f"claims-{b.name}",
              caption=f"Decided by `mct summarize` ({b.name}/summary.json): holds when the whole 95 % interval of "
                      "the difference lies on the claimed side of zero, reversed when it lies wholly on the other "
                      "side, inconclusive otherwise (also with one seed: no interval).")
    for c in b.summary.claims:
        d = c.diff
        diff = MISSING if d is None else fmt_interval(d, c.metric, with_n=False) + ("" if d.lo is not None
                                                                                   else " (no interval)")
        bar = getattr(c, "threshold", 0.0) or 0.0  # a tolerance claim ('within 10 % of the teacher') sets it
        bar_text = fmt(bar, c.metric) if bar else "0"
        metric = f"{metric_label(c.metric)}; claimed difference {'<' if c.better == 'lower' else '>'} {bar_text}" \
            if c.metric else MISSING
        t.rows.append(Row([Cell(c.claim, "text"), Cell(metric, "text"), Cell(diff, "num"), Cell(_test_of(b, c), "text"),
                           Cell(c.basis, "text"), Cell(c.verdict, "verdict " + VERDICT_CLS[c.verdict])],
                          VERDICT_CLS[c.verdict]))
    counts = {v: sum(c.verdict == v for c in b.summary.claims) for v in VERDICT_CLS}
    t.notes.append(", ".join(f"{n} {v}" for v, n in counts.items() if n) + f" of {len(b.summary.claims)} claims.")
    return t


def _notes(inputs: Inputs, b: BenchResults) -> list[str]:
    notes = []
    feats = b.aux.get("features")
    if feats and "heldout_accuracy" in feats.metrics:
        notes.append(f"Feature network (FID/KID/precision/recall): held-out accuracy "
                     f"{feats.metrics['heldout_accuracy']:.3f}.")
    floor = b.real_floor("fid")
    if floor is not None:
        notes.append(f"FID floor (two disjoint sets of real images): {floor:.2f}; FID differences below it are noise.")
    clip = b.aux.get("clip")
    if clip:
        items = [f"{k.replace('_', ' ')} {fmt(v, 'clip_score' if k.startswith('clip_score') else '')}"
                 for k, v in clip.metrics.items() if k in ("zero_shot_accuracy", "clip_score_real", "clip_score_mismatched")]
        if items:
            notes.append("CLIP model of this benchmark: " + ", ".join(items) + ".")
    standin = inputs.standin_for(b.name)
    if standin:
        notes.append(f"Embedded CPU stand-in for {', '.join(standin)}: same code path, its own teacher and feature "
                     "network; numbers are not comparable to the paper's.")
    if b.mixture:
        notes.append("Exact metrics against the analytic mixture teacher (no feature network). "
                     "Mode-mass TV: 0 = every mode holds its true weight. Modes covered counts by nearest mode, so "
                     "mass between the modes still counts; off-mode mass (farther than 3 std from every mode), "
                     "min mode recall and the log-p gap to exact samples do not let it hide.")
    note = next((r.notes["teacher_note"] for r in b.runs.values() if "teacher_note" in r.notes), None)
    if note is None and b.teacher:
        note = b.teacher.notes.get("teacher_note")
    if note:
        notes.append(f"Teacher: {note}")
    return notes


def task_block(inputs: Inputs, name: str) -> dict:
    b = inputs.results.bench(name)
    spec = inputs.paper.get(name) or {}
    ran = b is not None and b.ran
    keep = ["nfe"] + (metric_cols(b) if ran else [c for c in PAPER_COLS if any(r.get(c) is not None
                                                                                  for r in spec.get("rows", []))])
    keep += [c for c in PAPER_COLS if c not in keep and any(r.get(c) is not None for r in spec.get("rows", []))]
    header = [("Method", ""), *[(metric_label(c), "") for c in keep]]
    if ran:
        header.append(("Train time", "wall time of the distillation"))
    header.append(("Source", "where the number comes from"))
    t = Table(columns=header, kind=f"main-{name}")
    for r in spec.get("rows", []):
        cells = [Cell(r.get("method", "?"), "label")]
        cells += [number_cell(r[c], c) if r.get(c) is not None else Cell("", "na", "not reported") for c in keep]
        cells += [Cell("", "na")] if ran else []
        cells.append(Cell(r.get("source", ""), "source"))
        t.rows.append(Row(cells, "paper teacher" if r.get("teacher") else ("paper ours-paper" if r.get("ours_paper") else "paper")))
    figs = []
    if ran:
        path = f"{name}/teacher/metrics.json"
        exact = exact_row(b)
        for tr in (b.teacher.rows if b.teacher else []):
            m = {"nfe": tr.nfe, **tr.scores.metrics}
            label = EXACT_LABEL if tr is exact else f"Teacher, {tr.nfe} NFE (measured here)"
            cells = [Cell(label, "label")]
            cells += _metric_cells(m, tr.scores.get("kid_std"), keep, "not in teacher/metrics.json")
            row = Row(cells + [Cell("", "na"), Cell(path, "source")], "ours teacher")
            if tr is exact:  # the reference every student is read against: first
                t.rows.insert(0, row)
            else:
                t.rows.append(row)
        t.caption = ("Students: mean [95 % t-interval of the mean], n training seeds (one seed: no interval). "
                     "Teacher rows: one evaluation; KID \u00b1 its std over KID subsets. KID \u00d710\u00b3 "
                     "in every cell.")
        ref, k1 = b.reference, k1_variant(b)
        labels = {ref: f"MCT one-step student ({ref})", k1: f"K = 1 baseline ({k1}, reverse KL as in DMD)"}
        for v in (ref, k1):
            if v is None:
                continue
            r = b.runs[v]
            cells = [Cell(labels[v], "label")]
            cells += [number_cell(r.nfe, "nfe") if c == "nfe" else interval_cell(stat(b, v, c), c, "not in metrics.json")
                      for c in keep]
            cells += [number_cell(r.train_seconds, "train_seconds"), Cell(f"{name}/runs/{v}/metrics.json", "source")]
            t.rows.append(Row(cells, "ours"))
        if ref is None:
            t.rows.append(Row([Cell("MCT (this pipeline)", "label"),
                               Cell(f"no run evaluated yet under {name}/runs/", "missing", "", len(header) - 1)], "ours"))
        if b.teacher and ref is not None:
            fig = F.teacher_vs_student({r.nfe: r.scores.get("fid") for r in b.teacher.rows},
                                       {v: stat(b, v, "fid") for v in (ref, k1) if v}, "fid", name,
                                       floor=b.real_floor("fid"))
            if fig:
                figs.append(fig)
    elif spec.get("command"):
        cmd = spec["command"]
        t.rows.append(Row([Cell("MCT (this pipeline)", "label"),
                           Cell(f"not run here \u2014 needs GPUs; run: {cmd}", "notrun code", cmd, len(header) - 1)], "notrun"))
    else:
        t.rows.append(Row([Cell("MCT (this pipeline)", "label"),
                           Cell(f"no results yet under {name}/", "missing", "", len(header) - 1)], "ours"))
    return {"name": name, "title": spec.get("title") or name, "table": t, "figures": figs,
            "claims": claims_table(b) if b else None, "warning": spec.get("warning"), "metric_note": spec.get("metric_note"),
            "teacher": spec.get("teacher"), "notes": _notes(inputs, b) if b else [],
            "paper_scale": bool(spec.get("command")), "ran": ran, "command": spec.get("command")}


def build(inputs: Inputs) -> dict:
    paper = inputs.paper_scale()
    order = paper + [b.name for b in inputs.results.benches if b.name not in paper]
    return {"tasks": [task_block(inputs, n) for n in order]}
