"""``mct bench`` (issue 9): the JSON it writes, the protocol of its timings and memory
measurement, which weights it measures, that the step it times is the trainer's own, and the
generator passes the EM step saves. No assertion here depends on how fast the machine is."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch
import yaml

import mct.bench as B
from mct.bench import timing
from mct.bench.memory import PeakMemory
from mct.bench.run import Passes
from mct.bench.setups import setup_imagenet, setup_toy2d
from mct.benchmarks.base import RunContext
from mct.benchmarks.toy2d import BENCHMARK as TOY
from mct.checkpoint import read_checkpoint
from mct.cli import main
from mct.config import deep_merge
from mct.distill.em import EMConfig, e_step, em_generator_loss, m_step_loss
from mct.distill.trainer import distill
from mct.nets.mlp import MLPGenerator, mlp_denoiser
from mct.records import BenchRecord, read_record
from mct.teachers import ring_gmm

TOY_SECTION = {
    "generator": {"hidden": 16, "layers": 2},
    "score": {"hidden": 16, "layers": 2},
    "init": {"steps": 0},
    "em": {"num_steps": 2, "gamma_eps": 0.1, "gamma_z": 0.05},
    "train": {"iterations": 4, "batch_size": 32, "score_updates": 1, "score_warmup": 0, "checkpoint_every": 2,
              "log_every": 1},
    "eval": {"num_samples": 100},
    "variants": {"mct": {}},
}
QUICK = {"repeats": 2, "warmup": 1, "min_seconds": 0.0, "nfe": [3, 5]}


def write_config(tmp: Path, benchmarks: dict, bench: dict | None = None) -> tuple[Path, Path]:
    results = tmp / "results"
    path = tmp / "c.yaml"
    path.write_text(yaml.safe_dump({"results_dir": str(results), "progress": False, "benchmarks": benchmarks,
                                    "bench": QUICK if bench is None else bench}))
    return path, results


def test_toy2d_bench_record(tmp_path):
    cfg, results = write_config(tmp_path, {"toy2d": TOY_SECTION})
    threads = torch.get_num_threads()
    assert main(["bench", "--config", str(cfg)]) == 0
    assert torch.get_num_threads() == threads  # restored
    assert sorted(p.name for p in (results / "bench").iterdir()) == ["toy2d.json"]
    r = read_record(results / "bench" / "toy2d.json", BenchRecord)  # the record the report reads

    assert r.bench == "toy2d" and r.device == "cpu" and r.num_threads == 1 and r.batch_size == 32
    assert r.weights == {"teacher": "analytic", "generator": "random", "student": "random"}
    assert r.same_network is False

    assert r.student.nfe == 1 and r.student.images_per_s > 0
    assert [t.nfe for t in r.teacher] == [3, 5]
    for t in r.teacher:
        assert t.measured_nfe == t.nfe
        # speedup is stored rounded to 3 decimals (and images/s to 1): allow that rounding, no more
        assert t.speedup == pytest.approx(r.student.images_per_s / t.images_per_s, rel=1e-3, abs=6e-4)
        assert t.target_met == (t.speedup >= B.SPEEDUP_TARGET * t.nfe)

    e = r.em
    assert e.K == 2 and e.passes_count == {"teacher_forward": 2, "student_forward": 2, "generator_vjp": 2,
                                           "m_step": 1, "score_step": 1}
    assert all(v > 0 for v in e.passes_ms.values())
    assert e.passes_sum_ms == pytest.approx(sum(e.passes_count[k] * v for k, v in e.passes_ms.items()), rel=1e-3)
    low, high = e.overhead_ratio_range
    assert 0 < low <= e.overhead_ratio <= high  # the median over windows
    assert e.iteration_ms > 0 and e.target_met == (e.overhead_ratio <= B.OVERHEAD_TARGET)

    m = r.memory
    assert "VmHWM" in m.method and m.batch_sizes == [16, 32]
    assert set(m.per_sample_bytes) == {"student_sampling", "teacher_sampling", "em_iteration"}
    assert all(v >= 0 for v in m.peak_bytes.values())


def test_trained_weights_are_measured_when_present(tmp_path):
    ctx = RunContext(tmp_path / "results", progress=False)
    TOY.distill(TOY_SECTION, ctx, "mct", resume="no")
    ckpt = ctx.run_dir("toy2d", "mct") / "checkpoint.pt"
    setup = setup_toy2d("toy2d", TOY_SECTION, ctx, B.BenchConfig())
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    for name, t in setup.generator.state_dict().items():
        assert torch.equal(t, state["generator_ema"][name]), name
    for name, t in setup.student.state_dict().items():
        assert torch.equal(t, state["student"][name]), name
    assert setup.weights["generator"] == f"trained: {ckpt}"
    # a variant without a run falls back to one that has one
    section = deep_merge(TOY_SECTION, {"variants": {"other": {}}})
    assert setup_toy2d("toy2d", section, ctx, B.BenchConfig(variant="other")).variant == "mct"


def test_digits_unet_bench(tmp_path):
    section = {"teacher": {"net": {"model_channels": 16, "channel_mult": [1], "num_blocks": 1}, "eval_nfe": [5]},
               "em": {"num_steps": 1, "gamma_z": 0.0},
               "train": {"batch_size": 8, "log_every": 1, "score_updates": 1},
               "variants": {"mct": {}}}
    cfg, results = write_config(tmp_path, {"digits": section},
                                {"repeats": 1, "warmup": 0, "min_seconds": 0.0, "batch_size": 64})
    assert main(["bench", "--config", str(cfg), "--bench", "digits"]) == 0
    r = read_record(results / "bench" / "digits.json", BenchRecord)
    assert r.weights == {"teacher": "random", "generator": "random", "student": "random"}
    assert r.same_network is True
    (t,) = r.teacher
    # the benchmark's own eval_nfe, counted by wrapping the teacher (not assumed): Heun with
    # 3 steps = 2 x 3 - 1 network passes
    assert t.nfe == t.measured_nfe == 5
    assert t.batch_size == r.student.batch_size == r.batch_size == 64
    assert r.em.passes_count == {"teacher_forward": 1, "student_forward": 1, "generator_vjp": 0,
                                 "m_step": 1, "score_step": 1}  # gamma_z = 0: z frozen
    assert r.em.passes_ms["generator_vjp"] == 0
    m = r.memory
    assert m.batch_sizes == [32, 64]
    peak = m.peak_bytes
    # one EM iteration keeps the generator's activations for its backward pass (and the
    # student's for the DSM update): more than a no-grad forward pass of the same network
    assert 0 < peak["student_sampling"] < peak["em_iteration"]
    assert m.per_sample_bytes["em_iteration"] > 0


def test_bench_times_the_trainers_own_step(tmp_path):
    """The step ``mct bench`` times (memory and the student-score pass) is distill()'s own:
    one iteration of it gives bit for bit the weights of a one-iteration distill() run."""
    ctx = RunContext(tmp_path / "results", progress=False)
    setup = setup_toy2d("toy2d", TOY_SECTION, ctx, B.BenchConfig())
    init = copy.deepcopy(setup.generator.state_dict())
    passes = Passes(setup, setup.train.batch_size, torch.device("cpu"))
    torch.manual_seed(setup.train.seed)  # as distill() seeds torch's global generator
    passes.iteration()
    train = dataclasses.replace(setup.train, iterations=1)
    distill(tmp_path / "run", teacher=setup.teacher, generator=copy.deepcopy(setup.generator),
            student=copy.deepcopy(setup.student), sample_latents=setup.sample_latents, em=setup.em, train=train,
            resume="no", progress=False)
    state = read_checkpoint(tmp_path / "run" / "checkpoint.pt")
    step = passes.step
    for key, net in (("generator", step.generator), ("generator_ema", step.ema), ("student", step.student)):
        for name, t in net.state_dict().items():
            assert torch.equal(t, state[key][name]), (key, name)
    assert step.rng.get_state().equal(state["rng"])  # the same random numbers were drawn
    assert any(not torch.equal(init[k], state["generator"][k]) for k in init)  # and the step moved the weights
    assert all(torch.equal(init[k], v) for k, v in setup.generator.state_dict().items())  # on private copies


def test_paper_scale_networks_are_skipped_on_cpu(tmp_path):
    cfg, results = write_config(tmp_path, {"imagenet64": {"lock_file": str(tmp_path / "lock.yaml")}})
    assert main(["bench", "--config", str(cfg)]) == 0
    r = read_record(results / "bench" / "imagenet64.json", BenchRecord)
    assert r.device == "cpu" and "GPU" in r.skipped and r.student is None and r.em is None


def test_imagenet_setup_measures_the_teacher_architecture(tmp_path):
    """The GPU path (ImageNet networks) run at toy size on CPU: a tiny ADM of the same family."""
    tiny = dict(img_resolution=8, img_channels=3, label_dim=10, use_fp16=False, sigma_data=0.5,
                model_type="DhariwalUNet", model_channels=16, channel_mult=[1, 2], channel_mult_emb=2, num_blocks=1,
                attn_resolutions=[], dropout=0.0)
    section = {"resolution": 8, "num_classes": 10, "precision": "fp32", "lock_file": str(tmp_path / "lock.yaml"),
               "em": {"num_steps": 1, "gamma_z": 0.05}, "train": {"batch_size": 4, "log_every": 1, "score_updates": 1},
               "eval": {"teacher_nfe": [3]}}
    ctx = RunContext(tmp_path / "results", progress=False)
    setup = setup_imagenet("imagenet64", section, ctx, B.BenchConfig(), arch={"kind": "edm-pickle",
                                                                         "init_kwargs": tiny})
    assert setup.same_network and setup.weights["teacher"] == "random"
    r = B.measure(setup, B.BenchConfig(repeats=1, warmup=0, min_seconds=0.0, memory=False), torch.device("cpu"))
    assert r["networks"]["data_shape"] == [3, 8, 8]
    assert r["sampling"]["teacher"][0]["measured_nfe"] == 3
    assert r["em_overhead"]["passes_count"]["generator_vjp"] == 1


def test_bad_bench_inputs(tmp_path, capsys):
    cfg, results = write_config(tmp_path, {"toy2d": TOY_SECTION})
    assert main(["bench", "--config", str(cfg), "--bench", "toy3d"]) == 2
    assert "unknown benchmark 'toy3d'" in capsys.readouterr().err
    cfg, results = write_config(tmp_path, {"toy2d": TOY_SECTION}, {"nfe": [4]})
    assert main(["bench", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "nfe entries must be odd" in err and err.count("\n") == 1
    cfg, results = write_config(tmp_path, {"toy2d": TOY_SECTION}, {"repeat": 3})
    assert main(["config", "check", "--config", str(cfg)]) == 2  # validated with the rest of the config
    assert "unknown config key config.bench.repeat" in capsys.readouterr().err
    assert not results.exists()


def test_round_robin_timing_protocol(monkeypatch):
    """Warm-up, loops calibrated to min_seconds, repetitions timed round-robin, medians: on a
    clock that only the operations advance (2 ms and 8 ms a call), every number is exact."""
    now = [0.0]
    calls = []
    monkeypatch.setattr(timing.time, "perf_counter", lambda: now[0])

    def op(name, seconds):
        def call():
            calls.append(name)
            now[0] += seconds
        return call

    t = timing.time_round_robin({"short": op("short", 0.002), "long": op("long", 0.008)},
                                repeats=3, warmup=1, min_seconds=0.01)
    # calibration: 1 call of 2 ms -> 6 calls (1.2 x 10 ms / 2 ms) = 12 ms; 1 call of 8 ms -> 2 calls
    assert t["short"]["loop"] == 6 and t["long"]["loop"] == 2
    assert t["short"]["samples"] == t["long"]["samples"] == 3
    assert t["short"]["median_s"] == pytest.approx(0.002) and t["long"]["median_s"] == pytest.approx(0.008)
    warm, calib = ["short", "long"], ["short"] * 7 + ["long"] * 3
    assert calls == warm + calib + (["short"] * 6 + ["long"] * 2) * 3  # the ops alternate, round by round


def test_peak_memory_sees_a_transient_allocation():
    meter = PeakMemory("cpu")
    if meter.unavailable:
        pytest.skip(meter.unavailable)

    def burst():
        x = torch.ones(10_000_000)  # 40 MB, freed on return
        return float(x[0])

    assert meter.peak(burst) > 35e6
    assert meter.peak(lambda: None) < 5e6


@pytest.mark.parametrize("gamma_z,reparam", [(0.0, True), (0.05, True), (0.05, False)])
def test_em_step_runs_each_generator_pass_once(gamma_z, reparam):
    """The M-step reuses the E-step's last generator pass: K + 1 generator calls when z
    moves (K with a VJP), one when it is frozen; and the gradient is the one of a
    separate forward pass at z_K (what the code did before)."""
    torch.manual_seed(0)
    gen, student, teacher = MLPGenerator(2, 16, 2).double(), mlp_denoiser(2, 16, 2).double(), ring_gmm().double()
    calls = []

    def counted(z, c):
        calls.append(torch.is_grad_enabled())
        return gen(z)

    cfg = EMConfig(num_steps=3, gamma_eps=0.1, gamma_z=gamma_z, reparam=reparam)
    z0, eps0 = torch.randn(16, 2, dtype=torch.float64), torch.randn(16, 2, dtype=torch.float64)
    sigma = torch.full((16,), 0.7, dtype=torch.float64)
    loss, res, g_out = em_generator_loss(counted, teacher, student, z0, eps0, sigma, None, cfg,
                                         torch.Generator().manual_seed(1))
    assert len(calls) == (cfg.num_steps + 1 if gamma_z else 1)
    assert g_out.grad_fn is not None
    grads = torch.autograd.grad(loss, list(gen.parameters()))
    ref_loss = m_step_loss(gen(res.z), res.eps_used(True), sigma, cfg)
    ref = torch.autograd.grad(ref_loss, list(gen.parameters()))
    for a, b in zip(grads, ref):
        torch.testing.assert_close(a, b)
    # without keep_graph (e.g. the correction figure) no graph is kept
    res2 = e_step(counted, teacher, student, z0, eps0, sigma, None, cfg, torch.Generator().manual_seed(1))
    assert res2.g_out is None
    torch.testing.assert_close(res2.eps, res.eps)
