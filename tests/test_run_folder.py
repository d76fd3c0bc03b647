"""The run folder as a contract, through the real stages (tests/test_contract.py drives the
primitives and the bad inputs): a second writer is refused while the first runs, weights or
metrics of another config or another variant are never labelled as this one's, and a stage
that dies before its end leaves outputs that no reader takes as whole."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mct.cli import main
from mct.io import is_complete

TOY = {"generator": {"hidden": 16, "layers": 2}, "score": {"hidden": 16, "layers": 2},
       "init": {"steps": 0}, "em": {"num_steps": 1, "gamma_eps": 0.1, "gamma_z": 0.0},
       "train": {"iterations": 3, "batch_size": 32, "score_updates": 1, "score_warmup": 0, "checkpoint_every": 1,
                 "log_every": 1},
       "eval": {"num_samples": 200},
       "variants": {"mct": {}, "twin": {}}}


def write(tmp: Path, section: dict) -> Path:
    path = tmp / "c.yaml"
    path.write_text(yaml.safe_dump({"results_dir": str(tmp / "results"), "progress": False,
                                    "benchmarks": {"toy2d": section}}))
    return path


def run(cfg: Path, *argv: str) -> int:
    return main([argv[0], "--config", str(cfg), "--bench", "toy2d", *argv[1:], "--no-progress"])


def one_line(capsys, needle: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mct: error: ") and "Traceback" not in err, err
    assert needle in err, err
    return err


def test_evaluate_refuses_weights_trained_under_another_config(tmp_path, capsys):
    cfg = write(tmp_path, TOY)
    assert run(cfg, "distill", "--variant", "mct") == 0
    assert run(cfg, "evaluate", "--variant", "mct") == 0
    metrics = tmp_path / "results/toy2d/runs/mct/metrics.json"
    before = metrics.read_bytes()
    # the user edits the variant (K = 1 -> 8) after training: its weights no longer match the config
    edited = write(tmp_path, {**TOY, "variants": {"mct": {"em": {"num_steps": 8}}, "twin": {}}})
    capsys.readouterr()
    assert run(edited, "evaluate", "--variant", "mct") == 2
    one_line(capsys, "was trained under another config than toy2d/mct has now")
    assert metrics.read_bytes() == before  # nothing relabelled
    # and summarize / the report do not take the old metrics for the new config
    assert run(edited, "summarize") == 2
    one_line(capsys, "the evaluate outputs")


def test_a_checkpoint_copied_from_another_variant_is_refused(tmp_path, capsys):
    import shutil

    cfg = write(tmp_path, TOY)
    assert run(cfg, "distill", "--variant", "mct") == 0
    twin = tmp_path / "results/toy2d/runs/twin"
    twin.mkdir(parents=True)
    shutil.copyfile(tmp_path / "results/toy2d/runs/mct/checkpoint.pt", twin / "checkpoint.pt")
    capsys.readouterr()
    assert run(cfg, "evaluate", "--variant", "twin") == 2  # same settings, but another variant's weights
    one_line(capsys, "was trained as toy2d/mct, not toy2d/twin")
    assert not (twin / "metrics.json").exists()


def test_a_stage_that_dies_leaves_its_outputs_incomplete_for_every_reader(tmp_path, capsys, monkeypatch):
    from mct.benchmarks.toy2d import Toy2D

    cfg = write(tmp_path, TOY)
    for v in ("mct", "twin"):
        assert run(cfg, "distill", "--variant", v) == 0
        assert run(cfg, "evaluate", "--variant", v) == 0
    assert run(cfg, "summarize") == 0
    run_dir = tmp_path / "results/toy2d/runs/twin"
    assert is_complete(run_dir, "evaluate")

    def dies(self, *args, **kwargs):  # a crash after samples.npz, before samples.png and metrics.json
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(Toy2D, "_scatter", staticmethod(dies))
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(cfg, "evaluate", "--variant", "twin")
    monkeypatch.undo()
    assert not is_complete(run_dir, "evaluate")  # the old metrics.json is still there, but no longer whole
    capsys.readouterr()
    assert run(cfg, "summarize") == 2
    one_line(capsys, "the evaluate outputs are missing or incomplete")
    from mct.report.collect import collect

    res = collect(tmp_path / "results", yaml.safe_load(cfg.read_text()))
    assert "twin" not in res.bench("toy2d").runs and "mct" in res.bench("toy2d").runs
    assert any("runs/twin/metrics.json" in p.path and "incomplete" in p.reason for p in res.problems)


def test_kill_9_during_evaluate_leaves_no_complete_outputs(tmp_path):
    cfg = write(tmp_path, {**TOY, "eval": {"num_samples": 20000}})
    assert run(cfg, "distill", "--variant", "mct") == 0
    run_dir = tmp_path / "results/toy2d/runs/mct"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "mct.cli", "evaluate", "--config", str(cfg), "--bench", "toy2d",
                             "--variant", "mct", "--no-progress"], env=env, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (run_dir / ".mct-lock.pid").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not is_complete(run_dir, "evaluate")
    assert not (run_dir / ".complete-evaluate.json").exists()


def test_a_second_writer_is_refused_while_the_first_runs(tmp_path, capsys):
    cfg = write(tmp_path, {**TOY, "train": {**TOY["train"], "iterations": 100000, "checkpoint_every": 100000}})
    run_dir = tmp_path / "results/toy2d/runs/mct"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    first = subprocess.Popen([sys.executable, "-m", "mct.cli", "distill", "--config", str(cfg), "--bench", "toy2d",
                              "--variant", "mct", "--no-progress"], env=env, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (run_dir / ".mct-lock.pid").exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, "the first writer ended before the test could race it"
        assert run(cfg, "distill", "--variant", "mct") == 2
        err = one_line(capsys, f"is being written by another mct process (pid {first.pid}")
        assert "distill toy2d" in err
        assert run(cfg, "evaluate", "--variant", "mct") == 2  # a reader-writer of the same folder waits its turn
        one_line(capsys, f"pid {first.pid}")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # the killed holder's lock is taken over: a fresh run of the same variant goes ahead
    short = write(tmp_path, TOY)
    assert run(short, "distill", "--variant", "mct", "--no-resume") == 0
    assert (run_dir / "checkpoint.pt").exists() and not (run_dir / ".mct-lock.pid").exists()


@pytest.mark.parametrize("bench,section,same,other", [
    # the digits-text teacher is conditioned on the CLIP's text tower: a CLIP change is a new run
    ("digits-text", {}, {"eval": {"num_samples": 50}}, {"clip": {"steps": 7}}),
    # the teacher's own sampler is read by teacher_eval only; its training is part of the run
    ("digits", {}, {"teacher": {"eval_nfe": [5], "rho": 5.0}}, {"teacher": {"lr": 0.01}}),
    # where sha256 pins are recorded changes no weight; the generator's level does
    ("imagenet64", {}, {"lock_file": "elsewhere.lock.yaml"}, {"sigma_g": 2.0}),
    ("toy2d", {}, {"eval": {"seed": 7}, "num_threads": 2}, {"em": {"num_steps": 3}}),
])
def test_the_run_hash_follows_what_the_weights_depend_on(bench, section, same, other):
    from mct.benchmarks.base import get_benchmark
    from mct.config import deep_merge

    b = get_benchmark(bench)
    base = b.run_hash(b.parse(section))
    assert b.run_hash(b.parse(deep_merge(section, same))) == base
    assert b.run_hash(b.parse(deep_merge(section, other))) != base
