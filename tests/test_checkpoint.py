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


def test_finishing_a_resumed_run_reads_the_state_once_and_links_the_final_file(tmp_path, monkeypatch):
    """The only full read of a checkpoint is the resume itself; finishing (the final checkpoint.pt)
    reads nothing again: it is a hard link of the last numbered checkpoint."""
    torch.manual_seed(0)
    run = tmp_path / "run"

    def latents(n, rng):
        return torch.randn(n, 2, generator=rng), None

    def go(stop_after=None):
        return distill(run, teacher=ring_gmm(), generator=MLPGenerator(2, 8, 2), student=mlp_denoiser(2, 8, 2),
                       sample_latents=latents, em=EMConfig(num_steps=2),
                       train=TrainConfig(iterations=4, batch_size=8, score_updates=1, checkpoint_every=2, log_every=1),
                       progress=False, stop_after=stop_after)

    go(stop_after=2)
    assert not (run / "checkpoint.pt").exists()
    loads = []
    real_load = torch.load
    monkeypatch.setattr(C.torch, "load", lambda *a, **k: loads.append(k.get("mmap", False)) or real_load(*a, **k))
    go()
    io = CheckpointIO(run)
    assert loads == [False]  # the resume from ckpt 2; none when publishing ckpt 4
    assert os.path.samefile(io.final, io.path(4))


def test_checkpoint_bytes_is_the_file_size(tmp_path):
    """checkpoint_bytes (7 copies: generator, EMA, Adam's 2 moments; student, its 2 moments) against a
    real run's file: it accounts for every tensor byte, the rest is a few KB of records and logs."""
    torch.manual_seed(0)
    gen, student = MLPGenerator(2, 256, 2), mlp_denoiser(2, 192, 2)
    est = C.checkpoint_bytes(C.module_bytes(gen), C.module_bytes(student))
    g_params = sum(p.numel() for p in gen.parameters()) * 4
    s_params = sum(p.numel() for p in student.parameters()) * 4
    assert est >= 4 * g_params + 3 * s_params and est > 1_000_000

    def latents(n, rng):
        return torch.randn(n, 2, generator=rng), None

    distill(tmp_path / "run", teacher=ring_gmm(), generator=gen, student=student, sample_latents=latents,
            em=EMConfig(num_steps=1), train=TrainConfig(iterations=1, batch_size=4, score_updates=1, log_every=1),
            progress=False)
    size = (tmp_path / "run" / "checkpoint.pt").stat().st_size
    assert est <= size <= est + 64_000, (est, size)
    # on the meta device: the same numbers with nothing allocated
    with torch.device("meta"):
        meta_gen = MLPGenerator(2, 256, 2)
    assert C.module_bytes(meta_gen) == C.module_bytes(gen)


def _max_rss_after(code: str) -> int:
    """Peak RSS (KB) of a fresh interpreter that runs ``code`` after importing torch and mct."""
    import subprocess
    import sys

    # VmHWM: the peak of this process's own memory (ru_maxrss would carry over the forking parent's)
    prog = ("import torch, mct.checkpoint as C\n" + code + "\nprint([ln.split()[1] for ln in "
            "open('/proc/self/status') if ln.startswith('VmHWM')][0])")
    env = {**os.environ, "PYTHONPATH": str(Path(C.__file__).parents[1])}
    out = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, env=env, check=True, timeout=300)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc (Linux)")
def test_eval_reader_does_not_materialise_the_optimiser_state(tmp_path):
    """A checkpoint whose optimiser state is 256 MB: evaluation's reader peaks at about the process's
    baseline (the 4 MB of weights), a full read at the baseline plus the 256 MB."""
    path = tmp_path / "big.pt"
    big = torch.zeros(64 * 2**20)  # 256 MB of Adam moment
    ema = {"w": torch.ones(2**20)}  # 4 MB of EMA weights
    torch.save(state(3, opt_g={"state": {0: {"exp_avg": big}}, "param_groups": []}, generator_ema=ema), path)
    del big
    base = _max_rss_after("pass")
    ev = _max_rss_after(f"s = C.read_for_eval({str(path)!r}); assert set(s) == set(C.EVAL_KEYS) | {{'generator_ema'}}")
    full = _max_rss_after(f"s = C.read_checkpoint({str(path)!r}); assert s['opt_g']['state'][0]['exp_avg'].numel() > 0")
    mb = 1024
    print(f"peak RSS over the baseline: read_for_eval {(ev - base) / mb:.0f} MB, full read {(full - base) / mb:.0f} MB")
    assert full - base > 200 * mb  # the measurement sees a full read
    assert ev - base < 40 * mb, (base, ev, full)


def test_paper_configs_disk_table_is_current_and_config_check_prints_it(capsys, monkeypatch):
    """The docs table of checkpoint disk is the output of its command (not hand-typed); EDM-64's
    count is EDM's 295,899,267 parameters; `mct config check` prints one line per benchmark."""
    from mct.cli import main
    from mct.pipeline.disk import GB, bench_disk, markdown_table
    from mct.root import load_root

    repo = Path(__file__).resolve().parents[1]
    configs = ["config/imagenet64.yaml", "config/imagenet128.yaml", "config/sd15.yaml"]
    monkeypatch.chdir(repo)
    table = markdown_table(configs)
    docs = (repo / "docs" / "benchmarks.md").read_text()
    committed = docs.split("<!-- disk-table: begin -->\n")[1].split("<!-- disk-table: end -->")[0]
    assert committed == table, "docs/benchmarks.md disk table is stale: python -m mct.pipeline.disk --markdown " + " ".join(configs)
    _, raw = load_root(repo / "config" / "imagenet64.yaml")
    d = bench_disk("imagenet64", raw["benchmarks"]["imagenet64"])
    assert d.params == 295_899_267 and d.variants == 6 and d.kept == 3
    assert 7 * 4 * d.params <= d.checkpoint_bytes < 7 * 4 * d.params + 10_000  # 7 copies (+ a few buffers)
    assert d.total_bytes == 6 * 3 * d.checkpoint_bytes and 149 < d.total_bytes / GB < 150
    assert main(["config", "check", "--config", str(repo / "config" / "default.yaml")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("ok (toy2d, digits, digits-text)") and len(out) == 4
    assert all("not estimated" in line for line in out[1:])


def test_config_check_names_a_network_it_cannot_size_in_one_line(tmp_path):
    """adm_flags that no ADM network fits: the config check still answers, naming why there is no estimate."""
    from mct.pipeline.disk import disk_lines

    raw = {"benchmarks": {"imagenet128": {"teacher": {"kind": "openai-adm", "adm_flags": {"num_channels": 100}},
                                          "variants": {"mct": {}}}}}
    [line] = disk_lines(raw)
    assert line.startswith("imagenet128: disk not estimated") and "num_groups" in line and "\n" not in line
