"""One iteration of EM distillation, as an object: :class:`DistillStep` owns the generator,
its EMA, the student score, both optimisers and the run's random generator, and runs the
E-step, the M-step, the EMA and the student-score updates of one iteration.
:func:`mct.distill.trainer.distill` calls it inside its loop (with checkpoints, logs and
evaluation around it); ``mct bench`` times the same object, so what is measured is what trains."""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .. import distributed as D
from ..checkpoint import load_state_strict
from ..diffusion.edm import edm_loss, sample_sigma
from ..errors import ConfigError, TrainingDiverged
from ..training.ema import ema_update
from .em import EMConfig, EStepResult, em_generator_loss

if TYPE_CHECKING:
    from .trainer import TrainConfig

PRECISIONS = ("fp32", "bf16")


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


def all_finite(values: dict[str, torch.Tensor], it: int, last_good: Optional[Path]):
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


@dataclass
class StepResult:
    """What one :class:`DistillStep` iteration reports (tensors on the device, this rank's values)."""

    loss_g: torch.Tensor      # the M-step surrogate (the last micro-step's, with its graph freed)
    loss_value: torch.Tensor  # the surrogate averaged over this rank's micro-steps (logged)
    loss_s: torch.Tensor      # the last student-score DSM loss (NaN without score updates)
    grad_norm: torch.Tensor   # the generator's gradient norm before clipping
    estep: EStepResult        # the E-step's final state (eps and nu are logged)


class DistillStep:
    """The per-iteration work of :func:`distill`, as one object that owns the networks'
    training state: the generator and its EMA, the student score, both Adam optimisers and
    the run's random generator ``rng``. ``step(it)`` runs iteration ``it`` (0-based): draw
    z0, eps0, sigma; E-step; one Adam step on the M-step surrogate; the generator EMA;
    ``train.score_updates`` DSM steps of the student score (:meth:`score_step`).
    :func:`distill` adds checkpoints, logs and evaluation around it; ``mct bench`` times
    this same object (mct.bench), so what is measured is what trains.

    Built in the order distill() needs for exact resume and bit-identical runs: the networks
    moved to ``device`` (and channels_last), the EMA copied from the generator, the
    optimisers, ``rng`` seeded with ``train.seed``; then, under torchrun, DDP wrappers; then
    torch.compile and bf16 autocast of the forward passes (TrainConfig says which)."""

    def __init__(self, *, teacher: Callable, generator: nn.Module, student: nn.Module,
                 sample_latents: Callable[[int, torch.Generator], tuple[torch.Tensor, Optional[torch.Tensor]]],
                 em: EMConfig, train: TrainConfig, device: str | torch.device = "cpu"):
        device = torch.device(device)
        self.world, self.rank, self.accum = D.world_size(), D.rank(), train.accumulation
        if self.world > 1 and device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())  # this rank's GPU
        if train.batch_size % (self.world * self.accum):
            raise ConfigError(f"batch_size {train.batch_size} (the global batch) must be divisible by processes x "
                              f"accumulation = {self.world} x {self.accum}")
        self.device, self.em, self.train, self.sample_latents = device, em, train, sample_latents
        self.sharded = self.world * self.accum > 1
        self.score_sigma = train.score_sigma or train.sigma
        _set_tf32(device, train.tf32)
        self.generator = generator.to(device).train()
        self.student = student.to(device).train()
        if train.channels_last:
            for net in (generator, student, teacher):
                if isinstance(net, nn.Module):
                    net.to(memory_format=torch.channels_last)
        self.ema = copy.deepcopy(generator).eval().requires_grad_(False)
        betas = (train.beta1, train.beta2)
        self.opt_g = torch.optim.Adam(generator.parameters(), lr=train.lr_g, betas=betas)
        self.opt_s = torch.optim.Adam(student.parameters(), lr=train.lr_s, betas=betas)
        self.rng = torch.Generator(device=device).manual_seed(train.seed)
        # the networks as each pass runs them: DDP where gradients are synchronised (the M-step's
        # generator pass, the student's DSM), the bare module elsewhere; then compile, autocast
        self.gen_ddp, self.stu_ddp = generator, student
        if self.world > 1:
            ddp_kw = {"find_unused_parameters": train.find_unused_parameters}
            if device.type == "cuda":
                ddp_kw["device_ids"] = [device.index]
            if any(p.requires_grad for p in generator.parameters()):
                self.gen_ddp = DistributedDataParallel(generator, **ddp_kw)
            if any(p.requires_grad for p in student.parameters()):
                self.stu_ddp = DistributedDataParallel(student, **ddp_kw)
        compiled = torch.compile if train.compile else (lambda f: f)
        run = lambda f: _autocast(compiled(f), device, train.precision)  # noqa: E731
        self.gen_fwd, self.gen_train = run(generator), run(self.gen_ddp)
        self.stu_fwd, self.stu_train = run(student), run(self.stu_ddp)
        self.teacher_fwd = run(teacher) if isinstance(teacher, nn.Module) else _autocast(teacher, device,
                                                                                         train.precision)

    # --- checkpoint state (no per-rank state: a checkpoint resumes on any number of processes)
    def state_dict(self) -> dict:
        return {"generator": self.generator.state_dict(), "generator_ema": self.ema.state_dict(),
                "student": self.student.state_dict(), "opt_g": self.opt_g.state_dict(),
                "opt_s": self.opt_s.state_dict(), "rng": self.rng.get_state(), "torch_rng": torch.get_rng_state()}

    def load_state_dict(self, state: dict, path) -> None:
        load_state_strict(self.generator, state["generator"], "generator", path)
        load_state_strict(self.ema, state["generator_ema"], "generator EMA", path)
        load_state_strict(self.student, state["student"], "student score", path)
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_s.load_state_dict(state["opt_s"])
        self.rng.set_state(state["rng"])
        if self.world == 1:  # several ranks re-derive theirs from (seed, rank, iteration)
            torch.set_rng_state(state["torch_rng"])

    def _no_sync(self, ddp, micro: int):
        """Gradient synchronisation only on the last accumulation micro-step."""
        last = micro == self.accum - 1
        return ddp.no_sync() if isinstance(ddp, DistributedDataParallel) and not last else contextlib.nullcontext()

    # --- the student score's DSM update
    def score_step(self) -> torch.Tensor:
        """One DSM update of the student score on a fresh batch of generator samples; its loss."""
        tr, rng, device = self.train, self.rng, self.device
        z, c = self.sample_latents(tr.batch_size, rng)
        if self.sharded:
            return self._score_step_sharded(z, c)
        with torch.no_grad():
            x = self.gen_fwd(z, c)
        sig = sample_sigma(x.shape[0], self.score_sigma, rng, device)
        noise = torch.randn(x.shape, generator=rng, device=device)
        loss = edm_loss(self.stu_train, x, sig, c, noise, tr.sigma_data)
        self.opt_s.zero_grad(set_to_none=True)
        loss.backward()
        if tr.grad_clip:
            nn.utils.clip_grad_norm_(self.student.parameters(), tr.grad_clip)
        self.opt_s.step()
        return loss.detach()

    def _score_step_sharded(self, z, c):
        """score_step on this rank's rows of the global batch, in ``accum`` micro-steps."""
        tr, rng, device, accum = self.train, self.rng, self.device, self.accum
        n = tr.batch_size
        shards = [D.batch_rows(n, self.rank, self.world, accum, m) for m in range(accum)]
        conds = [D.slice_batch(c, r, n) for r in shards]
        with torch.no_grad():
            x = self.gen_fwd(z[shards[0]], conds[0])
        sig = sample_sigma(n, self.score_sigma, rng, device)
        noise = torch.randn((n,) + tuple(x.shape[1:]), generator=rng, device=device)
        self.opt_s.zero_grad(set_to_none=True)
        total = torch.zeros((), device=device)
        for m, r in enumerate(shards):
            if m:
                with torch.no_grad():
                    x = self.gen_fwd(z[r], conds[m])
            with self._no_sync(self.stu_ddp, m):
                loss = edm_loss(self.stu_train, x, sig[r], conds[m], noise[r], tr.sigma_data)
                (loss / accum if accum > 1 else loss).backward()
            total += loss.detach()
        if tr.grad_clip:
            nn.utils.clip_grad_norm_(self.student.parameters(), tr.grad_clip)
        self.opt_s.step()
        return total / accum

    # --- the generator's EM update
    def _m_step_sharded(self, z0, eps0, sigma, cond, it, last_good):
        """E-step and M-step backward on this rank's rows, in ``accum`` micro-steps; every
        micro-step replays the shared generator from the same state and draws the global
        batch's Langevin noise, so the generator ends where a single process leaves it."""
        n, rng, accum = self.train.batch_size, self.rng, self.accum
        start = rng.get_state()
        self.opt_g.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        for m in range(accum):
            if m:
                rng.set_state(start)
            r = D.batch_rows(n, self.rank, self.world, accum, m)
            with self._no_sync(self.gen_ddp, m):
                loss, res, g_out = em_generator_loss(
                    self.gen_fwd, self.teacher_fwd, self.stu_fwd, z0[r], eps0[r], sigma[r],
                    D.slice_batch(cond, r, n), self.em, rng, noise=D.global_noise(n, r, rng),
                    train_generator=self.gen_train)
                all_finite({"generator output": g_out.detach(), "teacher output": res.teacher_last,
                             "M-step loss": loss.detach()}, it + 1, last_good)
                (loss / accum if accum > 1 else loss).backward()
            total += loss.detach()
        return loss, res, total / accum

    def __call__(self, it: int, last_good: Optional[Path] = None) -> StepResult:
        """Iteration ``it`` (0-based). ``last_good``: the checkpoint a divergence error names."""
        tr, rng, device = self.train, self.rng, self.device
        if self.world > 1:
            torch.manual_seed(D.rank_seed(tr.seed, self.rank, it))
        z0, cond = self.sample_latents(tr.batch_size, rng)
        eps0 = torch.randn(z0.shape, generator=rng, device=device)
        sigma = sample_sigma(z0.shape[0], tr.sigma, rng, device)
        if self.sharded:
            loss_g, res, loss_value = self._m_step_sharded(z0, eps0, sigma, cond, it, last_good)
        else:
            loss_g, res, g_out = em_generator_loss(self.gen_fwd, self.teacher_fwd, self.stu_fwd, z0, eps0, sigma,
                                                   cond, self.em, rng)
            loss_value = loss_g.detach()
            all_finite({"generator output": g_out.detach(), "teacher output": res.teacher_last,
                         "M-step loss": loss_value}, it + 1, last_good)
            self.opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
        grads = [p.grad.detach() for p in self.generator.parameters() if p.grad is not None]
        grad_norm = torch.sqrt(sum((g ** 2).sum() for g in grads))
        all_finite({"generator gradient": grad_norm}, it + 1, last_good)
        if tr.grad_clip:
            nn.utils.clip_grad_norm_(self.generator.parameters(), tr.grad_clip)
        self.opt_g.step()
        ema_update(self.ema, self.generator, tr.ema_decay)
        loss_s = torch.tensor(float("nan"))
        for _ in range(tr.score_updates):
            loss_s = self.score_step()
            all_finite({"student-score loss": loss_s}, it + 1, last_good)
        return StepResult(loss_g, loss_value, loss_s, grad_norm, res)
