"""MCT: EM distillation of diffusion models into one-step generators."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy: ``import mct`` stays cheap; ``mct.load_generator`` imports torch on first use.
    if name == "load_generator":
        from .export import load_generator

        return load_generator
    raise AttributeError(f"module 'mct' has no attribute {name!r}")
