"""The measurements of ``mct bench`` (sampling speed, EM overhead, memory) and the command.
The EM iteration measured is the trainer's own: :func:`mct.distill.trainer.distill` timed
from its log, and :class:`mct.distill.step.DistillStep` (what distill() calls) for the
student-score pass and the memory of one iteration."""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Optional

from ..errors import MCTError
from .config import GPU_ONLY, OVERHEAD_TARGET, SPEEDUP_TARGET, BenchConfig, parse_bench_config
from .memory import measure_memory
from ..benchmarks.base import family_of
from .setups import SETUPS, Setup, count_params
from .timing import calibrate_loops, device_sync, time_round, time_round_robin

log = logging.getLogger(__name__)


def measure_sampling(s: Setup, batch: int, bcfg: BenchConfig, device, sync) -> dict:
    """One-step sampling against the teacher's Heun sampler at each NFE (counted, not assumed)."""
    import torch

    from ..diffusion.edm import karras_sigmas
    from ..diffusion.samplers import CountingDenoiser, heun_steps_for_nfe, sample_heun

    rng = torch.Generator(device=device).manual_seed(0)
    z, cond = s.sample_latents(batch, rng)
    gen = s.generator
    was_training = gen.training
    gen.eval()
    ops = {"student": lambda: gen(z, cond)}
    plans = {}
    for nfe in s.nfe:
        steps = heun_steps_for_nfe(nfe)
        sigmas = karras_sigmas(steps, s.sigma_min, s.sigma_max, s.rho, device=device)
        counter = CountingDenoiser(s.teacher)
        x_t = z * sigmas[0]
        with torch.no_grad():
            sample_heun(counter, x_t, sigmas, cond)
        plans[nfe] = (steps, counter.nfe)
        ops[f"teacher_nfe{nfe}"] = (lambda x_t=x_t, sigmas=sigmas: sample_heun(s.teacher, x_t, sigmas, cond))
    with torch.no_grad():
        t = time_round_robin(ops, repeats=bcfg.repeats, warmup=bcfg.warmup, min_seconds=bcfg.min_seconds, sync=sync)
    gen.train(was_training)
    student_ips = batch / t["student"]["median_s"]
    out = {"student": {"name": "student (one step)", "role": "student", "nfe": 1, "images_per_s": round(student_ips, 2),
                       "ms_per_batch": round(1e3 * t["student"]["median_s"], 4), "batch_size": batch},
           "teacher": [], "target": f"speed-up >= {SPEEDUP_TARGET} x NFE ratio", "target_applies": s.same_network}
    for nfe in s.nfe:
        steps, measured = plans[nfe]
        sec = t[f"teacher_nfe{nfe}"]["median_s"]
        speedup = student_ips / (batch / sec)
        out["teacher"].append({
            "name": f"teacher Heun NFE {nfe}", "role": "teacher", "sampler": "heun", "nfe": nfe, "measured_nfe": measured,
            "steps": steps, "images_per_s": round(batch / sec, 2), "ms_per_batch": round(1e3 * sec, 4),
            "batch_size": batch, "speedup": round(speedup, 3), "nfe_ratio": nfe,
            "speedup_over_nfe_ratio": round(speedup / nfe, 3), "target_met": bool(speedup >= SPEEDUP_TARGET * nfe)})
    out["all_targets_met"] = all(r["target_met"] for r in out["teacher"])
    return out


class Passes:
    """The trainer's step (:class:`~mct.distill.step.DistillStep`) on private copies of the
    networks, with batch ``batch``, and the network passes of one iteration, each runnable
    alone on fixed inputs (drawn from a generator of their own, so that the step's random
    stream is the one distill() starts with)."""

    def __init__(self, s: Setup, batch: int, device):
        import torch

        from ..diffusion.edm import sample_sigma
        from ..distill.step import DistillStep

        self.s, self.batch, self.device = s, batch, device
        train = dataclasses.replace(s.train, batch_size=batch)
        self.step = DistillStep(teacher=s.teacher, generator=copy.deepcopy(s.generator).train(),
                                student=copy.deepcopy(s.student).train(), sample_latents=s.sample_latents, em=s.em,
                                train=train, device=device)
        self.gen, self.student, self.iterations = self.step.generator, self.step.student, 0
        rng = torch.Generator(device=device).manual_seed(train.seed + 1)
        self.z, self.cond = s.sample_latents(batch, rng)
        self.sigma = sample_sigma(batch, train.sigma, rng, device)
        with torch.no_grad():
            self.x = self.step.gen_fwd(self.z, self.cond) + self.sigma.reshape((-1,) + (1,) * (self.z.ndim - 1)) * \
                torch.randn(self.z.shape, generator=rng, device=device)
        self.v = torch.randn(self.z.shape, generator=rng, device=device)

    def teacher_forward(self):
        import torch

        with torch.no_grad():
            return self.step.teacher_fwd(self.x, self.sigma, self.cond)

    def student_forward(self):
        import torch

        with torch.no_grad():
            return self.step.stu_fwd(self.x, self.sigma, self.cond)

    def generator_vjp(self):
        """Generator forward with its graph and the backward to z (one E-step VJP)."""
        import torch

        z = self.z.detach().requires_grad_(True)
        with torch.enable_grad():
            out = self.step.gen_fwd(z, self.cond)
            return torch.autograd.grad(out, z, grad_outputs=self.v)[0]

    def m_step(self):
        """Generator forward, the M-step surrogate, backward and the Adam step, at fixed z."""
        from ..distill.em import m_step_loss

        self.step.opt_g.zero_grad(set_to_none=True)
        loss = m_step_loss(self.step.gen_train(self.z, self.cond), self.v, self.sigma, self.s.em)
        loss.backward()
        self.step.opt_g.step()

    def score_step(self):
        """The trainer's student-score update itself (DistillStep.score_step)."""
        self.step.score_step()

    def iteration(self):
        """One iteration of the trainer's step (DistillStep.__call__)."""
        self.step(self.iterations)
        self.iterations += 1


def measure_em(s: Setup, batch: int, bcfg: BenchConfig, device, sync) -> dict:
    """The training loop itself (:func:`mct.distill.trainer.distill`), timed from its own log
    over windows of ``log_every`` iterations, against the network passes timed alone in a
    round between every two windows (from the loop's ``evaluate`` hook, whose time is taken
    out of the window), so that each window is compared with passes timed under the same load."""
    from ..checkpoint import read_for_eval
    from ..distill.trainer import distill

    p = Passes(s, batch, device)
    em, tr = s.em, s.train
    k = em.num_steps
    ops = {"teacher_forward": p.teacher_forward, "student_forward": p.student_forward, "m_step": p.m_step,
           "score_step": p.score_step}
    if em.gamma_z > 0:
        ops["generator_vjp"] = p.generator_vjp
    counts = {"teacher_forward": k, "student_forward": k, "generator_vjp": k if em.gamma_z > 0 else 0,
              "m_step": 1, "score_step": tr.score_updates}
    for fn in ops.values():
        for _ in range(bcfg.warmup):
            fn()
    loops = calibrate_loops(ops, bcfg.min_seconds, sync)
    rounds: dict[int, dict[str, float]] = {}
    hook_seconds: dict[int, float] = {}

    def between_windows(ema, it: int) -> dict:
        t0 = time.perf_counter()
        rounds[it] = time_round(ops, loops, sync)
        hook_seconds[it] = time.perf_counter() - t0
        return {}

    windows = max(3, bcfg.repeats)
    iterations = tr.log_every * (windows + 1)  # the first log_every iterations: warm-up
    train = dataclasses.replace(tr, iterations=iterations, batch_size=batch, checkpoint_every=iterations,
                                score_warmup=0, eval_every=tr.log_every)
    with tempfile.TemporaryDirectory(prefix="mct-bench-") as tmp:
        distill(Path(tmp) / "run", teacher=s.teacher, generator=copy.deepcopy(s.generator).train(),
                student=copy.deepcopy(s.student).train(), sample_latents=s.sample_latents, em=em, train=train,
                resume="no", evaluate=between_windows, device=device, progress=False)
        rows = read_for_eval(Path(tmp) / "run" / "checkpoint.pt", weights=())["log"]
    marks = [(int(r["iteration"]), float(r["seconds"])) for r in rows]
    per_iteration, ratios = [], []
    for (i0, t0), (i1, t1) in zip(marks, marks[1:]):
        if i1 <= i0 or i0 not in rounds or i1 not in rounds:
            continue
        it_s = (t1 - t0 - hook_seconds[i0]) / (i1 - i0)
        around = {n: 0.5 * (rounds[i0][n] + rounds[i1][n]) for n in ops}
        per_iteration.append(it_s)
        ratios.append(it_s / sum(counts[n] * around[n] for n in ops))
    if not ratios:
        raise MCTError("bench: the training loop logged too few rows to time an iteration")
    passes = {n: statistics.median(r[n] for r in rounds.values()) if n in ops else 0.0 for n in counts}
    total = sum(counts[n] * passes[n] for n in counts)
    ratio = statistics.median(ratios)
    return {"K": k, "gamma_z": em.gamma_z, "reparam": em.reparam, "score_updates": tr.score_updates,
            "batch_size": batch, "passes_ms": {n: round(1e3 * v, 4) for n, v in passes.items()},
            "passes_count": counts, "passes_sum_ms": round(1e3 * total, 4),
            "iteration_ms": round(1e3 * statistics.median(per_iteration), 4), "iteration_windows": len(ratios),
            "log_every": tr.log_every, "overhead_ratio": round(ratio, 4),
            "overhead_ratio_range": [round(min(ratios), 4), round(max(ratios), 4)],
            "target": OVERHEAD_TARGET, "target_met": bool(ratio <= OVERHEAD_TARGET)}


def device_name(device) -> str:
    import torch

    if str(device).startswith("cuda"):
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return name


def measure(s: Setup, bcfg: BenchConfig, device) -> dict:
    """All measurements of one benchmark (see mct.bench for the keys)."""
    import torch

    t0 = time.perf_counter()
    batch = bcfg.batch_size or s.train.batch_size
    sync = device_sync(device)
    out = {"bench": s.bench, "variant": s.variant, "device": "cuda" if str(device).startswith("cuda") else "cpu",
           "device_name": device_name(device), "cpu_count": os.cpu_count(), "num_threads": torch.get_num_threads(),
           "torch": torch.__version__, "batch_size": batch, "repeats": bcfg.repeats, "warmup": bcfg.warmup,
           "min_seconds": bcfg.min_seconds,
           "timing": "median over repeats of round-robin timed loops after warm-up (time.perf_counter"
                     + (", CUDA synchronised" if str(device).startswith("cuda") else "") + ")",
           "weights": dict(s.weights),
           "networks": {"teacher_params": s.teacher_params, "generator_params": count_params(s.generator),
                        "student_params": count_params(s.student), "data_shape": None,
                        "same_network": s.same_network, "teacher_passes_per_nfe": s.teacher_passes_per_nfe}}
    z, _ = s.sample_latents(1, torch.Generator(device=device).manual_seed(0))
    out["networks"]["data_shape"] = list(z.shape[1:])
    log.info("bench %s: sampling (batch %d, NFE %s)", s.bench, batch, list(s.nfe))
    out["sampling"] = measure_sampling(s, batch, bcfg, device, sync)
    log.info("bench %s: EM overhead (K = %d)", s.bench, s.em.num_steps)
    out["em_overhead"] = measure_em(s, batch, bcfg, device, sync)
    if bcfg.memory:
        log.info("bench %s: peak memory", s.bench)
        out["memory"] = measure_memory(s, batch, device)
    out["wall_seconds"] = round(time.perf_counter() - t0, 3)
    return out


def run_bench(raw: dict, ctx, benches: Optional[list[str]] = None) -> dict[str, Path]:
    """``mct bench``: measure each benchmark in ``benches`` (default: all configured) and write
    ``<results_dir>/bench/<bench>.json``. Returns {bench: path}."""
    import torch

    from ..benchmarks.base import get_benchmark, section_of
    from ..io import ensure_writable_dir
    from ..records import write_record

    bcfg = parse_bench_config(raw)
    names = list(dict.fromkeys(benches)) if benches else list((raw.get("benchmarks") or {}))
    if not names:
        raise MCTError("mct bench: no benchmarks configured")
    sections, bench_of = {}, {}
    for name in names:
        bench_of[name] = bench = get_benchmark(name)  # unknown names fail here, before any work
        sections[name] = section_of(raw, name)
        bench.parse(sections[name])
    device = torch.device(ctx.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MCTError(f"device {ctx.device} was asked for, but CUDA is not available here")
    out_dir = ensure_writable_dir(Path(ctx.results_dir) / "bench")
    threads_before = torch.get_num_threads()
    if bcfg.num_threads and device.type == "cpu":
        torch.set_num_threads(bcfg.num_threads)
    written = {}
    try:
        for name in names:
            if name in GPU_ONLY and device.type != "cuda":
                result = {"bench": name, "device": "cpu", "skipped": "the paper-scale network is measured on a GPU only "
                          "(run `mct bench --device cuda`)"}
            elif family_of(name) not in SETUPS:
                result = {"bench": name, "device": device.type,
                          "skipped": "text-conditioned benchmark: not measured by mct bench"}
            else:
                setup = SETUPS[family_of(name)](name, sections[name], ctx, bcfg)
                result = measure(setup, bcfg, device)
            written[name] = write_record(out_dir / f"{name}.json", bench_record(result, sections[name], bench_of[name]))
            if "skipped" in result:
                log.info("bench %s: skipped (%s)", name, result["skipped"])
            else:
                _log_summary(result)
    finally:
        torch.set_num_threads(threads_before)
    return written


def bench_record(r: dict, section: dict, bench):
    """``measure``'s result (or a skip) as the :class:`mct.records.BenchRecord` the report reads."""
    from ..config import config_hash, to_dict
    from ..records import BenchRecord, EMOverhead, Memory, Speed, provenance

    def speed(d: dict) -> Speed:
        return Speed(name=d["name"], nfe=int(d["nfe"]), images_per_s=float(d["images_per_s"]),
                     ms_per_batch=float(d["ms_per_batch"]), batch_size=int(d["batch_size"]),
                     measured_nfe=d.get("measured_nfe"), speedup=d.get("speedup"), target_met=d.get("target_met"))

    prov = provenance(config_hash(to_dict(bench.parse(section))))
    if "skipped" in r:
        return BenchRecord(bench=r["bench"], device=r["device"], provenance=prov, skipped=r["skipped"])
    s, e, m = r["sampling"], r["em_overhead"], r["memory"]
    em = EMOverhead(K=int(e["K"]), iteration_ms=float(e["iteration_ms"]), passes_sum_ms=float(e["passes_sum_ms"]),
                    overhead_ratio=float(e["overhead_ratio"]), passes_ms=dict(e.get("passes_ms") or {}),
                    passes_count=dict(e.get("passes_count") or {}), gamma_z=e.get("gamma_z"), reparam=e.get("reparam"),
                    overhead_ratio_range=list(e.get("overhead_ratio_range") or []), target=e.get("target"),
                    target_met=e.get("target_met"))
    mem = Memory(method=m.get("method", ""), per_sample_bytes=dict(m.get("per_sample_bytes") or {}),
                 peak_bytes=dict(m.get("peak_bytes") or {}), batch_sizes=list(m.get("batch_sizes") or []),
                 unavailable=m.get("unavailable"))
    return BenchRecord(bench=r["bench"], device=r["device"], provenance=prov, variant=r.get("variant"),
                       device_name=r.get("device_name"), batch_size=r.get("batch_size"),
                       num_threads=r.get("num_threads"), timing=r.get("timing"),
                       same_network=(r.get("networks") or {}).get("same_network"), weights=dict(r.get("weights") or {}),
                       student=speed(s["student"]), teacher=[speed(t) for t in s["teacher"]], em=em, memory=mem,
                       wall_seconds=r.get("wall_seconds"))


def _log_summary(r: dict) -> None:
    s, e = r["sampling"], r["em_overhead"]
    ups = ", ".join(f"NFE {t['nfe']}: x{t['speedup']:.1f} ({t['speedup_over_nfe_ratio']:.2f} of the NFE ratio)"
                    for t in s["teacher"])
    log.info("bench %s: student %.0f images/s; speed-up %s; EM iteration %.2f ms = %.3f x its passes",
             r["bench"], s["student"]["images_per_s"], ups, e["iteration_ms"], e["overhead_ratio"])
