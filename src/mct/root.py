"""The top level of a config file, and the one place a whole config is validated.

Kept apart from :mod:`mct.cli` so that the pipeline's stage table can read a config
without importing the command line (and the command line does not import the
pipeline). Importing this module costs only ``yaml``: the benchmark, cluster and bench
sections are validated by their own modules, imported when a config is checked."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

from .config import check_device, from_dict, load_yaml


@dataclass(frozen=True)
class RootConfig:
    """Top level of a config file (config/default.yaml and friends).

    results_dir: where every output goes. device: 'cpu' or 'cuda'. benchmarks: one
    section per benchmark that runs (see each benchmark's schema). report, bench,
    cluster: options of the report, of ``mct bench`` and of the SLURM profile."""

    results_dir: str = "results"
    device: str = "cpu"
    progress: bool = True
    benchmarks: dict[str, Any] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    bench: dict[str, Any] = field(default_factory=dict)
    cluster: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        check_device(self.device)


def validate_root(raw: dict) -> RootConfig:
    """Validate a config's content before any work: the root, every benchmark section and
    variant, the ``cluster`` section (resources of the pipeline's jobs) and the ``bench``
    section (options of ``mct bench``)."""
    from .bench import parse_bench_config
    from .benchmarks.base import validate_all
    from .pipeline.resources import parse_cluster

    root = from_dict(RootConfig, raw, "config")
    validate_all(raw)
    parse_cluster(raw)
    parse_bench_config(raw)
    return root


def load_root(path: str | Path, results_dir: Optional[str] = None) -> tuple[RootConfig, dict]:
    """Read and validate a config file (:func:`validate_root`); ``results_dir`` overrides its own."""
    raw = load_yaml(path)
    root = validate_root(raw)
    if results_dir is not None:
        root = replace(root, results_dir=results_dir)
    return root, raw
