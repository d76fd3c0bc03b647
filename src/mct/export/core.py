"""One-step sampling as users call it: the ONE mapping from (seed, n, labels | prompts) to
latents and conditions, the network pass per batch, and the uint8 conversion. ``mct sample``
(from a run) and :func:`mct.load_generator` (from an exported folder) both sample through
:class:`OneStepModel`, so the two give the same images bit for bit on the same device.

Nothing here imports the trainer, the benchmarks or a config file."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import DataError, MCTError

MAX_PROMPT_FILE_BYTES = 1 << 20  # a prompt file larger than 1 MiB is refused
MAX_PROMPTS = 100_000
MAX_PROMPT_CHARS = 1000
CONDITIONING_KINDS = ("none", "labels", "text")


def draw_latents(seed: int, n: int, shape: Sequence[int]) -> Tensor:
    """The latents of a draw: ``n`` standard normals of ``shape``, all from one CPU
    ``torch.Generator`` seeded with ``seed`` (CPU so the latents do not depend on the device)."""
    g = torch.Generator().manual_seed(int(seed))
    return torch.randn((n, *shape), generator=g, dtype=torch.float32)


def to_uint8(images: Tensor) -> np.ndarray:
    """NCHW floats in [-1, 1] -> NHWC uint8, as EDM's generate.py quantises (x * 127.5 + 128, clipped)."""
    x = (images.detach().float().cpu() * 127.5 + 128).clip(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous().numpy()


def read_prompts(path: str | Path) -> list[str]:
    """One prompt per non-empty line of a UTF-8 text file (bounded in size, count and length)."""
    from ..io import read_capped

    path = Path(path)
    data = read_capped(path, MAX_PROMPT_FILE_BYTES, "prompt file", DataError,  # never reads an endless file
                       too_large=f"prompt file {path} holds more than the {MAX_PROMPT_FILE_BYTES} allowed bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"prompt file {path} is not UTF-8 text") from None
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    check_prompts(prompts, str(path))
    return prompts


def check_prompts(prompts: Sequence[str], where: str = "prompts") -> list[str]:
    prompts = list(prompts)
    if not prompts:
        raise DataError(f"{where}: no prompts")
    if len(prompts) > MAX_PROMPTS:
        raise DataError(f"{where}: {len(prompts)} prompts, more than the {MAX_PROMPTS} allowed")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise DataError(f"{where}: prompt {i} is a {type(p).__name__}, not a string")
        if len(p) > MAX_PROMPT_CHARS:
            raise DataError(f"{where}: prompt {i} has {len(p)} characters, more than {MAX_PROMPT_CHARS}")
    return prompts


def _cycle(items: list, n: int) -> list:
    return [items[i % len(items)] for i in range(n)]


class ClipTextEncoder(nn.Module):
    """The text tower of an open_clip CLIP (digits-text's tiny CLIP): prompt -> unit-norm text
    embedding x sqrt(dim), the conditioning the digits-text teacher was trained on. Built from
    the open_clip config dict and the text weights (the vision tower is not used)."""

    def __init__(self, config: dict, text_state: dict[str, Tensor]):
        super().__init__()
        from ..metrics.clip import build_clip

        check_clip_config(config)
        model, self.tokenizer = build_clip(config)
        missing = set(text_state_keys(model.state_dict())) - set(text_state)
        unknown = set(text_state) - set(model.state_dict())
        if missing or unknown:
            name = sorted(missing or unknown)[0]
            raise MCTError(f"text encoder weights do not match its config ({'missing' if missing else 'unexpected'} "
                           f"{name!r})")
        try:
            model.load_state_dict(text_state, strict=False)
        except RuntimeError as exc:
            first = [ln.strip() for ln in str(exc).splitlines() if ln.strip()][1:2]
            raise MCTError(f"text encoder weights do not match its config ({' '.join(first)[:200]})") from None
        self.model = model.eval().requires_grad_(False)

    @torch.no_grad()
    def forward(self, prompts: Sequence[str]) -> Tensor:
        out = []
        for i in range(0, len(prompts), 512):
            tok = self.tokenizer(list(prompts[i:i + 512]))
            out.append(torch.nn.functional.normalize(self.model.encode_text(tok).float(), dim=-1))
        f = torch.cat(out)
        return f * math.sqrt(f.shape[1])


CLIP_KEYS = {"model_cfg": {"embed_dim"},
             "vision_cfg": {"image_size", "layers", "width", "patch_size", "head_width"},
             "text_cfg": {"context_length", "vocab_size", "width", "heads", "layers"}}


def check_clip_config(config) -> None:
    """An exported CLIP config may only describe the tiny ViT/transformer CLIP (integers), never
    name a timm/HF model that open_clip would fetch: exports are untrusted input."""
    model = config.get("model_cfg") if isinstance(config, dict) else None
    if not isinstance(model, dict) or set(model) - {"embed_dim", "vision_cfg", "text_cfg"}:
        raise MCTError("text encoder config must be {'model_cfg': {embed_dim, vision_cfg, text_cfg}, ...}")
    for part in ("vision_cfg", "text_cfg"):
        sub = model.get(part)
        if not isinstance(sub, dict) or set(sub) - CLIP_KEYS[part]:
            raise MCTError(f"text encoder config: {part} may only hold {', '.join(sorted(CLIP_KEYS[part]))}")
        if not all(isinstance(v, int) and 0 < v <= 1 << 17 for v in sub.values()):
            raise MCTError(f"text encoder config: {part} values must be positive integers")
    if not isinstance(model.get("embed_dim"), int) or not 0 < model["embed_dim"] <= 1 << 14:
        raise MCTError("text encoder config: embed_dim must be a positive integer")


def text_state_keys(state: dict) -> list[str]:
    """The keys of a CLIP state dict that the text tower uses."""
    return [k for k in state if not k.startswith("visual.") and not k.startswith("logit_")]


@dataclass
class OneStepModel:
    """A one-step generator with what it takes to call it.

    ``conditioning``: {"kind": "none"} (``constant_label`` when the network still takes the
    null label), {"kind": "labels", "num_classes": K, "null_label": K or None}, or
    {"kind": "text", "example_prompts": [...]} with ``encode_text`` mapping prompts to
    conditions. ``output``: 'image' (NCHW in [-1, 1]), 'latent' (decoded by ``decode``) or
    'points' (toy vectors)."""

    generator: nn.Module
    shape: tuple[int, ...]
    conditioning: dict
    output: str = "image"
    encode_text: Optional[Callable[[list[str]], Tensor]] = None
    decode: Optional[Callable[[Tensor], Tensor]] = None
    batch_size: int = 256
    device: str = "cpu"
    info: dict = field(default_factory=dict)

    def conditions(self, n: Optional[int], labels=None, prompts=None) -> tuple[int, Optional[Tensor]]:
        """(n, cond): labels / prompts are cycled to ``n`` (``n`` defaults to their count)."""
        c = self.conditioning
        kind = c.get("kind")
        if labels is not None and kind != "labels":
            raise MCTError(f"this model takes no class labels (its conditioning is {kind!r})")
        if prompts is not None and kind != "text":
            raise MCTError(f"this model takes no prompts (its conditioning is {kind!r})")
        given = labels if labels is not None else prompts
        if given is not None:
            given = list(given)
            if not given:
                raise MCTError("empty list of labels or prompts")
            n = len(given) if n is None else n
        if n is None or not isinstance(n, int) or n < 1:
            raise MCTError(f"the number of images must be an integer >= 1, got {n!r}")
        if kind == "none":
            k = c.get("constant_label")
            return n, None if k is None else torch.full((n,), int(k), dtype=torch.long)
        if kind == "labels":
            num = int(c["num_classes"])
            if labels is None:
                return n, torch.arange(n) % num
            for lab in labels:
                if isinstance(lab, bool) or not isinstance(lab, (int, np.integer)) or not 0 <= lab < num:
                    raise MCTError(f"unknown label {lab!r}: this model knows the labels 0..{num - 1}")
            return n, torch.tensor(_cycle([int(v) for v in labels], n), dtype=torch.long)
        if kind == "text":
            chosen = check_prompts(prompts) if prompts is not None else list(c.get("example_prompts") or [])
            if not chosen:
                raise MCTError("this text-conditioned model needs prompts")
            return n, self.encode_text(_cycle(chosen, n))
        raise MCTError(f"unknown conditioning kind {kind!r} (known: {', '.join(CONDITIONING_KINDS)})")

    @torch.no_grad()
    def sample(self, n: Optional[int] = None, labels=None, prompts=None, seed: Optional[int] = None,
               output: str = "uint8", batch_size: Optional[int] = None, progress: bool = False):
        """``n`` images (uint8 NHWC numpy, or float NCHW in [-1, 1] with ``output='float'``), one
        network pass per batch. Points (toy2d) come back as float32 (n, d) either way.
        ``seed=None`` means seed 0: the same call always gives the same images."""
        from tqdm.auto import tqdm

        if output not in ("uint8", "float"):
            raise MCTError(f"output must be 'uint8' or 'float', got {output!r}")
        if isinstance(prompts, (str, Path)):
            prompts = read_prompts(prompts)
        n, cond = self.conditions(n, labels, prompts)
        seed = 0 if seed is None else seed
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise MCTError(f"seed must be an integer >= 0, got {seed!r}")
        z = draw_latents(int(seed), n, self.shape)
        bs = int(batch_size or self.batch_size)
        dev = torch.device(self.device)
        self.generator.to(dev).eval()
        out = []
        for i in tqdm(range(0, n, bs), disable=not progress, desc="sample", unit="batch", dynamic_ncols=True):
            c = None if cond is None else cond[i:i + bs].to(dev)
            x = self.generator(z[i:i + bs].to(dev), c)
            if self.output == "latent":
                x = self.decode(x)
            out.append(x.float().cpu())
        x = torch.cat(out)
        if self.output == "points":
            return x.numpy()
        x = x.clamp(-1, 1)
        return x if output == "float" else to_uint8(x)
