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


def log_if_spread(ax, values, axis: str = "y", ratio: float = 5.0) -> bool:
    """Log scale when the values span more than ``ratio`` (an outlier such as a random-init run
    would otherwise flatten every other bar); plain tick labels. True when switched."""
    v = [float(x) for x in values if x is not None and x > 0]
    if len(v) < 2 or max(v) / min(v) < ratio:
        return False
    getattr(ax, f"set_{axis}scale")("log")
    _plain_log_labels(ax.yaxis if axis == "y" else ax.xaxis)
    return True


# --- results figures ----------------------------------------------------------------

def teacher_vs_student(teacher: dict[int, Optional[float]], students: dict[str, object], metric: str,
                       bench: str, floor: Optional[float] = None) -> Optional[Figure]:
    """Teacher metric against NFE (line) with one-step students (``students``: run -> Interval over
    its seeds) as stars at NFE 1 with their 95 % interval."""
    t = sorted((n, v) for n, v in teacher.items() if v is not None)
    students = {k: v for k, v in students.items() if v is not None}
    if not t:
        return None
    with _style(), _context():
        fig, axes = _new(7.0, 3.0)
        ax = axes[0, 0]
        ax.plot([n for n, _ in t], [v for _, v in t], "o-", color=ABLATION_COLORS["teacher"], label="teacher (multi-step)")
        for n, v in t:
            ax.annotate(f"{v:.2f}", (n, v), textcoords="offset points", xytext=(4, 5), fontsize=8)
        for i, (name, iv) in enumerate(students.items()):
            err = None if iv.lo is None else [[iv.mean - iv.lo], [iv.hi - iv.mean]]
            ax.errorbar([1], [iv.mean], yerr=err, marker="*", markersize=13, linestyle="none", capsize=3,
                        color=variant_color(name, i), label=f"student {name} (1 step): {iv.mean:.2f}, n={iv.n}")
        if floor is not None:
            ax.axhline(floor, color="#888888", linestyle=":", linewidth=1, label=f"real-vs-real floor {floor:.2f}")
        ax.set_xscale("log")
        ticks = sorted({1, *[int(n) for n, _ in t]})
        ax.set_xticks(ticks, [str(n) for n in ticks])
        ax.minorticks_off()
        logy = log_if_spread(ax, [v for _, v in t] + [iv.mean for iv in students.values()])
        if not logy:
            ax.set_ylim(bottom=0)
        ax.set_xlabel("NFE (log scale)")
        ax.set_ylabel(metric_label(metric) + (" (log scale)" if logy else ""))
        ax.set_title(f"{bench}: quality against sampling cost")
        ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.02, 1.0))
        best_n, best = min(t, key=lambda p: p[1])
        caption = f"{metric_label(metric)} of the teacher: " + (
            f"{t[0][1]:.2f} at {t[0][0]} NFE, {t[-1][1]:.2f} at {t[-1][0]} NFE (best {best:.2f} at {best_n} NFE)."
            if len(t) > 1 else f"{best:.2f} at {best_n} NFE (one evaluation).")
        for name, iv in students.items():
            where = ("below" if iv.hi < best else "above" if iv.lo > best else "not distinguishable from") \
                if iv.lo is not None else "one seed, not compared with"
            caption += (f" {name} in one step: {iv.mean:.2f}" + (f" [{iv.lo:.2f}, {iv.hi:.2f}] over {iv.n} seeds"
                                                                  if iv.lo is not None else " (1 seed)")
                        + f", {iv.mean / best:.2f}\u00d7 the teacher's best ({where} it), at 1/{best_n} of its NFE.")
        return _render(fig, caption + (" Log axis: the values span more than a factor of 5." if logy else ""),
                       f"{bench} {metric} against NFE", "nfe")


def ablation_bars(values: dict[str, dict[str, object]], metrics: Sequence[str], bench: str, ref: Optional[str],
                  caption: str) -> Optional[Figure]:
    """One panel per metric, one bar per run (``values``: run -> metric -> Interval over its seeds),
    the 95 % interval as an error bar; a log axis when one run is an outlier (say, a random
    initialisation), and the caption says so."""
    metrics = [m for m in metrics if sum(m in v for v in values.values()) >= 2]
    if not metrics:
        return None
    logged = []
    with _style(), _context():
        fig, axes = _new(min(3.4 * len(metrics) + 0.6, 10), 2.9, ncols=len(metrics))
        for ax, m in zip(axes[0], metrics):
            runs = [(v, d[m]) for v, d in values.items() if m in d]
            ax.bar(range(len(runs)), [iv.mean for _, iv in runs],
                   color=[variant_color(v, i) if v != ref else MAIN_COLOR for i, (v, _) in enumerate(runs)])
            for i, (_, iv) in enumerate(runs):
                if iv.lo is not None:
                    ax.errorbar([i], [iv.mean], yerr=[[iv.mean - iv.lo], [iv.hi - iv.mean]], color="#222222",
                                capsize=3, linewidth=1)
            ax.set_xticks(range(len(runs)), [f"{v}\n(n={iv.n})" for v, iv in runs], rotation=25, ha="right")
            for i, (_, iv) in enumerate(runs):
                ax.annotate(f"{iv.mean:.3g}", (i, iv.hi if iv.hi is not None else iv.mean), ha="center", va="bottom",
                            fontsize=8, xytext=(0, 2), textcoords="offset points")
            if min(iv.mean for _, iv in runs) > 0 and log_if_spread(ax, [iv.mean for _, iv in runs]):  # a 0 stays visible
                logged.append(metric_label(m))
            else:
                ax.set_ylim(bottom=0)
                ax.ticklabel_format(axis="y", useOffset=False)
            ax.set_title(metric_label(m))
            ax.margins(y=0.15)
        note = (f" Log axis for {', '.join(logged)}: the values span more than a factor of 5, and a linear axis "
                "would flatten every other bar." if logged else "")
        return _render(fig, caption + " Bars: mean over seeds; error bars: 95 % interval (none for one seed)." + note,
                       f"{bench} ablation bars", "ablation")


def sweep(data: dict[str, list[tuple[float, object, str]]], xlabel: str, log_base: Optional[int],
          bounds: dict[str, tuple[float, Optional[float]]], caption: str, alt: str, slug: str) -> Optional[Figure]:
    """Each metric against one knob: one point per run (``data``: metric -> (x, Interval, run)), the
    mean over its seeds with its 95 % interval as an error bar (a hollow point: one seed, no bar).
    The y axis spans the metric's natural range (``bounds``: from 0, to its maximum where it has
    one), so that a difference in the third decimal does not look like a trend."""
    if not data:
        return None
    with _style(), _context():
        fig, axes = _new(min(3.4 * len(data) + 0.6, 10), 2.8, ncols=len(data))
        for ax, (m, pts) in zip(axes[0], data.items()):
            pts = sorted(pts, key=lambda p: p[0])
            xs = [x for x, _, _ in pts]
            ys = [iv.mean for _, iv, _ in pts]
            ax.plot(xs, ys, "-", color=MAIN_COLOR, linewidth=1)
            for x, iv, _ in pts:
                if iv.lo is not None:
                    ax.errorbar([x], [iv.mean], yerr=[[iv.mean - iv.lo], [iv.hi - iv.mean]], fmt="o", color=MAIN_COLOR,
                                capsize=3, markersize=5)
                else:
                    ax.plot([x], [iv.mean], "o", markerfacecolor="white", color=MAIN_COLOR, markersize=5)
            if log_base is None:
                ax.set_xscale("log")
            else:
                ax.set_xscale("log", base=log_base)
                ax.set_xticks(xs, [f"{x:g}" for x in xs])
                ax.minorticks_off()
            lo, hi = bounds.get(m, (0.0, None))  # linear from the bound, always: the caption says so
            tops = [iv.hi if iv.hi is not None else iv.mean for _, iv, _ in pts]
            top = max(hi if hi is not None else max(tops) * 1.15, max(tops))
            bottom = min([lo] + [iv.lo if iv.lo is not None else iv.mean for _, iv, _ in pts])
            ax.set_ylim(bottom, top * 1.04)  # a little headroom: points on the bound stay visible
            ax.set_xlabel(xlabel)
            ax.set_title(metric_label(m))
            ax.ticklabel_format(axis="y", useOffset=False)
        return _render(fig, caption, alt, slug)


def _smooth(s: pd.Series, n: int) -> pd.Series:
    return s.rolling(max(1, n), min_periods=1, center=True).mean()


def grad_variance(logs: dict[str, pd.DataFrame], bench: str, caption: str = "") -> Optional[Figure]:
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
                            "M-step. Left: the generator's gradient norm (rolling mean \u00b1 std); right: eps and "
                            "its tracked noise. " + caption, f"{bench} gradient variance", "gradvar")


def grad_var_bars(rows: list[dict], bench: str) -> Optional[Figure]:
    """Measured M-step gradient variance with and without noise cancellation (same chains) per run."""
    d = [r for r in rows if r.get("nc") is not None and r.get("no_nc") is not None]
    if not d:
        return None
    with _style(), _context():
        fig, axes = _new(max(4.5, 0.9 * len(d) + 2.5), 2.9)
        ax = axes[0, 0]
        x = np.arange(len(d))
        ax.bar(x - 0.2, [r["nc"] for r in d], width=0.4, color=MAIN_COLOR, label="with noise cancellation")
        ax.bar(x + 0.2, [r["no_nc"] for r in d], width=0.4, color=ABLATION_COLORS["no-nc"], label="without")
        ax.set_xticks(x, [r["variant"] for r in d], rotation=25, ha="right")
        ax.set_yscale("log")
        _plain_log_labels(ax.yaxis)
        ax.set_ylabel("Var of M-step gradient (log)")
        ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        ax.set_title(f"{bench}: M-step gradient variance, same E-step chains")
        ratios = [r["no_nc"] / r["nc"] for r in d if r["nc"]]
        return _render(fig, "For each run's final generator, one E-step per fixed batch, then the M-step gradient with "
                            "eps_K - nu_K (blue) and with eps_K (purple). Without cancellation the variance is "
                            f"{min(ratios):.3g}\u00d7 to {max(ratios):.3g}\u00d7 that with it (means over seeds). "
                            "Log axis: variances of different runs span orders of magnitude.",
                       f"{bench} gradient variance bars", "gradvarbars")


def split_outliers(levels: dict[str, float], factor: float = 5.0) -> tuple[list[str], list[str]]:
    """(the runs, the outliers): a run whose typical level is more than ``factor`` times the median
    of all runs' levels gets its own panel, so that it does not flatten the others."""
    vals = sorted(v for v in levels.values() if v > 0)
    if len(vals) < 3:
        return list(levels), []
    med = vals[len(vals) // 2] if len(vals) % 2 else 0.5 * (vals[len(vals) // 2 - 1] + vals[len(vals) // 2])
    out = [v for v, x in levels.items() if x > factor * med]
    return [v for v in levels if v not in out], out


def metric_vs_iteration(curves: dict[str, list[tuple[int, float, Optional[float], Optional[float]]]], metric: str,
                        bench: str, caption: str) -> Optional[Figure]:
    """The metric measured during training per run: (iteration, mean over seeds, lo, hi) with the
    95 % band where there are seeds; runs far above the rest in a panel of their own."""
    curves = {v: c for v, c in curves.items() if c}
    if not curves:
        return None
    main, out = split_outliers({v: c[-1][1] for v, c in curves.items()})  # where each run ends up
    panels = [main] + ([out] if out else [])
    with _style(), _context():
        fig, axes = _new(7.2 if not out else 10.0, 3.0, ncols=len(panels))
        for ax, names in zip(axes[0], panels):
            for i, v in enumerate(names):
                c = curves[v]
                color = variant_color(v, list(curves).index(v))
                ax.plot([p[0] for p in c], [p[1] for p in c], "o-", markersize=3, color=color, label=v,
                        linewidth=2.2 if v == next(iter(curves)) else 1.2)
                band = [p for p in c if p[2] is not None]
                if band:
                    ax.fill_between([p[0] for p in band], [p[2] for p in band], [p[3] for p in band], color=color,
                                    alpha=0.18, linewidth=0)
            ax.set_ylim(bottom=0)
            ax.set_xlabel("training iteration")
            ax.set_ylabel(metric_label(metric))
            ax.legend(fontsize=8, frameon=False, loc="upper right")
        axes[0, 0].set_title(f"{bench}: {metric_label(metric)} during training")
        if out:
            axes[0, -1].set_title("outliers, own scale")
            lo = min(p[1] for v in out for p in curves[v])
            hi = max(p[1] for v in out for p in curves[v])
            caption += (f" {', '.join(out)} ({lo:.3g} to {hi:.3g}) in the right panel: on the left's axis it would "
                        "flatten every other run.")
        return _render(fig, caption, f"{bench} {metric} against iteration", "curve")


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


def toy_scatter(panels: list[tuple[str, np.ndarray, str]], teacher: Optional[dict], bench: str,
                caption: str) -> Optional[Figure]:
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
        return _render(fig, caption, f"{bench} samples over the true density", "scatter")


def mode_mass_bars(masses: dict[str, Sequence[float]], true_w: Optional[Sequence[float]], bench: str,
                   caption: str) -> Optional[Figure]:
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
        return _render(fig, caption, f"{bench} per-mode mass", "modemass")


def class_histograms(hists: dict[str, Sequence[float]], bench: str, caption: str) -> Optional[Figure]:
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
        return _render(fig, caption, f"{bench} class histograms", "classhist")


def speed_bars(bars: list[tuple[str, int, float]]) -> Optional[Figure]:
    """(label, NFE, images/s) per sampler; one-step ones in blue."""
    if not bars:
        return None
    with _style(), _context():
        fig, axes = _new(7.5, 0.42 * len(bars) + 1.0)
        ax = axes[0, 0]
        ax.barh(range(len(bars)), [v for _, _, v in bars], color=[MAIN_COLOR if n == 1 else "#888888" for _, n, _ in bars])
        ax.set_yticks(range(len(bars)), [f"{label} ({n} NFE)" for label, n, _ in bars])
        ax.invert_yaxis()
        ax.set_xscale("log")
        _plain_log_labels(ax.xaxis, minor=False)
        ax.set_xlabel("images per second (log scale)")
        for i, (_, _, v) in enumerate(bars):
            ax.annotate(fmt_rate(float(v)), (v, i), va="center", xytext=(3, 0), textcoords="offset points", fontsize=8)
        ax.margins(x=0.15)
        return _render(fig, "Measured sampling throughput; blue: one-step students, grey: multi-step teacher samplers.",
                       "sampling throughput", "speed")
