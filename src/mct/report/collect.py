"""What the report reads: the records the stages write (mct.records), nothing else by name.

Benchmarks are those in the config plus any folder under the results directory that holds a
record; variants are the configured ones in config order, then any other run folder found.
A record that is present but does not match its class is a problem the report lists (or, with
``report.strict``, raises); a record that is absent is only reported when the config says it
should exist (a configured variant's ``runs/<variant>/metrics.json``): whether a benchmark
has a teacher evaluation, a feature network, a correction or a speed measurement is for its
stages to say by writing the record, not for the report to guess."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, TypeVar

from ..errors import MCTError
from ..records import (AuxMetrics, BenchRecord, CorrectionMetrics, MixtureTeacher, Record, RunMetrics, Summary,
                       TeacherMetrics, read_record)

R = TypeVar("R", bound=Record)


@dataclass
class Problem:
    """A file the report could not use: ``missing`` (the config says it should exist) or the
    reader's one-line refusal."""

    path: str
    reason: str


@dataclass
class BenchResults:
    """Every record of one benchmark."""

    name: str
    configured: bool
    variants: list[str]  # configured (config order), then found on disk
    configured_variants: list[str] = field(default_factory=list)
    runs: dict[str, RunMetrics] = field(default_factory=dict)
    teacher: Optional[TeacherMetrics] = None
    mixture: Optional[MixtureTeacher] = None
    aux: dict[str, AuxMetrics] = field(default_factory=dict)  # net -> record
    corrections: dict[str, CorrectionMetrics] = field(default_factory=dict)
    summary: Optional[Summary] = None
    speed: Optional[BenchRecord] = None

    @property
    def ran(self) -> bool:
        return bool(self.runs or self.teacher)

    @property
    def reference(self) -> Optional[str]:
        """The main run every ablation is compared with: the first configured variant with results."""
        return next((v for v in self.variants if v in self.runs), None)

    def metric_names(self) -> set[str]:
        names = {m for r in self.runs.values() for m in r.scores.metrics}
        if self.teacher:
            names |= {m for row in self.teacher.rows for m in row.scores.metrics}
        return names

    def real_floor(self, metric: str = "fid") -> Optional[float]:
        """The real-vs-real value of ``metric`` (teacher record first, then the feature network's)."""
        for floor in (self.teacher.real_floor if self.teacher else None,
                      self.aux["features"].real_floor if "features" in self.aux else None):
            if floor is not None and metric in floor.metrics:
                return floor.metrics[metric]
        return None


def setting_diff(a: RunMetrics, b: RunMetrics) -> dict[str, object]:
    """The settings of ``b`` that differ from ``a`` (name -> b's value)."""
    keys = list(dict.fromkeys([*a.settings, *b.settings]))
    return {k: b.settings.get(k) for k in keys if a.settings.get(k) != b.settings.get(k)}


@dataclass
class Results:
    root: Path
    benches: list[BenchResults]
    problems: list[Problem] = field(default_factory=list)

    def bench(self, name: str) -> Optional[BenchResults]:
        return next((b for b in self.benches if b.name == name), None)


class _Reader:
    def __init__(self, root: Path, strict: bool):
        self.root, self.strict = root, strict
        self.problems: list[Problem] = []

    def rel(self, path: Path) -> str:
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return str(path)

    def read(self, path: Path, cls: type[R], expected: bool = False, stage: Optional[str] = None,
             run_hash: Optional[str] = None) -> Optional[R]:
        """The record at ``path``, or None (noted as a problem where it matters): missing, not
        completed by its ``stage`` (interrupted, or changed since), or made under another config."""
        from ..io import is_complete

        if not path.is_file():
            if expected:
                self.problems.append(Problem(self.rel(path), "missing"))
            return None
        if stage is not None and not is_complete(path.parent, stage):
            self.problems.append(Problem(self.rel(path), f"incomplete: the {stage} stage did not finish; rerun it"))
            return None
        try:
            rec = read_record(path, cls)
        except MCTError as exc:
            if self.strict:
                raise
            self.problems.append(Problem(self.rel(path), str(exc).replace(str(path) + ": ", "")))
            return None
        if run_hash is not None and rec.provenance.config_hash != run_hash:
            self.problems.append(Problem(self.rel(path), "made under another config than the current one; rerun "
                                                         f"its {stage} stage"))
            return None
        return rec


def _run_hash(bench: str, section: dict, variant: str) -> Optional[str]:
    """The hash the variant's weights must have been trained under (None: not a known benchmark)."""
    from ..benchmarks.base import get_benchmark, module_of

    if module_of(bench) is None:
        return None
    b = get_benchmark(bench)
    return b.run_hash(b.parse(section, variant))


def _has_records(d: Path) -> bool:
    return any(p.name in ("metrics.json", "summary.json", "teacher.json") for p in d.rglob("*.json"))


def discover_benches(root: Path, configured: Iterable[str]) -> list[str]:
    """Configured benchmarks (config order), then result folders holding a record (sorted)."""
    names = list(dict.fromkeys(configured))
    if root.is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name != "bench" and not p.name.startswith(".")
                       and _has_records(p))
        names += [n for n in found if n not in names]
        speed = sorted(p.stem for p in (root / "bench").glob("*.json")) if (root / "bench").is_dir() else []
        names += [n for n in speed if n not in names]
    return names


def collect(root: str | Path, raw: dict, strict: bool = False) -> Results:
    """Read every record under ``root`` for the benchmarks of ``raw`` (the root config) and those found."""
    root = Path(root)
    reader = _Reader(root, strict)
    sections = raw.get("benchmarks") or {}
    benches = []
    for name in discover_benches(root, sections):
        section = sections.get(name) or {}
        conf = list((section.get("variants") or {}) if isinstance(section, dict) else {})
        runs_dir = root / name / "runs"
        found = sorted(p.name for p in runs_dir.iterdir() if p.is_dir()) if runs_dir.is_dir() else []
        b = BenchResults(name, name in sections, conf + [v for v in found if v not in conf], conf)
        for v in b.variants:
            run_hash = _run_hash(name, section, v) if v in conf else None
            rec = reader.read(RunMetrics.path(root, bench=name, variant=v), RunMetrics, expected=v in conf,
                              stage="evaluate", run_hash=run_hash)
            if rec is not None:
                b.runs[v] = rec
            corr = reader.read(CorrectionMetrics.path(root, bench=name, variant=v), CorrectionMetrics,
                               stage="correct", run_hash=run_hash)
            if corr is not None:
                b.corrections[v] = corr
        b.teacher = reader.read(TeacherMetrics.path(root, bench=name), TeacherMetrics, stage="teacher_eval")
        b.mixture = reader.read(MixtureTeacher.path(root, bench=name), MixtureTeacher)
        for net in ("features", "clip"):
            aux = reader.read(AuxMetrics.path(root, bench=name, net=net), AuxMetrics, stage=net)
            if aux is not None:
                b.aux[net] = aux
        b.summary = reader.read(Summary.path(root, bench=name), Summary, stage="summarize")
        b.speed = reader.read(BenchRecord.path(root, bench=name), BenchRecord)
        benches.append(b)
    return Results(root, benches, reader.problems)
