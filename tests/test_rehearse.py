"""mct rehearse on small networks of the paper architectures: calls counted against the formula
read from DistillStep, the iteration's FLOPs against each pass measured alone, activation
checkpointing (same gradients, fewer saved bytes), the record, the CLI's one-line errors, and the
README block generated from the committed rehearsal records."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mct.bench.instrument import graph_bytes
from mct.bench.readme import BEGIN, END, load_rehearsals, render_block
from mct.bench.rehearse import (build_for_rehearsal, expected_calls, rehearse_one, set_checkpointing,
                                standalone_pass_flops)
from mct.benchmarks.base import RunContext
from mct.cli import main
from mct.records import RehearsalRecord, read_record, write_record

REPO = Path(__file__).resolve().parent.parent

# the paper architectures at tiny widths (same block structure, attention, conditioning)
EDM_TINY = dict(model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8], channel_mult_emb=2)
ADM_TINY = dict(num_channels=32, channel_mult="1,2", num_res_blocks=1, attention_resolutions="2", num_heads=2,
                num_head_channels=-1)
SD_TINY = {"unet": dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
                        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                        attention_head_dim=8, norm_num_groups=8),
           "vae": dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                       up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
                       norm_num_groups=8, sample_size=16, layers_per_block=1),
           "text": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                        max_position_embeddings=77),
           "merges": 500}
SMALL = {"em": {"num_steps": 3}, "train": {"score_updates": 2}}
CASES = {"imagenet64": ({"resolution": 16, "num_classes": 10, **SMALL}, EDM_TINY),
         "imagenet128": ({"resolution": 16, "num_classes": 1000, **SMALL}, ADM_TINY),
         "sd15": ({**SMALL, "teacher": {"variant": None, "precision": "fp32"}}, SD_TINY)}


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _ctx(tmp_path):
    return RunContext(results_dir=tmp_path, device="cpu", progress=False)


def _check_accounting(tmp_path, name, batch=1, checkpointing="both"):
    section, arch = CASES[name]
    raw = {"benchmarks": {name: section}}
    rec = rehearse_one(raw, _ctx(tmp_path), name, arch=arch, batch=batch, checkpointing=checkpointing,
                       optimizer_states="allocated")
    cfg_em, cfg_train = rec.settings["K"], rec.settings["score_updates"]
    assert (cfg_em, cfg_train) == (3, 2)
    # calls counted by hooks during the real iteration == the formula read from DistillStep
    em = type("EM", (), {"num_steps": 3, "gamma_z": 0.05})
    tr = type("TR", (), {"score_updates": 2})
    want = expected_calls(em, tr, text_encoder=name == "sd15")
    assert rec.calls == want
    assert rec.formula["calls_match"] is True
    # a backward reached every pass that has one: the K VJPs, the M-step, the student updates
    assert rec.backward_calls == {"generator_forward_vjp": 3, "generator_forward_backward": 1,
                                  "student_forward_backward": 2}
    # FLOPs: the iteration's total, split by kind, equals sum over kinds of calls x each pass measured alone
    built = build_for_rehearsal(raw, _ctx(tmp_path), name, arch=arch)
    alone = standalone_pass_flops(built, batch)
    kind_pass = {"teacher_forward": ("teacher", "forward"), "student_forward": ("student", "forward"),
                 "generator_forward_vjp": ("generator", "forward_input_vjp"),
                 "generator_forward_backward": ("generator", "forward_backward"),
                 "generator_forward": ("generator", "forward"),
                 "student_forward_backward": ("student", "forward_backward")}
    f = rec.flops_per_sample
    total = 0
    for kind, n in want.items():
        if kind == "text_encoder_forward":
            total += f.by_kind[kind]
            continue
        net, what = kind_pass[kind]
        assert f.per_pass[net][what] == alone[net][what], (kind, f.per_pass[net][what], alone[net][what])
        total += n * alone[net][what]
    assert f.unattributed == 0
    assert abs(f.iteration - total) <= len(want)  # rounding of the per-sample division only
    # the architecture's own relations: a VJP to the input costs about one more forward; a
    # backward to the parameters about two more; the guided SD teacher runs both branches
    g = f.per_pass["generator"]
    assert 1.8 < g["forward_input_vjp"] / g["forward"] < 2.2
    assert 2.7 < g["forward_backward"] / g["forward"] < 3.3
    teacher_ratio = f.per_pass["teacher"]["forward"] / g["forward"]
    assert teacher_ratio == pytest.approx(2.0 if name == "sd15" else 1.0, rel=0.05)
    # checkpointing recomputes forwards in backward: more FLOPs, fewer bytes per sample
    by = rec.projection["flops_per_sample_by_checkpointing"]
    if checkpointing == "both":
        assert by["checkpointed"] > by["none"]
    act = rec.memory.activation_bytes_per_sample
    assert 0 < act["checkpointed"] < 0.7 * act["none"]
    # memory: Adam's states measured = 2 x trainable parameters; the plan's formula holds
    m = rec.memory
    assert m.optimizer_bytes == pytest.approx(2 * (m.params_bytes["generator"] + m.params_bytes["student"]), rel=0.01)
    plan = rec.projection["memory_per_gpu"]
    fixed = plan["weights_grads_optimizer_bytes"] + m.activation_fixed_bytes["none"]
    assert plan["none"]["max_micro_batch"] == int((0.9 * 80 * 2**30 - fixed) // act["none"])
    assert rec.projection["total_flop"] == pytest.approx(
        rec.projection["iterations"] * rec.projection["global_batch"] * f.iteration)
    # the record round-trips through its file
    path = write_record(tmp_path / "rehearsal" / f"{name}.json", rec)
    back = read_record(path, RehearsalRecord)
    assert back.calls == rec.calls and back.memory.activation_bytes_per_sample == act
    return rec


def test_rehearse_imagenet64_tiny_counts_and_flops(tmp_path):
    """Fast: the EDM architecture at the smallest width, every accounting check."""
    rec = _check_accounting(tmp_path, "imagenet64", checkpointing="off")
    assert rec.evaluation["teacher"][0]["nfe"] == 79
    assert rec.evaluation["teacher"][0]["flops_per_sample"] == 79 * rec.flops_per_sample.per_pass["teacher"]["forward"]
    assert "EDM network pickle" in rec.weights
    assert not list((tmp_path / "rehearsal").glob(".fixture-*"))  # the teacher file written for it is gone
    # a shorter counted iteration (K = 1, one student update) gives the configured iteration's FLOPs
    # through the formula: the same number the full iteration counted
    section, arch = CASES["imagenet64"]
    short = rehearse_one({"benchmarks": {"imagenet64": section}}, _ctx(tmp_path), "imagenet64", arch=arch,
                         checkpointing="off", em_steps=1, score_updates=1, optimizer_states="counted")
    assert short.calls == {"teacher_forward": 1, "student_forward": 1, "generator_forward_vjp": 1,
                           "generator_forward_backward": 1, "generator_forward": 1, "student_forward_backward": 1}
    assert short.formula["calls_match"] and short.flops_per_sample.measured_at == {"K": 1, "score_updates": 1}
    assert abs(short.flops_per_sample.iteration - rec.flops_per_sample.iteration) <= 6
    assert short.flops_per_sample.measured_iteration < rec.flops_per_sample.iteration / 2
    assert "flops_per_sample.iteration" in short.memory.computed
    assert short.memory.optimizer_states == "counted" and "memory.optimizer_bytes" in " ".join(short.memory.computed)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["imagenet64", "imagenet128", "sd15"])
def test_rehearse_paper_configs_tiny(tmp_path, name):
    """Slow: every paper architecture, the iteration run with and without checkpointing (SD through a
    diffusers directory: text encoder, VAE decode)."""
    rec = _check_accounting(tmp_path, name)
    if name == "sd15":
        assert rec.evaluation["vae_decode"]["flops_per_sample"] > 0
        assert rec.calls["text_encoder_forward"] == 3


@pytest.mark.parametrize("kind", ["edm", "adm"])
def test_activation_checkpointing_same_gradients_fewer_bytes(kind):
    from mct.teachers.fixtures import TINY_ADM_FLAGS, TINY_EDM_KWARGS, random_adm_unet, random_edm_net

    torch.manual_seed(0)
    if kind == "edm":
        net = random_edm_net(0, dict(TINY_EDM_KWARGS, dropout=0.0), std=0.1).train()
        x, sigma, cond = torch.randn(2, 3, 8, 8), torch.tensor([0.5, 2.0]), torch.tensor([1, 7])
        run = lambda x: net(x, sigma, cond)  # noqa: E731
    else:
        net = random_adm_unet(TINY_ADM_FLAGS, std=0.05).train()
        x, t, y = torch.randn(2, 3, 8, 8), torch.tensor([10.0, 500.0]), torch.tensor([1, 7])
        run = lambda x: net(x, t, y)  # noqa: E731
    v = torch.randn_like(run(x)[:, :3] if kind == "adm" else run(x))
    grads = {}
    for on in (False, True):
        set_checkpointing(net, on)
        net.zero_grad(set_to_none=True)
        x_ = x.clone().requires_grad_(True)
        out = run(x_)
        out = out[:, :3] if kind == "adm" else out
        (gx,) = torch.autograd.grad((out * v).sum(), x_, retain_graph=True)  # the E-step's VJP to the input
        (out * v).sum().backward()  # the M-step's gradient to the parameters
        grads[on] = (gx, [p.grad.clone() for p in net.parameters()])
    assert torch.allclose(grads[False][0], grads[True][0], atol=1e-6, rtol=1e-5)
    for a, b in zip(grads[False][1], grads[True][1]):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)
    assert any(g.abs().sum() > 0 for g in grads[False][1])
    saved = {}
    for on in (False, True):
        set_checkpointing(net, on)
        saved[on] = graph_bytes(lambda: run(x), modules=(net,))
    assert saved[True] < 0.6 * saved[False]
    # about the bytes autograd saves (each storage once, parameters excepted; the inputs are saved but not
    # made by the pass)
    set_checkpointing(net, False)
    params = {p.untyped_storage().data_ptr() for p in net.parameters()}
    seen = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in params:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = run(x)
    assert 0.95 * sum(seen.values()) <= saved[False] <= 1.1 * sum(seen.values()) + 64 * 1024  # inputs: saved, not made


def test_checkpointing_knob_reaches_the_imagenet_networks(tmp_path):
    section, arch = CASES["imagenet64"]
    raw = {"benchmarks": {"imagenet64": {**section, "checkpointing": True}}}
    from mct.bench.rehearse import _modes

    assert _modes(raw, "imagenet64", None, "config") == [True]
    built = build_for_rehearsal(raw, _ctx(tmp_path), "imagenet64", checkpointing=True, arch=arch)
    assert built.generator.denoiser.model.checkpointing and built.student.model.checkpointing
    assert not built.teacher.model.checkpointing  # the teacher runs without a graph: nothing to save


@pytest.mark.parametrize("args, msg", [
    (["--bench", "digits"], "has no paper-scale network"),
    (["--bench", "nope"], "unknown benchmark"),
    (["--batch", "0"], "--batch must be >= 1"),
    (["--iterations", "0"], "--iterations must be >= 1"),
    (["--checkpointing", "maybe"], "--checkpointing must be one of"),
    (["--utilisation", "1.5"], "--utilisation must be in"),
    (["--bench", "sd15"], "not in this config"),
])
def test_cli_errors_are_one_line(tmp_path, capsys, args, msg):
    code = main(["rehearse", "--config", str(REPO / "config" / "imagenet64.yaml"), "--device", "cpu",
                 "--results-dir", str(tmp_path / "res"), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and msg in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "res").exists()  # nothing written on a refused command


def test_readme_block_is_generated_from_the_committed_records():
    """README's rehearsal block is exactly what `mct docs readme` writes from results/rehearsal/*.json."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    recs = load_rehearsals(REPO / "results" / "rehearsal")
    assert text == render_block(text, recs), "README's rehearsal table is stale: run `mct docs readme`"
    block = text.split(BEGIN, 1)[1].split(END, 1)[0]
    for r in recs:
        assert f"{r.flops_per_sample.iteration / 1e12:.2f}" in block


def test_readme_render_replaces_only_the_block(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{BEGIN}\nhand-typed 12 TFLOP\n{END}\nrest\n", encoding="utf-8")
    assert main(["docs", "readme", "--readme", str(readme), "--rehearsals", str(tmp_path / "none"), "--check"]) == 2
    assert main(["docs", "readme", "--readme", str(readme), "--rehearsals", str(tmp_path / "none")]) == 0
    text = readme.read_text(encoding="utf-8")
    assert text.startswith("intro\n") and text.endswith(f"{END}\nrest\n") and "hand-typed" not in text
    assert main(["docs", "readme", "--readme", str(readme), "--rehearsals", str(tmp_path / "none"), "--check"]) == 0


def _record(bench="imagenet64"):
    """A hand-made rehearsal record (the report and README read only what it holds)."""
    from mct.records import Provenance, RehearsalFlops, RehearsalMemory

    prov = Provenance(commit="abc", dirty=False, config_hash="h", packages={}, created="2026-01-01T00:00:00+00:00")
    mem = RehearsalMemory(params_bytes={"teacher": 4, "total": 16}, optimizer_bytes=8, grads_bytes=4,
                          activation_bytes_per_sample={"none": 2 * 2**30, "checkpointed": 2**29},
                          peak_rss_bytes=3 * 2**30)
    return RehearsalRecord(
        bench=bench, variant="mct", device="cpu", provenance=prov, batch_size=1, iterations=1,
        calls={"teacher_forward": 8}, flops_per_sample=RehearsalFlops(iteration=12_345_000_000_000),
        memory=mem, wall_seconds_per_iteration=900.0,
        projection={"total_flop": 6.3e20, "iterations": 200000, "global_batch": 256, "utilisation": 0.4,
                    "peak_tflops_bf16_dense": {"H100-80GB": 989.0, "A100-80GB": 312.0},
                    "gpu_hours": {"H100-80GB": 442.4, "A100-80GB": 1402.3},
                    "memory_per_gpu": {"none": {"max_micro_batch": 30}, "checkpointed": {"max_micro_batch": 120}}},
        evaluation={"generator": {"flops_per_sample": 2.19e11, "hours": {"H100-80GB": 0.03}, "num_samples": 150000}},
        networks={"params": {"teacher": 295_899_267}}, formula={"expected_calls": {"teacher_forward": 8}})


def test_report_section_shows_rehearsal_beside_not_run_here(tmp_path):
    from mct.report.context import Inputs, ReportConfig, load_paper_results
    from mct.report.collect import collect
    from mct.report.sections import paper_scale

    write_record(tmp_path / "rehearsal" / "imagenet64.json", _record())
    inputs = Inputs(collect(tmp_path, {"benchmarks": {}}), {}, ReportConfig(), load_paper_results(),
                    tmp_path / "report.html")
    out = paper_scale.build(inputs)
    (table,) = out["tables"]
    (r,) = table.rows
    texts = [c.text for c in r.cells]
    assert texts[0] == "not run here" and texts[1] == "imagenet64 (mct)"
    assert "12.35" in texts and "442" in texts and "30 / 120" in texts
    assert "2.00 GiB / 0.50 GiB" in texts
    assert "imagenet128" in out["missing"] and "imagenet64" not in out["missing"]
    assert any("imagenet128" in n for n in out["notes"])
