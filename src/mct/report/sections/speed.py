"""Section 6: sampling throughput of the teacher's sampler against the one-step student, the EM
overhead and peak memory, from ``results/bench/<bench>.json`` (:class:`mct.records.BenchRecord`)."""

from __future__ import annotations

from .. import figures as F
from ..context import Inputs
from ..tables import Cell, Row, Table, fmt_rate, number_cell


def _mib(v):
    return None if v is None else v / 2 ** 20


def build(inputs: Inputs) -> dict:
    recs = [b.speed for b in inputs.results.benches if b.speed is not None]
    measured = [r for r in recs if r.skipped is None and r.student is not None]
    skipped = [(r.bench, r.skipped) for r in recs if r.skipped is not None]
    table = otable = mtable = fig = None
    bars = []
    if measured:
        table = Table(columns=[("Benchmark", ""), ("Sampler", ""), ("NFE", ""), ("Images/s \u2191", "measured throughput"),
                               ("Student speed-up \u00d7", "student images/s over this sampler's"),
                               ("ms per batch", ""), ("Batch", ""), ("Device", "")], kind="speed")
        for r in measured:
            for s in [r.student, *sorted(r.teacher, key=lambda s: -s.nfe)]:
                table.rows.append(Row([Cell(r.bench, "label"), Cell(s.name, "label"), number_cell(s.nfe, "nfe"),
                                       number_cell(s.images_per_s, fmt=fmt_rate), number_cell(s.speedup, fmt=lambda v: f"{v:.1f}"),
                                       number_cell(s.ms_per_batch, fmt=lambda v: f"{v:.2f}"), number_cell(s.batch_size, "nfe"),
                                       Cell(r.device_name or r.device, "text")], "ours" if s is r.student else ""))
                bars.append((f"{r.bench}: {s.name}", s.nfe, s.images_per_s))
        fig = F.speed_bars(bars)
        ems = [r for r in measured if r.em is not None]
        if ems:
            otable = Table(columns=[("Benchmark", ""), ("K", ""), ("Iteration (ms)", "median over windows"),
                                    ("Sum of its passes (ms)", ""), ("Overhead ratio", "iteration / sum of passes"),
                                    ("Target", ""), ("Met", "")], kind="overhead",
                           caption="EM overhead: one distillation iteration against the sum of the network passes it runs.")
            for r in ems:
                e = r.em
                otable.rows.append(Row([Cell(r.bench, "label"), number_cell(e.K, "K"),
                                        number_cell(e.iteration_ms, fmt=lambda v: f"{v:.2f}"),
                                        number_cell(e.passes_sum_ms, fmt=lambda v: f"{v:.2f}"),
                                        number_cell(e.overhead_ratio, fmt=lambda v: f"{v:.3f}"),
                                        number_cell(e.target, fmt=lambda v: f"\u2264 {v:g}"),
                                        number_cell(e.target_met)]))
        mems = [r for r in measured if r.memory is not None and r.memory.per_sample_bytes]
        if mems:
            ops = list(dict.fromkeys(k for r in mems for k in r.memory.per_sample_bytes))
            mtable = Table(columns=[("Benchmark", ""), *[(f"{o.replace('_', ' ')} (MiB/sample)", "") for o in ops],
                                    ("Method", "")], kind="memory")
            for r in mems:
                mtable.rows.append(Row([Cell(r.bench, "label")]
                                       + [number_cell(_mib(r.memory.per_sample_bytes.get(o)), fmt=lambda v: f"{v:.3f}")
                                          for o in ops] + [Cell(r.memory.method, "text")]))
    return {"table": table, "figure": fig, "overhead": otable, "memory": mtable, "skipped": skipped}
