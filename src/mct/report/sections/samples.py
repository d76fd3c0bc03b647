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

from ...records import METRICS, CorrectionMetrics
from ..collect import BenchResults
from ..context import Inputs
from ..tables import Cell, Row, Table, metric_label, number_cell
from .common import TABLE_METRICS, fmt, what_changes


class Images:
    """Embeds (data URI) or links (relative path from the report) PNG files the stages wrote.
    Small grids are resampled on embedding (nearest neighbour, by an integer factor) to at least
    ``min_px`` wide, so that 8x8 digits are readable in any viewer; a linked file cannot be
    resampled and is scaled by the page instead (pixelated)."""

    def __init__(self, inputs: Inputs):
        self.root, self.out, self.cfg = inputs.results.root, inputs.out, inputs.cfg

    def get(self, rel: str, caption: str, alt: str) -> Optional[dict]:
        import io

        from PIL import Image, UnidentifiedImageError

        path = self.root / rel
        if not path.is_file():
            return None
        try:
            with Image.open(path) as im:
                im.load()
                w, h = im.size
                scale = math.ceil(self.cfg.sample_min_px / w) if w < self.cfg.sample_min_px else 1
                size = path.stat().st_size
                embedded = size <= self.cfg.embed_max_bytes
                if embedded and scale > 1:
                    buf = io.BytesIO()
                    im.resize((w * scale, h * scale), Image.NEAREST).save(buf, format="PNG", optimize=True)
                    data = buf.getvalue()
                elif embedded:
                    data = path.read_bytes()
        except (OSError, UnidentifiedImageError) as exc:
            return {"missing": rel, "caption": f"{caption} (unreadable: {exc})"}
        if embedded:
            src = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        else:
            src = urllib.parse.quote(Path(os.path.relpath(path.resolve(), self.out.parent.resolve())).as_posix())
        return {"src": src, "width": w * scale, "natural": (w, h), "pixelated": scale > 1, "scale": scale,
                "resampled": embedded and scale > 1, "caption": caption, "alt": alt, "path": rel, "embedded": embedded}


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
        if m == "kid_mean":  # the std over KID subsets, on the same x10^3 scale as the mean
            for cell, scores in zip(cells[1:3], (c.before, c.after)):
                if scores.get("kid_std") is not None:
                    cell.text += f" \u00b1 {fmt(scores.get('kid_std'), 'kid_std')}"
        if gen is not None:
            cells.append(number_cell(gen.get(m), m))
        t.rows.append(Row(cells))
        if helped is not None:
            verdicts.append((m, helped))
    t.caption = (f"{c.num_samples} samples, {c.steps} joint Langevin steps at \u03c3 = {c.sigma:g} "
                 f"(\u03b3_eps = {c.gamma_eps:g}, \u03b3_z = {c.gamma_z:g}), {c.seconds:.1f} s. KID (and its std over subsets) is \u00d710\u00b3 in every column. "
                 "Helped?: by the metric's better direction (lower FID and KID, higher precision and recall).")
    return t, correction_headline(c, names)


def correction_headline(c: CorrectionMetrics, names: list[str]) -> str:
    """One sentence: did the correction help, by the first metric with a direction (FID first), how
    many of the others it improved, and on how many samples (one evaluation: no interval)."""
    directed = [(m, c.change(m)) for m in names if c.change(m) is not None and c.change(m)[2] is not None]
    if not directed and not names:
        return ""
    lead = next((m for m in names if m == "fid"), directed[0][0] if directed else names[0])
    before, after, helped = c.change(lead)
    moved = "lowered" if after < before else ("raised" if after > before else "left")
    way = METRICS.get(lead, ("", ""))[1]
    verdict = ("helped" if helped else "made it worse") if helped is not None else "has no better direction"
    change = f"from {fmt(before, lead)} to {fmt(after, lead)}" if after != before else f"at {fmt(before, lead)}"
    head = (f"On {c.num_samples} samples, the correction {moved} {metric_label(lead)} {change}: it {verdict}" + (f" on {plain(lead)} ({way} is better)" if way else ""))
    others = [(m, ch[2]) for m, ch in directed if m != lead]
    if others:
        good = sum(1 for _, h in others if h)
        head += f"; it improved {good} of the {len(others)} other metrics with a direction"
    return head + ". One evaluation of the first seed's generator: no seed interval."


def plain(metric: str) -> str:
    return metric_label(metric).rstrip(" \u2193\u2191")


def run_caption(b: BenchResults, v: str) -> str:
    """What a run's grid is: the variant, its K and what changes, the training seed shown."""
    r = b.runs[v]
    seeds = [x.seed for x in r.seeds] or [int(r.settings.get("seed", 0) or 0)]
    k = r.settings.get("K")
    what = what_changes(b, v)
    if what == "main run":
        head = f"{v} (main run" + (f", K = {k})" if k is not None else ")")
    else:
        head = f"{v} ({what})" if what else v
    of = f" (the first of {len(seeds)})" if len(seeds) > 1 else ""
    return f"{head}: one-step samples g(z), 1 NFE, training seed {seeds[0]}{of}"


def caption_rows(inputs: Inputs, b: BenchResults) -> Optional[dict]:
    """The captions a text-conditioned grid was drawn with, by row and column. They are not recorded
    with the samples: they are rebuilt from the config's caption templates and the evaluation's
    order (labels cycle 0..9 along a row, one column per class; sample i uses template i // 10 mod
    the number of templates, so grid row r uses template r mod that number)."""
    from ...data.captions import DEFAULT_TEMPLATES, make_caption

    section = (inputs.raw.get("benchmarks") or {}).get(b.name) or {}
    if "clip" not in b.aux and "captions" not in section:
        return None
    templates = tuple((section.get("captions") or {}).get("templates") or DEFAULT_TEMPLATES)
    ev = section.get("eval") or {}
    rows = max(1, min(int(ev.get("grid", 100)), int(ev.get("num_samples", 1000))) // 10)
    return {"columns": "one column per digit, 0 to 9 from the left",
            "rows": [(r + 1, templates[r % len(templates)], make_caption(3, templates[r % len(templates)]))
                     for r in range(rows)],
            "note": "Rebuilt from the config's caption templates and the evaluation's label and template order; "
                    "the samples' files do not record their captions."}


def _grids(b: BenchResults, images: Images) -> list[dict]:
    grid = []
    if b.teacher:
        rows = [r for r in b.teacher.rows if r.sampler != "exact"]
        nfe = max(r.nfe for r in rows) if rows else None
        sampler = b.teacher.sampler or "multi-step"
        t = images.get(f"{b.name}/teacher/samples.png",
                       f"teacher: {sampler} sampler" + (f", {nfe} NFE" if nfe else "") + ", same labels and seeds",
                       f"{b.name} teacher samples")
        if t:
            grid.append(t)
    for v in b.variants:
        if v in b.runs:
            img = images.get(f"{b.name}/runs/{v}/samples.png", run_caption(b, v), f"{b.name} {v} samples")
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
                                "before": images.get(f"{b.name}/runs/{v}/correct/before.png", f"{v} before: one-step g(z), {c.num_samples} samples",
                                                     f"{b.name} {v} before correction"),
                                "after": images.get(f"{b.name}/runs/{v}/correct/after.png",
                                                    f"{v} after: {c.steps} joint Langevin steps, denoised", f"{b.name} {v} after correction")})
        grid = _grids(b, images)
        exports = _exports(b, inputs)
        if grid or corrections or exports:
            blocks.append({"name": b.name, "grid": grid, "corrections": corrections, "exports": exports,
                           "captions": caption_rows(inputs, b) if grid else None})
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
