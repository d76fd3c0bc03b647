"""CLIP score through open_clip (a tiny model trained here) and FID against a directory
with clean resizing, all offline."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mct.errors import CheckpointError, DataError
from mct.metrics.clip import (ImageDirectory, build_clip, clean_resize, clip_score, fid_against_directory,
                              load_clip_scorer, preprocess_images)
from mct.training.clip import save_clip, tiny_clip_config, train_clip


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _captions(labels, templates=("a handwritten {w}", "the digit {d}")):
    words = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
    return [templates[i % len(templates)].format(w=words[int(c)], d=int(c)) for i, c in enumerate(labels)]


@pytest.fixture(scope="module")
def trained_clip():
    """A tiny CLIP trained contrastively on scikit-learn's 8x8 digits for a few seconds."""
    from mct.data.digits import load_split

    split = load_split("sklearn-digits", 0.25, 0)
    torch.manual_seed(0)
    cfg = tiny_clip_config(8, embed_dim=32, vision_width=64, vision_layers=1, patch_size=4, text_width=32,
                           text_layers=1, context_length=12)
    model, tok = build_clip(cfg)
    labels = split.train.labels

    def captions_for(idx, rng):
        return _captions(labels[idx].tolist())

    logs = train_clip(model, tok, split.train.images, captions_for, steps=100, batch_size=128, lr=5e-3,
                      progress=False, labels=labels)
    model.requires_grad_(False)
    return model, tok, cfg, split, logs


def test_matching_captions_score_higher_than_shuffled(trained_clip):
    from mct.metrics.clip import ClipScorer

    model, tok, _, split, logs = trained_clip
    assert logs[-1]["loss"] < logs[0]["loss"]
    scorer = ClipScorer(model, tok)
    x, y = split.heldout.images, split.heldout.labels
    match = clip_score(scorer, x, _captions(y.tolist()))
    wrong = clip_score(scorer, x, _captions(((y + 1 + torch.arange(len(y)) % 9) % 10).tolist()))
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    shuffled = clip_score(scorer, x, _captions(y[perm].tolist()))
    assert match["clip_score"] == pytest.approx(100 * match["clip_score_fraction"])
    assert match["clip_n"] == len(y)
    assert match["clip_score"] > shuffled["clip_score"] + 5 * max(match["clip_score_sem"], shuffled["clip_score_sem"])
    assert match["clip_score"] > wrong["clip_score"] + 10
    assert shuffled["clip_score"] > wrong["clip_score"]  # a shuffle keeps ~10 % of the pairs right


def test_untrained_clip_does_not_separate(trained_clip):
    """The test above can fail: an untrained model of the same shape scores both alike."""
    from mct.metrics.clip import ClipScorer

    _, _, cfg, split, _ = trained_clip
    torch.manual_seed(1)
    model, tok = build_clip(cfg)
    scorer = ClipScorer(model, tok)
    x, y = split.heldout.images, split.heldout.labels
    match = clip_score(scorer, x, _captions(y.tolist()))["clip_score"]
    wrong = clip_score(scorer, x, _captions(((y + 3) % 10).tolist()))["clip_score"]
    assert abs(match - wrong) < 3


def test_local_dir_roundtrip(trained_clip, tmp_path):
    from mct.metrics.clip import ClipScorer

    model, tok, cfg, split, _ = trained_clip
    save_clip(model, cfg, tmp_path / "clip")
    assert (tmp_path / "clip" / "open_clip_config.json").exists()
    loaded = load_clip_scorer(f"local-dir:{tmp_path / 'clip'}")
    x, caps = split.heldout.images[:20], _captions(split.heldout.labels[:20].tolist())
    torch.testing.assert_close(loaded.cosine(x, caps), ClipScorer(model, tok).cosine(x, caps))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no open_clip_config.json"):
        load_clip_scorer(f"local-dir:{tmp_path / 'empty'}")
    (tmp_path / "clip" / "open_clip_model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights file"):
        load_clip_scorer(f"local-dir:{tmp_path / 'clip'}")
    with pytest.raises(CheckpointError, match="cannot load CLIP model"):
        load_clip_scorer("no-such-clip-architecture", None)


def test_preprocess_grey_and_resize():
    x = torch.linspace(-1, 1, 64).reshape(1, 1, 8, 8)
    mean = torch.tensor([0.5, 0.5, 0.5])
    std = torch.tensor([0.5, 0.5, 0.5])
    same = preprocess_images(x, (8, 8), mean, std)
    assert same.shape == (1, 3, 8, 8)
    torch.testing.assert_close(same, x.expand(1, 3, 8, 8))  # mean = std = 0.5 maps back to [-1, 1]
    up = preprocess_images(x, (16, 16), mean, std)
    assert up.shape == (1, 3, 16, 16) and up.min() >= -1 and up.max() <= 1
    wide = preprocess_images(torch.zeros(2, 3, 10, 20), (8, 8), mean, std)  # shortest side, centre crop
    assert wide.shape == (2, 3, 8, 8)
    with pytest.raises(ValueError, match="1 or 3 channels"):
        preprocess_images(torch.zeros(1, 2, 8, 8), (8, 8), mean, std)


def test_clean_resize():
    const = torch.full((2, 3, 40, 30), 77, dtype=torch.uint8)
    out = clean_resize(const, 16)
    assert out.dtype == torch.uint8 and out.shape == (2, 3, 16, 16)
    assert (out == 77).all()
    same = (torch.rand(1, 3, 16, 16) * 255).to(torch.uint8)
    assert torch.equal(clean_resize(same, 16), same)
    # float input in [-1, 1], grey expands to RGB; a 2x downsize of a smooth ramp ~ its block means
    ramp = torch.linspace(-1, 1, 64).reshape(1, 1, 1, 64).expand(1, 1, 64, 64)
    small = clean_resize(ramp, 32).float()
    ref = torch.nn.functional.avg_pool2d(((ramp + 1) * 127.5), 2).expand(1, 3, 32, 32)
    assert small.shape == (1, 3, 32, 32)
    assert (small[..., 2:-2] - ref[..., 2:-2]).abs().max() <= 1.0


def _write_images(root, n, seed, size=(20, 28)):
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, size + (3,), dtype=np.uint8)).save(root / f"{i:03d}.png")


def test_image_directory(tmp_path):
    _write_images(tmp_path / "ref" / "sub", 3, 0)
    ds = ImageDirectory(tmp_path / "ref", size=16)
    assert len(ds) == 3 and ds[0].shape == (3, 16, 16) and ds[0].dtype == torch.uint8
    with pytest.raises(DataError, match="does not exist"):
        ImageDirectory(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        ImageDirectory(tmp_path / "empty")
    (tmp_path / "ref" / "bad.png").write_bytes(b"not a png")
    ds = ImageDirectory(tmp_path / "ref", size=16)
    with pytest.raises(DataError, match="bad.png cannot be read"):
        [ds[i] for i in range(len(ds))]


def test_fid_against_directory(tmp_path):
    """FID of a directory's own images against it is ~0; of other images it is not."""
    from mct.io import torch_save
    from mct.metrics.fidelity import EXTRACTOR_NAME, features_checkpoint, register_extractor
    from mct.nets.classifier import SmallCNN

    torch.manual_seed(0)
    net = SmallCNN(3, 16, 10, width=16, feature_dim=32, dropout=0.0)
    with torch.no_grad():
        net.fc.weight.mul_(30)  # features of O(1) from an untrained network
    weights = torch_save(tmp_path / "feat.pt", features_checkpoint(net))
    register_extractor()
    _write_images(tmp_path / "ref", 24, 0)
    ref = torch.stack([ImageDirectory(tmp_path / "ref", 16)[i] for i in range(24)])
    kw = dict(size=16, feature_extractor=EXTRACTOR_NAME, feature_extractor_weights_path=str(weights),
              ref_cache_name=None)
    same = fid_against_directory(ref, tmp_path / "ref", **kw)
    assert same["fid_n_gen"] == same["fid_n_ref"] == 24 and same["fid_resize"] == 16
    assert abs(same["fid"]) < 1e-6
    other = torch.linspace(-1, 1, 24 * 3 * 32 * 32).reshape(24, 3, 32, 32)  # float input, resized 32 -> 16
    diff = fid_against_directory(other, tmp_path / "ref", **kw)
    assert math.isfinite(diff["fid"]) and diff["fid"] > 0.05
