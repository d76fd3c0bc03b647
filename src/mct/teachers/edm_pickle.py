"""Safe loading of EDM network snapshots (``network-snapshot-*.pkl``, ``edm-*.pkl``).

EDM pickles its networks through ``torch_utils.persistence``: every network object reduces
to ``torch_utils.persistence._reconstruct_persistent_obj(meta)`` with ``meta = dict(type='class',
version, module_src, class_name, state)``, and EDM's own loader runs ``exec(module_src)``, i.e.
code that came with the download. MCT never does: :class:`RestrictedUnpickler` resolves
exactly the globals such a snapshot needs (:data:`ALLOWED_GLOBALS`), to MCT's own safe
stand-ins, and refuses every other global with a :class:`~mct.errors.CheckpointError` naming it:

- ``_reconstruct_persistent_obj(meta)`` -> a :class:`PersistentObject` record (class name,
  version, state; the source code is kept only as its sha256, never executed);
- ``torch.storage._load_from_bytes(blob)`` -> ``torch.load(blob, weights_only=True)`` (the stock
  function opens the nested blob with full pickle);
- ``torch._utils._rebuild_tensor_v2`` / ``_rebuild_parameter`` -> tensors (checked: a real storage,
  no hooks);
- ``collections.OrderedDict``; ``torch.nn.modules.container.ModuleDict`` -> a plain record of its state;
- numpy ``dtype`` and ``multiarray.scalar`` (``numpy.core`` or ``numpy._core``) -> plain numbers
  (object dtypes refused).

The network is then rebuilt by MCT (:class:`mct.nets.dhariwal.DhariwalDenoiser`) from the init
kwargs recorded in the pickle (checked first: types and sane ranges, :func:`check_init_kwargs`),
and the tensors found by walking ``_parameters`` / ``_buffers`` / ``_modules`` are loaded with
``strict=True``. The pickle is untrusted, so the walk (:func:`walk_modules`) visits each object
once, without recursion: a module shared by two parents (2^60 paths in 2 kB), a cycle, a tree
deeper than :data:`MAX_MODULE_DEPTH` or larger than :data:`MAX_MODULES` is refused in one line.
The embedded source is compared with the known EDM releases (:mod:`mct.teachers.edm_source`);
a mismatch is reported by ``mct teacher inspect`` and logged as a warning by the loader.
"""

from __future__ import annotations

import collections
import hashlib
import io
import math
import numbers
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from ..checkpoint import load_state_strict
from ..errors import CheckpointError

PERSISTENCE_VERSION = 6  # torch_utils.persistence._version of EDM
MAX_MODULE_DEPTH = 64     # EDM's DhariwalUNet is 4 levels deep
MAX_MODULES = 100_000     # ~ 300 in EDM's ImageNet-64 network


class _Refused(pickle.UnpicklingError):
    """Internal: a global or a value the restricted unpickler will not accept."""


class PersistentObject:
    """What a ``torch_utils.persistence`` object becomes: its class name and state, nothing run."""

    __slots__ = ("class_name", "version", "state", "module_src_sha256", "module_src")

    def __init__(self, class_name: str, version: int, state: dict, module_src_sha256: str, module_src: str = ""):
        self.class_name = class_name
        self.version = version
        self.state = state
        self.module_src_sha256 = module_src_sha256
        self.module_src = module_src  # kept as text to compare with EDM's release; never executed

    def __setstate__(self, state):  # a BUILD opcode aimed at a persistent object is not in the format
        raise _Refused("unexpected state applied to a persistent object")

    @property
    def init_args(self) -> tuple:
        return tuple(self.state.get("_init_args") or ())

    @property
    def init_kwargs(self) -> dict:
        return dict(self.state.get("_init_kwargs") or {})

    def __repr__(self) -> str:
        return f"PersistentObject({self.class_name})"


class PickledModuleDict:
    """Stand-in for ``torch.nn.ModuleDict``: only its pickled ``__dict__`` is kept."""

    class_name = "ModuleDict"

    def __new__(cls, *args):
        if args:
            raise _Refused("torch.nn.ModuleDict is not constructed with arguments in a snapshot")
        obj = super().__new__(cls)
        obj.state = {}
        return obj

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise _Refused("the state of a ModuleDict must be a dict")
        self.state = state


def _reconstruct_persistent_obj(meta):
    if not isinstance(meta, dict):
        raise _Refused("persistent-object metadata is not a dict")
    if meta.get("type") != "class":
        raise _Refused(f"persistent object of type {meta.get('type')!r} (only 'class' is known)")
    class_name, state = meta.get("class_name"), meta.get("state")
    if not isinstance(class_name, str) or not class_name.isidentifier():
        raise _Refused(f"persistent object with class name {class_name!r}")
    if state is None:
        state = {}
    if not isinstance(state, dict):
        raise _Refused(f"persistent object {class_name} has a state of type {type(state).__name__}")
    src = meta.get("module_src") or ""
    if not isinstance(src, str):
        raise _Refused(f"persistent object {class_name} has a module_src of type {type(src).__name__}")
    digest = _SRC_DIGESTS.get(id(src))  # one source string is shared by every object of a snapshot
    if digest is None or digest[0] is not src:
        digest = (src, hashlib.sha256(src.encode("utf-8", "replace")).hexdigest())
        _SRC_DIGESTS.clear()
        _SRC_DIGESTS[id(src)] = digest
    return PersistentObject(class_name, meta.get("version"), state, digest[1], src)


_SRC_DIGESTS: dict[int, tuple[str, str]] = {}


def _load_from_bytes(blob):
    if not isinstance(blob, (bytes, bytearray)):
        raise _Refused("tensor storage blob is not bytes")
    try:
        obj = torch.load(io.BytesIO(bytes(blob)), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise _Refused(f"a tensor storage blob cannot be read safely ({type(exc).__name__}: "
                       f"{str(exc).splitlines()[0][:200] if str(exc) else ''})") from None
    if not isinstance(obj, (torch.TypedStorage, torch.UntypedStorage)):
        raise _Refused(f"a tensor storage blob holds a {type(obj).__name__}, not a storage")
    return obj


def _check_hooks(hooks):
    if hooks is not None and (not isinstance(hooks, dict) or len(hooks)):
        raise _Refused("a tensor in the snapshot carries backward hooks")


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        raise _Refused("a tensor is rebuilt from something that is not a storage")
    _check_hooks(backward_hooks)
    if metadata is not None and not isinstance(metadata, dict):
        raise _Refused("tensor metadata is not a dict")
    return torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, bool(requires_grad),
                                           collections.OrderedDict(), metadata)


def _rebuild_parameter(data, requires_grad, backward_hooks):
    if not isinstance(data, torch.Tensor):
        raise _Refused("a parameter is rebuilt from something that is not a tensor")
    _check_hooks(backward_hooks)
    return torch.nn.Parameter(data, requires_grad=bool(requires_grad))


def _np_dtype(*args):
    import numpy as np

    if not args or not isinstance(args[0], str):
        raise _Refused("numpy dtype with a non-string type code")
    dt = np.dtype(args[0])
    if dt.hasobject:
        raise _Refused(f"numpy dtype {args[0]!r} holds Python objects")
    return dt


def _np_scalar(dtype, data=None):
    import numpy as np

    if (not isinstance(dtype, np.dtype) or dtype.hasobject or dtype.fields is not None or dtype.kind not in "biufc"
            or not isinstance(data, (bytes, bytearray))):
        raise _Refused("numpy scalar that is not a plain number")
    clean = np.dtype(dtype.str)  # a fresh dtype: nothing carried over from the pickled state
    if len(data) != clean.itemsize:
        raise _Refused("numpy scalar with the wrong number of bytes")
    return np.frombuffer(bytes(data), dtype=clean, count=1)[0].item()


# (module, name) -> what the restricted unpickler hands back for that global
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("torch.storage", "_load_from_bytes"): _load_from_bytes,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch.nn.modules.container", "ModuleDict"): PickledModuleDict,
    ("numpy", "dtype"): _np_dtype,
    ("numpy.core.multiarray", "scalar"): _np_scalar,
    ("numpy._core.multiarray", "scalar"): _np_scalar,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only :data:`ALLOWED_GLOBALS`; any other global raises :class:`_Refused`.
    Persistent ids (``persistent_load``) are not part of the format and are refused too."""

    def find_class(self, module: str, name: str):
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise _Refused(f"refused global {module}.{name}") from None

    def persistent_load(self, pid):
        raise _Refused("refused persistent id (not part of an EDM snapshot)")


def safe_unpickle(path: str | Path) -> Any:
    """Unpickle an EDM snapshot with :class:`RestrictedUnpickler`. Raises CheckpointError with
    the reason (e.g. 'refused global os.system') for anything outside the format."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with open(path, "rb") as f:
            return RestrictedUnpickler(f).load()
    except _Refused as exc:
        raise CheckpointError(f"checkpoint {path} refused: {exc}; MCT loads EDM pickles without running "
                              "any code from them") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            UnicodeDecodeError, MemoryError, RecursionError, OverflowError) as exc:
        raise CheckpointError(f"checkpoint {path} is not a readable EDM pickle (truncated or another format): "
                              f"{type(exc).__name__}: {str(exc)[:200]}") from None


def _state_of(obj, where: str = "the snapshot") -> dict:
    if isinstance(obj, (PersistentObject, PickledModuleDict)):
        return obj.state
    raise CheckpointError(f"expected a network module at {where}, found {type(obj).__name__}")


def _named(mapping, what: str, where: str) -> dict:
    if mapping is None:
        return {}
    if not isinstance(mapping, dict):
        raise CheckpointError(f"{what} of {where} is a {type(mapping).__name__}, not a dict")
    for k in mapping:
        if not isinstance(k, str) or not k or "." in k or len(k) > 256:
            raise CheckpointError(f"{what} of {where} has the entry name {str(k)[:40]!r} (expected a plain name)")
    return mapping


def walk_modules(root) -> list[tuple[str, Any]]:
    """(dotted name, module) for every module of a pickled tree, in ``state_dict`` order, each
    visited once and without recursion. CheckpointError for a module reached twice (shared or
    a cycle), a tree deeper than :data:`MAX_MODULE_DEPTH` or with more than :data:`MAX_MODULES`."""
    _state_of(root)
    seen: dict[int, str] = {}
    out: list[tuple[str, Any]] = []
    stack: list[tuple[str, Any, int]] = [("", root, 0)]
    while stack:
        name, obj, depth = stack.pop()
        where = name or "the network"
        if id(obj) in seen:
            raise CheckpointError(f"module {where} is the same object as {seen[id(obj)] or 'the network'} "
                                  "(a shared module or a cycle); an EDM network is a tree")
        if depth > MAX_MODULE_DEPTH:
            raise CheckpointError(f"the module tree is deeper than {MAX_MODULE_DEPTH} levels (at {where[:120]}...)")
        if len(out) >= MAX_MODULES:
            raise CheckpointError(f"the network holds more than {MAX_MODULES:,} modules")
        seen[id(obj)] = name
        out.append((name, obj))
        children = _named(_state_of(obj, where).get("_modules"), "_modules", where)
        for child_name, child in reversed(list(children.items())):
            if child is not None:
                stack.append((f"{name}.{child_name}" if name else child_name, child, depth + 1))
    return out


def collect_tensors(obj, prefix: str = "") -> dict[str, torch.Tensor]:
    """Walk ``_parameters`` / ``_buffers`` / ``_modules`` of a pickled module tree -> a state dict
    (non-persistent buffers and None entries skipped, as ``state_dict()`` does)."""
    out: dict[str, torch.Tensor] = {}
    for name, module in walk_modules(obj):
        state = _state_of(module)
        base = prefix + (name + "." if name else "")
        skip = state.get("_non_persistent_buffers_set") or ()
        if not isinstance(skip, (set, frozenset, list, tuple)):
            raise CheckpointError(f"_non_persistent_buffers_set of {name or 'the network'} is a {type(skip).__name__}")
        skip = {k for k in skip if isinstance(k, str)}
        for kind in ("_parameters", "_buffers"):
            for key, t in _named(state.get(kind), kind, name or "the network").items():
                if t is None or (kind == "_buffers" and key in skip):
                    continue
                if not isinstance(t, torch.Tensor):
                    raise CheckpointError(f"{base}{key} in the snapshot is a {type(t).__name__}, not a tensor")
                out[base + key] = t.detach()
    return out


def class_names(obj) -> dict[str, int]:
    """How many objects of each persistent class the module tree holds."""
    counts = collections.Counter(str(getattr(m, "class_name", type(m).__name__)) for _, m in walk_modules(obj))
    return dict(counts)


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


# EDMPrecond / DhariwalUNet init kwargs: (check, what it must be). Bounds are generous (EDM's
# largest networks are far inside them) and keep a forged pickle from asking for a terabyte.
_INIT_KWARG_RULES = {
    "img_resolution": (lambda v: _is_int(v) and 1 <= v <= 4096, "an integer in [1, 4096]"),
    "img_channels": (lambda v: _is_int(v) and 1 <= v <= 64, "an integer in [1, 64]"),
    "label_dim": (lambda v: _is_int(v) and 0 <= v <= 100_000, "an integer in [0, 100000]"),
    "use_fp16": (lambda v: isinstance(v, bool), "true or false"),
    "sigma_min": (lambda v: _is_num(v) and 0 <= v < math.inf, "a finite number >= 0"),
    "sigma_max": (lambda v: _is_num(v) and 0 < v <= math.inf, "a number > 0 (inf allowed)"),
    "sigma_data": (lambda v: _is_num(v) and 0 < v < math.inf, "a finite number > 0"),
    "model_type": (lambda v: isinstance(v, str) and len(v) <= 64, "a class name"),
    "augment_dim": (lambda v: _is_int(v) and 0 <= v <= 1024, "an integer in [0, 1024]"),
    "model_channels": (lambda v: _is_int(v) and 1 <= v <= 2048, "an integer in [1, 2048]"),
    "channel_mult": (lambda v: isinstance(v, (list, tuple)) and 1 <= len(v) <= 8
                     and all(_is_int(m) and 1 <= m <= 16 for m in v), "a list of 1-8 integers in [1, 16]"),
    "channel_mult_emb": (lambda v: _is_int(v) and 1 <= v <= 16, "an integer in [1, 16]"),
    "num_blocks": (lambda v: _is_int(v) and 1 <= v <= 32, "an integer in [1, 32]"),
    "attn_resolutions": (lambda v: isinstance(v, (list, tuple)) and len(v) <= 16
                         and all(_is_int(r) and 1 <= r <= 4096 for r in v), "a list of up to 16 resolutions"),
    "dropout": (lambda v: _is_num(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "label_dropout": (lambda v: _is_num(v) and 0 <= v <= 1, "a number in [0, 1]"),
}


def check_init_kwargs(kw: dict, where: str = "the snapshot") -> dict:
    """The recorded EDMPrecond(DhariwalUNet) init kwargs, checked (types, sane ranges) before any
    network is built from them; CheckpointError naming the first bad one. Unknown keys are left
    to the builder, which names them."""
    for key, value in kw.items():
        if not isinstance(key, str):
            raise CheckpointError(f"{where}: an init argument is named {key!r}, not a string")
        rule = _INIT_KWARG_RULES.get(key)
        if rule is not None and not rule[0](value):
            shown = repr(value)
            raise CheckpointError(f"{where}: init argument {key}={shown[:60]}{'...' if len(shown) > 60 else ''} "
                                  f"is not {rule[1]}")
    return kw


_PRECOND_POSITIONAL = ("img_resolution", "img_channels", "label_dim", "use_fp16", "sigma_min", "sigma_max",
                       "sigma_data", "model_type")


def init_kwargs_of(obj: PersistentObject) -> dict:
    """The EDMPrecond init kwargs (positional arguments mapped onto their names)."""
    kwargs = obj.state.get("_init_kwargs") or {}
    if not isinstance(kwargs, dict) or not isinstance(obj.state.get("_init_args") or (), (tuple, list)):
        raise CheckpointError(f"{obj.class_name}: its recorded init arguments are not a tuple and a dict")
    args = obj.init_args
    if len(args) > len(_PRECOND_POSITIONAL):
        raise CheckpointError(f"{obj.class_name} was constructed with {len(args)} positional arguments")
    kw = dict(zip(_PRECOND_POSITIONAL, args))
    kw.update(kwargs)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in kw.items()}


@dataclass
class EDMSnapshot:
    """An EDM snapshot read safely: the top-level objects and the network under ``key``."""

    path: Path
    top: Any
    key: str
    net: PersistentObject
    init_kwargs: dict
    tensors: dict[str, torch.Tensor] = field(repr=False)

    @property
    def num_parameters(self) -> int:
        return sum(t.numel() for k, t in self.tensors.items() if not k.endswith("resample_filter"))


def read_edm_snapshot(path: str | Path, key: str = "ema") -> EDMSnapshot:
    """Read an EDM pickle and return the network ``key`` ('ema' in EDM's snapshots) as class
    name, init kwargs and tensors. A bare pickled network (not in a dict) is accepted too."""
    path = Path(path)
    top = safe_unpickle(path)
    if isinstance(top, dict):
        if key not in top:
            raise CheckpointError(f"checkpoint {path}: no {key!r} network in the snapshot "
                                  f"(it holds: {', '.join(map(str, top)) or 'nothing'})")
        net = top[key]
    else:
        net = top
    if not isinstance(net, PersistentObject):
        raise CheckpointError(f"checkpoint {path}: {key!r} is a {type(net).__name__}, not an EDM network")
    if net.version != PERSISTENCE_VERSION:
        raise CheckpointError(f"checkpoint {path}: persistence version {net.version!r} is not the known "
                              f"{PERSISTENCE_VERSION}")
    try:
        kwargs = check_init_kwargs(init_kwargs_of(net), f"checkpoint {path}")
        tensors = collect_tensors(net)
    except CheckpointError as exc:
        msg = str(exc)
        raise CheckpointError(msg if msg.startswith("checkpoint ") else f"checkpoint {path}: {msg}") from None
    return EDMSnapshot(path=path, top=top, key=key, net=net, init_kwargs=kwargs, tensors=tensors)


def load_edm_denoiser(path: str | Path, key: str = "ema", dropout: Optional[float] = None,
                      amp_dtype: Optional[torch.dtype] = None):
    """An EDM ``EDMPrecond(DhariwalUNet)`` snapshot -> MCT's :class:`DhariwalDenoiser`, weights
    loaded with strict key and shape matching, in eval mode. ``dropout`` overrides the recorded
    one (the copy used for distillation usually runs without)."""
    from ..nets.dhariwal import DhariwalDenoiser, uninitialized

    snap = read_edm_snapshot(path, key)
    if snap.net.class_name != "EDMPrecond":
        raise CheckpointError(f"checkpoint {path}: the network is an EDM {snap.net.class_name}; MCT loads "
                              "EDMPrecond(DhariwalUNet) snapshots")
    from .edm_source import warn_unless_known

    warn_unless_known(snap.net.module_src, path)
    overrides = {} if dropout is None else {"dropout": float(dropout)}
    kwargs = dict(snap.init_kwargs)
    if isinstance(kwargs.get("sigma_max"), float) and math.isinf(kwargs["sigma_max"]):
        kwargs["sigma_max"] = float("inf")
    try:
        with torch.device("meta"), uninitialized():  # the size it claims, before any memory is taken
            claimed = sum(p.numel() for p in DhariwalDenoiser.from_init_kwargs(kwargs, **overrides).parameters())
        stored = sum(t.numel() for t in snap.tensors.values())
        if claimed > 16 * stored + 50_000_000:  # a mismatch is named by strict loading; this is absurd
            raise ValueError(f"its init kwargs describe {claimed:,} parameters but it stores {stored:,} values")
        with uninitialized():
            net = DhariwalDenoiser.from_init_kwargs(kwargs, **overrides)
    except (ValueError, TypeError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint {path}: cannot build its network: {str(exc)[:200]}") from None
    load_state_strict(net, snap.tensors, "EDM network", path)
    net.amp_dtype = amp_dtype
    return net.eval().requires_grad_(False)
