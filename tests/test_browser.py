"""The whole review flow in a real browser: headless Chromium driven by Playwright.

Open the app, upload a demo zip (with known-good images), wait for the types, confirm one,
split one (multi-select in the members grid), answer a suggestion with the keyboard, draw
the map and lasso a selection, open an image, see the history, export COCO; then a second
browser session reviews while the first one's next batch is being analysed.

Screenshots go to ``$PROTOATLAS_SCREENSHOTS`` when set (``docs/screenshots`` was made that
way), else to the test's temporary folder. Chromium comes from Debian (``apt-get install
chromium``; ``.ci/run`` installs it): the test skips only when it is absent.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from pathlib import Path

import pytest

from engine.config import ProtoAtlasConfig
from protoatlas.service import WorkspaceService
from storage import SuggestionIn
from webapp.app import launch
from webapp.demo import write_demo_set, zip_folder

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason=f"{CHROMIUM} is absent (install it: apt-get install chromium)"
    ),
]


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    out = Path(os.environ.get("PROTOATLAS_SCREENSHOTS") or tmp_path_factory.mktemp("shots"))
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser")
    demo = write_demo_set(tmp / "demo", n_train=12, n_test_good=2, n_per_type=3, side=128)
    images = zip_folder(demo / "test", tmp / "demo-batch.zip")
    normals = zip_folder(demo / "train" / "good", tmp / "known-good.zip")
    second = write_demo_set(tmp / "more", seed=5, n_train=1, n_test_good=2, n_per_type=2, side=128)
    second_zip = zip_folder(second / "test", tmp / "second-batch.zip")
    config = ProtoAtlasConfig(device="cpu").with_overrides(backbone={"image_size": 128})
    service = WorkspaceService(tmp / "home", "default", config=config)
    app, url = launch(service, port=None, quiet=True, prevent_thread_lock=True)
    yield {
        "url": url,
        "service": service,
        "images": images,
        "normals": normals,
        "second": second_zip,
        "app": app,
    }
    app.close()
    service.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


def _tab(page, name: str) -> None:
    page.get_by_role("tab", name=name, exact=True).click()


def _wait_text(page, selector: str, pattern: str, timeout: float = 30) -> str:
    """Wait until the element's text matches ``pattern`` (a regex); return the text."""
    page.wait_for_function(
        "([sel, pat]) => { const e = document.querySelector(sel); "
        "return !!e && new RegExp(pat).test(e.innerText); }",
        arg=[selector, pattern],
        timeout=timeout * 1000,
        polling=100,
    )
    return page.inner_text(selector)


def _upload(page, zip_path: Path, normals: Path | None, name: str) -> None:
    _tab(page, "Upload")
    page.set_input_files("#pa-up-images input[type=file]", str(zip_path))
    if normals is not None:
        page.set_input_files("#pa-up-normals input[type=file]", str(normals))
    page.fill("#pa-upload-name input, #pa-upload-name textarea", name)
    page.wait_for_selector(f"#pa-up-images :text('{zip_path.stem}')", timeout=30000)
    page.click("#pa-upload")


def _card_sizes(page) -> dict[str, int]:
    out = {}
    for card in page.query_selector_all(".pa-card"):
        m = re.search(r"(\d+) regions", card.inner_text())
        out[card.get_attribute("data-type-id")] = int(m.group(1)) if m else 0
    return out


def test_review_flow_in_a_browser(served, browser, shots):
    service = served["service"]
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(served["url"])
    _wait_text(page, "#pa-cards", "No defect types yet")

    # ---- upload a zip with known-good images; live progress, then the report
    _upload(page, served["images"], served["normals"], "demo")
    shown = page.wait_for_selector(
        "#pa-up-report .progress-text, #pa-up-report .eta-bar, #pa-up-report .progress-level",
        timeout=60000,
    )
    box = page.query_selector("#pa-up-report").bounding_box()
    assert box and box["height"] >= 100, box  # drawn where it can be seen (it was 0 px high)
    assert shown.is_visible()
    assert page.is_disabled("#pa-upload")  # no second analysis of the same files meanwhile
    report = _wait_text(page, "#pa-up-report", "discovered", timeout=300)
    assert "17 images analysed" in report
    page.wait_for_function("() => !document.querySelector('#pa-upload').disabled")
    page.screenshot(path=str(shots / "upload.png"))

    # ---- the types
    _tab(page, "Types")
    page.wait_for_function("() => document.querySelectorAll('.pa-card').length >= 2", timeout=30000)
    sizes = _card_sizes(page)
    assert sum(sizes.values()) == sum(t.n_regions for t in service.ws.list_types())

    # confirm one
    first = page.query_selector_all(".pa-card")[0]
    tid = first.get_attribute("data-type-id")
    first.click()
    _wait_text(page, "#pa-type-head", rf"#{tid} ·")
    page.click("#pa-confirm")
    _wait_text(page, "#pa-msg", "Confirmed")
    assert service.ws.get_type(int(tid)).status == "confirmed"
    _wait_text(page, f".pa-card[data-type-id='{tid}']", "confirmed|CONFIRMED")

    # split one: select three members (click, then shift-click), move them out
    big = max((k for k in sizes if k != tid), key=lambda k: sizes[k])
    assert sizes[big] >= 3, sizes
    page.click(f".pa-card[data-type-id='{big}']")
    _wait_text(page, "#pa-type-head", rf"#{big} ·")
    members = page.query_selector_all("#pa-gallery .pa-member")
    members[0].click()
    members[2].click(modifiers=["Shift"])
    page.wait_for_function(
        "() => document.querySelector('#pa-selection input, #pa-selection textarea')"
        ".value.split(',').length === 3"
    )
    assert len(page.query_selector_all("#pa-gallery .pa-member.pa-on")) == 3
    page.click("#pa-split")
    _wait_text(page, "#pa-msg", "Moved the 3 selected regions")
    assert service.ws.get_type(int(big)).n_regions == sizes[big] - 3
    # one card more, one fewer when the split emptied the type (an empty type has no card)
    emptied = sizes[big] == 3
    page.wait_for_function(
        "n => document.querySelectorAll('.pa-card').length === n", arg=len(sizes) + 1 - emptied
    )
    # ---- find, sort and keys on the Types tab (done by the page script)
    shown = (
        "Array.from(document.querySelectorAll('#pa-cards .pa-card'))"
        ".filter(c => c.style.display !== 'none')"
    )
    names = {
        c.get_attribute("data-type-id"): c.get_attribute("data-name")
        for c in page.query_selector_all(".pa-card")
    }
    query = names[tid]
    want = sum(query in n for n in names.values())
    page.fill("#pa-cards .pa-find", query)
    page.wait_for_function(f"n => {shown}.length === n", arg=want)
    page.fill("#pa-cards .pa-find", "")
    page.wait_for_function(f"n => {shown}.length === n", arg=len(names))
    page.select_option("#pa-cards .pa-sort", "name")
    first = page.evaluate(
        f"() => {shown}.sort((a, b) => a.style.order - b.style.order)[0].dataset.name"
    )
    assert first == min(names.values())
    page.select_option("#pa-cards .pa-sort", "size")
    page.click("#pa-type-head")  # focus out of the tools, then keys
    page.keyboard.press("?")
    page.wait_for_selector("#pa-help", state="visible")
    assert "next / previous type" in page.inner_text("#pa-help")
    page.keyboard.press("Escape")
    page.wait_for_selector("#pa-help", state="detached")
    page.keyboard.press("j")
    page.wait_for_function("() => document.querySelector('#pa-cards .pa-card.pa-selected')")
    page.click(f".pa-card[data-type-id='{tid}']")
    _wait_text(page, "#pa-type-head", rf"#{tid} ·")
    page.evaluate("() => window.scrollTo(0, 0)")
    page.wait_for_function(
        "() => Array.from(document.querySelectorAll('.pa-card img, "
        "#pa-gallery img')).every(i => i.complete && i.naturalWidth > 0)"
    )
    page.screenshot(path=str(shots / "types.png"))
    # arrows move the focus through the members grid; space picks
    page.focus("#pa-gallery .pa-member >> nth=0")
    page.keyboard.press("ArrowRight")
    at = "Array.from(document.querySelectorAll('#pa-gallery .pa-member'))"
    assert page.evaluate(f"() => {at}.indexOf(document.activeElement)") == 1
    page.keyboard.press("Space")
    page.wait_for_function(f"() => {at}[1].classList.contains('pa-on')")
    page.keyboard.press("Space")
    page.wait_for_function(f"() => !{at}[1].classList.contains('pa-on')")

    # ---- a suggestion, answered with the keyboard (n = no), then undo is there
    _tab(page, "Suggestions")
    text = _wait_text(page, "#pa-question", r"\?")
    qid = re.search(r"question #(\d+)", text).group(1)
    page.wait_for_function("() => document.querySelectorAll('#pa-suggest-panel img').length > 0")
    page.screenshot(path=str(shots / "suggestions.png"))
    mv = service.ws.latest_model_version().id
    page.keyboard.press("n")
    _wait_text(page, "#pa-sugg-msg", "Answered 'no'")
    _wait_text(page, "#pa-sugg-msg", "learns from it in the background")
    assert {s.id: s.status for s in service.ws.suggestions()}[int(qid)] == "answered"
    assert page.is_visible("#pa-sugg-undo")
    # the background retrain the answer started ends (the steps below expect its result)
    assert served["app"].retrainer.wait(300) and served["app"].retrainer.last_error is None
    assert service.ws.latest_model_version().id == mv + 1

    # ---- a label question offers types, not yes / no: "y" does nothing there
    region = service.ws.type_members(int(tid), limit=1)[0].region_id
    (lid,) = service.ws.replace_open_suggestions(
        [SuggestionIn(kind="label", target={"region_id": region}, score=99.0)]
    )
    page.get_by_role("button", name="Next question").click()
    _wait_text(page, "#pa-question", rf"question #{lid}\b")
    page.wait_for_function("() => !document.querySelector('#pa-yes')?.offsetParent")
    page.keyboard.press("y")
    time.sleep(1.0)
    assert {s.id: s.status for s in service.ws.suggestions()}[lid] == "open"
    assert "yes" not in {t.name.lower() for t in service.ws.list_types()}

    # ---- "is it one type?": pick two members that do not belong, then yes with a name
    t = max(
        (x for x in service.ws.list_types() if x.status == "proposed"), key=lambda x: x.n_regions
    )
    assert t.n_regions >= 3, t
    (sid,) = service.ws.replace_open_suggestions(
        [
            SuggestionIn(
                kind="confirm", target={"type_id": t.id, "n_regions": t.n_regions}, score=99.0
            )
        ]
    )
    page.get_by_role("button", name="Next question").click()
    _wait_text(page, "#pa-question", rf"question #{sid}\b")
    thumbs = "#pa-sugg-grid .pa-pickable .pa-member"
    page.wait_for_function(f"() => document.querySelectorAll('{thumbs}').length >= 3")
    page.query_selector_all(thumbs)[0].click()
    page.wait_for_function(
        "() => /^\\d+$/.test(document.querySelector("
        "'#pa-sugg-pick textarea, #pa-sugg-pick input').value.trim())"
    )
    page.query_selector_all(thumbs)[1].click()
    # picked members carry the check mark, and no full-size preview opened over the page
    assert len(page.query_selector_all(thumbs.replace(".pa-member", ".pa-member.pa-on"))) == 2
    assert not page.query_selector("#pa-suggest-panel .preview")
    page.wait_for_function(
        "() => document.querySelector('#pa-sugg-pick textarea, "
        "#pa-sugg-pick input').value.split(',').length === 2"
    )
    picked = [
        int(x) for x in page.input_value("#pa-sugg-pick textarea, #pa-sugg-pick input").split(",")
    ]
    members = {m.region_id for m in service.ws.type_members(t.id, limit=10**6)}
    assert set(picked) <= members and len(set(picked)) == 2
    page.fill("#pa-sugg-name input, #pa-sugg-name textarea", "picked-type")
    page.click("#pa-yes")
    _wait_text(page, "#pa-sugg-msg", "moved 2 member")
    # the header counts follow the answer at once (not at the next 15 s tick)
    _wait_text(page, "#pa-header", r"\(2 confirmed\)", timeout=4)
    got = service.ws.get_type(t.id)
    assert (got.status, got.name, got.n_regions) == ("confirmed", "picked-type", t.n_regions - 2)
    assert {m.region_id for m in service.ws.type_members(t.id, limit=10**6)} == members - set(
        picked
    )
    assert served["app"].retrainer.wait(300) and served["app"].retrainer.last_error is None

    # ---- the map: draw it, lasso a selection
    _tab(page, "Map")
    page.wait_for_selector(
        "#pa-map .js-plotly-plot .scatterlayer, #pa-map .js-plotly-plot canvas", timeout=30000
    )
    time.sleep(1.0)  # the page script binds the plot's selection events every 0.6 s
    # hovering a point shows its crop
    x, y = page.evaluate(
        "() => { const gd = document.querySelector('#pa-map .js-plotly-plot'); "
        "const fl = gd._fullLayout, tr = gd._fullData[0]; "
        "const r = gd.getBoundingClientRect(); "
        "return [r.left + fl._size.l + fl.xaxis.l2p(tr.x[0]), "
        "r.top + fl._size.t + fl.yaxis.l2p(tr.y[0])]; }"
    )
    page.mouse.move(x - 30, y - 30)
    page.mouse.move(x, y, steps=5)
    page.wait_for_function(
        "() => { const t = document.getElementById('pa-hover-thumb'); "
        "return !!t && t.style.display === 'block' && t.complete && "
        "t.naturalWidth > 0; }",
        timeout=15000,
    )
    box = page.query_selector("#pa-map .nsewdrag").bounding_box()
    page.mouse.move(box["x"] + 3, box["y"] + 3)
    page.mouse.down()
    for fx, fy in ((0.99, 0.01), (0.99, 0.99), (0.01, 0.99), (0.01, 0.02)):
        page.mouse.move(box["x"] + fx * box["width"], box["y"] + fy * box["height"], steps=6)
    page.mouse.up()
    _wait_text(page, "#pa-map-msg", r"\d+ region\(s\) selected")
    page.wait_for_function(
        "() => { const i = Array.from(document.querySelectorAll("
        "'#pa-map-gallery img')); return i.length > 0 && "
        "i.every(x => x.complete && x.naturalWidth > 0); }"
    )
    page.screenshot(path=str(shots / "map.png"))

    # ---- image detail, from a double-click in the members grid
    _tab(page, "Types")
    page.click(f".pa-card[data-type-id='{tid}']")
    _wait_text(page, "#pa-type-head", rf"#{tid} ·")
    page.dblclick("#pa-gallery .pa-member >> nth=0")
    page.wait_for_function(
        "() => document.querySelectorAll('#pa-image-row img').length === 4", timeout=30000
    )
    page.wait_for_function(
        "() => Array.from(document.querySelectorAll('#pa-image-row img'))"
        ".every(i => i.complete && i.naturalWidth > 0)"
    )
    text = page.inner_text("#pa-image-md")
    assert re.search(r"Image #\d+", text) and "region(s)" in text
    time.sleep(0.5)
    page.screenshot(path=str(shots / "image.png"))

    # ---- browse: every image, the passed ones too; a click opens it on the Image tab
    _tab(page, "Browse")
    _wait_text(page, "#pa-browse-count", r"17 image\(s\)")
    radios = page.locator("#pa-browse-flagged")
    radios.get_by_role("radio", name="passed").check()
    _wait_text(page, "#pa-browse-count", r"^\s*(?!17 )\d+ image\(s\)")
    n_passed = int(re.search(r"(\d+) image", page.inner_text("#pa-browse-count")).group(1))
    assert n_passed < 17
    radios.get_by_role("radio", name="all").check()
    _wait_text(page, "#pa-browse-count", r"17 image\(s\)")
    first_img = page.wait_for_selector("#pa-browse-grid .pa-image")
    iid = first_img.get_attribute("data-iid")
    first_img.hover()  # hover to enlarge
    page.wait_for_function(
        "() => { const e = document.getElementById('pa-enlarge'); return !!e && "
        "e.style.display === 'block' && e.complete && e.naturalWidth > 0; }"
    )
    first_img.click()
    _wait_text(page, "#pa-image-md", rf"Image #{iid}\b")

    # ---- the viewer: full resolution, zoom and pan, layers, next / previous by key
    viewer = "#pa-viewer .pa-viewer"
    page.wait_for_function(
        f'() => {{ const v = document.querySelector("{viewer}"); return !!v && '
        f"v.dataset.iid === '{iid}' && !!v.dataset.bound && "
        "Array.from(v.querySelectorAll('img')).every(i => i.complete && i.naturalWidth > 0); }"
    )
    fit = float(page.get_attribute(viewer, "data-zoom"))
    page.keyboard.press("+")
    page.keyboard.press("+")
    assert float(page.get_attribute(viewer, "data-zoom")) == pytest.approx(fit * 2.25, rel=1e-3)
    stage = page.query_selector(f"{viewer} .pa-vstage").bounding_box()
    layers = f"{viewer} .pa-vlayers"
    before = page.eval_on_selector(layers, "e => e.style.transform")
    page.mouse.move(stage["x"] + 200, stage["y"] + 200)
    page.mouse.down()
    page.mouse.move(stage["x"] + 260, stage["y"] + 230, steps=4)
    page.mouse.up()
    assert page.eval_on_selector(layers, "e => e.style.transform") != before  # panned
    page.keyboard.press("1")
    assert float(page.get_attribute(viewer, "data-zoom")) == pytest.approx(1.0)
    page.keyboard.press("h")
    assert page.eval_on_selector(f"{viewer} .pa-v-heatimg", "e => e.style.opacity") == "0"
    page.keyboard.press("h")
    page.locator(f"{viewer} .pa-v-opacity").fill("30")
    assert page.eval_on_selector(f"{viewer} .pa-v-heatimg", "e => e.style.opacity") == "0.3"
    page.keyboard.press("Escape")  # leaves the slider: keys are the viewer's again
    page.keyboard.press("0")
    assert float(page.get_attribute(viewer, "data-zoom")) == pytest.approx(fit, rel=1e-3)
    page.keyboard.press("n")
    page.wait_for_function(
        f'() => {{ const v = document.querySelector("{viewer}"); '
        f"return !!v && v.dataset.iid !== '{iid}'; }}"
    )
    page.keyboard.press("p")
    page.wait_for_function(
        f'() => {{ const v = document.querySelector("{viewer}"); '
        f"return !!v && v.dataset.iid === '{iid}' && !!v.dataset.bound; }}"
    )
    # the layer choices stay from one image to the next
    assert page.eval_on_selector(f"{viewer} .pa-v-heatimg", "e => e.style.opacity") == "0.3"

    # a half-typed id waits for Show, which says once what is wrong (it said it twice)
    box = page.locator("#pa-image-dd input")
    box.fill("")
    box.press_sequentially("12x")
    page.get_by_role("button", name="Show", exact=True).click()
    page.wait_for_selector(".toast-body", timeout=15000)
    time.sleep(1.0)
    assert len(page.query_selector_all(".toast-body")) == 1
    for close in page.query_selector_all(".toast-close"):
        close.click()

    # ---- the history
    _tab(page, "History")
    history = _wait_text(page, "#pa-history", "split_type")
    for action in ("ingest_batch", "confirm_type", "split_type", "answer_suggestion"):
        assert action in history
    assert "uploaded a batch" in history  # in a reviewer's words too
    # the filter with its defaults shows every entry (its type box started at 0: nothing)
    page.get_by_role("button", name="Filter / refresh").click()
    time.sleep(1.0)
    refreshed = _wait_text(page, "#pa-history", "ingest_batch")
    assert "split_type" in refreshed

    # ---- export COCO
    _tab(page, "Export")
    page.get_by_label("COCO instances of the confirmed types: masks, boxes (JSON)").check()
    page.click("#pa-export")
    link = page.wait_for_selector("#pa-export-file a", timeout=30000)
    with page.expect_download() as dl:
        link.click()
    coco = json.loads(Path(dl.value.path()).read_text())
    assert len(coco["images"]) == 17 and coco["annotations"]
    names = {c["name"] for c in coco["categories"]}
    assert service.ws.get_type(int(tid)).name in names

    # ---- undo from a History row: the newest of this reviewer's entries
    _tab(page, "History")
    _wait_text(page, "#pa-history", "possible")
    views = served["app"].views
    me = next(r[2] for r in views.audit_rows() if r[2].startswith("reviewer-"))
    # the newest entry of this browser session that can be undone
    mine = next(r[0] for r in views.audit_rows(me=me) if r[-1] == "possible")
    seq = str(mine)
    page.fill("#pa-history-pick input, #pa-history-pick textarea", seq)
    time.sleep(0.3)
    page.click("#pa-history-undo-row")
    _wait_text(page, "#pa-history-msg", rf"Undid .*history #{seq}\b")
    state = {str(r[0]): r[-1] for r in views.audit_rows(me=me)}
    assert state[seq] == "undone"

    # ---- a second workspace (another product line): created here, empty, apart
    n_cards = len(page.query_selector_all(".pa-card"))
    page.fill("#pa-ws-name input, #pa-ws-name textarea", "line-2")
    page.click("#pa-ws-create")
    page.wait_for_url("**/w/line-2/", timeout=60000)
    _wait_text(page, "#pa-header", r"Workspace line-2 · 0 batch")
    assert not page.query_selector_all(".pa-card")
    page.click("#pa-ws-pick input")
    page.get_by_role("option", name="default", exact=True).click()
    page.wait_for_url(served["url"], timeout=60000)
    page.wait_for_selector(".pa-card", timeout=60000)
    _wait_text(page, "#pa-header", r"Workspace default")
    assert len(page.query_selector_all(".pa-card")) >= n_cards - 1
    assert not errors, errors


def test_a_second_session_reviews_while_the_first_ones_batch_is_processed(served, browser):
    service = served["service"]
    assert served["app"].retrainer.wait(300)  # the engine lock below is the upload's
    # the first session's batch holds the engine until the second session is done (a small
    # batch could otherwise finish before the second session acts, and the test would race)
    original, release = service.upload_batch, threading.Event()

    def held(*args, **kwargs):
        with service.engine_lock:
            release.wait(120)
        return original(*args, **kwargs)

    service.upload_batch = held
    try:
        first = browser.new_context().new_page()
        first.set_viewport_size({"width": 1300, "height": 900})
        first.goto(served["url"])
        first.wait_for_selector(".pa-card")
        _upload(first, served["second"], None, "second")
        # wait until the engine is busy with that batch
        deadline = time.time() + 60
        while not service.engine_lock.locked():
            assert time.time() < deadline, "the second upload never started"
            time.sleep(0.05)

        other = browser.new_context().new_page()
        other.set_viewport_size({"width": 1300, "height": 900})
        t0 = time.perf_counter()
        other.goto(served["url"])
        card = other.wait_for_selector(".pa-card", timeout=30000)
        tid = card.get_attribute("data-type-id")
        card.click()
        _wait_text(other, "#pa-type-head", rf"#{tid} ·")
        other.fill("#pa-rename-tb textarea, #pa-rename-tb input", "renamed-while-busy")
        other.click("#pa-rename")
        _wait_text(other, "#pa-msg", "Renamed")
        other.wait_for_function(  # the name box empties once the name is used
            "() => document.querySelector('#pa-rename-tb textarea, #pa-rename-tb input')"
            ".value === ''"
        )
        took = time.perf_counter() - t0
        assert service.engine_lock.locked(), "the first session's batch finished too early to tell"
        assert service.ws.get_type(int(tid)).name == "renamed-while-busy"
        assert took < 20, f"the second session waited {took:.1f} s"
    finally:
        release.set()
        service.upload_batch = original
    report = _wait_text(first, "#pa-up-report", "sorted into the existing types", timeout=300)
    assert "images analysed" in report


def test_an_admin_deletes_the_second_batch_from_the_upload_tab(served, browser):
    """After the test above: its batch ("second") is deleted with the Upload tab's box,
    which asks for the confirmation first."""
    service = served["service"]
    names = {b.name: b.id for b in service.batches()}
    assert "second" in names, names
    page = browser.new_context().new_page()
    page.set_viewport_size({"width": 1300, "height": 900})
    page.goto(served["url"])
    page.wait_for_selector(".pa-card")
    _tab(page, "Upload")
    page.get_by_text("Delete a batch").click()
    page.click("#pa-del-batch input")
    page.get_by_role("option", name=re.compile(r"^second \(#")).click()
    page.click("#pa-del-btn")
    _wait_text(page, "#pa-del-msg", "tick the box")
    assert "second" in {b.name for b in service.batches()}  # nothing without the tick
    page.click("#pa-del-batch input")
    page.get_by_role("option", name=re.compile(r"^second \(#")).click()
    page.check("#pa-del-confirm input")
    page.click("#pa-del-btn")
    message = _wait_text(page, "#pa-del-msg", "Deleted batch second")
    assert "snapshot" in message
    assert "second" not in {b.name for b in service.batches()}
    _wait_text(page, "#pa-header", r"1 batch\(es\)")
    page.close()
