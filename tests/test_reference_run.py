"""The reference run of config/default.yaml committed under results/ (README "Results"): git
tracks exactly the small outputs the stage table calls committed, and the committed files
belong to the config as it is now (every benchmark and variant, every seed, the run hashes of
today's config, a recorded commit that is in this repository's history)."""

from __future__ import annotations

import csv
import re
import subprocess
from pathlib import Path

import pytest

from mct.benchmarks.base import get_benchmark
from mct.config import load_yaml
from mct.pipeline.jobs import Pipeline
from mct.pipeline.stages import is_committed
from mct.records import RunMetrics, Summary, read_record

REPO = Path(__file__).resolve().parent.parent
CONFIG = "config/default.yaml"


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)


def _in_git() -> bool:
    return _git("rev-parse", "--git-dir").returncode == 0


def _ignored(paths: list[str]) -> set[str]:
    out = _git("check-ignore", "--no-index", *paths)  # --no-index: as .gitignore says, whatever is tracked now
    return set(out.stdout.split())


@pytest.mark.skipif(not _in_git(), reason="needs the git checkout")
def test_gitignore_commits_exactly_the_committed_outputs():
    pipe = Pipeline(CONFIG, raw=load_yaml(REPO / CONFIG), base=REPO)
    files = {}
    for j in pipe.jobs:
        for p in j.files:
            if j.directory:  # a folder output: what it holds
                files[f"{p}/x.json"] = is_committed(p, True)
            else:
                files[p] = is_committed(p)
    # beside the declared outputs: completion records (committed), checkpoints of seeds and samples (not)
    files.update({"results/toy2d/runs/mct/.complete-evaluate.json": True,
                  "results/toy2d/runs/mct/seed-1/metrics.json": True,
                  "results/toy2d/runs/mct/seed-1/checkpoint.pt": False,
                  "results/toy2d/runs/mct/samples.npz": False,
                  "results/quick/toy2d/summary.csv": False})
    ignored = _ignored(list(files))
    wrong = {p: ("committed by the stage table but git-ignored" if want else "DVC-cached but not git-ignored")
             for p, want in files.items() if (p in ignored) == want}
    assert not wrong, wrong
    assert any(files.values()) and not all(files.values())


def _committed_records() -> list[Path]:
    return sorted((REPO / "results").glob("*/runs/*/metrics.json"))


REFERENCE = pytest.mark.skipif(not _committed_records(), reason="no reference run committed under results/")


@REFERENCE
def test_reference_run_has_every_variant_and_seed_of_the_config():
    root = load_yaml(REPO / CONFIG)
    head = _git("rev-parse", "HEAD").stdout.strip() if _in_git() else None
    for name, section in root["benchmarks"].items():
        bench = get_benchmark(name)
        variants = bench.variant_names(section)
        bdir = REPO / "results" / name
        for v in variants:
            cfg = bench.parse(section, v)
            rec = read_record(bdir / "runs" / v / "metrics.json", RunMetrics)
            assert (rec.bench, rec.variant) == (name, v)
            # made for the weights today's config trains (run hash), by a recorded, clean commit
            assert rec.provenance.config_hash == bench.run_hash(cfg), f"{name}/{v}: rerun the default config"
            assert re.fullmatch(r"[0-9a-f]{40}", rec.provenance.commit or ""), f"{name}/{v}: no commit recorded"
            assert rec.provenance.dirty is False, f"{name}/{v} was made from uncommitted code"
            if head:
                assert _git("merge-base", "--is-ancestor", rec.provenance.commit, head).returncode == 0
            seeds = [cfg.train.seed + i for i in range(cfg.train.seeds)]
            assert [s.seed for s in rec.seeds] == seeds, f"{name}/{v}: seeds"
        summary = read_record(bdir / "summary.json", Summary)
        assert [r.variant for r in summary.rows] == variants
        with open(bdir / "summary.csv", newline="") as f:
            assert [r["variant"] for r in csv.DictReader(f)] == variants
    assert (REPO / "results" / "report.html").stat().st_size > 0
