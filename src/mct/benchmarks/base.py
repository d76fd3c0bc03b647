"""What every benchmark provides, and the registry the CLI uses.

A benchmark owns its config section (a dataclass validated at load), its named
variants (overrides merged onto the section) and the stages the pipeline runs:
teacher training / download, feature network, distillation, evaluation, MCMC
correction and the per-benchmark summary. The workflow calls only the CLI, and the
CLI calls only these methods."""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import deep_merge, from_dict
from ..errors import ConfigError, MCTError
from ..io import read_json

log = logging.getLogger(__name__)

# name -> module holding ``BENCHMARK``; modules are imported on demand
REGISTRY = {
    "toy2d": "mct.benchmarks.toy2d",
    "digits": "mct.benchmarks.digits",
    "mnist": "mct.benchmarks.digits",
    "digits-text": "mct.benchmarks.digits_text",
    "imagenet64": "mct.benchmarks.imagenet",
    "imagenet128": "mct.benchmarks.imagenet",
    "sd15": "mct.benchmarks.sd15",
}


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


class Benchmark:
    """Base class: subclasses set ``name``/``config_cls`` and implement the stages they have."""

    name: str = ""
    config_cls: type = object
    stages: tuple[str, ...] = ()
    # Optional, read by the pipeline's stage table (mct.workflow): ``uses`` names another
    # benchmark whose output a stage reads, e.g. {"features": "digits"}; ``stage_params``
    # lists the section keys a per-benchmark stage reads, e.g. {"teacher_train": ("teacher",
    # "data")}, so that changing other keys does not rerun it (default: the whole section
    # without its variants).
    uses: dict[str, str] = {}
    # variants whose one-step samples get the joint MCMC correction stage (the paper's figure)
    correct_variants: tuple[str, ...] = ("mct",)
    stage_params: dict[str, tuple[str, ...]] = {}

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
        """:meth:`parse`, then apply the section's ``num_threads`` (when it has one; 0 = torch's
        default). For the stages only: parsing alone (config checks, the workflow) changes nothing."""
        cfg = self.parse(section, variant)
        threads = getattr(cfg, "num_threads", 0)
        if threads:
            import torch

            torch.set_num_threads(threads)
        return cfg

    def variant_names(self, section: dict) -> list[str]:
        return list((section or {}).get("variants", {}) or {})

    def variant_metrics(self, section: dict, ctx) -> list[tuple[str, dict]]:
        """(variant, its metrics.json) for every configured variant, for ``summarize``; a missing
        one is an error naming the command that makes it."""
        out = []
        for variant in self.variant_names(section):
            path = ctx.run_dir(self.name, variant) / "metrics.json"
            if not path.exists():
                raise MCTError(f"summarize: {path} is missing; run `mct evaluate --bench {self.name} "
                               f"--variant {variant}` first")
            out.append((variant, read_json(path)))
        return out

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
