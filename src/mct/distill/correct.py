"""The joint MCMC correction of one-step samples (docs/method.md#mcmc-correction): with the
generator frozen, run the reparametrised Langevin chain on (eps, z) at one noise level and
read the teacher's denoised estimate D_T(x_K) as the corrected sample."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

from ..errors import ConfigError, MCTError
from .em import EMConfig, e_step


@dataclass(frozen=True)
class CorrectConfig:
    """``steps`` reparametrised Langevin steps on (eps, z) at noise level ``sigma``, in chunks of
    ``chunk`` (a finiteness check between chunks); ``num_samples`` images from ``seed``."""

    steps: int = 100
    sigma: float = 0.5
    gamma_eps: float = 0.05
    gamma_z: float = 0.02
    num_samples: int = 100
    chunk: int = 25
    seed: int = 4321

    def __post_init__(self):
        if self.steps < 1 or self.num_samples < 10 or self.chunk < 1 or self.sigma <= 0:
            raise ConfigError("correct needs steps >= 1, num_samples >= 10, chunk >= 1, sigma > 0")
        EMConfig(num_steps=1, gamma_eps=self.gamma_eps, gamma_z=self.gamma_z)


def mcmc_correct(generator: Callable, teacher: Callable, student: Callable, z: Tensor, cond: Optional[Tensor],
                 cc: CorrectConfig, rng: torch.Generator, on_chunk: Optional[Callable[[int], None]] = None) -> dict:
    """Correct the one-step samples g(z): returns ``before`` = g(z0), ``after`` = D_T(x_K, sigma),
    ``generator_at_z_K`` = g(z_K) and ``z_K``. ``eps`` is drawn from ``rng`` after ``z`` was."""
    n = z.shape[0]
    eps = torch.randn(z.shape, generator=rng, device=z.device)
    sigma = torch.full((n,), cc.sigma, device=z.device)
    with torch.no_grad():
        before = generator(z, cond)
    done, res, z_k = 0, None, z
    while done < cc.steps:
        steps = min(cc.chunk, cc.steps - done)
        em = EMConfig(num_steps=steps, gamma_eps=cc.gamma_eps, gamma_z=cc.gamma_z, reparam=True)
        res = e_step(generator, teacher, student, z_k, eps, sigma, cond, em, rng)  # continues the chain
        z_k, eps = res.z, res.eps
        if not (torch.isfinite(z_k).all() and torch.isfinite(eps).all()):
            raise MCTError(f"the correction chain diverged after {done + steps} steps; lower correct.gamma_eps "
                           "or correct.gamma_z")
        done += steps
        if on_chunk is not None:
            on_chunk(steps)
    with torch.no_grad():
        after = teacher(res.x, sigma, cond)
        gen_after = generator(z_k, cond)
    return {"before": before, "after": after, "generator_at_z_K": gen_after, "z_K": z_k}
