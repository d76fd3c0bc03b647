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


def spec_from_record(record: dict) -> dict:
    """The factory spec of a generator from the architecture record its checkpoint stores
    ({"teacher": registry arch, "sigma_g": ...}, see :mod:`mct.distill.init`)."""
    from ..nets.factory import spec

    arch, sigma_g = record.get("teacher") or {}, record.get("sigma_g")
    kind = arch.get("kind")
    if kind == "trained":
        den = spec("mct.diffusion.edm.EDMPrecond", sigma_data=arch["sigma_data"],
                   model=spec("mct.nets.unet.SmallUNet", **arch["unet"]))
    elif kind == "edm-pickle":
        den = spec("mct.nets.dhariwal.DhariwalDenoiser", **arch["init_kwargs"])
    elif kind == "openai-adm":
        from ..teachers.openai_adm import adm_kwargs, split_flags

        _, diffusion = split_flags(arch["flags"])
        den = spec("mct.teachers.base.VPToEDM", schedule={"kind": "linear", "num_steps": int(diffusion["diffusion_steps"])},
                   eps_model=spec("mct.nets.adm.ADMEps", unet=spec("mct.nets.adm.ADMUNet", **adm_kwargs(arch["flags"]))))
    else:
        raise MCTError(f"no export for a generator whose teacher kind is {kind!r}")
    return spec("mct.nets.onestep.OneStepGenerator", sigma_g=sigma_g, denoiser=den)


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
    from ..io import sha256_file

    if path is None or not Path(path).is_file():
        return {"file": None, "sha256": None, "description": description}
    return {"file": str(path), "sha256": sha256_file(Path(path)), "description": description}


def _record(bench: str, variant: str, state: dict, shape, sigma_g, teacher: dict) -> dict:
    return {"bench": bench, "variant": variant, "sigma_g": sigma_g, "resolution": shape[-1] if len(shape) == 3 else None,
            "channels": shape[0] if len(shape) == 3 else None,
            "provenance": {"config_hash": state.get("config_hash"), "iteration": int(state.get("iteration", 0)),
                           "run_hash": (state.get("config") or {}).get("run_hash"), "teacher": teacher}}


def _run_generator(bench, cfg, ctx, variant: str) -> RunGenerator:
    """The EMA generator of ``variant``'s run (through ``Benchmark.load_generator``, so a checkpoint
    of another config or variant is refused) and how to call it: data shape, conditioning, text
    encoder and teacher file, per benchmark."""
    from ..benchmarks.base import family_of
    from ..nets.factory import spec

    name = bench.name
    dev = ctx.device
    if name == "sd15":
        from .sd import sd_run_generator

        gen, state = bench.load_generator(cfg, ctx, variant)
        return sd_run_generator(bench, cfg, ctx, variant, bench.teacher(cfg, ctx), gen, state,
                                ctx.run_dir(name, variant))
    gen, state = bench.load_generator(cfg, ctx, variant)
    gen = gen.cpu()
    run_dir = ctx.run_dir(name, variant)
    record = (state.get("config") or {}).get("arch") or {}
    text = encode = None
    if family_of(name) == "toy2d":
        rec = spec("mct.nets.mlp.MLPGenerator", dim=2, hidden=cfg.generator.hidden, layers=cfg.generator.layers,
                   input_scale=cfg.generator.input_scale)
        t = cfg.teacher
        weights = t.weights if isinstance(t.weights, str) else "given"
        teacher = _teacher_record(None, f"exact {t.modes}-mode {t.layout} GMM (radius {t.radius}, std {t.std}, "
                                        f"{weights} weights)")
        shape, cond, output, sigma_g = (2,), {"kind": "none"}, "points", None
    elif name in ("digits", "mnist"):
        split = bench.data(cfg)
        k = split.train.num_classes
        cond = ({"kind": "labels", "num_classes": k, "null_label": k} if cfg.conditional
                else {"kind": "none", "constant_label": k})
        rec, shape, output, sigma_g = spec_from_record(record), tuple(split.train.shape), "image", cfg.sigma_g
        teacher = _teacher_record(bench.teacher_dir(ctx) / "checkpoint.pt", f"{name} EDM teacher (trained here), "
                                  f"guidance {cfg.teacher.guidance}")
    elif name == "digits-text":
        from ..data.captions import make_caption
        from .core import ClipTextEncoder

        clip = bench.read_clip(ctx)
        text = (clip["config"], {k: clip["state"][k] for k in text_state_keys(clip["state"])})
        encode = ClipTextEncoder(*text)
        dim = int(clip["cond_table"].shape[-1])
        cond = {"kind": "text", "example_prompts": [make_caption(c, cfg.captions.templates[0])
                                                     for c in range(bench.num_classes)],
                "embedding_dim": dim, "null": "zeros", "guidance_scale_of_teacher": cfg.teacher.guidance}
        rec, shape, output, sigma_g = spec_from_record(record), tuple(bench.split(cfg).train.shape), "image", cfg.sigma_g
        teacher = _teacher_record(bench.teacher_dir(ctx) / "checkpoint.pt", "digits-text EDM teacher (trained "
                                  f"here), text-conditioned on the tiny CLIP, guidance {cfg.teacher.guidance}")
    elif name in ("imagenet64", "imagenet128"):
        rec, shape, output, sigma_g = spec_from_record(record), (cfg.channels, cfg.resolution, cfg.resolution), \
            "image", cfg.sigma_g
        cond = {"kind": "labels", "num_classes": cfg.num_classes, "null_label": None}
        teacher = _teacher_record(bench.teacher_file(cfg, ctx), f"{cfg.teacher.kind} teacher {cfg.teacher.url}")
    else:
        raise MCTError(f"benchmark {name} has no exportable generator")
    batch = 64 if name.startswith("imagenet") else SAMPLE_BATCH
    model = OneStepModel(rebuilt(gen, rec), shape, cond, output, encode_text=encode, batch_size=batch, device=dev)
    return RunGenerator(model, rec, _record(name, variant, state, shape, sigma_g, teacher), run_dir, text_encoder=text)


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

    from ..benchmarks.base import get_benchmark, section_of
    from ..io import is_complete
    from ..provenance import git_info, versions
    from ..records import RunMetrics, read_record
    from .folder import write_export

    bench = get_benchmark(args.bench)
    run_hash = bench.run_hash(bench.parse(section_of(raw, args.bench), args.variant))
    if args.out is None:
        args.out = str(ctx.bench_dir(args.bench) / "export" / args.variant)

    run = _load(raw, ctx, args.bench, args.variant)
    mpath = run.run_dir / "metrics.json"
    metrics = record = None
    if is_complete(run.run_dir, "evaluate") and read_record(mpath, RunMetrics).provenance.config_hash == run_hash:
        rec = read_record(mpath, RunMetrics)
        record = rec.to_dict()
        metrics = {**rec.scores.metrics, "nfe": rec.nfe, "iterations": rec.iterations,
                   "train_seconds": rec.train_seconds, "num_samples": rec.num_samples}
    else:  # never the metrics of other weights: only an evaluation of this config's run is carried
        log.warning("%s: no complete evaluation of this run under the current config (run `mct evaluate --bench %s "
                    "--variant %s`): the export carries no metrics", run.run_dir, args.bench, args.variant)
    prov = run.record["provenance"]
    prov.update(git_info())
    prov.update(exported_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                versions=versions(("mct", "torch", "safetensors", "open_clip_torch", "diffusers")))
    if run.sd is not None:
        from .sd import write_sd_export

        path = write_sd_export(args.out, run, metrics, record)
    else:
        path = write_export(args.out, run.model, run.spec, run.record, run.text_encoder, metrics, record)
    print(path)
    return path
