"""What every report section is built from: the records read, the config and the paper's numbers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import yaml

from ..errors import ConfigError
from .collect import Results

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class ReportConfig:
    """The ``report`` section of the root config.

    title: page title. embed_max_bytes: sample grids up to this size are embedded as data
    URIs, larger ones linked by relative path. sample_min_px: small grids (digits) are
    scaled up by an integer factor to at least this width, pixelated. strict: a record file
    that does not match its class stops the report (tests) instead of being listed."""

    title: str = "MCT: EM distillation into one-step generators"
    embed_max_bytes: int = 2_000_000
    sample_min_px: int = 480
    strict: bool = False

    def __post_init__(self):
        if self.embed_max_bytes < 0:
            raise ConfigError(f"report.embed_max_bytes must be >= 0, got {self.embed_max_bytes}")
        if self.sample_min_px < 1:
            raise ConfigError(f"report.sample_min_px must be >= 1, got {self.sample_min_px}")


def load_paper_results(path: Optional[Path] = None) -> dict:
    with open(path or HERE / "paper_results.yaml", encoding="utf-8") as fh:
        return yaml.safe_load(fh) or {}


@dataclass
class Inputs:
    results: Results
    raw: dict
    cfg: ReportConfig
    paper: dict  # paper_results.yaml: task -> title, rows, command, embedded_standin
    out: Path  # where the HTML goes (sample grids too large to embed are linked relative to it)

    def paper_scale(self) -> list[str]:
        """Tasks the paper reports that need a GPU cluster (they have a command in paper_results.yaml)."""
        return [name for name, spec in self.paper.items() if isinstance(spec, dict) and spec.get("command")]

    def standin_for(self, bench: str) -> list[str]:
        """The paper-scale tasks ``bench`` is the embedded stand-in of."""
        return [n for n, spec in self.paper.items() if isinstance(spec, dict) and spec.get("embedded_standin") == bench]
