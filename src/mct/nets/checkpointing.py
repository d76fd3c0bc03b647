"""Activation checkpointing of a network's blocks, the one switch every paper-scale U-Net uses
(``mct.nets.dhariwal``, ``mct.nets.adm``; diffusers' U-Net has its own)."""

from __future__ import annotations

import torch
import torch.utils.checkpoint
from torch import nn


def checkpointed(block: nn.Module, enabled: bool):
    """``block`` itself, or (``enabled`` and a graph being recorded) ``block`` under activation
    checkpointing: only its inputs are kept and its forward runs again in backward. Non-reentrant,
    so the E-step's VJP (``torch.autograd.grad`` to z) works through it and dropout replays the
    same mask."""
    if not (enabled and torch.is_grad_enabled()):
        return block

    def run(*args):
        return torch.utils.checkpoint.checkpoint(block, *args, use_reentrant=False)

    return run
