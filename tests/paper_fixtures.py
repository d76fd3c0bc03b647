"""Test helpers around the teacher-format writers of :mod:`mct.teachers.fixtures` (EDM pickle,
OpenAI ADM .pt; nothing is downloaded, no EDM or guided-diffusion code is imported): in tests the
pickle's ``module_src`` writes a marker file if it is ever executed. Also:

- a loopback HTTP server (127.0.0.1) with Range support and failure modes.
"""

from __future__ import annotations

import contextlib
import http.server
import io
import math
import pickle
import re
import socket
import threading

import torch

from mct.nets.dhariwal import DhariwalDenoiser
# the writers of the teacher formats live in the package (mct rehearse uses them at full size)
from mct.teachers.fixtures import (EDM_CLASS_NAMES, TINY_ADM_FLAGS, TINY_EDM_KWARGS, EDMStylePickler,  # noqa: F401
                                   FakeEDMLoss, fake_torch_utils, marker_source, random_edm_net, write_edm_pickle)


def tiny_edm_net(seed: int = 0, kwargs: dict | None = None) -> DhariwalDenoiser:
    """A tiny DhariwalDenoiser with every weight random (so every layer matters)."""
    return random_edm_net(seed, kwargs or TINY_EDM_KWARGS)


class _Anything:
    """Accepts any construction and state: lets a recording unpickler walk a whole pickle."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


def pickle_globals(data: bytes) -> set[str]:
    """module.name of every global a pickle refers to (read without creating any real object)."""
    found: set[str] = set()

    class Recorder(pickle.Unpickler):
        def find_class(self, module, name):
            found.add(f"{module}.{name}")
            return _Anything

    Recorder(io.BytesIO(data)).load()
    return found


# ---------------------------------------------------------------- ADM

def _res_keys(prefix: str, skip: bool) -> list[str]:
    keys = [f"{prefix}.{k}.{w}" for k in ("in_layers.0", "in_layers.2", "emb_layers.1", "out_layers.0",
                                           "out_layers.3") for w in ("weight", "bias")]
    if skip:
        keys += [f"{prefix}.skip_connection.weight", f"{prefix}.skip_connection.bias"]
    return keys


def _attn_keys(prefix: str) -> list[str]:
    return [f"{prefix}.{k}.{w}" for k in ("norm", "qkv", "proj_out") for w in ("weight", "bias")]


def tiny_adm_expected_keys() -> set[str]:
    """guided-diffusion's UNetModel keys for TINY_ADM_FLAGS, derived by hand from its layout:
    input 0 conv; 1 res(32); 2 down res(32); 3 res(32->64)+attn; middle res, attn, res;
    output 0 res(128->64)+attn; 1 res(96->64)+attn+up res; 2 res(96->32); 3 res(64->32); out."""
    keys = ["time_embed.0.weight", "time_embed.0.bias", "time_embed.2.weight", "time_embed.2.bias",
            "label_emb.weight", "input_blocks.0.0.weight", "input_blocks.0.0.bias",
            "out.0.weight", "out.0.bias", "out.2.weight", "out.2.bias"]
    keys += _res_keys("input_blocks.1.0", False) + _res_keys("input_blocks.2.0", False)
    keys += _res_keys("input_blocks.3.0", True) + _attn_keys("input_blocks.3.1")
    keys += _res_keys("middle_block.0", False) + _attn_keys("middle_block.1") + _res_keys("middle_block.2", False)
    keys += _res_keys("output_blocks.0.0", True) + _attn_keys("output_blocks.0.1")
    keys += _res_keys("output_blocks.1.0", True) + _attn_keys("output_blocks.1.1") + _res_keys("output_blocks.1.2",
                                                                                              False)
    keys += _res_keys("output_blocks.2.0", True) + _res_keys("output_blocks.3.0", True)
    return set(keys)


# ---------------------------------------------------------------- loopback HTTP


class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = "mct-test/1"

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))
        data = srv.files.get(self.path)
        mode = srv.modes.get(self.path, "ok")
        if data is None or mode == "404":
            self.send_error(404, "Not Found")
            return
        if mode == "500":
            self.send_error(500, "Internal Server Error")
            return
        start = 0
        rng = self.headers.get("Range")
        if rng and mode != "norange":
            m = re.match(r"bytes=(\d+)-$", rng)
            start = int(m.group(1)) if m else 0
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        body = data[start:]
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        if mode == "truncate":
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)


class LoopbackServer:
    """An HTTP server on 127.0.0.1 serving ``files`` (path -> bytes) with per-path ``modes``:
    'ok', 'truncate' (half the body, then the connection closes), 'norange' (ignores Range),
    '404', '500'."""

    def __init__(self):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.files, self.httpd.modes, self.httpd.requests = {}, {}, []
        self.httpd.timeout = 5
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def files(self):
        return self.httpd.files

    @property
    def modes(self):
        return self.httpd.modes

    @property
    def requests(self):
        return self.httpd.requests

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


# ---------------------------------------------------------------- feature extractor for tests

TINY_FEATURE_NAME = "mct-test-tiny16"


def register_tiny_extractor() -> str:
    """A tiny deterministic torch-fidelity feature extractor ('16': 16-d features of uint8 images)."""
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

    if TINY_FEATURE_NAME in FEATURE_EXTRACTORS_REGISTRY:
        return TINY_FEATURE_NAME

    class TinyExtractor(FeatureExtractorBase):
        def __init__(self, name, features_list, **kwargs):
            super().__init__(name, features_list)
            g = torch.Generator().manual_seed(0)
            self.register_buffer("proj", torch.randn(48, 16, generator=g) / math.sqrt(48))

        def forward(self, x):
            assert x.dtype == torch.uint8
            f = torch.nn.functional.adaptive_avg_pool2d(x.float() / 255.0, 4).flatten(1)  # (N, 48)
            return (f @ self.proj,)

        @staticmethod
        def get_provided_features_list():
            return ("16",)

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return "16"

        @staticmethod
        def can_be_compiled():
            return False

        @staticmethod
        def get_dummy_input_for_compile():
            return None

    register_feature_extractor(TINY_FEATURE_NAME, TinyExtractor)
    return TINY_FEATURE_NAME
