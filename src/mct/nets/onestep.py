"""The one-step generator of image teachers (docs/method.md#one-step-generator):
``g_theta(z, c) = D_theta(sigma_g z, sigma_g, c)``, a denoiser evaluated at one fixed
noise level, so that it can start from the teacher's own weights."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ..errors import ConfigError


class OneStepGenerator(nn.Module):
    """Wraps a denoiser module ``D(x, sigma, cond)``; its parameters are the generator's.
    ``z`` has the data's shape. The state dict is the denoiser's under ``denoiser.``."""

    def __init__(self, denoiser: nn.Module, sigma_g: float):
        super().__init__()
        if not sigma_g > 0:
            raise ConfigError(f"sigma_g must be > 0, got {sigma_g}")
        self.denoiser = denoiser
        self.sigma_g = float(sigma_g)

    def forward(self, z: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        sigma = torch.full((z.shape[0],), self.sigma_g, device=z.device, dtype=torch.float32)
        return self.denoiser(self.sigma_g * z, sigma, cond)
