"""The EDM convention: x_s = x + sigma * n; every model is a denoiser D(x, sigma, cond)."""

from .edm import (EDMPrecond, SigmaDist, append_dims, as_sigma, edm_loss, edm_weight,
                  karras_sigmas, sample_sigma, score_from_denoiser)
from .samplers import (SAMPLERS, CountingDenoiser, sample_at_nfe, sample_euler, sample_heun, sigmas_for_nfe,
                       steps_for_nfe)

__all__ = [
    "EDMPrecond", "SigmaDist", "append_dims", "as_sigma", "edm_loss", "edm_weight",
    "karras_sigmas", "sample_sigma", "score_from_denoiser", "SAMPLERS", "CountingDenoiser",
    "sample_at_nfe", "sample_euler", "sample_heun", "sigmas_for_nfe", "steps_for_nfe",
]
