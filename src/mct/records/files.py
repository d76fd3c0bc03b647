"""The record classes, one per kind of output file, and reading/writing them."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional, TypeVar

from .check import RecordError, check_record, metrics_field, settings_field
from .names import METRICS, Scalar
from .parts import (Claim, Comparison, CurvePoint, EMOverhead, Memory, Provenance, Scores, SeedRun, Speed, SummaryRow,
                    TeacherRow)

R = TypeVar("R", bound="Record")


# --------------------------------------------------------------------------- records (files)

@dataclass
class Record:
    """Base of the file records: ``KIND`` and ``SCHEMA_VERSION`` are written beside the fields
    and checked on reading; ``FILE`` is where the file lives under the results directory."""

    KIND: ClassVar[str] = ""
    SCHEMA_VERSION: ClassVar[int] = 1
    FILE: ClassVar[str] = ""

    @classmethod
    def path(cls, results_dir: str | os.PathLike, **parts: str) -> Path:
        """``FILE`` filled in, e.g. ``RunMetrics.path(root, bench="digits", variant="mct")``."""
        return Path(results_dir) / cls.FILE.format(**parts)

    def to_dict(self) -> dict:
        return {"kind": self.KIND, "schema_version": self.SCHEMA_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls: type[R], obj: Any, where: str = "") -> R:
        """Check ``obj`` (a parsed file) against this class; RecordError with the field's path."""
        where = where or cls.__name__
        if not isinstance(obj, dict):
            raise RecordError(f"{where}: not a JSON object")
        obj = dict(obj)
        kind, version = obj.pop("kind", None), obj.pop("schema_version", None)
        if kind != cls.KIND:
            raise RecordError(f"{where}: kind is {kind!r}, expected {cls.KIND!r}")
        if version != cls.SCHEMA_VERSION:
            raise RecordError(f"{where}: schema_version is {version!r}, this mct reads {cls.SCHEMA_VERSION} "
                              "(rerun the stage that wrote it)")
        try:
            return check_record(cls, obj, "")
        except RecordError as exc:
            raise RecordError(f"{where}: {exc}") from None


@dataclass
class RunMetrics(Record):
    """A distilled generator scored by ``evaluate``: ``settings`` are the variant's knobs
    (:data:`SETTINGS`), ``scores`` its one-step samples, ``fid_curve`` the FID measured during
    training, ``notes`` free text shown beside the numbers (e.g. which teacher stood in).
    ``scores``, ``iterations`` and ``fid_curve`` are the variant's first training seed (the run
    whose samples, export and correction the report shows); ``seeds`` holds every training seed
    (``train.seeds`` of them, the first included), which the summary's intervals are made from."""

    KIND: ClassVar[str] = "run_metrics"
    SCHEMA_VERSION: ClassVar[int] = 2
    FILE: ClassVar[str] = "{bench}/runs/{variant}/metrics.json"

    bench: str
    variant: str
    nfe: int
    scores: Scores
    provenance: Provenance
    settings: dict[str, Scalar] = settings_field(default_factory=dict)
    num_samples: Optional[int] = None
    iterations: Optional[int] = None
    train_seconds: Optional[float] = None
    sample_seconds: Optional[float] = None
    eval_seconds: Optional[float] = None
    fid_curve: list[CurvePoint] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)
    seeds: list[SeedRun] = field(default_factory=list)

    def seed_runs(self) -> list[SeedRun]:
        """Every training seed's run; a record written without ``seeds`` (one seed) is its own scores."""
        return list(self.seeds) or [SeedRun(seed=int(self.settings.get("seed", 0) or 0), scores=self.scores,
                                            iterations=self.iterations, train_seconds=self.train_seconds,
                                            fid_curve=list(self.fid_curve))]

    @property
    def samples_per_second(self) -> Optional[float]:
        if self.num_samples and self.sample_seconds:
            return self.num_samples / self.sample_seconds
        return None


@dataclass
class TeacherMetrics(Record):
    """The teacher scored by ``teacher_eval``: one row per NFE, the real-vs-real floor (same
    metric, real images against the reference) and where distillation starts (the teacher's
    own one-step guess g(z) = D(sigma_g z, sigma_g))."""

    KIND: ClassVar[str] = "teacher_metrics"
    FILE: ClassVar[str] = "{bench}/teacher/metrics.json"

    bench: str
    rows: list[TeacherRow]
    provenance: Provenance
    sampler: Optional[str] = None
    guidance: Optional[float] = None
    reference: Optional[str] = None
    real_floor: Optional[Scores] = None
    init_generator: Optional[Scores] = None
    notes: dict[str, str] = field(default_factory=dict)

    def fid_by_nfe(self) -> dict[int, float]:
        return {r.nfe: r.scores.metrics["fid"] for r in self.rows if "fid" in r.scores.metrics}


@dataclass
class AuxMetrics(Record):
    """An auxiliary network trained by a stage (``net``: 'features' = the FID classifier,
    'clip' = the CLIP scorer): its own metrics and, for a feature network, the real-vs-real
    floor of the metrics it defines (train split against held-out split)."""

    KIND: ClassVar[str] = "aux_metrics"
    FILE: ClassVar[str] = "{bench}/{net}/metrics.json"

    bench: str
    net: str
    provenance: Provenance
    metrics: dict[str, float] = metrics_field(default_factory=dict)
    train_seconds: Optional[float] = None
    real_floor: Optional[Scores] = None


@dataclass
class CorrectionMetrics(Record):
    """Joint MCMC correction of one-step samples (``correct``): the same samples scored before
    and after ``steps`` Langevin steps, and the generator at the moved latents."""

    KIND: ClassVar[str] = "correction_metrics"
    FILE: ClassVar[str] = "{bench}/runs/{variant}/correct/metrics.json"

    bench: str
    variant: str
    steps: int
    sigma: float
    gamma_eps: float
    gamma_z: float
    num_samples: int
    seconds: float
    before: Scores
    after: Scores
    provenance: Provenance
    generator_at_z_K: Optional[Scores] = None
    z_moved_rms: Optional[float] = None
    image_moved_rms: Optional[float] = None

    def change(self, name: str) -> Optional[tuple[float, float, Optional[bool]]]:
        """(before, after, helped) for metric ``name``; helped is None when the metric has no
        better direction (or the values are equal); None when either side lacks it."""
        b, a = self.before.get(name), self.after.get(name)
        if b is None or a is None:
            return None
        better = METRICS.get(name, ("", ""))[1]
        helped = None if not better or a == b else (a < b if better == "lower" else a > b)
        return b, a, helped


@dataclass
class Summary(Record):
    """One row per evaluated variant and the benchmark's claims checked with numbers
    (``summarize``); ``missing`` lists configured variants without a metrics.json."""

    KIND: ClassVar[str] = "summary"
    SCHEMA_VERSION: ClassVar[int] = 2
    FILE: ClassVar[str] = "{bench}/summary.json"

    bench: str
    rows: list[SummaryRow]
    provenance: Provenance
    claims: list[Claim] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)

    def csv_rows(self) -> list[dict]:
        """The flat view written to summary.csv: variant, nfe, settings, the training seeds, then
        per metric ``<m>_mean``, ``<m>_std``, ``<m>_n``, ``<m>_lo95``, ``<m>_hi95`` (std and
        interval empty for one seed): no column holds a mean without saying so."""
        out = []
        for r in self.rows:
            row = {"variant": r.variant, "nfe": r.nfe, **r.settings, "seeds": " ".join(map(str, r.seeds))}
            for m, v in r.metrics.items():
                st = r.stats.get(m)
                row[f"{m}_mean"] = st.mean if st else v
                row[f"{m}_std"] = st.std if st else None
                row[f"{m}_n"] = st.n if st else 1
                row[f"{m}_lo95"] = st.lo if st else None
                row[f"{m}_hi95"] = st.hi if st else None
            out.append(row)
        return out


@dataclass
class BenchRecord(Record):
    """``mct bench``: sampling speed, EM overhead and memory of one benchmark's networks, or
    ``skipped`` (the reason) with no measurements."""

    KIND: ClassVar[str] = "bench"
    FILE: ClassVar[str] = "bench/{bench}.json"

    bench: str
    device: str
    provenance: Provenance
    variant: Optional[str] = None
    device_name: Optional[str] = None
    skipped: Optional[str] = None
    batch_size: Optional[int] = None
    num_threads: Optional[int] = None
    timing: Optional[str] = None
    same_network: Optional[bool] = None
    weights: dict[str, str] = field(default_factory=dict)
    student: Optional[Speed] = None
    teacher: list[Speed] = field(default_factory=list)
    em: Optional[EMOverhead] = None
    memory: Optional[Memory] = None
    wall_seconds: Optional[float] = None


@dataclass
class RehearsalFlops:
    """FLOPs per sample of one iteration, counted by torch.utils.flop_counter.FlopCounterMode
    (matmuls, convolutions, attention; elementwise work is not counted): the whole iteration,
    the part of it spent in each kind of network call (``by_kind``), and each network's pass
    (``per_pass``: {network: {forward, forward_backward, forward_input_vjp}} = by_kind / calls).
    ``iteration`` is the configured iteration's: ``measured_iteration`` itself, or (when a shorter
    iteration ``measured_at`` {K, score_updates} was counted) the formula's calls x per_pass;
    ``iteration_source`` says which."""

    iteration: int
    by_kind: dict[str, int] = field(default_factory=dict)
    per_pass: dict[str, dict[str, int]] = field(default_factory=dict)
    unattributed: int = 0
    measured_iteration: Optional[int] = None
    measured_at: dict[str, int] = field(default_factory=dict)
    iteration_source: str = ""
    method: str = ""


@dataclass
class RehearsalMemory:
    """Bytes: ``params_bytes`` per network (and ``total``), ``grads_bytes`` (generator + student),
    ``optimizer_bytes`` (Adam's two moments of both; counted whether or not allocated),
    ``activation_bytes_per_sample`` {"none", "checkpointed"} (storage kept alive by one
    generator pass with its graph, slope between ``activation_batches``) and the fixed part;
    ``iteration_peak_bytes`` (peak above the level before the iteration), ``peak_rss_bytes``
    (the process's peak during the iteration) / ``process_peak_rss_bytes`` (whole run) on CPU,
    allocator peaks on CUDA. ``measured`` / ``computed`` say which number is which."""

    params_bytes: dict[str, int]
    optimizer_bytes: int
    grads_bytes: int
    activation_bytes_per_sample: dict[str, int]
    activation_fixed_bytes: dict[str, int] = field(default_factory=dict)
    activation_batches: dict[str, list[int]] = field(default_factory=dict)
    optimizer_states: str = "allocated"
    iteration_peak_bytes: Optional[int] = None
    peak_rss_bytes: Optional[int] = None
    process_peak_rss_bytes: Optional[int] = None
    method: str = ""
    measured: list[str] = field(default_factory=list)
    computed: list[str] = field(default_factory=list)


@dataclass
class RehearsalRecord(Record):
    """``mct rehearse``: one (or a few) iterations of a configured paper-scale run at full network
    size on the device present: network calls counted by kind, FLOPs, memory, wall time, and the
    projected cost of the configured run and of its evaluation (docs/benchmarks.md#paper-scale-cost)."""

    KIND: ClassVar[str] = "rehearsal"
    FILE: ClassVar[str] = "rehearsal/{bench}.json"

    bench: str
    variant: str
    device: str
    provenance: Provenance
    batch_size: int
    iterations: int
    calls: dict[str, int]
    flops_per_sample: RehearsalFlops
    memory: RehearsalMemory
    wall_seconds_per_iteration: float
    projection: dict[str, Any]
    evaluation: dict[str, Any]
    device_name: Optional[str] = None
    num_threads: Optional[int] = None
    weights: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    networks: dict[str, Any] = field(default_factory=dict)
    backward_calls: dict[str, int] = field(default_factory=dict)
    wall_seconds_by_checkpointing: dict[str, float] = field(default_factory=dict)
    formula: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    wall_seconds: Optional[float] = None


@dataclass
class MixtureTeacher(Record):
    """The exact mixture teacher of a 2-D benchmark (isotropic Gaussians): the report draws its
    density under the samples."""

    KIND: ClassVar[str] = "mixture_teacher"
    FILE: ClassVar[str] = "{bench}/teacher.json"

    bench: str
    means: list[list[float]]
    stds: list[float]
    weights: list[float]
    provenance: Provenance


RECORDS: tuple[type[Record], ...] = (RunMetrics, TeacherMetrics, AuxMetrics, CorrectionMetrics, Summary, BenchRecord,
                                     MixtureTeacher, RehearsalRecord)


# --------------------------------------------------------------------------- files

def write_record(path: str | os.PathLike, rec: Record) -> Path:
    """Check ``rec`` exactly as a reader will, then write it atomically (mct.io.write_json)."""
    from ..io import _json_default, write_json

    if not isinstance(rec, Record) or type(rec) is Record:
        raise TypeError(f"write_record needs a record (one of {', '.join(c.__name__ for c in RECORDS)})")
    obj = json.loads(json.dumps(rec.to_dict(), default=_json_default))
    type(rec).from_dict(obj, where=f"refusing to write {path}")
    return write_json(path, obj)


def read_record(path: str | os.PathLike, cls: type[R]) -> R:
    """The record of class ``cls`` in ``path``; MCTError (one line) when the file is missing,
    not JSON, of another kind or schema version, or a field does not match."""
    from ..io import read_json

    return cls.from_dict(read_json(path), where=str(path))
