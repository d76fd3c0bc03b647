"""The run plan of a paper-scale config, derived from what ``mct rehearse`` measured
(``<results_dir>/rehearsal/<bench>.json``) and what the ``cluster`` section declares.

Why: a global batch of 256 on one GPU needs ~250 GB there (issue 15, bug 1) and a run of
~430 GPU-hours meets every runtime limit (bug 2). The plan says how to split the batch
(GPUs x per-GPU micro-batch x ``train.accumulation``), how long the run takes, how many
runtime-limit jobs ("segments") it needs and how often to checkpoint; ``mct config check``
refuses a config whose per-GPU memory exceeds the declared GPU's.

The memory model (per GPU, data-parallel, every GPU holds the whole training state):
weights of teacher, generator, generator EMA and student score, gradients of generator and
student, their Adam states (all as the record measured them), the batch-independent part of
the activations when the record has it, plus micro-batch x activation memory per sample,
scaled from the record's precision to the run's (2 bytes per element in bf16/fp16 against 4
in fp32; a record made on a CPU measured fp32). At most :data:`USABLE_FRACTION` of a GPU's memory counts as
usable. The time model: the record's FLOP per sample per iteration x batch x iterations,
at the effective FLOP rate of the record's projection (its stated utilisation), with
perfect data-parallel scaling over the GPUs of one node."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..errors import ConfigError, MCTError

# the benchmarks `mct rehearse` measures: the ones whose memory `mct config check` checks
PAPER_BENCHES = ("imagenet64", "imagenet128", "sd15")
USABLE_FRACTION = 0.9       # of a GPU's memory: the CUDA context, NCCL buffers, allocator fragmentation take the rest
ELEMENT_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}   # bytes of one saved activation in each precision
SEGMENT_OVERHEAD_H = 0.5    # per job: start-up (teacher load), the stop margin before the limit, the last checkpoint
CHECKPOINT_WALL_H = 0.5     # checkpoint at least this often (wall hours): the most work a crash loses
MAX_RECORD_BYTES = 1 << 20


@dataclass(frozen=True)
class Rehearsal:
    """The numbers of one rehearsal record the plan uses. flop_rate: effective FLOP/s of
    one GPU of each type, = projection.total_flop / (projection.hours[type] x 3600)."""

    path: str
    params_bytes: dict
    optimizer_bytes: int
    activation_bytes: dict
    activation_precision: str
    flops_per_sample: float
    flop_rate: dict
    flops_per_sample_checkpointed: Optional[float] = None
    grads_bytes: Optional[int] = None          # measured, else the generator's and student's weights' size
    activation_fixed_bytes: Optional[dict] = None   # batch-independent part of the activations, by mode

    def flops(self, checkpointed: bool) -> float:
        """FLOP per sample per iteration; with checkpointing, the recomputing count when the record has one."""
        if checkpointed and self.flops_per_sample_checkpointed is not None:
            return self.flops_per_sample_checkpointed
        return self.flops_per_sample

    @property
    def state_bytes(self) -> int:
        """What every GPU holds whatever its batch: teacher, generator, generator EMA and
        student weights, generator and student gradients, Adam states."""
        p = self.params_bytes
        grads = self.grads_bytes if self.grads_bytes is not None else p["generator"] + p["student"]
        return p["teacher"] + p["generator"] + p["generator_ema"] + p["student"] + grads + self.optimizer_bytes

    def fixed_bytes(self, checkpointed: bool) -> int:
        """:attr:`state_bytes` plus the batch-independent activations (when the record has them)."""
        extra = (self.activation_fixed_bytes or {}).get("checkpointed" if checkpointed else "none", 0)
        return self.state_bytes + int(extra)

    def sample_bytes(self, precision: str, checkpointed: bool) -> float:
        """Activation memory of one sample in ``precision`` (with or without activation checkpointing)."""
        per = self.activation_bytes["checkpointed" if checkpointed else "none"]
        return per * ELEMENT_BYTES[precision] / ELEMENT_BYTES[self.activation_precision]


def _get(data: Any, key: str, path: str, kind=int) -> Any:
    """``data[a][b]...`` for the dotted ``key``; one MCTError line when it is absent or not a positive number."""
    node = data
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise MCTError(f"rehearsal record {path} has no {key} (rewrite it with `mct rehearse`)")
        node = node[part]
    if kind is dict:
        if not isinstance(node, dict):
            raise MCTError(f"rehearsal record {path}: {key} must be a mapping")
        return node
    if isinstance(node, bool) or not isinstance(node, (int, float)) or not math.isfinite(node) or node < 0:
        raise MCTError(f"rehearsal record {path}: {key} must be a number >= 0, got {str(node)[:40]!r}")
    return kind(node)


def read_rehearsal(path: str | Path) -> Rehearsal:
    """The rehearsal record at ``path``, its keys checked (one MCTError line naming a bad one)."""
    from ..io import read_capped

    path = str(path)
    try:
        data = json.loads(read_capped(path, MAX_RECORD_BYTES, "rehearsal record"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MCTError(f"rehearsal record {path} is not JSON ({str(exc)[:80]})") from None
    params = {k: _get(data, f"memory.params_bytes.{k}", path) for k in ("generator", "student", "teacher")}
    memory = _get(data, "memory", path, dict)
    params["generator_ema"] = (_get(data, "memory.params_bytes.generator_ema", path)
                               if "generator_ema" in memory["params_bytes"] else params["generator"])
    grads = _get(data, "memory.grads_bytes", path) if memory.get("grads_bytes") is not None else None
    act = {k: _get(data, f"memory.activation_bytes_per_sample.{k}", path) for k in ("none", "checkpointed")}
    fixed = None
    if isinstance(memory.get("activation_fixed_bytes"), dict):
        fixed = {k: _get(data, f"memory.activation_fixed_bytes.{k}", path)
                 for k in ("none", "checkpointed") if k in memory["activation_fixed_bytes"]}
    # the precision the activations were measured in: stated, else fp32 on a CPU (autocast is CUDA-only
    # here), else the run's training precision
    settings = data.get("settings") if isinstance(data.get("settings"), dict) else {}
    precision = memory.get("activation_precision") or data.get("precision") or (
        "fp32" if data.get("device", "cpu") == "cpu" else settings.get("train_precision", "fp32"))
    if precision not in ELEMENT_BYTES:
        raise MCTError(f"rehearsal record {path}: activation precision {str(precision)[:20]!r} is not one of "
                       f"{', '.join(ELEMENT_BYTES)}")
    total = _get(data, "projection.total_flop", path, float)
    key = "projection.hours" if "hours" in _get(data, "projection", path, dict) else "projection.gpu_hours"
    hours = _get(data, key, path, dict)
    rate = {}
    for gpu in hours:
        h = _get(data, f"{key}.{gpu}", path, float)
        if h > 0:
            rate[gpu] = total / (h * 3600.0)
    ck = None
    if "iteration_checkpointed" in _get(data, "flops_per_sample", path, dict):
        ck = _get(data, "flops_per_sample.iteration_checkpointed", path, float)
    return Rehearsal(path=path, params_bytes=params, optimizer_bytes=_get(data, "memory.optimizer_bytes", path),
                     activation_bytes=act, activation_precision=precision,
                     flops_per_sample=_get(data, "flops_per_sample.iteration", path, float), flop_rate=rate,
                     flops_per_sample_checkpointed=ck, grads_bytes=grads, activation_fixed_bytes=fixed)


def record_path(results_dir: str | Path, bench: str) -> Path:
    return Path(results_dir) / "rehearsal" / f"{bench}.json"


@dataclass(frozen=True)
class RunShape:
    """How a config runs one benchmark variant's distill job (what the memory check reads)."""

    bench: str
    variant: Optional[str]
    batch_size: int
    accumulation: int
    gpus: int
    precision: str
    checkpointing: bool
    iterations: int

    @property
    def micro_batch(self) -> int:
        return self.batch_size // (self.gpus * self.accumulation)


def run_shape(raw: dict, bench: str, variant: Optional[str] = None) -> RunShape:
    """The batch split, precision and activation checkpointing of ``bench`` (``variant``) in
    the config ``raw``; GPUs: the distill job's resolved ``gpus`` (at least 1)."""
    from ..benchmarks.base import get_benchmark, section_of
    from .resources import parse_cluster, resolve_resources

    cfg = get_benchmark(bench).parse(section_of(raw, bench), variant)
    res = resolve_resources(parse_cluster(raw), "distill", bench, str(raw.get("device") or "cpu"))
    checkpointing = any(bool(getattr(cfg, k, False))
                        for k in ("checkpointing", "activation_checkpointing", "gradient_checkpointing"))
    precision = getattr(cfg, "precision", None) or cfg.train.precision
    return RunShape(bench=bench, variant=variant, batch_size=cfg.train.batch_size, accumulation=cfg.train.accumulation,
                    gpus=max(1, int(res["gpu"])), precision=precision, checkpointing=checkpointing,
                    iterations=cfg.train.iterations)


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


def check_memory(raw: dict, results_dir: str | Path, config_name: str) -> list[str]:
    """One line per paper-scale benchmark of a CUDA config: whether its distill job fits the
    declared GPU, or that no rehearsal record exists to tell. A variant whose per-GPU memory
    exceeds :data:`USABLE_FRACTION` of the GPU's is a ConfigError (one line)."""
    from ..benchmarks.base import get_benchmark, section_of
    from .resources import parse_cluster

    if not str(raw.get("device") or "cpu").startswith("cuda"):
        return []
    cluster = parse_cluster(raw)
    usable = USABLE_FRACTION * cluster.gpu_memory_gb * 1e9
    lines = []
    for bench in (raw.get("benchmarks") or {}):
        if bench not in PAPER_BENCHES:
            continue
        gpus = run_shape(raw, bench).gpus
        if gpus > cluster.gpus_per_node:  # torchrun --standalone: one job, one node
            raise ConfigError(f"{bench}: the distill job asks for {gpus} GPUs but a node has {cluster.gpus_per_node} "
                              "(cluster.gpus_per_node); a distill job runs on one node")
        path = record_path(results_dir, bench)
        if not path.exists():
            lines.append(f"{bench}: GPU memory not checked: no rehearsal record {path} "
                         f"(run `mct rehearse --config {config_name} --bench {bench}`)")
            continue
        rec = read_rehearsal(path)
        variants = get_benchmark(bench).variant_names(section_of(raw, bench))
        worst = None
        for variant in [None, *variants]:
            shape = run_shape(raw, bench, variant)
            where = f"{bench}" + (f" variant {variant}" if variant else "")
            if shape.batch_size % (shape.gpus * shape.accumulation):
                raise ConfigError(f"{where}: train.batch_size {shape.batch_size} is not divisible by {shape.gpus} GPUs "
                                  f"x accumulation {shape.accumulation} (run `mct plan --config {config_name}`)")
            need = rec.fixed_bytes(shape.checkpointing) + shape.micro_batch * rec.sample_bytes(shape.precision,
                                                                                                shape.checkpointing)
            if need > usable:
                raise ConfigError(
                    f"{where} does not fit its GPU: {shape.micro_batch} samples per GPU ({shape.batch_size} / "
                    f"{shape.gpus} GPUs / accumulation {shape.accumulation}) need {_gb(need)} "
                    f"(weights, gradients and Adam states {_gb(rec.fixed_bytes(shape.checkpointing))} + activations "
                    f"{_gb(rec.sample_bytes(shape.precision, shape.checkpointing))} per sample in {shape.precision}"
                    f"{', checkpointed' if shape.checkpointing else ''}) against {_gb(usable)} usable of one "
                    f"{cluster.gpu_memory_gb:g} GB GPU ({path}); `mct plan --config {config_name}` derives a split "
                    "that fits")
            if worst is None or need > worst[0]:
                worst = (need, shape)
        need, shape = worst
        lines.append(f"{bench}: fits: {shape.micro_batch} samples per GPU x {shape.gpus} GPUs x accumulation "
                     f"{shape.accumulation} need {_gb(need)} of {_gb(usable)} usable per GPU ({path})")
    return lines


@dataclass(frozen=True)
class Plan:
    """The derived run of one benchmark (see the module docstring for the models)."""

    bench: str
    record: str
    gpu_type: str
    gpu_mem_gb: float
    batch_size: int
    gpus: int
    micro_batch: int
    accumulation: int
    max_micro_batch: int
    checkpointing: bool
    checkpointing_added: bool
    precision: str
    state_bytes: int
    sample_bytes: float
    total_flop: float
    gpu_hours: float
    wall_hours: float
    max_runtime_min: int
    segments: int
    runtime_min: int
    iterations: int
    checkpoint_every: int

    @property
    def memory_bytes(self) -> float:
        return self.state_bytes + self.micro_batch * self.sample_bytes

    def lines(self) -> list[str]:
        ck = ", activation checkpointing on" if self.checkpointing else ""
        return [
            f"{self.bench}: from {self.record}, {self.gpu_type} ({self.gpu_mem_gb:g} GB per GPU, "
            f"{USABLE_FRACTION:.0%} usable)",
            f"  memory per GPU: {_gb(self.state_bytes)} weights, gradients and Adam states + {self.micro_batch} x "
            f"{_gb(self.sample_bytes)} activations ({self.precision}{ck}) = {_gb(self.memory_bytes)}; "
            f"at most {self.max_micro_batch} samples per GPU fit",
            f"  batch {self.batch_size} = {self.gpus} GPU(s) x {self.micro_batch} per GPU x accumulation "
            f"{self.accumulation}",
            f"  cost: {self.total_flop:.3g} FLOP = {self.gpu_hours:,.0f} GPU-hours; {self.wall_hours:,.1f} h on "
            f"{self.gpus} GPU(s) in {self.segments} job(s) of {self.runtime_min} min "
            f"(limit {self.max_runtime_min} min)",
            f"  config: benchmarks.{self.bench}.train: {{batch_size: {self.batch_size}, accumulation: "
            f"{self.accumulation}, checkpoint_every: {self.checkpoint_every}}}"
            + ("; and turn activation checkpointing on (the config has it off)" if self.checkpointing_added else ""),
            f"  config: cluster.benchmarks.{self.bench}.distill: {{gpus: {self.gpus}, runtime: {self.runtime_min}, "
            f"segments: {self.segments}}}",
        ]


def _nice_floor(x: float) -> int:
    """The largest of 1, 2, 5, 10, 20, 50, ... not above ``x`` (at least 1)."""
    if x < 1:
        return 1
    exp = 10 ** math.floor(math.log10(x))
    return max(m * exp for m in (1, 2, 5) if m * exp <= x)


def make_plan(raw: dict, bench: str, rec: Rehearsal) -> Plan:
    """The plan of ``bench``'s distill job: the fewest GPUs (divisors of the global batch) that
    finish the run within one ``cluster.max_runtime`` job, else every GPU of a node; the
    fewest accumulation steps whose micro-batch fits (activation checkpointing when the
    config asks for it, or when not even one sample fits without); the segments
    the run needs at ``cluster.max_runtime``, each job asking for an equal share of the wall
    time plus :data:`SEGMENT_OVERHEAD_H`; a checkpoint every :data:`CHECKPOINT_WALL_H` hours."""
    from .resources import parse_cluster

    cluster = parse_cluster(raw)
    shape = run_shape(raw, bench)
    rate = rec.flop_rate.get(cluster.gpu_type)
    if rate is None:
        raise MCTError(f"rehearsal record {rec.path} projects no hours for cluster.gpu_type {cluster.gpu_type!r} "
                       f"(it has: {', '.join(rec.flop_rate) or 'none'})")
    usable = USABLE_FRACTION * cluster.gpu_memory_gb * 1e9
    checkpointing = shape.checkpointing

    def fit(ck: bool) -> int:
        return max(0, math.floor((usable - rec.fixed_bytes(ck)) / rec.sample_bytes(shape.precision, ck)))

    most = fit(checkpointing)
    if most < 1 and not checkpointing and fit(True) >= 1:
        checkpointing, most = True, fit(True)
    if most < 1:
        raise MCTError(f"{bench}: not one sample fits a {cluster.gpu_memory_gb:g} GB GPU: weights, gradients and "
                       f"Adam states alone take {_gb(rec.fixed_bytes(True))} of {_gb(usable)} usable ({rec.path})")
    batch = shape.batch_size
    total = rec.flops(checkpointing) * batch * shape.iterations
    gpu_hours = total / rate / 3600.0
    limit_h = cluster.max_runtime / 60.0
    if limit_h <= SEGMENT_OVERHEAD_H:
        raise MCTError(f"cluster.max_runtime {cluster.max_runtime} min leaves no time to train after "
                       f"{SEGMENT_OVERHEAD_H * 60:.0f} min of start-up and checkpointing per job")
    # the fewest GPUs that finish in one job (fewer GPUs: larger per-GPU batches, better utilisation,
    # shorter queues), else every GPU of a node; always a divisor of the global batch
    counts = [g for g in range(1, cluster.gpus_per_node + 1) if batch % g == 0]
    gpus = next((g for g in counts if gpu_hours / g <= limit_h - SEGMENT_OVERHEAD_H), counts[-1])
    per_gpu = batch // gpus
    accumulation = next(a for a in range(math.ceil(per_gpu / most), per_gpu + 1) if per_gpu % a == 0)
    wall = gpu_hours / gpus
    segments = max(1, math.ceil(wall / (limit_h - SEGMENT_OVERHEAD_H)))
    runtime = min(cluster.max_runtime, math.ceil(wall / segments + SEGMENT_OVERHEAD_H) * 60)
    every = min(shape.iterations, _nice_floor(shape.iterations / max(wall, 1e-9) * CHECKPOINT_WALL_H))
    return Plan(bench=bench, record=rec.path, gpu_type=cluster.gpu_type, gpu_mem_gb=cluster.gpu_memory_gb,
                batch_size=batch, gpus=gpus, micro_batch=per_gpu // accumulation, accumulation=accumulation,
                max_micro_batch=most, checkpointing=checkpointing,
                checkpointing_added=checkpointing and not shape.checkpointing, precision=shape.precision,
                state_bytes=rec.fixed_bytes(checkpointing),
                sample_bytes=rec.sample_bytes(shape.precision, checkpointing),
                total_flop=total, gpu_hours=gpu_hours, wall_hours=wall, max_runtime_min=cluster.max_runtime,
                segments=segments, runtime_min=runtime, iterations=shape.iterations, checkpoint_every=every)


def plan_command(raw: dict, results_dir: str | Path, benches: Optional[list[str]] = None,
                 rehearsal_dir: Optional[str | Path] = None) -> list[str]:
    """``mct plan``: the plan of every paper-scale benchmark of the config (or ``benches``),
    from ``<rehearsal_dir or results_dir/rehearsal>/<bench>.json``."""
    names = benches or [b for b in (raw.get("benchmarks") or {}) if b in PAPER_BENCHES]
    if not names:
        raise MCTError(f"no paper-scale benchmark ({', '.join(PAPER_BENCHES)}) in this config to plan")
    out = []
    for bench in names:
        if bench not in (raw.get("benchmarks") or {}):
            raise MCTError(f"benchmark {bench} is not in this config")
        path = (Path(rehearsal_dir) / f"{bench}.json") if rehearsal_dir is not None else record_path(results_dir, bench)
        if not path.exists():
            raise MCTError(f"no rehearsal record {path}: run `mct rehearse --bench {bench}` first")
        out += make_plan(raw, bench, read_rehearsal(path)).lines()
    return out
