"""sd15: text-to-image distillation of Stable Diffusion v1.5 (paper scale, GPU; docs/benchmarks.md#sd15).

Teacher: SD v1.5 through diffusers, wrapped to the EDM convention in latent space with
classifier-free guidance (:mod:`mct.teachers.sd`). Generator and student score are copies of the
teacher U-Net; g(z, c) = D_theta(sigma_g z, sigma_g, c). Distillation, the checkpoint's config check
and the summary are base's stages; this module gives the hooks. Evaluation (DMD/DMD2 protocol)
streams, because 30,000 decoded 512 px images do not fit in memory: per batch of captions it
encodes, samples latents, decodes with the VAE, and keeps only the CLIP cosines (open_clip
ViT-g-14) and 256 px copies for FID-30k against COCO val2014 (torch-fidelity).

Outputs under ``results/sd15/``: ``refs/`` (the fetched Inception and CLIP weights), ``teacher/``
(the fetched diffusers files; ``checkpoint.pt``, a manifest naming the source; ``metrics.json``,
``samples.png``), ``runs/<variant>/{checkpoint.pt, train_log.csv, metrics.json, samples.png}``,
``summary.csv``. Every knob is in config/sd15.yaml."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from ..diffusion.edm import SigmaDist
from ..diffusion.samplers import SAMPLERS
from ..distill.em import EMConfig
from ..distill.init import INITS, PRECISIONS
from ..distill.trainer import TrainConfig
from ..errors import ConfigError, MCTError
from .base import Benchmark, Parts, RunContext


def _file_name(url: str) -> str:
    from ..teachers.download import file_name

    return file_name(url)

log = logging.getLogger(__name__)

DEFAULT_SD_REPO = "stable-diffusion-v1-5/stable-diffusion-v1-5"
# the Inception weights torch-fidelity would otherwise download at the end of an evaluation
INCEPTION_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                 "weights-inception-2015-12-05-6726825d.pth")
# open_clip's ViT-g-14 / laion2b_s12b_b42k weights (its pretrained table names this hub repo;
# the safetensors file, which open_clip itself prefers, is plain tensors)
CLIP_MODEL, CLIP_PRETRAINED = "ViT-g-14", "laion2b_s12b_b42k"
CLIP_URL = "https://huggingface.co/laion/CLIP-ViT-g-14-laion2B-s12B-b42K/resolve/main/open_clip_model.safetensors"
MANIFEST_FORMAT = "mct-sd-teacher-v1"
TEACHER_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}  # weights of the frozen parts


def _one_of(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(map(str, allowed))}, got {value!r}")


@dataclass(frozen=True)
class SDTeacherConfig:
    """model: a hub id or a local diffusers directory (a hub id uses ``results/sd15/teacher/`` once
    ``mct teacher fetch`` filled it). revision: the pinned hub commit. local_files_only: never touch
    the network. variant: weight file variant ('fp16' or null). precision: dtype of the frozen
    U-Net, text encoder and VAE (fp32, fp16, bf16). guidance: CFG scale w of the teacher score
    (1 = no guidance). quantize_timesteps: nearest integer timestep instead of the interpolated one.
    sha256: {relative path: digest} checked after fetching."""

    model: str = DEFAULT_SD_REPO
    revision: Optional[str] = None
    local_files_only: bool = False
    variant: Optional[str] = None
    cache_dir: Optional[str] = None
    precision: str = "fp32"
    guidance: float = 3.0
    quantize_timesteps: bool = False
    sha256: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        _one_of("precision", self.precision, TEACHER_DTYPES)
        if self.guidance < 0:
            raise ConfigError(f"guidance must be >= 0, got {self.guidance}")


@dataclass(frozen=True)
class SDPromptConfig:
    """The distillation prompts: ``train`` (one caption per line, or COCO captions JSON), ``num_train``
    of them (null: all) drawn with ``seed``."""

    train: str = "data/coco2014/annotations/captions_train2014.json"
    num_train: Optional[int] = None
    seed: int = 0


@dataclass(frozen=True)
class SDEvalConfig:
    """num_samples: captions (and images) scored (FID-30k: 30000), drawn from ``prompts`` with
    ``prompt_seed``; the latents from ``seed``. ref_dir: reference images (COCO val2014), centre-cropped
    and clean-resized to fid_size. feature_extractor: torch-fidelity extractor (null: Inception-v3);
    feature_extractor_weights_path: the Inception weights (offline clusters), else
    ``results/sd15/refs/`` once ``mct teacher fetch`` downloaded feature_extractor_url (pinned by
    feature_extractor_sha256 or the lock file). clip_model / clip_pretrained: open_clip model of the
    CLIP score (``local-dir:PATH`` for a saved one); clip_weights_path: its weights file (offline
    clusters), else ``results/sd15/refs/`` once fetched from clip_weights_url (pinned by
    clip_weights_sha256 or the lock file). Evaluation checks all of these before its first sample.
    teacher_nfe / teacher_sampler / teacher_num_samples: the teacher's own samples."""

    prompts: str = "data/coco2014/annotations/captions_val2014.json"
    prompt_seed: int = 0
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
    feature_extractor_url: str = INCEPTION_URL
    feature_extractor_sha256: Optional[str] = None
    ref_cache_name: Optional[str] = "coco2014-val-256"
    clip: bool = True
    clip_model: str = CLIP_MODEL
    clip_pretrained: Optional[str] = CLIP_PRETRAINED
    clip_weights_path: Optional[str] = None
    clip_weights_url: str = CLIP_URL
    clip_weights_sha256: Optional[str] = None
    clip_batch_size: int = 32
    teacher_nfe: int = 25
    teacher_sampler: str = "euler"
    teacher_num_samples: Optional[int] = None
    grid: int = 16

    def __post_init__(self):
        if self.grid < 1:
            raise ConfigError(f"grid must be >= 1 (images in samples.png), got {self.grid}")
        for name in ("num_samples", "batch_size", "fid_size", "clip_batch_size", "teacher_nfe"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        _one_of("teacher_sampler", self.teacher_sampler, SAMPLERS)
        if self.teacher_sampler == "heun" and self.teacher_nfe % 2 == 0:
            raise ConfigError(f"teacher_nfe must be odd for the Heun sampler, got {self.teacher_nfe}")
        if (self.clip and self.clip_pretrained and not self.clip_weights_path and self.clip_weights_url == CLIP_URL
                and (self.clip_model, self.clip_pretrained) != (CLIP_MODEL, CLIP_PRETRAINED)):
            raise ConfigError(f"clip_weights_url is the file of {CLIP_MODEL}/{CLIP_PRETRAINED}: for "
                              f"{self.clip_model}/{self.clip_pretrained} set clip_weights_url or clip_weights_path")


def _sd_train_default() -> TrainConfig:
    return TrainConfig(iterations=20000, batch_size=32, lr_g=1e-5, lr_s=1e-5, beta1=0.0, beta2=0.999,
                       score_updates=5, score_warmup=0, ema_decay=0.999, grad_clip=10.0,
                       sigma=SigmaDist("loguniform", 0.03, 14.6), sigma_data=1.0, checkpoint_every=500)


@dataclass(frozen=True)
class SD15Config:
    """The sd15 section. sigma_g: the generator's fixed level. init: 'teacher' (copies of the teacher
    U-Net) or 'random' (the ablation). precision: autocast of the generator and student U-Nets on
    CUDA (fp32, bf16, fp16; float32 weights). gradient_checkpointing: trade their compute for memory.
    lock_file: where trust-on-first-use sha256 pins of the evaluation weights are recorded (commit it)."""

    teacher: SDTeacherConfig = field(default_factory=SDTeacherConfig)
    prompts: SDPromptConfig = field(default_factory=SDPromptConfig)
    sigma_g: float = 2.5
    init: str = "teacher"
    precision: str = "fp32"
    gradient_checkpointing: bool = False
    em: EMConfig = field(default_factory=lambda: EMConfig(num_steps=8, gamma_eps=0.1, gamma_z=0.05))
    train: TrainConfig = field(default_factory=_sd_train_default)
    eval: SDEvalConfig = field(default_factory=SDEvalConfig)
    lock_file: str = "config/checksums.lock.yaml"
    variants: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if not self.sigma_g > 0:
            raise ConfigError(f"sigma_g must be > 0, got {self.sigma_g}")
        _one_of("init", self.init, INITS)
        _one_of("precision", self.precision, PRECISIONS)


@functools.lru_cache(maxsize=1)  # distill and evaluate ask for it in several hooks
def _load_teacher(source: str, **kw):
    from ..teachers.sd import load_sd_teacher

    log.info("loading Stable Diffusion from %s", source)
    return load_sd_teacher(source, **kw)


@functools.lru_cache(maxsize=1)
def _load_prompts(path: str, n: Optional[int], seed: int) -> list[str]:
    from ..data.prompts import load_prompts

    return load_prompts(path, n, seed)


class SD15(Benchmark):
    name = "sd15"
    config_cls = SD15Config
    stages = ("teacher_fetch", "teacher_eval", "distill", "evaluate", "summarize")
    untrained_keys = Benchmark.untrained_keys + ("gradient_checkpointing", "lock_file")
    summary_metrics = ("fid", "clip_score", "num_samples")
    scores_every_seed = False  # its streamed evaluate scores one training seed

    def settings(self, cfg: SD15Config) -> dict:
        return {**super().settings(cfg), "guidance": cfg.teacher.guidance, "sigma_g": cfg.sigma_g}

    def network_bytes(self, cfg: SD15Config):
        """Generator and student are float32 copies of SD v1.5's U-Net (built on the meta device)."""
        from ..checkpoint import module_bytes
        from ..teachers.sd import sd15_unet_on_meta

        size = module_bytes(sd15_unet_on_meta())
        return size, size

    # ------------------------------------------------------------------ teacher and prompts

    def teacher_source(self, cfg: SD15Config, ctx: RunContext) -> str:
        """A local directory named by teacher.model, else the fetched copy under results/sd15/teacher/,
        else the hub id itself (the diffusers cache)."""
        model, fetched = Path(cfg.teacher.model).expanduser(), ctx.bench_dir(self.name) / "teacher"
        if model.is_dir():
            return str(model)
        return str(fetched) if (fetched / "model_index.json").is_file() else cfg.teacher.model

    def teacher(self, cfg: SD15Config, ctx: RunContext):
        """The Stable Diffusion pieces (:class:`mct.teachers.sd.SDTeacher`), loaded once per process."""
        t = cfg.teacher
        return _load_teacher(self.teacher_source(cfg, ctx), local_files_only=t.local_files_only, revision=t.revision,
                             cache_dir=t.cache_dir, dtype=TEACHER_DTYPES[t.precision], device=str(ctx.device),
                             variant=t.variant, quantize=t.quantize_timesteps)

    def train_prompts(self, cfg: SD15Config) -> list[str]:
        return _load_prompts(cfg.prompts.train, cfg.prompts.num_train, cfg.prompts.seed)

    # ------------------------------------------------------------------ evaluation inputs

    def feature_weights_file(self, cfg: SD15Config, ctx: RunContext) -> Optional[Path]:
        """The Inception weights FID reads: eval.feature_extractor_weights_path, else the fetched copy
        under refs/; None when FID is off or another extractor brings its own."""
        ev = cfg.eval
        if not ev.fid:
            return None
        if ev.feature_extractor_weights_path:
            return Path(ev.feature_extractor_weights_path).expanduser()
        if ev.feature_extractor not in (None, "inception-v3-compat"):
            return None
        return ctx.bench_dir(self.name) / "refs" / _file_name(ev.feature_extractor_url)

    def clip_weights_file(self, cfg: SD15Config, ctx: RunContext) -> Optional[Path]:
        """The open_clip weights the CLIP score reads: eval.clip_weights_path, else the fetched copy under
        refs/; None when the CLIP score is off, the model is a ``local-dir:`` folder or has no pretrained tag."""
        ev = cfg.eval
        if not ev.clip or ev.clip_model.startswith("local-dir:") or not (ev.clip_pretrained or ev.clip_weights_path):
            return None
        if ev.clip_weights_path:
            return Path(ev.clip_weights_path).expanduser()
        return ctx.bench_dir(self.name) / "refs" / _file_name(ev.clip_weights_url)

    def preflight(self, cfg: SD15Config, ctx: RunContext) -> None:
        """Every file an evaluation reads besides the run, checked before the first sample (one
        MCTError naming each missing one and the key or command that provides it): the captions,
        the reference images of FID, the Inception weights and the CLIP weights."""
        from ..metrics.clip import IMAGE_EXTS
        from ..metrics.inception import check_weights_file

        ev, fetch = cfg.eval, f"`mct teacher fetch --bench {self.name}`"
        missing = []
        if not Path(ev.prompts).is_file():
            missing.append(f"captions {ev.prompts} (eval.prompts; COCO files are not fetched)")
        if ev.fid:
            ref = Path(ev.ref_dir)
            if not (ref.is_dir() and any(f.suffix.lower() in IMAGE_EXTS for f in ref.rglob("*"))):
                missing.append(f"FID reference images in {ev.ref_dir} (eval.ref_dir; COCO val2014 is not fetched)")
            weights = self.feature_weights_file(cfg, ctx)
            if weights is not None and not weights.is_file():
                missing.append(f"Inception weights {weights} (eval.feature_extractor_weights_path, or {fetch})")
            elif weights is not None:
                check_weights_file(weights)  # torch-fidelity unpickles it: plain tensors only
        if ev.clip:
            weights = self.clip_weights_file(cfg, ctx)
            if weights is not None and not weights.is_file():
                missing.append(f"CLIP {ev.clip_model} weights {weights} (eval.clip_weights_path, or {fetch})")
            folder = ev.clip_model[len("local-dir:"):] if ev.clip_model.startswith("local-dir:") else None
            if folder is not None and not Path(folder).is_dir():
                missing.append(f"CLIP model folder {folder} (eval.clip_model)")
        if missing:
            raise MCTError(f"{self.name} evaluation cannot start, missing: " + "; ".join(missing))

    def teacher_fetch(self, section: dict, ctx: RunContext) -> dict:
        """The diffusers files -> teacher/, and teacher/checkpoint.pt: a manifest naming the source
        (what the pipeline tracks as the teacher; not weights); then the evaluation's Inception and
        CLIP weights -> refs/ (sha256-pinned: the configured digest, else the lock file's), unless
        local copies are configured (then they are checked against a configured digest)."""
        from ..io import torch_save
        from ..teachers.download import fetch_or_local
        from ..teachers.sd import fetch_sd

        cfg = self.parse(section)
        t, ev = cfg.teacher, cfg.eval
        if Path(t.model).expanduser().is_dir():
            log.info("teacher.model is a local directory (%s); nothing to fetch", t.model)
            source = str(Path(t.model).expanduser())
        elif t.local_files_only:
            raise MCTError("teacher.local_files_only is set: `mct teacher fetch` would need the network; "
                           "unset it or point teacher.model at a local directory")
        else:
            source = str(fetch_sd(t.model, ctx.bench_dir(self.name) / "teacher", t.revision, t.variant, t.sha256))
        fetched = {}
        for key, dest, url, sha, local in (
                ("feature_weights", self.feature_weights_file(cfg, ctx), ev.feature_extractor_url,
                 ev.feature_extractor_sha256, ev.feature_extractor_weights_path),
                ("clip_weights", self.clip_weights_file(cfg, ctx), ev.clip_weights_url, ev.clip_weights_sha256,
                 ev.clip_weights_path)):
            if dest is not None:
                fetched[key] = str(fetch_or_local(url, sha, local, dest, cfg.lock_file, ctx.progress))
        torch_save(ctx.bench_dir(self.name) / "teacher" / "checkpoint.pt", {
            "format": MANIFEST_FORMAT, "source": source, "model": t.model, "revision": t.revision or "",
            "variant": t.variant or "", "sha256": dict(t.sha256)})
        return {"source": source, **fetched}

    # ------------------------------------------------------------------ distillation hooks

    def distill(self, section: dict, ctx: RunContext, variant: str, resume: str = "auto", stop_after=None,
                deadline=None) -> dict:
        self.train_prompts(self.parse(section, variant))  # a bad prompt file fails before any folder exists
        return super().distill(section, ctx, variant, resume, stop_after, deadline)

    def build(self, cfg: SD15Config, ctx: RunContext) -> Parts:
        teacher = self.teacher(cfg, ctx)
        if cfg.sigma_g > teacher.sigma_max * 1.001:
            log.warning("sigma_g = %g is above the schedule's sigma_max = %.3g; the timestep is clamped",
                        cfg.sigma_g, teacher.sigma_max)
        amp = PRECISIONS[cfg.precision]
        gen = teacher.make_generator(cfg.sigma_g, cfg.init, cfg.train.seed, autocast=amp)
        student = teacher.make_student(cfg.init, cfg.train.seed, autocast=amp)
        if cfg.gradient_checkpointing:
            gen.denoiser.unet.enable_gradient_checkpointing()
            student.unet.enable_gradient_checkpointing()
        record = {"kind": "sd-unet", "sigma_g": cfg.sigma_g, "precision": cfg.precision}
        return Parts(teacher.guided(cfg.teacher.guidance), gen, student, record)

    def generator_from_record(self, cfg: SD15Config, ctx: RunContext, record: dict):
        """A copy of the teacher U-Net as generator (the checkpoint's weights replace it)."""
        if record.get("kind") != "sd-unet":
            raise MCTError(f"this checkpoint was not written by the {self.name} benchmark (no architecture record)")
        return self.teacher(cfg, ctx).make_generator(record["sigma_g"], autocast=PRECISIONS[record["precision"]])

    def latent_sampler(self, cfg: SD15Config, ctx: RunContext):
        prompts, teacher, device = self.train_prompts(cfg), self.teacher(cfg, ctx), torch.device(ctx.device)

        def sample_latents(n: int, rng: torch.Generator):
            idx = torch.randint(0, len(prompts), (n,), generator=rng, device=rng.device).tolist()
            cond = teacher.encode([prompts[i] for i in idx]).to(device)
            return torch.randn((n, *teacher.latent_shape), generator=rng, device=device), cond

        return sample_latents

    # ------------------------------------------------------------------ evaluation (streamed)

    def _score(self, cfg: SD15Config, ctx: RunContext, sample: Callable, num: int, grid_path: Path, desc: str) -> dict:
        """One image per evaluation caption: ``sample(z, cond) -> latents`` per batch, VAE decode, then
        the CLIP score and FID against ``eval.ref_dir`` (:func:`mct.metrics.text_to_image.score_text_to_image`)."""
        from ..data.prompts import load_prompts
        from ..metrics.text_to_image import score_text_to_image

        ev, teacher = cfg.eval, self.teacher(cfg, ctx)
        cache_root = str(ctx.bench_dir(self.name) / "fid_cache") if ev.ref_cache_name else None
        weights, clip_file = self.feature_weights_file(cfg, ctx), self.clip_weights_file(cfg, ctx)
        m = score_text_to_image(
            load_prompts(ev.prompts, num, ev.prompt_seed), sample, teacher.encode, teacher.decode, teacher.latent_shape,
            seed=ev.seed, batch_size=ev.batch_size, device=ctx.device, clip=ev.clip, clip_model=ev.clip_model,
            clip_pretrained=str(clip_file) if clip_file else ev.clip_pretrained, clip_batch_size=ev.clip_batch_size,
            fid=ev.fid, ref_dir=ev.ref_dir, fid_size=ev.fid_size, center_crop=ev.center_crop,
            feature_extractor=ev.feature_extractor, feature_extractor_weights_path=str(weights) if weights else None,
            cache_root=cache_root, ref_cache_name=ev.ref_cache_name, ref_limit=ev.ref_limit, grid=ev.grid,
            grid_path=grid_path, progress=ctx.progress, desc=desc)
        if "clip_model" in m:  # the model and its tag, not the local file it was read from
            m["clip_model"] = f"{ev.clip_model}/{ev.clip_pretrained}"
        return m

    NOT_SCORES = ("num_samples", "sample_seconds", "samples_per_second", "eval_seconds", "clip_model")

    def evaluate(self, section: dict, ctx: RunContext, variant: str):
        """FID-30k and CLIP score of one-step samples -> runs/<variant>/{samples.png, metrics.json} and
        the completion record (written last)."""
        from ..io import stage_outputs

        cfg = self.setup(section, variant)
        self.preflight(cfg, ctx)  # a missing weight file fails now, not after 30,000 samples
        gen, state = self.load_generator(cfg, ctx, variant)
        with stage_outputs(ctx.run_dir(self.name, variant), "evaluate", self.run_hash(cfg)) as out:
            m = self._score(cfg, ctx, gen, cfg.eval.num_samples, out.path("samples.png"), f"evaluate sd15 {variant}")
            rec = self.run_record(cfg, variant, state, m, ignore=self.NOT_SCORES,
                                  notes={"clip_model": str(m.get("clip_model", ""))}, num_samples=m["num_samples"],
                                  sample_seconds=m["sample_seconds"], eval_seconds=m["eval_seconds"])
            self.write_record(out.path("metrics.json"), rec)
        log.info("sd15 %s: FID %s, CLIP score %s", variant, rec.scores.get("fid"), rec.scores.get("clip_score"))
        return rec

    def teacher_eval(self, section: dict, ctx: RunContext):
        """The guided teacher's own scores with ``eval.teacher_sampler`` at ``eval.teacher_nfe`` ->
        teacher/{samples.png, metrics.json}; one NFE is one guided call (both CFG branches batched)."""
        from ..config import config_hash, to_dict
        from ..diffusion.samplers import sample_at_nfe
        from ..io import stage_outputs
        from ..records import Scores, TeacherMetrics, TeacherRow, provenance

        cfg = self.setup(section)
        self.preflight(cfg, ctx)
        ev, teacher = cfg.eval, self.teacher(cfg, ctx)
        guided, measured = teacher.guided(cfg.teacher.guidance), []

        def sample(z, cond):
            x, nfe = sample_at_nfe(guided, z, ev.teacher_nfe, cond, sampler=ev.teacher_sampler,
                                   sigma_min=teacher.sigma_min, sigma_max=teacher.sigma_max)
            measured.append(nfe)
            return x

        with stage_outputs(ctx.bench_dir(self.name) / "teacher", "teacher_eval") as out:
            m = self._score(cfg, ctx, sample, ev.teacher_num_samples or ev.num_samples, out.path("samples.png"),
                            "teacher sd15")
            row = TeacherRow(nfe=ev.teacher_nfe, nfe_measured=max(measured), sampler=ev.teacher_sampler,
                             num_samples=m["num_samples"], sample_seconds=m["sample_seconds"],
                             scores=Scores.from_flat(m, ignore=self.NOT_SCORES))
            rec = TeacherMetrics(bench=self.name, rows=[row], provenance=provenance(config_hash(to_dict(cfg))),
                                 sampler=ev.teacher_sampler, guidance=float(cfg.teacher.guidance))
            self.write_record(out.path("metrics.json"), rec)
        return rec


BENCHMARK = SD15()
