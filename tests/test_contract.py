"""The run folder is a contract (issue 13): hostile names, numbers, files, devices, faults
and checkpoints are each one line on stderr (``mct: error: ...``, exit status 2, no
traceback), within seconds, and nothing outside ``results_dir`` changes.

Each bad-input case builds its input in a fresh temporary tree (config copied from
config/quick.yaml and edited), runs ``mct.cli.main`` in-process, and compares a snapshot
of the tree outside ``results_dir`` before and after. The lock tests use real processes
(a holder killed with SIGKILL), since only the kernel's release of a dead holder's flock
proves the takeover."""

from __future__ import annotations

import errno
import json
import math
import os
import signal
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

import mct.io as mio
from mct.cli import main
from mct.config import check_name, config_hash, load_yaml, to_dict
from mct.errors import ConfigError, MCTError

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "config" / "quick.yaml"
SRC = ROOT / "src"

sys.path.insert(0, str(Path(__file__).parent))


# ----------------------------------------------------------------------------- helpers

def quick() -> dict:
    return yaml.safe_load(QUICK.read_text())


def tree_snapshot(root: Path, skip: Path) -> dict:
    """path -> (kind, size, mtime_ns, mode) of everything under ``root`` except ``skip``."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        d = Path(dirpath)
        if d == skip or skip in d.parents:
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            p = d / name
            if p == skip:
                continue
            st = p.lstat()
            out[str(p)] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


class Tree:
    """A temporary tree: the config, results_dir, and a 'victim' folder outside results_dir."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.results = tmp / "results"
        self.cfg = tmp / "config.yaml"
        self.victim = tmp / "victim"
        self.victim.mkdir()
        (self.victim / "checkpoint.pt").write_bytes(b"precious")
        (self.victim / "checkpoints").mkdir()
        (self.victim / "checkpoints" / "ckpt-00000001.pt").write_bytes(b"precious too")

    def write(self, cfg: dict | None = None, text: str | None = None) -> Path:
        if text is None:
            cfg = quick() if cfg is None else cfg
            cfg["results_dir"] = str(self.results)
            cfg["progress"] = False
            text = yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True)
        self.cfg.write_text(text)
        return self.cfg

    def toy(self, patch: dict | None = None, **root) -> Path:
        """quick.yaml with its toy2d section deep-merged with ``patch`` (root keys set as given)."""
        from mct.config import deep_merge

        cfg = quick()
        cfg["benchmarks"] = {"toy2d": deep_merge(cfg["benchmarks"]["toy2d"], patch or {})}
        cfg.update(root)
        return self.write(cfg)


def distill(cfg: Path, variant: str = "mct", *extra: str) -> list[str]:
    return ["distill", "--config", str(cfg), "--bench", "toy2d", f"--variant={variant}", "--no-progress", *extra]


def expect_one_line(capsys, argv: list[str], needle: str) -> str:
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err, err
    assert err.count("\n") == 1 and err.startswith("mct: error: "), err
    assert needle in err, err
    return err.strip()


# ----------------------------------------------------------------------------- hostile EDM pickles

RECONSTRUCT = b"ctorch_utils.persistence\n_reconstruct_persistent_obj\n"


class Ref:
    def __init__(self, idx: int):
        self.idx = idx


class PickleWriter:
    """Writes pickle opcodes directly: the structures a hostile EDM snapshot can hold (shared
    modules, cycles, thousands of levels) are impossible to produce with ``pickle.dump``."""

    def __init__(self):
        self.b = bytearray(b"\x80\x02")
        self.n = 0

    def put(self) -> Ref:
        ref = Ref(self.n)
        self.b += b"r" + struct.pack("<I", self.n)
        self.n += 1
        return ref

    def get(self, ref: Ref):
        self.b += b"j" + struct.pack("<I", ref.idx)

    def value(self, v):
        if isinstance(v, Ref):
            self.get(v)
        elif v is None:
            self.b += b"N"
        elif v is True or v is False:
            self.b += b"\x88" if v else b"\x89"
        elif isinstance(v, int):
            if -(2**31) <= v < 2**31:
                self.b += b"J" + struct.pack("<i", v)
            else:
                data = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
                self.b += b"\x8a" + bytes([len(data)]) + data
        elif isinstance(v, float):
            self.b += b"G" + struct.pack(">d", v)
        elif isinstance(v, str):
            e = v.encode()
            self.b += b"X" + struct.pack("<I", len(e)) + e
        elif isinstance(v, (list, tuple)):
            self.b += b"](" if isinstance(v, list) else b"("
            for x in v:
                self.value(x)
            self.b += b"e" if isinstance(v, list) else b"t"
        elif isinstance(v, dict):
            self.b += b"}("
            for k, x in v.items():
                self.value(k)
                self.value(x)
            self.b += b"u"
        else:
            raise TypeError(type(v))

    def memo_dict(self) -> Ref:
        self.b += b"}"
        ref = self.put()
        self.b += b"0"
        return ref

    def module(self, class_name: str, modules=None, params=None, init_kwargs=None, init_args=(),
               src: str = "class EDMPrecond: pass\n", **state) -> Ref:
        self.b += RECONSTRUCT
        self.value({"type": "class", "version": 6, "module_src": src, "class_name": class_name,
                    "state": {"_modules": {} if modules is None else modules, "_parameters": params or {},
                              "_buffers": {}, "_init_args": list(init_args), "_init_kwargs": init_kwargs or {},
                              **state}})
        self.b += b"\x85R"
        ref = self.put()
        self.b += b"0"
        return ref

    def finish(self, top) -> bytes:
        self.value(top)
        self.b += b"."
        return bytes(self.b)


GOOD_KWARGS = dict(img_resolution=8, img_channels=3, label_dim=10, use_fp16=False, sigma_min=0.0,
                   sigma_data=0.5, model_type="DhariwalUNet", model_channels=32, channel_mult=[1, 2],
                   channel_mult_emb=2, num_blocks=1, attn_resolutions=[4], dropout=0.1)


def edm_with_kwargs(**override) -> bytes:
    w = PickleWriter()
    net = w.module("EDMPrecond", init_kwargs={**GOOD_KWARGS, **override})
    return w.finish({"ema": net})


def edm_shared(levels: int = 60) -> bytes:
    """Each module holds the next one twice: 2^levels paths in a few kB."""
    w = PickleWriter()
    child = w.module("Linear")
    for _ in range(levels):
        child = w.module("UNetBlock", modules={"a": child, "b": child})
    net = w.module("EDMPrecond", modules={"model": child}, init_kwargs=GOOD_KWARGS)
    return w.finish({"ema": net})


def edm_cycle() -> bytes:
    w = PickleWriter()
    mods = w.memo_dict()
    net = w.module("EDMPrecond", modules=mods, init_kwargs=GOOD_KWARGS)
    w.get(mods)          # mods['self'] = net, after net exists
    w.value("self")
    w.get(net)
    w.b += b"s0"
    return w.finish({"ema": net})


def edm_deep(levels: int = 5000) -> bytes:
    w = PickleWriter()
    child = w.module("Linear")
    for _ in range(levels):
        child = w.module("UNetBlock", modules={"c": child})
    net = w.module("EDMPrecond", modules={"model": child}, init_kwargs=GOOD_KWARGS)
    return w.finish({"ema": net})


def edm_state(**state) -> bytes:
    w = PickleWriter()
    net = w.module("EDMPrecond", init_kwargs=GOOD_KWARGS, **state)
    return w.finish({"ema": net})


def edm_modules(modules) -> bytes:
    w = PickleWriter()
    child = w.module("Linear")
    net = w.module("EDMPrecond", modules={k: child for k in modules}, init_kwargs=GOOD_KWARGS)
    return w.finish({"ema": net})


def edm_params(params) -> bytes:
    w = PickleWriter()
    net = w.module("EDMPrecond", params=params, init_kwargs=GOOD_KWARGS)
    return w.finish({"ema": net})


def edm_raw_kwargs(kwargs) -> bytes:
    w = PickleWriter()
    w.b += RECONSTRUCT
    w.value({"type": "class", "version": 6, "module_src": "", "class_name": "EDMPrecond",
             "state": {"_modules": {}, "_parameters": {}, "_buffers": {}, "_init_args": [], "_init_kwargs": kwargs}})
    w.b += b"\x85R"
    net = w.put()
    return w.finish({"ema": net})


# ----------------------------------------------------------------------------- the cases
# Each case: (tree, monkeypatch) -> (argv, needle in the one line). They write only under tmp.

def _names(name):
    def case(t, mp):
        needle = "not a valid name" if isinstance(name, str) else "must be a string"
        return distill(t.toy({"variants": {name: {}}}), str(name)), needle
    return case


NAME_CASES = {
    "name_traversal": "../../../../victim", "name_empty": "", "name_dot": ".", "name_dotdot": "..",
    "name_slash": "a/b", "name_mathtext": "a$\\foo$", "name_leading_dot": ".hidden", "name_leading_dash": "-rf",
    "name_space": "a b", "name_too_long": "x" * 65, "name_non_ascii": "caf\u00e9", "name_nul": "nul\x00",
    "name_newline": "a\nb", "name_html": "<b>x</b>", "name_int": 7,
}


def case_benchmark_name_traversal(t, mp):
    cfg = quick()
    cfg["benchmarks"] = {"../toy2d": cfg["benchmarks"]["toy2d"]}
    return distill(t.write(cfg)), "benchmark name"


def case_cli_variant_traversal(t, mp):
    return distill(t.toy(), "../../../../victim"), "variant name '../../../../victim' is not a valid name"


def _num(patch, needle="must be a finite number", **root):
    def case(t, mp):
        return distill(t.toy(patch, **root)), needle
    return case


NUMBER_CASES = {
    "nan_lr_g": _num({"train": {"lr_g": math.nan}}),
    "inf_lr_s": _num({"train": {"lr_s": math.inf}}),
    "nan_grad_clip": _num({"train": {"grad_clip": math.nan}}),
    "inf_z_step_ref": _num({"em": {"z_step_ref": math.inf}}),
    "nan_gamma_eps": _num({"em": {"gamma_eps": math.nan}}),
    "neg_inf_sigma_lo": _num({"train": {"sigma": {"lo": -math.inf}}}),
    "inf_sigma_hi": _num({"train": {"sigma": {"hi": math.inf}}}),
    "nan_radius": _num({"teacher": {"radius": math.nan}}),
    "inf_std": _num({"teacher": {"std": math.inf}}),
    "nan_sigma_g": _num({"init": {"sigma_g": math.nan}}),
    "inf_init_lr": _num({"init": {"lr": math.inf}}),
    "nan_ema_decay": _num({"train": {"ema_decay": math.nan}}),
    "inf_sigma_data": _num({"train": {"sigma_data": math.inf}}),
    "nan_in_variant": _num({"variants": {"mct": {"train": {"lr_g": math.nan}}}}),
    "huge_int_as_float": _num({"init": {"lr": 10**400}}),
    "inf_bench_min_seconds": _num({}, "config.bench.min_seconds must be a finite number",
                                  bench={"min_seconds": math.inf}),
    "seed_2_64": _num({"train": {"seed": 2**64}}, "must be an integer"),
    "seed_minus_2_64": _num({"eval": {"seed": -(2**64)}}, "must be an integer"),
    "width_1e10": _num({"generator": {"hidden": 10**10}}, "generator.hidden must be an integer <="),
    "threads_2_40": _num({"num_threads": 2**40}, "num_threads must be an integer <="),
    "bench_batch_1e11": _num({}, "config.bench.batch_size must be an integer <=", bench={"batch_size": 10**11}),
    "iterations_2_40": _num({"train": {"iterations": 2**40}}, "train.iterations must be an integer <="),
    "layers_1e6": _num({"score": {"layers": 10**6}}, "score.layers must be an integer <="),
    "batch_1e8": _num({"train": {"batch_size": 10**8}}, "train.batch_size must be an integer <="),
}


def case_int_of_5000_digits(t, mp):
    return distill(t.write(text=f"results_dir: {t.results}\nbenchmarks:\n  toy2d:\n    num_threads: {'9' * 5000}\n")), \
        "cannot convert"


def case_config_dev_zero(t, mp):
    return distill(Path("/dev/zero")), "is larger than"


def case_config_directory(t, mp):
    return distill(t.tmp), "is a directory"


def case_config_missing(t, mp):
    return distill(t.tmp / "nope.yaml"), "does not exist"


def case_config_too_large(t, mp):
    return distill(t.write(text="# pad\n" * 200_000)), "is larger than"


def case_billion_laughs(t, mp):
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    lines.append(f"results_dir: {t.results}")
    lines.append("benchmarks: {toy2d: {variants: {mct: {laughs: *a9}}}}")
    text = "\n".join(lines) + "\n"
    assert len(text) < 1600
    return distill(t.write(text=text)), "billion laughs"


def case_merge_key_bomb(t, mp):
    lines = ["m0: &m0 {a: 1, b: 2, c: 3, d: 4, e: 5, f: 6, g: 7, h: 8}"]
    lines += [f"m{i}: &m{i} {{x{i}: [{', '.join([f'*m{i - 1}'] * 12)}], <<: *m{i - 1}}}" for i in range(1, 9)]
    lines.append(f"results_dir: {t.results}")
    return distill(t.write(text="\n".join(lines) + "\n")), "billion laughs"


def case_recursive_alias(t, mp):
    return distill(t.write(text=f"results_dir: {t.results}\nloop: &a [*a]\n")), "refers to itself"


def case_deep_nesting(t, mp):
    return distill(t.write(text="a: " + "[" * 5000 + "]" * 5000 + "\n")), "nested"


def case_config_not_utf8(t, mp):
    t.cfg.write_bytes(b"results_dir: r\xe9sults\n")
    return distill(t.cfg), "not UTF-8"


def case_config_top_level_list(t, mp):
    return distill(t.write(text="- a\n- b\n")), "mapping at the top level"


def case_config_not_yaml(t, mp):
    return distill(t.write(text="a: [1, 2\n")), "not valid YAML"


def case_device_banana(t, mp):
    return distill(t.toy(), "mct", "--device", "banana"), "device must be 'cpu' or 'cuda[:N]', got 'banana'"


def case_device_cuda_x(t, mp):
    return distill(t.toy(), "mct", "--device", "cuda:x"), "device must be"


def case_device_cuda_without_gpu(t, mp):
    mp.setattr(torch.cuda, "is_available", lambda: False)
    return distill(t.toy(), "mct", "--device", "cuda"), "no CUDA GPU is available"


def case_device_cuda_99(t, mp):
    return distill(t.toy(), "mct", "--device", "cuda:99"), "requested but"


def case_config_device_banana(t, mp):
    return distill(t.toy(device="banana")), "device must be"


def case_config_device_cuda_without_gpu(t, mp):
    mp.setattr(torch.cuda, "is_available", lambda: False)
    return distill(t.toy(device="cuda")), "no CUDA GPU is available"


# --- faults while writing (distill of a tiny toy2d run; the fault is injected) ---

TINY = {"generator": {"hidden": 8, "layers": 2}, "score": {"hidden": 8, "layers": 2},
        "init": {"steps": 2, "batch_size": 16}, "em": {"num_steps": 1},
        "train": {"iterations": 2, "batch_size": 16, "score_updates": 1, "score_warmup": 0,
                  "checkpoint_every": 1, "keep_checkpoints": 1, "log_every": 1},
        "eval": {"num_samples": 64}, "variants": {"mct": {}}}


def case_disk_full_torch_save(t, mp):
    def full(obj, f, *a, **k):
        raise RuntimeError("basic_ios::clear: iostream error")

    mp.setattr(torch, "save", full)
    return distill(t.toy(TINY)), "basic_ios::clear"


def case_disk_full_rename(t, mp):
    real = os.replace

    def full(src, dst, *a, **k):
        if str(dst).endswith(".pt"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return real(src, dst, *a, **k)

    mp.setattr(os, "replace", full)
    return distill(t.toy(TINY)), "(the disk is full)"


def case_permission_denied(t, mp):
    import tempfile

    def denied(*a, **k):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), k.get("dir") or "?")

    mp.setattr(tempfile, "mkstemp", denied)
    return distill(t.toy(TINY)), "Permission denied"


def case_results_dir_under_a_file(t, mp):
    (t.tmp / "afile").write_text("x")
    return distill(t.toy(TINY), "mct", "--results-dir", str(t.tmp / "afile" / "results")), "cannot be created"


def case_oserror_escaping_a_stage(t, mp):
    from mct.benchmarks import toy2d

    def broken(*a, **k):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(t.results / "toy2d" / "x"))

    mp.setattr(toy2d.Toy2D, "distill", broken)
    return distill(t.toy(TINY)), "Is a directory"


def case_report_out_is_a_directory(t, mp):
    (t.tmp / "report.html").mkdir()
    cfg = t.write({"benchmarks": {}})
    return ["report", "--config", str(cfg), "--out", str(t.tmp / "report.html"), "--no-progress"], "it is a directory"


def _summarize_with_metrics(t, make, complete: bool = False) -> list[str]:
    """A run folder whose metrics.json is ``make``'s; with ``complete``, also a completion record
    that lists it (a hostile copy: the stages never write one for such a file)."""
    from mct.benchmarks.toy2d import BENCHMARK as TOY
    from mct.io import stage_outputs

    cfg = t.toy()
    run = t.results / "toy2d" / "runs" / "mct"
    run.mkdir(parents=True)
    make(run / "metrics.json")
    if complete:
        section = yaml.safe_load(cfg.read_text())["benchmarks"]["toy2d"]
        with stage_outputs(run, "evaluate", TOY.run_hash(TOY.parse(section, "mct"))) as out:
            out.add(run / "metrics.json")
    return ["summarize", "--config", str(cfg), "--bench", "toy2d", "--no-progress"]


def case_summarize_metrics_is_a_directory(t, mp):
    return _summarize_with_metrics(t, lambda p: p.mkdir()), "the evaluate outputs are missing or incomplete"


def case_summarize_metrics_200k_deep(t, mp):
    return _summarize_with_metrics(t, lambda p: p.write_text("[" * 200_000 + "]" * 200_000)), "outputs are missing"


def case_summarize_metrics_200k_deep_with_a_completion_record(t, mp):
    return (_summarize_with_metrics(t, lambda p: p.write_text("[" * 200_000 + "]" * 200_000), complete=True),
            "nested too deeply")


def case_summarize_metrics_is_a_list_with_a_completion_record(t, mp):
    return _summarize_with_metrics(t, lambda p: p.write_text("[1, 2]"), complete=True), "not a JSON object"


# --- teacher inspect ---

def _inspect_file(data: bytes | None, name: str = "ckpt.pt", obj=None):
    def case(t, mp):
        p = t.tmp / name
        if obj is not None:
            torch.save(obj() if callable(obj) else obj, p)
        else:
            p.write_bytes(data)
        return ["teacher", "inspect", str(p)], "checkpoint"
    return case


def _distill_ckpt(**override):
    def make():
        sd = {"w": torch.zeros(2)}
        base = {"format": "mct-distill-v1", "iteration": 3, "seconds": 1.0, "config": {"em": {"num_steps": 2}},
                "config_hash": "abc", "generator": sd, "generator_ema": sd, "student": sd}
        base.update(override)
        return base
    return make


def _adm_1d():
    keys = ["time_embed.0.weight", "input_blocks.0.0.weight", "out.2.weight", "input_blocks.1.0.in_layers.2.weight"]
    return {k: torch.zeros(4) for k in keys}


INSPECT_CASES = {
    "inspect_int_keys": (_inspect_file(None, obj={1: torch.zeros(2), 2: torch.zeros(3)}), "not a parameter name"),
    "inspect_distill_iteration_str": (_inspect_file(None, obj=_distill_ckpt(iteration="many")), "'iteration'"),
    "inspect_distill_seconds_str": (_inspect_file(None, obj=_distill_ckpt(seconds="1.0")), "'seconds'"),
    "inspect_distill_config_list": (_inspect_file(None, obj=_distill_ckpt(config=[1, 2])), "'config'"),
    "inspect_distill_generator_list": (_inspect_file(None, obj=_distill_ckpt(generator=[1])), "'generator'"),
    "inspect_distill_em_list": (_inspect_file(None, obj=_distill_ckpt(config={"em": [1]})), "config.em"),
    "inspect_distill_hash_int": (_inspect_file(None, obj=_distill_ckpt(config_hash=5)), "'config_hash'"),
    "inspect_adm_1d": (_inspect_file(None, obj=_adm_1d), "1-D tensor"),
    "inspect_edm_shared_2_60": (_inspect_file(edm_shared(), "edm.pkl"), "shared module or a cycle"),
    "inspect_edm_cycle": (_inspect_file(edm_cycle(), "edm.pkl"), "shared module or a cycle"),
    "inspect_edm_5000_deep": (_inspect_file(edm_deep(), "edm.pkl"), "deeper than"),
    "inspect_edm_negative_channels": (_inspect_file(edm_with_kwargs(model_channels=-1), "edm.pkl"),
                                      "model_channels=-1"),
    "inspect_edm_million_channels": (_inspect_file(edm_with_kwargs(model_channels=10**6), "edm.pkl"), "model_channels"),
    "inspect_edm_huge_mult": (_inspect_file(edm_with_kwargs(channel_mult=[1, 10**6]), "edm.pkl"), "channel_mult"),
    "inspect_edm_resolution_zero": (_inspect_file(edm_with_kwargs(img_resolution=0), "edm.pkl"), "img_resolution"),
    "inspect_edm_sigma_data_nan": (_inspect_file(edm_with_kwargs(sigma_data=math.nan), "edm.pkl"), "sigma_data"),
    "inspect_edm_channels_2_70": (_inspect_file(edm_with_kwargs(img_channels=2**70), "edm.pkl"), "img_channels"),
    "inspect_edm_dropout_str": (_inspect_file(edm_with_kwargs(dropout="lots"), "edm.pkl"), "dropout"),
    "inspect_edm_modules_list": (_inspect_file(edm_state(_modules=[1, 2]), "edm.pkl"), "_modules"),
    "inspect_edm_param_not_tensor": (_inspect_file(edm_params({"weight": "x"}), "edm.pkl"), "not a tensor"),
    "inspect_edm_dotted_module_name": (_inspect_file(edm_modules(["a.b"]), "edm.pkl"), "plain name"),
    "inspect_edm_int_module_name": (_inspect_file(edm_modules([3]), "edm.pkl"), "plain name"),
    "inspect_edm_kwargs_str": (_inspect_file(edm_raw_kwargs("oops"), "edm.pkl"), "init arguments"),
    "inspect_edm_kwargs_int_key": (_inspect_file(edm_raw_kwargs({1: 2}), "edm.pkl"), "not a string"),
    "inspect_edm_nonpersistent_int": (_inspect_file(edm_state(_non_persistent_buffers_set=5), "edm.pkl"),
                                      "_non_persistent_buffers_set"),
    "inspect_garbage": (_inspect_file(b"\x00\x01garbage" * 10, "x.pkl"), "checkpoint"),
    "inspect_empty": (_inspect_file(b"", "x.pt"), "is empty"),
    "inspect_refused_global": (_inspect_file(b"\x80\x02cos\nsystem\n.", "x.pkl"),
                               "refused global os.system"),
}


def case_inspect_directory(t, mp):
    return ["teacher", "inspect", str(t.tmp)], "is not a file"


# --- prompt files (sd15: read before any model or folder) ---

def _prompts(make):
    def case(t, mp):
        p = make(t.tmp)
        cfg = t.write({"benchmarks": {"sd15": {"prompts": {"train": str(p)}, "variants": {"mct": {}}}}})
        return ["distill", "--config", str(cfg), "--bench", "sd15", "--variant", "mct"], "prompt file"
    return case


def _deep_json(tmp: Path) -> Path:
    p = tmp / "deep.json"
    p.write_text('{"annotations": ' + "[" * 200_000 + "]" * 200_000 + "}")
    return p


PROMPT_CASES = {
    "prompts_dev_zero": _prompts(lambda tmp: Path("/dev/zero")),
    "prompts_deep_json": _prompts(_deep_json),
    "prompts_directory": _prompts(lambda tmp: tmp),
}


CASES: dict = {}
CASES.update({k: (_names(v), None) for k, v in NAME_CASES.items()})
CASES.update({k: (v, None) for k, v in NUMBER_CASES.items()})
CASES.update({k: v for k, v in INSPECT_CASES.items()})
CASES.update({k: (v, None) for k, v in PROMPT_CASES.items()})
CASES.update({name[5:]: (fn, None) for name, fn in dict(globals()).items() if name.startswith("case_")})


@pytest.mark.timeout(120)  # a hang (the failures of issue 13) fails the case instead of the run
@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_and_touches_nothing_outside_results(case, tmp_path, capsys, monkeypatch):
    t = Tree(tmp_path)
    build, needle_override = CASES[case]
    argv, needle = build(t, monkeypatch)
    needle = needle_override or needle
    before = tree_snapshot(tmp_path, t.results)
    expect_one_line(capsys, argv, needle)
    after = tree_snapshot(tmp_path, t.results)
    assert after == before, sorted(set(after.items()) ^ set(before.items()))[:5]
    assert (t.victim / "checkpoint.pt").read_bytes() == b"precious"
    if case.startswith(("name_", "nan_", "inf_", "neg_inf", "seed_", "width_", "threads_", "bench_", "config_",
                        "iterations_", "layers_", "batch_", "huge_", "billion", "merge_", "recursive", "deep_",
                        "int_of", "benchmark_name", "prompts_")):
        assert not t.results.exists(), "a config error must stop before anything is created"
    leftovers = [p for p in t.results.rglob(".*.tmp")] if t.results.exists() else []
    assert not leftovers, leftovers


# ----------------------------------------------------------------------------- names and paths

@pytest.mark.parametrize("name", ["mct", "k1", "no-nc", "random_init", "v1.2", "K8", "0"])
def test_valid_names_pass(name):
    assert check_name(name, "variant name") == name


def test_inside_refuses_every_escape(tmp_path):
    root = tmp_path / "results"
    (root / "toy2d" / "runs").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, root / "toy2d" / "runs" / "link")
    assert mio.inside(root, "toy2d", "runs", "mct") == (root / "toy2d" / "runs" / "mct").resolve()
    for parts in [("..",), ("toy2d", "..", ".."), ("/etc",), ("toy2d/../../x",), ("",), ("a\x00b",),
                  ("toy2d", "runs", "link"), ("toy2d", "runs", "link", "checkpoint.pt")]:
        with pytest.raises(MCTError, match="refused output path"):
            mio.inside(root, *parts)


def test_config_names_are_checked_at_load(tmp_path):
    t = Tree(tmp_path)
    with pytest.raises(ConfigError, match="variant name"):
        load_yaml(t.toy({"variants": {"../x": {}}}))
    assert set(load_yaml(t.toy())["benchmarks"]["toy2d"]["variants"]) == {"mct", "k1"}


# ----------------------------------------------------------------------------- bounded config

def test_bounded_aliases_still_work_and_hash_is_stable(tmp_path):
    """Modest aliases are allowed (expansion is bounded, not forbidden); to_dict and config_hash
    of what loads are computed in bounded time and equal those of the written-out values."""
    t = Tree(tmp_path)
    text = (f"results_dir: {t.results}\nbase: &em {{num_steps: 2, gamma_eps: 0.1}}\n"
            "benchmarks:\n  toy2d:\n    em: *em\n    variants: {mct: {em: *em}}\n")
    aliased = load_yaml(t.write(text=text))
    plain = load_yaml(t.write(text=yaml.safe_dump(json.loads(json.dumps(aliased)))))
    assert to_dict(aliased) == to_dict(plain)
    assert config_hash(aliased) == config_hash(plain)


def test_float_fields_keep_finite_values_and_opt_in_inf():
    import dataclasses

    from mct.config import from_dict

    @dataclasses.dataclass(frozen=True)
    class C:
        a: float = 1.0
        b: float = dataclasses.field(default=1.0, metadata={"allow_inf": True})
        n: int = dataclasses.field(default=1, metadata={"range": (1, 10)})

    assert from_dict(C, {"a": 1e308, "b": math.inf, "n": 10}) == C(1e308, math.inf, 10)
    with pytest.raises(ConfigError, match="finite"):
        from_dict(C, {"b": math.nan})
    with pytest.raises(ConfigError, match=r"C.n must be an integer <= 10, got 11"):
        from_dict(C, {"n": 11}, "C")
    with pytest.raises(ConfigError, match=r"C.n must be an integer >= 1, got 0"):
        from_dict(C, {"n": 0}, "C")


# ----------------------------------------------------------------------------- locks

HOLDER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {src!r})
    from mct.io import folder_lock
    with folder_lock({folder!r}, "distill toy2d/mct"):
        print("held", flush=True)
        time.sleep(120)
""")


def _start_holder(folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER.format(src=str(SRC), folder=str(folder))],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_writer_gets_one_line_naming_the_holder_pid(tmp_path):
    folder = tmp_path / "runs" / "mct"
    proc = _start_holder(folder)
    try:
        with pytest.raises(MCTError) as exc:
            with mio.folder_lock(folder, "distill toy2d/mct"):
                pass
        msg = str(exc.value)
        assert f"pid {proc.pid}" in msg and "\n" not in msg and str(folder.resolve()) in msg
    finally:
        proc.kill()
        proc.wait()


def test_lock_of_a_killed_holder_is_taken_over(tmp_path, caplog):
    """kill -9 leaves the lock file and the holder's pid file; the kernel dropped the flock,
    so the next writer takes the lock at once and records itself."""
    folder = tmp_path / "runs" / "mct"
    proc = _start_holder(folder)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    stale = json.loads((folder / ".mct-lock.pid").read_text())
    assert stale["pid"] == proc.pid  # left behind by the killed holder
    with caplog.at_level("WARNING"), mio.folder_lock(folder, "distill toy2d/mct"):
        assert json.loads((folder / ".mct-lock.pid").read_text())["pid"] == os.getpid()
    assert any(f"left by pid {proc.pid}" in r.getMessage() for r in caplog.records)
    assert not (folder / ".mct-lock.pid").exists()


def test_lock_is_reentrant_in_one_process_and_exclusive_across(tmp_path):
    folder = tmp_path / "bench"
    with mio.folder_lock(folder, "summarize toy2d"):
        with mio.folder_lock(folder, "summarize toy2d"):  # a stage inside the CLI's lock
            pass
        code = (f"import sys; sys.path.insert(0, {str(SRC)!r})\nfrom mct.io import folder_lock\n"
                f"from mct.errors import MCTError\ntry:\n    with folder_lock({str(folder)!r}, 'x'): print('got it')\n"
                "except MCTError as e: print('refused', e)")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
        assert out.startswith("refused") and f"pid {os.getpid()}" in out
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert out.startswith("got it")


# ----------------------------------------------------------------------------- completion records

def test_outputs_count_only_once_complete(tmp_path):
    run = tmp_path / "runs" / "mct"
    with mio.stage_outputs(run, "evaluate", config_hash="h1") as out:
        mio.write_json(out.path("metrics.json"), {"fid": 1.5})
        mio.write_bytes(out.path("samples.png"), b"png")
    rec = mio.require_complete(run, "evaluate", "mct evaluate", config_hash="h1")
    assert set(rec["files"]) == {"metrics.json", "samples.png"} and rec["files"]["samples.png"]["size"] == 3
    with pytest.raises(MCTError, match="another config"):
        mio.require_complete(run, "evaluate", "mct evaluate", config_hash="h2")
    # a crash half-way through a rerun: metrics.json rewritten, samples.png not -> incomplete
    with pytest.raises(RuntimeError):
        with mio.stage_outputs(run, "evaluate", config_hash="h1") as out:
            mio.write_json(out.path("metrics.json"), {"fid": 9.9})
            raise RuntimeError("killed")
    assert not mio.is_complete(run, "evaluate")
    with pytest.raises(MCTError, match="run `mct evaluate --bench toy2d --variant mct`"):
        mio.require_complete(run, "evaluate", "mct evaluate --bench toy2d --variant mct")


def test_a_changed_output_breaks_the_record(tmp_path):
    run = tmp_path / "run"
    with mio.stage_outputs(run, "evaluate") as out:
        mio.write_json(out.path("metrics.json"), {"fid": 1.5})
    assert mio.is_complete(run, "evaluate")
    mio.write_json(run / "metrics.json", {"fid": 0.1})  # same size, another content
    assert not mio.is_complete(run, "evaluate")
    (run / "samples.png").write_bytes(b"")  # a file the stage never declared does not matter
    mio.write_json(run / "metrics.json", {"fid": 1.5})
    assert mio.is_complete(run, "evaluate")


def test_kill_9_during_a_stage_leaves_it_incomplete(tmp_path):
    run = tmp_path / "run"
    code = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(SRC)!r})
        from mct import io
        with io.stage_outputs({str(run)!r}, "evaluate") as out:
            io.write_json(out.path("metrics.json"), {{"fid": 1.0}})
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", code], timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert (run / "metrics.json").exists() and not mio.is_complete(run, "evaluate")


@pytest.mark.parametrize("content,needle", [
    ("[1, 2]", "holds a JSON list, expected a dict"),
    ('"text"', "holds a JSON str"),
    ("[" * 200_000 + "]" * 200_000, "nested too deeply"),
    ("{", "not valid JSON"),
])
def test_results_json_is_checked(tmp_path, content, needle):
    p = tmp_path / "metrics.json"
    p.write_text(content)
    with pytest.raises(MCTError, match=needle):
        mio.read_json(p, expect=dict)


def test_results_json_directory_is_one_line(tmp_path):
    with pytest.raises(MCTError, match="is a directory"):
        mio.read_json(tmp_path)


def test_writing_over_a_directory_is_one_line(tmp_path):
    (tmp_path / "report.html").mkdir()
    with pytest.raises(MCTError, match="it is a directory"):
        mio.write_text(tmp_path / "report.html", "x")


def test_torch_save_disk_full_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    def full(obj, f, *a, **k):
        Path(f).write_bytes(b"half")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(MCTError, match=r"cannot write .*ckpt.pt: .*unexpected pos"):
        mio.torch_save(tmp_path / "ckpt.pt", {"a": 1})
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- EDM source

def _fixture_pickle(tmp_path, src: str) -> Path:
    import io as _io

    from paper_fixtures import TINY_EDM_KWARGS, EDMStylePickler, fake_torch_utils, tiny_edm_net

    buf = _io.BytesIO()
    with fake_torch_utils() as reconstruct:
        EDMStylePickler(buf, reconstruct, src, TINY_EDM_KWARGS).dump(dict(ema=tiny_edm_net()))
    path = tmp_path / "edm.pkl"
    path.write_bytes(buf.getvalue())
    return path


SYNTH_SRC = '''
"""A stand-in for EDM's networks.py (only its shape: definitions with formulas)."""
import torch

def weight_init(shape, fan_in):
    return torch.randn(*shape) / fan_in ** 0.5

class EDMPrecond(torch.nn.Module):
    """Preconditioning."""
    def forward(self, x, sigma):
        c_skip = 0.25 / (sigma ** 2 + 0.25)
        return c_skip * x
'''


def test_embedded_source_match_is_reported_and_a_mismatch_named(tmp_path, monkeypatch, caplog):
    from mct.teachers import edm_source
    from mct.teachers.edm_pickle import load_edm_denoiser
    from mct.teachers.inspect import inspect_checkpoint

    known = edm_source.definition_digests(SYNTH_SRC)
    monkeypatch.setattr(edm_source, "KNOWN_EDM_SOURCES", {"synthetic release": known})
    monkeypatch.setattr(edm_source, "USED_BY_MCT", ("weight_init", "EDMPrecond", "UNetBlock"))
    # CRLF, comments, blank lines and docstrings do not matter
    cosmetic = SYNTH_SRC.replace('"""Preconditioning."""', "# preconditioning").replace("\n", "\r\n\r\n")
    text = inspect_checkpoint(_fixture_pickle(tmp_path, cosmetic))
    assert "network source: matches synthetic release" in text
    # the same class names and kwargs, another formula
    changed = SYNTH_SRC.replace("0.25 / (sigma ** 2 + 0.25)", "0.5 / (sigma ** 2 + 0.5)")
    path = _fixture_pickle(tmp_path, changed)
    text = inspect_checkpoint(path)
    assert "does NOT match" in text and "EDMPrecond differ" in text and "UNetBlock absent" in text
    assert edm_source.compare_source(changed).differ == ["EDMPrecond"]  # weight_init still matches
    with caplog.at_level("WARNING"):
        load_edm_denoiser(path)
    assert any("EDMPrecond differ" in r.getMessage() for r in caplog.records)


def test_known_release_table_covers_what_mct_builds():
    from mct.teachers.edm_source import KNOWN_EDM_SOURCES, USED_BY_MCT, compare_source

    for table in KNOWN_EDM_SOURCES.values():
        assert set(USED_BY_MCT) <= set(table)
    m = compare_source("class EDMPrecond:\n    pass\n")
    assert not m.matches and m.differ == ["EDMPrecond"] and "DhariwalUNet" in m.missing
    assert compare_source("def f(:\n").error and compare_source("(" * 100_000).error


def test_inspect_of_a_valid_snapshot_still_loads(tmp_path):
    from mct.teachers.inspect import inspect_checkpoint

    text = inspect_checkpoint(_fixture_pickle(tmp_path, "class EDMPrecond: pass\n"))
    assert "loads into MCT: yes" in text and "does NOT match a known EDM release" in text


def test_loader_refuses_kwargs_that_claim_a_far_larger_network(tmp_path):
    """Sane-looking but inflated init kwargs (2048 channels over a tiny network's weights) are refused
    before the network is allocated."""
    from paper_fixtures import TINY_EDM_KWARGS, tiny_edm_net, write_edm_pickle

    from mct.errors import CheckpointError
    from mct.teachers.edm_pickle import load_edm_denoiser

    path = write_edm_pickle(tmp_path / "edm.pkl", tiny_edm_net(), tmp_path / "pwned",
                            top_kwargs={**TINY_EDM_KWARGS, "model_channels": 2048, "channel_mult": [1, 16]})
    with pytest.raises(CheckpointError, match="describe .* parameters but it stores"):
        load_edm_denoiser(path)
    assert not (tmp_path / "pwned").exists()


def test_commands_that_do_not_compute_run_without_the_gpu_the_config_names(tmp_path, capsys, monkeypatch):
    """device: cuda in the config; on a node without a GPU, summarize reaches its own check (the
    missing metrics) instead of refusing the device, while distill refuses it."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    t = Tree(tmp_path)
    cfg = t.toy(device="cuda")
    expect_one_line(capsys, ["summarize", "--config", str(cfg), "--bench", "toy2d"], "the evaluate outputs are missing")
    expect_one_line(capsys, distill(cfg), "no CUDA GPU is available")


@pytest.mark.parametrize("argv", [
    ["config", "check", "--config", "/dev/zero"],
    ["config", "show", "--config", "LAUGHS", "--bench", "toy2d", "--variant", "mct"],
])
def test_real_process_exits_2_with_one_line(tmp_path, argv):
    """The installed entry point as a process (what Snakemake and users run): one line, status 2."""
    laughs = tmp_path / "laughs.yaml"
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    laughs.write_text("\n".join(lines) + "\nbenchmarks: {toy2d: {variants: {mct: {x: *a9}}}}\n")
    argv = [str(laughs) if a == "LAUGHS" else a for a in argv]
    env = dict(os.environ, PYTHONPATH=str(SRC))
    proc = subprocess.run([sys.executable, "-m", "mct.cli", *argv], capture_output=True, text=True, timeout=120,
                          env=env, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("mct: error: ") and proc.stdout == ""
