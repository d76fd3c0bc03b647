"""The JSON schema of a config file (``mct config schema``), generated from the config
dataclasses; ``workflow/schemas/config.schema.yaml`` is its output (Snakemake validates
the config against it; a test checks the committed file is current)."""

from __future__ import annotations

from ..config import json_schema
from ..root import RootConfig
from .resources import ClusterConfig


def config_schema() -> dict:
    """JSON schema (draft 2020-12) of a config file: the root, each registered benchmark's
    section (``json_schema(config_cls)`` under ``benchmarks.<name>``), ``cluster``,
    ``report`` and ``bench``."""
    from ..bench import BenchConfig
    from ..benchmarks.base import REGISTRY, get_benchmark
    from ..report.build import ReportConfig

    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "MCT config"}
    schema.update(json_schema(RootConfig))
    props = schema["properties"]
    benches = {name: json_schema(get_benchmark(name).config_cls) for name in REGISTRY}
    props["benchmarks"] = {"type": "object", "additionalProperties": False, "properties": benches,
                           "description": "one section per benchmark that runs; its 'variants' map names to overrides"}
    props["cluster"] = json_schema(ClusterConfig)
    props["report"] = json_schema(ReportConfig)
    props["bench"] = json_schema(BenchConfig)
    return schema
