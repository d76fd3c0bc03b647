"""Training seeds through the stages written once (mct.benchmarks.base) and the numbers made of them:
several seeds in one distill process with their own folders, hashes and resume; evaluate scoring each;
summarize's intervals, comparisons and claims checked against hand-computed t-intervals."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from scipy.stats import t as student_t

from mct.benchmarks.base import RunContext
from mct.benchmarks.digits import Digits
from mct.benchmarks.toy2d import BENCHMARK as TOY
from mct.errors import MCTError
from mct.io import is_complete, stage_outputs
from mct.records import (CurvePoint, RunMetrics, Scores, SeedRun, TeacherMetrics, TeacherRow, provenance,
                         write_record)

TINY = {
    "generator": {"hidden": 16, "layers": 2},
    "score": {"hidden": 16, "layers": 2},
    "init": {"steps": 5, "batch_size": 64},
    "em": {"num_steps": 2, "gamma_eps": 0.1, "gamma_z": 0.05},
    "train": {"iterations": 6, "batch_size": 64, "score_updates": 1, "score_warmup": 2, "checkpoint_every": 2,
              "keep_checkpoints": 3, "log_every": 2, "seeds": 3},
    "eval": {"num_samples": 300},
    "variants": {"mct": {}},
}


def _half(std: float, n: int) -> float:
    return float(student_t.ppf(0.975, n - 1)) * std / math.sqrt(n)


# --------------------------------------------------------------------------- distill and evaluate


def test_seeds_train_in_their_own_folders_with_their_own_hashes(tmp_path):
    ctx = RunContext(tmp_path, progress=False)
    out = TOY.distill(TINY, ctx, "mct")
    run = ctx.run_dir("toy2d", "mct")
    dirs = {0: run, 1: run / "seed-1", 2: run / "seed-2"}
    assert [s["seed"] for s in out["seeds"]] == [0, 1, 2]
    cfg = TOY.parse(TINY, "mct")
    states = {}
    for seed, d in dirs.items():
        state = torch.load(d / "checkpoint.pt", map_location="cpu", weights_only=True)
        assert state["iteration"] == 6 and state["config"]["run_hash"] == TOY.run_hash(TOY.seed_config(cfg, seed))
        assert (d / "train_log.csv").is_file()
        states[seed] = state["generator"]
    assert len({TOY.run_hash(TOY.seed_config(cfg, s)) for s in dirs}) == 3
    # each seed is its own initialisation and run, not a copy of the first
    name = next(iter(states[0]))
    assert not torch.equal(states[0][name], states[1][name]) and not torch.equal(states[1][name], states[2][name])
    # the completion record lists every seed's weights
    assert is_complete(run, "distill")
    from mct.io import completion

    assert set(completion(run, "distill")["files"]) == {"checkpoint.pt", "seed-1/checkpoint.pt",
                                                         "seed-2/checkpoint.pt"}

    # one seed alone (train.seed = 1, seeds = 1) computes the same weights as the second seed here
    alone = RunContext(tmp_path / "alone", progress=False)
    TOY.distill({**TINY, "train": {**TINY["train"], "seed": 1, "seeds": 1}}, alone, "mct")
    single = torch.load(alone.run_dir("toy2d", "mct") / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert all(torch.equal(single["generator"][k], v) for k, v in states[1].items())

    # evaluate scores every seed on the same latents; scores / samples are the first seed's
    rec = TOY.evaluate(TINY, ctx, "mct")
    assert [s.seed for s in rec.seeds] == [0, 1, 2]
    assert rec.seeds[0].scores.metrics == rec.scores.metrics
    assert len({s.scores.metrics["energy_distance"] for s in rec.seeds}) == 3
    assert all(s.iterations == 6 and s.train_seconds > 0 for s in rec.seeds)
    assert (run / "samples.png").is_file() and not (run / "seed-1" / "samples.png").exists()


def test_an_interrupted_seed_resumes_and_finished_seeds_are_not_retrained(tmp_path):
    ctx = RunContext(tmp_path, progress=False)
    TOY.distill(TINY, ctx, "mct")
    run = ctx.run_dir("toy2d", "mct")
    want = torch.load(run / "seed-2" / "checkpoint.pt", map_location="cpu", weights_only=True)
    # the state a kill -9 after seed 2's checkpoint at iteration 4 leaves: no final checkpoint, no record
    (run / "seed-2" / "checkpoint.pt").unlink()
    (run / "seed-2" / "checkpoints" / "ckpt-00000006.pt").unlink()
    (run / ".complete-distill.json").unlink()
    before = {p: p.stat().st_mtime_ns for p in (run / "checkpoint.pt", run / "seed-1" / "checkpoint.pt")}
    with pytest.raises(MCTError, match="seed-2/checkpoint.pt does not exist"):
        TOY.evaluate(TINY, ctx, "mct")  # nothing reads the unfinished seed
    assert not (run / "metrics.json").exists()
    out = TOY.distill(TINY, ctx, "mct")
    assert [s.get("skipped", False) for s in out["seeds"]] == [True, True, False]
    assert {p: p.stat().st_mtime_ns for p in before} == before
    got = torch.load(run / "seed-2" / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert got["iteration"] == 6
    assert all(torch.equal(got["generator"][k], v) for k, v in want["generator"].items())  # resumed exactly
    assert is_complete(run, "distill")


def test_no_completion_record_until_every_seed_is_done(tmp_path):
    ctx = RunContext(tmp_path, progress=False)
    TOY.distill(TINY, ctx, "mct", resume="no", stop_after=4)
    run = ctx.run_dir("toy2d", "mct")
    assert not (run / ".complete-distill.json").exists() and not (run / "seed-1").exists()
    # a further seed's checkpoint of another config is refused by evaluate, one line
    TOY.distill(TINY, ctx, "mct")
    other = {**TINY, "train": {**TINY["train"], "iterations": 8}}
    TOY.distill({**other, "train": {**other["train"], "seeds": 1}}, ctx, "mct")
    with pytest.raises(MCTError, match="seed-1/checkpoint.pt was trained under another config"):
        TOY.evaluate(other, ctx, "mct")


# --------------------------------------------------------------------------- summarize: stats, comparisons, claims

SECTION = {
    "train": {"seeds": 3},
    "variants": {"mct": {}, "k1": {"em": {"num_steps": 1, "gamma_z": 0.0}}, "k4": {"em": {"num_steps": 4}},
                 "no-nc": {"em": {"noise_cancel": False}}, "no-reparam": {"em": {"reparam": False}},
                 "random-init": {"init": {"steps": 0}, "train": {"seed": 10}}},
}
# per variant, per metric, one value per seed (mct's seeds 0, 1, 2; random-init's 10, 11, 12)
TV = {"mct": [0.30, 0.50, 0.40], "k1": [0.40, 0.62, 0.48], "k4": [0.10, 0.20, 0.15],
      "no-nc": [0.25, 0.55, 0.39], "no-reparam": [0.20, 0.41, 0.29], "random-init": [0.80, 1.00, 0.90]}
OFF = {"mct": [0.10, 0.12, 0.11], "k1": [0.2, 0.3, 0.25], "k4": [0.05, 0.06, 0.07], "no-nc": [0.1] * 3,
       "no-reparam": [0.1] * 3, "random-init": [0.1] * 3}
GAP = {"mct": [1.0, 1.2, 1.1]}
EXACT = {"logp_gap": 0.05, "off_mode_mass": 0.011}


def _write_runs(results, bench, section, values: dict[str, dict[str, list[float]]], curves=None):
    """RunMetrics of every variant with the given per-seed values, completed as evaluate completes them."""
    ctx = RunContext(results, progress=False)
    for v in section["variants"]:
        cfg = bench.parse(section, v)
        runs = []
        for i, seed in enumerate(bench.seeds_of(cfg)):
            m = {name: vals[v][i] for name, vals in values.items() if v in vals}
            curve = [CurvePoint(it, fid) for it, fid in (curves or {}).get(v, [[]] * 3)[i]]
            runs.append(SeedRun(seed=seed, scores=Scores(m), iterations=10, train_seconds=1.0, fid_curve=curve))
        rec = RunMetrics(bench=bench.name, variant=v, nfe=1, scores=runs[0].scores,
                         provenance=provenance(bench.run_hash(cfg)), settings=bench.settings(cfg), seeds=runs)
        with stage_outputs(ctx.run_dir(bench.name, v), "evaluate", bench.run_hash(cfg)) as out:
            write_record(out.path("metrics.json"), rec)
    return ctx


def _teacher(ctx, bench, scores: dict, nfe: int):
    with stage_outputs(ctx.bench_dir(bench.name) / "teacher", "teacher_eval") as out:
        write_record(out.path("metrics.json"), TeacherMetrics(
            bench=bench.name, rows=[TeacherRow(nfe=nfe, scores=Scores(scores))], provenance=provenance("x")))


def test_summarize_intervals_comparisons_and_claims_match_the_hand_computation(tmp_path):
    ctx = _write_runs(tmp_path, TOY, SECTION, {"mode_mass_tv": TV, "off_mode_mass": OFF, "logp_gap": GAP})
    _teacher(ctx, TOY, EXACT, 0)
    s = TOY.summarize(SECTION, ctx)

    row = {r.variant: r for r in s.rows}
    st = row["mct"].stats["mode_mass_tv"]  # 0.3, 0.5, 0.4: mean 0.4, std 0.1
    assert row["mct"].seeds == [0, 1, 2] and row["random-init"].seeds == [10, 11, 12]
    assert (st.mean, st.n) == (pytest.approx(0.4), 3) and st.std == pytest.approx(0.1)
    assert (st.lo, st.hi) == (pytest.approx(0.4 - _half(0.1, 3)), pytest.approx(0.4 + _half(0.1, 3)))
    assert row["mct"].metrics["mode_mass_tv"] == pytest.approx(0.4)
    csv = {r["variant"]: r for r in s.csv_rows()}
    assert csv["mct"]["mode_mass_tv_n"] == 3 and csv["mct"]["mode_mass_tv_hi95"] == pytest.approx(st.hi)

    comp = {(c.variant, c.baseline, c.metric): c for c in s.comparisons}
    # mct vs k1, each ablation vs mct, the best K (k4: lowest mean TV) vs k1
    assert {(a, b) for a, b, _ in comp} == {("mct", "k1"), ("no-nc", "mct"), ("no-reparam", "mct"),
                                            ("random-init", "mct"), ("k4", "k1")}
    c = comp[("mct", "k1", "mode_mass_tv")]  # differences -0.10, -0.12, -0.08: mean -0.1, std 0.02
    assert c.paired and c.seeds == [0, 1, 2]
    assert (c.diff.mean, c.diff.std) == (pytest.approx(-0.1), pytest.approx(0.02))
    assert c.diff.hi == pytest.approx(-0.1 + _half(0.02, 3))
    w = comp[("random-init", "mct", "mode_mass_tv")]  # other seeds: Welch
    assert not w.paired and w.seeds == [] and w.diff.mean == pytest.approx(0.5)
    se = math.sqrt(0.01 / 3 + 0.01 / 3)
    df = (0.02 / 3) ** 2 / (2 * (0.01 / 3) ** 2 / 2)
    assert w.diff.lo == pytest.approx(0.5 - student_t.ppf(0.975, df) * se)

    claims = {cl.claim: cl for cl in s.claims}
    by = lambda needle: next(cl for text, cl in claims.items() if needle in text)  # noqa: E731
    # K = 4 vs K = 1: TV differences -0.30, -0.42, -0.33 and off-mode -0.15, -0.24, -0.18: holds
    assert by("K = 4 beats K = 1 on mode_mass_tv").verdict == "holds"
    assert by("K = 4 beats K = 1 on off_mode_mass").verdict == "holds"
    assert by("mct beats K = 1").verdict == "holds"  # always about 0.1 lower
    nc = by("noise cancellation")  # +0.05, -0.05, +0.01: inside the noise
    assert nc.verdict == "inconclusive" and nc.diff.lo < 0 < nc.diff.hi
    rp = by("reparametrised")  # mct is worse than no-reparam by 0.10, 0.09, 0.11 on every seed
    assert rp.verdict == "reversed" and rp.diff.mean == pytest.approx(0.1)
    assert "paired over seeds 0-2 (n = 3)" in rp.basis and "95 % t-interval" in rp.basis
    ri = by("random init")
    assert ri.verdict == "holds" and "Welch, n = 3 vs 3" in ri.basis and ri.values == {
        "mct": pytest.approx(0.4), "random-init": pytest.approx(0.9)}
    gap = by("within 1.5 nats")  # gaps 0.95, 1.15, 1.05: [0.80, 1.30] < 1.5
    assert gap.verdict == "holds" and gap.threshold == 1.5 and gap.diff.mean == pytest.approx(1.05)
    assert gap.diff.hi == pytest.approx(1.05 + _half(0.1, 3)) and gap.diff.hi < 1.5
    off = by("off-mode mass at most 5%")  # 0.10-0.12 against a bar of 0.05: clearly above it
    assert off.verdict == "reversed" and off.threshold == pytest.approx(0.05 - 0.011)
    assert all(cl.verdict in ("holds", "reversed", "inconclusive") and " or " not in cl.claim for cl in s.claims)


def test_summarize_refuses_metrics_of_other_seeds_than_the_config_asks(tmp_path):
    ctx = _write_runs(tmp_path, TOY, SECTION, {"mode_mass_tv": TV})
    more = {**SECTION, "train": {"seeds": 4}}
    with pytest.raises(MCTError, match=r"scored training seeds \[0, 1, 2\], the config asks for \[0, 1, 2, 3\]"):
        TOY.summarize(more, ctx)


DIGITS = {"train": {"seeds": 3},
          "variants": {"mct": {}, "k1": {"em": {"num_steps": 1, "gamma_z": 0.0}},
                       "no-nc": {"em": {"noise_cancel": False}}}}


def test_image_claims_grad_variance_convergence_and_the_teacher_margin(tmp_path):
    bench = Digits("digits")
    fid = {"mct": [1.03, 1.05, 1.04], "k1": [1.10, 1.00, 1.08], "no-nc": [1.5, 1.6, 1.7]}
    var = {"mct": [2.0, 3.0, 2.5]}
    var_no = {"mct": [4.0, 5.5, 4.4]}
    curves = {"mct": [[(20, 1.5), (40, 1.1)], [(20, 1.6), (40, 1.2)], [(20, 1.4), (40, 1.0)]],
              "no-nc": [[(20, 2.5), (40, 1.5)], [(20, 2.7), (40, 1.7)], [(20, 2.4), (40, 1.6)]],
              "k1": [[(20, 1.5), (40, 1.1)]] * 3}
    ctx = _write_runs(tmp_path, bench, DIGITS, {"fid": fid, "mstep_grad_var_nc": var, "mstep_grad_var_no_nc": var_no},
                      curves)
    _teacher(ctx, bench, {"fid": 1.0}, 35)
    recs = bench.variant_records(DIGITS, ctx)
    claims = {cl.claim: cl for cl in bench.claims(DIGITS, ctx, recs)}
    by = lambda needle: next(cl for text, cl in claims.items() if needle in text)  # noqa: E731
    g = by("lowers the M-step gradient variance")  # -2.0, -2.5, -1.9 on mct's own seeds
    assert g.verdict == "holds" and g.diff.mean == pytest.approx(-2.1333333) and "paired" in g.basis
    first = by("lower FID at iteration 20")  # -1.0, -1.1, -1.0
    assert first.verdict == "holds" and first.diff.mean == pytest.approx(-1.0333333)
    assert by("mean FID over training").verdict == "holds"
    assert by("K = 4 beats K = 1 on fid").verdict == "inconclusive"  # -0.07, +0.05, -0.04
    # the teacher: one number; mct - 1.0 = 0.03, 0.05, 0.04: [0.015, 0.065] lies below 10 % of 1.0
    t = by("within 10% of the teacher's at 35 NFE")
    assert t.verdict == "holds" and t.threshold == pytest.approx(0.1) and t.values == {
        "mct": pytest.approx(1.04), "teacher (35 NFE)": 1.0}
    assert t.diff.hi == pytest.approx(0.04 + _half(0.01, 3))
    # and the same numbers with no margin would not say 'approaches': the student is worse than the teacher
    assert t.diff.lo > 0


def test_kill_9_during_the_third_seed_then_rerun(tmp_path, caplog):
    """A real kill -9 of `mct distill` once seed 2 has a checkpoint: no completion record; the rerun
    leaves seeds 0 and 1 alone and resumes seed 2 from its checkpoint."""
    import logging
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    import yaml

    from mct.cli import main

    section = {**TINY, "train": {**TINY["train"], "iterations": 400, "checkpoint_every": 10, "log_every": 10}}
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"results_dir": str(tmp_path / "r"), "progress": False,
                                   "benchmarks": {"toy2d": section}}))
    run = tmp_path / "r" / "toy2d" / "runs" / "mct"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "mct.cli", "distill", "--config", str(cfg), "--bench", "toy2d",
                             "--variant", "mct", "--no-progress"], env=env, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list((run / "seed-2" / "checkpoints").glob("ckpt-*.pt")) and proc.poll() is None \
            and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run / "seed-2" / "checkpoint.pt").exists(), "seed 2 finished before the kill"
    assert not (run / ".complete-distill.json").exists()
    done = {p: p.stat().st_mtime_ns for p in (run / "checkpoint.pt", run / "seed-1" / "checkpoint.pt")}
    caplog.set_level(logging.INFO, logger="mct")
    assert main(["distill", "--config", str(cfg), "--bench", "toy2d", "--variant", "mct", "--no-progress"]) == 0
    assert {p: p.stat().st_mtime_ns for p in done} == done  # seeds 0 and 1 were not trained again
    resumed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("resumed from")]
    assert len(resumed) == 1 and "seed-2" in resumed[0]
    assert is_complete(run, "distill")
    assert torch.load(run / "seed-2" / "checkpoint.pt", map_location="cpu", weights_only=True)["iteration"] == 400


def test_the_workflow_reruns_a_variant_whose_seed_count_changes():
    """train.seeds is in the params of the variant's distill and evaluate jobs and of summarize (a
    Snakemake rerun trigger), though not in any run's hash (the trained seeds are kept)."""
    from pathlib import Path

    from mct.pipeline.jobs import Pipeline

    repo = Path(__file__).resolve().parents[1]

    def jobs(section):
        p = Pipeline("c.yaml", raw={"results_dir": "r", "benchmarks": {"toy2d": section}}, base=repo)
        return {j.name: j.config_hash for j in p.jobs}

    three = {**TINY, "variants": {"mct": {}, "k1": {"em": {"num_steps": 1}}}}
    four = {**three, "variants": {"mct": {"train": {"seeds": 4}}, "k1": {"em": {"num_steps": 1}}}}
    a, b = jobs(three), jobs(four)
    changed = {n for n in a if a[n] != b[n]}
    assert {"distill_toy2d_mct", "evaluate_toy2d_mct"} <= changed
    assert not changed & {"distill_toy2d_k1", "evaluate_toy2d_k1", "teacher_eval_toy2d"}
    assert TOY.run_hash(TOY.parse(three, "mct")) == TOY.run_hash(TOY.parse(four, "mct"))
    assert TOY.variant_hash(TOY.parse(three, "mct")) != TOY.variant_hash(TOY.parse(four, "mct"))


def test_benchmarks_whose_evaluate_scores_one_seed_refuse_more_before_training(tmp_path):
    from mct.benchmarks.base import get_benchmark
    from mct.errors import ConfigError

    assert get_benchmark("sd15").scores_every_seed is False  # (its config needs prompt files to parse)
    for name in ("imagenet64", "imagenet128"):
        with pytest.raises(ConfigError, match=f"{name}: evaluate scores the first training seed only"):
            get_benchmark(name).distill({"train": {"seeds": 2}, "variants": {"mct": {}}},
                                        RunContext(tmp_path, progress=False), "mct")
        assert not (tmp_path / name).exists()


def test_k_pairs_beyond_the_sweep_test_the_claim_under_each_condition(tmp_path):
    """config/evidence.yaml's variants: each K = 16 run outside the sweep is paired with the K = 1 run that
    differs only in K and gamma_z (random init with random init, long with long), never across conditions."""
    section = copy.deepcopy(SECTION)
    section["variants"] = {"k1": {"em": {"num_steps": 1, "gamma_z": 0.0}},
                           "k16-zfrozen": {"em": {"num_steps": 16, "gamma_z": 0.0}},
                           "k1-random": {"em": {"num_steps": 1, "gamma_z": 0.0}, "init": {"steps": 0}},
                           "k16-zfrozen-random": {"em": {"num_steps": 16, "gamma_z": 0.0}, "init": {"steps": 0}},
                           "k1-long": {"em": {"num_steps": 1, "gamma_z": 0.0}, "train": {"iterations": 30}},
                           "k16-zfrozen-long": {"em": {"num_steps": 16, "gamma_z": 0.0}, "train": {"iterations": 30}}}
    # K = 16 better on every seed under random init, worse when long, mixed with teacher init
    tv = {"k1": [0.3, 0.3, 0.3], "k16-zfrozen": [0.2, 0.4, 0.3], "k1-random": [0.5, 0.6, 0.7],
          "k16-zfrozen-random": [0.1, 0.2, 0.25], "k1-long": [0.1, 0.1, 0.12], "k16-zfrozen-long": [0.3, 0.31, 0.35]}
    ctx = _write_runs(tmp_path, TOY, section, {"mode_mass_tv": tv})
    s = TOY.summarize(section, ctx)
    recs = TOY.variant_records(section, ctx)
    from mct.benchmarks.claims import SeedTable
    assert TOY.k_pairs(section, SeedTable(recs)) == [("k16-zfrozen", "k1"), ("k16-zfrozen-random", "k1-random"),
                                                     ("k16-zfrozen-long", "k1-long")]
    tv_claims = {c.basis.split(" on ")[0]: c.verdict for c in s.claims
                 if c.metric == "mode_mass_tv" and "Langevin" in c.claim}
    assert tv_claims["k16-zfrozen-random - k1-random"] == "holds"
    assert tv_claims["k16-zfrozen-long - k1-long"] == "reversed"
    assert tv_claims["k16-zfrozen - k1"] == "inconclusive"
