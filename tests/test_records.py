"""Typed result records: what a stage writes is what the report reads, or a one-line refusal."""

import json
import subprocess
import sys

import pytest

from mct.errors import MCTError
from mct.records import (AuxMetrics, BenchRecord, Claim, Interval, CorrectionMetrics, CurvePoint, EMOverhead, Memory,
                         MixtureTeacher, Provenance, RunMetrics, Scores, Speed, Summary, SummaryRow, TeacherMetrics, TeacherRow,
                         provenance, read_record, write_record)

PROV = Provenance(commit="abc123", dirty=False, config_hash="0123456789abcdef",
                  packages={"torch": "2.14.1", "dvc": None}, created="2026-11-30T12:00:00+00:00")


def run_metrics(**kw):
    base = dict(bench="digits", variant="mct", nfe=1, provenance=PROV,
                scores=Scores(metrics={"fid": 3.5, "kid_mean": 0.0021, "classes_covered": 10.0},
                              class_hist=[0.1] * 10),
                settings={"K": 16, "reparam": True, "init": "teacher", "gamma_z": 0.0},
                num_samples=2000, iterations=400, train_seconds=12.5, sample_seconds=0.5,
                fid_curve=[CurvePoint(iteration=100, fid=9.0), CurvePoint(iteration=400, fid=3.5)],
                notes={"reference": "held-out split"})
    base.update(kw)
    return RunMetrics(**base)


def every_record():
    s = Scores(metrics={"fid": 2.0, "precision": 0.7})
    return [
        run_metrics(),
        TeacherMetrics(bench="digits", provenance=PROV, sampler="heun", guidance=0.0,
                       rows=[TeacherRow(nfe=7, scores=s, nfe_measured=7), TeacherRow(nfe=35, scores=Scores({"fid": 1.0}))],
                       real_floor=Scores({"fid": 0.4}), init_generator=Scores({"fid": 40.0})),
        AuxMetrics(bench="digits", net="features", provenance=PROV, metrics={"heldout_accuracy": 0.99},
                   real_floor=Scores({"fid": 0.4})),
        CorrectionMetrics(bench="digits", variant="mct", steps=20, sigma=0.5, gamma_eps=0.05, gamma_z=0.0,
                          num_samples=500, seconds=3.0, before=Scores({"fid": 4.0, "kid_mean": 0.003}),
                          after=Scores({"fid": 3.0, "kid_mean": 0.004}), provenance=PROV),
        Summary(bench="digits", provenance=PROV,
                rows=[SummaryRow(variant="mct", nfe=1, settings={"K": 16}, metrics={"fid": 3.5})],
                claims=[Claim(claim="mct beats k1 on FID", verdict="holds", metric="fid", basis="paired over 3 seeds",
                              diff=Interval(mean=-1.5, n=3, std=0.2, lo=-2.0, hi=-1.0), values={"mct": 3.5, "k1": 5.0})]),
        BenchRecord(bench="toy2d", device="cpu", provenance=PROV, batch_size=256,
                    student=Speed(name="student", nfe=1, images_per_s=1e5, ms_per_batch=2.56, batch_size=256),
                    teacher=[Speed(name="heun 7", nfe=7, images_per_s=1.5e4, ms_per_batch=17.0, batch_size=256,
                                   speedup=6.7, target_met=True)],
                    em=EMOverhead(K=16, iteration_ms=30.0, passes_sum_ms=28.0, overhead_ratio=1.07,
                                  passes_ms={"teacher_forward": 1.0}, passes_count={"teacher_forward": 16}),
                    memory=Memory(method="VmHWM", per_sample_bytes={"em_iteration": 4096})),
        BenchRecord(bench="sd15", device="cpu", provenance=PROV, skipped="text-conditioned"),
        MixtureTeacher(bench="toy2d", means=[[0.0, 4.0], [4.0, 0.0]], stds=[0.25, 0.25], weights=[0.4, 0.6],
                       provenance=PROV),
    ]


@pytest.mark.parametrize("rec", every_record(), ids=lambda r: type(r).__name__)
def test_round_trip(tmp_path, rec):
    path = write_record(tmp_path / "x.json", rec)
    obj = json.loads(path.read_text())
    assert obj["kind"] == rec.KIND and obj["schema_version"] == rec.SCHEMA_VERSION
    back = read_record(path, type(rec))
    assert back == rec


def test_values_survive_exactly(tmp_path):
    rec = run_metrics()
    back = read_record(write_record(tmp_path / "m.json", rec), RunMetrics)
    assert back.scores.metrics["fid"] == 3.5
    assert back.settings == {"K": 16, "reparam": True, "init": "teacher", "gamma_z": 0.0}
    assert type(back.settings["K"]) is int and type(back.settings["reparam"]) is bool
    assert back.fid_curve[1] == CurvePoint(iteration=400, fid=3.5)
    assert back.samples_per_second == 4000.0


def _write_raw(tmp_path, obj):
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(obj))
    return p


def _good(tmp_path):
    return json.loads(write_record(tmp_path / "good.json", run_metrics()).read_text())


def test_wrong_schema_version_refused(tmp_path):
    obj = _good(tmp_path)
    obj["schema_version"] = 99
    with pytest.raises(MCTError, match=r"schema_version is 99"):
        read_record(_write_raw(tmp_path, obj), RunMetrics)


def test_wrong_kind_refused(tmp_path):
    obj = _good(tmp_path)
    with pytest.raises(MCTError, match=r"kind is 'run_metrics', expected 'teacher_metrics'"):
        read_record(_write_raw(tmp_path, obj), TeacherMetrics)


@pytest.mark.parametrize("mutate,message", [
    (lambda o: o["scores"]["metrics"].update(fid="3.5"), r"scores\.metrics\.fid must be float"),
    (lambda o: o["scores"]["metrics"].update(fid=True), r"scores\.metrics\.fid must be float, not bool"),
    (lambda o: o.update(nfe=1.0), r"nfe must be int, not float"),
    (lambda o: o.update(iterations=True), r"iterations must be int"),
    (lambda o: o["fid_curve"][0].update(fid=None), r"fid_curve\[0\]\.fid is null"),
    (lambda o: o.update(variant=None), r"variant is null"),
    (lambda o: o.pop("bench"), r"bench is missing"),
    (lambda o: o["provenance"].pop("commit"), r"provenance\.commit is missing"),
    (lambda o: o["scores"].update(class_hist="0.1"), r"class_hist must be"),
])
def test_wrong_types_refused(tmp_path, mutate, message):
    obj = _good(tmp_path)
    mutate(obj)
    with pytest.raises(MCTError, match=message):
        read_record(_write_raw(tmp_path, obj), RunMetrics)


def test_non_finite_refused(tmp_path):
    obj = _good(tmp_path)
    p = tmp_path / "nan.json"
    p.write_text(json.dumps(obj).replace('"fid": 3.5', '"fid": NaN'))
    with pytest.raises(MCTError, match=r"fid is nan, not a finite number"):
        read_record(p, RunMetrics)
    with pytest.raises(MCTError, match="not a finite number"):
        write_record(tmp_path / "w.json", run_metrics(scores=Scores({"fid": float("inf")})))
    assert not (tmp_path / "w.json").exists()


@pytest.mark.parametrize("mutate,message", [
    (lambda o: o.update(fid50k=3.0), r"unknown key\(s\) 'fid50k'"),
    (lambda o: o["scores"].update(extra=[1.0]), r"scores has unknown key\(s\) 'extra'"),
    (lambda o: o["provenance"].update(host="gpu7"), r"provenance has unknown key\(s\) 'host'"),
    (lambda o: o["scores"]["metrics"].update(frechet_distance=3.0), r"undocumented name\(s\) 'frechet_distance'"),
    (lambda o: o["settings"].update(nc=True), r"settings has undocumented name\(s\) 'nc'"),
])
def test_extra_keys_refused(tmp_path, mutate, message):
    obj = _good(tmp_path)
    mutate(obj)
    with pytest.raises(MCTError, match=message):
        read_record(_write_raw(tmp_path, obj), RunMetrics)


def test_bad_files_one_line(tmp_path):
    for content in ("{not json", "[1, 2]", ""):
        p = tmp_path / "f.json"
        p.write_text(content)
        with pytest.raises(MCTError) as exc:
            read_record(p, RunMetrics)
        assert "\n" not in str(exc.value) and str(p) in str(exc.value)
    with pytest.raises(MCTError, match="does not exist"):
        read_record(tmp_path / "none.json", RunMetrics)


def test_write_refuses_bad_record_and_leaves_nothing(tmp_path):
    rec = run_metrics(settings={"K": 16, "colour": "red"})
    with pytest.raises(MCTError, match="undocumented"):
        write_record(tmp_path / "m.json", rec)
    assert list(tmp_path.iterdir()) == []


def test_scores_from_flat():
    flat = {"fid": 3, "kid_mean": 0.002, "class_hist": [0.5, 0.5], "class_accuracy": None, "reference": "x"}
    s = Scores.from_flat(flat, ignore=("reference",))
    assert s.metrics == {"fid": 3.0, "kid_mean": 0.002} and s.class_hist == [0.5, 0.5]
    with pytest.raises(MCTError, match="reference"):
        Scores.from_flat(flat)


def test_correction_change_direction():
    rec = every_record()[3]
    assert rec.change("fid") == (4.0, 3.0, True)  # lower is better: 4 -> 3 helped
    assert rec.change("kid_mean") == (0.003, 0.004, False)
    assert rec.change("precision") is None


def test_paths_and_helpers(tmp_path):
    assert RunMetrics.path(tmp_path, bench="digits", variant="mct") == tmp_path / "digits/runs/mct/metrics.json"
    assert AuxMetrics.path(tmp_path, bench="digits", net="clip") == tmp_path / "digits/clip/metrics.json"
    assert TeacherMetrics.path(tmp_path, bench="sd15") == tmp_path / "sd15/teacher/metrics.json"
    assert every_record()[1].fid_by_nfe() == {7: 2.0, 35: 1.0}
    assert every_record()[4].csv_rows() == [{"variant": "mct", "nfe": 1, "K": 16, "seeds": "", "fid_mean": 3.5,
                                             "fid_std": None, "fid_n": 1, "fid_lo95": None, "fid_hi95": None}]
    two = Summary(bench="digits", provenance=every_record()[4].provenance, rows=[SummaryRow(
        variant="mct", nfe=1, metrics={"fid": 3.0}, seeds=[0, 1],
        stats={"fid": Interval(mean=3.0, n=2, std=1.0, lo=-5.98, hi=11.98)})])
    assert two.csv_rows()[0] == {"variant": "mct", "nfe": 1, "seeds": "0 1", "fid_mean": 3.0, "fid_std": 1.0,
                                 "fid_n": 2, "fid_lo95": -5.98, "fid_hi95": 11.98}


def test_provenance_helper_records_this_checkout():
    p = provenance("feedbeef")
    assert p.config_hash == "feedbeef"
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                          cwd=__import__("mct").__path__[0]).stdout.strip()
    assert p.commit == (head or None)
    assert p.packages["torch"] is not None and "T" in p.created


def test_records_import_is_cheap():
    code = "import sys, mct.records; print(any(m in sys.modules for m in ('torch', 'pandas', 'numpy')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
