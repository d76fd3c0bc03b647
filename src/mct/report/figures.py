"""Figures for the report: matplotlib (Agg, object-oriented, no pyplot state) with
seaborn styling, each returned as a PNG data URI with a caption saying what to look at."""

from __future__ import annotations

import base64
import io
import logging
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import matplotlib

matplotlib.use("Agg")  # before anything imports pyplot; the report never opens a window

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure as MplFigure  # noqa: E402

from .tables import fmt_rate, metric_label  # noqa: E402

DPI = 100
logging.getLogger("matplotlib.category").setLevel(logging.WARNING)  # seaborn category-axis chatter
MAIN_COLOR = "#1f4e9c"
ABLATION_COLORS = {"mct": MAIN_COLOR, "no-reparam": "#d95f02", "no-nc": "#7570b3", "random-init": "#e7298a",
                   "teacher": "#333333"}


@dataclass
class Figure:
    src: str  # data: URI
    caption: str
    alt: str
    width: int  # natural width in px
    kind: str = ""


def _new(width_in: float, height_in: float, ncols: int = 1, nrows: int = 1, **kw):
    fig = MplFigure(figsize=(width_in, height_in), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def _style():
    return sns.axes_style("whitegrid", {"axes.edgecolor": "#bbbbbb", "grid.color": "#e6e6e6"})


def _context():
    return sns.plotting_context("notebook", font_scale=0.85)


def _render(fig, caption: str, alt: str, kind: str = "") -> Figure:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, facecolor="white")
    data = buf.getvalue()
    width = int(round(fig.get_figwidth() * DPI))
    return Figure("data:image/png;base64," + base64.b64encode(data).decode("ascii"), caption, alt, width, kind)


def _compact(v: float) -> str:
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:g}{suffix}"
    return f"{v:.10g}" if abs(v) >= 1e-4 or v == 0 else f"{v:.0e}"


def _plain_log_labels(axis, minor: bool = True) -> None:
    """Log-scale tick labels as plain numbers (0.5, 2, 10k), not 5x10^-1; ``minor``: label 2x and 5x too."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fmt = FuncFormatter(lambda v, _: _compact(v))
    axis.set_major_formatter(fmt)
    if minor:
        axis.set_minor_locator(LogLocator(subs=(2, 5)))
        axis.set_minor_formatter(fmt)
    else:
        axis.set_minor_formatter(NullFormatter())


def variant_color(name: str, i: int = 0):
    if name in ABLATION_COLORS:
        return ABLATION_COLORS[name]
    return sns.color_palette("tab10")[(i + 3) % 10]


# --- results figures ----------------------------------------------------------------

def teacher_vs_student(teacher: pd.DataFrame, student: dict[str, float], metric: str, bench: str) -> Optional[Figure]:
    """Teacher metric against NFE (line) with one-step students as points at NFE 1."""
    if teacher.empty or metric not in teacher or teacher[metric].notna().sum() == 0:
        return None
    with _style(), _context():
        fig, axes = _new(7.0, 3.0)
        ax = axes[0, 0]
        t = teacher.dropna(subset=[metric]).sort_values("nfe")
        ax.plot(t["nfe"], t[metric], "o-", color=ABLATION_COLORS["teacher"], label="teacher (multi-step)")
        for n, v in zip(t["nfe"], t[metric]):
            ax.annotate(f"{v:.2f}", (n, v), textcoords="offset points", xytext=(4, 5), fontsize=8)
        for i, (name, v) in enumerate(student.items()):
            ax.plot([1], [v], marker="*", markersize=13, linestyle="none", color=variant_color(name, i),
                    label=f"student {name} (1 step): {v:.2f}")
        ax.set_xscale("log")
        ticks = sorted({1, *[int(n) for n in t["nfe"]]})
        ax.set_xticks(ticks, [str(n) for n in ticks])
        ax.minorticks_off()
        ax.set_xlabel("NFE (log scale)")
        ax.set_ylabel(metric_label(metric))
        ax.set_title(f"{bench}: quality against sampling cost")
        ax.margins(x=0.08, y=0.12)
        ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.02, 1.0))
        return _render(fig, f"{metric_label(metric)} of the teacher at each NFE (line) and of the one-step student "
                            f"(stars). A star at or below the line's right end matches the teacher at a fraction "
                            f"of its cost.", f"{bench} {metric} against NFE", "nfe")


def ablation_bars(df: pd.DataFrame, metrics: Sequence[str], bench: str) -> Optional[Figure]:
    """One panel per metric, one bar per variant (df: index variant, columns metrics)."""
    metrics = [m for m in metrics if m in df and df[m].notna().any()]
    if not metrics or len(df) < 2:
        return None
    with _style(), _context():
        fig, axes = _new(min(3.4 * len(metrics) + 0.6, 10), 2.9, ncols=len(metrics))
        for ax, m in zip(axes[0], metrics):
            s = df[m].dropna()
            colors = [variant_color(v, i) for i, v in enumerate(s.index)]
            ax.bar(range(len(s)), s.values, color=colors)
            ax.set_xticks(range(len(s)), s.index, rotation=25, ha="right")
            for i, v in enumerate(s.values):
                ax.annotate(f"{v:.3g}", (i, v), ha="center", va="bottom", fontsize=8, xytext=(0, 2),
                            textcoords="offset points")
            ax.set_title(metric_label(m))
            ax.margins(y=0.15)
            ax.ticklabel_format(axis="y", useOffset=False)
        return _render(fig, "Each ablation changes one thing from the main run (mct, blue). A bar worse than "
                            "mct's means that ingredient helps; bars within a seed's noise of each other say "
                            "the ablation needs more seeds or a convergence-speed measure (below).",
                       f"{bench} ablation bars", "ablation")


def _sweep(df: pd.DataFrame, metrics: Sequence[str], col: str, xlabel: str, log_base: Optional[int],
           caption: str, title: str, slug: str) -> Optional[Figure]:
    """Each metric against one knob ``col`` (mean over the runs at each value), log x axis;
    ``log_base`` 2 also labels each value as an integer (K), ``None`` keeps matplotlib's ticks."""
    metrics = [m for m in metrics if m in df and df[m].notna().any()]
    d = df.dropna(subset=[col])
    if not metrics or d[col].nunique() < 2:
        return None
    with _style(), _context():
        fig, axes = _new(min(3.4 * len(metrics) + 0.6, 10), 2.8, ncols=len(metrics))
        for ax, m in zip(axes[0], metrics):
            g = d.dropna(subset=[m]).groupby(col)[m].mean().sort_index()
            ax.plot(g.index, g.values, "o-", color=MAIN_COLOR)
            if log_base is None:
                ax.set_xscale("log")
            else:
                ax.set_xscale("log", base=log_base)
                ax.set_xticks(list(g.index), [str(int(k)) for k in g.index])
            ax.set_xlabel(xlabel)
            ax.set_title(metric_label(m))
            ax.margins(y=0.15)
            ax.ticklabel_format(axis="y", useOffset=False)
        return _render(fig, caption, title, slug)


def k_sweep(df: pd.DataFrame, metrics: Sequence[str], bench: str) -> Optional[Figure]:
    """Metric against K (df: columns K + metrics, one row per run)."""
    return _sweep(df, metrics, "K", "K (Langevin steps per E-step)", 2,
                  "K = 1 is the reverse-KL (mode-seeking) gradient of Diff-Instruct/DMD; more steps move "
                  "the E-step samples toward the teacher and the update toward forward KL (mode-covering). "
                  "Look for the metric improving from K = 1 to a few steps and then levelling off.",
                  f"{bench} K sweep", "ksweep")


def step_sweep(df: pd.DataFrame, metrics: Sequence[str], bench: str) -> Optional[Figure]:
    """Metric against the Langevin step size gamma_eps."""
    return _sweep(df, metrics, "gamma_eps", "\u03b3_eps (Langevin step size)", None,
                  "The reparametrised sampler moves standard-normal variables, so one step size should "
                  "serve all noise levels: a flat curve over a factor of 16 in step size is the claim.",
                  f"{bench} step-size sweep", "stepsweep")


def _smooth(s: pd.Series, n: int) -> pd.Series:
    return s.rolling(max(1, n), min_periods=1, center=True).mean()


def grad_variance(logs: dict[str, pd.DataFrame], bench: str) -> Optional[Figure]:
    """Generator gradient norm over training (mean and rolling spread) per variant."""
    logs = {v: d for v, d in logs.items() if "grad_norm_g" in d and "iteration" in d and d["grad_norm_g"].notna().any()}
    if not logs:
        return None
    extra = any({"eps_rms", "nu_rms"} <= set(d.columns) for d in logs.values())
    with _style(), _context():
        fig, axes = _new(10.5 if extra else 6.0, 2.9, ncols=2 if extra else 1)
        ax = axes[0, 0]
        for i, (v, d) in enumerate(logs.items()):
            n = max(1, len(d) // 15)
            y = d["grad_norm_g"].astype(float)
            m, sd = _smooth(y, n), y.rolling(max(2, n), min_periods=2, center=True).std().fillna(0)
            ax.plot(d["iteration"], m, color=variant_color(v, i), label=v)
            ax.fill_between(d["iteration"], m - sd, m + sd, color=variant_color(v, i), alpha=0.18, linewidth=0)
        ax.set_xlabel("iteration")
        ax.set_ylabel("|grad_theta L| (generator)")
        ax.set_title("M-step gradient norm: rolling mean \u00b1 std")
        ax.legend(fontsize=8, frameon=False)
        if extra:
            ax = axes[0, 1]
            for i, (v, d) in enumerate(logs.items()):
                if {"eps_rms", "nu_rms"} <= set(d.columns):
                    n = max(1, len(d) // 15)
                    ax.plot(d["iteration"], _smooth(d["eps_rms"].astype(float), n), color=variant_color(v, i), label=f"{v}: eps")
                    ax.plot(d["iteration"], _smooth(d["nu_rms"].astype(float), n), color=variant_color(v, i),
                            linestyle="--", label=f"{v}: nu (noise)")
            ax.set_xlabel("iteration")
            ax.set_ylabel("RMS")
            ax.set_title("E-step eps and tracked linear noise nu")
            ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        return _render(fig, "Noise cancellation subtracts the tracked linear noise term nu from eps before the "
                            "M-step, which only removes variance. Look for a narrower band (smaller spread of "
                            "the gradient norm) for mct than for no-nc; right: how much of eps is pure noise.",
                       f"{bench} gradient variance", "gradvar")


def grad_var_bars(df: pd.DataFrame, bench: str) -> Optional[Figure]:
    """Measured M-step gradient variance with and without noise cancellation (same chains) per run."""
    d = df.dropna(subset=["nc", "no_nc"], how="any") if {"nc", "no_nc"} <= set(df.columns) else df.iloc[0:0]
    if d.empty:
        return None
    with _style(), _context():
        fig, axes = _new(max(4.5, 0.9 * len(d) + 2.5), 2.9)
        ax = axes[0, 0]
        x = np.arange(len(d))
        ax.bar(x - 0.2, d["nc"], width=0.4, color=MAIN_COLOR, label="with noise cancellation")
        ax.bar(x + 0.2, d["no_nc"], width=0.4, color=ABLATION_COLORS["no-nc"], label="without")
        ax.set_xticks(x, d["variant"], rotation=25, ha="right")
        ax.set_yscale("log")
        _plain_log_labels(ax.yaxis)
        ax.set_ylabel("Var of M-step gradient")
        ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        ax.set_title(f"{bench}: M-step gradient variance, same E-step chains")
        return _render(fig, "For each run's final generator, one E-step per fixed batch, then the M-step gradient with "
                            "eps_K - nu_K (blue) and with eps_K (purple). Noise cancellation should lower the variance "
                            "(log scale) without changing the expected gradient.", f"{bench} gradient variance bars",
                       "gradvarbars")


def metric_vs_iteration(logs: dict[str, pd.DataFrame], metric: str, bench: str) -> Optional[Figure]:
    logs = {v: d for v, d in logs.items() if metric in d and "iteration" in d and d[metric].notna().any()}
    if not logs:
        return None
    with _style(), _context():
        fig, axes = _new(7.2, 3.0)
        ax = axes[0, 0]
        for i, (v, d) in enumerate(logs.items()):
            d = d.dropna(subset=[metric])
            ax.plot(d["iteration"], d[metric], "o-", markersize=3, color=variant_color(v, i), label=v,
                    linewidth=2.2 if v == "mct" else 1.2)
        ax.set_xlabel("training iteration")
        ax.set_ylabel(metric_label(metric))
        ax.set_title(f"{bench}: {metric_label(metric)} during training")
        ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        return _render(fig, f"{metric_label(metric)} of the EMA generator during distillation, per variant. "
                            "Faster-falling curves mean faster convergence; this is where reparametrisation and "
                            "noise cancellation show even when end points agree.",
                       f"{bench} {metric} against iteration", "curve")


# --- mode coverage ------------------------------------------------------------------

def gmm_logpdf(points: np.ndarray, means: np.ndarray, stds: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Log-density of an isotropic Gaussian mixture at (N, d) points."""
    d = means.shape[1]
    stds = np.asarray(stds, float)
    if stds.ndim == 0 or stds.size == 1:
        stds = np.full(len(means), float(stds.reshape(-1)[0]))
    if stds.ndim == 1:
        var = (stds ** 2)[None, :]
        sq = ((points[:, None, :] - means[None]) ** 2).sum(-1)
        lp = np.log(weights)[None] - 0.5 * sq / var - 0.5 * d * np.log(2 * np.pi * var)
    else:  # per-dimension stds
        var = stds ** 2
        lp = (np.log(weights)[None] - 0.5 * (((points[:, None, :] - means[None]) ** 2) / var[None]).sum(-1)
              - 0.5 * np.log(2 * np.pi * var).sum(-1)[None])
    mx = lp.max(axis=1, keepdims=True)
    return (mx + np.log(np.exp(lp - mx).sum(axis=1, keepdims=True)))[:, 0]


def mode_masses(points: np.ndarray, means: np.ndarray) -> np.ndarray:
    """Fraction of points nearest to each mode."""
    lab = ((points[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
    return np.bincount(lab, minlength=len(means)) / max(len(points), 1)


def toy_scatter(panels: list[tuple[str, np.ndarray, str]], teacher: Optional[dict], bench: str) -> Optional[Figure]:
    """panels: (title, (N,2) points, subtitle). Samples over the true density contours."""
    if not panels:
        return None
    n = len(panels)
    ncols = min(n, 4)
    nrows = math.ceil(n / ncols)
    allpts = np.concatenate([p for _, p, _ in panels])
    if teacher is not None:
        means = np.asarray(teacher["means"], float)
        lim = float(np.abs(means).max() + 4 * np.max(teacher["stds"]) + 0.5)
    else:
        lim = float(np.quantile(np.abs(allpts), 0.995)) + 0.5
    with _style(), _context():
        fig, axes = _new(2.45 * ncols, 2.55 * nrows, ncols=ncols, nrows=nrows)
        dens = None
        if teacher is not None:
            g = np.linspace(-lim, lim, 160)
            xx, yy = np.meshgrid(g, g)
            lp = gmm_logpdf(np.stack([xx.ravel(), yy.ravel()], 1), means, np.asarray(teacher["stds"], float),
                            np.asarray(teacher["weights"], float) / np.sum(teacher["weights"]))
            dens = np.exp(lp).reshape(xx.shape)
        for i, ax in enumerate(axes.ravel()):
            if i >= n:
                ax.set_visible(False)
                continue
            title, pts, sub = panels[i]
            if dens is not None:
                ax.contourf(xx, yy, dens, levels=12, cmap="Greys", alpha=0.8)
            pts = pts[:2000]
            ax.scatter(pts[:, 0], pts[:, 1], s=1.5, alpha=0.45, color="#c0392b", linewidths=0, rasterized=True)
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{title}\n{sub}" if sub else title, fontsize=9)
        return _render(fig, "Red: one-step samples of each run; grey: the true mixture density (the teacher). "
                            "With K = 1 (reverse KL) samples pile onto a few heavy modes; as K grows they spread "
                            "over all modes in proportion to their weights.",
                       f"{bench} samples over the true density", "scatter")


def mode_mass_bars(masses: dict[str, Sequence[float]], true_w: Optional[Sequence[float]], bench: str) -> Optional[Figure]:
    if not masses:
        return None
    rows = [{"run": name, "mode": i + 1, "mass": float(m)} for name, ms in masses.items() for i, m in enumerate(ms)]
    df = pd.DataFrame(rows)
    nmodes = int(df["mode"].max())
    with _style(), _context():
        fig, axes = _new(max(6.0, 0.75 * nmodes + 2.5), 3.0)
        ax = axes[0, 0]
        names = list(masses)
        pal = [variant_color(n, i) if not n.startswith("K = ") else None for i, n in enumerate(names)]
        kpal = sns.color_palette("viridis_r", n_colors=max(len(names), 2))
        palette = {n: (pal[i] or kpal[i]) for i, n in enumerate(names)}
        sns.barplot(df, x="mode", y="mass", hue="run", palette=palette, ax=ax, width=0.85)
        if true_w is not None:
            w = np.asarray(true_w, float)
            w = w / w.sum()
            ax.scatter(np.arange(len(w)), w, marker="_", s=420, color="black", linewidths=2.2, zorder=5,
                       label="true weight")
        ax.set_xlabel("mode")
        ax.set_ylabel("fraction of samples")
        ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        ax.set_title(f"{bench}: per-mode mass")
        return _render(fig, "Fraction of samples in each mode (nearest mode) against the true weight (black "
                            "dashes). Mode-seeking runs leave light modes empty and overfill heavy ones; a "
                            "mode-covering run follows the dashes.", f"{bench} per-mode mass", "modemass")


def class_histograms(hists: dict[str, Sequence[float]], bench: str) -> Optional[Figure]:
    if not hists:
        return None
    rows = [{"run": name, "class": str(i), "fraction": float(f)} for name, h in hists.items() for i, f in enumerate(h)]
    df = pd.DataFrame(rows)
    ncls = max(len(h) for h in hists.values())
    with _style(), _context():
        fig, axes = _new(max(6.4, 0.65 * ncls + 2.8), 3.0)
        ax = axes[0, 0]
        names = list(hists)
        kpal = sns.color_palette("viridis_r", n_colors=max(len(names), 2))
        palette = {n: (ABLATION_COLORS["teacher"] if n.startswith("teacher") else kpal[i]) for i, n in enumerate(names)}
        sns.barplot(df, x="class", y="fraction", hue="run", palette=palette, ax=ax, width=0.85)
        ax.axhline(1.0 / ncls, color="black", linestyle="--", linewidth=1, label="uniform")
        ax.set_xlabel("predicted class")
        ax.set_ylabel("fraction of samples")
        ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        ax.set_title(f"{bench}: class histogram of one-step samples")
        return _render(fig, "Classes of the students' samples, by the benchmark's classifier. The data are balanced "
                            "(dashed line): a mode-seeking student over-produces some classes and drops others; "
                            "larger K should flatten the histogram.", f"{bench} class histograms", "classhist")


def speed_bars(df: pd.DataFrame) -> Optional[Figure]:
    """df columns: bench, name, nfe, images_per_s."""
    if df.empty:
        return None
    d = df.dropna(subset=["images_per_s"]).copy()
    if d.empty:
        return None
    d["label"] = [f"{b}: {n}" + (f" ({int(f)} NFE)" if pd.notna(f) else "") for b, n, f in zip(d["bench"], d["name"], d["nfe"])]
    with _style(), _context():
        fig, axes = _new(7.5, 0.42 * len(d) + 1.0)
        ax = axes[0, 0]
        colors = [MAIN_COLOR if (pd.notna(f) and int(f) == 1) else "#888888" for f in d["nfe"]]
        ax.barh(range(len(d)), d["images_per_s"], color=colors)
        ax.set_yticks(range(len(d)), d["label"])
        ax.invert_yaxis()
        ax.set_xscale("log")
        _plain_log_labels(ax.xaxis, minor=False)
        ax.set_xlabel("images per second (log scale)")
        for i, v in enumerate(d["images_per_s"]):
            ax.annotate(fmt_rate(float(v)), (v, i), va="center", xytext=(3, 0), textcoords="offset points", fontsize=8)
        ax.margins(x=0.15)
        return _render(fig, "Measured sampling throughput; blue: one-step students, grey: multi-step teacher "
                            "samplers. The gap is roughly the NFE ratio.", "sampling throughput", "speed")
