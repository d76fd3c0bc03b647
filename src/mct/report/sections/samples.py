"""Section 5: sample grids (teacher, multi-step, against every one-step run) and the joint MCMC
correction: before/after grids and a table of every metric before and after, saying whether
the correction helped (by each metric's better direction in mct.records.METRICS)."""

from __future__ import annotations

import base64
import math
import os
import urllib.parse
from pathlib import Path
from typing import Optional

from ...records import CorrectionMetrics
from ..collect import BenchResults
from ..context import Inputs
from ..tables import Cell, Row, Table, metric_label, number_cell
from .common import TABLE_METRICS, fmt


class Images:
    """Embeds (data URI) or links (relative path from the report) PNG files the stages wrote;
    small grids are shown scaled up by an integer factor, pixelated, to at least ``min_px`` wide."""

    def __init__(self, inputs: Inputs):
        self.root, self.out, self.cfg = inputs.results.root, inputs.out, inputs.cfg

    def get(self, rel: str, caption: str, alt: str) -> Optional[dict]:
        from PIL import Image, UnidentifiedImageError

        path = self.root / rel
        if not path.is_file():
            return None
        try:
            with Image.open(path) as im:
                w, h = im.size
        except (OSError, UnidentifiedImageError) as exc:
            return {"missing": rel, "caption": f"{caption} (unreadable: {exc})"}
        size = path.stat().st_size
        embedded = size <= self.cfg.embed_max_bytes
        if embedded:
            src = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
        else:
            src = urllib.parse.quote(Path(os.path.relpath(path.resolve(), self.out.parent.resolve())).as_posix())
        scale = math.ceil(self.cfg.sample_min_px / w) if w < self.cfg.sample_min_px else 1
        return {"src": src, "width": w * scale, "natural": (w, h), "pixelated": scale > 1, "caption": caption,
                "alt": alt, "path": rel, "embedded": embedded}


def correction_table(b: BenchResults, v: str, c: CorrectionMetrics) -> tuple[Table, str]:
    """Rows = metrics, columns = before, after, change, helped; and one sentence on the primary metric."""
    names = [m for m in TABLE_METRICS if m in c.before.metrics and m in c.after.metrics]
    gen = c.generator_at_z_K
    cols = [("Metric", ""), ("Before (g(z))", "the one-step samples"), ("After correction", "denoised after the chain")]
    cols += [("Change", "after - before"), ("Helped?", "by the metric's better direction")]
    if gen is not None:
        cols.append(("g(z_K)", "the generator at the moved latents"))
    t = Table(columns=cols, kind=f"correct-{b.name}-{v}")
    verdicts = []
    for m in names:
        before, after, helped = c.change(m)
        d = after - before
        sign = "+" if d >= 0 else "\u2212"
        cells = [Cell(metric_label(m), "label"), number_cell(before, m), number_cell(after, m),
                 Cell(f"{sign}{fmt(abs(d), m)}", "num"),
                 Cell("n/a" if helped is None else ("yes" if helped else "no"),
                      "na" if helped is None else ("ok" if helped else "bad"))]
        if gen is not None:
            cells.append(number_cell(gen.get(m), m))
        t.rows.append(Row(cells))
        if helped is not None:
            verdicts.append((m, helped))
    t.caption = (f"{c.num_samples} samples, {c.steps} joint Langevin steps at \u03c3 = {c.sigma:g} "
                 f"(\u03b3_eps = {c.gamma_eps:g}, \u03b3_z = {c.gamma_z:g}), {c.seconds:.1f} s. KID is \u00d710\u00b3 in every column.")
    head = ""
    if "fid" in names:
        before, after, helped = c.change("fid")
        head = (f"The correction {'lowered' if after < before else 'raised'} FID from {fmt(before, 'fid')} to "
                f"{fmt(after, 'fid')}: it {'helped' if helped else 'did not help'} on FID")
        others = [m for m, h in verdicts if m != "fid"]
        if others:
            good = [metric_label(m) for m, h in verdicts if m != "fid" and h]
            head += f", and improved {len(good)} of the {len(others)} other metrics with a direction"
        head += "."
    return t, head


def _grids(b: BenchResults, images: Images) -> list[dict]:
    grid = []
    if b.teacher:
        nfe = max(r.nfe for r in b.teacher.rows) if b.teacher.rows else None
        t = images.get(f"{b.name}/teacher/samples.png", "teacher, multi-step" + (f" ({nfe} NFE)" if nfe else ""),
                       f"{b.name} teacher samples")
        if t:
            grid.append(t)
    for v in b.variants:
        if v in b.runs:
            img = images.get(f"{b.name}/runs/{v}/samples.png", f"{v}, one step", f"{b.name} {v} samples")
            if img:
                grid.append(img)
    return grid


def build(inputs: Inputs) -> dict:
    images = Images(inputs)
    blocks = []
    for b in inputs.results.benches:
        if not b.runs and not b.teacher:
            continue
        corrections = []
        for v, c in b.corrections.items():
            table, head = correction_table(b, v, c)
            corrections.append({"variant": v, "table": table, "headline": head,
                                "before": images.get(f"{b.name}/runs/{v}/correct/before.png", "before: one-step g(z)",
                                                     f"{b.name} {v} before correction"),
                                "after": images.get(f"{b.name}/runs/{v}/correct/after.png",
                                                    "after: joint MCMC correction, denoised", f"{b.name} {v} after correction")})
        grid = _grids(b, images)
        exports = _exports(b, inputs)
        if grid or corrections or exports:
            blocks.append({"name": b.name, "grid": grid, "corrections": corrections, "exports": exports})
    return {"benches": blocks}


def _exports(b: BenchResults, inputs: Inputs) -> list[dict]:
    """The exported generators (``mct export``) of this benchmark: links to the folder and its model card."""
    root = inputs.results.root / b.name / "export"
    out = []
    for v in b.variants:
        card = root / v / "README.md"
        if (root / v / "config.json").is_file() and card.is_file():
            rel = lambda p: urllib.parse.quote(Path(os.path.relpath(p.resolve(), inputs.out.parent.resolve())).as_posix())  # noqa: E731
            out.append({"variant": v, "folder": rel(root / v), "card": rel(card),
                        "path": f"{b.name}/export/{v}/"})
    return out
