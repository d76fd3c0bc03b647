"""The ``cluster`` section: each job's resources (threads locally; GPUs, memory, runtime,
partition under ``--profile workflow/profiles/slurm``), and the ``torchrun`` launch of a
data-parallel stage that gets more than one GPU."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Optional

from ..config import from_dict
from ..errors import ConfigError
from .stages import BENCH_STAGES, STAGES


@dataclass(frozen=True)
class ResourceSpec:
    """Resources of a job; unset keys come from the level above (built-in defaults <
    cluster.default < cluster.stages.<stage> < cluster.benchmarks.<bench>.default <
    cluster.benchmarks.<bench>.<stage>).

    gpus: GPUs per job (Snakemake resource ``gpu``, which the SLURM executor turns into
    ``--gpus``). cpus: threads (``--cpus-per-task``). mem_mb: memory in MB. runtime:
    wall-clock limit in minutes. gpu_model, partition (``slurm_partition``),
    slurm_extra: passed to the SLURM executor as they are. segments (distill only): the
    jobs a run is split into at its runtime limit (``mct plan`` derives it); the workflow
    resubmits a distill job that stopped at its limit up to segments - 1 extra times."""

    gpus: Optional[int] = None
    cpus: Optional[int] = None
    mem_mb: Optional[int] = None
    runtime: Optional[int] = None
    gpu_model: Optional[str] = None
    partition: Optional[str] = None
    slurm_extra: Optional[str] = None
    segments: Optional[int] = field(default=None, metadata={"range": (1, 1000)})

    def __post_init__(self):
        for name, lo in (("gpus", 0), ("cpus", 1), ("mem_mb", 1), ("runtime", 1)):
            v = getattr(self, name)
            if v is not None and v < lo:
                raise ConfigError(f"{name} must be >= {lo}, got {v}")


@dataclass(frozen=True)
class ClusterConfig:
    """The ``cluster`` section: resources per job for ``--profile workflow/profiles/slurm``
    (and ``threads`` locally). ``stages`` maps a stage name (distill, evaluate, ...) to
    resources; ``benchmarks`` maps a benchmark to {'default' or a stage name: resources}.

    What the cluster offers, for the run plan (``mct plan``, ``mct config check``):
    gpu_type names the GPU whose projected hours the plan reads from a rehearsal record
    (``H100-80GB``, ``A100-80GB``); gpu_mem_gb is the memory of one GPU in GB (1e9 bytes;
    default: the size in gpu_type's name); gpus_per_node bounds a job's GPUs (one job runs
    on one node: ``torchrun --standalone``); max_runtime is the longest job the cluster
    allows, in minutes (the plan splits a longer run into segments)."""

    default: ResourceSpec = field(default_factory=ResourceSpec)
    stages: dict[str, ResourceSpec] = field(default_factory=dict)
    benchmarks: dict[str, dict[str, ResourceSpec]] = field(default_factory=dict)
    gpu_type: str = "H100-80GB"
    gpu_mem_gb: Optional[float] = field(default=None, metadata={"range": (1.0, 1e4)})
    gpus_per_node: int = field(default=8, metadata={"range": (1, 1024)})
    max_runtime: int = field(default=2880, metadata={"range": (1, 10**6)})

    @property
    def gpu_memory_gb(self) -> float:
        """gpu_mem_gb, else the number before 'GB' in gpu_type (H100-80GB: 80)."""
        if self.gpu_mem_gb is not None:
            return self.gpu_mem_gb
        return float(re.search(r"(\d+(?:\.\d+)?)\s*GB", self.gpu_type, re.I).group(1))

    def __post_init__(self):
        if self.gpu_mem_gb is None and not re.search(r"\d+(?:\.\d+)?\s*GB", self.gpu_type, re.I):
            raise ConfigError(f"gpu_type {self.gpu_type!r} names no memory size (like H100-80GB): set gpu_mem_gb")
        from ..benchmarks.base import known_names, module_of  # the names only: imports no benchmark

        for st in self.stages:
            if st not in STAGES:
                raise ConfigError(f"stages.{st}: unknown stage (stages: {', '.join(STAGES)})")
        for b, per in self.benchmarks.items():
            if module_of(b) is None:
                raise ConfigError(f"benchmarks.{b}: unknown benchmark (known: {known_names()})")
            for st in per:
                if st != "default" and st not in BENCH_STAGES:
                    raise ConfigError(f"benchmarks.{b}.{st}: unknown stage (default or one of {', '.join(BENCH_STAGES)})")


BUILTIN_RESOURCES = {"gpus": 0, "cpus": 1, "mem_mb": 4000, "runtime": 60}
# a config with device cuda: the stages that run networks get a GPU by default
GPU_STAGES = ("teacher_train", "teacher_eval", "features", "clip", "distill", "evaluate", "correct", "export", "bench")
BUILTIN_CUDA_RESOURCES = {"gpus": 1, "cpus": 8, "mem_mb": 64000, "runtime": 720}
BUILTIN_CUDA_RUNTIME = {"distill": 2880}


def parse_cluster(raw: dict) -> ClusterConfig:
    """The validated ``cluster`` section of a config's content."""
    return from_dict(ClusterConfig, raw.get("cluster") or {}, "config.cluster")


def resolve_resources(cluster: ClusterConfig, stage: str, bench: Optional[str], device: str = "cpu") -> dict:
    """The resources of one job, as Snakemake resources (gpu, mem_mb, runtime, ...) plus 'threads'.
    Built-in defaults: 1 CPU, 4 GB, 1 h; with ``device: cuda``, the stages that run networks
    get 1 GPU, 8 CPUs, 64 GB and 12 h (distill 48 h)."""
    levels = [cluster.default, cluster.stages.get(stage)]
    if bench is not None:
        per = cluster.benchmarks.get(bench, {})
        levels += [per.get("default"), per.get(stage)]
    merged = dict(BUILTIN_RESOURCES)
    if device.startswith("cuda") and stage in GPU_STAGES:
        merged.update(BUILTIN_CUDA_RESOURCES)
        merged["runtime"] = BUILTIN_CUDA_RUNTIME.get(stage, merged["runtime"])
    for lvl in levels:
        if lvl is not None:
            merged.update({k: v for k, v in dataclasses.asdict(lvl).items() if v is not None})
    out = {"threads": merged["cpus"], "gpu": merged["gpus"], "mem_mb": merged["mem_mb"], "runtime": merged["runtime"]}
    for key, name in (("gpu_model", "gpu_model"), ("partition", "slurm_partition"), ("slurm_extra", "slurm_extra")):
        if merged.get(key) is not None:
            out[name] = merged[key]
    return out


def segments_of(cluster: ClusterConfig, bench: str) -> int:
    """The runtime-limit segments of ``bench``'s distill jobs (1 when none is declared), read
    like any other resource of the distill stage (the most specific level wins)."""
    per = cluster.benchmarks.get(bench, {})
    for lvl in (per.get("distill"), per.get("default"), cluster.stages.get("distill"), cluster.default):
        if lvl is not None and lvl.segments is not None:
            return lvl.segments
    return 1


# stages launched with one process per GPU (``torchrun``) when their job has more than one GPU
TORCHRUN_STAGES = ("distill", "evaluate")


def torchrun_cmd(stage: str, cmd: list[str], resources: dict) -> list[str]:
    """``cmd`` (``mct ...``) as ``torchrun --standalone --nproc_per_node=<gpus> -m mct.cli ...``
    for a data-parallel stage whose job has more than one GPU; else ``cmd`` unchanged."""
    gpus = int(resources.get("gpu") or 0)
    if stage not in TORCHRUN_STAGES or gpus <= 1:
        return list(cmd)
    return ["torchrun", "--standalone", f"--nproc_per_node={gpus}", "-m", "mct.cli", *cmd[1:]]
