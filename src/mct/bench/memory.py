"""Peak memory of ``mct bench``: above the level before the call, per sample as the slope
between two batch sizes (fixed costs cancel). CPU: the peak resident set (VmHWM) after
resetting it; CUDA: torch's allocator peak."""

from __future__ import annotations

import ctypes
import gc
from typing import Any, Callable


def _proc_status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0]) * 1024
    return out


class PeakMemory:
    """Peak memory above the current level while ``fn`` runs (``unavailable`` says why not)."""

    def __init__(self, device):
        self.device = device
        self.cuda = str(device).startswith("cuda")
        self.unavailable = None
        if self.cuda:
            self.method = ("torch.cuda.max_memory_allocated after torch.cuda.reset_peak_memory_stats, "
                           "minus torch.cuda.memory_allocated before the call")
            return
        self.method = ("CPU: peak resident set size (VmHWM of /proc/self/status) after resetting it by writing 5 "
                       "to /proc/self/clear_refs and returning freed heap memory with malloc_trim(0), minus the "
                       "resident set before the call; per sample: slope between two batch sizes")
        try:
            self._libc = ctypes.CDLL("libc.so.6")
            self._reset()
            _proc_status()["VmHWM"]
        except (OSError, KeyError, AttributeError) as exc:
            self.unavailable = f"{type(exc).__name__}: {exc}"

    def _reset(self) -> int:
        gc.collect()
        self._libc.malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _proc_status()["VmRSS"]

    def peak(self, fn: Callable[[], Any]) -> int:
        if self.cuda:
            import torch

            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            before = torch.cuda.memory_allocated(self.device)
            fn()
            torch.cuda.synchronize(self.device)
            return int(torch.cuda.max_memory_allocated(self.device) - before)
        before = self._reset()
        fn()
        return int(_proc_status()["VmHWM"] - before)


def measure_memory(s, batch: int, device) -> dict:
    """Peak and per-sample memory of one-step sampling, the teacher's Heun sampling at the
    largest NFE, and one iteration of the trainer's own step (mct.distill.step.DistillStep)."""
    import torch

    from ..diffusion.edm import karras_sigmas
    from ..diffusion.samplers import heun_steps_for_nfe, sample_heun
    from .run import Passes

    meter = PeakMemory(device)
    out: dict[str, Any] = {"method": meter.method}
    if meter.unavailable:
        out.update(per_sample_bytes=None, peak_bytes=None, unavailable=meter.unavailable)
        return out
    small = max(1, batch // 2)
    out["batch_sizes"] = [small, batch]
    nfe = max(s.nfe)
    sigmas = karras_sigmas(heun_steps_for_nfe(nfe), s.sigma_min, s.sigma_max, s.rho, device=device)
    passes = {n: Passes(s, n, device) for n in (small, batch)}

    def student(n):
        p = passes[n]
        with torch.no_grad():
            p.gen.eval()
            p.gen(p.z, p.cond)
            p.gen.train()

    def teacher(n):
        p = passes[n]
        with torch.no_grad():
            sample_heun(s.teacher, p.z * sigmas[0], sigmas, p.cond)

    def iteration(n):
        passes[n].iteration()

    per, peak = {}, {}
    for name, fn in (("student_sampling", student), ("teacher_sampling", teacher), ("em_iteration", iteration)):
        for n in (small, batch):
            fn(n)  # warm-up: optimiser state, lazily built kernels and caches
        p_small = min(meter.peak(lambda: fn(small)) for _ in range(2))
        p_big = min(meter.peak(lambda: fn(batch)) for _ in range(2))
        peak[name] = p_big
        slope = (p_big - p_small) / (batch - small) if batch > small else p_big / batch
        per[name] = max(0, round(slope))  # a negative slope is noise below the method's resolution
    out.update(per_sample_bytes=per, peak_bytes=peak, teacher_nfe=nfe)
    return out
