"""MCT's ADM ("Dhariwal") U-Net with EDM preconditioning.

The module tree, parameter names and shapes follow the layout of EDM's
``EDMPrecond(DhariwalUNet)`` (Karras et al., 2022), so that a state dict taken from an
EDM snapshot (``edm-imagenet-64x64-cond-adm.pkl``) loads with ``strict=True``::

    model.map_layer0.weight, model.map_label.weight, model.enc.64x64_conv.weight,
    model.enc.64x64_block0.norm0.weight, model.enc.64x64_block0.affine.weight,
    model.enc.32x32_down.conv0.resample_filter, model.dec.8x8_in0.qkv.weight, ...

The code is MCT's own. :class:`DhariwalDenoiser` is a :class:`mct.diffusion.edm.EDMPrecond`
(``D = c_skip x + c_out F(c_in x, ln(sigma)/4, cond)``, the inner network under the
attribute ``model``, hence the ``model.*`` keys) and takes exactly the init kwargs EDM
records in its pickles (``img_resolution, img_channels, label_dim, use_fp16, sigma_min,
sigma_max, sigma_data, model_type`` plus the U-Net's own kwargs).

Class conditioning: ``cond`` is an integer tensor (N,) of labels in ``[0, label_dim)`` or a
float tensor (N, label_dim) (one-hot, or any mixture: EDM feeds it to a bias-free linear
layer); ``None`` is the all-zero vector (what EDM's own wrapper passes when no labels are
given).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..diffusion.edm import EDMPrecond
from .checkpointing import checkpointed

# ---------------------------------------------------------------------------
# Initialisation (same distributions as EDM uses, so that the random-init ablation
# starts from a comparable network).


_SKIP_INIT = contextvars.ContextVar("mct_dhariwal_skip_init", default=False)


@contextlib.contextmanager
def uninitialized():
    """Build networks with uninitialised parameters (to be overwritten by a state dict): no
    random draws, so constructing a 300M-parameter network costs almost nothing."""
    token = _SKIP_INIT.set(True)
    try:
        yield
    finally:
        _SKIP_INIT.reset(token)


def _init_tensor(shape: Sequence[int], mode: str, fan_in: int, fan_out: int, gain: float = 1.0) -> Tensor:
    """gain * (a draw from the named fan-in/fan-out scaled distribution), in one pass."""
    if _SKIP_INIT.get():
        return torch.empty(*shape)
    if gain == 0:
        return torch.zeros(*shape)
    if mode == "xavier_uniform":
        bound = math.sqrt(6 / (fan_in + fan_out))
    elif mode == "kaiming_uniform":
        bound = math.sqrt(3 / fan_in)
    elif mode == "xavier_normal":
        return torch.empty(*shape).normal_(0.0, gain * math.sqrt(2 / (fan_in + fan_out)))
    elif mode == "kaiming_normal":
        return torch.empty(*shape).normal_(0.0, gain * math.sqrt(1 / fan_in))
    else:
        raise ValueError(f"unknown init mode {mode!r}")
    return torch.empty(*shape).uniform_(-gain * bound, gain * bound)


_INIT = dict(init_mode="kaiming_uniform", init_weight=math.sqrt(1 / 3), init_bias=math.sqrt(1 / 3))
_INIT_ZERO = dict(init_mode="kaiming_uniform", init_weight=0.0, init_bias=0.0)


class Linear(nn.Module):
    """y = x W^T + b with ``weight`` (out, in) and optional ``bias`` (out,)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, init_mode: str = "kaiming_normal",
                 init_weight: float = 1.0, init_bias: float = 0.0):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        fans = dict(mode=init_mode, fan_in=in_features, fan_out=out_features)
        self.weight = nn.Parameter(_init_tensor([out_features, in_features], **fans, gain=init_weight))
        if bias:
            self.bias = nn.Parameter(_init_tensor([out_features], **fans, gain=init_bias))
        else:
            self.register_parameter("bias", None)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)


class Conv2d(nn.Module):
    """k x k convolution with optional 2x up/down resampling by a separable FIR filter
    (buffer ``resample_filter``, present only when resampling). ``kernel = 0`` means
    resampling only (no weights)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, bias: bool = True, up: bool = False,
                 down: bool = False, resample_filter: Sequence[float] = (1, 1), init_mode: str = "kaiming_normal",
                 init_weight: float = 1.0, init_bias: float = 0.0):
        if up and down:
            raise ValueError("a Conv2d cannot both upsample and downsample")
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.up, self.down = up, down
        fans = dict(mode=init_mode, fan_in=in_channels * kernel * kernel, fan_out=out_channels * kernel * kernel)
        if kernel:
            shape = [out_channels, in_channels, kernel, kernel]
            self.weight = nn.Parameter(_init_tensor(shape, **fans, gain=init_weight))
        else:
            self.register_parameter("weight", None)
        if kernel and bias:
            self.bias = nn.Parameter(_init_tensor([out_channels], **fans, gain=init_bias))
        else:
            self.register_parameter("bias", None)
        f1 = torch.as_tensor(list(resample_filter), dtype=torch.float32)
        f2 = torch.outer(f1, f1)[None, None] / f1.sum() ** 2
        self.register_buffer("resample_filter", f2 if (up or down) else None)

    def forward(self, x: Tensor) -> Tensor:
        f = self.resample_filter
        if f is not None:
            f = f.to(x.dtype)
            pad = (f.shape[-1] - 1) // 2
            c = x.shape[1]
            if self.up:
                x = F.conv_transpose2d(x, (f * 4).tile(c, 1, 1, 1), groups=c, stride=2, padding=pad)
            else:
                x = F.conv2d(x, f.tile(c, 1, 1, 1), groups=c, stride=2, padding=pad)
        if self.weight is not None:
            x = F.conv2d(x, self.weight, padding=self.weight.shape[-1] // 2)
        if self.bias is not None:
            x = x + self.bias.to(x.dtype).reshape(1, -1, 1, 1)
        return x


class GroupNorm(nn.Module):
    """Group norm with min(32, C / 4) groups."""

    def __init__(self, num_channels: int, num_groups: int = 32, min_channels_per_group: int = 4, eps: float = 1e-5):
        super().__init__()
        self.num_groups = min(num_groups, num_channels // min_channels_per_group)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: Tensor) -> Tensor:
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


class PositionalEmbedding(nn.Module):
    """[cos(x f_i), sin(x f_i)] with f_i = max_positions^(-i / (C/2)) (no parameters)."""

    def __init__(self, num_channels: int, max_positions: int = 10000, endpoint: bool = False):
        super().__init__()
        self.num_channels, self.max_positions, self.endpoint = num_channels, max_positions, endpoint

    def forward(self, x: Tensor) -> Tensor:
        half = self.num_channels // 2
        i = torch.arange(half, dtype=torch.float32, device=x.device)
        freqs = (1.0 / self.max_positions) ** (i / (half - (1 if self.endpoint else 0)))
        arg = x.float()[:, None] * freqs[None]
        return torch.cat([arg.cos(), arg.sin()], dim=1)


class UNetBlock(nn.Module):
    """Residual block (group norm, SiLU, conv; scale/shift from the embedding) with optional
    2x up/down resampling and multi-head self-attention."""

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, up: bool = False, down: bool = False,
                 attention: bool = False, num_heads: Optional[int] = None, channels_per_head: int = 64,
                 dropout: float = 0.0, skip_scale: float = 1.0, eps: float = 1e-5,
                 resample_filter: Sequence[float] = (1, 1), resample_proj: bool = False, adaptive_scale: bool = True,
                 init: Optional[dict] = None, init_zero: Optional[dict] = None, init_attn: Optional[dict] = None):
        super().__init__()
        init = dict(init or {})
        init_zero = dict(init_zero if init_zero is not None else {"init_weight": 0.0})
        self.in_channels, self.out_channels, self.emb_channels = in_channels, out_channels, emb_channels
        if not attention:
            self.num_heads = 0
        else:
            self.num_heads = num_heads if num_heads is not None else out_channels // channels_per_head
        self.dropout, self.skip_scale, self.adaptive_scale = dropout, skip_scale, adaptive_scale

        self.norm0 = GroupNorm(in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels, out_channels, 3, up=up, down=down, resample_filter=resample_filter, **init)
        self.affine = Linear(emb_channels, out_channels * (2 if adaptive_scale else 1), **init)
        self.norm1 = GroupNorm(out_channels, eps=eps)
        self.conv1 = Conv2d(out_channels, out_channels, 3, **init_zero)
        self.skip = None
        if out_channels != in_channels or up or down:
            kernel = 1 if (resample_proj or out_channels != in_channels) else 0
            self.skip = Conv2d(in_channels, out_channels, kernel, up=up, down=down, resample_filter=resample_filter,
                               **init)
        if self.num_heads:
            if out_channels % self.num_heads:
                raise ValueError(f"{out_channels} channels do not split into {self.num_heads} attention heads")
            self.norm2 = GroupNorm(out_channels, eps=eps)
            self.qkv = Conv2d(out_channels, out_channels * 3, 1, **(init_attn if init_attn is not None else init))
            self.proj = Conv2d(out_channels, out_channels, 1, **init_zero)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        orig = x
        x = self.conv0(F.silu(self.norm0(x)))
        params = self.affine(emb)[:, :, None, None].to(x.dtype)
        if self.adaptive_scale:
            scale, shift = params.chunk(2, dim=1)
            x = F.silu(shift + self.norm1(x) * (scale + 1))
        else:
            x = F.silu(self.norm1(x + params))
        x = self.conv1(F.dropout(x, p=self.dropout, training=self.training))
        x = x + (self.skip(orig) if self.skip is not None else orig)
        x = x * self.skip_scale
        if self.num_heads:
            n, c, h, w = x.shape
            heads = self.num_heads
            # qkv channels are laid out [head][channel within head][q, k, v] (EDM's order, so its
            # checkpoints compute the same function); one copy makes q, k, v contiguous
            # (batch, heads, tokens, head_dim), the layout the fused SDPA kernels take.
            qkv = self.qkv(self.norm2(x)).reshape(n, heads, c // heads, 3, h * w)
            q, k, v = qkv.permute(3, 0, 1, 4, 2).contiguous().unbind(0)
            # softmax(q k^T / sqrt(head_dim)) v: SDPA's default scale is EDM's 1 / sqrt(C / heads)
            a = F.scaled_dot_product_attention(q, k, v)
            a = a.transpose(2, 3).reshape(n, c, h, w)
            x = (self.proj(a) + x) * self.skip_scale
        return x


def labels_to_onehot(cond: Optional[Tensor], label_dim: int, n: int, device, dtype=torch.float32) -> Tensor:
    """Integer labels (N,) -> one-hot (N, label_dim); a float (N, label_dim) tensor passes through;
    None -> zeros (EDM's unconditional input)."""
    if cond is None:
        return torch.zeros(n, label_dim, device=device, dtype=dtype)
    if not torch.is_floating_point(cond):
        cond = cond.reshape(-1).long()
        if cond.shape[0] != n:
            raise ValueError(f"got {cond.shape[0]} class labels for a batch of {n}")
        if cond.numel() and (int(cond.min()) < 0 or int(cond.max()) >= label_dim):
            raise ValueError(f"class labels must lie in [0, {label_dim}), got [{int(cond.min())}, {int(cond.max())}]")
        return F.one_hot(cond, label_dim).to(device=device, dtype=dtype)
    cond = cond.reshape(n, -1)
    if cond.shape[1] != label_dim:
        raise ValueError(f"class-label vectors must have {label_dim} entries, got {cond.shape[1]}")
    return cond.to(device=device, dtype=dtype)


class DhariwalUNet(nn.Module):
    """The ADM U-Net of Dhariwal & Nichol as parametrised by EDM: ``F(x, c_noise, class_labels)``.

    Encoder per resolution: (a down block,) ``num_blocks`` residual blocks; decoder: two
    middle blocks at the lowest resolution (the first with attention), then per resolution
    (an up block,) ``num_blocks + 1`` blocks that each take one encoder skip. Attention
    at ``attn_resolutions`` with 64 channels per head; embedding ``channel_mult_emb * model_channels``
    wide, class labels added through a bias-free linear layer."""

    def __init__(self, img_resolution: int, in_channels: int, out_channels: int, label_dim: int = 0,
                 augment_dim: int = 0, model_channels: int = 192, channel_mult: Sequence[int] = (1, 2, 3, 4),
                 channel_mult_emb: int = 4, num_blocks: int = 3, attn_resolutions: Sequence[int] = (32, 16, 8),
                 dropout: float = 0.10, label_dropout: float = 0.0):
        super().__init__()
        if img_resolution % (2 ** (len(channel_mult) - 1)):
            raise ValueError(f"img_resolution {img_resolution} is not divisible by 2^{len(channel_mult) - 1}")
        self.img_resolution, self.in_channels, self.out_channels = img_resolution, in_channels, out_channels
        self.label_dim, self.label_dropout = label_dim, label_dropout
        self.amp_dtype: Optional[torch.dtype] = None
        self.checkpointing = False  # recompute each block in backward instead of saving its activations
        emb_channels = model_channels * channel_mult_emb
        block_kwargs = dict(emb_channels=emb_channels, channels_per_head=64, dropout=dropout, init=_INIT,
                            init_zero=_INIT_ZERO)

        self.map_noise = PositionalEmbedding(model_channels)
        self.map_augment = (Linear(augment_dim, model_channels, bias=False, **_INIT_ZERO) if augment_dim else None)
        self.map_layer0 = Linear(model_channels, emb_channels, **_INIT)
        self.map_layer1 = Linear(emb_channels, emb_channels, **_INIT)
        self.map_label = (Linear(label_dim, emb_channels, bias=False, init_mode="kaiming_normal",
                                 init_weight=math.sqrt(label_dim)) if label_dim else None)

        self.enc = nn.ModuleDict()
        skips: list[int] = []
        cout = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_conv"] = Conv2d(cin, cout, 3, **_INIT)
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **block_kwargs)
            skips.append(cout)
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=res in attn_resolutions,
                                                                **block_kwargs)
                skips.append(cout)

        self.dec = nn.ModuleDict()
        self._takes_skip: list[bool] = []
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(cout, cout, attention=True, **block_kwargs)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(cout, cout, **block_kwargs)
                self._takes_skip += [False, False]
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(cout, cout, up=True, **block_kwargs)
                self._takes_skip.append(False)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                self.dec[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=res in attn_resolutions,
                                                                **block_kwargs)
                self._takes_skip.append(True)
        self.out_norm = GroupNorm(cout)
        self.out_conv = Conv2d(cout, out_channels, 3, **_INIT_ZERO)

    def forward(self, x: Tensor, noise_labels: Tensor, class_labels: Optional[Tensor] = None,
                augment_labels: Optional[Tensor] = None) -> Tensor:
        amp = self.amp_dtype is not None and x.device.type == "cuda"
        with torch.autocast(device_type=x.device.type, dtype=self.amp_dtype or torch.float32, enabled=amp):
            out = self._forward(x, noise_labels, class_labels, augment_labels)
        return out.float() if amp else out

    def _forward(self, x, noise_labels, class_labels, augment_labels):
        n = x.shape[0]
        emb = self.map_noise(noise_labels.reshape(-1).expand(n) if noise_labels.numel() == 1 else noise_labels)
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = self.map_layer1(F.silu(self.map_layer0(emb)))
        if self.map_label is not None:
            labels = labels_to_onehot(class_labels, self.label_dim, n, x.device, emb.dtype)
            if self.training and self.label_dropout:
                keep = torch.rand(n, 1, device=x.device) >= self.label_dropout
                labels = labels * keep.to(labels.dtype)
            emb = emb + self.map_label(labels)
        emb = F.silu(emb)

        skips = []
        for block in self.enc.values():
            x = checkpointed(block, self.checkpointing)(x, emb) if isinstance(block, UNetBlock) else block(x)
            skips.append(x)
        for block, takes_skip in zip(self.dec.values(), self._takes_skip):
            if takes_skip:
                x = torch.cat([x, skips.pop()], dim=1)
            x = checkpointed(block, self.checkpointing)(x, emb)
        return self.out_conv(F.silu(self.out_norm(x)))


# The init kwargs EDM records for EDMPrecond and the DhariwalUNet kwargs it forwards.
PRECOND_KWARGS = ("img_resolution", "img_channels", "label_dim", "use_fp16", "sigma_min", "sigma_max", "sigma_data",
                  "model_type")
UNET_KWARGS = ("augment_dim", "model_channels", "channel_mult", "channel_mult_emb", "num_blocks", "attn_resolutions",
               "dropout", "label_dropout")

# EDM's edm-imagenet-64x64-cond-adm.pkl (docs/benchmarks.md#imagenet64): the init kwargs of its EDMPrecond.
IMAGENET64_KWARGS: dict[str, Any] = dict(
    img_resolution=64, img_channels=3, label_dim=1000, use_fp16=True, sigma_data=0.5, model_type="DhariwalUNet",
    model_channels=192, channel_mult=[1, 2, 3, 4], channel_mult_emb=4, num_blocks=3, attn_resolutions=[32, 16, 8],
    dropout=0.10)


class DhariwalDenoiser(EDMPrecond):
    """EDM-preconditioned ADM U-Net: a :class:`~mct.teachers.base.Denoiser` ``D(x, sigma, cond)``.

    Constructed from the same kwargs as EDM's ``EDMPrecond`` (``model_type`` must be
    'DhariwalUNet'); ``init_kwargs`` keeps them so the network can be rebuilt.
    ``use_fp16`` is recorded but only :attr:`amp_dtype` (None, torch.float16 or
    torch.bfloat16; autocast on CUDA) changes the arithmetic."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, use_fp16: bool = False,
                 sigma_min: float = 0.0, sigma_max: float = float("inf"), sigma_data: float = 0.5,
                 model_type: str = "DhariwalUNet", **model_kwargs):
        if model_type != "DhariwalUNet":
            raise ValueError(f"model_type {model_type!r} is not supported (MCT implements DhariwalUNet only)")
        unknown = sorted(set(model_kwargs) - set(UNET_KWARGS))
        if unknown:
            raise ValueError(f"unknown DhariwalUNet argument {unknown[0]!r} (known: {', '.join(UNET_KWARGS)})")
        net = DhariwalUNet(img_resolution=int(img_resolution), in_channels=int(img_channels),
                           out_channels=int(img_channels), label_dim=int(label_dim), **model_kwargs)
        super().__init__(net, sigma_data=float(sigma_data))
        self.img_resolution, self.img_channels, self.label_dim = int(img_resolution), int(img_channels), int(label_dim)
        self.use_fp16 = bool(use_fp16)
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.init_kwargs = dict(img_resolution=self.img_resolution, img_channels=self.img_channels,
                                label_dim=self.label_dim, use_fp16=self.use_fp16, sigma_min=self.sigma_min,
                                sigma_max=self.sigma_max, sigma_data=self.sigma_data, model_type=model_type,
                                **{k: (list(v) if isinstance(v, tuple) else v) for k, v in model_kwargs.items()})

    @classmethod
    def from_init_kwargs(cls, kwargs: dict, **overrides) -> "DhariwalDenoiser":
        """Build from recorded init kwargs (an EDM pickle's or :attr:`init_kwargs`), with overrides
        (e.g. ``dropout=0``). Unknown keys raise ValueError naming the key."""
        kw = {**kwargs, **overrides}
        unknown = sorted(set(kw) - set(PRECOND_KWARGS) - set(UNET_KWARGS))
        if unknown:
            raise ValueError(f"unknown EDMPrecond/DhariwalUNet argument {unknown[0]!r}")
        return cls(**kw)

    @property
    def amp_dtype(self) -> Optional[torch.dtype]:
        return self.model.amp_dtype

    @amp_dtype.setter
    def amp_dtype(self, value: Optional[torch.dtype]) -> None:
        self.model.amp_dtype = value

    def set_dropout(self, p: float) -> "DhariwalDenoiser":
        """Set the dropout of every residual block (distillation usually runs without dropout)."""
        for m in self.modules():
            if isinstance(m, UNetBlock):
                m.dropout = float(p)
        self.init_kwargs["dropout"] = float(p)
        return self


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
