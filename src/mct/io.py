"""The run folder contract: where outputs go, who may write them, and when they count.

- :func:`atomic_path` and the ``write_*`` helpers: every file is written to a temporary name
  in the same directory and renamed, so a crash never leaves a half-written file that looks
  whole; an ``OSError`` (disk full, permission, a directory in the way) is one
  :class:`~mct.errors.MCTError` line naming the path.
- :func:`inside`: an output path built from names, refused unless it resolves under its root.
- :func:`folder_lock`: one writer per run (or benchmark) folder; a second one gets one line
  naming the holder's pid. The lock is an ``flock`` (the filelock package), which the kernel
  drops when its holder dies, so a killed run never leaves a lock behind.
- :func:`stage_outputs` / :func:`require_complete`: a stage's files count only once the
  completion record ``.complete-<stage>.json`` (files, sizes, sha256, config hash) is written,
  last; readers require it, so a half-written set of outputs is never used.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import io as _io
import json
import logging
import os
import socket
import stat
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

from .errors import MCTError

log = logging.getLogger(__name__)

MAX_JSON_BYTES = 64 << 20  # metrics.json, summary records: kB in practice


def os_error(exc: OSError, path: str | os.PathLike | None = None, action: str = "cannot write") -> MCTError:
    """One line for an OSError (ENOSPC, EACCES, EISDIR, ENOTDIR, ...), naming the path."""
    where = path if path is not None else (exc.filename or "?")
    reason = exc.strerror or str(exc) or type(exc).__name__
    hint = " (the disk is full)" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else ""
    return MCTError(f"{action} {where}: {reason}{hint}")


def inside(root: str | os.PathLike, *parts: str | os.PathLike) -> Path:
    """``root / parts...``, resolved (symlinks followed), refused with one MCTError line unless
    it lies under ``root`` (resolved too). Every output path built from a name goes through this,
    so ``../..``, an absolute part or a symlink pointing out of the results folder never escape."""
    base = Path(root).resolve()
    for part in parts:
        text = os.fspath(part)
        if not text or "\x00" in text or os.path.isabs(text):
            raise MCTError(f"refused output path {text!r} under {base}: not a relative name")
    candidate = base.joinpath(*map(os.fspath, parts))
    resolved = candidate.resolve()
    if resolved != base and base not in resolved.parents:
        raise MCTError(f"refused output path {candidate}: it resolves to {resolved}, outside {base}")
    return resolved


LOCK_NAME = ".mct-lock"


def _lock_holder(folder: Path) -> str:
    try:
        info = json.loads((folder / (LOCK_NAME + ".pid")).read_text()[:4096])
        return f"pid {int(info['pid'])} on {str(info.get('host', '?'))[:64]}, since {str(info.get('since', '?'))[:32]}"
    except Exception:
        return "pid unknown (it is starting)"


_HELD: dict[str, int] = {}  # folders whose lock this process holds -> nesting depth
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_HELD.clear)  # a forked child holds no lock of its parent


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, what: str) -> Iterator[Path]:
    """Hold the write lock of ``folder`` (created if needed) for the block. Another holder,
    live, means one MCTError line naming its pid; the flock of a killed holder is released
    by the kernel, so the lock is then simply taken over (its stale pid file overwritten).
    Re-entrant within a process (a stage may lock a folder the CLI already locked).
    ``what`` names the command for the message, e.g. 'distill toy2d/mct'."""
    import filelock

    folder = ensure_writable_dir(folder).resolve()
    key = str(folder)
    if _HELD.get(key):
        _HELD[key] += 1
        try:
            yield folder
        finally:
            _HELD[key] -= 1
        return
    lock = filelock.FileLock(str(folder / LOCK_NAME), timeout=0)
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        raise MCTError(f"{what}: {folder} is being written by another mct process ({_lock_holder(folder)}); "
                       "wait for it to finish or stop it") from None
    except OSError as exc:
        raise os_error(exc, folder / LOCK_NAME, "cannot lock") from None
    _HELD[key] = 1
    if (folder / (LOCK_NAME + ".pid")).exists():  # its holder died without releasing: the kernel freed the flock
        log.warning("%s: taking over the lock of %s, left by %s", what, folder, _lock_holder(folder))
    try:
        write_json(folder / (LOCK_NAME + ".pid"),
                   {"pid": os.getpid(), "host": socket.gethostname(), "what": what,
                    "since": time.strftime("%Y-%m-%dT%H:%M:%S")})
        yield folder
    finally:
        _HELD.pop(key, None)
        with contextlib.suppress(OSError):  # removed while still held: a lock file is never left as an output
            (folder / (LOCK_NAME + ".pid")).unlink()
            (folder / LOCK_NAME).unlink()
        lock.release()


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` (and parents) and check we can write there, with one clear error."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise MCTError(f"output directory {path} cannot be created: a file is in the way") from None
    except OSError as exc:
        raise MCTError(f"output directory {path} cannot be created: {exc.strerror}") from None
    if not path.is_dir():
        raise MCTError(f"output directory {path} cannot be created: a file is in the way")
    if not os.access(path, os.W_OK | os.X_OK):
        raise MCTError(f"output directory {path} is not writable")
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` on success,
    delete it on any error."""
    path = Path(path)
    ensure_writable_dir(path.parent)
    if path.is_dir():
        raise MCTError(f"cannot write {path}: it is a directory")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise os_error(exc, path) from None
    tmp = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; outputs are meant to be shared
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise os_error(exc, path) from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_csv(path: str | os.PathLike, rows: Iterable[dict], fieldnames: list[str] | None = None) -> Path:
    rows = list(rows)
    if fieldnames is None:
        fieldnames = list(dict.fromkeys(k for row in rows for k in row))
    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fieldnames)
    writer.writeheader()
    writer.writerows(rows)
    return write_text(path, buf.getvalue())


# what torch.save's C++ writer says when a write fails (disk full, I/O error)
_TORCH_WRITE_ERRORS = ("basic_ios::clear", "PytorchStreamWriter failed", "unexpected pos", "file write failed",
                       "No space left")


def torch_save(path: str | os.PathLike, obj: Any) -> Path:
    """``torch.save`` through :func:`atomic_path`; a failed write (torch's C++ writer raises
    ``RuntimeError: basic_ios::clear`` on a full disk) is one MCTError line naming the path."""
    import torch

    with atomic_path(path) as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError as exc:
            text = str(exc)
            if not any(k in text for k in _TORCH_WRITE_ERRORS):
                raise
            first = text.strip().splitlines()[0][:160] if text.strip() else "write failed"
            raise MCTError(f"cannot write {path}: {first} (is the disk full?)") from None
    return Path(path)


def save_image_grid(path: str | os.PathLike, images, nrow: int = 8, padding: int = 1) -> Path:
    """Save NCHW images in [-1, 1] as one PNG grid."""
    import torch
    from torchvision.utils import make_grid
    from PIL import Image

    grid = make_grid(images.detach().float().cpu().clamp(-1, 1), nrow=nrow, padding=padding,
                     normalize=True, value_range=(-1, 1), pad_value=1.0)
    arr = (grid.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    if arr.shape[2] == 1:
        arr = arr[:, :, 0]
    buf = _io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return write_bytes(path, buf.getvalue())


def read_capped(path: str | os.PathLike, limit: int, what: str = "file", error=MCTError,
                too_large: str | None = None) -> bytes:
    """At most ``limit`` bytes of ``path`` (``limit + 1`` are read, never an endless file whole);
    a directory, a missing, unreadable or larger file is one ``error`` line naming the path
    (``too_large``, if given, is the message for a larger one)."""
    path = Path(path)
    try:
        if stat.S_ISDIR(os.stat(path).st_mode):
            raise error(f"{what} {path} is a directory, not a file")
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise error(f"{what} {path} is a directory, not a file") from None
    except OSError as exc:
        raise error(f"{what} {path} cannot be read: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise error(too_large or f"{what} {path} is larger than {limit:,} bytes (the limit for a {what})")
    return data


def read_json(path: str | os.PathLike, expect: type | tuple | None = None, limit: int = MAX_JSON_BYTES) -> Any:
    """A JSON file, size-capped; nesting too deep, invalid JSON or (with ``expect``) a top-level
    value of another type is one MCTError line naming the path."""
    path = Path(path)
    data = read_capped(path, limit, "JSON file")
    try:
        obj = json.loads(data.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MCTError(f"{path} is not valid JSON: {str(exc)[:160]}") from None
    except RecursionError:
        raise MCTError(f"{path} is nested too deeply to be a results file") from None
    except ValueError as exc:  # e.g. an integer of 10,000 digits
        raise MCTError(f"{path} holds a value JSON cannot convert: {str(exc)[:120]}") from None
    if expect is not None and not isinstance(obj, expect):
        names = expect.__name__ if isinstance(expect, type) else " or ".join(t.__name__ for t in expect)
        raise MCTError(f"{path} holds a JSON {type(obj).__name__}, expected a {names}")
    return obj


# ----------------------------------------------------------------------------- completion records

def record_path(folder: str | os.PathLike, stage: str) -> Path:
    return Path(folder) / f".complete-{stage}.json"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """The sha256 of a file, read in blocks of ``chunk`` bytes (checkpoints, downloads, exports,
    completion records: one home)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


class StageOutputs:
    """What :func:`stage_outputs` yields: the folder, and :meth:`add` for each output file
    (written with the ``write_*`` helpers, atomically). Only added files enter the record."""

    def __init__(self, folder: Path, stage: str, config_hash: str | None):
        self.folder, self.stage, self.config_hash = folder, stage, config_hash
        self.files: list[Path] = []

    def path(self, *parts: str) -> Path:
        """An output path under the folder (checked by :func:`inside`), registered as an output."""
        p = inside(self.folder, *parts)
        self.files.append(p)
        return p

    def add(self, path: str | os.PathLike) -> Path:
        p = inside(self.folder, os.path.relpath(Path(path).resolve(), self.folder))
        self.files.append(p)
        return p


@contextlib.contextmanager
def stage_outputs(folder: str | os.PathLike, stage: str, config_hash: str | None = None,
                  meta: dict | None = None) -> Iterator[StageOutputs]:
    """A stage writing its outputs into ``folder``: the old completion record is removed first,
    the stage writes (and registers with ``out.path(...)`` / ``out.add(...)``) its files, and
    only when the block ends without error is ``.complete-<stage>.json`` written (atomically,
    last), listing each file's size and sha256 and the config hash. A crash or kill -9 anywhere
    before leaves no record: :func:`require_complete` refuses the folder until the stage reruns."""
    folder = ensure_writable_dir(Path(folder)).resolve()
    rec = record_path(folder, stage)
    try:
        rec.unlink(missing_ok=True)
    except OSError as exc:
        raise os_error(exc, rec) from None
    out = StageOutputs(folder, stage, config_hash)
    yield out
    files = {}
    for p in dict.fromkeys(out.files):
        try:
            files[p.relative_to(folder).as_posix()] = {"size": p.stat().st_size, "sha256": sha256_file(p)}
        except FileNotFoundError:
            raise MCTError(f"{stage}: declared output {p} was not written") from None
        except OSError as exc:
            raise os_error(exc, p, "cannot read") from None
    write_json(rec, {"stage": stage, "config_hash": config_hash, "files": files,
                     "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), **(meta or {})})


def completion(folder: str | os.PathLike, stage: str, verify: bool = True) -> dict | None:
    """The completion record of ``stage`` in ``folder`` when every file it lists is there with
    its recorded size (and sha256, with ``verify``); None otherwise."""
    folder = Path(folder)
    try:
        rec = read_json(record_path(folder, stage), expect=dict, limit=1 << 20)
    except MCTError:
        return None
    files = rec.get("files")
    if not isinstance(files, dict):
        return None
    for name, info in files.items():
        try:
            p = inside(folder, name)
            if not isinstance(info, dict) or p.stat().st_size != info.get("size"):
                return None
            if verify and sha256_file(p) != info.get("sha256"):
                return None
        except (MCTError, OSError):
            return None
    return rec


def is_complete(folder: str | os.PathLike, stage: str, verify: bool = True) -> bool:
    return completion(folder, stage, verify) is not None


def require_complete(folder: str | os.PathLike, stage: str, rerun: str, config_hash: str | None = None,
                     verify: bool = True) -> dict:
    """The completion record, or one MCTError line: the stage's outputs in ``folder`` are
    missing, incomplete or changed since, or were made under another config (``config_hash``
    given and different); ``rerun`` is the command that makes them, e.g. ``mct evaluate ...``."""
    rec = completion(folder, stage, verify)
    if rec is None:
        raise MCTError(f"{folder}: the {stage} outputs are missing or incomplete (interrupted, or changed since); "
                       f"run `{rerun}`")
    if config_hash is not None and rec.get("config_hash") != config_hash:
        raise MCTError(f"{folder}: the {stage} outputs were made under another config (hash "
                       f"{str(rec.get('config_hash'))[:16]}, this config {config_hash}); run `{rerun}`")
    return rec
