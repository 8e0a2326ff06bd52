"""The web app through its named API endpoints (gradio_client) against a launched app.

One app per module (``prevent_thread_lock``) over a workspace whose first batch is uploaded
through the ``upload_batch`` endpoint (a zip with nested folders and one corrupt file),
at 128 px on the synthetic set.
"""

from __future__ import annotations

import csv
import json
import threading
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402

from engine.config import ProtoAtlasConfig  # noqa: E402
from protoatlas.service import WorkspaceService  # noqa: E402
from webapp.app import launch  # noqa: E402
from webapp.demo import write_demo_set, zip_folder  # noqa: E402

pytestmark = pytest.mark.slow


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("webapp")
    demo = write_demo_set(tmp / "demo", n_train=12, n_test_good=2, n_per_type=3, side=128)
    images_zip = zip_folder(demo / "test", tmp / "batch1.zip")
    with zipfile.ZipFile(images_zip, "a") as z:  # a corrupt file deep inside the archive
        z.writestr("line 2/cam a/broken.png", b"\x89PNG\r\n\x1a\n not really a png")
    normals_zip = zip_folder(demo / "train" / "good", tmp / "normals.zip")
    config = ProtoAtlasConfig(device="cpu").with_overrides(
        backbone={"image_size": 128},
        refine={"n_samples": 16, "epochs": 1, "batch_size": 4, "calibration_normals": 4},
    )
    service = WorkspaceService(tmp / "home", "default", config=config)
    app, url = launch(service, port=None, quiet=True, prevent_thread_lock=True)
    client = Client(url, verbose=False)
    t0 = time.perf_counter()
    report, skipped = client.predict(
        [handle_file(str(images_zip))],
        [handle_file(str(normals_zip))],
        "",
        "auto",
        "auto",
        "first batch",
        api_name="/upload_batch",
    )
    ns = SimpleNamespace(
        service=service,
        app=app,
        url=url,
        client=client,
        report=report,
        skipped=skipped,
        demo=demo,
        tmp=tmp,
        upload_s=time.perf_counter() - t0,
    )
    yield ns
    app.close()
    service.close()


def _types(client) -> list[dict]:
    table = client.predict(api_name="/list_types")
    return [dict(zip(table["headers"], row)) for row in table["data"]]


def test_upload_batch_discovers_types_and_reports_skipped_files(served):
    assert "discovered" in served.report
    assert "17 images analysed" in served.report
    rows = served.skipped["data"]
    assert any(r[0] == "line 2/cam a/broken.png" and r[1] for r in rows), rows
    batches = served.service.ws.batches()
    assert [b.name for b in batches] == ["first batch"]
    assert batches[0].n_images == 17


def test_list_types_needs_no_argument_and_matches_the_workspace(served):
    types = _types(served.client)
    assert list(types[0]) == ["id", "name", "status", "regions", "images", "confidence"]
    stored = {t.id: t for t in served.service.ws.list_types() if t.n_regions}  # emptied: hidden
    assert len(types) >= 2 and {t["id"] for t in types} == set(stored)
    for t in types:
        assert t["name"] == stored[t["id"]].name
        assert t["status"] in ("proposed", "confirmed", "rejected")
        assert t["regions"] == stored[t["id"]].n_regions


def test_type_detail_lists_members(served):
    t = max(_types(served.client), key=lambda t: t["regions"])
    detail = served.client.predict(t["id"], api_name="/type_detail")
    assert detail["id"] == t["id"] and detail["regions"] == t["regions"]
    assert len(detail["members"]) == t["regions"]
    assert all(m["image"].endswith(".png") for m in detail["members"])


def test_type_action_confirm_rename_conflict_and_undo(served):
    c = served.client
    t = _types(c)[0]
    version = served.service.ws.get_type(t["id"]).version
    out = c.predict(t["id"], "confirm", "", None, version, api_name="/type_action")
    assert out["ok"], out
    assert served.service.ws.get_type(t["id"]).status == "confirmed"
    out = c.predict(t["id"], "rename", "scratch-like", None, -1, api_name="/type_action")
    assert out["ok"] and served.service.ws.get_type(t["id"]).name == "scratch-like"
    # a stale version (another reviewer changed the type meanwhile) is refused, not applied
    out = c.predict(t["id"], "rename", "other", None, version, api_name="/type_action")
    assert not out["ok"] and out["conflict"] and "changed" in out["message"]
    assert served.service.ws.get_type(t["id"]).name == "scratch-like"
    out = c.predict(api_name="/undo")
    assert out["ok"] and "rename" in out["message"]
    assert served.service.ws.get_type(t["id"]).name == t["name"]
    out = c.predict(t["id"], "explode", "", None, -1, api_name="/type_action")
    assert not out["ok"] and "Unknown action" in out["message"]


def test_each_anonymous_session_has_its_own_undo(served):
    a, b = Client(served.url, verbose=False), Client(served.url, verbose=False)
    t = next(x for x in _types(a) if x["status"] == "proposed")
    out = a.predict(t["id"], "confirm", "", None, -1, api_name="/type_action")
    assert out["ok"], out
    undone = b.predict(api_name="/undo")  # session B has done nothing: nothing of A's undone
    assert not undone["ok"], undone
    assert served.service.ws.get_type(t["id"]).status == "confirmed"
    assert a.predict(api_name="/undo")["ok"]
    assert served.service.ws.get_type(t["id"]).status == "proposed"
    actors = {e.actor for e in served.service.ws.audit(limit=20)}
    assert len({x for x in actors if x.startswith("reviewer-")}) >= 1


def test_type_action_split_merge_move_and_mark_normal(served):
    c, ws = served.client, served.service.ws
    big = max(_types(c), key=lambda t: t["regions"])
    assert big["regions"] >= 3
    out = c.predict(big["id"], "split", "2", None, -1, api_name="/type_action")
    assert out["ok"], out
    new_id = out["type_ids"][1]
    assert ws.get_type(new_id).n_regions >= 1
    assert ws.get_type(big["id"]).n_regions + ws.get_type(new_id).n_regions == big["regions"]
    out = c.predict(new_id, "merge", str(big["id"]), None, -1, api_name="/type_action")
    assert out["ok"], out
    assert ws.get_type(new_id).status == "merged"
    assert ws.get_type(big["id"]).n_regions == big["regions"]
    # move one member to another type, then mark one as normal
    members = c.predict(big["id"], api_name="/type_detail")["members"]
    other = next(t for t in _types(c) if t["id"] != big["id"])
    rid = members[0]["region_id"]
    out = c.predict(big["id"], "move", str(other["id"]), [rid], -1, api_name="/type_action")
    assert out["ok"], out
    assert rid in [
        m["region_id"] for m in c.predict(other["id"], api_name="/type_detail")["members"]
    ]
    out = c.predict(other["id"], "normal", "", [rid], -1, api_name="/type_action")
    assert out["ok"], out
    regions = {r.id: r for r in ws.regions_for_batch(ws.batches()[0].id, with_masks=False)}
    assert regions[rid].is_normal
    out = c.predict(other["id"], "move", "", [], -1, api_name="/type_action")
    assert not out["ok"] and "Select regions" in out["message"]


def test_next_and_answer_suggestion(served):
    c, ws = served.client, served.service.ws
    refreshed = c.predict(api_name="/refresh_suggestions")
    assert "n_open" in refreshed
    q = c.predict(api_name="/next_suggestion")
    if q["id"] is None:
        pytest.fail(f"no open question after refresh_suggestions: {refreshed}")
    assert q["question"] and q["kind"] and "yes" in q["answers"] and q["images"]
    out = c.predict(q["id"], "skip", api_name="/answer_suggestion")
    assert out["ok"], out
    status = {s.id: s.status for s in ws.suggestions()}
    assert status[q["id"]] != "open"
    q2 = c.predict(api_name="/next_suggestion")
    assert q2["id"] != q["id"]
    out = c.predict(q["id"], "", api_name="/answer_suggestion")
    assert not out["ok"]


def test_retrain_learns_from_the_decisions(served):
    ws = served.service.ws
    before = ws.latest_model_version().id
    out = served.client.predict(api_name="/retrain")
    assert out["ok"], out
    assert out["model_version"] is not None and out["model_version"] > before
    assert ws.latest_model_version().id == out["model_version"]
    # the app still lists every type and serves their crops afterwards
    assert _types(served.client)


def test_refine_reports_before_after_and_switches_only_when_asked(served):
    ws = served.service.ws
    for t in _types(served.client):
        if t.get("status") == "proposed":
            served.service.confirm_type(int(t["id"]), actor="alice")
    before = ws.latest_model_version().id
    out = served.client.predict(api_name="/refine_detector")
    assert out["ok"], out
    assert "held out" in out["message"] and "pixel auroc" in out["message"]
    assert ws.latest_model_version().id == before  # asked, not switched
    switched = served.client.predict(out["candidate"], api_name="/accept_refinement")
    assert switched["ok"] and ws.latest_model_version().kind == "refine"
    back = served.client.predict(api_name="/rollback_detector")
    assert back["ok"] and ws.latest_model_version().kind == "rollback"
    assert served.service.model().detector.refiner is None
    assert _types(served.client)


def test_audit_is_filterable(served):
    c = served.client
    everything = c.predict("", "", None, api_name="/audit")["data"]
    actions = {row[3] for row in everything}
    assert {"ingest_batch", "confirm_type", "rename_type", "undo"} <= actions
    only = c.predict("", "confirm_type", None, api_name="/audit")["data"]
    assert only and all(row[3] == "confirm_type" for row in only)
    me = next(row[2] for row in everything if row[2].startswith("reviewer-"))
    mine = c.predict(me, "", None, api_name="/audit")["data"]
    assert mine and all(row[2] == me for row in mine)


def test_image_detail_endpoint(served):
    ws = served.service.ws
    region = ws.regions_for_batch(ws.batches()[0].id, with_masks=False)[0]
    summary, orig, heat, regions, prior, rows, viewer = served.client.predict(
        region.image_id, api_name="/image_detail"
    )
    assert f"Image #{region.image_id}" in summary
    for picture in (orig, heat, regions, prior):
        assert picture and Path(picture).stat().st_size > 100
    assert any(r[0] == region.id for r in rows["data"])
    assert f"pa/full/{region.image_id}.jpg" in viewer


def test_the_viewer_layers_are_served(served):

    ws = served.service.ws
    region = ws.regions_for_batch(ws.batches()[0].id, with_masks=False)[0]
    for path, kind in (("full", "image/jpeg"), ("heat", "image/png"), ("outline", "image/png")):
        ext = "jpg" if path == "full" else "png"
        with urllib.request.urlopen(f"{served.url}pa/{path}/{region.image_id}.{ext}") as r:
            assert r.headers["Content-Type"] == kind and len(r.read()) > 100
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{served.url}pa/full/999999.jpg")
    assert err.value.code == 404


@pytest.mark.parametrize(
    "fmt",
    [
        "csv",
        "parquet",
        "coco",
        "coco_all",
        "label_studio",
        "yolo",
        "crops",
        "audit_json",
        "images_csv",
    ],
)
def test_export(served, fmt):
    path = Path(served.client.predict(fmt, api_name="/export"))
    assert path.stat().st_size > 0
    if fmt == "csv":
        rows = list(csv.DictReader(path.open()))
        assert rows and "region_id" in rows[0]
    elif fmt == "parquet":
        import duckdb

        n = (
            duckdb.connect()
            .execute("SELECT count(*) FROM read_parquet(?)", [str(path)])
            .fetchone()[0]
        )
        assert n == sum(b.n_regions for b in served.service.ws.batches())
    elif fmt == "coco":
        coco = json.loads(path.read_text())
        assert coco["images"] and coco["annotations"] and coco["categories"]
    elif fmt == "audit_json":
        text = path.read_text()
        assert "confirm_type" in text
    elif fmt == "label_studio":
        tasks = json.loads(path.read_text())
        assert tasks and all("image" in t["data"] for t in tasks)
    elif fmt == "yolo":
        with zipfile.ZipFile(path) as z:
            assert "classes.txt" in z.namelist()
    elif fmt == "crops":
        with zipfile.ZipFile(path) as z:
            confirmed = {
                t.name: t.n_regions
                for t in served.service.ws.list_types()
                if t.status == "confirmed" and t.n_regions
            }
            folders: dict[str, int] = {}
            for n in z.namelist():
                folders[n.split("/")[0]] = folders.get(n.split("/")[0], 0) + 1
            assert folders == confirmed


def test_export_of_one_type_only(served):
    c = served.client
    ws = served.service.ws
    live = [t for t in ws.list_types() if t.n_regions and t.status in ("confirmed", "proposed")]
    t = max(live, key=lambda t: t.n_regions)
    batch = ws.batches()[0].id
    members = {
        r.id
        for r in ws.regions_for_batch(batch, with_masks=False)
        if r.type_id == t.id and not r.is_normal
    }
    path = Path(c.predict("csv", "", [str(t.id)], api_name="/export"))
    rows = list(csv.DictReader(path.open()))
    assert {int(r["region_id"]) for r in rows} == members and {r["type"] for r in rows} == {t.name}
    coco = json.loads(
        Path(c.predict("coco_all", str(batch), [t.name], api_name="/export")).read_text()
    )
    assert [cat["id"] for cat in coco["categories"]] == [t.id]
    assert {a["id"] for a in coco["annotations"]} == members
    assert len(coco["images"]) == len(
        {r.image_id for r in ws.regions_for_batch(batch) if r.id in members}
    )
    with pytest.raises(Exception, match="no type with id 999999"):
        c.predict("coco", "", ["999999"], api_name="/export")
    with pytest.raises(Exception, match="no batch with id 999"):
        c.predict("csv", "999", [], api_name="/export")


def test_upload_errors_are_clear(served, tmp_path):
    c = served.client
    bad = _zip(tmp_path / "evil.zip", {"ok/a.png": b"x", "../escape.png": b"y"})
    with pytest.raises(Exception, match="refused"):
        c.predict([handle_file(str(bad))], None, "", "auto", "auto", "", api_name="/upload_batch")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(Exception, match="Invalid file type"):  # Gradio's own check
        c.predict([handle_file(str(text))], None, "", "auto", "auto", "", api_name="/upload_batch")
    good = served.demo / "test" / "crack" / "000.png"
    with pytest.raises(Exception, match="Number of types"):
        c.predict([handle_file(str(good))], None, "", "many", "auto", "", api_name="/upload_batch")
    # images staged, then the known-good zip refused: the staged images go too
    with pytest.raises(Exception, match="refused") as err:
        c.predict(
            [handle_file(str(good))],
            [handle_file(str(bad))],
            "",
            "auto",
            "auto",
            "",
            api_name="/upload_batch",
        )
    assert "/tmp/" not in str(err.value) and str(tmp_path) not in str(err.value)  # no paths
    uploads = served.service.root / "uploads"
    assert not list(uploads.iterdir()) if uploads.exists() else True, list(uploads.iterdir())
    assert len(served.service.ws.batches()) == 1


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, b""


def test_file_access_is_limited_to_the_crop_cache_and_exports(served):
    root = served.service.root
    assert _get(f"{served.url}gradio_api/file={root / 'workspace.duckdb'}")[0] in (403, 404)
    assert _get(f"{served.url}gradio_api/file=/etc/passwd")[0] in (403, 404)
    image = served.service.ws.image_path(1)
    assert _get(f"{served.url}gradio_api/file={image}")[0] in (403, 404)
    rid = served.service.ws.regions_for_batch(1, with_masks=False)[0].id
    status, data = _get(f"{served.url}pa/crop/{rid}.jpg")
    assert status == 200 and data[:2] == b"\xff\xd8"
    assert _get(f"{served.url}pa/thumb/999999.jpg")[0] == 404


def test_a_second_session_reviews_while_a_batch_is_processed(served):
    """While session A's upload holds the engine, session B lists, renames and asks;
    each answer comes back fast and A's job is still running."""
    service = served.service
    original = service.upload_batch
    started, release = threading.Event(), threading.Event()

    def held(*args, **kwargs):
        with service.engine_lock:  # the engine is busy with A's batch
            started.set()
            release.wait(120)
        return original(*args, **kwargs)

    service.upload_batch = held
    try:
        a = Client(served.url, verbose=False)
        # new images (the first batch's own would be refused as already in the workspace)
        fresh = write_demo_set(
            served.tmp / "demo2", seed=1, n_train=2, n_test_good=1, n_per_type=1, side=128
        )
        files = [handle_file(str(p)) for p in sorted((fresh / "test").rglob("*.png"))[:3]]
        job = a.submit(files, None, "", "auto", "auto", "second batch", api_name="/upload_batch")
        assert started.wait(60), "the upload never started"
        b = Client(served.url, verbose=False)
        t0 = time.perf_counter()
        types = _types(b)
        t = types[0]
        out = b.predict(t["id"], "rename", "renamed-by-b", None, -1, api_name="/type_action")
        q = b.predict(api_name="/next_suggestion")
        took = time.perf_counter() - t0
        assert out["ok"], out
        assert q is not None
        assert service.engine_lock.locked() and not job.done()
        assert took < 10, f"review calls took {took:.1f} s while the engine was busy"
    finally:
        release.set()
        service.upload_batch = original
    report, _ = job.result(timeout=300)
    assert "sorted into the existing types" in report
    assert [b.name for b in service.ws.batches()][-1] == "second batch"


def test_an_answer_retrains_in_the_background_and_renews_the_questions(served):
    c, ws, app = served.client, served.service.ws, served.app
    assert app.auto_retrain
    assert app.retrainer.wait(300)
    before = ws.latest_model_version().id
    c.predict(api_name="/refresh_suggestions")
    q = c.predict(api_name="/next_suggestion")
    assert q["id"] is not None
    answer = "no" if q["kind"] != "label" else "good"
    out = c.predict(q["id"], answer, api_name="/answer_suggestion")
    assert out["ok"], out
    assert "learns from it in the background" in out["message"]
    assert app.retrainer.wait(300) and app.retrainer.last_error is None
    mv = ws.latest_model_version()
    assert mv.id == before + 1 and mv.kind == "retrain"
    assert ws.audit(action="apply_retrain", limit=1)[0].actor == "model"
    # the queue was renewed from the new model version
    open_ = ws.open_suggestions()
    assert open_ and all(s.model_version == mv.id for s in open_)
    # a skipped question teaches nothing: no retrain
    q = c.predict(api_name="/next_suggestion")
    out = c.predict(q["id"], "skip", api_name="/answer_suggestion")
    assert out["ok"] and "background" not in out["message"]
    assert app.retrainer.wait(60) and ws.latest_model_version().id == mv.id


def test_a_second_workspace_is_created_served_and_kept_apart(served):
    before = served.client.predict(api_name="/list_types")["data"]
    n_images = len(served.service.ws.batches())
    href = served.client.predict("line-b", api_name="/create_workspace")
    assert href == "pa/open/line-b"
    with urllib.request.urlopen(served.url + href) as r:  # mounts it, then redirects there
        assert r.status == 200 and r.url.endswith("/w/line-b/")
    other = Client(served.url + "w/line-b/", verbose=False)
    assert other.predict(api_name="/list_types")["data"] == []
    report, _ = other.predict(
        [handle_file(str(served.tmp / "batch1.zip"))],
        [handle_file(str(served.tmp / "normals.zip"))],
        "",
        "auto",
        "auto",
        "product b",
        api_name="/upload_batch",
    )
    assert "discovered" in report
    assert other.predict(api_name="/list_types")["data"]
    # the first workspace saw none of it
    assert served.client.predict(api_name="/list_types")["data"] == before
    assert len(served.service.ws.batches()) == n_images
    assert (served.tmp / "home" / "line-b" / "workspace.duckdb").is_file()
    # its pictures are its own: a region of line-b through line-b's routes
    b = served.app.workspaces.apps["line-b"].service
    region = b.ws.regions_for_batch(b.ws.batches()[0].id, with_masks=False)[0]
    with urllib.request.urlopen(f"{served.url}w/line-b/pa/full/{region.image_id}.jpg") as r:
        assert r.headers["Content-Type"] == "image/jpeg"
    # the name is taken now, and a bad name is refused with the rule
    for name, says in (("line-b", "exists already"), ("../evil", "must be 1-64 letters")):
        with pytest.raises(Exception, match=says):
            served.client.predict(name, api_name="/create_workspace")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(served.url + "pa/open/nothing-here")
    assert err.value.code == 404
