"""Small MLPs for the 2-D toy: a generator z -> x and an EDM-preconditioned denoiser."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from ..diffusion.edm import EDMPrecond


def mlp(d_in: int, d_out: int, hidden: int, layers: int) -> nn.Sequential:
    mods: list[nn.Module] = []
    d = d_in
    for _ in range(layers):
        mods += [nn.Linear(d, hidden), nn.SiLU()]
        d = hidden
    mods.append(nn.Linear(d, d_out))
    return nn.Sequential(*mods)


class MLPGenerator(nn.Module):
    """g(z): a plain MLP from latent to data (the toy has no teacher weights to copy).
    ``input_scale`` multiplies z before the first layer: larger first-layer pre-activations
    (and, under Adam, a faster-moving first layer) let the map cut the latent plane into
    steep sectors, one per mode, sooner (docs/benchmarks.md#toy2d)."""

    def __init__(self, dim: int = 2, hidden: int = 128, layers: int = 3, input_scale: float = 1.0):
        super().__init__()
        self.net = mlp(dim, dim, hidden, layers)
        self.input_scale = float(input_scale)

    def forward(self, z: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        return self.net(z * self.input_scale if self.input_scale != 1.0 else z)


class FourierNoiseEmbedding(nn.Module):
    """Fixed random Fourier features of c_noise (as EDM's NCSN++ uses)."""

    def __init__(self, channels: int = 16, scale: float = 4.0, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("freqs", torch.randn(channels // 2, generator=g) * scale)

    def forward(self, c_noise: Tensor) -> Tensor:
        arg = 2 * math.pi * c_noise[:, None] * self.freqs[None]
        return torch.cat([arg.cos(), arg.sin()], dim=1)


class MLPDenoiserNet(nn.Module):
    """Inner network F(c_in x, c_noise) for EDMPrecond on vectors."""

    def __init__(self, dim: int = 2, hidden: int = 128, layers: int = 3, emb: int = 16):
        super().__init__()
        self.emb = FourierNoiseEmbedding(emb)
        self.net = mlp(dim + emb, dim, hidden, layers)

    def forward(self, x: Tensor, c_noise: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        return self.net(torch.cat([x, self.emb(c_noise)], dim=1))


def mlp_denoiser(dim: int = 2, hidden: int = 128, layers: int = 3, sigma_data: float = 2.0) -> EDMPrecond:
    return EDMPrecond(MLPDenoiserNet(dim, hidden, layers), sigma_data=sigma_data)
