"""Pinned, resumable, atomic downloads of teachers, reference statistics and feature weights.

:func:`fetch` downloads ``url`` to ``dest``:

- through a ``dest.part`` file beside the destination; an interrupted download is resumed
  from it with an HTTP ``Range`` request (a server that ignores the range restarts it);
- with a tqdm progress bar;
- verified by sha256 before it is renamed onto ``dest`` (one atomic ``os.replace``), so
  ``dest`` exists only when it is whole and verified;
- against the sha256 given by the caller or, when none is known (the publisher of the file
  does not state one), against a *lock file* (``config/checksums.lock.yaml``): the first
  verified download records the file's sha256 and size there (trust on first use; commit the
  file), and every later download or re-check must match it.

:func:`fetch_or_local` uses a configured local copy instead when there is one (offline clusters);
:func:`file_name` names a fetched file after its URL; :func:`link_atomically` points a declared
output at a local copy.

Errors are :class:`~mct.errors.DownloadError` with one message: an HTTP error, a download
cut off before its announced length (the ``.part`` file is kept so that a rerun resumes),
a checksum mismatch (the bad file is removed). Nothing is ever left at ``dest`` on failure.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import http.client
import logging
import os
import re
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

import yaml

from ..errors import ConfigError, DownloadError, MCTError
from ..io import ensure_writable_dir, sha256_file, write_text

log = logging.getLogger(__name__)

DEFAULT_LOCK_FILE = "config/checksums.lock.yaml"
_CHUNK = 1 << 20
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")

LOCK_HEADER = """\
# sha256 pins of downloaded files, recorded by mct on the first verified download
# (trust on first use) where the publisher states no checksum. Commit this file:
# every later download must match it. Delete an entry only to re-pin a file on purpose.
"""


def _check_sha(value: Optional[str], what: str) -> Optional[str]:
    if value is None:
        return None
    v = str(value).strip().lower()
    if not _SHA256_RE.match(v):
        raise DownloadError(f"{what} is not a sha256 (64 hex digits): {value!r}")
    return v


class LockFile:
    """``url -> {sha256, size, recorded}`` in a YAML file, rewritten atomically."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def entries(self) -> dict:
        if not self.path.exists():
            return {}
        try:
            data = yaml.safe_load(self.path.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise DownloadError(f"checksum lock file {self.path} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise DownloadError(f"checksum lock file {self.path} must map URLs to their sha256")
        return data

    def get(self, url: str) -> Optional[str]:
        entry = self.entries().get(url)
        if entry is None:
            return None
        sha = entry.get("sha256") if isinstance(entry, dict) else entry
        return _check_sha(sha, f"the sha256 recorded for {url} in {self.path}")

    def record(self, url: str, sha256: str, size: int) -> None:
        data = self.entries()
        data[url] = {"sha256": sha256, "size": int(size),
                     "recorded": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
        write_text(self.path, LOCK_HEADER + yaml.safe_dump(data, sort_keys=True))


def expected_sha256(url: str, sha256: Optional[str], lock: Optional[LockFile]) -> Optional[str]:
    """The pin to verify against: the caller's, else the lock file's; both present must agree."""
    pinned = _check_sha(sha256, f"the sha256 given for {url}")
    locked = lock.get(url) if lock is not None else None
    if pinned and locked and pinned != locked:
        raise DownloadError(f"{url}: the configured sha256 {pinned} disagrees with {locked} recorded in {lock.path}")
    return pinned or locked


def _part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def _open(url: str, start: int, timeout: float):
    headers = {"User-Agent": "mct-download/1", "Accept-Encoding": "identity"}
    if start:
        headers["Range"] = f"bytes={start}-"
    req = urllib.request.Request(url, headers=headers)
    try:
        return urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 (the URL comes from the config)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and start:
            return exc  # range not satisfiable: the .part may already be whole
        raise DownloadError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, socket.timeout, ConnectionError, http.client.HTTPException, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(f"download of {url} failed: {reason}") from None


def _download_to_part(url: str, part: Path, timeout: float, progress: bool) -> None:
    from tqdm.auto import tqdm

    start = part.stat().st_size if part.exists() else 0
    resp = _open(url, start, timeout)
    with contextlib.closing(resp):
        status = getattr(resp, "status", None) or resp.getcode()
        if status == 416:
            log.info("%s: the partial download %s is already complete", url, part)
            return
        total: Optional[int] = None
        length = resp.headers.get("Content-Length")
        if status == 206:
            m = re.match(r"bytes (\d+)-(\d+)/(\d+|\*)", resp.headers.get("Content-Range", ""))
            if not m or int(m.group(1)) != start:
                start = 0  # an unusable partial answer: start over
                resp.close()
                part.unlink(missing_ok=True)
                return _download_to_part(url, part, timeout, progress)
            total = int(m.group(3)) if m.group(3) != "*" else None
            log.info("%s: resuming at byte %d", url, start)
        else:
            if start:
                log.info("%s: the server ignored the range request; downloading from the start", url)
            start = 0
            total = int(length) if length is not None and length.isdigit() else None
        mode = "ab" if start else "wb"
        done = start
        bar = tqdm(total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024, disable=not progress,
                   desc=part.name[:-5], dynamic_ncols=True, mininterval=1.0)
        try:
            with open(part, mode) as f:
                while True:
                    try:
                        block = resp.read(_CHUNK)
                    except (http.client.IncompleteRead, socket.timeout, ConnectionError, OSError,
                            http.client.HTTPException) as exc:
                        raise DownloadError(f"download of {url} was cut off after {done} bytes "
                                            f"({type(exc).__name__}); rerun to resume from {part}") from None
                    if not block:
                        break
                    f.write(block)
                    done += len(block)
                    bar.update(len(block))
        finally:
            bar.close()
        if total is not None and done != total:
            raise DownloadError(f"download of {url} was cut off after {done} of {total} bytes; "
                                f"rerun to resume from {part}")


def fetch(url: str, dest: str | os.PathLike, sha256: Optional[str] = None,
          lock_file: str | os.PathLike | None = DEFAULT_LOCK_FILE, progress: bool = True,
          timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` (resumable, atomic, sha256-verified; see the module doc).

    An existing ``dest`` is verified instead of downloaded again (a file that does not match
    is removed and fetched anew). Returns ``dest``."""
    dest = Path(dest)
    lock = LockFile(lock_file) if lock_file is not None else None
    expected = expected_sha256(url, sha256, lock)
    ensure_writable_dir(dest.parent)
    part = _part_path(dest)

    if dest.exists():
        actual = sha256_file(dest)
        if expected is None or actual == expected:
            if expected is None and lock is not None:
                lock.record(url, actual, dest.stat().st_size)
                log.warning("recorded sha256 %s of the existing %s in %s; commit it", actual, dest, lock.path)
            return dest
        log.warning("%s does not match its sha256 pin (%s != %s); removing it and downloading again",
                    dest, actual, expected)
        dest.unlink()

    _download_to_part(url, part, timeout, progress)
    actual = sha256_file(part)
    if expected is not None and actual != expected:
        part.unlink(missing_ok=True)
        where = "the configured pin" if sha256 else f"the pin in {lock.path if lock else 'the lock file'}"
        raise DownloadError(f"checksum mismatch for {url}: got sha256 {actual}, expected {expected} ({where}); "
                            "the downloaded file was removed")
    size = part.stat().st_size
    os.replace(part, dest)
    if expected is None and lock is not None:
        lock.record(url, actual, size)
        log.warning("first download of %s: recorded its sha256 %s in %s (trust on first use); commit that file",
                    url, actual, lock.path)
    log.info("fetched %s -> %s (%d bytes, sha256 %s)", url, dest, size, actual)
    return dest


def file_name(url: str) -> str:
    """The name a file fetched from ``url`` is stored under (the last part of the URL's path)."""
    name = Path(urlparse(url).path).name
    if not name:
        raise ConfigError(f"cannot name a file after the URL {url!r}")
    return name


def link_atomically(link: str | os.PathLike, target: str | os.PathLike) -> None:
    """Point ``link`` at ``target`` (a symlink replaced atomically)."""
    link = Path(link)
    ensure_writable_dir(link.parent)
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, link)


def fetch_or_local(url: str, sha256: Optional[str], local: Optional[str | os.PathLike], dest: str | os.PathLike,
                   lock_file: str | os.PathLike | None = DEFAULT_LOCK_FILE, progress: bool = True) -> Path:
    """``local`` when one is configured (checked against ``sha256`` when one is given; never
    downloaded), else :func:`fetch` of ``url`` to ``dest``. Returns the file to use."""
    if local:
        path = Path(local)
        if not path.is_file():
            raise MCTError(f"{path} (configured as a local copy of {url}) does not exist")
        if sha256 and sha256_file(path) != sha256.lower():
            raise MCTError(f"{path} does not match its configured sha256 {sha256}")
        return path
    return fetch(url, dest, sha256=sha256, lock_file=lock_file, progress=progress)
