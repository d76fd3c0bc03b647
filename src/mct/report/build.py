"""``mct report``: results/report.html from whatever results exist.

One jinja2 template (``template.html.j2``) renders six sections built here from the
results tree (see :mod:`mct.report.collect` for what is read and how defensively):

1. summary: benchmarks run, hardware, wall time per stage, commit, config hash, versions, seeds;
2. main results: per task, the paper's reported rows (``paper_results.yaml``) beside ours;
3. ablations: reparametrisation, noise cancellation, initialisation, K and step-size sweeps,
   M-step gradient spread, metric against training iteration;
4. mode-seeking to mode-covering: toy2d scatter per K over the true density, per-mode mass,
   class histograms per K;
5. samples: teacher (multi-step) against student (one step) grids, MCMC correction before/after;
6. speed: NFE and measured images/s of teacher samplers and students (``results/bench/*.json``).

Figures are PNG data URIs; sample grids are embedded up to ``report.embed_max_bytes``
and linked (relative path under results/) above it. Nothing is fetched from the network:
the page has no scripts, no external fonts, and a Content-Security-Policy that forbids it.
A section that fails to build shows its error in place (and logs the traceback) rather than
failing the whole report; ``report.strict: true`` (used by the tests) re-raises instead."""

from __future__ import annotations

import base64
import datetime as _dt
import logging
import os
import re
import traceback
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import pandas as pd
import yaml

from .. import __version__
from ..config import config_hash, from_dict
from ..errors import ConfigError
from ..io import write_text
from . import figures as F
from .collect import (ABLATION_GROUPS, PAPER_SCALE, TEXT_BENCHES, TOY_BENCHES, VARIANT_DESCRIPTIONS, Reader,
                      class_hist, discover_benches, discover_variants, fid_floor, flatten, is_number, number_list,
                      overhead_records, pick, pick_number, speed_records, teacher_rows)
from .provenance import config_seeds, git_info, hardware, versions
from .tables import MISSING, Cell, Row, Table, fmt_duration, fmt_fixed, frame_table, kv_table, number_cell

log = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent

SECTIONS = [("summary", "1. Summary"), ("main", "2. Main results"), ("ablations", "3. Ablations"),
            ("modes", "4. Mode-seeking to mode-covering"), ("samples", "5. Samples"), ("speed", "6. Speed")]


@dataclass(frozen=True)
class ReportConfig:
    """The ``report`` section of the root config.

    title: page title. embed_max_bytes: sample grids up to this size are embedded as data
    URIs, larger ones linked by relative path. sample_min_px: small grids (digits) are
    scaled up by an integer factor to at least this width, pixelated. strict: re-raise an
    error in a section instead of showing it in place (tests)."""

    title: str = "MCT: EM distillation into one-step generators"
    embed_max_bytes: int = 2_000_000
    sample_min_px: int = 260
    strict: bool = False

    def __post_init__(self):
        if self.embed_max_bytes < 0:
            raise ConfigError(f"report.embed_max_bytes must be >= 0, got {self.embed_max_bytes}")
        if self.sample_min_px < 1:
            raise ConfigError(f"report.sample_min_px must be >= 1, got {self.sample_min_px}")


def load_paper_results(path: Optional[Path] = None) -> dict:
    with open(path or HERE / "paper_results.yaml", encoding="utf-8") as fh:
        return yaml.safe_load(fh) or {}


# --- data gathered once per benchmark -----------------------------------------------

@dataclass
class Bench:
    name: str
    configured: bool
    expected: list[str]  # variants named in the config
    variants: list[str]  # configured or found on disk
    runs: dict[str, dict] = field(default_factory=dict)  # variant -> metrics.json
    info: pd.DataFrame = field(default_factory=pd.DataFrame)  # index variant
    teacher: Optional[dict] = None
    teacher_rows: list[dict] = field(default_factory=list)
    features: Optional[dict] = None
    clip: Optional[dict] = None
    summary: Optional[pd.DataFrame] = None
    features_from: Optional[str] = None  # the benchmark whose feature network this one borrows

    @property
    def is_toy(self) -> bool:
        return self.name in TOY_BENCHES

    @property
    def is_text(self) -> bool:
        return self.name in TEXT_BENCHES

    @property
    def ran(self) -> bool:
        return bool(self.runs) or bool(self.teacher_rows) or self.teacher is not None

    @property
    def primary(self) -> list[str]:
        if self.is_toy:
            return ["mode_mass_tv", "energy_distance"]
        return ["fid", "clip_score"] if self.is_text else ["fid", "recall"]

    @property
    def metric_cols(self) -> list[str]:
        if self.is_toy:
            return ["mode_mass_tv", "modes_covered", "mean_true_logpdf", "energy_distance"]
        cols = ["fid", "kid_mean", "kid_std", "precision", "recall", "class_accuracy", "class_entropy", "classes_covered"]
        return cols + ["clip_score"] if self.is_text else cols


# benchmarks that use another benchmark's feature network (digits-text scores with digits')
FEATURES_FROM = {"digits-text": "digits"}
STAGE_ORDER = ["teacher train", "teacher", "teacher eval", "features", "clip", "distill", "evaluate", "correct", "speed"]

_K_NAME = re.compile(r"^k(\d+)$", re.I)
_STEP_NAME = re.compile(r"^(step|gamma|ss)[-_]?x?", re.I)


def _variant_config(raw: dict, bench: str, variant: str) -> dict:
    """K, reparam, noise_cancel, gamma_eps, init resolved from the config by the benchmark's
    own parser (when the benchmark module exists), else {}."""
    try:
        from ..benchmarks.base import get_benchmark

        cfg = get_benchmark(bench).parse((raw.get("benchmarks") or {}).get(bench) or {}, variant)
    except Exception:  # noqa: BLE001 - a benchmark not written yet, or not configured
        return {}
    out = {}
    em = getattr(cfg, "em", None)
    if em is not None:
        for src, dst in (("num_steps", "K"), ("reparam", "reparam"), ("noise_cancel", "noise_cancel"),
                         ("gamma_eps", "gamma_eps"), ("gamma_z", "gamma_z")):
            if hasattr(em, src):
                out[dst] = getattr(em, src)
    init = getattr(cfg, "init", None)
    if init is not None and hasattr(init, "steps"):
        out["init"] = "teacher" if init.steps > 0 else "random"
    elif isinstance(init, str):
        out["init"] = init
    return out


def gather(reader: Reader, raw: dict) -> list[Bench]:
    sections = raw.get("benchmarks") or {}
    benches = []
    for name in discover_benches(reader.root, sections):
        section = sections.get(name) or {}
        expected = list((section.get("variants") or {}) if isinstance(section, dict) else {})
        b = Bench(name, name in sections, expected, discover_variants(reader.root, name, expected))
        reader.section = "summary"
        b.teacher = reader.json(f"{name}/teacher/metrics.json", record=name not in TOY_BENCHES)
        b.teacher_rows = teacher_rows(b.teacher) if b.teacher is not None else []
        src = FEATURES_FROM.get(name)
        b.features = reader.json(f"{name}/features/metrics.json", record=name not in TOY_BENCHES and src is None)
        if b.features is None and src:  # a benchmark that scores with another one's feature network
            b.features = reader.json(f"{src}/features/metrics.json", record=False)
            b.features_from = src if b.features is not None else None
        if name in TEXT_BENCHES:
            b.clip = reader.json(f"{name}/clip/metrics.json")
        b.summary = reader.csv(f"{name}/summary.csv", record=b.configured)
        for v in b.variants:
            m = reader.json(f"{name}/runs/{v}/metrics.json")
            if m is not None:
                b.runs[v] = m if isinstance(m, dict) else {"value": m}
        b.info = _info_frame(b, raw)
        benches.append(b)
    return benches


def _info_frame(b: Bench, raw: dict) -> pd.DataFrame:
    rows = []
    summ = {}
    if b.summary is not None and "variant" in b.summary:
        summ = {str(r["variant"]): r.dropna().to_dict() for _, r in b.summary.iterrows()}
    for v in b.variants:
        m = b.runs.get(v)
        srow = summ.get(v, {})
        cfg = _variant_config(raw, b.name, v) if (m is None or pick(m, "K") is None) else {}
        row: dict[str, Any] = {"variant": v}
        for key in ["K", "reparam", "noise_cancel", "init", "gamma_eps", "gamma_z", "nfe", "iterations",
                    "train_seconds", "eval_seconds", "seed"] + b.metric_cols:
            val = pick(m, key) if m is not None else None
            if val is None:
                val = srow.get(key)
            if val is None:
                val = cfg.get(key)
            if isinstance(val, (dict, list)):
                val = None
            row[key] = val
        if row["K"] is None and _K_NAME.match(v):
            row["K"] = int(_K_NAME.match(v).group(1))
        rows.append(row)
    df = pd.DataFrame(rows, columns=["variant"] + [c for c in (rows[0] if rows else {}) if c != "variant"])
    if df.empty:
        return df
    df = df.set_index("variant")
    for c in ["K", "gamma_eps", "gamma_z", "nfe", "iterations", "train_seconds", "eval_seconds"] + b.metric_cols:
        if c in df:
            df[c] = pd.to_numeric(df[c], errors="coerce")
    return df


# --- images -------------------------------------------------------------------------

class Images:
    """Embeds (data URI) or links (relative path from the report) PNG/JPEG files."""

    def __init__(self, reader: Reader, out: Path, cfg: ReportConfig):
        self.reader, self.out, self.cfg = reader, out, cfg

    def get(self, rel: str, caption: str, alt: str, record: bool = True) -> Optional[dict]:
        path = self.reader.exists(rel, record)
        if path is None:
            return None
        try:
            from PIL import Image

            with Image.open(path) as im:
                w, h = im.size
                fmt = (im.format or "PNG").lower()
        except Exception as exc:  # noqa: BLE001 - a corrupt image is reported, not fatal
            self.reader._miss(path, f"unreadable: {exc}")
            return None
        size = path.stat().st_size
        if size <= self.cfg.embed_max_bytes:
            mime = "image/jpeg" if fmt in ("jpeg", "jpg") else f"image/{fmt}"
            src = f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")
        else:
            relp = os.path.relpath(path.resolve(), self.out.parent.resolve())
            src = urllib.parse.quote(Path(relp).as_posix())
        scale = max(1, self.cfg.sample_min_px // w) if w < self.cfg.sample_min_px else 1
        return {"src": src, "width": w * scale, "natural": (w, h), "pixelated": scale > 1, "caption": caption,
                "alt": alt, "path": self.reader.rel(path), "embedded": size <= self.cfg.embed_max_bytes}


# --- section 1: summary -------------------------------------------------------------

_TIME_KEY = re.compile(r"(seconds|_secs?|_time_s|wall_s|elapsed_s)$", re.I)


def _time_items(obj: Any) -> list[tuple[str, float]]:
    return [(k, float(v)) for k, v in flatten(obj).items() if _TIME_KEY.search(k.rsplit(".", 1)[-1]) and is_number(v)]


def summary_section(ctx: dict, reader: Reader, benches: list[Bench], raw: dict, paper: dict) -> dict:
    reader.section = "summary"
    status = Table(columns=[("Benchmark", ""), ("Scale", ""), ("In this config", ""), ("Teacher", "teacher metrics"),
                            ("Feature net", "feature network held-out accuracy / FID floor"),
                            ("Runs", "variants with metrics.json / variants configured or found"), ("Status", "")],
                   kind="benchmarks")
    names = [b.name for b in benches] + [p for p in PAPER_SCALE if p not in {b.name for b in benches}]
    by_name = {b.name: b for b in benches}
    for name in names:
        b = by_name.get(name)
        scale = "paper (GPU)" if name in PAPER_SCALE else "embedded (CPU)"
        if b is None or not b.ran:
            st = Cell("not run here", "na", paper.get(name, {}).get("command", "")) if name in PAPER_SCALE \
                else Cell("no results yet", "missing")
            status.rows.append(Row([Cell(name, "label"), Cell(scale, "text"),
                                    Cell("yes" if b and b.configured else "no", "text"),
                                    Cell(MISSING, "missing"), Cell(MISSING, "missing"),
                                    Cell(f"0/{len(b.variants)}", "num") if b and b.variants else Cell(MISSING, "num missing"),
                                    st], "notrun"))
            continue
        tcell = Cell(MISSING, "missing", "teacher/metrics.json missing") if not b.teacher_rows else \
            Cell(", ".join(f"{r['nfe']} NFE" for r in b.teacher_rows), "text")
        if b.is_toy:
            tcell = Cell("exact (analytic)", "text")
        acc = pick_number(b.features, "accuracy")
        floor = fid_floor(b.features, b.teacher)
        fcell = Cell("n/a", "na") if b.is_toy else (
            Cell(", ".join(x for x in [f"acc {acc:.3f}" if acc is not None else "",
                                       f"FID floor {floor:.2f}" if floor is not None else ""] if x) or "present", "text")
            if b.features is not None else Cell(MISSING, "missing", "features/metrics.json missing"))
        n_exp = len(b.variants)
        done = len(b.runs)
        st = "complete" if done == n_exp and n_exp > 0 else ("partial" if done else "teacher only")
        status.rows.append(Row([Cell(name, "label"), Cell(scale, "text"), Cell("yes" if b.configured else "no", "text"),
                                tcell, fcell, Cell(f"{done}/{n_exp}", "num"),
                                Cell(st, "ok" if st == "complete" else "warn")]))

    # wall time per stage
    stage_rows = []
    for b in benches:
        own_features = None if b.features_from else b.features  # borrowed: timed under its own benchmark
        for part, obj in (("teacher", b.teacher), ("features", own_features), ("clip", b.clip)):
            items = _time_items(obj or {})
            for k, s in items:
                stage = part if part != "teacher" else ("teacher train" if k.startswith("train") else "teacher eval")
                stage_rows.append({"bench": b.name, "stage": stage, "detail": k, "seconds": s})
            if part == "teacher":
                for r in b.teacher_rows:  # per-NFE sampling times (teacher metrics "rows")
                    for k, s in _time_items(r):
                        if f"{k}" not in dict(items):
                            stage_rows.append({"bench": b.name, "stage": "teacher eval",
                                               "detail": f"NFE {r['nfe']}: {k}", "seconds": s})
            if part in ("teacher", "clip") and not any(k.startswith("train") for k, _ in items):
                tl = reader.csv(f"{b.name}/{part}/train_log.csv", record=False)
                if tl is not None and "seconds" in tl and tl["seconds"].notna().any():
                    stage_rows.append({"bench": b.name, "stage": "teacher train" if part == "teacher" else part,
                                       "detail": f"{part}/train_log.csv seconds",
                                       "seconds": float(tl["seconds"].dropna().iloc[-1])})
        for v in b.variants:
            m = b.runs.get(v) or {}
            items = _time_items(m)
            if not any(k.endswith("train_seconds") for k, _ in items):
                tl = reader.csv(f"{b.name}/runs/{v}/train_log.csv", record=False)
                if tl is not None and "seconds" in tl and tl["seconds"].notna().any():
                    items.append(("train_log.seconds", float(tl["seconds"].dropna().iloc[-1])))
            # distill: train_seconds; evaluate: eval_seconds when recorded, else the sum of its parts
            # (sample_seconds, mstep_grad_seconds, ...)
            has_eval = any(k.rsplit(".", 1)[-1].startswith("eval") for k, _ in items)
            for k, s in items:
                leaf = k.rsplit(".", 1)[-1]
                if leaf.startswith("train") or k == "train_log.seconds":
                    stage = "distill"
                elif leaf.startswith("eval") or not has_eval:
                    stage = "evaluate"
                else:
                    stage = "evaluate (part)"
                stage_rows.append({"bench": b.name, "stage": stage, "detail": f"{v}: {k}", "seconds": s})
            cm = reader.json(f"{b.name}/runs/{v}/correct/metrics.json", record=False)
            for k, s in _time_items(cm or {}):
                stage_rows.append({"bench": b.name, "stage": "correct", "detail": f"{v}: {k}", "seconds": s})
    for p in sorted((reader.root / "bench").glob("*.json")) if (reader.root / "bench").is_dir() else []:
        for k, s in _time_items(reader.json(f"bench/{p.name}") or {}):
            stage_rows.append({"bench": "bench", "stage": "speed", "detail": f"{p.name}: {k}", "seconds": s})
    timing = None
    timing_detail = None
    total = None
    if stage_rows:
        sdf = pd.DataFrame(stage_rows)
        # "evaluate (part)" holds sub-timings already inside a recorded eval_seconds: listed, not summed
        agg = sdf[sdf["stage"] != "evaluate (part)"].groupby(["bench", "stage"], sort=False)["seconds"] \
            .agg(["sum", "count"]).reset_index()
        order = {n: i for i, n in enumerate(dict.fromkeys(sdf["bench"]))}
        agg = agg.sort_values(["bench", "stage"], key=lambda c: c.map(order) if c.name == "bench" else
                              c.map(lambda x: STAGE_ORDER.index(x) if x in STAGE_ORDER else len(STAGE_ORDER)),
                              kind="stable")
        total = float(agg["sum"].sum())
        timing = Table(columns=[("Benchmark", ""), ("Stage", ""), ("Timings", "how many recorded times were summed"), ("Time", "")],
                       kind="timing", caption="Compute time per stage, summed over the jobs of that stage "
                                              "(from *_seconds keys and train_log.csv).")
        for bench, g in agg.groupby("bench", sort=False):
            for _, r in g.iterrows():
                timing.rows.append(Row([Cell(bench, "label"), Cell(r["stage"], "text"), number_cell(r["count"], "iterations"),
                                        Cell(fmt_duration(r["sum"]), "num", f"{r['sum']:.1f} s")]))
            timing.rows.append(Row([Cell(bench, "label"), Cell("all stages", "text"), Cell("", ""),
                                    Cell(fmt_duration(g["sum"].sum()), "num")], "subtotal"))
        timing.rows.append(Row([Cell("total", "label"), Cell("", ""), Cell("", ""), Cell(fmt_duration(total), "num")],
                               "total"))
        timing_detail = frame_table(sdf.rename(columns={"seconds": "seconds"}), label_cols=("bench", "stage", "detail"),
                                    kind="timing-detail", rename={"bench": "Benchmark", "stage": "Stage", "detail": "Key"})
    # span of result files (the pipeline's wall clock, roughly)
    mtimes = [p.stat().st_mtime for p in reader.root.rglob("*") if p.is_file() and p.suffix in (".json", ".csv", ".png")
              and not p.name.startswith("report")] if reader.root.is_dir() else []
    span = (max(mtimes) - min(mtimes)) if len(mtimes) > 1 else None

    # provenance
    git = git_info()
    recorded: dict[str, set] = {}
    hw_keys = ("device", "hardware", "gpu", "gpu_name", "cpu", "cpu_model", "host", "hostname", "accelerator")
    sources = [(b.name, m) for b in benches for m in [*b.runs.values(), b.teacher, b.features]]
    bench_dir = reader.root / "bench"
    if bench_dir.is_dir():
        sources += [(f"bench/{p.name}", reader.json(f"bench/{p.name}", record=False)) for p in sorted(bench_dir.glob("*.json"))]
    for where, m in sources:
        for k, val in flatten(m or {}).items():
            leaf = k.rsplit(".", 1)[-1].lower()
            if leaf in hw_keys and isinstance(val, (str, int, float)):
                recorded.setdefault(f"{leaf} = {val}", set()).add(where)
    hw = hardware()
    prov = kv_table([
        ("git commit", (git["commit"] or "unknown") + (" (uncommitted changes)" if git.get("dirty") else "")),
        ("git branch", git.get("branch") or MISSING),
        ("config hash", config_hash(raw)),
        ("benchmarks in config", ", ".join(raw.get("benchmarks") or {}) or "none"),
        ("results directory", str(reader.root)),
        ("generated", _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")),
        ("mct version", __version__),
    ], kind="provenance")
    hwt = kv_table([("CPU", hw["cpu"]), ("cores", hw["cores"]), ("memory", hw["memory"]), ("GPU", hw["gpu"]),
                    ("OS", hw["os"]), ("Python", hw["python"]), ("host", hw["host"])]
                   + [(f"recorded by results", f"{k} ({', '.join(sorted(v))})") for k, v in sorted(recorded.items())],
                   kind="hardware")
    vers = kv_table([(k, v or "not installed") for k, v in versions().items()], kind="versions")
    seeds = [(p, v) for p, v in config_seeds(raw)]
    for b in benches:
        s = sorted({str(pick(m, "seed")) for m in b.runs.values() if pick(m, "seed") is not None})
        if s:
            seeds.append((f"{b.name}: runs recorded", ", ".join(s)))
    seeds_t = kv_table(seeds or [("seeds", "none in config or results")], kind="seeds", plain=True)
    ran = [b.name for b in benches if b.ran]
    headline = {
        "ran": ran, "total": fmt_duration(total) if total else None,
        "span": fmt_duration(span) if span else None, "hw": hw, "git": git,
        "config_hash": config_hash(raw),
    }
    return {"status": status, "timing": timing, "timing_detail": timing_detail, "provenance": prov,
            "hardware": hwt, "versions": vers, "seeds": seeds_t, "headline": headline}


# --- section 2: main results --------------------------------------------------------

def _row_cells(values: dict, cols: list[str], missing_title: str) -> list[Cell]:
    cells = []
    for c in cols:
        if c == "kid_mean" and is_number(values.get("kid_mean")):
            cell = number_cell(values["kid_mean"], "kid_mean")
            if is_number(values.get("kid_std")):
                cell.text += f" \u00b1 {values['kid_std'] * 1e3:.2f}"
            cells.append(cell)
        else:
            cells.append(number_cell(values.get(c), c, missing_title))
    return cells


def _metrics_of(d: dict, cols: list[str]) -> dict:
    return {c: pick_number(d, c) for c in cols + (["kid_std"] if "kid_mean" in cols else [])}


def task_block(b: Optional[Bench], name: str, paper: dict, images: Images, reader: Reader) -> dict:
    spec = paper.get(name) or {}
    is_paper_scale = name in PAPER_SCALE
    toy = name in TOY_BENCHES
    text = name in TEXT_BENCHES
    cols = ["nfe"] + (["mode_mass_tv", "modes_covered", "mean_true_logpdf", "energy_distance"] if toy else
                      ["fid", "kid_mean", "precision", "recall"] + (["clip_score"] if text else [])
                      + ["class_accuracy", "class_entropy"])
    # drop measured columns nobody has (keep FID always for image tasks)
    present = set()
    for r in spec.get("rows", []):
        present |= {c for c in cols if r.get(c) is not None}
    if b is not None:
        for r in b.teacher_rows:
            present |= {c for c in cols if pick_number(r, c) is not None}
        for m in b.runs.values():
            present |= {c for c in cols if pick_number(m, c) is not None}
    always = {"nfe", "mode_mass_tv"} if toy else {"nfe", "fid"}
    keep = [c for c in cols if c in present or c in always]
    ran = b is not None and bool(b.runs or b.teacher_rows)
    show_time = not toy and ran
    header = [("Method", ""), *[(F.metric_label(c), "") for c in keep]]
    if show_time:
        header.append(("Train time", "wall time of the distillation"))
    header.append(("Source", "where the number comes from"))
    table = Table(columns=header, kind=f"main-{name}")
    ncols = len(header)

    for r in spec.get("rows", []):
        cells = [Cell(r.get("method", "?"), "label")]
        for c in keep:
            v = r.get(c)
            cells.append(number_cell(v, c) if v is not None else Cell("", "na", "not reported"))
        if show_time:
            cells.append(Cell("", "na"))
        cells.append(Cell(r.get("source", ""), "source"))
        table.rows.append(Row(cells, "paper teacher" if r.get("teacher") else ("paper ours-paper" if r.get("ours_paper") else "paper")))

    figs = []
    if ran:
        for tr in b.teacher_rows:
            vals = _metrics_of(tr, keep)
            vals["nfe"] = tr["nfe"]
            cells = [Cell(f"Teacher, {int(tr['nfe'])} NFE (measured here)", "label")] + _row_cells(vals, keep, "not in teacher/metrics.json")
            if show_time:
                cells.append(Cell("", "na"))
            cells.append(Cell(f"{name}/teacher/metrics.json", "source"))
            table.rows.append(Row(cells, "ours teacher"))
        labels = {"mct": "MCT one-step student (this pipeline)",
                  "k1": "K = 1 baseline: reverse-KL gradient (DMD / Diff-Instruct style)"}
        for v in ("mct", "k1"):
            m = b.runs.get(v)
            if m is None:
                if v == "mct":
                    table.rows.append(Row([Cell(labels[v], "label"),
                                           Cell(f"no result: {name}/runs/mct/metrics.json missing", "missing", "",
                                                ncols - 1)], "ours"))
                continue
            vals = _metrics_of(m, keep)
            if vals.get("nfe") is None:
                vals["nfe"] = 1
            cells = [Cell(labels[v], "label")] + _row_cells(vals, keep, "not in metrics.json")
            if show_time:
                cells.append(number_cell(pick_number(m, "train_seconds"), "train_seconds"))
            cells.append(Cell(f"{name}/runs/{v}/metrics.json", "source"))
            table.rows.append(Row(cells, "ours"))
        if b.teacher_rows and not toy:
            tdf = pd.DataFrame([{"nfe": r["nfe"], "fid": pick_number(r, "fid")} for r in b.teacher_rows])
            studs = {v: pick_number(b.runs[v], "fid") for v in ("mct", "k1") if v in b.runs and pick_number(b.runs[v], "fid") is not None}
            f = F.teacher_vs_student(tdf, studs, "fid", name)
            if f:
                figs.append(f)
    elif is_paper_scale:
        cmd = spec.get("command", "")
        table.rows.append(Row([Cell("MCT (this pipeline)", "label"),
                               Cell(f"not run here \u2014 needs GPUs; run: {cmd}", "notrun code", cmd, ncols - 1)], "notrun"))
    else:
        table.rows.append(Row([Cell("MCT (this pipeline)", "label"),
                               Cell(f"no results yet under {name}/", "missing", "", ncols - 1)], "ours"))
    notes = []
    if b is not None:
        acc = pick_number(b.features, "accuracy")
        floor = fid_floor(b.features, b.teacher)
        if acc is not None:
            notes.append(f"Feature network (FID/KID/precision/recall): held-out accuracy {acc:.3f}.")
        if floor is not None:
            notes.append(f"FID floor (two disjoint sets of real images): {floor:.2f}; FID differences below it are noise.")
        if b.clip is not None:
            flat = flatten(b.clip)
            known = [k for k in ("zero_shot_accuracy", "accuracy", "clip_score_real", "clip_score_shuffled") if k in flat]
            keys = known or [k for k, v in flat.items() if is_number(v) and not _TIME_KEY.search(k)][:4]
            items = [f"{k.replace('_', ' ')} {number_cell(flat[k], 'clip_score' if 'clip' in k else '').text}"
                     for k in keys if is_number(flat[k])]
            if items:
                notes.append("Tiny CLIP model (CLIP score): " + ", ".join(items) + ".")
    standin = {"digits": "imagenet64 / imagenet128 (class-conditional)", "mnist": "imagenet64 (class-conditional)",
               "digits-text": "sd15 (text-to-image)"}.get(name)
    if standin:
        notes.append(f"Embedded CPU stand-in for {standin}: same code path, its own teacher and feature network; "
                     "numbers are not comparable to the paper's.")
    if toy:
        notes.append("Exact metrics against the analytic mixture teacher (no feature network). "
                     "Mode-mass TV: 0 = every mode holds its true weight.")
    claims = None
    if b is not None:
        sj = reader.json(f"{name}/summary.json", record=False)
        cl = sj.get("claims") if isinstance(sj, dict) else None
        if isinstance(cl, list) and cl:
            claims = Table(columns=[("Claim", ""), ("Numbers", "the values that decide it"), ("Holds", "")],
                           kind=f"claims-{name}", caption=f"Checked by `mct summarize` ({name}/summary.json).")
            for c in cl:
                if not isinstance(c, dict):
                    continue
                nums = ", ".join(f"{k} {number_cell(v, 'fid' if 'fid' in k else '').text}" for k, v in c.items()
                                 if k not in ("claim", "holds") and not isinstance(v, (dict, list)))
                holds = c.get("holds")
                claims.rows.append(Row([Cell(str(c.get("claim", "")), "text"), Cell(nums, "text"),
                                        Cell("yes" if holds else ("no" if holds is not None else MISSING),
                                             "ok" if holds else "bad")]))
    title = spec.get("title") or {"toy2d": "2-D mixture of Gaussians (exact teacher)",
                                  "digits": "Digits, class-conditional (embedded)",
                                  "mnist": "MNIST subset, class-conditional (embedded)",
                                  "digits-text": "Digits with captions, text-conditional (embedded)"}.get(name, name)
    return {"name": name, "title": title, "table": table, "figures": figs, "claims": claims, "warning": spec.get("warning"),
            "metric_note": spec.get("metric_note"), "teacher": spec.get("teacher"), "notes": notes,
            "paper_scale": is_paper_scale, "ran": bool(ran), "command": spec.get("command")}


def main_section(ctx: dict, reader: Reader, benches: list[Bench], raw: dict, paper: dict, images: Images) -> dict:
    reader.section = "main"
    by = {b.name: b for b in benches}
    order = [n for n in PAPER_SCALE] + [b.name for b in benches if b.name not in PAPER_SCALE]
    return {"tasks": [task_block(by.get(n), n, paper, images, reader) for n in order]}


# --- section 3: ablations -----------------------------------------------------------

def _describe(v: str, info: pd.Series) -> str:
    if v in VARIANT_DESCRIPTIONS:
        return VARIANT_DESCRIPTIONS[v]
    if _K_NAME.match(v):
        return f"K = {_K_NAME.match(v).group(1)}"
    if _STEP_NAME.match(v):
        g = info.get("gamma_eps")
        return f"step-size sweep (\u03b3_eps = {g:g})" if is_number(g) else "step-size sweep"
    return ""


def ablation_block(b: Bench, reader: Reader) -> dict:
    info = b.info
    if info.empty:
        return {"name": b.name, "empty": True}
    cols = ["K", "reparam", "noise_cancel", "init", "gamma_eps"] + b.metric_cols + ["iterations", "train_seconds"]
    cols = [c for c in cols if c in info and info[c].notna().any()]
    constant = []
    for c in ("gamma_eps", "iterations"):  # shown once in the caption when every run has the same value
        if c in cols and info[c].nunique(dropna=True) == 1 and info[c].notna().all():
            constant.append(f"{F.metric_label(c)} = {number_cell(info[c].iloc[0], c).text}")
            cols.remove(c)
    df = info[cols].copy()
    df.insert(0, "what changes", [_describe(v, info.loc[v]) for v in info.index])
    df.insert(0, "variant", list(info.index))
    overview = frame_table(df.reset_index(drop=True), label_cols=("variant",), kind=f"ablation-{b.name}",
                           caption=("Same for every run: " + ", ".join(constant) + ".") if constant else "",
                           rename={"variant": "Variant", "what changes": "What changes", "reparam": "Reparam",
                                   "noise_cancel": "Noise cancel", "init": "Init"},
                           row_cls=lambda r: "ours" if r["variant"] == "mct" else "")
    for row, v in zip(overview.rows, df["variant"]):
        if v not in b.runs:
            row.cls += " notrun"
            row.cells[1].text = (row.cells[1].text + " (no metrics.json yet)").strip()
            row.cells[1].cls = "missing"
    figs = []
    groups = [v for g in ABLATION_GROUPS.values() for v in g if v in info.index]
    groups = list(dict.fromkeys(groups))
    metric_list = b.primary
    f = F.ablation_bars(info.loc[groups], metric_list, b.name) if len(groups) >= 2 else None
    if f:
        figs.append(f)
    # K sweep
    ksel = [v for v in info.index if _K_NAME.match(v)] + (["mct"] if "mct" in info.index else [])
    kdf = info.loc[ksel].reset_index() if ksel else pd.DataFrame()
    kmetrics = (["mode_mass_tv", "modes_covered", "energy_distance"] if b.is_toy
                else (["fid", "clip_score", "class_entropy"] if b.is_text else ["fid", "recall", "class_entropy"]))
    kfig = F.k_sweep(kdf, kmetrics, b.name) if not kdf.empty else None
    if kfig:
        figs.append(kfig)
    ssel = [v for v in info.index if _STEP_NAME.match(v)]
    if ssel and "mct" in info.index:
        ssel.append("mct")
    sfig = F.step_sweep(info.loc[ssel].reset_index(), b.primary, b.name) if ssel else None
    if sfig:
        figs.append(sfig)
    # gradient spread and eval curves from the logs
    train_logs, eval_logs = {}, {}
    for v in b.variants:
        tl = reader.csv(f"{b.name}/runs/{v}/train_log.csv", record=v in b.runs)
        if tl is not None:
            train_logs[v] = tl
        el = reader.csv(f"{b.name}/runs/{v}/eval_log.csv", record=False)
        curve = (b.runs.get(v) or {}).get("fid_curve")
        if el is None and isinstance(curve, list) and curve and all(isinstance(r, dict) for r in curve):
            el = pd.DataFrame(curve)  # metrics.json's copy of the eval log
        if el is not None and "iteration" in el:
            eval_logs[v] = el
    gsel = {v: train_logs[v] for v in ("mct", "no-nc", "no-reparam") if v in train_logs}
    grad_table = None
    grad_figs, curves = [], []
    if gsel:
        gf = F.grad_variance(gsel, b.name)
        if gf:
            grad_figs.append(gf)
        rows = []
        for v, d in gsel.items():
            if "grad_norm_g" not in d:
                continue
            half = d[d["iteration"] >= d["iteration"].max() / 2] if "iteration" in d else d
            g = half["grad_norm_g"].astype(float)
            rows.append({"variant": v, "logged": len(g), "mean |g|": g.mean(), "std |g|": g.std(), "var |g|": g.var(),
                         "CV": g.std() / g.mean() if g.mean() else None,
                         "eps RMS": half["eps_rms"].mean() if "eps_rms" in half else None,
                         "nu RMS": half["nu_rms"].mean() if "nu_rms" in half else None})
        if rows:
            f3 = fmt_fixed(3)
            grad_table = frame_table(pd.DataFrame(rows), label_cols=("variant",), kind=f"gradvar-{b.name}",
                                     rename={"variant": "Variant", "logged": "Iterations logged"},
                                     formats={c: f3 for c in ("mean |g|", "std |g|", "CV", "eps RMS", "nu RMS")}
                                     | {"var |g|": lambda v: f"{v:.4f}"},
                                     caption="Generator gradient norm over the second half of training "
                                             "(logged iterations). CV = std / mean.")
    # the M-step gradient variance measured by `mct evaluate` (digits: mstep_grad_var[_nc|_no_nc])
    gv_rows = []
    for v in b.variants:
        m = b.runs.get(v) or {}
        row = {"variant": v, "noise_cancel": pick(m, "noise_cancel"), "own": pick_number(m, "mstep_grad_var"),
               "nc": pick_number(m, "mstep_grad_var_nc"), "no_nc": pick_number(m, "mstep_grad_var_no_nc")}
        if any(row[k] is not None for k in ("own", "nc", "no_nc")):
            row["ratio"] = row["no_nc"] / row["nc"] if row["nc"] and row["no_nc"] is not None else None
            gv_rows.append(row)
    gradvar_measured = None
    if gv_rows:
        gdf = pd.DataFrame(gv_rows)
        sci = lambda v: f"{v:#.3g}".rstrip(".") if 1e-3 <= abs(v) < 1e4 else f"{v:.2e}"  # noqa: E731
        gradvar_measured = frame_table(
            gdf, label_cols=("variant",), kind=f"gradvar-measured-{b.name}",
            rename={"variant": "Variant", "noise_cancel": "Trained with NC", "own": "Var of its M-step gradient",
                    "nc": "Var with NC (same chains)", "no_nc": "Var without NC (same chains)",
                    "ratio": "Without / with NC"},
            formats={"own": sci, "nc": sci, "no_nc": sci, "ratio": lambda v: f"{v:.2f}\u00d7"},
            caption="Total variance of the generator's M-step gradient over fixed batches at the end of training, "
                    "measured by `mct evaluate`. 'Same chains': one E-step, the gradient taken with eps_K - nu_K and with "
                    "eps_K; a ratio above 1 is the variance that noise cancellation removes.")
        gf2 = F.grad_var_bars(gdf, b.name)
        if gf2:
            grad_figs.insert(0, gf2)
    metric = next((m for m in ("fid", "mode_mass_tv", "energy_distance", "clip_score")
                   if any(m in d for d in eval_logs.values())), None)
    if metric:
        cf = F.metric_vs_iteration(eval_logs, metric, b.name)
        if cf:
            curves.append(cf)
    missing_groups = [f"{g}: {', '.join(v for v in vs if v in b.variants and v not in b.runs)}"
                      for g, vs in ABLATION_GROUPS.items() if any(v in b.variants and v not in b.runs for v in vs)]
    return {"name": b.name, "empty": False, "overview": overview, "figures": figs, "grad_table": grad_table,
            "gradvar_measured": gradvar_measured, "grad_figures": grad_figs, "curves": curves,
            "missing_groups": missing_groups}


def ablation_section(ctx, reader, benches, raw, paper, images) -> dict:
    reader.section = "ablations"
    return {"benches": [ablation_block(b, reader) for b in benches if b.variants]}


# --- section 4: mode coverage -------------------------------------------------------

def _teacher_params(reader: Reader, bench: str) -> Optional[dict]:
    for rel in (f"{bench}/teacher.json", f"{bench}/teacher/teacher.json", f"{bench}/teacher/metrics.json"):
        d = reader.json(rel, record=False)
        if isinstance(d, dict):
            means, stds, w = pick(d, "means"), pick(d, "stds"), pick(d, "weights")
            if isinstance(means, list) and means and stds is not None and w is not None:
                return {"means": means, "stds": stds, "weights": w}
    reader.exists(f"{bench}/teacher.json")  # records it as missing
    return None


def _k_order(b: Bench) -> list[str]:
    names = [v for v in b.variants if _K_NAME.match(v)]
    names.sort(key=lambda v: int(_K_NAME.match(v).group(1)))
    if "mct" in b.variants:
        names.append("mct")
    return names


def modes_section(ctx, reader, benches, raw, paper, images) -> dict:
    import numpy as np

    reader.section = "modes"
    blocks = []
    for b in benches:
        if not b.variants:
            continue
        names = _k_order(b)
        if b.is_toy:
            teacher = _teacher_params(reader, b.name)
            panels, masses = [], {}
            if teacher is not None:
                rng = np.random.default_rng(0)
                means = np.asarray(teacher["means"], float)
                w = np.asarray(teacher["weights"], float)
                w = w / w.sum()
                stds = np.broadcast_to(np.asarray(teacher["stds"], float).reshape(-1, 1) if np.ndim(teacher["stds"]) <= 1
                                       else np.asarray(teacher["stds"], float), means.shape)
                k = rng.choice(len(w), size=2000, p=w)
                panels.append(("teacher (exact samples)", means[k] + stds[k] * rng.standard_normal((2000, 2)), ""))
            for v in names:
                pts = reader.npz_points(f"{b.name}/runs/{v}/samples.npz")
                m = b.runs.get(v) or {}
                kv = b.info.loc[v, "K"] if v in b.info.index else None
                title = f"{v} (K = {int(kv)})" if v == "mct" and is_number(kv) else (f"K = {int(kv)}" if is_number(kv) else v)
                tv, cov, nm = pick_number(m, "mode_mass_tv"), pick_number(m, "modes_covered"), pick_number(m, "num_modes")
                sub = ", ".join(x for x in [f"TV {tv:.2f}" if tv is not None else "",
                                            f"{int(cov)}/{int(nm)} modes" if cov is not None and nm is not None else
                                            (f"{int(cov)} modes" if cov is not None else "")] if x)
                if pts is not None and len(pts):
                    panels.append((title, pts, sub))
                mm = number_list(pick(m, "mode_mass"))
                if mm is None and pts is not None and teacher is not None:
                    mm = list(F.mode_masses(pts, np.asarray(teacher["means"], float)))
                if mm is not None:
                    masses[title] = mm
            true_w = number_list(teacher["weights"]) if teacher else None
            if true_w is None:
                true_w = next((number_list(pick(m, "true_mode_weight")) for m in b.runs.values()
                               if number_list(pick(m, "true_mode_weight"))), None)
            figs = [f for f in (F.toy_scatter(panels, teacher, b.name) if len(panels) > (1 if teacher else 0) else None,
                                F.mode_mass_bars(masses, true_w, b.name)) if f]
            blocks.append({"name": b.name, "figures": figs, "table": None})
        else:
            hists = {}
            th = class_hist(b.teacher) if b.teacher else None
            if th:
                hists["teacher"] = th
            for v in names:
                h = class_hist(b.runs.get(v))
                if h:
                    kv = b.info.loc[v, "K"] if v in b.info.index else None
                    hists[f"{v} (K = {int(kv)})" if v == "mct" and is_number(kv) else
                          (f"K = {int(kv)}" if is_number(kv) else v)] = h
            fig = F.class_histograms(hists, b.name)
            table = None
            rows = []
            for v in names:
                if v in b.info.index:
                    r = {"variant": v, "K": b.info.loc[v, "K"]}
                    for c in ("class_entropy", "recall", "fid"):
                        if c in b.info:
                            r[c] = b.info.loc[v, c]
                    h = class_hist(b.runs.get(v))
                    r["classes > 2%"] = sum(1 for x in h if x > 0.02) if h else None
                    r["largest class"] = max(h) if h else None
                    rows.append(r)
            if rows and any(r.get("largest class") is not None or is_number(r.get("class_entropy")) for r in rows):
                table = frame_table(pd.DataFrame(rows), label_cols=("variant",), kind=f"classes-{b.name}",
                                    rename={"variant": "Variant"})
            if fig is None and b.runs:
                reader._miss(reader.root / b.name / "runs" / "*" / "metrics.json", "no class histogram key (class_hist) in any run")
            blocks.append({"name": b.name, "figures": [fig] if fig else [], "table": table})
    return {"benches": blocks}


# --- section 5: samples -------------------------------------------------------------

def samples_section(ctx, reader, benches, raw, paper, images) -> dict:
    reader.section = "samples"
    blocks = []
    for b in benches:
        if not b.variants and not b.teacher:
            continue
        grid = []
        if not b.is_toy:
            nfe = max((r["nfe"] for r in b.teacher_rows), default=None)
            t = images.get(f"{b.name}/teacher/samples.png",
                           f"teacher, multi-step" + (f" ({nfe} NFE)" if nfe else ""), f"{b.name} teacher samples")
            grid.append(t or {"missing": f"{b.name}/teacher/samples.png", "caption": "teacher, multi-step"})
        for v in b.variants:
            img = images.get(f"{b.name}/runs/{v}/samples.png", f"{v}, one step", f"{b.name} {v} samples",
                             record=v in b.runs and not b.is_toy)
            if img:
                grid.append(img)
            elif v in b.runs and not b.is_toy:
                grid.append({"missing": f"{b.name}/runs/{v}/samples.png", "caption": f"{v}, one step"})
        corrections = []
        for v in b.variants:
            before = images.get(f"{b.name}/runs/{v}/correct/before.png", "before: one-step g(z)",
                                f"{b.name} {v} before correction", record=False)
            after = images.get(f"{b.name}/runs/{v}/correct/after.png", "after: joint MCMC correction, denoised",
                               f"{b.name} {v} after correction", record=False)
            cm = reader.json(f"{b.name}/runs/{v}/correct/metrics.json", record=False)
            if before or after or cm:
                items = [(k, val) for k, val in flatten(cm or {}).items() if not isinstance(val, (list, dict))]
                corrections.append({"variant": v, "before": before, "after": after,
                                    "table": kv_table(items, kind=f"correct-{b.name}", header=("Key", "Value")) if items else None})
        if not b.is_toy and not corrections and b.runs:
            reader._miss(reader.root / b.name / "runs" / "mct" / "correct" / "before.png")
        blocks.append({"name": b.name, "grid": grid, "corrections": corrections, "toy": b.is_toy})
    return {"benches": blocks}


# --- section 6: speed ---------------------------------------------------------------

def speed_section(ctx, reader, benches, raw, paper, images) -> dict:
    reader.section = "speed"
    bench_dir = reader.root / "bench"
    files = sorted(bench_dir.glob("*.json")) if bench_dir.is_dir() else []
    if not files:
        reader._miss(bench_dir / "*.json")
    recs, overhead, extra = [], [], []
    for p in files:
        d = reader.json(f"bench/{p.name}")
        if d is None:
            continue
        fallback_bench = p.stem
        for r in speed_records(d):
            recs.append({"bench": str(r.get("bench") or r.get("benchmark") or fallback_bench),
                         "name": str(r.get("name")), "nfe": pick_number(r, "nfe"),
                         "images_per_s": pick_number(r, "images_per_s"),
                         "peak_memory_mb": pick_number(r, "peak_memory_mb") if pick_number(r, "peak_memory_mb") is not None
                         else (pick_number(r, "peak_memory_bytes") / 2 ** 20 if pick_number(r, "peak_memory_bytes") else None),
                         "batch_size": pick_number(r, "batch_size"), "device": r.get("device")})
        for r in overhead_records(d):
            overhead.append({"bench": str(r.get("bench") or fallback_bench), **r})
        used = {k for k in flatten(d) if any(a in k.lower() for a in ("images_per", "throughput", "nfe"))}
        for k, v in flatten(d).items():
            if k not in used and not isinstance(v, (list, dict)):
                extra.append((f"{p.name}: {k}", v))
    table = fig = otable = None
    if recs:
        df = pd.DataFrame(recs)
        # speed-up of the one-step student over each sampler of the same bench
        ups = []
        for _, r in df.iterrows():
            stud = df[(df["bench"] == r["bench"]) & (df["nfe"] == 1)]["images_per_s"].dropna()
            ups.append(float(stud.max()) / r["images_per_s"] if len(stud) and is_number(r["images_per_s"])
                       and r["nfe"] != 1 and r["images_per_s"] > 0 else None)
        df["student speed-up"] = ups
        df = df.sort_values(["bench", "nfe"], ascending=[True, False], na_position="last", kind="stable")
        cols = [c for c in ["bench", "name", "nfe", "images_per_s", "student speed-up", "peak_memory_mb", "batch_size", "device"]
                if c in df and (df[c].notna().any() or c in ("nfe", "images_per_s"))]
        table = frame_table(df[cols].reset_index(drop=True), label_cols=("bench", "name"), kind="speed",
                            rename={"bench": "Benchmark", "name": "Sampler", "student speed-up": "Student speed-up \u00d7",
                                    "peak_memory_mb": "Peak memory (MiB)", "batch_size": "Batch", "device": "Device"},
                            row_cls=lambda r: "ours" if r["nfe"] == 1 else "")
        fig = F.speed_bars(df)
    if overhead:
        odf = pd.DataFrame(overhead)
        otable = frame_table(odf, label_cols=("bench",), kind="overhead",
                             rename={c: c.replace("_", " ").capitalize() for c in odf.columns if c != "K"},
                             formats={c: fmt_duration for c in odf.columns if c.endswith("seconds") or c.endswith("_s")},
                             caption="EM overhead: time per distillation iteration against the number of Langevin steps K.")
    ext = kv_table(extra, kind="speed-extra", header=("Measurement", "Value")) if extra else None
    return {"table": table, "figure": fig, "overhead": otable, "extra": ext, "files": [p.name for p in files]}


# --- assembly -----------------------------------------------------------------------

def _env():
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(HERE)), autoescape=jinja2.select_autoescape(["html", "j2"]),
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return env


def build_report(raw: dict, ctx, out: Optional[str | Path] = None) -> Path:
    """Render ``<results_dir>/report.html`` (or ``out``) from whatever results exist; return its path."""
    raw = raw or {}
    cfg = from_dict(ReportConfig, raw.get("report") or {}, "report")
    strict = cfg.strict or os.environ.get("MCT_REPORT_STRICT") == "1"
    root = Path(ctx.results_dir)
    out = Path(out) if out is not None else root / "report.html"
    reader = Reader(root)
    paper = load_paper_results()
    images = Images(reader, out, cfg)
    context: dict[str, Any] = {}
    errors: dict[str, str] = {}
    try:
        benches = gather(reader, raw)
    except Exception as exc:  # noqa: BLE001 - still write a report that says what went wrong
        if strict:
            raise
        log.error("reading the results failed:\n%s", traceback.format_exc())
        errors["summary"] = f"reading the results failed: {type(exc).__name__}: {exc}"
        benches = []
    builders: dict[str, Callable] = {
        "summary": lambda: summary_section(context, reader, benches, raw, paper),
        "main": lambda: main_section(context, reader, benches, raw, paper, images),
        "ablations": lambda: ablation_section(context, reader, benches, raw, paper, images),
        "modes": lambda: modes_section(context, reader, benches, raw, paper, images),
        "samples": lambda: samples_section(context, reader, benches, raw, paper, images),
        "speed": lambda: speed_section(context, reader, benches, raw, paper, images),
    }
    for key, fn in builders.items():
        if key in errors:
            context[key] = None
            continue
        try:
            context[key] = fn()
        except Exception as exc:  # noqa: BLE001 - one broken section must not hide the others
            if strict:
                raise
            log.error("report section %s failed:\n%s", key, traceback.format_exc())
            errors[key] = f"{type(exc).__name__}: {exc}"
            context[key] = None
    missing = {key: [m for m in reader.missing_in(key)] for key, _ in SECTIONS}
    css = (HERE / "style.css").read_text(encoding="utf-8")
    html = _env().get_template("template.html.j2").render(
        title=cfg.title, sections=SECTIONS, css=css, errors=errors, missing=missing, **context)
    write_text(out, html)
    log.info("report written to %s", out)
    return out
