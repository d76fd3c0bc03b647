"""toy2d: an 8-mode 2-D mixture with an exact denoiser as teacher, MLP generator and
MLP student score. Mode-seeking (K = 1) versus mode-covering (large K) is seen
directly in the exact metrics (docs/method.md#reverse-kl-limit, docs/benchmarks.md#toy2d)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..config import to_dict
from ..diffusion.edm import SigmaDist
from ..distill.em import EMConfig
from ..distill.trainer import TrainConfig, distill, load_checkpoint, load_state_strict
from ..errors import ConfigError
from ..io import ensure_writable_dir, write_bytes, write_csv, write_json
from ..metrics.toy import toy_metrics
from ..nets.mlp import MLPGenerator, mlp_denoiser
from ..teachers.gmm import ring_gmm
from .base import Benchmark, RunContext

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ToyTeacherConfig:
    """The exact teacher: ``modes`` Gaussians of std ``std`` on a ring of ``radius``;
    weights 'linear' (proportional to 1..modes) or 'equal'."""

    modes: int = 8
    radius: float = 4.0
    std: float = 0.25
    weights: str = "linear"

    def __post_init__(self):
        if self.modes < 1:
            raise ConfigError(f"modes must be >= 1, got {self.modes}")
        if self.radius <= 0 or self.std <= 0:
            raise ConfigError("radius and std must be > 0")
        if self.weights not in ("linear", "equal"):
            raise ConfigError(f"weights must be 'linear' or 'equal', got {self.weights!r}")


@dataclass(frozen=True)
class MLPConfig:
    hidden: int = 128
    layers: int = 3

    def __post_init__(self):
        if self.hidden < 1 or self.layers < 1:
            raise ConfigError(f"hidden and layers must be >= 1, got {self.hidden}, {self.layers}")


@dataclass(frozen=True)
class ToyInitConfig:
    """'Init from teacher' for an analytic teacher: regress g(z) onto D_T(sigma_g z, sigma_g)
    for ``steps`` Adam steps (0 = random init, the ablation)."""

    steps: int = 500
    sigma_g: float = 2.0
    lr: float = 1e-3
    batch_size: int = 512

    def __post_init__(self):
        if self.steps < 0 or self.batch_size < 1 or self.sigma_g <= 0 or self.lr <= 0:
            raise ConfigError("init needs steps >= 0, batch_size >= 1, sigma_g > 0, lr > 0")


@dataclass(frozen=True)
class ToyEvalConfig:
    num_samples: int = 20000
    seed: int = 1234
    covered_fraction: float = 0.25

    def __post_init__(self):
        if self.num_samples < 10:
            raise ConfigError(f"num_samples must be >= 10, got {self.num_samples}")
        if not 0 < self.covered_fraction <= 1:
            raise ConfigError(f"covered_fraction must be in (0, 1], got {self.covered_fraction}")


def _toy_train_default() -> TrainConfig:
    return TrainConfig(iterations=600, batch_size=512, lr_g=2e-4, lr_s=2e-4, beta1=0.0, score_updates=5,
                       score_warmup=300, ema_decay=0.99, sigma=SigmaDist("loguniform", 0.1, 4.0),
                       sigma_data=2.0, checkpoint_every=200, log_every=10)


@dataclass(frozen=True)
class Toy2DConfig:
    """The toy2d benchmark section: teacher, networks, init, E/M-step knobs, training, evaluation, variants.
    ``num_threads``: torch CPU threads per stage (0 = torch's default). The networks are tiny, so
    one thread is fastest, and the workflow runs one stage per core side by side."""

    teacher: ToyTeacherConfig = field(default_factory=ToyTeacherConfig)
    generator: MLPConfig = field(default_factory=MLPConfig)
    score: MLPConfig = field(default_factory=MLPConfig)
    init: ToyInitConfig = field(default_factory=ToyInitConfig)
    em: EMConfig = field(default_factory=lambda: EMConfig(num_steps=8, gamma_eps=0.1, gamma_z=0.05))
    train: TrainConfig = field(default_factory=_toy_train_default)
    eval: ToyEvalConfig = field(default_factory=ToyEvalConfig)
    variants: dict[str, Any] = field(default_factory=dict)
    num_threads: int = 1

    def __post_init__(self):
        if not isinstance(self.num_threads, int) or self.num_threads < 0:
            raise ConfigError(f"num_threads must be an integer >= 0, got {self.num_threads!r}")


class Toy2D(Benchmark):
    name = "toy2d"
    config_cls = Toy2DConfig
    stages = ("distill", "evaluate", "summarize")

    @staticmethod
    def teacher(cfg: Toy2DConfig):
        t = cfg.teacher
        return ring_gmm(t.modes, t.radius, t.std, t.weights)

    @staticmethod
    def networks(cfg: Toy2DConfig):
        gen = MLPGenerator(2, cfg.generator.hidden, cfg.generator.layers)
        student = mlp_denoiser(2, cfg.score.hidden, cfg.score.layers, sigma_data=cfg.train.sigma_data)
        return gen, student

    def distill(self, section: dict, ctx: RunContext, variant: str, resume: str = "auto", stop_after=None) -> dict:
        cfg = self.setup(section, variant)
        run_dir = ensure_writable_dir(ctx.run_dir(self.name, variant))
        torch.manual_seed(cfg.train.seed)  # network initialisation is part of the run's seed
        teacher = self.teacher(cfg).to(ctx.device)
        gen, student = self.networks(cfg)
        device = torch.device(ctx.device)

        def sample_latents(n, rng):
            return torch.randn(n, 2, generator=rng, device=device), None

        def pre_train(rng):
            init = cfg.init
            if init.steps == 0:
                return
            opt = torch.optim.Adam(gen.parameters(), lr=init.lr)
            for _ in range(init.steps):
                z = torch.randn(init.batch_size, 2, generator=rng, device=device)
                with torch.no_grad():
                    target = teacher(init.sigma_g * z, torch.full((z.shape[0],), init.sigma_g, device=device))
                loss = ((gen(z) - target) ** 2).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

        summary = distill(run_dir, teacher=teacher, generator=gen, student=student, sample_latents=sample_latents,
                          em=cfg.em, train=cfg.train, resume=resume, pre_train=pre_train, device=device,
                          progress=ctx.progress, extra_config={"bench": self.name, "variant": variant,
                                                               "init": to_dict(cfg.init), "teacher": to_dict(cfg.teacher),
                                                               "generator": to_dict(cfg.generator), "score": to_dict(cfg.score)},
                          stop_after=stop_after)
        log.info("toy2d %s: %d iterations in %.1f s", variant, summary["iterations"], summary["train_seconds"])
        return summary

    def load_generator(self, cfg: Toy2DConfig, path, ema: bool = True):
        state = load_checkpoint(path)
        gen, _ = self.networks(cfg)
        load_state_strict(gen, state["generator_ema" if ema else "generator"], "generator", path)
        return gen.eval(), state

    def evaluate(self, section: dict, ctx: RunContext, variant: str) -> dict:
        cfg = self.setup(section, variant)
        run_dir = ctx.run_dir(self.name, variant)
        gen, state = self.load_generator(cfg, run_dir / "checkpoint.pt")
        teacher = self.teacher(cfg)
        g = torch.Generator().manual_seed(cfg.eval.seed)
        t0 = time.perf_counter()
        with torch.no_grad():
            z = torch.randn(cfg.eval.num_samples, 2, generator=g)
            x = gen(z)
        sample_seconds = time.perf_counter() - t0
        reference = teacher.sample(cfg.eval.num_samples, generator=g)
        metrics = toy_metrics(x, teacher, reference, cfg.eval.covered_fraction)
        metrics.update({
            "variant": variant, "K": cfg.em.num_steps, "reparam": cfg.em.reparam,
            "noise_cancel": cfg.em.noise_cancel, "gamma_eps": cfg.em.gamma_eps, "gamma_z": cfg.em.gamma_z,
            "init": "teacher" if cfg.init.steps > 0 else "random", "nfe": 1,
            "iterations": int(state["iteration"]), "train_seconds": round(float(state.get("seconds", 0.0)), 3),
            "samples_per_second": round(cfg.eval.num_samples / max(sample_seconds, 1e-9), 1),
            "seed": cfg.train.seed,
        })
        import io as _io

        buf = _io.BytesIO()
        np.savez_compressed(buf, x=x[:5000].numpy().astype(np.float32))
        write_bytes(run_dir / "samples.npz", buf.getvalue())
        write_json(ctx.bench_dir(self.name) / "teacher.json", {
            "means": teacher.means.tolist(), "stds": teacher.stds.tolist(), "weights": teacher.weights.tolist()})
        write_json(run_dir / "metrics.json", metrics)
        self._scatter(run_dir / "samples.png", x[:5000], teacher, f"toy2d {variant}")
        return metrics

    @staticmethod
    def _scatter(path, x, teacher, title):
        import io as _io

        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        lim = float(teacher.means.abs().max() + 4 * teacher.stds.max() + 0.5)
        grid = torch.linspace(-lim, lim, 200)
        xx, yy = torch.meshgrid(grid, grid, indexing="xy")
        dens = teacher.log_prob(torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)).exp().reshape(200, 200)
        fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
        ax.contourf(xx.numpy(), yy.numpy(), dens.numpy(), levels=20, cmap="Greys")
        ax.scatter(x[:, 0].numpy(), x[:, 1].numpy(), s=1, alpha=0.4, color="tab:red")
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_title(title)
        buf = _io.BytesIO()
        fig.savefig(buf, format="png", bbox_inches="tight")
        plt.close(fig)
        write_bytes(path, buf.getvalue())

    def summarize(self, section: dict, ctx: RunContext) -> list[dict]:
        cols = ["variant", "K", "reparam", "noise_cancel", "init", "gamma_eps", "gamma_z", "mode_mass_tv",
                "modes_covered", "mean_true_logpdf", "energy_distance", "train_seconds"]
        rows = []
        for _, m in self.variant_metrics(section, ctx):
            rows.append({c: m.get(c) for c in cols})
        write_csv(ctx.bench_dir(self.name) / "summary.csv", rows, fieldnames=cols)
        return rows


BENCHMARK = Toy2D()
