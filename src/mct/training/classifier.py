"""The feature-network training loop: a classifier (e.g. :class:`~mct.nets.classifier.SmallCNN`)
trained with cross-entropy on random integer shifts of the training images.

The classifier's penultimate features are the embedded benchmarks' FID/KID/precision/recall
space; the shifts keep those features from keying on exact pixel positions, which a
generator's samples rarely match. Adam with a cosine learning-rate decay over the run."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError


def shift_batch(x: Tensor, max_shift: int, rng: torch.Generator) -> Tensor:
    """Translate each image by an integer offset in [-max_shift, max_shift]^2, filling with -1
    (the background of images in [-1, 1]); nearest sampling, so pixels move and are not blurred."""
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


@dataclass
class ClassifierRun:
    """What :func:`train_classifier` returns: the trained network (eval mode), log rows
    (``iteration``, ``loss`` = mean over the window, ``lr``) and the training wall time."""

    net: nn.Module
    rows: list[dict]
    seconds: float


def train_classifier(make_net: Callable[[], nn.Module], images: Tensor, labels: Tensor, *, iterations: int,
                     batch_size: int, lr: float, augment_shift: int = 0, seed: int = 0, device="cpu",
                     log_every: int = 100, progress: bool = False, desc: str = "features") -> ClassifierRun:
    """Train ``make_net()`` (built after ``torch.manual_seed(seed)``) to predict ``labels`` from
    ``images`` (N, C, H, W) in [-1, 1]: batches drawn with replacement, each image shifted by up
    to ``augment_shift`` pixels, all draws from one generator on ``device`` seeded with ``seed``."""
    from tqdm.auto import tqdm

    device = torch.device(device)
    torch.manual_seed(seed)
    net = make_net().to(device).train()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iterations)
    x_all, y_all = images.to(device), labels.to(device)
    rng = torch.Generator(device=device).manual_seed(seed)
    rows: list[dict] = []
    running = 0.0
    t0 = time.perf_counter()
    for it in tqdm(range(iterations), disable=not progress, desc=desc, dynamic_ncols=True, mininterval=1.0):
        idx = torch.randint(0, x_all.shape[0], (batch_size,), generator=rng, device=device)
        x = shift_batch(x_all[idx], augment_shift, rng)
        loss = F.cross_entropy(net(x), y_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        lr_used = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
        running += float(loss.detach())
        if (it + 1) % log_every == 0 or it + 1 == iterations:
            n = log_every if (it + 1) % log_every == 0 else (it + 1) % log_every
            rows.append({"iteration": it + 1, "loss": running / n, "lr": lr_used})
            running = 0.0
    seconds = round(time.perf_counter() - t0, 3)
    net.eval()
    return ClassifierRun(net=net, rows=rows, seconds=seconds)


@dataclass(frozen=True)
class FeaturesConfig:
    """The feature network: SmallCNN(width, feature_dim) trained as a classifier on the train split
    with random shifts of up to ``augment_shift`` pixels."""

    width: int = 16
    feature_dim: int = 64
    dropout: float = 0.2
    iterations: int = 800
    batch_size: int = 128
    lr: float = 2e-3
    augment_shift: int = 1
    seed: int = 0

    def __post_init__(self):
        if min(self.width, self.feature_dim, self.iterations, self.batch_size) < 1 or self.lr <= 0:
            raise ConfigError("features needs width, feature_dim, iterations, batch_size >= 1 and lr > 0")
        if self.augment_shift < 0:
            raise ConfigError(f"augment_shift must be >= 0, got {self.augment_shift}")


def train_feature_net(fc: FeaturesConfig, split, device="cpu", progress: bool = False,
                      desc: str = "features") -> tuple[nn.Module, dict, float]:
    """The feature network of a labelled ``split`` (:class:`mct.data.digits.DataSplit`): a
    :class:`~mct.nets.classifier.SmallCNN` shaped by ``fc`` trained on ``split.train``, its feature
    scale calibrated there, then its accuracy on both parts. Returns (the network on the CPU, its
    metrics, the training seconds)."""
    from ..metrics.classes import predict_classes
    from ..nets.classifier import SmallCNN

    device = torch.device(device)
    c, h, _ = split.train.shape
    run = train_classifier(lambda: SmallCNN(c, h, split.train.num_classes, fc.width, fc.feature_dim, fc.dropout),
                           split.train.images, split.train.labels, iterations=fc.iterations,
                           batch_size=fc.batch_size, lr=fc.lr, augment_shift=fc.augment_shift, seed=fc.seed,
                           device=device, progress=progress, desc=desc)
    net = run.net
    scale = net.calibrate(split.train.images.to(device))
    acc = {part: float((predict_classes(net, getattr(split, part).images.to(device))
                        == getattr(split, part).labels).double().mean()) for part in ("heldout", "train")}
    net.cpu()
    metrics = {"heldout_accuracy": acc["heldout"], "train_accuracy": acc["train"],
               "params": sum(p.numel() for p in net.parameters()), "feature_dim": fc.feature_dim,
               "feature_scale": scale, "train_size": len(split.train), "heldout_size": len(split.heldout)}
    return net, metrics, run.seconds
