"""Open a rendered report in headless Chromium (Playwright, the system chromium), check it
from the live DOM, screenshot it.

    python -m mct.report.browser results/report.html --screenshot results/report-screenshot.png

prints what it found as JSON and exits 1 when an image did not load, a table is empty,
the page asked for anything that is not ``file:``/``data:`` (such requests are recorded and
aborted, so nothing leaves the machine), or the page logged an error."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

LOCAL_SCHEMES = ("file:", "data:", "about:", "blob:", "chrome-error:")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-default-apps", "--disable-extensions",
                 "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio",
                 "--disable-features=Translate,MediaRouter,OptimizationHints"]

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


def check_page(path_or_url: str | Path, screenshot: Optional[str | Path] = None, width: int = 1280,
               height: int = 900, max_height: int = 16000, timeout: float = 45.0,
               binary: Optional[str] = None) -> PageCheck:
    """Load a page, wait for it and its images, and describe it (see :class:`PageCheck`).
    ``screenshot``: write a full-page PNG there (capped at ``max_height`` px)."""
    from playwright.sync_api import sync_playwright

    exe = binary or find_chromium()
    if not exe:
        raise FileNotFoundError("chromium not found (install it: bash .ci/install-chromium.sh)")
    t0 = time.monotonic()
    url = str(path_or_url)
    if "://" not in url:
        url = Path(url).resolve().as_uri()
    result = PageCheck(url=url)

    def on_route(route):
        if route.request.url.startswith(LOCAL_SCHEMES):
            route.continue_()
        else:
            route.abort("blockedbyclient")  # recorded by on_request; never sent

    def on_request(req):
        u = req.url
        result.requests.append(u[:80] + "..." if u.startswith("data:") and len(u) > 80 else u)

    def on_failed(req):
        if req.url.startswith(LOCAL_SCHEMES):  # an external one is already a 'network request' problem
            result.failed_requests.append(f"{req.failure} ({req.url[:80]})")

    def on_console(msg):
        if msg.type in ("error", "warning"):
            text = msg.text
            if "ERR_BLOCKED_BY_CLIENT" not in text and "ERR_FILE_NOT_FOUND" not in text:
                result.console.append(f"{msg.type}: {text}")

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS, timeout=timeout * 1000)
        try:
            page = browser.new_page(viewport={"width": width, "height": height}, device_scale_factor=1)
            page.route("**/*", on_route)
            page.on("request", on_request)
            page.on("requestfailed", on_failed)
            page.on("console", on_console)
            page.on("pageerror", lambda exc: result.console.append(f"exception: {exc}"))
            page.goto(url, wait_until="load", timeout=timeout * 1000)
            dom = page.evaluate(DOM_PROBE)
            if screenshot is not None:
                full = min(max(int(dom["height"]), height), max_height)
                page.set_viewport_size({"width": width, "height": full})
                png = page.screenshot(timeout=timeout * 1000)
                from ..io import write_bytes

                write_bytes(screenshot, png)
                result.screenshot = str(screenshot)
        finally:
            browser.close()
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
    from playwright.sync_api import Error as PlaywrightError

    try:
        res = check_page(args.page, args.screenshot, width=args.width)
    except (PlaywrightError, FileNotFoundError) as exc:
        print(f"mct.report.browser: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    summary = asdict(res)
    summary["tables"] = [{k: v for k, v in t.items() if k != "text"} for t in res.tables]
    summary["problems"] = res.problems()
    print(json.dumps(summary, indent=1))
    return 1 if summary["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
