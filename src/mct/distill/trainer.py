"""The distillation loop: E-step, M-step (Adam on theta), generator EMA, student-score
DSM updates, atomic checkpoints with exact resume, a CSV log and a progress bar.

One documented function, :func:`distill`, in the manner of edm2's training loop."""

from __future__ import annotations

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
from tqdm.auto import tqdm

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
        breaks the method; ALGORITHM.md section 11).
    score_warmup: DSM updates of the student score on the initial generator before step 1.
    sigma: noise levels of the E/M-step; score_sigma: of the student's DSM (None: same).
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


def _checkpoint_paths(run_dir: Path) -> list[Path]:
    ckdir = run_dir / "checkpoints"
    found = [(int(m.group(1)), p) for p in ckdir.glob("ckpt-*.pt") if (m := re.fullmatch(r"ckpt-(\d+)\.pt", p.name))]
    return [p for _, p in sorted(found)]


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
    if not torch.isfinite(value).all():
        keep = f"the last good checkpoint {last_good} is kept" if last_good else "no checkpoint was written yet"
        raise TrainingDiverged(f"non-finite {name} (NaN or inf) at iteration {it}; training stopped, {keep}. "
                               "Lower the learning rates or step sizes, or check the teacher.")


def distill(run_dir: str | Path, *, teacher: Callable, generator: nn.Module, student: nn.Module,
            sample_latents: Callable[[int, torch.Generator], tuple[torch.Tensor, Optional[torch.Tensor]]],
            em: EMConfig, train: TrainConfig, resume: str = "auto",
            pre_train: Optional[Callable[[torch.Generator], None]] = None,
            evaluate: Optional[Callable[[nn.Module, int], dict]] = None,
            device: str | torch.device = "cpu", progress: bool = True, extra_config: Optional[dict] = None,
            stop_after: Optional[int] = None) -> dict:
    """Distil ``teacher`` into the one-step ``generator`` by EM (ALGORITHM.md section 6).

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
    """
    run_dir = ensure_writable_dir(run_dir)
    device = torch.device(device)
    if resume not in ("auto", "yes", "no"):
        raise ConfigError(f"resume must be auto, yes or no, got {resume!r}")
    generator.to(device).train()
    student.to(device).train()
    ema = copy.deepcopy(generator).eval().requires_grad_(False)
    opt_g = torch.optim.Adam(generator.parameters(), lr=train.lr_g, betas=(train.beta1, train.beta2))
    opt_s = torch.optim.Adam(student.parameters(), lr=train.lr_s, betas=(train.beta1, train.beta2))
    rng = torch.Generator(device=device).manual_seed(train.seed)
    torch.manual_seed(train.seed)
    score_sigma = train.score_sigma or train.sigma
    cfg_record = {"em": to_dict(em), "train": to_dict(train), **(extra_config or {})}
    cfg_hash = config_hash(cfg_record)
    rows: list[dict] = []
    eval_rows: list[dict] = []
    start_it = 0
    elapsed_before = 0.0
    last_good: Optional[Path] = None

    def score_step():
        z, c = sample_latents(train.batch_size, rng)
        with torch.no_grad():
            x = generator(z, c)
        sig = sample_sigma(x.shape[0], score_sigma, rng, device)
        noise = torch.randn(x.shape, generator=rng, device=device)
        loss = edm_loss(student, x, sig, c, noise, train.sigma_data)
        opt_s.zero_grad(set_to_none=True)
        loss.backward()
        if train.grad_clip:
            nn.utils.clip_grad_norm_(student.parameters(), train.grad_clip)
        opt_s.step()
        return loss.detach()

    existing = _checkpoint_paths(run_dir) if resume != "no" else []
    state = None
    for path in reversed(existing):
        try:
            cand = load_checkpoint(path)
        except CheckpointError as exc:
            log.warning("skipping unusable checkpoint: %s", exc)
            continue
        if cand.get("config_hash") != cfg_hash:
            log.warning("checkpoint %s was written with another config; not resuming from it", path)
            continue
        state, last_good = cand, path
        break
    if resume == "yes" and state is None:
        raise CheckpointError(f"--resume: no usable checkpoint with this config in {run_dir / 'checkpoints'}")
    if state is not None:
        load_state_strict(generator, state["generator"], "generator", last_good)
        load_state_strict(ema, state["generator_ema"], "generator EMA", last_good)
        load_state_strict(student, state["student"], "student score", last_good)
        opt_g.load_state_dict(state["opt_g"])
        opt_s.load_state_dict(state["opt_s"])
        rng.set_state(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        start_it = int(state["iteration"])
        rows = list(state.get("log", []))
        eval_rows = list(state.get("eval_log", []))
        elapsed_before = float(state.get("seconds", 0.0))
        log.info("resumed from %s at iteration %d", last_good, start_it)
    else:
        if resume == "no":
            for p in _checkpoint_paths(run_dir):
                p.unlink()
        if pre_train is not None:
            pre_train(rng)
            ema.load_state_dict(generator.state_dict())
        for _ in range(train.score_warmup):
            _finite("student-score warm-up loss", score_step(), 0, None)

    t0 = time.perf_counter()

    def save(it: int) -> Path:
        ckpt = {
            "format": CHECKPOINT_FORMAT, "iteration": it, "config_hash": cfg_hash, "config": cfg_record,
            "generator": generator.state_dict(), "generator_ema": ema.state_dict(),
            "student": student.state_dict(), "opt_g": opt_g.state_dict(), "opt_s": opt_s.state_dict(),
            "rng": rng.get_state(), "torch_rng": torch.get_rng_state(), "log": rows, "eval_log": eval_rows,
            "seconds": elapsed_before + time.perf_counter() - t0,
        }
        path = torch_save(run_dir / "checkpoints" / f"ckpt-{it:08d}.pt", ckpt)
        for old in _checkpoint_paths(run_dir)[:-train.keep_checkpoints]:
            old.unlink()
        write_csv(run_dir / "train_log.csv", rows, fieldnames=list(rows[0]) if rows else ["iteration"])
        if eval_rows:
            write_csv(run_dir / "eval_log.csv", eval_rows)
        return path

    end_it = train.iterations if stop_after is None else min(train.iterations, stop_after)
    bar = tqdm(range(start_it, end_it), initial=start_it, total=train.iterations, disable=not progress,
               desc=f"distill {run_dir.name}", dynamic_ncols=True, mininterval=1.0)
    loss_g = loss_s = torch.tensor(float("nan"))
    for it in bar:
        z0, cond = sample_latents(train.batch_size, rng)
        eps0 = torch.randn(z0.shape, generator=rng, device=device)
        sigma = sample_sigma(z0.shape[0], train.sigma, rng, device)
        loss_g, res, g_out = em_generator_loss(generator, teacher, student, z0, eps0, sigma, cond, em, rng)
        loss_value = loss_g.detach()
        _finite("teacher output", res.teacher_last, it + 1, last_good)
        _finite("generator output", g_out.detach(), it + 1, last_good)
        _finite("M-step loss", loss_g.detach(), it + 1, last_good)
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
            rows.append({"iteration": done, "loss_g": float(loss_value), "loss_s": float(loss_s),
                         "grad_norm_g": float(grad_norm), "eps_rms": float(res.eps.pow(2).mean().sqrt()),
                         "nu_rms": float(res.nu.pow(2).mean().sqrt()),
                         "seconds": round(elapsed_before + time.perf_counter() - t0, 3)})
            bar.set_postfix(loss_g=f"{float(loss_value):.3g}", loss_s=f"{float(loss_s):.3g}")
        if evaluate is not None and train.eval_every and (done % train.eval_every == 0 or done == train.iterations):
            eval_rows.append({"iteration": done, **evaluate(ema, done)})
        if done % train.checkpoint_every == 0 or done == end_it:
            last_good = save(done)
    bar.close()
    if start_it >= end_it and last_good is None:
        last_good = save(end_it)
    final = _checkpoint_paths(run_dir)[-1]
    if end_it == train.iterations:
        torch_save(run_dir / "checkpoint.pt", torch.load(final, map_location="cpu", weights_only=True))
    seconds = elapsed_before + time.perf_counter() - t0
    return {"iterations": end_it, "train_seconds": round(seconds, 3), "loss_g": float(loss_g.detach()),
            "loss_s": float(loss_s), "config_hash": cfg_hash}
