"""Section 3: every run against the main one. Which runs form an ablation, a K sweep or a
step-size sweep is read off their recorded settings (a run that differs from the main run
only in ``reparam``, ``noise_cancel`` or ``init`` is an ingredient ablation; only in K (and
gamma_z), a K sweep point; only in gamma_eps, a step-size point; only in the seed, the noise
level every difference is judged against). Captions are written from the numbers."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from .. import figures as F
from ..collect import BenchResults
from ..context import Inputs
from ..tables import Cell, Row, Table, fmt_fixed, metric_label, number_cell
from .common import (EXACT_LABEL, better, compare_caption, describe_setting, exact_row, fmt, metric_cols, primary,
                     runs_differing_in, what_changes)

INGREDIENTS = {"reparam", "noise_cancel", "init"}
# metrics with natural bounds: a sweep's axis spans them, so that noise cannot look like a trend
BOUNDS = {"precision": (0.0, 1.0), "recall": (0.0, 1.0), "class_accuracy": (0.0, 1.0), "mode_mass_tv": (0.0, 1.0),
          "off_mode_mass": (0.0, 1.0), "min_mode_recall": (0.0, 1.0)}


def _bounds(b: BenchResults, metric: str) -> tuple[float, Optional[float]]:
    if metric == "class_entropy":
        top = max((r.scores.metrics.get("class_entropy_max", 0.0) for r in b.runs.values()), default=0.0)
        return 0.0, top or None
    if metric == "modes_covered":
        top = max((r.scores.metrics.get("num_modes", 0.0) for r in b.runs.values()), default=0.0)
        return 0.0, top or None
    return BOUNDS.get(metric, (0.0, None))


def _overview(b: BenchResults) -> Table:
    cols = metric_cols(b)
    constant = []
    keys = list(dict.fromkeys(k for r in b.runs.values() for k in r.settings))
    for k in keys:
        vals = {repr(r.settings.get(k)) for r in b.runs.values()}
        if len(vals) == 1 and len(b.runs) > 1:
            constant.append(describe_setting(k, next(iter(b.runs.values())).settings.get(k)))
    its = {r.iterations for r in b.runs.values()}
    show_its = len(its) > 1
    if not show_its and its != {None}:
        constant.append(f"iterations = {next(iter(its))}")
    header = [("Variant", ""), ("What changes", "settings that differ from the main run")]
    header += [(metric_label(c), "") for c in cols] + ([("Iterations", "")] if show_its else [])
    header.append(("Train time", "wall time of the distillation"))
    t = Table(columns=header, kind=f"ablation-{b.name}",
              caption=("Same for every run: " + ", ".join(constant) + ".") if constant else "")
    exact = exact_row(b)
    if exact is not None:
        cells = [Cell(EXACT_LABEL, "label"), Cell("no network: drawn from the mixture, scored like the runs", "text")]
        cells += [number_cell(exact.scores.get(c), c, "not in teacher/metrics.json") for c in cols]
        t.rows.append(Row(cells + ([number_cell(None)] if show_its else []) + [Cell("", "na")], "ours teacher"))
    for v in b.variants:
        r = b.runs.get(v)
        if r is None:
            cells = [Cell(v, "label"), Cell("(no metrics.json yet)", "missing")]
            cells += [number_cell(None, c) for c in cols] + ([number_cell(None)] if show_its else []) + [number_cell(None)]
            t.rows.append(Row(cells, "notrun"))
            continue
        cells = [Cell(v, "label"), Cell(what_changes(b, v), "text")]
        for c in cols:
            cell = number_cell(r.scores.get(c), c, "not in metrics.json")
            if c == "kid_mean" and r.scores.get("kid_std") is not None and "missing" not in cell.cls:
                cell.text += f" \u00b1 {r.scores.get('kid_std') * 1e3:.2f}"
            cells.append(cell)
        cells += [number_cell(r.iterations, "iterations")] if show_its else []
        cells.append(number_cell(r.train_seconds, "train_seconds"))
        t.rows.append(Row(cells, "ours" if v == b.reference else ""))
    return t


def _sweep_caption(b: BenchResults, variants: list[str], key: str, metric: str, label: str) -> str:
    pts = sorted((b.runs[v].settings[key], b.runs[v].scores.metrics[metric]) for v in variants
                 if key in b.runs[v].settings and metric in b.runs[v].scores.metrics)
    if len(pts) < 2:
        return ""
    pick = min if better(metric) == "lower" else max
    best = pick(pts, key=lambda p: p[1])
    text = (f"{metric_label(metric)}: {fmt(pts[0][1], metric)} at {label} = {pts[0][0]:g}, "
            f"{fmt(pts[-1][1], metric)} at {label} = {pts[-1][0]:g}")
    spread = b.seed_spread(metric)
    span = max(p[1] for p in pts) - min(p[1] for p in pts)
    if spread is not None and span <= spread:
        return text + f"; flat: the whole range ({fmt(span, metric)}) is within the seed-to-seed difference " \
                      f"({fmt(spread, metric)})."
    if better(metric):
        text += f" (best {fmt(best[1], metric)} at {label} = {best[0]:g})"
    if spread is not None:
        rel = f"{span / spread:.1f}\u00d7" if spread > 0 else "larger than"
        text += f"; the whole range ({fmt(span, metric)}) is {rel} the seed-to-seed difference ({fmt(spread, metric)})"
    return text + "."


def _sweep(b: BenchResults, key: str, variants: list[str], metrics: list[str], xlabel: str, label: str,
           log_base: Optional[int], what: str, slug: str):
    data = {m: [(b.runs[v].settings[key], b.runs[v].scores.metrics[m], v) for v in variants
                if key in b.runs[v].settings and m in b.runs[v].scores.metrics] for m in metrics}
    data = {m: p for m, p in data.items() if len({x for x, _, _ in p}) >= 2}
    if not data:
        return None
    caption = " ".join(x for x in [what] + [_sweep_caption(b, variants, key, m, label) for m in data] if x)
    return F.sweep(data, xlabel, log_base, {m: _bounds(b, m) for m in data}, caption, f"{b.name} {slug}", slug)


def _gradvar_measured(b: BenchResults):
    rows = []
    for v, r in b.runs.items():
        m = r.scores.metrics
        row = {"variant": v, "noise_cancel": r.settings.get("noise_cancel"), "own": m.get("mstep_grad_var"),
               "nc": m.get("mstep_grad_var_nc"), "no_nc": m.get("mstep_grad_var_no_nc")}
        if any(row[k] is not None for k in ("own", "nc", "no_nc")):
            row["ratio"] = row["no_nc"] / row["nc"] if row["nc"] and row["no_nc"] is not None else None
            rows.append(row)
    if not rows:
        return None, None
    sci = lambda v: f"{v:#.3g}".rstrip(".") if 1e-3 <= abs(v) < 1e4 else f"{v:.2e}"  # noqa: E731
    t = Table(columns=[("Variant", ""), ("Trained with NC", ""), ("Var of its M-step gradient", ""),
                       ("Var with NC (same chains)", ""), ("Var without NC (same chains)", ""), ("Without / with NC", "")],
              kind=f"gradvar-measured-{b.name}")
    for r in rows:
        t.rows.append(Row([Cell(r["variant"], "label"), number_cell(r["noise_cancel"])]
                          + [number_cell(r[k], fmt=sci) for k in ("own", "nc", "no_nc")]
                          + [number_cell(r["ratio"], fmt=lambda v: f"{v:.2f}\u00d7")]))
    ratios = [r["ratio"] for r in rows if r.get("ratio")]
    t.caption = ("Total variance of the generator's M-step gradient over fixed batches at the end of training "
                 "(`mct evaluate`). 'Same chains': one E-step, the gradient taken with eps_K - nu_K and with eps_K.")
    if ratios:
        lo, hi = min(ratios), max(ratios)
        t.caption += (f" Without noise cancellation the variance is {lo:.2f}\u00d7 to {hi:.2f}\u00d7 that with it"
                      + (" in every run." if lo > 1 else "; below 1 means cancellation did not lower it."))
    return t, F.grad_var_bars(rows, b.name)


def _train_logs(root: Path, b: BenchResults, variants: list[str]) -> dict:
    """train_log.csv of the distill stage (the per-iteration log the trainer writes)."""
    import pandas as pd

    logs = {}
    for v in variants:
        path = root / b.name / "runs" / v / "train_log.csv"
        if path.is_file():
            df = pd.read_csv(path)
            if {"iteration", "grad_norm_g"} <= set(df.columns) and len(df):
                logs[v] = df
    return logs


def _grad_norm_table(b: BenchResults, logs: dict) -> Optional[Table]:
    if not logs:
        return None
    t = Table(columns=[("Variant", ""), ("Iterations logged", ""), ("mean |g|", ""), ("std |g|", ""), ("CV", "std / mean")],
              kind=f"gradvar-{b.name}", caption="Generator gradient norm over the second half of training "
                                                "(train_log.csv). CV = std / mean.")
    f3 = fmt_fixed(3)
    for v, d in logs.items():
        g = d[d["iteration"] >= d["iteration"].max() / 2]["grad_norm_g"].astype(float)
        cv = g.std() / g.mean() if g.mean() else None
        t.rows.append(Row([Cell(v, "label"), number_cell(len(g), "iterations"), number_cell(g.mean(), fmt=f3),
                           number_cell(g.std(), fmt=f3), number_cell(cv, fmt=f3)]))
    return t


def block(inputs: Inputs, b: BenchResults) -> dict:
    if not b.runs:
        return {"name": b.name, "empty": True}
    figs = []
    prim = primary(b)
    ingredients = runs_differing_in(b, INGREDIENTS)
    if len(ingredients) >= 2:
        caption = " ".join(compare_caption(b, ingredients, m) for m in prim)
        f = F.ablation_bars({v: b.runs[v].scores.metrics for v in ingredients}, prim, b.name, b.reference, caption)
        if f:
            figs.append(f)
    ksel = runs_differing_in(b, {"K", "gamma_z"}, required="K")
    if len(ksel) >= 2:
        kmetrics = prim + [m for m in ("class_entropy", "recall", "off_mode_mass", "modes_covered") if m in b.metric_names() and m not in prim]
        f = _sweep(b, "K", ksel, kmetrics[:3], "K (Langevin steps per E-step, log scale)", "K", 2,
                   "K = 1 is the reverse-KL (mode-seeking) gradient of Diff-Instruct/DMD; more steps move the update "
                   "toward forward KL (mode-covering). Axes start at 0 (and end at the metric's maximum where it has one).",
                   "ksweep")
        if f:
            figs.append(f)
    ssel = runs_differing_in(b, {"gamma_eps"}, required="gamma_eps")
    if len(ssel) >= 2:
        f = _sweep(b, "gamma_eps", ssel, prim, "\u03b3_eps (Langevin step size, log scale)", "\u03b3_eps", None,
                   "The reparametrised sampler moves standard-normal variables, so one step size should serve "
                   "every noise level.", "stepsweep")
        if f:
            figs.append(f)
    gv_table, gv_fig = _gradvar_measured(b)
    logs = _train_logs(inputs.results.root, b, [v for v in runs_differing_in(b, {"noise_cancel", "reparam"})])
    grad_figs = [f for f in (gv_fig, F.grad_variance(logs, b.name)) if f]
    curves = {v: [(p.iteration, p.fid) for p in r.fid_curve] for v, r in b.runs.items() if r.fid_curve}
    curve = F.metric_vs_iteration(curves, "fid", b.name) if curves else None
    not_run = [v for v in b.variants if v not in b.runs]
    return {"name": b.name, "empty": False, "overview": _overview(b), "figures": figs, "gradvar_measured": gv_table,
            "grad_table": _grad_norm_table(b, logs), "grad_figures": grad_figs, "curves": [curve] if curve else [],
            "not_run": not_run}


def build(inputs: Inputs) -> dict:
    return {"benches": [block(inputs, b) for b in inputs.results.benches if b.variants]}
