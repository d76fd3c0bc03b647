"""Reading the results tree defensively.

The benchmarks write ``<results_dir>/<bench>/...`` (docs/benchmarks.md#where-results-live); any subset
may exist and the JSON keys are still settling. Everything here reads what is there,
never raises on a missing or unreadable file, and remembers what it looked for and
did not find, so that the report can say so next to the section that needed it.

Key lookups go through :data:`ALIASES` (one canonical name, the spellings seen or
expected for it) and accept nested dictionaries (``{"metrics": {"fid": ...}}``)."""

from __future__ import annotations

import json
import math
import numbers
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

import pandas as pd

# Benchmarks in the order the report shows them, and which are image / toy / text tasks.
KNOWN_BENCHES = ["toy2d", "digits", "mnist", "digits-text", "imagenet64", "imagenet128", "sd15"]
PAPER_SCALE = ("imagenet64", "imagenet128", "sd15")
TEXT_BENCHES = ("digits-text", "sd15")
TOY_BENCHES = ("toy2d",)

# Variants in the order the report shows them; others follow alphabetically.
KNOWN_VARIANTS = ["mct", "no-reparam", "no-nc", "random-init", "k1", "k2", "k4", "k8", "k16"]
ABLATION_GROUPS = {
    "reparam": ("mct", "no-reparam"),
    "noise cancellation": ("mct", "no-nc"),
    "initialisation": ("mct", "random-init"),
}
VARIANT_DESCRIPTIONS = {
    "mct": "main run",
    "no-reparam": "Langevin in (x_s, z)",
    "no-nc": "no noise cancellation",
    "random-init": "random init",
    "k1": "K = 1 (reverse KL)",
}

# canonical metric name -> accepted spellings (first match wins, case-insensitive)
ALIASES: dict[str, tuple[str, ...]] = {
    "fid": ("fid", "fid50k", "fid_50k", "fid30k", "fid_30k", "frechet_inception_distance", "frechet_distance"),
    "kid_mean": ("kid_mean", "kid", "kernel_inception_distance_mean"),
    "kid_std": ("kid_std", "kernel_inception_distance_std"),
    "precision": ("precision", "prec"),
    "recall": ("recall", "rec"),
    "clip_score": ("clip_score", "clipscore", "clip"),
    "class_entropy": ("class_entropy", "label_entropy"),
    "nfe": ("nfe", "num_function_evals", "function_evaluations"),
    "train_seconds": ("train_seconds", "train_time_s", "training_seconds"),
    "eval_seconds": ("eval_seconds", "evaluate_seconds", "eval_time_s"),
    "mode_mass_tv": ("mode_mass_tv", "tv", "mode_tv"),
    "modes_covered": ("modes_covered",),
    "num_modes": ("num_modes", "modes"),
    "mean_true_logpdf": ("mean_true_logpdf", "mean_logpdf", "true_logpdf"),
    "energy_distance": ("energy_distance", "energy"),
    "mode_mass": ("mode_mass", "mode_masses", "per_mode_mass"),
    "true_mode_weight": ("true_mode_weight", "true_weights", "mode_weight"),
    "class_hist": ("class_hist", "class_histogram", "class_counts", "class_freq", "class_frequencies",
                   "class_fractions", "class_distribution", "label_hist", "label_histogram"),
    "accuracy": ("accuracy", "test_accuracy", "heldout_accuracy", "held_out_accuracy", "val_accuracy", "acc"),
    "fid_floor": ("fid_floor", "real_fid", "fid_real_vs_real", "real_vs_real_fid", "fid_real", "real_floor_fid"),
    "class_accuracy": ("class_accuracy", "conditioning_accuracy"),
    "classes_covered": ("classes_covered",),
    "K": ("K", "k", "num_steps", "mcmc_steps", "langevin_steps"),
    "gamma_eps": ("gamma_eps",),
    "gamma_z": ("gamma_z",),
    "reparam": ("reparam",),
    "noise_cancel": ("noise_cancel", "nc"),
    "init": ("init",),
    "iterations": ("iterations", "iteration"),
    "seed": ("seed",),
    "images_per_s": ("images_per_s", "images_per_sec", "images_per_second", "img_per_s", "imgs_per_s",
                     "samples_per_s", "samples_per_sec", "samples_per_second", "throughput", "ips"),
    "peak_memory_mb": ("peak_memory_mb", "peak_mem_mb", "max_memory_mb", "peak_memory_mib", "peak_rss_mb"),
    "peak_memory_bytes": ("peak_memory_bytes", "peak_memory", "max_memory_allocated", "peak_rss_bytes"),
}


def is_number(v: Any) -> bool:
    """A finite real number (Python or numpy), not a boolean."""
    if isinstance(v, bool) or type(v).__name__ == "bool_":
        return False
    return isinstance(v, numbers.Real) and math.isfinite(float(v))


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists are kept as values."""
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, dict) and v:
                out.update(flatten(v, key))
            else:
                out[key] = v
    return out


def pick(d: Optional[dict], name: str, default: Any = None) -> Any:
    """The value of canonical metric ``name`` in ``d``: an exact top-level key first,
    then any alias, at the top level, then nested (the last path segment matches)."""
    if not isinstance(d, dict):
        return default
    if name in d:
        return d[name]
    aliases = ALIASES.get(name, (name,))
    lower = {str(k).lower(): k for k in d}
    for a in aliases:
        if a.lower() in lower:
            return d[lower[a.lower()]]
    flat = flatten(d)
    for a in aliases:
        for k, v in flat.items():
            if k.lower().rsplit(".", 1)[-1] == a.lower():
                return v
    return default


def pick_number(d: Optional[dict], name: str) -> Optional[float]:
    v = pick(d, name)
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            return None
    if isinstance(v, dict):  # e.g. {"mean": .., "std": ..}
        v = v.get("mean", v.get("value"))
    return float(v) if is_number(v) else None


@dataclass
class Lookup:
    section: str
    path: str
    reason: str  # "missing" or "unreadable: ..."


@dataclass
class Reader:
    """Reads files under ``root``; every miss is recorded against the current section."""

    root: Path
    section: str = "general"
    misses: list[Lookup] = field(default_factory=list)

    def rel(self, path: Path) -> str:
        try:
            return Path(path).relative_to(self.root).as_posix()
        except ValueError:
            return str(path)

    def _miss(self, path: Path, reason: str = "missing") -> None:
        item = Lookup(self.section, self.rel(path), reason)
        if not any(m.section == item.section and m.path == item.path for m in self.misses):
            self.misses.append(item)

    def missing_in(self, section: str) -> list[Lookup]:
        return [m for m in self.misses if m.section == section]

    def exists(self, rel: str | Path, record: bool = True) -> Optional[Path]:
        path = self.root / rel
        if path.is_file() and path.stat().st_size > 0:
            return path
        if record:
            self._miss(path)
        return None

    def json(self, rel: str | Path, record: bool = True) -> Optional[Any]:
        path = self.exists(rel, record)
        if path is None:
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            self._miss(path, f"unreadable: {exc}")
            return None

    def csv(self, rel: str | Path, record: bool = True) -> Optional[pd.DataFrame]:
        path = self.exists(rel, record)
        if path is None:
            return None
        try:
            df = pd.read_csv(path)
        except (OSError, ValueError, pd.errors.ParserError) as exc:
            self._miss(path, f"unreadable: {exc}")
            return None
        if df.empty:
            self._miss(path, "unreadable: no rows")
            return None
        return df

    def npz_points(self, rel: str | Path, record: bool = True):
        """(N, 2) sample points from an ``.npz`` (key ``x``, else the first 2-column array)."""
        import numpy as np

        path = self.exists(rel, record)
        if path is None:
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                keys = ["x"] + [k for k in z.files if k != "x"]
                for k in keys:
                    if k in z.files and z[k].ndim == 2 and z[k].shape[1] == 2:
                        a = np.asarray(z[k], dtype=float)
                        return a[np.isfinite(a).all(axis=1)]
        except (OSError, ValueError) as exc:
            self._miss(path, f"unreadable: {exc}")
            return None
        self._miss(path, "unreadable: no (N, 2) array in it")
        return None


def natural_key(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def order_variants(names: Iterable[str]) -> list[str]:
    names = list(dict.fromkeys(names))
    known = [v for v in KNOWN_VARIANTS if v in names]
    return known + sorted((n for n in names if n not in KNOWN_VARIANTS), key=natural_key)


def discover_benches(root: Path, configured: Iterable[str]) -> list[str]:
    """Benchmarks configured or with a results folder, in the report's order."""
    found = set(configured)
    if root.is_dir():
        for p in root.iterdir():
            if p.is_dir() and ((p / "runs").is_dir() or (p / "teacher").is_dir() or (p / "summary.csv").is_file()):
                found.add(p.name)
    known = [b for b in KNOWN_BENCHES if b in found]
    return known + sorted(found - set(KNOWN_BENCHES))


def discover_variants(root: Path, bench: str, configured: Iterable[str] = ()) -> list[str]:
    runs = root / bench / "runs"
    found = list(configured)
    if runs.is_dir():
        found += [p.name for p in runs.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return order_variants(found)


# --- teacher metrics at several NFE -------------------------------------------------

_NFE_KEY = re.compile(r"^(?:nfe[_\-@]?)?(\d+)(?:[_\-]?nfe)?$", re.I)
_FLAT_NFE = re.compile(r"^(?P<m>[a-z_]+?)[_\-@]?nfe[_\-]?(?P<n>\d+)$|^nfe[_\-]?(?P<n2>\d+)[_\-\.](?P<m2>[a-z_]+)$", re.I)


def teacher_rows(metrics: Any) -> list[dict]:
    """Normalise a teacher's metrics.json into one dict per NFE (sorted by NFE).

    Accepted shapes: a list of ``{"nfe": .., "fid": ..}``; such a list under any key;
    ``{"7": {"fid": ..}, "15": {...}}`` (also ``"nfe7"``) at the top or under a key;
    ``{"fid": {"7": .., "15": ..}}``; flat ``{"fid_nfe7": ..}``; or a single ``{"nfe": 35, "fid": ..}``."""
    rows: dict[int, dict] = {}

    def add(nfe, values: dict):
        try:
            n = int(float(nfe))
        except (TypeError, ValueError):
            return
        row = rows.setdefault(n, {"nfe": n})
        for k, v in values.items():
            if k != "nfe" and (is_number(v) or isinstance(v, (str, list))):
                row.setdefault(k, v)

    def walk(obj, depth=0):
        if depth > 3:
            return
        if isinstance(obj, list):
            for item in obj:
                if isinstance(item, dict) and pick(item, "nfe") is not None:
                    add(pick(item, "nfe"), flatten(item))
            return
        if not isinstance(obj, dict):
            return
        nfe_keys = [k for k in obj if _NFE_KEY.match(str(k))]
        for k in nfe_keys:
            n = _NFE_KEY.match(str(k)).group(1)
            v = obj[k]
            if isinstance(v, dict):
                add(n, flatten(v))
        for k, v in obj.items():
            if k in nfe_keys:
                continue
            if isinstance(v, dict) and v and all(_NFE_KEY.match(str(kk)) for kk in v) and all(is_number(x) for x in v.values()):
                for kk, x in v.items():  # {"fid": {"7": 12.0}}
                    add(_NFE_KEY.match(str(kk)).group(1), {k: x})
            elif isinstance(v, (dict, list)):
                walk(v, depth + 1)
            m = _FLAT_NFE.match(str(k))
            if m and is_number(v):
                add(m.group("n") or m.group("n2"), {(m.group("m") or m.group("m2")).lower(): v})

    walk(metrics)
    if not rows and isinstance(metrics, dict) and pick(metrics, "nfe") is not None:
        add(pick(metrics, "nfe"), flatten(metrics))
    return [rows[k] for k in sorted(rows)]


def class_hist(d: Optional[dict]) -> Optional[list[float]]:
    """A class histogram as fractions (list index = class), from a list or ``{label: count}``."""
    v = pick(d, "class_hist")
    if isinstance(v, dict):
        try:
            items = sorted(((int(k), float(x)) for k, x in v.items() if is_number(x)), key=lambda t: t[0])
        except ValueError:
            items = [(i, float(x)) for i, x in enumerate(v.values()) if is_number(x)]
        if not items:
            return None
        n = max(k for k, _ in items) + 1
        arr = [0.0] * n
        for k, x in items:
            arr[k] = x
        v = arr
    if not isinstance(v, list) or not v or not all(is_number(x) for x in v):
        return None
    total = float(sum(v))
    return [float(x) / total for x in v] if total > 0 else None


def number_list(v: Any) -> Optional[list[float]]:
    if isinstance(v, list) and v and all(is_number(x) for x in v):
        return [float(x) for x in v]
    return None


# --- speed measurements (results/bench/*.json) --------------------------------------

def speed_records(obj: Any) -> list[dict]:
    """Every dict in ``obj`` that holds a throughput, as a flat record named by its
    path, with scalar fields of its parents (e.g. ``bench``, ``device``) filled in."""
    out: list[dict] = []

    def walk(node, path: list[str], context: dict):
        if isinstance(node, dict):
            scalars = {k: v for k, v in node.items() if not isinstance(v, (dict, list))}
            ctx = {**context, **scalars}
            if pick_number({k: v for k, v in node.items() if not isinstance(v, (dict, list))}, "images_per_s") is not None:
                rec = dict(ctx)
                rec.setdefault("name", rec.get("sampler") or rec.get("model") or rec.get("role") or "/".join(path) or "sampler")
                out.append(rec)
                return
            for k, v in node.items():
                if isinstance(v, (dict, list)):
                    walk(v, path + [str(k)], {kk: vv for kk, vv in ctx.items() if kk not in ("name",)})
        elif isinstance(node, list):
            for i, item in enumerate(node):
                walk(item, path, context)

    walk(obj, [], {})
    return out


def overhead_records(obj: Any) -> list[dict]:
    """Dicts holding a K (Langevin steps) and a time per iteration: the EM overhead."""
    out: list[dict] = []

    def walk(node):
        if isinstance(node, dict):
            scal = {k: v for k, v in node.items() if not isinstance(v, (dict, list))}
            k = pick_number(scal, "K") if any(str(x).lower() in ("k", "num_steps", "mcmc_steps", "langevin_steps") for x in scal) else None
            timing = [x for x in scal if re.search(r"(seconds|_s$|_ms$|time)", str(x), re.I) and is_number(scal[x])]
            if k is not None and timing:
                out.append(scal)
                return
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(obj)
    return out


def fid_floor(*sources: Optional[dict]) -> Optional[float]:
    """The real-vs-real FID (``fid_floor`` or ``real_floor: {fid: ..}``) from the first source that has it."""
    for d in sources:
        if not isinstance(d, dict):
            continue
        v = pick_number(d, "fid_floor")
        if v is None and isinstance(d.get("real_floor"), dict):
            v = pick_number(d["real_floor"], "fid")
        if v is not None:
            return v
    return None
