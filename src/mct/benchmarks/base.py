"""What every benchmark declares, and the stages written once for all of them.

A benchmark module is a declaration: its config dataclass, its data, and the few hooks
that really differ between benchmarks (:meth:`Benchmark.build` the teacher and networks,
:meth:`Benchmark.latent_sampler`, :meth:`Benchmark.eval_latents`, :meth:`Benchmark.score`).
The stages the pipeline runs on every benchmark (``distill``, ``evaluate``, ``summarize``)
are written here once; a benchmark overrides one only where its protocol differs (the
paper-scale FID streams 50,000 samples per seed instead of holding them in memory)."""

from __future__ import annotations

import importlib
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from ..config import check_name, config_hash, deep_merge, from_dict, to_dict
from ..errors import ConfigError, MCTError

log = logging.getLogger(__name__)

# name -> module holding ``BENCHMARK`` or ``get_benchmark(name)``; imported on demand
REGISTRY = {
    "toy2d": "mct.benchmarks.toy2d",
    "digits": "mct.benchmarks.digits",
    "mnist": "mct.benchmarks.digits",
    "digits-text": "mct.benchmarks.digits_text",
    "imagenet64": "mct.benchmarks.imagenet",
    "imagenet128": "mct.benchmarks.imagenet",
    "sd15": "mct.benchmarks.sd15",
}

# families: a section named ``<family>-<suffix>`` (e.g. toy2d-grid9) is a benchmark of that family
# under its own name (own results folder, own teacher), so one config can hold several toy mixtures
FAMILIES = {"toy2d": "mct.benchmarks.toy2d"}
# the suffix: a plain name (no '.', '/' or leading '-'), so the results folder stays inside results_dir
FAMILY_SUFFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def module_of(name: str) -> Optional[str]:
    """The module of benchmark ``name``: a REGISTRY entry, or a family's for ``<family>-<suffix>``
    (None: not a benchmark). Imports nothing."""
    if not isinstance(name, str):
        return None
    if name in REGISTRY:
        return REGISTRY[name]
    for family, module in FAMILIES.items():
        if name.startswith(family + "-") and FAMILY_SUFFIX.fullmatch(name[len(family) + 1:]):
            return module
    return None


def family_of(name: str) -> str:
    """The registry name a benchmark behaves as: ``toy2d`` for toy2d-grid9, else ``name``."""
    if name not in REGISTRY:
        for family in FAMILIES:
            if name.startswith(family + "-") and module_of(name) is not None:
                return family
    return name


def known_names() -> str:
    """The benchmark names, for messages: the registry's and the families' patterns."""
    return ", ".join([*REGISTRY, *(f"{f}-<suffix>" for f in FAMILIES)])


# knobs of the variant that describe a run in metrics.json and summary.csv
EM_SETTINGS = ("num_steps", "reparam", "noise_cancel", "gamma_eps", "gamma_z", "z_step")


@dataclass(frozen=True)
class RunContext:
    """Where a stage writes and how it runs (from the root config and the command line)."""

    results_dir: Path
    device: str = "cpu"
    progress: bool = True

    def bench_dir(self, bench: str) -> Path:
        from ..io import inside

        return inside(self.results_dir, bench)

    def run_dir(self, bench: str, variant: str) -> Path:
        from ..io import inside

        return inside(self.results_dir, bench, "runs", variant)


@dataclass
class Parts:
    """What distillation needs from a benchmark. ``teacher``: the denoiser as distilled
    (guidance applied); ``generator``: the one-step g(z, c); ``student``: the student score's
    denoiser; ``record``: what rebuilds the generator's architecture (stored in the checkpoint);
    ``pre_train(rng)``: runs once on a fresh start (e.g. regress g onto the teacher)."""

    teacher: Any
    generator: Any
    student: Any
    record: dict = field(default_factory=dict)
    pre_train: Optional[Callable] = None


class _Stopped(Exception):
    """A seed ended before train.iterations (``stop_after``): the variant's distill is not complete."""


class Benchmark:
    """Base class: a subclass sets ``name``/``config_cls``/``stages`` and implements the hooks."""

    name: str = ""
    config_cls: type = object
    stages: tuple[str, ...] = ()
    # read by the pipeline's stage table: ``uses`` names another benchmark whose output a
    # stage reads, e.g. {"features": "digits"}; ``stage_params`` lists the section keys a
    # per-benchmark stage reads (default: the whole section without its variants)
    uses: dict[str, str] = {}
    stage_params: dict[str, tuple[str, ...]] = {}
    # variants whose one-step samples get the joint MCMC correction stage (the paper's figure)
    correct_variants: tuple[str, ...] = ("mct",)
    # section keys that do not change the trained weights (left out of the run's config hash,
    # so that re-scoring with other evaluation settings needs no retraining)
    untrained_keys: tuple[str, ...] = ("eval", "correct", "features", "variants", "num_threads")
    # metrics.json keys copied into summary.csv after the variant's settings
    summary_metrics: tuple[str, ...] = ()
    # False where ``evaluate`` is the benchmark's own and scores the first training seed only
    # (the streamed paper-scale evaluations): distill then refuses train.seeds > 1 before training
    scores_every_seed: bool = True

    # ------------------------------------------------------------------ config

    def parse(self, section: dict, variant: str | None = None, path: str | None = None):
        """Validate the benchmark's config section, with ``variant``'s overrides applied."""
        path = path or f"benchmarks.{self.name}"
        section = dict(section or {})
        variants = section.get("variants", {}) or {}
        if not isinstance(variants, dict):
            raise ConfigError(f"{path}.variants must be a mapping of variant name to overrides")
        for name in variants:
            check_name(name, "variant name")
        if variant is not None:
            check_name(variant, "variant name")
            if variant not in variants:
                raise ConfigError(f"unknown variant {variant!r} for {self.name} "
                                  f"(configured: {', '.join(variants) or 'none'})")
            override = variants[variant] or {}
            if not isinstance(override, dict):
                raise ConfigError(f"{path}.variants.{variant} must be a mapping of overrides")
            section = deep_merge(section, override)
            path = f"{path}.variants.{variant}"
        section["variants"] = variants
        return from_dict(self.config_cls, section, path)

    def setup(self, section: dict, variant: str | None = None):
        """:meth:`parse`, then apply the section's ``num_threads`` (0 = torch's default). For the
        stages only: parsing alone (config checks, the workflow) changes nothing."""
        cfg = self.parse(section, variant)
        threads = getattr(cfg, "num_threads", 0)
        if threads:
            import torch

            torch.set_num_threads(threads)
        return cfg

    def preflight(self, cfg, ctx: RunContext) -> None:
        """Check every file evaluation reads besides the run (feature and CLIP weights, FID references)
        before the generator is loaded or a sample drawn: one MCTError naming each missing file and
        the key or command that provides it. The embedded benchmarks have none to check here (their
        feature network is required before their first sample, in ``eval_latents``)."""

    def network_bytes(self, cfg) -> Optional[tuple[tuple[int, int], tuple[int, int]]]:
        """(generator, student) as :func:`mct.checkpoint.module_bytes` gives them, for the disk
        estimate of ``mct config check``; None where not estimated (the embedded benchmarks, whose
        networks are small and made from a teacher trained by the pipeline)."""
        return None

    def variant_names(self, section: dict) -> list[str]:
        return list((section or {}).get("variants", {}) or {})

    def run_hash(self, cfg) -> str:
        """Hash of what a variant's weights depend on: the section without ``untrained_keys`` and
        the trainer's runtime knobs. Stored in the checkpoint; evaluate refuses a mismatch."""
        from ..distill.trainer import hashed_train

        rec = to_dict(cfg)
        for key in self.untrained_keys:  # 'eval' drops a section, 'teacher.eval_nfe' one key of it
            *parents, last = key.split(".")
            node = rec
            for p in parents:
                node = node.get(p) if isinstance(node, dict) else None
            if isinstance(node, dict):
                node.pop(last, None)
        if "train" in rec:
            rec["train"] = hashed_train(cfg.train)
        return config_hash({"bench": self.name, **rec})

    def settings(self, cfg) -> dict:
        """The knobs that tell variants apart, as written into metrics.json and summary.csv."""
        em = cfg.em
        out = {"K": em.num_steps}
        out.update({k: getattr(em, k) for k in EM_SETTINGS[1:]})
        out["init"] = self.init_kind(cfg)
        out["seed"] = cfg.train.seed
        return out

    def init_kind(self, cfg) -> str:
        return getattr(cfg, "init", "teacher")

    # ------------------------------------------------------------------ hooks

    def build(self, cfg, ctx: RunContext) -> Parts:
        """Teacher, generator, student score and the generator's architecture record."""
        raise NotImplementedError

    def latent_sampler(self, cfg, ctx: RunContext) -> Callable:
        """``sample_latents(n, rng) -> (z, cond)`` for training."""
        raise NotImplementedError

    def eval_latents(self, cfg, ctx: RunContext, n: int, rng, device) -> tuple:
        """``(z, cond)`` for ``n`` evaluation samples, drawn from ``rng``."""
        raise NotImplementedError

    def score(self, cfg, ctx: RunContext, images, cond, rng) -> dict:
        """The benchmark's metrics of one-step samples (``rng`` continues the evaluation seed)."""
        raise NotImplementedError

    def save_samples(self, cfg, ctx: RunContext, out, images, cond, title: str) -> None:
        """Write ``samples.png`` (and whatever else a reader of the run needs) through ``out.path(name)``
        (:class:`mct.io.StageOutputs`: the file enters the run's completion record)."""
        raise NotImplementedError

    def generator_from_record(self, cfg, ctx: RunContext, record: dict):
        """An untrained generator of the architecture ``record`` describes (for loading weights).
        Default: build all the parts (benchmarks with costly teachers override this)."""
        return self.build(cfg, ctx).generator

    def during_training(self, cfg, ctx: RunContext) -> Optional[Callable]:
        """``evaluate(ema, iteration) -> dict`` for the metric-vs-iteration curve (``train.eval_every``)."""
        return None

    def extra_metrics(self, cfg, ctx: RunContext, variant: str, run_dir: Optional[Path] = None) -> dict:
        """Metrics beyond the samples' (e.g. the M-step gradient variance) of the run in ``run_dir``
        (one training seed; None: the first); default none."""
        return {}

    # ------------------------------------------------------------------ stages written once

    def distill(self, section: dict, ctx: RunContext, variant: str, resume: str = "auto",
                stop_after: Optional[int] = None, deadline: Optional[float] = None) -> dict:
        """Distil the teacher into a one-step generator with the variant's settings, once per training
        seed (``train.seeds``), in this one process (start-up and the data are paid once) ->
        runs/<variant>/{checkpoint.pt, train_log.csv[, eval_log.csv]} for the first seed,
        runs/<variant>/seed-<s>/ for each further one. Each seed is a run of its own (its own run hash,
        its own resume); a seed already finished under this config is not touched again. The completion
        record ``.complete-distill.json`` is written only once every seed is done. ``deadline``: a
        ``time.monotonic()`` value to stop cleanly before (mct.distill.trainer.distill); a seed stopped
        by it (or by ``stop_after``) ends the stage there, incomplete, and the next run resumes it."""
        from ..io import ensure_writable_dir

        cfg = self.setup(section, variant)
        if cfg.train.seeds > 1 and not self.scores_every_seed:
            raise ConfigError(f"{self.name}: evaluate scores the first training seed only; train.seeds must be 1 "
                              f"here, got {cfg.train.seeds}")
        run_dir = ensure_writable_dir(ctx.run_dir(self.name, variant))
        summaries = []
        try:
            self._distill_seeds(cfg, ctx, variant, resume, stop_after, deadline, run_dir, summaries)
        except _Stopped:  # a seed ended early (stop_after, deadline): no completion record, no further seed
            pass
        return {**summaries[0], "seeds": summaries}

    def _distill_seeds(self, cfg, ctx, variant, resume, stop_after, deadline, run_dir, summaries):
        import torch

        from ..distill.trainer import distill
        from ..io import ensure_writable_dir, stage_outputs

        with stage_outputs(run_dir, "distill", self.variant_hash(cfg), {"seeds": self.seeds_of(cfg)}) as out:
            for seed in self.seeds_of(cfg):
                scfg, sdir = self.seed_config(cfg, seed), self.seed_dir(cfg, ctx, variant, seed)
                done = self.finished(scfg, ctx, variant, sdir) if resume != "no" else None
                if done is None:
                    torch.manual_seed(seed)  # network initialisation is part of the run's seed
                    parts = self.build(scfg, ctx)
                    extra = {"bench": self.name, "variant": variant, "run_hash": self.run_hash(scfg),
                             "arch": parts.record}
                    done = distill(ensure_writable_dir(sdir), teacher=parts.teacher, generator=parts.generator,
                                   student=parts.student, sample_latents=self.latent_sampler(scfg, ctx), em=scfg.em,
                                   train=scfg.train, resume=resume, pre_train=parts.pre_train,
                                   evaluate=self.during_training(scfg, ctx), device=torch.device(ctx.device),
                                   progress=ctx.progress, extra_config=extra, stop_after=stop_after,
                                   deadline=deadline)
                    del parts
                log.info("%s %s seed %d: %d iterations in %.1f s", self.name, variant, seed, done["iterations"],
                         done["train_seconds"])
                summaries.append({"seed": seed, **done})
                if done["iterations"] < scfg.train.iterations:
                    raise _Stopped()
                out.add(sdir / "checkpoint.pt")

    def finished(self, cfg, ctx: RunContext, variant: str, run_dir: Path) -> Optional[dict]:
        """The summary of a seed's run already trained to the end under ``cfg`` (its checkpoint.pt,
        read without weights), or None: it must (re)run or resume."""
        try:  # the same identity checks evaluate makes (bench, variant, run hash), as "not finished"
            _, state = self.checkpoint_of(cfg, ctx, variant, (), run_dir)
        except MCTError:
            return None
        if int(state.get("iteration", -1)) != cfg.train.iterations:
            return None
        return {"iterations": int(state["iteration"]), "train_seconds": round(float(state.get("seconds", 0.0)), 3),
                "config_hash": state.get("config_hash"), "skipped": True}

    # ------------------------------------------------------------------ training seeds

    @staticmethod
    def seeds_of(cfg) -> list[int]:
        """The variant's training seeds: train.seed, train.seed + 1, ... (train.seeds of them)."""
        return [cfg.train.seed + i for i in range(cfg.train.seeds)]

    @staticmethod
    def seed_config(cfg, seed: int):
        """``cfg`` with train.seed = ``seed``: the config of one seed's run (its own run hash)."""
        import dataclasses

        return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=seed))

    def seed_dir(self, cfg, ctx: RunContext, variant: str, seed: int) -> Path:
        """runs/<variant>/ for the variant's first seed (what export, correct and the report read),
        runs/<variant>/seed-<seed>/ for each further one."""
        from ..io import inside

        run_dir = ctx.run_dir(self.name, variant)
        return run_dir if seed == cfg.train.seed else inside(run_dir, f"seed-{seed}")

    def variant_hash(self, cfg) -> str:
        """The first seed's run hash with the list of seeds: what a variant's distill completion
        record is made under (adding a seed makes it stale, while each run keeps its own hash)."""
        return config_hash({"run_hash": self.run_hash(cfg), "seeds": self.seeds_of(cfg)})

    def checkpoint_of(self, cfg, ctx: RunContext, variant: str, weights: tuple[str, ...] = ("generator_ema",),
                      run_dir: Optional[Path] = None) -> tuple[Path, dict]:
        """The run's final checkpoint (only ``weights`` and the records evaluation needs are read),
        refused (one line) when it was trained as another variant or under another config than ``cfg``
        (for a further seed: ``cfg`` with that train.seed, ``run_dir`` its seed folder)."""
        from ..checkpoint import read_for_eval

        path = (run_dir or ctx.run_dir(self.name, variant)) / "checkpoint.pt"
        cmd = f"mct distill --bench {self.name} --variant {variant}"
        if not path.exists():
            raise MCTError(f"{path} does not exist: run `{cmd}` first")
        state = read_for_eval(path, weights)
        record = state.get("config") or {}
        if record.get("bench") != self.name or record.get("variant") != variant:
            raise MCTError(f"{path} was trained as {record.get('bench')}/{record.get('variant')}, not "
                           f"{self.name}/{variant} (a copied checkpoint?); rerun `{cmd} --no-resume`")
        got = record.get("run_hash")
        if got != self.run_hash(cfg):
            raise MCTError(f"{path} was trained under another config than {self.name}/{variant} has now "
                           f"(run hash {got} != {self.run_hash(cfg)}); rerun `{cmd} --no-resume`")
        return path, state

    def load_generator(self, cfg, ctx: RunContext, variant: str, ema: bool = True, run_dir: Optional[Path] = None):
        """(generator in eval mode with the run's EMA (or raw) weights, checkpoint state)."""
        from ..checkpoint import load_state_strict

        key = "generator_ema" if ema else "generator"
        path, state = self.checkpoint_of(cfg, ctx, variant, (key,), run_dir)
        gen = self.generator_from_record(cfg, ctx, state["config"].get("arch") or {})
        load_state_strict(gen, state[key], "generator", path)
        return gen.to(ctx.device).eval().requires_grad_(False), state

    def evaluate(self, section: dict, ctx: RunContext, variant: str):
        """Score a distilled generator (one step), every training seed of it in this one process ->
        runs/<variant>/{samples.png, ..., metrics.json} and the completion record ``.complete-evaluate.json``
        (written last, removed first: readers require it). Every seed is scored on the same evaluation
        latents (``eval.seed``), so differences between variants are paired by seed; ``scores`` and
        samples.png are the first seed's, ``seeds`` holds them all."""
        import torch

        from ..io import stage_outputs
        from ..records import Scores, SeedRun

        cfg = self.setup(section, variant)
        self.preflight(cfg, ctx)
        seeds = [(s, self.seed_config(cfg, s), self.seed_dir(cfg, ctx, variant, s)) for s in self.seeds_of(cfg)]
        for _, scfg, sdir in seeds:  # every seed's weights are there and this config's before anything is written
            self.checkpoint_of(scfg, ctx, variant, (), sdir)
        device = torch.device(ctx.device)
        n, bs = cfg.eval.num_samples, getattr(cfg.eval, "batch_size", cfg.eval.num_samples)
        runs, first = [], None
        with stage_outputs(ctx.run_dir(self.name, variant), "evaluate", self.run_hash(cfg)) as out:
            for seed, scfg, sdir in seeds:
                gen, state = self.load_generator(scfg, ctx, variant, run_dir=sdir)
                rng = torch.Generator(device=device).manual_seed(cfg.eval.seed)
                t0 = time.perf_counter()
                z, cond = self.eval_latents(scfg, ctx, n, rng, device)
                with torch.no_grad():
                    x = torch.cat([gen(z[i:i + bs], None if cond is None else cond[i:i + bs])
                                   for i in range(0, n, bs)])
                sample_seconds = time.perf_counter() - t0
                x, cond = x.cpu(), None if cond is None else cond.cpu()
                scores = {**self.score(scfg, ctx, x, cond, rng), **self.extra_metrics(scfg, ctx, variant, sdir)}
                runs.append(SeedRun(seed=seed, scores=Scores.from_flat(scores), iterations=int(state["iteration"]),
                                    train_seconds=round(float(state.get("seconds", 0.0)), 3),
                                    fid_curve=self.curve_of(state)))
                if first is None:
                    self.save_samples(cfg, ctx, out, x, cond, f"{self.name} {variant}")
                    first = (state, scores, sample_seconds)
                del gen, x
            rec = self.run_record(cfg, variant, first[0], first[1], num_samples=n, sample_seconds=first[2], seeds=runs)
            self.write_record(out.path("metrics.json"), rec)
        log.info("%s %s (%d seeds): %s", self.name, variant, len(runs), ", ".join(
            f"{k} {rec.scores.get(k):.4g}" for k in self.summary_metrics[:4] if rec.scores.get(k) is not None))
        return rec

    @staticmethod
    def curve_of(state: dict) -> list:
        """The FID-vs-iteration curve a checkpoint's eval log holds."""
        from ..records import CurvePoint

        return [CurvePoint(int(r["iteration"]), float(r["fid"])) for r in state.get("eval_log") or [] if "fid" in r]

    def run_record(self, cfg, variant: str, state: dict, scores: dict, ignore=(), notes=None, **fields):
        """The run's :class:`mct.records.RunMetrics`: settings, scores, provenance (the run hash)."""
        from ..records import RunMetrics, Scores, provenance

        curve = self.curve_of(state)
        return RunMetrics(bench=self.name, variant=variant, nfe=1, scores=Scores.from_flat(scores, ignore=ignore),
                          provenance=provenance(self.run_hash(cfg)), settings=self.settings(cfg),
                          iterations=int(state["iteration"]), train_seconds=round(float(state.get("seconds", 0.0)), 3),
                          fid_curve=curve, notes=dict(notes or {}),
                          **{k: (round(v, 3) if isinstance(v, float) else v) for k, v in fields.items()})

    @staticmethod
    def write_record(path: Path, rec) -> None:
        from ..records import write_record

        write_record(path, rec)

    def variant_records(self, section: dict, ctx: RunContext) -> list:
        """Every configured variant's :class:`mct.records.RunMetrics`; a missing or incomplete one, one
        written for weights of another config, or one that scored other training seeds than the config
        asks for now (train.seeds changed), is an error naming the command that makes it."""
        from ..io import require_complete
        from ..records import RunMetrics, read_record

        out = []
        for variant in self.variant_names(section):
            cfg = self.parse(section, variant)
            run_dir, cmd = ctx.run_dir(self.name, variant), f"mct evaluate --bench {self.name} --variant {variant}"
            require_complete(run_dir, "evaluate", cmd, config_hash=self.run_hash(cfg))
            rec = read_record(run_dir / "metrics.json", RunMetrics)
            got = [s.seed for s in rec.seeds] or [int(rec.settings.get("seed", cfg.train.seed))]
            if got != self.seeds_of(cfg):
                raise MCTError(f"{run_dir / 'metrics.json'} scored training seeds {got}, the config asks for "
                               f"{self.seeds_of(cfg)}; run `mct distill --bench {self.name} --variant {variant}` "
                               f"and `{cmd}`")
            out.append(rec)
        return out

    def summarize(self, section: dict, ctx: RunContext):
        """One row per variant with each metric's mean and interval over the training seeds, the
        comparisons between variants (mct vs k1, each ablation vs mct, the best K vs k1) and the claims
        -> <bench>/summary.csv and <bench>/summary.json."""
        from ..io import stage_outputs, write_csv
        from ..records import Summary, provenance
        from .claims import SeedTable, comparisons

        recs = self.variant_records(section, ctx)
        table = SeedTable(recs)
        metrics = tuple(dict.fromkeys(self.summary_metrics or tuple(recs[0].scores.metrics) if recs else ()))
        summary = Summary(bench=self.name, rows=[table.row(r) for r in recs],
                          comparisons=comparisons(table, self.headline(), metrics),
                          claims=self.claims(section, ctx, recs),
                          provenance=provenance(config_hash(to_dict(self.parse(section)))))
        with stage_outputs(ctx.bench_dir(self.name), "summarize") as out:
            csv_rows = summary.csv_rows()
            columns = list(dict.fromkeys(k for r in csv_rows for k in r)) or ["variant"]  # variants may differ
            write_csv(out.path("summary.csv"), csv_rows, fieldnames=columns)
            self.write_record(out.path("summary.json"), summary)
        return summary

    def headline(self) -> str:
        """The metric the best K is chosen by: the first of ``summary_metrics``."""
        return self.summary_metrics[0] if self.summary_metrics else ""

    def claims(self, section: dict, ctx: RunContext, recs: list) -> list:
        """The paper's claims this benchmark can decide (:class:`mct.records.Claim`, made with
        :mod:`mct.benchmarks.claims` from every seed of ``recs``); default none."""
        return []

    def unsupported(self, stage: str):
        raise MCTError(f"benchmark {self.name} has no stage {stage!r} (it has: {', '.join(self.stages)})")


def get_benchmark(name: str) -> Benchmark:
    module_name = module_of(name)
    if module_name is None:
        raise ConfigError(f"unknown benchmark {name!r} (known: {known_names()})")
    module = importlib.import_module(module_name)
    factory = getattr(module, "get_benchmark", None)
    return factory(name) if factory else module.BENCHMARK


def validate_all(root: dict) -> None:
    """Validate every configured benchmark and each of its variants (fail before any work)."""
    for name, section in (root.get("benchmarks") or {}).items():
        bench = get_benchmark(name)
        bench.parse(section)
        for v in bench.variant_names(section):
            bench.parse(section, v)


def section_of(root: dict, name: str) -> dict[str, Any]:
    sections = root.get("benchmarks") or {}
    if name not in sections:
        raise ConfigError(f"benchmark {name!r} is not in this config (configured: {', '.join(sections) or 'none'})")
    return sections[name] or {}
