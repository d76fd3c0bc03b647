"""Checking a parsed JSON value against a record's type annotations: finite numbers only, no
booleans for numbers, no unknown keys, documented metric and setting names."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import field
from typing import Any, Union

from ..errors import MCTError
from .names import METRICS, SETTINGS


def _fmt_path(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


class RecordError(MCTError):
    """A record file or object does not match its class."""


# --------------------------------------------------------------------------- checking

def _check(value: Any, tp: Any, where: str) -> Any:
    """``value`` as type ``tp`` (a dataclass is built from its dict), or RecordError."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Union or origin is types.UnionType:
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise RecordError(f"{where} is null")
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _check(value, a, where)
            except RecordError as exc:
                errors.append(str(exc))
        raise RecordError(errors[0] if len(errors) == 1 else f"{where}: {value!r} is not a {_tname(tp)}")
    if value is None:
        raise RecordError(f"{where} is null")
    if origin is list:
        if not isinstance(value, list):
            raise RecordError(f"{where} must be a list, not {type(value).__name__}")
        (item,) = typing.get_args(tp)
        return [_check(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise RecordError(f"{where} must be a mapping, not {type(value).__name__}")
        kt, vt = typing.get_args(tp)
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise RecordError(f"{where} has a non-string key {k!r}")
            out[k] = _check(v, vt, f"{where}.{k}")
        return out
    if dataclasses.is_dataclass(tp):
        return check_record(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise RecordError(f"{where} is {value}, not a finite number")
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"records: unsupported field type {tp!r} at {where}")
    raise RecordError(f"{where} must be {_tname(tp)}, not {type(value).__name__} {value!r:.40}")


def _tname(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))



def check_record(cls: type, value: Any, where: str) -> Any:
    if not isinstance(value, dict):
        raise RecordError(f"{where or cls.__name__} must be a mapping, not {type(value).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    extra = sorted(set(value) - set(fields))
    if extra:
        raise RecordError(f"{where or cls.__name__} has unknown key(s) {', '.join(map(repr, extra))} "
                          f"(a {cls.__name__} has: {', '.join(fields)})")
    kwargs = {}
    for name, f in fields.items():
        here = _fmt_path(where, name)
        if name not in value:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise RecordError(f"{here} is missing")
            continue
        kwargs[name] = _check(value[name], hints[name], here)
        names = f.metadata.get("names")
        if names is not None and kwargs[name]:
            unknown = sorted(set(kwargs[name]) - set(names))
            if unknown:
                raise RecordError(f"{here} has undocumented name(s) {', '.join(map(repr, unknown))} "
                                  "(add them to mct.records.METRICS / SETTINGS first)")
    return cls(**kwargs)


def metrics_field(**kw) -> Any:
    return field(metadata={"names": METRICS}, **kw)


def settings_field(**kw) -> Any:
    return field(metadata={"names": SETTINGS}, **kw)
