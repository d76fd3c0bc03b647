"""The exported folder: write it (atomically) and read it back without the trainer.

Layout (``format: mct-export-v1``)::

    config.json          how to rebuild and call the generator (factory spec, sigma_g, shape,
                         conditioning, sampling conventions), the run's metrics, provenance
    model.safetensors    the generator's EMA weights (state dict of the spec's module)
    text_encoder/        digits-text: open_clip_config.json + model.safetensors (text tower)
    metrics.json         the run's metrics.json, as evaluated
    README.md            the model card (generated from config.json)
    samples.png          a preview grid (seed 0)

A Stable Diffusion export is instead a diffusers ``StableDiffusionPipeline`` folder (unet/
holds the generator's U-Net, scheduler/ an Euler scheduler) with the same config.json
beside model_index.json: see :mod:`mct.export.sd`."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch

from ..errors import MCTError
from ..io import sha256_file
from .core import OneStepModel

FORMAT = "mct-export-v1"
WEIGHTS = "model.safetensors"
TEXT_DIR = "text_encoder"
REQUIRED = ("bench", "variant", "generator", "weights", "shape", "output", "conditioning", "sampling")


def _save_safetensors(state: dict, path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(path))


# ----------------------------------------------------------------------------- writing

def publish_folder(tmp: Path, out: Path) -> Path:
    """Rename the finished ``tmp`` folder to ``out``; an existing export at ``out`` is replaced
    (anything else there is refused, never deleted)."""
    umask = os.umask(0)
    os.umask(umask)
    for f in [tmp, *tmp.rglob("*")]:  # mkdtemp and safetensors make 0700 / 0600; exports are shared
        os.chmod(f, (0o777 if f.is_dir() else 0o666) & ~umask)
    if out.exists() or out.is_symlink():
        if not out.is_dir() or out.is_symlink() or not (out / "config.json").is_file() or not _is_export(out):
            raise MCTError(f"--out {out} exists and is not an MCT export; choose another folder")
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
        os.replace(out, old / out.name)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)
    return out


def _is_export(path: Path) -> bool:
    try:
        return json.loads((path / "config.json").read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def staging_folder(out: Path) -> Path:
    """A temporary folder beside ``out`` (same file system, so the final rename is atomic)."""
    from ..io import ensure_writable_dir

    ensure_writable_dir(out.parent)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))


def write_export(out: str | Path, model: OneStepModel, spec: dict, record: dict,
                 text_encoder: Optional[tuple[dict, dict]] = None, metrics: Optional[dict] = None,
                 metrics_record: Optional[dict] = None) -> Path:
    """Write the folder for a non-SD run. ``record``: bench, variant, sigma_g, provenance ... (goes
    into config.json); ``text_encoder``: (open_clip config, text-tower state) for digits-text;
    ``metrics``: the run's scores by name (config.json, model card); ``metrics_record``: the run's
    metrics.json as evaluate wrote it (copied)."""
    from .card import preview_grid

    out = Path(out)
    tmp = staging_folder(out)
    try:
        _save_safetensors(model.generator.state_dict(), tmp / WEIGHTS)
        cfg = {"format": FORMAT, **record}
        cfg.update(generator=spec, weights=WEIGHTS, weights_sha256=sha256_file(tmp / WEIGHTS),
                   shape=list(model.shape), output=model.output, conditioning=dict(model.conditioning),
                   sampling=sampling_record(model), metrics=metrics or {})
        if text_encoder is not None:
            clip_config, text_state = text_encoder
            (tmp / TEXT_DIR).mkdir()
            (tmp / TEXT_DIR / "open_clip_config.json").write_text(json.dumps(clip_config, indent=2) + "\n")
            _save_safetensors(text_state, tmp / TEXT_DIR / WEIGHTS)
            cfg["conditioning"]["encoder"] = {"kind": "open_clip-text", "path": TEXT_DIR,
                                              "weights_sha256": sha256_file(tmp / TEXT_DIR / WEIGHTS)}
        return finish_export(tmp, out, cfg, metrics_record, preview_grid(model, tmp / "samples.png"))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def finish_export(tmp: Path, out: Path, cfg: dict, metrics_record: Optional[dict], preview) -> Path:
    """The files every export ends with (the run's metrics, config.json, the model card), then the
    staged folder published in place of ``out``."""
    from .card import model_card

    if metrics_record is not None:
        (tmp / "metrics.json").write_text(json.dumps(metrics_record, indent=2, default=str) + "\n")
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2, default=str) + "\n")
    (tmp / "README.md").write_text(model_card(cfg, preview is not None, out.name))
    return publish_folder(tmp, out)


def sampling_record(model: OneStepModel) -> dict:
    return {"batch_size": model.batch_size,
            "latents": "torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed)), float32, CPU",
            "labels": "given labels cycled to n; none given: 0, 1, ..., K-1, 0, 1, ...",
            "prompts": "given prompts cycled to n; none given: example_prompts cycled",
            "uint8": "(x * 127.5 + 128).clip(0, 255) truncated to uint8, NHWC"}


# ----------------------------------------------------------------------------- reading

def read_config(path: Path) -> dict:
    """config.json of an export, checked for the format and the keys the loader needs."""
    if not path.is_dir():
        raise MCTError(f"{path} is not an MCT export (not a folder)")
    cfile = path / "config.json"
    if not cfile.is_file():
        raise MCTError(f"{path} is not an MCT export (no config.json)")
    try:
        cfg = json.loads(cfile.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise MCTError(f"{path} is not an MCT export (config.json is not JSON: {exc})") from None
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        found = cfg.get("format") if isinstance(cfg, dict) else type(cfg).__name__
        raise MCTError(f"{path} is not an MCT export (config.json format is {found!r}, not {FORMAT!r})")
    missing = [k for k in REQUIRED if k not in cfg]
    if missing:
        raise MCTError(f"{path}/config.json is incomplete: no {', '.join(missing)}")
    shape = cfg["shape"]
    if not isinstance(shape, list) or not shape or not all(isinstance(s, int) and 0 < s <= 4096 for s in shape):
        raise MCTError(f"{path}/config.json: shape must be a list of positive integers, got {shape!r}")
    if cfg["output"] not in ("image", "points", "latent"):
        raise MCTError(f"{path}/config.json: unknown output {cfg['output']!r}")
    if not isinstance(cfg["conditioning"], dict):
        raise MCTError(f"{path}/config.json: conditioning must be a mapping")
    return cfg


def _inside(root: Path, rel: Any, what: str) -> Path:
    """``root / rel`` for a relative path that stays inside ``root`` (config.json is untrusted)."""
    if not isinstance(rel, str) or not rel or Path(rel).is_absolute() or ".." in Path(rel).parts:
        raise MCTError(f"{root}/config.json: {what} must be a relative path inside the folder, got {rel!r}")
    return root / rel


def load_weights(module: torch.nn.Module, file: Path, prefix: str = "", sha256: Optional[str] = None) -> None:
    """Strict load of a safetensors file into ``module`` (keys under ``prefix``), one line on mismatch."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not file.is_file():
        raise MCTError(f"{file} is missing from the export")
    try:
        state = load_file(str(file))
    except (SafetensorError, OSError, ValueError) as exc:
        raise MCTError(f"{file} cannot be read as safetensors: {exc}") from None
    state = {prefix + k: v for k, v in state.items()}
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()][1:3]
        raise MCTError(f"weights {file.name} do not match config.json ({' '.join(lines)[:300]})") from None
    if sha256 and sha256_file(file) != sha256:
        raise MCTError(f"{file} was modified after export (sha256 differs from config.json)")


def load_generator(path: str | os.PathLike, device: str = "cpu") -> OneStepModel:
    """The exported generator, ready to ``.sample(n, labels=, prompts=, seed=)``. Needs only this
    folder (and torch, safetensors; open_clip for text, diffusers for Stable Diffusion)."""
    from ..nets.factory import build

    root = Path(path)
    cfg = read_config(root)
    if cfg["output"] == "latent":
        from .sd import load_sd_export

        return load_sd_export(root, cfg, device)
    gen = build(cfg["generator"], "config.json generator")
    load_weights(gen, _inside(root, cfg["weights"], "weights"), sha256=cfg.get("weights_sha256"))
    cond = dict(cfg["conditioning"])
    encode = None
    if cond.get("kind") == "text":
        encode = _open_clip_encoder(root, cond)
    return OneStepModel(generator=gen.eval().requires_grad_(False), shape=tuple(cfg["shape"]), conditioning=cond,
                        output=cfg["output"], encode_text=encode,
                        batch_size=int(cfg["sampling"].get("batch_size", 256)), device=device, info=cfg)


def _open_clip_encoder(root: Path, cond: dict):
    from safetensors.torch import load_file

    from .core import ClipTextEncoder

    enc = cond.get("encoder") or {}
    if enc.get("kind") != "open_clip-text":
        raise MCTError(f"{root}/config.json: unknown text encoder {enc.get('kind')!r}")
    folder = _inside(root, enc.get("path"), "conditioning.encoder.path")
    try:
        clip_config = json.loads((folder / "open_clip_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MCTError(f"{folder}/open_clip_config.json cannot be read: {exc}") from None
    wfile = folder / WEIGHTS
    if not wfile.is_file():
        raise MCTError(f"{wfile} is missing from the export")
    if enc.get("weights_sha256") and sha256_file(wfile) != enc["weights_sha256"]:
        raise MCTError(f"{wfile} was modified after export (sha256 differs from config.json)")
    try:
        return ClipTextEncoder(clip_config, load_file(str(wfile)))
    except (KeyError, TypeError, ValueError) as exc:
        raise MCTError(f"{folder}: unusable text encoder config: {exc}") from None
