"""Section: where mode covering shows. A config with a family of 2-D mixtures (``toy2d`` and
``toy2d-<suffix>`` benchmarks: unequal weights, small modes, random init, longer training) puts
the same claims to each mixture; this section sets their verdicts side by side, with the
interval each was decided on, and says per mixture and per claim where it holds and where not.

Why a section of its own: one mixture can make "more K covers more modes" look true or false by
its choice of weights; the family shows whether the claim survives a change of mixture. With a
single mixture there is nothing to set side by side, and the section is left out."""

from __future__ import annotations

from typing import Optional

from ..collect import BenchResults
from ..context import Inputs
from ..seeds import fmt_interval, seeds_word
from ..tables import Cell, Row, Table, metric_label
from .main import VERDICT_CLS


def is_toy(name: str) -> bool:
    """A 2-D mixture benchmark of the family: ``toy2d`` or ``toy2d-<suffix>`` (no list of names)."""
    return name == "toy2d" or name.startswith("toy2d-")


def describe_mixture(b: BenchResults) -> str:
    """'9 modes, weights 0.02 to 0.2' from the mixture teacher (the report knows no mixture by name)."""
    m = b.mixture
    if m is None:
        return ""
    total = sum(m.weights) or 1.0
    w = [x / total for x in m.weights]
    same = max(w) - min(w) < 1e-9
    return f"{len(w)} modes, " + (f"equal weights {w[0]:.3g}" if same else f"weights {min(w):.3g} to {max(w):.3g}")


def mixture_sentence(name: str, claims: list) -> str:
    """Per mixture: which claims hold, which are reversed, which the seeds cannot decide."""
    def said(c) -> str:
        if c.diff is None:
            return c.claim
        return f"{c.claim} ({metric_label(c.metric)} difference {fmt_interval(c.diff, c.metric)})"

    by = {v: [said(c) for c in claims if c.verdict == v] for v in VERDICT_CLS}
    parts = []
    if by["holds"]:
        parts.append("holds: " + "; ".join(by["holds"]))
    if by["reversed"]:
        parts.append("reversed: " + "; ".join(by["reversed"]))
    if by["inconclusive"]:
        parts.append("not decided by the seeds: " + "; ".join(by["inconclusive"]))
    return f"{name}: " + (". ".join(parts) if parts else "no claims recorded") + "."


def claim_sentence(claim: str, verdicts: dict[str, str]) -> str:
    """Per claim across the family: the mixtures where it holds, where it is reversed, where undecided."""
    groups = {v: [n for n, x in verdicts.items() if x == v] for v in VERDICT_CLS}
    said = [f"{word} on {', '.join(groups[v])}" for v, word in (("holds", "holds"), ("reversed", "is reversed"),
                                                                 ("inconclusive", "is inconclusive")) if groups[v]]
    missing = [n for n, x in verdicts.items() if x is None]
    if missing:
        said.append(f"was not tested on {', '.join(missing)}")
    if groups["holds"] and not groups["reversed"] and not groups["inconclusive"] and not missing:
        said = [f"holds on every mixture ({', '.join(groups['holds'])})"]
    return f"\u201c{claim}\u201d " + "; ".join(said) + "."


def build(inputs: Inputs) -> Optional[dict]:
    toys = [b for b in inputs.results.benches if is_toy(b.name) and b.summary is not None and b.summary.claims]
    if len(toys) < 2:
        return None
    claims = list(dict.fromkeys(c.claim for b in toys for c in b.summary.claims))
    cols = [("Claim", "")] + [(b.name, describe_mixture(b)) for b in toys]
    t = Table(columns=cols, kind="covering",
              caption="Each cell: the verdict, then the difference it was decided on, mean [95 % interval] over the "
                      "training seeds (mct summarize). A header's tooltip describes its mixture.")
    verdicts: dict[str, dict[str, Optional[str]]] = {}
    for text in claims:
        cells = [Cell(text, "text")]
        verdicts[text] = {}
        for b in toys:
            c = next((x for x in b.summary.claims if x.claim == text), None)
            verdicts[text][b.name] = c.verdict if c else None
            if c is None:
                cells.append(Cell("not tested", "na"))
                continue
            diff = fmt_interval(c.diff, c.metric, with_n=False) + f", {seeds_word(c.diff.n)}" if c.diff else "no interval"
            cells.append(Cell(f"{c.verdict}: {diff}", "verdict " + VERDICT_CLS[c.verdict], c.basis))
        t.rows.append(Row(cells))
    mixtures = [{"name": b.name, "what": describe_mixture(b), "sentence": mixture_sentence(b.name, b.summary.claims)}
                for b in toys]
    return {"table": t, "mixtures": mixtures, "claims": [claim_sentence(c, verdicts[c]) for c in claims]}
