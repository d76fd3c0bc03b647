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

import copy
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

from ..config import deep_merge, to_dict
from ..diffusion.edm import SigmaDist, karras_sigmas
from ..diffusion.samplers import SAMPLERS, heun_steps_for_nfe
from ..distill.em import EMConfig
from ..distill.trainer import TrainConfig, distill, load_checkpoint, load_state_strict
from ..errors import ConfigError, MCTError
from ..io import ensure_writable_dir, save_image_grid, write_csv, write_json
from .base import Benchmark, RunContext

log = logging.getLogger(__name__)

EDM64_URL = "https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/edm-imagenet-64x64-cond-adm.pkl"
EDM64_REF_URL = "https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/imagenet-64x64.npz"
ADM128_URL = "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/128x128_diffusion.pt"
ADM128_REF_URL = ("https://openaipublic.blob.core.windows.net/diffusion/jul-2021/ref_batches/imagenet/128/"
                  "VIRTUAL_imagenet128_labeled.npz")
TEACHER_KINDS = ("edm-pickle", "openai-adm")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


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
    (bf16: autocast in bfloat16; fp32; fp16 without a loss scaler is not recommended)."""

    resolution: int = 64
    num_classes: int = 1000
    channels: int = 3
    teacher: ImageNetTeacherConfig = field(default_factory=ImageNetTeacherConfig)
    lock_file: str = "config/checksums.lock.yaml"
    sigma_g: float = 2.5
    init: str = "teacher"
    dropout: float = 0.0
    precision: str = "bf16"
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


class OneStepGenerator(nn.Module):
    """g(z, c) = D(sigma_g z, sigma_g, c): a denoiser evaluated at one fixed noise level."""

    def __init__(self, denoiser: nn.Module, sigma_g: float):
        super().__init__()
        self.denoiser = denoiser
        self.sigma_g = float(sigma_g)

    def forward(self, z: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        sigma = torch.full((z.shape[0],), self.sigma_g, device=z.device, dtype=z.dtype)
        return self.denoiser(self.sigma_g * z, sigma, cond)


def _file_name(url: str) -> str:
    name = Path(urlparse(url).path).name
    if not name:
        raise ConfigError(f"cannot name a file after the URL {url!r}")
    return name


def _link(link: Path, target: Path) -> None:
    """Point ``link`` at ``target`` (a symlink replaced atomically)."""
    ensure_writable_dir(link.parent)
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, link)


def _set_amp(module: nn.Module, dtype: Optional[torch.dtype]) -> None:
    for m in module.modules():
        if hasattr(m, "amp_dtype") and not isinstance(getattr(type(m), "amp_dtype", None), property):
            m.amp_dtype = dtype


def _set_dropout(module: nn.Module, p: float) -> None:
    from ..nets.dhariwal import UNetBlock

    for m in module.modules():
        if isinstance(m, UNetBlock):
            m.dropout = float(p)
        elif isinstance(m, nn.Dropout):
            m.p = float(p)


def build_network(arch: dict, empty: bool = False) -> nn.Module:
    """The teacher's architecture as a denoiser, from the record ``arch`` that distillation
    stores: fresh random weights (``empty=False``) or uninitialised memory to load into."""
    if arch["kind"] == "edm-pickle":
        from ..nets.dhariwal import DhariwalDenoiser, uninitialized

        if empty:
            with uninitialized():
                return DhariwalDenoiser.from_init_kwargs(arch["init_kwargs"])
        return DhariwalDenoiser.from_init_kwargs(arch["init_kwargs"])
    from ..teachers.openai_adm import adm_denoiser, build_adm

    return adm_denoiser(build_adm(arch["flags"], empty=empty), arch["flags"])


class ImageNet(Benchmark):
    config_cls = ImageNetConfig
    stages = ("teacher_fetch", "teacher_eval", "distill", "evaluate", "summarize")

    def __init__(self, name: str):
        if name not in DEFAULTS:
            raise ConfigError(f"unknown ImageNet benchmark {name!r} (known: {', '.join(DEFAULTS)})")
        self.name = name

    def parse(self, section: dict, variant: str | None = None, path: str | None = None):
        return super().parse(deep_merge(DEFAULTS[self.name], section or {}), variant, path)

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
        return ctx.bench_dir(self.name) / "refs" / _file_name(cfg.eval.ref_url)

    def feature_weights_file(self, cfg: ImageNetConfig, ctx: RunContext) -> Optional[Path]:
        if cfg.eval.feature_extractor_weights_path:
            return Path(cfg.eval.feature_extractor_weights_path)
        if cfg.eval.feature_extractor != "inception-v3-compat":
            return None  # another registered extractor brings its own weights
        return ctx.bench_dir(self.name) / "refs" / _file_name(cfg.eval.feature_extractor_url)

    def _fetch(self, url: str, sha256: Optional[str], local: Optional[str], dest: Path, cfg: ImageNetConfig,
               ctx: RunContext) -> Path:
        from ..teachers.download import fetch, sha256_file

        if local:
            path = Path(local)
            if not path.is_file():
                raise MCTError(f"{path} (configured as a local copy of {url}) does not exist")
            if sha256 and sha256_file(path) != sha256.lower():
                raise MCTError(f"{path} does not match its configured sha256 {sha256}")
            return path
        return fetch(url, dest, sha256=sha256, lock_file=cfg.lock_file, progress=ctx.progress)

    def _require(self, path: Path, what: str) -> Path:
        if not path.is_file():
            raise MCTError(f"{what} {path} is missing; run `mct teacher fetch --bench {self.name}` first")
        return path

    # ------------------------------------------------------------------ stages

    def teacher_fetch(self, section: dict, ctx: RunContext) -> dict:
        """Download (or verify) the teacher, the reference statistics and the Inception weights."""
        cfg = self.parse(section)
        t, e = cfg.teacher, cfg.eval
        teacher = self._fetch(t.url, t.sha256, t.path, self.teacher_file(cfg, ctx), cfg, ctx)
        declared = ctx.bench_dir(self.name) / "teacher" / "checkpoint.pt"
        ref = self._fetch(e.ref_url, e.ref_sha256, e.ref_path, self.ref_file(cfg, ctx), cfg, ctx)
        weights = self.feature_weights_file(cfg, ctx)
        if weights is not None:
            weights = self._fetch(e.feature_extractor_url, e.feature_extractor_sha256,
                                  e.feature_extractor_weights_path, weights, cfg, ctx)
        from ..metrics.inception import load_reference_stats
        from ..teachers.download import sha256_file
        from ..teachers.inspect import inspect_checkpoint

        load_reference_stats(ref, e.feature_dim)
        info = {"bench": self.name, "kind": t.kind, "url": t.url, "file_name": _file_name(t.url),
                "path": str(teacher), "sha256": sha256_file(teacher), "reference": str(ref),
                "reference_sha256": sha256_file(ref),
                "feature_weights": str(weights) if weights else None, "description": inspect_checkpoint(teacher)}
        if t.path:  # a local copy: the declared output points at it (only once everything checked out)
            _link(declared, Path(t.path).resolve())
        write_json(ctx.bench_dir(self.name) / "teacher" / "teacher.json", info)
        log.info("%s: teacher %s, reference %s ready", self.name, teacher, ref)
        return info

    def load_teacher(self, cfg: ImageNetConfig, ctx: RunContext) -> tuple[nn.Module, dict]:
        """The frozen teacher denoiser and the record that rebuilds its architecture."""
        path = self._require(self.teacher_file(cfg, ctx), "teacher")
        amp = PRECISIONS[cfg.teacher.precision]
        if cfg.teacher.kind == "edm-pickle":
            from ..teachers.edm_pickle import load_edm_denoiser

            net = load_edm_denoiser(path, cfg.teacher.snapshot_key, amp_dtype=amp)
            if net.img_resolution != cfg.resolution or net.img_channels != cfg.channels:
                raise MCTError(f"teacher {path} is {net.img_channels}x{net.img_resolution}^2, the config says "
                               f"{cfg.channels}x{cfg.resolution}^2")
            if net.label_dim != cfg.num_classes:
                raise MCTError(f"teacher {path} has label_dim {net.label_dim}, the config says {cfg.num_classes}")
            arch = {"kind": "edm-pickle", "init_kwargs": dict(net.init_kwargs)}
        else:
            from ..teachers.openai_adm import load_adm_denoiser

            flags = dict(cfg.teacher.adm_flags)
            flags.setdefault("image_size", cfg.resolution)
            net = load_adm_denoiser(path, flags, amp_dtype=amp)
            unet = net.eps_model.unet
            if unet.num_classes not in (None, cfg.num_classes):
                raise MCTError(f"teacher {path} has {unet.num_classes} classes, the config says {cfg.num_classes}")
            arch = {"kind": "openai-adm", "flags": flags}
        return net.to(ctx.device).eval().requires_grad_(False), arch

    def _networks(self, cfg: ImageNetConfig, teacher: nn.Module, arch: dict):
        if cfg.init == "teacher":
            gen_net, student = copy.deepcopy(teacher), copy.deepcopy(teacher)
        else:
            gen_net, student = build_network(arch), build_network(arch)
        amp = PRECISIONS[cfg.precision]
        for net in (gen_net, student):
            net.requires_grad_(True)
            _set_dropout(net, cfg.dropout)
            _set_amp(net, amp)
        return OneStepGenerator(gen_net, cfg.sigma_g), student

    def distill(self, section: dict, ctx: RunContext, variant: str, resume: str = "auto",
                stop_after: Optional[int] = None) -> dict:
        cfg = self.parse(section, variant)
        run_dir = ensure_writable_dir(ctx.run_dir(self.name, variant))
        device = torch.device(ctx.device)
        torch.manual_seed(cfg.train.seed)
        teacher, arch = self.load_teacher(cfg, ctx)
        generator, student = self._networks(cfg, teacher, arch)
        shape = (cfg.channels, cfg.resolution, cfg.resolution)

        def sample_latents(n: int, rng: torch.Generator):
            z = torch.randn((n, *shape), generator=rng, device=device)
            labels = torch.randint(0, cfg.num_classes, (n,), generator=rng, device=device)
            return z, labels

        extra = {"bench": self.name, "variant": variant, "arch": arch, "sigma_g": cfg.sigma_g, "init": cfg.init,
                 "dropout": cfg.dropout, "precision": cfg.precision, "teacher": to_dict(cfg.teacher),
                 "data": {"resolution": cfg.resolution, "channels": cfg.channels, "num_classes": cfg.num_classes}}
        summary = distill(run_dir, teacher=teacher, generator=generator, student=student,
                          sample_latents=sample_latents, em=cfg.em, train=cfg.train, resume=resume, device=device,
                          progress=ctx.progress, extra_config=extra, stop_after=stop_after)
        log.info("%s %s: %d iterations in %.1f s", self.name, variant, summary["iterations"], summary["train_seconds"])
        return summary

    def load_generator(self, path: Path, ema: bool = True) -> tuple[OneStepGenerator, dict]:
        state = load_checkpoint(path)
        rec = state.get("config") or {}
        if "arch" not in rec or "sigma_g" not in rec:
            raise MCTError(f"checkpoint {path} was not written by the {self.name} benchmark (no architecture record)")
        gen = OneStepGenerator(build_network(rec["arch"], empty=True), rec["sigma_g"])
        load_state_strict(gen, state["generator_ema" if ema else "generator"], "generator", path)
        return gen.eval().requires_grad_(False), state

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
        """FID over seeds of class-balanced samples; ``make_images(z, labels)`` -> images in [-1, 1]."""
        from ..metrics.inception import class_balanced_labels, fid_over_seeds

        feats, ref_mu, ref_sigma = self._features(cfg, ctx)
        device = torch.device(ctx.device)
        shape = (cfg.channels, cfg.resolution, cfg.resolution)
        grid: list[Tensor] = []

        def sample_for_seed(seed: int):
            labels = class_balanced_labels(num_samples, cfg.num_classes, seed)

            def sample(start: int, n: int, rng: torch.Generator) -> Tensor:
                z = torch.randn((n, *shape), generator=rng).to(device)
                with torch.no_grad():
                    x = make_images(z, labels[start:start + n].to(device))
                return x.float().clamp(-1, 1).cpu()

            return sample

        def keep_grid(seed, start, images):
            if seed == seeds[0] and sum(g.shape[0] for g in grid) < cfg.eval.grid:
                grid.append(images[: cfg.eval.grid])

        t0 = time.perf_counter()
        result = fid_over_seeds(sample_for_seed, feats, ref_mu, ref_sigma, num_samples, list(seeds),
                                cfg.eval.batch_size, on_batch=keep_grid, progress=ctx.progress)
        seconds = time.perf_counter() - t0
        if grid:
            save_image_grid(grid_path, torch.cat(grid)[: cfg.eval.grid], nrow=8)
        result.update({"eval_seconds": round(seconds, 3), "reference": cfg.eval.ref_url,
                       "feature_extractor": cfg.eval.feature_extractor, "feature_layer": cfg.eval.feature_layer})
        return result

    def _teacher_note(self, cfg: ImageNetConfig) -> Optional[str]:
        if self.name == "imagenet128":
            return ("the paper's 128x128 teacher is not public; these numbers use OpenAI's ADM "
                    "128x128_diffusion.pt as teacher (reported MCT/EMD FID 6.0 used the paper's own)")
        return None

    def evaluate(self, section: dict, ctx: RunContext, variant: str) -> dict:
        cfg = self.parse(section, variant)
        run_dir = ctx.run_dir(self.name, variant)
        gen, state = self.load_generator(run_dir / "checkpoint.pt")
        gen = gen.to(ctx.device)
        _set_amp(gen, PRECISIONS[cfg.precision])
        t0 = time.perf_counter()
        result = self._score(cfg, ctx, lambda z, c: gen(z, c), cfg.eval.num_samples, cfg.eval.seeds,
                             run_dir / "samples.png")
        total = cfg.eval.num_samples * len(cfg.eval.seeds)
        metrics = {
            "bench": self.name, "variant": variant, "nfe": 1, **result,
            "K": cfg.em.num_steps, "reparam": cfg.em.reparam, "noise_cancel": cfg.em.noise_cancel,
            "gamma_eps": cfg.em.gamma_eps, "gamma_z": cfg.em.gamma_z, "init": cfg.init, "sigma_g": cfg.sigma_g,
            "iterations": int(state["iteration"]), "train_seconds": round(float(state.get("seconds", 0.0)), 3),
            "samples_per_second_with_features": round(total / max(time.perf_counter() - t0, 1e-9), 2),
            "teacher_url": cfg.teacher.url, "teacher_kind": cfg.teacher.kind, "seed": cfg.train.seed,
        }
        note = self._teacher_note(cfg)
        if note:
            metrics["teacher_note"] = note
        write_json(run_dir / "metrics.json", metrics)
        log.info("%s %s: FID %.3f (min over seeds %s)", self.name, variant, metrics["fid"], list(cfg.eval.seeds))
        return metrics

    def teacher_eval(self, section: dict, ctx: RunContext) -> dict:
        """The teacher's own FID with EDM's sampler at each configured NFE."""
        cfg = self.parse(section)
        e = cfg.eval
        teacher, _ = self.load_teacher(cfg, ctx)
        n = e.teacher_num_samples or e.num_samples
        rows = []
        for nfe in e.teacher_nfe:
            steps = heun_steps_for_nfe(nfe) if e.teacher_sampler == "heun" else nfe
            sigmas = karras_sigmas(steps, e.sigma_min, e.sigma_max, e.rho, device=ctx.device)
            sampler = SAMPLERS[e.teacher_sampler]

            def make_images(z, labels, sigmas=sigmas, sampler=sampler):
                return sampler(teacher, z * sigmas[0], sigmas, labels)

            tdir = ctx.bench_dir(self.name) / "teacher"
            res = self._score(cfg, ctx, make_images, n, e.teacher_seeds, tdir / f"samples_nfe{nfe}.png")
            rows.append({"nfe": nfe, "sampler": e.teacher_sampler, **res})
            if nfe == max(e.teacher_nfe):
                shutil.copyfile(tdir / f"samples_nfe{nfe}.png", tdir / ".samples.png.tmp")
                os.replace(tdir / ".samples.png.tmp", tdir / "samples.png")
        out = {"bench": self.name, "teacher_url": cfg.teacher.url, "rows": rows}
        note = self._teacher_note(cfg)
        if note:
            out["teacher_note"] = note
        write_json(ctx.bench_dir(self.name) / "teacher" / "metrics.json", out)
        return out

    def summarize(self, section: dict, ctx: RunContext) -> list[dict]:
        cols = ["variant", "nfe", "fid", "fid_mean", "fid_seeds", "num_samples", "K", "reparam", "noise_cancel",
                "init", "gamma_eps", "gamma_z", "sigma_g", "iterations", "train_seconds", "teacher_kind"]
        rows = []
        for _, m in self.variant_metrics(section, ctx):
            row = {c: m.get(c) for c in cols}
            if isinstance(row["fid_seeds"], list):
                row["fid_seeds"] = " ".join(f"{v:.4f}" for v in row["fid_seeds"])
            rows.append(row)
        write_csv(ctx.bench_dir(self.name) / "summary.csv", rows, fieldnames=cols)
        return rows


def get_benchmark(name: str) -> ImageNet:
    return ImageNet(name)
