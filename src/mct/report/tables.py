"""Tables for the report: pandas frames in, a small cell model out.

The template renders :class:`Table` with one macro, so every table looks the same:
numbers right-aligned in tabular figures, formatted per metric (FID with 2 decimals,
KID x 10^3, durations in s / min / h), a missing value as a grey dash with a tooltip
that says why."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional

import pandas as pd

MISSING = "\u2014"  # em dash


@dataclass
class Cell:
    text: str
    cls: str = ""  # space-separated: num, missing, code, label, na
    title: str = ""
    colspan: int = 1


@dataclass
class Row:
    cells: list[Cell]
    cls: str = ""  # paper, ours, teacher, notrun


@dataclass
class Table:
    columns: list[tuple[str, str]]  # (label, tooltip)
    rows: list[Row] = field(default_factory=list)
    caption: str = ""
    notes: list[str] = field(default_factory=list)
    kind: str = ""  # a CSS hook and a name the tests can find (data-table attribute)

    @property
    def numeric_cells(self) -> int:
        return sum(1 for r in self.rows for c in r.cells if "num" in c.cls and "missing" not in c.cls)


def is_number(v: Any) -> bool:
    """A finite real number (Python or numpy), not a boolean."""
    if isinstance(v, bool) or type(v).__name__ == "bool_":
        return False
    return isinstance(v, numbers.Real) and math.isfinite(float(v))


# --- number formatting --------------------------------------------------------------

def fmt_auto(v: float) -> str:
    """About three significant figures, no scientific notation for everyday sizes."""
    a = abs(v)
    if a < 1e15 and v == int(v):
        return f"{int(v):,}"
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.3g}"
    if a >= 0.01:
        return f"{v:.3f}"
    if a >= 1e-4:
        return f"{v:.2g}" if "e" not in f"{v:.2g}" else f"{v:.6f}".rstrip("0")
    return f"{v:.2e}"


def fmt_fixed(digits: int) -> Callable[[float], str]:
    return lambda v: f"{v:,.{digits}f}"


def fmt_int(v: float) -> str:
    return f"{int(round(v)):,}"


def fmt_duration(seconds: float) -> str:
    s = float(seconds)
    if s < 60:
        return f"{s:.1f} s" if s < 10 else f"{s:.0f} s"
    if s < 3600:
        m, r = divmod(int(round(s)), 60)
        return f"{m} min {r:02d} s"
    h, r = divmod(int(round(s)), 3600)
    return f"{h} h {r // 60:02d} min"


def fmt_kid(v: float) -> str:
    return f"{v * 1e3:.2f}"


def fmt_rate(v: float) -> str:
    if v >= 1000:
        return f"{v:,.0f}"
    return f"{v:.3g}" if v >= 1 else f"{v:.3f}"


@dataclass(frozen=True)
class Metric:
    label: str
    fmt: Callable[[float], str] = fmt_auto
    help: str = ""


METRICS: dict[str, Metric] = {
    "nfe": Metric("NFE", fmt_int, "network function evaluations per sample"),
    "fid": Metric("FID \u2193", fmt_fixed(2), "Frechet distance in the benchmark's feature space; lower is better"),
    "kid_mean": Metric("KID\u00d710\u00b3 \u2193", fmt_kid, "kernel inception distance x 1000; lower is better"),
    "precision": Metric("Precision \u2191", fmt_fixed(3), "fraction of samples on the real data manifold (fidelity)"),
    "recall": Metric("Recall \u2191", fmt_fixed(3), "fraction of real data covered by samples (diversity)"),
    "class_entropy": Metric("Class entropy \u2191", fmt_fixed(3),
                            "entropy (nats) of the predicted-class histogram; ln 10 = 2.303 for 10 balanced classes"),
    "clip_score": Metric("CLIP score \u2191", lambda v: f"{v:.2f}" if abs(v) >= 10 else f"{v:.3f}",
                         "mean image-caption similarity of the benchmark's CLIP model"),
    "class_accuracy": Metric("Class accuracy \u2191", fmt_fixed(3),
                             "how often the classifier agrees with the class the sample was generated for"),
    "classes_covered": Metric("Classes covered \u2191", fmt_int, "classes holding at least a quarter of a uniform share"),
    "mode_mass_tv": Metric("Mode-mass TV \u2193", fmt_fixed(3), "total variation between per-mode sample mass and true weights"),
    "modes_covered": Metric("Modes covered \u2191", fmt_int, "modes holding at least a quarter of their true weight"),
    "mean_true_logpdf": Metric("Mean true log p \u2191", fmt_fixed(3), "mean log-density of samples under the true mixture"),
    "off_mode_mass": Metric("Off-mode mass \u2193", fmt_fixed(3), "share of samples farther than 3 component std from "
                            "every mode (exact samples: exp(-4.5) = 0.011)"),
    "min_mode_recall": Metric("Min mode recall \u2191", fmt_fixed(3), "smallest over modes of min(1, sampled share "
                              "within 3 std of the mode / true share); 0 = a mode is missed"),
    "logp_gap": Metric("Log-p gap (0 = exact)", lambda v: f"{v:+.3f}", "mean true log p of exact samples minus the "
                       "samples'; > 0: mass where the density is low, < 0: piled onto the densest modes"),
    "energy_distance": Metric("Energy distance \u2193", fmt_fixed(4), "energy distance to teacher samples (0 = same law)"),
    "train_seconds": Metric("Train time", fmt_duration, "wall time of the distillation run"),
    "eval_seconds": Metric("Eval time", fmt_duration, "wall time of the evaluation"),
    "iterations": Metric("Iterations", fmt_int, "generator updates"),
    "K": Metric("K", fmt_int, "Langevin steps in the E-step"),
    "gamma_eps": Metric("\u03b3_eps", fmt_auto, "Langevin step size on eps"),
    "gamma_z": Metric("\u03b3_z", fmt_auto, "Langevin step size on z"),
    "images_per_s": Metric("Images/s \u2191", fmt_rate, "measured sampling throughput"),
    "seconds": Metric("Seconds", fmt_duration, "wall time"),
    "accuracy": Metric("Accuracy", fmt_fixed(4), "held-out accuracy"),
    "fid_floor": Metric("FID floor", fmt_fixed(2), "FID between two disjoint sets of real images"),
    "kid_std": Metric("KID std\u00d710\u00b3", fmt_kid, "KID standard deviation over subsets x 1000"),
    "f_score": Metric("F-score \u2191", fmt_fixed(3), "harmonic mean of precision and recall"),
    "sample_seconds": Metric("Sampling time", fmt_duration, "wall time of drawing the evaluation samples"),
}


def metric_label(name: str) -> str:
    return METRICS[name].label if name in METRICS else name.replace("_", " ")


def number_cell(value: Any, name: str = "", missing_title: str = "not measured (file or key missing)",
                fmt: Optional[Callable[[float], str]] = None) -> Cell:
    """A formatted number, or a missing-value dash. Booleans read yes/no, strings stay.
    ``fmt`` overrides the metric's own formatter."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return Cell(MISSING, "num missing", missing_title)
    if isinstance(value, bool):
        return Cell("yes" if value else "no", "text")
    if hasattr(value, "item") and not isinstance(value, (list, tuple)):
        value = value.item()
    if is_number(value):
        spec = METRICS.get(name)
        text = (fmt or (spec.fmt if spec else fmt_auto))(float(value))
        return Cell(text, "num", f"{value!r}")
    if isinstance(value, float):  # inf
        return Cell(str(value), "num")
    if isinstance(value, (list, tuple)):
        return Cell(", ".join(fmt_auto(float(v)) if is_number(v) else str(v) for v in value), "text")
    return Cell(str(value), "text")


def frame_table(df: pd.DataFrame, label_cols: Iterable[str] = (), caption: str = "", kind: str = "",
                rename: Optional[dict[str, str]] = None, row_cls: Optional[Callable[[pd.Series], str]] = None,
                kid_std: bool = True, formats: Optional[dict[str, Callable[[float], str]]] = None) -> Table:
    """A :class:`Table` from a frame whose columns are canonical metric names.

    ``label_cols`` are shown as text; if ``kid_std`` and the frame has ``kid_std``, the KID
    column reads ``mean \u00b1 std`` and the std column is dropped."""
    rename = rename or {}
    label_cols = list(label_cols)
    cols = [c for c in df.columns if not (kid_std and c == "kid_std" and "kid_mean" in df.columns)]
    table = Table(columns=[(rename.get(c, metric_label(c)), METRICS[c].help if c in METRICS else "") for c in cols],
                  caption=caption, kind=kind)
    for _, r in df.iterrows():
        cells = []
        for c in cols:
            v = r[c]
            if c in label_cols:
                cells.append(Cell("" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v), "label"))
                continue
            cell = number_cell(v, c, fmt=(formats or {}).get(c))
            if c == "kid_mean" and kid_std and "kid_std" in df.columns and "missing" not in cell.cls \
                    and is_number(r["kid_std"]):
                cell.text = f"{cell.text} \u00b1 {r['kid_std'] * 1e3:.2f}"
            cells.append(cell)
        table.rows.append(Row(cells, row_cls(r) if row_cls else ""))
    return table


def kv_table(items: Iterable[tuple[str, Any]], caption: str = "", kind: str = "kv",
             header: tuple[str, str] = ("", ""), plain: bool = False) -> Table:
    """Two columns: name, value (numbers formatted by their key; ``plain``: as written)."""
    table = Table(columns=[(header[0], ""), (header[1], "")], caption=caption, kind=kind)
    for k, v in items:
        key = str(k).rsplit(".", 1)[-1]
        if key.endswith("seconds") or key in ("seconds", "time_s", "wall_s"):
            key = "seconds"
        cell = Cell(str(v), "text") if plain and v is not None else number_cell(v, key)
        table.rows.append(Row([Cell(str(k), "label"), cell]))
    return table
