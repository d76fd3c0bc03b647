"""CLIP score through open_clip, and FID against a directory of reference images.

CLIP score: the mean cosine similarity between the CLIP image embedding of each
generated image and the CLIP text embedding of its prompt, reported x 100
(``clip_score``, the field's convention, not clamped at 0) and as a fraction
(``clip_score_fraction``). The paper-scale model is open_clip ``ViT-g-14`` with
``laion2b_s12b_b42k`` weights (configurable); the embedded benchmark uses a tiny
open_clip model that the pipeline trains and saves in open_clip's ``local-dir:``
layout (``open_clip_config.json`` + ``open_clip_model.safetensors``, written by
:func:`mct.training.clip.save_clip`).

FID-30k (text-to-image protocol of DMD/DMD2): generated images and the reference
images are resized to 256 x 256 with clean-fid's "clean" resizing (PIL bicubic on
each channel as float32, then clipped and quantised to uint8), the reference
images centre-cropped to a square first, and FID computed by torch-fidelity
(Inception-v3 by default, any registered feature extractor by name)."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import CheckpointError, DataError

log = logging.getLogger(__name__)

DEFAULT_CLIP_MODEL = "ViT-g-14"
DEFAULT_CLIP_PRETRAINED = "laion2b_s12b_b42k"
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


# ----------------------------------------------------------------------------- CLIP score

class ClipScorer:
    """An open_clip model with its tokenizer, scoring images in [-1, 1] (NCHW, 1 or 3
    channels) against captions. Preprocessing is done on tensors with the model's own
    preprocess config (resize of the shortest side and centre crop, then mean/std)."""

    def __init__(self, model, tokenizer, device="cpu", batch_size: int = 64):
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        cfg = getattr(model.visual, "preprocess_cfg", None) or {}
        size = cfg.get("size", getattr(model.visual, "image_size", 224))
        self.size = tuple(size) if isinstance(size, (tuple, list)) else (int(size), int(size))
        self.mean = torch.tensor(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073)), dtype=torch.float32)
        self.std = torch.tensor(cfg.get("std", (0.26862954, 0.26130258, 0.27577711)), dtype=torch.float32)
        self.interpolation = cfg.get("interpolation", "bicubic")

    def preprocess(self, images: Tensor) -> Tensor:
        """[-1, 1] NCHW (C = 1 or 3) -> the model's normalised input."""
        return preprocess_images(images, self.size, self.mean, self.std, self.interpolation)

    def _dtype(self):
        return next(self.model.parameters()).dtype

    @torch.no_grad()
    def image_features(self, images: Tensor) -> Tensor:
        out = []
        for chunk in images.split(self.batch_size):
            x = self.preprocess(chunk.to(self.device)).to(self._dtype())
            out.append(F.normalize(self.model.encode_image(x).float(), dim=-1))
        return torch.cat(out)

    @torch.no_grad()
    def text_features(self, captions: Sequence[str]) -> Tensor:
        captions = list(captions)
        out = []
        for i in range(0, len(captions), self.batch_size):
            tok = self.tokenizer(captions[i:i + self.batch_size]).to(self.device)
            out.append(F.normalize(self.model.encode_text(tok).float(), dim=-1))
        return torch.cat(out)

    def cosine(self, images: Tensor, captions: Sequence[str]) -> Tensor:
        """Per-pair cosine similarity (N,) between image i and caption i."""
        if len(captions) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {len(captions)} captions")
        return (self.image_features(images) * self.text_features(captions).to(self.device)).sum(-1).cpu()


def preprocess_images(images: Tensor, size: tuple[int, int], mean: Tensor, std: Tensor,
                      interpolation: str = "bicubic") -> Tensor:
    x = (images.float() + 1) / 2
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    elif x.shape[1] != 3:
        raise ValueError(f"images must have 1 or 3 channels, got {x.shape[1]}")
    h, w = x.shape[-2:]
    th, tw = size
    if (h, w) != (th, tw):
        scale = max(th / h, tw / w)
        nh, nw = max(th, round(h * scale)), max(tw, round(w * scale))
        mode = "bicubic" if interpolation == "bicubic" else "bilinear"
        x = F.interpolate(x, size=(nh, nw), mode=mode, align_corners=False, antialias=True).clamp(0, 1)
        top, left = (nh - th) // 2, (nw - tw) // 2
        x = x[..., top:top + th, left:left + tw]
    mean = mean.to(x.device).view(1, -1, 1, 1)
    std = std.to(x.device).view(1, -1, 1, 1)
    return (x - mean) / std


def load_clip_scorer(model_name: str = DEFAULT_CLIP_MODEL, pretrained: Optional[str] = DEFAULT_CLIP_PRETRAINED,
                     device="cpu", cache_dir: Optional[str] = None, batch_size: int = 64,
                     precision: str = "fp32") -> ClipScorer:
    """An open_clip model by name + pretrained tag (downloads to the open_clip cache), by
    name + a local weights file, or ``local-dir:PATH`` (a folder written by :func:`mct.training.clip.save_clip`)."""
    import open_clip

    if model_name.startswith("local-dir:"):
        path = Path(model_name[len("local-dir:"):])
        if not (path / "open_clip_config.json").is_file():
            raise CheckpointError(f"CLIP model folder {path} has no open_clip_config.json "
                                  "(train it with `mct clip --bench digits-text`)")
        if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
            raise CheckpointError(f"CLIP model folder {path} has no weights file")
        pretrained = None
    try:
        model, _, _ = open_clip.create_model_and_transforms(model_name, pretrained=pretrained, device=device,
                                                            cache_dir=cache_dir, precision=precision)
        tokenizer = open_clip.get_tokenizer(model_name, cache_dir=cache_dir)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointError(f"cannot load CLIP model {model_name!r} ({pretrained or 'no pretrained tag'}): "
                              f"{type(exc).__name__}: {first[:300]}") from None
    return ClipScorer(model, tokenizer, device=device, batch_size=batch_size)


def clip_score(scorer: ClipScorer, images: Tensor, captions: Sequence[str]) -> dict:
    """Mean CLIP cosine similarity of (image_i, caption_i): x 100 and as a fraction, with its
    standard error."""
    cos = scorer.cosine(images, captions).double()
    n = cos.numel()
    sem = float(cos.std() / math.sqrt(n)) if n > 1 else float("nan")
    mean = float(cos.mean())
    return {"clip_score": 100 * mean, "clip_score_fraction": mean, "clip_score_sem": 100 * sem, "clip_n": n}


def caption_scores(scorer: ClipScorer, images: Tensor, labels: Tensor, templates: tuple[str, ...],
                   cond_table: Tensor) -> dict:
    """CLIP score of real images with captions of their digit (the ceiling a generator can reach),
    with captions of another digit (mismatched: the floor), and zero-shot class accuracy against the
    template-averaged caption embeddings ``cond_table`` (classes, templates, dim)."""
    from ..data.captions import captions_of

    tmpl = torch.arange(labels.numel()) % len(templates)
    wrong = (labels + 1 + torch.arange(labels.numel()) % 9) % 10
    real = clip_score(scorer, images, captions_of(labels, tmpl, templates))
    mismatched = clip_score(scorer, images, captions_of(wrong, tmpl, templates))
    table = torch.nn.functional.normalize(cond_table.mean(1), dim=-1)
    img_f = scorer.image_features(images)
    acc = float(((img_f @ table.t().to(img_f.device)).argmax(1).cpu() == labels).double().mean())
    return {"clip_score_real": real["clip_score"], "clip_score_real_fraction": real["clip_score_fraction"],
            "clip_score_mismatched": mismatched["clip_score"], "zero_shot_accuracy": acc,
            "num_heldout": int(labels.numel())}


# ----------------------------------------------------------------------------- building a CLIP from a config

def build_clip(config: dict, device="cpu"):
    """An untrained open_clip CLIP from a config dict (as from
    :func:`mct.training.clip.tiny_clip_config`) and its tokenizer; a checkpoint's weights are
    loaded into it to score."""
    import open_clip
    from open_clip.model import CLIP, set_model_preprocess_cfg
    from open_clip.transform import PreprocessCfg
    from dataclasses import asdict

    model = CLIP(**config["model_cfg"]).to(device)
    pp = {**asdict(PreprocessCfg()), **config.get("preprocess_cfg", {})}
    pp["size"] = model.visual.image_size
    set_model_preprocess_cfg(model, pp)
    tokenizer = open_clip.SimpleTokenizer(context_length=config["model_cfg"]["text_cfg"]["context_length"])
    return model, tokenizer


# ----------------------------------------------------------------------------- the trained tiny CLIP's checkpoint

CLIP_FORMAT = "mct-clip-v1"


def clip_checkpoint(model, config: dict, templates: Sequence[str], metrics: dict, table: Tensor) -> dict:
    """The ``mct-clip-v1`` dict: the weights, the config :func:`build_clip` rebuilds them from, the
    caption templates, the conditioning table computed with them, and the CLIP stage's metrics."""
    return {"format": CLIP_FORMAT, "config": config, "templates": list(templates), "metrics": metrics,
            "state": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "cond_table": table.cpu()}


def scorer_of_checkpoint(state: dict, path, device="cpu", batch_size: int = 512) -> ClipScorer:
    """The frozen CLIP of a ``mct-clip-v1`` dict (read from ``path``, named in errors) as a scorer."""
    from ..checkpoint import load_state_strict

    try:
        model, tokenizer = build_clip(state["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} has an unusable CLIP config: {exc}") from None
    load_state_strict(model, state.get("state"), "CLIP", path)
    model.requires_grad_(False)
    return ClipScorer(model, tokenizer, device=device, batch_size=batch_size)


# ----------------------------------------------------------------------------- FID against a directory

def clean_resize(images: Tensor, size: int = 256) -> Tensor:
    """clean-fid "clean" resizing: PIL bicubic on each channel as float32, clipped to
    [0, 255] and rounded to uint8. ``images``: uint8 (N, C, H, W) or float in [-1, 1]."""
    from PIL import Image

    if images.dtype != torch.uint8:
        images = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    n, c, h, w = images.shape
    if (h, w) == (size, size):
        return images.contiguous()
    arr = images.permute(0, 2, 3, 1).cpu().numpy()
    out = np.empty((n, size, size, c), dtype=np.uint8)
    for i in range(n):
        for ch in range(c):
            img = Image.fromarray(arr[i, :, :, ch].astype(np.float32), mode="F")
            img = img.resize((size, size), resample=Image.BICUBIC)
            out[i, :, :, ch] = np.asarray(img).clip(0, 255).round().astype(np.uint8)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def center_crop_square(img):
    """Centre crop of a PIL image to its shorter side."""
    w, h = img.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return img.crop((left, top, left + s, top + s))


class TensorImages(torch.utils.data.Dataset):
    """uint8 (N, 3, H, W) tensor as a torch-fidelity input."""

    def __init__(self, images: Tensor):
        assert images.dtype == torch.uint8 and images.ndim == 4 and images.shape[1] == 3, (images.dtype, images.shape)
        self.images = images

    def __len__(self):
        return self.images.shape[0]

    def __getitem__(self, i):
        return self.images[i]


def list_images(root: str | os.PathLike) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"reference image directory {root} does not exist")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())
    if not files:
        raise DataError(f"reference image directory {root} holds no images ({', '.join(IMAGE_EXTS)})")
    return files


class ImageDirectory(torch.utils.data.Dataset):
    """Images of a folder (recursively), centre-cropped to a square (optional) and
    clean-resized to ``size``: uint8 (3, size, size) tensors for torch-fidelity."""

    def __init__(self, root: str | os.PathLike, size: int = 256, center_crop: bool = True,
                 limit: Optional[int] = None):
        self.files = list_images(root)[:limit] if limit else list_images(root)
        self.size, self.center_crop = size, center_crop

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        from PIL import Image, UnidentifiedImageError

        path = self.files[i]
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
        except (OSError, UnidentifiedImageError) as exc:
            raise DataError(f"reference image {path} cannot be read: {exc}") from None
        if self.center_crop:
            im = center_crop_square(im)
        x = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1)[None]
        return clean_resize(x, self.size)[0]


def fid_against_directory(images: Tensor, ref_dir: str | os.PathLike, *, size: int = 256, center_crop: bool = True,
                          feature_extractor: Optional[str] = None, feature_extractor_weights_path: Optional[str] = None,
                          feature_layer_fid: Optional[str] = None, device="cpu", batch_size: int = 64,
                          cache_root: Optional[str] = None, ref_cache_name: Optional[str] = None,
                          ref_limit: Optional[int] = None, verbose: bool = False) -> dict:
    """FID of ``images`` (uint8 or [-1, 1] float, NCHW) against the images in ``ref_dir``,
    both clean-resized to ``size`` (FID-30k: 30,000 samples, COCO val2014 at 256).
    ``feature_extractor`` None is torch-fidelity's Inception-v3. ``ref_cache_name`` caches
    the reference statistics under ``cache_root``."""
    import torch_fidelity

    gen = TensorImages(clean_resize(images, size))
    ref = ImageDirectory(ref_dir, size, center_crop, ref_limit)
    kwargs = dict(input1=gen, input2=ref, fid=True, batch_size=batch_size, verbose=verbose,
                  cuda=str(device).startswith("cuda"), samples_shuffle=False,
                  # no DataLoader worker processes on CPU: they compete with the model for the cores
                  save_cpu_ram=not str(device).startswith("cuda"))
    if feature_extractor:
        kwargs["feature_extractor"] = feature_extractor
    if feature_extractor_weights_path:
        kwargs["feature_extractor_weights_path"] = feature_extractor_weights_path
    if feature_layer_fid:
        kwargs["feature_layer_fid"] = feature_layer_fid
    if ref_cache_name:
        kwargs.update(cache=True, input2_cache_name=ref_cache_name, cache_root=cache_root)
    else:
        kwargs["cache"] = False
    out = torch_fidelity.calculate_metrics(**kwargs)
    return {"fid": float(out["frechet_inception_distance"]), "fid_n_gen": len(gen), "fid_n_ref": len(ref),
            "fid_resize": size}
