"""sd15: text-to-image distillation of Stable Diffusion v1.5 (paper scale, GPU).

Teacher: SD v1.5 through diffusers, wrapped to the EDM convention in latent space
with classifier-free guidance (:mod:`mct.teachers.sd`). Generator and student score
are copies of the teacher U-Net; g(z, c) = D_theta(sigma_g z, sigma_g, c).
Evaluation (DMD/DMD2 protocol): 30,000 COCO-2014 val captions drawn with a fixed
seed, FID-30k against COCO val2014 images clean-resized to 256 (torch-fidelity,
Inception-v3), CLIP score with open_clip ViT-g-14 (laion2b_s12b_b42k).

Outputs under ``results/sd15/``: ``teacher/`` (the fetched diffusers files and
``checkpoint.pt``, a manifest naming the source the other stages load),
``teacher/{metrics.json, samples.png}``, ``runs/<variant>/{checkpoint.pt,
train_log.csv, metrics.json, samples.png}``, ``summary.csv``. Every knob is in config/sd15.yaml,
marked paper or ours."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from ..config import to_dict
from ..diffusion.edm import SigmaDist, karras_sigmas
from ..diffusion.samplers import SAMPLERS, CountingDenoiser
from ..distill.em import EMConfig
from ..distill.trainer import TrainConfig, distill, load_checkpoint, load_state_strict
from ..errors import ConfigError, MCTError
from ..io import ensure_writable_dir, read_json, save_image_grid, write_csv, write_json
from .base import Benchmark, RunContext

log = logging.getLogger(__name__)

DEFAULT_SD_REPO = "stable-diffusion-v1-5/stable-diffusion-v1-5"
MANIFEST_FORMAT = "mct-sd-teacher-v1"
AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class SDTeacherConfig:
    """Where the teacher comes from and how it is run.

    model: a hub id or a local diffusers directory. When it is a hub id and
    ``results/sd15/teacher/model_index.json`` exists (``mct teacher fetch``), that copy is used.
    revision: the pinned hub commit. local_files_only: never touch the network.
    variant: weight file variant ('fp16' or null). dtype: dtype of the frozen teacher,
    text encoder and VAE (float32, float16, bfloat16). guidance_scale: CFG scale w of the
    teacher score (1 = no guidance). quantize_timesteps: nearest integer timestep instead of
    the interpolated one. sha256: {relative path: digest} checked after fetching."""

    model: str = DEFAULT_SD_REPO
    revision: Optional[str] = None
    local_files_only: bool = False
    variant: Optional[str] = None
    cache_dir: Optional[str] = None
    dtype: str = "float32"
    guidance_scale: float = 3.0
    quantize_timesteps: bool = False
    sha256: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        from ..teachers.sd import DTYPES

        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.guidance_scale < 0:
            raise ConfigError(f"guidance_scale must be >= 0, got {self.guidance_scale}")


@dataclass(frozen=True)
class SDGeneratorConfig:
    """sigma_g: the fixed level of g(z, c) = D_theta(sigma_g z, sigma_g, c). init: 'teacher'
    (copies of the teacher U-Net) or 'random' (the ablation). gradient_checkpointing: trade
    compute for memory in the generator and student U-Nets. precision: their arithmetic on
    CUDA (fp32, or bf16/fp16 autocast with float32 weights)."""

    sigma_g: float = 2.5
    init: str = "teacher"
    gradient_checkpointing: bool = False
    precision: str = "fp32"

    def __post_init__(self):
        if not self.sigma_g > 0:
            raise ConfigError(f"sigma_g must be > 0, got {self.sigma_g}")
        if self.init not in ("teacher", "random"):
            raise ConfigError(f"init must be 'teacher' or 'random', got {self.init!r}")
        if self.precision not in AUTOCAST:
            raise ConfigError(f"precision must be one of {', '.join(AUTOCAST)}, got {self.precision!r}")


@dataclass(frozen=True)
class SDPromptConfig:
    """train: prompt file the generator is distilled on (one caption per line or COCO captions JSON);
    num_train: how many of them (null: all). eval: prompt file of the evaluation; seed: of the draw."""

    train: str = "data/coco2014/annotations/captions_train2014.json"
    num_train: Optional[int] = None
    eval: str = "data/coco2014/annotations/captions_val2014.json"
    seed: int = 0


@dataclass(frozen=True)
class SDEvalConfig:
    """num_samples: prompts (and images) scored (FID-30k: 30000). ref_dir: reference images
    (COCO val2014), centre-cropped and clean-resized to fid_size. feature_extractor: torch-fidelity
    extractor (null: Inception-v3). clip_model / clip_pretrained: open_clip model for the CLIP score
    (``local-dir:PATH`` for a saved one). teacher_nfe / teacher_sampler: the teacher's own samples."""

    num_samples: int = 30000
    batch_size: int = 16
    seed: int = 1234
    fid: bool = True
    ref_dir: str = "data/coco2014/val2014"
    ref_limit: Optional[int] = None
    fid_size: int = 256
    center_crop: bool = True
    feature_extractor: Optional[str] = None
    feature_extractor_weights_path: Optional[str] = None
    ref_cache_name: Optional[str] = "coco2014-val-256"
    clip: bool = True
    clip_model: str = "ViT-g-14"
    clip_pretrained: Optional[str] = "laion2b_s12b_b42k"
    clip_batch_size: int = 32
    teacher_nfe: int = 25
    teacher_sampler: str = "euler"
    teacher_num_samples: Optional[int] = None
    grid: int = 16

    def __post_init__(self):
        for name in ("num_samples", "batch_size", "fid_size", "clip_batch_size", "teacher_nfe"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.teacher_sampler not in SAMPLERS:
            raise ConfigError(f"teacher_sampler must be one of {', '.join(SAMPLERS)}, got {self.teacher_sampler!r}")
        if self.teacher_sampler == "heun" and self.teacher_nfe % 2 == 0:
            raise ConfigError(f"teacher_nfe must be odd for the Heun sampler, got {self.teacher_nfe}")


def _sd_train_default() -> TrainConfig:
    return TrainConfig(iterations=20000, batch_size=32, lr_g=1e-5, lr_s=1e-5, beta1=0.0, beta2=0.999,
                       score_updates=5, score_warmup=0, ema_decay=0.999, grad_clip=10.0,
                       sigma=SigmaDist("loguniform", 0.03, 14.6), sigma_data=1.0, checkpoint_every=500)


@dataclass(frozen=True)
class SD15Config:
    """The sd15 benchmark section."""

    teacher: SDTeacherConfig = field(default_factory=SDTeacherConfig)
    generator: SDGeneratorConfig = field(default_factory=SDGeneratorConfig)
    prompts: SDPromptConfig = field(default_factory=SDPromptConfig)
    em: EMConfig = field(default_factory=lambda: EMConfig(num_steps=8, gamma_eps=0.1, gamma_z=0.05))
    train: TrainConfig = field(default_factory=_sd_train_default)
    eval: SDEvalConfig = field(default_factory=SDEvalConfig)
    variants: dict[str, Any] = field(default_factory=dict)


class SD15(Benchmark):
    name = "sd15"
    config_cls = SD15Config
    stages = ("teacher_fetch", "teacher_eval", "distill", "evaluate", "summarize")

    # ------------------------------------------------------------------ teacher
    def teacher_source(self, cfg: SD15Config, ctx: RunContext) -> str:
        """A local directory named by teacher.model, else the fetched copy under
        results/sd15/teacher/, else the hub id itself (the diffusers cache)."""
        model = cfg.teacher.model
        if Path(model).expanduser().is_dir():
            return str(Path(model).expanduser())
        fetched = ctx.bench_dir(self.name) / "teacher"
        if (fetched / "model_index.json").is_file():
            return str(fetched)
        return model

    def _write_manifest(self, cfg: SD15Config, ctx: RunContext, source: str) -> Path:
        """teacher/checkpoint.pt: what the pipeline tracks as the teacher (a manifest, not weights)."""
        from ..io import torch_save

        return torch_save(ctx.bench_dir(self.name) / "teacher" / "checkpoint.pt", {
            "format": MANIFEST_FORMAT, "source": source, "model": cfg.teacher.model,
            "revision": cfg.teacher.revision or "", "variant": cfg.teacher.variant or "",
            "sha256": dict(cfg.teacher.sha256)})

    def load_teacher(self, cfg: SD15Config, ctx: RunContext):
        from ..teachers.sd import load_sd_teacher

        t = cfg.teacher
        src = self.teacher_source(cfg, ctx)
        log.info("loading Stable Diffusion from %s", src)
        return load_sd_teacher(src, local_files_only=t.local_files_only, revision=t.revision, cache_dir=t.cache_dir,
                               dtype=t.dtype, device=ctx.device, variant=t.variant, quantize=t.quantize_timesteps)

    def teacher_fetch(self, section: dict, ctx: RunContext) -> dict:
        from ..teachers.sd import fetch_sd

        cfg = self.parse(section)
        if Path(cfg.teacher.model).expanduser().is_dir():
            log.info("teacher.model is a local directory (%s); nothing to fetch", cfg.teacher.model)
            source = str(Path(cfg.teacher.model).expanduser())
        elif cfg.teacher.local_files_only:
            raise MCTError("teacher.local_files_only is set: `mct teacher fetch` would need the network; "
                           "unset it or point teacher.model at a local directory")
        else:
            source = str(fetch_sd(cfg.teacher.model, ctx.bench_dir(self.name) / "teacher", cfg.teacher.revision,
                                  cfg.teacher.variant, cfg.teacher.sha256))
        self._write_manifest(cfg, ctx, source)
        return {"source": source}

    # ------------------------------------------------------------------ distillation
    def networks(self, cfg: SD15Config, teacher):
        seed = cfg.train.seed
        amp = AUTOCAST[cfg.generator.precision]
        gen = teacher.make_generator(cfg.generator.sigma_g, cfg.generator.init, seed, autocast=amp)
        student = teacher.make_student(cfg.generator.init, seed, autocast=amp)
        if cfg.generator.gradient_checkpointing:
            gen.denoiser.unet.enable_gradient_checkpointing()
            student.unet.enable_gradient_checkpointing()
        return gen, student

    def distill(self, section: dict, ctx: RunContext, variant: str, resume: str = "auto", stop_after=None) -> dict:
        from ..data.prompts import load_prompts

        cfg = self.parse(section, variant)
        prompts = load_prompts(cfg.prompts.train, cfg.prompts.num_train, cfg.prompts.seed)
        run_dir = ensure_writable_dir(ctx.run_dir(self.name, variant))
        teacher = self.load_teacher(cfg, ctx)
        if cfg.generator.sigma_g > teacher.sigma_max * 1.001:
            log.warning("sigma_g = %g is above the schedule's sigma_max = %.3g; the timestep is clamped",
                        cfg.generator.sigma_g, teacher.sigma_max)
        torch.manual_seed(cfg.train.seed)
        gen, student = self.networks(cfg, teacher)
        guided = teacher.guided(cfg.teacher.guidance_scale)
        device = torch.device(ctx.device)
        shape = teacher.latent_shape

        def sample_latents(n, rng):
            idx = torch.randint(0, len(prompts), (n,), generator=rng, device=rng.device).tolist()
            cond = teacher.encode([prompts[i] for i in idx]).to(device)
            z = torch.randn((n,) + shape, generator=rng, device=device)
            return z, cond

        extra = {"bench": self.name, "variant": variant, "teacher": to_dict(cfg.teacher),
                 "generator": to_dict(cfg.generator), "prompts": to_dict(cfg.prompts)}
        summary = distill(run_dir, teacher=guided, generator=gen, student=student, sample_latents=sample_latents,
                          em=cfg.em, train=cfg.train, resume=resume, device=device, progress=ctx.progress,
                          extra_config=extra, stop_after=stop_after)
        log.info("sd15 %s: %d iterations in %.1f s", variant, summary["iterations"], summary["train_seconds"])
        return summary

    # ------------------------------------------------------------------ evaluation
    def _score(self, cfg: SD15Config, ctx: RunContext, teacher, sample_fn: Callable, num: int, out_dir: Path,
               desc: str) -> dict:
        """Generate one image per evaluation prompt with ``sample_fn(z, cond) -> latents``, decode,
        and compute the CLIP score and FID-30k."""
        from tqdm.auto import tqdm

        from ..data.prompts import load_prompts
        from ..metrics.clip import clean_resize, fid_against_directory, load_clip_scorer

        ev = cfg.eval
        prompts = load_prompts(cfg.prompts.eval, num, cfg.prompts.seed)
        scorer = None
        if ev.clip:
            scorer = load_clip_scorer(ev.clip_model, ev.clip_pretrained, device=ctx.device,
                                      batch_size=ev.clip_batch_size)
        g = torch.Generator().manual_seed(ev.seed)
        cos, fid_imgs, grid = [], [], []
        t0 = time.perf_counter()
        sample_seconds = 0.0
        for i in tqdm(range(0, len(prompts), ev.batch_size), desc=desc, disable=not ctx.progress,
                      dynamic_ncols=True, mininterval=1.0):
            batch = prompts[i:i + ev.batch_size]
            z = torch.randn((len(batch),) + teacher.latent_shape, generator=g).to(ctx.device)
            with torch.no_grad():
                cond = teacher.encode(batch)
                ts = time.perf_counter()
                latents = sample_fn(z, cond)
                sample_seconds += time.perf_counter() - ts
                images = teacher.decode(latents)
            if scorer is not None:
                cos.append(scorer.cosine(images, batch))
            if ev.fid:
                fid_imgs.append(clean_resize(images.cpu(), ev.fid_size))
            if sum(x.shape[0] for x in grid) < ev.grid:
                grid.append(images.cpu())
        metrics: dict[str, Any] = {"num_samples": len(prompts), "sample_seconds": round(sample_seconds, 3),
                                   "eval_seconds": None}
        if cos:
            c = torch.cat(cos).double()
            metrics.update(clip_score=100 * float(c.mean()), clip_score_fraction=float(c.mean()),
                           clip_model=f"{ev.clip_model}/{ev.clip_pretrained}")
        if ev.fid:
            cache_root = str(ctx.bench_dir(self.name) / "fid_cache") if ev.ref_cache_name else None
            metrics.update(fid_against_directory(
                torch.cat(fid_imgs), ev.ref_dir, size=ev.fid_size, center_crop=ev.center_crop,
                feature_extractor=ev.feature_extractor,
                feature_extractor_weights_path=ev.feature_extractor_weights_path,
                device=ctx.device, cache_root=cache_root, ref_cache_name=ev.ref_cache_name, ref_limit=ev.ref_limit))
        metrics["eval_seconds"] = round(time.perf_counter() - t0, 3)
        if grid:
            imgs = torch.cat(grid)[:ev.grid]
            save_image_grid(out_dir / "samples.png", imgs, nrow=max(1, int(len(imgs) ** 0.5)))
        return metrics

    def load_generator(self, cfg: SD15Config, teacher, path):
        state = load_checkpoint(path)
        gen, _ = self.networks(cfg, teacher)
        load_state_strict(gen, state["generator_ema"], "generator", path)
        return gen.to(teacher.device).eval().requires_grad_(False), state

    def evaluate(self, section: dict, ctx: RunContext, variant: str) -> dict:
        cfg = self.parse(section, variant)
        run_dir = ctx.run_dir(self.name, variant)
        ckpt = run_dir / "checkpoint.pt"
        if not ckpt.exists():
            raise MCTError(f"{ckpt} is missing; run `mct distill --bench sd15 --variant {variant}` first")
        teacher = self.load_teacher(cfg, ctx)
        gen, state = self.load_generator(cfg, teacher, ckpt)
        metrics = self._score(cfg, ctx, teacher, lambda z, c: gen(z, c), cfg.eval.num_samples, run_dir,
                              f"evaluate sd15 {variant}")
        metrics.update({"variant": variant, "nfe": 1, "K": cfg.em.num_steps, "guidance_scale":
                        cfg.teacher.guidance_scale, "sigma_g": cfg.generator.sigma_g, "init": cfg.generator.init,
                        "iterations": int(state["iteration"]),
                        "train_seconds": round(float(state.get("seconds", 0.0)), 3)})
        write_json(run_dir / "metrics.json", metrics)
        return metrics

    def teacher_eval(self, section: dict, ctx: RunContext) -> dict:
        from ..diffusion.samplers import heun_steps_for_nfe

        cfg = self.parse(section)
        ev = cfg.eval
        teacher = self.load_teacher(cfg, ctx)
        guided = teacher.guided(cfg.teacher.guidance_scale)
        steps = heun_steps_for_nfe(ev.teacher_nfe) if ev.teacher_sampler == "heun" else ev.teacher_nfe
        sigmas = karras_sigmas(steps, teacher.sigma_min, teacher.sigma_max, device=ctx.device)
        sampler = SAMPLERS[ev.teacher_sampler]
        counter = CountingDenoiser(guided)
        calls = []

        def sample_fn(z, cond):
            before = counter.nfe
            out = sampler(counter, z * sigmas[0], sigmas, cond)
            calls.append(counter.nfe - before)
            return out

        out_dir = ensure_writable_dir(ctx.bench_dir(self.name) / "teacher")
        metrics = self._score(cfg, ctx, teacher, sample_fn, ev.teacher_num_samples or ev.num_samples, out_dir,
                              "teacher sd15")
        metrics.update({"nfe": calls[0] if calls else None, "sampler": ev.teacher_sampler,
                        "guidance_scale": cfg.teacher.guidance_scale,
                        "note": "one NFE = one guided call (the conditional and unconditional branches batched)"})
        write_json(out_dir / "metrics.json", metrics)
        return metrics

    def summarize(self, section: dict, ctx: RunContext) -> list[dict]:
        cols = ["variant", "nfe", "fid", "clip_score", "K", "guidance_scale", "sigma_g", "init", "iterations",
                "train_seconds"]
        rows = []
        tpath = ctx.bench_dir(self.name) / "teacher" / "metrics.json"
        if tpath.exists():
            rows.append({c: read_json(tpath).get(c) for c in cols} | {"variant": "teacher"})
        for _, m in self.variant_metrics(section, ctx):
            rows.append({c: m.get(c) for c in cols})
        write_csv(ctx.bench_dir(self.name) / "summary.csv", rows, fieldnames=cols)
        return rows


BENCHMARK = SD15()
