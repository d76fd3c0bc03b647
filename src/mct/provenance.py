"""Which code and packages made a result: the git commit (and whether the tree was dirty) and
the versions of the packages the numbers depend on. Records (mct.records) embed this in every
file a stage writes; the report adds the hardware it ran on (mct.report.provenance)."""

from __future__ import annotations

import functools
import os
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Optional

PACKAGES = ("mct", "torch", "torchvision", "numpy", "scipy", "pandas", "matplotlib", "seaborn", "jinja2",
            "torch-fidelity", "open_clip_torch", "diffusers", "transformers", "scikit-learn", "snakemake", "dvc",
            "playwright")


def run_quiet(cmd: list[str], cwd: Optional[Path] = None, timeout: float = 10.0) -> Optional[str]:
    """stdout of ``cmd`` when it exits 0, else None (never raises)."""
    try:
        out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False,
                             stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_info(start: Optional[Path] = None) -> dict[str, Optional[str]]:
    """Commit, branch and dirty flag of the repository holding ``start`` (or this package, or
    the cwd), or ``MCT_GIT_COMMIT`` when set (e.g. a build without .git)."""
    env = os.environ.get("MCT_GIT_COMMIT")
    if env:
        return {"commit": env, "dirty": None, "branch": None}
    for base in [start, Path(__file__).resolve().parent, Path.cwd()]:
        if base is None or not Path(base).exists():
            continue
        commit = run_quiet(["git", "rev-parse", "HEAD"], cwd=Path(base))
        if commit:
            status = run_quiet(["git", "status", "--porcelain", "--untracked-files=no"], cwd=Path(base))
            branch = run_quiet(["git", "rev-parse", "--abbrev-ref", "HEAD"], cwd=Path(base))
            return {"commit": commit, "dirty": bool(status) if status is not None else None, "branch": branch}
    return {"commit": None, "dirty": None, "branch": None}


@functools.lru_cache(maxsize=4)
def versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, Optional[str]]:
    """Installed version of each package (None when not installed); cached per process."""
    out = {}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out
