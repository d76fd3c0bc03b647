"""The disk a config's distillation runs need, printed by ``mct config check`` and tabulated in
docs/benchmarks.md (``python -m mct.pipeline.disk --markdown CONFIG...`` writes that table; a test
checks the committed one against it).

A checkpoint holds 7 copies of the network's parameters in float32 when generator and student
are copies of the teacher (:func:`mct.checkpoint.checkpoint_bytes`); a run keeps
``train.keep_checkpoints`` numbered ones plus the one being written (the oldest is deleted only
after the new one is whole), and its final ``checkpoint.pt`` is a hard link of the last, which
takes no space. The networks are built on the meta device, so nothing is allocated. Teacher files,
reference statistics and evaluation weights come on top (a few GB; docs/benchmarks.md)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Optional

GB = 1e9  # decimal gigabytes, as disks are sold


@dataclass(frozen=True)
class DiskNeed:
    """One benchmark's checkpoint disk: ``variants`` runs, at most ``kept`` numbered checkpoints each
    at the peak, ``checkpoint_bytes`` each; ``params``: trainable parameters of the generator."""

    bench: str
    variants: int
    kept: int
    checkpoint_bytes: int
    params: int
    total_bytes: int

    def line(self) -> str:
        return (f"{self.bench}: checkpoints need {self.total_bytes / GB:.1f} GB of disk ({self.variants} variant(s) x "
                f"{self.kept} checkpoints at the peak x {self.checkpoint_bytes / GB:.2f} GB; a checkpoint holds the "
                f"generator, its EMA, the student and Adam's two moments of each: 7 copies of "
                f"{self.params:,} parameters in float32)")


def bench_disk(name: str, section: dict) -> Optional[DiskNeed]:
    """The checkpoint disk of benchmark ``name``'s configured variants (None: not estimated)."""
    from ..benchmarks.base import get_benchmark
    from ..checkpoint import checkpoint_bytes

    bench = get_benchmark(name)
    variants = bench.variant_names(section) or [None]
    sizes = bench.network_bytes(bench.parse(section))
    if sizes is None:
        return None
    per = checkpoint_bytes(*sizes)
    kept = [bench.parse(section, v).train.keep_checkpoints + 1 for v in variants]
    return DiskNeed(bench=name, variants=len(variants), kept=max(kept), checkpoint_bytes=per,
                    params=sizes[0][1] // 4, total_bytes=sum(k * per for k in kept))


def disk_lines(raw: dict) -> list[str]:
    """One line per benchmark of a validated config's content (``mct config check``)."""
    lines = []
    for name, section in (raw.get("benchmarks") or {}).items():
        try:
            need = bench_disk(name, section or {})
        except (ImportError, ValueError, TypeError, RuntimeError) as exc:  # the check itself stays valid
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            lines.append(f"{name}: disk not estimated (its network cannot be built: {type(exc).__name__}: {first})")
            continue
        lines.append(need.line() if need else f"{name}: checkpoints small (embedded networks; not estimated)")
    return lines


def markdown_table(configs: list[str]) -> str:
    """The docs/benchmarks.md table of the paper configs' checkpoint disk."""
    from ..root import load_root

    rows = ["| config | benchmark | parameters | one checkpoint | variants x kept | disk for checkpoints |",
            "|---|---|---|---|---|---|"]
    for path in configs:
        _, raw = load_root(path)
        for name, section in (raw.get("benchmarks") or {}).items():
            d = bench_disk(name, section or {})
            if d is not None:
                rows.append(f"| `{path}` | {name} | {d.params:,} | {d.checkpoint_bytes / GB:.2f} GB | "
                            f"{d.variants} x {d.kept} | {d.total_bytes / GB:.1f} GB |")
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mct.pipeline.disk", description=__doc__.splitlines()[0])
    p.add_argument("configs", nargs="+")
    p.add_argument("--markdown", action="store_true", help="the docs table instead of one line per benchmark")
    args = p.parse_args(argv)
    if args.markdown:
        sys.stdout.write(markdown_table(args.configs))
        return 0
    from ..root import load_root

    for path in args.configs:
        for line in disk_lines(load_root(path)[1]):
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
