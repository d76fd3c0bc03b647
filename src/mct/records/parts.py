"""The building blocks records are made of: provenance, scores of one set of samples, and the
rows of teacher, summary and speed records."""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import ClassVar, Optional

from .check import RecordError, check_record, metrics_field, settings_field
from .names import Scalar


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
    from ..provenance import git_info, versions

    git = git_info()
    created = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
    return Provenance(commit=git["commit"], dirty=git["dirty"], config_hash=str(config_hash),
                      packages=dict(versions()), created=created)


@dataclass
class Scores:
    """The scores of one set of samples: ``metrics`` by the names of :data:`METRICS`, and the
    structured results that are lists (class histogram as fractions, per-mode mass, the true
    mode weights and per-mode recall of the 2-D mixture, FID per evaluation seed)."""

    metrics: dict[str, float] = metrics_field()
    class_hist: Optional[list[float]] = None
    mode_mass: Optional[list[float]] = None
    true_mode_weight: Optional[list[float]] = None
    fid_seeds: Optional[list[float]] = None
    mode_recall: Optional[list[float]] = None

    LISTS: ClassVar[tuple[str, ...]] = ("class_hist", "mode_mass", "true_mode_weight", "fid_seeds", "mode_recall")

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
        return check_record(cls, {"metrics": metrics, **lists}, "scores")

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
class Interval:
    """One number over training seeds: ``mean`` of ``n`` values, their sample ``std`` and the
    ``level`` Student-t interval [``lo``, ``hi``] of the mean (None when n = 1: one seed has
    no spread, and a comparison on it is inconclusive). Made by :func:`mct.stats.interval`."""

    mean: float
    n: int
    std: Optional[float] = None
    lo: Optional[float] = None
    hi: Optional[float] = None
    level: float = 0.95


@dataclass
class SeedRun:
    """One training seed of a variant (``train.seed`` + i): its one-step scores, as ``evaluate``
    scored them with the variant's evaluation settings."""

    seed: int
    scores: Scores
    iterations: Optional[int] = None
    train_seconds: Optional[float] = None
    fid_curve: list[CurvePoint] = field(default_factory=list)


@dataclass
class SummaryRow:
    """One variant over its seeds: ``metrics`` are the means (the single value when n = 1),
    ``stats`` the same metrics with n, std and interval, ``seeds`` the training seeds."""

    variant: str
    nfe: int
    settings: dict[str, Scalar] = settings_field(default_factory=dict)
    metrics: dict[str, float] = metrics_field(default_factory=dict)
    seeds: list[int] = field(default_factory=list)
    stats: dict[str, Interval] = metrics_field(default_factory=dict)


@dataclass
class Comparison:
    """``variant`` minus ``baseline`` on ``metric``: the interval of the per-seed differences over
    the ``seeds`` both ran (``paired``), else Welch's interval of the difference of the means."""

    variant: str
    baseline: str
    metric: str
    diff: Interval
    paired: bool
    seeds: list[int] = field(default_factory=list)


VERDICTS = ("holds", "reversed", "inconclusive")


@dataclass
class Claim:
    """One of the paper's claims decided by an interval (:func:`mct.stats.verdict`): ``holds``
    when the interval of ``diff`` lies wholly on the claimed side of zero (``better``: the
    direction the claim says the difference goes, 'lower' or 'higher'), ``reversed`` when it lies
    wholly on the other side, else ``inconclusive``. ``basis`` says in words what was compared
    (variants, metric, seeds, paired or not); ``values`` are the means that enter it. ``threshold``:
    what the interval is compared with instead of zero, for claims with a tolerance ('within 10 % of
    the teacher's FID': better 'lower', threshold 0.1 x the teacher's FID; 'holds' when diff.hi <
    threshold, 'reversed' when diff.lo > threshold)."""

    claim: str
    verdict: str
    metric: str = ""
    better: str = "lower"
    basis: str = ""
    diff: Optional[Interval] = None
    values: dict[str, float] = field(default_factory=dict)
    threshold: float = 0.0

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise RecordError(f"claim verdict must be one of {', '.join(VERDICTS)}, got {self.verdict!r}")
        if self.better not in ("lower", "higher"):
            raise RecordError(f"claim better must be 'lower' or 'higher', got {self.better!r}")


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
