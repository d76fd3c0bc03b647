"""FID machinery of mct.metrics.inception: statistics, the Frechet distance, reference .npz
validation, a registered (tiny) torch-fidelity feature extractor, min over seeds."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mct.errors import CheckpointError, DataError
from mct.metrics.inception import (FeatureNet, RunningStats, check_weights_file, class_balanced_labels,
                                   fid_of_sampler, fid_over_seeds, frechet_distance, load_reference_stats,
                                   to_uint8, write_reference_stats)

sys.path.insert(0, str(Path(__file__).parent))
from paper_fixtures import register_tiny_extractor  # noqa: E402


def test_running_stats_match_numpy():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(1000, 7)) @ rng.normal(size=(7, 7)) + 3.0
    rs = RunningStats(7)
    for i in range(0, 1000, 137):
        rs.update(torch.from_numpy(feats[i:i + 137]).float())
    mu, sigma = rs.stats()
    np.testing.assert_allclose(mu, feats.astype(np.float32).mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sigma, np.cov(feats.astype(np.float32), rowvar=False), rtol=1e-4, atol=1e-4)
    with pytest.raises(DataError, match=r"\(N, 7\)"):
        rs.update(np.zeros((3, 8)))
    with pytest.raises(DataError, match="non-finite"):
        rs.update(np.full((2, 7), np.nan))


def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(6, 6))
    s = a @ a.T + np.eye(6)
    mu = rng.normal(size=6)
    assert frechet_distance(mu, s, mu, s) == pytest.approx(0.0, abs=1e-8)
    # diagonal covariances: |mu1 - mu2|^2 + sum (s1 + s2 - 2 sqrt(s1 s2))
    d1, d2 = rng.uniform(0.5, 2, 6), rng.uniform(0.5, 2, 6)
    mu2 = mu + 0.5
    expect = float(((mu - mu2) ** 2).sum() + (d1 + d2 - 2 * np.sqrt(d1 * d2)).sum())
    assert frechet_distance(mu, np.diag(d1), mu2, np.diag(d2)) == pytest.approx(expect, rel=1e-9)
    with pytest.raises(DataError, match="different dimensions"):
        frechet_distance(mu, s, mu[:5], s[:5, :5])


def test_reference_npz_validation(tmp_path):
    d = 2048
    good = tmp_path / "ref.npz"
    np.savez(good, mu=np.zeros(d), sigma=np.eye(d))
    mu, sigma = load_reference_stats(good)
    assert mu.shape == (d,) and sigma.shape == (d, d)
    adm = tmp_path / "VIRTUAL_imagenet128_labeled.npz"  # ADM's batches also carry the images (arr_0)
    np.savez(adm, arr_0=np.zeros((2, 4, 4, 3), np.uint8), mu=np.zeros(d), sigma=np.eye(d))
    load_reference_stats(adm)
    nosigma = tmp_path / "nosigma.npz"
    np.savez(nosigma, mu=np.zeros(d))
    with pytest.raises(DataError, match="lack the key 'sigma'"):
        load_reference_stats(nosigma)
    small = tmp_path / "small.npz"
    np.savez(small, mu=np.zeros(64), sigma=np.eye(64))
    with pytest.raises(DataError, match=r"mu has shape \(64,\), expected \(2048,\)"):
        load_reference_stats(small)
    badsigma = tmp_path / "badsigma.npz"
    np.savez(badsigma, mu=np.zeros(d), sigma=np.eye(d)[:10])
    with pytest.raises(DataError, match="sigma has shape"):
        load_reference_stats(badsigma)
    nan = tmp_path / "nan.npz"
    np.savez(nan, mu=np.full(d, np.nan), sigma=np.eye(d))
    with pytest.raises(DataError, match="non-finite"):
        load_reference_stats(nan)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable .npz"):
        load_reference_stats(junk)
    with pytest.raises(DataError, match="do not exist"):
        load_reference_stats(tmp_path / "missing.npz")
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, mu=np.array([object()], dtype=object), sigma=np.eye(d))
    with pytest.raises(DataError):
        load_reference_stats(pickled)


def test_uint8_conversion_and_labels():
    x = torch.tensor([-1.0, -0.5, 0.0, 1.0, 2.0])
    assert to_uint8(x).tolist() == [0, 64, 128, 255, 255]
    labels = class_balanced_labels(50, 10, seed=3)
    assert torch.bincount(labels, minlength=10).tolist() == [5] * 10
    assert not torch.equal(labels, class_balanced_labels(50, 10, seed=4))
    assert torch.equal(labels, class_balanced_labels(50, 10, seed=3))


def test_fid_with_registered_extractor_min_over_seeds(tmp_path):
    name = register_tiny_extractor()
    feats = FeatureNet(name, "16", batch_size=32)

    def images(n, g, shift=0.0):
        base = torch.linspace(-0.8, 0.8, 8).reshape(1, 1, 1, 8)
        return (base + 0.3 * torch.randn(n, 3, 8, 8, generator=g) + shift).clamp(-1, 1)

    g = torch.Generator().manual_seed(123)
    ref = tmp_path / "ref.npz"
    write_reference_stats(ref, [feats(images(500, g)) for _ in range(4)])
    mu, sigma = load_reference_stats(ref, dim=16)

    def sampler(shift):
        return lambda seed: (lambda start, n, rng: images(n, rng, shift))

    same = fid_over_seeds(sampler(0.0), feats, mu, sigma, num_samples=600, seeds=[0, 1, 2], batch_size=200)
    moved = fid_over_seeds(sampler(0.4), feats, mu, sigma, num_samples=600, seeds=[0, 1], batch_size=200)
    assert len(same["fid_seeds"]) == 3 and same["fid"] == min(same["fid_seeds"])
    assert same["fid"] < 0.1 * moved["fid"]
    assert same["fid_seeds"][0] != same["fid_seeds"][1]  # the seeds really draw other samples
    with pytest.raises(DataError, match="not registered"):
        FeatureNet("no-such-extractor", "16")


def test_fid_of_sampler_streams_class_balanced_draws(tmp_path):
    """fid_of_sampler is fid_over_seeds over z ~ N(0, I) of the given shape and class-balanced labels per
    seed: the same numbers as the sampler written out by hand, every label seen once per sample index,
    the first seed's first images in the grid."""
    name = register_tiny_extractor()
    feats = FeatureNet(name, "16", batch_size=32)
    base = torch.linspace(-0.8, 0.8, 8).reshape(1, 1, 1, 8)
    ref = tmp_path / "ref.npz"
    real = base + 0.3 * torch.randn(800, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    write_reference_stats(ref, feats(real.clamp(-1, 1)))
    mu, sigma = load_reference_stats(ref, dim=16)
    seen = []

    def make_images(z, labels):
        seen.append(labels.clone())
        return base + 0.3 * z + 0.05 * labels.float().reshape(-1, 1, 1, 1)

    grid = tmp_path / "grid.png"
    got = fid_of_sampler(make_images, feats, mu, sigma, shape=(3, 8, 8), num_classes=10, num_samples=300,
                         seeds=[0, 1], batch_size=128, grid=12, grid_path=grid)

    def by_hand(seed):
        labels = class_balanced_labels(300, 10, seed)

        def sample(start, n, rng):
            z = torch.randn((n, 3, 8, 8), generator=rng)
            return (base + 0.3 * z + 0.05 * labels[start:start + n].float().reshape(-1, 1, 1, 1)).clamp(-1, 1)

        return sample

    want = fid_over_seeds(by_hand, feats, mu, sigma, num_samples=300, seeds=[0, 1], batch_size=128)
    assert got["fid_seeds"] == want["fid_seeds"] and got["fid"] == want["fid"]
    assert (got["feature_extractor"], got["feature_layer"]) == (name, "16") and got["eval_seconds"] >= 0
    assert torch.equal(torch.cat(seen[:3]), class_balanced_labels(300, 10, 0))
    assert grid.is_file()


def test_feature_weights_must_be_plain(tmp_path):
    ok = tmp_path / "w.pth"
    torch.save({"a": torch.zeros(2)}, ok)
    assert check_weights_file(ok) == ok
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"cos\nsystem\n(S'true'\ntR.")
    with pytest.raises(CheckpointError, match="refused"):
        check_weights_file(bad)
