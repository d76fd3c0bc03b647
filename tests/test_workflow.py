"""The pipeline (issue 4): the stage table in mct.pipeline, the Snakemake workflow and dvc.yaml
built from it, and the generated files kept current.

Slow tests run the real tools in a temporary copy of the repository (tracked and
untracked-but-not-ignored files), with PYTHONPATH pointing at the copy's sources so the
jobs run the copy's code."""

from __future__ import annotations

import copy
import csv
import importlib.machinery
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from mct.benchmarks.base import REGISTRY, Benchmark, get_benchmark
from mct.cli import build_parser, main
from mct.config import json_schema, load_yaml
from mct.errors import ConfigError
from mct.pipeline.code_deps import code_files
from mct.pipeline.dvc import dvc_yaml
from mct.pipeline.stages import is_committed
from mct.pipeline.jobs import Pipeline
from mct.pipeline.resources import ClusterConfig
from mct.pipeline.schema import config_schema
from mct.pipeline.stages import BENCH_STAGES

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
QUICK = REPO / "config" / "quick.yaml"


# ----------------------------------------------------------------------------- generated files are current


def test_committed_dvc_yaml_is_generated_from_the_stage_table():
    committed = (REPO / "dvc.yaml").read_text(encoding="utf-8")
    generated = dvc_yaml(Pipeline("config/default.yaml", raw=load_yaml(REPO / "config/default.yaml"), base=REPO))
    assert committed == generated, "dvc.yaml is stale: run `mct workflow dvc` at the repository root"


def test_committed_schema_is_mct_config_schema(capsys):
    assert main(["config", "schema"]) == 0
    printed = capsys.readouterr().out
    committed = (REPO / "workflow/schemas/config.schema.yaml").read_text(encoding="utf-8")
    assert committed == printed, ("workflow/schemas/config.schema.yaml is stale: "
                                  "mct config schema > workflow/schemas/config.schema.yaml")


def test_schema_embeds_every_registered_benchmark():
    schema = config_schema()
    assert schema["$schema"].endswith("2020-12/schema")
    benches = schema["properties"]["benchmarks"]["properties"]
    assert sorted(benches) == sorted(REGISTRY)
    for name in REGISTRY:
        assert benches[name] == json_schema(get_benchmark(name).config_cls)
    assert schema["properties"]["cluster"] == json_schema(ClusterConfig)


@pytest.mark.parametrize("path", sorted((REPO / "config").glob("*.yaml")), ids=lambda p: p.name)
def test_every_config_file_validates_against_the_schema(path):
    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    data = load_yaml(path)
    jsonschema.Draft202012Validator(schema).validate(data)


def test_schema_rejects_an_unknown_key():
    schema = config_schema()
    bad = copy.deepcopy(load_yaml(QUICK))
    bad["benchmarks"]["toy2d"]["trian"] = {}
    with pytest.raises(jsonschema.ValidationError, match="trian"):
        jsonschema.Draft202012Validator(schema).validate(bad)
    bad = {"cluster": {"stages": {"distill": {"gpu": 1}}}}
    with pytest.raises(jsonschema.ValidationError, match="gpu"):
        jsonschema.Draft202012Validator(schema).validate(bad)


def test_benchmarks_declare_only_stages_the_table_and_cli_know():
    for name in REGISTRY:
        bench = get_benchmark(name)
        for stage in bench.stages:
            assert stage in BENCH_STAGES, f"{name} declares {stage}, which the stage table lacks"
            assert callable(getattr(bench, stage, None)), f"{name} declares {stage} but has no such method"


# ----------------------------------------------------------------------------- the table for toy2d (quick)


def quick_pipeline(raw=None):
    return Pipeline("config/quick.yaml", raw=load_yaml(QUICK) if raw is None else raw, base=REPO)


def test_toy2d_jobs_follow_the_results_layout():
    p = quick_pipeline()
    raw = load_yaml(QUICK)
    rd = raw["results_dir"]
    variants = list(raw["benchmarks"]["toy2d"]["variants"])
    toy = {j.name: j for j in p.jobs if j.bench == "toy2d"}
    assert set(toy) == ({f"distill_toy2d_{v}" for v in variants} | {f"evaluate_toy2d_{v}" for v in variants}
                        | {"teacher_eval_toy2d", "summarize_toy2d", "export_toy2d_mct"})
    t = toy["teacher_eval_toy2d"]  # exact samples of the analytic mixture: the toy table's reference row
    assert t.deps == () and t.outs == () and t.metrics == (f"{rd}/toy2d/teacher/metrics.json",)
    assert t.cmd == ("mct", "teacher", "eval", "--config", "config/quick.yaml", "--bench", "toy2d")
    assert t.param_keys == ("benchmarks.toy2d.eval",)  # quick.yaml sets eval, not teacher: training knobs do not rerun it
    x = toy["export_toy2d_mct"]  # the main run only, after its evaluation (the export carries its metrics)
    assert x.outs == (f"{rd}/toy2d/export/mct",) and set(x.deps) == {f"{rd}/toy2d/runs/mct/checkpoint.pt",
                                                                       f"{rd}/toy2d/runs/mct/metrics.json"}
    assert x.cmd == ("mct", "export", "--config", "config/quick.yaml", "--bench", "toy2d", "--variant", "mct")
    for v in variants:
        d, e = toy[f"distill_toy2d_{v}"], toy[f"evaluate_toy2d_{v}"]
        run = f"{rd}/toy2d/runs/{v}"
        assert d.outs == (f"{run}/checkpoint.pt",) and d.plots == (f"{run}/train_log.csv",)
        assert d.deps == ()  # the toy teacher is analytic: nothing to train or fetch
        assert e.deps == (f"{run}/checkpoint.pt",)
        assert e.metrics == (f"{run}/metrics.json",) and e.outs == (f"{run}/samples.png",)
        assert d.cmd == ("mct", "distill", "--config", "config/quick.yaml", "--bench", "toy2d", "--variant", v)
        assert d.log == f"logs/distill/toy2d/{v}.log"
    s = toy["summarize_toy2d"]
    assert set(s.deps) == {f"{rd}/toy2d/runs/{v}/metrics.json" for v in variants} | {f"{rd}/toy2d/teacher/metrics.json"}
    assert s.outs == (f"{rd}/toy2d/summary.csv",)
    # bench: toy2d's part is the generator of bench.variant (mct); its teacher is analytic
    assert [d for d in p.job("bench").deps if "/toy2d/" in d] == [f"{rd}/toy2d/runs/mct/checkpoint.pt"]
    assert p.job("bench").outs == (f"{rd}/bench",)
    assert p.job("report").outs == (f"{rd}/report.html",)
    assert s.outs[0] in p.job("report").deps and not any(f.endswith(".pt") for f in p.job("report").deps)
    # every command parses with the CLI and reaches the stage it names
    for j in p.jobs:
        args = build_parser().parse_args(list(j.cmd[1:]))
        assert args.config == "config/quick.yaml"


def test_jobs_are_in_dependency_order_and_targets_cover_every_output():
    p = quick_pipeline()
    made: set[str] = set()
    for j in p.jobs:
        assert set(j.deps) <= made, f"{j.name} needs {set(j.deps) - made} before it is made"
        made |= set(j.files)
    assert set(p.targets()) == made


def test_code_dependencies_are_the_modules_a_stage_imports():
    p = quick_pipeline()
    code = set(p.job("distill", "toy2d", "mct").code)
    for f in ("src/mct/benchmarks/toy2d.py", "src/mct/benchmarks/base.py", "src/mct/distill/trainer.py",
              "src/mct/distill/em.py", "src/mct/teachers/gmm.py", "src/mct/cli.py", "src/mct/__init__.py"):
        assert f in code
    assert not any(f.startswith("src/mct/report/") for f in code)
    assert "src/mct/benchmarks/imagenet.py" not in code
    assert not any(f.startswith("src/mct/pipeline/") for f in code)
    rcode = set(p.job("report").code)
    assert "src/mct/report/build.py" in rcode and "src/mct/benchmarks/toy2d.py" not in rcode
    assert any(f.endswith(".j2") for f in rcode)  # the template is code too


def test_code_files_follow_relative_absolute_and_function_level_imports(tmp_path):
    pkg = tmp_path / "src" / "mct"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "other").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import c\nfrom . import b\n")
    (pkg / "b.py").write_text("import os\n\ndef f():\n    from .other.d import g\n    return g\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "c.py").write_text("from ..errors import X\n")
    (pkg / "sub" / "page.j2").write_text("{{ x }}")
    (pkg / "other" / "__init__.py").write_text("")
    (pkg / "other" / "d.py").write_text("import mct.e\n")
    (pkg / "e.py").write_text("")
    (pkg / "unused.py").write_text("")
    files = {p.relative_to(pkg).as_posix() for p in code_files(["mct.a"], pkg)}
    assert files == {"__init__.py", "a.py", "b.py", "sub/__init__.py", "sub/c.py", "sub/page.j2",
                     "other/__init__.py", "other/d.py", "e.py"}


def test_changing_one_variant_changes_only_that_variants_jobs():
    raw = load_yaml(QUICK)
    before = {j.name: j.config_hash for j in quick_pipeline(raw).jobs}
    raw2 = copy.deepcopy(raw)
    v = list(raw2["benchmarks"]["toy2d"]["variants"])[-1]
    raw2["benchmarks"]["toy2d"]["variants"][v] = {**(raw2["benchmarks"]["toy2d"]["variants"][v] or {}),
                                                  "eval": {"seed": 99}}
    after = {j.name: j.config_hash for j in quick_pipeline(raw2).jobs}
    changed = {n for n in before if before[n] != after[n]}
    assert changed == {f"distill_toy2d_{v}", f"evaluate_toy2d_{v}"}
    # a change to the benchmark's base section reaches every variant and the summary
    raw3 = copy.deepcopy(raw)
    raw3["benchmarks"]["toy2d"]["eval"] = {**raw3["benchmarks"]["toy2d"].get("eval", {}), "seed": 7}
    after3 = {j.name: j.config_hash for j in quick_pipeline(raw3).jobs}
    changed3 = {n for n in before if before[n] != after3[n]}
    assert {n for n in before if n.endswith("_toy2d") or "_toy2d_" in n} <= changed3


def test_dvc_stages_mirror_the_jobs():
    p = quick_pipeline()
    stages = yaml.safe_load(dvc_yaml(p))["stages"]
    assert list(stages) == [j.name for j in p.jobs]
    for j in p.jobs:
        st = stages[j.name]
        assert st["cmd"] == j.shell
        assert st["deps"] == list(j.code) + list(j.deps)
        name = lambda x: x if isinstance(x, str) else next(iter(x))  # noqa: E731
        assert [name(x) for x in st.get("outs", [])] == list(j.outs)
        assert [name(x) for x in st.get("metrics", [])] == list(j.metrics)
        assert [name(x) for x in st.get("plots", [])] == list(j.plots)
        # git tracks the committed outputs (cache: false), DVC caches the rest
        for x in st.get("outs", []) + st.get("metrics", []) + st.get("plots", []):
            committed = is_committed(name(x), j.directory)
            assert (not isinstance(x, str) and x[name(x)].get("cache") is False) == committed, x
    assert stages["summarize_toy2d"]["outs"] == [{"results/quick/toy2d/summary.csv": {"cache": False}}]
    assert stages["distill_toy2d_mct"]["outs"] == ["results/quick/toy2d/runs/mct/checkpoint.pt"]
    d = stages["distill_toy2d_mct"]
    keys = d["params"][0]["config/quick.yaml"]
    assert "benchmarks.toy2d.variants.mct" in keys and "benchmarks.toy2d.variants.k1" not in keys
    assert "benchmarks.toy2d.train" in keys


def test_dvc_yaml_refuses_a_results_dir_outside_the_repository():
    raw = copy.deepcopy(load_yaml(QUICK))
    raw["results_dir"] = "/tmp/elsewhere"
    with pytest.raises(ConfigError, match="inside the repository"):
        dvc_yaml(quick_pipeline(raw))


def test_write_dvc_yaml_through_the_cli(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    out = tmp_path / "dvc.yaml"
    assert main(["workflow", "dvc", "--config", "config/quick.yaml", "--out", str(out)]) == 0
    text = out.read_text()
    # paths are relative to the directory of the written file
    rel_cfg = Path(os.path.relpath(QUICK, tmp_path)).as_posix()
    assert f"--config {rel_cfg}" in text
    assert yaml.safe_load(text)["stages"]


def test_bad_variant_names_are_refused():
    raw = copy.deepcopy(load_yaml(QUICK))
    raw["benchmarks"]["toy2d"]["variants"]["a.b"] = {}
    with pytest.raises(ConfigError, match="variant name"):
        quick_pipeline(raw)


# ----------------------------------------------------------------------------- dependencies, with a fake benchmark pair


@dataclass(frozen=True)
class FakeConfig:
    teacher: int = 1
    train: int = 2
    variants: dict[str, Any] = field(default_factory=dict)


class FakeImages(Benchmark):
    name = "fake"
    config_cls = FakeConfig
    stages = ("teacher_train", "teacher_eval", "features", "distill", "evaluate", "correct", "summarize")
    stage_params = {"teacher_train": ("teacher",)}


class FakeText(Benchmark):
    name = "fake-text"
    config_cls = FakeConfig
    stages = ("clip", "teacher_train", "distill", "evaluate", "summarize")
    uses = {"features": "fake"}


@pytest.fixture
def fakes(monkeypatch):
    for name, bench in (("fake", FakeImages()), ("fake-text", FakeText())):
        modname = f"_mct_test_{name.replace('-', '_')}"
        mod = types.ModuleType(modname)
        mod.__spec__ = importlib.machinery.ModuleSpec(modname, None)
        mod.BENCHMARK = bench
        monkeypatch.setitem(sys.modules, modname, mod)
        monkeypatch.setitem(REGISTRY, name, modname)
    return {"results_dir": "res", "benchmarks": {
        "fake": {"teacher": 3, "variants": {"a": {}, "b": {"train": 5}}},
        "fake-text": {"variants": {"a": {}}}}}


def test_dependencies_between_stages_and_benchmarks(fakes):
    p = Pipeline("cfg.yaml", raw=fakes, base=REPO)
    teacher, feats = "res/fake/teacher/checkpoint.pt", "res/fake/features/checkpoint.pt"
    assert p.job("teacher_train", "fake").deps == ()
    assert p.job("features", "fake").deps == ()
    assert p.job("teacher_eval", "fake").deps == (teacher, feats)
    assert p.job("distill", "fake", "b").deps == (teacher, feats)  # FID-vs-iteration during training
    assert p.job("evaluate", "fake", "b").deps == ("res/fake/runs/b/checkpoint.pt", feats)
    assert p.job("correct", "fake", "a").deps == ("res/fake/runs/a/checkpoint.pt", teacher, feats)
    assert p.job("correct", "fake", "a").outs == ("res/fake/runs/a/correct/before.png", "res/fake/runs/a/correct/after.png")
    assert set(p.job("summarize", "fake").deps) == {"res/fake/teacher/metrics.json", "res/fake/runs/a/metrics.json",
                                                    "res/fake/runs/b/metrics.json", "res/fake/runs/a/correct/metrics.json"}
    # the MCMC-correction figure is of one run: the main variant ('mct'), else the first listed
    assert not any(j.stage == "correct" and j.variant == "b" for j in p.jobs)
    # the text benchmark: its own teacher and CLIP, the image benchmark's feature network
    clip = "res/fake-text/clip/checkpoint.pt"
    assert p.job("teacher_train", "fake-text").deps == (clip,)
    assert p.job("distill", "fake-text", "a").deps == ("res/fake-text/teacher/checkpoint.pt", clip, feats)
    assert p.job("evaluate", "fake-text", "a").deps == ("res/fake-text/runs/a/checkpoint.pt", feats, clip)
    # a job's params: teacher_train reads only 'teacher' (stage_params)
    assert p.job("teacher_train", "fake").params == {"teacher": 3}
    assert p.job("teacher_train", "fake").param_keys == ("benchmarks.fake.teacher",)
    assert p.job("distill", "fake", "b").params["train"] == 5
    assert p.job("distill", "fake", "b").param_keys == ("benchmarks.fake.teacher", "benchmarks.fake.variants.b")
    fakes2 = copy.deepcopy(fakes)
    fakes2["benchmarks"]["fake"]["train"] = 9
    p2 = Pipeline("cfg.yaml", raw=fakes2, base=REPO)
    assert p2.job("teacher_train", "fake").config_hash == p.job("teacher_train", "fake").config_hash
    assert p2.job("distill", "fake", "a").config_hash != p.job("distill", "fake", "a").config_hash
    assert p2.job("distill", "fake", "b").config_hash == p.job("distill", "fake", "b").config_hash  # b overrides train


def test_a_benchmark_needing_another_names_it(fakes):
    del fakes["benchmarks"]["fake"]
    with pytest.raises(ConfigError, match="benchmarks.fake section"):
        Pipeline("cfg.yaml", raw=fakes, base=REPO)


def test_cluster_resources_by_stage_and_benchmark(fakes):
    fakes["cluster"] = {"default": {"mem_mb": 8000, "partition": "main"},
                        "stages": {"distill": {"gpus": 2, "runtime": 600}},
                        "benchmarks": {"fake": {"default": {"cpus": 4}, "distill": {"gpus": 4, "gpu_model": "a100"}}}}
    p = Pipeline("cfg.yaml", raw=fakes, base=REPO)
    assert p.job("distill", "fake", "a").resources == {"threads": 4, "gpu": 4, "mem_mb": 8000, "runtime": 600,
                                                       "gpu_model": "a100", "slurm_partition": "main"}
    assert p.job("distill", "fake-text", "a").resources == {"threads": 1, "gpu": 2, "mem_mb": 8000, "runtime": 600,
                                                            "slurm_partition": "main"}
    assert p.job("summarize", "fake").resources == {"threads": 4, "gpu": 0, "mem_mb": 8000, "runtime": 60,
                                                    "slurm_partition": "main"}
    # device cuda: the network stages get a GPU unless the cluster section says otherwise
    fakes["device"] = "cuda"
    fakes["cluster"] = {"stages": {"evaluate": {"gpus": 2}}}
    p = Pipeline("cfg.yaml", raw=fakes, base=REPO)
    assert p.job("distill", "fake", "a").resources["gpu"] == 1
    assert p.job("evaluate", "fake", "a").resources["gpu"] == 2
    assert p.job("summarize", "fake").resources["gpu"] == 0
    for bad, match in (({"stages": {"distil": {}}}, "distil"), ({"default": {"gpus": -1}}, "gpus"),
                       ({"benchmarks": {"fake": {"train": {}}}}, "train"), ({"default": {"gpu": 1}}, "gpu")):
        fakes["cluster"] = bad
        with pytest.raises(ConfigError, match=match):
            Pipeline("cfg.yaml", raw=fakes, base=REPO)


def test_multi_gpu_jobs_of_data_parallel_stages_launch_with_torchrun():
    raw = load_yaml(REPO / "config" / "imagenet64.yaml")
    raw["cluster"] = {"stages": {"distill": {"gpus": 4}, "evaluate": {"gpus": 2}, "teacher_eval": {"gpus": 2}}}
    p = Pipeline("config/imagenet64.yaml", raw=raw, base=REPO)
    job = p.job("distill", "imagenet64", "mct")
    assert job.cmd[:5] == ("torchrun", "--standalone", "--nproc_per_node=4", "-m", "mct.cli")
    assert job.cmd[5:7] == ("distill", "--config") and job.resources["gpu"] == 4
    assert p.job("evaluate", "imagenet64", "mct").shell.startswith("torchrun --standalone --nproc_per_node=2 -m mct.cli evaluate")
    assert p.job("teacher_eval", "imagenet64").cmd[0] == "mct"  # not a data-parallel stage
    raw["cluster"] = {}
    one = Pipeline("config/imagenet64.yaml", raw=raw, base=REPO)
    assert one.job("distill", "imagenet64", "mct").cmd[0] == "mct"  # one GPU: no launcher


def test_mct_config_check_validates_the_cluster_section(tmp_path, capsys):
    raw = copy.deepcopy(load_yaml(QUICK))
    raw["cluster"] = {"stages": {"distil": {"gpus": 1}}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["config", "check", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "cluster" in err and "distil" in err and "Traceback" not in err


# ----------------------------------------------------------------------------- the real tools, in a copy of the repo


_NOT_COPIED = (".git", ".venv", "venv", "results", "logs", ".snakemake", "__pycache__", ".pytest_cache", "cache", "tmp")


def _copy_repo(dst: Path) -> Path:
    listing = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                             capture_output=True)
    if listing.returncode != 0:  # not a git checkout (an unpacked archive): copy the tree without outputs
        shutil.copytree(REPO, dst, ignore=shutil.ignore_patterns(*_NOT_COPIED, "*.egg-info", "dvc.lock"))
        return dst
    files = listing.stdout.decode().split("\0")
    for f in filter(None, files):
        src = REPO / f
        if src.is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / f)
    return dst


def _env(copy_dir: Path, without_conda: bool = False) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(copy_dir / "src")
    path = [str(BIN)] + env.get("PATH", "").split(os.pathsep)
    if without_conda:
        path = [d for d in path if d and not (Path(d, "conda").exists() or Path(d, "mamba").exists())]
    env["PATH"] = os.pathsep.join(path)
    env["OMP_NUM_THREADS"] = "1"
    env.setdefault("GIT_AUTHOR_NAME", "mct-test")
    env.setdefault("GIT_AUTHOR_EMAIL", "mct-test@example.invalid")
    env.setdefault("GIT_COMMITTER_NAME", "mct-test")
    env.setdefault("GIT_COMMITTER_EMAIL", "mct-test@example.invalid")
    return env


def _run(args, cwd, env, timeout=600, check=True):
    r = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}")
    return r


def _pending(cwd, env, configfile) -> set[str]:
    """Output files Snakemake would (re)make, from --summary."""
    r = _run([BIN / "snakemake", "--cores", "1", "--configfile", configfile, "--summary"], cwd, env)
    rows = list(csv.reader(io.StringIO(r.stdout), delimiter="\t"))
    head = rows.index(next(x for x in rows if x[:1] == ["output_file"]))
    return {x[0] for x in rows[head + 1:] if len(x) >= 6 and x[5] != "no update"}


def _children_cpu() -> float:
    """CPU seconds (user + system) of every finished child process, grandchildren included."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _files_of(p: Pipeline, pred) -> set[str]:
    return {f for j in p.jobs if pred(j) for f in j.files}


def _rerun_files(p: Pipeline, pred) -> set[str]:
    """Outputs of the jobs ``pred`` selects and of every job downstream of them (jobs are in
    dependency order)."""
    stale: set[str] = set()
    for j in p.jobs:
        if pred(j) or stale & set(j.deps):
            stale |= set(j.files)
    return stale


@pytest.mark.slow
def test_snakemake_quick_run_end_to_end_then_nothing_to_do(tmp_path):
    repo = _copy_repo(tmp_path / "repo")
    env = _env(repo, without_conda=True)
    args = [BIN / "snakemake", "--cores", "all", "--configfile", "config/quick.yaml"]
    cores = os.cpu_count() or 1
    idle = os.getloadavg()[0] < 0.5 * cores
    cpu0, t0 = _children_cpu(), time.perf_counter()
    r = _run(args + ["--use-conda"], repo, env, timeout=1800)
    wall, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
    print(f"quick run: wall {wall:.1f} s, CPU {cpu:.1f} s on {cores} cores (machine idle at start: {idle})")
    out = r.stdout + r.stderr
    # --use-conda without conda: exactly one warning, then the run in this environment
    assert out.count("neither conda nor mamba is on PATH") == 1, out[-3000:]
    assert "Traceback" not in out
    # the time is printed, not asserted: timings belong to `mct bench`, not to a test
    p = Pipeline("config/quick.yaml", raw=load_yaml(repo / "config/quick.yaml"), base=repo)
    for f in p.targets():
        assert (repo / f).exists(), f"{f} was not made"
    for j in p.jobs:
        assert (repo / j.log).is_file(), f"no log {j.log}"
    metrics = json.loads((repo / p.job("evaluate", "toy2d", "mct").metrics[0]).read_text())
    assert metrics["variant"] == "mct"
    # a finished run has nothing left to do
    r = _run(args + ["-n"], repo, env)
    assert "Nothing to be done" in r.stdout + r.stderr
    assert _pending(repo, env, "config/quick.yaml") == set()

    # one variant's params change: only that variant's jobs, its benchmark's summary and the global jobs rerun
    cfg = load_yaml(repo / "config/quick.yaml")
    v = list(cfg["benchmarks"]["toy2d"]["variants"])[-1]
    cfg["benchmarks"]["toy2d"]["variants"][v] = {**(cfg["benchmarks"]["toy2d"]["variants"][v] or {}),
                                                 "eval": {"seed": 4321}}
    original = (repo / "config/quick.yaml").read_text()
    (repo / "config/quick.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    expected = _rerun_files(p, lambda j: (j.bench, j.variant) == ("toy2d", v))
    assert _files_of(p, lambda j: j.name == "summarize_toy2d") <= expected
    assert not expected & _files_of(p, lambda j: j.bench == "toy2d" and j.variant not in (v, None))
    assert _pending(repo, env, "config/quick.yaml") == expected
    (repo / "config/quick.yaml").write_text(original)
    assert _pending(repo, env, "config/quick.yaml") == set()

    # a code change reruns the jobs that run that code, and no others (Snakemake compares the
    # checksums of small inputs: touching a file is no change, editing it is)
    def edit(rel):
        with open(repo / rel, "a", encoding="utf-8") as fh:
            fh.write("\n# edited by test_workflow\n")

    edit("src/mct/report/build.py")
    assert _pending(repo, env, "config/quick.yaml") == _rerun_files(p, lambda j: "src/mct/report/build.py" in j.code)
    assert not _files_of(p, lambda j: j.bench is not None) & _rerun_files(p, lambda j: "src/mct/report/build.py" in j.code)
    edit("src/mct/benchmarks/toy2d.py")
    expected = _rerun_files(p, lambda j: "src/mct/benchmarks/toy2d.py" in j.code)
    assert _files_of(p, lambda j: j.bench == "toy2d") <= expected
    assert not expected & _files_of(p, lambda j: j.bench not in ("toy2d", None))
    assert _pending(repo, env, "config/quick.yaml") == expected


@pytest.mark.slow
def test_use_conda_without_conda_is_one_warning_not_a_failure(tmp_path):
    repo = _copy_repo(tmp_path / "repo")
    env = _env(repo, without_conda=True)
    r = _run([BIN / "snakemake", "--cores", "all", "--use-conda", "-n"], repo, env)
    out = r.stdout + r.stderr
    assert out.count("neither conda nor mamba is on PATH") == 1
    assert "Traceback" not in out and "WorkflowError" not in out
    assert "Job stats" in out
    # a --configfile replaces config/default.yaml (the jobs read it as it is); --config KEY=VALUE
    # overrides land in a generated file that the jobs read instead
    r = _run([BIN / "snakemake", "--cores", "1", "-n", "-p", "--configfile", "config/quick.yaml",
              "--config", "results_dir=elsewhere"], repo, env)
    out = r.stdout + r.stderr
    generated = re.search(r"the jobs read (\.snakemake/mct/config-\w+\.yaml)", out).group(1)
    merged = load_yaml(repo / generated)
    assert merged == {**load_yaml(repo / "config/quick.yaml"), "results_dir": "elsewhere"}
    assert f"--config {generated} --bench toy2d" in out and "elsewhere/toy2d/runs/" in out
    default_only = set(load_yaml(repo / "config/default.yaml")["benchmarks"]) - set(merged["benchmarks"])
    for bench in default_only:
        assert f"--bench {bench}" not in out


@pytest.mark.slow
def test_slurm_profile_dry_run_lists_gpu_jobs(tmp_path):
    cfg = REPO / "config" / "imagenet64.yaml"
    assert cfg.exists(), "config/imagenet64.yaml is part of the repository"
    repo = _copy_repo(tmp_path / "repo")
    env = _env(repo, without_conda=True)
    r = _run([BIN / "snakemake", "--profile", "workflow/profiles/slurm", "-n", "--configfile", "config/imagenet64.yaml"],
             repo, env)
    out = r.stdout + r.stderr
    jobs = re.findall(r"^(?:local)?rule (\w+):\n(.*?)(?=^\[|^Job stats)", out, flags=re.M | re.S)
    assert jobs, out[-3000:]
    by_rule: dict[str, list[dict]] = {}
    for rule, body in jobs:
        m = re.search(r"resources: (.*)", body)
        res = dict(kv.split("=", 1) for kv in m.group(1).split(", ")) if m else {}
        by_rule.setdefault(rule, []).append(res)
    p = Pipeline("config/imagenet64.yaml", raw=load_yaml(repo / "config/imagenet64.yaml"), base=repo)
    variants = p.variants("imagenet64")
    assert len(by_rule["distill"]) == len(variants) and len(by_rule["evaluate"]) == len(variants)
    for rule in ("distill", "evaluate", "teacher_eval"):
        for res in by_rule[rule]:
            want = p.job(rule, "imagenet64", variants[0] if rule != "teacher_eval" else None).resources
            assert int(res["gpu"]) == want["gpu"] >= 1
            assert int(res["mem_mb"]) == want["mem_mb"] and int(res["runtime"]) == want["runtime"]
    assert all(int(res["gpu"]) == 0 for res in by_rule["summarize"])
    # under SLURM a distill job stops itself before its runtime limit (the config's, derived by `mct plan`)
    runtime = p.job("distill", "imagenet64", variants[0]).resources["runtime"]
    planned = load_yaml(repo / "config/imagenet64.yaml")["cluster"]["benchmarks"]["imagenet64"]["distill"]["runtime"]
    assert runtime == planned and f"export MCT_TIME_LIMIT_MIN={runtime}; fi;" in out


@pytest.mark.slow
def test_dvc_repro_fresh_copy_then_up_to_date_metrics_and_params(tmp_path):
    repo = _copy_repo(tmp_path / "repo")
    env = _env(repo)
    dvc = BIN / "dvc"
    # the toy2d part of the quick config (the test stays short as the quick config grows)
    quick = load_yaml(repo / "config/quick.yaml")
    cfg = {k: v for k, v in quick.items() if k != "benchmarks"}
    cfg["results_dir"] = "results/dvc-test"
    cfg["benchmarks"] = {"toy2d": quick["benchmarks"]["toy2d"]}
    (repo / "config/dvc-test.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    _run([BIN / "mct", "workflow", "dvc", "--config", "config/dvc-test.yaml", "--out", "dvc.yaml"], repo, env)
    _run(["git", "init", "-q"], repo, env)
    _run(["git", "add", "-A"], repo, env)
    _run(["git", "commit", "-qm", "fresh copy"], repo, env)
    _run([dvc, "repro"], repo, env, timeout=900)
    p = Pipeline("config/dvc-test.yaml", raw=load_yaml(repo / "config/dvc-test.yaml"), base=repo)
    for f in p.targets():
        assert (repo / f).exists(), f"{f} was not made"
    r = _run([dvc, "repro"], repo, env)
    assert "Data and pipelines are up to date" in r.stdout + r.stderr
    shown = json.loads(_run([dvc, "metrics", "show", "--json"], repo, env).stdout)
    listed = {path for rev in shown.values() for path in rev.get("data", {})}  # {"workspace": {"data": {path: ...}}}
    assert {m for j in p.jobs for m in j.metrics} <= listed
    # params: a committed lock, one variant changed -> params diff names it, status names its stages only
    _run(["git", "add", "dvc.lock"], repo, env)
    _run(["git", "commit", "-qm", "lock"], repo, env)
    v = list(cfg["benchmarks"]["toy2d"]["variants"])[-1]
    cfg["benchmarks"]["toy2d"]["variants"][v] = {**(cfg["benchmarks"]["toy2d"]["variants"][v] or {}), "eval": {"seed": 5}}
    (repo / "config/dvc-test.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    diff = json.loads(_run([dvc, "params", "diff", "--json"], repo, env).stdout)
    assert f"benchmarks.toy2d.variants.{v}.eval.seed" in json.dumps(diff)
    status = json.loads(_run([dvc, "status", "--json"], repo, env).stdout)
    assert set(status) == {f"distill_toy2d_{v}", f"evaluate_toy2d_{v}"}
