"""Training the tiny CLIP of the embedded text-to-image benchmark, and saving it in
open_clip's ``local-dir:`` layout.

The model is an open_clip ``CLIP`` built from :func:`tiny_clip_config` by
:func:`mct.metrics.clip.build_clip` (building and scoring stay in ``metrics``: a scorer is
loaded there whichever way its weights were made). Training is symmetric InfoNCE with
soft targets for same-label pairs, AdamW and a one-cycle schedule."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from ..metrics.clip import ClipScorer


@dataclass(frozen=True)
class TinyClipConfig:
    """The tiny open_clip model (ViT image tower, transformer text tower) and its contrastive
    training. In-batch pairs with the same digit count as positives (soft targets)."""

    embed_dim: int = 32
    vision_width: int = 64
    vision_layers: int = 1
    patch_size: int = 4
    text_width: int = 32
    text_layers: int = 1
    heads: int = 2
    context_length: int = 12
    steps: int = 200
    batch_size: int = 128
    lr: float = 5e-3
    weight_decay: float = 0.1
    seed: int = 0

    def __post_init__(self):
        for name in ("embed_dim", "vision_width", "vision_layers", "patch_size", "text_width", "text_layers",
                     "heads", "context_length", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ConfigError("lr must be > 0 and weight_decay >= 0")


@dataclass
class ClipRun:
    """What :func:`train_caption_clip` returns: the trained model (frozen), its scorer, the
    open_clip config that rebuilds it, the training log and its seconds."""

    model: object
    scorer: ClipScorer
    config: dict
    logs: list
    seconds: float


def train_caption_clip(c: TinyClipConfig, split, templates: tuple[str, ...], device="cpu",
                       progress: bool = False) -> ClipRun:
    """A tiny CLIP trained contrastively on ``split.train``'s images with captions made from their
    labels (one random template per image and step); same-label pairs count as positives."""
    import time

    from ..data.captions import captions_of
    from ..metrics.clip import build_clip

    res = split.train.shape[-1]
    if res % c.patch_size:
        raise ConfigError(f"clip.patch_size {c.patch_size} does not divide the image size {res}")
    torch.manual_seed(c.seed)
    config = tiny_clip_config(res, embed_dim=c.embed_dim, vision_width=c.vision_width, vision_layers=c.vision_layers,
                              patch_size=c.patch_size, text_width=c.text_width, text_layers=c.text_layers,
                              heads=c.heads, context_length=c.context_length)
    model, tokenizer = build_clip(config, device=device)
    labels = split.train.labels

    def captions_for(idx: Tensor, rng: torch.Generator) -> list[str]:
        return captions_of(labels[idx], torch.randint(0, len(templates), (idx.numel(),), generator=rng), templates)

    t0 = time.perf_counter()
    logs = train_clip(model, tokenizer, split.train.images, captions_for, steps=c.steps,
                      batch_size=min(c.batch_size, len(split.train)), lr=c.lr, weight_decay=c.weight_decay,
                      seed=c.seed, progress=progress, labels=labels)
    seconds = round(time.perf_counter() - t0, 3)
    model.requires_grad_(False)
    return ClipRun(model, ClipScorer(model, tokenizer, device=device, batch_size=512), config, logs, seconds)


def text_conditions(scorer: ClipScorer, captions: list[str]) -> Tensor:
    """A text-conditioned teacher's conditioning: the CLIP text embedding, unit norm, times sqrt(dim)."""
    f = scorer.text_features(captions)
    return f * math.sqrt(f.shape[1])


def cond_table(scorer: ClipScorer, templates: tuple[str, ...], num_classes: int = 10) -> Tensor:
    """Conditioning vectors of every (label, template) caption: (classes, templates, dim)."""
    from ..data.captions import caption_table

    flat = text_conditions(scorer, [c for row in caption_table(templates, num_classes) for c in row])
    return flat.reshape(num_classes, len(templates), -1)


def tiny_clip_config(image_size: int, embed_dim: int = 32, vision_width: int = 64, vision_layers: int = 2,
                     patch_size: int = 4, text_width: int = 64, text_layers: int = 2, heads: int = 2,
                     context_length: int = 16) -> dict:
    """An open_clip model config for a tiny ViT/transformer CLIP (custom, built offline).
    Images are normalised back to [-1, 1] (mean = std = 0.5)."""
    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
    return {
        "model_cfg": {
            "embed_dim": embed_dim,
            "vision_cfg": {"image_size": image_size, "layers": vision_layers, "width": vision_width,
                           "patch_size": patch_size, "head_width": max(1, vision_width // heads)},
            "text_cfg": {"context_length": context_length, "vocab_size": 49408, "width": text_width,
                         "heads": heads, "layers": text_layers},
        },
        "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bicubic",
                           "resize_mode": "shortest"},
    }


def save_clip(model, config: dict, out_dir: str | os.PathLike) -> Path:
    """Write ``out_dir/open_clip_model.safetensors`` then ``open_clip_config.json`` (each atomic;
    the config last, so a folder with a config always has its weights)."""
    import json

    from safetensors.torch import save as st_save

    from ..io import write_bytes, write_text

    out_dir = Path(out_dir)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    write_bytes(out_dir / "open_clip_model.safetensors", st_save(state))
    write_text(out_dir / "open_clip_config.json", json.dumps(config, indent=2) + "\n")
    return out_dir


def train_clip(model, tokenizer, images: Tensor, captions_for: Callable[[Tensor, torch.Generator], list[str]],
               *, steps: int, batch_size: int, lr: float = 1e-3, weight_decay: float = 0.1, seed: int = 0,
               progress: bool = True, labels: Optional[Tensor] = None) -> list[dict]:
    """Contrastive (InfoNCE, symmetric) training of an open_clip model on image/caption pairs.

    ``images``: (N, C, H, W) in [-1, 1]; ``captions_for(idx, rng)`` gives one caption for each
    image index in ``idx`` (e.g. a random template of its label). When ``labels`` is given,
    pairs in a batch that share a label count as positives (soft targets), which stops the
    loss from pushing apart captions that describe the same digit. Returns a loss log."""
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    scorer = ClipScorer(model, tokenizer, device=device)
    rng = torch.Generator().manual_seed(seed)
    token_cache: dict[str, Tensor] = {}

    def encode_captions(caps: list[str]) -> Tensor:
        # each distinct caption is tokenised once and encoded once per batch (templated
        # captions repeat a lot); the gather sums the gradients of the repeats, as encoding
        # every copy would
        uniq = sorted(set(caps))
        new = [c for c in uniq if c not in token_cache]
        if new:
            token_cache.update(zip(new, tokenizer(new)))
        tok = torch.stack([token_cache[c] for c in uniq]).to(device)
        feats = F.normalize(model.encode_text(tok), dim=-1)
        where = {c: i for i, c in enumerate(uniq)}
        return feats[torch.tensor([where[c] for c in caps], device=device)]

    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    logs = []
    bar = tqdm(range(steps), desc="clip", disable=not progress, dynamic_ncols=True, mininterval=1.0)
    for step in bar:
        idx = torch.randint(0, images.shape[0], (batch_size,), generator=rng)
        x = scorer.preprocess(images[idx].to(device))
        img_f = F.normalize(model.encode_image(x), dim=-1)
        txt_f = encode_captions(captions_for(idx, rng))
        logits = model.logit_scale.exp() * img_f @ txt_f.t()
        if labels is not None:
            lab = labels[idx].to(device)
            target = (lab[:, None] == lab[None, :]).float()
            target = target / target.sum(1, keepdim=True)
        else:
            target = torch.eye(batch_size, device=device)
        loss = 0.5 * (torch.sum(-target * F.log_softmax(logits, 1), 1).mean()
                      + torch.sum(-target.t() * F.log_softmax(logits.t(), 1), 1).mean())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if not torch.isfinite(loss):
            from ..errors import TrainingDiverged

            raise TrainingDiverged(f"CLIP training loss is not finite at step {step + 1}; lower clip.lr")
        if (step + 1) % 25 == 0 or step + 1 == steps:
            logs.append({"iteration": step + 1, "loss": float(loss.detach()),
                         "logit_scale": float(model.logit_scale.detach().exp())})
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
    model.eval()
    return logs
