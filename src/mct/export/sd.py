"""Stable Diffusion exports: a diffusers ``StableDiffusionPipeline`` folder whose U-Net is the
distilled generator's, with an Euler scheduler. One-step sampling with diffusers alone::

    from diffusers import DiffusionPipeline
    pipe = DiffusionPipeline.from_pretrained(DIR)
    images = pipe(prompts, sigmas=[sigma_g, 0.0], guidance_scale=1.0).images

Why this equals g(z, c) = D(sigma_g z, sigma_g, c): with ``sigmas=[sigma_g, 0]`` Euler starts
from ``sigma_g z`` (``init_noise_sigma`` = sigma_g under 'linspace' spacing), calls the U-Net at
the fractional timestep of sigma_g (log-sigma interpolation, as :class:`~mct.teachers.base.VPToEDM`)
on ``x / sqrt(1 + sigma_g^2)``, and its single step lands on the denoised latent D (up to float
rounding: Euler computes x + (x - D) / sigma * (0 - sigma)). ``guidance_scale=1`` turns CFG off:
guidance was the teacher's, the generator takes the prompt alone. ``mct.load_generator(DIR)``
reads the same folder and reproduces ``mct sample`` exactly."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

from ..errors import MCTError
from .core import OneStepModel

UNET_WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


def _scheduler_config(source: str, local_files_only: bool) -> dict:
    from diffusers import DDPMScheduler

    try:
        cfg = DDPMScheduler.load_config(source, subfolder="scheduler", local_files_only=local_files_only)
    except Exception as exc:  # diffusers raises several kinds for a missing / unreadable config
        raise MCTError(f"cannot read the scheduler config of {source}: {type(exc).__name__}") from None
    return {k: v for k, v in dict(cfg).items() if not k.startswith("_")}


def sd_run_generator(bench, cfg, ctx, variant: str, teacher, gen, state, run_dir: Path):
    """The RunGenerator of an sd15 run (``gen``: its EMA generator, loaded by the benchmark)."""
    from ..nets.factory import spec
    from ..io import sha256_file
    from .runs import SAMPLE_BATCH, RunGenerator, _record

    source = bench.teacher_source(cfg, ctx)
    sched = _scheduler_config(source, cfg.teacher.local_files_only)
    unet = gen.denoiser.unet
    unet_cfg = {k: v for k, v in dict(unet.config).items() if not k.startswith("_")}
    rec = spec("mct.nets.onestep.OneStepGenerator", sigma_g=gen.sigma_g, denoiser=spec(
        "mct.teachers.sd.SDUNetDenoiser", scheduler_config=sched, quantize=bool(cfg.teacher.quantize_timesteps),
        unet=spec("diffusers.UNet2DConditionModel", config=unet_cfg)))
    try:
        from ..data.prompts import load_prompts

        examples = load_prompts(cfg.eval.prompts, 4, cfg.eval.prompt_seed)
    except MCTError:
        examples = ["a photo of a cat"]
    cond = {"kind": "text", "example_prompts": list(examples), "encoder": {"kind": "diffusers-clip"},
            "guidance_scale_of_teacher": cfg.teacher.guidance}
    model = OneStepModel(gen.eval().requires_grad_(False), tuple(teacher.latent_shape), cond, "latent",
                         encode_text=teacher.encode, decode=teacher.decode, batch_size=min(SAMPLE_BATCH, 8),
                         device=ctx.device)
    manifest = ctx.bench_dir(bench.name) / "teacher" / "checkpoint.pt"
    unet_file = Path(source) / UNET_WEIGHTS
    teacher_rec = {"file": str(unet_file) if unet_file.is_file() else source,
                   "sha256": sha256_file(unet_file) if unet_file.is_file() else None,
                   "manifest_sha256": sha256_file(manifest) if manifest.is_file() else None,
                   "description": f"Stable Diffusion {cfg.teacher.model}@{cfg.teacher.revision or 'main'}, "
                                  f"guidance {cfg.teacher.guidance}"}
    record = _record(bench.name, variant, state, teacher.latent_shape, gen.sigma_g, teacher_rec)
    vae_down = 2 ** (len(teacher.vae.config.block_out_channels) - 1)
    record.update(resolution=teacher.latent_shape[-1] * vae_down, channels=3, quantize=bool(cfg.teacher.quantize_timesteps))
    return RunGenerator(model, rec, record, run_dir, sd=teacher, extra={"scheduler_config": sched})


def write_sd_export(out: str | Path, run, metrics: Optional[dict], metrics_record: Optional[dict] = None) -> Path:
    """The diffusers pipeline folder plus config.json, metrics.json, README.md and a preview."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    from ..io import sha256_file
    from .card import preview_grid
    from .folder import FORMAT, finish_export, sampling_record, staging_folder

    out = Path(out)
    sd = run.sd
    tmp = staging_folder(out)
    try:
        sched = EulerDiscreteScheduler.from_config(run.extra["scheduler_config"], timestep_spacing="linspace")
        pipe = StableDiffusionPipeline(vae=sd.vae, text_encoder=sd.text_encoder, tokenizer=sd.tokenizer,
                                       unet=run.model.generator.denoiser.unet, scheduler=sched, safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
        pipe.save_pretrained(tmp, safe_serialization=True)
        m = run.model
        cfg = {"format": FORMAT, **run.record}
        cfg.update(generator=run.spec, weights=UNET_WEIGHTS, weights_prefix="denoiser.eps_model.unet.",
                   weights_sha256=sha256_file(tmp / UNET_WEIGHTS), shape=list(m.shape), output="latent",
                   conditioning=dict(m.conditioning), sampling=sampling_record(m), metrics=metrics or {},
                   diffusers={"pipeline": "StableDiffusionPipeline",
                              "call": f"pipe(prompts, sigmas=[{m.generator.sigma_g}, 0.0], guidance_scale=1.0)"})
        return finish_export(tmp, out, cfg, metrics_record, preview_grid(m, tmp / "samples.png", n=4))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_sd_export(root: Path, cfg: dict, device: str = "cpu") -> OneStepModel:
    """An sd15 export as a OneStepModel: the pipeline's parts through :func:`load_sd_teacher`
    (its U-Net is the generator's), wrapped in the one OneStepGenerator."""
    from ..errors import CheckpointError
    from ..nets.onestep import OneStepGenerator
    from ..teachers.sd import load_sd_teacher
    from ..io import sha256_file

    sigma_g = cfg.get("sigma_g")
    if not isinstance(sigma_g, (int, float)) or not sigma_g > 0:
        raise MCTError(f"{root}/config.json: sigma_g must be a number > 0, got {sigma_g!r}")
    wfile = root / UNET_WEIGHTS
    if not wfile.is_file():
        raise MCTError(f"{wfile} is missing from the export")
    if cfg.get("weights_sha256") and sha256_file(wfile) != cfg["weights_sha256"]:
        raise MCTError(f"{wfile} was modified after export (sha256 differs from config.json)")
    try:
        sd = load_sd_teacher(root, local_files_only=True, device=device, quantize=bool(cfg.get("quantize", False)))
    except CheckpointError as exc:
        raise MCTError(f"the diffusers parts of {root} do not load: {exc}") from None
    gen = OneStepGenerator(sd.denoiser(), float(sigma_g))
    return OneStepModel(gen.eval(), tuple(cfg["shape"]), dict(cfg["conditioning"]), "latent", encode_text=sd.encode,
                        decode=sd.decode, batch_size=int(cfg["sampling"].get("batch_size", 8)), device=device,
                        info=cfg)
