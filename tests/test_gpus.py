"""GPU slots of one node (``mct gpus``, src/mct/pipeline/gpus.py) with fake GPU counts: concurrent
jobs get disjoint devices, a job that finds none free waits or fails in one line, a slot held by a
killed job is free again, SLURM's own binding is left alone."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mct.errors import MCTError
from mct.pipeline import gpus as G

sys.path.insert(0, str(Path(__file__).parent))

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="flock slots are POSIX")
SRC = str(Path(__file__).resolve().parents[1] / "src")

# the job: write the GPUs it sees, then live until the file 'stop' appears
JOB = ("import os, sys, time, pathlib; d = pathlib.Path(sys.argv[1]); "
       "(d / f'seen-{os.getpid()}').write_text(os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')); "
       "[time.sleep(0.05) for _ in iter(lambda: (d / 'stop').exists(), True)]")


def _env(visible: str | None, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID")}
    env["PYTHONPATH"] = SRC
    if visible is not None:
        env["CUDA_VISIBLE_DEVICES"] = visible
    env.update(extra)
    return env


STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _stop_jobs(tmp_path):
    yield
    (tmp_path / "stop").write_text("")
    while STARTED:
        p = STARTED.pop()
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _start(tmp_path, need: int, visible: str | None = "0,1", wait=None, **extra) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "mct.cli", "gpus", "--need", str(need), "--lock-dir", str(tmp_path / "slots")]
    if wait is not None:
        cmd += ["--wait", str(wait)]
    cmd += ["--", sys.executable, "-c", JOB, str(tmp_path)]
    p = subprocess.Popen(cmd, env=_env(visible, **extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    STARTED.append(p)
    return p


def _seen(tmp_path, proc, timeout=60.0) -> str:
    """What job ``proc`` saw (the job is ``proc`` itself: mct gpus execs it, same pid)."""
    f = tmp_path / f"seen-{proc.pid}"
    end = time.monotonic() + timeout
    while not f.exists():
        if proc.poll() is not None:
            raise AssertionError(f"job ended with {proc.returncode}: {proc.stderr.read()}")
        if time.monotonic() > end:
            raise AssertionError("job never started")
        time.sleep(0.05)
    time.sleep(0.05)
    return f.read_text()


def test_node_gpus_from_visible_devices_or_nvidia_smi():
    assert G.node_gpus({"CUDA_VISIBLE_DEVICES": "2,3,5"}) == ["2", "3", "5"]
    assert G.node_gpus({"CUDA_VISIBLE_DEVICES": "GPU-aa11, GPU-bb22"}) == ["GPU-aa11", "GPU-bb22"]
    assert G.node_gpus({"CUDA_VISIBLE_DEVICES": ""}) == [] == G.node_gpus({"CUDA_VISIBLE_DEVICES": "-1"})
    assert G.node_gpus({}, smi=lambda: ["0", "1", "2", "3"]) == ["0", "1", "2", "3"]


def test_concurrent_jobs_get_disjoint_gpus_and_a_killed_holder_frees_its_slot(tmp_path):
    a, b = _start(tmp_path, 1), _start(tmp_path, 1)
    seen_a, seen_b = _seen(tmp_path, a), _seen(tmp_path, b)
    assert {seen_a, seen_b} == {"0", "1"}  # one GPU each, not both on cuda:0
    # a third finds none free: with --wait it gives up in one line, exit 2, having run nothing
    c = _start(tmp_path, 1, wait=1)
    out, err = c.communicate(timeout=60)
    assert c.returncode == 2 and not list(tmp_path.glob(f"seen-{c.pid}"))
    lines = [ln for ln in err.splitlines() if ln.startswith("mct: error")]
    assert len(lines) == 1 and "no 1 free GPU(s)" in lines[0] and "Traceback" not in err
    assert f"pid {a.pid}" in lines[0] and f"pid {b.pid}" in lines[0]  # it names the holders
    # kill -9 of a holder: the OS drops its lock, the next job gets exactly that GPU
    a.send_signal(signal.SIGKILL)
    a.wait(timeout=30)
    d = _start(tmp_path, 1)
    assert _seen(tmp_path, d) == seen_a
    # a waiting job (no --wait) starts as soon as a slot is freed
    e = _start(tmp_path, 1)
    time.sleep(1.5)
    assert e.poll() is None and not list(tmp_path.glob(f"seen-{e.pid}"))
    b.send_signal(signal.SIGKILL)
    b.wait(timeout=30)
    assert _seen(tmp_path, e) == seen_b
    assert "waiting for 1 free GPU(s) of 2" in e.stderr.readline()


def test_multi_gpu_jobs_take_all_slots_or_none(tmp_path):
    lock_dir = tmp_path / "slots"
    held = G.try_acquire(["0", "1", "2"], 1, lock_dir)
    assert [g for g, _ in held] == ["0"]
    assert G.try_acquire(["0", "1", "2"], 3, lock_dir) is None
    # the failed 3-GPU attempt kept nothing: two jobs of 1 still find 1 and 2 free
    one, two = G.try_acquire(["0", "1", "2"], 1, lock_dir), G.try_acquire(["0", "1", "2"], 1, lock_dir)
    assert [g for g, _ in one + two] == ["1", "2"]
    for _, fd in held + one + two:
        os.close(fd)
    both = G.try_acquire(["0", "1", "2"], 2, lock_dir)
    assert [g for g, _ in both] == ["0", "1"]
    with pytest.raises(MCTError, match="needs 4 GPU"):
        G.acquire(4, lock_dir, ["0", "1", "2"], wait=0)


def test_two_gpu_job_sees_both(tmp_path):
    assert _seen(tmp_path, _start(tmp_path, 2, visible="4,7")) == "4,7"


@pytest.mark.parametrize("need,visible,extra,want", [
    (0, "0,1", {}, ""),                          # a job that declared no GPU sees none
    (1, "0,1", {"SLURM_JOB_ID": "42"}, "0,1"),   # SLURM bound the job's GPUs: left as it is
    (1, None, {"SLURM_JOB_ID": "42"}, "unset"),
])
def test_no_gpu_and_slurm_jobs(tmp_path, need, visible, extra, want):
    (tmp_path / "stop").write_text("")
    p = _start(tmp_path, need, visible=visible, **extra)
    assert p.wait(timeout=60) == 0, p.stderr.read()
    assert _seen(tmp_path, p) == want
    assert not (tmp_path / "slots").exists()  # no slot taken


def test_more_gpus_than_the_node_has_fails_at_once(tmp_path):
    p = _start(tmp_path, 3, visible="0,1")
    out, err = p.communicate(timeout=60)
    assert p.returncode == 2 and err.strip().count("\n") == 0
    assert "needs 3 GPU(s) but the node has 2" in err and "CUDA_VISIBLE_DEVICES" in err


@pytest.mark.slow
def test_stage_shell_takes_the_jobs_gpus(tmp_path):
    """Every job of the workflow starts as `mct gpus --need <its gpu resource> -- <its command>`
    (dry run of a paper config, printed shell commands)."""
    from test_workflow import BIN, _copy_repo, _env as workflow_env, _run

    from mct.config import load_yaml
    from mct.pipeline.jobs import Pipeline

    repo = _copy_repo(tmp_path / "repo")
    r = _run([BIN / "snakemake", "--cores", "1", "-n", "-p", "--configfile", "config/imagenet64.yaml"],
             repo, workflow_env(repo, without_conda=True))
    out = r.stdout + r.stderr
    p = Pipeline("config/imagenet64.yaml", raw=load_yaml(repo / "config/imagenet64.yaml"), base=repo)
    for job in p.jobs:
        want = f"mct gpus --need {job.resources['gpu']} --lock-dir results/.gpu-slots -- {job.shell} > {job.log}"
        assert want in out, want
    assert any(j.resources["gpu"] >= 1 for j in p.jobs) and any(j.resources["gpu"] == 0 for j in p.jobs)
    assert out.count("mct gpus --need") == out.count("OMP_NUM_THREADS=") == len(p.jobs)
