"""mct.checkpoint: which checkpoint a run resumes from, rotation, temp-file cleanup, the final
checkpoint.pt (the last numbered one, not re-read), and the evaluation reader that leaves the
optimiser states on disk."""

from __future__ import annotations

import ctypes
import mmap
import os
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

import mct.checkpoint as C
from mct.checkpoint import CheckpointIO, load_state_strict, read_checkpoint, read_for_eval
from mct.distill.em import EMConfig
from mct.distill.trainer import TrainConfig, distill
from mct.errors import CheckpointError
from mct.nets.mlp import MLPGenerator, mlp_denoiser
from mct.teachers import ring_gmm


def state(it: int, config_hash: str = "a", **extra) -> dict:
    net = nn.Linear(2, 2)
    with torch.no_grad():
        net.weight.fill_(it)
    return {"format": C.DISTILL_FORMAT, "iteration": it, "config_hash": config_hash, "config": {},
            "generator": net.state_dict(), "generator_ema": net.state_dict(), "student": net.state_dict(),
            "opt_g": {"state": {}, "param_groups": []}, "opt_s": {"state": {}, "param_groups": []},
            "rng": torch.Generator().get_state(), "torch_rng": torch.get_rng_state(), "log": [{"iteration": it}],
            "eval_log": [], "seconds": 1.0, "world_size": 1, **extra}


def test_resume_takes_the_newest_checkpoint_of_this_config_and_names_the_others(tmp_path):
    io = CheckpointIO(tmp_path, keep=10)
    for it, h in ((1, "a"), (2, "a"), (3, "b"), (4, "a")):
        io.save(it, state(it, h))
    io.path(4).write_bytes(io.path(4).read_bytes()[:200])  # truncated by a crash
    io.path(5).write_bytes(b"not a checkpoint")
    got, path, skipped = io.load_latest("a")
    assert path == io.path(2) and got["iteration"] == 2 and float(got["generator"]["weight"][0, 0]) == 2.0
    assert skipped == [io.path(5), io.path(4), io.path(3)]  # newest first: unreadable, unreadable, other config
    got, path, skipped = io.load_latest("c")
    assert got is None and path is None and len(skipped) == 5
    assert CheckpointIO(tmp_path / "empty").load_latest("a") == (None, None, [])


def test_rotation_keeps_the_newest_by_iteration(tmp_path):
    io = CheckpointIO(tmp_path, keep=2)
    for it in (5, 10, 15, 20):
        io.save(it, state(it))
    assert io.list() == [io.path(15), io.path(20)]
    (io.folder / "ckpt-notanumber.pt").write_bytes(b"")  # not one of ours: never listed, never deleted
    io.save(25, state(25))
    assert io.list() == [io.path(20), io.path(25)] and (io.folder / "ckpt-notanumber.pt").exists()
    with pytest.raises(ValueError, match="format"):
        io.save(30, {"format": "mct-teacher-v1"})


def test_temp_files_of_a_killed_run_are_removed(tmp_path):
    io = CheckpointIO(tmp_path)
    io.save(1, state(1))
    stray = [io.folder / ".ckpt-00000002.pt.x1y2.tmp", tmp_path / ".checkpoint.pt.a1b2.tmp"]
    for p in stray:
        p.write_bytes(b"half")
    keep = tmp_path / "notes.tmp"  # not a hidden temp of mct.io.atomic_path
    keep.write_bytes(b"")
    assert sorted(io.remove_temp_files()) == sorted(stray)
    assert not any(p.exists() for p in stray) and keep.exists() and io.list() == [io.path(1)]


def test_read_errors_are_one_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="is a directory"):
        read_checkpoint(tmp_path)
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=r"cannot be read \(truncated or not a checkpoint\)"):
        read_checkpoint(tmp_path / "bad.pt")
    torch.save({"format": "mct-teacher-v1"}, tmp_path / "t.pt")
    with pytest.raises(CheckpointError, match="not an mct-distill-v1 checkpoint"):
        read_checkpoint(tmp_path / "t.pt")
    assert read_checkpoint(tmp_path / "t.pt", expected_format=None) == {"format": "mct-teacher-v1"}
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="not a dict"):
        read_checkpoint(tmp_path / "list.pt", expected_format=None)
    with pytest.raises(CheckpointError, match="the generator weights do not fit this architecture"):
        load_state_strict(nn.Linear(3, 2), nn.Linear(2, 2).state_dict(), "generator", "x.pt")
    with pytest.raises(CheckpointError, match="the student weights are missing"):
        load_state_strict(nn.Linear(2, 2), None, "student", "x.pt")


def _tiny_run(run_dir: Path, iterations: int = 5, **train) -> dict:
    torch.manual_seed(0)

    def latents(n, rng):
        return torch.randn(n, 2, generator=rng), None

    return distill(run_dir, teacher=ring_gmm(), generator=MLPGenerator(2, 8, 2), student=mlp_denoiser(2, 8, 2),
                   sample_latents=latents, em=EMConfig(num_steps=2),
                   train=TrainConfig(iterations=iterations, batch_size=8, score_updates=1, checkpoint_every=2,
                                     log_every=1, **train), progress=False)


def test_final_checkpoint_is_the_last_numbered_one_not_reread(tmp_path, monkeypatch):
    _tiny_run(tmp_path / "run")
    io = CheckpointIO(tmp_path / "run")
    assert io.list() == [io.path(4), io.path(5)]
    assert io.final.read_bytes() == io.path(5).read_bytes()
    assert os.path.samefile(io.final, io.path(5))  # a hard link: no second copy on disk

    # publishing never loads the checkpoint (a paper-scale one would need its size in RAM again)
    def no_load(*args, **kwargs):
        raise AssertionError("publish must not torch.load the checkpoint")

    monkeypatch.setattr(C.torch, "load", no_load)
    io.final.unlink()
    io.publish()
    assert os.path.samefile(io.final, io.path(5))
    # where hard links are refused: an atomic copy of the file, byte for byte
    monkeypatch.setattr(C.os, "link", lambda *a: (_ for _ in ()).throw(OSError("links not supported")))
    io.publish(io.path(4))
    assert io.final.read_bytes() == io.path(4).read_bytes() and not os.path.samefile(io.final, io.path(4))
    assert not list(io.run_dir.glob(".*.tmp"))


def test_eval_reader_returns_weights_and_records_but_no_training_state(tmp_path):
    _tiny_run(tmp_path / "run")
    path = tmp_path / "run" / "checkpoint.pt"
    full = read_checkpoint(path)
    ev = read_for_eval(path)
    assert set(ev) == set(C.EVAL_KEYS) | {"generator_ema"}  # no optimiser, RNG, raw generator or student
    assert ev["iteration"] == 5 and ev["config_hash"] == full["config_hash"] and ev["log"] == full["log"]
    for name, t in full["generator_ema"].items():
        assert torch.equal(ev["generator_ema"][name], t)
    both = read_for_eval(path, weights=("generator", "student"))
    assert set(both) == set(C.EVAL_KEYS) | {"generator", "student"}
    assert read_for_eval(path, weights=())["log"] == full["log"]
    with pytest.raises(ValueError, match="opt_g"):
        read_for_eval(path, weights=("opt_g",))
    with pytest.raises(CheckpointError, match="does not exist"):
        read_for_eval(tmp_path / "nope.pt")


def _resident_fraction(path: Path, offset: int, length: int) -> float:
    """Fraction of the file's pages in [offset, offset + length) that are in the page cache."""
    page = mmap.PAGESIZE
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    size = path.stat().st_size
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        vec = (ctypes.c_ubyte * ((size + page - 1) // page))()
        if libc.mincore(addr, size, vec) != 0:
            pytest.skip(f"mincore failed: errno {ctypes.get_errno()}")
        libc.munmap(addr, size)
    finally:
        os.close(fd)
    first, last = offset // page + 1, (offset + length) // page - 1  # whole pages inside the range
    return sum(vec[first:last]) / max(1, last - first)


def _evict(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="needs posix_fadvise and mincore (Linux)")
def test_eval_reader_leaves_the_optimiser_state_on_disk(tmp_path):
    """A checkpoint whose optimiser state is 16 MB: evaluation's reader does not read those
    bytes from the file (they stay out of the page cache), a full read does."""
    path = tmp_path / "ckpt.pt"
    big = torch.full((4 * 2**20,), 0.5)  # 16 MB
    torch.save(state(7, opt_g={"state": {0: {"exp_avg": big}}, "param_groups": []}), path)
    (rec,) = [i for i in zipfile.ZipFile(path).infolist() if i.file_size == big.numel() * 4]
    offset, length = rec.header_offset, rec.file_size
    _evict(path)
    if _resident_fraction(path, offset, length) > 0.05:
        pytest.skip("this file system keeps the file in memory (page cache not evictable)")
    ev = read_for_eval(path)
    assert ev["iteration"] == 7 and "opt_g" not in ev
    assert _resident_fraction(path, offset, length) < 0.25  # at most read-ahead around the records read
    _evict(path)
    assert float(read_checkpoint(path)["opt_g"]["state"][0]["exp_avg"][0]) == 0.5
    assert _resident_fraction(path, offset, length) > 0.9  # the method sees a full read
