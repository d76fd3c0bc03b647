"""Exponential moving average of a network's weights (teacher, classifier-free loops and the
distillation trainer all keep one)."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model for parameters (``lerp_``: one rounding, the
    same bits as the trainer always produced); buffers are copied, since running statistics
    and fixed scales are not averaged quantities."""
    for p_ema, p in zip(ema.parameters(), model.parameters()):
        p_ema.lerp_(p.detach(), 1 - decay)
    for b_ema, b in zip(ema.buffers(), model.buffers()):
        b_ema.copy_(b)
