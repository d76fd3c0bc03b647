"""Networks from a ``{"class_name": ..., "kwargs": {...}}`` record (NVlabs edm2's style),
so that a checkpoint or an exported folder says how to rebuild its network in JSON.

``build(spec)`` constructs only names on the allow-list below: an exported folder is
untrusted input, and a spec must never make us import an arbitrary module. A kwarg that
is itself a spec (a dict with ``class_name``) is built first, so wrappers nest:
``OneStepGenerator(denoiser=EDMPrecond(model=SmallUNet(...)))``. ``spec_of(module)``
returns the record of a module that ``build`` made (it is kept on the module).

Specs of today's generators (what each benchmark builds):

- toy2d: ``mct.nets.mlp.MLPGenerator`` {dim, hidden, layers, input_scale}
- digits / mnist / digits-text: ``mct.nets.onestep.OneStepGenerator`` {sigma_g, denoiser:
  ``mct.diffusion.edm.EDMPrecond`` {sigma_data, model: ``mct.nets.unet.SmallUNet`` {arch}}}
  (``label_dim`` for labels, ``cond_dim`` for text embeddings)
- imagenet64: OneStepGenerator around ``mct.nets.dhariwal.DhariwalDenoiser`` {init_kwargs}
- imagenet128: OneStepGenerator around ``mct.teachers.base.VPToEDM`` {schedule: linear,
  eps_model: ``mct.nets.adm.ADMEps`` {unet: ``mct.nets.adm.ADMUNet`` {kwargs}}}
- sd15: OneStepGenerator around ``mct.teachers.sd.SDUNetDenoiser`` {scheduler_config,
  prediction_type, unet: ``diffusers.UNet2DConditionModel`` {config}}

Two entries are wrappers that live in ``mct.teachers`` (VPToEDM, SDUNetDenoiser); like every
entry they are resolved by name when built, so ``mct.nets`` imports nothing above it.
``schedule`` kwargs describe ``alphas_cumprod`` in JSON: ``{"kind": "linear", "num_steps":
1000}`` (DDPM / guided-diffusion), ``{"kind": "scaled_linear", ...}`` (Stable Diffusion)."""

from __future__ import annotations

import importlib
from typing import Any, Callable

from torch import nn

from ..errors import ConfigError

SPEC_ATTR = "_mct_spec"


def _attr(path: str) -> Callable:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _tuples(kwargs: dict, *names: str) -> dict:
    """JSON has lists; these constructors want tuples."""
    return {k: tuple(v) if k in names and isinstance(v, list) else v for k, v in kwargs.items()}


def _schedule(spec: Any):
    if not isinstance(spec, dict) or spec.get("kind") not in ("linear", "scaled_linear"):
        raise ConfigError(f"schedule must be {{'kind': 'linear' | 'scaled_linear', ...}}, got {spec!r}")
    kw = {k: v for k, v in spec.items() if k != "kind"}
    fn = "linear_vp_alphas_cumprod" if spec["kind"] == "linear" else "scaled_linear_alphas_cumprod"
    return _attr(f"mct.teachers.base.{fn}")(**kw)


def _dhariwal(**kwargs):
    return _attr("mct.nets.dhariwal.DhariwalDenoiser").from_init_kwargs(kwargs)


def _adm_unet(**kwargs):
    return _attr("mct.nets.adm.ADMUNet")(**_tuples(kwargs, "attention_resolutions", "channel_mult"))


def _vp_to_edm(eps_model, schedule, quantize: bool = False):
    return _attr("mct.teachers.base.VPToEDM")(eps_model, _schedule(schedule), quantize=quantize)


def _sd_denoiser(unet, scheduler_config: dict, quantize: bool = False):
    abar, prediction_type = _attr("mct.teachers.sd.alphas_cumprod_from_scheduler_config")(scheduler_config)
    return _attr("mct.teachers.sd.SDUNetDenoiser")(unet, abar, prediction_type, quantize=quantize)


def _diffusers_unet(config: dict):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_config(config)


# The allow-list: name in a spec -> constructor (imported only when that name is built).
ALLOWED: dict[str, Callable[..., nn.Module]] = {
    "mct.nets.onestep.OneStepGenerator": lambda **kw: _attr("mct.nets.onestep.OneStepGenerator")(**kw),
    "mct.diffusion.edm.EDMPrecond": lambda **kw: _attr("mct.diffusion.edm.EDMPrecond")(**kw),
    "mct.nets.unet.SmallUNet": lambda **kw: _attr("mct.nets.unet.SmallUNet")(
        **_tuples(kw, "channel_mult", "attn_resolutions")),
    "mct.nets.mlp.MLPGenerator": lambda **kw: _attr("mct.nets.mlp.MLPGenerator")(**kw),
    "mct.nets.mlp.MLPDenoiserNet": lambda **kw: _attr("mct.nets.mlp.MLPDenoiserNet")(**kw),
    "mct.nets.dhariwal.DhariwalDenoiser": _dhariwal,
    "mct.nets.adm.ADMUNet": _adm_unet,
    "mct.nets.adm.ADMEps": lambda **kw: _attr("mct.nets.adm.ADMEps")(**kw),
    "mct.teachers.base.VPToEDM": _vp_to_edm,
    "mct.teachers.sd.SDUNetDenoiser": _sd_denoiser,
    "diffusers.UNet2DConditionModel": _diffusers_unet,
}


def spec(class_name: str, **kwargs) -> dict:
    """A spec record (checked against the allow-list now, not when it is built)."""
    if class_name not in ALLOWED:
        raise ConfigError(f"network class {class_name!r} is not one MCT builds (known: {', '.join(ALLOWED)})")
    return {"class_name": class_name, "kwargs": kwargs}


def _is_spec(value: Any) -> bool:
    return isinstance(value, dict) and "class_name" in value


def build(record: dict, path: str = "spec") -> nn.Module:
    """The module a spec describes (fresh weights; load a state dict into it). Any bad record
    (unknown name, wrong kwargs) is one ConfigError naming where in the spec it is."""
    if not _is_spec(record) or not isinstance(record.get("kwargs", {}), dict):
        raise ConfigError(f"{path} must be {{'class_name': ..., 'kwargs': {{...}}}}, got {type(record).__name__}")
    name = record["class_name"]
    if name not in ALLOWED:
        raise ConfigError(f"{path}.class_name {name!r} is not one MCT builds (known: {', '.join(ALLOWED)})")
    kwargs = {k: build(v, f"{path}.kwargs.{k}") if _is_spec(v) else v for k, v in record.get("kwargs", {}).items()}
    try:
        module = ALLOWED[name](**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{path} ({name}): {exc}") from None
    except (TypeError, ValueError, KeyError) as exc:
        raise ConfigError(f"{path} ({name}) cannot be built: {type(exc).__name__}: {exc}") from None
    setattr(module, SPEC_ATTR, {"class_name": name, "kwargs": record.get("kwargs", {})})
    return module


def spec_of(module: nn.Module) -> dict:
    """The spec ``build`` made ``module`` from."""
    rec = getattr(module, SPEC_ATTR, None)
    if rec is None:
        raise ConfigError(f"{type(module).__name__} was not built by mct.nets.factory.build: it has no spec")
    return rec
