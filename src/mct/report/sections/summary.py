"""Section 1: which benchmarks ran, on what, how long each stage took, and which code made the
numbers (the provenance every record carries, against the code rendering the report)."""

from __future__ import annotations

import datetime as _dt
from collections import Counter

from ... import __version__
from ...config import config_hash
from ...provenance import git_info, versions
from ..context import Inputs
from ..provenance import config_seeds, hardware
from ..tables import MISSING, Cell, Row, Table, fmt_duration, kv_table, number_cell

STAGE_ORDER = ["teacher eval", "features", "clip", "distill", "evaluate", "correct", "speed"]


def _status(inputs: Inputs) -> Table:
    res = inputs.results
    t = Table(columns=[("Benchmark", ""), ("Scale", ""), ("In this config", ""), ("Teacher", "NFE scored by teacher_eval"),
                       ("Feature net", "held-out accuracy / real-vs-real FID"),
                       ("Runs", "variants with metrics.json / variants configured or found"), ("Status", "")],
                   kind="benchmarks")
    paper_scale = inputs.paper_scale()
    names = [b.name for b in res.benches] + [p for p in paper_scale if res.bench(p) is None]
    for name in names:
        b = res.bench(name)
        scale = "paper (GPU)" if name in paper_scale else "embedded (CPU)"
        if b is None or not b.ran:
            status = Cell("not run here", "na", inputs.paper[name].get("command", "")) if name in paper_scale \
                else Cell("no results yet", "missing")
            runs = Cell(f"0/{len(b.variants)}", "num") if b and b.variants else Cell(MISSING, "num missing")
            t.rows.append(Row([Cell(name, "label"), Cell(scale, "text"), Cell("yes" if b and b.configured else "no", "text"),
                               Cell(MISSING, "na"), Cell(MISSING, "na"), runs, status], "notrun"))
            continue
        exact = b.teacher is not None and all(r.sampler == "exact" for r in b.teacher.rows)
        teacher = Cell(", ".join(f"{r.nfe} NFE" for r in b.teacher.rows), "text") if b.teacher and not exact else \
            Cell("exact (analytic)" if b.mixture or exact else "not scored", "text" if b.mixture or exact else "na")
        feats = b.aux.get("features")
        acc = feats.metrics.get("heldout_accuracy") if feats else None
        floor = b.real_floor("fid")
        parts = [f"acc {acc:.3f}" if acc is not None else "", f"FID floor {floor:.2f}" if floor is not None else ""]
        fcell = Cell(", ".join(p for p in parts if p), "text") if any(parts) else Cell("n/a", "na")
        done, n = len(b.runs), len(b.variants)
        state = "complete" if done == n and n else ("partial" if done else "teacher only")
        t.rows.append(Row([Cell(name, "label"), Cell(scale, "text"), Cell("yes" if b.configured else "no", "text"),
                           teacher, fcell, Cell(f"{done}/{n}", "num"), Cell(state, "ok" if state == "complete" else "warn")]))
    return t


def stage_times(inputs: Inputs) -> list[tuple[str, str, str, float]]:
    """(bench, stage, detail, seconds) for every time a record holds."""
    out = []
    for b in inputs.results.benches:
        if b.teacher:
            out += [(b.name, "teacher eval", f"NFE {r.nfe}", r.sample_seconds) for r in b.teacher.rows
                    if r.sample_seconds is not None]
        out += [(b.name, net, "train", a.train_seconds) for net, a in b.aux.items() if a.train_seconds is not None]
        for v, r in b.runs.items():
            if r.train_seconds is not None:
                out.append((b.name, "distill", v, r.train_seconds))
            ev = r.eval_seconds if r.eval_seconds is not None else r.sample_seconds
            if ev is not None:
                out.append((b.name, "evaluate", v, ev))
        out += [(b.name, "correct", v, c.seconds) for v, c in b.corrections.items()]
        if b.speed and b.speed.wall_seconds is not None:
            out.append((b.name, "speed", "mct bench", b.speed.wall_seconds))
    return out


def _timing(inputs: Inputs) -> tuple[Table | None, float | None]:
    times = stage_times(inputs)
    if not times:
        return None, None
    t = Table(columns=[("Benchmark", ""), ("Stage", ""), ("Timings", "how many recorded times were summed"), ("Time", "")],
              kind="timing", caption="Compute time per stage from the records (train_seconds, sample or eval seconds, "
                                     "correction and bench wall time), summed over the jobs of that stage.")
    total = 0.0
    for bench in dict.fromkeys(b for b, *_ in times):
        mine = [x for x in times if x[0] == bench]
        for stage in sorted({s for _, s, _, _ in mine}, key=lambda s: STAGE_ORDER.index(s) if s in STAGE_ORDER else 99):
            secs = [x[3] for x in mine if x[1] == stage]
            t.rows.append(Row([Cell(bench, "label"), Cell(stage, "text"), number_cell(len(secs), "iterations"),
                               Cell(fmt_duration(sum(secs)), "num", f"{sum(secs):.1f} s")]))
        sub = sum(x[3] for x in mine)
        total += sub
        t.rows.append(Row([Cell(bench, "label"), Cell("all stages", "text"), Cell("", ""), Cell(fmt_duration(sub), "num")],
                          "subtotal"))
    t.rows.append(Row([Cell("total", "label"), Cell("", ""), Cell("", ""), Cell(fmt_duration(total), "num")], "total"))
    return t, total


def _records(inputs: Inputs) -> list:
    out = []
    for b in inputs.results.benches:
        out += [*b.runs.values(), *b.aux.values(), *b.corrections.values()]
        out += [r for r in (b.teacher, b.summary, b.speed, b.mixture) if r is not None]
    return out


def _recorded_provenance(inputs: Inputs, now_versions: dict) -> tuple[Table | None, list[str]]:
    """Which commits and config hashes the result files record, and package versions that
    differ from the ones rendering the report."""
    recs = _records(inputs)
    if not recs:
        return None, []
    commits = Counter((r.provenance.commit or "unknown") + (" (uncommitted changes)" if r.provenance.dirty else "")
                      for r in recs)
    hashes = Counter(r.provenance.config_hash for r in recs)
    items = [("result files", len(recs))]
    items += [(f"commit {c[:12] if not c.startswith('unknown') else c}", f"{n} file{'s' if n != 1 else ''}")
              for c, n in commits.most_common()]
    items += [("config hashes", ", ".join(f"{h} ({n})" for h, n in hashes.most_common()))]
    created = sorted(r.provenance.created for r in recs)
    items += [("written", f"{created[0]} to {created[-1]}")]
    drift = sorted({f"{k}: results {v}, now {now_versions.get(k)}" for r in recs for k, v in r.provenance.packages.items()
                    if k in now_versions and v != now_versions.get(k)})
    return kv_table(items, kind="recorded", plain=True), drift


def build(inputs: Inputs) -> dict:
    res, raw = inputs.results, inputs.raw
    timing, total = _timing(inputs)
    git = git_info()
    hw = hardware()
    now_versions = versions()
    recorded, drift = _recorded_provenance(inputs, now_versions)
    prov = kv_table([
        ("git commit", (git["commit"] or "unknown") + (" (uncommitted changes)" if git.get("dirty") else "")),
        ("git branch", git.get("branch") or MISSING),
        ("config hash", config_hash(raw)),
        ("benchmarks in config", ", ".join(raw.get("benchmarks") or {}) or "none"),
        ("results directory", str(res.root)),
        ("generated", _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")),
        ("mct version", __version__),
    ], kind="provenance")
    hwt = kv_table([("CPU", hw["cpu"]), ("cores", hw["cores"]), ("memory", hw["memory"]), ("GPU", hw["gpu"]),
                    ("OS", hw["os"]), ("Python", hw["python"]), ("host", hw["host"])], kind="hardware")
    seeds = list(config_seeds(raw))
    for b in res.benches:
        s = sorted({x.seed for r in b.runs.values() for x in r.seeds}
                   or {int(r.settings["seed"]) for r in b.runs.values() if "seed" in r.settings})
        if s:
            ns = sorted({len(r.seeds) or 1 for r in b.runs.values()})
            per = f"{ns[0]}" if len(ns) == 1 else f"{ns[0]} to {ns[-1]}"
            seeds.append((f"{b.name}: training seeds recorded", f"{', '.join(map(str, s))} ({per} per variant)"))
    return {
        "status": _status(inputs), "timing": timing, "provenance": prov, "hardware": hwt, "recorded": recorded,
        "drift": drift, "versions": kv_table([(k, v or "not installed") for k, v in now_versions.items()], kind="versions"),
        "seeds": kv_table(seeds or [("seeds", "none in config or results")], kind="seeds", plain=True),
        "headline": {"ran": [b.name for b in res.benches if b.ran], "total": fmt_duration(total) if total else None,
                     "hw": hw, "git": git, "config_hash": config_hash(raw)},
    }
