"""Timing protocol of ``mct bench``: warm-up, loops calibrated to a least duration, round-robin
repetitions (a change of machine load hits every operation alike), medians."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable


def device_sync(device) -> Callable[[], None]:
    """A function that waits for the device's queued work (a no-op on CPU)."""
    import torch

    if str(device).startswith("cuda"):
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def calibrate_loops(ops: dict[str, Callable[[], Any]], min_seconds: float,
                    sync: Callable[[], None] = lambda: None) -> dict[str, int]:
    """How many calls of each op make one timed repetition last at least ``min_seconds``."""
    loops = {}
    for name, fn in ops.items():
        n = 1
        while True:
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            sync()
            dt = time.perf_counter() - t0
            if dt >= min_seconds or n >= 4096:
                break
            n = min(4096, max(2 * n, int(n * 1.2 * min_seconds / max(dt, 1e-9))))
        loops[name] = n
    return loops


def time_round(ops: dict[str, Callable[[], Any]], loops: dict[str, int],
               sync: Callable[[], None] = lambda: None) -> dict[str, float]:
    """One repetition: every op in turn, ``loops[name]`` calls each; seconds per call."""
    out = {}
    for name, fn in ops.items():
        n = loops[name]
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        sync()
        out[name] = (time.perf_counter() - t0) / n
    return out


def time_round_robin(ops: dict[str, Callable[[], Any]], *, repeats: int, warmup: int, min_seconds: float,
                     sync: Callable[[], None] = lambda: None) -> dict[str, dict]:
    """Median seconds per call of each op: ``warmup`` untimed calls each, then ``repeats``
    rounds, each timing every op in turn over a loop of at least ``min_seconds``."""
    for fn in ops.values():
        for _ in range(warmup):
            fn()
    sync()
    loops = calibrate_loops(ops, min_seconds, sync)
    samples: dict[str, list[float]] = {name: [] for name in ops}
    for _ in range(repeats):
        for name, sec in time_round(ops, loops, sync).items():
            samples[name].append(sec)
    return {name: {"median_s": statistics.median(s), "min_s": min(s), "loop": loops[name], "samples": len(s)}
            for name, s in samples.items()}
