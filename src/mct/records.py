"""Typed result records: one class per kind of output file, written by the stage that makes
the file and read by the report through the same class.

Every record file is JSON with ``kind`` (which class) and ``schema_version``; reading checks
both, the type of every field (finite numbers only, no booleans for numbers) and refuses keys
the class does not have, so a file either means exactly what its class says or is refused with
one line naming the file and the field. Metric and setting names are checked against
:data:`METRICS` and :data:`SETTINGS`, the one place they are documented. Every record carries a
:class:`Provenance` (commit, config hash, package versions). No torch or pandas here: the module
is cheap to import from the stages, the report and the CLI alike.

Files and their classes (paths under ``<results_dir>/<bench>/``):

- ``runs/<variant>/metrics.json``: :class:`RunMetrics` (written by ``evaluate``)
- ``teacher/metrics.json``: :class:`TeacherMetrics` (``teacher_eval``)
- ``features/metrics.json``, ``clip/metrics.json``: :class:`AuxMetrics` (``features``, ``clip``)
- ``runs/<variant>/correct/metrics.json``: :class:`CorrectionMetrics` (``correct``)
- ``summary.json``: :class:`Summary` (``summarize``; ``summary.csv`` is its flat view)
- ``teacher.json`` (2-D mixture benchmarks): :class:`MixtureTeacher` (``evaluate``)
- ``<results_dir>/bench/<bench>.json``: :class:`BenchRecord` (``mct bench``)
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional, TypeVar, Union

from .errors import MCTError

Scalar = Union[bool, int, float, str]

# metric name -> (meaning, which way is better: "lower", "higher" or "" for neither)
METRICS: dict[str, tuple[str, str]] = {
    # image fidelity (mct.metrics.fidelity / inception / clip)
    "fid": ("Frechet distance to the reference features (imagenet: minimum over seeds)", "lower"),
    "fid_mean": ("FID averaged over the evaluation seeds", "lower"),
    "kid_mean": ("kernel inception distance, mean over subsets (raw, not x1000)", "lower"),
    "kid_std": ("KID standard deviation over subsets", ""),
    "kid_subset_size": ("KID subset size used", ""),
    "precision": ("improved precision (fraction of samples inside the real manifold)", "higher"),
    "recall": ("improved recall (fraction of real data inside the sample manifold)", "higher"),
    "f_score": ("harmonic mean of precision and recall", "higher"),
    "fid_n_gen": ("number of generated images in the FID", ""),
    "fid_n_ref": ("number of reference images in the FID", ""),
    "fid_resize": ("side the images were resized to for the FID", ""),
    # classes (mct.metrics.classes)
    "class_accuracy": ("fraction of samples classified as the class they were conditioned on", "higher"),
    "class_entropy": ("entropy (nats) of the predicted-class histogram", "higher"),
    "class_entropy_max": ("log(number of classes): the entropy of a uniform histogram", ""),
    "class_kl_uniform": ("KL(predicted-class histogram || uniform), nats", "lower"),
    "classes_covered": ("classes holding at least a quarter of a uniform share", "higher"),
    # text conditioning (mct.metrics.clip)
    "clip_score": ("100 x mean CLIP cosine(image, its caption)", "higher"),
    "clip_score_fraction": ("mean CLIP cosine(image, its caption)", "higher"),
    "clip_score_sem": ("standard error of clip_score", ""),
    "clip_n": ("number of (image, caption) pairs scored", ""),
    "clip_score_real": ("clip_score of real held-out images with their captions", "higher"),
    "clip_score_mismatched": ("clip_score of real images with wrong captions", "lower"),
    "zero_shot_accuracy": ("CLIP zero-shot class accuracy on held-out images", "higher"),
    # 2-D mixture (mct.metrics.toy)
    "mode_mass_tv": ("total variation between per-mode mass and the true weights", "lower"),
    "modes_covered": ("modes holding at least covered_fraction of their true weight", "higher"),
    "num_modes": ("number of mixture modes", ""),
    "mean_true_logpdf": ("mean log-density of the samples under the true mixture", "higher"),
    "energy_distance": ("energy distance to teacher samples", "lower"),
    "nonfinite_samples": ("samples dropped for being non-finite", "lower"),
    # M-step gradient (mct.distill.diagnostics)
    "mstep_grad_var": ("M-step gradient variance of the run's own setting", "lower"),
    "mstep_grad_var_nc": ("M-step gradient variance with noise cancellation", "lower"),
    "mstep_grad_var_no_nc": ("M-step gradient variance without noise cancellation", "lower"),
    "mstep_grad_mean_sq_nc": ("squared M-step gradient mean, with noise cancellation", ""),
    "mstep_grad_mean_sq_no_nc": ("squared M-step gradient mean, without noise cancellation", ""),
    "mstep_grad_noise_to_signal_nc": ("variance / squared mean, with noise cancellation", "lower"),
    "mstep_grad_noise_to_signal_no_nc": ("variance / squared mean, without noise cancellation", "lower"),
    "mstep_grad_batches": ("batches the gradient variance was estimated from", ""),
    # auxiliary networks (features / clip stages)
    "heldout_accuracy": ("classifier accuracy on the held-out split", "higher"),
    "train_accuracy": ("classifier accuracy on the training split", "higher"),
    "feature_dim": ("feature dimension of the FID network", ""),
    "feature_scale": ("feature calibration scale", ""),
    "train_size": ("training split size", ""),
    "heldout_size": ("held-out split size", ""),
    "params": ("number of parameters", ""),
    "final_loss": ("last training loss", "lower"),
    "steps": ("training steps", ""),
}

# setting name -> meaning (the knobs a variant sets; the report groups and labels runs by them)
SETTINGS: dict[str, str] = {
    "K": "Langevin steps per EM iteration (K = 1: reverse KL)",
    "reparam": "Langevin in the reparametrised (eps, z) space",
    "noise_cancel": "noise cancellation in the M-step",
    "init": "generator initialisation: 'teacher' or 'random'",
    "gamma_eps": "step size of the eps chain",
    "gamma_z": "step size of the z chain (0 = z frozen)",
    "sigma_g": "noise level of the one-step generator g(z) = D(sigma_g z, sigma_g)",
    "conditional": "class-conditional generator",
    "guidance": "classifier-free guidance weight of the teacher",
    "guidance_scale": "classifier-free guidance scale of the teacher",
    "seed": "training seed",
    "precision": "numeric precision of the networks",
}

R = TypeVar("R", bound="Record")


def _fmt_path(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


class RecordError(MCTError):
    """A record file or object does not match its class."""


# --------------------------------------------------------------------------- checking

def _check(value: Any, tp: Any, where: str) -> Any:
    """``value`` as type ``tp`` (a dataclass is built from its dict), or RecordError."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Union or origin is types.UnionType:
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise RecordError(f"{where} is null")
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _check(value, a, where)
            except RecordError as exc:
                errors.append(str(exc))
        raise RecordError(errors[0] if len(errors) == 1 else f"{where}: {value!r} is not a {_tname(tp)}")
    if value is None:
        raise RecordError(f"{where} is null")
    if origin is list:
        if not isinstance(value, list):
            raise RecordError(f"{where} must be a list, not {type(value).__name__}")
        (item,) = typing.get_args(tp)
        return [_check(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise RecordError(f"{where} must be a mapping, not {type(value).__name__}")
        kt, vt = typing.get_args(tp)
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise RecordError(f"{where} has a non-string key {k!r}")
            out[k] = _check(v, vt, f"{where}.{k}")
        return out
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise RecordError(f"{where} is {value}, not a finite number")
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"records: unsupported field type {tp!r} at {where}")
    raise RecordError(f"{where} must be {_tname(tp)}, not {type(value).__name__} {value!r:.40}")


def _tname(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))



def _build(cls: type, value: Any, where: str) -> Any:
    if not isinstance(value, dict):
        raise RecordError(f"{where or cls.__name__} must be a mapping, not {type(value).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    extra = sorted(set(value) - set(fields))
    if extra:
        raise RecordError(f"{where or cls.__name__} has unknown key(s) {', '.join(map(repr, extra))} "
                          f"(a {cls.__name__} has: {', '.join(fields)})")
    kwargs = {}
    for name, f in fields.items():
        here = _fmt_path(where, name)
        if name not in value:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise RecordError(f"{here} is missing")
            continue
        kwargs[name] = _check(value[name], hints[name], here)
        names = f.metadata.get("names")
        if names is not None and kwargs[name]:
            unknown = sorted(set(kwargs[name]) - set(names))
            if unknown:
                raise RecordError(f"{here} has undocumented name(s) {', '.join(map(repr, unknown))} "
                                  "(add them to mct.records.METRICS / SETTINGS first)")
    return cls(**kwargs)


def _metrics_field(**kw) -> Any:
    return field(metadata={"names": METRICS}, **kw)


def _settings_field(**kw) -> Any:
    return field(metadata={"names": SETTINGS}, **kw)


# --------------------------------------------------------------------------- building blocks

@dataclass(frozen=True)
class Provenance:
    """Which code made the file: ``commit`` (None outside git), ``dirty`` (uncommitted changes to
    tracked files; None when unknown), ``config_hash`` (mct.config.config_hash of the config the
    stage ran with), ``packages`` (name -> version, None when not installed), ``created`` (UTC,
    ISO 8601). No host names."""

    commit: Optional[str]
    dirty: Optional[bool]
    config_hash: str
    packages: dict[str, Optional[str]]
    created: str


def provenance(config_hash: str) -> Provenance:
    """The provenance of a file written now by this process."""
    from .provenance import git_info, versions

    git = git_info()
    created = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
    return Provenance(commit=git["commit"], dirty=git["dirty"], config_hash=str(config_hash),
                      packages=dict(versions()), created=created)


@dataclass
class Scores:
    """The scores of one set of samples: ``metrics`` by the names of :data:`METRICS`, and the
    structured results that are lists (class histogram as fractions, per-mode mass and the true
    mode weights of the 2-D mixture, FID per evaluation seed)."""

    metrics: dict[str, float] = _metrics_field()
    class_hist: Optional[list[float]] = None
    mode_mass: Optional[list[float]] = None
    true_mode_weight: Optional[list[float]] = None
    fid_seeds: Optional[list[float]] = None

    LISTS: ClassVar[tuple[str, ...]] = ("class_hist", "mode_mass", "true_mode_weight", "fid_seeds")

    @classmethod
    def from_flat(cls, flat: dict, ignore: tuple[str, ...] = ()) -> "Scores":
        """Scores from a metric function's flat dict (e.g. mct.metrics.fidelity + class_metrics):
        numbers go to ``metrics``, the known lists to their fields, None values are dropped,
        keys in ``ignore`` are skipped; any other key is an error (name it in METRICS or ignore)."""
        metrics, lists = {}, {}
        for k, v in flat.items():
            if k in ignore or v is None:
                continue
            if k in cls.LISTS:
                lists[k] = [float(x) for x in v]
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                metrics[k] = float(v)
            else:
                raise RecordError(f"Scores.from_flat: {k}={v!r:.40} is neither a number nor one of {cls.LISTS}")
        return _build(cls, {"metrics": metrics, **lists}, "scores")

    def get(self, name: str) -> Optional[float]:
        return self.metrics.get(name)


@dataclass
class CurvePoint:
    iteration: int
    fid: float


@dataclass
class TeacherRow:
    """The teacher sampled at one NFE (``nfe_measured``: denoiser calls counted while sampling)."""

    nfe: int
    scores: Scores
    nfe_measured: Optional[int] = None
    sampler: Optional[str] = None
    num_samples: Optional[int] = None
    sample_seconds: Optional[float] = None


@dataclass
class SummaryRow:
    variant: str
    nfe: int
    settings: dict[str, Scalar] = _settings_field(default_factory=dict)
    metrics: dict[str, float] = _metrics_field(default_factory=dict)


@dataclass
class Claim:
    """A target of the benchmark checked with numbers: ``values`` are the numbers that decide it."""

    claim: str
    holds: bool
    values: dict[str, float] = field(default_factory=dict)


@dataclass
class Speed:
    """One sampler's throughput on one batch (``speedup``: student images/s over this one's)."""

    name: str
    nfe: int
    images_per_s: float
    ms_per_batch: float
    batch_size: int
    measured_nfe: Optional[int] = None
    speedup: Optional[float] = None
    target_met: Optional[bool] = None


@dataclass
class EMOverhead:
    """Time of one EM iteration against the sum of its network passes (see mct bench)."""

    K: int
    iteration_ms: float
    passes_sum_ms: float
    overhead_ratio: float
    passes_ms: dict[str, float] = field(default_factory=dict)
    passes_count: dict[str, int] = field(default_factory=dict)
    gamma_z: Optional[float] = None
    reparam: Optional[bool] = None
    overhead_ratio_range: list[float] = field(default_factory=list)
    target: Optional[float] = None
    target_met: Optional[bool] = None


@dataclass
class Memory:
    """Peak memory (bytes) per operation; ``unavailable`` says why there is none."""

    method: str
    per_sample_bytes: dict[str, int] = field(default_factory=dict)
    peak_bytes: dict[str, int] = field(default_factory=dict)
    batch_sizes: list[int] = field(default_factory=list)
    unavailable: Optional[str] = None


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
            return _build(cls, obj, "")
        except RecordError as exc:
            raise RecordError(f"{where}: {exc}") from None


@dataclass
class RunMetrics(Record):
    """A distilled generator scored by ``evaluate``: ``settings`` are the variant's knobs
    (:data:`SETTINGS`), ``scores`` its one-step samples, ``fid_curve`` the FID measured during
    training, ``notes`` free text shown beside the numbers (e.g. which teacher stood in)."""

    KIND: ClassVar[str] = "run_metrics"
    FILE: ClassVar[str] = "{bench}/runs/{variant}/metrics.json"

    bench: str
    variant: str
    nfe: int
    scores: Scores
    provenance: Provenance
    settings: dict[str, Scalar] = _settings_field(default_factory=dict)
    num_samples: Optional[int] = None
    iterations: Optional[int] = None
    train_seconds: Optional[float] = None
    sample_seconds: Optional[float] = None
    eval_seconds: Optional[float] = None
    fid_curve: list[CurvePoint] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)

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
    metrics: dict[str, float] = _metrics_field(default_factory=dict)
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
    FILE: ClassVar[str] = "{bench}/summary.json"

    bench: str
    rows: list[SummaryRow]
    provenance: Provenance
    claims: list[Claim] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def csv_rows(self) -> list[dict]:
        """The flat view written to summary.csv (variant, nfe, settings, metrics)."""
        return [{"variant": r.variant, "nfe": r.nfe, **r.settings, **r.metrics} for r in self.rows]


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
                                     MixtureTeacher)


# --------------------------------------------------------------------------- files

def write_record(path: str | os.PathLike, rec: Record) -> Path:
    """Check ``rec`` exactly as a reader will, then write it atomically (mct.io.write_json)."""
    from .io import _json_default, write_json

    if not isinstance(rec, Record) or type(rec) is Record:
        raise TypeError(f"write_record needs a record (one of {', '.join(c.__name__ for c in RECORDS)})")
    obj = json.loads(json.dumps(rec.to_dict(), default=_json_default))
    type(rec).from_dict(obj, where=f"refusing to write {path}")
    return write_json(path, obj)


def read_record(path: str | os.PathLike, cls: type[R]) -> R:
    """The record of class ``cls`` in ``path``; MCTError (one line) when the file is missing,
    not JSON, of another kind or schema version, or a field does not match."""
    from .io import read_json

    return cls.from_dict(read_json(path), where=str(path))
