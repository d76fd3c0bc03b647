"""Where and with what the report (and, where the runs recorded it, the results) was made:
hardware, git commit, config hash, package versions, seeds."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

PACKAGES = ["mct", "torch", "torchvision", "numpy", "scipy", "pandas", "matplotlib", "seaborn", "jinja2",
            "torch-fidelity", "open_clip_torch", "diffusers", "transformers", "scikit-learn", "snakemake", "dvc"]


def _run(cmd: list[str], cwd: Optional[Path] = None, timeout: float = 10.0) -> Optional[str]:
    try:
        out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False,
                             stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


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
    except Exception:  # noqa: BLE001 - a broken CUDA install must not break the report
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


def git_info(start: Optional[Path] = None) -> dict[str, Optional[str]]:
    """Commit, branch and dirty flag of the repository holding ``start`` (or the cwd,
    or this package), or ``MCT_GIT_COMMIT`` when set (e.g. a build without .git)."""
    env = os.environ.get("MCT_GIT_COMMIT")
    if env:
        return {"commit": env, "dirty": None, "branch": None}
    for base in [start, Path.cwd(), Path(__file__).resolve().parent]:
        if base is None or not Path(base).exists():
            continue
        commit = _run(["git", "rev-parse", "HEAD"], cwd=Path(base))
        if commit:
            status = _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=Path(base))
            branch = _run(["git", "rev-parse", "--abbrev-ref", "HEAD"], cwd=Path(base))
            return {"commit": commit, "dirty": bool(status) if status is not None else None, "branch": branch}
    return {"commit": None, "dirty": None, "branch": None}


def versions(packages=PACKAGES) -> dict[str, Optional[str]]:
    out = {}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


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
