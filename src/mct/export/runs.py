"""From a pipeline run to a :class:`~mct.export.core.OneStepModel`: ``mct sample`` and
``mct export``. The run's EMA generator is rebuilt through :mod:`mct.nets.factory` (so its
spec is known and proven to hold the weights) and sampled by the same code as an export."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from torch import nn

from ..errors import MCTError
from .core import OneStepModel, text_state_keys

log = logging.getLogger(__name__)

SAMPLE_BATCH = 256


@dataclass
class RunGenerator:
    """What a benchmark hands over for sampling and export."""

    model: OneStepModel
    spec: dict
    record: dict  # bench, variant, sigma_g, resolution, channels, provenance (config_hash, iteration, teacher)
    run_dir: Path
    text_encoder: Optional[tuple[dict, dict]] = None  # (open_clip config, text-tower state): digits-text
    sd: Any = None  # the SDTeacher whose VAE / text encoder / tokenizer ship with an sd15 export
    extra: dict = field(default_factory=dict)


def describe(module: nn.Module) -> dict:
    """The factory spec of a generator built the way the benchmarks build them today."""
    from ..diffusion.edm import EDMPrecond
    from ..nets.dhariwal import DhariwalDenoiser
    from ..nets.factory import spec
    from ..nets.unet import SmallUNet

    if hasattr(module, "denoiser") and hasattr(module, "sigma_g"):  # OneStepGenerator (and imagenet's copy)
        return spec("mct.nets.onestep.OneStepGenerator", sigma_g=module.sigma_g, denoiser=describe(module.denoiser))
    if isinstance(module, DhariwalDenoiser):
        return spec("mct.nets.dhariwal.DhariwalDenoiser", **module.init_kwargs)
    if type(module) is EDMPrecond:
        return spec("mct.diffusion.edm.EDMPrecond", sigma_data=module.sigma_data, model=describe(module.model))
    if isinstance(module, SmallUNet):
        return spec("mct.nets.unet.SmallUNet", **module.arch())
    raise MCTError(f"cannot describe a {type(module).__name__} as a factory spec")


def rebuilt(module: nn.Module, record: dict) -> nn.Module:
    """``module``'s weights in a network built from ``record`` (strict: proves the spec)."""
    from ..nets.factory import build

    net = build(record)
    try:
        net.load_state_dict(module.state_dict(), strict=True)
    except RuntimeError as exc:
        raise MCTError(f"the generator spec does not hold the run's weights: {str(exc).splitlines()[0]}") from None
    return net.eval().requires_grad_(False)


def _teacher_record(path: Optional[Path], description: str) -> dict:
    from .folder import sha256_file

    if path is None or not Path(path).is_file():
        return {"file": None, "sha256": None, "description": description}
    return {"file": str(path), "sha256": sha256_file(Path(path)), "description": description}


def _record(bench: str, variant: str, state: dict, shape, sigma_g, teacher: dict) -> dict:
    return {"bench": bench, "variant": variant, "sigma_g": sigma_g, "resolution": shape[-1] if len(shape) == 3 else None,
            "channels": shape[0] if len(shape) == 3 else None,
            "provenance": {"config_hash": state.get("config_hash"), "iteration": int(state.get("iteration", 0)),
                           "teacher": teacher}}


def _run_generator(bench, cfg, ctx, variant: str) -> RunGenerator:
    """The EMA generator of ``variant``'s run and how to call it.

    COORDINATOR: replace this function by the base hook ``Benchmark.load_generator(cfg, ctx,
    variant) -> RunGenerator`` (each benchmark's branch below moves into its module). It is
    written on the benchmarks' current public methods (toy2d ``load_generator``, digits
    ``load_run``, digits-text ``load_teacher``/``networks``, imagenet ``load_generator``,
    sd15 ``load_teacher``/``load_generator``)."""
    from ..distill.trainer import load_checkpoint, load_state_strict
    from ..nets.factory import spec

    name = bench.name
    run_dir = ctx.run_dir(name, variant)
    ckpt = run_dir / "checkpoint.pt"
    if not ckpt.exists():
        raise MCTError(f"{ckpt} does not exist: run `mct distill --bench {name} --variant {variant}` first")
    dev = ctx.device
    if name == "toy2d":
        gen, state = bench.load_generator(cfg, ckpt)
        rec = spec("mct.nets.mlp.MLPGenerator", dim=2, hidden=cfg.generator.hidden, layers=cfg.generator.layers)
        t = cfg.teacher
        teacher = _teacher_record(None, f"exact {t.modes}-mode ring GMM (radius {t.radius}, std {t.std}, "
                                        f"{t.weights} weights)")
        model = OneStepModel(rebuilt(gen, rec), (2,), {"kind": "none"}, "points", batch_size=SAMPLE_BATCH, device=dev)
        return RunGenerator(model, rec, _record(name, variant, state, (2,), None, teacher), run_dir)
    if name in ("digits", "mnist"):
        split = bench.data(cfg)
        _, gen, _, state = bench.load_run(cfg, ctx, split, variant)
        k = split.train.num_classes
        cond = ({"kind": "labels", "num_classes": k, "null_label": k} if cfg.conditional
                else {"kind": "none", "constant_label": k})
        rec = describe(gen.cpu())
        shape = tuple(split.train.shape)
        teacher = _teacher_record(bench.teacher_dir(ctx) / "checkpoint.pt", f"{name} EDM teacher (trained here), "
                                  f"guidance {cfg.teacher.guidance}")
        model = OneStepModel(rebuilt(gen, rec), shape, cond, "image", batch_size=SAMPLE_BATCH, device=dev)
        return RunGenerator(model, rec, _record(name, variant, state, shape, cfg.sigma_g, teacher), run_dir)
    if name == "digits-text":
        from ..benchmarks.digits_text import make_caption
        from .core import ClipTextEncoder

        table = bench.stored_cond_table(cfg, ctx)
        net, _, shape = bench.load_teacher(cfg, ctx, table.shape[-1])
        gen, _ = bench.networks(cfg, net, shape, table.shape[-1])
        state = load_checkpoint(ckpt)
        load_state_strict(gen, state["generator_ema"], "generator", ckpt)
        clip = bench.read_clip(ctx)
        text_state = {k: clip["state"][k] for k in text_state_keys(clip["state"])}
        examples = [make_caption(c, cfg.captions.templates[0]) for c in range(table.shape[0])]
        cond = {"kind": "text", "example_prompts": examples, "embedding_dim": int(table.shape[-1]),
                "null": "zeros", "guidance_scale_of_teacher": cfg.teacher.guidance_scale}
        rec = describe(gen.cpu())
        teacher = _teacher_record(bench.teacher_path(ctx), "digits-text EDM teacher (trained here), text-conditioned "
                                  f"on the tiny CLIP, guidance {cfg.teacher.guidance_scale}")
        model = OneStepModel(rebuilt(gen, rec), tuple(shape), cond, "image", encode_text=ClipTextEncoder(
            clip["config"], text_state), batch_size=SAMPLE_BATCH, device=dev)
        return RunGenerator(model, rec, _record(name, variant, state, shape, cfg.generator.sigma_g, teacher), run_dir,
                            text_encoder=(clip["config"], text_state))
    if name in ("imagenet64", "imagenet128"):
        gen, state = bench.load_generator(ckpt)
        arch = (state.get("config") or {})["arch"]
        if arch["kind"] == "edm-pickle":
            rec = describe(gen)
        else:
            from ..teachers.openai_adm import adm_kwargs, split_flags

            _, diffusion = split_flags(arch["flags"])
            unet = spec("mct.nets.adm.ADMUNet", **adm_kwargs(arch["flags"]))
            rec = spec("mct.nets.onestep.OneStepGenerator", sigma_g=gen.sigma_g, denoiser=spec(
                "mct.teachers.base.VPToEDM", schedule={"kind": "linear", "num_steps": int(diffusion["diffusion_steps"])},
                eps_model=spec("mct.nets.adm.ADMEps", unet=unet)))
        shape = (cfg.channels, cfg.resolution, cfg.resolution)
        teacher = _teacher_record(bench.teacher_file(cfg, ctx), f"{cfg.teacher.kind} teacher {cfg.teacher.url}")
        model = OneStepModel(rebuilt(gen, rec), shape, {"kind": "labels", "num_classes": cfg.num_classes,
                                                         "null_label": None}, "image", batch_size=64, device=dev)
        return RunGenerator(model, rec, _record(name, variant, state, shape, cfg.sigma_g, teacher), run_dir)
    if name == "sd15":
        from .sd import sd_run_generator

        teacher = bench.load_teacher(cfg, ctx)
        gen, state = bench.load_generator(cfg, teacher, ckpt)
        return sd_run_generator(bench, cfg, ctx, variant, teacher, gen, state, run_dir)
    raise MCTError(f"benchmark {name} has no exportable generator")


def _load(raw: dict, ctx, bench_name: str, variant: str) -> RunGenerator:
    from ..benchmarks.base import get_benchmark, section_of

    bench = get_benchmark(bench_name)
    cfg = bench.parse(section_of(raw, bench_name), variant)
    return _run_generator(bench, cfg, ctx, variant)


def parse_labels(text: Optional[str]) -> Optional[list[int]]:
    if text is None:
        return None
    try:
        labels = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise MCTError(f"--labels must be integers separated by commas, got {text!r}") from None
    if not labels:
        raise MCTError("--labels is empty")
    return labels


def sample_command(raw: dict, ctx, args) -> Path:
    """``mct sample``: images of the run's EMA generator -> a PNG grid, PNG files or an .npz."""
    from .card import write_samples
    from .core import read_prompts

    labels = parse_labels(args.labels)
    prompts = read_prompts(args.prompts) if args.prompts else None
    out = Path(args.out)
    if out.suffix.lower() not in ("", ".png", ".npz"):
        raise MCTError(f"--out {out}: use FILE.png (a grid), FILE.npz (arrays) or a folder (one PNG per image)")
    run = _load(raw, ctx, args.bench, args.variant)
    n = args.num if args.num is not None else (None if labels or prompts else 64)
    t0 = time.perf_counter()
    x = run.model.sample(n, labels=labels, prompts=prompts, seed=args.seed, progress=ctx.progress)
    log.info("%d samples in %.2f s", x.shape[0], time.perf_counter() - t0)
    c = run.model.conditioning
    nrow = int(c["num_classes"]) if c.get("kind") == "labels" and labels is None and c["num_classes"] <= 16 else None
    path = write_samples(out, x, nrow)
    print(path)
    return path


def export_command(raw: dict, ctx, args) -> Path:
    """``mct export``: the run's generator as a self-describing folder (see :mod:`mct.export.folder`)."""
    import datetime

    from ..io import read_json
    from ..report.provenance import git_info, versions
    from .folder import write_export

    run = _load(raw, ctx, args.bench, args.variant)
    mpath = run.run_dir / "metrics.json"
    metrics = read_json(mpath) if mpath.exists() else None
    if metrics is None:
        log.warning("%s is missing (run `mct evaluate`): the export carries no metrics", mpath)
    prov = run.record["provenance"]
    prov.update(git_info())
    prov.update(exported_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                versions=versions(["mct", "torch", "safetensors", "open_clip_torch", "diffusers"]))
    if run.sd is not None:
        from .sd import write_sd_export

        path = write_sd_export(args.out, run, metrics)
    else:
        path = write_export(args.out, run.model, run.spec, run.record, run.text_encoder, metrics)
    print(path)
    return path
