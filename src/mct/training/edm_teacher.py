"""The EDM teacher training loop (EDM loss on lognormal sigma, Adam with linear warm-up, EMA,
condition dropout to the null condition), written once for the embedded benchmarks."""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path

import torch

from ..diffusion.edm import EDMPrecond, edm_loss, sample_sigma
from ..errors import TrainingDiverged
from ..io import ensure_writable_dir, torch_save, write_csv
from ..nets.ema import ema_update
from ..nets.unet import build_unet

log = logging.getLogger(__name__)


def train_label_teacher(tc, split, out_dir: Path, *, bench: str, device="cpu", progress: bool = True) -> dict:
    """Train a class-conditional EDMPrecond(SmallUNet) with label dropout to the null label
    ``num_classes`` -> out_dir/{checkpoint.pt, train_log.csv}. ``tc``: the benchmark's teacher config."""
    from tqdm.auto import tqdm

    from ..teachers.trained import teacher_checkpoint

    out_dir = ensure_writable_dir(out_dir)
    device = torch.device(device)
    c, h, _ = split.train.shape
    k = split.train.num_classes
    torch.manual_seed(tc.seed)
    net = EDMPrecond(build_unet(tc.net, img_resolution=h, in_channels=c, label_dim=k),
                     sigma_data=tc.sigma_data).to(device).train()
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    n_params = sum(p.numel() for p in net.parameters())
    log.info("%s teacher: %d parameters, %d iterations of batch %d", bench, n_params, tc.iterations, tc.batch_size)
    opt = torch.optim.Adam(net.parameters(), lr=tc.lr)
    x_all, y_all = split.train.images.to(device), split.train.labels.to(device)
    rng = torch.Generator(device=device).manual_seed(tc.seed)
    rows, running, t0 = [], 0.0, time.perf_counter()
    bar = tqdm(range(tc.iterations), disable=not progress, desc=f"{bench} teacher", dynamic_ncols=True,
               mininterval=1.0)
    for it in bar:
        idx = torch.randint(0, x_all.shape[0], (tc.batch_size,), generator=rng, device=device)
        x, y = x_all[idx], y_all[idx]
        drop = torch.rand(tc.batch_size, generator=rng, device=device) < tc.label_dropout
        y = torch.where(drop, torch.full_like(y, k), y)
        sigma = sample_sigma(tc.batch_size, tc.sigma, rng, device)
        noise = torch.randn(x.shape, generator=rng, device=device)
        loss = edm_loss(net, x, sigma, y, noise, tc.sigma_data)
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"{bench} teacher training diverged (loss {float(loss)}) at iteration {it + 1}; "
                                   "lower teacher.lr")
        for group in opt.param_groups:
            group["lr"] = tc.lr * min(1.0, (it + 1) / max(1, tc.lr_warmup))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema_update(ema, net, tc.ema_decay)
        running += float(loss.detach())
        if (it + 1) % tc.log_every == 0 or it + 1 == tc.iterations:
            n = tc.log_every if (it + 1) % tc.log_every == 0 else (it + 1) % tc.log_every
            rows.append({"iteration": it + 1, "loss": running / n, "lr": opt.param_groups[0]["lr"],
                         "seconds": round(time.perf_counter() - t0, 3)})
            bar.set_postfix(loss=f"{running / n:.4f}")
            running = 0.0
    bar.close()
    seconds = round(time.perf_counter() - t0, 3)
    from ..config import to_dict

    meta = {"bench": bench, "num_classes": k, "null_label": k, "params": n_params, "train_seconds": seconds,
            "config": to_dict(tc)}
    torch_save(out_dir / "checkpoint.pt", teacher_checkpoint(net, ema, tc.iterations, meta))
    write_csv(out_dir / "train_log.csv", rows)
    log.info("%s teacher trained in %.1f s (final loss %.4f)", bench, seconds, rows[-1]["loss"])
    return {"train_seconds": seconds, "params": n_params, "final_loss": rows[-1]["loss"]}
