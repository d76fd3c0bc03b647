"""The EDM teacher training loop, written once for every benchmark that trains its own teacher.

EDM's recipe (Karras et al., 2022): the denoising loss weighted by lambda(sigma) on a
lognormal sigma, Adam with a linear learning-rate warm-up, an EMA of the weights (the
network that is sampled and distilled), and condition dropout to a null condition so that
classifier-free guidance is available. What differs between benchmarks is only how a
batch's conditions are drawn and what the null condition is:

- class labels (digits, mnist): ``draw_condition=label_condition(labels)``, ``null_cond =
  torch.tensor(num_classes)`` (the extra label row of the U-Net's embedding);
- text embeddings (digits-text): ``draw_condition=table_condition(table, labels)`` (a random
  caption template of the image's digit, looked up in the stored embedding table),
  ``null_cond = torch.zeros(dim)`` (the empty caption).

Random draws come from one generator seeded with ``seed``, in this order each iteration:
batch indices, whatever ``draw_condition`` draws, the dropout coins, sigma, the noise. That
is the order both benchmark loops used, so their weights are reproduced bit for bit.
``rng_device`` is where that generator lives (digits drew on the training device,
digits-text on the CPU and moved the draws); the draws are moved to ``device`` afterwards."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from ..diffusion.edm import SigmaDist, edm_loss, sample_sigma
from ..errors import TrainingDiverged
from .ema import ema_update

DrawCondition = Callable[[Tensor, torch.Generator], Tensor]


def label_condition(labels: Tensor) -> DrawCondition:
    """Conditions = the class labels of the drawn images (no extra random draw)."""
    on_device: dict[torch.device, Tensor] = {}  # labels copied once to the training device

    def draw(idx: Tensor, rng: torch.Generator) -> Tensor:
        if idx.device not in on_device:
            on_device[idx.device] = labels.to(idx.device)
        return on_device[idx.device][idx]

    return draw


def table_condition(table: Tensor, labels: Tensor) -> DrawCondition:
    """Conditions = ``table[label, t]`` with ``t`` a uniform random column (e.g. a caption
    template) drawn per image from the loop's generator; ``table``: (classes, columns, dim)."""
    labels = labels.to(table.device)

    def draw(idx: Tensor, rng: torch.Generator) -> Tensor:
        t = torch.randint(0, table.shape[1], (idx.numel(),), generator=rng, device=rng.device).to(table.device)
        return table[labels[idx.to(table.device)], t]

    return draw


@dataclass
class TeacherRun:
    """What :func:`train_edm_teacher` returns: the raw network after the last step, its EMA
    (eval mode, frozen), the log rows (``iteration``, ``loss`` = mean over the rows' window,
    ``lr``, ``seconds``; ready for :func:`mct.io.write_csv`) and the training wall time."""

    net: nn.Module
    ema: nn.Module
    rows: list[dict]
    seconds: float


def train_edm_teacher(make_net: Callable[[], nn.Module], images: Tensor, *,
                      draw_condition: Optional[DrawCondition] = None, null_cond: Optional[Tensor] = None,
                      iterations: int, batch_size: int, lr: float, lr_warmup: int = 0, ema_decay: float,
                      cond_dropout: float = 0.0, sigma: SigmaDist, sigma_data: float, seed: int = 0,
                      device="cpu", rng_device=None, log_every: int = 50, progress: bool = False,
                      desc: str = "teacher") -> TeacherRun:
    """Train an EDM denoiser ``make_net()`` (built after ``torch.manual_seed(seed)``, so the
    initial weights are seeded too) on ``images`` (N, C, H, W) in [-1, 1].

    ``draw_condition(idx, rng)`` gives the conditions of the images ``idx`` (on ``device``);
    None trains an unconditional model (no dropout coins are drawn then). Each condition is
    replaced by ``null_cond`` with probability ``cond_dropout``. The learning rate ramps
    linearly from lr / lr_warmup to lr over the first ``lr_warmup`` iterations (0: constant).
    A non-finite loss raises :class:`~mct.errors.TrainingDiverged`."""
    from tqdm.auto import tqdm

    if draw_condition is not None and null_cond is None:
        raise ValueError("a conditional teacher needs null_cond (the condition dropout replaces conditions with it)")
    device = torch.device(device)
    rng_device = device if rng_device is None else torch.device(rng_device)
    torch.manual_seed(seed)
    net = make_net().to(device).train()
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    x_all = images.to(device)
    rng = torch.Generator(device=rng_device).manual_seed(seed)
    rows: list[dict] = []
    running = 0.0
    t0 = time.perf_counter()
    bar = tqdm(range(iterations), disable=not progress, desc=desc, dynamic_ncols=True, mininterval=1.0)
    for it in bar:
        idx = torch.randint(0, x_all.shape[0], (batch_size,), generator=rng, device=rng_device).to(device)
        x = x_all[idx]
        cond = None
        if draw_condition is not None:
            cond = draw_condition(idx, rng)
            drop = (torch.rand(batch_size, generator=rng, device=rng_device) < cond_dropout).to(device)
            drop = drop.reshape((batch_size,) + (1,) * (cond.ndim - 1))
            cond = torch.where(drop, null_cond.to(device=cond.device, dtype=cond.dtype), cond)
        s = sample_sigma(batch_size, sigma, rng, rng_device).to(device)
        noise = torch.randn(x.shape, generator=rng, device=rng_device).to(device)
        loss = edm_loss(net, x, s, cond, noise, sigma_data)
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"{desc} training diverged (loss {float(loss.detach())}) at iteration {it + 1}; "
                                   "lower the learning rate")
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (it + 1) / max(1, lr_warmup))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema_update(ema, net, ema_decay)
        running += float(loss.detach())
        if (it + 1) % log_every == 0 or it + 1 == iterations:
            n = log_every if (it + 1) % log_every == 0 else (it + 1) % log_every
            rows.append({"iteration": it + 1, "loss": running / n, "lr": opt.param_groups[0]["lr"],
                         "seconds": round(time.perf_counter() - t0, 3)})
            bar.set_postfix(loss=f"{running / n:.4f}")
            running = 0.0
    bar.close()
    return TeacherRun(net=net, ema=ema, rows=rows, seconds=round(time.perf_counter() - t0, 3))
