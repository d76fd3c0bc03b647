"""Scale-out: torchrun / DDP on CPU (gloo) equals one process with the same global batch and
seed, resume on another number of ranks, sharded FID, the helpers of mct.distributed, the
precision / layout / compile knobs of TrainConfig and the torchrun prefix of the workflow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from mct import distributed as D
from mct.benchmarks.base import RunContext
from mct.benchmarks.toy2d import BENCHMARK as TOY
from mct.config import from_dict
from mct.diffusion.edm import EDMPrecond, SigmaDist, append_dims
from mct.distill.em import EMConfig
from mct.distill.step import _autocast
from mct.distill.trainer import TrainConfig, hashed_train, distill
from mct.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# the toy, small: 6 iterations of a global batch of 32 (2 ranks x 16, or 2 x 2 x 8 with accumulation)
DTINY = {
    "generator": {"hidden": 16, "layers": 2},
    "score": {"hidden": 16, "layers": 2},
    "init": {"steps": 5, "batch_size": 32},
    "em": {"num_steps": 3, "gamma_eps": 0.1, "gamma_z": 0.05},
    "train": {"iterations": 6, "batch_size": 32, "score_updates": 2, "score_warmup": 2,
              "checkpoint_every": 3, "keep_checkpoints": 2, "log_every": 2},
    "eval": {"num_samples": 100},
    "variants": {"mct": {}, "acc": {"train": {"accumulation": 2}}, "odd": {"train": {"batch_size": 33}}},
}
NETS = ("generator", "generator_ema", "student")


def _ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _max_diff(a: dict, b: dict) -> float:
    return max(float((a[k][n].double() - b[k][n].double()).abs().max()) for k in NETS for n in a[k])


def _write_config(path: Path, results: Path) -> str:
    path.write_text(yaml.safe_dump({"results_dir": str(results), "progress": False, "benchmarks": {"toy2d": DTINY}}))
    return str(path)


# ----------------------------------------------------------------------------- two processes (torchrun, gloo)


@pytest.fixture(scope="module")
def ddp(tmp_path_factory):
    """Single-process references, then one torchrun launch of tests/dist_worker.py with 2 ranks."""
    tmp = tmp_path_factory.mktemp("ddp")
    ref = RunContext(tmp / "single", progress=False)
    TOY.distill(DTINY, ref, "mct", resume="no")
    part = RunContext(tmp / "resume", progress=False)
    TOY.distill(DTINY, part, "mct", resume="no", stop_after=3)  # finished by 2 ranks below

    from mct.io import torch_save
    from mct.metrics.fidelity import features_checkpoint
    from mct.nets.classifier import SmallCNN

    torch.manual_seed(0)
    feature_net = SmallCNN(1, 8, 10, width=8, feature_dim=16)
    feature_net.feature_scale.fill_(1000.0)  # untrained features are tiny: FID of order 10, not 1e-5
    weights = torch_save(tmp / "features.pt", features_checkpoint(feature_net))
    cfg = _write_config(tmp / "ddp.yaml", tmp / "ddp")
    cfg_resume = _write_config(tmp / "resume.yaml", tmp / "resume")
    cfg_limit = _write_config(tmp / "limit.yaml", tmp / "limit")
    base = ["--bench", "toy2d", "--no-progress"]
    spec = {
        "cli": {"mct": ["distill", "--config", cfg, "--variant", "mct", *base],
                "acc": ["distill", "--config", cfg, "--variant", "acc", *base],
                "resume": ["distill", "--config", cfg_resume, "--variant", "mct", "--resume", *base],
                # a time limit already passed: both ranks stop after iteration 1, then the rerun finishes
                "limit": ["distill", "--config", cfg_limit, "--variant", "mct", "--time-limit", "0.0001", *base],
                "limit_rerun": ["distill", "--config", cfg_limit, "--variant", "mct", *base],
                "odd": ["distill", "--config", cfg, "--variant", "odd", *base]},
        "fid": {"weights": str(weights), "n": 101, "n_ref": 120, "batch": 16, "seed": 5, "ref_seed": 6,
                "ref_shift": 0.4},
        "out": str(tmp),
    }
    (tmp / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run([str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2",
                           str(REPO / "tests" / "dist_worker.py"), str(tmp / "spec.json")],
                          cwd=tmp, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    ranks = [json.loads((tmp / f"rank{r}.json").read_text()) for r in range(2)]
    return {"tmp": tmp, "ref": ref, "ranks": ranks, "stderr": proc.stderr, "weights": weights, "spec": spec}


def test_ddp_two_ranks_equal_one_process(ddp):
    tmp, ref = ddp["tmp"], ddp["ref"]
    r0, r1 = ddp["ranks"]
    assert (r0["world"], r1["world"], r0["backend"]) == (2, 2, "gloo")
    assert r0["rc_mct"] == r1["rc_mct"] == 0
    a = _ckpt(ref.run_dir("toy2d", "mct") / "checkpoint.pt")
    b = _ckpt(tmp / "ddp" / "toy2d" / "runs" / "mct" / "checkpoint.pt")
    assert a["iteration"] == b["iteration"] == 6 and b["world_size"] == 2 and a["world_size"] == 1
    assert a["config_hash"] == b["config_hash"]
    assert _max_diff(a, b) < 1e-5, _max_diff(a, b)  # generator, its EMA and the student score
    # the tolerance is far below what three iterations move the weights
    mid = _ckpt(tmp / "resume" / "toy2d" / "runs" / "mct" / "checkpoints" / "ckpt-00000003.pt")
    assert _max_diff(a, mid) > 1e-4
    # the log is the global batch's (losses averaged over ranks)
    for ra, rb in zip(a["log"], b["log"]):
        assert ra["iteration"] == rb["iteration"]
        for key in ("loss_g", "loss_s", "grad_norm_g", "eps_rms", "nu_rms"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-4, abs=1e-6), key


def test_ddp_with_accumulation_equals_one_process(ddp):
    r0, r1 = ddp["ranks"]
    assert r0["rc_acc"] == r1["rc_acc"] == 0
    a = _ckpt(ddp["ref"].run_dir("toy2d", "mct") / "checkpoint.pt")
    b = _ckpt(ddp["tmp"] / "ddp" / "toy2d" / "runs" / "acc" / "checkpoint.pt")
    assert b["config"]["train"]["accumulation"] == 2
    assert _max_diff(a, b) < 1e-5, _max_diff(a, b)


def test_resume_on_another_number_of_ranks(ddp):
    """3 iterations in one process, the last 3 on two ranks = 6 in one process."""
    r0, r1 = ddp["ranks"]
    assert r0["rc_resume"] == r1["rc_resume"] == 0
    a = _ckpt(ddp["ref"].run_dir("toy2d", "mct") / "checkpoint.pt")
    b = _ckpt(ddp["tmp"] / "resume" / "toy2d" / "runs" / "mct" / "checkpoint.pt")
    assert b["iteration"] == 6 and b["world_size"] == 2
    assert _max_diff(a, b) < 1e-5, _max_diff(a, b)
    kept = sorted(p.name for p in (ddp["tmp"] / "resume" / "toy2d" / "runs" / "mct" / "checkpoints").glob("*.pt"))
    assert kept == ["ckpt-00000003.pt", "ckpt-00000006.pt"]


def test_ranks_stop_together_at_a_time_limit_and_the_rerun_resumes(ddp):
    r0, r1 = ddp["ranks"]
    assert r0["rc_limit"] == r1["rc_limit"] == 75
    assert r0["rc_limit_rerun"] == r1["rc_limit_rerun"] == 0
    assert ddp["stderr"].count("stopped before its time limit after iteration 1 of 6") == 2  # one line per rank
    a = _ckpt(ddp["ref"].run_dir("toy2d", "mct") / "checkpoint.pt")
    b = _ckpt(ddp["tmp"] / "limit" / "toy2d" / "runs" / "mct" / "checkpoint.pt")
    assert b["iteration"] == 6 and _max_diff(a, b) < 1e-5, _max_diff(a, b)


def test_rank0_only_outputs_and_clear_errors(ddp):
    r0, r1 = ddp["ranks"]
    # an indivisible global batch is one clear error on every rank, before any work
    assert r0["rc_odd"] == r1["rc_odd"] == 2
    assert ddp["stderr"].count("batch_size 33 (the global batch) must be divisible by processes x accumulation = 2 x 1") == 2
    assert not (ddp["tmp"] / "ddp" / "toy2d" / "runs" / "odd" / "checkpoints").exists()
    # rank 1 logs warnings only and leaves stages that are not data-parallel to rank 0
    assert r0["log_level"] <= 20 < 30 <= r1["log_level"]
    assert (r0["runs_distill"], r1["runs_distill"]) == (True, True)
    assert (r0["runs_evaluate"], r1["runs_evaluate"]) == (True, False)
    assert "Traceback" not in ddp["stderr"]


def test_all_gather_uneven_and_gather_rows(ddp):
    want = [0.0, 1.0, 2.0] + [100.0 + i for i in range(5)]
    for r in ddp["ranks"]:
        assert r["gathered"] == want
        assert r["gathered_empty_shape"] == [2, 2]
        assert r["gather_rows"] == [0, 10, 20, 30, 40, 50, 60]
    assert ddp["ranks"][0]["shard"] == [0, 51] and ddp["ranks"][1]["shard"] == [51, 101]


def test_fid_across_two_ranks_equals_one(ddp):
    """FID of 101 generated images, sharded 51/50, features gathered and FID computed once,
    equals torch-fidelity's FID (mct.metrics.fidelity) of the same images in one process."""
    from mct.metrics.fidelity import fid_only

    fid = ddp["spec"]["fid"]

    def images(seed, n, shift=0.0):
        return torch.tanh(0.7 * D.randn_rows(seed, 0, n, (1, 8, 8)) + torch.linspace(-0.5, 0.5, 8) + shift)

    ref = images(fid["ref_seed"], fid["n_ref"], fid["ref_shift"])
    single = fid_only(images(fid["seed"], fid["n"]), ref, ddp["weights"])
    r0 = ddp["ranks"][0]
    assert r0["n_gathered"] == fid["n"]
    assert r0["fid_only_of_gathered_images"] == single
    assert r0["fid_from_gathered_features"] == pytest.approx(single, rel=1e-5)
    assert single > 1.0  # two different image sets: a distance that could differ
    other = fid_only(images(fid["seed"] + 1, fid["n"]), ref, ddp["weights"])
    assert abs(other - single) > 1e-3 * single


# ----------------------------------------------------------------------------- helpers, in one process


@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_shard_range_covers_once_in_rank_order(world):
    for n in range(0, 14):
        shards = [D.shard_range(n, r, world) for r in range(world)]
        assert [i for s in shards for i in s] == list(range(n))
        assert max(len(s) for s in shards) - min(len(s) for s in shards) <= 1
    with pytest.raises(ValueError):
        D.shard_range(4, world, world)


def test_batch_rows_partition_the_global_batch():
    seen = []
    for m in range(3):
        for r in range(2):
            sl = D.batch_rows(24, r, 2, 3, m)
            assert sl.stop - sl.start == 4
            seen += list(range(24))[sl]
    assert seen == list(range(24))  # micro-steps in order, ranks in order within each
    with pytest.raises(ValueError, match="not divisible"):
        D.batch_rows(10, 0, 2, 3, 0)


def test_slice_batch_cuts_batch_tensors_only():
    table = torch.arange(6.0).reshape(3, 2)  # not batch-sized: kept whole
    cond = {"labels": torch.arange(8), "emb": (torch.ones(8, 3), None), "table": table,
            "prompts": [f"p{i}" for i in range(8)]}
    out = D.slice_batch(cond, slice(2, 5), 8)
    assert out["labels"].tolist() == [2, 3, 4]
    assert out["emb"][0].shape == (3, 3) and out["emb"][1] is None
    assert out["table"] is table and out["prompts"] == ["p2", "p3", "p4"]
    assert D.slice_batch(None, slice(0, 1), 8) is None


def test_randn_rows_do_not_depend_on_the_split():
    whole = D.randn_rows(3, 0, 2500, (2,), block=1024)
    cuts = [0, 7, 1023, 1024, 1030, 2048, 2500]
    pieces = torch.cat([D.randn_rows(3, a, b - a, (2,), block=1024) for a, b in zip(cuts, cuts[1:])])
    assert torch.equal(whole, pieces)
    assert not torch.equal(whole, D.randn_rows(4, 0, 2500, (2,), block=1024))
    assert D.rank_seed(0, 0, 5) != D.rank_seed(0, 1, 5) != D.rank_seed(0, 1, 6)
    assert D.rank_seed(0, 1, 5) == D.rank_seed(0, 1, 5)


def test_single_process_helpers_are_identities():
    t = torch.arange(5.0)
    assert D.world_size() == 1 and D.rank() == 0 and D.all_gather_tensor(t) is t
    assert D.all_reduce_mean(t) is t and D.broadcast_object({"a": 1}) == {"a": 1}
    assert D.gather_rows(5, 2, lambda s, n: t[s:s + n]).tolist() == t.tolist()
    assert D.stage_runs_here(TOY, "evaluate")


# ----------------------------------------------------------------------------- TrainConfig knobs


def test_train_config_knobs_are_validated_and_runtime_ones_not_hashed():
    with pytest.raises(ConfigError, match="accumulation must be >= 1"):
        TrainConfig(accumulation=0)
    with pytest.raises(ConfigError, match="divisible by accumulation 3"):
        TrainConfig(batch_size=64, accumulation=3)
    with pytest.raises(ConfigError, match="precision must be one of fp32, bf16"):
        from_dict(TrainConfig, {"precision": "fp16"}, "train")
    base = hashed_train(TrainConfig())
    assert base == hashed_train(TrainConfig(accumulation=2, channels_last=True, compile=True))
    assert "precision" not in base and "tf32" not in base  # configs written before the knobs keep their hash
    assert base != hashed_train(TrainConfig(precision="bf16")) != hashed_train(TrainConfig(tf32=True))


class _Rec(nn.Module):
    """Records, per call, whether autocast is on and the dtype of the input it was given."""

    def __init__(self, net, calls):
        super().__init__()
        self.net, self.calls = net, calls

    def forward(self, *args):
        self.calls.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"), args[0].dtype))
        return self.net(*args)


class _ConvGen(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.out = nn.Conv2d(4, 1, 1)

    def forward(self, z, cond=None):
        return self.out(torch.tanh(self.conv(z)))


class _ConvScore(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 3, padding=1)

    def forward(self, x, c_noise, cond=None):
        return self.conv(torch.cat([x, c_noise.reshape(-1, 1, 1, 1).expand_as(x)], 1))


def _gauss_teacher(x, sigma, cond=None):  # data N(0, I): D(x, s) = x / (1 + s^2)
    return x / (1 + append_dims(torch.as_tensor(sigma, dtype=x.dtype), x.ndim) ** 2)


def _tiny_run(tmp, calls=None, **train_kw):
    torch.manual_seed(0)
    gen, student = _ConvGen(), EDMPrecond(_ConvScore(), sigma_data=1.0)
    teacher = _gauss_teacher
    if calls is not None:
        gen, student = _Rec(gen, calls["generator"]), _Rec(student, calls["student"])
        teacher = _Rec(EDMPrecond(_ConvScore(), sigma_data=1.0).requires_grad_(False), calls["teacher"])
    train = TrainConfig(**{"iterations": 3, "batch_size": 8, "score_updates": 2, "lr_g": 1e-3, "lr_s": 1e-3,
                           "sigma": SigmaDist("loguniform", 0.1, 2.0), "sigma_data": 1.0, "checkpoint_every": 3,
                           **train_kw})

    def latents(n, rng):
        return torch.randn(n, 1, 4, 4, generator=rng), None

    distill(tmp, teacher=teacher, generator=gen, student=student, sample_latents=latents,
            em=EMConfig(num_steps=2, gamma_eps=0.1, gamma_z=0.05), train=train, progress=False)
    return gen, student, _ckpt(Path(tmp) / "checkpoint.pt")


def test_accumulation_in_one_process_equals_the_full_batch(tmp_path):
    _, _, a = _tiny_run(tmp_path / "a")
    _, _, b = _tiny_run(tmp_path / "b", accumulation=4)
    assert a["config_hash"] == b["config_hash"]
    assert _max_diff(a, b) < 1e-6, _max_diff(a, b)
    _, _, c = _tiny_run(tmp_path / "c", seed=1)
    assert _max_diff(a, c) > 1e-4  # another seed moves the weights elsewhere


def test_bf16_autocasts_the_network_passes_only(tmp_path):
    calls = {"generator": [], "student": [], "teacher": []}
    gen, _, ck = _tiny_run(tmp_path / "bf16", calls=calls, precision="bf16")
    for name, rec in calls.items():
        assert rec and all(on and dt == torch.bfloat16 for on, dt, _ in rec), name
        assert all(x == torch.float32 for _, _, x in rec), name  # the EM arithmetic hands them fp32
    assert all(t.dtype == torch.float32 for k in NETS for t in ck[k].values())
    fp32 = {"generator": [], "student": [], "teacher": []}
    _, _, ck32 = _tiny_run(tmp_path / "fp32", calls=fp32)
    assert not any(on for rec in fp32.values() for on, _, _ in rec)
    assert ck32["config_hash"] != ck["config_hash"]
    assert 0 < _max_diff(ck, ck32) < 0.05  # bf16 rounding, same run otherwise
    f = _autocast(lambda x: x @ x, torch.device("cpu"), "bf16")
    assert f(torch.ones(2, 2)).dtype == torch.float32


def test_channels_last_and_compile_knobs(tmp_path, monkeypatch):
    compiled = []

    def fake_compile(fn, *args, **kwargs):
        compiled.append(fn)
        return fn

    monkeypatch.setattr(torch, "compile", fake_compile)
    gen, student, ck = _tiny_run(tmp_path / "cl", channels_last=True, compile=True)
    assert gen.conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert student.model.conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert gen in compiled and student in compiled  # the generator and student forward passes
    assert all("_orig_mod" not in k for k in ck["generator"])  # checkpoints hold the bare modules
    _, _, plain = _tiny_run(tmp_path / "plain")
    assert plain["config_hash"] == ck["config_hash"] and _max_diff(plain, ck) < 1e-5


# ----------------------------------------------------------------------------- the workflow launches torchrun
