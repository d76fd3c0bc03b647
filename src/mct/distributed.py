"""Data-parallel helpers: the process group from torchrun's environment, rank and world
queries, per-rank seeds, sharding a global batch or an evaluation set, and gathering.

Everything here is a no-op (or the identity) in a single process, so the same code runs
with and without ``torchrun``. The conventions that make a data-parallel run equal to a
single-process run with the same global batch and seed (to float rounding):

- every rank draws the *global* batch's random numbers from the shared seeded generator and
  keeps its own rows (:func:`batch_rows`, :func:`slice_batch`); equal shards, so DDP's mean
  of the per-rank mean losses is the global mean;
- randomness that need not match a single process (dropout and other draws from torch's
  global generator) comes from :func:`rank_seed`, a pure function of (run seed, rank, step),
  so a checkpoint carries no per-rank state;
- an evaluation set of ``n`` items is split with :func:`shard_range` and its features are
  gathered in index order with :func:`gather_rows` (:func:`all_gather_tensor` takes uneven
  sizes), so FID and friends are computed once, on all ``n`` items. Items whose noise comes
  from :func:`randn_rows` do not depend on how the set is split.
"""

from __future__ import annotations

import atexit
import datetime
import hashlib
import logging
import os
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn

log = logging.getLogger(__name__)

# stages a benchmark runs data-parallel under torchrun unless it says otherwise
# (``Benchmark.distributed_stages``); any other stage runs on rank 0 alone
DEFAULT_DISTRIBUTED_STAGES = ("distill",)
TIMEOUT_ENV = "MCT_DIST_TIMEOUT_MIN"


def env_world_size() -> int:
    """WORLD_SIZE as torchrun sets it (1 when not launched by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def is_main() -> bool:
    return rank() == 0


def init_from_env(device: str | torch.device = "cpu") -> bool:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
    MASTER_PORT). Returns whether this is a multi-process run.

    A no-op when WORLD_SIZE is 1 or unset, or when the group exists already. With a CUDA
    ``device`` the backend is NCCL and the process binds to ``cuda:LOCAL_RANK`` (so 'cuda'
    means this rank's GPU from here on); otherwise gloo. Ranks other than 0 log warnings
    and errors only. The collective timeout is ``$MCT_DIST_TIMEOUT_MIN`` minutes (60)."""
    if is_initialized():
        return world_size() > 1
    if env_world_size() <= 1:
        return False
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this build of PyTorch")
    dev = torch.device(device)
    timeout = datetime.timedelta(minutes=float(os.environ.get(TIMEOUT_ENV, "60")))
    if dev.type == "cuda":
        torch.cuda.set_device(local_rank())
        dist.init_process_group("nccl", timeout=timeout, device_id=torch.device("cuda", local_rank()))
    else:
        dist.init_process_group("gloo", timeout=timeout)
    atexit.register(_destroy)
    if rank() != 0:
        logging.getLogger().setLevel(logging.WARNING)
    log.info("data-parallel: %d processes (%s)", world_size(), dist.get_backend())
    return world_size() > 1


def _destroy() -> None:
    if is_initialized():
        dist.destroy_process_group()


def stage_runs_here(bench: Any, stage: str) -> bool:
    """Whether this process runs ``stage`` of ``bench``: every rank for the stages the
    benchmark runs data-parallel (``bench.distributed_stages``, default: distill), rank 0
    alone for the others (the other ranks have nothing to do and exit)."""
    if world_size() <= 1:
        return True
    if stage in tuple(getattr(bench, "distributed_stages", DEFAULT_DISTRIBUTED_STAGES)):
        return True
    if rank() != 0:
        log.warning("%s is not data-parallel; rank %d leaves it to rank 0", stage, rank())
    return rank() == 0


def _comm_device() -> torch.device:
    """Where collective buffers live: the current GPU for NCCL, the CPU for gloo."""
    if is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (picklable objects)."""
    if world_size() <= 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


@torch.no_grad()
def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Copy parameters and buffers of rank ``src`` into every rank's ``module``, in place."""
    if world_size() <= 1:
        return
    cd = _comm_device()
    for t in list(module.parameters()) + list(module.buffers()):
        buf = t.detach().to(cd)
        dist.broadcast(buf, src=src)
        if buf is not t:
            t.copy_(buf)


def all_reduce_mean(t: Tensor) -> Tensor:
    """Mean of ``t`` over ranks (a new tensor on ``t``'s device; ``t`` itself in one process)."""
    if world_size() <= 1:
        return t
    buf = t.detach().to(_comm_device(), copy=True)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return (buf / world_size()).to(t.device)


def all_reduce_min(t: Tensor) -> Tensor:
    """Elementwise minimum of an integer or float tensor over ranks."""
    if world_size() <= 1:
        return t
    buf = t.detach().to(_comm_device(), copy=True)
    dist.all_reduce(buf, op=dist.ReduceOp.MIN)
    return buf.to(t.device)


def rank_seed(seed: int, rank_: int, *salt) -> int:
    """A 63-bit seed that is a pure function of (run seed, rank, salt...): per-rank streams
    that a resumed run (on any number of ranks) re-derives instead of loading."""
    h = hashlib.sha256(repr((int(seed), int(rank_)) + tuple(salt)).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def shard_range(n: int, rank_: Optional[int] = None, world: Optional[int] = None) -> range:
    """The contiguous block of ``range(n)`` that ``rank_`` of ``world`` owns. Blocks are in
    rank order, cover ``range(n)`` once and differ in size by at most one (the first
    ``n % world`` ranks hold the extra item)."""
    rank_ = rank() if rank_ is None else int(rank_)
    world = world_size() if world is None else int(world)
    if n < 0 or world < 1 or not 0 <= rank_ < world:
        raise ValueError(f"shard_range needs n >= 0 and 0 <= rank < world, got n={n}, rank={rank_}, world={world}")
    base, extra = divmod(n, world)
    start = rank_ * base + min(rank_, extra)
    return range(start, start + base + (1 if rank_ < extra else 0))


def batch_rows(batch_size: int, rank_: int, world: int, accumulation: int = 1, micro: int = 0) -> slice:
    """Rows of a global batch that ``rank_`` processes in accumulation step ``micro``. The
    global batch is split into ``accumulation`` consecutive micro-batches, each into
    ``world`` equal consecutive shards."""
    parts = world * accumulation
    if batch_size % parts:
        raise ValueError(f"batch {batch_size} is not divisible by world x accumulation = {world} x {accumulation}")
    if not (0 <= rank_ < world and 0 <= micro < accumulation):
        raise ValueError(f"rank {rank_} / micro-step {micro} out of range for world {world}, accumulation {accumulation}")
    per = batch_size // parts
    start = micro * world * per + rank_ * per
    return slice(start, start + per)


def slice_batch(obj: Any, rows: slice, n: int) -> Any:
    """``obj`` restricted to ``rows`` of a batch of ``n``: tensors with ``n`` rows are sliced,
    dicts/lists/tuples are sliced item by item (a list or tuple of ``n`` non-tensors, such as
    prompts, is sliced as a list), anything else (None, a shared embedding table) is kept."""
    if isinstance(obj, Tensor):
        return obj[rows] if obj.ndim > 0 and obj.shape[0] == n else obj
    if isinstance(obj, dict):
        return {k: slice_batch(v, rows, n) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        if len(obj) == n and not any(isinstance(v, (Tensor, dict, list, tuple)) for v in obj):
            return type(obj)(obj[rows]) if isinstance(obj, tuple) else obj[rows]
        return type(obj)(slice_batch(v, rows, n) for v in obj)
    return obj


def global_noise(n: int, rows: slice, rng: Optional[torch.Generator]) -> Callable[[Tensor], Tensor]:
    """A ``noise(like)`` for the E-step: draws the whole batch's normals (``n`` rows of
    ``like``'s trailing shape) from ``rng`` and returns this shard's ``rows``, so the shared
    generator advances exactly as in a single process."""

    def draw(like: Tensor) -> Tensor:
        full = torch.randn((n,) + tuple(like.shape[1:]), generator=rng, device=like.device, dtype=like.dtype)
        return full[rows].clone()

    return draw


def all_gather_tensor(t: Tensor) -> Tensor:
    """Concatenate every rank's ``t`` along dim 0, in rank order; the number of rows may
    differ between ranks (zero included), the trailing shape and dtype may not. Returns a
    tensor on ``t``'s device, on every rank."""
    if world_size() <= 1:
        return t
    cd = _comm_device()
    meta = [None] * world_size()
    dist.all_gather_object(meta, (tuple(t.shape[1:]), str(t.dtype)))
    if len(set(meta)) != 1:
        raise ValueError(f"all_gather_tensor: ranks disagree on trailing shape / dtype: {meta}")
    x = t.detach().to(cd).contiguous()
    sizes_t = [torch.zeros(1, dtype=torch.long, device=cd) for _ in range(world_size())]
    dist.all_gather(sizes_t, torch.tensor([x.shape[0]], dtype=torch.long, device=cd))
    sizes = [int(s.item()) for s in sizes_t]
    most = max(sizes)
    if x.shape[0] < most:
        x = torch.cat([x, x.new_zeros((most - x.shape[0],) + tuple(x.shape[1:]))])
    bufs = [torch.empty_like(x) for _ in sizes]
    dist.all_gather(bufs, x)
    return torch.cat([b[:s] for b, s in zip(bufs, sizes)]).to(t.device)


def gather_rows(n: int, batch_size: int, fn: Callable[[int, int], Tensor]) -> Tensor:
    """``fn(start, count)`` (the rows start..start+count of an ``n``-row result, e.g. the
    features of generated samples) computed on this rank's :func:`shard_range` in batches of
    ``batch_size``, gathered on every rank in index order: an (n, ...) tensor."""
    if n < 1 or batch_size < 1:
        raise ValueError(f"gather_rows needs n >= 1 and batch_size >= 1, got {n}, {batch_size}")
    r = shard_range(n)
    parts = [fn(s, min(batch_size, r.stop - s)) for s in range(r.start, r.stop, batch_size)]
    local = torch.cat(parts) if parts else None
    if world_size() <= 1:
        return local
    # a rank with no rows (n < world) still needs the trailing shape: rank 0 always has rows
    meta = broadcast_object((tuple(local.shape[1:]), local.dtype, str(local.device)) if rank() == 0 else None)
    if local is None:
        tail, dtype, device = meta
        local = torch.empty((0,) + tail, dtype=dtype, device=device)
    return all_gather_tensor(local)


def randn_rows(seed: int, start: int, count: int, shape: tuple[int, ...], device: str | torch.device = "cpu",
               block: int = 1024) -> Tensor:
    """Rows start..start+count of a virtual (N, *shape) standard-normal tensor that depends on
    ``seed`` only: blocks of ``block`` rows each have their own generator, so the rows do not
    depend on how the set is split between ranks or batches."""
    out = []
    i, end = start, start + count
    while i < end:
        b = i // block
        g = torch.Generator().manual_seed(rank_seed(seed, 0, "randn_rows", b))
        full = torch.randn((block,) + tuple(shape), generator=g)
        lo, hi = i - b * block, min(end, (b + 1) * block) - b * block
        out.append(full[lo:hi])
        i = (b + 1) * block if hi == block else end
    if not out:
        return torch.empty((0,) + tuple(shape), device=device)
    return torch.cat(out).to(device)
