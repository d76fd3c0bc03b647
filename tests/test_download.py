"""Pinned, resumable, atomic downloads, served from a loopback HTTP server (127.0.0.1)."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import pytest
import yaml

from mct.errors import ConfigError, DownloadError, MCTError
from mct.teachers.download import LockFile, fetch, fetch_or_local, file_name, link_atomically, sha256_file

sys.path.insert(0, str(Path(__file__).parent))
from paper_fixtures import LoopbackServer  # noqa: E402

DATA = os.urandom(3 * (1 << 20) + 12345)  # a few chunks
SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture()
def server():
    with LoopbackServer() as srv:
        srv.files["/teacher.pkl"] = DATA
        yield srv


def _leftovers(dest: Path) -> list[str]:
    return sorted(p.name for p in dest.parent.iterdir())


def test_pinned_download(server, tmp_path):
    dest = tmp_path / "out" / "teacher.pkl"
    assert fetch(server.url("/teacher.pkl"), dest, sha256=SHA, lock_file=None, progress=False, timeout=10) == dest
    assert dest.read_bytes() == DATA
    assert _leftovers(dest) == ["teacher.pkl"]
    # present and matching: verified, not downloaded again
    n = len(server.requests)
    fetch(server.url("/teacher.pkl"), dest, sha256=SHA.upper(), lock_file=None, progress=False)
    assert len(server.requests) == n


def test_checksum_mismatch_removes_the_file(server, tmp_path):
    dest = tmp_path / "teacher.pkl"
    with pytest.raises(DownloadError, match="checksum mismatch") as exc:
        fetch(server.url("/teacher.pkl"), dest, sha256="0" * 64, lock_file=None, progress=False, timeout=10)
    assert SHA in str(exc.value)
    assert _leftovers(dest) == []


def test_trust_on_first_use_lock_file(server, tmp_path):
    lock = tmp_path / "checksums.lock.yaml"
    dest = tmp_path / "dl" / "teacher.pkl"
    url = server.url("/teacher.pkl")
    fetch(url, dest, lock_file=lock, progress=False, timeout=10)
    entry = yaml.safe_load(lock.read_text())[url]
    assert entry["sha256"] == SHA and entry["size"] == len(DATA)
    assert lock.read_text().startswith("# sha256 pins")
    assert LockFile(lock).get(url) == SHA
    # a later download is verified against the recorded pin: the server now serves other bytes
    dest.unlink()
    server.files["/teacher.pkl"] = DATA[:-1] + bytes([DATA[-1] ^ 1])
    with pytest.raises(DownloadError, match=f"checksum mismatch.*{lock.name}"):
        fetch(url, dest, lock_file=lock, progress=False, timeout=10)
    assert _leftovers(dest) == []
    assert yaml.safe_load(lock.read_text())[url]["sha256"] == SHA  # the pin is not overwritten
    # an existing file that no longer matches its pin is replaced by a verified download
    server.files["/teacher.pkl"] = DATA
    dest.write_bytes(b"corrupted")
    fetch(url, dest, lock_file=lock, progress=False, timeout=10)
    assert dest.read_bytes() == DATA
    # a configured pin that contradicts the lock file is an error before any download
    with pytest.raises(DownloadError, match="disagrees"):
        fetch(url, tmp_path / "x.pkl", sha256="1" * 64, lock_file=lock, progress=False)


def test_truncated_download_then_resume(server, tmp_path):
    dest = tmp_path / "teacher.pkl"
    url = server.url("/teacher.pkl")
    server.modes["/teacher.pkl"] = "truncate"
    with pytest.raises(DownloadError, match="cut off") as exc:
        fetch(url, dest, sha256=SHA, lock_file=None, progress=False, timeout=10)
    assert "resume" in str(exc.value)
    assert not dest.exists()
    part = tmp_path / "teacher.pkl.part"
    got = part.stat().st_size
    assert 0 < got < len(DATA) and part.read_bytes() == DATA[:got]
    # the rerun asks only for the rest (HTTP Range) and ends verified and whole
    server.modes["/teacher.pkl"] = "ok"
    fetch(url, dest, sha256=SHA, lock_file=None, progress=False, timeout=10)
    assert server.requests[-1] == ("/teacher.pkl", f"bytes={got}-")
    assert dest.read_bytes() == DATA and _leftovers(dest) == ["teacher.pkl"]


def test_resume_when_the_server_ignores_ranges(server, tmp_path):
    dest = tmp_path / "teacher.pkl"
    (tmp_path / "teacher.pkl.part").write_bytes(DATA[:1000])
    server.modes["/teacher.pkl"] = "norange"
    fetch(server.url("/teacher.pkl"), dest, sha256=SHA, lock_file=None, progress=False, timeout=10)
    assert dest.read_bytes() == DATA and _leftovers(dest) == ["teacher.pkl"]


def test_complete_part_file_is_verified(server, tmp_path):
    dest = tmp_path / "teacher.pkl"
    (tmp_path / "teacher.pkl.part").write_bytes(DATA)  # a run killed between download and rename
    fetch(server.url("/teacher.pkl"), dest, sha256=SHA, lock_file=None, progress=False, timeout=10)
    assert dest.read_bytes() == DATA and server.requests[-1][1] == f"bytes={len(DATA)}-"


@pytest.mark.parametrize("mode,code", [("404", 404), ("500", 500)])
def test_http_errors(server, tmp_path, mode, code):
    dest = tmp_path / "teacher.pkl"
    server.modes["/teacher.pkl"] = mode
    with pytest.raises(DownloadError, match=f"HTTP {code}"):
        fetch(server.url("/teacher.pkl"), dest, sha256=SHA, lock_file=tmp_path / "lock.yaml", progress=False,
              timeout=10)
    assert _leftovers(dest) == []


def test_unreachable_host_and_bad_pins(tmp_path):
    with pytest.raises(DownloadError, match="failed"):
        fetch("http://127.0.0.1:9/none.bin", tmp_path / "none.bin", lock_file=None, progress=False, timeout=3)
    assert not (tmp_path / "none.bin").exists()
    with pytest.raises(DownloadError, match="not a sha256"):
        fetch("http://127.0.0.1:9/none.bin", tmp_path / "none.bin", sha256="abc", lock_file=None, progress=False)
    bad_lock = tmp_path / "lock.yaml"
    bad_lock.write_text("- not a mapping\n")
    with pytest.raises(DownloadError, match="must map URLs"):
        fetch("http://127.0.0.1:9/none.bin", tmp_path / "none.bin", lock_file=bad_lock, progress=False)


def test_sha256_file(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(DATA)
    assert sha256_file(p, chunk=4096) == SHA


def test_local_copy_instead_of_a_download(server, tmp_path):
    """A configured local copy is used as it is (never fetched), checked against its pin when one is given;
    without one, the file is fetched to dest."""
    local, dest, url = tmp_path / "copy.pkl", tmp_path / "out" / "teacher.pkl", server.url("/teacher.pkl")
    local.write_bytes(DATA)
    assert fetch_or_local(url, SHA, local, dest, lock_file=None, progress=False) == local
    assert fetch_or_local(url, None, str(local), dest, lock_file=None, progress=False) == local
    assert server.requests == [] and not dest.exists()
    with pytest.raises(MCTError, match="does not match its configured sha256"):
        fetch_or_local(url, "0" * 64, local, dest, lock_file=None, progress=False)
    with pytest.raises(MCTError, match="does not exist"):
        fetch_or_local(url, SHA, tmp_path / "missing.pkl", dest, lock_file=None, progress=False)
    assert fetch_or_local(url, SHA, None, dest, lock_file=None, progress=False) == dest
    assert dest.read_bytes() == DATA


def test_file_name_and_atomic_link(tmp_path):
    assert file_name("https://host/a/b/imagenet-64x64.npz?x=1") == "imagenet-64x64.npz"
    with pytest.raises(ConfigError, match="cannot name a file"):
        file_name("https://host/")
    a, b, link = tmp_path / "a", tmp_path / "b", tmp_path / "teacher" / "checkpoint.pt"
    a.write_text("a")
    b.write_text("b")
    link_atomically(link, a)
    link_atomically(link, b)  # replaces the existing link
    assert link.read_text() == "b" and os.readlink(link) == str(b)
    assert sorted(p.name for p in link.parent.iterdir()) == ["checkpoint.pt"]
