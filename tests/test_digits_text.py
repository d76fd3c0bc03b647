"""digits-text: captions, tiny CLIP, text-conditioned guided teacher, MCT distillation and
scoring, end to end on a tiny config (the CPU stand-in for sd15)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from mct.benchmarks.base import RunContext, get_benchmark
from mct.data.captions import DEFAULT_TEMPLATES, caption_table, make_caption
from mct.errors import CheckpointError, ConfigError, MCTError
from mct.training.clip import cond_table

TINY = {
    "clip": {"steps": 100, "batch_size": 128},
    "teacher": {"net": {"model_channels": 8, "channel_mult": [1, 2]}, "iterations": 120, "batch_size": 64,
                "lr": 3e-3, "log_every": 20},
    "sigma_g": 2.5,
    "em": {"num_steps": 2, "gamma_eps": 0.1, "gamma_z": 0.05},
    "train": {"iterations": 6, "batch_size": 32, "score_updates": 1, "score_warmup": 2, "checkpoint_every": 3,
              "log_every": 2},
    "eval": {"num_samples": 100, "batch_size": 100, "teacher_nfe": 3, "grid": 40},
    "variants": {"mct": {}, "k1": {"em": {"num_steps": 1, "gamma_z": 0.0}}},
}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_captions_from_labels():
    assert make_caption(7, "a handwritten {word}") == "a handwritten seven"
    assert make_caption(7, "the digit {digit}") == "the digit 7"
    table = caption_table(DEFAULT_TEMPLATES)
    assert len(table) == 10 and all(len(row) == len(DEFAULT_TEMPLATES) for row in table)
    assert len({c for row in table for c in row}) == 10 * len(DEFAULT_TEMPLATES)
    bench = get_benchmark("digits-text")
    with pytest.raises(ConfigError, match="names no digit"):
        bench.parse({"captions": {"templates": ["a picture"]}})
    with pytest.raises(ConfigError, match="not a valid format string"):
        bench.parse({"captions": {"templates": ["a {word} {colour}"]}})
    with pytest.raises(ConfigError, match="unknown variant"):
        bench.parse(TINY, "nope")
    cfg = bench.parse(TINY)
    labels, (tmpl, caps) = bench.eval_labels(cfg, 30), bench.eval_captions(cfg, 30)
    assert labels.tolist() == list(range(10)) * 3 and tmpl.tolist() == [0] * 10 + [1] * 10 + [2] * 10
    assert caps[0] == make_caption(0, DEFAULT_TEMPLATES[0]) and caps[10] == make_caption(0, DEFAULT_TEMPLATES[1])


def _feature_net(path: Path):
    """A small digits classifier in the digits benchmark's feature-network format."""
    import torch.nn.functional as F

    from mct.data.digits import load_split
    from mct.io import torch_save
    from mct.metrics.fidelity import features_checkpoint
    from mct.nets.classifier import SmallCNN

    split = load_split("sklearn-digits", 0.25, 0)
    torch.manual_seed(0)
    net = SmallCNN(1, 8, 10, width=8, feature_dim=32)
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        idx = torch.randint(0, len(split.train), (128,), generator=g)
        loss = F.cross_entropy(net(split.train.images[idx]), split.train.labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    return torch_save(path, features_checkpoint(net))


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """Every stage of digits-text on the tiny config, in pipeline order."""
    root = tmp_path_factory.mktemp("digits-text")
    section = {**TINY, "eval": {**TINY["eval"], "features": str(_feature_net(root / "features.pt"))}}
    bench = get_benchmark("digits-text")
    ctx = RunContext(results_dir=root / "results", device="cpu", progress=False)
    out = {"errors": {}}
    with pytest.raises(CheckpointError, match="run `mct clip --bench digits-text` first") as e:
        bench.teacher_train(section, ctx)
    out["errors"]["no_clip"] = e.value
    out["clip"] = bench.clip(section, ctx)
    with pytest.raises(MCTError, match="run `mct teacher train --bench digits-text` first"):
        bench.distill(section, ctx, variant="mct")
    out["teacher_train"] = bench.teacher_train(section, ctx)
    out["teacher_eval"] = bench.teacher_eval(section, ctx)
    for v in ("mct", "k1"):
        out[f"distill_{v}"] = bench.distill(section, ctx, variant=v)
        out[f"evaluate_{v}"] = bench.evaluate(section, ctx, variant=v)
    out["summary"] = bench.summarize(section, ctx)
    return bench, section, ctx, out


def test_clip_stage_scores_matching_captions_higher(pipeline):
    _, _, ctx, out = pipeline
    m = out["clip"].metrics
    d = ctx.bench_dir("digits-text") / "clip"
    for f in ("checkpoint.pt", "metrics.json", "open_clip_config.json", "open_clip_model.safetensors"):
        assert (d / f).exists(), f
    assert m["clip_score_real"] > m["clip_score_mismatched"] + 10
    assert m["zero_shot_accuracy"] > 0.5  # chance is 0.1


def test_teacher_is_text_conditioned_and_guided(pipeline):
    bench, section, ctx, out = pipeline
    cfg = bench.parse(section)
    scorer, _ = bench.load_clip(ctx)
    table = bench.stored_cond_table(cfg, ctx)
    torch.testing.assert_close(table, cond_table(scorer, cfg.captions.templates))  # stored = recomputed from the CLIP
    assert table.shape == (10, len(DEFAULT_TEMPLATES), 32)
    torch.testing.assert_close(table.norm(dim=-1), torch.full((10, len(DEFAULT_TEMPLATES)), math.sqrt(32)))
    other = {**section, "captions": {"templates": ["a {word}"]}}
    with pytest.raises(CheckpointError, match="other caption templates"):
        bench.stored_cond_table(bench.parse(other), ctx)
    net, arch = bench.teacher_net(cfg, ctx)
    assert arch["kind"] == "trained" and arch["unet"]["cond_dim"] == 32 and arch["unet"]["in_channels"] == 1
    x = torch.randn(4, 1, 8, 8)
    sigma = torch.full((4,), 1.0)
    cond = table[torch.tensor([1, 3, 5, 7]), 0]
    with torch.no_grad():
        d_c, d_u = net(x, sigma, cond), net(x, sigma, torch.zeros(4, 32))
        guided = bench.guided(cfg, net)(x, sigma, cond)
    w = cfg.teacher.guidance
    torch.testing.assert_close(guided, d_u + w * (d_c - d_u), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(d_c, d_u, atol=1e-3)
    tm = out["teacher_eval"]
    assert [r.nfe for r in tm.rows] == [3] and tm.rows[0].nfe_measured == 3 and tm.guidance == w
    for key in ("fid", "kid_mean", "precision", "recall", "clip_score", "class_accuracy"):
        assert tm.rows[0].scores.get(key) is not None, key
    teacher_dir = ctx.bench_dir("digits-text") / "teacher"
    for f in ("checkpoint.pt", "train_log.csv", "metrics.json", "samples.png"):
        assert (teacher_dir / f).exists(), f


def test_distilled_runs_and_metrics(pipeline):
    bench, section, ctx, out = pipeline
    for v in ("mct", "k1"):
        run = ctx.run_dir("digits-text", v)
        for f in ("checkpoint.pt", "train_log.csv", "metrics.json", "samples.png"):
            assert (run / f).exists(), (v, f)
        rec = out[f"evaluate_{v}"]
        m = rec.scores.metrics
        for key in ("fid", "kid_mean", "precision", "recall", "clip_score"):
            assert m.get(key) is not None, (v, key)
        assert rec.nfe == 1 and rec.iterations == 6 and math.isfinite(m["fid"])
        assert m["clip_score_real"] == pytest.approx(out["clip"].metrics["clip_score_real"])
    assert out["evaluate_k1"].settings["K"] == 1 and out["evaluate_mct"].settings["K"] == 2
    # the generator moved away from the teacher copy it started from
    teacher_state = torch.load(ctx.bench_dir("digits-text") / "teacher" / "checkpoint.pt", weights_only=True)["ema"]
    gen_state = torch.load(ctx.run_dir("digits-text", "mct") / "checkpoint.pt", weights_only=True)["generator"]
    assert any(not torch.equal(gen_state[f"denoiser.{k}"], v) for k, v in teacher_state.items())
    rows = list(csv.DictReader(open(ctx.bench_dir("digits-text") / "summary.csv")))
    assert [r["variant"] for r in rows] == ["mct", "k1"]
    assert rows[0]["nfe"] == "1" and float(rows[0]["fid_mean"]) == pytest.approx(out["evaluate_mct"].scores.metrics["fid"])
    assert rows[0]["fid_n"] == "1" and rows[0]["fid_lo95"] == ""  # one seed: no interval, and the csv says so


def test_missing_feature_network_is_clear(pipeline, tmp_path):
    bench, section, ctx, _ = pipeline
    bad = {**section, "eval": {**section["eval"], "features": str(tmp_path / "none.pt")}}
    with pytest.raises(MCTError, match="run `mct features --bench digits` first"):
        bench.evaluate(bad, ctx, variant="k1")


def test_config_files_have_a_digits_text_section():
    from mct.benchmarks.base import section_of
    from mct.root import load_root

    repo = Path(__file__).resolve().parents[1]
    for name in ("default.yaml", "quick.yaml"):
        _, raw = load_root(repo / "config" / name)
        section = section_of(raw, "digits-text")
        assert {"mct", "k1"} <= set(section["variants"])
