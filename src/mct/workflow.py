"""The pipeline's stage table: one source of truth for Snakemake and DVC.

For a config, :class:`Pipeline` lists every job the pipeline runs: its name, the
``mct`` command, the files it reads (outputs of other jobs, and the source files of
the code it runs), the files it writes (``outs``, ``metrics``, ``plots``), the
resolved config it depends on (``params``, hashed for Snakemake, as config-file keys
for DVC) and its cluster resources. The jobs come from each configured benchmark's
declared ``stages`` (see :mod:`mct.benchmarks.base`) and the results layout below.

The Snakemake rules (``workflow/rules/*.smk``) take their inputs, outputs, params,
logs and resources from this table; ``dvc.yaml`` is generated from it
(``mct workflow dvc``), and ``workflow/schemas/config.schema.yaml`` is
:func:`config_schema` (``mct config schema``). Tests check both files are current.

Results layout (paths under ``<results_dir>/<bench>/``; ``{variant}`` per variant)::

    teacher/checkpoint.pt, train_log.csv      teacher_train (or teacher/checkpoint.pt: teacher_fetch,
                                              the weights or a manifest naming them)
    teacher/metrics.json                      teacher_eval (teacher/samples.png too, untracked)
    features/checkpoint.pt, metrics.json      features
    clip/checkpoint.pt, metrics.json, train_log.csv   clip
    runs/{variant}/checkpoint.pt, train_log.csv            distill
    runs/{variant}/metrics.json, samples.png               evaluate
    runs/{variant}/correct/metrics.json, before.png, after.png   correct
    summary.csv                               summarize
    <results_dir>/bench/*.json                bench
    <results_dir>/report.html                 report

Dependencies: a text-conditioned teacher_train reads the CLIP model (when the
benchmark has clip); distill reads the teacher (when the benchmark has teacher_train
or teacher_fetch), the CLIP model and the feature network (its FID-vs-iteration curve);
teacher_eval, evaluate and correct read the feature network (the benchmark's own, or
the one of the benchmark named in its ``uses['features']``) and the CLIP model;
correct also the teacher; summarize reads every variant's metrics; bench reads the
teachers and the generator of ``bench.variant``; report reads every result except
checkpoints.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import os
import posixpath
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

import yaml

from .config import from_dict, json_schema, load_yaml, to_dict
from .errors import ConfigError, MCTError

# ----------------------------------------------------------------------------- stages


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


# in pipeline order; a benchmark runs the ones it lists in ``Benchmark.stages``
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
    Stage("summarize", ("summarize",), "bench", outs=("summary.csv",), doc="one row per variant"),
    Stage("bench", ("bench",), "global", outs=("bench",), directory=True,
          doc="sampling speed, EM overhead and memory"),
    Stage("report", ("report",), "global", outs=("report.html",), doc="the HTML report"),
)}

BENCH_STAGES = tuple(n for n, s in STAGES.items() if s.scope != "global")
GLOBAL_STAGES = tuple(n for n, s in STAGES.items() if s.scope == "global")
# global stages run only where their module exists (they land separately)
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


# ----------------------------------------------------------------------------- cluster resources


@dataclass(frozen=True)
class ResourceSpec:
    """Resources of a job; unset keys come from the level above (built-in defaults <
    cluster.default < cluster.stages.<stage> < cluster.benchmarks.<bench>.default <
    cluster.benchmarks.<bench>.<stage>).

    gpus: GPUs per job (Snakemake resource ``gpu``, which the SLURM executor turns into
    ``--gpus``). cpus: threads (``--cpus-per-task``). mem_mb: memory in MB. runtime:
    wall-clock limit in minutes. gpu_model, partition (``slurm_partition``),
    slurm_extra: passed to the SLURM executor as they are."""

    gpus: Optional[int] = None
    cpus: Optional[int] = None
    mem_mb: Optional[int] = None
    runtime: Optional[int] = None
    gpu_model: Optional[str] = None
    partition: Optional[str] = None
    slurm_extra: Optional[str] = None

    def __post_init__(self):
        for name, lo in (("gpus", 0), ("cpus", 1), ("mem_mb", 1), ("runtime", 1)):
            v = getattr(self, name)
            if v is not None and v < lo:
                raise ConfigError(f"{name} must be >= {lo}, got {v}")


@dataclass(frozen=True)
class ClusterConfig:
    """The ``cluster`` section: resources per job for ``--profile workflow/profiles/slurm``
    (and ``threads`` locally). ``stages`` maps a stage name (distill, evaluate, ...) to
    resources; ``benchmarks`` maps a benchmark to {'default' or a stage name: resources}."""

    default: ResourceSpec = field(default_factory=ResourceSpec)
    stages: dict[str, ResourceSpec] = field(default_factory=dict)
    benchmarks: dict[str, dict[str, ResourceSpec]] = field(default_factory=dict)

    def __post_init__(self):
        from .benchmarks.base import REGISTRY

        for st in self.stages:
            if st not in STAGES:
                raise ConfigError(f"stages.{st}: unknown stage (stages: {', '.join(STAGES)})")
        for b, per in self.benchmarks.items():
            if b not in REGISTRY:
                raise ConfigError(f"benchmarks.{b}: unknown benchmark (known: {', '.join(REGISTRY)})")
            for st in per:
                if st != "default" and st not in BENCH_STAGES:
                    raise ConfigError(f"benchmarks.{b}.{st}: unknown stage (default or one of {', '.join(BENCH_STAGES)})")


BUILTIN_RESOURCES = {"gpus": 0, "cpus": 1, "mem_mb": 4000, "runtime": 60}
# a config with device cuda: the stages that run networks get a GPU by default
GPU_STAGES = ("teacher_train", "teacher_eval", "features", "clip", "distill", "evaluate", "correct", "bench")
BUILTIN_CUDA_RESOURCES = {"gpus": 1, "cpus": 8, "mem_mb": 64000, "runtime": 720}
BUILTIN_CUDA_RUNTIME = {"distill": 2880}


def parse_cluster(raw: dict) -> ClusterConfig:
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


# stages launched with one process per GPU (``torchrun``) when their job has more than one GPU
TORCHRUN_STAGES = ("distill", "evaluate")


def torchrun_cmd(stage: str, cmd: list[str], resources: dict) -> list[str]:
    """``cmd`` (``mct ...``) as ``torchrun --standalone --nproc_per_node=<gpus> -m mct.cli ...``
    for a data-parallel stage whose job has more than one GPU; else ``cmd`` unchanged."""
    gpus = int(resources.get("gpu") or 0)
    if stage not in TORCHRUN_STAGES or gpus <= 1:
        return list(cmd)
    return ["torchrun", "--standalone", f"--nproc_per_node={gpus}", "-m", "mct.cli", *cmd[1:]]


# ----------------------------------------------------------------------------- code dependencies


def package_dir(base: str | os.PathLike = ".") -> Path:
    """The ``mct`` sources the jobs' code dependencies point at: ``<base>/src/mct`` when
    this checkout has one, else the imported package."""
    local = Path(base) / "src" / "mct"
    if (local / "__init__.py").exists():
        return local
    return Path(__file__).resolve().parent


def _module_file(pkg: Path, modname: str) -> Optional[Path]:
    p = pkg.parent.joinpath(*modname.split("."))
    if (p / "__init__.py").is_file():
        return p / "__init__.py"
    if p.with_suffix(".py").is_file():
        return p.with_suffix(".py")
    return None


def _imported(path: Path, modname: str) -> set[str]:
    """mct modules imported anywhere in ``path`` (also inside functions); names that
    are not modules (``from .io import write_json``) are dropped by the caller."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    except SyntaxError as exc:
        raise MCTError(f"cannot read the imports of {path}: {exc}") from None
    pkg = modname if path.name == "__init__.py" else modname.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = pkg.split(".")
                if node.level > 1:
                    parts = parts[:-(node.level - 1)]
                mod = ".".join(parts + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names)
    return {m for m in found if m == "mct" or m.startswith("mct.")}


def code_files(modules: Iterable[str], pkg: Path) -> list[Path]:
    """Source files of ``modules`` and of every mct module they import, transitively
    (with the packages' ``__init__.py`` and non-Python files beside the modules, such
    as templates)."""
    todo = list(modules)
    seen: set[str] = set()
    files: set[Path] = set()
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        path = _module_file(pkg, mod)
        if path is None:
            continue
        files.add(path)
        parent = mod.rpartition(".")[0]
        if parent:
            todo.append(parent)
        todo.extend(_imported(path, mod))
        if path.parent != pkg:
            files.update(p for p in path.parent.iterdir()
                         if p.is_file() and p.suffix not in (".py", ".pyc") and not p.name.startswith("."))
    return sorted(files)


# ----------------------------------------------------------------------------- jobs


@dataclass(frozen=True)
class Job:
    """One job of the pipeline. ``deps``: outputs of other jobs; ``code``: source files."""

    name: str
    stage: str
    bench: Optional[str]
    variant: Optional[str]
    cmd: tuple[str, ...]
    deps: tuple[str, ...]
    code: tuple[str, ...]
    outs: tuple[str, ...]
    metrics: tuple[str, ...]
    plots: tuple[str, ...]
    params: Any
    param_keys: tuple[str, ...]
    resources: dict
    log: str

    @property
    def shell(self) -> str:
        return shlex.join(self.cmd)

    @property
    def config_hash(self) -> str:
        blob = json.dumps(self.params, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @property
    def files(self) -> tuple[str, ...]:
        return self.outs + self.metrics + self.plots

    @property
    def inputs(self) -> list[str]:
        return list(self.deps) + list(self.code)


def _load_benchmark(name: str):
    """The registered benchmark, or None while its module does not exist yet."""
    import importlib.util

    from .benchmarks.base import REGISTRY, get_benchmark

    if importlib.util.find_spec(REGISTRY[name]) is None:
        return None
    return get_benchmark(name)


class Pipeline:
    """Every job of one config, in an order that respects the dependencies.

    ``config_path``: the file the ``mct`` commands read (as they will name it);
    ``raw``: its content (read from ``config_path`` when None); ``base``: the directory
    the paths are relative to (the repository root, where Snakemake and DVC run)."""

    def __init__(self, config_path: str, raw: Optional[dict] = None, base: str | os.PathLike = "."):
        from .benchmarks.base import get_benchmark, section_of, validate_all
        from .cli import RootConfig

        self.config_path = config_path
        self.raw = load_yaml(Path(base) / config_path) if raw is None else raw
        root = from_dict(RootConfig, self.raw, "config")
        validate_all(self.raw)
        self.cluster = parse_cluster(self.raw)
        self.base = Path(base)
        self.results_dir = posixpath.normpath(root.results_dir)
        self.device = root.device
        self.pkg = package_dir(base)
        self.benches = {}
        self.sections = {}
        for name in (self.raw.get("benchmarks") or {}):
            if not NAME_RE.match(name):
                raise ConfigError(f"benchmarks.{name}: a benchmark name is letters, digits, '-' and '_'")
            self.benches[name] = get_benchmark(name)
            self.sections[name] = section_of(self.raw, name)
        self._code_cache: dict[tuple[str, ...], tuple[str, ...]] = {}
        self.jobs: list[Job] = []
        self._by_key: dict[tuple, Job] = {}
        self._build()

    # --- helpers
    def _code(self, modules: tuple[str, ...]) -> tuple[str, ...]:
        if modules not in self._code_cache:
            files = code_files(modules, self.pkg)
            cli = self.pkg / "cli.py"
            files = sorted(set(files) | ({cli} if cli.exists() else set()))
            self._code_cache[modules] = tuple(_rel(p, self.base) for p in files)
        return self._code_cache[modules]

    def stages_of(self, bench: str) -> tuple[str, ...]:
        declared = tuple(self.benches[bench].stages)
        unknown = [s for s in declared if s not in BENCH_STAGES]
        if unknown:
            raise MCTError(f"benchmark {bench} declares unknown stage(s) {', '.join(unknown)} "
                           f"(the stage table has {', '.join(BENCH_STAGES)})")
        return tuple(s for s in BENCH_STAGES if s in declared)

    def has(self, stage: str, bench: Optional[str] = None) -> bool:
        if bench is None:
            return any(j.stage == stage for j in self.jobs)
        return stage in self.stages_of(bench)

    def variants(self, bench: str) -> list[str]:
        names = self.benches[bench].variant_names(self.sections[bench])
        for v in names:
            if not NAME_RE.match(str(v)):
                raise ConfigError(f"benchmarks.{bench}.variants.{v}: a variant name is letters, digits, '-' and '_' "
                                  "(it names a directory and a job)")
        return names

    def _path(self, stage: str, relpath: str, bench: Optional[str], variant: Optional[str] = None) -> str:
        return stage_path(stage, relpath, self.results_dir, bench, variant)

    def _teacher(self, bench: str) -> list[str]:
        for st in ("teacher_train", "teacher_fetch"):
            if self.has(st, bench):
                return [self._path(st, "teacher/checkpoint.pt", bench)]
        return []

    def _features(self, bench: str) -> list[str]:
        if self.has("features", bench):
            return [self._path("features", "features/checkpoint.pt", bench)]
        other = (getattr(self.benches[bench], "uses", None) or {}).get("features")
        if other is None:
            return []
        if other not in self.benches or not self.has("features", other):
            raise ConfigError(f"benchmark {bench} scores with the feature network of {other}: "
                              f"add a benchmarks.{other} section to this config")
        return [self._path("features", "features/checkpoint.pt", other)]

    def _clip(self, bench: str) -> list[str]:
        return [self._path("clip", "clip/checkpoint.pt", bench)] if self.has("clip", bench) else []

    def _resolved(self, bench: str, stage: str, variant: Optional[str]) -> tuple[Any, tuple[str, ...]]:
        """The resolved config one job depends on, and its keys in the config file (for DVC)."""
        b, section = self.benches[bench], self.sections[bench]
        prefix = f"benchmarks.{bench}"
        present = [k for k in section if k != "variants"]
        cfg = to_dict(b.parse(section, variant))
        cfg.pop("variants", None)
        if variant is not None:
            return cfg, tuple(f"{prefix}.{k}" for k in present) + (f"{prefix}.variants.{variant}",)
        keys = (getattr(b, "stage_params", None) or {}).get(stage)
        if keys is not None:
            cfg = {k: cfg[k] for k in keys if k in cfg}
            present = [k for k in present if k in keys]
        return cfg, tuple(f"{prefix}.{k}" for k in present)

    def _add(self, stage: str, bench: Optional[str], variant: Optional[str], deps: list[str],
             modules: tuple[str, ...], params: Any, param_keys: tuple[str, ...]):
        spec = STAGES[stage]
        name = "_".join(x for x in (stage, bench, variant) if x is not None)
        cmd = ["mct", *spec.argv, "--config", self.config_path]
        if bench is not None:
            cmd += ["--bench", bench]
        if variant is not None:
            cmd += ["--variant", variant]
        resources = resolve_resources(self.cluster, stage, bench, self.device)
        cmd = torchrun_cmd(stage, cmd, resources)
        job = Job(name=name, stage=stage, bench=bench, variant=variant, cmd=tuple(cmd),
                  deps=tuple(dict.fromkeys(deps)), code=self._code(modules),
                  outs=tuple(self._path(stage, p, bench, variant) for p in spec.outs),
                  metrics=tuple(self._path(stage, p, bench, variant) for p in spec.metrics),
                  plots=tuple(self._path(stage, p, bench, variant) for p in spec.plots),
                  params=params, param_keys=param_keys,
                  resources=resources, log=log_path(stage, bench, variant))
        if any(j.name == name for j in self.jobs):
            raise ConfigError(f"two jobs would both be named {name!r}: rename a benchmark variant")
        self.jobs.append(job)
        self._by_key[(stage, bench, variant)] = job

    @staticmethod
    def _correct_variants(bench: str, variants) -> tuple:
        """The MCMC-correction figure is of the main run (the paper's); other variants skip it."""
        from .benchmarks.base import get_benchmark

        wanted = tuple(getattr(get_benchmark(bench), "correct_variants", ("mct",)))
        chosen = tuple(v for v in variants if v in wanted)
        return chosen or tuple(variants[:1])

    def _build(self):
        from .benchmarks.base import REGISTRY

        for bench in self.benches:
            stages = self.stages_of(bench)
            modules = (REGISTRY[bench], "mct.benchmarks.base")
            variants = self.variants(bench)
            teacher, features, clip = self._teacher(bench), self._features(bench), self._clip(bench)
            for stage in stages:
                spec = STAGES[stage]
                if spec.scope == "variant":
                    for v in variants:
                        if stage == "correct" and v not in self._correct_variants(bench, variants):
                            continue
                        run_ckpt = [self._path("distill", "runs/{variant}/checkpoint.pt", bench, v)]
                        # distill reads the feature network too: its FID-vs-iteration curve (eval_log.csv)
                        deps = {"distill": teacher + clip + features,
                                "evaluate": run_ckpt + features + clip,
                                "correct": run_ckpt + teacher + features + clip}[stage]
                        params, keys = self._resolved(bench, stage, v)
                        self._add(stage, bench, v, deps, modules, params, keys)
                    continue
                if stage == "teacher_eval":
                    deps = teacher + features + clip
                elif stage == "teacher_train":
                    deps = list(clip)  # a text-conditioned teacher (digits-text) is conditioned on the CLIP text tower
                elif stage == "summarize":
                    deps = [f for j in self.jobs if j.bench == bench and j.stage in ("teacher_eval", "evaluate", "correct")
                            for f in j.metrics]
                else:
                    deps = []
                params, keys = self._resolved(bench, stage, None)
                if stage == "summarize":
                    params = {"config": params, "variants": variants}
                self._add(stage, bench, None, deps, modules, params, keys)
        for stage in GLOBAL_STAGES:
            mod = GLOBAL_MODULES[stage]
            if _module_file(self.pkg, mod) is None:
                continue
            section = self.raw.get(stage) or {}
            if stage == "bench":
                deps = self._bench_deps()
            else:
                deps = [f for j in self.jobs for f in j.files if not f.endswith(".pt")]
            keys = (stage,) if stage in self.raw else ()
            self._add(stage, None, None, deps, (mod,), {"section": section, "benchmarks": list(self.benches)}, keys)

    def _bench_deps(self) -> list[str]:
        """``mct bench`` measures each benchmark's teacher and the generator of the variant
        ``bench.variant`` names (default mct; else the first variant), trained where they exist."""
        import importlib

        cls = getattr(importlib.import_module(GLOBAL_MODULES["bench"]), "BenchConfig", None)
        section = self.raw.get("bench") or {}
        variant = getattr(from_dict(cls, section, "config.bench"), "variant", "mct") if cls else section.get("variant", "mct")
        deps = []
        for b in self.benches:
            deps += self._teacher(b)
            variants = self.variants(b)
            if self.has("distill", b) and variants:
                v = variant if variant in variants else variants[0]
                deps.append(self._path("distill", "runs/{variant}/checkpoint.pt", b, v))
        return deps

    # --- queries
    def job(self, stage: str, bench: Optional[str] = None, variant: Optional[str] = None) -> Job:
        try:
            return self._by_key[(stage, bench, variant)]
        except KeyError:
            what = " ".join(x for x in (bench, variant) if x)
            raise MCTError(f"no {stage} job for {what or 'this config'}") from None

    def benches_with(self, stage: str) -> list[str]:
        return [b for b in self.benches if self.has(stage, b)]

    def targets(self) -> list[str]:
        """Every file the pipeline makes (what ``rule all`` asks for)."""
        return [f for j in self.jobs for f in j.files]

    # --- DVC
    def dvc_stages(self) -> dict:
        stages = {}
        for j in self.jobs:
            st: dict[str, Any] = {"cmd": j.shell, "deps": list(j.code) + list(j.deps)}
            if j.param_keys:
                st["params"] = [{self.config_path: list(j.param_keys)}]
            if j.outs:
                st["outs"] = list(j.outs)
            if j.metrics:
                st["metrics"] = list(j.metrics)
            if j.plots:
                st["plots"] = [{p: {"x": "iteration"}} for p in j.plots]
            stages[j.name] = st
        return {"stages": stages}

    def dvc_yaml(self) -> str:
        if posixpath.isabs(self.results_dir) or self.results_dir.split("/")[0] == "..":
            raise ConfigError(f"results_dir {self.results_dir!r}: dvc.yaml needs a results_dir inside the repository")
        header = (f"# Generated by `mct workflow dvc --config {self.config_path}` from the stage table in\n"
                  "# src/mct/workflow.py (the Snakemake rules use the same table). Do not edit: regenerate.\n")
        return header + yaml.safe_dump(self.dvc_stages(), sort_keys=False, width=120)


def _rel(path: Path, base: Path) -> str:
    try:
        return Path(os.path.relpath(path.resolve(), Path(base).resolve())).as_posix()
    except ValueError:  # another drive
        return path.resolve().as_posix()


# ----------------------------------------------------------------------------- entry points used by the CLI


def render_dvc_yaml(config_path: str = "config/default.yaml", base: str | os.PathLike = ".") -> str:
    return Pipeline(_posix(config_path), base=base).dvc_yaml()


def write_dvc_yaml(config_path: str = "config/default.yaml", out_path: str = "dvc.yaml") -> str:
    """Write ``dvc.yaml`` for ``config_path`` (paths relative to the directory of ``out_path``)."""
    from .io import write_text

    out = Path(out_path)
    base = out.parent
    cfg = _posix(os.path.relpath(config_path, base))
    write_text(out, Pipeline(cfg, raw=load_yaml(config_path), base=base).dvc_yaml())
    return str(out)


def _posix(path: str) -> str:
    return Path(path).as_posix()


def config_schema() -> dict:
    """JSON schema (draft 2020-12) of a config file: the root, each registered benchmark's
    section (``json_schema(config_cls)`` under ``benchmarks.<name>``), ``cluster`` and,
    where their modules define them, ``report`` and ``bench``."""
    import importlib
    import importlib.util

    from .benchmarks.base import REGISTRY
    from .cli import RootConfig

    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "MCT config"}
    schema.update(json_schema(RootConfig))
    props = schema["properties"]
    benches = {}
    for name in REGISTRY:
        bench = _load_benchmark(name)
        if bench is not None:
            benches[name] = json_schema(bench.config_cls)
    props["benchmarks"] = {"type": "object", "additionalProperties": False, "properties": benches,
                           "description": "one section per benchmark that runs; its 'variants' map names to overrides"}
    props["cluster"] = json_schema(ClusterConfig)
    for section, (mod, cls) in {"report": ("mct.report.build", "ReportConfig"), "bench": ("mct.bench", "BenchConfig")}.items():
        if importlib.util.find_spec(mod) is not None:
            config_cls = getattr(importlib.import_module(mod), cls, None)
            if config_cls is not None:
                props[section] = json_schema(config_cls)
    return schema
