"""Teachers: everything that turns a checkpoint or a formula into a Denoiser D(x, sigma, cond)."""

from .base import (Denoiser, GuidedDenoiser, VPToEDM, linear_vp_alphas_cumprod,
                   scaled_linear_alphas_cumprod)
from .gmm import GMMDenoiser, ring_gmm

__all__ = ["Denoiser", "GuidedDenoiser", "VPToEDM", "linear_vp_alphas_cumprod",
           "scaled_linear_alphas_cumprod", "GMMDenoiser", "ring_gmm"]
