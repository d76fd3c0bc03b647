"""The run plan (mct.pipeline.plan, ``mct plan``) and the GPU-memory check of ``mct config check``,
on rehearsal records made of issue 15's measured numbers (tests/data/rehearsal-issue15/)."""

import copy
import json
import shutil
from pathlib import Path

import pytest
import yaml

from mct.cli import main
from mct.config import load_yaml
from mct.errors import ConfigError, MCTError
from mct.pipeline.plan import check_memory, make_plan, read_rehearsal
from mct.pipeline.resources import parse_cluster, segments_of

REPO = Path(__file__).resolve().parent.parent
RECORDS = REPO / "tests" / "data" / "rehearsal-issue15"
PAPER = ("imagenet64", "imagenet128", "sd15")
GB = 1e9


def _config(tmp_path, bench, edit=None, records=True):
    """The shipped paper config of ``bench``, results under tmp_path (with the fixture record)."""
    raw = load_yaml(REPO / "config" / f"{bench}.yaml")
    raw["results_dir"] = str(tmp_path / "results")
    if edit:
        edit(raw)
    if records:
        (tmp_path / "results" / "rehearsal").mkdir(parents=True, exist_ok=True)
        shutil.copy(RECORDS / f"{bench}.json", tmp_path / "results" / "rehearsal" / f"{bench}.json")
    path = tmp_path / f"{bench}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path, raw


def test_the_fixture_records_hold_the_issue_numbers():
    rec = read_rehearsal(RECORDS / "imagenet64.json")
    assert rec.params_bytes["generator"] == 4 * 295_899_267
    assert rec.activation_bytes["none"] == int(1.85 * 2**30)
    assert rec.flops_per_sample == pytest.approx(12.155e12)
    # ~12 TFLOP x 256 x 200k ~ 6e20 FLOP ~ 430 H100-hours at 40 % of bf16 peak
    assert 6.0e20 < rec.flops_per_sample * 256 * 200_000 < 6.3e20
    assert rec.flop_rate["H100-80GB"] == pytest.approx(0.4 * 989.4e12)
    # 10 copies: teacher, generator, EMA, student, 2 gradients, 4 Adam moments: the issue's ~12 GB
    assert rec.state_bytes == 10 * 4 * 295_899_267


@pytest.mark.parametrize("bench", PAPER)
def test_shipped_paper_configs_pass_the_memory_check(tmp_path, capsys, bench):
    path, _ = _config(tmp_path, bench)
    assert main(["config", "check", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"{bench}: fits:" in out


@pytest.mark.parametrize("bench", PAPER)
def test_shipped_paper_configs_hold_what_the_plan_derives(tmp_path, bench):
    """The committed batch split, GPU count, runtime, segments and checkpoint cadence are what the plan
    derives from the committed rehearsal record (results/rehearsal/<bench>.json, `mct rehearse`)."""
    _, raw = _config(tmp_path, bench, records=False)
    plan = make_plan(raw, bench, read_rehearsal(REPO / "results" / "rehearsal" / f"{bench}.json"))
    section = raw["benchmarks"][bench]
    job = raw["cluster"]["benchmarks"][bench]["distill"]
    assert section["train"]["accumulation"] == plan.accumulation
    assert section["train"]["checkpoint_every"] == plan.checkpoint_every
    assert (job["gpus"], job["runtime"], job["segments"]) == (plan.gpus, plan.runtime_min, plan.segments)
    assert plan.memory_bytes <= 0.9 * 80 * GB


def test_plan_values_for_imagenet64(tmp_path):
    _, raw = _config(tmp_path, "imagenet64", records=False)
    plan = make_plan(raw, "imagenet64", read_rehearsal(RECORDS / "imagenet64.json"))
    # (72 GB usable - 11.83 GB state) / (1.85 GiB / 2 in bf16) = 60 samples per GPU
    assert plan.max_micro_batch == 60
    assert (plan.gpus, plan.micro_batch, plan.accumulation) == (8, 32, 1)
    assert plan.gpu_hours == pytest.approx(436.8, abs=0.1)
    assert plan.wall_hours == pytest.approx(436.8 / 8, abs=0.05)
    # 54.6 h against a 24 h limit less 0.5 h per job: 3 jobs of ceil(18.2 + 0.5) = 19 h
    assert (plan.segments, plan.runtime_min) == (3, 19 * 60)
    assert plan.memory_bytes == pytest.approx(10 * 4 * 295_899_267 + 32 * 1.85 * 2**30 / 2, rel=1e-6)


def test_a_smaller_gpu_gets_accumulation(tmp_path):
    def small(raw):
        raw["cluster"]["gpu_type"] = "A100-40GB"

    _, raw = _config(tmp_path, "imagenet64", small, records=False)
    rec = json.loads((RECORDS / "imagenet64.json").read_text())
    rec["projection"]["hours"]["A100-40GB"] = rec["projection"]["hours"]["A100-80GB"]
    (tmp_path / "r.json").write_text(json.dumps(rec))
    plan = make_plan(raw, "imagenet64", read_rehearsal(tmp_path / "r.json"))
    # (36 GB - 11.83 GB) / 0.993 GB = 24 samples fit: 32 per GPU become 2 micro-steps of 16
    assert plan.max_micro_batch == 24
    assert (plan.gpus, plan.micro_batch, plan.accumulation) == (8, 16, 2)
    # A100 hours: 1385 GPU-hours / 8 = 173 h -> 8 jobs of 22 h under the 24 h limit
    assert plan.segments == 8 and plan.runtime_min <= 1440


def test_sd15_plan_takes_the_fewest_gpus_that_finish_in_one_job(tmp_path):
    _, raw = _config(tmp_path, "sd15", records=False)
    plan = make_plan(raw, "sd15", read_rehearsal(RECORDS / "sd15.json"))
    assert plan.checkpointing and not plan.checkpointing_added  # the config has gradient checkpointing on
    # with checkpointing's recompute 56.4 TFLOP x 32 x 20k = 3.6e19 FLOP = 25.3 H100-hours > 23.5 h: 2 GPUs
    assert plan.gpu_hours == pytest.approx(25.3, abs=0.1)
    assert (plan.gpus, plan.micro_batch, plan.segments) == (2, 16, 1)


def test_batch_256_on_one_gpu_is_refused_in_one_line(tmp_path, capsys):
    def as_shipped_before(raw):  # issue 15 bug 1: no accumulation, cluster {} gives one GPU
        raw["cluster"] = {}
        raw["benchmarks"]["imagenet64"]["train"]["accumulation"] = 1

    path, _ = _config(tmp_path, "imagenet64", as_shipped_before)
    assert main(["config", "check", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "does not fit its GPU" in err and "256 samples per GPU" in err
    # 11.8 GB of state + 256 x 0.993 GB of bf16 activations
    assert "need 266.1 GB" in err and "mct plan" in err


def test_a_variant_that_does_not_fit_is_named(tmp_path):
    def bigger(raw):
        raw["benchmarks"]["imagenet64"]["variants"]["big"] = {"train": {"batch_size": 1024}}

    _, raw = _config(tmp_path, "imagenet64", bigger)
    with pytest.raises(ConfigError, match="imagenet64 variant big does not fit"):
        check_memory(raw, tmp_path / "results", "c.yaml")


def test_without_a_record_check_says_so_and_suggests_rehearse(tmp_path, capsys):
    path, _ = _config(tmp_path, "imagenet64", records=False)
    assert main(["config", "check", "--config", str(path)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3  # ok, the memory line, the disk line (mct.pipeline.disk)
    assert "no rehearsal record" in lines[1] and "mct rehearse" in lines[1]
    assert lines[2].startswith("  imagenet64: checkpoints need ")


def test_a_cpu_config_is_not_checked(tmp_path):
    raw = copy.deepcopy(load_yaml(REPO / "config" / "default.yaml"))
    assert check_memory(raw, tmp_path, "config/default.yaml") == []


def test_mct_plan_prints_the_config_values(tmp_path, capsys):
    path, _ = _config(tmp_path, "imagenet128")
    assert main(["plan", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "batch 128 = 8 GPU(s) x 16 per GPU x accumulation 1" in out
    assert "cluster.benchmarks.imagenet128.distill: {gpus: 8, runtime: 1200, segments: 4}" in out


@pytest.mark.parametrize("mutate,needle", [
    (lambda r: r["memory"].pop("optimizer_bytes"), "has no memory.optimizer_bytes"),
    (lambda r: r["memory"]["params_bytes"].update(teacher="big"), "memory.params_bytes.teacher must be a number"),
    (lambda r: r["projection"]["hours"].clear(), "projects no hours for cluster.gpu_type 'H100-80GB'"),
    (lambda r: r["memory"].update(activation_precision="fp8"), "activation precision 'fp8'"),
])
def test_a_bad_record_is_one_line(tmp_path, capsys, mutate, needle):
    path, _ = _config(tmp_path, "imagenet64")
    rec_path = tmp_path / "results" / "rehearsal" / "imagenet64.json"
    rec = json.loads(rec_path.read_text())
    mutate(rec)
    rec_path.write_text(json.dumps(rec))
    assert main(["plan", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1


def test_a_record_that_is_not_json(tmp_path):
    (tmp_path / "r.json").write_text("{not json")
    with pytest.raises(MCTError, match="is not JSON"):
        read_rehearsal(tmp_path / "r.json")


def test_segments_feed_the_distill_retries():
    raw = load_yaml(REPO / "config" / "imagenet128.yaml")
    cluster = parse_cluster(raw)
    assert segments_of(cluster, "imagenet128") == 4
    assert segments_of(parse_cluster({}), "imagenet128") == 1
    with pytest.raises(ConfigError, match="segments must be an integer >= 1"):
        parse_cluster({"cluster": {"stages": {"distill": {"segments": 0}}}})


def test_a_record_in_rehearse_s_own_shape(tmp_path):
    """`mct rehearse` also writes generator_ema, grads_bytes, the batch-independent activations,
    projection.gpu_hours and the device (activations measured on a CPU are fp32)."""
    rec = json.loads((RECORDS / "imagenet64.json").read_text())
    for key in ("precision",):
        rec.pop(key)
    rec["memory"].pop("activation_precision")
    p = rec["memory"]["params_bytes"]
    p["generator_ema"], p["total"] = p["generator"], 4 * p["generator"]
    rec["memory"]["grads_bytes"] = 2 * p["generator"] + 1000
    rec["memory"]["activation_fixed_bytes"] = {"none": 2 * 10**9, "checkpointed": 10**8}
    rec["projection"]["gpu_hours"] = rec["projection"].pop("hours")
    rec.update(device="cpu", settings={"train_precision": "bf16"})
    (tmp_path / "r.json").write_text(json.dumps(rec))
    got = read_rehearsal(tmp_path / "r.json")
    assert got.activation_precision == "fp32"
    assert got.state_bytes == 10 * 4 * 295_899_267 + 1000
    assert got.fixed_bytes(False) == got.state_bytes + 2 * 10**9
    assert got.flop_rate["H100-80GB"] == pytest.approx(0.4 * 989.4e12)
    _, raw = _config(tmp_path, "imagenet64", records=False)
    plan = make_plan(raw, "imagenet64", got)
    # (72 GB - 11.84 GB - 2 GB fixed activations) / 0.993 GB = 58 samples per GPU (60 without them)
    assert plan.max_micro_batch == 58
    assert plan.memory_bytes == pytest.approx(got.fixed_bytes(False) + 32 * 1.85 * 2**30 / 2, rel=1e-6)
    rec["device"] = "cuda"
    (tmp_path / "r.json").write_text(json.dumps(rec))
    assert read_rehearsal(tmp_path / "r.json").activation_precision == "bf16"


def test_a_distill_job_larger_than_a_node_is_refused(tmp_path, capsys):
    def sixteen(raw):
        raw["cluster"]["benchmarks"]["imagenet64"]["distill"]["gpus"] = 16

    path, _ = _config(tmp_path, "imagenet64", sixteen, records=False)
    assert main(["config", "check", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "asks for 16 GPUs but a node has 8" in err and len(err.strip().splitlines()) == 1
