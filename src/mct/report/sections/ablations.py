"""Section 3: every run against the main one. Which runs form an ablation, a K sweep or a
step-size sweep is read off their recorded settings (a run that differs from the main run
only in ``reparam``, ``noise_cancel`` or ``init`` is an ingredient ablation; only in K (and
gamma_z), a K sweep point, one per K; only in gamma_eps, a step-size point). Every number is a
mean over the run's training seeds with its 95 % interval, and captions are written from the
intervals (mct.report.seeds): a difference inside the seed noise reads as such."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from .. import figures as F
from ..collect import BenchResults
from ..context import Inputs
from ..tables import Cell, Row, Table, fmt_fixed, metric_label, number_cell
from ...records import Interval
from ...stats import interval
from ..seeds import (best_caption, collapse_note, curve_caption, fmt_interval, interval_cell, interval_title, n_note,
                     seed_values, spread_caption, stat)
from .common import (EXACT_LABEL, compare_caption, describe_setting, exact_row, k_sweep, metric_cols, primary,
                     runs_differing_in, what_changes)

INGREDIENTS = {"reparam", "noise_cancel", "init"}
# metrics with natural bounds: a sweep's axis spans them, so that noise cannot look like a trend
# (TV and off-mode mass start at 0, their perfect value, and end above the data: their maximum of 1 is
# never the reference and would squash every difference)
BOUNDS = {"precision": (0.0, 1.0), "recall": (0.0, 1.0), "class_accuracy": (0.0, 1.0), "min_mode_recall": (0.0, 1.0)}


def _bounds(b: BenchResults, metric: str) -> tuple[float, Optional[float]]:
    if metric == "class_entropy":
        top = max((r.scores.metrics.get("class_entropy_max", 0.0) for r in b.runs.values()), default=0.0)
        return 0.0, top or None
    if metric == "modes_covered":
        top = max((r.scores.metrics.get("num_modes", 0.0) for r in b.runs.values()), default=0.0)
        return 0.0, top or None
    return BOUNDS.get(metric, (0.0, None))


def _overview(b: BenchResults) -> Table:
    """Every run against the main one: what changes (from the settings), K and gamma_z, each
    metric as mean [95 % interval] over its seeds, and a note when the scores show a collapse."""
    cols = metric_cols(b)
    constant = []
    keys = list(dict.fromkeys(k for r in b.runs.values() for k in r.settings))
    for k in keys:
        vals = {repr(r.settings.get(k)) for r in b.runs.values()}
        if len(vals) == 1 and len(b.runs) > 1 and k not in ("K", "gamma_z"):
            constant.append(describe_setting(k, next(iter(b.runs.values())).settings.get(k)))
    its = {r.iterations for r in b.runs.values()}
    show_its = len(its) > 1
    if not show_its and its != {None}:
        constant.append(f"iterations = {next(iter(its))}")
    header = [("Variant", ""), ("What changes", "settings that differ from the main run"),
              ("K", "Langevin steps per E-step"), ("\u03b3_z", "step size of the z chain (0 = z frozen)")]
    header += [(metric_label(c), "mean [95 % interval of the mean] over the training seeds") for c in cols]
    header += [("Iterations", "")] if show_its else []
    header += [("Train time", "wall time of the distillation (first seed)"), ("Note", "what the scores show")]
    caption = ("Each number: mean [95 % t-interval of the mean], n training seeds (one seed: no interval). "
               "KID \u00d710\u00b3 throughout.")
    t = Table(columns=header, kind=f"ablation-{b.name}",
              caption=caption + (" Same for every run: " + ", ".join(constant) + "." if constant else ""))
    exact = exact_row(b)
    if exact is not None:
        cells = [Cell(EXACT_LABEL, "label"), Cell("exact samples, no network", "text", "drawn from the mixture, scored like the runs"),
                 Cell("", "na"), Cell("", "na")]
        cells += [number_cell(exact.scores.get(c), c, "not in teacher/metrics.json") for c in cols]
        t.rows.append(Row(cells + ([number_cell(None)] if show_its else []) + [Cell("", "na"), Cell("", "na")],
                          "ours teacher"))
    for v in b.variants:
        r = b.runs.get(v)
        if r is None:
            cells = [Cell(v, "label"), Cell("(no metrics.json yet)", "missing"), number_cell(None), number_cell(None)]
            cells += [number_cell(None, c) for c in cols] + ([number_cell(None)] if show_its else [])
            t.rows.append(Row(cells + [number_cell(None), Cell("", "na")], "notrun"))
            continue
        cells = [Cell(v, "label"), Cell(what_changes(b, v), "text"), number_cell(r.settings.get("K"), "K"),
                 number_cell(r.settings.get("gamma_z"), "gamma_z", "not recorded in the run's settings")]
        cells += [interval_cell(stat(b, v, c), c, "not in metrics.json") for c in cols]
        cells += [number_cell(r.iterations, "iterations")] if show_its else []
        cells.append(number_cell(r.train_seconds, "train_seconds"))
        note = collapse_note({c: iv.mean for c in ("precision", "recall", "min_mode_recall", "modes_covered", "num_modes")
                              if (iv := stat(b, v, c)) is not None})
        cells.append(Cell(note.split(":")[0], "bad", note) if note else Cell("", "na"))
        if note:
            t.notes.append(f"{v}: {note}.")
        t.rows.append(Row(cells, "ours" if v == b.reference else ""))
    return t


def sweep_caption(points: list[tuple[float, Interval]], metric: str, label: str) -> str:
    """One metric along a knob, from its intervals: the ends, the best point and whether it is clear
    of the others, or 'no difference beyond seed noise' when one value lies in every interval."""
    pts = sorted(points, key=lambda p: p[0])
    if len(pts) < 2:
        return ""
    ivs = {f"{label} = {x:g}": iv for x, iv in pts}
    flat = spread_caption(ivs, metric)
    if "no difference" in flat:
        return flat
    text = (f"{metric_label(metric)}: {fmt_interval(pts[0][1], metric)} at {label} = {pts[0][0]:g}, "
            f"{fmt_interval(pts[-1][1], metric)} at {label} = {pts[-1][0]:g}.")
    return " ".join(x for x in (text, best_caption(ivs, metric)) if x)


def _sweep(b: BenchResults, key: str, variants: list[str], metrics: list[str], xlabel: str, label: str,
           log_base: Optional[int], what: str, slug: str):
    data = {m: [(b.runs[v].settings[key], stat(b, v, m), v) for v in variants
                if key in b.runs[v].settings and stat(b, v, m) is not None] for m in metrics}
    data = {m: p for m, p in data.items() if len({x for x, _, _ in p}) >= 2}
    if not data:
        return None
    first = next(iter(data.values()))
    notes = [n_note({f"{label} = {x:g} ({v})": iv for x, iv, v in first})]
    caption = " ".join(x for x in [what] + [sweep_caption([(x, iv) for x, iv, _ in p], m, label)
                                            for m, p in data.items()] + notes if x)
    return F.sweep(data, xlabel, log_base, {m: _bounds(b, m) for m in data}, caption, f"{b.name} {slug}", slug)


def _gradvar_measured(b: BenchResults):
    """The M-step gradient variance each run measured (mct evaluate), over its seeds: with and without
    noise cancellation on the same chains, and their ratio per seed (mean [95 % interval])."""
    rows = []
    for v in b.runs:
        ivs = {k: stat(b, v, m) for k, m in (("own", "mstep_grad_var"), ("nc", "mstep_grad_var_nc"),
                                             ("no_nc", "mstep_grad_var_no_nc"))}
        if all(iv is None for iv in ivs.values()):
            continue
        nc, no = seed_values(b, v, "mstep_grad_var_nc"), seed_values(b, v, "mstep_grad_var_no_nc")
        per_seed = [no[s] / nc[s] for s in nc if s in no and nc[s] > 0]
        rows.append({"variant": v, "noise_cancel": b.runs[v].settings.get("noise_cancel"), **ivs,
                     "ratio": interval(per_seed) if per_seed else None})
    if not rows:
        return None, None
    sci = lambda x: f"{x:#.3g}".rstrip(".") if 1e-3 <= abs(x) < 1e4 else f"{x:.2e}"  # noqa: E731
    times = lambda x: f"{x:.2f}\u00d7"  # noqa: E731

    def cell(iv, f):
        if iv is None:
            return number_cell(None)
        text = f(iv.mean) + (f" [{f(iv.lo)}, {f(iv.hi)}]" if iv.lo is not None and iv.std else "")
        return Cell(text + f", {iv.n} seed" + ("s" if iv.n != 1 else ""), "num", interval_title(iv, "variance"))

    t = Table(columns=[("Variant", ""), ("Trained with NC", ""), ("Var of its M-step gradient", ""),
                       ("Var with NC (same chains)", ""), ("Var without NC (same chains)", ""),
                       ("Without / with NC", "per seed, then mean [95 % interval]")],
              kind=f"gradvar-measured-{b.name}")
    for r in rows:
        t.rows.append(Row([Cell(r["variant"], "label"), number_cell(r["noise_cancel"])]
                          + [cell(r[k], sci) for k in ("own", "nc", "no_nc")] + [cell(r["ratio"], times)]))
    ratios = {r["variant"]: r["ratio"] for r in rows if r["ratio"] is not None}
    t.caption = ("Total variance of the generator's M-step gradient over fixed batches at the end of training "
                 "(`mct evaluate`). 'Same chains': one E-step, the gradient taken with eps_K - nu_K and with eps_K.")
    if ratios:
        lower = [v for v, iv in ratios.items() if iv.lo is not None and iv.lo > 1]
        undecided = [v for v, iv in ratios.items() if v not in lower]
        t.caption += (f" Cancellation lowers the variance beyond the seed interval in {len(lower)} of {len(ratios)} "
                      "runs" + (f"; not shown beyond the interval (or one seed) in {', '.join(undecided)}."
                                if undecided else "."))
    bars = [{"variant": r["variant"], "nc": r["nc"].mean if r["nc"] else None,
             "no_nc": r["no_nc"].mean if r["no_nc"] else None} for r in rows]
    return t, F.grad_var_bars(bars, b.name)


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


def _cvs(logs: dict) -> dict[str, float]:
    """Coefficient of variation of the gradient norm over the second half of each run's log."""
    out = {}
    for v, d in logs.items():
        g = d[d["iteration"] >= d["iteration"].max() / 2]["grad_norm_g"].astype(float)
        if len(g) > 1 and g.mean():
            out[v] = float(g.std() / g.mean())
    return out


def cv_caption(cvs: dict[str, float]) -> str:
    """Which run's gradient norm is steadiest over the second half of training (one log per run:
    a description of these runs, not an interval over seeds)."""
    if len(cvs) < 2:
        return ""
    lo = min(cvs, key=cvs.get)
    hi = max(cvs, key=cvs.get)
    return ("Second half of training, std / mean of |g|: " + ", ".join(f"{v} {x:.2f}" for v, x in cvs.items())
            + f"; steadiest {lo}, least steady {hi} (the first seed's log of each run).")


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


def seed_curves(b: BenchResults, v: str) -> dict[int, list[tuple[int, float]]]:
    """Training seed -> the FID measured during training (the first seed's from the run itself)."""
    r = b.runs[v]
    per = {s.seed: [(p.iteration, p.fid) for p in s.fid_curve] for s in r.seeds if s.fid_curve}
    if not per and r.fid_curve:
        per = {int(r.settings.get("seed", 0) or 0): [(p.iteration, p.fid) for p in r.fid_curve]}
    return per


def _curve(b: BenchResults):
    """FID during training: per run the mean over seeds at each evaluated iteration with its interval,
    and a caption that says whether the last evaluation is below the first beyond the seed interval."""
    curves, first_last = {}, {}
    for v in b.runs:
        per = seed_curves(b, v)
        if not per:
            continue
        its = sorted(set.intersection(*[{i for i, _ in c} for c in per.values()]))
        pts = []
        for it in its:
            iv = interval([dict(c)[it] for c in per.values()])
            pts.append((it, iv.mean, iv.lo, iv.hi))
        curves[v] = pts
        if its:
            first_last[v] = {s: (dict(c)[its[0]], dict(c)[its[-1]]) for s, c in per.items()}
    if not curves:
        return None
    caption = ("FID of the EMA generator during distillation, first \u2192 last evaluation (mean over seeds; band: "
               "95 % interval): " + curve_caption(first_last, "fid") + ".")
    return F.metric_vs_iteration(curves, "fid", b.name, caption)


def block(inputs: Inputs, b: BenchResults) -> dict:
    if not b.runs:
        return {"name": b.name, "empty": True}
    figs = []
    prim = primary(b)
    ingredients = runs_differing_in(b, INGREDIENTS)
    if len(ingredients) >= 2:
        caption = " ".join(compare_caption(b, ingredients, m) for m in prim)
        vals = {v: {m: iv for m in prim if (iv := stat(b, v, m)) is not None} for v in ingredients}
        f = F.ablation_bars(vals, prim, b.name, b.reference, caption)
        if f:
            figs.append(f)
    ksel, _ = k_sweep(b)
    if len(ksel) >= 2:
        kmetrics = prim + [m for m in ("class_entropy", "recall", "off_mode_mass", "modes_covered") if m in b.metric_names() and m not in prim]
        f = _sweep(b, "K", ksel, kmetrics[:3], "K (Langevin steps per E-step, log scale)", "K", 2,
                   "K = 1 is the reverse-KL (mode-seeking) gradient of Diff-Instruct/DMD; more steps move the update "
                   "toward forward KL (mode-covering). One run per K (" + ", ".join(ksel) + "), each point the mean "
                   "over its seeds with its 95 % interval; hollow points ran one seed. Axes start at 0 (and end at "
                   "the metric's maximum where it has one), so that noise does not look like a trend.",
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
    grad_figs = [f for f in (gv_fig, F.grad_variance(logs, b.name, cv_caption(_cvs(logs)))) if f]
    curve = _curve(b)
    not_run = [v for v in b.variants if v not in b.runs]
    return {"name": b.name, "empty": False, "overview": _overview(b), "figures": figs, "gradvar_measured": gv_table,
            "grad_table": _grad_norm_table(b, logs), "grad_figures": grad_figs, "curves": [curve] if curve else [],
            "not_run": not_run}


def build(inputs: Inputs) -> dict:
    return {"benches": [block(inputs, b) for b in inputs.results.benches if b.variants]}
