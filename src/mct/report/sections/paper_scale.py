"""Section: paper-scale cost. For every paper task that did not run here, the rehearsal of its
config (``<results_dir>/rehearsal/<bench>.json``, written by ``mct rehearse``: one real iteration at
full network size) and the projected cost of the real run, beside "not run here". The cells are
the README block's (mct.bench.readme), so the two never disagree."""

from __future__ import annotations

from typing import Optional

from ...bench.readme import COLUMNS, load_rehearsals, row
from ...errors import MCTError
from ..context import Inputs
from ..tables import Cell, Row, Table


def build(inputs: Inputs) -> Optional[dict]:
    """The generic section dict (intro, tables, figures, notes; mct.report.build renders it) with
    ``missing``: the paper tasks with neither a run nor a rehearsal here."""
    paper = inputs.paper_scale()
    intro = ("What a paper-scale run costs, rehearsed here and not run: `mct rehearse` runs one real "
             "iteration of each paper config at full network size and projects the configured run.")
    try:
        recs = load_rehearsals(inputs.results.root / "rehearsal")
    except MCTError as exc:  # a broken record is named, not fatal to the report
        return {"intro": intro, "tables": [], "figures": [], "notes": [f"Rehearsal records unreadable: {exc}"],
                "missing": paper}
    ran = {b.name for b in inputs.results.benches if b.ran}
    shown = [r for r in recs if r.bench not in ran]
    table = None
    if shown:
        table = Table(columns=[("status", ""), *[(c, "") for c in COLUMNS]], kind="paper-scale",
                      caption="Rehearsed, not run: one iteration of each paper config at full network size on this "
                              "machine, and the projected cost of the configured run.")
        for r in shown:
            cells = row(r)
            table.rows.append(Row([Cell("not run here", "na", inputs.paper.get(r.bench, {}).get("command", ""))]
                                  + [Cell(cells[0], "label")] + [Cell(c, "num") for c in cells[1:]], "notrun"))
        table.notes.append(f"Projected at {shown[0].projection.get('utilisation')} of the dense bf16 peak; "
                           "the formulas are in each record and in docs/benchmarks.md#paper-scale-cost.")
    missing = [p for p in paper if p not in {r.bench for r in recs} and p not in ran]
    notes = [f"Not rehearsed yet: {', '.join(missing)} (run `mct rehearse --config config/<task>.yaml`)."] \
        if missing else []
    if table is None:  # nothing rehearsed (or everything ran here): no section
        return None
    return {"intro": intro, "tables": [table], "figures": [], "notes": notes, "missing": missing}
