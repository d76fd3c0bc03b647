"""Prompt files for text-to-image evaluation and distillation.

Two formats are read:

- a plain text file, one caption per line (blank lines are skipped);
- the COCO-2014 captions annotations JSON (``captions_val2014.json``:
  ``{"images": [...], "annotations": [{"image_id", "id", "caption"}, ...]}``).

``load_prompts(path, n, seed)`` returns ``n`` captions drawn without replacement
with a fixed seed (the field's FID-30k protocol draws 30,000 COCO val2014
captions). Drawing is done on the captions' stable order (file order, or COCO
annotation id), so the same file, ``n`` and ``seed`` give the same prompts on any
machine. A missing, empty or non-UTF-8 file, one larger than :data:`MAX_PROMPT_BYTES`
(read with a cap: ``/dev/zero`` fails at once) or JSON nested too deeply is a
:class:`~mct.errors.DataError`."""

from __future__ import annotations

import json
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import DataError

log = logging.getLogger(__name__)

DEFAULT_NUM_PROMPTS = 30_000
MAX_PROMPT_BYTES = 256 << 20  # COCO's captions_train2014.json is ~ 60 MB


@dataclass(frozen=True)
class Prompt:
    """One caption, with the COCO image it describes when the file says (else None)."""

    caption: str
    image_id: Optional[int] = None


def _read_text(path: Path) -> str:
    from ..io import read_capped

    data = read_capped(path, MAX_PROMPT_BYTES, "prompt file", DataError)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"prompt file {path} is not UTF-8 text (invalid byte 0x{data[exc.start]:02x} "
                        f"at offset {exc.start}); save it as UTF-8") from None


def _parse_coco(path: Path, text: str) -> list[Prompt]:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"prompt file {path} looks like JSON but is not valid JSON: {exc}") from None
    except RecursionError:
        raise DataError(f"prompt file {path} is JSON nested too deeply to be a COCO captions file") from None
    except ValueError as exc:  # e.g. an integer of 10,000 digits
        raise DataError(f"prompt file {path} holds a value JSON cannot convert: {str(exc)[:120]}") from None
    anns = obj.get("annotations") if isinstance(obj, dict) else None
    if not isinstance(anns, list):
        raise DataError(f"prompt file {path} is JSON but not a COCO captions file "
                        "(expected an object with an 'annotations' list)")
    out = []
    for i, a in enumerate(anns):
        if not isinstance(a, dict) or not isinstance(a.get("caption"), str):
            raise DataError(f"prompt file {path}: annotation {i} has no 'caption' string")
        cap = " ".join(a["caption"].split())
        if cap:
            out.append((a.get("id", i), Prompt(cap, a.get("image_id"))))
    try:
        out.sort(key=lambda t: (str(type(t[0])), t[0]))
    except TypeError:  # ids of one type that do not compare (e.g. dicts): file order
        pass
    return [p for _, p in out]


def read_prompt_file(path: str | os.PathLike) -> list[Prompt]:
    """Every caption of a prompt file, in its stable order. Raises DataError when the
    file is missing, not UTF-8, malformed, or holds no caption."""
    path = Path(path)
    text = _read_text(path)
    stripped = text.lstrip()
    if path.suffix.lower() == ".json" or stripped.startswith("{"):
        prompts = _parse_coco(path, text)
    else:
        prompts = [Prompt(" ".join(line.split())) for line in text.splitlines() if line.strip()]
    if not prompts:
        raise DataError(f"prompt file {path} is empty: it holds no caption "
                        "(expected one caption per line, or a COCO captions JSON)")
    return prompts


def sample_prompts(prompts: list[Prompt], n: Optional[int] = DEFAULT_NUM_PROMPTS, seed: int = 0,
                   allow_fewer: bool = True, source: str = "prompt file") -> list[Prompt]:
    """Draw ``n`` prompts without replacement with a fixed seed (None: all, in order).
    With fewer prompts than ``n``, all of them are returned (shuffled) with a warning,
    or a DataError when ``allow_fewer`` is false."""
    if n is None:
        return list(prompts)
    if n < 1:
        raise DataError(f"number of prompts must be >= 1, got {n}")
    if len(prompts) < n:
        msg = f"{source} holds {len(prompts)} captions, fewer than the {n} requested"
        if not allow_fewer:
            raise DataError(msg)
        log.warning("%s; using all of them", msg)
        n = len(prompts)
    rng = random.Random(seed)
    idx = rng.sample(range(len(prompts)), n)
    return [prompts[i] for i in idx]


def load_prompts(path: str | os.PathLike, n: Optional[int] = DEFAULT_NUM_PROMPTS, seed: int = 0,
                 allow_fewer: bool = True) -> list[str]:
    """``n`` captions from a prompt file (one per line, or COCO captions JSON), drawn
    with a fixed ``seed``. See :func:`read_prompt_file` for the errors."""
    prompts = read_prompt_file(path)
    return [p.caption for p in sample_prompts(prompts, n, seed, allow_fewer, source=f"prompt file {path}")]
