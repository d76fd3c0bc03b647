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
    from ..benchmarks.base import FAMILIES, FAMILY_SUFFIX, REGISTRY, get_benchmark
    from ..report.build import ReportConfig

    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "MCT config"}
    schema.update(json_schema(RootConfig))
    props = schema["properties"]
    benches = {name: json_schema(get_benchmark(name).config_cls) for name in REGISTRY}
    # a family's members (toy2d-grid9, ...) take the family's section schema
    members = {f"^{family}-{FAMILY_SUFFIX.pattern}$": {"$ref": f"#/properties/benchmarks/properties/{family}"}
               for family in FAMILIES}
    props["benchmarks"] = {"type": "object", "additionalProperties": False, "properties": benches,
                           "patternProperties": members,
                           "description": "one section per benchmark that runs; its 'variants' map names to overrides "
                                          "(a section toy2d-<suffix> is one more toy2d benchmark of that name)"}
    props["cluster"] = json_schema(ClusterConfig)
    props["report"] = json_schema(ReportConfig)
    props["bench"] = json_schema(BenchConfig)
    return schema
