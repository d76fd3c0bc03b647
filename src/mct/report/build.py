"""``mct report``: results/report.html from the records the stages wrote.

One jinja2 template (``template.html.j2``) renders the sections, each built by a module of
:mod:`mct.report.sections` from :class:`mct.report.collect.Results` (a section with nothing to
show for the config is left out, and the numbers follow the sections shown):

1. summary: benchmarks run, hardware, time per stage, the provenance recorded in the results;
2. main results: per task, the paper's reported rows (``paper_results.yaml``) beside ours;
3. ablations: one-ingredient ablations, K and step-size sweeps, M-step gradient variance,
   FID during training;
4. mode-seeking to mode-covering: 2-D samples per K over the true density, per-mode mass,
   class histograms;
   where mode covering shows (only with a family of toy2d mixtures): the claims' verdicts per mixture;
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
from .sections import ablations, covering, main, modes, paper_scale, samples, speed, summary

log = logging.getLogger(__name__)

# (key, title, module) in page order; a module whose build returns None has nothing to show for
# this config and is left out (numbers follow the sections shown). A section the template has no
# block for is rendered generically after the others from its dict: intro (text), tables,
# figures, notes; so a new section is one module and one line here.
SECTIONS = [("summary", "Summary", summary), ("main", "Main results", main),
            ("ablations", "Ablations", ablations), ("modes", "Mode-seeking to mode-covering", modes),
            ("covering", "Where mode covering shows", covering),
            ("samples", "Samples", samples), ("speed", "Speed", speed),
            ("paper_scale", "Paper-scale cost", paper_scale)]

TEMPLATED = {"summary", "main", "ablations", "modes", "covering", "samples", "speed"}  # blocks in the template

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
    shown = [(k, f"{i}. {title}") for i, (k, title) in enumerate(((k, t) for k, t, _ in SECTIONS
                                                                    if context[k] is not None), start=1)]
    css = (HERE / "style.css").read_text(encoding="utf-8")
    html = _env().get_template("template.html.j2").render(
        title=cfg.title, sections=shown, labels=dict(shown), css=css, problems=inputs.results.problems,
        generic=[(k, context[k]) for k, _ in shown if k not in TEMPLATED], **context)
    write_text(out, html)
    log.info("report written to %s", out)
    return out
