"""`mct report`: results/report.html rendered from a results tree of records, checked
statically (tables, numbers, captions written from the numbers) and in headless Chromium
through Playwright (every image loads, the tables hold numbers, nothing is requested from
the network), with a screenshot.

The results tree is written here through :mod:`mct.records` (:func:`make_results`), exactly
as the stages write it, not by running the pipeline. Set ``MCT_REPORT_RESULTS`` (and
optionally ``MCT_REPORT_CONFIG``) to render a real tree instead, e.g. the quick run's
``results/quick`` with ``config/quick.yaml``; the value checks are then skipped.

The screenshot goes to ``<tmp>/report.png`` and is copied, with the HTML, to
``results/test-report/`` in the repository (``MCT_REPORT_SCREENSHOT_DIR`` overrides).
Chromium is required when ``CI`` is set; elsewhere the browser tests are skipped without it."""

from __future__ import annotations

import html as html_lib
import io
import math
import os
import re
import shutil
from types import SimpleNamespace
from html import unescape as html_unescape
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from mct.errors import MCTError
from mct.records import (AuxMetrics, BenchRecord, Claim, Comparison, Interval, CorrectionMetrics, CurvePoint, EMOverhead,
                         Memory, MixtureTeacher, Provenance, RunMetrics, Scores, SeedRun, Speed, Summary, SummaryRow,
                         TeacherMetrics, TeacherRow, read_record, write_record)
from mct import stats
from mct.report.browser import check_page, find_chromium
from mct.report.build import build_report
from mct.report.tables import fmt_auto, fmt_duration, number_cell

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ["mct", "no-reparam", "no-nc", "random-init", "k1", "k2", "k4", "k16"]
TOY_VARIANTS = VARIANTS + ["k16-zfrozen", "k1-zmoving"]
K_OF = {"mct": 8, "no-reparam": 8, "no-nc": 8, "random-init": 8, "k1": 1, "k2": 2, "k4": 4, "k16": 16, "k16-zfrozen": 16,
        "k1-zmoving": 1}
# training seeds per variant (the first seed's scores are RunMetrics.scores); k2 and k4 ran one seed
N_SEEDS = {"mct": 3, "no-reparam": 3, "no-nc": 3, "random-init": 3, "k1": 3, "k16": 3, "k16-zfrozen": 2, "k1-zmoving": 2}
JITTER = [0.0, 0.006, -0.004, 0.003, -0.005]  # relative seed-to-seed change of every metric
COUNTS = ("modes_covered", "num_modes", "classes_covered", "class_entropy_max")
PROV = Provenance(commit="0123456789abcdef0123456789abcdef01234567", dirty=False, config_hash="feedfacecafebeef",
                  packages={"torch": "2.14.1"}, created="2026-11-30T10:00:00+00:00")
DIGITS_FID = {"mct": 5.31, "no-reparam": 6.02, "no-nc": 5.77, "random-init": 38.9, "k1": 9.85, "k2": 7.1, "k4": 5.6,
              "k16": 5.12}


def settings(v: str) -> dict:
    k = K_OF[v]
    return {"K": k, "reparam": v != "no-reparam", "noise_cancel": v != "no-nc",
            "init": "random" if v == "random-init" else "teacher", "gamma_eps": 0.1,
            "gamma_z": 0.05 if v == "k1-zmoving" else (0.0 if k == 1 or v == "k16-zfrozen" else 0.05), "seed": 0}


def seed_runs(v: str, metrics: dict, curve: list | None = None) -> list[SeedRun]:
    """The variant's training seeds: seed 0 has ``metrics`` exactly, seed i every metric moved by JITTER[i]."""
    out = []
    for i in range(N_SEEDS.get(v, 1)):
        m = {k: (x if k in COUNTS else x * (1 + JITTER[i])) for k, x in metrics.items()}
        m.update({k: min(1.0, m[k]) for k in ("precision", "recall") if k in m})
        c = [CurvePoint(iteration=p.iteration, fid=p.fid * (1 + JITTER[i])) for p in (curve or [])]
        out.append(SeedRun(seed=i, scores=Scores(m), iterations=600, train_seconds=100.0, fid_curve=c))
    return out


def summary_of(bench: str, runs: dict[str, RunMetrics], claims=(), comparisons=()) -> Summary:
    """What ``mct summarize`` writes: per variant the means and intervals over its seeds (mct.stats)."""
    rows = []
    for v, r in runs.items():
        st = {m: stats.interval([s.scores.metrics[m] for s in r.seeds]) for m in r.seeds[0].scores.metrics}
        rows.append(SummaryRow(variant=v, nfe=1, settings=r.settings, metrics={m: i.mean for m, i in st.items()},
                               seeds=[s.seed for s in r.seeds], stats=st))
    return Summary(bench=bench, rows=rows, provenance=PROV, claims=list(claims), comparisons=list(comparisons))


def claim_of(claim: str, runs: dict, variant: str, baseline: str, metric: str, better: str) -> tuple[Claim, Comparison]:
    """A claim decided as summarize decides it: the paired interval of variant - baseline, mct.stats.verdict."""
    a = {s.seed: s.scores.metrics[metric] for s in runs[variant].seeds}
    z = {s.seed: s.scores.metrics[metric] for s in runs[baseline].seeds}
    diff, paired, seeds = stats.difference(a, z)
    basis = f"{variant} - {baseline}, {len(seeds)} seeds"
    return (Claim(claim=claim, verdict=stats.verdict(diff, better), metric=metric, better=better, basis=basis, diff=diff,
                  values={variant: sum(a.values()) / len(a), baseline: sum(z.values()) / len(z)}),
            Comparison(variant=variant, baseline=baseline, metric=metric, diff=diff, paired=paired, seeds=seeds))


# --- a results tree of records ----------------------------------------------------------

def _png(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _digit_grid(rng: np.random.Generator, n: int = 64, size: int = 8, noise: float = 0.1) -> bytes:
    """An 8x8 grid of 8x8 'digits' (glyphs drawn small, plus noise), padded like make_grid."""
    from PIL import Image, ImageDraw

    pad, per_row = 1, 8
    rows = math.ceil(n / per_row)
    grid = np.full((rows * (size + pad) + pad, per_row * (size + pad) + pad), 255, np.uint8)
    for i in range(n):
        glyph = Image.new("L", (16, 16), 0)
        ImageDraw.Draw(glyph).text((4, 2), str(i % 10), fill=255)
        g = np.asarray(glyph.resize((size, size), Image.BILINEAR), float) / 255
        g = np.clip(g + noise * rng.standard_normal(g.shape), 0, 1)
        r, c = divmod(i, per_row)
        grid[pad + r * (size + pad): pad + r * (size + pad) + size,
             pad + c * (size + pad): pad + c * (size + pad) + size] = (255 * (1 - g)).astype(np.uint8)
    return _png(grid)


def _bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _train_log(run: Path, rng, noisy: bool, iters: int = 600) -> None:
    lines = ["iteration,loss_g,grad_norm_g,eps_rms,nu_rms,seconds"]
    scale = 0.35 if noisy else 0.12
    for it in range(10, iters + 1, 10):
        lines.append(f"{it},{-0.1 * math.log(it):.5f},{abs(1.0 + scale * rng.standard_normal()):.5f},"
                     f"{1.0 + 0.02 * rng.standard_normal():.5f},{0.9 + 0.02 * rng.standard_normal():.5f},{it * 0.2:.3f}")
    _bytes(run / "train_log.csv", ("\n".join(lines) + "\n").encode())


# a family of toy mixtures (toy2d-<suffix>, found on disk): mode-mass TV of K = 1 and K = 16 per seed,
# chosen so that "more K covers more modes" holds on grid9, is reversed on two, inconclusive on ring16
TOY_FAMILY = {"toy2d-grid9": ([0.12, 0.125, 0.118], [0.04, 0.042, 0.039]),
              "toy2d-two": ([0.05, 0.051, 0.049], [0.08, 0.082, 0.079]),
              "toy2d-ring16": ([0.10, 0.11, 0.09], [0.095, 0.075, 0.115])}


def toy_family(res: Path, name: str, tvs: tuple[list[float], list[float]]) -> None:
    """One mixture of the family: its exact teacher row, k1 and k16 with three seeds, summarize's claim."""
    write_record(res / name / "teacher.json", MixtureTeacher(bench=name, means=[[0.0, 0.0], [4.0, 0.0]], stds=[0.25] * 2,
                                                             weights=[0.9, 0.1], provenance=PROV))
    write_record(TeacherMetrics.path(res, bench=name), TeacherMetrics(
        bench=name, provenance=PROV, sampler="exact", rows=[TeacherRow(nfe=0, sampler="exact", scores=Scores(
            {"mode_mass_tv": 0.004, "off_mode_mass": 0.011, "min_mode_recall": 0.98, "logp_gap": 0.0}))]))
    runs = {}
    for v, tv in zip(("k1", "k16"), tvs):
        seeds = [SeedRun(seed=i, scores=Scores({"mode_mass_tv": x, "off_mode_mass": 2 * x, "min_mode_recall": 1 - x,
                                                "logp_gap": 10 * x})) for i, x in enumerate(tv)]
        runs[v] = RunMetrics(bench=name, variant=v, nfe=1, scores=seeds[0].scores, settings=settings(v), provenance=PROV,
                             seeds=seeds)
        write_record(RunMetrics.path(res, bench=name, variant=v), runs[v])
    claim, cmp = claim_of("more K covers more modes (K = 16 vs K = 1)", runs, "k16", "k1", "mode_mass_tv", "lower")
    write_record(Summary.path(res, bench=name), summary_of(name, runs, [claim], [cmp]))


def make_results(root: Path, benches=("toy2d", "toy2d-family", "digits", "digits-text")) -> tuple[Path, dict]:
    """Write a results tree of records for toy2d, digits and digits-text, speed records, and
    return (results_dir, raw config). ``benches`` keeps only those (files and config)."""
    rng = np.random.default_rng(0)
    res = root / "results"
    if "toy2d" in benches:
        import torch

        from mct.metrics.toy import toy_metrics
        from mct.teachers.gmm import ring_gmm

        angles = np.arange(8) * 2 * np.pi / 8
        means = 4 * np.stack([np.cos(angles), np.sin(angles)], 1)
        w = np.arange(1, 9) / 36
        write_record(res / "toy2d/teacher.json", MixtureTeacher(bench="toy2d", means=means.tolist(), stds=[0.25] * 8,
                                                                 weights=w.tolist(), provenance=PROV))
        # the metrics cannot hide a bad student: off-mode mass, per-mode recall, log-p gap (mct.metrics.toy),
        # measured on the written samples against exact ones; the exact row as `mct teacher eval` writes it
        mix, g = ring_gmm(), torch.Generator().manual_seed(0)
        ref = mix.sample(3000, generator=g)
        new = ("off_mode_mass", "min_mode_recall", "logp_gap")
        exact = toy_metrics(mix.sample(3000, generator=g), mix, ref)
        write_record(TeacherMetrics.path(res, bench="toy2d"), TeacherMetrics(
            bench="toy2d", provenance=PROV, sampler="exact", reference="exact samples (eval.seed)",
            rows=[TeacherRow(nfe=0, nfe_measured=0, sampler="exact", num_samples=3000, sample_seconds=0.001,
                             scores=Scores.from_flat(exact))]))
        toy_runs = {}
        for v in TOY_VARIANTS:
            k = K_OF[v]
            temp = {1: 6.0, 2: 2.0, 4: 1.2}.get(k, 1.0) if v != "random-init" else 1.4
            p = w ** temp / (w ** temp).sum()
            lab = rng.choice(8, size=3000, p=p)
            x = means[lab] + 0.27 * rng.standard_normal((3000, 2))
            buf = io.BytesIO()
            np.savez_compressed(buf, x=x.astype(np.float32))
            run = res / "toy2d/runs" / v
            _bytes(run / "samples.npz", buf.getvalue())
            mass = np.bincount(lab, minlength=8) / len(lab)
            tv = float(0.5 * np.abs(mass - w).sum())
            hard = toy_metrics(torch.as_tensor(x, dtype=torch.float32), mix, ref)
            rng.random()  # (the draw the tree's other numbers follow)
            scores = Scores(metrics={"mode_mass_tv": round(tv, 4), "modes_covered": float((mass >= 0.25 * w).sum()),
                                     "num_modes": 8.0, "mean_true_logpdf": round(hard["mean_true_logpdf"], 4),
                                     "energy_distance": round(tv * 0.3 + 0.002, 5), **{k: hard[k] for k in new}},
                            mode_mass=[round(float(a), 5) for a in mass], true_mode_weight=[round(float(a), 5) for a in w],
                            mode_recall=hard["mode_recall"])
            toy_runs[v] = RunMetrics(
                bench="toy2d", variant=v, nfe=1, scores=scores, settings=settings(v), provenance=PROV,
                num_samples=3000, iterations=600, train_seconds=round(40 + 6 * k, 3), sample_seconds=0.01,
                seeds=seed_runs(v, scores.metrics))
            write_record(RunMetrics.path(res, bench="toy2d", variant=v), toy_runs[v])
        claim, cmp = claim_of("more K covers more modes (K = 16 vs K = 1)", toy_runs, "k16", "k1", "mode_mass_tv",
                              "lower")
        write_record(Summary.path(res, bench="toy2d"), summary_of("toy2d", toy_runs, [claim], [cmp]))
        for name, tvs in TOY_FAMILY.items():
            if "toy2d-family" in benches:
                toy_family(res, name, tvs)
    if "digits" in benches:
        floor = Scores({"fid": 1.12, "kid_mean": 0.0002, "kid_std": 0.0001})
        rows = [TeacherRow(nfe=n, nfe_measured=n, sample_seconds=10.0 * n, num_samples=2000,
                           scores=Scores({"fid": f, "kid_mean": kk, "kid_std": 0.0004, "precision": p, "recall": r,
                                          "class_entropy": 2.302, "class_accuracy": 0.97}, class_hist=[0.1] * 10))
                for n, f, kk, p, r in [(7, 21.37, 0.0183, 0.61, 0.52), (15, 6.42, 0.0041, 0.74, 0.66),
                                       (35, 4.18, 0.0022, 0.78, 0.70)]]
        write_record(TeacherMetrics.path(res, bench="digits"), TeacherMetrics(
            bench="digits", rows=rows, provenance=PROV, sampler="heun", guidance=1.0, reference="held-out split",
            real_floor=floor, init_generator=Scores({"fid": 60.0})))
        _bytes(res / "digits/teacher/samples.png", _digit_grid(rng, noise=0.05))
        write_record(AuxMetrics.path(res, bench="digits", net="features"), AuxMetrics(
            bench="digits", net="features", provenance=PROV, train_seconds=35.2, real_floor=floor,
            metrics={"heldout_accuracy": 0.9833, "train_accuracy": 0.999, "params": 52000.0}))
        digit_runs = {}
        for v in VARIANTS:
            k, fid = K_OF[v], DIGITS_FID[v]
            # class histograms that differ only in the fourth decimal of their entropy (2.3002 .. 2.3012)
            hist = np.full(10, 0.1) + np.linspace(-1, 1, 10) * (0.004 if k == 1 else 0.002)
            ent = float(-(hist * np.log(hist)).sum())
            var_nc = 0.8 + 0.1 * k
            scores = Scores(metrics={"fid": fid, "kid_mean": round(fid / 2000, 5), "kid_std": 0.0005,
                                     "precision": round(0.8 - fid / 100, 4), "recall": round(0.72 - fid / 60, 4),
                                     "class_entropy": round(ent, 5), "class_entropy_max": math.log(10),
                                     "classes_covered": 10.0, "class_accuracy": round(0.9 - fid / 100, 4),
                                     "mstep_grad_var_nc": var_nc, "mstep_grad_var_no_nc": var_nc * 3.4,
                                     "mstep_grad_var": var_nc * (3.4 if v == "no-nc" else 1.0)},
                            class_hist=[round(float(h), 6) for h in hist])
            curve = [CurvePoint(iteration=it, fid=round(fid + 40 * math.exp(-it / 150), 3)) for it in range(100, 601, 100)]
            run = res / "digits/runs" / v
            if v == "no-reparam":  # the collapse the report has to state
                scores.metrics.update(precision=1.0, recall=0.0)
            digit_runs[v] = RunMetrics(
                bench="digits", variant=v, nfe=1, scores=scores, settings=settings(v), provenance=PROV,
                num_samples=2000, iterations=600, train_seconds=round(300 + 30 * k, 1), sample_seconds=0.4,
                fid_curve=curve, seeds=seed_runs(v, scores.metrics, curve))
            write_record(RunMetrics.path(res, bench="digits", variant=v), digit_runs[v])
            _bytes(run / "samples.png", _digit_grid(rng, noise=0.1 + fid / 100))
            _train_log(run, rng, noisy=(v == "no-nc"))
        corr = res / "digits/runs/mct/correct"
        _bytes(corr / "before.png", _digit_grid(rng, noise=0.25))
        _bytes(corr / "after.png", _digit_grid(rng, noise=0.05))
        write_record(CorrectionMetrics.path(res, bench="digits", variant="mct"), CorrectionMetrics(
            bench="digits", variant="mct", steps=300, sigma=0.2, gamma_eps=0.05, gamma_z=0.02, num_samples=2000,
            seconds=14.2, before=Scores({"fid": 5.31, "kid_mean": 0.0027, "kid_std": 0.0004, "precision": 0.75}),
            after=Scores({"fid": 4.92, "kid_mean": 0.0031, "kid_std": 0.0006, "precision": 0.78}),
            generator_at_z_K=Scores({"fid": 5.05, "kid_mean": 0.0029, "precision": 0.76}), provenance=PROV,
            z_moved_rms=0.31, image_moved_rms=0.12))
        beats_k1, cmp = claim_of("mct beats k1 (reverse KL) on FID", digit_runs, "mct", "k1", "fid", "lower")
        nc, cmp_nc = claim_of("noise cancellation lowers FID", digit_runs, "no-nc", "mct", "fid", "higher")
        claims = [Claim(claim="one-step mct FID <= teacher FID at 35 NFE", verdict="reversed", metric="fid",
                        basis="mct - teacher, 3 seeds", diff=Interval(mean=1.13, n=3, std=0.2, lo=0.63, hi=1.63)),
                  beats_k1, nc,
                  Claim(claim="reparametrisation beats (x, z) sampling", verdict="inconclusive", metric="fid",
                        better="higher", basis="no-reparam - mct, 3 seeds",
                        diff=Interval(mean=0.1, n=3, std=0.3, lo=-0.65, hi=0.85))]
        write_record(Summary.path(res, bench="digits"), summary_of("digits", digit_runs, claims, [cmp, cmp_nc]))
        write_record(BenchRecord.path(res, bench="digits"), BenchRecord(
            bench="digits", device="cpu", device_name="test CPU", provenance=PROV, batch_size=256, wall_seconds=18.2,
            student=Speed(name="student (one step)", nfe=1, images_per_s=6930.0, ms_per_batch=36.9, batch_size=256),
            teacher=[Speed(name=f"teacher Heun NFE {n}", nfe=n, images_per_s=ips, ms_per_batch=256e3 / ips,
                           batch_size=256, speedup=round(6930.0 / ips, 3), target_met=True)
                     for n, ips in ((35, 212.0), (15, 488.0), (7, 1020.0))],
            em=EMOverhead(K=8, iteration_ms=41.0, passes_sum_ms=38.5, overhead_ratio=1.065, target=1.1, target_met=True),
            memory=Memory(method="peak RSS slope", per_sample_bytes={"student_sampling": 52000, "em_iteration": 900000})))
    if "digits-text" in benches:
        write_record(TeacherMetrics.path(res, bench="digits-text"), TeacherMetrics(
            bench="digits-text", provenance=PROV, sampler="heun", guidance=2.0,
            rows=[TeacherRow(nfe=35, sample_seconds=80.5, scores=Scores({"fid": 7.5, "kid_mean": 0.003,
                                                                         "clip_score": 27.81, "class_accuracy": 0.95}))],
            real_floor=Scores({"fid": 1.12})))
        _bytes(res / "digits-text/teacher/samples.png", _digit_grid(rng))
        write_record(AuxMetrics.path(res, bench="digits-text", net="clip"), AuxMetrics(
            bench="digits-text", net="clip", provenance=PROV, train_seconds=48.0,
            metrics={"clip_score_real": 30.1, "clip_score_mismatched": 12.4, "zero_shot_accuracy": 0.931}))
        for v, fid, cs in (("mct", 8.1, 27.6), ("k1", 11.3, 26.8)):
            write_record(RunMetrics.path(res, bench="digits-text", variant=v), RunMetrics(
                bench="digits-text", variant=v, nfe=1, provenance=PROV, settings=settings(v), iterations=500,
                train_seconds=250.0, sample_seconds=0.3,
                scores=Scores({"fid": fid, "kid_mean": 0.004, "precision": 0.7, "recall": 0.6, "clip_score": cs,
                               "class_accuracy": 0.9})))
            _bytes(res / "digits-text/runs" / v / "samples.png", _digit_grid(rng))
        write_record(BenchRecord.path(res, bench="digits-text"), BenchRecord(
            bench="digits-text", device="cpu", provenance=PROV, skipped="text-conditioned benchmark: not measured"))
    variants = {v: {} for v in VARIANTS}
    raw = {"results_dir": str(res), "device": "cpu",
           "benchmarks": {"toy2d": {"variants": {v: {} for v in TOY_VARIANTS}, "train": {"seed": 0}, "eval": {"seed": 1234}},
                          "digits": {"variants": variants, "train": {"seed": 0}},
                          "digits-text": {"variants": {"mct": {}, "k1": {}}, "eval": {"grid": 100}}},
           "report": {"strict": True}}
    raw["benchmarks"] = {k: v for k, v in raw["benchmarks"].items() if k in benches}
    _as_the_stages_leave_it(res, raw)
    return res, raw


STAGE_OF = {"run_metrics": "evaluate", "correction_metrics": "correct", "teacher_metrics": "teacher_eval",
            "summary": "summarize"}


def _as_the_stages_leave_it(res: Path, raw: dict) -> None:
    """What the stages add to the records written above: a run's records carry the run hash of the
    variant's current config (the report refuses others), and each stage's folder its completion record."""
    import json

    from mct.benchmarks.base import get_benchmark
    from mct.io import stage_outputs

    for path in sorted(res.rglob("*.json")):
        if path.name.startswith("."):
            continue
        rec = json.loads(path.read_text())
        kind = rec.get("kind")
        stage = STAGE_OF.get(kind) or (rec.get("net") if kind == "aux_metrics" else None)
        if stage is None:
            continue
        if kind in ("run_metrics", "correction_metrics") and rec["variant"] in \
                (raw["benchmarks"].get(rec["bench"]) or {}).get("variants", {}):
            bench = get_benchmark(rec["bench"])
            rec["provenance"]["config_hash"] = bench.run_hash(bench.parse(raw["benchmarks"][rec["bench"]], rec["variant"]))
            path.write_text(json.dumps(rec))
        with stage_outputs(path.parent, stage, rec["provenance"]["config_hash"]) as out:
            for f in path.parent.iterdir():
                if f.is_file() and not f.name.startswith("."):
                    out.add(f)


def results_source(tmp: Path) -> tuple[Path, dict]:
    """``MCT_REPORT_RESULTS`` when set (a real run, config in ``MCT_REPORT_CONFIG``), else :func:`make_results`."""
    real = os.environ.get("MCT_REPORT_RESULTS")
    if real:
        import yaml

        cfg = os.environ.get("MCT_REPORT_CONFIG")
        raw = yaml.safe_load(Path(cfg).read_text()) if cfg else {}
        raw = {**raw, "report": {**(raw.get("report") or {}), "strict": True}}
        out = tmp / "results"
        shutil.copytree(real, out)
        return out, raw
    return make_results(tmp)


SYNTHETIC = not os.environ.get("MCT_REPORT_RESULTS")


def RunContext(results_dir: Path):  # noqa: N802 - all the report reads of the stages' run context
    return SimpleNamespace(results_dir=results_dir)


# --- HTML helpers ------------------------------------------------------------------

class _Tables(HTMLParser):
    """Tables by their data-table attribute, as lists of rows of cell texts."""

    def __init__(self):
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.attrs: list[tuple[str, dict]] = []
        self._cur = self._row = self._cell = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.attrs.append((tag, a))
        if tag == "table":
            self._cur = self.tables.setdefault(a.get("data-table", f"t{len(self.tables)}"), [])
        elif tag == "tr" and self._cur is not None:
            self._row = []
            self._cur.append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._cur = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def parse(html: str) -> _Tables:
    p = _Tables()
    p.feed(html)
    return p


def row_of(table: list[list[str]], label: str) -> list[str]:
    rows = [r for r in table if r and re.match(re.escape(label) + r"($|[\s:(,])", r[0])]
    assert rows, f"no row starting with {label!r} in {[r[0] for r in table if r]}"
    return rows[0]


# --- fixtures ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return results_source(tmp_path_factory.mktemp("report"))


@pytest.fixture(scope="module")
def report(tree):
    res, raw = tree
    path = build_report(raw, RunContext(results_dir=res))
    return Path(path), path.read_text(encoding="utf-8")


def _browser_or_skip():
    exe = find_chromium()
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is required in CI: run `bash .ci/install-chromium.sh` from .ci/run")
        pytest.skip("chromium not installed; CI runs this test")
    pytest.importorskip("playwright.sync_api")
    return exe


@pytest.fixture(scope="module")
def page(report):
    _browser_or_skip()
    path, _ = report
    shot = path.parent / "report.png"
    result = check_page(path, screenshot=shot)
    keep = Path(os.environ.get("MCT_REPORT_SCREENSHOT_DIR", REPO / "results" / "test-report"))
    try:
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, keep / "report.png")
        shutil.copy(path, keep / "report.html")
    except OSError:
        pass  # a read-only checkout: the screenshot stays in the tmp dir
    return result


def _figure_caption(html: str, kind: str, bench: str = "") -> str:
    for m in re.finditer(r'<figure class="plot" data-figure="%s">(.*?)</figure>' % re.escape(kind), html, re.S):
        cap = re.search(r"<figcaption>(.*?)</figcaption>", m.group(1), re.S).group(1)
        if bench in m.group(1):
            return re.sub(r"\s+", " ", html_unescape(cap))
    raise AssertionError(f"no {kind} figure for {bench!r}")


def expected_interval(values: list[float], spec: str) -> str:
    """'mean [lo, hi], n seeds' computed here from the values (numpy, scipy's t), not by mct.stats."""
    from scipy.stats import t as student

    x = np.asarray(values, float)
    if x.std() == 0:
        return f"{spec.format(x.mean())}, the same in all {len(x)} seeds"
    half = student.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return f"{spec.format(x.mean())} [{spec.format(x.mean() - half)}, {spec.format(x.mean() + half)}], {len(x)} seeds"


# --- static checks -----------------------------------------------------------------

def test_report_written_where_asked_and_atomically(report, tree):
    path, html = report
    res, _ = tree
    assert path == res / "report.html"
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    assert not list(res.glob(".report.html.*.tmp"))


def test_self_contained_no_network_no_scripts(report):
    _, html = report
    p = parse(html)
    assert not any(tag == "script" for tag, _ in p.attrs)
    assert not any(tag == "link" for tag, _ in p.attrs)
    for tag, a in p.attrs:
        for key in ("src", "href"):
            val = a.get(key) or ""
            assert not re.match(r"^(https?:)?//", val), (tag, val)
            assert val.startswith(("data:image/", "#")) or not re.match(r"^[a-z]+:", val), (tag, val[:80])
    assert "url(http" not in html and "@import" not in html
    assert "Content-Security-Policy" in html and "default-src 'none'" in html


def test_six_sections(report):
    _, html = report
    for sid in ("summary", "main", "ablations", "modes", "samples", "speed"):  # (+ covering with a toy2d family)
        assert f'<section id="{sid}">' in html
    assert "ALGORITHM.md" not in html


def test_paper_rows_beside_ours_with_sources(report):
    _, html = report
    t = parse(html).tables
    im64 = t["main-imagenet64"]
    for method, fid in [("MCT / EMD", "2.20"), ("DMD", "2.62"), ("DMD2 (with GAN)", "1.28"),
                        ("DMD2 (without GAN)", "2.61"), ("SiD", "1.52"), ("Diff-Instruct", "5.57"), ("CTM", "1.92"),
                        ("EDM teacher, Heun", "2.44")]:
        assert fid in row_of(im64, method), method
    assert "79" in row_of(im64, "EDM teacher, Heun")
    assert "arXiv:2405.16852" in row_of(im64, "MCT / EMD")[-1]
    assert "6.0" in " ".join(row_of(t["main-imagenet128"], "MCT / EMD"))
    sd = t["main-sd15"]
    assert "9.66" in row_of(sd, "MCT / EMD") and "8.35" in row_of(sd, "DMD2") and "11.49" in row_of(sd, "DMD")
    assert "different teacher" in html.lower()
    for name in ("imagenet64", "imagenet128", "sd15"):
        cmd = f"snakemake --cores all --configfile config/{name}.yaml --profile workflow/profiles/slurm"
        ours = row_of(t[f"main-{name}"], "MCT (this pipeline)")
        assert "not run here" in ours[1] and cmd in ours[1]
        assert f"<code>{cmd}</code>" in html


@pytest.mark.skipif(not SYNTHETIC, reason="checks the written tree's values")
def test_measured_rows_embedded_tasks(report):
    _, html = report
    t = parse(html).tables
    dg = t["main-digits"]
    header = dg[0]
    fid_col = header.index("FID \u2193")
    assert [row_of(dg, f"Teacher, {n} NFE")[fid_col] for n in (7, 15, 35)] == ["21.37", "6.42", "4.18"]
    mct = row_of(dg, "MCT one-step student")
    assert mct[fid_col] == expected_interval([5.31 * (1 + j) for j in JITTER[:3]], "{:.2f}")
    assert mct[header.index("NFE")] == "1"
    kid = [round(5.31 / 2000, 5) * 1e3 * (1 + j) for j in JITTER[:3]]  # KID x 10^3: mean and interval alike
    assert mct[header.index("KID\u00d710\u00b3 \u2193")] == expected_interval(kid, "{:.2f}")
    assert row_of(dg, "Teacher, 35 NFE")[header.index("KID\u00d710\u00b3 \u2193")] == "2.20 \u00b1 0.40"  # std x 10^3 too
    k1 = row_of(dg, "K = 1 baseline")
    assert k1[fid_col] == expected_interval([9.85 * (1 + j) for j in JITTER[:3]], "{:.2f}")
    assert "held-out accuracy 0.983" in html and "FID floor (two disjoint sets of real images): 1.12" in html
    acc = round(0.9 - 5.31 / 100, 4)
    assert mct[header.index("Class accuracy \u2191")] == expected_interval([acc * (1 + j) for j in JITTER[:3]], "{:.3f}")
    txt = t["main-digits-text"]
    clip_col = txt[0].index("CLIP score \u2191")
    assert row_of(txt, "MCT one-step student")[clip_col] == "27.60, 1 seed"  # no interval for one seed
    assert row_of(txt, "Teacher, 35 NFE")[clip_col] == "27.81"
    assert "zero shot accuracy 0.931" in html
    assert "Mode-mass TV \u2193" in t["main-toy2d"][0]
    cap = _figure_caption(html, "nfe", "digits")
    assert "21.37 at 7 NFE, 4.18 at 35 NFE" in cap
    assert "mct in one step: 5.31 [5.25, 5.38] over 3 seeds, 1.27\u00d7 the teacher's best (above it)" in cap


@pytest.mark.skipif(not SYNTHETIC, reason="checks the written tree's values")
def test_claims_table_shows_interval_basis_and_a_verdict_styled_apart(report):
    _, html = report
    claims = parse(html).tables["claims-digits"]
    hdr = claims[0]
    assert hdr == ["Claim", "Metric", "Difference", "Seeds, test", "Basis", "Verdict"]
    k1 = row_of(claims, "mct beats k1")
    diffs = [5.31 * (1 + j) - 9.85 * (1 + j) for j in JITTER[:3]]  # paired: per seed
    assert k1[2] == expected_interval(diffs, "{:.2f}").rsplit(", 3 seeds", 1)[0] and k1[-1] == "holds"
    assert k1[3] == "paired over 3 seeds (mct \u2212 k1)" and k1[1] == "FID \u2193; claimed difference < 0"
    assert row_of(claims, "noise cancellation lowers FID")[1] == "FID \u2193; claimed difference > 0"
    assert row_of(claims, "one-step mct FID")[-1] == "reversed"
    assert row_of(claims, "one-step mct FID")[2] == "1.13 [0.63, 1.63]"
    assert row_of(claims, "one-step mct FID")[3] == "n = 3 (the basis says how)"  # no comparison record behind it
    rep = row_of(claims, "reparametrisation beats")
    assert rep[-1] == "inconclusive" and rep[2] == "0.10 [-0.65, 0.85]"
    # each verdict has its own class: an inconclusive claim never looks like one that holds
    cells = re.findall(r'<td class="verdict (claim-\w+)">(\w+)</td>', html)
    assert ("claim-holds", "holds") in cells and ("claim-reversed", "reversed") in cells
    assert ("claim-inconclusive", "inconclusive") in cells
    assert all(cls == f"claim-{text}" for cls, text in cells)
    assert ">yes<" not in re.search(r'data-table="claims-digits".*?</table>', html, re.S).group(0)


@pytest.mark.skipif(not SYNTHETIC, reason="checks the written tree's values")
def test_where_mode_covering_shows_side_by_side(report):
    _, html = report
    t = parse(html).tables["covering"]
    assert t[0] == ["Claim", "toy2d", "toy2d-grid9", "toy2d-ring16", "toy2d-two"]  # every toy2d* bench, by its folder
    row = row_of(t, "more K covers more modes")
    assert [c.split(":")[0] for c in row[1:]] == ["holds", "holds", "inconclusive", "reversed"]
    k1, k16 = TOY_FAMILY["toy2d-two"]
    assert row[4] == "reversed: " + expected_interval([a - b for a, b in zip(k16, k1)], "{:.3f}")
    cells = re.findall(r'<td class="verdict (claim-\w+)" title="k16 - k1, 3 seeds">(\w+):', html)
    assert cells and all(cls == f"claim-{v}" for cls, v in cells)
    sec = html_unescape(re.search(r'<section id="covering">(.*?)</section>', html, re.S).group(1))
    assert ("\u201cmore K covers more modes (K = 16 vs K = 1)\u201d holds on toy2d, toy2d-grid9; is reversed on "
            "toy2d-two; is inconclusive on toy2d-ring16.") in sec
    assert "toy2d-ring16: not decided by the seeds: more K covers more modes" in sec
    assert "2 modes, weights 0.1 to 0.9" in sec


def test_covering_section_absent_with_one_mixture_and_sentences_follow_the_verdicts(tmp_path):
    from mct.report.sections.covering import claim_sentence, is_toy, mixture_sentence

    res, raw = make_results(tmp_path, benches=("toy2d",))
    html = build_report(raw, RunContext(results_dir=res)).read_text()
    assert '<section id="covering">' not in html and 'href="#covering"' not in html
    assert re.findall(r"<h2>(\d+)\. ", html) == ["1", "2", "3", "4", "5", "6"]  # numbered as shown
    assert is_toy("toy2d") and is_toy("toy2d-grid9") and not is_toy("toy2dx") and not is_toy("digits")
    assert claim_sentence("c", {"a": "holds", "b": "holds"}) == "\u201cc\u201d holds on every mixture (a, b)."
    assert claim_sentence("c", {"a": "reversed", "b": None}) == "\u201cc\u201d is reversed on a; was not tested on b."
    up = Claim(claim="c", verdict="holds", metric="mode_mass_tv", diff=Interval(mean=-0.1, n=3, std=0.01, lo=-0.12, hi=-0.08))
    down = Claim(claim="c", verdict="reversed", metric="mode_mass_tv", diff=Interval(mean=0.1, n=3, std=0.01, lo=0.08, hi=0.12))
    assert mixture_sentence("m", [up]) == "m: holds: c (Mode-mass TV \u2193 difference -0.100 [-0.120, -0.080], 3 seeds)."
    assert mixture_sentence("m", [down]) == "m: reversed: c (Mode-mass TV \u2193 difference 0.100 [0.080, 0.120], 3 seeds)."


@pytest.mark.skipif(not SYNTHETIC, reason="checks the written tree's values")
def test_toy_tables_start_with_the_exact_reference_and_show_what_cannot_hide(report):
    path, html = report
    t = parse(html).tables
    exact = read_record(path.parent / "toy2d/teacher/metrics.json", TeacherMetrics).rows[0].scores.metrics
    recs = {v: read_record(path.parent / f"toy2d/runs/{v}/metrics.json", RunMetrics) for v in ("mct", "k1")}
    runs = {v: r.scores.metrics for v, r in recs.items()}
    cols = ["Off-mode mass \u2193", "Min mode recall \u2191", "Log-p gap (0 = exact)"]
    specs = {"off_mode_mass": "{:.3f}", "min_mode_recall": "{:.3f}", "logp_gap": "{:+.3f}"}
    want = lambda m: [spec.format(m[k]) for k, spec in specs.items()]  # noqa: E731
    over_seeds = lambda r: [expected_interval([s.scores.metrics[k] for s in r.seeds], spec)  # noqa: E731
                            for k, spec in specs.items()]
    main = t["main-toy2d"]
    assert main[1][0] == "Exact samples of the mixture (reference)"  # first, before every student
    assert [main[1][main[0].index(c)] for c in cols] == want(exact)
    assert main[1][main[0].index("NFE")] == "0" and main[1][-1] == "toy2d/teacher/metrics.json"
    assert [row_of(main, "MCT one-step student")[main[0].index(c)] for c in cols] == over_seeds(recs["mct"])
    k1 = row_of(main, "K = 1 baseline")
    assert k1[-1] == "toy2d/runs/k1/metrics.json" and "(k1," in k1[0]  # the baseline, not k1-zmoving (z moving)
    assert [k1[main[0].index(c)] for c in cols] == over_seeds(recs["k1"])
    assert k1[main[0].index("Min mode recall \u2191")].startswith("0.000")  # the collapse shows
    assert abs(exact["off_mode_mass"] - math.exp(-4.5)) < 0.01 and abs(exact["logp_gap"]) < 0.1
    abl = t["ablation-toy2d"]
    assert abl[1][0] == "Exact samples of the mixture (reference)" and [r[0] for r in abl[2:]] == TOY_VARIANTS
    assert [abl[1][abl[0].index(c)] for c in cols] == want(exact)
    assert "Teacher, 0 NFE" not in html
    scatter = _figure_caption(html, "scatter", "toy2d")
    assert f"mct (K = 8): TV 0.02, 8/8 modes, {runs['mct']['off_mode_mass']:.0%} off-mode" in scatter


@pytest.mark.skipif(not SYNTHETIC, reason="checks the written tree's values")
def test_summary_tables(report):
    _, html = report
    t = parse(html).tables
    status = t["benchmarks"]
    assert row_of(status, "digits")[-1] == "complete" and row_of(status, "digits")[5] == "8/8"
    assert row_of(status, "digits")[4] == "acc 0.983, FID floor 1.12"
    assert row_of(status, "toy2d")[3] == "exact (analytic)"
    assert row_of(status, "imagenet64")[-1] == "not run here"
    timing = t["timing"]
    assert [r for r in timing if r[:2] == ["digits", "distill"]][0][2:] == ["8", "1 h 07 min"]  # 8 x 300 + 30 x sum(K) = 4050 s
    assert [r for r in timing if r[:2] == ["digits", "teacher eval"]][0][2:] == ["3", "9 min 30 s"]  # 70+150+350 s
    assert [r for r in timing if r[:2] == ["digits", "correct"]][0][2:] == ["1", "14 s"]
    prov = dict((r[0], r[1]) for r in t["provenance"][1:])
    assert re.fullmatch(r"[0-9a-f]{16}", prov["config hash"])
    rec = dict((r[0], r[1]) for r in t["recorded"][1:])
    n_files = int(rec["result files"])
    assert rec["commit 0123456789ab"] == f"{n_files} files" and "feedfacecafebeef" in rec["config hashes"]
    assert "torch" in dict((r[0], r[1]) for r in t["versions"][1:])
    seeds = dict((r[0], r[1]) for r in t["seeds"][1:])
    assert seeds["benchmarks.toy2d.train.seed"] == "0" and seeds["digits: training seeds recorded"] == "0, 1, 2 (1 to 3 per variant)"
    # a complete run raises no alarm: the report expects only what the config promises (a configured variant's
    # metrics.json), not files a benchmark never writes (digits-text has no class histogram and no correction)
    assert "could not be used" not in html and 'class="problems"' not in html and "expected file" not in html
    assert 'class="placeholder"' not in html  # no sample grid shown as missing either


@pytest.mark.skipif(not SYNTHETIC, reason="checks the written tree's values")
def test_ablations_from_settings_with_captions_from_numbers(report):
    _, html = report
    t = parse(html).tables
    abl = t["ablation-digits"]
    assert [r[0] for r in abl[1:]] == VARIANTS
    changes = {r[0]: r[1] for r in abl[1:]}
    assert changes["mct"] == "main run" and changes["no-nc"] == "noise cancellation: off"
    assert changes["k1"] == "K = 1, \u03b3_z = 0 (z frozen)"
    assert changes["k4"] == "K = 4, \u03b3_z = 0.05 as the main run (z moving)"
    gz, k = abl[0].index("\u03b3_z"), abl[0].index("K")
    assert (row_of(abl, "k1")[gz], row_of(abl, "mct")[gz], row_of(abl, "k16")[k]) == ("0", "0.050", "16")
    toy = {r[0]: r for r in t["ablation-toy2d"][1:]}
    assert toy["k1-zmoving"][1] == "K = 1, \u03b3_z = 0.05 as the main run (z moving)"
    assert toy["k16-zfrozen"][1] == "K = 16, \u03b3_z = 0 (z frozen)"
    fid = abl[0].index("FID \u2193")
    assert row_of(abl, "random-init")[fid] == expected_interval([38.9 * (1 + j) for j in JITTER[:3]], "{:.2f}")
    assert row_of(abl, "k2")[fid] == "7.10, 1 seed"  # one seed: said, no interval
    note = abl[0].index("Note")
    assert row_of(abl, "no-reparam")[note] == "collapsed"
    assert "no-reparam: collapsed: precision 1.00, recall 0.00: its samples sit on the real data" in html
    assert row_of(abl, "mct")[note] == "" and row_of(abl, "no-nc")[note] == ""
    cap = _figure_caption(html, "ablation", "digits")
    mct = expected_interval([5.31 * (1 + j) for j in JITTER[:3]], "{:.2f}")
    assert f"mct FID \u2193 {mct}; no-reparam 6.02 (+0.71, paired, 3 seeds: worse)" in cap
    assert "Log axis for FID \u2193" in cap  # the random-init outlier is not allowed to flatten the other bars
    k = _figure_caption(html, "ksweep", "digits")
    assert "One run per K (k1, k2, k4, mct, k16)" in k  # one point per K: nothing averaged into a point
    assert f"FID \u2193: {expected_interval([9.85 * (1 + j) for j in JITTER[:3]], '{:.2f}')} at K = 1" in k
    assert "Lowest FID: K = 16" in k and "against K = 2, K = 4 it cannot be judged (one seed, no interval)" in k
    assert "Seeds differ between points: K = 1 (k1) 3 seeds, K = 2 (k2) 1 seed" in k
    assert "Class entropy: no difference beyond seed noise" in k and "Axes start at 0" in k
    toyk = _figure_caption(html, "ksweep", "toy2d")
    assert "One run per K (k1, k2, k4, mct, k16)" in toyk  # k1-zmoving and k16-zfrozen are not sweep points
    gm = t["gradvar-measured-digits"]
    assert row_of(gm, "mct")[gm[0].index("Without / with NC")] == "3.40\u00d7, 3 seeds"  # the same ratio in every seed
    var = [(0.8 + 0.1 * 8) * 3.4 * (1 + j) for j in JITTER[:3]]
    assert row_of(gm, "no-nc")[gm[0].index("Var of its M-step gradient")] == expected_interval(var, "{:.2f}")
    assert row_of(gm, "k2")[gm[0].index("Var with NC (same chains)")] == "1.00, 1 seed"
    assert "Cancellation lowers the variance beyond the seed interval in 6 of 8 runs; not shown beyond the interval " \
           "(or one seed) in k2, k4." in html_unescape(html)
    grad = t["gradvar-digits"]
    cv = grad[0].index("CV")
    assert float(row_of(grad, "no-nc")[cv]) > float(row_of(grad, "mct")[cv])  # the written no-nc log is noisier
    curve = _figure_caption(html, "curve", "digits")
    assert "mct 25.86 \u2192 6.05 (lower at the end, beyond the 3 seeds' interval)" in curve
    assert "k2 27.64 \u2192 7.83 (1 seed: no interval)" in curve
    assert "random-init (" in curve and "in the right panel" in curve  # the outlier has its own panel
    toy = t["ablation-toy2d"]
    assert "Mode-mass TV \u2193" in toy[0] and "FID \u2193" not in toy[0]


@pytest.mark.skipif(not SYNTHETIC, reason="checks the written tree's values")
def test_modes_and_samples_and_correction(report):
    _, html = report
    t = parse(html).tables
    classes = t["classes-digits"]
    k1, mct = row_of(classes, "k1"), row_of(classes, "mct")
    assert k1[classes[0].index("Largest class share")] == "0.104" and mct[classes[0].index("Largest class share")] == "0.102"
    cap = _figure_caption(html, "classhist", "digits")
    assert "Largest class share: 0.104 (k1) to 0.102" in cap and "no run drops a class" in cap
    from mct.report.sections.modes import class_caption

    collapsed = class_caption({"k1": 1.0, "mct": 1.0}, {"k1": 0.0, "mct": 0.0}, 10)  # opposite data: every run on one class
    assert collapsed == ("Largest class share 1.000 in every run; k1, mct drop at least one class (below a quarter of "
                         "a uniform share).")
    scatter = _figure_caption(html, "scatter", "toy2d")
    assert re.search(r"K = 1: TV 0\.\d\d, [1-8]/8 modes", scatter) and "mct (K = 8)" in scatter
    corr = t["correct-digits-mct"]
    assert corr[0][:5] == ["Metric", "Before (g(z))", "After correction", "Change", "Helped?"]
    assert row_of(corr, "FID")[1:5] == ["5.31", "4.92", "\u22120.39", "yes"]
    # KID x 10^3 in every column, its std over subsets too, and the change
    assert row_of(corr, "KID\u00d710\u00b3")[1:5] == ["2.70 \u00b1 0.40", "3.10 \u00b1 0.60", "+0.40", "no"]
    assert ("On 2000 samples, the correction lowered FID \u2193 from 5.31 to 4.92: it helped on FID (lower is better); "
            "it improved 1 of the 2 other metrics with a direction.") in html_unescape(html)


def test_correction_headline_follows_the_numbers():
    """Opposite data, opposite sentence: FID 0.94 -> 1.82 on 100 samples is said to have made it worse."""
    from mct.report.sections.samples import correction_headline

    def corr(before, after):
        return CorrectionMetrics(bench="digits", variant="mct", steps=100, sigma=0.5, gamma_eps=0.05, gamma_z=0.02,
                                 num_samples=100, seconds=1.0, before=Scores(before), after=Scores(after), provenance=PROV)

    worse = correction_headline(corr({"fid": 0.94, "recall": 0.5}, {"fid": 1.82, "recall": 0.6}), ["fid", "recall"])
    assert worse.startswith("On 100 samples, the correction raised FID \u2193 from 0.94 to 1.82: it made it worse on "
                            "FID (lower is better); it improved 1 of the 1 other")
    better = correction_headline(corr({"fid": 1.82, "recall": 0.6}, {"fid": 0.94, "recall": 0.5}), ["fid", "recall"])
    assert "lowered FID \u2193 from 1.82 to 0.94: it helped on FID" in better and "improved 0 of the 1 other" in better
    assert correction_headline(corr({"precision": 0.7}, {"precision": 0.8}), ["precision"]).startswith(
        "On 100 samples, the correction raised Precision \u2191 from 0.700 to 0.800: it helped on Precision (higher")


@pytest.mark.skipif(not SYNTHETIC, reason="checks the written tree's values")
def test_sample_grids_resampled_labelled_and_captioned(report):
    """Grids are resampled on embedding (nearest neighbour) to a readable size, labelled with the variant,
    its K and the training seed shown; the text-conditioned grids list the captions of their rows."""
    import base64

    from PIL import Image

    _, html = report
    imgs = re.findall(r'<figure class="sample">\s*<img src="data:image/png;base64,([^"]+)" alt="digits mct samples" '
                      r'style="width: (\d+)px"[^>]*>\s*<figcaption>(.*?)</figcaption>', html, re.S)
    assert len(imgs) == 1
    data, width, caption = imgs[0]
    with Image.open(io.BytesIO(base64.b64decode(data))) as im:
        assert im.size[0] == int(width) == 73 * 7  # 73 px written, 8 px digits; 7x nearest = 56 px per digit
        px = np.asarray(im.convert("L"))
    assert (px[:, ::7] == px[:, 6::7]).all()  # nearest neighbour: each source pixel 7 identical columns
    assert html_unescape(caption) == "mct (main run, K = 8): one-step samples g(z), 1 NFE, training seed 0 (the first of 3)"
    k1 = re.search(r'alt="digits k1 samples"[^>]*>\s*<figcaption>(.*?)</figcaption>', html, re.S).group(1)
    assert html_unescape(k1) == "k1 (K = 1, \u03b3_z = 0 (z frozen)): one-step samples g(z), 1 NFE, training seed 0 (the first of 3)"
    t = parse(html).tables
    rows = t["captions-digits-text"]
    assert rows[0] == ["Row", "Template", "Column 3 reads"] and len(rows) == 11  # 100 samples: 10 rows of 10 classes
    assert rows[1] == ["1", "a handwritten {word}", "a handwritten three"]
    assert rows[7][1:] == ["a handwritten {word}", "a handwritten three"]  # 6 templates cycle: row 7 = row 1
    assert "captions-digits" not in [k for k in t if k != "captions-digits-text"]  # class-conditional: no captions
    assert "the samples' files do not record their captions" in html_unescape(html)


@pytest.mark.skipif(not SYNTHETIC, reason="checks the written tree's values")
def test_speed_tables(report):
    _, html = report
    t = parse(html).tables
    speed = t["speed"]
    hdr = speed[0]
    teacher35 = [r for r in speed if r[0] == "digits" and r[hdr.index("NFE")] == "35"][0]
    assert teacher35[hdr.index("Images/s \u2191")] == "212" and teacher35[hdr.index("Student speed-up \u00d7")] == "32.7"
    assert row_of(t["overhead"], "digits")[4] == "1.065"
    assert "Not measured: digits-text (text-conditioned benchmark: not measured)" in html
    assert "memory" in t
    for kind in ("nfe", "ablation", "ksweep", "gradvar", "gradvarbars", "curve", "scatter", "modemass", "classhist",
                 "speed"):
        assert f'data-figure="{kind}"' in html, kind


def test_partial_results_and_bad_records(tmp_path):
    res, raw = make_results(tmp_path, benches=("digits", "digits-text"))
    shutil.rmtree(res / "digits-text")
    (res / "digits/runs/no-nc/metrics.json").unlink()
    (res / "digits/teacher/metrics.json").write_text('{"kind": "teacher_metrics", "schema_version": 99}')
    from mct.io import stage_outputs

    with stage_outputs(res / "digits/teacher", "teacher_eval") as out:  # a completed stage of another version
        out.add(res / "digits/teacher/metrics.json")
    (res / "digits/runs/k2/samples.png").write_bytes(b"changed after evaluate finished")
    with pytest.raises(MCTError, match="schema_version is 99"):  # strict: a bad record stops the report
        build_report(raw, RunContext(results_dir=res))
    lenient = {**raw, "report": {"strict": False}}
    html = build_report(lenient, RunContext(results_dir=res)).read_text()
    t = parse(html).tables
    problems = re.search(r'<div class="problems"(.*?)</div>', html, re.S).group(1)
    assert "digits/teacher/metrics.json</code> &mdash; schema_version is 99" in problems
    assert "digits/runs/no-nc/metrics.json</code> &mdash; missing" in problems
    assert "digits/runs/k2/metrics.json</code> &mdash; incomplete: the evaluate stage did not finish" in problems
    assert "digits-text/runs/mct/metrics.json</code> &mdash; missing" in problems
    assert "correct" not in problems and "bench/" not in problems  # nothing the config does not promise
    assert row_of(t["benchmarks"], "digits-text")[-1] == "no results yet"
    assert row_of(t["benchmarks"], "digits")[5] == "6/8"
    nonc = row_of(t["ablation-digits"], "no-nc")
    assert "no metrics.json yet" in nonc[1] and "\u2014" in nonc
    assert "Configured but not evaluated yet: no-nc" in html


def test_empty_results_dir_renders(tmp_path):
    res = tmp_path / "empty"
    out = build_report({"benchmarks": {"toy2d": {}}, "report": {"strict": True}}, RunContext(results_dir=res))
    html = out.read_text()
    assert out == res / "report.html"
    assert "No speed measurements yet" in html and "not run here" in html and "none yet" in html


@pytest.fixture(scope="module")
def linked(tmp_path_factory):
    """The digits tree rendered elsewhere (``out``) with no image embedded: every sample grid
    is a relative link from the report to the file under results/."""
    tmp = tmp_path_factory.mktemp("linked")
    res, raw = make_results(tmp, benches=("digits",))
    raw = {**raw, "report": {"strict": True, "embed_max_bytes": 0}}
    out = build_report(raw, RunContext(results_dir=res), out=tmp / "site" / "r.html")
    assert out == tmp / "site" / "r.html"
    return out


def test_custom_out_and_linked_images(linked):
    html = linked.read_text()
    assert 'src="../results/digits/teacher/samples.png"' in html
    assert 'src="../results/digits/runs/mct/correct/after.png"' in html
    assert "data:image/png;base64," in html  # the figures are still embedded


def test_bad_report_config_is_an_error(tmp_path):
    from mct.errors import ConfigError

    with pytest.raises(ConfigError, match="report"):
        build_report({"report": {"embed_max_bytes": -1}}, RunContext(results_dir=tmp_path))
    with pytest.raises(ConfigError, match="report"):
        build_report({"report": {"no_such_key": 1}}, RunContext(results_dir=tmp_path))


def test_number_formatting():
    assert fmt_duration(5.25) == "5.2 s" and fmt_duration(75) == "1 min 15 s" and fmt_duration(3725) == "1 h 02 min"
    assert number_cell(2.2, "fid").text == "2.20"
    assert number_cell(0.00123, "kid_mean").text == "1.23"
    assert number_cell(None, "fid").cls == "num missing"
    assert number_cell(True).text == "yes"
    assert fmt_auto(12345.6) == "12,346" and fmt_auto(600.0) == "600" and fmt_auto(0.1234) == "0.123"


# --- in the browser ----------------------------------------------------------------

def test_browser_every_image_loads_and_nothing_is_fetched(page):
    assert page.images, "no images on the page"
    assert not page.broken_images, page.broken_images
    assert all(i["shownWidth"] > 0 for i in page.images)
    assert not page.external_requests, page.external_requests
    assert not page.failed_requests and not page.console, (page.failed_requests, page.console)
    assert page.scripts == 0 and page.section_errors == 0
    assert [x for x in page.sections if x != "covering"] == ["summary", "main", "ablations", "modes", "samples", "speed"]
    assert "covering" in page.sections or not SYNTHETIC  # the synthetic tree has a toy2d family
    assert page.problems() == []


def test_browser_main_tables_hold_numbers(page):
    for kind in ("benchmarks", "main-imagenet64", "main-imagenet128", "main-sd15", "provenance", "versions"):
        t = page.table(kind)
        assert t is not None and t["rows"] > 0, kind
    assert page.table("main-imagenet64")["numeric"] >= 16  # 8 methods x (NFE, FID)
    ours = [t for t in page.tables if t["kind"].startswith("main-") and t["kind"] not in
            ("main-imagenet64", "main-imagenet128", "main-sd15")]
    assert ours and all(t["numeric"] > 0 for t in ours)
    if SYNTHETIC:
        assert "5.31" in page.table("main-digits")["text"]
        assert page.table("speed")["numeric"] >= 5 and len(page.images) >= 20


def test_browser_screenshot_is_written(page):
    from PIL import Image

    assert page.screenshot and Path(page.screenshot).is_file()
    with Image.open(page.screenshot) as im:
        w, h = im.size
        assert w == 1280 and h >= min(page.height, 16000) - 1
        # not blank: the page has dark text on white
        lo, hi = im.convert("L").getextrema()
        assert lo < 60 and hi > 240


def test_browser_checker_catches_broken_images_and_requests(tmp_path):
    """Negative control: the checks above would fail on a page that fetches or breaks."""
    _browser_or_skip()
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><body><h2>x</h2><img alt="gone" src="missing.png">'
                   '<img alt="remote" src="http://127.0.0.1:9/x.png"><table data-table="t"><tbody></tbody></table>'
                   "</body></html>")
    res = check_page(bad)
    problems = "\n".join(res.problems())
    assert {i["alt"] for i in res.broken_images} == {"gone", "remote"}
    assert "network request: http://127.0.0.1:9/x.png" in problems
    assert "empty table: t" in problems


def test_browser_linked_images_load_under_the_csp(linked):
    _browser_or_skip()
    result = check_page(linked)
    linked = [i for i in result.images if not i["src"].startswith("data:")]
    assert linked and not result.broken_images and not result.external_requests, result.problems()


def test_exported_generator_is_linked_with_its_model_card(tmp_path):
    res, raw = make_results(tmp_path, benches=("digits",))
    export = res / "digits" / "export" / "mct"
    export.mkdir(parents=True)
    (export / "config.json").write_text("{}")
    (export / "README.md").write_text("# model card\n")
    html = build_report(raw, RunContext(results_dir=res)).read_text()
    link = re.search(r'<p class="note" data-export="digits/mct">(.*?)</p>', html, re.S).group(1)
    assert 'href="digits/export/mct/README.md"' in link and 'href="digits/export/mct/"' in link
    assert html_lib.unescape(link).count('mct.load_generator("results/digits/export/mct/")') == 1
    assert 'data-export="digits/k1"' not in html  # only folders that exist are linked


# --- captions written from the numbers: opposite data, opposite sentence ---------------------

def _iv(values):
    return stats.interval(values)


def test_best_caption_names_the_best_and_says_whether_the_intervals_overlap():
    from mct.report.seeds import best_caption

    low_k16 = {"k1": _iv([0.30, 0.32, 0.31]), "k16": _iv([0.05, 0.06, 0.055])}
    cap = best_caption(low_k16, "off_mode_mass")
    assert cap.startswith("Lowest Off-mode mass: k16 (0.055 [") and "clear of every other variant's" in cap
    flipped = best_caption({"k1": low_k16["k16"], "k16": low_k16["k1"]}, "off_mode_mass")
    assert flipped.startswith("Lowest Off-mode mass: k1 (")
    tied = best_caption({"k1": _iv([0.30, 0.12, 0.22]), "k16": _iv([0.18, 0.22, 0.2])}, "off_mode_mass")
    assert "its interval overlaps k1's, so it is not separated from them" in tied
    higher = best_caption({"a": _iv([0.9, 0.91, 0.92]), "b": _iv([0.5, 0.52, 0.51])}, "recall")
    assert higher.startswith("Highest Recall: a (")
    one = best_caption({"a": _iv([0.9]), "b": _iv([0.5, 0.52, 0.51])}, "recall")
    assert "against b it cannot be judged" in one or "against a it cannot be judged" in one


def test_spread_caption_says_no_difference_only_inside_the_noise():
    from mct.report.seeds import spread_caption

    noise = {"k1": _iv([2.3002, 2.3101, 2.2950]), "k8": _iv([2.3012, 2.2990, 2.3080])}
    assert spread_caption(noise, "class_entropy").startswith("Class entropy: no difference beyond seed noise")
    apart = {"k1": _iv([2.10, 2.11, 2.12]), "k8": _iv([2.30, 2.29, 2.31])}
    assert "no difference" not in spread_caption(apart, "class_entropy")
    single = spread_caption({"k1": _iv([2.1]), "k8": _iv([2.3])}, "class_entropy")
    assert "too few variants with several seeds" in single and "no difference" not in single


def test_curve_caption_follows_the_first_and_last_points():
    from mct.report.seeds import curve_caption

    falls = curve_caption({"mct": {0: (2.0, 0.60), 1: (2.1, 0.65), 2: (1.9, 0.62)}}, "fid")
    assert falls == "mct 2.00 \u2192 0.62 (lower at the end, beyond the 3 seeds' interval)"
    rises = curve_caption({"mct": {0: (0.60, 2.0), 1: (0.65, 2.1), 2: (0.62, 1.9)}}, "fid")
    assert "(higher at the end, beyond the 3 seeds' interval)" in rises
    flat = curve_caption({"mct": {0: (1.0, 0.9), 1: (1.0, 1.2), 2: (1.0, 0.95)}}, "fid")
    assert "no change beyond seed noise over 3 seeds" in flat and "levelling" not in flat


def test_collapse_note_only_when_the_scores_show_it():
    from mct.report.seeds import collapse_note

    assert collapse_note({"precision": 1.0, "recall": 0.0}).startswith("collapsed: precision 1.00, recall 0.00")
    assert collapse_note({"precision": 0.75, "recall": 0.63}) == ""
    assert collapse_note({"min_mode_recall": 0.0, "modes_covered": 3.0, "num_modes": 8.0}).startswith(
        "collapsed onto part of the mixture: at least one mode gets no samples (5 of 8 modes")
    assert collapse_note({"min_mode_recall": 0.9, "modes_covered": 8.0, "num_modes": 8.0}) == ""


def test_interval_text_for_known_stats_and_one_scale_for_kid():
    from mct.report.seeds import fmt_interval

    iv = Interval(mean=0.00265, n=3, std=0.0001, lo=0.00240, hi=0.00290)
    assert fmt_interval(iv, "kid_mean") == "2.65 [2.40, 2.90], 3 seeds"  # x 10^3: mean and both ends
    assert fmt_interval(Interval(mean=5.31, n=1), "fid") == "5.31, 1 seed"
    assert fmt_interval(Interval(mean=7.6, n=5, std=0.5, lo=7.0, hi=8.2), "modes_covered") == "7.6 [7.0, 8.2], 5 seeds"
    assert fmt_interval(Interval(mean=8.0, n=5, std=0.0, lo=8.0, hi=8.0), "modes_covered") == "8, the same in all 5 seeds"
    assert number_cell(0.0004, "kid_std").text == "0.40"
    narrow = Interval(mean=2.6312, n=2, std=0.0004, lo=2.6276, hi=2.6348)  # narrower than FID's 2 decimals
    assert fmt_interval(narrow, "fid") == "2.631 [2.628, 2.635], 2 seeds"


def test_a_new_section_is_one_module_and_one_line(tmp_path, monkeypatch):
    """Room for sections the template does not know (e.g. paper scale): registered in SECTIONS, rendered
    generically from intro, tables, figures and notes, numbered after the others."""
    from mct.report import build as B
    from mct.report.tables import Cell, Row, Table

    extra = SimpleNamespace(build=lambda inputs: {"intro": "paper-scale runs", "notes": ["a note"], "figures": [],
                                                  "tables": [Table([("A", "")], [Row([Cell("1", "num")])], kind="extra")]})
    monkeypatch.setattr(B, "SECTIONS", B.SECTIONS + [("paper-scale", "Paper scale", extra)])
    res, raw = make_results(tmp_path, benches=("digits",))
    html = build_report(raw, RunContext(results_dir=res)).read_text()
    sec = re.search(r'<section id="paper-scale">(.*?)</section>', html, re.S).group(1)
    assert "<h2>7. Paper scale</h2>" in sec and "paper-scale runs" in sec and "a note" in sec
    assert parse(html).tables["extra"] == [["A"], ["1"]] and 'href="#paper-scale"' in html


def test_k_sweep_one_run_per_k_and_the_baseline_is_z_frozen():
    """The main run is its K's point (its seeds, not averaged with anything); at K = 1 the z-frozen
    baseline, not the z-moving ablation; a second run at a K goes to the z-chain table."""
    from mct.report.collect import BenchResults
    from mct.report.sections.common import k1_variant, k_sweep

    def run(v, K, gz, seed=0):
        return RunMetrics(bench="digits", variant=v, nfe=1, provenance=PROV, scores=Scores({"fid": 1.0}),
                          settings={"K": K, "gamma_z": gz, "reparam": True, "seed": seed})

    runs = {"mct": run("mct", 4, 0.02), "k1-zmoving": run("k1-zmoving", 1, 0.02), "k1": run("k1", 1, 0.0),
            "k4-zfrozen": run("k4-zfrozen", 4, 0.0), "k8": run("k8", 8, 0.02), "k16-zfrozen": run("k16-zfrozen", 16, 0.0)}
    b = BenchResults("digits", True, list(runs), list(runs), runs=runs)
    assert k1_variant(b) == "k1"
    points, zchain = k_sweep(b)
    assert points == ["k1", "mct", "k8", "k16-zfrozen"] and sorted(zchain) == ["k1-zmoving", "k4-zfrozen"]
