"""GPU slots of one node: the local (non-SLURM) runs of the workflow give each job its own GPUs.

Snakemake's ``gpu`` resource is only a number to a local run: without this, every job of a
``snakemake --cores all`` run on a 4-GPU node would open ``cuda:0``. The stage shell
(``workflow/rules/common.smk``) starts every job as ``mct gpus --need <gpu> --lock-dir DIR --
mct ...``: the job takes ``need`` free slots among the node's GPUs, each an exclusive
``flock`` on ``DIR/gpu-<id>.lock``, and then *becomes* the stage command (``exec``) with
``CUDA_VISIBLE_DEVICES`` set to those GPUs. The lock descriptors are inherited by the command,
so a slot is held exactly as long as the job's process lives; the OS releases it when that
process ends for any reason (``kill -9`` included), so a dead job never blocks a slot.

Slots are taken all at once or not at all (no two jobs can each hold half of what the other
needs), and a job that finds too few free waits, polling, up to ``--wait`` seconds (default:
forever), then fails with one line. A job asking for more GPUs than the node has fails at once.

The node's GPUs: the ids in ``CUDA_VISIBLE_DEVICES`` when it is set (the user's restriction
is kept), else the indices ``nvidia-smi`` lists, else none. Under SLURM (``SLURM_JOB_ID`` set)
the scheduler has already bound the job's GPUs: the command runs unchanged. Inside an ``salloc``
shell that runs Snakemake locally, unset SLURM_JOB_ID for the run to share the allocation out.
A job that needs no GPU gets none (``CUDA_VISIBLE_DEVICES=""``): the resource is enforced."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

from ..errors import MCTError

POLL_SECONDS = 2.0


def node_gpus(env: Optional[dict] = None, smi: Callable[[], list[str]] | None = None) -> list[str]:
    """The GPU ids this node offers to the workflow: ``CUDA_VISIBLE_DEVICES`` (ids or UUIDs) when set,
    else ``nvidia-smi``'s indices, else none."""
    env = os.environ if env is None else env
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip() and g.strip() != "-1"]
    return (smi or _nvidia_smi_indices)()


def _nvidia_smi_indices() -> list[str]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run([exe, "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip().isdigit()]


def _lock_name(gpu: str) -> str:
    return "gpu-" + re.sub(r"[^A-Za-z0-9_.-]", "_", gpu) + ".lock"


def try_acquire(gpus: list[str], need: int, lock_dir: Path) -> Optional[list[tuple[str, int]]]:
    """``need`` free slots of ``gpus`` as (id, open locked descriptor), or None (then none is held)."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock; local multi-GPU scheduling is for POSIX nodes
        raise MCTError("mct gpus: GPU slots need flock (Linux or macOS); run GPU jobs under SLURM "
                       "or one at a time here") from None

    lock_dir.mkdir(parents=True, exist_ok=True)
    held: list[tuple[str, int]] = []
    for gpu in gpus:
        if len(held) == need:
            break
        fd = os.open(lock_dir / _lock_name(gpu), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        os.ftruncate(fd, 0)  # who holds it, for the waiting message of the next job
        os.write(fd, f"{os.getpid()}\n".encode())
        held.append((gpu, fd))
    if len(held) < need:
        for _, fd in held:
            os.close(fd)  # closing the only descriptor releases the flock
        return None
    return held


def holders(lock_dir: Path, gpus: list[str]) -> str:
    """'0: pid 123, 1: pid 456' for the slots held now (a lock file keeps the pid of its last holder)."""
    import fcntl

    parts = []
    for gpu in gpus:
        try:
            fd = os.open(lock_dir / _lock_name(gpu), os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            parts.append(f"{gpu}: pid {os.read(fd, 32).decode(errors='replace').strip() or '?'}")
        finally:
            os.close(fd)  # a shared lock taken here (the slot was free) goes with it
    return ", ".join(parts)


def acquire(need: int, lock_dir: Path, gpus: list[str], wait: Optional[float] = None,
            say: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True)) -> list[tuple[str, int]]:
    """Block (polling) until ``need`` of ``gpus`` are free; MCTError after ``wait`` seconds or at once
    when the node has fewer than ``need``."""
    if need > len(gpus):
        where = "CUDA_VISIBLE_DEVICES" if "CUDA_VISIBLE_DEVICES" in os.environ else "nvidia-smi"
        raise MCTError(f"this job needs {need} GPU(s) but the node has {len(gpus)} ({where}: "
                       f"{','.join(gpus) or 'none'}); lower its cluster gpus or run it on a larger node")
    start, told = time.monotonic(), False
    while True:
        held = try_acquire(gpus, need, lock_dir)
        if held is not None:
            return held
        waited = time.monotonic() - start
        if wait is not None and waited >= wait:
            raise MCTError(f"no {need} free GPU(s) after {waited:.0f} s (slots in {lock_dir} held by "
                           f"{holders(lock_dir, gpus) or 'other jobs'})")
        if not told:
            say(f"mct gpus: waiting for {need} free GPU(s) of {len(gpus)} (held: {holders(lock_dir, gpus)})")
            told = True
        time.sleep(POLL_SECONDS)


def run_on_gpus(need: int, lock_dir: str | os.PathLike, argv: list[str], wait: Optional[float] = None) -> None:
    """Take ``need`` GPU slots and ``exec`` ``argv`` on them (never returns); under SLURM, exec it as it is."""
    if not argv:
        raise MCTError("mct gpus: no command given (mct gpus --need N --lock-dir DIR -- COMMAND ...)")
    if need < 0:
        raise MCTError(f"mct gpus: --need must be >= 0, got {need}")
    env = dict(os.environ)
    if env.get("SLURM_JOB_ID"):
        _exec(argv, env, [])
    if need == 0:
        env["CUDA_VISIBLE_DEVICES"] = ""  # a job that declared no GPU gets none
        _exec(argv, env, [])
    held = acquire(need, Path(lock_dir), node_gpus(), wait=wait)
    env["CUDA_VISIBLE_DEVICES"] = ",".join(gpu for gpu, _ in held)
    _exec(argv, env, [fd for _, fd in held])


def _exec(argv: list[str], env: dict, fds: list[int]) -> None:
    for fd in fds:  # the command inherits the locks: a slot lives exactly as long as the job
        os.set_inheritable(fd, True)
    exe = shutil.which(argv[0], path=env.get("PATH"))
    if exe is None:
        raise MCTError(f"mct gpus: command {argv[0]!r} not found on PATH")
    os.execve(exe, argv, env)
