"""Where the generator and the student score start (docs/method.md#initialisation), written once.

'teacher': both are copies of the teacher's network (the generator evaluated at sigma_g);
'random': the same architecture with fresh weights (the ablation). The record that
:func:`init_networks` takes is stored in every checkpoint, so :func:`generator_from_record`
rebuilds the generator for evaluation and export without the teacher."""

from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import nn

from ..errors import ConfigError
from ..nets.onestep import OneStepGenerator
from ..teachers import registry

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
INITS = ("teacher", "random")


def configure(net: nn.Module, dropout: Optional[float] = None, precision: Optional[str] = None,
              checkpointing: Optional[bool] = None) -> nn.Module:
    """Dropout of every dropout site, the autocast dtype and activation checkpointing of networks
    that have them (the paper-scale U-Nets: mct.nets.dhariwal, mct.nets.adm)."""
    from ..nets.dhariwal import UNetBlock

    for m in net.modules():
        if checkpointing is not None and hasattr(m, "checkpointing"):
            m.checkpointing = bool(checkpointing)
        if dropout is not None:
            if isinstance(m, UNetBlock):
                m.dropout = float(dropout)
            elif isinstance(m, nn.Dropout):
                m.p = float(dropout)
        if precision is not None and hasattr(m, "amp_dtype") and not isinstance(
                getattr(type(m), "amp_dtype", None), property):
            m.amp_dtype = PRECISIONS[precision]
    return net


def init_networks(teacher_net: nn.Module, record: dict, init: str, seed: Optional[int] = None):
    """(generator, student score) per ``init``; ``record``: {"teacher": arch from the registry,
    "sigma_g": ..., optional "dropout", "precision"}. ``seed`` seeds a random init."""
    if init not in INITS:
        raise ConfigError(f"init must be one of {', '.join(INITS)}, got {init!r}")
    if init == "teacher":
        gen_net, student = copy.deepcopy(teacher_net), copy.deepcopy(teacher_net)
    else:
        if seed is not None:
            torch.manual_seed(seed)
        gen_net, student = registry.rebuild(record["teacher"]), registry.rebuild(record["teacher"])
    device = next(teacher_net.parameters()).device
    for net in (gen_net, student):
        configure(net, record.get("dropout"), record.get("precision"), record.get("checkpointing"))
        net.to(device).train().requires_grad_(True)
    return OneStepGenerator(gen_net, record["sigma_g"]), student


def generator_from_record(record: dict) -> OneStepGenerator:
    """An empty generator of the recorded architecture, to load a checkpoint's weights into."""
    net = configure(registry.rebuild(record["teacher"], empty=True), record.get("dropout"), record.get("precision"))
    return OneStepGenerator(net, record["sigma_g"])
