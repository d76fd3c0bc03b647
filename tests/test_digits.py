"""The digits benchmark end to end through the CLI (in-process) on config/quick.yaml's
tiny settings: teacher training and evaluation, feature network, every variant's
distillation and evaluation, the MCMC correction and the summary."""

import csv
import json
import os

import pytest
import yaml

from mct.cli import main
from mct.records import AuxMetrics, CorrectionMetrics, RunMetrics, TeacherMetrics, read_record

QUICK = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "config", "quick.yaml")


def _run(*argv):
    rc = main([*argv, "--no-progress"])
    assert rc == 0, f"mct {' '.join(argv)} exited with {rc}"


def _json(path):
    with open(path) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """Run the whole quick digits pipeline once; tests below inspect its outputs."""
    res = tmp_path_factory.mktemp("digits_quick")
    common = ["--config", QUICK, "--bench", "digits", "--results-dir", str(res)]
    with open(QUICK) as f:
        variants = list(yaml.safe_load(f)["benchmarks"]["digits"]["variants"])
    _run("teacher", "train", *common)
    _run("features", *common)
    _run("teacher", "eval", *common)
    for v in variants:
        _run("distill", *common, "--variant", v)
        _run("evaluate", *common, "--variant", v)
    _run("correct", *common, "--variant", "mct")
    _run("summarize", *common)
    return res / "digits", variants, None


def test_teacher_and_features_outputs(quick_run):
    root, _, _ = quick_run
    for name in ("checkpoint.pt", "metrics.json", "train_log.csv", "samples.png"):
        assert (root / "teacher" / name).is_file(), name
    tm = read_record(root / "teacher" / "metrics.json", TeacherMetrics)
    assert [r.nfe for r in tm.rows] == [3, 7]
    assert all(r.nfe_measured == r.nfe for r in tm.rows)  # Heun: 2N - 1 denoiser calls, counted
    for r in tm.rows:
        for k in ("fid", "kid_mean", "precision", "recall", "class_accuracy", "class_entropy"):
            assert isinstance(r.scores.get(k), float), k
    fm = read_record(root / "features" / "metrics.json", AuxMetrics)
    assert 0 <= fm.metrics["heldout_accuracy"] <= 1 and fm.metrics["heldout_size"] == 450
    assert tm.real_floor.get("fid") == fm.real_floor.get("fid") >= 0  # the teacher table carries the floor
    with open(root / "teacher" / "train_log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["iteration"]) for r in rows] == [10, 20]


def test_every_variant_distilled_and_scored(quick_run):
    root, variants, _ = quick_run
    for v in variants:
        run = root / "runs" / v
        for name in ("checkpoint.pt", "train_log.csv", "metrics.json", "samples.png", "eval_log.csv"):
            assert (run / name).is_file(), (v, name)
        rec = read_record(run / "metrics.json", RunMetrics)
        m = rec.scores.metrics
        for k in ("fid", "kid_mean", "precision", "recall", "class_entropy", "class_accuracy",
                  "mstep_grad_var", "mstep_grad_var_nc", "mstep_grad_var_no_nc"):
            assert isinstance(m[k], float), (v, k)
        assert rec.nfe == 1 and rec.iterations == 4 and m["fid"] >= 0
        assert [p.iteration for p in rec.fid_curve] == [2, 4]
        with open(run / "eval_log.csv") as f:
            curve = list(csv.DictReader(f))
        assert [int(r["iteration"]) for r in curve] == [2, 4] and all(float(r["fid"]) >= 0 for r in curve)
    recs = {v: read_record(root / "runs" / v / "metrics.json", RunMetrics) for v in variants}
    by = {v: r.settings for v, r in recs.items()}
    assert by["no-reparam"]["reparam"] is False and by["mct"]["reparam"] is True
    assert by["no-nc"]["noise_cancel"] is False
    assert recs["no-nc"].scores.get("mstep_grad_var") == recs["no-nc"].scores.get("mstep_grad_var_no_nc")
    assert by["random-init"]["init"] == "random"
    assert [by[f"k{k}"]["K"] for k in (1, 2, 4, 8)] == [1, 2, 4, 8]
    assert by["k1"]["gamma_z"] == 0.0


def test_correction_and_summary(quick_run):
    root, variants, _ = quick_run
    corr = root / "runs" / "mct" / "correct"
    for name in ("before.png", "after.png", "metrics.json"):
        assert (corr / name).is_file(), name
    cm = read_record(corr / "metrics.json", CorrectionMetrics)
    assert cm.steps == 6 and cm.before.get("fid") >= 0 and cm.after.get("fid") >= 0
    assert cm.z_moved_rms > 0 and cm.image_moved_rms > 0
    with open(root / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["variant"] for r in rows] == variants
    assert all(r["nfe"] == "1" for r in rows)
    # mct and k1 ran two training seeds (quick.yaml): their rows carry n = 2 and an interval
    by = {r["variant"]: r for r in rows}
    assert by["mct"]["seeds"] == "0 1" and by["mct"]["fid_n"] == "2" and by["k2"]["fid_n"] == "1"
    lo, mean, hi = (float(by["mct"][f"fid_{k}"]) for k in ("lo95", "mean", "hi95"))
    assert lo <= mean <= hi and by["k2"]["fid_lo95"] == ""
    rec = read_record(root / "runs" / "mct" / "metrics.json", RunMetrics)
    assert [s.seed for s in rec.seeds] == [0, 1] and (root / "runs" / "mct" / "seed-1" / "checkpoint.pt").is_file()
    fids = [s.scores.get("fid") for s in rec.seeds]
    assert float(by["mct"]["fid_mean"]) == pytest.approx(sum(fids) / 2) and fids[0] == rec.scores.get("fid")
    summary = _json(root / "summary.json")
    comps = {(c["variant"], c["baseline"], c["metric"]): c for c in summary["comparisons"]}
    assert comps[("mct", "k1", "fid")]["paired"] and comps[("mct", "k1", "fid")]["seeds"] == [0, 1]
    assert comps[("mct", "k1", "fid")]["diff"]["mean"] == pytest.approx(
        sum(fids) / 2 - float(by["k1"]["fid_mean"]))
    claims = {c["claim"]: c for c in summary["claims"]}
    assert any("within 10% of the teacher's at 7 NFE" in n for n in claims)
    assert any("beats K = 1" in n for n in claims) and any("gradient variance" in n for n in claims)
    assert all(c["verdict"] in ("holds", "reversed", "inconclusive") and c["basis"] for c in claims.values())
    # one seed of no-nc against two of mct: no interval on one side, so no verdict but 'inconclusive'
    nc = next(c for n, c in claims.items() if "better final student" in n)
    assert nc["verdict"] == "inconclusive" and "no interval" in nc["basis"]


def test_distill_resume_keeps_the_finished_run(quick_run):
    import torch

    root, _, _ = quick_run
    path = root / "runs" / "k1" / "checkpoint.pt"
    before = torch.load(path, weights_only=True)
    _run("distill", "--config", QUICK, "--bench", "digits", "--results-dir", str(root.parent), "--variant", "k1")
    after = torch.load(path, weights_only=True)
    assert after["iteration"] == before["iteration"] == 4
    for k, v in before["generator_ema"].items():
        assert torch.equal(v, after["generator_ema"][k]), k


def test_stage_errors_are_one_line(tmp_path, capsys):
    common = ["--config", QUICK, "--bench", "digits", "--results-dir", str(tmp_path), "--no-progress"]
    assert main(["distill", *common, "--variant", "mct"]) == 2
    err = capsys.readouterr().err
    assert "teacher" in err and "does not exist" in err and "Traceback" not in err
    assert main(["distill", *common, "--variant", "nope"]) == 2
    assert "unknown variant 'nope'" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"benchmarks": {"digits": {"teacher": {"eval_nfe": [8]}}}}))
    assert main(["config", "check", "--config", str(bad)]) == 2
    assert "eval_nfe" in capsys.readouterr().err
    bad.write_text(yaml.safe_dump({"benchmarks": {"digits": {"teacher": {"net": {"widht": 3}}}}}))
    assert main(["config", "check", "--config", str(bad)]) == 2
    assert "benchmarks.digits.teacher.net.widht" in capsys.readouterr().err


def test_mnist_config_and_tiny_pipeline(tmp_path):
    """config/mnist.yaml validates, and the same code runs on 28x28 MNIST (tiny sizes here)."""
    from mct.config import deep_merge

    mnist = os.path.join(os.path.dirname(QUICK), "mnist.yaml")
    assert main(["config", "check", "--config", mnist]) == 0
    with open(mnist) as f:
        raw = yaml.safe_load(f)
    tiny = {"num_threads": 1,
            "teacher": {"net": {"model_channels": 8}, "iterations": 4, "batch_size": 8, "eval_nfe": [3], "log_every": 2},
            "features": {"width": 4, "feature_dim": 8, "iterations": 4},
            "eval": {"num_samples": 20, "during_samples": 20, "kid_subset_size": 10, "kid_subsets": 2,
                     "grad_var_batches": 2, "grid": 20},
            "correct": {"steps": 2, "chunk": 2, "num_samples": 10},
            "train": {"iterations": 2, "batch_size": 4, "eval_every": 2, "checkpoint_every": 2, "log_every": 1}}
    section = deep_merge(raw["benchmarks"]["mnist"], tiny)
    section["variants"] = {"mct": {}}
    cfg = tmp_path / "mnist_tiny.yaml"
    cfg.write_text(yaml.safe_dump({"results_dir": str(tmp_path / "res"), "benchmarks": {"mnist": section}}))
    common = ["--config", str(cfg), "--bench", "mnist"]
    for words in (("teacher", "train"), ("features",), ("teacher", "eval"), ("distill",), ("evaluate",),
                  ("correct",), ("summarize",)):
        extra = ["--variant", "mct"] if words[0] in ("distill", "evaluate", "correct") else []
        _run(*words, *common, *extra)
    m = read_record(tmp_path / "res" / "mnist" / "runs" / "mct" / "metrics.json", RunMetrics)
    assert m.bench == "mnist" and m.nfe == 1
    t = read_record(tmp_path / "res" / "mnist" / "features" / "metrics.json", AuxMetrics)
    assert t.metrics["heldout_size"] == 1000 and t.metrics["train_size"] == 4000


def test_same_commit_same_machine_gives_identical_metrics(quick_run, tmp_path):
    """Reproducibility as README states it: rerunning the chain (feature net, teacher, one
    variant's distillation and evaluation) from scratch in another folder gives bit-identical
    metrics on the same machine (every random draw comes from a seeded generator; one torch
    thread per stage fixes the order of float reductions)."""
    root, _, _ = quick_run
    common = ["--config", QUICK, "--bench", "digits", "--results-dir", str(tmp_path)]
    _run("teacher", "train", *common)
    _run("features", *common)
    _run("teacher", "eval", *common)
    _run("distill", *common, "--variant", "mct")
    _run("evaluate", *common, "--variant", "mct")
    again = tmp_path / "digits"
    t1, t2 = (read_record(r / "teacher" / "metrics.json", TeacherMetrics) for r in (root, again))
    assert [r.scores for r in t1.rows] == [r.scores for r in t2.rows]
    m1, m2 = (read_record(r / "runs" / "mct" / "metrics.json", RunMetrics) for r in (root, again))
    # every metric but the one that is a wall-clock time (mstep_grad_seconds)
    untimed = lambda sc: {k: v for k, v in sc.metrics.items() if not k.endswith("_seconds")}  # noqa: E731
    assert untimed(m1.scores) == untimed(m2.scores) and m1.fid_curve == m2.fid_curve
    assert m1.scores.class_hist == m2.scores.class_hist and "mstep_grad_var_nc" in untimed(m1.scores)
    assert [untimed(s.scores) for s in m1.seeds] == [untimed(s.scores) for s in m2.seeds]
    assert m1.provenance.config_hash == m2.provenance.config_hash
