"""The one-step generator of every image benchmark (docs/method.md#one-step-generator):
``g_theta(z, c) = D_theta(sigma_g z, sigma_g, c)``, a denoiser evaluated at one fixed
noise level, so that it can start from the teacher's own weights.

This is the only copy: digits (class labels), digits-text (text embeddings), ImageNet
(ADM / EDM networks) and Stable Diffusion (latents, ``cond`` = the text encoder's hidden
states) all wrap their denoiser in it. Guidance belongs to the teacher, never to the
generator: ``cond`` is passed through unchanged."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ..errors import ConfigError


class OneStepGenerator(nn.Module):
    """Wraps a denoiser module ``D(x, sigma, cond)``; its parameters are the generator's.
    ``z`` has the data's (or the latents') shape. The state dict is the denoiser's under
    ``denoiser.``, so a checkpoint of any benchmark loads into this class."""

    def __init__(self, denoiser: nn.Module, sigma_g: float):
        super().__init__()
        if not sigma_g > 0:
            raise ConfigError(f"sigma_g must be > 0, got {sigma_g}")
        self.denoiser = denoiser
        self.sigma_g = float(sigma_g)

    def forward(self, z: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        dtype = z.dtype if z.is_floating_point() else torch.float32
        sigma = torch.full((z.shape[0],), self.sigma_g, device=z.device, dtype=dtype)
        return self.denoiser(self.sigma_g * z, sigma, cond)
