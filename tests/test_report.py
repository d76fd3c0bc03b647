"""`mct report`: results/report.html rendered from a results tree, checked statically and
in headless Chromium (every image loads, the main tables hold numbers, nothing is
requested from the network), with a screenshot.

The results tree comes from :func:`results_source`: by default a synthetic but realistic
tree written here (:func:`make_synthetic_results`); set ``MCT_REPORT_RESULTS`` (and
optionally ``MCT_REPORT_CONFIG``) to render a real one instead, e.g. the quick run's
``results/quick`` with ``config/quick.yaml``.

The screenshot goes to ``<tmp>/report.png`` and is copied, with the HTML, to
``results/test-report/`` in the repository (``MCT_REPORT_SCREENSHOT_DIR`` overrides).
Chromium is required when ``CI`` is set (install: ``bash .ci/install-chromium.sh``);
elsewhere the browser tests are skipped when it is absent."""

from __future__ import annotations

import io
import json
import math
import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from mct.benchmarks.base import RunContext
from mct.report import build as report_build
from mct.report.browser import check_page, find_chromium
from mct.report.build import build_report
from mct.report.collect import class_hist, speed_records, teacher_rows
from mct.report.tables import fmt_auto, fmt_duration, number_cell

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ["mct", "no-reparam", "no-nc", "random-init", "k1", "k2", "k4", "k8", "k16"]
K_OF = {"mct": 8, "no-reparam": 8, "no-nc": 8, "random-init": 8, "k1": 1, "k2": 2, "k4": 4, "k8": 8, "k16": 16}


# --- a synthetic results tree, shaped like the benchmarks' outputs --------------------

def _png(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _digit_grid(rng: np.random.Generator, n: int = 64, size: int = 8, noise: float = 0.1) -> bytes:
    """An 8x8 grid of 8x8 'digits' (digit glyphs drawn small, plus noise), padded like
    torchvision's make_grid."""
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
        grid[pad + r * (size + pad): pad + r * (size + pad) + size, pad + c * (size + pad): pad + c * (size + pad) + size] = \
            (255 * (1 - g)).astype(np.uint8)
    return _png(grid)


def _write(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    elif isinstance(data, str):
        path.write_text(data)
    else:
        path.write_text(json.dumps(data, indent=1))


def _csv(path: Path, rows: list[dict]) -> None:
    cols = list(rows[0])
    _write(path, "\n".join([",".join(cols)] + [",".join(str(r[c]) for c in cols) for r in rows]) + "\n")


def _logs(run: Path, rng, k: int, noisy: bool, fid_end: float, iters: int = 600, eval_log: bool = True) -> None:
    train = []
    for it in range(10, iters + 1, 10):
        scale = 0.35 if noisy else 0.12
        train.append({"iteration": it, "loss_g": round(-0.1 * math.log(it), 5), "loss_s": round(0.3 / math.sqrt(it), 5),
                      "grad_norm_g": round(abs(1.0 + scale * rng.standard_normal()), 5),
                      "eps_rms": round(1.0 + 0.02 * rng.standard_normal(), 5), "nu_rms": round(0.9 + 0.02 * rng.standard_normal(), 5),
                      "seconds": round(it * 0.21 * (1 + k / 8), 3)})
    _csv(run / "train_log.csv", train)
    if eval_log:
        _csv(run / "eval_log.csv", [{"iteration": it, "mode_mass_tv": round(fid_end / 10 + 0.8 * math.exp(-it / 150), 4)}
                                    for it in range(100, iters + 1, 100)])


def make_synthetic_results(root: Path, benches=("toy2d", "digits", "digits-text")) -> tuple[Path, dict]:
    """Write a results tree for toy2d, digits and digits-text (all variants of the first
    two, two of the third), speed measurements, and return (results_dir, raw config).
    ``benches`` drops the others (files and config) for quicker tests."""
    rng = np.random.default_rng(0)
    res = root / "results"
    # toy2d: 8-mode ring, weights 1..8; K = 1 collapses onto the heaviest modes
    angles = np.arange(8) * 2 * np.pi / 8
    means = 4 * np.stack([np.cos(angles), np.sin(angles)], 1)
    w = np.arange(1, 9) / 36
    _write(res / "toy2d/teacher.json", {"means": means.tolist(), "stds": [0.25] * 8, "weights": w.tolist()})
    summary = []
    for v in VARIANTS:
        k = K_OF[v]
        temp = {1: 6.0, 2: 2.0, 4: 1.2}.get(k, 1.0) if v != "random-init" else 1.4
        p = w ** temp / (w ** temp).sum()
        lab = rng.choice(8, size=3000, p=p)
        x = means[lab] + 0.27 * rng.standard_normal((3000, 2))
        buf = io.BytesIO()
        np.savez_compressed(buf, x=x.astype(np.float32))
        run = res / "toy2d/runs" / v
        _write(run / "samples.npz", buf.getvalue())
        mass = np.bincount(lab, minlength=8) / len(lab)
        m = {"variant": v, "K": k, "reparam": v != "no-reparam", "noise_cancel": v != "no-nc",
             "gamma_eps": 0.1, "gamma_z": 0.0 if k == 1 else 0.05, "init": "random" if v == "random-init" else "teacher",
             "nfe": 1, "iterations": 600, "train_seconds": round(40 + 6 * k + rng.random(), 3), "seed": 0,
             "mode_mass_tv": round(float(0.5 * np.abs(mass - w).sum()), 4), "modes_covered": int((mass >= 0.25 * w).sum()),
             "num_modes": 8, "mean_true_logpdf": round(-1.2 - 0.1 * rng.random(), 4),
             "energy_distance": round(float(0.5 * np.abs(mass - w).sum()) * 0.3 + 0.002, 5),
             "mode_mass": [round(float(a), 5) for a in mass], "true_mode_weight": [round(float(a), 5) for a in w],
             "samples_per_second": 2.1e6}
        _write(run / "metrics.json", m)
        _logs(run, rng, k, noisy=(v == "no-nc"), fid_end=m["mode_mass_tv"] * 10)
        summary.append({c: m[c] for c in ["variant", "K", "reparam", "noise_cancel", "mode_mass_tv", "modes_covered",
                                          "mean_true_logpdf", "energy_distance"]})
    _csv(res / "toy2d/summary.csv", summary)

    # digits: shaped like mct.benchmarks.digits writes it: teacher "rows" per NFE (7/15/35) with
    # fid_by_nfe and the real-vs-real floor, feature net, all variants (class histograms, measured
    # M-step gradient variance, fid_curve), one MCMC correction, summary.json with its claims
    floor = {"fid": 1.12, "kid_mean": 0.0002, "kid_std": 0.0001, "what": "train split vs held-out split"}
    teacher_rows_ = [{"nfe": n, "nfe_measured": n, "fid": f, "kid_mean": kk, "kid_std": 0.0004, "precision": p,
                      "recall": r, "f_score": 0.6, "class_hist": [0.1] * 10, "class_entropy": 2.302,
                      "class_accuracy": 0.97, "sample_seconds": 10.0 * n, "num_samples": 2000}
                     for n, f, kk, p, r in [(7, 21.37, 0.0183, 0.61, 0.52), (15, 6.42, 0.0041, 0.74, 0.66),
                                            (35, 4.18, 0.0022, 0.78, 0.70)]]
    _write(res / "digits/teacher/metrics.json", {
        "bench": "digits", "guidance": 1.0, "sampler": "heun", "num_samples": 2000, "reference": "held-out split",
        "rows": teacher_rows_, "fid_by_nfe": {str(r["nfe"]): r["fid"] for r in teacher_rows_}, "real_floor": floor})
    _csv(res / "digits/teacher/train_log.csv", [{"iteration": i, "loss": 0.1, "lr": 1e-3, "seconds": 4.1 * i}
                                                 for i in (50, 100)])
    _write(res / "digits/teacher/samples.png", _digit_grid(rng, noise=0.05))
    _write(res / "digits/features/metrics.json", {"heldout_accuracy": 0.9833, "train_accuracy": 0.999,
                                                  "train_seconds": 35.2, "params": 52000, "real_floor": floor})
    fids = {"mct": 5.31, "no-reparam": 6.02, "no-nc": 5.77, "random-init": 14.9, "k1": 9.85, "k2": 7.1, "k4": 5.6,
            "k8": 5.29, "k16": 5.12}
    for v in VARIANTS:
        k = K_OF[v]
        hist = np.ones(10) if k > 2 else np.array([3, 0.2, 2, 0.5, 1.5, 0.1, 1, 0.3, 2, 0.4])
        hist = hist * (1 + 0.05 * rng.standard_normal(10)).clip(0.5)
        hist = hist / hist.sum()
        run = res / "digits/runs" / v
        var_nc = 0.8 + 0.1 * k
        m = {"fid": fids[v], "kid_mean": round(fids[v] / 2000, 5), "kid_std": 0.0005, "kid_subset_size": 500,
             "precision": round(0.8 - fids[v] / 100, 4), "recall": round(0.72 - fids[v] / 60, 4), "f_score": 0.6,
             "class_hist": [round(float(h), 6) for h in hist], "class_entropy": round(float(-(hist * np.log(hist)).sum()), 4),
             "class_entropy_max": 2.302585, "class_kl_uniform": 0.01, "classes_covered": int((hist >= 0.025).sum()),
             "class_accuracy": round(0.9 - fids[v] / 100, 4),
             "mstep_grad_var_nc": var_nc, "mstep_grad_var_no_nc": var_nc * 3.4, "mstep_grad_batches": 8,
             "mstep_grad_var": var_nc * (3.4 if v == "no-nc" else 1.0), "mstep_grad_seconds": 3.0,
             "bench": "digits", "variant": v, "nfe": 1, "K": k, "reparam": v != "no-reparam",
             "noise_cancel": v != "no-nc", "gamma_eps": 0.1, "gamma_z": 0.0 if k == 1 else 0.05,
             "init": "random" if v == "random-init" else "teacher", "conditional": True, "sigma_g": 2.5,
             "iterations": 600, "train_seconds": round(300 + 30 * k, 1), "num_samples": 2000,
             "sample_seconds": 0.4, "samples_per_second": 5000.0, "seed": 0, "device": "cpu",
             "fid_curve": [{"iteration": it, "fid": round(fids[v] + 40 * math.exp(-it / 150), 3)}
                           for it in range(100, 601, 100)]}
        _write(run / "metrics.json", m)
        _write(run / "samples.png", _digit_grid(rng, noise=0.1 + fids[v] / 100))
        _logs(run, rng, k, noisy=(v == "no-nc"), fid_end=fids[v], eval_log=False)
    corr = res / "digits/runs/mct/correct"
    _write(corr / "before.png", _digit_grid(rng, noise=0.25))
    _write(corr / "after.png", _digit_grid(rng, noise=0.05))
    _write(corr / "metrics.json", {"bench": "digits", "variant": "mct", "steps": 300, "sigma": 0.2, "gamma_eps": 0.05,
                                   "gamma_z": 0.02, "num_samples": 2000, "seconds": 14.2,
                                   "before": {"fid": 5.31}, "after": {"fid": 4.92}, "fid_before": 5.31,
                                   "fid_after": 4.92, "z_moved_rms": 0.31, "image_moved_rms": 0.12})
    _write(res / "digits/summary.json", {"bench": "digits", "variants": VARIANTS, "missing": [], "claims": [
        {"claim": "one-step mct FID <= teacher FID at 35 NFE", "mct_fid": 5.31, "teacher_fid": 4.18, "holds": False},
        {"claim": "mct beats k1 (reverse KL) on FID or class_accuracy", "mct_fid": 5.31, "k1_fid": 9.85, "holds": True},
        {"claim": "noise cancellation lowers the M-step gradient variance (same state, same chains)",
         "with_nc": 1.6, "without_nc": 5.44, "holds": True}]})

    # digits-text: shaped like mct.benchmarks.digits_text: one teacher row (a flat dict), tiny CLIP
    _write(res / "digits-text/teacher/metrics.json", {
        "fid": 7.5, "kid_mean": 0.003, "kid_std": 0.0004, "clip_score": 27.81, "clip_score_fraction": 0.92,
        "class_accuracy": 0.95, "class_entropy": 2.30, "classes_covered": 10, "clip_score_real": 30.1,
        "variant": "teacher", "nfe": 35, "sampler": "heun", "guidance_scale": 2.0, "num_samples": 1000,
        "sample_seconds": 80.5, "train_seconds": 640.0, "iterations": 3000})
    _write(res / "digits-text/teacher/samples.png", _digit_grid(rng))
    _write(res / "digits-text/clip/metrics.json", {"clip_score_real": 30.1, "clip_score_real_fraction": 1.0,
                                                  "clip_score_shuffled": 12.4, "zero_shot_accuracy": 0.931,
                                                  "num_heldout": 360, "train_seconds": 48.0, "steps": 400})
    for v, fid, cs in (("mct", 8.1, 27.6), ("k1", 11.3, 26.8)):
        run = res / "digits-text/runs" / v
        _write(run / "metrics.json", {"fid": fid, "kid_mean": 0.004, "kid_std": 0.0005, "precision": 0.7,
                                      "recall": 0.6, "clip_score": cs, "class_accuracy": 0.9, "class_entropy": 2.29,
                                      "classes_covered": 10, "clip_score_real": 30.1, "variant": v, "nfe": 1,
                                      "K": K_OF[v], "init": "teacher", "iterations": 500, "train_seconds": 250.0,
                                      "sample_seconds": 0.3, "seed": 0})
        _write(run / "samples.png", _digit_grid(rng))

    # speed
    _write(res / "bench/digits.json", {
        "bench": "digits", "device": "cpu", "batch_size": 256,
        "teacher": [{"nfe": n, "images_per_s": ips} for n, ips in ((35, 212.0), (15, 488.0), (7, 1020.0))],
        "student": {"nfe": 1, "images_per_s": 6930.0, "peak_memory_mb": 143.0},
        "em_overhead": [{"K": k, "seconds_per_iteration": 0.05 + 0.012 * k} for k in (1, 4, 8, 16)],
        "seconds": 18.2})
    _write(res / "bench/toy2d.json", {"bench": "toy2d", "samplers": [
        {"name": "teacher (exact mixture, Heun)", "nfe": 35, "images_per_s": 91000.0},
        {"name": "student", "nfe": 1, "images_per_s": 2.1e6}]})

    variants = {v: ({"em": {"num_steps": K_OF[v]}} if v.startswith("k") else {}) for v in VARIANTS}
    raw = {"results_dir": str(res), "device": "cpu",
           "benchmarks": {"toy2d": {"variants": variants, "train": {"seed": 0}, "eval": {"seed": 1234}},
                          "digits": {"variants": variants, "seed": 0},
                          "digits-text": {"variants": {"mct": {}, "k1": {}}}},
           "report": {"strict": True}}
    for b in ("toy2d", "digits", "digits-text"):
        if b not in benches:
            shutil.rmtree(res / b)
            (res / "bench" / f"{b}.json").unlink(missing_ok=True)
            del raw["benchmarks"][b]
    return res, raw


def results_source(tmp: Path) -> tuple[Path, dict]:
    """The results tree the tests render: ``MCT_REPORT_RESULTS`` when set (a real run,
    e.g. results/quick, with the config in ``MCT_REPORT_CONFIG``), else the synthetic one."""
    real = os.environ.get("MCT_REPORT_RESULTS")
    if real:
        import yaml

        cfg = os.environ.get("MCT_REPORT_CONFIG")
        raw = yaml.safe_load(Path(cfg).read_text()) if cfg else {}
        raw = {**raw, "report": {**(raw.get("report") or {}), "strict": True}}
        out = tmp / "results"
        shutil.copytree(real, out)
        return out, raw
    return make_synthetic_results(tmp)


SYNTHETIC = not os.environ.get("MCT_REPORT_RESULTS")


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
        pytest.skip("chromium not installed (bash .ci/install-chromium.sh); CI runs this test")
    return exe


@pytest.fixture(scope="module")
def page(report, tmp_path_factory):
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
    for sid in ("summary", "main", "ablations", "modes", "samples", "speed"):
        assert f'<section id="{sid}">' in html
    assert 'class="section-error"' not in html


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
    # not run here, with the exact command
    for name in ("imagenet64", "imagenet128", "sd15"):
        cmd = f"snakemake --cores all --configfile config/{name}.yaml --profile workflow/profiles/slurm"
        ours = row_of(t[f"main-{name}"], "MCT (this pipeline)")
        assert "not run here" in ours[1] and cmd in ours[1]
        assert f"<code>{cmd}</code>" in html


@pytest.mark.skipif(not SYNTHETIC, reason="checks the synthetic tree's values")
def test_measured_rows_embedded_tasks(report):
    _, html = report
    t = parse(html).tables
    dg = t["main-digits"]
    header = dg[0]
    fid_col = header.index("FID \u2193")
    assert [row_of(dg, f"Teacher, {n} NFE")[fid_col] for n in (7, 15, 35)] == ["21.37", "6.42", "4.18"]
    mct = row_of(dg, "MCT one-step student")
    assert mct[fid_col] == "5.31" and mct[header.index("NFE")] == "1"
    assert mct[header.index("KID\u00d710\u00b3 \u2193")] == f"{round(5.31 / 2000, 5) * 1e3:.2f} \u00b1 0.50"  # x 1e3
    assert row_of(dg, "K = 1 baseline")[fid_col] == "9.85"
    assert "held-out accuracy 0.983" in html and "FID floor (two disjoint sets of real images): 1.12" in html
    assert row_of(dg, "MCT one-step student")[header.index("Class accuracy \u2191")] == "0.847"
    claims = t["claims-digits"]
    assert row_of(claims, "one-step mct FID")[-1] == "no" and row_of(claims, "mct beats k1")[-1] == "yes"
    txt = t["main-digits-text"]
    clip_col = txt[0].index("CLIP score \u2191")
    assert row_of(txt, "MCT one-step student")[clip_col] == "27.60"
    assert row_of(txt, "Teacher, 35 NFE")[clip_col] == "27.81"
    assert "zero shot accuracy 0.931" in html
    toy = t["main-toy2d"]
    assert "Mode-mass TV \u2193" in toy[0]


@pytest.mark.skipif(not SYNTHETIC, reason="checks the synthetic tree's values")
def test_summary_ablations_speed_tables(report):
    _, html = report
    t = parse(html).tables
    status = t["benchmarks"]
    assert row_of(status, "digits")[-1] == "complete" and row_of(status, "digits")[5] == "9/9"
    assert row_of(status, "imagenet64")[-1] == "not run here"
    timing = t["timing"]
    assert row_of(timing, "total")[-1]  # a duration
    digits_distill = [r for r in timing if r[:2] == ["digits", "distill"]][0]
    assert digits_distill[2] == "9"  # nine runs summed
    prov = dict((r[0], r[1]) for r in t["provenance"][1:])
    assert re.fullmatch(r"[0-9a-f]{16}", prov["config hash"])
    assert "torch" in dict((r[0], r[1]) for r in t["versions"][1:])
    seeds = dict((r[0], r[1]) for r in t["seeds"][1:])
    assert seeds["benchmarks.toy2d.train.seed"] == "0" and seeds["benchmarks.toy2d.eval.seed"] == "1234"
    abl = t["ablation-digits"]
    assert [r[0] for r in abl[1:]] == VARIANTS
    assert row_of(abl, "random-init")[abl[0].index("FID \u2193")] == "14.90"
    grad = t["gradvar-digits"]
    cv = grad[0].index("CV")
    assert float(row_of(grad, "no-nc")[cv]) > float(row_of(grad, "mct")[cv])  # the synthetic no-nc is noisier
    gm = t["gradvar-measured-digits"]
    assert row_of(gm, "mct")[gm[0].index("Without / with NC")] == "3.40\u00d7"
    assert row_of(gm, "no-nc")[gm[0].index("Var of its M-step gradient")] == "5.44"
    assert row_of(gm, "k2")[gm[0].index("Var with NC (same chains)")] == "1.00"
    assert not [r for r in timing if r[:2] == ["digits-text", "features"]]  # borrowed from digits: not twice
    assert row_of(status, "digits-text")[4] == "acc 0.983, FID floor 1.12"
    teacher_time = [r for r in timing if r[:2] == ["digits", "teacher train"]][0]
    assert teacher_time[-1] == "6 min 50 s"  # teacher/train_log.csv: 410 s
    teacher_eval = [r for r in timing if r[:2] == ["digits", "teacher eval"]][0]
    assert teacher_eval[2:] == ["3", "9 min 30 s"]  # sample_seconds of the rows at NFE 7, 15, 35
    evaluate = [r for r in timing if r[:2] == ["digits", "evaluate"]][0]
    assert evaluate[2:] == ["18", "31 s"]  # nine runs x (sample_seconds 0.4 + mstep_grad_seconds 3)
    speed = t["speed"]
    hdr = speed[0]
    teacher35 = [r for r in speed if r[0] == "digits" and r[hdr.index("NFE")] == "35"][0]
    assert teacher35[hdr.index("Images/s \u2191")] == "212"
    assert teacher35[hdr.index("Student speed-up \u00d7")] == "32.7"  # 6930 / 212
    assert "overhead" in t
    for kind in ("nfe", "ablation", "ksweep", "gradvar", "gradvarbars", "curve", "scatter", "modemass", "classhist",
                 "speed"):
        assert f'data-figure="{kind}"' in html, kind


def test_partial_results_render_and_mark_missing(tmp_path):
    res, raw = make_synthetic_results(tmp_path)
    shutil.rmtree(res / "digits-text")
    for v in ("k2", "k4", "k8", "k16"):  # fewer runs, fewer figures: quicker
        shutil.rmtree(res / "toy2d" / "runs" / v)
    shutil.rmtree(res / "bench")
    (res / "digits/runs/no-nc/metrics.json").unlink()
    (res / "digits/runs/k4/samples.png").unlink()
    (res / "toy2d/teacher.json").unlink()
    (res / "digits/teacher/metrics.json").write_text("{not json")
    html = build_report(raw, RunContext(results_dir=res)).read_text()
    t = parse(html).tables
    assert "digits-text/runs/mct/metrics.json" in html  # listed as missing
    assert "digits/teacher/metrics.json</code> &mdash; unreadable" in html
    assert "No speed measurements yet" in html
    assert row_of(t["benchmarks"], "digits-text")[-1] == "no results yet"
    assert row_of(t["benchmarks"], "digits")[5] == "8/9"
    assert row_of(t["main-digits-text"], "MCT (this pipeline)")[1].startswith("no results yet")
    nonc = row_of(t["ablation-digits"], "no-nc")
    assert "no metrics.json yet" in nonc[1] and "\u2014" in nonc
    assert "digits/runs/k4/samples.png" in html
    assert 'data-figure="scatter"' in html  # samples still drawn without the density


def test_empty_results_dir_renders(tmp_path):
    res = tmp_path / "empty"
    out = build_report({"benchmarks": {"toy2d": {}}, "report": {"strict": True}}, RunContext(results_dir=res))
    html = out.read_text()
    assert out == res / "report.html"
    assert "No speed measurements yet" in html and "not run here" in html
    assert "none yet" in html


@pytest.fixture(scope="module")
def linked(tmp_path_factory):
    """The synthetic tree rendered elsewhere (``out``) with no image embedded: every sample
    grid is a relative link from the report to the file under results/."""
    tmp = tmp_path_factory.mktemp("linked")
    res, raw = make_synthetic_results(tmp, benches=("digits",))
    raw = {**raw, "report": {"strict": True, "embed_max_bytes": 0}}
    out = build_report(raw, RunContext(results_dir=res), out=tmp / "site" / "r.html")
    assert out == tmp / "site" / "r.html"
    return out


def test_custom_out_and_linked_images(linked):
    html = linked.read_text()
    assert 'src="../results/digits/teacher/samples.png"' in html
    assert 'src="../results/digits/runs/mct/correct/after.png"' in html
    assert "data:image/png;base64," in html  # the figures are still embedded


def test_broken_section_is_shown_not_fatal(tmp_path, monkeypatch):
    res = tmp_path / "results"
    raw = {"benchmarks": {"toy2d": {}}, "report": {"strict": True}}

    def boom(*a, **k):
        raise KeyError("speed went wrong")

    monkeypatch.setattr(report_build, "speed_section", boom)
    raw_lenient = {**raw, "report": {"strict": False}}
    html = build_report(raw_lenient, RunContext(results_dir=res)).read_text()
    assert html.count('class="section-error"') == 1 and "speed went wrong" in html
    assert "main-imagenet64" in html  # the other sections are still there
    with pytest.raises(KeyError):
        build_report(raw, RunContext(results_dir=res))


def test_bad_report_config_is_an_error(tmp_path):
    from mct.errors import ConfigError

    with pytest.raises(ConfigError, match="report"):
        build_report({"report": {"embed_max_bytes": -1}}, RunContext(results_dir=tmp_path))
    with pytest.raises(ConfigError, match="report"):
        build_report({"report": {"no_such_key": 1}}, RunContext(results_dir=tmp_path))


# --- units -------------------------------------------------------------------------

@pytest.mark.parametrize("metrics", [
    {"per_nfe": [{"nfe": 7, "fid": 20.0}, {"nfe": 35, "fid": 4.0}]},
    [{"nfe": 35, "fid": 4.0}, {"nfe": 7, "fid": 20.0}],
    {"nfe": {"7": {"fid": 20.0}, "35": {"fid": 4.0}}},
    {"7": {"fid": 20.0}, "35": {"fid": 4.0}, "sampler": "heun"},
    {"fid": {"7": 20.0, "35": 4.0}},
    {"fid_nfe7": 20.0, "fid_nfe35": 4.0},
    {"results": {"nfe7": {"frechet_inception_distance": 20.0}, "nfe35": {"frechet_inception_distance": 4.0}}},
])
def test_teacher_rows_accepts_the_shapes_in_use(metrics):
    from mct.report.collect import pick_number

    rows = teacher_rows(metrics)
    assert [r["nfe"] for r in rows] == [7, 35]
    assert [pick_number(r, "fid") for r in rows] == [20.0, 4.0]


def test_teacher_rows_single_and_none():
    assert teacher_rows({"nfe": 35, "fid": 3.0})[0]["fid"] == 3.0
    assert teacher_rows({"accuracy": 0.9}) == []


def test_class_hist_and_speed_records():
    assert class_hist({"class_counts": {"1": 3, "0": 1}}) == [0.25, 0.75]
    assert class_hist({"class_hist": [2, 2]}) == [0.5, 0.5]
    assert class_hist({"fid": 1}) is None
    recs = speed_records({"bench": "d", "teacher": [{"nfe": 35, "images_per_s": 10}], "student": {"nfe": 1, "img_per_s": 99}})
    assert sorted((r["name"], r["nfe"]) for r in recs) == [("student", 1), ("teacher", 35)]
    assert all(r["bench"] == "d" for r in recs)


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
    assert page.sections == ["summary", "main", "ablations", "modes", "samples", "speed"]
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
