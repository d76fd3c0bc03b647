"""``mct report``: results/report.html from the records the stages wrote.

One jinja2 template (``template.html.j2``) renders six sections, each built by a module of
:mod:`mct.report.sections` from :class:`mct.report.collect.Results`:

1. summary: benchmarks run, hardware, time per stage, the provenance recorded in the results;
2. main results: per task, the paper's reported rows (``paper_results.yaml``) beside ours;
3. ablations: one-ingredient ablations, K and step-size sweeps, M-step gradient variance,
   FID during training;
4. mode-seeking to mode-covering: 2-D samples per K over the true density, per-mode mass,
   class histograms;
5. samples: teacher against one-step grids, MCMC correction before/after with its table;
6. speed: throughput, EM overhead and memory (``results/bench/<bench>.json``).

Figures are PNG data URIs; sample grids are embedded up to ``report.embed_max_bytes`` and
linked (relative path) above it. Nothing is fetched from the network: the page has no
scripts, no external fonts, and a Content-Security-Policy that forbids it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from ..config import from_dict
from ..io import write_text
from .collect import collect
from .context import HERE, Inputs, ReportConfig, load_paper_results
from .sections import ablations, main, modes, paper_scale, samples, speed, summary

log = logging.getLogger(__name__)

SECTIONS = [("summary", "1. Summary", summary), ("main", "2. Main results", main),
            ("ablations", "3. Ablations", ablations), ("modes", "4. Mode-seeking to mode-covering", modes),
            ("samples", "5. Samples", samples), ("speed", "6. Speed", speed),
            ("paper_scale", "7. Paper-scale cost", paper_scale)]

__all__ = ["ReportConfig", "build_report"]


def _env():
    import jinja2

    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(HERE)), autoescape=jinja2.select_autoescape(["html", "j2"]),
                              undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def build_report(raw: dict, ctx, out: Optional[str | Path] = None) -> Path:
    """Render ``<results_dir>/report.html`` (or ``out``) from the records under the results
    directory; return its path."""
    raw = raw or {}
    cfg = from_dict(ReportConfig, raw.get("report") or {}, "report")
    root = Path(ctx.results_dir)
    out = Path(out) if out is not None else root / "report.html"
    inputs = Inputs(collect(root, raw, strict=cfg.strict), raw, cfg, load_paper_results(), out)
    context = {key: module.build(inputs) for key, _, module in SECTIONS}
    css = (HERE / "style.css").read_text(encoding="utf-8")
    html = _env().get_template("template.html.j2").render(
        title=cfg.title, sections=[(k, label) for k, label, _ in SECTIONS], css=css,
        problems=inputs.results.problems, **context)
    write_text(out, html)
    log.info("report written to %s", out)
    return out
