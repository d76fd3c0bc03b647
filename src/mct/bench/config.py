"""The ``bench`` config section and the targets ``mct bench`` checks."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import from_dict
from ..errors import ConfigError

SPEEDUP_TARGET = 0.9   # student speed-up >= 0.9 x the NFE ratio
OVERHEAD_TARGET = 1.10  # one EM iteration <= 1.10 x the sum of its network passes
DEFAULT_NFE = (7, 15, 35)
GPU_ONLY = ("imagenet64", "imagenet128")


@dataclass(frozen=True)
class BenchConfig:
    """The ``bench`` section: how ``mct bench`` measures.

    batch_size: batch of every measurement (0: each benchmark's training batch size).
    repeats / warmup / min_seconds: timed repetitions (median reported), untimed calls first,
    and the least duration of one repetition (short operations are looped). num_threads: torch
    CPU threads (0: leave torch's default); recorded. nfe: teacher NFEs measured with EDM's Heun
    sampler (odd; empty: the benchmark's own evaluation NFEs, else 7, 15, 35). memory: measure
    peak memory per sample. variant: whose run checkpoint supplies trained weights (else the
    first variant that has one)."""

    batch_size: int = 0
    repeats: int = 7
    warmup: int = 2
    min_seconds: float = 0.05
    num_threads: int = 1
    nfe: tuple[int, ...] = ()
    memory: bool = True
    variant: str = "mct"

    def __post_init__(self):
        if self.batch_size < 0:
            raise ConfigError(f"batch_size must be >= 0 (0: the benchmark's), got {self.batch_size}")
        if self.batch_size == 1 and self.memory:
            raise ConfigError("batch_size must be >= 2 to measure memory per sample (or memory: false)")
        if self.repeats < 1 or self.warmup < 0:
            raise ConfigError(f"repeats must be >= 1 and warmup >= 0, got {self.repeats}, {self.warmup}")
        if self.min_seconds < 0:
            raise ConfigError(f"min_seconds must be >= 0, got {self.min_seconds}")
        if self.num_threads < 0:
            raise ConfigError(f"num_threads must be >= 0, got {self.num_threads}")
        for n in self.nfe:
            if n < 1 or n % 2 == 0:
                raise ConfigError(f"nfe entries must be odd and >= 1 (Heun costs 2N - 1), got {n}")


def parse_bench_config(raw: dict) -> BenchConfig:
    """The root config's ``bench`` section, validated (unknown keys are errors)."""
    return from_dict(BenchConfig, (raw or {}).get("bench") or {}, "config.bench")
