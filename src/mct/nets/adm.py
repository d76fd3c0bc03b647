"""MCT's implementation of the ADM U-Net of OpenAI's guided-diffusion (Dhariwal & Nichol, 2021).

The module tree reproduces guided-diffusion's ``UNetModel`` state-dict layout, so that its
released checkpoints (e.g. ``128x128_diffusion.pt``, a plain state dict) load with
``strict=True``: ``time_embed.{0,2}``, ``label_emb``, ``input_blocks.<i>.<j>.*``,
``middle_block.{0,1,2}.*``, ``output_blocks.<i>.<j>.*``, ``out.{0,2}``; residual blocks hold
``in_layers.{0,2}``, ``emb_layers.1``, ``out_layers.{0,3}`` and ``skip_connection``; attention
blocks ``norm``, ``qkv`` (a 1-D convolution) and ``proj_out``.

Flags (guided-diffusion's names): ``image_size, in_channels, model_channels, out_channels,
num_res_blocks, attention_resolutions`` (as *downsampling rates*, e.g. (4, 8, 16) for 128 px
with attention at 32, 16, 8), ``dropout, channel_mult, conv_resample, num_classes,
num_heads, num_head_channels, num_heads_upsample, use_scale_shift_norm, resblock_updown,
use_new_attention_order``. :func:`adm_from_flags` takes the command-line form
(``attention_resolutions='32,16,8'``, ``learn_sigma``, ``class_cond``, ``num_channels``).

The network predicts eps (and, with ``learn_sigma``, a variance interpolation in the second
half of the channels); :class:`ADMEps` keeps the eps half. The timestep may be fractional.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checkpointing import checkpointed

NUM_CLASSES = 1000


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """[cos(t f_i), sin(t f_i)], f_i = max_period^(-i / (dim/2)); t may be fractional."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    arg = t.float()[:, None] * freqs[None]
    emb = torch.cat([arg.cos(), arg.sin()], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class GroupNorm32(nn.GroupNorm):
    """32-group normalisation computed in float32."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.float()).to(x.dtype)


def _norm(channels: int) -> GroupNorm32:
    return GroupNorm32(32, channels)


def _zeroed(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class TimestepBlock(nn.Module):
    """A module whose forward takes the embedding as a second argument."""


class EmbedSequential(nn.Sequential):
    """Sequential container that hands the embedding to the layers that take it."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, TimestepBlock) else layer(x)
        return x


class Upsample(nn.Module):
    def __init__(self, channels: int, use_conv: bool, out_channels: Optional[int] = None):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, self.out_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    def __init__(self, channels: int, use_conv: bool, out_channels: Optional[int] = None):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        if use_conv:
            self.op = nn.Conv2d(channels, self.out_channels, 3, stride=2, padding=1)
        else:
            if self.out_channels != channels:
                raise ValueError("average-pool downsampling cannot change the channel count")
            self.op = nn.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class ResBlock(TimestepBlock):
    """Residual block; with ``use_scale_shift_norm`` the embedding gives (scale, shift) applied
    after the second normalisation, otherwise it is added before it. ``up``/``down`` resample
    both branches (nearest / average pool) inside the block."""

    def __init__(self, channels: int, emb_channels: int, dropout: float, out_channels: Optional[int] = None,
                 use_conv: bool = False, use_scale_shift_norm: bool = False, up: bool = False, down: bool = False):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(_norm(channels), nn.SiLU(), nn.Conv2d(channels, self.out_channels, 3, padding=1))
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * self.out_channels if use_scale_shift_norm else self.out_channels))
        self.out_layers = nn.Sequential(
            _norm(self.out_channels), nn.SiLU(), nn.Dropout(p=dropout),
            _zeroed(nn.Conv2d(self.out_channels, self.out_channels, 3, padding=1)))
        if self.out_channels == channels:
            self.skip_connection = nn.Identity()
        elif use_conv:
            self.skip_connection = nn.Conv2d(channels, self.out_channels, 3, padding=1)
        else:
            self.skip_connection = nn.Conv2d(channels, self.out_channels, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        if self.updown:
            h = self.in_layers[1](self.in_layers[0](x))
            h = self.in_layers[2](self.h_upd(h))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            for layer in self.out_layers[1:]:
                h = layer(h)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Self-attention over spatial positions. ``num_head_channels = -1``: ``num_heads`` heads;
    otherwise channels / num_head_channels heads. Legacy order (the released checkpoints):
    the qkv channels are laid out [head][q, k, v][channel]; new order: [q, k, v][head][channel]."""

    def __init__(self, channels: int, num_heads: int = 1, num_head_channels: int = -1,
                 use_new_attention_order: bool = False):
        super().__init__()
        self.channels = channels
        if num_head_channels == -1:
            self.num_heads = num_heads
        else:
            if channels % num_head_channels:
                raise ValueError(f"{channels} channels are not divisible by num_head_channels {num_head_channels}")
            self.num_heads = channels // num_head_channels
        if channels % self.num_heads:
            raise ValueError(f"{channels} channels do not split into {self.num_heads} heads")
        self.new_order = use_new_attention_order
        self.norm = _norm(channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = _zeroed(nn.Conv1d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(x))
        heads, ch, length = self.num_heads, c // self.num_heads, x.shape[-1]
        if self.new_order:  # [q, k, v][head][channel]
            qkv = qkv.reshape(b, 3, heads, ch, length).permute(1, 0, 2, 4, 3)
        else:  # [head][q, k, v][channel]
            qkv = qkv.reshape(b, heads, 3, ch, length).permute(2, 0, 1, 4, 3)
        # one copy gives contiguous (batch, heads, tokens, ch) q, k, v, the fused kernels' layout;
        # softmax(q^T k / sqrt(ch)) v: guided-diffusion's two ch^-1/4 factors, SDPA's default scale
        q, k, v = qkv.contiguous().unbind(0)
        a = F.scaled_dot_product_attention(q, k, v)
        h = self.proj_out(a.transpose(2, 3).reshape(b, c, length))
        return (x + h).reshape(b, c, *spatial)


class ADMUNet(nn.Module):
    """guided-diffusion's UNetModel: ``forward(x, timesteps, y=None) -> (N, out_channels, H, W)``."""

    def __init__(self, image_size: int, in_channels: int, model_channels: int, out_channels: int, num_res_blocks: int,
                 attention_resolutions: Sequence[int], dropout: float = 0.0,
                 channel_mult: Sequence[float] = (1, 2, 4, 8), conv_resample: bool = True,
                 num_classes: Optional[int] = None, num_heads: int = 1, num_head_channels: int = -1,
                 num_heads_upsample: int = -1, use_scale_shift_norm: bool = False, resblock_updown: bool = False,
                 use_new_attention_order: bool = False):
        super().__init__()
        if num_heads_upsample == -1:
            num_heads_upsample = num_heads
        self.image_size, self.in_channels, self.out_channels = image_size, in_channels, out_channels
        self.model_channels, self.num_classes = model_channels, num_classes
        self.amp_dtype: Optional[torch.dtype] = None
        self.checkpointing = False  # recompute each block in backward instead of saving its activations
        attention_resolutions = tuple(int(a) for a in attention_resolutions)
        emb_dim = model_channels * 4
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes, emb_dim)

        def res(ch_in, ch_out=None, up=False, down=False):
            return ResBlock(ch_in, emb_dim, dropout, out_channels=ch_out, use_scale_shift_norm=use_scale_shift_norm,
                            up=up, down=down)

        def attn(ch, heads):
            return AttentionBlock(ch, num_heads=heads, num_head_channels=num_head_channels,
                                  use_new_attention_order=use_new_attention_order)

        ch = input_ch = int(channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList([EmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
        chans = [ch]
        ds = 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [res(ch, int(mult * model_channels))]
                ch = int(mult * model_channels)
                if ds in attention_resolutions:
                    layers.append(attn(ch, num_heads))
                self.input_blocks.append(EmbedSequential(*layers))
                chans.append(ch)
            if level != len(channel_mult) - 1:
                down = res(ch, ch, down=True) if resblock_updown else Downsample(ch, conv_resample, ch)
                self.input_blocks.append(EmbedSequential(down))
                chans.append(ch)
                ds *= 2
        self.middle_block = EmbedSequential(res(ch), attn(ch, num_heads), res(ch))
        self.output_blocks = nn.ModuleList([])
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                layers = [res(ch + chans.pop(), int(model_channels * mult))]
                ch = int(model_channels * mult)
                if ds in attention_resolutions:
                    layers.append(attn(ch, num_heads_upsample))
                if level and i == num_res_blocks:
                    layers.append(res(ch, ch, up=True) if resblock_updown else Upsample(ch, conv_resample, ch))
                    ds //= 2
                self.output_blocks.append(EmbedSequential(*layers))
        self.out = nn.Sequential(_norm(ch), nn.SiLU(), _zeroed(nn.Conv2d(input_ch, out_channels, 3, padding=1)))

    def forward(self, x: Tensor, timesteps: Tensor, y: Optional[Tensor] = None) -> Tensor:
        if (y is not None) != (self.num_classes is not None):
            raise ValueError("class labels must be given if and only if the model is class-conditional")
        amp = self.amp_dtype is not None and x.device.type == "cuda"
        with torch.autocast(device_type=x.device.type, dtype=self.amp_dtype or torch.float32, enabled=amp):
            t = timesteps.reshape(-1)
            if t.numel() == 1:
                t = t.expand(x.shape[0])
            emb = self.time_embed(timestep_embedding(t, self.model_channels))
            if self.num_classes is not None:
                emb = emb + self.label_emb(y.reshape(-1).long())
            hs = []
            h = x
            on = self.checkpointing
            for module in self.input_blocks:
                h = checkpointed(module, on)(h, emb)
                hs.append(h)
            h = checkpointed(self.middle_block, on)(h, emb)
            for module in self.output_blocks:
                h = checkpointed(module, on)(torch.cat([h, hs.pop()], dim=1), emb)
            out = self.out(h)
        return out.float() if amp else out


def default_channel_mult(image_size: int) -> tuple:
    """guided-diffusion's channel multipliers per image size."""
    table = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4), 64: (1, 2, 3, 4)}
    if image_size not in table:
        raise ValueError(f"no default channel_mult for image_size {image_size}; give channel_mult")
    return table[image_size]


# The released 128x128_diffusion.pt (docs/benchmarks.md#imagenet128): its MODEL_FLAGS.
ADM128_FLAGS: dict[str, Any] = dict(
    image_size=128, num_channels=256, num_res_blocks=2, attention_resolutions="32,16,8", class_cond=True,
    learn_sigma=True, num_heads=4, num_head_channels=-1, num_heads_upsample=-1, resblock_updown=True,
    use_scale_shift_norm=True, use_fp16=True, dropout=0.0, channel_mult="", use_new_attention_order=False)

FLAG_NAMES = tuple(ADM128_FLAGS)


def adm_kwargs_from_flags(flags: dict) -> dict:
    """guided-diffusion command-line flags -> :class:`ADMUNet` kwargs (as its create_model does)."""
    unknown = sorted(set(flags) - set(FLAG_NAMES))
    if unknown:
        raise ValueError(f"unknown ADM flag {unknown[0]!r} (known: {', '.join(FLAG_NAMES)})")
    f = {**ADM128_FLAGS, **flags}
    size = int(f["image_size"])
    cm = f["channel_mult"]
    if cm in ("", None):
        channel_mult = default_channel_mult(size)
    elif isinstance(cm, str):
        channel_mult = tuple(float(c) if "." in c else int(c) for c in cm.split(","))
    else:
        channel_mult = tuple(cm)
    attn = f["attention_resolutions"]
    res_list = [int(r) for r in attn.split(",") if r.strip()] if isinstance(attn, str) else [int(r) for r in attn]
    return dict(image_size=size, in_channels=3, model_channels=int(f["num_channels"]),
                out_channels=6 if f["learn_sigma"] else 3, num_res_blocks=int(f["num_res_blocks"]),
                attention_resolutions=tuple(size // r for r in res_list), dropout=float(f["dropout"]),
                channel_mult=channel_mult, num_classes=NUM_CLASSES if f["class_cond"] else None,
                num_heads=int(f["num_heads"]), num_head_channels=int(f["num_head_channels"]),
                num_heads_upsample=int(f["num_heads_upsample"]), use_scale_shift_norm=bool(f["use_scale_shift_norm"]),
                resblock_updown=bool(f["resblock_updown"]),
                use_new_attention_order=bool(f["use_new_attention_order"]))


def adm_from_flags(flags: Optional[dict] = None, num_classes: Optional[int] = None) -> ADMUNet:
    kw = adm_kwargs_from_flags(flags or {})
    if num_classes is not None and kw["num_classes"] is not None:
        kw["num_classes"] = num_classes
    return ADMUNet(**kw)


class ADMEps(nn.Module):
    """``eps(x_t, t, cond)`` of an ADM U-Net: the first ``in_channels`` output channels (the eps
    half when the model also learns its variance). ``cond``: integer labels (N,) or one-hot
    (N, num_classes) (argmax is taken); None for an unconditional model."""

    def __init__(self, unet: ADMUNet):
        super().__init__()
        self.unet = unet

    def forward(self, x: Tensor, t: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        y = None
        if self.unet.num_classes is not None:
            if cond is None:
                raise ValueError("this ADM model is class-conditional: pass class labels")
            y = cond.argmax(dim=1) if torch.is_floating_point(cond) and cond.ndim == 2 else cond.reshape(-1).long()
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.unet.num_classes):
                raise ValueError(f"class labels must lie in [0, {self.unet.num_classes})")
        out = self.unet(x, t, y)
        return out[:, : x.shape[1]]
