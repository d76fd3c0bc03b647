"""The distillation loop: E-step, M-step (Adam on theta), generator EMA, student-score
DSM updates, atomic checkpoints with exact resume, a CSV log and a progress bar.

One documented function, :func:`distill`, in the manner of edm2's training loop."""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from .. import distributed as D
from ..config import config_hash, to_dict
from ..diffusion.edm import SigmaDist, edm_loss, sample_sigma
from ..errors import CheckpointError, ConfigError, TrainingDiverged
from ..io import ensure_writable_dir, torch_save, write_csv
from .em import EMConfig, em_generator_loss

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "mct-distill-v1"


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation knobs of one distillation run.

    score_updates: student-score DSM updates per generator update (a lagging student score
        breaks the method; docs/method.md#lessons-from-the-toy).
    score_warmup: DSM updates of the student score on the initial generator before step 1.
    sigma: noise levels of the E/M-step; score_sigma: of the student's DSM (None: same).
    batch_size: the global batch, = per-GPU batch x processes (torchrun) x accumulation;
        the result does not depend on how it is split (mct.distributed).
    accumulation: gradient-accumulation micro-steps per update (batch_size must be
        divisible by processes x accumulation).
    precision: 'fp32' or 'bf16' (autocast of the network forward passes only; the EM
        arithmetic, losses, optimiser and EMA stay fp32). tf32: allow TF32 matmuls and
        convolutions on CUDA (off: exact fp32). channels_last: NHWC memory format for the
        networks. compile: torch.compile the network forward passes.
    find_unused_parameters: DDP's option, for networks with parameters a forward pass does
        not use. accumulation, channels_last, compile and find_unused_parameters do not
        change the result and are not part of the checkpoint's config hash.
    """

    iterations: int = 1000
    batch_size: int = 64
    lr_g: float = 1e-4
    lr_s: float = 1e-4
    beta1: float = 0.0
    beta2: float = 0.999
    score_updates: int = 5
    score_warmup: int = 0
    ema_decay: float = 0.999
    grad_clip: float = 0.0
    sigma: SigmaDist = field(default_factory=SigmaDist)
    score_sigma: Optional[SigmaDist] = None
    sigma_data: float = 0.5
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    eval_every: int = 0
    seed: int = 0
    accumulation: int = 1
    precision: str = "fp32"
    tf32: bool = False
    channels_last: bool = False
    compile: bool = False
    find_unused_parameters: bool = False

    def __post_init__(self):
        for name in ("iterations", "batch_size", "checkpoint_every", "keep_checkpoints", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("score_updates", "score_warmup", "eval_every", "seed"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("lr_g", "lr_s", "sigma_data"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.lr_s > 0 and self.score_updates == 0 and self.score_warmup == 0:
            pass  # a frozen student score is allowed (exact-score experiments)
        for name in ("beta1", "beta2", "ema_decay"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        if self.grad_clip < 0:
            raise ConfigError(f"grad_clip must be >= 0, got {self.grad_clip!r}")
        if self.accumulation < 1:
            raise ConfigError(f"accumulation must be >= 1, got {self.accumulation!r}")
        if self.batch_size % self.accumulation:
            raise ConfigError(f"batch_size {self.batch_size} must be divisible by accumulation {self.accumulation}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")


PRECISIONS = ("fp32", "bf16")
# knobs that change how a run is computed, not what it computes: left out of the config hash
# (a run may resume with other values); precision and tf32 count only when not the default
RUNTIME_KNOBS = ("accumulation", "channels_last", "compile", "find_unused_parameters")


def hashed_train(train: TrainConfig) -> dict:
    """The train section as it enters a run's config hash (runtime knobs left out)."""
    rec = {k: v for k, v in to_dict(train).items() if k not in RUNTIME_KNOBS}
    for key, default in (("precision", "fp32"), ("tf32", False)):
        if rec.get(key) == default:
            rec.pop(key)
    return rec


def _autocast(fn: Callable, device: torch.device, precision: str) -> Callable:
    """``fn`` run under bf16 autocast with its output cast back to fp32 (``fn`` itself for fp32)."""
    if precision == "fp32":
        return fn

    def call(*args, **kwargs):
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            out = fn(*args, **kwargs)
        return out.float()

    return call


def _set_tf32(device: torch.device, enabled: bool) -> None:
    """TF32 for fp32 matmuls and cuDNN convolutions on CUDA (both off when not ``enabled``)."""
    if device.type != "cuda":
        return
    mode = "tf32" if enabled else "ieee"
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        torch.backends.cuda.matmul.fp32_precision = mode
        torch.backends.cudnn.conv.fp32_precision = mode
    else:  # older PyTorch
        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled


def _checkpoint_paths(run_dir: Path) -> list[Path]:
    ckdir = run_dir / "checkpoints"
    found = [(int(m.group(1)), p) for p in ckdir.glob("ckpt-*.pt") if (m := re.fullmatch(r"ckpt-(\d+)\.pt", p.name))]
    return [p for _, p in sorted(found)]


def _remove_stale_temp_files(run_dir: Path) -> None:
    """Delete the temporary files a killed run left behind (``mct.io.atomic_path`` names
    them ``.<final name>.<random>.tmp``): they are never whole, and nothing else reads them."""
    for folder in (run_dir, run_dir / "checkpoints"):
        for tmp in folder.glob(".*.tmp") if folder.is_dir() else ():
            if tmp.is_file():
                log.info("removing %s, left by an interrupted run", tmp)
                tmp.unlink(missing_ok=True)


def load_checkpoint(path: Path, expected_format: str = CHECKPOINT_FORMAT) -> dict:
    """Load a checkpoint with ``weights_only=True`` and one clear error when it is unusable."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, garbage, pickled code
        raise CheckpointError(f"checkpoint {path} cannot be read (truncated or not a checkpoint): "
                              f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    if not isinstance(state, dict) or state.get("format") != expected_format:
        raise CheckpointError(f"checkpoint {path} is not an {expected_format} checkpoint")
    return state


def load_state_strict(module: nn.Module, state: dict, what: str, path) -> None:
    """load_state_dict(strict=True) with one readable error for another architecture."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = [ln.strip() for ln in str(exc).splitlines() if ln.strip()][:3]
        raise CheckpointError(f"checkpoint {path}: the {what} weights do not fit this architecture "
                              f"({' '.join(first)[:300]})") from None


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for p_ema, p in zip(ema.parameters(), model.parameters()):
        p_ema.lerp_(p.detach(), 1 - decay)
    for b_ema, b in zip(ema.buffers(), model.buffers()):
        b_ema.copy_(b)


def _finite(name: str, value: torch.Tensor, it: int, last_good: Optional[Path]):
    _all_finite({name: value}, it, last_good)


def _all_finite(values: dict[str, torch.Tensor], it: int, last_good: Optional[Path]):
    """One check (one device sync) of several tensors; the error names every non-finite one
    (a NaN from the teacher reaches z and so the generator output too, and the reverse)."""
    flags = torch.stack([torch.isfinite(v).all() for v in values.values()])
    if D.world_size() > 1:  # every rank stops together (a NaN may appear in one shard only)
        flags = D.all_reduce_min(flags.to(torch.int32))
    flags = flags.bool().tolist()
    bad = [name for name, ok in zip(values, flags) if not ok]
    if bad:
        keep = f"the last good checkpoint {last_good} is kept" if last_good else "no checkpoint was written yet"
        raise TrainingDiverged(f"non-finite {' and '.join(bad)} (NaN or inf) at iteration {it}; training stopped, "
                               f"{keep}. Lower the learning rates or step sizes, or check the teacher.")


def distill(run_dir: str | Path, *, teacher: Callable, generator: nn.Module, student: nn.Module,
            sample_latents: Callable[[int, torch.Generator], tuple[torch.Tensor, Optional[torch.Tensor]]],
            em: EMConfig, train: TrainConfig, resume: str = "auto",
            pre_train: Optional[Callable[[torch.Generator], None]] = None,
            evaluate: Optional[Callable[[nn.Module, int], dict]] = None,
            device: str | torch.device = "cpu", progress: bool = True, extra_config: Optional[dict] = None,
            stop_after: Optional[int] = None) -> dict:
    """Distil ``teacher`` into the one-step ``generator`` by EM (docs/method.md#training-loop).

    Each iteration: draw z0, eps0, sigma; E-step (K Langevin steps); one Adam step on
    the M-step surrogate; EMA of the generator; ``train.score_updates`` DSM steps of the
    student score on fresh generator samples. ``sample_latents(n, rng)`` returns (z, cond).

    Checkpoints (generator, EMA, student, both optimisers, RNG states, iteration, log)
    go to ``run_dir/checkpoints/ckpt-<it>.pt`` atomically, the last ``keep_checkpoints``
    kept; the final one also to ``run_dir/checkpoint.pt``. ``resume``: 'auto' continues
    from the latest compatible checkpoint, 'yes' requires one, 'no' starts afresh.
    A run resumed at any checkpoint ends with the same weights as an uninterrupted run.
    ``pre_train(rng)`` runs once on a fresh start (e.g. regressing the generator onto
    the teacher); ``evaluate(ema, it)`` every ``eval_every`` iterations adds columns to
    ``run_dir/eval_log.csv``. ``stop_after`` ends early after that iteration (tests).
    Returns a summary dict (iterations, seconds, final losses).

    Under ``torchrun`` (mct.distributed) the generator and the student score are wrapped in
    DistributedDataParallel; every rank draws the global batch's random numbers from the
    shared generator and keeps its rows, so N processes (and ``train.accumulation``
    micro-steps) compute the single-process update to float rounding. Rank 0 alone logs,
    shows progress, evaluates and writes checkpoints; a checkpoint holds no per-rank state
    and resumes on any number of processes. Dropout and other draws from torch's global
    generator use per-rank seeds derived from (seed, rank, iteration).
    """
    run_dir = ensure_writable_dir(run_dir)
    device = torch.device(device)
    if resume not in ("auto", "yes", "no"):
        raise ConfigError(f"resume must be auto, yes or no, got {resume!r}")
    D.init_from_env(device)  # under torchrun: join the process group (a no-op otherwise)
    world, rank, accum = D.world_size(), D.rank(), train.accumulation
    if world > 1 and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())  # this rank's GPU
    if train.batch_size % (world * accum):
        raise ConfigError(f"batch_size {train.batch_size} (the global batch) must be divisible by processes x "
                          f"accumulation = {world} x {accum}")
    sharded = world * accum > 1
    _set_tf32(device, train.tf32)
    generator.to(device).train()
    student.to(device).train()
    if train.channels_last:
        for net in (generator, student, teacher):
            if isinstance(net, nn.Module):
                net.to(memory_format=torch.channels_last)
    ema = copy.deepcopy(generator).eval().requires_grad_(False)
    opt_g = torch.optim.Adam(generator.parameters(), lr=train.lr_g, betas=(train.beta1, train.beta2))
    opt_s = torch.optim.Adam(student.parameters(), lr=train.lr_s, betas=(train.beta1, train.beta2))
    rng = torch.Generator(device=device).manual_seed(train.seed)
    torch.manual_seed(train.seed)
    score_sigma = train.score_sigma or train.sigma
    cfg_record = {"em": to_dict(em), "train": to_dict(train), **(extra_config or {})}
    cfg_hash = config_hash({**cfg_record, "train": hashed_train(train)})
    # the networks as each pass runs them: DDP where gradients are synchronised (the M-step's
    # generator pass, the student's DSM), the bare module elsewhere; then compile, autocast
    gen_ddp, stu_ddp = generator, student
    if world > 1:
        ddp_kw = {"find_unused_parameters": train.find_unused_parameters}
        if device.type == "cuda":
            ddp_kw["device_ids"] = [device.index]
        if any(p.requires_grad for p in generator.parameters()):
            gen_ddp = DistributedDataParallel(generator, **ddp_kw)
        if any(p.requires_grad for p in student.parameters()):
            stu_ddp = DistributedDataParallel(student, **ddp_kw)
    compiled = torch.compile if train.compile else (lambda f: f)
    run = lambda f: _autocast(compiled(f), device, train.precision)  # noqa: E731
    gen_fwd, gen_train, stu_fwd, stu_train = run(generator), run(gen_ddp), run(student), run(stu_ddp)
    teacher_fwd = run(teacher) if isinstance(teacher, nn.Module) else _autocast(teacher, device, train.precision)

    def no_sync(ddp, micro: int):
        """Gradient synchronisation only on the last accumulation micro-step."""
        last = micro == accum - 1
        return ddp.no_sync() if isinstance(ddp, DistributedDataParallel) and not last else contextlib.nullcontext()

    rows: list[dict] = []
    eval_rows: list[dict] = []
    start_it = 0
    elapsed_before = 0.0
    last_good: Optional[Path] = None

    def score_step():
        z, c = sample_latents(train.batch_size, rng)
        if sharded:
            return score_step_sharded(z, c)
        with torch.no_grad():
            x = gen_fwd(z, c)
        sig = sample_sigma(x.shape[0], score_sigma, rng, device)
        noise = torch.randn(x.shape, generator=rng, device=device)
        loss = edm_loss(stu_train, x, sig, c, noise, train.sigma_data)
        opt_s.zero_grad(set_to_none=True)
        loss.backward()
        if train.grad_clip:
            nn.utils.clip_grad_norm_(student.parameters(), train.grad_clip)
        opt_s.step()
        return loss.detach()

    def score_step_sharded(z, c):
        """score_step on this rank's rows of the global batch, in ``accum`` micro-steps."""
        n = train.batch_size
        shards = [D.batch_rows(n, rank, world, accum, m) for m in range(accum)]
        conds = [D.slice_batch(c, r, n) for r in shards]
        with torch.no_grad():
            x = gen_fwd(z[shards[0]], conds[0])
        sig = sample_sigma(n, score_sigma, rng, device)
        noise = torch.randn((n,) + tuple(x.shape[1:]), generator=rng, device=device)
        opt_s.zero_grad(set_to_none=True)
        total = torch.zeros((), device=device)
        for m, r in enumerate(shards):
            if m:
                with torch.no_grad():
                    x = gen_fwd(z[r], conds[m])
            with no_sync(stu_ddp, m):
                loss = edm_loss(stu_train, x, sig[r], conds[m], noise[r], train.sigma_data)
                (loss / accum if accum > 1 else loss).backward()
            total += loss.detach()
        if train.grad_clip:
            nn.utils.clip_grad_norm_(student.parameters(), train.grad_clip)
        opt_s.step()
        return total / accum

    def m_step_sharded(z0, eps0, sigma, cond, it):
        """E-step and M-step backward on this rank's rows, in ``accum`` micro-steps; every
        micro-step replays the shared generator from the same state and draws the global
        batch's Langevin noise, so the generator ends where a single process leaves it."""
        n = train.batch_size
        start = rng.get_state()
        opt_g.zero_grad(set_to_none=True)
        total = torch.zeros((), device=device)
        for m in range(accum):
            if m:
                rng.set_state(start)
            r = D.batch_rows(n, rank, world, accum, m)
            with no_sync(gen_ddp, m):
                loss, res, g_out = em_generator_loss(
                    gen_fwd, teacher_fwd, stu_fwd, z0[r], eps0[r], sigma[r], D.slice_batch(cond, r, n), em, rng,
                    noise=D.global_noise(n, r, rng), train_generator=gen_train)
                _all_finite({"generator output": g_out.detach(), "teacher output": res.teacher_last,
                             "M-step loss": loss.detach()}, it + 1, last_good)
                (loss / accum if accum > 1 else loss).backward()
            total += loss.detach()
        return loss, res, total / accum

    if rank == 0:
        _remove_stale_temp_files(run_dir)
    existing = _checkpoint_paths(run_dir) if resume != "no" and rank == 0 else []
    state = None
    skipped: list[Path] = []
    for path in reversed(existing):
        try:
            cand = load_checkpoint(path)
        except CheckpointError as exc:
            log.warning("skipping unusable checkpoint: %s", exc)
            skipped.append(path)
            continue
        if cand.get("config_hash") != cfg_hash:
            log.warning("checkpoint %s was written with another config; not resuming from it", path)
            skipped.append(path)
            continue
        state, last_good = cand, path
        break
    if world > 1:  # rank 0 chose the checkpoint (or none); every rank loads that one
        chosen = D.broadcast_object(None if last_good is None else str(last_good))
        if rank != 0 and chosen is not None:
            last_good = Path(chosen)
            state = load_checkpoint(last_good)
    if resume == "yes" and state is None:
        raise CheckpointError(f"--resume: no usable checkpoint with this config in {run_dir / 'checkpoints'}")
    if state is not None:
        load_state_strict(generator, state["generator"], "generator", last_good)
        load_state_strict(ema, state["generator_ema"], "generator EMA", last_good)
        load_state_strict(student, state["student"], "student score", last_good)
        opt_g.load_state_dict(state["opt_g"])
        opt_s.load_state_dict(state["opt_s"])
        rng.set_state(state["rng"])
        if world == 1:  # several ranks re-derive theirs from (seed, rank, iteration)
            torch.set_rng_state(state["torch_rng"])
        start_it = int(state["iteration"])
        rows = list(state.get("log", []))
        eval_rows = list(state.get("eval_log", []))
        elapsed_before = float(state.get("seconds", 0.0))
        log.info("resumed from %s at iteration %d", last_good, start_it)
        for p in skipped if rank == 0 else ():  # newer than the one resumed from: they would be taken for this run's
            p.unlink(missing_ok=True)
    else:
        # a fresh start: checkpoints still here are unusable or of another config; left in
        # place, the highest-numbered of them would outlive this run's own (keep_checkpoints)
        # and become its checkpoint.pt
        stale = _checkpoint_paths(run_dir) if rank == 0 else []
        if stale and resume == "auto":
            log.warning("starting afresh in %s: removing %d checkpoint(s) that cannot be resumed",
                        run_dir, len(stale))
        for p in stale:
            p.unlink()
        if rank == 0:
            (run_dir / "checkpoint.pt").unlink(missing_ok=True)
        if pre_train is not None:
            pre_train(rng)
            ema.load_state_dict(generator.state_dict())
        if world > 1:
            torch.manual_seed(D.rank_seed(train.seed, rank, "warmup"))
        for _ in range(train.score_warmup):
            _finite("student-score warm-up loss", score_step(), 0, None)
    for net in (generator, ema, student):  # identical on every rank from here on
        D.broadcast_module(net)

    t0 = time.perf_counter()

    def save(it: int) -> Path:
        if rank != 0:
            return run_dir / "checkpoints" / f"ckpt-{it:08d}.pt"
        ckpt = {
            "format": CHECKPOINT_FORMAT, "iteration": it, "config_hash": cfg_hash, "config": cfg_record,
            "generator": generator.state_dict(), "generator_ema": ema.state_dict(),
            "student": student.state_dict(), "opt_g": opt_g.state_dict(), "opt_s": opt_s.state_dict(),
            "rng": rng.get_state(), "torch_rng": torch.get_rng_state(), "log": rows, "eval_log": eval_rows,
            "seconds": elapsed_before + time.perf_counter() - t0, "world_size": world,
        }
        path = torch_save(run_dir / "checkpoints" / f"ckpt-{it:08d}.pt", ckpt)
        for old in _checkpoint_paths(run_dir)[:-train.keep_checkpoints]:
            old.unlink()
        write_logs()
        return path

    def write_logs():
        if rank != 0:
            return
        write_csv(run_dir / "train_log.csv", rows, fieldnames=list(rows[0]) if rows else ["iteration"])
        if eval_rows:
            write_csv(run_dir / "eval_log.csv", eval_rows)

    end_it = train.iterations if stop_after is None else min(train.iterations, stop_after)
    bar = tqdm(range(start_it, end_it), initial=start_it, total=train.iterations, disable=not progress or rank != 0,
               desc=f"distill {run_dir.name}", dynamic_ncols=True, mininterval=1.0)
    loss_g = loss_s = torch.tensor(float("nan"))
    for it in bar:
        if world > 1:
            torch.manual_seed(D.rank_seed(train.seed, rank, it))
        z0, cond = sample_latents(train.batch_size, rng)
        eps0 = torch.randn(z0.shape, generator=rng, device=device)
        sigma = sample_sigma(z0.shape[0], train.sigma, rng, device)
        if sharded:
            loss_g, res, loss_value = m_step_sharded(z0, eps0, sigma, cond, it)
        else:
            loss_g, res, g_out = em_generator_loss(gen_fwd, teacher_fwd, stu_fwd, z0, eps0, sigma, cond, em, rng)
            loss_value = loss_g.detach()
            _all_finite({"generator output": g_out.detach(), "teacher output": res.teacher_last,
                         "M-step loss": loss_value}, it + 1, last_good)
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
        grad_norm = torch.sqrt(sum((p.grad.detach() ** 2).sum() for p in generator.parameters() if p.grad is not None))
        _finite("generator gradient", grad_norm, it + 1, last_good)
        if train.grad_clip:
            nn.utils.clip_grad_norm_(generator.parameters(), train.grad_clip)
        opt_g.step()
        ema_update(ema, generator, train.ema_decay)
        for _ in range(train.score_updates):
            loss_s = score_step()
            _finite("student-score loss", loss_s, it + 1, last_good)
        done = it + 1
        if done % train.log_every == 0 or done == end_it:
            eps_ms, nu_ms = res.eps.pow(2).mean(), res.nu.pow(2).mean()
            if world > 1:  # the global batch's values
                loss_value, loss_s, eps_ms, nu_ms = D.all_reduce_mean(
                    torch.stack([t.to(device).float() for t in (loss_value, loss_s, eps_ms, nu_ms)]))
            rows.append({"iteration": done, "loss_g": float(loss_value), "loss_s": float(loss_s),
                         "grad_norm_g": float(grad_norm), "eps_rms": float(eps_ms.sqrt()),
                         "nu_rms": float(nu_ms.sqrt()),
                         "seconds": round(elapsed_before + time.perf_counter() - t0, 3)})
            bar.set_postfix(loss_g=f"{float(loss_value):.3g}", loss_s=f"{float(loss_s):.3g}")
        if evaluate is not None and train.eval_every and rank == 0 and (done % train.eval_every == 0
                                                                        or done == train.iterations):
            eval_rows.append({"iteration": done, **evaluate(ema, done)})
        if done % train.checkpoint_every == 0 or done == end_it:
            last_good = save(done)
    bar.close()
    if start_it >= end_it and last_good is None:
        last_good = save(end_it)
    elif start_it >= end_it:
        write_logs()  # a run killed between its last checkpoint and its logs
    if rank == 0:
        final = _checkpoint_paths(run_dir)[-1]
        if end_it == train.iterations:
            torch_save(run_dir / "checkpoint.pt", torch.load(final, map_location="cpu", weights_only=True))
    if world > 1:
        loss_g = D.all_reduce_mean(loss_g.detach().to(device))
        D.barrier()  # the other ranks return once rank 0's files are written
    seconds = elapsed_before + time.perf_counter() - t0
    return {"iterations": end_it, "train_seconds": round(seconds, 3), "loss_g": float(loss_g.detach()),
            "loss_s": float(loss_s), "config_hash": cfg_hash}
