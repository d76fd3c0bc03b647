"""Section 4: from mode-seeking (K = 1) to mode-covering (large K). 2-D benchmarks: samples over
the true density and per-mode mass against the true weights; image benchmarks: class
histograms of the one-step samples. Captions state what the numbers show."""

from __future__ import annotations

from typing import Optional

from .. import figures as F
from ..collect import BenchResults
from ..context import Inputs
from ..tables import Cell, Row, Table, number_cell
from .common import exact_row, k_label, runs_differing_in


def _k_runs(b: BenchResults) -> list[str]:
    """The K sweep (settings differ from the main run only in K, gamma_z) by K, main run last."""
    sel = runs_differing_in(b, {"K", "gamma_z"}, required="K")
    ref = b.reference
    rest = sorted((v for v in sel if v != ref), key=lambda v: (b.runs[v].settings.get("K", 0), v))
    return rest + ([ref] if ref else [])


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
    summary = ("; ".join(said) + ".") if said else ""
    teacher = {"means": mix.means, "stds": mix.stds, "weights": mix.weights} if mix else None
    figs = [F.toy_scatter(panels, teacher, b.name, "Red: one-step samples of each run; grey: the true mixture density. "
                          + summary) if len(panels) > (1 if mix else 0) else None,
            F.mode_mass_bars(masses, true_w, b.name, "Fraction of samples in each mode against the true weight "
                             "(black dashes). " + summary)]
    return {"name": b.name, "figures": [f for f in figs if f], "table": None}


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
    largest = {v: max(h) for v, _, h in rows}
    caption = f"Classes of the one-step samples by the benchmark's classifier; the dashed line is uniform ({1 / n:.3f})."
    if len(largest) >= 2:
        lo, hi = min(largest, key=largest.get), max(largest, key=largest.get)
        spread = max(largest.values()) - min(largest.values())
        caption += (f" Largest class share: {largest[hi]:.3f} ({hi}) to {largest[lo]:.3f} ({lo})"
                    + (f", a spread of {spread:.3f}: the histograms are alike, no run drops classes."
                       if spread < 0.5 / n else "."))
    return {"name": b.name, "figures": [f for f in [F.class_histograms(hists, b.name, caption)] if f], "table": t}


def block(inputs: Inputs, b: BenchResults) -> Optional[dict]:
    names = _k_runs(b)
    if not names:
        return None
    toy = b.mixture is not None or any(r.scores.mode_mass for r in b.runs.values())
    return _toy(inputs, b, names) if toy else _classes(b, names)


def build(inputs: Inputs) -> dict:
    blocks = (block(inputs, b) for b in inputs.results.benches if b.runs)
    return {"benches": [x for x in blocks if x and (x["figures"] or x["table"])]}
