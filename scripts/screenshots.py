"""Renew the screenshots of the review app (docs/screenshots/).

Run it from the repository root:

    python scripts/screenshots.py                  # writes docs/screenshots/*.png
    python scripts/screenshots.py --out /tmp/shots --home /tmp/pa-home --port 7911

(with the project's virtualenv: ``PYTHONPATH=. .venv/bin/python scripts/screenshots.py``).

It starts the app on the built-in synthetic demo, as ``make demo`` does but without
blocking (the first start in a fresh ``--home`` prepares the demo: about a minute on two
cores), then drives Debian's chromium (``/usr/bin/chromium``) with Playwright and takes one
viewport screenshot (what is above the fold, not the full page) per screen and per size:
``<screen>-1440x900.png`` and ``<screen>-1024x768.png`` for the screens types, help,
suggestions, map, browse, image, image-zoom, history, export and upload. The 1440x900
types, suggestions, map and image are also written as ``types.png``, ``suggestions.png``,
``map.png`` and ``image.png``, the names the docs link.

Page errors (uncaught exceptions of the page), console errors, failed requests and broken
images are printed at the end. The exit status is 1 when any wait failed (each failure is
printed: screen, size, what it waited for), else 0.

Needs: ``pip install playwright`` (the Python package only; no ``playwright install``,
the system chromium is used).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

VIEWPORTS = [(1440, 900), (1024, 768)]
LEGACY = ["types", "suggestions", "map", "image"]  # the 1440x900 versions, linked by docs
CHROMIUM = "/usr/bin/chromium"
TIMEOUT_MS = 60_000

# true when every image of the selector that is actually on screen (inside the viewport and
# inside every scrolling ancestor) has loaded, and there is at least one image
IMAGES_LOADED = """
(sel) => {
  const imgs = Array.from(document.querySelectorAll(sel));
  if (!imgs.length) return false;
  const shown = (el) => {
    let r = el.getBoundingClientRect();
    if (!r.width || !r.height) return false;
    let top = Math.max(r.top, 0), bottom = Math.min(r.bottom, window.innerHeight);
    for (let p = el.parentElement; p && p !== document.body; p = p.parentElement) {
      const ov = getComputedStyle(p).overflowY;
      if (ov === 'auto' || ov === 'scroll' || ov === 'hidden') {
        const pr = p.getBoundingClientRect();
        top = Math.max(top, pr.top); bottom = Math.min(bottom, pr.bottom);
      }
    }
    return bottom > top;
  };
  const on = imgs.filter(shown);
  if (!on.length) return imgs[0].complete && imgs[0].naturalWidth > 0;
  return on.every(i => i.complete && i.naturalWidth > 0);
}
"""

BROKEN_IMAGES = """
() => Array.from(document.images)
  .filter(i => i.complete && i.naturalWidth === 0 && i.getAttribute('src'))
  .map(i => i.getAttribute('src'))
"""


class WaitFailed(Exception):
    """A wait of a screen did not succeed in time."""


def start_app(home: Path, port: int) -> str:
    """Start the app on the demo workspace in ``home`` (non-blocking); returns its URL."""
    from webapp.app import serve

    t0 = time.perf_counter()
    serve(home=home, demo=True, port=port, block=False, quiet=True, device="cpu")
    print(f"app up in {time.perf_counter() - t0:.0f} s", flush=True)
    return f"http://127.0.0.1:{port}/"


class Shooter:
    """Takes the screenshots of one viewport size in a fresh browser context."""

    def __init__(self, browser, url: str, size: tuple[int, int], out: Path, log: dict):
        self.w, self.h = size
        self.out = out
        self.log = log
        self.ctx = browser.new_context(viewport={"width": self.w, "height": self.h})
        self.ctx.set_default_timeout(TIMEOUT_MS)
        self.page = self.ctx.new_page()
        tag = f"{self.w}x{self.h}"
        self.page.on("pageerror", lambda e: log["pageerrors"].append(f"[{tag}] {e}"))
        self.page.on(
            "console",
            lambda m: log["console"].append(f"[{tag}] {m.text}") if m.type == "error" else None,
        )
        self.page.on(
            "response",
            lambda r: (
                log["http"].append(f"[{tag}] {r.status} {r.url}") if r.status >= 400 else None
            ),
        )
        self.url = url

    # ---------------------------------------------------------------- helpers
    def wait(self, what: str, fn) -> None:
        """Run one wait; a timeout becomes WaitFailed(what)."""
        try:
            fn()
        except Exception as exc:  # playwright's TimeoutError and friends
            raise WaitFailed(f"{what}: {str(exc).splitlines()[0]}") from None

    def visible(self, selector: str) -> None:
        self.wait(
            f"{selector} visible",
            lambda: self.page.locator(selector).first.wait_for(state="visible"),
        )

    def images(self, selector: str) -> None:
        self.wait(
            f"{selector} loaded", lambda: self.page.wait_for_function(IMAGES_LOADED, arg=selector)
        )

    def text(self, selector: str) -> None:
        self.wait(
            f"{selector} has text",
            lambda: self.page.wait_for_function(
                "(s) => { const e = document.querySelector(s);"
                " return e && e.innerText.trim().length > 0; }",
                arg=selector,
            ),
        )

    def idle(self) -> None:
        """Let gradio finish its pending updates (progress overlays) and the page settle."""
        try:
            self.page.wait_for_function(
                "() => !document.querySelector('.wrap.pending, .eta-bar, .progress-text')",
                timeout=15_000,
            )
        except Exception:
            pass
        self.page.wait_for_timeout(600)

    def tab(self, name: str) -> None:
        """Click a tab button by name; in the overflow menu ("...") when it does not fit."""
        page = self.page
        pattern = re.compile(rf"^\s*{re.escape(name)}\b")
        button = page.get_by_role("tab", name=pattern)
        if button.count() and button.first.is_visible():
            button.first.click()
            return
        menu = page.locator(".overflow-menu button").first
        self.wait(f"tab {name!r} (overflow menu)", lambda: menu.click(timeout=10_000))
        item = page.locator(".overflow-dropdown button", has_text=pattern).first
        self.wait(f"tab {name!r} in the overflow menu", lambda: item.click(timeout=10_000))

    def shot(self, screen: str) -> None:
        path = self.out / f"{screen}-{self.w}x{self.h}.png"
        # the same picture every run: the top of the page (clicks may have scrolled it)
        self.page.evaluate("window.scrollTo(0, 0)")
        self.page.wait_for_timeout(200)
        self.page.screenshot(path=str(path), full_page=False)
        self.log["written"].append(path)
        broken = self.page.evaluate(BROKEN_IMAGES)
        for src in broken:
            self.log["broken"].append(f"[{screen}-{self.w}x{self.h}] {src}")
        print(f"  wrote {path}", flush=True)

    # ---------------------------------------------------------------- screens
    def types(self) -> None:
        self.page.goto(self.url, wait_until="domcontentloaded")
        self.visible(".pa-card")
        first = self.page.locator(".pa-card").first
        type_id = first.get_attribute("data-type-id")
        first.click()
        self.visible(f".pa-card.pa-selected[data-type-id='{type_id}']")
        self.text("#pa-type-head")
        self.images("#pa-gallery img")
        self.idle()
        self.page.mouse.move(2, 2)  # no hover enlargement in the picture
        self.shot("types")

    def help(self) -> None:
        self.tab("Types")
        self.visible("#pa-cards")
        self.page.keyboard.press("Escape")  # leave any text box (keys go to inputs)
        self.page.locator("#pa-type-head").click()
        self.page.keyboard.type("?")
        self.visible("#pa-help")
        self.page.wait_for_timeout(300)
        self.shot("help")
        self.page.keyboard.press("Escape")
        self.wait(
            "#pa-help closed",
            lambda: self.page.locator("#pa-help").wait_for(state="detached", timeout=10_000),
        )

    def suggestions(self) -> None:
        self.tab("Suggestions")
        self.visible("#pa-question")
        self.text("#pa-question")
        self.idle()
        if self.page.locator("#pa-sugg-grid img").count():
            self.images("#pa-sugg-grid img")
        self.page.mouse.move(2, 2)
        self.shot("suggestions")

    def map(self) -> None:
        self.tab("Map")
        self.visible("#pa-map .js-plotly-plot")
        self.idle()
        self.page.mouse.move(2, 2)
        self.shot("map")

    def browse(self) -> None:
        self.tab("Browse")
        self.visible("#pa-browse-grid .pa-image img")
        self.images("#pa-browse-grid .pa-image img")
        self.idle()
        self.page.mouse.move(2, 2)
        self.shot("browse")

    def image(self) -> None:
        # from the Browse tab: the first image opens the Image tab
        self.page.locator("#pa-browse-grid .pa-image").first.click()
        viewer = "#pa-viewer .pa-viewer"
        self.wait(
            f"{viewer}[data-bound]",
            lambda: self.page.locator(f"{viewer}[data-bound]").first.wait_for(state="visible"),
        )
        self.wait(
            f"{viewer} img complete",
            lambda: self.page.wait_for_function(
                "(s) => { const v = document.querySelector(s);"
                " const im = v ? Array.from(v.querySelectorAll('img')) : [];"
                " return im.length > 0 && im.every(i => i.complete && i.naturalWidth > 0); }",
                arg=viewer,
            ),
        )
        self.idle()
        self.page.mouse.move(2, 2)
        self.shot("image")
        # zoom in twice with "+" (the keys go to the viewer when no text box has the focus)
        before = self.page.locator(viewer).first.get_attribute("data-zoom")
        self.page.locator("#pa-image-md").click()
        self.page.keyboard.type("+")
        self.page.keyboard.type("+")
        self.wait(
            f"{viewer} zoomed in",
            lambda: self.page.wait_for_function(
                "([s, b]) => { const v = document.querySelector(s);"
                " return v && v.dataset.zoom && v.dataset.zoom !== b; }",
                arg=[viewer, before],
                timeout=10_000,
            ),
        )
        self.page.wait_for_timeout(400)
        self.shot("image-zoom")

    def history(self) -> None:
        self.tab("History")
        self.visible("#pa-history")
        self.idle()
        self.shot("history")

    def export(self) -> None:
        self.tab("Export")
        self.visible("#pa-export")
        self.idle()
        self.shot("export")

    def upload(self) -> None:
        self.tab("Upload")
        self.visible("#pa-upload")
        self.idle()
        self.shot("upload")

    SCREENS = [
        "types",
        "help",
        "suggestions",
        "map",
        "browse",
        "image",
        "history",
        "export",
        "upload",
    ]

    def run(self) -> None:
        print(f"{self.w}x{self.h}:", flush=True)
        for screen in self.SCREENS:
            try:
                getattr(self, screen)()
            except WaitFailed as exc:
                self.log["failed"].append(f"{screen}-{self.w}x{self.h}: {exc}")
                print(f"  FAILED {screen}: {exc}", flush=True)
            except Exception as exc:
                self.log["failed"].append(f"{screen}-{self.w}x{self.h}: {exc!r}")
                traceback.print_exc()
        self.ctx.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="docs/screenshots", help="folder of the PNGs")
    parser.add_argument(
        "--home", default=None, help="home folder of the demo workspace (default: a temp dir)"
    )
    parser.add_argument("--port", type=int, default=7911, help="port of the app")
    args = parser.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    home = Path(args.home) if args.home else Path(tempfile.mkdtemp(prefix="pa-shots-"))
    print(f"home {home}; first start prepares the demo (about a minute) ...", flush=True)
    url = start_app(home, args.port)

    from playwright.sync_api import sync_playwright

    log: dict[str, list] = {
        "written": [],
        "failed": [],
        "pageerrors": [],
        "console": [],
        "http": [],
        "broken": [],
    }
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            for size in VIEWPORTS:
                Shooter(browser, url, size, out, log).run()
        finally:
            browser.close()

    w, h = VIEWPORTS[0]
    for screen in LEGACY:
        src = out / f"{screen}-{w}x{h}.png"
        if src.exists():
            shutil.copyfile(src, out / f"{screen}.png")
            log["written"].append(out / f"{screen}.png")

    print(f"\n{len(log['written'])} files written to {out}")
    for key, title in [
        ("pageerrors", "page errors"),
        ("console", "console errors"),
        ("http", "failed requests"),
        ("broken", "broken images"),
        ("failed", "FAILED waits"),
    ]:
        print(f"{title}: {len(log[key]) or 'none'}")
        for line in log[key]:
            print(f"  {line}")
    code = 1 if log["failed"] else 0
    sys.stdout.flush()
    try:
        import gradio as gr

        gr.close_all()
    except Exception:
        pass
    if not args.home:
        shutil.rmtree(home, ignore_errors=True)
    os._exit(code)  # the server's threads would keep the process alive
    return code


if __name__ == "__main__":
    sys.exit(main())
