"""The ``mct`` command: one subcommand per pipeline step. The workflow (Snakemake,
DVC) calls only this. Every subcommand reads the YAML config, validates it before
any work, writes its declared outputs atomically and reports a bad input as one
line on stderr (exit status 2), never a traceback."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from . import __version__
from .errors import TIME_LIMIT_EXIT, MCTError, TimeLimitReached
from .root import RootConfig, load_root

_STARTED = time.monotonic()  # a job's time limit counts from its start, imports included
TIME_LIMIT_ENV = "MCT_TIME_LIMIT_MIN"  # set by the workflow's distill rule under SLURM (its runtime resource)
STOP_MARGIN_S = 300.0  # stop this long before a time limit (capped at 5 % of it): exit, teardown, clock skew

DESCRIPTION = """\
MCT: distil a diffusion teacher into a one-step generator by EM (Xie et al., 2024).

Pipeline steps (each reads --config and writes under its results_dir):
  teacher train|eval|fetch   train the embedded teacher / score it at several NFE / download a real one
  teacher inspect PATH       print what a teacher checkpoint holds, or why it is refused
  features                   train the embedded feature network (FID/KID/PR through torch-fidelity)
  clip                       train the tiny CLIP of digits-text (CLIP score)
  distill                    run MCT (or an ablation variant) -> runs/<variant>/checkpoint.pt, train_log.csv
  evaluate                   score a distilled generator -> runs/<variant>/metrics.json
  correct                    joint MCMC correction of one-step samples (before/after grids and FID)
  summarize                  one row per variant -> <bench>/summary.csv
  sample                     images from a distilled generator -> PNG grid, PNG files or .npz
  export                     a distilled generator as a self-describing folder (mct.load_generator)
  bench                      speed and memory measurements -> results/bench/*.json
  rehearse                   one iteration of a paper config at full network size, its cost projected
                             -> results/rehearsal/*.json
  docs readme                the README's rehearsal table, generated from results/rehearsal/*.json
  report                     results/report.html from whatever results exist
  config check|schema|show   validate a config (a paper run must fit its GPUs) / print its schema / show a variant
  plan                       per-GPU batch, accumulation, GPUs, hours and runtime segments from `mct rehearse`'s record
  workflow dvc               write dvc.yaml from the pipeline's stage table (src/mct/pipeline/)
  gpus --need N -- CMD       run CMD on N free GPUs of this node (the workflow's stage shell)
"""


def _context(root: RootConfig, args, computes: bool = True):
    from .benchmarks.base import RunContext
    from .config import check_device

    # the --device flag is validated like the config field; a command that computes on the device
    # needs it to exist here (fetch, summarize and report run on a login node too)
    device = check_device(getattr(args, "device", None) or root.device, require_available=computes)
    return RunContext(results_dir=Path(root.results_dir), device=device,
                      progress=root.progress and not getattr(args, "no_progress", False))


def _bench_stage(stage: str):
    def run(args):
        from .benchmarks.base import get_benchmark, section_of

        root, raw = load_root(args.config, args.results_dir)
        bench = get_benchmark(args.bench)
        section = section_of(raw, args.bench)
        fn = getattr(bench, stage, None)
        if fn is None or stage not in bench.stages:
            bench.unsupported(stage)
        kwargs = {}
        if getattr(args, "variant", None) is not None:
            kwargs["variant"] = args.variant
        if stage == "distill":
            kwargs["resume"] = args.resume
            kwargs["deadline"] = _deadline(args.time_limit)
        ctx = _context(root, args, computes=stage not in ("teacher_fetch", "summarize"))
        from .distributed import init_from_env, rank, stage_runs_here

        init_from_env(ctx.device)  # under torchrun: one process per GPU (a no-op otherwise)
        if not stage_runs_here(bench, stage):
            return None  # a stage that is not data-parallel runs on rank 0 alone
        if "variant" in kwargs:
            bench.parse(section, args.variant)  # a bad or unknown name is refused before any folder exists
        from .io import folder_lock

        if rank() != 0:  # rank 0 alone writes (and holds the lock) under torchrun
            return fn(section, ctx, **kwargs)
        folder = _stage_folder(ctx, args.bench, stage, kwargs.get("variant"))
        made = _first_missing(folder)
        try:
            with folder_lock(folder, f"{stage} {args.bench}"):
                return fn(section, ctx, **kwargs)
        except BaseException:
            _remove_empty_folders(folder, made)  # a stage that failed before writing leaves no folder behind
            raise

    return run


def _deadline(minutes):
    """The ``time.monotonic()`` value a distill job stops before: ``--time-limit`` minutes
    (else ``$MCT_TIME_LIMIT_MIN``) after this process started, less a margin; None without either."""
    source = "--time-limit"
    if minutes is None:
        text = os.environ.get(TIME_LIMIT_ENV, "").strip()
        if not text:
            return None
        source = f"${TIME_LIMIT_ENV}"
        try:
            minutes = float(text)
        except ValueError:
            raise MCTError(f"{source} must be a number of minutes, got {text[:40]!r}") from None
    if not 0 < minutes < 1e7:
        raise MCTError(f"{source} must be a number of minutes > 0, got {minutes!r}")
    seconds = minutes * 60.0
    return _STARTED + seconds - min(STOP_MARGIN_S, 0.05 * seconds)


# the folder a stage writes (and locks against a second writer), under <results_dir>/<bench>/
STAGE_FOLDERS = {"teacher_train": "teacher", "teacher_eval": "teacher", "teacher_fetch": "teacher",
                 "features": "features", "clip": "clip", "summarize": "."}


def _first_missing(folder: Path):
    """The outermost folder of ``folder``'s path that does not exist yet (None: it exists)."""
    missing = None
    for p in (folder, *folder.parents):
        if p.exists():
            break
        missing = p
    return missing


def _remove_empty_folders(folder: Path, top) -> None:
    """Remove the empty folders a failed stage created, from its own folder up to ``top`` (the
    outermost one it created); a folder that holds anything (another writer's lock too) stays."""
    if top is None:
        return
    for p in (folder, *folder.parents):
        try:
            p.rmdir()
        except OSError:
            return
        if p == top:
            return


def _stage_folder(ctx, bench: str, stage: str, variant):
    """runs/<variant> for distill and evaluate, runs/<variant>/correct for correct (it may run beside
    evaluate), the stage's own folder for the per-benchmark stages."""
    if variant is not None:
        run = ctx.run_dir(bench, variant)
        return run / "correct" if stage == "correct" else run
    return ctx.bench_dir(bench) / STAGE_FOLDERS.get(stage, ".")


def _cmd_inspect(args):
    from .teachers.inspect import inspect_checkpoint

    print(inspect_checkpoint(args.path))


def _cmd_report(args):
    from .report.build import build_report

    root, raw = load_root(args.config, args.results_dir)
    out = build_report(raw, _context(root, args, computes=False), out=args.out)
    print(out)


def _cmd_bench(args):
    from .bench import run_bench

    root, raw = load_root(args.config, args.results_dir)
    run_bench(raw, _context(root, args), benches=args.bench)


def _cmd_rehearse(args):
    from .bench.rehearse import CHECKPOINTING, run_rehearse

    for name, value, low in (("--iterations", args.iterations, 1), ("--batch", args.batch, 1)):
        if value < low:
            raise MCTError(f"{name} must be >= {low}, got {value}")
    if args.checkpointing not in CHECKPOINTING:
        raise MCTError(f"--checkpointing must be one of {', '.join(CHECKPOINTING)}, got {args.checkpointing!r}")
    if not 0 < args.utilisation <= 1:
        raise MCTError(f"--utilisation must be in (0, 1], got {args.utilisation}")
    if args.optimizer_states not in ("auto", "allocated", "counted"):
        raise MCTError(f"--optimizer-states must be auto, allocated or counted, got {args.optimizer_states!r}")
    for name, value in (("--em-steps", args.em_steps), ("--score-updates", args.score_updates)):
        if value is not None and value < 1:
            raise MCTError(f"{name} must be >= 1, got {value}")
    if args.teacher_precision not in (None, "fp32", "fp16", "bf16"):
        raise MCTError(f"--teacher-precision must be fp32, fp16 or bf16, got {args.teacher_precision!r}")
    root, raw = load_root(args.config, args.results_dir)
    for path in run_rehearse(raw, _context(root, args), benches=args.bench, variant=args.variant,
                             iterations=args.iterations, batch=args.batch, checkpointing=args.checkpointing,
                             utilisation=args.utilisation, optimizer_states=args.optimizer_states,
                             teacher_precision=args.teacher_precision, em_steps=args.em_steps,
                             score_updates=args.score_updates).values():
        print(path)


def _cmd_docs(args):
    from .bench.readme import update_readme

    changed = update_readme(Path(args.readme), Path(args.rehearsals), check=args.check)
    if args.check and changed:
        raise MCTError(f"{args.readme}: the rehearsal table differs from {args.rehearsals}/*.json; "
                       "run `mct docs readme`")
    print(f"{args.readme}: {'updated' if changed else 'up to date'}")


def _cmd_config(args):
    import json

    import yaml

    if args.action == "schema":
        from .pipeline.schema import config_schema

        print(yaml.safe_dump(config_schema(), sort_keys=False), end="")
        return
    if args.config is None:
        raise MCTError("config check/show need --config")
    root, raw = load_root(args.config)
    if args.action == "check":
        from .pipeline.disk import disk_lines
        from .pipeline.plan import check_memory

        lines = check_memory(raw, root.results_dir, args.config)  # a plan that cannot fit its GPUs is refused
        lines += disk_lines(raw)  # what a user must provision before the first long run
        print(f"{args.config}: ok ({', '.join(raw.get('benchmarks') or {}) or 'no benchmarks'})")
        for line in lines:
            print(f"  {line}")
    else:
        from .benchmarks.base import get_benchmark, section_of
        from .config import to_dict

        if not args.bench:
            raise MCTError("config show needs --bench")
        cfg = get_benchmark(args.bench).parse(section_of(raw, args.bench), args.variant)
        print(json.dumps(to_dict(cfg), indent=2))


def _cmd_plan(args):
    from .pipeline.plan import plan_command

    root, raw = load_root(args.config, args.results_dir)
    print("\n".join(plan_command(raw, root.results_dir, args.bench, args.rehearsal_dir)))


def _cmd_sample(args):
    from .export.runs import sample_command

    root, raw = load_root(args.config, args.results_dir)
    sample_command(raw, _context(root, args), args)


def _cmd_export(args):
    from .export.runs import export_command

    root, raw = load_root(args.config, args.results_dir)
    export_command(raw, _context(root, args), args)


def _cmd_workflow(args):
    from .pipeline.dvc import write_dvc_yaml

    print(write_dvc_yaml(args.config, args.out))


def _cmd_gpus(args):
    from .pipeline.gpus import run_on_gpus

    argv = list(args.cmd)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    run_on_gpus(args.need, args.lock_dir, argv, wait=args.wait)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mct", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"mct {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def common(sp, variant=False, bench=True):
        sp.add_argument("--config", required=True, help="YAML config (e.g. config/default.yaml)")
        if bench:
            sp.add_argument("--bench", required=True, help="benchmark name (toy2d, digits, ...)")
        if variant:
            sp.add_argument("--variant", required=True, help="variant name from the config (mct, k1, no-nc, ...)")
        sp.add_argument("--results-dir", default=None, help="override the config's results_dir")
        sp.add_argument("--device", default=None, help="override the config's device")
        sp.add_argument("--no-progress", action="store_true", help="no progress bars")

    t = sub.add_parser("teacher", help="train, score, download or inspect a teacher")
    tsub = t.add_subparsers(dest="action", metavar="ACTION")
    tsub.required = True
    for action, helptext in (("train", "train the embedded teacher"), ("eval", "score the teacher at each NFE (toy2d: exact samples)"),
                             ("fetch", "download a real teacher (sha256-pinned)")):
        sp = tsub.add_parser(action, help=helptext)
        common(sp)
        sp.set_defaults(func=_bench_stage(f"teacher_{action}"))
    sp = tsub.add_parser("inspect", help="print what a checkpoint holds, or why it is refused")
    sp.add_argument("path")
    sp.set_defaults(func=_cmd_inspect)

    for name, helptext, variant in (
        ("features", "train the embedded feature network used for FID/KID/PR", False),
        ("clip", "train the tiny CLIP model used for the CLIP score", False),
        ("distill", "distil the teacher into a one-step generator (one variant)", True),
        ("evaluate", "score one distilled variant -> metrics.json", True),
        ("correct", "joint MCMC correction of one-step samples", True),
        ("summarize", "one row per variant -> summary.csv", False),
    ):
        sp = sub.add_parser(name, help=helptext)
        common(sp, variant=variant)
        if name == "distill":
            g = sp.add_mutually_exclusive_group()
            g.add_argument("--resume", dest="resume", action="store_const", const="yes", default="auto",
                           help="continue from the latest checkpoint (required to exist)")
            g.add_argument("--no-resume", dest="resume", action="store_const", const="no",
                           help="start afresh, discarding checkpoints (default: resume when a compatible one exists)")
            sp.add_argument("--time-limit", type=float, default=None, metavar="MINUTES",
                            help=f"stop cleanly before this many minutes with a checkpoint saved, exit status "
                                 f"{TIME_LIMIT_EXIT}; rerun to resume (default: ${TIME_LIMIT_ENV}, else none)")
        sp.set_defaults(func=_bench_stage(name))

    sp = sub.add_parser("sample", help="images from a distilled generator (EMA, one network pass per batch)")
    common(sp, variant=True)
    g = sp.add_mutually_exclusive_group()
    g.add_argument("--labels", default=None, help="class labels, e.g. 0,3,7 (cycled to --num)")
    g.add_argument("--prompts", default=None, help="text file, one prompt per line (cycled to --num)")
    sp.add_argument("--num", type=int, default=None, help="number of images (default: one per label/prompt, else 64)")
    sp.add_argument("--seed", type=int, default=0, help="seed of the latents (default 0)")
    sp.add_argument("--out", required=True, help="FILE.png (grid), FILE.npz (uint8 NHWC under arr_0) or a folder")
    sp.set_defaults(func=_cmd_sample)

    sp = sub.add_parser("export", help="write a distilled generator as a folder that mct.load_generator reads")
    common(sp, variant=True)
    sp.add_argument("--out", default=None, help="output folder, replaced atomically if it is an earlier export "
                                                "(default: <results_dir>/<bench>/export/<variant>)")
    sp.set_defaults(func=_cmd_export)

    sp = sub.add_parser("report", help="render results/report.html")
    common(sp, bench=False)
    sp.add_argument("--out", default=None, help="output HTML (default: <results_dir>/report.html)")
    sp.set_defaults(func=_cmd_report)

    sp = sub.add_parser("bench", help="measure sampling speed, EM overhead and memory")
    common(sp, bench=False)
    sp.add_argument("--bench", action="append", default=None, help="benchmark(s) to measure (default: all configured)")
    sp.set_defaults(func=_cmd_bench)

    sp = sub.add_parser("rehearse", help="one iteration at full network size: calls, FLOPs, memory, projected cost")
    common(sp, bench=False)
    sp.add_argument("--bench", action="append", default=None,
                    help="benchmark(s) to rehearse (default: every paper-scale one configured)")
    sp.add_argument("--variant", default=None, help="variant rehearsed (default: the section as configured; the paper configs" "' mct variant is {})")
    sp.add_argument("--iterations", type=int, default=1, help="iterations run (the first is counted; default 1)")
    sp.add_argument("--batch", type=int, default=1, help="batch of the rehearsed iteration (default 1)")
    sp.add_argument("--checkpointing", default="config", help="config | on | off | both (activation checkpointing "
                                                             "of the iteration; its saving is measured either way)")
    sp.add_argument("--utilisation", type=float, default=0.4, help="fraction of the bf16 peak assumed (default 0.4)")
    sp.add_argument("--optimizer-states", default="auto", help="allocated | counted | auto (counted when "
                                                               "they would not fit in the memory here)")
    sp.add_argument("--teacher-precision", default=None, help="override the frozen teacher's precision (sd15 on "
                                                              "CPU: bf16 instead of fp16)")
    sp.add_argument("--em-steps", type=int, default=None, help="count a shorter iteration with this K (the "
                    "configured iteration's FLOPs and time are then computed from each pass's; default: as configured)")
    sp.add_argument("--score-updates", type=int, default=None, help="the same for the student updates per iteration")
    sp.set_defaults(func=_cmd_rehearse)

    sp = sub.add_parser("docs", help="generated parts of the documentation")
    sp.add_argument("action", choices=["readme"])
    sp.add_argument("--readme", default="README.md")
    sp.add_argument("--rehearsals", default="results/rehearsal", help="folder of the rehearsal records")
    sp.add_argument("--check", action="store_true", help="fail (exit 2) when the README block is not current")
    sp.set_defaults(func=_cmd_docs)

    sp = sub.add_parser("config", help="validate a config, print the schema, show a resolved variant")
    sp.add_argument("action", choices=["check", "schema", "show"])
    sp.add_argument("--config", default=None)
    sp.add_argument("--bench", default=None)
    sp.add_argument("--variant", default=None)
    sp.set_defaults(func=_cmd_config)

    sp = sub.add_parser("plan", help="derive batch split, GPUs, runtime and segments from a rehearsal record")
    sp.add_argument("--config", required=True)
    sp.add_argument("--bench", action="append", default=None,
                    help="benchmark(s) to plan (default: every paper-scale one)")
    sp.add_argument("--results-dir", default=None, help="override the config's results_dir")
    sp.add_argument("--rehearsal-dir", default=None,
                    help="folder of <bench>.json rehearsal records (default: <results_dir>/rehearsal)")
    sp.set_defaults(func=_cmd_plan)

    sp = sub.add_parser("workflow", help="generate workflow files from the stage table")
    sp.add_argument("action", choices=["dvc"])
    sp.add_argument("--config", default="config/default.yaml")
    sp.add_argument("--out", default="dvc.yaml")
    sp.set_defaults(func=_cmd_workflow)

    sp = sub.add_parser("gpus", help="run a command on N free GPUs of this node (local runs of the workflow)")
    sp.add_argument("--need", type=int, required=True, help="GPUs the command needs (0: it sees none)")
    sp.add_argument("--lock-dir", required=True, help="folder of the per-GPU lock files (shared by the node's jobs)")
    sp.add_argument("--wait", type=float, default=None, help="give up after this many seconds (default: wait)")
    sp.add_argument("cmd", nargs=argparse.REMAINDER, help="-- COMMAND ARGS...")
    sp.set_defaults(func=_cmd_gpus)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        args.func(args)
    except TimeLimitReached as exc:  # not a failure: the workflow resubmits the job, which resumes
        print(f"mct: {exc}", file=sys.stderr)
        return TIME_LIMIT_EXIT
    except MCTError as exc:  # one line, whatever the message holds
        message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        print(f"mct: error: {message}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, permission, a directory in the way: one line naming the path
        from .io import os_error

        print(f"mct: error: {os_error(exc, action='cannot access')}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mct: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
