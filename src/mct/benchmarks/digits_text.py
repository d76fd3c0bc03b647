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
- MCT distillation with the one training loop (:func:`mct.distill.trainer.distill`):
  generator and student score start as copies of the teacher,
  g(z, c) = D_theta(sigma_g z, sigma_g, c);
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

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor

from ..config import to_dict
from ..diffusion.edm import EDMPrecond, SigmaDist, edm_loss, karras_sigmas, sample_sigma
from ..diffusion.samplers import SAMPLERS, CountingDenoiser, heun_steps_for_nfe
from ..distill.em import EMConfig
from ..distill.trainer import TrainConfig, distill, ema_update, load_checkpoint, load_state_strict
from ..errors import CheckpointError, ConfigError, MCTError
from ..io import ensure_writable_dir, read_json, save_image_grid, torch_save, write_csv, write_json
from ..nets.unet import UNetConfig, build_unet
from ..teachers.base import GuidedDenoiser
from .base import Benchmark, RunContext

log = logging.getLogger(__name__)

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DEFAULT_TEMPLATES = ("a handwritten {word}", "the digit {digit}", "a drawing of the number {word}",
                     "handwritten digit {digit}", "the number {word}", "a scribbled {word}")
CLIP_FORMAT = "mct-clip-v1"


def make_caption(label: int, template: str) -> str:
    return template.format(word=WORDS[int(label)], digit=int(label))


def caption_table(templates: tuple[str, ...], num_classes: int = 10) -> list[list[str]]:
    """captions[label][template index]."""
    return [[make_caption(c, t) for t in templates] for c in range(num_classes)]


# ----------------------------------------------------------------------------- config


@dataclass(frozen=True)
class DTDataConfig:
    """The image set (must match the one the digits feature network was trained on) and its
    fixed stratified train / held-out split (held-out = the FID reference)."""

    source: str = "sklearn-digits"
    heldout_fraction: float = 0.25
    split_seed: int = 0

    def __post_init__(self):
        from ..data.digits import SOURCES

        if self.source not in SOURCES:
            raise ConfigError(f"source must be one of {', '.join(SOURCES)}, got {self.source!r}")
        if not 0 < self.heldout_fraction < 1:
            raise ConfigError(f"heldout_fraction must be in (0, 1), got {self.heldout_fraction}")


@dataclass(frozen=True)
class CaptionConfig:
    """Caption templates; ``{word}`` is the digit's name, ``{digit}`` its numeral."""

    templates: tuple[str, ...] = DEFAULT_TEMPLATES

    def __post_init__(self):
        if not self.templates:
            raise ConfigError("templates must not be empty")
        for t in self.templates:
            if "{word}" not in t and "{digit}" not in t:
                raise ConfigError(f"template {t!r} names no digit (use {{word}} or {{digit}})")
            try:
                make_caption(7, t)
            except (KeyError, IndexError, ValueError) as exc:
                raise ConfigError(f"template {t!r} is not a valid format string: {exc}") from None


@dataclass(frozen=True)
class DTClipConfig:
    """The tiny open_clip model (ViT image tower, transformer text tower) and its contrastive
    training. In-batch pairs with the same digit count as positives (soft targets)."""

    embed_dim: int = 32
    vision_width: int = 64
    vision_layers: int = 1
    patch_size: int = 4
    text_width: int = 32
    text_layers: int = 1
    heads: int = 2
    context_length: int = 12
    steps: int = 200
    batch_size: int = 128
    lr: float = 5e-3
    weight_decay: float = 0.1
    seed: int = 0

    def __post_init__(self):
        for name in ("embed_dim", "vision_width", "vision_layers", "patch_size", "text_width", "text_layers",
                     "heads", "context_length", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ConfigError("lr must be > 0 and weight_decay >= 0")


@dataclass(frozen=True)
class DTTeacherConfig:
    """The text-conditioned EDM teacher: U-Net width/depth, EDM training (lognormal sigma,
    Adam, EMA), caption dropout to the null conditioning, and the guidance scale w used when
    it is sampled and distilled."""

    unet: UNetConfig = field(default_factory=lambda: UNetConfig(model_channels=16, channel_mult=(1, 2)))
    iterations: int = 600
    batch_size: int = 128
    lr: float = 2e-3
    ema_decay: float = 0.995
    cond_drop: float = 0.15
    sigma: SigmaDist = field(default_factory=lambda: SigmaDist("lognormal", 0.002, 80.0, -1.2, 1.2))
    sigma_data: float = 0.5
    guidance_scale: float = 2.0
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
        if self.guidance_scale < 0:
            raise ConfigError(f"guidance_scale must be >= 0, got {self.guidance_scale}")


@dataclass(frozen=True)
class DTGeneratorConfig:
    """sigma_g of g(z, c) = D_theta(sigma_g z, sigma_g, c); init 'teacher' (copies) or 'random'."""

    sigma_g: float = 2.5
    init: str = "teacher"

    def __post_init__(self):
        if not self.sigma_g > 0:
            raise ConfigError(f"sigma_g must be > 0, got {self.sigma_g}")
        if self.init not in ("teacher", "random"):
            raise ConfigError(f"init must be 'teacher' or 'random', got {self.init!r}")


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
    grid_per_class: int = 10

    def __post_init__(self):
        if self.num_samples < 10 or self.batch_size < 1 or self.teacher_nfe < 1 or self.grid_per_class < 1:
            raise ConfigError("num_samples must be >= 10; batch_size, teacher_nfe, grid_per_class >= 1")
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
    """The digits-text benchmark section. ``num_threads``: torch CPU threads of each stage
    (0 = torch's default; 1 suits these tiny networks and jobs that run side by side)."""

    data: DTDataConfig = field(default_factory=DTDataConfig)
    captions: CaptionConfig = field(default_factory=CaptionConfig)
    clip: DTClipConfig = field(default_factory=DTClipConfig)
    teacher: DTTeacherConfig = field(default_factory=DTTeacherConfig)
    generator: DTGeneratorConfig = field(default_factory=DTGeneratorConfig)
    em: EMConfig = field(default_factory=lambda: EMConfig(num_steps=4, gamma_eps=0.1, gamma_z=0.05))
    train: TrainConfig = field(default_factory=_dt_train_default)
    eval: DTEvalConfig = field(default_factory=DTEvalConfig)
    num_threads: int = 1
    variants: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.num_threads < 0:
            raise ConfigError(f"num_threads must be >= 0, got {self.num_threads}")


# ----------------------------------------------------------------------------- the benchmark


class DigitsText(Benchmark):
    name = "digits-text"
    config_cls = DigitsTextConfig
    stages = ("clip", "teacher_train", "teacher_eval", "distill", "evaluate", "summarize")
    uses = {"features": "digits"}
    stage_params = {"clip": ("data", "captions", "clip"),
                    "teacher_train": ("data", "captions", "clip", "teacher"),
                    "teacher_eval": ("data", "captions", "clip", "teacher", "eval")}

    # ------------------------------------------------------------------ helpers
    def split(self, cfg: DigitsTextConfig):
        from ..data.digits import load_split

        return load_split(cfg.data.source, cfg.data.heldout_fraction, cfg.data.split_seed)

    def clip_path(self, ctx: RunContext) -> Path:
        return ctx.bench_dir(self.name) / "clip" / "checkpoint.pt"

    def teacher_path(self, ctx: RunContext) -> Path:
        return ctx.bench_dir(self.name) / "teacher" / "checkpoint.pt"

    def features_path(self, cfg: DigitsTextConfig, ctx: RunContext) -> Path:
        return Path(cfg.eval.features) if cfg.eval.features else ctx.bench_dir("digits") / "features" / "checkpoint.pt"

    def read_clip(self, ctx: RunContext) -> dict:
        from ..teachers.trained import read_checkpoint

        path = self.clip_path(ctx)
        if not path.exists():
            raise CheckpointError(f"CLIP checkpoint {path} does not exist; run `mct clip --bench {self.name}` first")
        return read_checkpoint(path, CLIP_FORMAT)

    def load_clip(self, ctx: RunContext):
        """The trained tiny CLIP as a :class:`~mct.metrics.clip.ClipScorer` and its checkpoint dict."""
        from ..metrics.clip import ClipScorer, build_clip
        from ..teachers.trained import load_strict

        path = self.clip_path(ctx)
        state = self.read_clip(ctx)
        try:
            model, tokenizer = build_clip(state["config"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {path} has an unusable CLIP config: {exc}") from None
        load_strict(model, state.get("state"), "CLIP", path)
        model.requires_grad_(False)
        return ClipScorer(model, tokenizer, device=ctx.device, batch_size=512), state

    @staticmethod
    def text_cond(scorer, captions) -> Tensor:
        """The teacher's conditioning: the CLIP text embedding, unit norm, scaled by sqrt(dim)."""
        f = scorer.text_features(captions)
        return f * math.sqrt(f.shape[1])

    def cond_table(self, cfg: DigitsTextConfig, scorer, num_classes: int = 10) -> Tensor:
        """Conditioning vectors of every (label, template) caption: (classes, templates, dim)."""
        caps = caption_table(cfg.captions.templates, num_classes)
        flat = self.text_cond(scorer, [c for row in caps for c in row])
        return flat.reshape(num_classes, len(cfg.captions.templates), -1)

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

    def eval_conditions(self, cfg: DigitsTextConfig, n: int, num_classes: int = 10):
        """Balanced labels (0..9 repeated) and cycled templates: labels, template indices, captions."""
        labels = torch.arange(n) % num_classes
        tmpl = (torch.arange(n) // num_classes) % len(cfg.captions.templates)
        caps = [make_caption(int(c), cfg.captions.templates[int(t)]) for c, t in zip(labels, tmpl)]
        return labels, tmpl, caps

    # ------------------------------------------------------------------ clip
    def clip(self, section: dict, ctx: RunContext) -> dict:
        from ..metrics.clip import ClipScorer, build_clip, save_clip, tiny_clip_config, train_clip

        cfg = self.setup(section)
        c = cfg.clip
        split = self.split(cfg)
        res = split.train.shape[-1]
        if res % c.patch_size:
            raise ConfigError(f"benchmarks.{self.name}.clip.patch_size {c.patch_size} does not divide "
                              f"the image size {res}")
        out_dir = ensure_writable_dir(ctx.bench_dir(self.name) / "clip")
        torch.manual_seed(c.seed)
        config = tiny_clip_config(res, embed_dim=c.embed_dim, vision_width=c.vision_width,
                                  vision_layers=c.vision_layers, patch_size=c.patch_size, text_width=c.text_width,
                                  text_layers=c.text_layers, heads=c.heads, context_length=c.context_length)
        model, tokenizer = build_clip(config, device=ctx.device)
        templates = cfg.captions.templates
        train_labels = split.train.labels

        def captions_for(idx: Tensor, rng: torch.Generator) -> list[str]:
            t = torch.randint(0, len(templates), (idx.numel(),), generator=rng)
            return [make_caption(int(train_labels[i]), templates[int(j)]) for i, j in zip(idx, t)]

        t0 = time.perf_counter()
        logs = train_clip(model, tokenizer, split.train.images, captions_for, steps=c.steps,
                          batch_size=min(c.batch_size, len(split.train)), lr=c.lr, weight_decay=c.weight_decay,
                          seed=c.seed, progress=ctx.progress, labels=train_labels)
        seconds = time.perf_counter() - t0
        model.requires_grad_(False)
        scorer = ClipScorer(model, tokenizer, device=ctx.device, batch_size=512)
        metrics = self._clip_metrics(cfg, scorer, split.heldout.images, split.heldout.labels)
        metrics.update(train_seconds=round(seconds, 3), steps=c.steps, final_loss=logs[-1]["loss"] if logs else None,
                       params=sum(p.numel() for p in model.parameters()))
        log.info("digits-text CLIP: zero-shot accuracy %.3f, real-image CLIP score %.2f (mismatched captions %.2f), "
                 "%.1f s", metrics["zero_shot_accuracy"], metrics["clip_score_real"], metrics["clip_score_mismatched"],
                 seconds)
        save_clip(model, config, out_dir)  # open_clip's local-dir layout (load_clip_scorer('local-dir:...'))
        torch_save(self.clip_path(ctx), {"format": CLIP_FORMAT, "config": config,
                                         "state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                                         "templates": list(templates), "cond_table": self.cond_table(cfg, scorer).cpu(),
                                         "metrics": metrics})
        write_csv(out_dir / "train_log.csv", logs)
        write_json(out_dir / "metrics.json", metrics)
        return metrics

    def _clip_metrics(self, cfg: DigitsTextConfig, scorer, images: Tensor, labels: Tensor) -> dict:
        """CLIP score of real held-out images with captions of their digit (the ceiling), with
        captions of another digit (mismatched: the floor), and zero-shot classification accuracy."""
        from ..metrics.clip import clip_score

        templates = cfg.captions.templates
        tmpl = torch.arange(labels.numel()) % len(templates)
        caps = [make_caption(int(c), templates[int(t)]) for c, t in zip(labels, tmpl)]
        wrong = (labels + 1 + torch.arange(labels.numel()) % 9) % 10
        caps_wrong = [make_caption(int(c), templates[int(t)]) for c, t in zip(wrong, tmpl)]
        real = clip_score(scorer, images, caps)
        mismatched = clip_score(scorer, images, caps_wrong)
        img_f = scorer.image_features(images)
        table = F_normalize(self.cond_table(cfg, scorer).mean(1))
        acc = float(((img_f @ table.t().to(img_f.device)).argmax(1).cpu() == labels).double().mean())
        return {"clip_score_real": real["clip_score"], "clip_score_real_fraction": real["clip_score_fraction"],
                "clip_score_mismatched": mismatched["clip_score"], "zero_shot_accuracy": acc,
                "num_heldout": int(labels.numel())}

    # ------------------------------------------------------------------ teacher
    def build_net(self, cfg: DigitsTextConfig, shape, cond_dim: int) -> EDMPrecond:
        c, h, _ = shape
        unet = build_unet(cfg.teacher.unet, img_resolution=h, in_channels=c, cond_dim=cond_dim)
        return EDMPrecond(unet, sigma_data=cfg.teacher.sigma_data)

    def teacher_train(self, section: dict, ctx: RunContext) -> dict:
        from tqdm.auto import tqdm

        from ..teachers.trained import teacher_checkpoint

        cfg = self.setup(section)
        tc = cfg.teacher
        table = self.stored_cond_table(cfg, ctx)
        split = self.split(cfg)
        device = torch.device(ctx.device)
        n_cls, n_tmpl, dim = table.shape
        out_dir = ensure_writable_dir(ctx.bench_dir(self.name) / "teacher")
        torch.manual_seed(tc.seed)
        net = self.build_net(cfg, split.train.shape, dim).to(device).train()
        ema = copy.deepcopy(net).eval().requires_grad_(False)
        opt = torch.optim.Adam(net.parameters(), lr=tc.lr)
        rng = torch.Generator().manual_seed(tc.seed)
        images, labels = split.train.images.to(device), split.train.labels.to(device)
        rows = []
        t0 = time.perf_counter()
        bar = tqdm(range(tc.iterations), desc="teacher digits-text", disable=not ctx.progress, dynamic_ncols=True,
                   mininterval=1.0)
        for it in bar:
            idx = torch.randint(0, images.shape[0], (tc.batch_size,), generator=rng).to(device)
            t = torch.randint(0, n_tmpl, (tc.batch_size,), generator=rng).to(device)
            cond = table[labels[idx], t]
            drop = (torch.rand(tc.batch_size, generator=rng) < tc.cond_drop).to(device)
            cond = torch.where(drop[:, None], torch.zeros_like(cond), cond)
            sigma = sample_sigma(tc.batch_size, tc.sigma, rng).to(device)
            noise = torch.randn(images[idx].shape, generator=rng).to(device)
            loss = edm_loss(net, images[idx], sigma, cond, noise, tc.sigma_data)
            if not torch.isfinite(loss):
                from ..errors import TrainingDiverged

                raise TrainingDiverged(f"teacher loss is not finite at iteration {it + 1}; lower teacher.lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            ema_update(ema, net, tc.ema_decay)
            if (it + 1) % tc.log_every == 0 or it + 1 == tc.iterations:
                rows.append({"iteration": it + 1, "loss": float(loss.detach()),
                             "seconds": round(time.perf_counter() - t0, 3)})
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
        seconds = time.perf_counter() - t0
        meta = {"bench": self.name, "train_seconds": round(seconds, 3), "guidance_scale": tc.guidance_scale,
                "cond": "normalised CLIP text embedding x sqrt(dim); null = zeros",
                "templates": list(cfg.captions.templates)}
        torch_save(self.teacher_path(ctx), teacher_checkpoint(net, ema, tc.iterations, meta))
        write_csv(out_dir / "train_log.csv", rows)
        log.info("digits-text teacher: %d iterations in %.1f s, final loss %.4f", tc.iterations, seconds,
                 rows[-1]["loss"])
        return {"iterations": tc.iterations, "train_seconds": round(seconds, 3), "loss": rows[-1]["loss"]}

    def load_teacher(self, cfg: DigitsTextConfig, ctx: RunContext, cond_dim: int):
        """The teacher (EMA, frozen), its checkpoint dict and the data shape (C, H, W) it was trained on."""
        from ..teachers.trained import load_trained_teacher

        path = self.teacher_path(ctx)
        if not path.exists():
            raise CheckpointError(f"teacher checkpoint {path} does not exist; "
                                  f"run `mct teacher train --bench {self.name}` first")
        net, state = load_trained_teacher(path, expect={"cond_dim": cond_dim}, device=ctx.device)
        c, h = state["arch"]["in_channels"], state["arch"]["img_resolution"]
        return net, state, (c, h, h)

    def guided(self, cfg: DigitsTextConfig, net, cond_dim: int) -> GuidedDenoiser:
        return GuidedDenoiser(net, cfg.teacher.guidance_scale, torch.zeros(cond_dim)).to(next(net.parameters()).device)

    # ------------------------------------------------------------------ scoring
    def _score(self, cfg: DigitsTextConfig, ctx: RunContext, images: Tensor, labels: Tensor, captions: list[str],
               scorer, heldout) -> dict:
        from ..metrics.classes import class_metrics, predict_classes
        from ..metrics.clip import clip_score
        from ..metrics.fidelity import fidelity_metrics, load_feature_net

        fpath = self.features_path(cfg, ctx)
        if not fpath.exists():
            raise CheckpointError(f"feature network {fpath} does not exist; run `mct features --bench digits` first "
                                  f"(or set benchmarks.{self.name}.eval.features)")
        fnet = load_feature_net(fpath)
        want = (heldout.shape[0], heldout.shape[-1])
        have = (fnet.arch().get("in_channels"), fnet.arch().get("img_resolution"))
        if have != want:
            raise CheckpointError(f"feature network {fpath} was trained on {have[0]}x{have[1]}px images, "
                                  f"digits-text has {want[0]}x{want[1]}px: use the same data.source as digits")
        metrics = fidelity_metrics(images, heldout.images, fpath, device=ctx.device, prc=cfg.eval.prc)
        metrics.update(clip_score(scorer, images, captions))
        pred = predict_classes(fnet.to("cpu"), images.cpu())
        cm = class_metrics(pred, 10, cond=labels)
        metrics.update(class_accuracy=cm["class_accuracy"], class_entropy=cm["class_entropy"],
                       classes_covered=cm["classes_covered"])
        clip_metrics = read_json(self.clip_path(ctx).parent / "metrics.json") \
            if (self.clip_path(ctx).parent / "metrics.json").exists() else {}
        metrics["clip_score_real"] = clip_metrics.get("clip_score_real")
        fmeta = fpath.parent / "metrics.json"
        floor = (read_json(fmeta).get("real_floor") or {}) if fmeta.exists() else {}
        metrics["fid_real_floor"] = floor.get("fid")  # train split vs held-out split (the digits features stage)
        return metrics

    def _grid(self, path: Path, images: Tensor, labels: Tensor, per_class: int, upscale: int = 4):
        """One row per digit (0 at the top), enlarged ``upscale`` times (nearest) to be visible."""
        rows = [images[labels == c][:per_class] for c in range(10)]
        grid = torch.nn.functional.interpolate(torch.cat(rows), scale_factor=upscale, mode="nearest")
        save_image_grid(path, grid, nrow=per_class, padding=2)

    def teacher_eval(self, section: dict, ctx: RunContext) -> dict:
        cfg = self.setup(section)
        ev = cfg.eval
        split = self.split(cfg)
        scorer, _ = self.load_clip(ctx)
        table = self.stored_cond_table(cfg, ctx)
        net, state, shape = self.load_teacher(cfg, ctx, table.shape[-1])
        if shape != tuple(split.train.shape):
            raise CheckpointError(f"the teacher was trained on {shape} images, data.source gives {split.train.shape}; "
                                  f"retrain it (`mct teacher train --bench {self.name}`)")
        guided = self.guided(cfg, net, table.shape[-1])
        labels, tmpl, caps = self.eval_conditions(cfg, ev.num_samples)
        steps = heun_steps_for_nfe(ev.teacher_nfe) if ev.teacher_sampler == "heun" else ev.teacher_nfe
        sigmas = karras_sigmas(steps, ev.sigma_min, ev.sigma_max, ev.rho, device=ctx.device)
        sampler = SAMPLERS[ev.teacher_sampler]
        g = torch.Generator().manual_seed(ev.seed)
        out, nfe = [], None
        t0 = time.perf_counter()
        for i in range(0, ev.num_samples, ev.batch_size):
            lab = labels[i:i + ev.batch_size]
            cond = table[lab.to(ctx.device), tmpl[i:i + ev.batch_size].to(ctx.device)]
            z = torch.randn((lab.numel(),) + shape, generator=g).to(ctx.device)
            counter = CountingDenoiser(guided)
            out.append(sampler(counter, z * sigmas[0], sigmas, cond).clamp(-1, 1).cpu())
            nfe = counter.nfe
        sample_seconds = time.perf_counter() - t0
        images = torch.cat(out)
        metrics = self._score(cfg, ctx, images, labels, caps, scorer, split.heldout)
        metrics.update({"variant": "teacher", "nfe": nfe, "sampler": ev.teacher_sampler,
                        "guidance_scale": cfg.teacher.guidance_scale, "num_samples": ev.num_samples,
                        "sample_seconds": round(sample_seconds, 3),
                        "train_seconds": (state.get("meta") or {}).get("train_seconds"),
                        "iterations": int(state.get("iteration", 0)),
                        "note": "one NFE = one guided call (conditional and unconditional branches batched)"})
        out_dir = ctx.bench_dir(self.name) / "teacher"
        self._grid(out_dir / "samples.png", images, labels, ev.grid_per_class)
        write_json(out_dir / "metrics.json", metrics)
        log.info("digits-text teacher (NFE %s): FID %.3f, CLIP score %.2f, class accuracy %.3f", nfe, metrics["fid"],
                 metrics["clip_score"], metrics["class_accuracy"])
        return metrics

    # ------------------------------------------------------------------ distillation
    def networks(self, cfg: DigitsTextConfig, teacher_net: EDMPrecond, shape, cond_dim: int):
        from ..teachers.sd import FixedSigmaGenerator

        if cfg.generator.init == "teacher":
            g_net = copy.deepcopy(teacher_net)
            s_net = copy.deepcopy(teacher_net)
        else:
            g_net = self.build_net(cfg, shape, cond_dim)
            s_net = self.build_net(cfg, shape, cond_dim)
        for n in (g_net, s_net):
            n.train().requires_grad_(True)
        return FixedSigmaGenerator(g_net, cfg.generator.sigma_g), s_net

    def distill(self, section: dict, ctx: RunContext, variant: str, resume: str = "auto", stop_after=None) -> dict:
        cfg = self.setup(section, variant)
        device = torch.device(ctx.device)
        table = self.stored_cond_table(cfg, ctx)
        n_cls, n_tmpl, dim = table.shape
        net, _, shape = self.load_teacher(cfg, ctx, dim)
        teacher = self.guided(cfg, net, dim)
        torch.manual_seed(cfg.train.seed)
        gen, student = self.networks(cfg, net, shape, dim)
        run_dir = ensure_writable_dir(ctx.run_dir(self.name, variant))

        def sample_latents(n, rng):
            lab = torch.randint(0, n_cls, (n,), generator=rng, device=rng.device)
            t = torch.randint(0, n_tmpl, (n,), generator=rng, device=rng.device)
            z = torch.randn((n,) + shape, generator=rng, device=device)
            return z, table[lab.to(device), t.to(device)]

        extra = {"bench": self.name, "variant": variant, "generator": to_dict(cfg.generator),
                 "guidance_scale": cfg.teacher.guidance_scale}
        summary = distill(run_dir, teacher=teacher, generator=gen, student=student, sample_latents=sample_latents,
                          em=cfg.em, train=cfg.train, resume=resume, device=device, progress=ctx.progress,
                          extra_config=extra, stop_after=stop_after)
        log.info("digits-text %s: %d iterations in %.1f s", variant, summary["iterations"], summary["train_seconds"])
        return summary

    def evaluate(self, section: dict, ctx: RunContext, variant: str) -> dict:
        cfg = self.setup(section, variant)
        ev = cfg.eval
        run_dir = ctx.run_dir(self.name, variant)
        ckpt = run_dir / "checkpoint.pt"
        if not ckpt.exists():
            raise MCTError(f"{ckpt} is missing; run `mct distill --bench {self.name} --variant {variant}` first")
        split = self.split(cfg)
        scorer, _ = self.load_clip(ctx)
        table = self.stored_cond_table(cfg, ctx)
        net, _, shape = self.load_teacher(cfg, ctx, table.shape[-1])
        gen, _ = self.networks(cfg, net, shape, table.shape[-1])
        state = load_checkpoint(ckpt)
        load_state_strict(gen, state["generator_ema"], "generator", ckpt)
        gen.to(ctx.device).eval().requires_grad_(False)
        labels, tmpl, caps = self.eval_conditions(cfg, ev.num_samples)
        g = torch.Generator().manual_seed(ev.seed)
        out = []
        t0 = time.perf_counter()
        with torch.no_grad():
            for i in range(0, ev.num_samples, ev.batch_size):
                lab = labels[i:i + ev.batch_size]
                cond = table[lab.to(ctx.device), tmpl[i:i + ev.batch_size].to(ctx.device)]
                z = torch.randn((lab.numel(),) + shape, generator=g).to(ctx.device)
                out.append(gen(z, cond).clamp(-1, 1).cpu())
        sample_seconds = time.perf_counter() - t0
        images = torch.cat(out)
        metrics = self._score(cfg, ctx, images, labels, caps, scorer, split.heldout)
        metrics.update({"variant": variant, "nfe": 1, "K": cfg.em.num_steps, "reparam": cfg.em.reparam,
                        "noise_cancel": cfg.em.noise_cancel, "init": cfg.generator.init,
                        "sigma_g": cfg.generator.sigma_g, "guidance_scale": cfg.teacher.guidance_scale,
                        "num_samples": ev.num_samples, "iterations": int(state["iteration"]),
                        "train_seconds": round(float(state.get("seconds", 0.0)), 3),
                        "sample_seconds": round(sample_seconds, 3), "seed": cfg.train.seed})
        self._grid(run_dir / "samples.png", images, labels, ev.grid_per_class)
        write_json(run_dir / "metrics.json", metrics)
        log.info("digits-text %s: FID %.3f, CLIP score %.2f, class accuracy %.3f", variant, metrics["fid"],
                 metrics["clip_score"], metrics["class_accuracy"])
        return metrics

    def summarize(self, section: dict, ctx: RunContext) -> list[dict]:
        cols = ["variant", "nfe", "fid", "kid_mean", "precision", "recall", "clip_score", "clip_score_real",
                "class_accuracy", "fid_real_floor", "K", "init", "guidance_scale", "iterations", "train_seconds"]
        rows = []
        tpath = ctx.bench_dir(self.name) / "teacher" / "metrics.json"
        if tpath.exists():
            rows.append({c: read_json(tpath).get(c) for c in cols} | {"variant": "teacher"})
        for _, m in self.variant_metrics(section, ctx):
            rows.append({c: m.get(c) for c in cols})
        write_csv(ctx.bench_dir(self.name) / "summary.csv", rows, fieldnames=cols)
        return rows


def F_normalize(x: Tensor) -> Tensor:
    return torch.nn.functional.normalize(x, dim=-1)


def get_benchmark(name: str = "digits-text") -> DigitsText:
    return BENCHMARK


BENCHMARK = DigitsText()
