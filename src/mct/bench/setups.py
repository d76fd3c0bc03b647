"""What ``mct bench`` measures for each benchmark: its teacher, generator and student score
built from the benchmark's own config section (through the benchmark's public methods),
with the trained weights of ``results/`` where they exist and random weights otherwise."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from .config import DEFAULT_NFE, BenchConfig


@dataclass
class Setup:
    """Everything measured for one benchmark, built from its config."""

    bench: str
    variant: Optional[str]
    teacher: Callable
    generator: Any  # nn.Module, train mode
    student: Any    # nn.Module, train mode
    sample_latents: Callable
    em: Any         # EMConfig
    train: Any      # TrainConfig
    nfe: tuple[int, ...]
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    weights: dict = field(default_factory=dict)
    same_network: bool = False
    teacher_passes_per_nfe: int = 1
    teacher_params: int = 0


def count_params(module) -> int:
    return int(sum(p.numel() for p in module.parameters())) if hasattr(module, "parameters") else 0


def pick_variant(bench, section: dict, ctx, wanted: str) -> tuple[Optional[str], Optional[Path]]:
    """The variant whose config is measured and its run checkpoint (None when it has none)."""
    variants = bench.variant_names(section)
    order = ([wanted] if wanted in variants else []) + [v for v in variants if v != wanted]
    for v in order:
        path = ctx.run_dir(bench.name, v) / "checkpoint.pt"
        if path.is_file():
            return v, path
    return (order[0] if order else None), None


def load_run(path: Optional[Path], generator, student) -> tuple[str, str]:
    """The run's generator EMA and student score loaded into ``generator`` and ``student``
    (the optimiser states are not read); the ``weights`` entries for both."""
    from ..checkpoint import load_state_strict, read_for_eval

    if path is None:
        return "random", "random"
    state = read_for_eval(path, weights=("generator_ema", "student"))
    load_state_strict(generator, state["generator_ema"], "generator", path)
    load_state_strict(student, state["student"], "student score", path)
    return f"trained: {path}", f"trained: {path}"


def _start(name: str, section: dict, ctx, bcfg: BenchConfig):
    """(benchmark, variant measured, its checkpoint or None, its config, device), torch seeded as distill seeds it."""
    import torch

    from ..benchmarks.base import get_benchmark

    bench = get_benchmark(name)
    variant, run_ckpt = pick_variant(bench, section, ctx, bcfg.variant)
    cfg = bench.parse(section, variant)
    torch.manual_seed(cfg.train.seed)
    return bench, variant, run_ckpt, cfg, torch.device(ctx.device)


def setup_toy2d(name: str, section: dict, ctx, bcfg: BenchConfig) -> Setup:
    bench, variant, run_ckpt, cfg, device = _start(name, section, ctx, bcfg)
    parts = bench.build(cfg, ctx)
    w_gen, w_student = load_run(run_ckpt, parts.generator, parts.student)
    return Setup(name, variant, parts.teacher, parts.generator.to(device), parts.student.to(device),
                 bench.latent_sampler(cfg, ctx), cfg.em, cfg.train, bcfg.nfe or DEFAULT_NFE,
                 weights={"teacher": "analytic", "generator": w_gen, "student": w_student},
                 same_network=False, teacher_params=0)


def _stand_in(bench, cfg, ctx, teacher, record: dict):
    """Generator and student as the benchmark's ``build`` makes them, around a stand-in teacher
    of the same architecture (random weights) when no teacher file exists (speed needs none)."""
    from ..benchmarks.base import Parts
    from ..distill.init import init_networks

    gen, student = init_networks(teacher, record, getattr(cfg, "init", "teacher"), seed=cfg.train.seed + 1)
    return Parts(teacher, gen, student, record)


def setup_digits(name: str, section: dict, ctx, bcfg: BenchConfig) -> Setup:
    from ..diffusion.edm import EDMPrecond
    from ..nets.unet import build_unet

    bench, variant, run_ckpt, cfg, device = _start(name, section, ctx, bcfg)
    split = bench.data(cfg)
    (c, h, _), k = split.train.shape, split.train.num_classes
    tpath = bench.teacher_dir(ctx) / "checkpoint.pt"
    if tpath.is_file():
        parts, w_teacher = bench.build(cfg, ctx), f"trained: {tpath}"
        net = parts.student
    else:
        net = EDMPrecond(build_unet(cfg.teacher.net, img_resolution=h, in_channels=c, label_dim=k),
                         sigma_data=cfg.teacher.sigma_data).to(device).eval().requires_grad_(False)
        record = {"teacher": {"kind": "trained", "unet": net.model.arch(), "sigma_data": net.sigma_data},
                  "sigma_g": cfg.sigma_g}
        parts, w_teacher = _stand_in(bench, cfg, ctx, net, record), "random"
        parts.teacher = bench.guided(cfg, net)
    w_gen, w_student = load_run(run_ckpt, parts.generator, parts.student)
    guided = cfg.teacher.guidance != 1.0
    return Setup(name, variant, parts.teacher, parts.generator.to(device), parts.student.to(device),
                 bench.latent_sampler(cfg, ctx), cfg.em, cfg.train, bcfg.nfe or tuple(cfg.teacher.eval_nfe),
                 cfg.teacher.sigma_min, cfg.teacher.sigma_max, cfg.teacher.rho,
                 weights={"teacher": w_teacher, "generator": w_gen, "student": w_student},
                 same_network=True, teacher_passes_per_nfe=2 if guided else 1, teacher_params=count_params(net))


def setup_imagenet(name: str, section: dict, ctx, bcfg: BenchConfig, arch: Optional[dict] = None) -> Setup:
    """The paper-scale network (GPU). ``arch`` overrides the architecture record (tests)."""
    from ..teachers import registry

    bench, variant, run_ckpt, cfg, device = _start(name, section, ctx, bcfg)
    tfile = bench.teacher_file(cfg, ctx)
    if arch is None and tfile.is_file():
        parts, w_teacher = bench.build(cfg, ctx), f"trained: {tfile}"
    else:
        if arch is None:
            if cfg.teacher.kind == "edm-pickle":
                from ..nets.dhariwal import IMAGENET64_KWARGS

                kw = dict(IMAGENET64_KWARGS, img_resolution=cfg.resolution, img_channels=cfg.channels,
                          label_dim=cfg.num_classes)
                arch = {"kind": "edm-pickle", "init_kwargs": kw}
            else:
                arch = {"kind": "openai-adm", "flags": dict(cfg.teacher.adm_flags, image_size=cfg.resolution)}
        teacher = registry.rebuild(arch).to(device).eval().requires_grad_(False)
        record = {"teacher": arch, "sigma_g": cfg.sigma_g, "dropout": cfg.dropout, "precision": cfg.precision}
        parts, w_teacher = _stand_in(bench, cfg, ctx, teacher, record), "random"
    w_gen, w_student = load_run(run_ckpt, parts.generator, parts.student)
    return Setup(name, variant, parts.teacher, parts.generator.to(device).train(), parts.student.to(device).train(),
                 bench.latent_sampler(cfg, ctx), cfg.em, cfg.train, bcfg.nfe or tuple(cfg.eval.teacher_nfe),
                 cfg.eval.sigma_min, cfg.eval.sigma_max, cfg.eval.rho,
                 weights={"teacher": w_teacher, "generator": w_gen, "student": w_student},
                 same_network=True, teacher_params=count_params(parts.teacher))


SETUPS = {"toy2d": setup_toy2d, "digits": setup_digits, "mnist": setup_digits,
          "imagenet64": setup_imagenet, "imagenet128": setup_imagenet}
