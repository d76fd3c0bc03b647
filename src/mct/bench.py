"""``mct bench``: sampling speed, EM overhead and peak memory of the configured networks.

For each benchmark asked for (default: every one in the config) this writes
``<results_dir>/bench/<bench>.json``. The networks are built from the benchmark's own
config section; the trained weights under ``results/`` are used where they exist (the
teacher's checkpoint, the generator EMA and student score of ``runs/<variant>/checkpoint.pt``),
random weights of the same architecture otherwise. Speed does not depend on the weights;
``weights`` says which were measured. Benchmarks this module cannot measure on the device at
hand get a file with ``skipped`` (the reason) and no measurements: the ImageNet networks are
measured only on a GPU, the text-conditioned benchmarks not at all.

Timing: ``torch.set_num_threads(num_threads)`` first (recorded), ``warmup`` untimed calls,
then ``repeats`` timed repetitions, each looping the operation until it has run for at least
``min_seconds`` (GPU work is synchronised before the clock is read); the operations of one
measurement are timed round-robin (one repetition of each in turn) so that a change of machine
load hits them alike, and the median over repetitions is reported.

Keys of ``<bench>.json`` (times in milliseconds per call on one batch unless named otherwise):

- ``bench``, ``variant`` (whose run checkpoint is looked for), ``device`` ('cpu' or 'cuda'),
  ``device_name``, ``cpu_count``, ``num_threads``, ``torch``, ``batch_size``, ``repeats``,
  ``warmup``, ``min_seconds``, ``timing`` (the protocol above, in words), ``wall_seconds``
  (the whole measurement of this benchmark).
- ``weights``: ``{teacher, generator, student}``, each ``"trained: <path>"``, ``"random"`` or
  (the toy's exact teacher) ``"analytic"``.
- ``networks``: ``teacher_params``, ``generator_params``, ``student_params``,
  ``data_shape``, ``same_network`` (the generator is the teacher's architecture, so one
  student step costs one teacher evaluation and the speed-up target applies),
  ``teacher_passes_per_nfe`` (2 under classifier-free guidance, else 1).
- ``sampling``: ``student`` ``{name, role, nfe: 1, images_per_s, ms_per_batch, batch_size}``;
  ``teacher``: one record per teacher NFE ``{name, role, sampler: 'heun', nfe, measured_nfe,
  steps, images_per_s, ms_per_batch, batch_size, speedup (student images/s over teacher's),
  nfe_ratio (nfe / 1), speedup_over_nfe_ratio, target_met}``; ``target``
  ('speed-up >= 0.9 x NFE ratio'), ``target_applies`` (= ``networks.same_network``),
  ``all_targets_met``.
- ``em_overhead``: ``K``, ``gamma_z``, ``reparam``, ``score_updates``, ``passes_ms`` (each
  network pass timed alone: ``teacher_forward``, ``student_forward``, ``generator_vjp``
  (forward with graph + backward to z; 0 when gamma_z = 0), ``m_step`` (generator forward,
  surrogate, backward, Adam step), ``score_step`` (one student-score DSM update: a generator
  sample, forward, backward, Adam step)), ``passes_count`` (how many of each one iteration
  runs: K, K, K or 0, 1, score_updates), ``passes_sum_ms`` (the weighted sum of the medians),
  ``iteration_ms`` (median time per iteration of :func:`mct.distill.trainer.distill` itself,
  read off its own train log over ``iteration_windows`` windows of ``log_every`` iterations
  after one warm-up window; logging and all checks included), ``overhead_ratio`` (the median
  over windows of a window's time per iteration over the weighted sum of the passes timed
  just before and after it, in a round run from the loop's ``evaluate`` hook and taken out of
  the window's time: each window is compared with passes timed under the same machine load),
  ``overhead_ratio_range`` (its smallest and largest value over the windows), ``target``
  (1.10), ``target_met``.
- ``memory``: ``method`` (how it was measured, in words), ``batch_sizes`` (the two batches),
  ``per_sample_bytes`` and ``peak_bytes`` (at the larger batch) for ``student_sampling``,
  ``teacher_sampling`` (one Heun run at the largest NFE, ``teacher_nfe``) and ``em_iteration``
  (one trainer-like iteration);
  per sample is the slope of the peak between the two batch sizes, so that fixed costs
  (weights, optimiser state, allocator slack) cancel (clamped at 0: tiny networks are below
  the resolution of the method). On CPU: the process's peak resident set
  (VmHWM) after resetting it (``/proc/self/clear_refs``) and returning freed memory to the
  system (``malloc_trim``); on CUDA: ``torch.cuda.max_memory_allocated`` above the allocation
  before. ``null`` where the method is unavailable (``unavailable`` says why).
- ``skipped``: present only when nothing was measured, with the reason.
"""

from __future__ import annotations

import copy
import ctypes
import dataclasses
import gc
import logging
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from .config import from_dict
from .errors import ConfigError, MCTError

log = logging.getLogger(__name__)

SPEEDUP_TARGET = 0.9   # student speed-up >= 0.9 x the NFE ratio
OVERHEAD_TARGET = 1.10  # one EM iteration <= 1.10 x the sum of its network passes
DEFAULT_NFE = (7, 15, 35)
GPU_ONLY = ("imagenet64", "imagenet128")
NOT_MEASURED = ("digits-text", "sd15")


@dataclass(frozen=True)
class BenchConfig:
    """The ``bench`` section: how ``mct bench`` measures.

    batch_size: batch of every measurement (0: each benchmark's training batch size).
    repeats / warmup / min_seconds: timed repetitions (median reported), untimed calls first,
    and the least duration of one repetition (short operations are looped). num_threads: torch
    CPU threads (0: leave torch's default); recorded. nfe: teacher NFEs measured with EDM's Heun
    sampler (odd; empty: the benchmark's own evaluation NFEs, else 7, 15, 35). memory: measure
    peak memory per sample. variant: whose run checkpoint supplies trained weights (else the
    first variant that has one)."""

    batch_size: int = 0
    repeats: int = 7
    warmup: int = 2
    min_seconds: float = 0.05
    num_threads: int = 1
    nfe: tuple[int, ...] = ()
    memory: bool = True
    variant: str = "mct"

    def __post_init__(self):
        if self.batch_size < 0:
            raise ConfigError(f"batch_size must be >= 0 (0: the benchmark's), got {self.batch_size}")
        if self.batch_size == 1 and self.memory:
            raise ConfigError("batch_size must be >= 2 to measure memory per sample (or memory: false)")
        if self.repeats < 1 or self.warmup < 0:
            raise ConfigError(f"repeats must be >= 1 and warmup >= 0, got {self.repeats}, {self.warmup}")
        if self.min_seconds < 0:
            raise ConfigError(f"min_seconds must be >= 0, got {self.min_seconds}")
        if self.num_threads < 0:
            raise ConfigError(f"num_threads must be >= 0, got {self.num_threads}")
        for n in self.nfe:
            if n < 1 or n % 2 == 0:
                raise ConfigError(f"nfe entries must be odd and >= 1 (Heun costs 2N - 1), got {n}")


def parse_bench_config(raw: dict) -> BenchConfig:
    return from_dict(BenchConfig, (raw or {}).get("bench") or {}, "config.bench")


@dataclass
class Setup:
    """Everything measured for one benchmark, built from its config."""

    bench: str
    variant: Optional[str]
    teacher: Callable
    generator: Any  # nn.Module, train mode
    student: Any    # nn.Module, train mode
    sample_latents: Callable
    em: Any         # EMConfig
    train: Any      # TrainConfig
    nfe: tuple[int, ...]
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    weights: dict = field(default_factory=dict)
    same_network: bool = False
    teacher_passes_per_nfe: int = 1
    teacher_params: int = 0


# ----------------------------------------------------------------------------- timing

def _sync(device) -> Callable[[], None]:
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


# ----------------------------------------------------------------------------- memory

def _proc_status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0]) * 1024
    return out


class _PeakMemory:
    """Peak memory above the current level while ``fn`` runs (see the module doc)."""

    def __init__(self, device):
        import torch

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
        self._torch = torch

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


# ----------------------------------------------------------------------------- set-ups

def _params(module) -> int:
    return int(sum(p.numel() for p in module.parameters())) if hasattr(module, "parameters") else 0


def _pick_variant(bench, section: dict, ctx, wanted: str) -> tuple[Optional[str], Optional[Path]]:
    """The variant whose config is measured and its run checkpoint (None when it has none)."""
    variants = bench.variant_names(section)
    order = ([wanted] if wanted in variants else []) + [v for v in variants if v != wanted]
    for v in order:
        path = ctx.run_dir(bench.name, v) / "checkpoint.pt"
        if path.is_file():
            return v, path
    return (order[0] if order else None), None


def _load_run(path: Optional[Path], generator, student) -> tuple[str, str]:
    from .distill.trainer import load_checkpoint, load_state_strict

    if path is None:
        return "random", "random"
    state = load_checkpoint(path)
    load_state_strict(generator, state["generator_ema"], "generator", path)
    load_state_strict(student, state["student"], "student score", path)
    return f"trained: {path}", f"trained: {path}"


def _setup_toy2d(name: str, section: dict, ctx, bcfg: BenchConfig) -> Setup:
    import torch

    from .benchmarks.base import get_benchmark

    bench = get_benchmark(name)
    variant, run_ckpt = _pick_variant(bench, section, ctx, bcfg.variant)
    cfg = bench.parse(section, variant)
    device = torch.device(ctx.device)
    torch.manual_seed(cfg.train.seed)
    teacher = bench.teacher(cfg).to(device)
    gen, student = bench.networks(cfg)
    w_gen, w_student = _load_run(run_ckpt, gen, student)

    def sample_latents(n, rng):
        return torch.randn(n, 2, generator=rng, device=device), None

    return Setup(name, variant, teacher, gen.to(device), student.to(device), sample_latents, cfg.em, cfg.train,
                 bcfg.nfe or DEFAULT_NFE, weights={"teacher": "analytic", "generator": w_gen, "student": w_student},
                 same_network=False, teacher_params=0)


def _setup_digits(name: str, section: dict, ctx, bcfg: BenchConfig) -> Setup:
    import torch

    from .benchmarks.base import get_benchmark
    from .diffusion.edm import EDMPrecond
    from .nets.onestep import OneStepGenerator
    from .nets.unet import build_unet
    from .teachers.trained import load_trained_teacher

    bench = get_benchmark(name)
    variant, run_ckpt = _pick_variant(bench, section, ctx, bcfg.variant)
    cfg = bench.parse(section, variant)
    split = bench.data(cfg)
    c, h, _ = split.train.shape
    k = split.train.num_classes
    device = torch.device(ctx.device)
    torch.manual_seed(cfg.train.seed)
    tpath = bench.teacher_dir(ctx) / "checkpoint.pt"
    if tpath.is_file():
        net, _ = load_trained_teacher(tpath, "ema", device=device,
                                      expect={"img_resolution": h, "in_channels": c, "label_dim": k})
        w_teacher = f"trained: {tpath}"
    else:
        net = EDMPrecond(build_unet(cfg.teacher.net, img_resolution=h, in_channels=c, label_dim=k),
                         sigma_data=cfg.teacher.sigma_data).to(device).eval().requires_grad_(False)
        w_teacher = "random"
    gen = OneStepGenerator(copy.deepcopy(net), cfg.sigma_g).requires_grad_(True)
    student = copy.deepcopy(net).requires_grad_(True)
    w_gen, w_student = _load_run(run_ckpt, gen, student)
    guided = cfg.teacher.guidance != 1.0
    return Setup(name, variant, bench.guided(cfg, net, k), gen.to(device), student.to(device),
                 bench.latent_sampler(cfg, split, device), cfg.em, cfg.train, bcfg.nfe or tuple(cfg.teacher.eval_nfe),
                 cfg.teacher.sigma_min, cfg.teacher.sigma_max, cfg.teacher.rho,
                 weights={"teacher": w_teacher, "generator": w_gen, "student": w_student},
                 same_network=True, teacher_passes_per_nfe=2 if guided else 1, teacher_params=_params(net))


def _setup_imagenet(name: str, section: dict, ctx, bcfg: BenchConfig, arch: Optional[dict] = None) -> Setup:
    """The paper-scale network (GPU). ``arch`` overrides the architecture record (tests)."""
    import torch

    from .benchmarks.base import get_benchmark
    from .benchmarks.imagenet import build_network

    bench = get_benchmark(name)
    variant, run_ckpt = _pick_variant(bench, section, ctx, bcfg.variant)
    cfg = bench.parse(section, variant)
    device = torch.device(ctx.device)
    torch.manual_seed(cfg.train.seed)
    tfile = bench.teacher_file(cfg, ctx)
    if arch is None and tfile.is_file():
        teacher, arch = bench.load_teacher(cfg, ctx)
        w_teacher = f"trained: {tfile}"
    else:
        if arch is None:
            if cfg.teacher.kind == "edm-pickle":
                from .nets.dhariwal import IMAGENET64_KWARGS

                kw = dict(IMAGENET64_KWARGS, img_resolution=cfg.resolution, img_channels=cfg.channels,
                          label_dim=cfg.num_classes)
                arch = {"kind": "edm-pickle", "init_kwargs": kw}
            else:
                arch = {"kind": "openai-adm", "flags": dict(cfg.teacher.adm_flags, image_size=cfg.resolution)}
        teacher = build_network(arch).to(device).eval().requires_grad_(False)
        w_teacher = "random"
    gen, student = bench._networks(cfg, teacher, arch)
    w_gen, w_student = _load_run(run_ckpt, gen, student)
    shape = (cfg.channels, cfg.resolution, cfg.resolution)

    def sample_latents(n, rng):
        z = torch.randn((n, *shape), generator=rng, device=device)
        return z, torch.randint(0, cfg.num_classes, (n,), generator=rng, device=device)

    return Setup(name, variant, teacher, gen.to(device).train(), student.to(device).train(), sample_latents,
                 cfg.em, cfg.train, bcfg.nfe or tuple(cfg.eval.teacher_nfe), cfg.eval.sigma_min, cfg.eval.sigma_max,
                 cfg.eval.rho, weights={"teacher": w_teacher, "generator": w_gen, "student": w_student},
                 same_network=True, teacher_params=_params(teacher))


SETUPS = {"toy2d": _setup_toy2d, "digits": _setup_digits, "mnist": _setup_digits,
          "imagenet64": _setup_imagenet, "imagenet128": _setup_imagenet}


# ----------------------------------------------------------------------------- measurements

def _measure_sampling(s: Setup, batch: int, bcfg: BenchConfig, device, sync) -> dict:
    import torch

    from .diffusion.edm import karras_sigmas
    from .diffusion.samplers import CountingDenoiser, heun_steps_for_nfe, sample_heun

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


class _Passes:
    """The network passes of one EM iteration, each runnable alone, on private copies."""

    def __init__(self, s: Setup, batch: int, device):
        import torch

        from .diffusion.edm import sample_sigma

        self.s, self.batch, self.device = s, batch, device
        self.gen = copy.deepcopy(s.generator).train()
        self.student = copy.deepcopy(s.student).train()
        tr = s.train
        self.opt_g = torch.optim.Adam(self.gen.parameters(), lr=tr.lr_g, betas=(tr.beta1, tr.beta2))
        self.opt_s = torch.optim.Adam(self.student.parameters(), lr=tr.lr_s, betas=(tr.beta1, tr.beta2))
        self.rng = torch.Generator(device=device).manual_seed(tr.seed)
        self.z, self.cond = s.sample_latents(batch, self.rng)
        self.sigma = sample_sigma(batch, tr.sigma, self.rng, device)
        with torch.no_grad():
            self.x = self.gen(self.z, self.cond) + self.sigma.reshape((-1,) + (1,) * (self.z.ndim - 1)) * \
                torch.randn(self.z.shape, generator=self.rng, device=device)
        self.v = torch.randn(self.z.shape, generator=self.rng, device=device)

    def teacher_forward(self):
        import torch

        with torch.no_grad():
            return self.s.teacher(self.x, self.sigma, self.cond)

    def student_forward(self):
        import torch

        with torch.no_grad():
            return self.student(self.x, self.sigma, self.cond)

    def generator_vjp(self):
        import torch

        z = self.z.detach().requires_grad_(True)
        with torch.enable_grad():
            out = self.gen(z, self.cond)
            return torch.autograd.grad(out, z, grad_outputs=self.v)[0]

    def m_step(self):
        from .distill.em import m_step_loss

        self.opt_g.zero_grad(set_to_none=True)
        loss = m_step_loss(self.gen(self.z, self.cond), self.v, self.sigma, self.s.em)
        loss.backward()
        self.opt_g.step()

    def score_step(self):
        """The trainer's student-score update (mct.distill.trainer.distill's score_step)."""
        import torch

        from .diffusion.edm import edm_loss, sample_sigma

        tr = self.s.train
        z, c = self.s.sample_latents(self.batch, self.rng)
        with torch.no_grad():
            x = self.gen(z, c)
        sig = sample_sigma(x.shape[0], tr.score_sigma or tr.sigma, self.rng, self.device)
        noise = torch.randn(x.shape, generator=self.rng, device=self.device)
        loss = edm_loss(self.student, x, sig, c, noise, tr.sigma_data)
        self.opt_s.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_s.step()

    def iteration(self):
        """One trainer-like EM iteration (for the memory measurement)."""
        import torch

        from .diffusion.edm import sample_sigma
        from .distill.em import em_generator_loss
        from .distill.trainer import ema_update

        s = self.s
        z0, cond = s.sample_latents(self.batch, self.rng)
        eps0 = torch.randn(z0.shape, generator=self.rng, device=self.device)
        sigma = sample_sigma(self.batch, s.train.sigma, self.rng, self.device)
        loss, _, _ = em_generator_loss(self.gen, s.teacher, self.student, z0, eps0, sigma, cond, s.em, self.rng)
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_g.step()
        if not hasattr(self, "ema"):
            self.ema = copy.deepcopy(self.gen).eval().requires_grad_(False)
        ema_update(self.ema, self.gen, s.train.ema_decay)
        for _ in range(s.train.score_updates):
            self.score_step()


def _measure_em(s: Setup, batch: int, bcfg: BenchConfig, device, sync) -> dict:
    """The training loop itself (:func:`mct.distill.trainer.distill`), timed from its own log
    over windows of ``log_every`` iterations, against the network passes timed alone in a
    round between every two windows (from the loop's ``evaluate`` hook, whose time is taken
    out of the window), so that each window is compared with passes timed under the same load."""
    from .distill.trainer import distill, load_checkpoint

    p = _Passes(s, batch, device)
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
        rows = load_checkpoint(Path(tmp) / "run" / "checkpoint.pt")["log"]
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


def _measure_memory(s: Setup, batch: int, device) -> dict:
    import torch

    from .diffusion.edm import karras_sigmas
    from .diffusion.samplers import heun_steps_for_nfe, sample_heun

    meter = _PeakMemory(device)
    out: dict[str, Any] = {"method": meter.method}
    if meter.unavailable:
        out.update(per_sample_bytes=None, peak_bytes=None, unavailable=meter.unavailable)
        return out
    small = max(1, batch // 2)
    out["batch_sizes"] = [small, batch]
    nfe = max(s.nfe)
    sigmas = karras_sigmas(heun_steps_for_nfe(nfe), s.sigma_min, s.sigma_max, s.rho, device=device)
    passes = {n: _Passes(s, n, device) for n in (small, batch)}

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


def _device_name(device) -> str:
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
    """All measurements of one benchmark (see the module doc for the keys)."""
    import torch

    t0 = time.perf_counter()
    batch = bcfg.batch_size or s.train.batch_size
    sync = _sync(device)
    out = {"bench": s.bench, "variant": s.variant, "device": "cuda" if str(device).startswith("cuda") else "cpu",
           "device_name": _device_name(device), "cpu_count": os.cpu_count(), "num_threads": torch.get_num_threads(),
           "torch": torch.__version__, "batch_size": batch, "repeats": bcfg.repeats, "warmup": bcfg.warmup,
           "min_seconds": bcfg.min_seconds,
           "timing": "median over repeats of round-robin timed loops after warm-up (time.perf_counter"
                     + (", CUDA synchronised" if str(device).startswith("cuda") else "") + ")",
           "weights": dict(s.weights),
           "networks": {"teacher_params": s.teacher_params, "generator_params": _params(s.generator),
                        "student_params": _params(s.student), "data_shape": None,
                        "same_network": s.same_network, "teacher_passes_per_nfe": s.teacher_passes_per_nfe}}
    z, _ = s.sample_latents(1, torch.Generator(device=device).manual_seed(0))
    out["networks"]["data_shape"] = list(z.shape[1:])
    log.info("bench %s: sampling (batch %d, NFE %s)", s.bench, batch, list(s.nfe))
    out["sampling"] = _measure_sampling(s, batch, bcfg, device, sync)
    log.info("bench %s: EM overhead (K = %d)", s.bench, s.em.num_steps)
    out["em_overhead"] = _measure_em(s, batch, bcfg, device, sync)
    if bcfg.memory:
        log.info("bench %s: peak memory", s.bench)
        out["memory"] = _measure_memory(s, batch, device)
    out["wall_seconds"] = round(time.perf_counter() - t0, 3)
    return out


def run_bench(raw: dict, ctx, benches: Optional[list[str]] = None) -> dict[str, Path]:
    """``mct bench``: measure each benchmark in ``benches`` (default: all configured) and write
    ``<results_dir>/bench/<bench>.json``. Returns {bench: path}."""
    import torch

    from .benchmarks.base import get_benchmark, section_of
    from .io import ensure_writable_dir, write_json

    bcfg = parse_bench_config(raw)
    names = list(dict.fromkeys(benches)) if benches else list((raw.get("benchmarks") or {}))
    if not names:
        raise MCTError("mct bench: no benchmarks configured")
    sections = {}
    for name in names:
        bench = get_benchmark(name)  # unknown names fail here, before any work
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
            elif name not in SETUPS:
                result = {"bench": name, "device": device.type,
                          "skipped": "text-conditioned benchmark: not measured by mct bench"}
            else:
                setup = SETUPS[name](name, sections[name], ctx, bcfg)
                result = measure(setup, bcfg, device)
            written[name] = write_json(out_dir / f"{name}.json", result)
            if "skipped" in result:
                log.info("bench %s: skipped (%s)", name, result["skipped"])
            else:
                _log_summary(result)
    finally:
        torch.set_num_threads(threads_before)
    return written


def _log_summary(r: dict) -> None:
    s, e = r["sampling"], r["em_overhead"]
    ups = ", ".join(f"NFE {t['nfe']}: x{t['speedup']:.1f} ({t['speedup_over_nfe_ratio']:.2f} of the NFE ratio)"
                    for t in s["teacher"])
    log.info("bench %s: student %.0f images/s; speed-up %s; EM iteration %.2f ms = %.3f x its passes",
             r["bench"], s["student"]["images_per_s"], ups, e["iteration_ms"], e["overhead_ratio"])
