"""What people look at: the model card (README.md of an export), PNG grids, per-image PNGs
and the .npz of uint8 NHWC arrays under ``arr_0`` that FID tools read."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import MCTError
from ..io import write_bytes


def grid_uint8(images: np.ndarray, nrow: Optional[int] = None, pad: int = 1) -> np.ndarray:
    """NHWC uint8 -> one HWC uint8 grid (white padding), ``nrow`` images per row."""
    n, h, w, c = images.shape
    nrow = nrow or max(1, int(math.ceil(math.sqrt(n))))
    rows = int(math.ceil(n / nrow))
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + col * (w + pad):pad + col * (w + pad) + w] = images[i]
    return grid


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    arr = image[:, :, 0] if image.shape[2] == 1 else image
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def write_samples(out: str | Path, samples: np.ndarray, nrow: Optional[int] = None) -> Path:
    """``FILE.png``: one grid; ``FILE.npz``: the array under ``arr_0``; anything else: a folder of
    ``000000.png``, ``000001.png``, ... (EDM's naming). Points (float arrays) only go to .npz."""
    from ..io import ensure_writable_dir

    out = Path(out)
    suffix = out.suffix.lower()
    if suffix == ".npz":
        buf = io.BytesIO()
        np.savez(buf, arr_0=samples)
        return write_bytes(out, buf.getvalue())
    if samples.dtype != np.uint8:
        raise MCTError(f"these samples are {samples.shape[1]}-D points, not images: write them to an .npz file")
    if suffix == ".png":
        return write_bytes(out, png_bytes(grid_uint8(samples, nrow)))
    if suffix:
        raise MCTError(f"--out {out}: use FILE.png (a grid), FILE.npz (arrays) or a folder (one PNG per image)")
    ensure_writable_dir(out)
    for i, img in enumerate(samples):
        write_bytes(out / f"{i:06d}.png", png_bytes(img))
    return out


def preview_grid(model, path: Path, n: int = 0) -> Optional[Path]:
    """A small grid of ``model``'s samples at seed 0 (images only); None for points."""
    if model.output == "points":
        return None
    c = model.conditioning
    if not n:
        n = 4 * (int(c["num_classes"]) if c.get("kind") == "labels" and int(c["num_classes"]) <= 16 else 4)
    x = model.sample(n, seed=0)
    nrow = int(c["num_classes"]) if c.get("kind") == "labels" and int(c["num_classes"]) <= 16 else None
    big = np.repeat(np.repeat(x, max(1, 64 // x.shape[1]), axis=1), max(1, 64 // x.shape[2]), axis=2)
    path.write_bytes(png_bytes(grid_uint8(big, nrow)))
    return path


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


KEY_METRICS = ("fid", "kid_mean", "precision", "recall", "clip_score", "class_accuracy", "mode_mass_tv",
               "modes_covered", "energy_distance", "nfe", "iterations", "train_seconds")


def model_card(cfg: dict, has_preview: bool, folder_name: str) -> str:
    """README.md of an export, generated from its config.json."""
    cond = cfg["conditioning"]
    prov = cfg.get("provenance") or {}
    m = cfg.get("metrics") or {}
    kind = cond.get("kind")
    if kind == "labels":
        call, what = "g.sample(8, labels=[0, 3, 7], seed=0)", f"class-conditional ({cond['num_classes']} classes)"
    elif kind == "text":
        ex = (cond.get("example_prompts") or ["a prompt"])[0]
        call, what = f"g.sample(4, prompts=[{ex!r}], seed=0)", "text-conditioned"
    else:
        call, what = "g.sample(1000, seed=0)", "unconditional"
    points = cfg["output"] == "points"
    out = "float32 points (n, d)" if points else "uint8 images (n, H, W, C)"
    net = ("g(z) is an MLP from the latent to the data" if cfg.get("sigma_g") is None else
           f"g(z, c) = D(sigma_g z, sigma_g, c) with sigma_g = {cfg['sigma_g']}, D a denoiser that started as "
           "a copy of the teacher")
    lines = [
        f"# MCT one-step generator: {cfg['bench']} / {cfg['variant']}", "",
        f"{'An' if what[0] in 'aeiou' else 'A'} {what} one-step generator distilled from a diffusion teacher by "
        "MCT (EM distillation; see docs/method.md in the MCT repository). One network evaluation per sample: "
        f"{net}. Shape of one sample: {cfg['shape']}"
        f"{' (latents, decoded by the VAE)' if cfg['output'] == 'latent' else ''}.", "",
        "## Use", "", "```python", "import mct", f"g = mct.load_generator({folder_name!r})",
        f"x = {call}  # {out}", "```", "",
        "The same samples from the run the folder came from: `mct sample --config C --bench "
        f"{cfg['bench']} --variant {cfg['variant']} --seed 0 --out {'x.npz' if points else 'x.png'}` "
        "(`--labels 0,3,7` or `--prompts FILE` as above); they equal `load_generator(...).sample(...)` "
        "bit for bit on CPU.", "",
    ]
    if cfg.get("diffusers"):
        lines += ["With diffusers alone (this folder is a StableDiffusionPipeline directory):", "", "```python",
                  "from diffusers import DiffusionPipeline",
                  f"pipe = DiffusionPipeline.from_pretrained({folder_name!r})",
                  f"images = pipe(prompts, sigmas=[{cfg.get('sigma_g')}, 0.0], guidance_scale=1.0).images",
                  "```", ""]
    lines += ["## Conditioning", "", f"`{json.dumps(cond)}`" if len(json.dumps(cond)) < 400 else f"kind: {kind}", ""]
    rows = [(k, m[k]) for k in KEY_METRICS if k in m and m[k] is not None]
    if rows:
        lines += ["## Metrics of the run (as evaluated by the pipeline)", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in rows] + [""]
    teacher = prov.get("teacher") or {}
    lines += ["## Provenance", "",
              f"- commit: {prov.get('commit')}{' (uncommitted changes)' if prov.get('dirty') else ''}",
              f"- config hash: {prov.get('config_hash')}; iterations: {prov.get('iteration')}",
              f"- teacher: {teacher.get('description') or teacher.get('file')}; sha256 {teacher.get('sha256')}",
              f"- exported: {prov.get('exported_at')}", ""]
    if has_preview:
        lines += ["## Samples (seed 0)", "", "![samples](samples.png)", ""]
    return "\n".join(lines)

