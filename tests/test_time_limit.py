"""A distill job that meets its time limit (issue 15, bug 2): it stops cleanly with a checkpoint
and a distinct exit status, and the rerun resumes to the same weights, bit for bit, as a run
that was never interrupted."""

import itertools
import time

import pytest
import torch

from mct.benchmarks.base import RunContext
from mct.benchmarks.toy2d import BENCHMARK as TOY
from mct.cli import main
from mct.errors import TIME_LIMIT_EXIT, TimeLimitReached
from test_toy2d import TINY, write_config


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _assert_same_run(a_path, b_path):
    a, b = _weights(a_path), _weights(b_path)
    assert a["iteration"] == b["iteration"] == TINY["train"]["iterations"]
    for key in ("generator", "generator_ema", "student"):
        for name, t in a[key].items():
            assert torch.equal(t, b[key][name]), (key, name)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(a["log"]) == strip(b["log"])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    ctx = RunContext(tmp_path_factory.mktemp("full"), progress=False)
    TOY.distill(TINY, ctx, "mct", resume="no")
    return ctx.run_dir("toy2d", "mct") / "checkpoint.pt"


def test_a_passed_deadline_stops_after_one_iteration_with_a_checkpoint(tmp_path, uninterrupted):
    ctx = RunContext(tmp_path, progress=False)
    run = ctx.run_dir("toy2d", "mct")
    with pytest.raises(TimeLimitReached, match="after iteration 1 of 12"):
        TOY.distill(TINY, ctx, "mct", resume="no", deadline=time.monotonic())
    assert not (run / "checkpoint.pt").exists()  # the completion record only when training finished
    assert [p.name for p in (run / "checkpoints").glob("*.pt")] == ["ckpt-00000001.pt"]
    TOY.distill(TINY, ctx, "mct")  # resume='auto', as the resubmitted job runs it
    _assert_same_run(uninterrupted, run / "checkpoint.pt")


def test_a_run_in_three_segments_ends_as_an_uninterrupted_run(tmp_path, monkeypatch, uninterrupted):
    """A clock that advances one second per deadline check: each segment stops after the
    iteration whose check passes the deadline, between and on regular checkpoints (every 4)."""
    ctx = RunContext(tmp_path, progress=False)
    run = ctx.run_dir("toy2d", "mct")
    stops = []
    for deadline in (4.5, 3.5):
        clock = itertools.count()
        monkeypatch.setattr("mct.distill.trainer.monotonic", lambda clock=clock: float(next(clock)))
        with pytest.raises(TimeLimitReached) as info:
            TOY.distill(TINY, ctx, "mct", deadline=deadline)
        stops.append(str(info.value))
        assert not (run / "checkpoint.pt").exists()
    assert "after iteration 6 of 12" in stops[0] and "after iteration 11 of 12" in stops[1]
    monkeypatch.undo()
    TOY.distill(TINY, ctx, "mct")
    _assert_same_run(uninterrupted, run / "checkpoint.pt")


def test_the_cli_exits_75_in_one_line_and_the_rerun_finishes(tmp_path, capsys, uninterrupted):
    cfg = write_config(tmp_path / "c.yaml", results=tmp_path / "r")
    args = ["distill", "--config", str(cfg), "--bench", "toy2d", "--variant", "mct", "--no-progress"]
    assert main(args + ["--time-limit", "0.0001"]) == TIME_LIMIT_EXIT == 75
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "stopped before its time limit after iteration 1 of 12" in err[0]
    assert "rerun the same command to resume" in err[0]
    assert main(args) == 0
    _assert_same_run(uninterrupted, tmp_path / "r" / "toy2d" / "runs" / "mct" / "checkpoint.pt")


@pytest.mark.parametrize("flag,env,needle", [
    (["--time-limit", "0"], None, "--time-limit must be a number of minutes > 0"),
    (["--time-limit", "nan"], None, "--time-limit must be a number of minutes > 0"),
    ([], "soon", "$MCT_TIME_LIMIT_MIN must be a number of minutes, got 'soon'"),
])
def test_a_bad_time_limit_is_one_line(tmp_path, capsys, monkeypatch, flag, env, needle):
    if env is not None:
        monkeypatch.setenv("MCT_TIME_LIMIT_MIN", env)
    cfg = write_config(tmp_path / "c.yaml", results=tmp_path / "r")
    assert main(["distill", "--config", str(cfg), "--bench", "toy2d", "--variant", "mct", *flag]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r" / "toy2d" / "runs" / "mct").exists()
