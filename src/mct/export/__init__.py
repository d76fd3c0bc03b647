"""The distilled generator as a product: ``mct sample``, ``mct export`` and
:func:`load_generator` (docs/architecture.md). :mod:`.core` samples (one seed -> latents
mapping for every path), :mod:`.folder` writes and reads the exported folder, :mod:`.sd` the
Stable Diffusion (diffusers) variant, :mod:`.card` the model card and image files,
:mod:`.runs` goes from a pipeline run to a generator."""

from .core import OneStepModel
from .folder import load_generator

__all__ = ["OneStepModel", "load_generator"]
