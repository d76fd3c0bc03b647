"""Teacher files in the exact formats of the paper-scale teachers, with random weights, written by
the project itself (nothing is downloaded; no EDM, guided-diffusion or Stable Diffusion code runs):
the tests use them at tiny sizes, and ``mct rehearse`` at full size when no real teacher file is
present, so that the full-size network is read through the same loader a real file goes through.

- an EDM network pickle (:func:`write_edm_pickle`): persistent objects reduced to
  ``torch_utils.persistence._reconstruct_persistent_obj(meta)`` with ``meta = dict(type='class',
  version=6, module_src, class_name, state)``, ``state`` the module's ``__dict__`` plus
  ``_init_args`` / ``_init_kwargs``, tensors pickled by torch itself. ``torch_utils.persistence``
  exists only in a ``sys.modules`` sandbox while pickling.
- an OpenAI ADM ``.pt`` (:func:`write_adm_pt`): a plain ``torch.save`` of the U-Net's state dict.
- a Stable Diffusion directory in the diffusers layout (:func:`write_sd`): ``unet/``, ``vae/``,
  ``text_encoder/``, ``tokenizer/`` (CLIP BPE from open_clip's vocabulary), ``scheduler/``.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import pickle
import sys
import types
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..nets.dhariwal import (Conv2d, DhariwalDenoiser, DhariwalUNet, GroupNorm, Linear, PositionalEmbedding,
                             UNetBlock)

EDM_CLASS_NAMES = {DhariwalDenoiser: "EDMPrecond", DhariwalUNet: "DhariwalUNet", UNetBlock: "UNetBlock",
                   Conv2d: "Conv2d", Linear: "Linear", GroupNorm: "GroupNorm",
                   PositionalEmbedding: "PositionalEmbedding"}

TINY_EDM_KWARGS = dict(img_resolution=8, img_channels=3, label_dim=10, use_fp16=False, sigma_min=0.0,
                       sigma_max=float("inf"), sigma_data=0.5, model_type="DhariwalUNet", model_channels=32,
                       channel_mult=[1, 2], channel_mult_emb=2, num_blocks=1, attn_resolutions=[4], dropout=0.1)

TINY_ADM_FLAGS = dict(image_size=8, num_channels=32, num_res_blocks=1, attention_resolutions="4",
                      channel_mult="1,2", class_cond=True, learn_sigma=True, num_heads=2, resblock_updown=True,
                      use_scale_shift_norm=True, use_fp16=False)

# Stable Diffusion v1.5's component configs (the published model_index's unet / vae / text_encoder).
SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280),
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=768,
                 attention_head_dim=8, norm_num_groups=32)
SD15_VAE = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), latent_channels=4,
                norm_num_groups=32, sample_size=512, layers_per_block=2)
SD15_TEXT = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                 max_position_embeddings=77, hidden_act="quick_gelu")
SD15_MERGES = 48894  # CLIP's BPE: 256 + 256 byte tokens + 48894 merges + 2 specials = 49408 tokens
SD_SCHEDULER = {"_class_name": "PNDMScheduler", "beta_start": 0.00085, "beta_end": 0.012,
                "beta_schedule": "scaled_linear", "num_train_timesteps": 1000, "prediction_type": "epsilon",
                "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "clip_sample": False}


# ---------------------------------------------------------------- EDM pickle

def marker_source(marker: Optional[Path]) -> str:
    """The ``module_src`` stored in the pickle: code the safe loader must never execute (with a
    ``marker`` path, executing it would create that file, which tests check)."""
    if marker is None:
        return "raise RuntimeError('module_src of a rehearsal fixture was executed')\nclass EDMPrecond: pass\n"
    return ("import pathlib\n"
            f"pathlib.Path({str(marker)!r}).write_text('module_src was executed')\n"
            "class EDMPrecond: pass\n")


class FakeEDMLoss:
    """Stands for EDM's persistent EDMLoss object in a snapshot."""

    def __init__(self):
        self.P_mean, self.P_std, self.sigma_data = -1.2, 1.2, 0.5


@contextlib.contextmanager
def fake_torch_utils():
    """``torch_utils.persistence._reconstruct_persistent_obj`` in sys.modules, only inside the block."""
    names = ("torch_utils", "torch_utils.persistence")
    saved = {n: sys.modules.get(n) for n in names}
    pkg = types.ModuleType("torch_utils")
    mod = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):  # pragma: no cover - never called
        raise AssertionError("the fake reconstruct function must never be called")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    mod._reconstruct_persistent_obj = _reconstruct_persistent_obj
    pkg.persistence = mod
    sys.modules.update({"torch_utils": pkg, "torch_utils.persistence": mod})
    try:
        yield _reconstruct_persistent_obj
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m


class EDMStylePickler(pickle.Pickler):
    """Pickles MCT's Dhariwal modules the way EDM's persistence decorator pickles its own."""

    def __init__(self, f, reconstruct, module_src: str, top_kwargs: dict, extra_reduce=None):
        super().__init__(f, protocol=4)
        self.reconstruct, self.module_src, self.top_kwargs = reconstruct, module_src, top_kwargs
        self.extra_reduce = extra_reduce or {}

    def _meta(self, class_name, state):
        return dict(type="class", version=6, module_src=self.module_src, class_name=class_name, state=state)

    def reducer_override(self, obj):
        if id(obj) in self.extra_reduce:
            return self.extra_reduce[id(obj)]
        if isinstance(obj, FakeEDMLoss):
            state = dict(obj.__dict__, _init_args=(), _init_kwargs={})
            return self.reconstruct, (self._meta("EDMLoss", state),)
        name = EDM_CLASS_NAMES.get(type(obj))
        if name is None:
            return NotImplemented
        state = dict(obj.__dict__)
        state.pop("init_kwargs", None)
        state["_init_args"] = ()
        if isinstance(obj, DhariwalDenoiser):
            state["_init_kwargs"] = dict(self.top_kwargs)
        else:  # EDM records each block's kwargs; numpy scalars appear in them (np.sqrt(1/3) init gains)
            state["_init_kwargs"] = {"init": {"init_mode": "kaiming_uniform", "init_weight": np.sqrt(1 / 3),
                                              "init_bias": np.sqrt(np.float64(1 / 3))}}
        return self.reconstruct, (self._meta(name, state),)


def random_edm_net(seed: int = 0, kwargs: dict | None = None, std: float = 0.2) -> DhariwalDenoiser:
    """A DhariwalDenoiser with every weight random (so every layer matters), in eval mode."""
    torch.manual_seed(seed)
    net = DhariwalDenoiser(**(kwargs or TINY_EDM_KWARGS))
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.normal_(0.0, std if "norm" not in name else 1.0)
    return net.eval()


def write_edm_pickle(path: Path, net: DhariwalDenoiser, marker: Optional[Path] = None, top_kwargs: dict | None = None,
                     extra_entries: dict | None = None, extra_reduce: dict | None = None) -> Path:
    """An EDM training-loop snapshot: dict(ema=net, loss_fn=..., augment_pipe=None, dataset_kwargs=...).
    Pickled straight into the file (no second copy of the weights in memory)."""
    data = dict(ema=net, loss_fn=FakeEDMLoss(), augment_pipe=None,
                dataset_kwargs=dict(class_name="training.dataset.ImageFolderDataset",
                                    path="datasets/imagenet-64x64.zip", use_labels=True, xflip=False, cache=True,
                                    resolution=net.img_resolution, max_size=1281167))
    data.update(extra_entries or {})
    kwargs = top_kwargs or net.init_kwargs
    with open(path, "wb") as f, fake_torch_utils() as reconstruct:
        EDMStylePickler(f, reconstruct, marker_source(marker), kwargs, extra_reduce).dump(data)
    return Path(path)


def edm_pickle_bytes(net: DhariwalDenoiser, marker: Optional[Path] = None, top_kwargs: dict | None = None) -> bytes:
    """The snapshot of :func:`write_edm_pickle` as bytes (small networks)."""
    buf = io.BytesIO()
    with fake_torch_utils() as reconstruct:
        EDMStylePickler(buf, reconstruct, marker_source(marker), top_kwargs or net.init_kwargs).dump(
            dict(ema=net, loss_fn=FakeEDMLoss(), augment_pipe=None))
    return buf.getvalue()


# ---------------------------------------------------------------- OpenAI ADM

def random_adm_unet(flags: dict, seed: int = 0, std: float = 0.1):
    """guided-diffusion's UNetModel architecture for ``flags`` (MCT's ADMUNet), every weight random."""
    from ..nets.adm import adm_from_flags

    torch.manual_seed(seed)
    unet = adm_from_flags(flags)
    with torch.no_grad():
        for p in unet.parameters():
            p.normal_(0, std)
    return unet.eval()


def write_adm_pt(path: Path, unet) -> Path:
    """An OpenAI ADM checkpoint: ``torch.save`` of the U-Net's state dict (guided-diffusion's key names)."""
    torch.save(unet.state_dict(), path)
    return Path(path)


# ---------------------------------------------------------------- Stable Diffusion (diffusers layout)

def write_clip_tokenizer(out_dir: Path, num_merges: int = 2000) -> int:
    """A CLIP BPE tokenizer (vocab.json + merges.txt, SD's layout) cut from open_clip's vocabulary
    (``SD15_MERGES``: the whole of it, CLIP's 49408 tokens). Returns the vocabulary size."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1:1 + num_merges]
    merges = [tuple(line.split()) for line in lines]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    (out_dir / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}), encoding="utf-8")
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n",
                                        encoding="utf-8")
    (out_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}), encoding="utf-8")
    return len(vocab)


def write_sd(root: Path, unet: dict, vae: dict, text: dict, num_merges: int = 2000, seed: int = 0,
             prediction_type: str = "epsilon", variant: Optional[str] = None,
             dtype: torch.dtype = torch.float32) -> Path:
    """A Stable Diffusion directory in the diffusers layout under ``root``, random weights, each
    component built, saved (``variant`` file names, ``dtype`` weights) and freed before the next."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    root = Path(root)
    torch.manual_seed(seed)
    vocab_size = write_clip_tokenizer(root / "tokenizer", num_merges)
    kw = {"variant": variant} if variant else {}
    net = UNet2DConditionModel(**unet)
    net.to(dtype).save_pretrained(root / "unet", **kw)
    del net
    net = AutoencoderKL(**vae)
    net.to(dtype).save_pretrained(root / "vae", **kw)
    del net
    net = CLIPTextModel(CLIPTextConfig(vocab_size=vocab_size, bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1,
                                       pad_token_id=vocab_size - 1, **text))
    net.to(dtype).save_pretrained(root / "text_encoder", **kw)
    del net
    (root / "scheduler").mkdir(parents=True, exist_ok=True)
    (root / "scheduler" / "scheduler_config.json").write_text(
        json.dumps({**SD_SCHEDULER, "prediction_type": prediction_type}), encoding="utf-8")
    (root / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}), encoding="utf-8")
    return root
