"""`mct export`, `mct sample` and `mct.load_generator`: tiny runs of config/quick.yaml (toy2d,
digits, digits-text) are exported, loaded in a FRESH Python process and sampled; the images
must equal `mct sample` bit for bit. Bad folders, weights, labels and prompt files are one
line each. The Stable Diffusion export is a diffusers pipeline folder (tiny SD, offline)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import mct
from mct.cli import main
from mct.errors import MCTError

REPO = Path(__file__).resolve().parent.parent
QUICK = REPO / "config" / "quick.yaml"
SRC = str(Path(mct.__file__).resolve().parent.parent)

LOAD_AND_SAMPLE = """
import json, sys, time
import numpy as np, torch
torch.set_num_threads(1)
t0 = time.perf_counter()
import mct
g = mct.load_generator(sys.argv[1])
t1 = time.perf_counter()
x = g.sample(**json.loads(sys.argv[2]))
t2 = time.perf_counter()
np.save(sys.argv[3], x)
print(json.dumps({"load_seconds": t1 - t0, "sample_seconds": t2 - t1,
                  "modules": sorted(m for m in sys.modules if m.startswith("mct."))}))
"""


def _mct(*argv):
    return main([*argv, "--no-progress"])


def fresh_sample(folder: Path, out: Path, **kwargs) -> np.ndarray:
    """load_generator(folder).sample(**kwargs) in a new interpreter (nothing shared with this one)."""
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", LOAD_AND_SAMPLE, str(folder), json.dumps(kwargs), str(out)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    modules = json.loads(proc.stdout.strip().splitlines()[-1])["modules"]
    trainer_side = [m for m in modules if m.split(".")[1] in ("distill", "benchmarks", "cli", "config", "report")]
    assert not trainer_side, f"load_generator imported {trainer_side}"  # no trainer, no config file
    return np.load(out)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One tiny distilled run per benchmark (quick.yaml, variant mct only) and its export."""
    root = tmp_path_factory.mktemp("export")
    raw = yaml.safe_load(QUICK.read_text())
    raw["results_dir"] = str(root / "results")
    for b in raw["benchmarks"].values():
        b["variants"] = {"mct": {}}
    raw["benchmarks"]["digits"]["train"]["eval_every"] = 0  # no feature network needed
    cfg = root / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    common = ["--config", str(cfg)]
    steps = [("distill", "toy2d"), ("evaluate", "toy2d"), ("teacher", "train", "digits"), ("distill", "digits"),
             ("clip", "digits-text"), ("teacher", "train", "digits-text"), ("distill", "digits-text")]
    for step in steps:
        *cmd, bench = step
        extra = ["--variant", "mct"] if cmd[0] in ("distill", "evaluate") else []
        assert _mct(*cmd, *common, "--bench", bench, *extra) == 0, step
    exports = {}
    for bench in ("toy2d", "digits", "digits-text"):
        exports[bench] = root / f"export-{bench}"
        assert _mct("export", *common, "--bench", bench, "--variant", "mct", "--out", str(exports[bench])) == 0
    return root, cfg, exports


@pytest.mark.parametrize("bench, kwargs, cli", [
    ("toy2d", {"n": 300, "seed": 3}, ["--num", "300", "--seed", "3"]),
    ("digits", {"n": 25, "labels": [0, 3, 7], "seed": 5}, ["--labels", "0,3,7", "--num", "25", "--seed", "5"]),
    ("digits", {"n": 20, "seed": 0}, ["--num", "20"]),
    ("digits-text", {"n": 7, "prompts": ["a handwritten seven", "the digit 3"], "seed": 11},
     ["--prompts", "PROMPTS", "--num", "7", "--seed", "11"]),
])
def test_fresh_process_reproduces_mct_sample(runs, tmp_path, bench, kwargs, cli):
    _, cfg, exports = runs
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(kwargs.get("prompts", [])) + "\n")
    cli = [str(prompts) if a == "PROMPTS" else a for a in cli]
    assert _mct("sample", "--config", str(cfg), "--bench", bench, "--variant", "mct", *cli,
                "--out", str(tmp_path / "cli.npz")) == 0
    want = np.load(tmp_path / "cli.npz")["arr_0"]
    got = fresh_sample(exports[bench], tmp_path / "api.npy", **kwargs)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert np.array_equal(got, want)  # bit for bit
    if bench == "toy2d":
        assert want.dtype == np.float32 and want.shape == (300, 2) and np.isfinite(want).all()
    else:
        assert want.dtype == np.uint8 and want.shape[1:] == (8, 8, 1) and want.std() > 0
    if "labels" in kwargs:  # another seed, other images; the labels are cycled to n
        other = mct.load_generator(exports[bench]).sample(**{**kwargs, "seed": 6})
        assert not np.array_equal(other, want)
        g = mct.load_generator(exports[bench])
        assert g.conditions(5, labels=[0, 3, 7])[1].tolist() == [0, 3, 7, 0, 3]


def test_png_grid_and_files_hold_the_same_pixels(runs, tmp_path):
    from PIL import Image

    _, cfg, _ = runs
    args = ["sample", "--config", str(cfg), "--bench", "digits", "--variant", "mct", "--labels", "1,2", "--seed", "4"]
    assert _mct(*args, "--out", str(tmp_path / "x.npz")) == 0
    assert _mct(*args, "--out", str(tmp_path / "files")) == 0
    assert _mct(*args, "--out", str(tmp_path / "grid.png")) == 0
    arr = np.load(tmp_path / "x.npz")["arr_0"]
    files = sorted((tmp_path / "files").glob("*.png"))
    assert [f.name for f in files] == ["000000.png", "000001.png"]
    for f, img in zip(files, arr):
        assert np.array_equal(np.asarray(Image.open(f)), img[:, :, 0])
    grid = np.asarray(Image.open(tmp_path / "grid.png"))
    assert np.array_equal(grid[1:9, 1:9], arr[0, :, :, 0]) and np.array_equal(grid[1:9, 10:18], arr[1, :, :, 0])


def test_export_folder_is_self_describing(runs, tmp_path):
    from safetensors.torch import load_file

    from mct.nets.factory import build, spec_of

    root, cfg, exports = runs
    folder = exports["digits"]
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors",
                                                        "samples.png"]
    c = json.loads((folder / "config.json").read_text())
    assert c["format"] == "mct-export-v1" and (c["bench"], c["variant"]) == ("digits", "mct")
    assert c["shape"] == [1, 8, 8] and c["resolution"] == 8 and c["channels"] == 1 and c["sigma_g"] == 2.5
    assert c["conditioning"] == {"kind": "labels", "num_classes": 10, "null_label": 10}
    gen = c["generator"]
    assert gen["class_name"] == "mct.nets.onestep.OneStepGenerator"
    assert gen["kwargs"]["denoiser"]["kwargs"]["model"]["class_name"] == "mct.nets.unet.SmallUNet"
    prov = c["provenance"]
    teacher_ckpt = root / "results" / "digits" / "teacher" / "checkpoint.pt"
    import hashlib

    assert prov["teacher"]["sha256"] == hashlib.sha256(teacher_ckpt.read_bytes()).hexdigest()
    assert len(prov["config_hash"]) == 16 and prov["iteration"] == 4 and len(prov["commit"] or "x" * 40) == 40
    # the spec rebuilds the network and the weights are the run's EMA generator
    net = build(gen)
    net.load_state_dict(load_file(folder / "model.safetensors"), strict=True)
    assert spec_of(net) == gen
    ema = torch.load(root / "results" / "digits" / "runs" / "mct" / "checkpoint.pt", weights_only=True)
    for k, v in net.state_dict().items():
        assert torch.equal(v, ema["generator_ema"][k]), k
    card = (folder / "README.md").read_text()
    assert "mct.load_generator('export-digits')" in card and "labels=[0, 3, 7]" in card
    # the toy2d export carries the evaluated metrics in config.json, metrics.json and the card
    toy = exports["toy2d"]
    run_metrics = root / "results" / "toy2d" / "runs" / "mct" / "metrics.json"
    assert (toy / "metrics.json").read_text() != "" and json.loads((toy / "metrics.json").read_text()) == json.loads(
        run_metrics.read_text())
    m = json.loads(run_metrics.read_text())
    m = m["scores"]["metrics"] if "kind" in m else {k: m[k] for k in ("modes_covered", "mode_mass_tv")}
    assert {k: v for k, v in json.loads((toy / "config.json").read_text())["metrics"].items() if k in m} == m
    assert f"| modes_covered | {m['modes_covered']:.4g} |" in (toy / "README.md").read_text()
    assert json.loads((toy / "config.json").read_text())["generator"] == {
        "class_name": "mct.nets.mlp.MLPGenerator", "kwargs": {"dim": 2, "hidden": 32, "layers": 2, "input_scale": 1.0}}


def test_digits_text_export_ships_its_text_encoder(runs):
    """Prompts become the same conditions the teacher was trained on (the CLIP stage's table)."""
    from mct.data.captions import DEFAULT_TEMPLATES, make_caption

    root, _, exports = runs
    g = mct.load_generator(exports["digits-text"])
    assert sorted(p.name for p in (exports["digits-text"] / "text_encoder").iterdir()) == [
        "model.safetensors", "open_clip_config.json"]
    table = torch.load(root / "results" / "digits-text" / "clip" / "checkpoint.pt", weights_only=True)["cond_table"]
    caps = [make_caption(d, DEFAULT_TEMPLATES[1]) for d in range(10)]
    torch.testing.assert_close(g.encode_text(caps), table[:, 1], rtol=1e-5, atol=1e-5)
    assert g.conditioning["example_prompts"][7] == "a handwritten seven"
    assert g.sample(3, seed=0).shape == (3, 8, 8, 1)  # example prompts when none are given


def test_reexport_replaces_atomically_and_foreign_folders_are_refused(runs, tmp_path, capsys):
    _, cfg, exports = runs
    args = ["export", "--config", str(cfg), "--bench", "toy2d", "--variant", "mct"]
    out = tmp_path / "again"
    assert _mct(*args, "--out", str(out)) == 0
    (out / "stale.txt").write_text("from an earlier export")
    assert _mct(*args, "--out", str(out)) == 0
    assert not (out / "stale.txt").exists() and (out / "config.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    capsys.readouterr()
    assert _mct(*args, "--out", str(foreign)) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "is not an MCT export" in err
    assert (foreign / "notes.txt").read_text() == "keep me" and len(list(foreign.iterdir())) == 1


def _one_line_error(fn, needle):
    with pytest.raises(MCTError) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg and needle in msg, msg
    return msg


def test_bad_folders_and_weights_are_one_line(runs, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    _, _, exports = runs
    _one_line_error(lambda: mct.load_generator(tmp_path / "nope"), "is not an MCT export")
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_line_error(lambda: mct.load_generator(empty), "is not an MCT export (no config.json)")
    (empty / "config.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    _one_line_error(lambda: mct.load_generator(empty), "is not an MCT export")
    # weights of another shape than config.json says
    bad = tmp_path / "bad-shape"
    shutil.copytree(exports["digits"], bad)
    state = load_file(bad / "model.safetensors")
    key = next(k for k in state if k.endswith("conv_in.weight"))
    state[key] = state[key][:-1].clone()
    save_file(state, bad / "model.safetensors")
    _one_line_error(lambda: mct.load_generator(bad), "do not match config.json")
    # same shapes, other values: the checksum catches it
    edited = tmp_path / "edited"
    shutil.copytree(exports["digits"], edited)
    state = load_file(edited / "model.safetensors")
    state[key] = state[key] + 1
    save_file(state, edited / "model.safetensors")
    _one_line_error(lambda: mct.load_generator(edited), "modified after export")
    # an untrusted spec cannot name arbitrary code
    evil = tmp_path / "evil"
    shutil.copytree(exports["digits"], evil)
    c = json.loads((evil / "config.json").read_text())
    c["generator"] = {"class_name": "os.system", "kwargs": {"command": "touch /tmp/mct-pwned"}}
    (evil / "config.json").write_text(json.dumps(c))
    _one_line_error(lambda: mct.load_generator(evil), "is not one MCT builds")
    c["weights"] = "../../etc/passwd"
    c["generator"] = json.loads((exports["digits"] / "config.json").read_text())["generator"]
    (evil / "config.json").write_text(json.dumps(c))
    _one_line_error(lambda: mct.load_generator(evil), "relative path inside the folder")
    # an exported CLIP config may not ask open_clip for a timm / hub model
    text = tmp_path / "text"
    shutil.copytree(exports["digits-text"], text)
    clip_cfg = json.loads((text / "text_encoder" / "open_clip_config.json").read_text())
    clip_cfg["model_cfg"]["vision_cfg"]["timm_model_name"] = "vit_base_patch16_224"
    (text / "text_encoder" / "open_clip_config.json").write_text(json.dumps(clip_cfg))
    _one_line_error(lambda: mct.load_generator(text), "vision_cfg may only hold")


def test_bad_labels_and_prompts_exit_2_with_one_line(runs, tmp_path, capsys):
    _, cfg, exports = runs
    g = mct.load_generator(exports["digits"])
    _one_line_error(lambda: g.sample(3, labels=[1, 12]), "unknown label 12")
    _one_line_error(lambda: g.sample(3, prompts=["a cat"]), "takes no prompts")
    big = tmp_path / "big.txt"
    big.write_text("a handwritten seven\n" * 60000)  # > 1 MiB
    t = mct.load_generator(exports["digits-text"])
    _one_line_error(lambda: t.sample(2, prompts=big), "more than the 1048576 allowed")
    base = ["sample", "--config", str(cfg), "--variant", "mct", "--out", str(tmp_path / "x.png")]
    for argv, needle in (
        (["--bench", "digits", "--labels", "0,10"], "unknown label 10"),
        (["--bench", "digits", "--labels", "0,seven"], "--labels must be integers"),
        (["--bench", "digits-text", "--prompts", str(big)], "more than the 1048576 allowed"),
        (["--bench", "digits-text", "--prompts", str(tmp_path / "missing.txt")], "does not exist"),
        (["--bench", "digits-text", "--prompts", "/dev/zero"], "more than the 1048576 allowed"),
        (["--bench", "digits-text", "--prompts", str(tmp_path)], "is a directory"),
        (["--bench", "toy2d", "--num", "5"], "write them to an .npz"),
        (["--bench", "digits", "--num", "0"], "integer >= 1"),
    ):
        capsys.readouterr()
        assert _mct(*base, *argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("mct: error:") and err.count("\n") == 0 and needle in err, err
    assert not (tmp_path / "x.png").exists()


def test_factory_builds_only_what_it_knows():
    from mct.errors import ConfigError
    from mct.nets.factory import build, spec, spec_of
    from mct.nets.mlp import MLPGenerator

    rec = spec("mct.nets.onestep.OneStepGenerator", sigma_g=2.0, denoiser=spec(
        "mct.diffusion.edm.EDMPrecond", sigma_data=0.5, model=spec(
            "mct.nets.unet.SmallUNet", img_resolution=8, in_channels=1, label_dim=10, model_channels=8,
            channel_mult=[1, 2])))
    net = build(json.loads(json.dumps(rec)))  # survives JSON
    assert spec_of(net) == rec and spec_of(net.denoiser.model)["kwargs"]["channel_mult"] == [1, 2]
    assert net.denoiser.model.arch()["channel_mult"] == [1, 2] and net.sigma_g == 2.0
    for bad, needle in (({"class_name": "subprocess.Popen", "kwargs": {"args": ["true"]}}, "not one MCT builds"),
                        ({"class_name": "mct.nets.mlp.MLPGenerator", "kwargs": {"widht": 3}}, "cannot be built"),
                        ({"class_name": "mct.nets.onestep.OneStepGenerator",
                          "kwargs": {"sigma_g": 0, "denoiser": spec("mct.nets.mlp.MLPGenerator")}}, "sigma_g"),
                        ([1, 2], "must be")):
        with pytest.raises(ConfigError, match=needle) as info:
            build(bad)
        assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="was not built by"):
        spec_of(MLPGenerator())


def test_import_mct_stays_cheap():
    code = "import sys, mct; assert 'torch' not in sys.modules; assert callable(mct.load_generator); print('ok')"
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": SRC},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-1000:]


# ----------------------------------------------------------------------------- Stable Diffusion

def test_sd_export_is_a_diffusers_pipeline(tmp_path):
    """tiny SD (tests/test_sd.py) -> 3 distillation iterations -> export -> (a) load_generator equals
    `mct sample` exactly; (b) DiffusionPipeline.from_pretrained + sigmas=[sigma_g, 0] gives the
    same images up to float rounding."""
    pytest.importorskip("diffusers")
    pytest.importorskip("transformers")
    from diffusers import DiffusionPipeline

    from mct.export.core import draw_latents
    from test_sd import build_tiny_sd

    sd_dir = build_tiny_sd(tmp_path / "tiny-sd")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red bus\na cat on a mat\ntwo dogs playing\n", encoding="utf-8")
    section = {"teacher": {"model": str(sd_dir), "local_files_only": True, "guidance": 2.0},
               "sigma_g": 2.5,
               "prompts": {"train": str(prompts), "seed": 0},
               "eval": {"prompts": str(prompts), "prompt_seed": 0},
               "em": {"num_steps": 1, "gamma_eps": 0.1, "gamma_z": 0.0},
               "train": {"iterations": 2, "batch_size": 2, "lr_g": 1e-3, "lr_s": 1e-3, "score_updates": 1,
                         "checkpoint_every": 2, "log_every": 1, "sigma": {"lo": 0.05, "hi": 10.0}},
               "variants": {"mct": {}}}
    cfg = tmp_path / "sd.yaml"
    cfg.write_text(yaml.safe_dump({"results_dir": str(tmp_path / "results"), "benchmarks": {"sd15": section}}))
    common = ["--config", str(cfg), "--bench", "sd15", "--variant", "mct"]
    assert _mct("distill", *common) == 0
    out = tmp_path / "sd-export"
    assert _mct("export", *common, "--out", str(out)) == 0
    for part in ("model_index.json", "unet", "vae", "text_encoder", "tokenizer", "scheduler", "config.json",
                 "README.md"):
        assert (out / part).exists(), part
    two = ["a red bus", "two dogs playing"]
    (tmp_path / "two.txt").write_text("\n".join(two) + "\n")
    assert _mct("sample", *common, "--prompts", str(tmp_path / "two.txt"), "--seed", "1",
                "--out", str(tmp_path / "cli.npz")) == 0
    want = np.load(tmp_path / "cli.npz")["arr_0"]
    g = mct.load_generator(out)
    assert np.array_equal(g.sample(2, prompts=two, seed=1), want) and want.shape == (2, 16, 16, 3)
    ours = g.sample(2, prompts=two, seed=1, output="float")
    pipe = DiffusionPipeline.from_pretrained(out)
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    sigma_g = json.loads((out / "config.json").read_text())["sigma_g"]
    theirs = pipe(two, sigmas=[sigma_g, 0.0], guidance_scale=1.0, latents=draw_latents(1, 2, (4, 8, 8)),
                  output_type="pt").images
    torch.testing.assert_close(theirs, (ours + 1) / 2, rtol=0, atol=1e-4)
    assert "DiffusionPipeline.from_pretrained" in (out / "README.md").read_text()
    # config.json's factory spec rebuilds the same generator from the exported U-Net weights
    from mct.export.folder import load_weights
    from mct.nets.factory import build

    c = json.loads((out / "config.json").read_text())
    net = build(c["generator"]).eval()
    load_weights(net, out / c["weights"], prefix=c["weights_prefix"])
    z, cond = draw_latents(0, 2, (4, 8, 8)), g.encode_text(two)
    with torch.no_grad():
        assert torch.equal(net(z, cond), g.generator(z, cond))


# ----------------------------------------------------------------------------- ImageNet (tiny teachers)

@pytest.mark.parametrize("bench_name", ["imagenet64", "imagenet128"])
def test_imagenet_generators_export_through_the_factory(tmp_path, bench_name):
    """The ImageNet branch of the adapter: a tiny EDM-pickle (Dhariwal) or ADM teacher, one
    distillation iteration, export, load: same images as the run's generator."""
    import io

    from mct.benchmarks.base import RunContext, get_benchmark
    from mct.export.folder import write_export
    from mct.export.runs import _run_generator
    from mct.nets.adm import adm_from_flags
    from paper_fixtures import TINY_ADM_FLAGS, LoopbackServer, tiny_edm_net, write_edm_pickle
    from test_imagenet_bench import _ref_npz, _section

    ctx = RunContext(results_dir=tmp_path / "results", device="cpu", progress=False)
    bench = get_benchmark(bench_name)
    with LoopbackServer() as server:
        server.files["/ref.npz"] = _ref_npz()
        if bench_name == "imagenet64":
            pkl = write_edm_pickle(tmp_path / "tiny-edm.pkl", tiny_edm_net(seed=2), tmp_path / "marker")
            server.files["/t.pkl"] = pkl.read_bytes()
            section = _section(server, tmp_path, "/t.pkl", {"train": {"iterations": 1}})
        else:
            torch.manual_seed(0)
            unet = adm_from_flags(TINY_ADM_FLAGS)
            buf = io.BytesIO()
            torch.save(unet.state_dict(), buf)
            server.files["/adm.pt"] = buf.getvalue()
            section = _section(server, tmp_path, "/adm.pt", {
                "num_classes": 1000, "teacher": {"kind": "openai-adm", "adm_flags": dict(TINY_ADM_FLAGS)},
                "train": {"iterations": 1}})
        bench.teacher_fetch(section, ctx)
        bench.distill(section, ctx, variant="mct")
    run = _run_generator(bench, bench.parse(section, "mct"), ctx, "mct")
    assert run.model.conditioning["kind"] == "labels" and run.model.shape == (3, 8, 8)
    inner = run.spec["kwargs"]["denoiser"]["class_name"]
    assert inner == ("mct.nets.dhariwal.DhariwalDenoiser" if bench_name == "imagenet64" else "mct.teachers.base.VPToEDM")
    folder = write_export(tmp_path / "exp", run.model, run.spec, run.record)
    labels = [1, 999 if bench_name == "imagenet128" else 9]
    want = run.model.sample(4, labels=labels, seed=2)
    assert np.array_equal(mct.load_generator(folder).sample(4, labels=labels, seed=2), want)
    from mct.export.core import draw_latents, to_uint8

    gen, _ = bench.load_generator(bench.parse(section, "mct"), ctx, "mct")  # the benchmark's own hook
    with torch.no_grad():
        direct = gen(draw_latents(2, 4, (3, 8, 8)), torch.tensor(labels * 2))
    assert np.array_equal(to_uint8(direct.clamp(-1, 1)), want)  # the benchmark's own generator, same images
