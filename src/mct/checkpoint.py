"""Checkpoints: the one home of saving, loading and resuming (in the manner of edm2's CheckpointIO).

A distillation run keeps numbered checkpoints ``<run_dir>/checkpoints/ckpt-<iteration>.pt``
(format ``mct-distill-v1``: a plain dict of tensors, lists and numbers that
``torch.load(weights_only=True)`` opens; no pickled code) and, when it finishes, the final
``<run_dir>/checkpoint.pt``. Keys of a distillation checkpoint::

    format, iteration, config_hash, config, generator, generator_ema, student, opt_g, opt_s,
    rng, torch_rng, log, eval_log, seconds, world_size

Every file is written atomically (:func:`mct.io.torch_save`), so a killed run leaves either a
whole checkpoint or a temporary ``.<name>.<random>.tmp`` that :meth:`CheckpointIO.remove_temp_files`
deletes. Reading is :func:`read_checkpoint` (any format, one :class:`~mct.errors.CheckpointError`
for a missing, unreadable or foreign file), :func:`read_for_eval` (only what evaluation needs,
the optimiser states never read from disk) and :meth:`CheckpointIO.load_latest` (the newest
checkpoint of this config, for resuming)."""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from .errors import CheckpointError
from .io import atomic_path, torch_save

log = logging.getLogger(__name__)

DISTILL_FORMAT = "mct-distill-v1"
# what evaluation reads of a distillation checkpoint besides the weights it asks for
EVAL_KEYS = ("format", "iteration", "config_hash", "config", "log", "eval_log", "seconds", "world_size")
WEIGHT_KEYS = ("generator", "generator_ema", "student")
FINAL_NAME = "checkpoint.pt"
_NUMBERED = re.compile(r"ckpt-(\d+)\.pt")


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text.splitlines()[0][:200] if text else ''}"


def read_checkpoint(path: str | os.PathLike, expected_format: Optional[str] = DISTILL_FORMAT, *,
                    mmap: bool = False) -> dict:
    """``torch.load(weights_only=True)`` on CPU with one clear error for a missing, unreadable
    or foreign file. ``expected_format``: the dict's ``format`` entry (None: any dict, e.g. a
    released state dict). ``mmap``: map the file instead of reading it (tensors are read from
    disk only when touched; see :func:`read_for_eval`)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory, not a file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # truncated zip, garbage, a pickle of code (refused)
        raise CheckpointError(f"checkpoint {path} cannot be read (truncated or not a checkpoint) by "
                              f"torch.load(weights_only=True): {_first_line(exc)}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a dict of weights")
    if expected_format is not None and state.get("format") != expected_format:
        raise CheckpointError(f"checkpoint {path} is not an {expected_format} checkpoint "
                              f"(found format {state.get('format')!r})")
    return state


def load_state_strict(module: nn.Module, state: Any, what: str, path) -> None:
    """``module.load_state_dict(state, strict=True)`` with one readable error when the weights
    are missing or do not fit (another architecture)."""
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path}: the {what} weights are missing")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = [ln.strip() for ln in str(exc).splitlines() if ln.strip()][:3]
        raise CheckpointError(f"checkpoint {path}: the {what} weights do not fit this architecture "
                              f"({' '.join(first)[:300]})") from None


def _in_memory(obj: Any) -> Any:
    """A copy of ``obj`` whose tensors live in ordinary memory (not in a mapped file)."""
    if isinstance(obj, torch.Tensor):
        return obj.clone()
    if isinstance(obj, dict):
        return {k: _in_memory(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_in_memory(v) for v in obj)
    return obj


def read_for_eval(path: str | os.PathLike, weights: tuple[str, ...] = ("generator_ema",)) -> dict:
    """What evaluation needs of a distillation checkpoint: the ``weights`` asked for (any of
    generator, generator_ema, student) and :data:`EVAL_KEYS` (config hash, iteration, logs).
    The file is memory-mapped and only those entries are copied out, so the optimiser states,
    the raw generator and the student (when not asked for) are never read from disk: evaluating
    a paper-scale run costs the memory of one generator, not of the whole training state."""
    unknown = [w for w in weights if w not in WEIGHT_KEYS]
    if unknown:
        raise ValueError(f"read_for_eval: unknown weights {unknown} (known: {', '.join(WEIGHT_KEYS)})")
    try:
        state = read_checkpoint(path, DISTILL_FORMAT, mmap=True)
    except CheckpointError:
        if not Path(path).is_file():
            raise
        state = read_checkpoint(path, DISTILL_FORMAT)  # a file torch cannot map (legacy format): read it whole
    out = {k: _in_memory(state[k]) for k in EVAL_KEYS if k in state}
    for w in weights:
        if not isinstance(state.get(w), dict):
            raise CheckpointError(f"checkpoint {path}: the {w} weights are missing")
        out[w] = _in_memory(state[w])
    del state
    return out


def module_bytes(module: nn.Module) -> tuple[int, int]:
    """(bytes of ``module.state_dict()``, bytes of its trainable parameters): what one copy of its
    weights and one Adam moment of it take in a checkpoint. Works on the meta device (shapes and
    dtypes only), so a paper-scale network is measured without allocating it."""
    state = sum(t.numel() * t.element_size() for t in module.state_dict().values() if isinstance(t, torch.Tensor))
    params = sum(p.numel() * p.element_size() for p in module.parameters() if p.requires_grad)
    return state, params


def checkpoint_bytes(generator: tuple[int, int], student: tuple[int, int]) -> int:
    """Bytes of the tensors of one distillation checkpoint, from :func:`module_bytes` of the generator
    and the student: the generator, its EMA and Adam's two moments of it (4 copies), the student and
    Adam's two moments of it (3 copies). RNG states, logs and the zip records add a few KB."""
    (g_state, g_params), (s_state, s_params) = generator, student
    return 2 * g_state + 2 * g_params + s_state + 2 * s_params


class CheckpointIO:
    """The checkpoints of one run folder: numbered ones in ``run_dir/checkpoints`` (the newest
    ``keep`` kept) and the final ``run_dir/checkpoint.pt``. Only one process writes (rank 0)."""

    def __init__(self, run_dir: str | os.PathLike, keep: int = 2, fmt: str = DISTILL_FORMAT):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.run_dir = Path(run_dir)
        self.folder = self.run_dir / "checkpoints"
        self.final = self.run_dir / FINAL_NAME
        self.keep = keep
        self.fmt = fmt

    def path(self, iteration: int) -> Path:
        return self.folder / f"ckpt-{iteration:08d}.pt"

    def list(self) -> list[Path]:
        """The numbered checkpoints, oldest first (by iteration, not by name or time)."""
        found = [(int(m.group(1)), p) for p in self.folder.glob("ckpt-*.pt") if (m := _NUMBERED.fullmatch(p.name))]
        return [p for _, p in sorted(found)]

    def remove_temp_files(self) -> list[Path]:
        """Delete the temporary files a killed run left behind (``mct.io.atomic_path`` names them
        ``.<final name>.<random>.tmp``): they are never whole, and nothing else reads them."""
        removed = []
        for folder in (self.run_dir, self.folder):
            for tmp in folder.glob(".*.tmp") if folder.is_dir() else ():
                if tmp.is_file():
                    log.info("removing %s, left by an interrupted run", tmp)
                    tmp.unlink(missing_ok=True)
                    removed.append(tmp)
        return removed

    def save(self, iteration: int, state: dict) -> Path:
        """Write ``state`` as checkpoint ``iteration`` (atomically), then delete all but the newest ``keep``."""
        if state.get("format") != self.fmt:
            raise ValueError(f"CheckpointIO.save: the state's format is {state.get('format')!r}, not {self.fmt!r}")
        path = torch_save(self.path(iteration), state)
        for old in self.list()[:-self.keep]:
            old.unlink(missing_ok=True)
        return path

    def load_latest(self, config_hash: str) -> tuple[Optional[dict], Optional[Path], list[Path]]:
        """The newest checkpoint written with ``config_hash``: (state, path, skipped), where
        ``skipped`` are the newer ones that are unreadable or of another config (warned about);
        (None, None, skipped) when there is none."""
        skipped: list[Path] = []
        for path in reversed(self.list()):
            try:
                state = read_checkpoint(path, self.fmt)
            except CheckpointError as exc:
                log.warning("skipping unusable checkpoint: %s", exc)
                skipped.append(path)
                continue
            if state.get("config_hash") != config_hash:
                log.warning("checkpoint %s was written with another config; not resuming from it", path)
                skipped.append(path)
                continue
            return state, path, skipped
        return None, None, skipped

    def remove(self, paths) -> None:
        for p in paths:
            Path(p).unlink(missing_ok=True)

    def publish(self, path: Optional[Path] = None) -> Path:
        """Make the numbered checkpoint ``path`` (default: the newest) the run's final
        ``checkpoint.pt``: a hard link (an atomic copy where links are not supported), so the
        file is neither read into memory nor written a second time."""
        src = Path(path) if path is not None else self.list()[-1]
        with atomic_path(self.final) as tmp:
            tmp.unlink()
            try:
                os.link(src, tmp)
            except OSError:
                shutil.copyfile(src, tmp)
        return self.final
