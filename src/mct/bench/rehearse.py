"""``mct rehearse``: one (or a few) iterations of a configured paper-scale run at full network size
on the device present, and the cost of the real run projected from what was measured
(docs/benchmarks.md#paper-scale-cost).

The iteration is the trainer's own (:class:`mct.distill.step.DistillStep`) on the benchmark's
own networks (``Benchmark.build``). Without a teacher file, random weights are written in the
teacher's exact format by :mod:`mct.teachers.fixtures` under ``<results_dir>/rehearsal/`` and read
back through the real loader (the file is removed once loaded). Measured on that iteration:
network calls by kind (hooks), FLOPs by kind (torch's FlopCounterMode), wall time, peak memory;
then the activation memory one generator pass keeps for its backward, with and without
activation checkpointing, at two batch sizes; then the evaluation passes (one-step sample,
one teacher call, the SD VAE decode). Everything else (GPU hours, the largest per-GPU batch in
80 GB, the evaluation time) is computed from those numbers by the formulas stated in the record."""

from __future__ import annotations

import gc
import logging
import math
import os
import platform
import resource
import shutil
import statistics
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional

from ..errors import MCTError
from ..pipeline.plan import PAPER_BENCHES, USABLE_FRACTION  # one list and one memory share for rehearse and plan
from .setups import count_params

log = logging.getLogger(__name__)

PEAK_TFLOPS = {"H100-80GB": 989.0, "A100-80GB": 312.0}  # dense bf16 tensor-core peak (H100 SXM, A100 SXM)
GPU_BYTES = 80 * 2**30
DEFAULT_UTILISATION = 0.4
CHECKPOINTING = ("config", "on", "off", "both")
REHEARSAL_PROMPTS = ("a photograph of an astronaut riding a horse", "a bowl of fruit on a wooden table",
                     "a red bus driving down a city street", "a cat sleeping on a sofa")


@dataclass
class Built:
    """A benchmark's networks as its ``build`` made them, and what the rehearsal needs around them."""

    teacher: Any
    generator: Any
    student: Any
    sample_latents: Callable
    cfg: Any
    weights: str
    sd: Any = None  # the Stable Diffusion pieces (VAE decode, text encoder)
    notes: list = field(default_factory=list)


def _mem_available() -> Optional[int]:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _bytes_of(module, grads: bool = False) -> int:
    if grads:
        return int(sum(p.grad.numel() * p.grad.element_size() for p in module.parameters() if p.grad is not None))
    return int(sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers())))


def set_checkpointing(module, on: bool) -> None:
    """Activation checkpointing of every paper-scale network inside ``module``: MCT's U-Nets
    (``checkpointing``) and diffusers' (``enable_gradient_checkpointing``)."""
    for m in module.modules():
        if hasattr(m, "checkpointing") and isinstance(getattr(m, "checkpointing"), bool):
            m.checkpointing = on
        if hasattr(m, "enable_gradient_checkpointing") and hasattr(m, "disable_gradient_checkpointing") and \
                getattr(m, "_supports_gradient_checkpointing", False):
            (m.enable_gradient_checkpointing if on else m.disable_gradient_checkpointing)()


# ----------------------------------------------------------------------------- building

def _build_imagenet(bench, cfg, ctx, tmp: Path, arch: Optional[dict]) -> Built:
    import torch

    from ..teachers.fixtures import write_adm_pt, write_edm_pickle

    tfile = bench.teacher_file(cfg, ctx)
    if tfile.is_file() and arch is None:
        return _imagenet_parts(bench, cfg, ctx, f"the teacher file {tfile}")
    tmp.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.train.seed)
    if cfg.teacher.kind == "edm-pickle":
        from ..nets.dhariwal import IMAGENET64_KWARGS, DhariwalDenoiser

        kw = dict(IMAGENET64_KWARGS, img_resolution=cfg.resolution, img_channels=cfg.channels,
                  label_dim=cfg.num_classes, **(arch or {}))
        net = DhariwalDenoiser.from_init_kwargs(kw)
        path = write_edm_pickle(tmp / "teacher.pkl", net)
        what = "an EDM network pickle (mct.teachers.fixtures.write_edm_pickle) read by mct.teachers.edm_pickle"
    else:
        from ..teachers import registry

        flags = {"image_size": cfg.resolution, **cfg.teacher.adm_flags, **(arch or {})}
        cfg = replace(cfg, teacher=replace(cfg.teacher, adm_flags=flags))
        net = registry.rebuild({"kind": "openai-adm", "flags": flags})
        path = write_adm_pt(tmp / "teacher.pt", net.eps_model.unet)
        what = "an OpenAI ADM state dict (mct.teachers.fixtures.write_adm_pt) read by mct.teachers.openai_adm"
    size = path.stat().st_size
    del net
    cfg = replace(cfg, teacher=replace(cfg.teacher, path=str(path), sha256=None))
    built = _imagenet_parts(bench, cfg, ctx, f"random, {size / 1e9:.2f} GB file in the teacher's format: {what}")
    path.unlink()
    return built


def _imagenet_parts(bench, cfg, ctx, weights: str) -> Built:
    parts = bench.build(cfg, ctx)
    return Built(parts.teacher, parts.generator, parts.student, bench.latent_sampler(cfg, ctx), cfg, weights)


def _build_sd(bench, cfg, ctx, tmp: Path, arch: Optional[dict], teacher_precision: Optional[str]) -> Built:
    import torch

    from ..teachers import fixtures

    notes = []
    source = Path(bench.teacher_source(cfg, ctx))
    if not source.is_dir() or arch is not None:
        a = arch or {}
        fp16 = cfg.teacher.variant == "fp16"
        fixtures.write_sd(tmp, a.get("unet", fixtures.SD15_UNET), a.get("vae", fixtures.SD15_VAE),
                          a.get("text", fixtures.SD15_TEXT), num_merges=a.get("merges", fixtures.SD15_MERGES),
                          seed=cfg.train.seed, variant=cfg.teacher.variant,
                          dtype=torch.float16 if fp16 else torch.float32)
        weights = ("random, a Stable Diffusion directory in the diffusers layout (mct.teachers.fixtures.write_sd, "
                   f"{'fp16' if fp16 else 'fp32'} files) read by mct.teachers.sd.load_sd_teacher")
        cfg = replace(cfg, teacher=replace(cfg.teacher, model=str(tmp), local_files_only=True, revision=None))
    else:
        weights = f"the teacher directory {source}"
    if teacher_precision:
        cfg = replace(cfg, teacher=replace(cfg.teacher, precision=teacher_precision))
    parts = bench.build(cfg, ctx)
    sd = bench.teacher(cfg, ctx)
    if Path(cfg.prompts.train).is_file():
        sample_latents = bench.latent_sampler(cfg, ctx)
    else:
        notes.append(f"prompts: {cfg.prompts.train} is not here; {len(REHEARSAL_PROMPTS)} fixed prompts stand in "
                     "(one text-encoder pass per batch either way)")
        device = torch.device(ctx.device)

        def sample_latents(n: int, rng):
            idx = torch.randint(0, len(REHEARSAL_PROMPTS), (n,), generator=rng, device=rng.device).tolist()
            cond = sd.encode([REHEARSAL_PROMPTS[i] for i in idx]).to(device)
            return torch.randn((n, *sd.latent_shape), generator=rng, device=device), cond
    return Built(parts.teacher, parts.generator, parts.student, sample_latents, cfg, weights, sd=sd, notes=notes)


# ----------------------------------------------------------------------------- the iteration

def _UNetLetGo(unet):
    """What SDTeacher still needs of its U-Net once the U-Net is let go: its config (latent shape)
    and its device (text encoding)."""
    import torch

    class LetGo(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = unet.config
            self.anchor = torch.nn.Parameter(torch.zeros(1, device=unet.device), requires_grad=False)

    return LetGo()


class _StatesCounted:
    """Stands in for Adam when its states are counted, not allocated: gradients are dropped after
    use (Adam's update is elementwise: no FLOPs the counter counts, and no network call)."""

    def __init__(self, params):
        self.params = list(params)

    def zero_grad(self, set_to_none: bool = True):
        for p in self.params:
            p.grad = None

    def step(self):
        self.zero_grad()


def expected_calls(em, train, text_encoder: bool = False) -> dict[str, int]:
    """Network calls of one DistillStep iteration, from the code (mct.distill.em.e_step and
    DistillStep.__call__ / score_step): K teacher and K student forwards in the E-step; the
    generator K times with a graph to z whose VJP follows (none when gamma_z = 0), then once with a
    graph to theta (the M-step's forward + backward); per student update (score_updates) one
    generator forward and one student forward + backward; sd15: one text-encoder pass per batch."""
    k, u = em.num_steps, train.score_updates
    calls = {"teacher_forward": k, "student_forward": k, "generator_forward_vjp": k if em.gamma_z > 0 else 0,
             "generator_forward_backward": 1, "generator_forward": u, "student_forward_backward": u}
    if text_encoder:
        calls["text_encoder_forward"] = 1 + u
    return {key: v for key, v in calls.items() if v}


def run_iterations(built: Built, train, device, n: int, counted_states: bool) -> dict:
    """``n`` iterations of DistillStep; the first counted (calls, FLOPs by kind) and its peak memory."""
    import torch
    from ..distill.step import DistillStep
    from .instrument import CallCounter, flop_counter
    from .memory import PeakMemory, _proc_status

    step = DistillStep(teacher=built.teacher, generator=built.generator, student=built.student,
                       sample_latents=built.sample_latents, em=built.cfg.em, train=train, device=device)
    if counted_states:
        step.opt_g, step.opt_s = _StatesCounted(built.generator.parameters()), _StatesCounted(built.student.parameters())
        step.ema = built.generator  # the EMA's copy counted, not allocated (its update becomes a no-op)
    counter = CallCounter()
    for module, role in ((built.teacher, "teacher"), (built.generator, "generator"), (built.student, "student")):
        counter.attach(module, role)
    if built.sd is not None:
        counter.attach(built.sd.text_encoder, "text_encoder")
    seconds: list[float] = []
    flops: dict[str, Any] = {}

    def counted():
        with flop_counter() as mode:
            counter.start(mode)
            t0 = time.perf_counter()
            step(0)
            counter.stop()
            seconds.append(time.perf_counter() - t0)
            flops["total"] = sum(mode.flop_counts["Global"].values())

    meter = PeakMemory(device)
    peak = None if meter.unavailable else meter.peak(counted)
    if peak is None:
        counted()
    peak_rss = None
    if not meter.cuda and not meter.unavailable:
        peak_rss = _proc_status()["VmHWM"]
    elif meter.cuda:
        peak_rss = int(torch.cuda.max_memory_allocated(device))
    calls, backward, by_kind = dict(counter.calls), dict(counter.backward_calls), dict(counter.flops)
    by_kind_seconds = dict(counter.seconds)
    counter.detach()
    for it in range(1, n):
        t0 = time.perf_counter()
        step(it)
        if meter.cuda:
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - t0)
    out = {"calls": calls, "backward_calls": backward, "flops": int(flops["total"]), "by_kind": by_kind,
           "by_kind_seconds": by_kind_seconds,
           "seconds": seconds, "iteration_peak": peak, "peak_rss": peak_rss}
    if counted_states:
        out["grads_bytes"] = None
        out["optimizer_bytes"] = None
    else:
        out["grads_bytes"] = _bytes_of(built.generator, grads=True) + _bytes_of(built.student, grads=True)
        out["optimizer_bytes"] = int(sum(t.numel() * t.element_size() for opt in (step.opt_g, step.opt_s)
                                         for st in opt.state.values() for t in st.values()
                                         if torch.is_tensor(t) and t.dim() > 0))
        out["ema_bytes"] = _bytes_of(step.ema)
    del step
    return out


def activation_memory(built: Built, batches: tuple[int, int], device) -> dict:
    """Bytes one generator pass with its graph to theta (the M-step's) keeps alive for backward,
    with and without activation checkpointing, at two batch sizes (slope: per sample; intercept:
    fixed). A batch whose graph would not fit in the memory available here is skipped (then the
    per-sample number is the smaller batch's bytes over its size: an upper bound)."""
    import torch

    from .instrument import graph_bytes

    rng = torch.Generator(device=device).manual_seed(1)
    out: dict[str, Any] = {"per_sample": {}, "fixed": {}, "batches": {}, "skipped": []}
    gen = built.generator
    for name, on in (("none", False), ("checkpointed", True)):
        set_checkpointing(gen, on)
        got = {}
        for b in batches:
            if got:
                avail = _mem_available()
                prev_b, prev = next(iter(got.items()))
                need = prev * b / prev_b * 1.15
                if avail is not None and device.type == "cpu" and need > avail - 2 * 2**30:
                    out["skipped"].append(f"{name} at batch {b}: about {need / 2**30:.1f} GiB of activations, "
                                          f"{avail / 2**30:.1f} GiB available here")
                    continue
            z, c = built.sample_latents(b, rng)
            got[b] = graph_bytes(lambda: gen(z, c), modules=(gen,))
            del z, c
        bs = sorted(got)
        if len(bs) >= 2:
            slope = (got[bs[-1]] - got[bs[0]]) / (bs[-1] - bs[0])
            out["per_sample"][name] = max(0, round(slope))
            out["fixed"][name] = max(0, round(got[bs[0]] - slope * bs[0]))
        else:
            out["per_sample"][name] = round(got[bs[0]] / bs[0])
            out["fixed"][name] = 0
        out["batches"][name] = bs
    return out


def evaluation_passes(built: Built, batch: int, device) -> dict:
    """Measured: seconds and FLOPs of one one-step sample batch, of one teacher call (guided for
    sd15: both branches) and, for sd15, of the VAE decode of one batch of latents."""
    import torch

    from .instrument import counted_and_timed

    rng = torch.Generator(device=device).manual_seed(2)
    z, c = built.sample_latents(batch, rng)
    gen = built.generator
    gen.eval()
    out = {}
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    with torch.no_grad():
        out["generator_flops"], out["generator_seconds"] = counted_and_timed(lambda: gen(z, c), sync)
        sigma = torch.full((batch,), 1.0, device=device)
        x = z * 1.0
        out["teacher_call_flops"], out["teacher_call_seconds"] = counted_and_timed(
            lambda: built.teacher(x, sigma, c), sync)
        if built.sd is not None:
            lat = gen(z, c)
            out["decode_flops"], out["decode_seconds"] = counted_and_timed(
                lambda: built.sd.decode(lat, batch_size=batch), sync)
            out["image_size"] = int(8 * built.sd.latent_shape[-1])
    gen.train()
    return out


# ----------------------------------------------------------------------------- the record

def _gpu_hours(total_flop: float, utilisation: float) -> dict[str, float]:
    return {gpu: total_flop / (tf * 1e12 * utilisation) / 3600 for gpu, tf in PEAK_TFLOPS.items()}


def _per_pass(calls: dict, by_kind: dict, batch: int) -> dict[str, dict[str, int]]:
    names = {"teacher_forward": ("teacher", "forward"), "student_forward": ("student", "forward"),
             "student_forward_backward": ("student", "forward_backward"),
             "generator_forward": ("generator", "forward"), "generator_forward_vjp": ("generator", "forward_input_vjp"),
             "generator_forward_backward": ("generator", "forward_backward"),
             "text_encoder_forward": ("text_encoder", "forward")}
    out: dict[str, dict[str, int]] = {}
    for kind, (net, what) in names.items():
        if calls.get(kind):
            out.setdefault(net, {})[what] = round(by_kind.get(kind, 0) / calls[kind] / batch)
    return out


def _max_batch(fixed: int, per_sample: int) -> int:
    usable = USABLE_FRACTION * GPU_BYTES
    if per_sample <= 0:
        return 0
    return max(0, int((usable - fixed) // per_sample))


def projection(cfg, flops_per_sample: int, mem: dict, utilisation: float) -> dict:
    """The configured run's cost: FLOP, GPU hours at ``utilisation`` of the bf16 peak, and the
    largest per-GPU micro-batch that fits in 80 GB with and without activation checkpointing."""
    tr = cfg.train
    total = float(tr.iterations) * tr.batch_size * flops_per_sample
    weights = mem["params_total"] + mem["grads_bytes"] + mem["optimizer_bytes"]
    plan = {}
    for name in ("none", "checkpointed"):
        per, fixed = mem["act_per_sample"][name], mem["act_fixed"].get(name, 0)
        b = _max_batch(weights + fixed, per)
        b16 = _max_batch(weights + fixed // 2, per // 2)
        plan[name] = {"max_micro_batch": b, "max_micro_batch_bf16_activations": b16,
                      "gpus_without_accumulation": math.ceil(tr.batch_size / b) if b else None}
    return {
        "iterations": tr.iterations, "global_batch": tr.batch_size, "flops_per_sample_iteration": flops_per_sample,
        "total_flop": total, "utilisation": utilisation,
        "peak_tflops_bf16_dense": dict(PEAK_TFLOPS),
        "gpu_hours": {k: round(v, 3) for k, v in _gpu_hours(total, utilisation).items()},
        "formula_total_flop": "iterations x global batch x flops_per_sample.iteration",
        "formula_gpu_hours": "total_flop / (peak_tflops x 1e12 x utilisation) / 3600",
        "memory_per_gpu": {
            "gpu_bytes": GPU_BYTES, "usable_fraction": USABLE_FRACTION, "weights_grads_optimizer_bytes": weights,
            "formula": ("max_micro_batch = floor((usable_fraction x 80 GiB - (params of teacher, generator, EMA, "
                        "student + grads of generator and student + Adam's 2 moments of both + fixed activation "
                        "bytes)) / activation bytes per sample); activations as measured here in fp32; the "
                        "_bf16_activations variant halves them (computed, not measured)"),
            **plan},
    }


def evaluation(bench_name: str, cfg, passes: dict, per_pass: dict, batch: int, utilisation: float) -> dict:
    """Per-sample FLOPs and images/s of the one-step generator and of the teacher at its NFE
    (images/s of the teacher: computed from one measured call x NFE), and the projected time
    of the configured evaluation on each GPU at ``utilisation``."""
    sd = bench_name == "sd15"
    e = cfg.eval
    dec_f = passes.get("decode_flops", 0) / batch
    dec_s = passes.get("decode_seconds", 0.0)
    text_f = per_pass.get("text_encoder", {}).get("forward", 0)
    gen_f = passes["generator_flops"] / batch + dec_f + text_f
    gen_s = passes["generator_seconds"] + dec_s
    call_f, call_s = passes["teacher_call_flops"] / batch, passes["teacher_call_seconds"]
    if sd:
        nfes = [int(e.teacher_nfe)]
        n_gen, n_teacher = e.num_samples, e.teacher_num_samples or e.num_samples
    else:
        nfes = [int(n) for n in e.teacher_nfe]
        n_gen = e.num_samples * len(e.seeds)
        n_teacher = (e.teacher_num_samples or e.num_samples) * len(e.teacher_seeds)
    out = {
        "generator": {"nfe": 1, "flops_per_sample": round(gen_f), "images_per_s": round(batch / gen_s, 4),
                      "measured_batch": batch, "num_samples": n_gen,
                      "hours": {g: round(n_gen * gen_f / (tf * 1e12 * utilisation) / 3600, 3)
                                for g, tf in PEAK_TFLOPS.items()}},
        "teacher": [],
        "utilisation": utilisation,
        "included": ("network passes" + (", text encoder and VAE decode" if sd else "")
                     + "; not included: feature extraction (Inception, CLIP) and data loading"),
        "formula": "hours = num_samples x flops_per_sample / (peak_tflops x 1e12 x utilisation) / 3600",
    }
    for nfe in nfes:
        f = nfe * call_f + dec_f + text_f
        s = nfe * call_s + dec_s
        out["teacher"].append({
            "nfe": nfe, "flops_per_sample": round(f), "images_per_s": round(batch / s, 5), "num_samples": n_teacher,
            "images_per_s_method": "one teacher call measured, x NFE (computed)" + (", + VAE decode (measured)"
                                                                                    if sd else ""),
            "hours": {g: round(n_teacher * f / (tf * 1e12 * utilisation) / 3600, 3) for g, tf in PEAK_TFLOPS.items()}})
    if sd:
        out["vae_decode"] = {"flops_per_sample": round(dec_f), "seconds_per_batch": round(dec_s, 3),
                             "image_size": passes.get("image_size")}
    return out


# ----------------------------------------------------------------------------- the command

def _parse(bench, raw: dict, name: str, variant: Optional[str]):
    from ..benchmarks.base import section_of

    section = section_of(raw, name)
    cfg = bench.parse(section, variant)
    return section, cfg


def _modes(raw: dict, name: str, variant: Optional[str], checkpointing: str) -> list[bool]:
    """Checkpointing of the iteration(s): [setting] or [off, on] ('both'); 'config': the config's."""
    from ..benchmarks.base import get_benchmark

    bench = get_benchmark(name)
    if name not in PAPER_BENCHES:
        raise MCTError(f"benchmark {name!r} has no paper-scale network to rehearse (rehearse: "
                       f"{', '.join(PAPER_BENCHES)}; `mct bench` measures the small ones)")
    _, cfg = _parse(bench, raw, name, variant)
    key = "gradient_checkpointing" if name == "sd15" else "checkpointing"
    return {"config": [bool(getattr(cfg, key))], "on": [True], "off": [False], "both": [False, True]}[checkpointing]


def build_for_rehearsal(raw: dict, ctx, name: str, variant: Optional[str] = None, checkpointing: bool = False,
                        arch: Optional[dict] = None, teacher_precision: Optional[str] = None) -> Built:
    """The benchmark's networks, built by its own ``build`` from the teacher file, or from random
    weights written in the teacher's format (removed once loaded) when there is none."""
    import torch

    from ..benchmarks.base import get_benchmark

    bench = get_benchmark(name)
    _, cfg = _parse(bench, raw, name, variant)
    sd = name == "sd15"
    if teacher_precision is None and sd and torch.device(ctx.device).type == "cpu" and cfg.teacher.precision == "fp16":
        teacher_precision = "bf16"  # fp16 convolutions are slow or missing on CPU
    cfg = replace(cfg, **{"gradient_checkpointing" if sd else "checkpointing": checkpointing})
    tmp = Path(ctx.results_dir) / "rehearsal" / f".fixture-{name}-{os.getpid()}"
    try:
        return (_build_sd(bench, cfg, ctx, tmp, arch, teacher_precision) if sd
                else _build_imagenet(bench, cfg, ctx, tmp, arch))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def standalone_pass_flops(built: Built, batch: int = 1) -> dict[str, dict[str, int]]:
    """FLOPs per sample of each network pass run alone (outside any iteration): the check of the
    per-kind split of the iteration's FLOPs (tests; the same kinds as ``per_pass``)."""
    import torch

    from .instrument import counted_flops

    device = next(built.generator.parameters()).device
    rng = torch.Generator(device=device).manual_seed(3)
    z, c = built.sample_latents(batch, rng)
    sigma = torch.full((batch,), 1.0, device=device)
    gen, stu = built.generator, built.student

    def vjp():
        z_ = z.detach().requires_grad_(True)
        out = gen(z_, c)
        torch.autograd.grad(out, z_, grad_outputs=torch.ones_like(out))

    def gen_fb():
        gen(z, c).sum().backward()

    def stu_fb():
        stu(z, sigma, c).sum().backward()

    with torch.no_grad():
        out = {"teacher": {"forward": counted_flops(lambda: built.teacher(z, sigma, c))},
               "generator": {"forward": counted_flops(lambda: gen(z, c))},
               "student": {"forward": counted_flops(lambda: stu(z, sigma, c))}}
    with torch.enable_grad():
        out["generator"]["forward_input_vjp"] = counted_flops(vjp)
        out["generator"]["forward_backward"] = counted_flops(gen_fb)
        out["student"]["forward_backward"] = counted_flops(stu_fb)
    gen.zero_grad(set_to_none=True)
    stu.zero_grad(set_to_none=True)
    return {net: {k: round(v / batch) for k, v in d.items()} for net, d in out.items()}


def rehearse_one(raw: dict, ctx, name: str, *, variant: Optional[str] = None, iterations: int = 1, batch: int = 1,
                 checkpointing: str = "config", utilisation: float = DEFAULT_UTILISATION,
                 optimizer_states: str = "auto", teacher_precision: Optional[str] = None,
                 arch: Optional[dict] = None, activation_batches: Optional[tuple[int, int]] = None,
                 em_steps: Optional[int] = None, score_updates: Optional[int] = None):
    """Rehearse benchmark ``name`` and return its :class:`mct.records.RehearsalRecord` (not written).
    ``arch``: architecture overrides (tests: tiny widths of the same architecture).
    ``em_steps`` / ``score_updates``: run a shorter iteration (K, student updates) than configured
    when the configured one is too slow here; every kind of pass still runs, and the configured
    iteration's FLOPs and time are then computed from the per-pass numbers and the call formula
    (the record says so in ``flops_per_sample.iteration_source``)."""
    import torch

    from ..config import config_hash, to_dict
    from ..records import RehearsalFlops, RehearsalMemory, RehearsalRecord, provenance

    t_start = time.perf_counter()
    modes, sd, device = _modes(raw, name, variant, checkpointing), name == "sd15", torch.device(ctx.device)
    notes: list[str] = []
    built = build_for_rehearsal(raw, ctx, name, variant, modes[0], arch, teacher_precision)
    variant = variant or "(the section without variant overrides)"
    notes += built.notes
    cfg = built.cfg
    params = {"teacher": _bytes_of(built.teacher), "generator": _bytes_of(built.generator),
              "student": _bytes_of(built.student)}
    if sd:
        params["text_encoder"] = _bytes_of(built.sd.text_encoder)
        params["vae"] = _bytes_of(built.sd.vae)
    trainable = params["generator"] + params["student"]
    if optimizer_states == "auto":
        avail = _mem_available()
        need = 4 * trainable  # EMA, gradients and Adam's two moments: about 4 x (generator + student) more
        optimizer_states = "counted" if (device.type == "cpu" and avail is not None and need > 0.35 * avail) \
            else "allocated"
    counted_states = optimizer_states == "counted"
    train = replace(cfg.train, batch_size=batch, accumulation=1, compile=False, channels_last=False,
                    precision="fp32" if device.type == "cpu" else cfg.train.precision,
                    score_updates=cfg.train.score_updates if score_updates is None else score_updates)
    run_em = cfg.em if em_steps is None else replace(cfg.em, num_steps=em_steps)
    shortened = (run_em.num_steps, train.score_updates) != (cfg.em.num_steps, cfg.train.score_updates)
    built.cfg = replace(cfg, em=run_em)  # what DistillStep runs
    if device.type == "cpu":
        notes.append("CPU: the generator and student run in fp32 (bf16 autocast is for the GPU); FLOP counts do not "
                     "depend on the precision")
    # the iteration(s), once per checkpointing setting asked for
    runs = {}
    for on in modes:
        set_checkpointing(built.generator, on)
        set_checkpointing(built.student, on)
        runs["checkpointed" if on else "none"] = run_iterations(built, train, device, iterations, counted_states)
    main = runs["checkpointed" if modes[0] else "none"]  # 'both': the record's main numbers are without it
    built.cfg = cfg
    set_checkpointing(built.generator, modes[0])
    passes = evaluation_passes(built, batch, device)
    counts = {"teacher": count_params(built.teacher), "generator": count_params(built.generator),
              "student": count_params(built.student)}
    # the activation measurement needs the generator alone (and sd15's text encoder): the teacher and
    # the student are let go first, so that the graph without checkpointing fits here
    built.teacher = built.student = None
    if built.sd is not None:
        built.sd.unet = _UNetLetGo(built.sd.unet)
    gc.collect()
    act = activation_memory(built, activation_batches or (batch, 2 * batch), device)

    calls, by_kind, by_sec = main["calls"], main["by_kind"], main.get("by_kind_seconds", {})
    per_pass = _per_pass(calls, by_kind, batch)
    measured_ps = round(main["flops"] / batch)
    unattributed = round(by_kind.get("other", 0) / batch)
    kinds = {k: round(v / batch) for k, v in by_kind.items() if k != "other"}
    want = expected_calls(cfg.em, cfg.train, text_encoder=sd)  # the configured iteration
    ran = expected_calls(run_em, train, text_encoder=sd)  # the iteration that ran
    formula_flops = sum(n * (by_kind.get(k, 0) / calls[k] if calls.get(k) else 0) for k, n in want.items()) / batch
    formula_seconds = sum(n * (by_sec.get(k, 0.0) / calls[k] if calls.get(k) else 0) for k, n in want.items()) \
        + by_sec.get("other", 0.0)
    flops_ps = measured_ps if not shortened else round(formula_flops) + unattributed
    if shortened:
        notes.append(f"the counted iteration ran K = {run_em.num_steps}, {train.score_updates} student update(s) "
                     f"(configured: K = {cfg.em.num_steps}, {cfg.train.score_updates}) to fit this machine's time; "
                     "flops_per_sample.iteration and wall_seconds_per_iteration of the configured iteration are "
                     "computed: calls of the formula x each kind's measured FLOPs and seconds per call")
    grads = main["grads_bytes"] if main["grads_bytes"] is not None else trainable
    optim = main["optimizer_bytes"] if main["optimizer_bytes"] is not None else 2 * trainable
    ema = main.get("ema_bytes") or params["generator"]
    params_all = {**params, "generator_ema": ema}
    params_all["total"] = sum(params_all.values())
    measured = ["calls", "flops_per_sample", "wall_seconds_per_iteration", "memory.params_bytes (teacher, generator, "
                "student" + (", text encoder, VAE" if sd else "") + ")",
                "memory.activation_bytes_per_sample", "memory.iteration_peak_bytes", "memory.peak_rss_bytes",
                "evaluation images_per_s of the generator (and VAE decode)", "one teacher call's seconds and FLOPs"]
    computed = ["projection (all of it)", "evaluation.*.hours", "teacher images_per_s at its NFE (one call x NFE)"]
    if counted_states:
        computed += ["memory.optimizer_bytes (2 x params of generator and student: Adam's two moments, not "
                     "allocated here)", "memory.grads_bytes (= params of generator and student; gradients freed "
                     "after use here)", "memory.params_bytes.generator_ema (= generator; not allocated here)"]
        notes.append("optimizer states counted, not allocated: Adam's step and the EMA update were left out "
                     "(elementwise: no network call and no counted FLOP); the peak memory is below a real run's "
                     "by the optimizer, EMA and gradient bytes")
    else:
        measured += ["memory.optimizer_bytes (Adam's states after the step)", "memory.grads_bytes",
                     "memory.params_bytes.generator_ema"]
    if act["skipped"]:
        notes += [f"activation measurement skipped: {s}" for s in act["skipped"]]
    mem = RehearsalMemory(
        params_bytes=params_all, optimizer_bytes=int(optim), grads_bytes=int(grads),
        activation_bytes_per_sample=dict(act["per_sample"]), activation_fixed_bytes=dict(act["fixed"]),
        activation_batches={k: list(v) for k, v in act["batches"].items()}, optimizer_states=optimizer_states,
        iteration_peak_bytes=main["iteration_peak"], peak_rss_bytes=main["peak_rss"],
        process_peak_rss_bytes=(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
                                if device.type == "cpu" else None),
        method=("activations: bytes of tensor storage created during one generator pass with its graph to the "
                "parameters (the M-step's) and still alive after it (saved for backward; under checkpointing the "
                "block inputs kept for recomputation), output and parameters excluded; per sample = slope between "
                "activation_batches. Peak: " + ("VmHWM of /proc/self/status (reset before the iteration)"
                                                if device.type == "cpu" else "torch.cuda.max_memory_allocated")),
        measured=measured, computed=computed)
    mem_view = {"params_total": params_all["total"], "grads_bytes": int(grads), "optimizer_bytes": int(optim),
                "act_per_sample": act["per_sample"], "act_fixed": act["fixed"]}
    seconds = main["seconds"]
    measured[measured.index("wall_seconds_per_iteration")] = ("wall_seconds_per_iteration" if not shortened else
                                                              "wall seconds of the shorter iteration and per kind")
    measured[measured.index("flops_per_sample")] = ("flops_per_sample" if not shortened else
                                                    "flops_per_sample.by_kind, per_pass, measured_iteration")
    if shortened:
        computed += ["flops_per_sample.iteration", "wall_seconds_per_iteration"]
    record = RehearsalRecord(
        bench=name, variant=variant, device=device.type,
        device_name=(torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"),
        num_threads=torch.get_num_threads(), provenance=provenance(config_hash(to_dict(cfg))), batch_size=batch,
        iterations=iterations, weights=built.weights,
        settings={"K": cfg.em.num_steps, "gamma_z": cfg.em.gamma_z, "score_updates": cfg.train.score_updates,
                  "checkpointing": modes[0] if len(modes) == 1 else "both", "optimizer_states": optimizer_states,
                  "counted_iteration": {"K": run_em.num_steps, "score_updates": train.score_updates},
                  "teacher_precision": cfg.teacher.precision if sd else cfg.teacher.precision + " (autocast on CUDA "
                  "only; fp32 here)" if device.type == "cpu" else cfg.teacher.precision,
                  "train_precision": train.precision},
        networks={"params": counts,
                  "guided_teacher": bool(sd and cfg.teacher.guidance != 1.0)},
        calls=calls, backward_calls=main["backward_calls"],
        flops_per_sample=RehearsalFlops(
            iteration=flops_ps, by_kind=kinds, per_pass=per_pass, unattributed=unattributed,
            measured_iteration=measured_ps, measured_at={"K": run_em.num_steps, "score_updates": train.score_updates},
            iteration_source=("computed: formula calls x per-pass FLOPs measured on a shorter iteration" if shortened
                              else "measured: the configured iteration, counted"),
            method=("torch.utils.flop_counter.FlopCounterMode over the whole iteration (matmul, convolution, "
                    "attention; forward and backward), split by kind at every network call and at the start of "
                    "every backward through a network; per sample = / batch; per_pass = by_kind / calls"
                    + ("; a guided teacher call is one batched pass over both CFG branches" if sd else ""))),
        memory=mem, wall_seconds_per_iteration=round(formula_seconds if shortened else statistics.median(seconds), 3),
        wall_seconds_by_checkpointing={k: round(statistics.median(r["seconds"]), 3) for k, r in runs.items()},
        projection={**projection(cfg, flops_ps, mem_view, utilisation),
                    "flops_per_sample_by_checkpointing": {k: round(r["flops"] / batch) for k, r in runs.items()}},
        evaluation=evaluation(name, cfg, passes, per_pass, batch, utilisation),
        formula={"expected_calls": want, "calls_match": ran == calls, "ran_calls_expected": ran,
                 "seconds_from_formula": round(formula_seconds, 3),
                 "seconds_by_kind": {k: round(v, 3) for k, v in by_sec.items()},
                 "text": ("per iteration: K teacher forwards (" + ("guided: both CFG branches in one batched call; "
                                                                   if sd else "") +
                          "no graph), K student forwards (no graph), K generator forwards with a graph to z each "
                          "followed by its VJP (none when gamma_z = 0), 1 generator forward + backward to the "
                          "parameters (the M-step; the E-step's last generator pass, reused), and per student "
                          "update 1 generator forward (no graph) + 1 student forward + backward"
                          + ("; 1 + score_updates text-encoder passes (one per batch of prompts)" if sd else "")),
                 "flops_from_formula": round(formula_flops),
                 "flops_formula": "sum over kinds of expected_calls x per-pass FLOPs (per_pass)"},
        notes=notes, wall_seconds=round(time.perf_counter() - t_start, 1))
    if sd:
        from ..benchmarks.sd15 import _load_teacher

        _load_teacher.cache_clear()
    return record


def run_rehearse(raw: dict, ctx, benches: Optional[list[str]] = None, **kw) -> dict[str, Path]:
    """``mct rehearse``: rehearse each benchmark and write ``<results_dir>/rehearsal/<bench>.json``."""
    from ..benchmarks.base import get_benchmark
    from ..io import ensure_writable_dir
    from ..records import write_record

    names = list(dict.fromkeys(benches)) if benches else [b for b in (raw.get("benchmarks") or {})
                                                          if b in PAPER_BENCHES]
    if not names:
        raise MCTError(f"mct rehearse: no paper-scale benchmark in this config (rehearse: {', '.join(PAPER_BENCHES)})")
    for name in names:
        get_benchmark(name)  # unknown names fail before any work
        if name not in PAPER_BENCHES:
            raise MCTError(f"benchmark {name!r} has no paper-scale network to rehearse (rehearse: "
                           f"{', '.join(PAPER_BENCHES)}; `mct bench` measures the small ones)")
        _parse(get_benchmark(name), raw, name, kw.get("variant"))
    out_dir = ensure_writable_dir(Path(ctx.results_dir) / "rehearsal")
    written = {}
    for name in names:
        rec = rehearse_one(raw, ctx, name, **kw)
        written[name] = write_record(out_dir / f"{name}.json", rec)
        log.info("rehearse %s: %.1f TFLOP/sample/iteration, %.1f s/iteration here, %s H100-hours projected",
                 name, rec.flops_per_sample.iteration / 1e12, rec.wall_seconds_per_iteration,
                 rec.projection["gpu_hours"]["H100-80GB"])
    return written
