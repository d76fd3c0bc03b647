"""Paper-scale teachers: EDM pickles (safe loader), MCT's ADM networks, OpenAI ADM .pt, inspect.

Every checkpoint format is exercised with fixtures the tests build in the same format
(tests/paper_fixtures.py); nothing is downloaded and no EDM / guided-diffusion code is used."""

from __future__ import annotations

import math
import pickle
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mct.errors import CheckpointError
from mct.teachers.edm_pickle import ALLOWED_GLOBALS, load_edm_denoiser, read_edm_snapshot, safe_unpickle

sys.path.insert(0, str(Path(__file__).parent))
from paper_fixtures import (TINY_ADM_FLAGS, TINY_EDM_KWARGS, marker_source, pickle_globals,  # noqa: E402
                            tiny_adm_expected_keys, tiny_edm_net, write_edm_pickle)

# ----------------------------------------------------------------------------- EDM pickles


@pytest.fixture()
def edm_pickle(tmp_path):
    net = tiny_edm_net(seed=1)
    marker = tmp_path / "module_src_was_executed"
    path = write_edm_pickle(tmp_path / "network-snapshot.pkl", net, marker)
    return path, net, marker


def test_fixture_is_in_edm_format_and_its_marker_works(edm_pickle, tmp_path):
    path, _, marker = edm_pickle
    # exactly the globals an EDM snapshot needs (docs/benchmarks.md#imagenet64) (numpy 2 spelling here)
    assert pickle_globals(path.read_bytes()) == {
        "torch_utils.persistence._reconstruct_persistent_obj", "torch.storage._load_from_bytes",
        "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter", "collections.OrderedDict",
        "torch.nn.modules.container.ModuleDict", "numpy.dtype", "numpy._core.multiarray.scalar"}
    assert all(tuple(g.rsplit(".", 1)) in ALLOWED_GLOBALS for g in pickle_globals(path.read_bytes()))
    # the embedded module source really would leave a marker if anything executed it
    other = tmp_path / "sanity_marker"
    exec(compile(marker_source(other), "<module_src>", "exec"), {})
    assert other.exists()
    assert not marker.exists()
    assert "torch_utils" not in sys.modules


def test_edm_pickle_loads_without_running_code_and_matches_direct_weights(edm_pickle):
    path, net, marker = edm_pickle
    loaded = load_edm_denoiser(path)
    assert not marker.exists(), "module_src from the pickle was executed"
    assert "torch_utils" not in sys.modules and "torch_utils.persistence" not in sys.modules
    ref_state = net.state_dict()
    got_state = loaded.state_dict()
    assert set(got_state) == set(ref_state)
    for k in ref_state:
        assert torch.equal(got_state[k], ref_state[k]), k
    assert any("resample_filter" in k for k in got_state)

    # the same weights loaded directly into a fresh network give identical outputs
    from mct.nets.dhariwal import DhariwalDenoiser

    direct = DhariwalDenoiser(**TINY_EDM_KWARGS).eval()
    direct.load_state_dict(ref_state, strict=True)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 8, 8, generator=g)
    sigma = torch.tensor([0.01, 0.5, 3.0, 80.0])
    labels = torch.tensor([0, 3, 9, 2])
    with torch.no_grad():
        out = loaded(x, sigma, labels)
        assert torch.equal(out, direct(x, sigma, labels))
        # labels as integers or one-hot are the same conditioning; other labels give another output
        assert torch.equal(out, loaded(x, sigma, torch.nn.functional.one_hot(labels, 10).float()))
        assert not torch.allclose(out, loaded(x, sigma, (labels + 1) % 10))
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert loaded.init_kwargs["model_channels"] == 32 and loaded.label_dim == 10


def test_edm_snapshot_contents(edm_pickle):
    path, net, _ = edm_pickle
    snap = read_edm_snapshot(path)
    assert snap.net.class_name == "EDMPrecond"
    assert snap.init_kwargs["model_type"] == "DhariwalUNet" and math.isinf(snap.init_kwargs["sigma_max"])
    assert snap.top["loss_fn"].class_name == "EDMLoss" and snap.top["augment_pipe"] is None
    assert snap.top["dataset_kwargs"]["use_labels"] is True
    # numpy scalars in the blocks' init kwargs come back as plain numbers
    block = snap.net.state["_modules"]["model"].state["_modules"]["enc"].state["_modules"]["8x8_block0"]
    assert block.init_kwargs["init"]["init_weight"] == pytest.approx(math.sqrt(1 / 3))
    assert snap.num_parameters == sum(p.numel() for p in net.parameters())


def test_forbidden_global_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.pkl"
    bad.write_bytes(b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")
    with pytest.raises(CheckpointError, match=r"refused global os\.system") as exc:
        load_edm_denoiser(bad)
    assert str(bad) in str(exc.value)
    assert not marker.exists()
    from mct.teachers.inspect import inspect_checkpoint

    with pytest.raises(CheckpointError, match=r"os\.system"):
        inspect_checkpoint(bad)
    assert not marker.exists()


def test_forbidden_global_hidden_inside_a_snapshot_is_refused(tmp_path):
    """A well-formed snapshot that smuggles builtins.eval into one object's state."""
    net = tiny_edm_net()
    marker = tmp_path / "marker"
    payload = object()
    code = f"open({str(tmp_path / 'evaluated')!r}, 'w')"
    path = write_edm_pickle(tmp_path / "snap.pkl", net, marker, extra_entries={"extra": payload},
                            extra_reduce={id(payload): (eval, (code,))})
    assert "builtins.eval" in pickle_globals(path.read_bytes())
    with pytest.raises(CheckpointError, match=r"refused global builtins\.eval"):
        safe_unpickle(path)
    assert not (tmp_path / "evaluated").exists() and not marker.exists()


def test_numpy1_spelling_and_object_dtypes(tmp_path):
    blob = pickle.dumps({"g": np.float64(0.25), "i": np.int64(7)}, protocol=3)
    assert b"numpy._core.multiarray" in blob or b"numpy.core.multiarray" in blob
    old = blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")  # files written with numpy 1
    for i, data in enumerate((blob, old)):
        p = tmp_path / f"np{i}.pkl"
        p.write_bytes(data)
        assert safe_unpickle(p) == {"g": 0.25, "i": 7}
    p = tmp_path / "obj.pkl"
    p.write_bytes(pickle.dumps(np.dtype("O"), protocol=3))
    with pytest.raises(CheckpointError, match="Python objects"):
        safe_unpickle(p)


def test_truncated_and_foreign_files(edm_pickle, tmp_path):
    path, _, marker = edm_pickle
    cut = tmp_path / "cut.pkl"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="not a readable EDM pickle"):
        load_edm_denoiser(cut)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_edm_denoiser(tmp_path / "missing.pkl")
    # another architecture: strict loading names the mismatch
    wide = dict(TINY_EDM_KWARGS, model_channels=64)
    write_edm_pickle(tmp_path / "w.pkl", tiny_edm_net(), marker, top_kwargs=wide)
    with pytest.raises(CheckpointError, match="do not fit this architecture"):
        load_edm_denoiser(tmp_path / "w.pkl")
    # a model type MCT does not implement
    write_edm_pickle(tmp_path / "song.pkl", tiny_edm_net(), marker, top_kwargs=dict(TINY_EDM_KWARGS,
                                                                                      model_type="SongUNet"))
    with pytest.raises(CheckpointError, match="SongUNet"):
        load_edm_denoiser(tmp_path / "song.pkl")
    assert not marker.exists()


def test_cli_inspect(edm_pickle, tmp_path, capsys):
    from mct.cli import main

    path, _, marker = edm_pickle
    assert main(["teacher", "inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "EDMPrecond(DhariwalUNet)" in out and "loads into MCT: yes" in out
    assert f"parameters: {sum(p.numel() for p in tiny_edm_net().parameters()):,}" in out
    bad = tmp_path / "evil.pkl"
    bad.write_bytes(b"cos\nsystem\n(S'true'\ntR.")
    assert main(["teacher", "inspect", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "os.system" in err[0]
    assert not marker.exists()


def test_inspect_mct_checkpoint_and_state_dicts(tmp_path):
    from mct.teachers.inspect import inspect_checkpoint

    ck = tmp_path / "ckpt.pt"
    torch.save({"format": "mct-distill-v1", "iteration": 3, "seconds": 1.5, "config_hash": "abc",
                "config": {"bench": "imagenet64", "variant": "mct", "em": {"num_steps": 8}},
                "generator": {"w": torch.zeros(2, 3)}, "generator_ema": {"w": torch.zeros(2, 3)},
                "student": {"w": torch.zeros(4)}}, ck)
    text = inspect_checkpoint(ck)
    assert "mct-distill-v1" in text and "iteration: 3" in text and "student: 4 parameters" in text
    other = tmp_path / "teacher.pt"
    torch.save({"format": "mct-teacher-v1", "arch": {"model_channels": 32}, "ema": {"w": torch.zeros(5)}}, other)
    text = inspect_checkpoint(other)
    assert "mct-teacher-v1" in text and "ema: state dict, 5 parameters" in text


# ----------------------------------------------------------------------------- network architecture


def _independent_param_count(mc=192, mult=(1, 2, 3, 4), nb=3, attn_res=(32, 16, 8), res0=64, labels=1000,
                             emb_mult=4, cin_img=3, head_ch=64) -> int:
    """Parameter count of EDM's DhariwalUNet from its description alone (not from the code):
    block = GN(in) + conv3x3(in->out) + affine(emb -> 2 out) + GN(out) + conv3x3(out->out)
    [+ 1x1 skip if in != out] [+ GN + qkv 1x1 (out->3 out) + proj 1x1 if it has >= 1 head]."""
    emb = emb_mult * mc

    def block(cin, cout, attn):
        n = 2 * cin + 9 * cin * cout + cout + 2 * cout * emb + 2 * cout + 2 * cout + 9 * cout * cout + cout
        if cin != cout:
            n += cin * cout + cout
        if attn and cout // head_ch:
            n += 2 * cout + 3 * cout * cout + 3 * cout + cout * cout + cout
        return n

    n = (mc * emb + emb) + (emb * emb + emb) + labels * emb + (9 * cin_img * mc + mc)
    skips, c = [mc], mc
    for lvl, m in enumerate(mult):
        if lvl:
            n += block(c, c, False)
            skips.append(c)
        for _ in range(nb):
            n += block(c, mc * m, (res0 >> lvl) in attn_res)
            c = mc * m
            skips.append(c)
    for lvl, m in reversed(list(enumerate(mult))):
        n += block(c, c, True) + block(c, c, False) if lvl == len(mult) - 1 else block(c, c, False)
        for _ in range(nb + 1):
            n += block(c + skips.pop(), mc * m, (res0 >> lvl) in attn_res)
            c = mc * m
    return n + 2 * c + 9 * c * cin_img + cin_img


def test_imagenet64_network_full_size_builds_counts_and_runs():
    from mct.nets.dhariwal import IMAGENET64_KWARGS, DhariwalDenoiser, count_parameters

    assert _independent_param_count() == 295_899_267  # 295.9M (docs/benchmarks.md#imagenet64)
    t0 = time.perf_counter()
    net = DhariwalDenoiser(**IMAGENET64_KWARGS).eval()
    build = time.perf_counter() - t0
    assert count_parameters(net) == 295_899_267
    sd = net.state_dict()
    for key, shape in {"model.map_layer0.weight": (768, 192), "model.map_label.weight": (768, 1000),
                       "model.enc.64x64_conv.weight": (192, 3, 3, 3), "model.enc.64x64_block0.norm0.weight": (192,),
                       "model.enc.64x64_block0.affine.weight": (384, 768),
                       "model.enc.32x32_down.conv0.resample_filter": (1, 1, 2, 2),
                       "model.enc.32x32_block0.qkv.weight": (1152, 384, 1, 1),
                       "model.dec.8x8_in0.qkv.weight": (2304, 768, 1, 1),
                       "model.out_conv.weight": (3, 192, 3, 3)}.items():
        assert tuple(sd[key].shape) == shape, key
    assert "model.enc.64x64_block0.qkv.weight" not in sd  # no attention at 64x64
    x = torch.randn(1, 3, 64, 64)
    t0 = time.perf_counter()
    with torch.no_grad():
        out = net(x, torch.tensor([2.0]), torch.tensor([207]))
    fwd = time.perf_counter() - t0
    assert out.shape == x.shape and torch.isfinite(out).all()
    print(f"\nImageNet-64 ADM: {count_parameters(net):,} parameters, build {build:.1f} s, "
          f"batch-1 forward {fwd:.1f} s on CPU")


def test_dhariwal_attention_matches_the_einsum_formula():
    """The fused attention equals EDM's formulation softmax_k(q.k / sqrt(c)) v, head layout
    [head][channel][q, k, v]."""
    from mct.nets.dhariwal import UNetBlock

    torch.manual_seed(0)
    blk = UNetBlock(8, 128, 16, attention=True).eval()
    with torch.no_grad():
        for p in blk.parameters():
            p.normal_(0, 0.3)
        x, emb = torch.randn(2, 8, 4, 4), torch.randn(2, 16)
        out = blk(x, emb)
        # the same block computed by hand
        h = blk.conv0(torch.nn.functional.silu(blk.norm0(x)))
        scale, shift = blk.affine(emb)[:, :, None, None].chunk(2, dim=1)
        h = torch.nn.functional.silu(shift + blk.norm1(h) * (scale + 1))
        h = blk.conv1(h) + blk.skip(x)
        q, k, v = blk.qkv(blk.norm2(h)).reshape(2 * 2, 64, 3, 16).unbind(2)
        w = torch.einsum("ncq,nck->nqk", q, k / math.sqrt(64)).softmax(dim=2)
        a = torch.einsum("nqk,nck->ncq", w, v).reshape(h.shape)
        ref = blk.proj(a) + h
    assert blk.num_heads == 2
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- OpenAI ADM


def _tiny_adm(tmp_path, seed=0):
    from mct.nets.adm import adm_from_flags

    torch.manual_seed(seed)
    unet = adm_from_flags(TINY_ADM_FLAGS)
    with torch.no_grad():
        for p in unet.parameters():
            p.normal_(0, 0.1)
    path = tmp_path / "adm_tiny.pt"
    torch.save(unet.state_dict(), path)
    return path, unet.eval()


def test_adm_tiny_has_guided_diffusion_key_names(tmp_path):
    path, unet = _tiny_adm(tmp_path)
    sd = torch.load(path, weights_only=True)
    assert set(sd) == tiny_adm_expected_keys()
    assert tuple(sd["out.2.weight"].shape) == (6, 32, 3, 3)  # learn_sigma: eps and variance
    assert tuple(sd["input_blocks.3.1.qkv.weight"].shape) == (192, 64, 1)
    assert tuple(sd["label_emb.weight"].shape) == (1000, 128)


def test_adm_loads_strictly_and_wrapper_matches_the_closed_form(tmp_path):
    from mct.teachers.base import linear_vp_alphas_cumprod
    from mct.teachers.openai_adm import load_adm_denoiser

    path, unet = _tiny_adm(tmp_path)
    den = load_adm_denoiser(path, TINY_ADM_FLAGS)
    abar = linear_vp_alphas_cumprod(1000)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 3, 8, 8, generator=g)
    labels = torch.tensor([1, 500, 999])
    for t in (0, 250, 999):
        s = float(((1 - abar[t]) / abar[t]).sqrt())
        sig = torch.full((3,), s)
        assert float(den.sigma_to_t(sig)[0]) == pytest.approx(t, abs=1e-3)
        with torch.no_grad():
            eps = unet(x / math.sqrt(1 + s * s), torch.full((3,), float(t)), labels)[:, :3]
            expect = x - s * eps
            got = den(x, sig, labels)
        torch.testing.assert_close(got, expect, rtol=1e-4, atol=1e-4 * max(1.0, s))

    # closed form: with the output layer zeroed and its bias set, eps is that bias (its first
    # three channels; the variance half must be ignored), so D(x, sigma) = x - sigma * b
    sd = torch.load(path, weights_only=True)
    sd["out.2.weight"].zero_()
    sd["out.2.bias"].copy_(torch.tensor([0.3, -0.2, 0.1, 9.0, 9.0, 9.0]))
    torch.save(sd, path)
    den = load_adm_denoiser(path, TINY_ADM_FLAGS)
    b = torch.tensor([0.3, -0.2, 0.1]).reshape(1, 3, 1, 1)
    for s in (0.05, 1.0, 2.5, 40.0):
        with torch.no_grad():
            got = den(x, torch.full((3,), s), labels)
        torch.testing.assert_close(got, x - s * b, rtol=1e-5, atol=1e-5)


def test_adm_refuses_code_and_other_architectures(tmp_path):
    from mct.teachers.openai_adm import load_adm_denoiser

    path, _ = _tiny_adm(tmp_path)
    with pytest.raises(CheckpointError, match="do not fit this architecture"):
        load_adm_denoiser(path, dict(TINY_ADM_FLAGS, num_channels=64))
    with pytest.raises(CheckpointError, match="do not fit this architecture"):
        load_adm_denoiser(path, dict(TINY_ADM_FLAGS, use_scale_shift_norm=False))
    evil = tmp_path / "evil.pt"
    evil.write_bytes(b"cos\nsystem\n(S'true'\ntR.")
    with pytest.raises(CheckpointError, match="weights_only"):
        load_adm_denoiser(evil, TINY_ADM_FLAGS)


def test_adm_inspect_infers_structure(tmp_path):
    from mct.teachers.inspect import inspect_checkpoint
    from mct.teachers.openai_adm import infer_adm_structure

    path, unet = _tiny_adm(tmp_path)
    s = infer_adm_structure(unet.state_dict())
    assert s["model_channels"] == 32 and s["learn_sigma"] and s["num_classes"] == 1000
    assert s["channel_mult"] == (1, 2) and s["num_res_blocks"] == 1 and s["attention_ds"] == (2,)
    assert s["resblock_updown"] and s["use_scale_shift_norm"]
    text = inspect_checkpoint(path)
    assert "OpenAI guided-diffusion" in text and "matches the released 128x128 flags: no" in text


def test_adm128_full_architecture_on_meta():
    """The released 128x128 flags give guided-diffusion's shapes (checked on the meta device)."""
    from mct.nets.adm import ADM128_FLAGS, adm_from_flags

    with torch.device("meta"):
        unet = adm_from_flags(ADM128_FLAGS)
    sd = unet.state_dict()
    assert tuple(sd["time_embed.0.weight"].shape) == (1024, 256)
    assert tuple(sd["label_emb.weight"].shape) == (1000, 1024)
    assert tuple(sd["out.2.weight"].shape) == (6, 256, 3, 3)
    assert tuple(sd["middle_block.1.qkv.weight"].shape) == (3072, 1024, 1)
    # channel_mult (1, 1, 2, 3, 4): 5 levels x 3 output blocks, 1 + 5 x 2 + 4 input blocks
    assert max(int(k.split(".")[1]) for k in sd if k.startswith("output_blocks")) == 14
    assert max(int(k.split(".")[1]) for k in sd if k.startswith("input_blocks")) == 14
    # MCT's own count of this architecture (a regression pin; no public source states it)
    assert sum(p.numel() for p in unet.parameters()) == 421_529_606


def test_dhariwal_building_blocks_follow_edm_definitions():
    """Independent statements of EDM's layer definitions: sinusoidal embedding [cos, sin] with
    frequencies 10000^(-i/(C/2)); the [1, 1] resampling filter is 2x2 average pooling down and
    nearest-neighbour up; group norm uses min(32, C/4) groups; the label map has no bias."""
    from mct.nets.dhariwal import Conv2d, DhariwalUNet, GroupNorm, PositionalEmbedding

    x = torch.tensor([0.0, 0.3, -1.7])
    emb = PositionalEmbedding(8)(x)
    f = torch.tensor([10000.0 ** (-i / 4) for i in range(4)])
    torch.testing.assert_close(emb, torch.cat([torch.cos(x[:, None] * f), torch.sin(x[:, None] * f)], 1))
    img = torch.randn(2, 5, 8, 8)
    torch.testing.assert_close(Conv2d(5, 5, 0, down=True)(img), torch.nn.functional.avg_pool2d(img, 2))
    torch.testing.assert_close(Conv2d(5, 5, 0, up=True)(img), torch.nn.functional.interpolate(img, scale_factor=2))
    assert GroupNorm(192).num_groups == 32 and GroupNorm(64).num_groups == 16
    net = DhariwalUNet(8, 3, 3, label_dim=10, model_channels=32, channel_mult=[1, 2], num_blocks=1,
                       attn_resolutions=[4])
    assert net.map_label.bias is None and net.map_label.weight.shape == (128, 10)
    assert list(net.dec)[:3] == ["4x4_in0", "4x4_in1", "4x4_block0"] and list(net.enc)[0] == "8x8_conv"


def test_adm_timestep_embedding_and_attention_order():
    """guided-diffusion's embedding is [cos, sin] with max_period 10000; legacy attention splits
    heads before q/k/v and scales q and k by ch^(-1/4) each."""
    from mct.nets.adm import AttentionBlock, timestep_embedding

    t = torch.tensor([0.0, 10.5, 999.0])
    f = torch.exp(-math.log(10000) * torch.arange(3) / 3)
    torch.testing.assert_close(timestep_embedding(t, 6), torch.cat([torch.cos(t[:, None] * f),
                                                                    torch.sin(t[:, None] * f)], 1))
    torch.manual_seed(0)
    blk = AttentionBlock(64, num_heads=2).eval()
    with torch.no_grad():
        for p in blk.parameters():
            p.normal_(0, 0.2)
        x = torch.randn(2, 64, 3, 3)
        qkv = blk.qkv(blk.norm(x.reshape(2, 64, 9)))
        q, k, v = qkv.reshape(4, 96, 9).split(32, dim=1)
        s = 1 / math.sqrt(math.sqrt(32))
        w = torch.einsum("bct,bcs->bts", q * s, k * s).softmax(-1)
        a = torch.einsum("bts,bcs->bct", w, v).reshape(2, 64, 9)
        ref = (x.reshape(2, 64, 9) + blk.proj_out(a)).reshape(x.shape)
        torch.testing.assert_close(blk(x), ref, rtol=1e-4, atol=1e-5)
