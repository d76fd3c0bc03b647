"""The distillation loop: E-step, M-step (Adam on theta), generator EMA, student-score
DSM updates, atomic checkpoints with exact resume, a CSV log and a progress bar.

One documented function, :func:`distill`, in the manner of edm2's training loop; the work of
one iteration is :class:`DistillStep` (what ``mct bench`` times); checkpoints are mct.checkpoint."""

from __future__ import annotations

import logging
import time
from time import monotonic  # the deadline's clock (tests replace it)
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from .. import distributed as D
from ..checkpoint import DISTILL_FORMAT, CheckpointIO, read_checkpoint
from ..config import config_hash, to_dict
from ..diffusion.edm import SigmaDist
from ..errors import CheckpointError, ConfigError, TimeLimitReached
from ..io import ensure_writable_dir, write_csv
from .em import EMConfig
from .step import PRECISIONS, DistillStep, all_finite

log = logging.getLogger(__name__)


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
    seeds: how many training seeds the variant runs (seed, seed + 1, ...), each a full run;
        the summary's intervals are over them. Not part of a run's hash: adding seeds keeps
        the runs already trained.
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
    seeds: int = 1

    def __post_init__(self):
        for name in ("iterations", "batch_size", "checkpoint_every", "keep_checkpoints", "log_every", "seeds"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("score_updates", "score_warmup", "eval_every", "seed"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("lr_g", "lr_s", "sigma_data"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)!r}")
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


# knobs that change how a run is computed, not what it computes: left out of the config hash
# (a run may resume with other values); precision and tf32 count only when not the default
RUNTIME_KNOBS = ("accumulation", "channels_last", "compile", "find_unused_parameters")
# not a knob of one run at all: how many seeds of the variant run (each seed's hash has its own train.seed)
REPLICA_KNOBS = ("seeds",)


def hashed_train(train: TrainConfig) -> dict:
    """The train section as it enters a run's config hash (runtime knobs left out)."""
    rec = {k: v for k, v in to_dict(train).items() if k not in RUNTIME_KNOBS + REPLICA_KNOBS}
    for key, default in (("precision", "fp32"), ("tf32", False)):
        if rec.get(key) == default:
            rec.pop(key)
    return rec


def distill(run_dir: str | Path, *, teacher: Callable, generator: nn.Module, student: nn.Module,
            sample_latents: Callable[[int, torch.Generator], tuple[torch.Tensor, Optional[torch.Tensor]]],
            em: EMConfig, train: TrainConfig, resume: str = "auto",
            pre_train: Optional[Callable[[torch.Generator], None]] = None,
            evaluate: Optional[Callable[[nn.Module, int], dict]] = None,
            device: str | torch.device = "cpu", progress: bool = True, extra_config: Optional[dict] = None,
            stop_after: Optional[int] = None, deadline: Optional[float] = None) -> dict:
    """Distil ``teacher`` into the one-step ``generator`` by EM (docs/method.md#training-loop).

    Each iteration is one call of :class:`DistillStep`: draw z0, eps0, sigma; E-step (K
    Langevin steps); one Adam step on the M-step surrogate; EMA of the generator;
    ``train.score_updates`` DSM steps of the student score on fresh generator samples.
    ``sample_latents(n, rng)`` returns (z, cond).

    Checkpoints (generator, EMA, student, both optimisers, RNG states, iteration, log; see
    mct.checkpoint) go to ``run_dir/checkpoints/ckpt-<it>.pt`` atomically, the last
    ``keep_checkpoints`` kept; the final one becomes ``run_dir/checkpoint.pt`` (a hard link,
    not a second copy). ``resume``: 'auto' continues from the latest checkpoint of this config,
    'yes' requires one, 'no' starts afresh. A run resumed at any checkpoint ends with the same
    weights as an uninterrupted run. ``pre_train(rng)`` runs once on a fresh start (e.g.
    regressing the generator onto the teacher); ``evaluate(ema, it)`` every ``eval_every``
    iterations adds columns to ``run_dir/eval_log.csv``. ``stop_after`` ends early after that
    iteration (tests). ``deadline`` (a ``time.monotonic()`` value): stop cleanly before it, at the
    last iteration after which one more iteration and a checkpoint would not fit (their
    measured durations), with a checkpoint of that iteration, and raise
    :class:`~mct.errors.TimeLimitReached` (a cluster job at its runtime limit; the rerun
    resumes and ends as an uninterrupted run would). Returns a summary dict (iterations,
    seconds, final losses, config hash).

    Under ``torchrun`` (mct.distributed) the generator and the student score are wrapped in
    DistributedDataParallel; every rank draws the global batch's random numbers from the
    shared generator and keeps its rows, so N processes (and ``train.accumulation``
    micro-steps) compute the single-process update to float rounding. Rank 0 alone logs,
    shows progress, evaluates and writes checkpoints; a checkpoint holds no per-rank state
    and resumes on any number of processes. Dropout and other draws from torch's global
    generator use per-rank seeds derived from (seed, rank, iteration).
    """
    run_dir = ensure_writable_dir(run_dir)
    if resume not in ("auto", "yes", "no"):
        raise ConfigError(f"resume must be auto, yes or no, got {resume!r}")
    D.init_from_env(torch.device(device))  # under torchrun: join the process group (a no-op otherwise)
    step = DistillStep(teacher=teacher, generator=generator, student=student, sample_latents=sample_latents,
                       em=em, train=train, device=device)
    world, rank, device = step.world, step.rank, step.device
    torch.manual_seed(train.seed)
    cfg_record = {"em": to_dict(em), "train": to_dict(train), **(extra_config or {})}
    cfg_hash = config_hash({**cfg_record, "train": hashed_train(train)})
    ckio = CheckpointIO(run_dir, keep=train.keep_checkpoints)

    rows: list[dict] = []
    eval_rows: list[dict] = []
    start_it = 0
    elapsed_before = 0.0
    state, last_good, skipped = None, None, []
    if rank == 0:
        ckio.remove_temp_files()
        if resume != "no":
            state, last_good, skipped = ckio.load_latest(cfg_hash)
    if world > 1:  # rank 0 chose the checkpoint (or none); every rank loads that one
        chosen = D.broadcast_object(None if last_good is None else str(last_good))
        if rank != 0 and chosen is not None:
            last_good = Path(chosen)
            state = read_checkpoint(last_good)
    if resume == "yes" and state is None:
        raise CheckpointError(f"--resume: no usable checkpoint with this config in {ckio.folder}")
    if state is not None:
        step.load_state_dict(state, last_good)
        start_it = int(state["iteration"])
        rows = list(state.get("log", []))
        eval_rows = list(state.get("eval_log", []))
        elapsed_before = float(state.get("seconds", 0.0))
        log.info("resumed from %s at iteration %d", last_good, start_it)
        ckio.remove(skipped)  # newer than the one resumed from: they would be taken for this run's
    else:
        # a fresh start: checkpoints still here are unusable or of another config; left in
        # place, the highest-numbered of them would outlive this run's own (keep_checkpoints)
        # and become its checkpoint.pt
        stale = ckio.list() if rank == 0 else []
        if stale and resume == "auto":
            log.warning("starting afresh in %s: removing %d checkpoint(s) that cannot be resumed",
                        run_dir, len(stale))
        ckio.remove(stale)
        if rank == 0:
            ckio.final.unlink(missing_ok=True)
        if pre_train is not None:
            pre_train(step.rng)
            step.ema.load_state_dict(generator.state_dict())
        if world > 1:
            torch.manual_seed(D.rank_seed(train.seed, rank, "warmup"))
        for _ in range(train.score_warmup):
            all_finite({"student-score warm-up loss": step.score_step()}, 0, None)
    del state
    for net in (step.generator, step.ema, step.student):  # identical on every rank from here on
        D.broadcast_module(net)

    t0 = time.perf_counter()

    def write_logs():
        if rank != 0:
            return
        write_csv(run_dir / "train_log.csv", rows, fieldnames=list(rows[0]) if rows else ["iteration"])
        if eval_rows:
            write_csv(run_dir / "eval_log.csv", eval_rows)

    save_seconds = [0.0]  # the last checkpoint's write time (the deadline check reserves it)

    def save(it: int) -> Path:
        if rank != 0:
            return ckio.path(it)
        t_save = time.perf_counter()
        path = ckio.save(it, {"format": DISTILL_FORMAT, "iteration": it, "config_hash": cfg_hash,
                              "config": cfg_record, **step.state_dict(), "log": rows, "eval_log": eval_rows,
                              "seconds": elapsed_before + time.perf_counter() - t0, "world_size": world})
        write_logs()
        save_seconds[0] = time.perf_counter() - t_save
        return path

    end_it = train.iterations if stop_after is None else min(train.iterations, stop_after)
    bar = tqdm(range(start_it, end_it), initial=start_it, total=train.iterations, disable=not progress or rank != 0,
               desc=f"distill {run_dir.name}", dynamic_ncols=True, mininterval=1.0)
    loss_g = loss_s = torch.tensor(float("nan"))
    slowest = 0.0  # the longest iteration of this job so far (the deadline reserves one more)
    for it in bar:
        t_it = time.perf_counter()
        out = step(it, last_good)
        loss_g, loss_s, loss_value = out.loss_g, out.loss_s, out.loss_value
        done = it + 1
        if done % train.log_every == 0 or done == end_it:
            eps_ms, nu_ms = out.estep.eps.pow(2).mean(), out.estep.nu.pow(2).mean()
            if world > 1:  # the global batch's values
                loss_value, loss_s, eps_ms, nu_ms = D.all_reduce_mean(
                    torch.stack([t.to(device).float() for t in (loss_value, loss_s, eps_ms, nu_ms)]))
            rows.append({"iteration": done, "loss_g": float(loss_value), "loss_s": float(loss_s),
                         "grad_norm_g": float(out.grad_norm), "eps_rms": float(eps_ms.sqrt()),
                         "nu_rms": float(nu_ms.sqrt()),
                         "seconds": round(elapsed_before + time.perf_counter() - t0, 3)})
            bar.set_postfix(loss_g=f"{float(loss_value):.3g}", loss_s=f"{float(loss_s):.3g}")
        if evaluate is not None and train.eval_every and rank == 0 and (done % train.eval_every == 0
                                                                        or done == train.iterations):
            eval_rows.append({"iteration": done, **evaluate(step.ema, done)})
        saved = done % train.checkpoint_every == 0 or done == end_it
        if saved:
            last_good = save(done)
        took = time.perf_counter() - t_it - (save_seconds[0] if saved else 0.0)
        # from the second iteration on, the first one's warm-up (torch.compile, allocator) no longer counts
        slowest = took if it == start_it + 1 else max(slowest, took)
        if deadline is not None and done < end_it:
            stop = monotonic() + slowest + max(save_seconds[0], slowest) > deadline
            if D.broadcast_object(stop):  # rank 0's clock decides for every rank
                if not saved:
                    last_good = save(done)
                bar.close()
                D.barrier()
                raise TimeLimitReached(f"distill {run_dir.name} stopped before its time limit after iteration "
                                       f"{done} of {train.iterations} (checkpoint {ckio.path(done).name} saved); "
                                       "rerun the same command to resume")
    bar.close()
    if start_it >= end_it and last_good is None:
        last_good = save(end_it)
    elif start_it >= end_it:
        write_logs()  # a run killed between its last checkpoint and its logs
    if rank == 0 and end_it == train.iterations:
        ckio.publish(ckio.list()[-1])
    if world > 1:
        loss_g = D.all_reduce_mean(loss_g.detach().to(device))
        D.barrier()  # the other ranks return once rank 0's files are written
    seconds = elapsed_before + time.perf_counter() - t0
    return {"iterations": end_it, "train_seconds": round(seconds, 3), "loss_g": float(loss_g.detach()),
            "loss_s": float(loss_s), "config_hash": cfg_hash}
