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
kwargs recorded in the pickle, and the tensors found by walking ``_parameters`` /
``_buffers`` / ``_modules`` are loaded with ``strict=True``.
"""

from __future__ import annotations

import collections
import hashlib
import io
import math
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from ..checkpoint import load_state_strict
from ..errors import CheckpointError

PERSISTENCE_VERSION = 6  # torch_utils.persistence._version of EDM


class _Refused(pickle.UnpicklingError):
    """Internal: a global or a value the restricted unpickler will not accept."""


class PersistentObject:
    """What a ``torch_utils.persistence`` object becomes: its class name and state, nothing run."""

    __slots__ = ("class_name", "version", "state", "module_src_sha256")

    def __init__(self, class_name: str, version: int, state: dict, module_src_sha256: str):
        self.class_name = class_name
        self.version = version
        self.state = state
        self.module_src_sha256 = module_src_sha256

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
    digest = hashlib.sha256(src.encode("utf-8", "replace") if isinstance(src, str) else b"").hexdigest()
    return PersistentObject(class_name, meta.get("version"), state, digest)


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
            UnicodeDecodeError, MemoryError) as exc:
        raise CheckpointError(f"checkpoint {path} is not a readable EDM pickle (truncated or another format): "
                              f"{type(exc).__name__}: {str(exc)[:200]}") from None


def _state_of(obj) -> dict:
    if isinstance(obj, (PersistentObject, PickledModuleDict)):
        return obj.state
    raise CheckpointError(f"expected a network module in the snapshot, found {type(obj).__name__}")


def collect_tensors(obj, prefix: str = "") -> dict[str, torch.Tensor]:
    """Walk ``_parameters`` / ``_buffers`` / ``_modules`` of a pickled module tree -> a state dict
    (non-persistent buffers and None entries skipped, as ``state_dict()`` does)."""
    state = _state_of(obj)
    out: dict[str, torch.Tensor] = {}
    skip = set(state.get("_non_persistent_buffers_set") or ())
    for kind in ("_parameters", "_buffers"):
        for name, t in (state.get(kind) or {}).items():
            if t is None or (kind == "_buffers" and name in skip):
                continue
            if not isinstance(t, torch.Tensor):
                raise CheckpointError(f"{prefix}{name} in the snapshot is a {type(t).__name__}, not a tensor")
            out[prefix + name] = t.detach()
    for name, child in (state.get("_modules") or {}).items():
        if child is not None:
            out.update(collect_tensors(child, f"{prefix}{name}."))
    return out


def class_names(obj) -> dict[str, int]:
    """How many objects of each persistent class the module tree holds."""
    counts: dict[str, int] = collections.Counter()

    def walk(o):
        counts[getattr(o, "class_name", type(o).__name__)] += 1
        for child in (_state_of(o).get("_modules") or {}).values():
            if child is not None:
                walk(child)

    walk(obj)
    return dict(counts)


_PRECOND_POSITIONAL = ("img_resolution", "img_channels", "label_dim", "use_fp16", "sigma_min", "sigma_max",
                       "sigma_data", "model_type")


def init_kwargs_of(obj: PersistentObject) -> dict:
    """The EDMPrecond init kwargs (positional arguments mapped onto their names)."""
    args = obj.init_args
    if len(args) > len(_PRECOND_POSITIONAL):
        raise CheckpointError(f"{obj.class_name} was constructed with {len(args)} positional arguments")
    kw = dict(zip(_PRECOND_POSITIONAL, args))
    kw.update(obj.init_kwargs)
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
    return EDMSnapshot(path=path, top=top, key=key, net=net, init_kwargs=init_kwargs_of(net),
                       tensors=collect_tensors(net))


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
    overrides = {} if dropout is None else {"dropout": float(dropout)}
    kwargs = dict(snap.init_kwargs)
    if isinstance(kwargs.get("sigma_max"), float) and math.isinf(kwargs["sigma_max"]):
        kwargs["sigma_max"] = float("inf")
    try:
        with uninitialized():
            net = DhariwalDenoiser.from_init_kwargs(kwargs, **overrides)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {path}: cannot build its network: {exc}") from None
    load_state_strict(net, snap.tensors, "EDM network", path)
    net.amp_dtype = amp_dtype
    return net.eval().requires_grad_(False)
