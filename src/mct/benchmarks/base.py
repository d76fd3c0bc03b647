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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from ..config import config_hash, deep_merge, from_dict, to_dict
from ..errors import ConfigError, MCTError
from ..io import read_json, write_csv

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

# knobs of the variant that describe a run in metrics.json and summary.csv
EM_SETTINGS = ("num_steps", "reparam", "noise_cancel", "gamma_eps", "gamma_z", "z_step")


@dataclass(frozen=True)
class RunContext:
    """Where a stage writes and how it runs (from the root config and the command line)."""

    results_dir: Path
    device: str = "cpu"
    progress: bool = True

    def bench_dir(self, bench: str) -> Path:
        return self.results_dir / bench

    def run_dir(self, bench: str, variant: str) -> Path:
        return self.results_dir / bench / "runs" / variant


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
    untrained_keys: tuple[str, ...] = ("eval", "correct", "features", "clip", "variants", "num_threads")
    # metrics.json keys copied into summary.csv after the variant's settings
    summary_metrics: tuple[str, ...] = ()

    # ------------------------------------------------------------------ config

    def parse(self, section: dict, variant: str | None = None, path: str | None = None):
        """Validate the benchmark's config section, with ``variant``'s overrides applied."""
        path = path or f"benchmarks.{self.name}"
        section = dict(section or {})
        variants = section.get("variants", {}) or {}
        if not isinstance(variants, dict):
            raise ConfigError(f"{path}.variants must be a mapping of variant name to overrides")
        if variant is not None:
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

    def variant_names(self, section: dict) -> list[str]:
        return list((section or {}).get("variants", {}) or {})

    def run_hash(self, cfg) -> str:
        """Hash of what a variant's weights depend on: the section without ``untrained_keys`` and
        the trainer's runtime knobs. Stored in the checkpoint; evaluate refuses a mismatch."""
        from ..distill.trainer import hashed_train

        rec = {k: v for k, v in to_dict(cfg).items() if k not in self.untrained_keys}
        if "train" in rec:
            rec["train"] = hashed_train(cfg.train)
        return config_hash({"bench": self.name, **rec})

    def settings(self, cfg) -> dict:
        """The knobs that tell variants apart, as written into metrics.json and summary.csv."""
        em = cfg.em
        out = {"K": em.num_steps}
        out.update({k: getattr(em, k) for k in EM_SETTINGS[1:]})
        out["init"] = self.init_kind(cfg)
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

    def eval_latents(self, cfg, n: int, rng, device) -> tuple:
        """``(z, cond)`` for ``n`` evaluation samples, drawn from ``rng``."""
        raise NotImplementedError

    def score(self, cfg, ctx: RunContext, images, cond, rng) -> dict:
        """The benchmark's metrics of one-step samples (``rng`` continues the evaluation seed)."""
        raise NotImplementedError

    def save_samples(self, cfg, ctx: RunContext, run_dir: Path, images, cond, title: str) -> None:
        """Write ``run_dir/samples.png`` (and whatever else a reader of the run needs)."""
        raise NotImplementedError

    def generator_from_record(self, cfg, ctx: RunContext, record: dict):
        """An untrained generator of the architecture ``record`` describes (for loading weights).
        Default: build all the parts (benchmarks with costly teachers override this)."""
        return self.build(cfg, ctx).generator

    def during_training(self, cfg, ctx: RunContext) -> Optional[Callable]:
        """``evaluate(ema, iteration) -> dict`` for the metric-vs-iteration curve (``train.eval_every``)."""
        return None

    def extra_metrics(self, cfg, ctx: RunContext, variant: str) -> dict:
        """Metrics beyond the samples' (e.g. the M-step gradient variance); default none."""
        return {}

    # ------------------------------------------------------------------ stages written once

    def distill(self, section: dict, ctx: RunContext, variant: str, resume: str = "auto",
                stop_after: Optional[int] = None) -> dict:
        """Distil the teacher into a one-step generator with the variant's settings ->
        runs/<variant>/{checkpoint.pt, train_log.csv[, eval_log.csv]}."""
        import torch

        from ..distill.trainer import distill
        from ..io import ensure_writable_dir

        cfg = self.setup(section, variant)
        run_dir = ensure_writable_dir(ctx.run_dir(self.name, variant))
        torch.manual_seed(cfg.train.seed)  # network initialisation is part of the run's seed
        parts = self.build(cfg, ctx)
        extra = {"bench": self.name, "variant": variant, "run_hash": self.run_hash(cfg), "arch": parts.record}
        summary = distill(run_dir, teacher=parts.teacher, generator=parts.generator, student=parts.student,
                          sample_latents=self.latent_sampler(cfg, ctx), em=cfg.em, train=cfg.train,
                          resume=resume, pre_train=parts.pre_train, evaluate=self.during_training(cfg, ctx),
                          device=torch.device(ctx.device), progress=ctx.progress, extra_config=extra,
                          stop_after=stop_after)
        log.info("%s %s: %d iterations in %.1f s", self.name, variant, summary["iterations"],
                 summary["train_seconds"])
        return summary

    def checkpoint_of(self, cfg, ctx: RunContext, variant: str) -> tuple[Path, dict]:
        """The run's final checkpoint, refused (one line) when it was trained under another config."""
        from ..distill.trainer import load_checkpoint

        path = ctx.run_dir(self.name, variant) / "checkpoint.pt"
        cmd = f"mct distill --bench {self.name} --variant {variant}"
        if not path.exists():
            raise MCTError(f"{path} does not exist: run `{cmd}` first")
        state = load_checkpoint(path)
        got = (state.get("config") or {}).get("run_hash")
        if got != self.run_hash(cfg):
            raise MCTError(f"{path} was trained under another config than {self.name}/{variant} has now "
                           f"(run hash {got} != {self.run_hash(cfg)}); rerun `{cmd} --no-resume`")
        return path, state

    def load_generator(self, cfg, ctx: RunContext, variant: str, ema: bool = True):
        """(generator in eval mode with the run's EMA (or raw) weights, checkpoint state)."""
        from ..distill.trainer import load_state_strict

        path, state = self.checkpoint_of(cfg, ctx, variant)
        gen = self.generator_from_record(cfg, ctx, state["config"].get("arch") or {})
        load_state_strict(gen, state["generator_ema" if ema else "generator"], "generator", path)
        return gen.to(ctx.device).eval().requires_grad_(False), state

    def evaluate(self, section: dict, ctx: RunContext, variant: str) -> dict:
        """Score a distilled generator (one step) -> runs/<variant>/{samples.png, ..., metrics.json}.
        metrics.json is written last and removed first: present means the run's outputs are whole."""
        import torch

        cfg = self.setup(section, variant)
        run_dir = ctx.run_dir(self.name, variant)
        gen, state = self.load_generator(cfg, ctx, variant)
        (run_dir / "metrics.json").unlink(missing_ok=True)
        device = torch.device(ctx.device)
        rng = torch.Generator(device=device).manual_seed(cfg.eval.seed)
        n, bs = cfg.eval.num_samples, getattr(cfg.eval, "batch_size", cfg.eval.num_samples)
        t0 = time.perf_counter()
        z, cond = self.eval_latents(cfg, n, rng, device)
        with torch.no_grad():
            x = torch.cat([gen(z[i:i + bs], None if cond is None else cond[i:i + bs]) for i in range(0, n, bs)])
        sample_seconds = time.perf_counter() - t0
        x, cond = x.cpu(), None if cond is None else cond.cpu()
        metrics = self.score(cfg, ctx, x, cond, rng)
        metrics.update(self.extra_metrics(cfg, ctx, variant))
        self.save_samples(cfg, ctx, run_dir, x, cond, f"{self.name} {variant}")
        metrics.update({**self.run_fields(cfg, variant, state), "num_samples": n,
                        "sample_seconds": round(sample_seconds, 3),
                        "samples_per_second": round(n / max(sample_seconds, 1e-9), 1)})
        curve = [{"iteration": r["iteration"], "fid": r["fid"]} for r in state.get("eval_log") or [] if "fid" in r]
        if curve:
            metrics["fid_curve"] = curve
        self.write_metrics(run_dir / "metrics.json", metrics)
        log.info("%s %s: %s", self.name, variant, ", ".join(
            f"{k} {metrics[k]:.4g}" for k in self.summary_metrics[:4] if isinstance(metrics.get(k), (int, float))))
        return metrics

    def run_fields(self, cfg, variant: str, state: dict) -> dict:
        """What a variant's metrics.json says about the run besides its scores (one step: nfe 1);
        ``state``: the checkpoint. ``run_hash`` ties the file to the config that trained the weights."""
        return {"bench": self.name, "variant": variant, "nfe": 1, **self.settings(cfg),
                "iterations": int(state["iteration"]), "train_seconds": round(float(state.get("seconds", 0.0)), 3),
                "seed": cfg.train.seed, "run_hash": self.run_hash(cfg)}

    def write_metrics(self, path: Path, metrics: dict) -> None:
        from ..io import write_json

        write_json(path, metrics)

    def variant_metrics(self, section: dict, ctx: RunContext) -> list[tuple[str, dict]]:
        """(variant, its metrics.json) for every configured variant; a missing one, or one written
        for weights of another config, is an error naming the command that makes it."""
        out = []
        for variant in self.variant_names(section):
            path = ctx.run_dir(self.name, variant) / "metrics.json"
            cmd = f"mct evaluate --bench {self.name} --variant {variant}"
            if not path.exists():
                raise MCTError(f"{path} is missing; run `{cmd}` first")
            m = read_json(path)
            if not isinstance(m, dict) or m.get("run_hash") != self.run_hash(self.parse(section, variant)):
                raise MCTError(f"{path} was not written for the current config of {self.name}/{variant}; "
                               f"rerun `{cmd}`")
            out.append((variant, m))
        return out

    def summarize(self, section: dict, ctx: RunContext) -> list[dict]:
        """One row per variant (its settings, then ``summary_metrics``) -> <bench>/summary.csv."""
        rows = []
        for variant, m in self.variant_metrics(section, ctx):
            cfg = self.parse(section, variant)
            cols = ["variant", *self.settings(cfg), *self.summary_metrics, "iterations", "train_seconds", "seed"]
            rows.append({c: m.get(c) for c in cols} | {"variant": variant})
        if rows:
            write_csv(ctx.bench_dir(self.name) / "summary.csv", rows, fieldnames=list(rows[0]))
        return rows

    def unsupported(self, stage: str):
        raise MCTError(f"benchmark {self.name} has no stage {stage!r} (it has: {', '.join(self.stages)})")


def get_benchmark(name: str) -> Benchmark:
    if name not in REGISTRY:
        raise ConfigError(f"unknown benchmark {name!r} (known: {', '.join(REGISTRY)})")
    module = importlib.import_module(REGISTRY[name])
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
