"""Where the report is rendered: hardware and the seeds in the config. Which code made the
results (commit, package versions) is in mct.provenance and in every record."""

from __future__ import annotations

import os
import platform
import shutil
import sys
from pathlib import Path
from typing import Any, Optional

from ..provenance import run_quiet as _run


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def memory_gib() -> Optional[float]:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 ** 2
    except (OSError, ValueError, IndexError):
        pass
    return None


def gpus() -> list[str]:
    """GPU names from nvidia-smi, or torch when it is already imported; [] when none."""
    if shutil.which("nvidia-smi"):
        out = _run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"])
        if out:
            return [line.strip() for line in out.splitlines() if line.strip()]
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_available():
            return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except (RuntimeError, AssertionError):  # a broken CUDA install must not break the report
        pass
    return []


def hardware() -> dict[str, Any]:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    mem = memory_gib()
    return {
        "host": platform.node(),
        "cpu": cpu_model(),
        "cores": cores,
        "memory": f"{mem:.1f} GiB" if mem else None,
        "gpu": ", ".join(gpus()) or "none",
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }


def config_seeds(raw: Any, path: str = "") -> list[tuple[str, Any]]:
    """Every ``*seed`` key in the config with its dotted path."""
    found = []
    if isinstance(raw, dict):
        for k, v in raw.items():
            p = f"{path}.{k}" if path else str(k)
            if isinstance(v, (dict, list)):
                found += config_seeds(v, p)
            elif str(k).lower().endswith("seed"):
                found.append((p, v))
    elif isinstance(raw, list):
        for i, v in enumerate(raw):
            found += config_seeds(v, f"{path}[{i}]")
    return found
