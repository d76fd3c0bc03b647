"""The stage table: every kind of job the pipeline runs, and where its files go.

Results layout (paths under ``<results_dir>/<bench>/``; ``{variant}`` per variant)::

    teacher/checkpoint.pt, train_log.csv      teacher_train (or teacher/checkpoint.pt: teacher_fetch,
                                              the weights or a manifest naming them)
    teacher/metrics.json                      teacher_eval (teacher/samples.png too, untracked)
    features/checkpoint.pt, metrics.json      features
    clip/checkpoint.pt, metrics.json, train_log.csv   clip
    runs/{variant}/checkpoint.pt, train_log.csv            distill (the first training seed; each further
    runs/{variant}/seed-<s>/checkpoint.pt, train_log.csv   seed in seed-<s>/, not a workflow output: evaluate
                                                           checks each seed's checkpoint itself)
    runs/{variant}/metrics.json, samples.png               evaluate
    runs/{variant}/correct/metrics.json, before.png, after.png   correct
    summary.csv                               summarize
    <results_dir>/bench/*.json                bench
    <results_dir>/report.html                 report

A benchmark runs the stages it lists in ``Benchmark.stages`` (:mod:`mct.benchmarks.base`);
the global stages run once per config."""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Stage:
    """One kind of job. ``scope``: 'bench' (one job per benchmark), 'variant' (one per
    benchmark variant) or 'global' (one per config). Paths are relative to
    ``<results_dir>/<bench>/`` ('bench', 'variant') or ``<results_dir>/`` ('global')."""

    name: str
    argv: tuple[str, ...]
    scope: str
    outs: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()
    plots: tuple[str, ...] = ()
    directory: bool = False
    doc: str = ""

    @property
    def files(self) -> tuple[str, ...]:
        return self.outs + self.metrics + self.plots


# in pipeline order
STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("teacher_fetch", ("teacher", "fetch"), "bench", outs=("teacher/checkpoint.pt",),
          doc="download the real teacher (sha256-pinned)"),
    Stage("features", ("features",), "bench", outs=("features/checkpoint.pt",), metrics=("features/metrics.json",),
          doc="train the feature network used for FID/KID/PR"),
    Stage("clip", ("clip",), "bench", outs=("clip/checkpoint.pt",), metrics=("clip/metrics.json",),
          plots=("clip/train_log.csv",), doc="train the tiny CLIP used for the CLIP score"),
    Stage("teacher_train", ("teacher", "train"), "bench", outs=("teacher/checkpoint.pt",),
          plots=("teacher/train_log.csv",), doc="train the embedded teacher"),
    Stage("teacher_eval", ("teacher", "eval"), "bench", metrics=("teacher/metrics.json",),
          doc="score the teacher at several NFE (teacher/samples.png, where a benchmark writes it, is not tracked)"),
    Stage("distill", ("distill",), "variant", outs=("runs/{variant}/checkpoint.pt",),
          plots=("runs/{variant}/train_log.csv",), doc="distil one variant into a one-step generator"),
    Stage("evaluate", ("evaluate",), "variant", outs=("runs/{variant}/samples.png",),
          metrics=("runs/{variant}/metrics.json",), doc="score one distilled variant"),
    Stage("correct", ("correct",), "variant",
          outs=("runs/{variant}/correct/before.png", "runs/{variant}/correct/after.png"),
          metrics=("runs/{variant}/correct/metrics.json",), doc="MCMC correction of one-step samples"),
    Stage("export", ("export",), "variant", outs=("export/{variant}",), directory=True,
          doc="the main run's generator as a folder mct.load_generator reads (weights, config, model card)"),
    Stage("summarize", ("summarize",), "bench", outs=("summary.csv",), doc="one row per variant"),
    Stage("bench", ("bench",), "global", outs=("bench",), directory=True,
          doc="sampling speed, EM overhead and memory"),
    Stage("report", ("report",), "global", outs=("report.html",), doc="the HTML report"),
)}

# The reference run of config/default.yaml is committed to git (README "Results"): the small,
# human-readable outputs (records, tables, completion records, the report). Checkpoints, sample
# arrays and images stay DVC-cached outputs. dvc.yaml marks the committed ones ``cache: false``
# (DVC refuses to cache a file git tracks); .gitignore lists the same rule (a test checks both).
COMMITTED_SUFFIXES = (".json", ".csv", ".html")


def is_committed(path: str, directory: bool = False) -> bool:
    """Whether a stage output is committed to git rather than cached by DVC (a directory output
    counts as committed when it holds records only: ``bench/``)."""
    if directory:
        return posixpath.basename(path.rstrip("/")) == "bench"
    return path.endswith(COMMITTED_SUFFIXES)


BENCH_STAGES = tuple(n for n, s in STAGES.items() if s.scope != "global")
GLOBAL_STAGES = tuple(n for n, s in STAGES.items() if s.scope == "global")
# the module a global stage runs (its code dependencies start there)
GLOBAL_MODULES = {"bench": "mct.bench", "report": "mct.report.build"}

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
LOG_DIR = "logs"


def stage_path(stage: str, relpath: str, results_dir: str, bench: Optional[str] = None,
               variant: Optional[str] = None) -> str:
    """Path of one of ``stage``'s files; ``bench``/``variant`` None keep the
    ``{bench}``/``{variant}`` wildcards (Snakemake patterns)."""
    rel = relpath.replace("{variant}", "{variant}" if variant is None else variant)
    if STAGES[stage].scope == "global":
        return posixpath.join(results_dir, rel)
    return posixpath.join(results_dir, "{bench}" if bench is None else bench, rel)


def log_path(stage: str, bench: Optional[str] = None, variant: Optional[str] = None) -> str:
    """``logs/<rule>/<wildcards>.log`` (None keeps the wildcard)."""
    scope = STAGES[stage].scope
    if scope == "global":
        return f"{LOG_DIR}/{stage}.log"
    b = "{bench}" if bench is None else bench
    if scope == "bench":
        return f"{LOG_DIR}/{stage}/{b}.log"
    v = "{variant}" if variant is None else variant
    return f"{LOG_DIR}/{stage}/{b}/{v}.log"
