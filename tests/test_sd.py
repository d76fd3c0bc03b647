"""Stable Diffusion teacher wrapper (latent EDM, CFG) and a tiny sd15 MCT run, all offline:
tiny diffusers/transformers components are built from configs, saved with
save_pretrained and loaded back with local_files_only=True."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from mct.errors import CheckpointError, ConfigError, DataError, MCTError  # noqa: E402
from mct.teachers.base import GuidedDenoiser, scaled_linear_alphas_cumprod  # noqa: E402
from mct.nets.onestep import OneStepGenerator  # noqa: E402
from mct.teachers.sd import (SDUNetDenoiser, alphas_cumprod_from_scheduler_config,  # noqa: E402
                             load_sd_teacher)

from mct.teachers.fixtures import SD_SCHEDULER  # noqa: E402
TEXT_DIM = 32


def build_tiny_sd(root, seed: int = 0, prediction_type: str = "epsilon"):
    """A tiny Stable Diffusion in the diffusers layout under ``root`` (latents 4x8x8, images 16x16),
    written by the package's own writer (mct.teachers.fixtures, which mct rehearse uses at full size)."""
    from mct.teachers.fixtures import write_sd

    unet = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=TEXT_DIM,
                attention_head_dim=8, norm_num_groups=8)
    vae = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
               up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
               norm_num_groups=8, sample_size=16, layers_per_block=1)
    text = dict(hidden_size=TEXT_DIM, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=77)
    return write_sd(root, unet, vae, text, seed=seed, prediction_type=prediction_type)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models run faster on one thread, and far faster when the CPU is shared."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory):
    return build_tiny_sd(tmp_path_factory.mktemp("tiny-sd"))


@pytest.fixture(scope="module")
def sd(sd_dir):
    return load_sd_teacher(sd_dir, local_files_only=True)


def test_alphas_cumprod_from_sd_scheduler_config():
    from diffusers import DDIMScheduler

    abar, pred = alphas_cumprod_from_scheduler_config(SD_SCHEDULER)
    assert pred == "epsilon"
    ddim = DDIMScheduler.from_config(SD_SCHEDULER)
    torch.testing.assert_close(abar.float(), ddim.alphas_cumprod.float())
    torch.testing.assert_close(abar, scaled_linear_alphas_cumprod(), rtol=1e-6, atol=1e-9)


def test_loaded_from_local_dir(sd, sd_dir):
    assert sd.latent_shape == (4, 8, 8)
    assert sd.scaling_factor == pytest.approx(0.18215)
    assert sd.tokenizer.model_max_length == 77
    emb = sd.encode(["a photo of a cat", ""])
    assert emb.shape == (2, 77, TEXT_DIM)
    assert not torch.allclose(emb[0], emb[1])
    # SD v1.5's range of sigma_edm
    assert sd.sigma_min == pytest.approx(math.sqrt((1 - 0.99915) / 0.99915), rel=1e-3)
    assert 14.0 < sd.sigma_max < 15.0


@pytest.mark.parametrize("t", [0, 10, 500, 999])
def test_denoiser_matches_scheduler_math(sd, t):
    """D(x_s, sigma) with x_s = x_t / sqrt(abar_t) equals DDIM's pred_original_sample and
    x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar), the network seeing exactly (x_t, t)."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(SD_SCHEDULER)
    sched.set_timesteps(1000)
    abar = sched.alphas_cumprod[t].double()
    g = torch.Generator().manual_seed(t)
    x0 = torch.randn(2, 4, 8, 8, generator=g)
    noise = torch.randn(2, 4, 8, 8, generator=g)
    ts = torch.full((2,), t, dtype=torch.long)
    x_t = sched.add_noise(x0, noise, ts)
    cond = sd.encode(["a red bus", "two dogs"])
    with torch.no_grad():
        eps = sd.unet(x_t, ts, encoder_hidden_states=cond).sample
    expected = ((x_t.double() - (1 - abar).sqrt() * eps.double()) / abar.sqrt()).float()
    ddim_x0 = sched.step(eps, t, x_t).pred_original_sample

    den = sd.denoiser()
    sigma = torch.full((2,), float(((1 - abar) / abar).sqrt()))
    assert den.sigma_to_t(sigma) == pytest.approx([float(t)] * 2, abs=1e-3)
    with torch.no_grad():
        d = den(x_t / abar.sqrt().float(), sigma, cond)
    torch.testing.assert_close(d, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(d, ddim_x0, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(d, x0, atol=1e-2)  # the network really contributes


def test_fractional_timestep_between_neighbours(sd):
    den = sd.denoiser()
    ls = den.log_sigmas
    mid = ((ls[400] + ls[401]) / 2).exp().reshape(1)
    t = float(den.sigma_to_t(mid))
    assert 400.0 < t < 401.0 and t == pytest.approx(400.5, abs=1e-3)
    quant = SDUNetDenoiser(sd.unet, sd.alphas_cumprod, quantize=True)
    assert float(quant.sigma_to_t(mid)) in (400.0, 401.0)


def test_v_prediction_matches_scheduler(sd):
    from diffusers import DDIMScheduler

    cfg = {**SD_SCHEDULER, "prediction_type": "v_prediction"}
    sched = DDIMScheduler.from_config(cfg)
    sched.set_timesteps(1000)
    t = 300
    abar = sched.alphas_cumprod[t]
    x_t = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    cond = sd.encode(["a boat"])
    with torch.no_grad():
        v = sd.unet(x_t, torch.tensor([t]), encoder_hidden_states=cond).sample
        den = SDUNetDenoiser(sd.unet, sd.alphas_cumprod, prediction_type="v_prediction")
        d = den(x_t / abar.sqrt(), ((1 - abar) / abar).sqrt().reshape(1), cond)
    torch.testing.assert_close(d, sched.step(v, t, x_t).pred_original_sample, rtol=1e-4, atol=1e-4)


def test_cfg_identities(sd):
    """scale 1 = conditional, scale 0 = unconditional (the empty prompt), affine in the scale."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 8, 8, generator=g) * 2
    sigma = torch.tensor([0.5, 2.0, 8.0])
    cond = sd.encode(["a cat", "a dog on a sofa", "mountains at night"])
    den = sd.denoiser()
    null = sd.null_embedding()
    torch.testing.assert_close(null, sd.encode([""])[0])
    with torch.no_grad():
        d_cond = den(x, sigma, cond)
        d_unc = den(x, sigma, null.expand(3, -1, -1))
        out = {w: sd.guided(w)(x, sigma, cond) for w in (0.0, 1.0, 3.0, 7.5)}
    assert not torch.allclose(d_cond, d_unc, atol=1e-4)
    torch.testing.assert_close(out[1.0], d_cond)
    torch.testing.assert_close(out[0.0], d_unc, rtol=1e-4, atol=1e-5)
    for w in (3.0, 7.5):
        torch.testing.assert_close(out[w], d_unc + w * (d_cond - d_unc), rtol=1e-4, atol=1e-4)
    # linearity in w between two guided outputs
    torch.testing.assert_close(out[7.5] - out[3.0], 4.5 * (out[1.0] - out[0.0]), rtol=1e-3, atol=1e-3)
    assert isinstance(sd.guided(2.0), GuidedDenoiser)


def test_generator_and_student_are_copies(sd):
    gen = sd.make_generator(2.5)
    student = sd.make_student()
    assert isinstance(gen, OneStepGenerator)
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    cond = sd.encode(["a", "b"])
    with torch.no_grad():
        torch.testing.assert_close(gen(z, cond), sd.denoiser()(2.5 * z, 2.5, cond))
        torch.testing.assert_close(student(z, 1.0, cond), sd.denoiser()(z, 1.0, cond))
    t_params = {id(p) for p in sd.unet.parameters()}
    assert not t_params & {id(p) for p in gen.parameters()}
    assert not t_params & {id(p) for p in student.parameters()}
    assert all(p.requires_grad for p in gen.parameters()) and not any(p.requires_grad for p in sd.unet.parameters())
    rand = sd.make_generator(2.5, init="random")
    with torch.no_grad():
        assert not torch.allclose(rand(z, cond), gen(z, cond))
    img = sd.decode(gen(z, cond).detach())
    assert img.shape == (2, 3, 16, 16) and img.abs().max() <= 1


def test_missing_or_broken_checkpoint_is_clear(tmp_path, sd_dir):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_sd_teacher(tmp_path / "nope", local_files_only=True)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text("{}")
    with pytest.raises(CheckpointError, match="unet"):
        load_sd_teacher(broken, local_files_only=True)
    with pytest.raises(CheckpointError, match="local_files_only"):
        load_sd_teacher("no-such-org/no-such-model-mct-test", local_files_only=True, cache_dir=str(tmp_path / "c"))


def test_low_memory_load_gives_the_saved_weights(sd_dir, monkeypatch):
    """diffusers loads U-Net and VAE on accelerate's low-memory path (no random init in RAM first),
    and the loaded weights are exactly the files' (nothing left on the meta device)."""
    import diffusers.utils
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import load_file

    assert diffusers.utils.is_accelerate_available()  # a dependency: without it diffusers falls back silently
    seen = {}
    for cls in (UNet2DConditionModel, AutoencoderKL):
        original = cls.from_pretrained.__func__

        def spy(klass, *args, _orig=original, **kw):
            seen[klass.__name__] = kw.get("low_cpu_mem_usage")
            return _orig(klass, *args, **kw)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    sd = load_sd_teacher(sd_dir, local_files_only=True)
    assert seen == {"UNet2DConditionModel": True, "AutoencoderKL": True}
    for part, net in (("unet", sd.unet), ("vae", sd.vae), ("text_encoder", sd.text_encoder)):
        saved = load_file(next((sd_dir / part).glob("*.safetensors")))
        state = net.state_dict()
        assert set(saved) <= set(state), part
        for k, v in saved.items():
            assert state[k].device.type == "cpu" and torch.equal(state[k], v), f"{part}.{k}"


def _register_tiny_fid_extractor():
    """A fixed random-projection feature extractor for torch-fidelity (no download)."""
    import torch_fidelity
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    name = "mct-test-randproj"
    if name in FEATURE_EXTRACTORS_REGISTRY:
        return name

    class RandProj(FeatureExtractorBase):
        def __init__(self, name, features_list, **kwargs):
            super().__init__(name, features_list)
            self.proj = torch.nn.Linear(3 * 8 * 8, 16)
            torch.nn.init.normal_(self.proj.weight, generator=torch.Generator().manual_seed(0))

        @staticmethod
        def get_provided_features_list():
            return ("feat",)

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return "feat"

        @staticmethod
        def can_be_compiled():
            return False

        @staticmethod
        def get_dummy_input_for_compile():
            return None

        def forward(self, x):
            x = torch.nn.functional.adaptive_avg_pool2d(x.float() / 255, 8).flatten(1)
            return (self.proj(x).double(),)

    torch_fidelity.register_feature_extractor(name, RandProj)
    return name


def test_tiny_sd15_mct_run(tmp_path, sd_dir):
    """distill (a few iterations) -> evaluate (CLIP score with a tiny open_clip, FID against a
    directory) -> summarize, through the sd15 benchmark and its config section."""
    from PIL import Image

    from mct.benchmarks.base import RunContext, get_benchmark
    from mct.metrics.clip import build_clip
    from mct.training.clip import save_clip, tiny_clip_config

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red bus\na cat on a mat\ntwo dogs playing\na bowl of fruit\n", encoding="utf-8")
    coco = tmp_path / "captions_val.json"
    coco.write_text(json.dumps({"annotations": [{"id": i, "image_id": i, "caption": c} for i, c in
                                                enumerate(["a man riding a horse", "a plate of food", "a train",
                                                           "a kite in the sky", "a laptop on a desk"])]}))
    ref = tmp_path / "ref"
    ref.mkdir()
    rng = torch.Generator().manual_seed(0)
    for i in range(6):
        arr = (torch.rand(20 + i, 24, 3, generator=rng) * 255).to(torch.uint8).numpy()
        Image.fromarray(arr).save(ref / f"{i}.png")
    torch.manual_seed(0)
    clip_dir = save_clip(build_clip(tiny_clip_config(16, patch_size=8, vision_layers=1, text_layers=1))[0],
                         tiny_clip_config(16, patch_size=8, vision_layers=1, text_layers=1), tmp_path / "clip")
    section = {
        "teacher": {"model": str(sd_dir), "local_files_only": True, "guidance": 2.0},
        "sigma_g": 2.5,
        "prompts": {"train": str(prompts), "seed": 0},
        "em": {"num_steps": 2, "gamma_eps": 0.1, "gamma_z": 0.05},
        "train": {"iterations": 3, "batch_size": 2, "lr_g": 1e-3, "lr_s": 1e-3, "score_updates": 1,
                  "checkpoint_every": 2, "log_every": 1, "sigma": {"lo": 0.05, "hi": 10.0}},
        "eval": {"prompts": str(coco), "prompt_seed": 0,
                 "num_samples": 5, "batch_size": 2, "ref_dir": str(ref), "fid_size": 32,
                 "feature_extractor": _register_tiny_fid_extractor(), "ref_cache_name": None,
                 "clip_model": f"local-dir:{clip_dir}", "clip_pretrained": None, "teacher_nfe": 3,
                 "teacher_num_samples": 2, "grid": 4},
        "variants": {"mct": {}, "k1": {"em": {"num_steps": 1, "gamma_z": 0.0}}},
    }
    bench = get_benchmark("sd15")
    ctx = RunContext(results_dir=tmp_path / "results", device="cpu", progress=False)
    assert bench.teacher_fetch(section, ctx) == {"source": str(sd_dir)}  # a local directory: nothing to fetch
    manifest = torch.load(ctx.bench_dir("sd15") / "teacher" / "checkpoint.pt", weights_only=True)
    assert manifest["format"] == "mct-sd-teacher-v1" and manifest["source"] == str(sd_dir)
    summary = bench.distill(section, ctx, variant="k1")
    run = ctx.run_dir("sd15", "k1")
    assert summary["iterations"] == 3
    assert (run / "checkpoint.pt").exists() and (run / "train_log.csv").exists()
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    teacher = load_sd_teacher(sd_dir, local_files_only=True)
    t_state = teacher.unet.state_dict()
    moved = [k for k, v in state["generator"].items() if k.startswith("denoiser.eps_model.unet.")
             and not torch.equal(v, t_state[k[len("denoiser.eps_model.unet."):]])]
    assert moved, "the generator did not move away from the teacher"
    rec = bench.evaluate(section, ctx, variant="k1")
    m = rec.scores.metrics
    for key in ("fid", "clip_score", "clip_score_fraction"):
        assert key in m, key
    assert rec.nfe == 1 and rec.num_samples == 5 and math.isfinite(m["fid"])
    assert -100 <= m["clip_score"] <= 100 and m["clip_score"] == pytest.approx(100 * m["clip_score_fraction"])
    assert (run / "metrics.json").exists() and (run / "samples.png").exists()
    s = rec.settings
    assert (s["K"], s["guidance"], s["sigma_g"], s["init"], rec.iterations) == (1, 2.0, 2.5, "teacher", 3)
    assert rec.provenance.config_hash == bench.run_hash(bench.parse(section, "k1"))
    # evaluation settings and gradient checkpointing leave the weights alone: same run hash
    rescored = {**section, "gradient_checkpointing": True, "eval": {**section["eval"], "grid": 2, "prompt_seed": 1}}
    assert bench.run_hash(bench.parse(rescored, "k1")) == rec.provenance.config_hash
    # a checkpoint trained under another config is refused, metrics.json left as it was
    other = {**section, "teacher": {**section["teacher"], "guidance": 3.0}}
    with pytest.raises(MCTError, match=r"trained under another config .*mct distill --bench sd15 --variant k1"):
        bench.evaluate(other, ctx, variant="k1")
    assert (run / "metrics.json").exists()
    tm = bench.teacher_eval(section, ctx)
    [row] = tm.rows
    assert (row.nfe, row.nfe_measured, row.num_samples) == (3, 3, 2) and math.isfinite(row.scores.get("fid"))
    assert tm.guidance == 2.0 and (ctx.bench_dir("sd15") / "teacher" / "samples.png").exists()
    with pytest.raises(MCTError, match="run `mct evaluate --bench sd15 --variant mct`"):
        bench.summarize(section, ctx)  # variant mct was not run
    section_one = {**section, "variants": {"k1": {"em": {"num_steps": 1, "gamma_z": 0.0}}}}
    [r] = bench.summarize(section_one, ctx).rows
    assert (r.variant, r.settings["K"], r.settings["guidance"]) == ("k1", 1, 2.0)
    assert (r.metrics["fid"], r.metrics["clip_score"]) == (m["fid"], m["clip_score"])
    bad = {**section, "prompts": {**section["prompts"], "train": str(tmp_path / "missing.txt")}}
    with pytest.raises(DataError, match="does not exist"):
        bench.distill(bad, ctx, variant="mct")


def test_fetch_is_pinned_and_checked(tmp_path, monkeypatch):
    """fetch_sd asks the hub for the pinned revision and only the needed files, then checks sha256."""
    import hashlib

    import huggingface_hub

    from mct.errors import DownloadError
    from mct.teachers.sd import fetch_sd

    calls = {}

    def fake_snapshot(repo_id, revision=None, local_dir=None, allow_patterns=None, **kw):
        calls.update(repo_id=repo_id, revision=revision, patterns=list(allow_patterns))
        (Path(local_dir) / "unet").mkdir(parents=True, exist_ok=True)
        (Path(local_dir) / "unet" / "diffusion_pytorch_model.fp16.safetensors").write_bytes(b"weights")
        return local_dir

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    good = {"unet/diffusion_pytorch_model.fp16.safetensors": hashlib.sha256(b"weights").hexdigest()}
    out = fetch_sd("org/sd", tmp_path / "t", revision="a" * 40, variant="fp16", sha256=good)
    assert out == tmp_path / "t"
    assert calls["repo_id"] == "org/sd" and calls["revision"] == "a" * 40
    assert "unet/diffusion_pytorch_model.fp16.safetensors" in calls["patterns"]
    assert "text_encoder/model.fp16.safetensors" in calls["patterns"] and "scheduler/*" in calls["patterns"]
    assert not any(p.endswith(".bin") for p in calls["patterns"])
    with pytest.raises(DownloadError, match="does not match the pinned"):
        fetch_sd("org/sd", tmp_path / "t", variant="fp16",
                 sha256={"unet/diffusion_pytorch_model.fp16.safetensors": "0" * 64})
    with pytest.raises(DownloadError, match="missing after download"):
        fetch_sd("org/sd", tmp_path / "t", variant="fp16", sha256={"vae/x.safetensors": "0" * 64})


def _eval_files(tmp_path):
    """COCO-shaped captions and a folder of reference images (what sd15 evaluation reads from disk)."""
    from PIL import Image

    coco = tmp_path / "captions_val.json"
    coco.write_text(json.dumps({"annotations": [{"id": i, "image_id": i, "caption": c} for i, c in
                                                enumerate(["a man riding a horse", "a plate of food"])]}))
    ref = tmp_path / "ref"
    ref.mkdir(exist_ok=True)
    Image.fromarray((torch.rand(20, 24, 3, generator=torch.Generator().manual_seed(0)) * 255)
                    .to(torch.uint8).numpy()).save(ref / "0.png")
    return coco, ref


def test_sd15_evaluate_without_inception_weights_fails_before_sampling(tmp_path, sd_dir, monkeypatch, capsys):
    """The crash the issue saw (URLError from torch-fidelity after all sampling) becomes one line,
    exit 2, before the generator is loaded or called."""
    import yaml

    from mct.benchmarks import sd15 as SD
    from mct.cli import main

    coco, ref = _eval_files(tmp_path)
    calls = []
    monkeypatch.setattr(SD.SD15, "load_generator", lambda *a, **k: calls.append("generator") or (None, {}))
    monkeypatch.setattr(SD.SD15, "teacher", lambda *a, **k: calls.append("teacher"))
    section = {"teacher": {"model": str(sd_dir), "local_files_only": True},
               "eval": {"prompts": str(coco), "ref_dir": str(ref), "clip": False},
               "variants": {"mct": {}}}
    cfg = tmp_path / "sd.yaml"
    cfg.write_text(yaml.safe_dump({"results_dir": str(tmp_path / "results"), "device": "cpu",
                                   "benchmarks": {"sd15": section}}))
    rc = main(["evaluate", "--config", str(cfg), "--bench", "sd15", "--variant", "mct"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and calls == [] and "\n" not in err and "Traceback" not in err
    weights = tmp_path / "results" / "sd15" / "refs" / "weights-inception-2015-12-05-6726825d.pth"
    assert f"Inception weights {weights}" in err
    assert "eval.feature_extractor_weights_path" in err and "mct teacher fetch --bench sd15" in err
    assert "CLIP" not in err  # the CLIP score is off: its weights are not asked for
    # every missing input is named in the same line; teacher eval checks first as well
    section["eval"] = {"prompts": str(tmp_path / "none.json"), "ref_dir": str(tmp_path / "empty")}
    (tmp_path / "empty").mkdir()
    cfg.write_text(yaml.safe_dump({"results_dir": str(tmp_path / "results"), "device": "cpu",
                                   "benchmarks": {"sd15": section}}))
    assert main(["teacher", "eval", "--config", str(cfg), "--bench", "sd15"]) == 2 and calls == []
    err = capsys.readouterr().err.strip()
    for part in ("captions", "eval.prompts", "FID reference images", "eval.ref_dir", "Inception weights",
                 "CLIP ViT-g-14 weights", "open_clip_model.safetensors", "eval.clip_weights_path"):
        assert part in err, part
    assert "\n" not in err


def test_sd15_fetch_stage_pins_the_evaluation_weights(tmp_path, sd_dir, monkeypatch):
    """`mct teacher fetch` downloads the Inception and CLIP weights (loopback server) into refs/,
    records their sha256 in the lock file, and evaluation then reads exactly those files."""
    import hashlib
    import io
    import sys as _sys

    import yaml

    _sys.path.insert(0, str(Path(__file__).parent))
    from paper_fixtures import LoopbackServer

    from mct.benchmarks import sd15 as SD
    from mct.benchmarks.base import RunContext, get_benchmark
    from mct.errors import DownloadError

    buf = io.BytesIO()
    torch.save({"conv.weight": torch.ones(2, 2)}, buf)  # a plain state dict, as torch-fidelity's file is
    inception, clip_bytes = buf.getvalue(), b"clip weights stand-in"
    coco, ref = _eval_files(tmp_path)
    ctx = RunContext(results_dir=tmp_path / "results", device="cpu", progress=False)
    bench = get_benchmark("sd15")
    with LoopbackServer() as server:
        server.files["/inception.pth"] = inception
        server.files["/clip.safetensors"] = clip_bytes
        section = {"teacher": {"model": str(sd_dir), "local_files_only": True},
                   "lock_file": str(tmp_path / "lock.yaml"),
                   "eval": {"prompts": str(coco), "ref_dir": str(ref), "feature_extractor_url": server.url("/inception.pth"),
                            "clip_weights_url": server.url("/clip.safetensors")},
                   "variants": {"mct": {}}}
        info = bench.teacher_fetch(section, ctx)
        refs = ctx.bench_dir("sd15") / "refs"
        assert info == {"source": str(sd_dir), "feature_weights": str(refs / "inception.pth"),
                        "clip_weights": str(refs / "clip.safetensors")}
        assert (refs / "inception.pth").read_bytes() == inception and (refs / "clip.safetensors").read_bytes() == clip_bytes
        lock = yaml.safe_load(Path(section["lock_file"]).read_text())
        assert {u: lock[u]["sha256"] for u in lock} == {
            server.url("/inception.pth"): hashlib.sha256(inception).hexdigest(),
            server.url("/clip.safetensors"): hashlib.sha256(clip_bytes).hexdigest()}
        # a second fetch verifies the files in place: nothing downloaded again
        n = len(server.requests)
        bench.teacher_fetch(section, ctx)
        assert len(server.requests) == n
        # a configured digest that disagrees with the lock file is refused
        bad = {**section, "eval": {**section["eval"], "clip_weights_sha256": "0" * 64}}
        with pytest.raises(DownloadError, match="disagrees"):
            bench.teacher_fetch(bad, ctx)
        # offline: a local copy is used where it is, never downloaded (and a missing one is one clear error)
        local = tmp_path / "my-clip.safetensors"
        offline = {**section, "eval": {**section["eval"], "clip_weights_path": str(local),
                                       "clip_weights_url": server.url("/never")}}
        with pytest.raises(MCTError, match="my-clip.safetensors .*does not exist"):
            bench.teacher_fetch(offline, ctx)
        local.write_bytes(clip_bytes)
        assert bench.teacher_fetch(offline, ctx)["clip_weights"] == str(local)
        assert all(path != "/never" for path, _ in server.requests)
    cfg = bench.parse(section, "mct")
    bench.preflight(cfg, ctx)  # everything is there now
    seen = {}

    def fake_score(prompts, sample, encode, decode, shape, **kw):
        seen.update(kw)
        return {"num_samples": len(prompts), "clip_model": "overwritten"}

    monkeypatch.setattr("mct.metrics.text_to_image.score_text_to_image", fake_score)
    monkeypatch.setattr(SD.SD15, "teacher", lambda *a, **k: load_sd_teacher(sd_dir, local_files_only=True))
    m = bench._score(cfg, ctx, lambda z, c: z, 2, tmp_path / "grid.png", "test")
    assert seen["feature_extractor_weights_path"] == str(refs / "inception.pth")
    assert seen["clip_pretrained"] == str(refs / "clip.safetensors") and seen["clip_model"] == "ViT-g-14"
    assert m["clip_model"] == "ViT-g-14/laion2b_s12b_b42k"  # the model's name, not the local file


def test_sd15_default_weight_urls_are_the_libraries_own():
    """The pinned URLs are the files torch-fidelity and open_clip themselves would fetch."""
    import torch_fidelity.feature_extractor_inceptionv3 as tfi
    from open_clip.pretrained import get_pretrained_cfg

    from mct.benchmarks import sd15 as SD

    ev = SD.SD15Config().eval
    assert ev.feature_extractor_url == tfi.URL_INCEPTION_V3
    hub = get_pretrained_cfg(ev.clip_model, ev.clip_pretrained)["hf_hub"]
    assert ev.clip_weights_url == f"https://huggingface.co/{hub}resolve/main/open_clip_model.safetensors"
    with pytest.raises(ConfigError, match="clip_weights_url"):
        SD.SD15.parse(SD.BENCHMARK, {"eval": {"clip_model": "ViT-B-32", "clip_pretrained": "openai"}})


def test_clip_weights_file_loads_as_open_clip_pretrained(tmp_path):
    """What sd15 evaluation passes open_clip (the fetched weights file as `pretrained`) loads those
    weights into the named architecture (a tiny one registered here, as ViT-g-14 is in open_clip)."""
    import open_clip
    from safetensors.torch import save_file

    from mct.metrics.clip import build_clip, load_clip_scorer
    from mct.training.clip import tiny_clip_config

    cfg = tiny_clip_config(16, patch_size=8, vision_layers=1, text_layers=1)
    (tmp_path / "cfgs").mkdir()
    (tmp_path / "cfgs" / "mct-tiny-clip-test.json").write_text(json.dumps(cfg["model_cfg"]))
    open_clip.add_model_config(tmp_path / "cfgs")
    torch.manual_seed(3)
    model = build_clip(cfg)[0]
    weights = tmp_path / "refs" / "open_clip_model.safetensors"
    weights.parent.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    scorer = load_clip_scorer("mct-tiny-clip-test", str(weights))
    got = scorer.model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in model.state_dict().items())
