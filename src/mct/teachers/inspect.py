"""``mct teacher inspect PATH``: what a checkpoint holds, or why MCT refuses it.

Recognised: EDM network pickles (read with the restricted unpickler of
:mod:`mct.teachers.edm_pickle`, nothing executed), OpenAI ADM state dicts (``.pt``), MCT's
own distillation checkpoints (format ``mct-distill-v1``) and other MCT checkpoints that
carry a ``format`` key (e.g. a teacher trained by the pipeline), and, generically, any
``torch.save``-d state dict. Everything is read without running code from the file.
A refused or unreadable file raises :class:`~mct.errors.CheckpointError` (one line from
the CLI, exit status 2). The file is untrusted: its structure is checked before it is used
(string keys, the field types of an ``mct-distill-v1`` checkpoint, tensor ranks against the
architecture they claim, sane EDM init kwargs), every value is printed through a bounded repr,
and networks are built on the ``meta`` device only (no memory, whatever sizes are claimed).
"""

from __future__ import annotations

import numbers
import pickle
import reprlib
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError

# torch.save's legacy (non-zip) format starts with this pickled magic number
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def _count(tensors) -> int:
    return sum(int(t.numel()) for t in tensors if isinstance(t, torch.Tensor))


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlist, _REPR.maxdict = 3, 80, 80, 12, 12


def _r(value) -> str:
    """A bounded repr (depth, length): the values come from an untrusted file."""
    try:
        return _REPR.repr(value)
    except Exception:
        return f"<{type(value).__name__}>"


def _fmt_kwargs(kw: dict) -> str:
    return ", ".join(f"{str(k)[:64]}={_r(v)}" for k, v in list(kw.items())[:64])


def _sniff(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        raise CheckpointError(f"checkpoint {path} is empty")
    if head.startswith(b"PK\x03\x04"):
        return "torch-zip"
    if head[:1] == b"\x80":
        # a pickle: either torch's legacy format (magic number first) or a plain pickle (EDM)
        try:
            with open(path, "rb") as f:
                first = _FirstObjectUnpickler(f).load()
        except Exception:
            return "pickle"
        return "torch-legacy" if first == _TORCH_LEGACY_MAGIC else "pickle"
    return "pickle"  # anything else goes to the restricted unpickler, which names what it refuses


class _FirstObjectUnpickler(pickle.Unpickler):
    """Reads only a leading plain value (torch's magic number); refuses every global."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError("global")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("persistent id")


def _describe_edm(path: Path) -> list[str]:
    from ..nets.dhariwal import DhariwalDenoiser, uninitialized
    from .edm_pickle import class_names, read_edm_snapshot
    from .edm_source import compare_source

    snap = read_edm_snapshot(path)
    lines = ["format: EDM network pickle (torch_utils.persistence), read without executing its code"]
    if isinstance(snap.top, dict):
        other = [f"{str(k)[:64]} ({str(getattr(v, 'class_name', type(v).__name__))[:64]})"
                 for k, v in list(snap.top.items())[:32] if k != snap.key]
        lines.append(f"entries: {snap.key} ({snap.net.class_name})" + (f", {', '.join(other)}" if other else ""))
    kw = snap.init_kwargs
    inner = kw.get("model_type", "?")
    lines.append(f"network: {snap.key} = {snap.net.class_name}({inner})")
    lines.append(f"architecture: {_fmt_kwargs(kw)}")
    lines.append(f"parameters: {snap.num_parameters:,} ({len(snap.tensors)} tensors)")
    counts = class_names(snap.net)
    lines.append("classes: " + ", ".join(f"{k} x{v}" for k, v in sorted(counts.items())))
    lines.append(f"module_src sha256: {snap.net.module_src_sha256} (never executed)")
    lines.append("network source: " + compare_source(snap.net.module_src).describe())
    if snap.net.class_name != "EDMPrecond" or inner != "DhariwalUNet":
        lines.append("loads into MCT: no (MCT implements EDMPrecond(DhariwalUNet))")
        return lines
    try:
        with torch.device("meta"), uninitialized():  # shapes only: no memory, whatever the sizes
            net = DhariwalDenoiser.from_init_kwargs(kw)
    except (ValueError, TypeError, RuntimeError) as exc:
        lines.append(f"loads into MCT: no ({str(exc)[:200]})")
        return lines
    lines.append("loads into MCT: " + _key_match(net.state_dict(), snap.tensors, "DhariwalDenoiser"))
    return lines


def _key_match(expected: dict, found: dict, what: str) -> str:
    missing = [k for k in expected if k not in found]
    extra = [k for k in found if k not in expected]
    shape = [k for k in expected if k in found and tuple(expected[k].shape) != tuple(found[k].shape)]
    if not (missing or extra or shape):
        return f"yes ({what}, every key and shape matches)"
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if extra:
        parts.append(f"{len(extra)} unexpected (e.g. {extra[0]})")
    if shape:
        parts.append(f"{len(shape)} of another shape (e.g. {shape[0]})")
    return f"no ({what}: {'; '.join(parts)})"


def _check_ranks(sd: dict, ref: dict, what: str) -> None:
    """Every tensor whose name the architecture knows has the rank the architecture gives it."""
    for k, t in sd.items():
        if k in ref and t.dim() != ref[k].dim():
            raise CheckpointError(f"{k} is a {t.dim()}-D tensor of shape {tuple(t.shape)}; {what} has it "
                                  f"{ref[k].dim()}-D")


def _describe_adm(sd: dict) -> list[str]:
    from ..nets.adm import ADM128_FLAGS
    from .openai_adm import build_adm, infer_adm_structure

    with torch.device("meta"):
        ref = build_adm(ADM128_FLAGS, empty=False)
    _check_ranks(sd, ref.state_dict(), "a guided-diffusion UNetModel")
    try:
        s = infer_adm_structure(sd)
    except (KeyError, IndexError, ValueError, TypeError, ZeroDivisionError) as exc:
        raise CheckpointError(f"the ADM weights do not describe a UNetModel ({type(exc).__name__}: "
                              f"{str(exc)[:120]})") from None
    lines = ["format: OpenAI guided-diffusion UNetModel state dict (ADM)",
             "architecture (from the weights): " + _fmt_kwargs(s),
             f"parameters: {_count(sd.values()):,} ({len(sd)} tensors)"]
    lines.append("matches the released 128x128 flags: " + _key_match(ref.state_dict(), sd, "ADM128_FLAGS"))
    lines.append("not stored in the weights: image size, attention heads (num_heads / num_head_channels)")
    return lines


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_state_dict(v) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and isinstance(t, torch.Tensor) for k, t in v.items())


# the fields of an mct-distill-v1 checkpoint that inspect reads: (check, what it must be)
_DISTILL_FIELDS = {
    "iteration": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "seconds": (lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool), "a number"),
    "config": (lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v), "a dict with string keys"),
    "config_hash": (lambda v: isinstance(v, str) and len(v) <= 128, "a string"),
    "generator": (_is_state_dict, "a state dict (names -> tensors)"),
    "generator_ema": (_is_state_dict, "a state dict (names -> tensors)"),
    "student": (_is_state_dict, "a state dict (names -> tensors)"),
}


def _check_distill(state: dict) -> None:
    for key, (ok, what) in _DISTILL_FIELDS.items():
        if key in state and not ok(state[key]):
            raise CheckpointError(f"mct-distill-v1 field {key!r} is a {type(state[key]).__name__}, not {what}")
    cfg = state.get("config") or {}
    if "em" in cfg and not isinstance(cfg["em"], dict):
        raise CheckpointError(f"mct-distill-v1 field config.em is a {type(cfg['em']).__name__}, not a dict")


def _describe_mct(state: dict) -> list[str]:
    fmt = state.get("format")
    lines = [f"format: MCT checkpoint ({fmt[:64]})"]
    if fmt == "mct-distill-v1":
        _check_distill(state)
        cfg = state.get("config") or {}
        lines.append(f"iteration: {state.get('iteration')}, training seconds: {float(state.get('seconds', 0)):.1f}")
        for key in ("bench", "variant"):
            if key in cfg:
                lines.append(f"{key}: {_r(cfg[key])}")
        em = cfg.get("em") or {}
        if em:
            lines.append("em: " + _fmt_kwargs(em))
        for part in ("generator", "generator_ema", "student"):
            sd = state.get(part)
            if isinstance(sd, dict):
                lines.append(f"{part}: {_count(sd.values()):,} parameters ({len(sd)} tensors)")
        lines.append(f"config hash: {state.get('config_hash')}")
        return lines
    for key, value in list(state.items())[:64]:
        if key == "format":
            continue
        key = _r(key) if not isinstance(key, str) else key[:64]
        if isinstance(value, dict) and value and all(isinstance(v, torch.Tensor) for v in value.values()):
            lines.append(f"{key}: state dict, {_count(value.values()):,} parameters ({len(value)} tensors)")
        elif isinstance(value, (str, int, float, bool)) or value is None:
            lines.append(f"{key}: {_r(value)}")
        elif isinstance(value, dict):
            lines.append(f"{key}: {_short(value)}")
        else:
            lines.append(f"{key}: {type(value).__name__}")
    return lines


def _short(d: dict, limit: int = 300) -> str:
    text = ", ".join(f"{str(k)[:64]}={_r(v)}" for k, v in list(d.items())[:64]
                     if not isinstance(v, (dict, list, torch.Tensor)))
    return text[:limit] + ("..." if len(text) > limit else "")


def _describe_torch(path: Path) -> list[str]:
    from .openai_adm import is_adm_state_dict

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        raise CheckpointError(f"checkpoint {path} refused: it does not load as plain weights "
                              f"(weights_only=True): {type(exc).__name__}: {first}") from None
    if isinstance(state, dict) and isinstance(state.get("format"), str) and state["format"].startswith("mct-"):
        return _describe_mct(state)
    if isinstance(state, dict) and state and all(isinstance(v, torch.Tensor) for v in state.values()):
        bad = next((k for k in state if not isinstance(k, str)), None)
        if bad is not None:
            raise CheckpointError(f"a state dict whose key {_r(bad)} is a {type(bad).__name__}, not a parameter name")
        if is_adm_state_dict(state):
            return _describe_adm(state)
        return ["format: PyTorch state dict (architecture not recognised)",
                f"parameters: {_count(state.values()):,} ({len(state)} tensors)",
                f"first keys: {', '.join(k[:80] for k in list(state)[:5])}"]
    kind = type(state).__name__
    keys = f" with keys {', '.join(_r(k) for k in list(state)[:8])}" if isinstance(state, dict) else ""
    return [f"format: PyTorch file holding a {kind}{keys} (not a checkpoint MCT knows)"]


def inspect_checkpoint(path: str | Path) -> str:
    """A readable description of the checkpoint at ``path`` (format, architecture, parameter
    count, whether it loads into MCT). CheckpointError with the reason when it is refused."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a file")
    kind = _sniff(path)
    lines: list[Any] = [f"path: {path}", f"size: {path.stat().st_size:,} bytes"]
    try:
        if kind in ("torch-zip", "torch-legacy"):
            lines += _describe_torch(path)
        else:
            lines += _describe_edm(path)
    except CheckpointError as exc:
        msg = str(exc)
        raise CheckpointError(msg if msg.startswith("checkpoint ") else f"checkpoint {path} refused: {msg}") from None
    return "\n".join(str(x) for x in lines)
