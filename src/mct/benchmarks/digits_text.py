"""digits-text: the CPU stand-in for text-to-image (sd15), end to end in minutes.

The same roles as Stable Diffusion, tiny and made here:

- captions generated from the digit labels with a few templates ("a handwritten seven",
  "the digit 7", ...);
- a tiny CLIP (open_clip, custom config, built offline) trained contrastively on the
  image/caption pairs of the digits train split (``mct clip``); it plays two parts, like
  CLIP does for SD: its text tower conditions the teacher, and it scores samples
  (CLIP score; the real held-out images' CLIP score is the ceiling);
- a small text-conditioned EDM teacher (the digits U-Net with ``cond_dim`` = the CLIP
  embedding size, conditioned on the normalised CLIP text embedding of a caption, trained
  with caption dropout to the null (zero) conditioning; ``mct teacher train``), sampled and
  distilled with classifier-free guidance (:class:`~mct.teachers.base.GuidedDenoiser`);
- MCT distillation by the stages written once (:mod:`mct.benchmarks.base`): generator and
  student score start as copies of the teacher, g(z, c) = D_theta(sigma_g z, sigma_g, c);
- FID/KID/precision/recall on the digits benchmark's feature network
  (``results/digits/features/checkpoint.pt``) against the held-out split, the CLIP score,
  and how often the digits classifier reads the digit the caption asked for.

Outputs (``results/digits-text/``): ``clip/{checkpoint.pt, metrics.json, train_log.csv,
open_clip_config.json, open_clip_model.safetensors}``, ``teacher/{checkpoint.pt,
train_log.csv, metrics.json, samples.png}``, ``runs/<variant>/{checkpoint.pt,
train_log.csv, metrics.json, samples.png}``, ``summary.csv``.

Cost of config/default.yaml (CPU seconds, one thread, imports included; measured on the
2-core machine): clip 23, teacher train 83, teacher eval 23, distill mct 197 / k1 98,
evaluate 14 each, summarize 4: about 455 CPU-s in all, 320 on the longest chain
(clip -> teacher -> distill mct -> evaluate mct). The distillation dominates: fewer
iterations cut it proportionally but cost FID (100 instead of 150 iterations: FID 3.65
instead of 1.12 on the digits features)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor

from ..diffusion.edm import SigmaDist
from ..diffusion.samplers import SAMPLERS
from ..distill.em import EMConfig
from ..distill.trainer import TrainConfig
from ..errors import CheckpointError, ConfigError
from ..data.captions import CaptionConfig, captions_of
from ..data.digits import DigitsDataConfig
from ..nets.unet import UNetConfig
from ..training.clip import TinyClipConfig
from .base import RunContext
from .images import ImageBenchmark

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- config


@dataclass(frozen=True)
class DTTeacherConfig:
    """The text-conditioned EDM teacher: U-Net width/depth, EDM training (lognormal sigma,
    Adam, EMA), caption dropout to the null conditioning, and the guidance scale w used when
    it is sampled and distilled."""

    net: UNetConfig = field(default_factory=lambda: UNetConfig(model_channels=16, channel_mult=(1, 2)))
    iterations: int = 600
    batch_size: int = 128
    lr: float = 2e-3
    ema_decay: float = 0.995
    cond_drop: float = 0.15
    sigma: SigmaDist = field(default_factory=lambda: SigmaDist("lognormal", 0.002, 80.0, -1.2, 1.2))
    sigma_data: float = 0.5
    guidance: float = 2.0
    log_every: int = 50
    seed: int = 0

    def __post_init__(self):
        if self.iterations < 1 or self.batch_size < 1 or self.log_every < 1:
            raise ConfigError("iterations, batch_size and log_every must be >= 1")
        if self.lr <= 0 or self.sigma_data <= 0:
            raise ConfigError("lr and sigma_data must be > 0")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if not 0 <= self.cond_drop < 1:
            raise ConfigError(f"cond_drop must be in [0, 1), got {self.cond_drop}")
        if self.guidance < 0:
            raise ConfigError(f"guidance must be >= 0, got {self.guidance}")


@dataclass(frozen=True)
class DTEvalConfig:
    """num_samples generated per evaluation (labels balanced, templates cycled);
    teacher_nfe / teacher_sampler / sigma_min / sigma_max / rho: the teacher's own sampler.
    features: the feature-network checkpoint (null: the digits benchmark's)."""

    num_samples: int = 1000
    batch_size: int = 500
    seed: int = 1234
    teacher_nfe: int = 15
    teacher_sampler: str = "heun"
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    features: Optional[str] = None
    prc: bool = True
    grid: int = 100

    def __post_init__(self):
        if self.num_samples < 10 or self.batch_size < 1 or self.teacher_nfe < 1 or self.grid < 1:
            raise ConfigError("num_samples must be >= 10; batch_size, teacher_nfe, grid >= 1")
        if self.teacher_sampler not in SAMPLERS:
            raise ConfigError(f"teacher_sampler must be one of {', '.join(SAMPLERS)}, got {self.teacher_sampler!r}")
        if self.teacher_sampler == "heun" and self.teacher_nfe % 2 == 0:
            raise ConfigError(f"teacher_nfe must be odd for the Heun sampler, got {self.teacher_nfe}")
        if not 0 < self.sigma_min < self.sigma_max:
            raise ConfigError("need 0 < sigma_min < sigma_max")


def _dt_train_default() -> TrainConfig:
    return TrainConfig(iterations=150, batch_size=128, lr_g=2e-4, lr_s=5e-4, beta1=0.0, score_updates=2,
                       score_warmup=20, ema_decay=0.95, sigma=SigmaDist("loguniform", 0.02, 5.0),
                       sigma_data=0.5, checkpoint_every=50, log_every=10)


@dataclass(frozen=True)
class DigitsTextConfig:
    """The digits-text benchmark section. ``sigma_g``: of g(z, c) = D_theta(sigma_g z, sigma_g, c);
    ``init``: 'teacher' (copies) or 'random'. ``num_threads``: torch CPU threads of each stage
    (0 = torch's default; 1 suits these tiny networks and jobs that run side by side)."""

    data: DigitsDataConfig = field(default_factory=DigitsDataConfig)
    captions: CaptionConfig = field(default_factory=CaptionConfig)
    clip: TinyClipConfig = field(default_factory=TinyClipConfig)
    teacher: DTTeacherConfig = field(default_factory=DTTeacherConfig)
    sigma_g: float = 2.5
    init: str = "teacher"
    em: EMConfig = field(default_factory=lambda: EMConfig(num_steps=4, gamma_eps=0.1, gamma_z=0.05))
    train: TrainConfig = field(default_factory=_dt_train_default)
    eval: DTEvalConfig = field(default_factory=DTEvalConfig)
    num_threads: int = 1
    variants: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.num_threads < 0:
            raise ConfigError(f"num_threads must be >= 0, got {self.num_threads}")
        if not self.sigma_g > 0:
            raise ConfigError(f"sigma_g must be > 0, got {self.sigma_g}")
        if self.init not in ("teacher", "random"):
            raise ConfigError(f"init must be 'teacher' or 'random', got {self.init!r}")




class DigitsText(ImageBenchmark):
    name = "digits-text"
    config_cls = DigitsTextConfig
    stages = ("clip", "teacher_train", "teacher_eval", "distill", "evaluate", "summarize")
    uses = {"features": "digits"}
    stage_params = {"clip": ("data", "captions", "clip"),
                    "teacher_train": ("data", "captions", "clip", "teacher"),
                    "teacher_eval": ("data", "captions", "clip", "teacher", "eval")}
    summary_metrics = ("fid", "kid_mean", "precision", "recall", "clip_score", "clip_score_real", "class_accuracy")

    def settings(self, cfg: DigitsTextConfig) -> dict:
        return {**super().settings(cfg), "sigma_g": cfg.sigma_g, "guidance": cfg.teacher.guidance}

    def split(self, cfg: DigitsTextConfig):
        from ..data.digits import load_split

        return load_split(cfg.data.resolve(self.name), cfg.data.heldout_fraction, cfg.data.split_seed)

    def clip_path(self, ctx: RunContext) -> Path:
        return ctx.bench_dir(self.name) / "clip" / "checkpoint.pt"

    def features_file(self, cfg: DigitsTextConfig, ctx: RunContext) -> Path:
        return Path(cfg.eval.features) if cfg.eval.features else ctx.bench_dir("digits") / "features" / "checkpoint.pt"

    def read_clip(self, ctx: RunContext) -> dict:
        from ..checkpoint import read_checkpoint
        from ..metrics.clip import CLIP_FORMAT

        path = self.clip_path(ctx)
        if not path.exists():
            raise CheckpointError(f"CLIP checkpoint {path} does not exist; run `mct clip --bench {self.name}` first")
        return read_checkpoint(path, CLIP_FORMAT)

    def load_clip(self, ctx: RunContext):
        """The trained tiny CLIP as a :class:`~mct.metrics.clip.ClipScorer` and its checkpoint dict."""
        from ..metrics.clip import scorer_of_checkpoint

        state = self.read_clip(ctx)
        return scorer_of_checkpoint(state, self.clip_path(ctx), device=ctx.device, batch_size=512), state

    def stored_cond_table(self, cfg: DigitsTextConfig, ctx: RunContext) -> Tensor:
        """The conditioning table the CLIP stage computed and stored (the teacher and the
        distillation read it from there, without building the CLIP model)."""
        state = self.read_clip(ctx)
        if list(state.get("templates") or []) != list(cfg.captions.templates):
            raise CheckpointError(f"{self.clip_path(ctx)} was made with other caption templates; "
                                  f"rerun `mct clip --bench {self.name}`")
        table = state.get("cond_table")
        if not isinstance(table, Tensor) or table.ndim != 3:
            raise CheckpointError(f"{self.clip_path(ctx)} holds no conditioning table; "
                                  f"rerun `mct clip --bench {self.name}`")
        return table.to(ctx.device)

    def eval_captions(self, cfg: DigitsTextConfig, n: int) -> tuple[Tensor, list[str]]:
        """Template index and caption of each evaluation sample: balanced labels, cycled templates."""
        tmpl = (torch.arange(n) // self.num_classes) % len(cfg.captions.templates)
        return tmpl, captions_of(self.eval_labels(cfg, n), tmpl, cfg.captions.templates)

    def clip(self, section: dict, ctx: RunContext):
        """Train the tiny CLIP -> clip/{checkpoint.pt (weights, config, the conditioning table),
        open_clip's local-dir files, train_log.csv, metrics.json (real-image CLIP score: the ceiling)}."""
        from ..config import config_hash, to_dict
        from ..io import ensure_writable_dir, stage_outputs, torch_save, write_csv
        from ..metrics.clip import caption_scores, clip_checkpoint
        from ..records import AuxMetrics, provenance
        from ..training.clip import cond_table, save_clip, train_caption_clip

        cfg = self.setup(section)
        split, templates = self.split(cfg), cfg.captions.templates
        run = train_caption_clip(cfg.clip, split, templates, device=ctx.device, progress=ctx.progress)
        table = cond_table(run.scorer, templates, self.num_classes)
        metrics = {**caption_scores(run.scorer, split.heldout.images, split.heldout.labels, templates, table),
                   "steps": cfg.clip.steps, "params": sum(p.numel() for p in run.model.parameters())}
        if run.logs:
            metrics["final_loss"] = run.logs[-1]["loss"]
        log.info("digits-text CLIP: zero-shot accuracy %.3f, real-image CLIP score %.2f (mismatched captions %.2f)",
                 metrics["zero_shot_accuracy"], metrics["clip_score_real"], metrics["clip_score_mismatched"])
        out_dir = ensure_writable_dir(ctx.bench_dir(self.name) / "clip")
        with stage_outputs(out_dir, "clip") as out:
            for f in save_clip(run.model, run.config, out_dir).iterdir():  # open_clip's local-dir layout
                if f.name.startswith("open_clip_"):
                    out.add(f)
            torch_save(out.path("checkpoint.pt"), clip_checkpoint(run.model, run.config, templates, metrics, table))
            write_csv(out.path("train_log.csv"), run.logs)
            rec = AuxMetrics(bench=self.name, net="clip", metrics=metrics, train_seconds=run.seconds,
                             provenance=provenance(config_hash(to_dict(cfg.clip))))
            self.write_record(out.path("metrics.json"), rec)
        return rec

    # ------------------------------------------------------------------ teacher

    def teacher_train(self, section: dict, ctx: RunContext) -> dict:
        """Train the text-conditioned teacher: caption dropout to the null (zero) conditioning."""
        from ..diffusion.edm import EDMPrecond
        from ..nets.unet import build_unet
        from ..training.edm_teacher import table_condition, train_edm_teacher

        cfg = self.setup(section)
        tc, split, table = cfg.teacher, self.split(cfg), self.stored_cond_table(cfg, ctx)
        (c, h, _), dim = split.train.shape, table.shape[-1]
        run = train_edm_teacher(
            lambda: EDMPrecond(build_unet(tc.net, img_resolution=h, in_channels=c, cond_dim=dim),
                               sigma_data=tc.sigma_data),
            split.train.images, draw_condition=table_condition(table, split.train.labels), null_cond=torch.zeros(dim),
            iterations=tc.iterations, batch_size=tc.batch_size, lr=tc.lr, ema_decay=tc.ema_decay,
            cond_dropout=tc.cond_drop, sigma=tc.sigma, sigma_data=tc.sigma_data, seed=tc.seed, device=ctx.device,
            rng_device="cpu", log_every=tc.log_every, progress=ctx.progress, desc=f"{self.name} teacher")
        return self.save_teacher(ctx, run, tc.iterations, {
            "guidance": tc.guidance, "cond": "normalised CLIP text embedding x sqrt(dim); null = zeros",
            "templates": list(cfg.captions.templates)})

    def teacher_net(self, cfg: DigitsTextConfig, ctx: RunContext):
        """(the teacher's EMA network, frozen; its architecture record), checked against the data."""
        from ..teachers import registry

        dim = self.stored_cond_table(cfg, ctx).shape[-1]
        c, h, _ = self.split(cfg).train.shape
        path = self.require(self.teacher_dir(ctx) / "checkpoint.pt", f"mct teacher train --bench {self.name}")
        return registry.load("trained", path, device=ctx.device,
                             expect={"cond_dim": dim, "in_channels": c, "img_resolution": h})

    def guided(self, cfg: DigitsTextConfig, net):
        """The teacher with classifier-free guidance; the null condition is the zero embedding."""
        from ..teachers.base import GuidedDenoiser

        null = torch.zeros(net.model.arch()["cond_dim"])
        return GuidedDenoiser(net, cfg.teacher.guidance, null).to(next(net.parameters()).device)

    def teacher_nfes(self, cfg: DigitsTextConfig) -> tuple[int, ...]:
        return (cfg.eval.teacher_nfe,)

    def sampler(self, cfg: DigitsTextConfig) -> dict:
        ev = cfg.eval
        return {"sampler": ev.teacher_sampler, "sigma_min": ev.sigma_min, "sigma_max": ev.sigma_max, "rho": ev.rho}

    # ------------------------------------------------------------------ distillation hooks

    def latent_sampler(self, cfg: DigitsTextConfig, ctx: RunContext):
        table = self.stored_cond_table(cfg, ctx)
        n_cls, n_tmpl, _ = table.shape
        shape, device = tuple(self.split(cfg).train.shape), torch.device(ctx.device)

        def sample_latents(n, rng):
            lab = torch.randint(0, n_cls, (n,), generator=rng, device=rng.device)
            t = torch.randint(0, n_tmpl, (n,), generator=rng, device=rng.device)
            z = torch.randn((n,) + shape, generator=rng, device=device)
            return z, table[lab.to(device), t.to(device)]

        return sample_latents

    def eval_latents(self, cfg: DigitsTextConfig, ctx: RunContext, n: int, rng, device):
        """Latents drawn batch by batch (as the evaluation always drew them) and the caption embeddings."""
        table = self.stored_cond_table(cfg, ctx)
        shape, bs = tuple(self.split(cfg).train.shape), cfg.eval.batch_size
        labels, (tmpl, _) = self.eval_labels(cfg, n), self.eval_captions(cfg, n)
        z = torch.cat([torch.randn((min(bs, n - i),) + shape, generator=rng, device=rng.device) for i in range(0, n, bs)])
        return z.to(device), table[labels.to(table.device), tmpl.to(table.device)].to(device)

    # ------------------------------------------------------------------ scoring

    def score(self, cfg: DigitsTextConfig, ctx: RunContext, images, cond, rng) -> dict:
        """FID/KID/PR on the digits features, the CLIP score of the captions, class accuracy."""
        from ..metrics.clip import clip_score
        from ..metrics.fidelity import feature_net_scores, load_feature_net
        from ..records import AuxMetrics, read_record

        images = images.clamp(-1, 1)
        heldout = self.split(cfg).heldout
        fpath = self.require(self.features_file(cfg, ctx), "mct features --bench digits")
        fnet = load_feature_net(fpath)
        want = (heldout.shape[0], heldout.shape[-1])
        have = (fnet.arch().get("in_channels"), fnet.arch().get("img_resolution"))
        if have != want:
            raise CheckpointError(f"feature network {fpath} was trained on {have[0]}x{have[1]}px images, "
                                  f"digits-text has {want[0]}x{want[1]}px: use the same data.source as digits")
        labels, (_, captions) = self.eval_labels(cfg, images.shape[0]), self.eval_captions(cfg, images.shape[0])
        metrics, cm = feature_net_scores(images, heldout.images, fpath, self.num_classes, labels, device=ctx.device,
                                         prc=cfg.eval.prc)
        metrics.update(clip_score(self.load_clip(ctx)[0], images, captions))
        metrics.update({k: cm[k] for k in ("class_accuracy", "class_entropy", "classes_covered")})
        clip_json = self.clip_path(ctx).parent / "metrics.json"
        if clip_json.exists():
            metrics["clip_score_real"] = read_record(clip_json, AuxMetrics).metrics.get("clip_score_real")
        return metrics


def get_benchmark(name: str = "digits-text") -> DigitsText:
    return BENCHMARK


BENCHMARK = DigitsText()
