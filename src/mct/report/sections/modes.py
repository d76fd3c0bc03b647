"""Section 4: from mode-seeking (K = 1) to mode-covering (large K). 2-D benchmarks: samples over
the true density and per-mode mass against the true weights; image benchmarks: class
histograms of the one-step samples. Captions state what the numbers show."""

from __future__ import annotations

from typing import Optional

from .. import figures as F
from ..collect import BenchResults
from ..context import Inputs
from ..seeds import best_caption, compare, fmt_interval, interval_cell, spread_caption, stat
from ..tables import Cell, Row, Table, metric_label, number_cell
from .common import exact_row, k_label, k_sweep


def _k_runs(b: BenchResults) -> list[str]:
    """The K sweep, one run per K (the z-chain variants have their own table), by K."""
    return k_sweep(b)[0]


ZCHAIN_METRICS = ["mode_mass_tv", "off_mode_mass", "min_mode_recall", "logp_gap", "modes_covered", "fid", "recall"]


def zchain_table(b: BenchResults) -> Optional[Table]:
    """The z chain's part: each run that differs from a sweep point only in gamma_z (z moving where
    the sweep freezes it, or frozen where it moves), beside that point, with the paired difference."""
    points, zchain = k_sweep(b)
    if not zchain:
        return None
    at_k = {b.runs[v].settings.get("K"): v for v in points}
    have = b.metric_names()
    cols = [m for m in ZCHAIN_METRICS if m in have][:4]
    t = Table(columns=[("Variant", ""), ("K", ""), ("\u03b3_z", "0 = z frozen"), ("Against", "the sweep's run at this K")]
              + [(metric_label(m), "mean [95 % interval] over seeds") for m in cols]
              + [(f"\u0394 {metric_label(m)}", "variant minus the sweep's run: paired over shared seeds, else Welch")
                 for m in cols[:2]], kind=f"zchain-{b.name}",
              caption="The z chain's part at a fixed K: the same run with z moving and with z frozen. "
                      "\u0394: mean [95 % interval]; inside the noise when the interval contains 0.")
    for v in zchain:
        r = b.runs[v]
        base = at_k.get(r.settings.get("K"))
        cells = [Cell(v, "label"), number_cell(r.settings.get("K"), "K"), number_cell(r.settings.get("gamma_z"), "gamma_z"),
                 Cell(base or "\u2014", "text")]
        cells += [interval_cell(stat(b, v, m), m) for m in cols]
        for m in cols[:2]:
            cmp = compare(b, v, base, m) if base else None
            cells.append(Cell(fmt_interval(cmp[0], m) if cmp else "\u2014", "num"))
        t.rows.append(Row(cells))
    return t


def _points(inputs: Inputs, b: BenchResults, v: str):
    """(N, 2) samples of a 2-D run (runs/<v>/samples.npz, key x), or None."""
    import numpy as np

    path = inputs.results.root / b.name / "runs" / v / "samples.npz"
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        x = z["x"] if "x" in z.files else None
    if x is None or x.ndim != 2 or x.shape[1] != 2:
        return None
    x = np.asarray(x, float)
    return x[np.isfinite(x).all(axis=1)]


def _subtitle(scores) -> str:
    tv, cov, nm, off = (scores.get(x) for x in ("mode_mass_tv", "modes_covered", "num_modes", "off_mode_mass"))
    return ", ".join(x for x in [f"TV {tv:.2f}" if tv is not None else "",
                                 f"{int(cov)}/{int(nm)} modes" if cov is not None and nm else "",
                                 f"{off:.0%} off-mode" if off is not None else ""] if x)


def _toy(inputs: Inputs, b: BenchResults, names: list[str]) -> dict:
    import numpy as np

    mix = b.mixture
    panels, masses, said = [], {}, []
    if mix is not None:
        rng = np.random.default_rng(0)
        means, w = np.asarray(mix.means, float), np.asarray(mix.weights, float) / sum(mix.weights)
        k = rng.choice(len(w), size=2000, p=w)
        exact = exact_row(b)
        panels.append(("teacher (exact samples)", means[k] + np.asarray(mix.stds)[k, None] * rng.standard_normal((2000, 2)),
                       _subtitle(exact.scores) if exact else ""))
    for v in names:
        r = b.runs[v]
        title = k_label(v, r, b.reference)
        sub = _subtitle(r.scores)
        pts = _points(inputs, b, v)
        if pts is not None and len(pts):
            panels.append((title, pts, sub))
        if r.scores.mode_mass:
            masses[title] = r.scores.mode_mass
        if sub:
            said.append(f"{title}: {sub}")
    true_w = mix.weights if mix else next((r.scores.true_mode_weight for r in b.runs.values()
                                           if r.scores.true_mode_weight), None)
    summary = ("First seed's samples: " + "; ".join(said) + ".") if said else ""
    ivs = {k_label(v, b.runs[v], b.reference): stat(b, v, "off_mode_mass") for v in names}
    summary = " ".join(x for x in (summary, best_caption(ivs, "off_mode_mass"), best_caption(
        {k_label(v, b.runs[v], b.reference): stat(b, v, "mode_mass_tv") for v in names}, "mode_mass_tv")) if x)
    teacher = {"means": mix.means, "stds": mix.stds, "weights": mix.weights} if mix else None
    figs = [F.toy_scatter(panels, teacher, b.name, "Red: one-step samples of each run; grey: the true mixture density. "
                          + summary) if len(panels) > (1 if mix else 0) else None,
            F.mode_mass_bars(masses, true_w, b.name, "Fraction of samples in each mode against the true weight "
                             "(black dashes). " + summary)]
    return {"name": b.name, "figures": [f for f in figs if f], "table": zchain_table(b)}


def _classes(b: BenchResults, names: list[str]) -> dict:
    hists = {}
    if b.teacher:
        top = max(b.teacher.rows, key=lambda r: r.nfe, default=None)
        if top is not None and top.scores.class_hist:
            hists[f"teacher ({top.nfe} NFE)"] = top.scores.class_hist
    rows = []
    for v in names:
        r = b.runs[v]
        h = r.scores.class_hist
        if not h:
            continue
        total = sum(h)
        h = [x / total for x in h] if total > 0 else h
        hists[k_label(v, r, b.reference)] = h
        rows.append((v, r, h))
    if not hists:
        return {"name": b.name, "figures": [], "table": None}
    n = max(len(h) for h in hists.values())
    t = Table(columns=[("Variant", ""), ("K", ""), ("Class entropy / max", "entropy of the predicted-class histogram "
                                                     "over ln(number of classes); 1 = uniform"),
                       ("Largest class share", f"uniform = {1 / n:.3f}"), ("Smallest class share", ""),
                       ("Classes covered", "classes holding at least a quarter of a uniform share")],
              kind=f"classes-{b.name}")
    for v, r, h in rows:
        ent, emax = r.scores.get("class_entropy"), r.scores.get("class_entropy_max")
        t.rows.append(Row([Cell(v, "label"), number_cell(r.settings.get("K"), "K"),
                           number_cell(ent / emax if ent is not None and emax else None, fmt=lambda x: f"{x:.4f}"),
                           number_cell(max(h), fmt=lambda x: f"{x:.3f}"), number_cell(min(h), fmt=lambda x: f"{x:.3f}"),
                           number_cell(r.scores.get("classes_covered"), "classes_covered")]))
    t.caption = "Histograms of the first seed's samples; the entropy's spread over seeds is judged in the caption."
    largest = {v: max(h) for v, _, h in rows}
    caption = f"Classes of the one-step samples by the benchmark's classifier; the dashed line is uniform ({1 / n:.3f})."
    caption += " " + class_caption(largest, {v: min(h) for v, _, h in rows}, n)
    ent = spread_caption({v: stat(b, v, "class_entropy") for v, _, _ in rows}, "class_entropy")
    caption += (" " + ent) if ent else ""
    return {"name": b.name, "figures": [f for f in [F.class_histograms(hists, b.name, caption)] if f], "table": t}


def class_caption(largest: dict[str, float], smallest: dict[str, float], n: int) -> str:
    """The histograms in words: the range of the largest class share, and which runs drop a class
    (a class below a quarter of a uniform share), from the numbers."""
    if not largest:
        return ""
    lo, hi = min(largest, key=largest.get), max(largest, key=largest.get)
    text = (f"Largest class share {largest[hi]:.3f} in every run" if largest[hi] == largest[lo] else
            f"Largest class share: {largest[hi]:.3f} ({hi}) to {largest[lo]:.3f} ({lo})")
    drop = [v for v, x in smallest.items() if x < 0.25 / n]
    if drop:
        return text + f"; {', '.join(drop)} drop{'s' if len(drop) == 1 else ''} at least one class (below a quarter " \
                      "of a uniform share)."
    return text + "; no run drops a class (every class holds at least a quarter of a uniform share)."


def block(inputs: Inputs, b: BenchResults) -> Optional[dict]:
    names = _k_runs(b)
    if not names:
        return None
    toy = b.mixture is not None or any(r.scores.mode_mass for r in b.runs.values())
    return _toy(inputs, b, names) if toy else _classes(b, names)


def build(inputs: Inputs) -> dict:
    blocks = (block(inputs, b) for b in inputs.results.benches if b.runs)
    return {"benches": [x for x in blocks if x and (x["figures"] or x["table"])]}
