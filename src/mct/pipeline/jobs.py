"""Every job of one config: its name, the ``mct`` command, the files it reads (outputs of
other jobs, and the source files of the code it runs), the files it writes (``outs``,
``metrics``, ``plots``), the resolved config it depends on (``params``, hashed for
Snakemake, as config-file keys for DVC) and its cluster resources. The Snakemake rules
(``workflow/rules/*.smk``) take all of this from :class:`Pipeline`; ``dvc.yaml`` is
written from it by :mod:`mct.pipeline.dvc`.

Dependencies: a text-conditioned teacher_train reads the CLIP model (when the
benchmark has clip); distill reads the teacher (when the benchmark has teacher_train
or teacher_fetch), the CLIP model and the feature network (its FID-vs-iteration curve);
teacher_eval, evaluate and correct read the feature network (the benchmark's own, or
the one of the benchmark named in its ``uses['features']``) and the CLIP model;
correct also the teacher; summarize reads every variant's metrics; bench reads the
teachers and the generator of ``bench.variant``; report reads every result except
checkpoints."""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..config import load_yaml, to_dict
from ..errors import ConfigError, MCTError
from ..root import validate_root
from .code_deps import code_files, package_dir
from .resources import parse_cluster, resolve_resources, torchrun_cmd
from .stages import BENCH_STAGES, GLOBAL_MODULES, GLOBAL_STAGES, NAME_RE, STAGES, log_path, stage_path


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
    def directory(self) -> bool:
        """The stage's outputs are folders (``export/<variant>``, ``bench``)."""
        return STAGES[self.stage].directory

    @property
    def inputs(self) -> list[str]:
        return list(self.deps) + list(self.code)


class Pipeline:
    """Every job of one config, in an order that respects the dependencies.

    ``config_path``: the file the ``mct`` commands read (as they will name it);
    ``raw``: its content (read from ``config_path`` when None); ``base``: the directory
    the paths are relative to (the repository root, where Snakemake and DVC run)."""

    def __init__(self, config_path: str, raw: Optional[dict] = None, base: str | os.PathLike = "."):
        from ..benchmarks.base import get_benchmark, section_of

        self.config_path = config_path
        self.raw = load_yaml(Path(base) / config_path) if raw is None else raw
        root = validate_root(self.raw)
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
        """Source files of a job whose stage runs ``modules``, with the command line and the config
        validation every job runs (those two files alone: their other imports serve other stages)."""
        if modules not in self._code_cache:
            files = set(code_files(modules, self.pkg))
            files |= {f for f in (self.pkg / "cli.py", self.pkg / "root.py") if f.exists()}
            self._code_cache[modules] = tuple(_rel(p, self.base) for p in sorted(files))
        return self._code_cache[modules]

    def stages_of(self, bench: str) -> tuple[str, ...]:
        declared = tuple(self.benches[bench].stages)
        unknown = [s for s in declared if s not in BENCH_STAGES]
        if unknown:
            raise MCTError(f"benchmark {bench} declares unknown stage(s) {', '.join(unknown)} "
                           f"(the stage table has {', '.join(BENCH_STAGES)})")
        if "evaluate" in declared:  # every distilled benchmark's main run is exported (`mct export`)
            declared += ("export",)
        return tuple(s for s in BENCH_STAGES if s in declared)

    def has(self, stage: str, bench: str) -> bool:
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
        keys = b.stage_params.get(stage)
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

    def _correct_variants(self, bench: str, variants: list[str]) -> tuple[str, ...]:
        """The MCMC-correction figure and the exported model are of the main run; other variants skip them."""
        wanted = tuple(self.benches[bench].correct_variants)
        chosen = tuple(v for v in variants if v in wanted)
        return chosen or tuple(variants[:1])

    def _build(self):
        from ..benchmarks.base import module_of

        for bench in self.benches:
            modules = (module_of(bench), "mct.benchmarks.base")
            variants = self.variants(bench)
            teacher, features, clip = self._teacher(bench), self._features(bench), self._clip(bench)
            for stage in self.stages_of(bench):
                if STAGES[stage].scope == "variant":
                    for v in variants:
                        if stage in ("correct", "export") and v not in self._correct_variants(bench, variants):
                            continue
                        run_ckpt = [self._path("distill", "runs/{variant}/checkpoint.pt", bench, v)]
                        # distill reads the feature network too: its FID-vs-iteration curve (eval_log.csv)
                        metrics = [self._path("evaluate", "runs/{variant}/metrics.json", bench, v)]
                        deps = {"distill": teacher + clip + features,
                                "evaluate": run_ckpt + features + clip,
                                "correct": run_ckpt + teacher + features + clip,
                                "export": run_ckpt + metrics + teacher + clip}[stage]
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
            section = self.raw.get(stage) or {}
            if stage == "bench":
                deps = self._bench_deps()
            else:
                deps = [f for j in self.jobs for f in j.files if not f.endswith(".pt")]
            keys = (stage,) if stage in self.raw else ()
            self._add(stage, None, None, deps, (GLOBAL_MODULES[stage],),
                      {"section": section, "benchmarks": list(self.benches)}, keys)

    def _bench_deps(self) -> list[str]:
        """``mct bench`` measures each benchmark's teacher and the generator of the variant
        ``bench.variant`` names (default mct; else the first variant), trained where they exist."""
        from ..bench import parse_bench_config

        variant = parse_bench_config(self.raw).variant
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


def _rel(path: Path, base: Path) -> str:
    try:
        return Path(os.path.relpath(path.resolve(), Path(base).resolve())).as_posix()
    except ValueError:  # another drive
        return path.resolve().as_posix()
