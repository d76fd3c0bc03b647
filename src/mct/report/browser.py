"""Open a rendered report in headless Chromium, check it from the live DOM, screenshot it.

Talks the DevTools protocol over ``--remote-debugging-pipe`` (file descriptors 3 and 4,
NUL-separated JSON), so it needs only the standard library and a ``chromium`` binary.

    python -m mct.report.browser results/report.html --screenshot results/report-screenshot.png

prints what it found as JSON and exits 1 when an image did not load, a table is empty,
the page made a request that is not ``file:``/``data:``, or the page logged an error."""

from __future__ import annotations

import argparse
import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

LOCAL_SCHEMES = ("file:", "data:", "about:", "blob:", "chrome-error:")
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--disable-dev-shm-usage", "--hide-scrollbars",
    "--mute-audio", "--no-default-browser-check", "--disable-features=Translate,MediaRouter,OptimizationHints",
    "--remote-debugging-pipe",
]

# Evaluated in the page after load: wait for every image to decode, then describe the DOM.
DOM_PROBE = r"""
(async () => {
  const imgs = Array.from(document.images);
  await Promise.all(imgs.map(i => (i.complete ? Promise.resolve() : new Promise(r => { i.onload = i.onerror = r; }))
                                 .then(() => i.decode ? i.decode().catch(() => null) : null)));
  const num = /^[-+\u2212]?[\d,]*\.?\d+(e[-+]?\d+)?( ?\u00b1 ?[\d.]+)?$/i;
  return {
    title: document.title,
    height: Math.ceil(document.documentElement.scrollHeight),
    sections: Array.from(document.querySelectorAll("section[id]")).map(s => s.id),
    headings: Array.from(document.querySelectorAll("h2")).map(h => h.textContent.trim()),
    images: imgs.map(i => ({alt: i.alt, src: i.getAttribute("src").slice(0, 60), complete: i.complete,
                            naturalWidth: i.naturalWidth, naturalHeight: i.naturalHeight,
                            shownWidth: i.getBoundingClientRect().width})),
    tables: Array.from(document.querySelectorAll("table")).map(t => {
      const cells = Array.from(t.querySelectorAll("tbody td"));
      return {kind: t.dataset.table || "", rows: t.querySelectorAll("tbody tr").length,
              headers: Array.from(t.querySelectorAll("thead th")).map(h => h.textContent.trim()),
              numeric: cells.filter(c => num.test(c.textContent.trim())).length,
              text: t.innerText.slice(0, 4000)};
    }),
    sectionErrors: document.querySelectorAll(".section-error").length,
    scripts: document.scripts.length,
    resources: performance.getEntriesByType("resource").map(e => e.name),
  };
})()
"""


@dataclass
class PageCheck:
    url: str
    title: str = ""
    height: int = 0
    sections: list[str] = field(default_factory=list)
    headings: list[str] = field(default_factory=list)
    images: list[dict] = field(default_factory=list)
    tables: list[dict] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)  # every URL the page requested
    failed_requests: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)  # errors and warnings the page logged
    section_errors: int = 0
    scripts: int = 0
    screenshot: Optional[str] = None
    seconds: float = 0.0

    @property
    def external_requests(self) -> list[str]:
        return [u for u in self.requests if not u.startswith(LOCAL_SCHEMES)]

    @property
    def broken_images(self) -> list[dict]:
        return [i for i in self.images if not (i["complete"] and i["naturalWidth"] > 0)]

    def table(self, kind: str) -> Optional[dict]:
        return next((t for t in self.tables if t["kind"] == kind), None)

    def problems(self) -> list[str]:
        out = [f"image did not load: {i['alt'] or i['src']}" for i in self.broken_images]
        out += [f"network request: {u}" for u in self.external_requests]
        out += [f"request failed: {u}" for u in self.failed_requests]
        out += [f"console: {c}" for c in self.console]
        out += [f"empty table: {t['kind']}" for t in self.tables if t["rows"] == 0]
        if self.section_errors:
            out.append(f"{self.section_errors} section(s) failed to build")
        return out


def find_chromium() -> Optional[str]:
    for name in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if name and (shutil.which(name) or (os.path.isabs(name) and os.access(name, os.X_OK))):
            return shutil.which(name) or name
    return None


class DevTools:
    """A headless Chromium and the DevTools protocol over a pipe."""

    def __init__(self, binary: Optional[str] = None, timeout: float = 30.0):
        self.binary = binary or find_chromium()
        if not self.binary:
            raise FileNotFoundError("chromium not found (install it: bash .ci/install-chromium.sh)")
        self.timeout = timeout
        self.events: list[dict] = []
        self._responses: dict[int, dict] = {}
        self._buf = b""
        self._next = 0

    def __enter__(self) -> "DevTools":
        self.profile = tempfile.mkdtemp(prefix="mct-chromium-")
        self._stderr = tempfile.TemporaryFile()  # a file, not a pipe: chromium is chatty and must never block
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        # The browser must see our pipes as fds 3 (commands in) and 4 (replies out). Move them
        # to 10 or above, then let a tiny trampoline dup2 them into place and exec the browser
        # (no preexec_fn, which is unsafe with threads; no shell, whose fd syntax varies).
        hi_r = fcntl.fcntl(to_child_r, fcntl.F_DUPFD_CLOEXEC, 10)
        hi_w = fcntl.fcntl(from_child_w, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(to_child_r)
        os.close(from_child_w)
        trampoline = ("import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4); "
                      "os.close(int(sys.argv[1])); os.close(int(sys.argv[2])); os.execv(sys.argv[3], sys.argv[3:])")
        self.proc = subprocess.Popen(
            [sys.executable, "-S", "-c", trampoline, str(hi_r), str(hi_w), self.binary, *CHROMIUM_FLAGS,
             f"--user-data-dir={self.profile}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._stderr, pass_fds=(hi_r, hi_w))
        os.close(hi_r)
        os.close(hi_w)
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self.proc.poll() is None:
                try:
                    self.send("Browser.close", timeout=5)
                except Exception:  # noqa: BLE001 - closing anyway
                    pass
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=5)
        finally:
            for fd in (self._to_child, self._from_child):
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._stderr.close()
            shutil.rmtree(self.profile, ignore_errors=True)

    # -- protocol --
    def _pump(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("chromium did not answer in time")
        ready, _, _ = select.select([self._from_child], [], [], min(remaining, 1.0))
        if not ready:
            if self.proc.poll() is not None:
                self._stderr.seek(0)
                err = self._stderr.read().decode(errors="replace")[-2000:]
                raise RuntimeError(f"chromium exited with status {self.proc.returncode}: {err}")
            return
        chunk = os.read(self._from_child, 1 << 20)
        if not chunk:
            raise RuntimeError("chromium closed the DevTools pipe")
        self._buf += chunk
        *messages, self._buf = self._buf.split(b"\0")
        for raw in messages:
            msg = json.loads(raw)
            if "id" in msg:
                self._responses[msg["id"]] = msg
            else:
                self.events.append(msg)

    def send(self, method: str, params: Optional[dict] = None, session: Optional[str] = None,
             timeout: Optional[float] = None) -> dict:
        self._next += 1
        mid = self._next
        msg: dict[str, Any] = {"id": mid, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        data = json.dumps(msg).encode() + b"\0"
        while data:
            n = os.write(self._to_child, data)
            data = data[n:]
        deadline = time.monotonic() + (timeout or self.timeout)
        while mid not in self._responses:
            self._pump(deadline)
        reply = self._responses.pop(mid)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error'].get('message')}")
        return reply.get("result", {})

    def wait_event(self, method: str, session: Optional[str] = None, timeout: Optional[float] = None) -> dict:
        deadline = time.monotonic() + (timeout or self.timeout)
        seen = 0
        while True:
            for ev in self.events[seen:]:
                if ev.get("method") == method and (session is None or ev.get("sessionId") == session):
                    return ev.get("params", {})
            seen = len(self.events)
            self._pump(deadline)


def check_page(path_or_url: str | Path, screenshot: Optional[str | Path] = None, width: int = 1280,
               height: int = 900, max_height: int = 16000, timeout: float = 45.0,
               binary: Optional[str] = None) -> PageCheck:
    """Load a page, wait for it and its images, and describe it (see :class:`PageCheck`).
    ``screenshot``: write a full-page PNG there (capped at ``max_height`` px)."""
    t0 = time.monotonic()
    url = str(path_or_url)
    if "://" not in url:
        url = Path(url).resolve().as_uri()
    result = PageCheck(url=url)
    with DevTools(binary, timeout=timeout) as dt:
        target = dt.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        sid = dt.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Network", "Runtime", "Log"):
            dt.send(f"{domain}.enable", session=sid)
        dt.send("Emulation.setDeviceMetricsOverride",
                {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session=sid)
        mark = len(dt.events)
        dt.send("Page.navigate", {"url": url}, session=sid)
        dt.wait_event("Page.loadEventFired", session=sid)
        probe = dt.send("Runtime.evaluate", {"expression": DOM_PROBE, "awaitPromise": True, "returnByValue": True},
                        session=sid)
        if "exceptionDetails" in probe:
            raise RuntimeError(f"DOM probe failed: {probe['exceptionDetails'].get('text')}")
        dom = probe["result"]["value"]
        if screenshot is not None:
            full = min(max(int(dom["height"]), height), max_height)
            dt.send("Emulation.setDeviceMetricsOverride",
                    {"width": width, "height": full, "deviceScaleFactor": 1, "mobile": False}, session=sid)
            shot = dt.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": False,
                                                      "fromSurface": True}, session=sid, timeout=timeout)
            Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
            from ..io import write_bytes

            write_bytes(screenshot, base64.b64decode(shot["data"]))
            result.screenshot = str(screenshot)
        events = dt.events[mark:]
    for ev in events:
        m, p = ev.get("method"), ev.get("params", {})
        if m == "Network.requestWillBeSent":
            u = p["request"]["url"]
            result.requests.append(u[:80] + "..." if u.startswith("data:") and len(u) > 80 else u)
        elif m == "Network.loadingFailed" and not p.get("canceled"):
            result.failed_requests.append(f"{p.get('errorText')} ({p.get('blockedReason') or p.get('type')})")
        elif m == "Log.entryAdded" and p["entry"]["level"] in ("error", "warning"):
            e = p["entry"]
            result.console.append(f"{e['level']}: {e.get('text')} {e.get('url') or ''}".strip())
        elif m == "Runtime.exceptionThrown":
            result.console.append(f"exception: {p['exceptionDetails'].get('text')}")
        elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "warning"):
            result.console.append(f"console.{p['type']}: " + " ".join(str(a.get("value")) for a in p.get("args", [])))
    result.requests += [u for u in dom["resources"] if u not in result.requests and not u.startswith("data:")]
    result.title, result.height = dom["title"], dom["height"]
    result.sections, result.headings = dom["sections"], dom["headings"]
    result.images, result.tables = dom["images"], dom["tables"]
    result.section_errors, result.scripts = dom["sectionErrors"], dom["scripts"]
    result.seconds = round(time.monotonic() - t0, 2)
    return result


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mct.report.browser", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("page", help="report HTML file (or URL)")
    p.add_argument("--screenshot", default=None, help="write a full-page PNG here")
    p.add_argument("--width", type=int, default=1280)
    args = p.parse_args(argv)
    res = check_page(args.page, args.screenshot, width=args.width)
    summary = asdict(res)
    summary["tables"] = [{k: v for k, v in t.items() if k != "text"} for t in res.tables]
    summary["problems"] = res.problems()
    print(json.dumps(summary, indent=1))
    return 1 if summary["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
