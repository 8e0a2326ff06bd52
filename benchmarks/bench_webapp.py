"""Web-app benchmark: the Types page with 5,000 images in the workspace.

Usage (from the repo root, inside the venv)::

    python benchmarks/bench_webapp.py [--images 5000] [--types 12] [--runs 20]
        [--out bench-out/webapp.jsonl] [--tmp DIR]

The workspace is built through the storage API (no engine run): ``--images`` real 96x96 PNG
images, one anomalous region each (with mask, anomaly map and a 256-d embedding), spread
over ``--types`` proposed types. Timed, on the server side (what a page load computes):

* ``types_page``: everything the Types tab shows on open: the cards (every type with its
  representative crops), the types table and the selected type's gallery (up to 48 crops
  with overlays): cold (no crop cached: first open after an upload without warm-up) and
  warm (crops cached on disk, which the app does right after each upload);
* ``list_types_http``: the ``list_types`` endpoint through ``gradio_client`` against a
  launched app (HTTP + queue round trip), p50/p95;
* ``page_http``: the Types page in a headless Chromium (when ``/usr/bin/chromium`` and
  Playwright are there): from navigation to every card thumbnail loaded.
"""

from __future__ import annotations

import argparse
import io
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from storage import (  # noqa: E402
    AssignmentsIn,
    BatchIngest,
    ImageIn,
    ModelVersionIn,
    NewType,
    PrototypeIn,
    RegionsIn,
    Workspace,
)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


def _png(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def make_batch(
    *,
    n_images: int = 200,
    n_types: int = 6,
    side: int = 96,
    dim: int = 256,
    seed: int = 0,
    type_names: list[str] | None = None,
    name: str = "bench batch",
    prefix: str = "",
) -> BatchIngest:
    """A batch without running the engine: images with one dark blob each (its region,
    mask and anomaly map), clustered embeddings and ``n_types`` proposed types (one model
    version without a model file). ``prefix`` goes before each image name."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_types, dim)).astype(np.float32) * 3
    yy, xx = np.mgrid[0:side, 0:side]
    images, masks, boxes = [], [], []
    k = rng.integers(0, n_types, n_images)
    for i in range(n_images):
        base = np.full((side, side, 3), 150, np.float32) + rng.normal(0, 6, (side, side, 3))
        cy, cx = rng.integers(side // 4, 3 * side // 4, 2)
        r = 5 + 2 * (k[i] % 4)
        blob = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        colour = np.array([(37 * k[i]) % 200, (91 * k[i]) % 200, (53 * k[i]) % 200], np.float32)
        base[blob] = colour
        rgb = np.clip(base, 0, 255).astype(np.uint8)
        amap = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2.0 * (r + 3) ** 2)).astype(np.float32)[
            ::4, ::4
        ]
        images.append(
            ImageIn(
                name=f"{prefix}line{i % 3}/img{i:05d}.png",
                width=side,
                height=side,
                data=_png(rgb),
                anomaly_score=float(1 + rng.random()),
                is_anomalous=True,
                anomaly_map=amap,
            )
        )
        masks.append(blob)
        boxes.append([max(cy - r, 0), max(cx - r, 0), min(cy + r + 1, side), min(cx + r + 1, side)])
    emb = centres[k] + rng.normal(size=(n_images, dim)).astype(np.float32)
    refs = [f"c{j}" for j in range(n_types)]
    return BatchIngest(
        name=name,
        images=images,
        regions=RegionsIn(
            image=np.arange(n_images),
            boxes=np.array(boxes, dtype=np.int64),
            anomaly_score=rng.random(n_images),
            masks=masks,
            embeddings=emb,
        ),
        model=ModelVersionIn(kind="discover", model=None),
        new_types=[
            NewType(key=refs[j], name=(type_names[j] if type_names else None))
            for j in range(n_types)
        ],
        assignments=AssignmentsIn(
            regions=np.arange(n_images),
            types=[refs[j] for j in k],
            confidence=rng.uniform(0.3, 1.0, n_images),
        ),
        prototypes=[
            PrototypeIn(type=refs[j], vector=centres[j], n_members=int((k == j).sum()))
            for j in range(n_types)
        ],
    )


def build_workspace(
    home: str | Path,
    name: str = "default",
    *,
    n_images: int = 200,
    n_types: int = 6,
    side: int = 96,
    dim: int = 256,
    seed: int = 0,
    type_names: list[str] | None = None,
) -> Workspace:
    """A reviewable workspace without running the engine (one ``make_batch``). Returns the
    open workspace."""
    ws = Workspace.open(home, name, embedding_dim=dim)
    batch = make_batch(
        n_images=n_images, n_types=n_types, side=side, dim=dim, seed=seed, type_names=type_names
    )
    ws.ingest_batch(batch, actor="bench")
    return ws


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--types", type=int, default=12)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--out", default="bench-out/webapp.jsonl")
    ap.add_argument("--tmp", default=None)
    ap.add_argument("--no-browser", action="store_true")
    args = ap.parse_args()

    from benchmarks.common import machine, record
    from protoatlas.service import WorkspaceService
    from webapp.app import ReviewApp, launch

    tmp = Path(tempfile.mkdtemp(dir=args.tmp))
    result: dict[str, object] = {"bench": "webapp", "images": args.images, "types": args.types}
    try:
        t0 = time.perf_counter()
        build_workspace(tmp, n_images=args.images, n_types=args.types).close()
        result["build_s"] = round(time.perf_counter() - t0, 2)
        service = WorkspaceService(tmp, "default")
        app = ReviewApp(service)

        def page() -> None:
            app.panel(None, "representative", False)

        t0 = time.perf_counter()
        page()
        result["types_page_cold_s"] = round(time.perf_counter() - t0, 3)
        # the cards' thumbnails are fetched by the browser right after: render them too
        t0 = time.perf_counter()
        for t in service.ws.list_types():
            for m in service.ws.representatives(t.id, n=6):
                app.views.thumb(m.region_id)
        result["card_thumbs_cold_s"] = round(time.perf_counter() - t0, 3)
        warm = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            page()
            warm.append(time.perf_counter() - t0)
        result["types_page_warm_p50_s"] = round(statistics.median(warm), 4)
        result["types_page_warm_p95_s"] = round(_pct(warm, 95), 4)
        app.blocks.close()

        app.views.warm()  # what the app does in the background after an upload
        served, url = launch(service, port=None, quiet=True, prevent_thread_lock=True)
        try:
            from gradio_client import Client

            client = Client(url, verbose=False)
            client.predict(api_name="/list_types")
            http = []
            for _ in range(args.runs):
                t0 = time.perf_counter()
                rows = client.predict(api_name="/list_types")
                http.append(time.perf_counter() - t0)
            assert len(rows["data"]) == args.types
            result["list_types_http_p50_s"] = round(statistics.median(http), 4)
            result["list_types_http_p95_s"] = round(_pct(http, 95), 4)
            if not args.no_browser and Path(CHROMIUM).exists():
                result.update(_browser(url, args.types))
        finally:
            served.blocks.close()
        service.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result["machine"] = machine()
    for key, value in result.items():
        print(f"{key:>26}: {value}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    record(args.out, result)


def _browser(url: str, n_types: int, opens: int = 9) -> dict[str, float]:
    """Full page loads (Gradio's shell included) and 'open a type' (click a card until its
    header and the first 24 crops of its members grid are shown), in headless Chromium."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return {}
    out: dict[str, float] = {}
    visible_thumbs = (
        "() => { const box = document.querySelector('.pa-cards').getBoundingClientRect(); "
        "return Array.from(document.querySelectorAll('.pa-card img')).filter(i => { const r = "
        "i.getBoundingClientRect(); return r.top < Math.min(box.bottom, innerHeight) && "
        "r.bottom > box.top; }).every(i => i.complete && i.naturalWidth > 0); }"
    )
    grid = (
        "() => { const imgs = Array.from(document.querySelectorAll('#pa-gallery img'))"
        ".slice(0, 24); return imgs.length > 0 && imgs.every(i => i.complete && "
        "i.naturalWidth > 0); }"
    )
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = None
            for label in ("page_load_first_s", "page_load_again_s"):
                page = browser.new_page(viewport={"width": 1440, "height": 1000})
                t0 = time.perf_counter()
                page.goto(url)
                page.wait_for_function(
                    "n => document.querySelectorAll('.pa-card').length === n",
                    arg=n_types,
                    timeout=60000,
                    polling=20,
                )
                page.wait_for_function(visible_thumbs, timeout=60000, polling=20)
                page.wait_for_function(grid, timeout=60000, polling=20)
                out[label] = round(time.perf_counter() - t0, 3)
            assert page is not None
            times = []
            for k in range(opens):
                card = page.locator(".pa-card").nth(k % min(4, n_types))
                tid = card.get_attribute("data-type-id")
                t0 = time.perf_counter()
                card.click()
                page.wait_for_function(
                    "tid => document.querySelector('#pa-type-head').innerText"
                    ".includes('#' + tid + ' ')",
                    arg=tid,
                    timeout=30000,
                    polling=20,
                )
                page.wait_for_function(grid, timeout=30000, polling=20)
                times.append(time.perf_counter() - t0)
            out["open_type_p50_s"] = round(statistics.median(times), 3)
            out["open_type_max_s"] = round(max(times), 3)
            # the Types page itself, re-rendered in the open app (Refresh): server data, the
            # cards' HTML and every visible card thumbnail loaded
            refresh = page.locator("#pa-refresh")
            times = []
            for _ in range(opens):
                stamp = page.evaluate(
                    "() => document.querySelector('.pa-cards').getAttribute('data-rendered')"
                )
                t0 = time.perf_counter()
                refresh.click()
                page.wait_for_function(
                    "s => { const c = document.querySelector('.pa-cards'); "
                    "return c && c.getAttribute('data-rendered') !== s; }",
                    arg=stamp,
                    timeout=30000,
                    polling=10,
                )
                page.wait_for_function(visible_thumbs, timeout=30000, polling=10)
                times.append(time.perf_counter() - t0)
            out["types_refresh_p50_s"] = round(statistics.median(times), 3)
            out["types_refresh_max_s"] = round(max(times), 3)
            out.update(_browse_and_view(page, opens))
        finally:
            browser.close()
    return out


def _browse_and_view(page, opens: int) -> dict[str, float]:
    """The Browse tab and the viewer in the open page: the first page of the grid (tab
    click until the count and the visible thumbnails are shown), the next page, a filter
    change (a score bound typed), opening an image in the viewer (click until the full
    image is drawn) and the viewer's next-image key."""
    out: dict[str, float] = {}
    count = "#pa-browse-count"
    thumbs = (
        "() => { const g = document.querySelector('#pa-browse-grid'); if (!g) return false; "
        "const imgs = Array.from(g.querySelectorAll('img')).filter(i => { const r = "
        "i.getBoundingClientRect(); return r.top < innerHeight && r.bottom > 0; }); "
        "return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0); }"
    )

    def text_is(pattern: str) -> str:
        return (
            f"() => {{ const c = document.querySelector('{count}'); "
            f"return !!c && /{pattern}/.test(c.innerText); }}"
        )

    t0 = time.perf_counter()
    page.get_by_role("tab", name="Browse").click()
    page.wait_for_function(text_is(r"page 1 of"), timeout=60000, polling=10)
    page.wait_for_function(thumbs, timeout=60000, polling=10)
    out["browse_first_page_s"] = round(time.perf_counter() - t0, 3)
    times = []
    for k in range(opens):
        t0 = time.perf_counter()
        page.get_by_role("button", name="Next page →").click()
        page.wait_for_function(text_is(rf"page {k + 2} of"), timeout=30000, polling=10)
        page.wait_for_function(thumbs, timeout=30000, polling=10)
        times.append(time.perf_counter() - t0)
    out["browse_next_page_p50_s"] = round(statistics.median(times), 3)
    out["browse_next_page_max_s"] = round(max(times), 3)
    box = page.get_by_label("Score from (empty: any)")
    times = []
    for k in range(opens):
        # typed as a reviewer types: "1." first, then the digit that changes the filter
        # (each keystroke is an event; the timing is the last one's)
        box.fill("")
        box.press_sequentially("1.")
        time.sleep(1.0)
        before = page.inner_text(count)
        t0 = time.perf_counter()
        box.press(str(k + 1))
        page.wait_for_function(
            "b => { const c = document.querySelector('#pa-browse-count'); "
            "return !!c && c.innerText !== b && /page 1 of/.test(c.innerText); }",
            arg=before,
            timeout=30000,
            polling=10,
        )
        page.wait_for_function(thumbs, timeout=30000, polling=10)
        times.append(time.perf_counter() - t0)
    out["browse_filter_p50_s"] = round(statistics.median(times), 3)
    out["browse_filter_max_s"] = round(max(times), 3)
    shown = (
        "iid => { const v = document.querySelector('#pa-viewer .pa-viewer'); return !!v && "
        "v.dataset.iid === iid && !!v.dataset.bound && Array.from(v.querySelectorAll('img'))"
        ".every(i => i.complete && i.naturalWidth > 0); }"
    )
    times = []
    for k in range(opens):
        page.get_by_role("tab", name="Browse").click()
        fig = page.locator("#pa-browse-grid .pa-image").nth(k)
        iid = fig.get_attribute("data-iid")
        t0 = time.perf_counter()
        fig.click()
        page.wait_for_function(shown, arg=iid, timeout=30000, polling=10)
        times.append(time.perf_counter() - t0)
    out["viewer_open_p50_s"] = round(statistics.median(times), 3)
    out["viewer_open_max_s"] = round(max(times), 3)
    times = []
    for _ in range(opens):
        iid = page.get_attribute("#pa-viewer .pa-viewer", "data-iid")
        t0 = time.perf_counter()
        page.keyboard.press("n")
        page.wait_for_function(
            "iid => { const v = document.querySelector('#pa-viewer .pa-viewer'); return !!v && "
            "v.dataset.iid !== iid && !!v.dataset.bound && Array.from(v.querySelectorAll('img'))"
            ".every(i => i.complete && i.naturalWidth > 0); }",
            arg=iid,
            timeout=30000,
            polling=10,
        )
        times.append(time.perf_counter() - t0)
    out["viewer_next_p50_s"] = round(statistics.median(times), 3)
    out["viewer_next_max_s"] = round(max(times), 3)
    return out


if __name__ == "__main__":
    main()
