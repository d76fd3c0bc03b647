"""The auxiliary training loops (mct.training): each reproduces, bit for bit, the weights the
benchmark stage writes for the same config and seed (digits teacher and features, digits-text
CLIP and teacher), and does what its documentation says (condition dropout, warm-up, EMA,
shift augmentation)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mct.benchmarks.base import RunContext, get_benchmark
from mct.diffusion.edm import EDMPrecond, SigmaDist
from mct.errors import TrainingDiverged
from mct.nets.unet import build_unet
from mct.teachers.trained import read_checkpoint
from mct.training.classifier import shift_batch, train_classifier, train_feature_net
from mct.training.ema import ema_update
from mct.training.edm_teacher import label_condition, table_condition, train_edm_teacher


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def assert_same_state(a: dict, b: dict):
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k].cpu(), b[k].cpu()), k


def differs(a: dict, b: dict) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())


# ----------------------------------------------------------------------------- digits

DIGITS = {"teacher": {"net": {"model_channels": 8, "channel_mult": [1, 2]}, "iterations": 12, "batch_size": 16,
                      "lr": 3e-3, "lr_warmup": 5, "log_every": 5, "label_dropout": 0.3, "eval_nfe": [3]},
          "features": {"width": 8, "feature_dim": 16, "iterations": 15, "batch_size": 32, "augment_shift": 1},
          "eval": {"grid": 10, "batch_size": 10, "kid_subset_size": 50, "kid_subsets": 2}}


@pytest.fixture(scope="module")
def digits_stages(tmp_path_factory):
    bench = get_benchmark("digits")
    ctx = RunContext(results_dir=tmp_path_factory.mktemp("digits"), device="cpu", progress=False)
    bench.teacher_train(DIGITS, ctx)
    bench.features(DIGITS, ctx)
    return bench, ctx


def _digits_teacher(bench, cfg, split, seed):
    tc = cfg.teacher
    c, h, _ = split.train.shape
    k = split.train.num_classes
    return train_edm_teacher(
        lambda: EDMPrecond(build_unet(tc.net, img_resolution=h, in_channels=c, label_dim=k), sigma_data=tc.sigma_data),
        split.train.images, draw_condition=label_condition(split.train.labels), null_cond=torch.tensor(k),
        iterations=tc.iterations, batch_size=tc.batch_size, lr=tc.lr, lr_warmup=tc.lr_warmup,
        ema_decay=tc.ema_decay, cond_dropout=tc.label_dropout, sigma=tc.sigma, sigma_data=tc.sigma_data,
        seed=seed, device="cpu", log_every=tc.log_every)


def test_edm_teacher_reproduces_the_digits_stage(digits_stages):
    bench, ctx = digits_stages
    cfg = bench.parse(DIGITS)
    split = bench.data(cfg)
    state = read_checkpoint(bench.teacher_dir(ctx) / "checkpoint.pt", "mct-teacher-v1")
    run = _digits_teacher(bench, cfg, split, cfg.teacher.seed)
    assert_same_state(run.net.state_dict(), state["net"])
    assert_same_state(run.ema.state_dict(), state["ema"])
    assert [r["iteration"] for r in run.rows] == [5, 10, 12]
    # linear warm-up over 5 iterations, then constant
    assert [r["lr"] for r in run.rows] == [cfg.teacher.lr] * 3
    other = _digits_teacher(bench, cfg, split, cfg.teacher.seed + 1)
    assert differs(other.ema.state_dict(), state["ema"])  # the comparison above can tell runs apart


def test_classifier_reproduces_the_digits_features_stage(digits_stages):
    from mct.nets.classifier import SmallCNN

    bench, ctx = digits_stages
    cfg = bench.parse(DIGITS)
    fc = cfg.features
    split = bench.data(cfg)
    c, h, _ = split.train.shape
    state = read_checkpoint(ctx.bench_dir("digits") / "features" / "checkpoint.pt", "mct-features-v1")

    def run(seed):
        out = train_classifier(lambda: SmallCNN(c, h, split.train.num_classes, fc.width, fc.feature_dim, fc.dropout),
                               split.train.images, split.train.labels, iterations=fc.iterations,
                               batch_size=fc.batch_size, lr=fc.lr, augment_shift=fc.augment_shift, seed=seed,
                               log_every=10)
        out.net.calibrate(split.train.images)  # as the stage does after training
        return out

    res = run(fc.seed)
    assert not res.net.training
    assert_same_state(res.net.state_dict(), state["state"])
    assert [r["iteration"] for r in res.rows] == [10, 15]
    # cosine decay: the step of iteration i uses lr (1 + cos(pi (i - 1) / T)) / 2
    for r in res.rows:
        assert r["lr"] == pytest.approx(fc.lr * (1 + math.cos(math.pi * (r["iteration"] - 1) / fc.iterations)) / 2,
                                        rel=1e-12)
    assert differs(run(fc.seed + 1).net.state_dict(), state["state"])
    # the stage's own call: the same weights, and the metrics it recorded
    net, metrics, _ = train_feature_net(fc, split)
    assert_same_state(net.state_dict(), state["state"])
    assert metrics == {k: state["metrics"][k] for k in metrics}
    assert next(net.parameters()).device.type == "cpu"


# ----------------------------------------------------------------------------- digits-text

TEXT = {"clip": {"steps": 6, "batch_size": 32},
        "teacher": {"net": {"model_channels": 8, "channel_mult": [1, 2]}, "iterations": 10, "batch_size": 16,
                    "lr": 3e-3, "log_every": 4, "cond_drop": 0.3}}


@pytest.fixture(scope="module")
def text_stages(tmp_path_factory):
    bench = get_benchmark("digits-text")
    ctx = RunContext(results_dir=tmp_path_factory.mktemp("digits-text"), device="cpu", progress=False)
    bench.clip(TEXT, ctx)
    bench.teacher_train(TEXT, ctx)
    return bench, ctx


def test_clip_training_reproduces_the_digits_text_stage(text_stages):
    from mct.data.captions import make_caption
    from mct.metrics.clip import build_clip
    from mct.training.clip import tiny_clip_config, train_clip

    bench, ctx = text_stages
    cfg = bench.parse(TEXT)
    c = cfg.clip
    split = bench.split(cfg)
    templates, labels = cfg.captions.templates, split.train.labels

    def captions_for(idx, rng):
        t = torch.randint(0, len(templates), (idx.numel(),), generator=rng)
        return [make_caption(int(labels[i]), templates[int(j)]) for i, j in zip(idx, t)]

    def run(seed):
        torch.manual_seed(seed)
        config = tiny_clip_config(split.train.shape[-1], embed_dim=c.embed_dim, vision_width=c.vision_width,
                                  vision_layers=c.vision_layers, patch_size=c.patch_size, text_width=c.text_width,
                                  text_layers=c.text_layers, heads=c.heads, context_length=c.context_length)
        model, tokenizer = build_clip(config)
        logs = train_clip(model, tokenizer, split.train.images, captions_for, steps=c.steps,
                          batch_size=min(c.batch_size, len(split.train)), lr=c.lr, weight_decay=c.weight_decay,
                          seed=seed, progress=False, labels=labels)
        return model, logs

    state = read_checkpoint(bench.clip_path(ctx), "mct-clip-v1")
    model, logs = run(c.seed)
    assert_same_state(model.state_dict(), state["state"])
    assert [r["iteration"] for r in logs] == [6]
    assert differs(run(c.seed + 1)[0].state_dict(), state["state"])


def _text_teacher(bench, cfg, ctx, seed):
    tc = cfg.teacher
    table = bench.stored_cond_table(cfg, ctx)
    split = bench.split(cfg)
    dim = table.shape[-1]
    return train_edm_teacher(
        lambda: EDMPrecond(build_unet(tc.net, img_resolution=split.train.shape[-1], in_channels=split.train.shape[0],
                                      cond_dim=dim), sigma_data=tc.sigma_data), split.train.images,
        draw_condition=table_condition(table, split.train.labels), null_cond=torch.zeros(dim),
        iterations=tc.iterations, batch_size=tc.batch_size, lr=tc.lr, lr_warmup=0, ema_decay=tc.ema_decay,
        cond_dropout=tc.cond_drop, sigma=tc.sigma, sigma_data=tc.sigma_data, seed=seed, device="cpu",
        rng_device="cpu", log_every=tc.log_every)


def test_edm_teacher_reproduces_the_digits_text_stage(text_stages):
    bench, ctx = text_stages
    cfg = bench.parse(TEXT)
    state = read_checkpoint(bench.teacher_dir(ctx) / "checkpoint.pt", "mct-teacher-v1")
    run = _text_teacher(bench, cfg, ctx, cfg.teacher.seed)
    assert_same_state(run.net.state_dict(), state["net"])
    assert_same_state(run.ema.state_dict(), state["ema"])
    assert [r["iteration"] for r in run.rows] == [4, 8, 10]
    assert differs(_text_teacher(bench, cfg, ctx, cfg.teacher.seed + 1).ema.state_dict(), state["ema"])


# ----------------------------------------------------------------------------- behaviour


class _Recorder(nn.Module):
    """F(x, c_noise, cond) = w x, recording every condition it is given."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.seen = []

    def forward(self, x, c_noise, cond):
        self.seen.append(cond.detach().clone())
        return self.w * x


def _fit(model, cond_dropout, iterations=40, lr=1e-3, lr_warmup=0, ema_decay=0.9, **kw):
    images = torch.randn(64, 1, 4, 4).clamp(-1, 1)
    labels = torch.full((64,), 3)
    return train_edm_teacher(lambda: EDMPrecond(model), images, draw_condition=label_condition(labels),
                             null_cond=torch.tensor(10), iterations=iterations, batch_size=50, lr=lr,
                             lr_warmup=lr_warmup, ema_decay=ema_decay, cond_dropout=cond_dropout,
                             sigma=SigmaDist("lognormal"), sigma_data=0.5, log_every=1, **kw)


def test_condition_dropout_replaces_with_the_null_condition():
    rec = _Recorder()
    _fit(rec, 0.25)
    seen = torch.cat(rec.seen)
    assert set(seen.tolist()) == {3, 10}
    frac = (seen == 10).double().mean().item()
    # 2000 Bernoulli(0.25) coins: standard error 0.0097, so 5 SE is 0.05
    assert abs(frac - 0.25) < 0.05
    rec = _Recorder()
    _fit(rec, 0.0)
    assert set(torch.cat(rec.seen).tolist()) == {3}


def test_warmup_ramps_the_learning_rate_and_ema_follows_the_closed_form():
    run = _fit(_Recorder(), 0.1, iterations=6, lr=0.01, lr_warmup=4, ema_decay=0.5)
    assert [r["lr"] for r in run.rows] == pytest.approx([0.0025, 0.005, 0.0075, 0.01, 0.01, 0.01], abs=0, rel=1e-15)
    ema, net = nn.Linear(2, 2), nn.Linear(2, 2)
    net.register_buffer("b", torch.tensor(7.0))
    ema.register_buffer("b", torch.tensor(0.0))
    before = [p.detach().clone() for p in ema.parameters()]
    ema_update(ema, net, 0.9)
    for p0, p_ema, p in zip(before, ema.parameters(), net.parameters()):
        assert torch.allclose(p_ema, 0.9 * p0 + 0.1 * p, rtol=0, atol=1e-7)
    assert float(ema.b) == 7.0  # buffers are copied, not averaged


def test_divergence_is_a_training_error():
    class Exploding(_Recorder):
        def forward(self, x, c_noise, cond):
            return self.w * x + float("nan")

    with pytest.raises(TrainingDiverged, match="iteration 1"):
        _fit(Exploding(), 0.1)
    with pytest.raises(ValueError, match="null_cond"):
        train_edm_teacher(lambda: EDMPrecond(_Recorder()), torch.zeros(4, 1, 4, 4),
                          draw_condition=label_condition(torch.zeros(4, dtype=torch.long)), iterations=1,
                          batch_size=2, lr=1e-3, ema_decay=0.9, sigma=SigmaDist(), sigma_data=0.5)


def test_shift_batch_translates_by_whole_pixels_and_fills_background():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(200, 1, 6, 6) * 2 - 1
    y = shift_batch(x, 1, torch.Generator().manual_seed(0))
    shifts = torch.randint(-1, 2, (200, 2), generator=g)
    pad = torch.nn.functional.pad(x, (1, 1, 1, 1), value=-1)
    for i, (dx, dy) in enumerate(shifts.tolist()):
        # affine_grid's offset (dx, dy): output pixel (r, c) reads input pixel (r + dy, c + dx)
        want = pad[i, :, 1 + dy:7 + dy, 1 + dx:7 + dx]
        assert torch.equal(y[i], want), (i, dx, dy)
    assert {tuple(s) for s in shifts.tolist()} == {(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1)}
    assert shift_batch(x, 0, g) is x


def test_training_and_samplers_import_nothing_above_them():
    """training/ and diffusion/ sit below distill, benchmarks, report and cli (and load no heavy library)."""
    import subprocess
    import sys

    code = ("import sys, mct.training.edm_teacher, mct.training.classifier, mct.training.clip, mct.training.ema, "
            "mct.diffusion.samplers; print(' '.join(sorted(sys.modules)))")
    mods = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split())
    above = ("mct.distill", "mct.benchmarks", "mct.report", "mct.cli", "mct.workflow", "mct.bench", "open_clip",
             "diffusers", "transformers", "matplotlib", "torch_fidelity")
    assert not [m for m in mods if m.split(".")[0] in above or m.startswith(above)]
