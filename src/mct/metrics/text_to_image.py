"""Streamed text-to-image evaluation (DMD/DMD2 protocol): one image per caption, scored by the
CLIP score and FID against a directory of reference images (FID-30k: COCO val2014 at 256 px).

30,000 decoded 512 px images do not fit in memory, so per batch of captions the caller's
``encode`` / ``sample`` / ``decode`` run, and only the CLIP cosines and the clean-resized
copies for FID are kept (:mod:`mct.metrics.clip` holds both metrics)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor


def score_text_to_image(prompts: Sequence[str], sample: Callable[[Tensor, Tensor], Tensor],
                        encode: Callable[[list[str]], Tensor], decode: Callable[[Tensor], Tensor],
                        latent_shape: Sequence[int], *, seed: int, batch_size: int, device="cpu",
                        clip: bool = True, clip_model: str = "ViT-g-14", clip_pretrained: Optional[str] = None,
                        clip_batch_size: int = 32, fid: bool = True, ref_dir: Optional[str] = None,
                        fid_size: int = 256, center_crop: bool = True, feature_extractor: Optional[str] = None,
                        feature_extractor_weights_path: Optional[str] = None, cache_root: Optional[str] = None,
                        ref_cache_name: Optional[str] = None, ref_limit: Optional[int] = None, grid: int = 16,
                        grid_path: str | Path, progress: bool = False, desc: str = "evaluate") -> dict:
    """One image per caption of ``prompts``: latents ``z`` (seeded by ``seed``), ``sample(z,
    encode(captions)) -> latents``, ``decode(latents) -> images`` in [-1, 1]; then the CLIP score
    (``clip``: open_clip ``clip_model`` / ``clip_pretrained``) and the FID against ``ref_dir``
    (``fid``); the first ``grid`` images go to ``grid_path``. ``sample_seconds`` times ``sample`` alone."""
    from tqdm.auto import tqdm

    from ..io import save_image_grid
    from .clip import clean_resize, fid_against_directory, load_clip_scorer

    prompts = list(prompts)
    scorer = load_clip_scorer(clip_model, clip_pretrained, device=device, batch_size=clip_batch_size) if clip else None
    g = torch.Generator().manual_seed(seed)
    cos, fid_imgs, kept, sample_seconds, t0 = [], [], [], 0.0, time.perf_counter()
    for i in tqdm(range(0, len(prompts), batch_size), desc=desc, disable=not progress,
                  dynamic_ncols=True, mininterval=1.0):
        batch = prompts[i:i + batch_size]
        z = torch.randn((len(batch), *latent_shape), generator=g).to(device)
        with torch.no_grad():
            cond = encode(batch)
            ts = time.perf_counter()
            latents = sample(z, cond)
            if latents.is_cuda:
                torch.cuda.synchronize(latents.device)
            sample_seconds += time.perf_counter() - ts
            images = decode(latents)
        if scorer is not None:
            cos.append(scorer.cosine(images, batch))
        if fid:
            fid_imgs.append(clean_resize(images.cpu(), fid_size))
        if sum(x.shape[0] for x in kept) < grid:
            kept.append(images.cpu())
    n = len(prompts)
    metrics: dict[str, Any] = {"num_samples": n, "sample_seconds": round(sample_seconds, 3),
                               "samples_per_second": round(n / max(sample_seconds, 1e-9), 2)}
    if cos:
        c = torch.cat(cos).double().mean()
        metrics.update(clip_score=100 * float(c), clip_score_fraction=float(c),
                       clip_model=f"{clip_model}/{clip_pretrained}")
    if fid:
        metrics.update(fid_against_directory(
            torch.cat(fid_imgs), ref_dir, size=fid_size, center_crop=center_crop, device=device,
            feature_extractor=feature_extractor, feature_extractor_weights_path=feature_extractor_weights_path,
            cache_root=cache_root, ref_cache_name=ref_cache_name, ref_limit=ref_limit))
    metrics["eval_seconds"] = round(time.perf_counter() - t0, 3)
    imgs = torch.cat(kept)[:grid]
    save_image_grid(grid_path, imgs, nrow=max(1, int(len(imgs) ** 0.5)))
    return metrics
