"""FID, KID, precision and recall through torch-fidelity, on the features of a small
classifier the pipeline trained (the embedded-scale stand-in for Inception-v3).

The classifier is registered in torch-fidelity as the feature extractor
``mct-classifier`` (:class:`ClassifierFeatureExtractor`); torch-fidelity builds it
with ``feature_extractor_weights_path`` = a ``mct-features-v1`` checkpoint, so no
weights are ever fetched from the network. Feature layers: ``penultimate`` (FID,
KID, PR) and ``logits`` (ISC).

:func:`fidelity_metrics` compares two image tensors (NCHW floats in [-1, 1]); the
first is the generated set, the second the reference (torch-fidelity's convention
for precision/recall). FID is clamped at 0 (eigenvalue round-off can make the
FID of a set with itself slightly negative)."""

from __future__ import annotations

import copy
import logging
import os
import threading
from pathlib import Path
from typing import Optional

import torch
import torch_fidelity
from torch import Tensor
from torch.utils.data import Dataset
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

from ..checkpoint import load_state_strict, read_checkpoint
from ..errors import CheckpointError, DataError
from ..nets.classifier import SmallCNN

log = logging.getLogger(__name__)

FEATURES_FORMAT = "mct-features-v1"
EXTRACTOR_NAME = "mct-classifier"
FEATURE_LAYERS = ("penultimate", "logits")

_NET_CACHE: dict[tuple, SmallCNN] = {}
_LOCK = threading.Lock()


def features_checkpoint(net: SmallCNN, metrics: Optional[dict] = None) -> dict:
    """The ``mct-features-v1`` dict that :func:`load_feature_net` reads."""
    return {"format": FEATURES_FORMAT, "arch": net.arch(), "state": net.state_dict(), "metrics": dict(metrics or {})}


def load_feature_net(path: str | os.PathLike) -> SmallCNN:
    """The frozen classifier of a ``mct-features-v1`` checkpoint (cached per file version)."""
    path = Path(path)
    try:
        st = path.stat()
        key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    except FileNotFoundError:
        raise CheckpointError(f"feature-network checkpoint {path} does not exist (run `mct features` first)") from None
    with _LOCK:
        if key in _NET_CACHE:
            return _NET_CACHE[key]
    state = read_checkpoint(path, FEATURES_FORMAT)
    try:
        net = SmallCNN(**state.get("arch", {}))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} has an unusable architecture record: {exc}") from None
    load_state_strict(net, state.get("state"), "feature network", path)
    net.eval().requires_grad_(False)
    with _LOCK:
        _NET_CACHE[key] = net
    return net


class _TensorImages(Dataset):
    """A fixed set of images for torch-fidelity (it reads Datasets one item at a time)."""

    def __init__(self, images: Tensor):
        self.images = images

    def __len__(self):
        return int(self.images.shape[0])

    def __getitem__(self, i):
        return self.images[i]


class ClassifierFeatureExtractor(FeatureExtractorBase):
    """torch-fidelity feature extractor over a trained :class:`SmallCNN`.

    torch-fidelity constructs it as ``cls(name, features_list, **calculate_metrics_kwargs)``;
    the weights come from ``feature_extractor_weights_path``. Accepts float images in
    [-1, 1] or uint8 images in [0, 255] (what torch-fidelity passes for image folders)."""

    def __init__(self, name, features_list, **kwargs):
        super().__init__(name, features_list)
        path = kwargs.get("feature_extractor_weights_path")
        if not path:
            raise CheckpointError(f"the {EXTRACTOR_NAME} feature extractor needs feature_extractor_weights_path "
                                  "(a mct-features-v1 checkpoint from `mct features`)")
        # a private copy: torch-fidelity may move the extractor to the GPU
        self.net = copy.deepcopy(load_feature_net(path))

    @staticmethod
    def get_provided_features_list():
        return FEATURE_LAYERS

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return "logits" if metric == "isc" else "penultimate"

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        raise NotImplementedError("the mct-classifier feature extractor is not compiled")

    def forward(self, x):
        if x.dtype == torch.uint8:
            x = x.float() / 127.5 - 1.0
        h = self.net.trunk(x.float())
        out = {"penultimate": h * self.net.feature_scale, "logits": self.net.head(h)}
        return tuple(out[name] for name in self.features_list)


def register_extractor() -> type:
    """Register ``mct-classifier`` in torch-fidelity (idempotent) and return the class."""
    with _LOCK:
        if EXTRACTOR_NAME not in FEATURE_EXTRACTORS_REGISTRY:
            register_feature_extractor(EXTRACTOR_NAME, ClassifierFeatureExtractor)
    return FEATURE_EXTRACTORS_REGISTRY[EXTRACTOR_NAME]


def _check_images(x: Tensor, what: str) -> Tensor:
    if not isinstance(x, Tensor) or x.ndim != 4:
        raise DataError(f"{what} must be an NCHW image tensor, got {getattr(x, 'shape', type(x))}")
    if x.shape[0] < 2:
        raise DataError(f"{what} needs at least 2 images for FID/KID/PR, got {x.shape[0]}")
    if not torch.isfinite(x).all():
        raise DataError(f"{what} contains NaN or inf values")
    return x.detach().float().cpu().clamp(-1, 1).contiguous()


def fidelity_metrics(generated: Tensor, reference: Tensor, weights_path: str | os.PathLike, *,
                     kid_subset_size: int = 1000, kid_subsets: int = 100, prc: bool = True,
                     prc_neighborhood: int = 3, device: str = "cpu", batch_size: int = 500,
                     seed: int = 2020) -> dict:
    """FID, KID (mean, std), precision, recall and F-score of ``generated`` against ``reference``
    computed by ``torch_fidelity.calculate_metrics`` on the registered classifier features.
    ``kid_subset_size`` is lowered to the smaller set's size; nothing is cached on disk."""
    register_extractor()
    gen = _check_images(generated, "generated images")
    ref = _check_images(reference, "reference images")
    if gen.shape[1:] != ref.shape[1:]:
        raise DataError(f"generated images {tuple(gen.shape[1:])} and reference images {tuple(ref.shape[1:])} "
                        "differ in shape")
    subset = int(min(kid_subset_size, gen.shape[0], ref.shape[0]))
    neighborhood = int(min(prc_neighborhood, gen.shape[0] - 1, ref.shape[0] - 1))
    out = torch_fidelity.calculate_metrics(
        input1=_TensorImages(gen), input2=_TensorImages(ref), cuda=str(device).startswith("cuda"),
        batch_size=batch_size, fid=True, kid=True, prc=prc, feature_extractor=EXTRACTOR_NAME,
        feature_extractor_weights_path=str(weights_path), kid_subset_size=subset, kid_subsets=kid_subsets,
        prc_neighborhood=neighborhood, cache=False, save_cpu_ram=True, verbose=False, rng_seed=seed,
        datasets_download=False)
    res = {"fid": max(0.0, float(out["frechet_inception_distance"])),
           "kid_mean": float(out["kernel_inception_distance_mean"]),
           "kid_std": float(out["kernel_inception_distance_std"]),
           "kid_subset_size": subset}
    if prc:
        res.update(precision=float(out["precision"]), recall=float(out["recall"]), f_score=float(out["f_score"]))
    return res


def fid_only(generated: Tensor, reference: Tensor, weights_path: str | os.PathLike, device: str = "cpu") -> float:
    """FID alone (the FID-vs-iteration curve): the same extractor, no KID/PR."""
    register_extractor()
    out = torch_fidelity.calculate_metrics(
        input1=_TensorImages(_check_images(generated, "generated images")),
        input2=_TensorImages(_check_images(reference, "reference images")), cuda=str(device).startswith("cuda"),
        batch_size=500, fid=True, feature_extractor=EXTRACTOR_NAME, feature_extractor_weights_path=str(weights_path),
        cache=False, save_cpu_ram=True, verbose=False, datasets_download=False)
    return max(0.0, float(out["frechet_inception_distance"]))


def feature_net_scores(generated: Tensor, reference: Tensor, weights_path: str | os.PathLike, num_classes: int,
                       cond: Optional[Tensor] = None, **fidelity_kw) -> tuple[dict, dict]:
    """What the embedded image benchmarks read off one feature network: :func:`fidelity_metrics`
    of ``generated`` against ``reference`` (``fidelity_kw`` passed on), and the class metrics of
    the network's predictions on ``generated`` (the conditioning accuracy when ``cond`` is given)."""
    from .classes import class_metrics, predict_classes

    fid = fidelity_metrics(generated, reference, weights_path, **fidelity_kw)
    pred = predict_classes(load_feature_net(weights_path).to("cpu"), generated.float().clamp(-1, 1).cpu())
    return fid, class_metrics(pred, num_classes, cond)
