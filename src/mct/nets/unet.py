"""A small U-Net for EDM denoisers on small images (8x8 digits, 28x28 MNIST, ...).

It is the *inner* network F of :class:`mct.diffusion.edm.EDMPrecond`:
``F(x_in, c_noise, cond)`` with ``x_in`` NCHW, ``c_noise`` of shape (N,).
Two kinds of conditioning (choose at most one; both 0 = unconditional):

- ``label_dim = L > 0``: ``cond`` is an integer tensor (N,) of class labels in
  ``[0, L]``; the index ``L`` is the *null label* (what label dropout and
  classifier-free guidance use). ``cond=None`` means the null label for every sample.
- ``cond_dim = E > 0``: ``cond`` is a float tensor (N, E), e.g. a text embedding;
  the null conditioning is the zero vector. ``cond=None`` means zeros.

The conditioning is mapped into the noise embedding that modulates every
residual block (scale/shift after the second group norm), as in EDM's and ADM's
U-Nets. Stable API: ``SmallUNet(**UNetConfig fields, img_resolution=, in_channels=,
label_dim=, cond_dim=)`` and :func:`build_unet`; the ``arch`` dict that
:meth:`SmallUNet.arch` returns rebuilds the same network (checkpoints store it).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError


@dataclass(frozen=True)
class UNetConfig:
    """Width and depth of :class:`SmallUNet` (the data shape and conditioning come from the benchmark).

    model_channels: channels at the first resolution; channel_mult: multiplier per resolution
    (one entry per level, each level after the first halves the resolution); num_blocks: residual
    blocks per level; attn_resolutions: resolutions with a self-attention block; emb_mult: width
    of the noise/conditioning embedding as a multiple of model_channels."""

    model_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2)
    num_blocks: int = 1
    attn_resolutions: tuple[int, ...] = ()
    dropout: float = 0.0
    emb_mult: int = 2

    def __post_init__(self):
        if self.model_channels < 1 or self.num_blocks < 1 or self.emb_mult < 1:
            raise ConfigError("model_channels, num_blocks and emb_mult must be >= 1, got "
                              f"{self.model_channels}, {self.num_blocks}, {self.emb_mult}")
        if not self.channel_mult or any(m < 1 for m in self.channel_mult):
            raise ConfigError(f"channel_mult must be a non-empty list of integers >= 1, got {list(self.channel_mult)}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")


def _groups(ch: int) -> int:
    """Largest group count <= 8 that divides ``ch`` (GroupNorm needs a divisor)."""
    for g in (8, 4, 2, 1):
        if ch % g == 0:
            return g
    return 1


class _ResBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm0 = nn.GroupNorm(_groups(in_ch), in_ch)
        self.conv0 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.affine = nn.Linear(emb_dim, 2 * out_ch)
        self.norm1 = nn.GroupNorm(_groups(out_ch), out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        nn.init.zeros_(self.conv1.weight)
        nn.init.zeros_(self.conv1.bias)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv0(F.silu(self.norm0(x)))
        scale, shift = self.affine(emb)[:, :, None, None].chunk(2, dim=1)
        h = F.silu(torch.addcmul(shift, self.norm1(h), scale + 1))
        h = self.conv1(self.dropout(h))
        return (h + self.skip(x)) / math.sqrt(2)


class _Attention(nn.Module):
    """Single-head self-attention over pixels (cheap at the small resolutions it is used at)."""

    def __init__(self, ch: int):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(ch), ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, c, h * w).unbind(1)
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return (x + self.proj(a.transpose(1, 2).reshape(n, c, h, w))) / math.sqrt(2)


class SmallUNet(nn.Module):
    """DDPM-style U-Net: per level ``num_blocks`` residual blocks (+ attention), average-pool
    down, nearest up, skip connections; zero-initialised output so F starts at 0."""

    def __init__(self, img_resolution: int, in_channels: int, out_channels: Optional[int] = None,
                 label_dim: int = 0, cond_dim: int = 0, model_channels: int = 32,
                 channel_mult: tuple[int, ...] = (1, 2), num_blocks: int = 1,
                 attn_resolutions: tuple[int, ...] = (), dropout: float = 0.0, emb_mult: int = 2):
        super().__init__()
        UNetConfig(model_channels, tuple(channel_mult), num_blocks, tuple(attn_resolutions), dropout, emb_mult)
        if label_dim < 0 or cond_dim < 0:
            raise ConfigError(f"label_dim and cond_dim must be >= 0, got {label_dim}, {cond_dim}")
        if label_dim and cond_dim:
            raise ConfigError("SmallUNet takes class labels (label_dim) or a conditioning vector (cond_dim), not both")
        levels = len(channel_mult)
        if img_resolution % (2 ** (levels - 1)) != 0:
            raise ConfigError(f"img_resolution {img_resolution} is not divisible by 2^{levels - 1} "
                              f"(channel_mult has {levels} levels)")
        self._arch = dict(img_resolution=img_resolution, in_channels=in_channels,
                          out_channels=out_channels or in_channels, label_dim=label_dim, cond_dim=cond_dim,
                          model_channels=model_channels, channel_mult=list(channel_mult), num_blocks=num_blocks,
                          attn_resolutions=list(attn_resolutions), dropout=dropout, emb_mult=emb_mult)
        self.label_dim, self.cond_dim = label_dim, cond_dim
        self.img_resolution, self.in_channels = img_resolution, in_channels
        emb_dim = model_channels * emb_mult
        self.freq_dim = model_channels
        self.map0 = nn.Linear(model_channels, emb_dim)
        self.map1 = nn.Linear(emb_dim, emb_dim)
        self.label_emb = nn.Embedding(label_dim + 1, emb_dim) if label_dim else None
        self.cond_map = nn.Linear(cond_dim, emb_dim) if cond_dim else None

        self.conv_in = nn.Conv2d(in_channels, model_channels * channel_mult[0], 3, padding=1)
        self.enc = nn.ModuleList()
        skips = [model_channels * channel_mult[0]]
        ch = skips[0]
        res = img_resolution
        for level, mult in enumerate(channel_mult):
            out_ch = model_channels * mult
            for _ in range(num_blocks):
                blk = nn.ModuleDict({"res": _ResBlock(ch, out_ch, emb_dim, dropout)})
                if res in attn_resolutions:
                    blk["attn"] = _Attention(out_ch)
                self.enc.append(blk)
                ch = out_ch
                skips.append(ch)
            if level != levels - 1:
                self.enc.append(nn.ModuleDict({"down": nn.AvgPool2d(2)}))
                res //= 2
                skips.append(ch)
        self.mid0 = _ResBlock(ch, ch, emb_dim, dropout)
        self.mid_attn = _Attention(ch) if res in attn_resolutions else None
        self.mid1 = _ResBlock(ch, ch, emb_dim, dropout)
        self.dec = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            out_ch = model_channels * mult
            for _ in range(num_blocks + 1):
                blk = nn.ModuleDict({"res": _ResBlock(ch + skips.pop(), out_ch, emb_dim, dropout)})
                if res in attn_resolutions:
                    blk["attn"] = _Attention(out_ch)
                self.dec.append(blk)
                ch = out_ch
            if level != 0:
                self.dec.append(nn.ModuleDict({"up": nn.Upsample(scale_factor=2, mode="nearest"),
                                               "conv": nn.Conv2d(ch, ch, 3, padding=1)}))
                res *= 2
        self.norm_out = nn.GroupNorm(_groups(ch), ch)
        self.conv_out = nn.Conv2d(ch, out_channels or in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def arch(self) -> dict:
        """Constructor kwargs that rebuild this network (stored in checkpoints)."""
        return dict(self._arch)

    def null_cond(self, n: int, device=None) -> Tensor:
        """The null conditioning for ``n`` samples (null label index, or zero vectors)."""
        if self.label_dim:
            return torch.full((n,), self.label_dim, dtype=torch.long, device=device)
        if self.cond_dim:
            return torch.zeros(n, self.cond_dim, device=device)
        raise ValueError("an unconditional SmallUNet has no null conditioning")

    def _embed(self, c_noise: Tensor, cond: Optional[Tensor], n: int) -> Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=c_noise.device, dtype=torch.float32) / half)
        arg = c_noise.float()[:, None] * 250.0 * freqs[None]  # c_noise = ln(sigma)/4 spans a few units
        feat = torch.cat([arg.cos(), arg.sin()], dim=1)
        if feat.shape[1] < self.freq_dim:
            feat = F.pad(feat, (0, self.freq_dim - feat.shape[1]))
        emb = self.map1(F.silu(self.map0(feat)))
        if self.label_emb is not None:
            if cond is None:
                cond = self.null_cond(n, c_noise.device)
            if cond.dtype.is_floating_point or cond.ndim != 1:
                raise ValueError(f"SmallUNet with label_dim={self.label_dim} expects integer labels of shape (N,), "
                                 f"got {tuple(cond.shape)} {cond.dtype}")
            emb = emb + self.label_emb(cond.long())
        elif self.cond_map is not None:
            if cond is None:
                cond = self.null_cond(n, c_noise.device)
            if cond.ndim != 2 or cond.shape[1] != self.cond_dim:
                raise ValueError(f"SmallUNet with cond_dim={self.cond_dim} expects cond of shape (N, {self.cond_dim}), "
                                 f"got {tuple(cond.shape)}")
            emb = emb + self.cond_map(cond.to(emb.dtype))
        return F.silu(emb)

    def forward(self, x: Tensor, c_noise: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        emb = self._embed(c_noise, cond, x.shape[0])
        h = self.conv_in(x)
        skips = [h]
        for blk in self.enc:
            if "down" in blk:
                h = blk["down"](h)
            else:
                h = blk["res"](h, emb)
                if "attn" in blk:
                    h = blk["attn"](h)
            skips.append(h)
        h = self.mid0(h, emb)
        if self.mid_attn is not None:
            h = self.mid_attn(h)
        h = self.mid1(h, emb)
        for blk in self.dec:
            if "up" in blk:
                h = blk["conv"](blk["up"](h))
            else:
                h = blk["res"](torch.cat([h, skips.pop()], dim=1), emb)
                if "attn" in blk:
                    h = blk["attn"](h)
        return self.conv_out(F.silu(self.norm_out(h)))


def build_unet(cfg: UNetConfig | dict, *, img_resolution: int, in_channels: int, label_dim: int = 0,
               cond_dim: int = 0) -> SmallUNet:
    """SmallUNet from a :class:`UNetConfig` (or its dict) plus the data shape and conditioning."""
    if isinstance(cfg, dict):
        cfg = UNetConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()})
    kw = asdict(cfg)
    return SmallUNet(img_resolution=img_resolution, in_channels=in_channels, label_dim=label_dim,
                     cond_dim=cond_dim, **kw)


def unet_from_arch(arch: dict) -> SmallUNet:
    """Rebuild a SmallUNet from the dict :meth:`SmallUNet.arch` returned."""
    try:
        return SmallUNet(**arch)
    except TypeError as exc:
        raise ConfigError(f"not a SmallUNet architecture: {exc}") from None
