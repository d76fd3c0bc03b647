"""The feature network's training loop: a small CNN classifier on the train split, with random
shifts; its penultimate features score FID/KID/precision/recall of the embedded benchmarks."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ..io import ensure_writable_dir, torch_save, write_json

log = logging.getLogger(__name__)


def shift_batch(x: Tensor, max_shift: int, rng: torch.Generator) -> Tensor:
    """Translate each image by an integer offset in [-max_shift, max_shift]^2, filling with -1 (background)."""
    if max_shift == 0:
        return x
    n, _, h, w = x.shape
    shifts = torch.randint(-max_shift, max_shift + 1, (n, 2), generator=rng, device=x.device)
    theta = torch.zeros(n, 2, 3, device=x.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    theta[:, 0, 2] = shifts[:, 0].float() * 2 / w
    theta[:, 1, 2] = shifts[:, 1].float() * 2 / h
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x + 1, grid, mode="nearest", padding_mode="zeros", align_corners=False) - 1


def train_feature_net(fc, ec, split, out_dir: Path, *, bench: str, device="cpu", progress: bool = True) -> dict:
    """Train SmallCNN on ``split.train`` -> out_dir/{checkpoint.pt, metrics.json} with the held-out
    accuracy and the real-vs-real floor (train split vs held-out split, KID settings of ``ec``)."""
    from tqdm.auto import tqdm

    from ..metrics.classes import predict_classes
    from ..metrics.fidelity import features_checkpoint, fidelity_metrics
    from ..nets.classifier import SmallCNN

    out_dir = ensure_writable_dir(out_dir)
    device = torch.device(device)
    c, h, _ = split.train.shape
    torch.manual_seed(fc.seed)
    net = SmallCNN(c, h, split.train.num_classes, fc.width, fc.feature_dim, fc.dropout).to(device).train()
    opt = torch.optim.Adam(net.parameters(), lr=fc.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, fc.iterations)
    x_all, y_all = split.train.images.to(device), split.train.labels.to(device)
    rng = torch.Generator(device=device).manual_seed(fc.seed)
    t0 = time.perf_counter()
    for _ in tqdm(range(fc.iterations), disable=not progress, desc=f"{bench} features", dynamic_ncols=True,
                  mininterval=1.0):
        idx = torch.randint(0, x_all.shape[0], (fc.batch_size,), generator=rng, device=device)
        x = shift_batch(x_all[idx], fc.augment_shift, rng)
        loss = F.cross_entropy(net(x), y_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    seconds = round(time.perf_counter() - t0, 3)
    net.eval()
    scale = net.calibrate(x_all)
    acc_ho = float((predict_classes(net, split.heldout.images.to(device)) == split.heldout.labels).double().mean())
    acc_tr = float((predict_classes(net, split.train.images.to(device)) == split.train.labels).double().mean())
    net.cpu()
    metrics = {"heldout_accuracy": acc_ho, "train_accuracy": acc_tr, "train_seconds": seconds,
               "params": sum(p.numel() for p in net.parameters()), "feature_dim": fc.feature_dim,
               "feature_scale": scale, "train_size": len(split.train), "heldout_size": len(split.heldout)}
    path = torch_save(out_dir / "checkpoint.pt", features_checkpoint(net, metrics))
    floor = fidelity_metrics(split.train.images, split.heldout.images, path, kid_subset_size=ec.kid_subset_size,
                             kid_subsets=ec.kid_subsets, device=device, seed=ec.seed)
    metrics["real_floor"] = {**floor, "what": "train split vs held-out split"}
    write_json(out_dir / "metrics.json", metrics)
    log.info("%s features: held-out accuracy %.4f, real-vs-real FID %.3f (%.1f s)", bench, acc_ho, floor["fid"],
             seconds)
    return metrics
