"""Instruments for ``mct rehearse``: network calls counted by kind with the FLOPs each kind costs
(one FlopCounterMode over the whole iteration, its running total split at every network call and
at the start of every backward through a network), and the activation memory one pass keeps alive
for its backward (storages created during the pass that are still alive after it)."""

from __future__ import annotations

import gc
import time
from collections import Counter, defaultdict
from typing import Callable, Optional

import torch
from torch import nn

OTHER = "other"  # FLOPs outside any network call (none in DistillStep: the EM arithmetic is elementwise)


class _GlobalOnly:
    """FlopCounterMode's module tracker, reduced to the one 'Global' bucket: the real tracker's
    backward hooks break ``torch.autograd.grad`` to a leaf (the E-step's VJP to z)."""

    parents = ("Global",)

    def __enter__(self):
        return self

    def __exit__(self, *args):
        return None


def flop_counter():
    """A torch.utils.flop_counter.FlopCounterMode counting into 'Global' only (same FLOP formulas)."""
    from torch.utils.flop_counter import FlopCounterMode

    mode = FlopCounterMode(display=False)
    mode.mod_tracker = _GlobalOnly()
    return mode


def flop_total(mode) -> int:
    """The running total of a FlopCounterMode."""
    return int(sum(mode.flop_counts["Global"].values()))


class CallCounter:
    """Counts every call of the networks it is attached to, by kind, and gives each kind the
    FLOPs counted while it ran (forward, and the backward through that pass when one follows).

    Kinds: ``<role>_forward`` (no graph), ``generator_forward_vjp`` (a graph whose input requires
    grad: the E-step's pass whose VJP to z follows), ``<role>_forward_backward`` (a graph to the
    parameters: the M-step's generator pass, the student's DSM pass), ``teacher_forward``. A
    backward is counted in ``backward_calls`` when the gradient reaches the pass's output."""

    def __init__(self):
        self.calls: Counter = Counter()
        self.backward_calls: Counter = Counter()
        self.flops: dict[str, int] = defaultdict(int)
        self.seconds: dict[str, float] = defaultdict(float)  # wall time by kind (CPU: no sync needed)
        self.clock = time.perf_counter()
        self.mode = None
        self.kind = OTHER
        self.mark = 0
        self._handles: list = []

    # --- FLOP attribution
    def start(self, mode) -> None:
        self.mode, self.kind, self.mark, self.clock = mode, OTHER, flop_total(mode), time.perf_counter()

    def switch(self, kind: str) -> None:
        now = time.perf_counter()
        self.seconds[self.kind] += now - self.clock
        self.clock = now
        if self.mode is not None:
            total = flop_total(self.mode)
            self.flops[self.kind] += total - self.mark
            self.mark = total
        self.kind = kind

    def stop(self) -> None:
        self.switch(OTHER)
        self.mode = None

    # --- hooks
    def _kind(self, role: str, args) -> str:
        if role == "teacher" or not torch.is_grad_enabled():
            return f"{role}_forward"
        x = args[0] if args else None
        if role == "generator" and isinstance(x, torch.Tensor) and x.requires_grad:
            return "generator_forward_vjp"
        return f"{role}_forward_backward"

    def attach(self, module: nn.Module, role: str) -> None:
        """Count ``module``'s calls as ``role`` ('teacher', 'generator', 'student')."""
        pending: list[str] = []

        def pre(mod, args):
            kind = self._kind(role, args)
            self.calls[kind] += 1
            pending.append(kind)
            self.switch(kind)

        def post(mod, args, out):
            kind = pending.pop()
            self.switch(OTHER)
            if isinstance(out, torch.Tensor) and out.requires_grad:
                def on_backward(grad, kind=kind):
                    self.backward_calls[kind] += 1
                    self.switch(kind)

                out.register_hook(on_backward)

        self._handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def reset(self) -> None:
        self.calls.clear()
        self.backward_calls.clear()
        self.flops.clear()
        self.seconds.clear()


def counted_flops(fn: Callable[[], object]) -> int:
    """FLOPs of ``fn()`` by torch's flop counter."""
    return counted_and_timed(fn)[0]


def counted_and_timed(fn: Callable[[], object], sync: Callable[[], None] = lambda: None) -> tuple[int, float]:
    """FLOPs of ``fn()`` and its wall seconds, from one call (the counter's overhead is per op,
    small next to a full-size network's convolutions)."""
    with flop_counter() as mode:
        t0 = time.perf_counter()
        fn()
        sync()
        seconds = time.perf_counter() - t0
    return flop_total(mode), seconds


class _LiveStorages(torch.utils._python_dispatch.TorchDispatchMode):
    """Remembers (weakly) the storage of every tensor an op creates."""

    def __init__(self):
        super().__init__()
        self.refs: dict[int, tuple] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        from torch.multiprocessing.reductions import StorageWeakRef
        from torch.utils._pytree import tree_flatten

        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                st = t.untyped_storage()
                old = self.refs.get(st._cdata)
                if old is None or old[0].expired():
                    self.refs[st._cdata] = (StorageWeakRef(st), st.nbytes())
        return out

    def live_bytes(self, skip: set) -> int:
        gc.collect()
        return int(sum(nb for key, (ref, nb) in self.refs.items() if key not in skip and not ref.expired()))


def graph_bytes(fn: Callable[[], torch.Tensor], modules: tuple = ()) -> int:
    """Bytes of tensor storage created while ``fn()`` ran that are still alive once it returned,
    its own output excepted: what a graph keeps for its backward (saved activations, and under
    activation checkpointing the inputs kept for recomputation). The parameters and buffers of
    ``modules`` are not counted even where an op returned a view of them (a transposed weight)."""
    skip = {t.untyped_storage()._cdata for m in modules for t in list(m.parameters()) + list(m.buffers())}
    mode = _LiveStorages()
    with torch.enable_grad(), mode:
        out = fn()
    live = mode.live_bytes(skip | {out.untyped_storage()._cdata})
    del out
    return live
