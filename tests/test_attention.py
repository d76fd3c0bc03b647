"""Self-attention of the two ADM U-Nets (nets/dhariwal.py: EDM's layout; nets/adm.py:
guided-diffusion's) hands SDPA contiguous 4-D (batch, heads, tokens, head_dim) q, k, v, the
layout the fused flash / memory-efficient kernels take, and still computes the function the
released checkpoints were trained with.

Checked on random inputs and random weights (every parameter, the zero-initialised output
projections included) against (a) softmax(q k^T / sqrt(head_dim)) v written out in float64
with each layout's channel index formula, (b) the math of the code before the change
(``_old_attention_math``: 3-D, transposed, non-contiguous SDPA inputs), and (c) a wrapper
around SDPA that records what it was handed."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mct.nets.adm import ADMUNet, AttentionBlock
from mct.nets.dhariwal import DhariwalUNet, UNetBlock

_REAL_SDPA = F.scaled_dot_product_attention
TOL = 1e-6  # relative to the largest output entry

# (batch, channels, heads or None, channels_per_head, resolution): EDM's ImageNet-64 ADM runs
# 64 channels per head at 384 / 576 / 768 channels (6, 9, 12 heads); scaled down here
DHARIWAL_CASES = [(1, 24, None, 24, 8), (3, 24, None, 24, 8), (1, 48, None, 8, 8), (3, 72, None, 8, 4),
                  (3, 48, 3, 64, 8)]
# (batch, channels, num_heads, num_head_channels, new_order, resolution): guided-diffusion's
# 128 px model runs 4 heads (legacy order), its 64 px model 64 channels per head (new order)
ADM_CASES = [(1, 64, 1, -1, False, 8), (3, 64, 4, -1, False, 8), (1, 96, 4, 32, False, 4),
             (3, 64, 1, -1, True, 8), (3, 96, 4, 32, True, 8), (1, 128, 4, -1, True, 4)]


def _randomize(module: torch.nn.Module, seed: int) -> None:
    """Every parameter random (the zero-initialised projections would hide the attention)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            std = 1.0 / math.sqrt(p[0].numel()) if p.dim() > 1 else 0.5
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype) * std)


def _dhariwal_block(c, heads, cph, seed, dtype):
    block = UNetBlock(c, c, 16, attention=True, num_heads=heads, channels_per_head=cph, skip_scale=0.7)
    _randomize(block, seed)
    return block.to(dtype).eval()


def _adm_block(c, heads, head_channels, new_order, seed, dtype):
    block = AttentionBlock(c, num_heads=heads, num_head_channels=head_channels, use_new_attention_order=new_order)
    _randomize(block, seed)
    block = block.to(dtype).eval()
    block.norm.float()  # GroupNorm32 normalises in float32 whatever the input (guided-diffusion's)
    return block


def _inputs(shape, seed, dtype, emb_dim=None):
    g = torch.Generator().manual_seed(seed + 1000)
    x = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    emb = torch.randn(shape[0], emb_dim, generator=g, dtype=torch.float64).to(dtype) if emb_dim else None
    return x, emb


def _attention_input(block: UNetBlock, x, emb):
    """The Dhariwal block's output and the tensor its attention acts on (norm2's input)."""
    seen = []
    handle = block.norm2.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    try:
        out = block(x, emb)
    finally:
        handle.remove()
    return out, seen[0]


def _explicit_attention(qkv, heads, index):
    """softmax(q k^T / sqrt(ch)) v per (sample, head) by plain loops over an explicit index:
    ``index(head, part, channel)`` is the qkv channel of q (part 0), k (1) or v (2)."""
    qkv = qkv.reshape(qkv.shape[0], qkv.shape[1], -1).double()
    n, c3, length = qkv.shape
    ch = c3 // 3 // heads
    out = torch.empty(n, heads * ch, length, dtype=torch.float64)
    for i in range(heads):
        q, k, v = (qkv[:, [index(i, part, j) for j in range(ch)], :] for part in range(3))  # (n, ch, L)
        w = torch.softmax(torch.einsum("ncs,nct->nst", q, k) / math.sqrt(ch), dim=-1)  # (n, L_q, L_k)
        out[:, i * ch:(i + 1) * ch, :] = torch.einsum("nst,nct->ncs", w, v)
    return out


def _old_attention_math(block, qkv):
    """The attention of each block as it read before the change (3-D SDPA inputs), verbatim;
    returns the attention output in the block's (N, C, ...) layout, before the projection."""
    if isinstance(block, UNetBlock):
        n, c3, h, w = qkv.shape
        c, heads = c3 // 3, block.num_heads
        q, k, v = qkv.reshape(n * heads, c // heads, 3, h * w).unbind(2)
        a = _REAL_SDPA(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return a.transpose(1, 2).reshape(n, c, h, w)
    b, c3, length = qkv.shape
    c, heads = c3 // 3, block.num_heads
    ch = c // heads
    if block.new_order:
        q, k, v = (t.reshape(b * heads, ch, length) for t in qkv.chunk(3, dim=1))
    else:
        q, k, v = qkv.reshape(b * heads, 3 * ch, length).split(ch, dim=1)
    a = _REAL_SDPA(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return a.transpose(1, 2).reshape(b, c, length)


def _rel(out, ref):
    return float((out.double() - ref.double()).abs().max() / ref.double().abs().max())


def _dhariwal_index(ch):
    # EDM: qkv channel = (head * ch + channel) * 3 + part
    return lambda i, part, j: (i * ch + j) * 3 + part


def _adm_index(heads, ch, new_order):
    if new_order:  # [q, k, v][head][channel]
        return lambda i, part, j: part * heads * ch + i * ch + j
    return lambda i, part, j: i * 3 * ch + part * ch + j  # legacy: [head][q, k, v][channel]


@pytest.mark.parametrize("n,c,heads,cph,res", DHARIWAL_CASES)
def test_dhariwal_attention_matches_explicit_and_old_math(n, c, heads, cph, res):
    seed = n * 100 + c
    block = _dhariwal_block(c, heads, cph, seed, torch.float64)
    x, emb = _inputs((n, c, res, res), seed, torch.float64, emb_dim=16)
    with torch.no_grad():
        out, xa = _attention_input(block, x, emb)
        qkv = block.qkv(block.norm2(xa))
        h = block.num_heads
        ref = _explicit_attention(qkv, h, _dhariwal_index(c // h)).reshape(n, c, res, res)
        ref = (block.proj(ref) + xa) * block.skip_scale
        old = (block.proj(_old_attention_math(block, qkv)) + xa) * block.skip_scale
    assert out.shape == (n, c, res, res)
    assert _rel(out, ref) < TOL
    assert _rel(out, old) < TOL
    # the attention term is not negligible: a wrong head split would show
    assert _rel(xa * block.skip_scale, ref) > 0.05

    # the network's own dtype: unchanged against the old code
    block32 = _dhariwal_block(c, heads, cph, seed, torch.float32)
    x32, emb32 = x.float(), emb.float()
    with torch.no_grad():
        out32, xa32 = _attention_input(block32, x32, emb32)
        old32 = (block32.proj(_old_attention_math(block32, block32.qkv(block32.norm2(xa32)))) + xa32)
        old32 = old32 * block32.skip_scale
    assert _rel(out32, old32) < TOL
    assert _rel(out32, ref) < 1e-4  # float32 against the float64 reference


@pytest.mark.parametrize("n,c,heads,head_channels,new_order,res", ADM_CASES)
def test_adm_attention_matches_explicit_and_old_math(n, c, heads, head_channels, new_order, res):
    seed = n * 100 + c + int(new_order)
    block = _adm_block(c, heads, head_channels, new_order, seed, torch.float64)
    x, _ = _inputs((n, c, res, res), seed, torch.float64)
    with torch.no_grad():
        out = block(x)
        xf = x.reshape(n, c, -1)
        qkv = block.qkv(block.norm(xf))
        h = block.num_heads
        ref = (xf + block.proj_out(_explicit_attention(qkv, h, _adm_index(h, c // h, new_order))))
        ref = ref.reshape(n, c, res, res)
        old = (xf + block.proj_out(_old_attention_math(block, qkv))).reshape(n, c, res, res)
    assert out.shape == (n, c, res, res)
    assert _rel(out, ref) < TOL
    assert _rel(out, old) < TOL
    assert _rel(x, ref) > 0.05

    block32 = _adm_block(c, heads, head_channels, new_order, seed, torch.float32)
    x32 = x.float()
    with torch.no_grad():
        out32 = block32(x32)
        xf32 = x32.reshape(n, c, -1)
        old32 = (xf32 + block32.proj_out(_old_attention_math(block32, block32.qkv(block32.norm(xf32)))))
    assert _rel(out32, old32.reshape(n, c, res, res)) < TOL
    assert _rel(out32, ref) < 1e-4


class _RecordingSDPA:
    """Stands in for F.scaled_dot_product_attention and records its inputs' layout."""

    def __init__(self):
        self.calls = []

    def __call__(self, q, k, v, *args, **kwargs):
        self.calls.append([(tuple(t.shape), t.is_contiguous()) for t in (q, k, v)])
        return _REAL_SDPA(q, k, v, *args, **kwargs)


def test_blocks_hand_sdpa_contiguous_4d(monkeypatch):
    rec = _RecordingSDPA()
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", rec)
    with torch.no_grad():
        _dhariwal_block(48, None, 8, 0, torch.float32)(*_inputs((3, 48, 4, 4), 0, torch.float32, emb_dim=16))
        _adm_block(96, 4, 32, False, 0, torch.float32)(_inputs((3, 96, 4, 4), 0, torch.float32)[0])
        _adm_block(96, 4, 32, True, 0, torch.float32)(_inputs((3, 96, 4, 4), 0, torch.float32)[0])
    # (batch, heads, tokens, head_dim)
    assert rec.calls == [[((3, 6, 16, 8), True)] * 3, [((3, 3, 16, 32), True)] * 3, [((3, 3, 16, 32), True)] * 3]


def test_full_networks_hand_sdpa_contiguous_4d(monkeypatch):
    rec = _RecordingSDPA()
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", rec)
    torch.manual_seed(0)
    edm = DhariwalUNet(img_resolution=8, in_channels=3, out_channels=3, label_dim=4, model_channels=32,
                       channel_mult=[1, 4], attn_resolutions=[4], num_blocks=1).eval()  # 2 heads at 4x4
    adm = ADMUNet(image_size=8, in_channels=3, model_channels=32, out_channels=6, num_res_blocks=1,
                  attention_resolutions=[2], channel_mult=(1, 2), num_classes=4, num_head_channels=16,
                  use_new_attention_order=True).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        edm(x, torch.zeros(2), torch.tensor([1, 2]))
        edm_calls = len(rec.calls)
        adm(x, torch.tensor([3.0, 500.0]), torch.tensor([1, 2]))
    assert edm_calls >= 3 and len(rec.calls) > edm_calls  # every attention block ran
    for call in rec.calls:
        assert len({s for s, _ in call}) == 1  # q, k, v alike
        (shape, contiguous), = set(call)
        assert len(shape) == 4 and shape[0] == 2 and contiguous
