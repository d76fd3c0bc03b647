"""The imagenet64 / imagenet128 benchmark plugin end to end at toy size: tiny teachers in the real
formats served from a loopback HTTP server, fetch (pinned by the lock file), distil, evaluate
(FID through a registered tiny feature extractor), teacher eval, summarize."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mct.benchmarks.base import REGISTRY, RunContext, get_benchmark
from mct.errors import ConfigError, MCTError
from mct.records import RunMetrics, TeacherMetrics, read_record

sys.path.insert(0, str(Path(__file__).parent))
from paper_fixtures import (TINY_ADM_FLAGS, LoopbackServer, register_tiny_extractor,  # noqa: E402
                            tiny_edm_net, write_edm_pickle)

REPO = Path(__file__).resolve().parents[1]


def _ref_npz(dim=16) -> bytes:
    g = np.random.default_rng(0)
    a = g.normal(size=(dim, dim))
    buf = io.BytesIO()
    np.savez(buf, mu=g.normal(size=dim) * 0.1, sigma=a @ a.T / dim + np.eye(dim) * 0.01)
    return buf.getvalue()


def _section(server, tmp_path, teacher_path: str, extra: dict | None = None) -> dict:
    section = {
        "resolution": 8, "num_classes": 10, "channels": 3,
        "teacher": {"kind": "edm-pickle", "url": server.url(teacher_path), "precision": "fp32"},
        "lock_file": str(tmp_path / "checksums.lock.yaml"),
        "sigma_g": 2.5, "init": "teacher", "dropout": 0.0, "precision": "fp32",
        "em": {"num_steps": 2, "gamma_eps": 0.1, "gamma_z": 0.05},
        "train": {"iterations": 2, "batch_size": 4, "lr_g": 1e-5, "lr_s": 1e-5, "score_updates": 1,
                  "checkpoint_every": 1, "log_every": 1, "ema_decay": 0.9},
        "eval": {"num_samples": 20, "seeds": [0, 1], "batch_size": 10, "ref_url": server.url("/ref.npz"),
                 "feature_extractor": register_tiny_extractor(), "feature_layer": "16", "feature_dim": 16,
                 "teacher_nfe": [3], "teacher_seeds": [0], "teacher_num_samples": 10, "grid": 8},
        "variants": {"mct": {}, "k1": {"em": {"num_steps": 1, "gamma_z": 0.0}}},
    }
    for k, v in (extra or {}).items():
        section[k] = {**section[k], **v} if isinstance(v, dict) and isinstance(section.get(k), dict) else v
    return section


def test_registry_and_config_files():
    assert REGISTRY["imagenet64"] == REGISTRY["imagenet128"] == "mct.benchmarks.imagenet"
    b64, b128 = get_benchmark("imagenet64"), get_benchmark("imagenet128")
    assert (b64.name, b128.name) == ("imagenet64", "imagenet128")
    assert b128.parse({}).teacher.kind == "openai-adm" and b128.parse({}).resolution == 128
    assert b64.parse({}).teacher.kind == "edm-pickle"
    from mct.cli import load_root

    for name in ("imagenet64", "imagenet128"):
        root, raw = load_root(REPO / "config" / f"{name}.yaml")
        bench = get_benchmark(name)
        section = raw["benchmarks"][name]
        assert {"mct", "k1", "no-nc", "no-reparam", "random-init"} <= set(section["variants"])
        cfg = bench.parse(section, "k1")
        assert cfg.em.num_steps == 1 and cfg.eval.num_samples == 50000 and tuple(cfg.eval.seeds) == (0, 1, 2)
    with pytest.raises(ConfigError, match="precision"):
        get_benchmark("imagenet64").parse({"precision": "fp8"})
    with pytest.raises(ConfigError, match="unknown config key"):
        get_benchmark("imagenet64").parse({"teacher": {"nope": 1}})


def test_edm_teacher_end_to_end(tmp_path):
    net = tiny_edm_net(seed=2)
    marker = tmp_path / "marker"
    pkl = write_edm_pickle(tmp_path / "tiny-edm.pkl", net, marker)
    ctx = RunContext(results_dir=tmp_path / "results", device="cpu", progress=False)
    bench = get_benchmark("imagenet64")
    with LoopbackServer() as server:
        server.files["/tiny-edm.pkl"] = pkl.read_bytes()
        server.files["/ref.npz"] = _ref_npz()
        section = _section(server, tmp_path, "/tiny-edm.pkl")

        with pytest.raises(MCTError, match="teacher fetch"):
            bench.distill(section, ctx, variant="mct")
        info = bench.teacher_fetch(section, ctx)
        assert "EDMPrecond(DhariwalUNet)" in info["description"]
        tdir = ctx.bench_dir("imagenet64") / "teacher"
        assert (tdir / "checkpoint.pt").read_bytes() == pkl.read_bytes()  # the stage's declared output
        assert json.loads((tdir / "teacher.json").read_text())["file_name"] == "tiny-edm.pkl"
        lock = yaml.safe_load(Path(section["lock_file"]).read_text())
        assert set(lock) == {server.url("/tiny-edm.pkl"), server.url("/ref.npz")}

        summary = bench.distill(section, ctx, variant="mct")
        assert summary["iterations"] == 2
        run = ctx.run_dir("imagenet64", "mct")
        assert (run / "checkpoint.pt").exists() and (run / "train_log.csv").exists()
        state = torch.load(run / "checkpoint.pt", weights_only=True)
        assert state["config"]["arch"]["teacher"]["kind"] == "edm-pickle"
        # the generator starts as the teacher: its keys are the teacher's under 'denoiser.'
        assert set(state["generator"]) == {f"denoiser.{k}" for k in net.state_dict()}

        m = bench.evaluate(section, ctx, variant="mct")
        fid = m.scores.get("fid")
        assert fid == min(m.scores.fid_seeds) and len(m.scores.fid_seeds) == 2 and np.isfinite(fid)
        assert m.nfe == 1 and m.num_samples == 20 and m.iterations == 2
        assert read_record(run / "metrics.json", RunMetrics).scores.get("fid") == fid
        assert (run / "samples.png").exists()

        t = bench.teacher_eval(section, ctx)
        assert t.rows[0].nfe == 3 and np.isfinite(t.rows[0].scores.get("fid"))
        assert read_record(tdir / "metrics.json", TeacherMetrics).rows[0].scores.get("fid") == t.rows[0].scores.get("fid")
        assert (tdir / "samples.png").exists()

        with pytest.raises(MCTError, match="k1"):
            bench.summarize(section, ctx)
        bench.distill(section, ctx, variant="k1")
        bench.evaluate(section, ctx, variant="k1")
        rows = bench.summarize(section, ctx).rows
        assert [r.variant for r in rows] == ["mct", "k1"] and rows[1].settings["K"] == 1
        assert (ctx.bench_dir("imagenet64") / "summary.csv").exists()
    assert not marker.exists()


def test_local_teacher_copy(tmp_path):
    """teacher.path (offline clusters): used in place, the declared output links to it."""
    pkl = write_edm_pickle(tmp_path / "local.pkl", tiny_edm_net(), tmp_path / "marker")
    ctx = RunContext(results_dir=tmp_path / "results", device="cpu", progress=False)
    bench = get_benchmark("imagenet64")
    with LoopbackServer() as server:
        server.files["/ref.npz"] = _ref_npz()
        section = _section(server, tmp_path, "/never-requested.pkl", {"teacher": {"path": str(pkl)}})
        bench.teacher_fetch(section, ctx)
        assert all(path != "/never-requested.pkl" for path, _ in server.requests)
    link = ctx.bench_dir("imagenet64") / "teacher" / "checkpoint.pt"
    assert link.is_symlink() and link.resolve() == pkl.resolve()
    teacher, arch = bench.load_teacher(bench.parse(section), ctx)
    assert arch["init_kwargs"]["label_dim"] == 10
    bad = dict(section, teacher={**section["teacher"], "sha256": "0" * 64})
    with pytest.raises(MCTError, match="does not match"):
        bench.teacher_fetch(bad, ctx)


def test_generator_is_the_teacher_at_sigma_g(tmp_path):
    """'init: teacher': before any update g(z, c) = D_T(sigma_g z, sigma_g, c); 'random' differs."""
    from mct.benchmarks.imagenet import ImageNet
    from mct.distill.init import init_networks

    bench = ImageNet("imagenet64")
    net = tiny_edm_net(seed=3)
    cfg = bench.parse({"resolution": 8, "num_classes": 10, "sigma_g": 2.5, "precision": "fp32",
                       "dropout": 0.0})
    arch = {"kind": "edm-pickle", "init_kwargs": dict(net.init_kwargs)}
    record = {"teacher": arch, "sigma_g": cfg.sigma_g, "dropout": cfg.dropout, "precision": cfg.precision}
    gen, student = init_networks(net, record, cfg.init)
    z, c = torch.randn(2, 3, 8, 8), torch.tensor([1, 7])
    with torch.no_grad():
        torch.testing.assert_close(gen(z, c), net(2.5 * z, torch.full((2,), 2.5), c))
        assert all(p.requires_grad for p in gen.parameters()) and student is not net
        cfg_r = bench.parse({"resolution": 8, "num_classes": 10, "init": "random", "precision": "fp32"})
        gen_r, _ = init_networks(net, record, cfg_r.init, seed=0)
        assert not torch.allclose(gen_r(z, c), gen(z, c))


def test_adm_teacher_distils_through_the_vp_wrapper(tmp_path):
    from mct.nets.adm import adm_from_flags

    torch.manual_seed(0)
    unet = adm_from_flags(TINY_ADM_FLAGS)
    with torch.no_grad():
        for p in unet.parameters():
            p.normal_(0, 0.05)
    buf = io.BytesIO()
    torch.save(unet.state_dict(), buf)
    ctx = RunContext(results_dir=tmp_path / "results", device="cpu", progress=False)
    bench = get_benchmark("imagenet128")
    with LoopbackServer() as server:
        server.files["/adm.pt"] = buf.getvalue()
        server.files["/ref.npz"] = _ref_npz()
        section = _section(server, tmp_path, "/adm.pt", {
            "num_classes": 1000, "teacher": {"kind": "openai-adm", "adm_flags": dict(TINY_ADM_FLAGS)},
            "train": {"iterations": 1}, "eval": {"seeds": [0]}})
        bench.teacher_fetch(section, ctx)
        bench.distill(section, ctx, variant="mct")
        m = bench.evaluate(section, ctx, variant="mct")
        assert np.isfinite(m.scores.get("fid")) and m.notes["teacher_kind"] == "openai-adm"
        assert "not public" in m.notes["teacher_note"]


def test_cli_wiring(tmp_path, capsys):
    """The CLI reaches the plugin: `mct config check` and a stage error as one line, exit 2."""
    from mct.cli import main

    cfg = {"results_dir": str(tmp_path / "r"), "device": "cpu", "progress": False,
           "benchmarks": {"imagenet64": {"resolution": 8, "num_classes": 10,
                                         "teacher": {"path": str(tmp_path / "absent.pkl")},
                                         "variants": {"mct": {}}}}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["config", "check", "--config", str(path)]) == 0
    assert main(["distill", "--config", str(path), "--bench", "imagenet64", "--variant", "mct"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "absent.pkl" in err[-1] and "teacher fetch" in err[-1]


def test_local_reference_is_checked_first_and_recorded_as_ref_path(tmp_path, monkeypatch):
    """eval.ref_path (offline clusters): a missing one fails evaluation before the generator is
    loaded (one error naming the key); a present one is what metrics.json records, not ref_url."""
    from mct.benchmarks.imagenet import ImageNet

    pkl = write_edm_pickle(tmp_path / "local.pkl", tiny_edm_net(), tmp_path / "marker")
    ref = tmp_path / "my-ref.npz"
    ctx = RunContext(results_dir=tmp_path / "results", device="cpu", progress=False)
    bench = get_benchmark("imagenet64")
    with LoopbackServer() as server:
        section = _section(server, tmp_path, "/never.pkl", {"teacher": {"path": str(pkl)},
                                                            "eval": {"ref_path": str(ref), "seeds": [0]},
                                                            "train": {"iterations": 1}})
        loads = []
        original = ImageNet.load_generator
        monkeypatch.setattr(ImageNet, "load_generator", lambda *a, **k: loads.append(1) or original(*a, **k))
        with pytest.raises(MCTError, match=rf"missing: reference statistics {ref} \(eval.ref_path, or `mct teacher "
                                           r"fetch --bench imagenet64`\)"):
            bench.evaluate(section, ctx, variant="mct")
        with pytest.raises(MCTError, match="eval.ref_path"):
            bench.teacher_eval(section, ctx)
        assert loads == []
        ref.write_bytes(_ref_npz())
        bench.teacher_fetch(section, ctx)
        bench.distill(section, ctx, variant="mct")
        import mct.checkpoint as C

        reads, real_load = [], torch.load
        monkeypatch.setattr(C.torch, "load", lambda *a, **k: reads.append(k.get("mmap")) or real_load(*a, **k))
        m = bench.evaluate(section, ctx, variant="mct")
        assert reads == [True]  # one memory-mapped read of the run (the optimiser states stay on disk)
        assert server.requests == []  # neither the teacher nor the reference was downloaded
    assert loads == [1] and m.notes["reference"] == str(ref)
    text = (ctx.run_dir("imagenet64", "mct") / "metrics.json").read_text()
    assert str(ref) in text and server.url("/ref.npz") not in text
