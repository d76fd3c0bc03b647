"""Inception FID at paper scale, through torch-fidelity's Inception-v3 port.

- Features: torch-fidelity's ``inception-v3-compat`` extractor, 2048-d pool features (layer
  '2048'), fed uint8 images (EDM's conversion ``x * 127.5 + 128``, clipped). Its weights come
  from ``feature_extractor_weights_path`` (set it on offline clusters; MCT's fetch stage
  downloads torch-fidelity's published file, sha256-pinned, when it is not set). Any other
  extractor registered with torch-fidelity can be named instead (tests use a tiny one).
- Statistics are accumulated in float64 batch by batch (sum and sum of outer products), so
  50,000 samples never sit in memory at once.
- Reference statistics come from an ``.npz`` with ``mu`` (d,) and ``sigma`` (d, d): EDM's
  ``imagenet-64x64.npz`` and ADM's ``VIRTUAL_imagenet128_labeled.npz`` (which also holds
  ``arr_0``, the images, never loaded here). Missing keys, wrong shapes or non-finite values
  are a :class:`~mct.errors.DataError`.
- FID by torch-fidelity's ``fid_statistics_to_metric``; EDM reports the minimum over 3 seeds
  of 50,000 class-balanced samples (:func:`fid_over_seeds`).
"""

from __future__ import annotations

import logging
import math
import zipfile
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from ..errors import CheckpointError, DataError

log = logging.getLogger(__name__)

INCEPTION = "inception-v3-compat"
INCEPTION_LAYER = "2048"
INCEPTION_DIM = 2048
# the weights torch-fidelity downloads for its Inception port (converted from TensorFlow's)
INCEPTION_WEIGHTS_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                         "weights-inception-2015-12-05-6726825d.pth")


def to_uint8(images: Tensor) -> Tensor:
    """[-1, 1] float NCHW -> uint8 [0, 255], as EDM writes its samples (x * 127.5 + 128, clipped)."""
    return (images.float() * 127.5 + 128).clamp(0, 255).to(torch.uint8)


class RunningStats:
    """Mean and covariance of feature rows, accumulated in float64."""

    def __init__(self, dim: int):
        self.dim = dim
        self.n = 0
        self.sum = np.zeros(dim, dtype=np.float64)
        self.outer = np.zeros((dim, dim), dtype=np.float64)

    def update(self, feats) -> None:
        f = feats.detach().cpu().double().numpy() if isinstance(feats, Tensor) else np.asarray(feats, np.float64)
        if f.ndim != 2 or f.shape[1] != self.dim:
            raise DataError(f"features must be (N, {self.dim}), got {tuple(f.shape)}")
        if not np.isfinite(f).all():
            raise DataError("non-finite features (NaN or inf): the generator produced unusable samples")
        self.n += f.shape[0]
        self.sum += f.sum(0)
        self.outer += f.T @ f

    def stats(self) -> tuple[np.ndarray, np.ndarray]:
        if self.n < 2:
            raise DataError(f"at least 2 samples are needed for a covariance, got {self.n}")
        mu = self.sum / self.n
        sigma = (self.outer - self.n * np.outer(mu, mu)) / (self.n - 1)
        return mu, sigma


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)), by torch-fidelity's implementation."""
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

    a = {"mu": np.asarray(mu1, np.float64), "sigma": np.asarray(sigma1, np.float64)}
    b = {"mu": np.asarray(mu2, np.float64), "sigma": np.asarray(sigma2, np.float64)}
    if a["mu"].shape != b["mu"].shape or a["sigma"].shape != b["sigma"].shape:
        raise DataError(f"statistics of different dimensions: {a['mu'].shape} vs {b['mu'].shape}")
    return float(fid_statistics_to_metric(a, b, False)[KEY_METRIC_FID])


def load_reference_stats(path: str | Path, dim: int = INCEPTION_DIM) -> tuple[np.ndarray, np.ndarray]:
    """``mu`` (dim,) and ``sigma`` (dim, dim) from a reference ``.npz`` (DataError when unusable)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"reference statistics {path} do not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = set(z.files)
            missing = [k for k in ("mu", "sigma") if k not in keys]
            if missing:
                raise DataError(f"reference statistics {path} lack the key {missing[0]!r} "
                                f"(found: {', '.join(sorted(keys)) or 'none'}); expected mu and sigma")
            mu, sigma = np.asarray(z["mu"], np.float64), np.asarray(z["sigma"], np.float64)
    except DataError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise DataError(f"reference statistics {path} are not a readable .npz: {exc}") from None
    if mu.shape != (dim,):
        raise DataError(f"reference statistics {path}: mu has shape {mu.shape}, expected ({dim},) "
                        f"for {dim}-d features")
    if sigma.shape != (dim, dim):
        raise DataError(f"reference statistics {path}: sigma has shape {sigma.shape}, expected ({dim}, {dim})")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise DataError(f"reference statistics {path} hold non-finite values")
    return mu, sigma


def check_weights_file(path: str | Path) -> Path:
    """The feature extractor's weights must be a plain state dict (torch-fidelity opens the file
    with full pickle, so MCT first checks that it loads with ``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"feature-extractor weights {path} do not exist")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"feature-extractor weights {path} refused: not plain weights "
                              f"({type(exc).__name__})") from None
    if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise CheckpointError(f"feature-extractor weights {path} are not a state dict")
    return path


class FeatureNet:
    """A torch-fidelity feature extractor by registered name, giving (N, dim) float features
    of [-1, 1] images."""

    def __init__(self, name: str = INCEPTION, layer: str = INCEPTION_LAYER, weights_path: Optional[str] = None,
                 device: str | torch.device = "cpu", batch_size: int = 250):
        from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
        from torch_fidelity.utils import create_feature_extractor

        if name not in FEATURE_EXTRACTORS_REGISTRY:
            raise DataError(f"feature extractor {name!r} is not registered with torch-fidelity "
                            f"(known: {', '.join(sorted(FEATURE_EXTRACTORS_REGISTRY))})")
        kwargs = {"verbose": False}
        if weights_path is not None:
            kwargs["feature_extractor_weights_path"] = str(check_weights_file(weights_path))
        self.device = torch.device(device)
        self.name, self.layer, self.batch_size = name, layer, batch_size
        self.net = create_feature_extractor(name, [layer], cuda=False, **kwargs).to(self.device)

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        out = []
        for i in range(0, images.shape[0], self.batch_size):
            x = to_uint8(images[i:i + self.batch_size]).to(self.device)
            feats = self.net(x)
            feats = feats[0] if isinstance(feats, (tuple, list)) else feats
            out.append(feats.reshape(x.shape[0], -1).float().cpu())
        return torch.cat(out)


def class_balanced_labels(n: int, num_classes: int, seed: int) -> Tensor:
    """``n`` labels, each class ``n // num_classes`` or one more times, in a seeded random order."""
    g = torch.Generator().manual_seed(int(seed))
    labels = torch.arange(n) % num_classes
    return labels[torch.randperm(n, generator=g)]


def stats_of_samples(sample: Callable[[int, int, torch.Generator], Tensor], features: Callable[[Tensor], Tensor],
                     num_samples: int, batch_size: int, seed: int, dim: int,
                     on_batch: Optional[Callable[[int, Tensor], None]] = None,
                     progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Feature statistics of ``num_samples`` generated images. ``sample(start, n, rng)`` returns
    images [-1, 1] for sample indices start..start+n (it picks their labels)."""
    from tqdm.auto import tqdm

    rs = RunningStats(dim)
    rng = torch.Generator().manual_seed(int(seed))
    for start in tqdm(range(0, num_samples, batch_size), disable=not progress, desc=f"FID seed {seed}",
                      dynamic_ncols=True, mininterval=2.0):
        n = min(batch_size, num_samples - start)
        images = sample(start, n, rng)
        if on_batch is not None:
            on_batch(start, images)
        rs.update(features(images))
    return rs.stats()


def fid_over_seeds(sample_for_seed: Callable[[int], Callable[[int, int, torch.Generator], Tensor]],
                   features: Callable[[Tensor], Tensor], ref_mu: np.ndarray, ref_sigma: np.ndarray,
                   num_samples: int, seeds: Sequence[int], batch_size: int,
                   on_batch: Optional[Callable[[int, int, Tensor], None]] = None, progress: bool = False) -> dict:
    """FID for each seed and their minimum (EDM's reporting convention)."""
    if not seeds:
        raise DataError("FID needs at least one seed")
    fids = []
    for seed in seeds:
        hook = (lambda start, imgs, s=seed: on_batch(s, start, imgs)) if on_batch is not None else None
        mu, sigma = stats_of_samples(sample_for_seed(seed), features, num_samples, batch_size, seed,
                                     dim=ref_mu.shape[0], on_batch=hook, progress=progress)
        fid = frechet_distance(mu, sigma, ref_mu, ref_sigma)
        if not math.isfinite(fid):
            raise DataError(f"FID for seed {seed} is not finite")
        fids.append(fid)
        log.info("FID (seed %d, %d samples): %.4f", seed, num_samples, fid)
    return {"fid": min(fids), "fid_seeds": fids, "fid_mean": float(np.mean(fids)), "seeds": list(seeds),
            "num_samples": num_samples}


def fid_of_sampler(make_images: Callable[[Tensor, Tensor], Tensor], features: FeatureNet, ref_mu: np.ndarray,
                   ref_sigma: np.ndarray, *, shape: Sequence[int], num_classes: int, num_samples: int,
                   seeds: Sequence[int], batch_size: int, device: str | torch.device = "cpu", grid: int = 0,
                   grid_path: Optional[str | Path] = None, progress: bool = False) -> dict:
    """FID over ``seeds`` of ``num_samples`` class-balanced samples each, streamed (never all in
    memory): ``make_images(z, labels)`` -> images in [-1, 1], ``z`` (n, *shape) drawn per seed.
    The first ``grid`` images of the first seed go to ``grid_path``; the result also holds
    ``eval_seconds`` and the extractor's name and layer."""
    import time

    from ..io import save_image_grid

    device = torch.device(device)
    shape = tuple(shape)
    kept: list[Tensor] = []

    def sample_for_seed(seed: int):
        labels = class_balanced_labels(num_samples, num_classes, seed)

        def sample(start: int, n: int, rng: torch.Generator) -> Tensor:
            z = torch.randn((n, *shape), generator=rng).to(device)
            with torch.no_grad():
                x = make_images(z, labels[start:start + n].to(device))
            return x.float().clamp(-1, 1).cpu()

        return sample

    def keep_grid(seed, start, images):
        if seed == seeds[0] and sum(g.shape[0] for g in kept) < grid:
            kept.append(images[:grid])

    t0 = time.perf_counter()
    result = fid_over_seeds(sample_for_seed, features, ref_mu, ref_sigma, num_samples, list(seeds), batch_size,
                            on_batch=keep_grid, progress=progress)
    if kept and grid_path is not None:
        save_image_grid(grid_path, torch.cat(kept)[:grid], nrow=8)
    result.update({"eval_seconds": round(time.perf_counter() - t0, 3), "feature_extractor": features.name,
                   "feature_layer": features.layer})
    return result


def write_reference_stats(path: str | Path, features: Iterable[Tensor] | Tensor) -> Path:
    """mu/sigma of features -> .npz (atomic): for making reference statistics of one's own."""
    import io as _io

    from ..io import write_bytes

    feats = [features] if isinstance(features, Tensor) else list(features)
    rs = RunningStats(int(feats[0].shape[1]))
    for f in feats:
        rs.update(f)
    mu, sigma = rs.stats()
    buf = _io.BytesIO()
    np.savez(buf, mu=mu, sigma=sigma)
    return write_bytes(path, buf.getvalue())
