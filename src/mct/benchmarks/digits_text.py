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
import math
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
from ..nets.unet import UNetConfig
from .base import Parts, RunContext
from .images import ImageBenchmark

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

    data: DTDataConfig = field(default_factory=DTDataConfig)
    captions: CaptionConfig = field(default_factory=CaptionConfig)
    clip: DTClipConfig = field(default_factory=DTClipConfig)
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
    stages = ("clip", "teacher_train", "teacher_eval", "distill", "evaluate", "export", "summarize")
    uses = {"features": "digits"}
    stage_params = {"clip": ("data", "captions", "clip"),
                    "teacher_train": ("data", "captions", "clip", "teacher"),
                    "teacher_eval": ("data", "captions", "clip", "teacher", "eval")}
    summary_metrics = ("fid", "kid_mean", "precision", "recall", "clip_score", "clip_score_real", "class_accuracy")

    def settings(self, cfg: DigitsTextConfig) -> dict:
        return {**super().settings(cfg), "sigma_g": cfg.sigma_g, "guidance": cfg.teacher.guidance}

    def split(self, cfg: DigitsTextConfig):
        from ..data.digits import load_split

        return load_split(cfg.data.source, cfg.data.heldout_fraction, cfg.data.split_seed)

    def clip_path(self, ctx: RunContext) -> Path:
        return ctx.bench_dir(self.name) / "clip" / "checkpoint.pt"

    def features_file(self, cfg: DigitsTextConfig, ctx: RunContext) -> Path:
        return Path(cfg.eval.features) if cfg.eval.features else ctx.bench_dir("digits") / "features" / "checkpoint.pt"

    def read_clip(self, ctx: RunContext) -> dict:
        from ..checkpoint import read_checkpoint

        path = self.clip_path(ctx)
        if not path.exists():
            raise CheckpointError(f"CLIP checkpoint {path} does not exist; run `mct clip --bench {self.name}` first")
        return read_checkpoint(path, CLIP_FORMAT)

    def load_clip(self, ctx: RunContext):
        """The trained tiny CLIP as a :class:`~mct.metrics.clip.ClipScorer` and its checkpoint dict."""
        from ..metrics.clip import ClipScorer, build_clip
        from ..checkpoint import load_state_strict as load_strict

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

    def eval_captions(self, cfg: DigitsTextConfig, n: int) -> tuple[Tensor, list[str]]:
        """Template index and caption of each evaluation sample: balanced labels, cycled templates."""
        labels = self.eval_labels(cfg, n)
        tmpl = (torch.arange(n) // self.num_classes) % len(cfg.captions.templates)
        return tmpl, [make_caption(int(c), cfg.captions.templates[int(t)]) for c, t in zip(labels, tmpl)]

    def clip(self, section: dict, ctx: RunContext) -> dict:
        import time

        from ..config import config_hash, to_dict
        from ..io import ensure_writable_dir, stage_outputs, torch_save, write_csv
        from ..metrics.clip import ClipScorer, build_clip
        from ..records import AuxMetrics, provenance
        from ..training.clip import save_clip, tiny_clip_config, train_clip

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
        metrics.update(steps=c.steps, params=sum(p.numel() for p in model.parameters()))
        if logs:
            metrics["final_loss"] = logs[-1]["loss"]
        log.info("digits-text CLIP: zero-shot accuracy %.3f, real-image CLIP score %.2f (mismatched captions %.2f), "
                 "%.1f s", metrics["zero_shot_accuracy"], metrics["clip_score_real"], metrics["clip_score_mismatched"],
                 seconds)
        with stage_outputs(out_dir, "clip") as out:
            save_clip(model, config, out_dir)  # open_clip's local-dir layout (load_clip_scorer('local-dir:...'))
            torch_save(out.path("checkpoint.pt"), {
                "format": CLIP_FORMAT, "config": config, "templates": list(templates), "metrics": metrics,
                "state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "cond_table": self.cond_table(cfg, scorer).cpu()})
            write_csv(out.path("train_log.csv"), logs)
            rec = AuxMetrics(bench=self.name, net="clip", metrics=metrics, train_seconds=round(seconds, 3),
                             provenance=provenance(config_hash(to_dict(c))))
            self.write_record(out.path("metrics.json"), rec)
        return rec

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
        from ..teachers.base import GuidedDenoiser

        null = torch.zeros(self.stored_cond_table(cfg, ctx=self._ctx).shape[-1])
        return GuidedDenoiser(net, cfg.teacher.guidance, null).to(next(net.parameters()).device)

    def teacher_for_eval(self, cfg: DigitsTextConfig, ctx: RunContext):
        self._ctx = ctx
        net, arch = self.teacher_net(cfg, ctx)
        return self.guided(cfg, net), arch

    def teacher_nfes(self, cfg: DigitsTextConfig) -> tuple[int, ...]:
        return (cfg.eval.teacher_nfe,)

    def sampler(self, cfg: DigitsTextConfig) -> dict:
        ev = cfg.eval
        return {"sampler": ev.teacher_sampler, "sigma_min": ev.sigma_min, "sigma_max": ev.sigma_max, "rho": ev.rho}

    # ------------------------------------------------------------------ distillation hooks

    def build(self, cfg: DigitsTextConfig, ctx: RunContext) -> Parts:
        from ..distill.init import init_networks

        net, arch = self.teacher_for_eval(cfg, ctx)[0].denoiser, self.teacher_net(cfg, ctx)[1]
        record = {"teacher": arch, "sigma_g": cfg.sigma_g}
        generator, student = init_networks(net, record, cfg.init, seed=cfg.train.seed + 1)
        return Parts(self.guided(cfg, net), generator, student, record)

    def generator_from_record(self, cfg: DigitsTextConfig, ctx: RunContext, record: dict):
        from ..distill.init import generator_from_record

        return generator_from_record(record)

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

    def eval_latents(self, cfg: DigitsTextConfig, n: int, rng, device):
        """Latents drawn batch by batch (as the evaluation always drew them) and the caption embeddings."""
        table = self.stored_cond_table(cfg, self._ctx)
        shape, bs = tuple(self.split(cfg).train.shape), cfg.eval.batch_size
        labels, (tmpl, _) = self.eval_labels(cfg, n), self.eval_captions(cfg, n)
        z = torch.cat([torch.randn((min(bs, n - i),) + shape, generator=rng) for i in range(0, n, bs)])
        return z.to(device), table[labels.to(table.device), tmpl.to(table.device)].to(device)

    # ------------------------------------------------------------------ scoring

    def score(self, cfg: DigitsTextConfig, ctx: RunContext, images, cond, rng) -> dict:
        """FID/KID/PR on the digits features, the CLIP score of the captions, class accuracy."""
        from ..metrics.classes import class_metrics, predict_classes
        from ..metrics.clip import clip_score
        from ..metrics.fidelity import fidelity_metrics, load_feature_net
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
        metrics = fidelity_metrics(images, heldout.images, fpath, device=ctx.device, prc=cfg.eval.prc)
        metrics.update(clip_score(self.load_clip(ctx)[0], images, captions))
        cm = class_metrics(predict_classes(fnet.to("cpu"), images.cpu()), 10, cond=labels)
        metrics.update({k: cm[k] for k in ("class_accuracy", "class_entropy", "classes_covered")})
        clip_json = self.clip_path(ctx).parent / "metrics.json"
        if clip_json.exists():
            metrics["clip_score_real"] = read_record(clip_json, AuxMetrics).metrics.get("clip_score_real")
        return metrics

    def distill(self, section: dict, ctx: RunContext, variant: str, **kw) -> dict:
        self._ctx = ctx
        return super().distill(section, ctx, variant, **kw)

    def evaluate(self, section: dict, ctx: RunContext, variant: str) -> dict:
        self._ctx = ctx
        return super().evaluate(section, ctx, variant)

    def teacher_eval(self, section: dict, ctx: RunContext) -> dict:
        self._ctx = ctx
        return super().teacher_eval(section, ctx)


def F_normalize(x: Tensor) -> Tensor:
    return torch.nn.functional.normalize(x, dim=-1)


def get_benchmark(name: str = "digits-text") -> DigitsText:
    return BENCHMARK


BENCHMARK = DigitsText()
