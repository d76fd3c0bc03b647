"""imagenet64 / imagenet128: class-conditional ImageNet at paper scale (GPU).

Teachers (docs/benchmarks.md#imagenet64): imagenet64 uses EDM's ``edm-imagenet-64x64-cond-adm.pkl``, read by the
safe loader (:mod:`mct.teachers.edm_pickle`) into MCT's own ADM network
(:class:`mct.nets.dhariwal.DhariwalDenoiser`); imagenet128 uses OpenAI's ADM
``128x128_diffusion.pt`` (:mod:`mct.teachers.openai_adm`, VP schedule wrapped to EDM). The
paper's own 128 px teacher is not public: imagenet128 numbers use a different teacher, and the
metrics say so.

Generator: a copy of the teacher's network evaluated at one level,
``g(z, c) = D_theta(sigma_g z, sigma_g, c)`` ('init: teacher'; 'random' re-initialises the same
architecture, the ablation); student score: another copy of the teacher; the one training loop
is :func:`mct.distill.trainer.distill`. Evaluation: Inception FID (torch-fidelity) of 50,000
class-balanced samples per seed against the published reference statistics, minimum over
the seeds (EDM's convention).

Stages: ``teacher_fetch`` (teacher, reference statistics and Inception weights; sha256 pinned,
trust-on-first-use lock file), ``teacher_eval`` (the teacher's own FID with EDM's Heun sampler),
``distill``, ``evaluate``, ``summarize``. Outputs under ``results/<bench>/``:
``teacher/{checkpoint.pt (the fetched file, any format), teacher.json, metrics.json, samples.png}``,
``refs/``, ``runs/<variant>/{checkpoint.pt, train_log.csv, metrics.json, samples.png}``, ``summary.csv``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from ..config import deep_merge
from ..diffusion.edm import SigmaDist
from ..diffusion.samplers import SAMPLERS
from ..distill.em import EMConfig
from ..distill.init import PRECISIONS
from ..distill.trainer import TrainConfig
from ..errors import ConfigError, MCTError
from ..io import write_json
from ..teachers.download import fetch_or_local, file_name, link_atomically, sha256_file
from .base import Benchmark, Parts, RunContext

log = logging.getLogger(__name__)

EDM64_URL = "https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/edm-imagenet-64x64-cond-adm.pkl"
EDM64_REF_URL = "https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/imagenet-64x64.npz"
ADM128_URL = "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/128x128_diffusion.pt"
ADM128_REF_URL = ("https://openaipublic.blob.core.windows.net/diffusion/jul-2021/ref_batches/imagenet/128/"
                  "VIRTUAL_imagenet128_labeled.npz")
TEACHER_KINDS = ("edm-pickle", "openai-adm")


@dataclass(frozen=True)
class ImageNetTeacherConfig:
    """kind: 'edm-pickle' (EDM snapshot, safe loader) or 'openai-adm' (guided-diffusion .pt).
    url / sha256: where ``mct teacher fetch`` downloads it and its pin (null: trust on first use,
    recorded in the lock file). path: a local copy to use instead (offline clusters; checked
    against sha256 when one is given). snapshot_key: the network inside an EDM snapshot ('ema').
    adm_flags: guided-diffusion flags of an ADM checkpoint (missing ones: the released 128x128
    model's; diffusion_steps and noise_schedule too). precision: the frozen teacher's arithmetic
    on CUDA (fp32, fp16 (EDM ran its ImageNet model in fp16), bf16)."""

    kind: str = "edm-pickle"
    url: str = EDM64_URL
    sha256: Optional[str] = None
    path: Optional[str] = None
    snapshot_key: str = "ema"
    adm_flags: dict[str, Any] = field(default_factory=dict)
    precision: str = "fp32"

    def __post_init__(self):
        if self.kind not in TEACHER_KINDS:
            raise ConfigError(f"kind must be one of {', '.join(TEACHER_KINDS)}, got {self.kind!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.kind == "openai-adm" and self.adm_flags:
            from ..nets.adm import FLAG_NAMES
            from ..teachers.openai_adm import DIFFUSION_FLAGS

            unknown = sorted(set(self.adm_flags) - set(FLAG_NAMES) - set(DIFFUSION_FLAGS))
            if unknown:
                raise ConfigError(f"adm_flags: unknown flag {unknown[0]!r}")


@dataclass(frozen=True)
class ImageNetEvalConfig:
    """num_samples: class-balanced samples per seed (50,000 as EDM and ADM report); seeds: FID is
    reported as the minimum over them (EDM). ref_url / ref_sha256 / ref_path: reference statistics
    (.npz with mu, sigma). feature_extractor: a torch-fidelity extractor name ('inception-v3-compat')
    and its layer ('2048'); feature_extractor_weights_path: its weights (offline clusters), else
    fetched from feature_extractor_url (pinned by feature_extractor_sha256 or the lock file).
    teacher_nfe / teacher_sampler / teacher_seeds / teacher_num_samples: ``mct teacher eval``
    (EDM Heun, deterministic; 79 NFE is EDM's reported setting). grid: images in samples.png."""

    num_samples: int = 50000
    seeds: tuple[int, ...] = (0, 1, 2)
    batch_size: int = 250
    ref_url: str = EDM64_REF_URL
    ref_sha256: Optional[str] = None
    ref_path: Optional[str] = None
    feature_extractor: str = "inception-v3-compat"
    feature_layer: str = "2048"
    feature_dim: int = 2048
    feature_extractor_weights_path: Optional[str] = None
    feature_extractor_url: str = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                                  "weights-inception-2015-12-05-6726825d.pth")
    feature_extractor_sha256: Optional[str] = None
    teacher_nfe: tuple[int, ...] = (79,)
    teacher_sampler: str = "heun"
    teacher_seeds: tuple[int, ...] = (0,)
    teacher_num_samples: Optional[int] = None
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    grid: int = 64

    def __post_init__(self):
        if self.grid < 1:
            raise ConfigError(f"grid must be >= 1 (images in samples.png), got {self.grid}")
        for name in ("num_samples", "batch_size", "feature_dim"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_samples < 2:
            raise ConfigError("num_samples must be >= 2 (a covariance needs two samples)")
        if not self.seeds or not self.teacher_seeds:
            raise ConfigError("seeds and teacher_seeds need at least one seed each")
        if self.teacher_sampler not in SAMPLERS:
            raise ConfigError(f"teacher_sampler must be one of {', '.join(SAMPLERS)}, got {self.teacher_sampler!r}")
        for nfe in self.teacher_nfe:
            if nfe < 1 or (self.teacher_sampler == "heun" and nfe % 2 == 0):
                raise ConfigError(f"teacher_nfe {nfe}: Heun needs an odd NFE >= 1")
        if not 0 < self.sigma_min < self.sigma_max:
            raise ConfigError("sampler needs 0 < sigma_min < sigma_max")


def _train_default() -> TrainConfig:
    return TrainConfig(iterations=200000, batch_size=256, lr_g=2e-6, lr_s=2e-6, beta1=0.0, beta2=0.999,
                       score_updates=5, score_warmup=0, ema_decay=0.9999, grad_clip=0.0,
                       sigma=SigmaDist("loguniform", 0.02, 80.0),
                       score_sigma=SigmaDist("lognormal", 0.002, 80.0, -1.2, 1.2), sigma_data=0.5,
                       checkpoint_every=1000, keep_checkpoints=2, log_every=100)


@dataclass(frozen=True)
class ImageNetConfig:
    """The imagenet64 / imagenet128 section.

    resolution, num_classes, channels: the data. lock_file: where trust-on-first-use sha256 pins
    are recorded (commit it). sigma_g: the generator's fixed level. init: 'teacher' (copies of
    the teacher) or 'random' (ablation). dropout: dropout of the generator and student copies
    (the teacher's own training used 0.10). precision: arithmetic of generator and student on CUDA
    (bf16: autocast in bfloat16; fp32; fp16 without a loss scaler is not recommended).
    checkpointing: activation checkpointing of the generator and student U-Nets (each block's
    activations recomputed in backward: less memory per sample, about one more forward of compute
    per backward; does not change the result, so not in the run hash)."""

    resolution: int = 64
    num_classes: int = 1000
    channels: int = 3
    teacher: ImageNetTeacherConfig = field(default_factory=ImageNetTeacherConfig)
    lock_file: str = "config/checksums.lock.yaml"
    sigma_g: float = 2.5
    init: str = "teacher"
    dropout: float = 0.0
    precision: str = "bf16"
    checkpointing: bool = False
    em: EMConfig = field(default_factory=lambda: EMConfig(num_steps=8, gamma_eps=0.1, gamma_z=0.05))
    train: TrainConfig = field(default_factory=_train_default)
    eval: ImageNetEvalConfig = field(default_factory=ImageNetEvalConfig)
    variants: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.resolution < 8 or self.num_classes < 1 or self.channels < 1:
            raise ConfigError("resolution must be >= 8, num_classes and channels >= 1")
        if not self.sigma_g > 0:
            raise ConfigError(f"sigma_g must be > 0, got {self.sigma_g}")
        if self.init not in ("teacher", "random"):
            raise ConfigError(f"init must be 'teacher' or 'random', got {self.init!r}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")


# Per-benchmark defaults under the section (the YAML overrides them).
DEFAULTS: dict[str, dict] = {
    "imagenet64": {},
    "imagenet128": {
        "resolution": 128,
        "teacher": {"kind": "openai-adm", "url": ADM128_URL},
        "eval": {"ref_url": ADM128_REF_URL, "teacher_nfe": [79]},
    },
}


class ImageNet(Benchmark):
    config_cls = ImageNetConfig
    stages = ("teacher_fetch", "teacher_eval", "distill", "evaluate", "summarize")
    untrained_keys = Benchmark.untrained_keys + ("lock_file", "checkpointing")  # pins; a memory/compute trade
    summary_metrics = ("fid", "fid_mean", "fid_seeds", "num_samples")
    scores_every_seed = False  # its streamed evaluate scores one training seed

    def __init__(self, name: str):
        if name not in DEFAULTS:
            raise ConfigError(f"unknown ImageNet benchmark {name!r} (known: {', '.join(DEFAULTS)})")
        self.name = name

    def parse(self, section: dict, variant: str | None = None, path: str | None = None):
        return super().parse(deep_merge(DEFAULTS[self.name], section or {}), variant, path)

    def settings(self, cfg: ImageNetConfig) -> dict:
        return {**super().settings(cfg), "sigma_g": cfg.sigma_g}

    def network_bytes(self, cfg: ImageNetConfig):
        """The teacher's architecture built on the meta device (nothing allocated): the generator and
        the student are copies of it. edm-pickle: EDM's ImageNet-64 network at the configured size;
        openai-adm: the released 128x128 flags with the configured ones."""
        from ..checkpoint import module_bytes

        with torch.device("meta"):
            if cfg.teacher.kind == "edm-pickle":
                from ..nets.dhariwal import IMAGENET64_KWARGS, DhariwalDenoiser

                net = DhariwalDenoiser(**{**IMAGENET64_KWARGS, "img_resolution": cfg.resolution,
                                          "img_channels": cfg.channels, "label_dim": cfg.num_classes})
            else:
                from ..nets.adm import FLAG_NAMES, adm_from_flags

                flags = {k: v for k, v in cfg.teacher.adm_flags.items() if k in FLAG_NAMES}  # not the diffusion's
                net = adm_from_flags({"image_size": cfg.resolution, **flags}, cfg.num_classes)
        size = module_bytes(net)
        return size, size

    # ------------------------------------------------------------------ files

    def teacher_file(self, cfg: ImageNetConfig, ctx: RunContext) -> Path:
        """``teacher.path`` when configured, else ``<bench>/teacher/checkpoint.pt`` (the fetched file,
        whatever its format: the pipeline's declared output of ``teacher fetch``)."""
        if cfg.teacher.path:
            return Path(cfg.teacher.path)
        return ctx.bench_dir(self.name) / "teacher" / "checkpoint.pt"

    def ref_file(self, cfg: ImageNetConfig, ctx: RunContext) -> Path:
        if cfg.eval.ref_path:
            return Path(cfg.eval.ref_path)
        return ctx.bench_dir(self.name) / "refs" / file_name(cfg.eval.ref_url)

    def feature_weights_file(self, cfg: ImageNetConfig, ctx: RunContext) -> Optional[Path]:
        if cfg.eval.feature_extractor_weights_path:
            return Path(cfg.eval.feature_extractor_weights_path)
        if cfg.eval.feature_extractor != "inception-v3-compat":
            return None  # another registered extractor brings its own weights
        return ctx.bench_dir(self.name) / "refs" / file_name(cfg.eval.feature_extractor_url)

    def preflight(self, cfg: ImageNetConfig, ctx: RunContext) -> None:
        """The reference statistics and the feature extractor's weights, checked before the first
        sample: one MCTError naming each missing file and the key or command that provides it."""
        fetch, missing = f"`mct teacher fetch --bench {self.name}`", []
        ref = self.ref_file(cfg, ctx)
        if not ref.is_file():
            missing.append(f"reference statistics {ref} (eval.ref_path, or {fetch})")
        weights = self.feature_weights_file(cfg, ctx)
        if weights is not None and not weights.is_file():
            missing.append(f"Inception weights {weights} (eval.feature_extractor_weights_path, or {fetch})")
        if missing:
            raise MCTError(f"{self.name} evaluation cannot start, missing: " + "; ".join(missing))

    def _require(self, path: Path, what: str) -> Path:
        if not path.is_file():
            raise MCTError(f"{what} {path} is missing; run `mct teacher fetch --bench {self.name}` first")
        return path

    # ------------------------------------------------------------------ stages and hooks

    def teacher_fetch(self, section: dict, ctx: RunContext) -> dict:
        """Download (or verify) the teacher, the reference statistics and the Inception weights."""
        from ..metrics.inception import load_reference_stats
        from ..teachers.inspect import inspect_checkpoint

        cfg = self.parse(section)
        t, e, lock, bar = cfg.teacher, cfg.eval, cfg.lock_file, ctx.progress
        teacher = fetch_or_local(t.url, t.sha256, t.path, self.teacher_file(cfg, ctx), lock, bar)
        declared = ctx.bench_dir(self.name) / "teacher" / "checkpoint.pt"
        ref = fetch_or_local(e.ref_url, e.ref_sha256, e.ref_path, self.ref_file(cfg, ctx), lock, bar)
        weights = self.feature_weights_file(cfg, ctx)
        if weights is not None:
            weights = fetch_or_local(e.feature_extractor_url, e.feature_extractor_sha256,
                                     e.feature_extractor_weights_path, weights, lock, bar)
        load_reference_stats(ref, e.feature_dim)
        info = {"bench": self.name, "kind": t.kind, "url": t.url, "file_name": file_name(t.url),
                "path": str(teacher), "sha256": sha256_file(teacher), "reference": str(ref),
                "reference_sha256": sha256_file(ref),
                "feature_weights": str(weights) if weights else None, "description": inspect_checkpoint(teacher)}
        if t.path:  # a local copy: the declared output points at it (only once everything checked out)
            link_atomically(declared, Path(t.path).resolve())
        write_json(ctx.bench_dir(self.name) / "teacher" / "teacher.json", info)
        log.info("%s: teacher %s, reference %s ready", self.name, teacher, ref)
        return info

    def load_teacher(self, cfg: ImageNetConfig, ctx: RunContext) -> tuple[nn.Module, dict]:
        """The frozen teacher denoiser and the record that rebuilds its architecture."""
        from ..teachers import registry

        path = self._require(self.teacher_file(cfg, ctx), "teacher")
        flags = {"image_size": cfg.resolution, **cfg.teacher.adm_flags}
        net, arch = registry.load(cfg.teacher.kind, path, snapshot_key=cfg.teacher.snapshot_key, adm_flags=flags,
                                  amp_dtype=PRECISIONS[cfg.teacher.precision])
        if cfg.teacher.kind == "edm-pickle":
            if net.img_resolution != cfg.resolution or net.img_channels != cfg.channels:
                raise MCTError(f"teacher {path} is {net.img_channels}x{net.img_resolution}^2, the config says "
                               f"{cfg.channels}x{cfg.resolution}^2")
            if net.label_dim != cfg.num_classes:
                raise MCTError(f"teacher {path} has label_dim {net.label_dim}, the config says {cfg.num_classes}")
        elif net.eps_model.unet.num_classes not in (None, cfg.num_classes):
            raise MCTError(f"teacher {path} has {net.eps_model.unet.num_classes} classes, the config says "
                           f"{cfg.num_classes}")
        return net.to(ctx.device), arch

    def build(self, cfg: ImageNetConfig, ctx: RunContext) -> Parts:
        from ..distill.init import init_networks

        teacher, arch = self.load_teacher(cfg, ctx)
        record = {"teacher": arch, "sigma_g": cfg.sigma_g, "dropout": cfg.dropout, "precision": cfg.precision}
        generator, student = init_networks(teacher, {**record, "checkpointing": cfg.checkpointing}, cfg.init,
                                           seed=cfg.train.seed + 1)
        return Parts(teacher, generator, student, record)

    def generator_from_record(self, cfg: ImageNetConfig, ctx: RunContext, record: dict):
        from ..distill.init import generator_from_record

        if "teacher" not in record:
            raise MCTError(f"this checkpoint was not written by the {self.name} benchmark (no architecture record)")
        return generator_from_record(record)

    def latent_sampler(self, cfg: ImageNetConfig, ctx: RunContext):
        shape, device = (cfg.channels, cfg.resolution, cfg.resolution), torch.device(ctx.device)

        def sample_latents(n: int, rng: torch.Generator):
            z = torch.randn((n, *shape), generator=rng, device=device)
            return z, torch.randint(0, cfg.num_classes, (n,), generator=rng, device=device)

        return sample_latents

    def _features(self, cfg: ImageNetConfig, ctx: RunContext):
        from ..metrics.inception import FeatureNet, load_reference_stats

        ref_mu, ref_sigma = load_reference_stats(self._require(self.ref_file(cfg, ctx), "reference statistics"),
                                                 cfg.eval.feature_dim)
        weights = self.feature_weights_file(cfg, ctx)
        if weights is not None:
            self._require(weights, "feature-extractor weights")
        feats = FeatureNet(cfg.eval.feature_extractor, cfg.eval.feature_layer, str(weights) if weights else None,
                           device=ctx.device, batch_size=cfg.eval.batch_size)
        return feats, ref_mu, ref_sigma

    def _score(self, cfg: ImageNetConfig, ctx: RunContext, make_images, num_samples: int, seeds, grid_path: Path):
        """FID over seeds of class-balanced samples, streamed (:func:`mct.metrics.inception.fid_of_sampler`)."""
        from ..metrics.inception import fid_of_sampler

        feats, ref_mu, ref_sigma = self._features(cfg, ctx)
        result = fid_of_sampler(make_images, feats, ref_mu, ref_sigma, shape=(cfg.channels, cfg.resolution,
                                cfg.resolution), num_classes=cfg.num_classes, num_samples=num_samples, seeds=seeds,
                                batch_size=cfg.eval.batch_size, device=ctx.device, grid=cfg.eval.grid,
                                grid_path=grid_path, progress=ctx.progress)
        return {**result, "reference": cfg.eval.ref_path or cfg.eval.ref_url}

    def _teacher_note(self) -> dict:
        if self.name == "imagenet128":
            return {"teacher_note": "the paper's 128x128 teacher is not public; these numbers use OpenAI's ADM "
                                    "128x128_diffusion.pt as teacher (reported MCT/EMD FID 6.0 used the paper's own)"}
        return {}

    def evaluate(self, section: dict, ctx: RunContext, variant: str):
        """FID of 50,000 one-step samples per seed, streamed (never all in memory) -> samples.png,
        metrics.json and the completion record."""
        from ..io import stage_outputs

        cfg = self.parse(section, variant)
        self.preflight(cfg, ctx)  # a missing file fails now, not after the generator is loaded
        gen, state = self.load_generator(cfg, ctx, variant)
        with stage_outputs(ctx.run_dir(self.name, variant), "evaluate", self.run_hash(cfg)) as out:
            result = self._score(cfg, ctx, lambda z, c: gen(z, c), cfg.eval.num_samples, cfg.eval.seeds,
                                 out.path("samples.png"))
            notes = {k: str(result.pop(k)) for k in ("reference", "feature_extractor", "feature_layer")}
            notes.update(teacher_url=cfg.teacher.url, teacher_kind=cfg.teacher.kind, **self._teacher_note())
            rec = self.run_record(cfg, variant, state, result, ignore=("seeds", "num_samples", "eval_seconds"),
                                  notes=notes, num_samples=cfg.eval.num_samples, eval_seconds=result["eval_seconds"])
            self.write_record(out.path("metrics.json"), rec)
        log.info("%s %s: FID %.3f (min over seeds %s)", self.name, variant, rec.scores.get("fid"), list(cfg.eval.seeds))
        return rec

    def teacher_eval(self, section: dict, ctx: RunContext):
        """The teacher's own FID with EDM's sampler at each configured NFE."""
        from ..config import config_hash, to_dict
        from ..diffusion.samplers import sample_at_nfe
        from ..io import stage_outputs
        from ..records import Scores, TeacherMetrics, TeacherRow, provenance

        cfg = self.parse(section)
        e = cfg.eval
        self.preflight(cfg, ctx)
        teacher, _ = self.load_teacher(cfg, ctx)
        n = e.teacher_num_samples or e.num_samples
        with stage_outputs(ctx.bench_dir(self.name) / "teacher", "teacher_eval") as out:
            rows = []
            for nfe in e.teacher_nfe:
                def make_images(z, labels, nfe=nfe):
                    return sample_at_nfe(teacher, z, nfe, labels, sampler=e.teacher_sampler, sigma_min=e.sigma_min,
                                         sigma_max=e.sigma_max, rho=e.rho)[0]

                grid = out.path("samples.png" if nfe == max(e.teacher_nfe) else f"samples_nfe{nfe}.png")
                res = self._score(cfg, ctx, make_images, n, e.teacher_seeds, grid)
                rows.append(TeacherRow(nfe=nfe, sampler=e.teacher_sampler, num_samples=n,
                                       sample_seconds=res["eval_seconds"], scores=Scores.from_flat(
                                           res, ignore=("seeds", "num_samples", "eval_seconds", "reference",
                                                        "feature_extractor", "feature_layer"))))
            rec = TeacherMetrics(bench=self.name, rows=rows, provenance=provenance(config_hash(to_dict(cfg))),
                                 sampler=e.teacher_sampler, reference=e.ref_path or e.ref_url,
                                 notes={"teacher_url": cfg.teacher.url, **self._teacher_note()})
            self.write_record(out.path("metrics.json"), rec)
        return rec


def get_benchmark(name: str) -> ImageNet:
    return ImageNet(name)
