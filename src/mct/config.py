"""Typed, validated configuration: YAML -> frozen dataclasses.

An unknown key, a value of the wrong type or out of range is a :class:`ConfigError`
naming the key's full path, raised before any work starts. The JSON schema that
Snakemake validates against is generated from the same dataclasses
(:func:`json_schema`), so there is one source of truth.

A config file is untrusted input: it is read with a size cap, YAML aliases may not
expand it beyond :data:`MAX_CONFIG_NODES` nodes (a "billion laughs" fails at load, so
``to_dict`` / ``config_hash`` never see a huge tree), every float must be finite (a field
opts in to inf with ``metadata={"allow_inf": True}``), every integer lies in a sane range
(:func:`int_range`; a field may set ``metadata={"range": (lo, hi)}``), and every benchmark
and variant name obeys :func:`check_name`, because names become folder names."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import re
import reprlib
import types
import typing
from pathlib import Path
from typing import Any, Mapping

import yaml

from .errors import ConfigError
from .io import read_capped

_MISSING = dataclasses.MISSING

MAX_CONFIG_BYTES = 1 << 20      # a config file is a few kB; 1 MiB is far beyond any real one
MAX_CONFIG_NODES = 100_000      # YAML nodes after alias expansion
MAX_CONFIG_DEPTH = 64           # nesting levels of a config
NAME_MAX = 64
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
INT_MAX = 2**31 - 1             # generic bound of an integer config value (sizes, counts, steps)
SEED_MAX = 2**63 - 1            # seeds: anything torch.manual_seed and numpy accept
# field-specific upper bounds, by field name (a field's metadata "range" wins over these)
_INT_LIMITS = {  # upper bounds only: each config's own checks give the lower bounds and their messages
    **dict.fromkeys(("num_threads", "threads", "workers", "num_workers"), 4096),
    **dict.fromkeys(("batch_size", "clip_batch_size", "chunk"), 1 << 20),
    **dict.fromkeys(("width", "hidden", "channels", "model_channels", "feature_dim", "embed_dim", "text_width",
                     "vision_width", "cond_dim", "augment_dim"), 1 << 16),
    **dict.fromkeys(("layers", "num_blocks", "heads", "text_layers", "vision_layers"), 1024),
    **dict.fromkeys(("resolution", "height", "grid"), 1 << 14),
}


def check_name(name: Any, what: str = "name") -> str:
    """The one rule for benchmark and variant names, which become folder names: letters,
    digits, ``-``, ``_`` and ``.`` (a letter or digit first), at most :data:`NAME_MAX`
    characters. ``..``, ``/``, ``""`` and ``.`` are refused here, before any path is made."""
    if not isinstance(name, str):
        raise ConfigError(f"{what} {name!r} must be a string")
    if not name or len(name) > NAME_MAX or not NAME_RE.fullmatch(name):
        shown = name if len(name) <= NAME_MAX else name[:NAME_MAX] + "..."
        raise ConfigError(f"{what} {shown!r} is not a valid name (letters, digits, '-', '_' and '.', "
                          f"starting with a letter or digit, at most {NAME_MAX} characters)")
    return name


def check_config_names(raw: Any, path: str = "config") -> None:
    """Every ``benchmarks:`` key and every ``variants:`` key of each section obeys :func:`check_name`."""
    if not isinstance(raw, dict):
        return
    sections = raw.get("benchmarks")
    if not isinstance(sections, dict):
        return
    for bench, section in sections.items():
        check_name(bench, f"benchmark name {path}.benchmarks:")
        variants = section.get("variants") if isinstance(section, dict) else None
        if isinstance(variants, dict):
            for v in variants:
                check_name(v, f"variant name {path}.benchmarks.{bench}.variants:")


def int_range(name: str) -> tuple[int, int]:
    """(lo, hi) allowed for an integer field called ``name`` (seeds: a signed 64-bit integer)."""
    if "seed" in name:
        return -SEED_MAX - 1, SEED_MAX
    return -INT_MAX, _INT_LIMITS.get(name, INT_MAX)


def check_device(device: Any, require_available: bool = False) -> str:
    """'cpu', 'cuda' or 'cuda:N'; with ``require_available``, a CUDA device must exist here."""
    if not isinstance(device, str) or not (device in ("cpu", "cuda") or re.fullmatch(r"cuda:\d{1,3}", device)):
        raise ConfigError(f"device must be 'cpu' or 'cuda[:N]', got {device!r}")
    if require_available and device != "cpu":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} requested but no CUDA GPU is available here (use --device cpu)")
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device {device!r} requested but only {torch.cuda.device_count()} GPU(s) are visible")
    return device


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(tp, value, path: str, spec: dict | None = None):
    """``value`` as type ``tp``. ``spec``: the field's number rules ("range", "allow_inf", "name")."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    spec = spec or {}
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value, path, spec)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{path}: {value!r} matches none of the allowed types")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path} must be an integer, got {_short(value)}")
        lo, hi = spec.get("range") or int_range(spec.get("name", ""))
        if value > hi:
            raise ConfigError(f"{path} must be an integer <= {hi:,}, got {_short(value)}")
        if value < lo:
            raise ConfigError(f"{path} must be an integer >= {lo:,}, got {_short(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path} must be a number, got {_short(value)}")
        try:
            out = float(value)
        except OverflowError:
            raise ConfigError(f"{path} must be a finite number, got an integer of {len(str(value))} digits") from None
        if math.isnan(out) or (math.isinf(out) and not spec.get("allow_inf")):
            raise ConfigError(f"{path} must be a finite number, got {value!r}")
        lo, hi = spec.get("range") or (-math.inf, math.inf)
        if not lo <= out <= hi:
            raise ConfigError(f"{path} must be a number in [{lo:g}, {hi:g}], got {value!r}")
        return out
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path} must be a string, got {_short(value)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path} must be a list, got {_short(value)}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{path} must have {len(args)} entries, got {len(value)}")
            return tuple(_coerce(a, v, f"{path}[{i}]", spec) for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        out = [_coerce(item, v, f"{path}[{i}]", spec) for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path} must be a mapping, got {_short(value)}")
        vt = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(vt, v, f"{path}.{k}", spec) for k, v in value.items()}
    raise ConfigError(f"{path}: unsupported config type {tp!r}")


def _short(value: Any, limit: int = 80) -> str:
    """repr(value), cut to ``limit`` characters (a message stays one short line)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**40:
        return f"an integer of {len(str(abs(value)))} digits" if abs(value) < 10**4000 else "a huge integer"
    try:
        text = reprlib.repr(value)
    except Exception:
        text = f"a {type(value).__name__}"
    return text if len(text) <= limit else text[:limit] + "..."


def from_dict(cls, data: Any, path: str = "config"):
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types.
    Number rules per field: ``metadata={"range": (lo, hi), "allow_inf": True}``; without a
    range, :func:`int_range` of the field name (floats: any finite value)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must be a mapping, got {_short(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise ConfigError(f"config key {_short(bad[0])} in {path} must be a string")
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown config key {path}.{unknown[0][:60]} "
                          f"(allowed: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            spec = {"name": name, "range": f.metadata.get("range"), "allow_inf": f.metadata.get("allow_inf", False)}
            kwargs[name] = _coerce(hints[name], data[name], f"{path}.{name}", spec)
        elif f.default is _MISSING and f.default_factory is _MISSING:
            raise ConfigError(f"missing config key {path}.{name}")
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        msg = str(exc)
        raise ConfigError(msg if msg.startswith(path) else f"{path}: {msg}") from None


def to_dict(obj) -> Any:
    """Dataclass -> plain dict (lists for tuples), the form written to YAML/JSON."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def deep_merge(base: Mapping, override: Mapping) -> dict:
    """Recursive merge; ``override`` wins. Used to apply a variant onto its benchmark."""
    out = copy.deepcopy(dict(base))
    for k, v in (override or {}).items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def config_hash(obj) -> str:
    """Stable short hash of a config (dataclass or dict)."""
    blob = json.dumps(to_dict(obj), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing documents whose aliases expand beyond
    :data:`MAX_CONFIG_NODES` nodes or :data:`MAX_CONFIG_DEPTH` levels, or refer to themselves."""

    def construct_document(self, node):
        check_expansion(node)
        return super().construct_document(node)


def check_expansion(root, max_nodes: int = MAX_CONFIG_NODES, max_depth: int = MAX_CONFIG_DEPTH) -> int:
    """Size of a YAML node graph once every alias is expanded, counted with memoisation (each
    shared node once), without recursion. ConfigError past the bounds or on a cycle."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    on_path: set[int] = set()
    stack = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        children = _yaml_children(node)
        if done:
            on_path.discard(key)
            size[key] = 1 + sum(size[id(c)] for c in children)
            depth[key] = 1 + max((depth[id(c)] for c in children), default=0)
            if size[key] > max_nodes:
                raise ConfigError(f"expands to more than {max_nodes:,} values through YAML aliases "
                                  "(a 'billion laughs'?); write the values out")
            if depth[key] > max_depth:
                raise ConfigError(f"is nested more than {max_depth} levels deep")
            continue
        if key in size:
            continue
        if key in on_path:
            raise ConfigError("holds a YAML alias that refers to itself (a recursive structure)")
        on_path.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in size)
        if len(on_path) > max_depth:
            raise ConfigError(f"is nested more than {max_depth} levels deep")
    return size[id(root)]


def _yaml_children(node) -> list:
    if isinstance(node, yaml.MappingNode):
        return [x for pair in node.value for x in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def load_yaml(path: str | Path) -> dict:
    """A config file as a dict: size-capped, aliases bounded, names checked (one ConfigError line)."""
    path = Path(path)
    data = read_capped(path, MAX_CONFIG_BYTES, "config file", ConfigError)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    try:
        data = yaml.load(text, Loader=_BoundedLoader)
    except ConfigError as exc:
        raise ConfigError(f"config file {path} {exc}") from None
    except yaml.YAMLError as exc:  # one line: where, and what the parser expected
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        what = getattr(exc, "problem", None) or str(exc).strip().splitlines()[0]
        context = getattr(exc, "context", None)
        raise ConfigError(f"config file {path} is not valid YAML{where}: "
                          f"{context + ', ' if context else ''}{what}") from None
    except RecursionError:
        raise ConfigError(f"config file {path} is nested too deeply") from None
    except (ValueError, OverflowError, TypeError) as exc:  # e.g. an integer of 10,000 digits, a bad date
        raise ConfigError(f"config file {path} holds a value YAML cannot convert: "
                          f"{str(exc).split(';')[0][:120]}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    check_config_names(data)
    return data


def json_schema(cls) -> dict:
    """JSON schema of a config dataclass (types, defaults, no extra keys)."""
    hints = typing.get_type_hints(cls)
    props = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        sch = _schema_for(hints[f.name])
        if f.default is not _MISSING and not dataclasses.is_dataclass(f.default):
            sch = dict(sch, default=to_dict(f.default))
        if f.metadata.get("doc"):
            sch["description"] = f.metadata["doc"]
        props[f.name] = sch
    out = {"type": "object", "additionalProperties": False, "properties": props}
    if cls.__doc__:
        out["description"] = " ".join(cls.__doc__.split())
    return out


def _schema_for(tp) -> dict:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return {}
    if origin in (typing.Union, types.UnionType):
        subs = [_schema_for(a) for a in args if a is not type(None)]
        if type(None) in args:
            subs.append({"type": "null"})
        return subs[0] if len(subs) == 1 else {"anyOf": subs}
    if dataclasses.is_dataclass(tp):
        return json_schema(tp)
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        return {"type": "integer"}
    if tp is float:
        return {"type": "number"}
    if tp is str:
        return {"type": "string"}
    if origin in (list, tuple):
        if origin is tuple and args and args[-1] is not Ellipsis:
            # draft 2020-12 (what snakemake.utils.validate uses): prefixItems, not an items list
            return {"type": "array", "prefixItems": [_schema_for(a) for a in args],
                    "minItems": len(args), "maxItems": len(args)}
        return {"type": "array", "items": _schema_for(args[0]) if args else {}}
    if origin in (dict, Mapping) or tp is dict:
        return {"type": "object", "additionalProperties": _schema_for(args[1]) if len(args) == 2 else {}}
    return {}
