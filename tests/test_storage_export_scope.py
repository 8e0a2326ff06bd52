"""Exports scoped to one batch and to some types: assignments (region CSV, Parquet, image
CSV), COCO, Label Studio, YOLO and crops (through the service), the scope's errors, and the
empty selection (a valid, empty file)."""

from __future__ import annotations

import csv
import json
import zipfile

import duckdb
import pytest

from protoatlas.service import WorkspaceService
from storage import NotFoundError, StorageError, ValidationError, Workspace
from tests.storage_fixtures import make_batch, with_pngs


@pytest.fixture(scope="module")
def scoped(tmp_path_factory):
    """Two batches over four types: A and B confirmed, C proposed, D rejected; one region
    of A marked normal. Yields (service, {letter: type id})."""
    home = tmp_path_factory.mktemp("scope")
    ws = Workspace.open(home, "w", embedding_dim=16)
    ws.ingest_batch(with_pngs(make_batch(8, n_types=4, seed=2, name="first"), 1))
    ids = sorted(t.id for t in ws.list_types())
    second = make_batch(6, seed=5, name="second", existing_types=ids, image_prefix="two")
    ws.ingest_batch(with_pngs(second, 2))
    a, b, c, d = ids
    for t in (a, b):
        ws.confirm_type(t, expected_version=ws.get_type(t).version, actor="ann")
    ws.reject_type(d, expected_version=ws.get_type(d).version, actor="ann")
    normal = ws.type_members(a, limit=1)[0].region_id
    ws.mark_normal([normal], expected={a: ws.get_type(a).version}, actor="ann")
    service = WorkspaceService.over(ws)
    yield service, {"A": a, "B": b, "C": c, "D": d}
    service.close()


def _regions(ws, batch_id=None):
    return [
        r
        for bt in ws.batches()
        if batch_id in (None, bt.id)
        for r in ws.regions_for_batch(bt.id, with_masks=False)
    ]


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_the_fixture_has_regions_of_each_type_in_each_batch(scoped):
    svc, t = scoped
    for b in svc.batches():
        typed = {r.type_id for r in _regions(svc.ws, b.id) if not r.is_normal}
        assert {t["A"], t["B"], t["C"]} <= typed, (b.id, typed)


def test_region_csv_and_parquet_of_one_batch_and_one_type(scoped, tmp_path):
    svc, t = scoped
    second = svc.batches()[1].id
    want = {r.id for r in _regions(svc.ws, second)}
    rows = _rows(svc.export_assignments(tmp_path / "b.csv", batch_id=second))
    assert {int(r["region_id"]) for r in rows} == want
    assert {r["batch"] for r in rows} == {"second"}

    want = {r.id for r in _regions(svc.ws) if r.type_id == t["C"]}
    rows = _rows(svc.export_assignments(tmp_path / "c.csv", type_ids=[t["C"]]))
    assert {int(r["region_id"]) for r in rows} == want and len(rows) == len(want)
    assert {r["type_status"] for r in rows} == {"proposed"}

    pq = svc.export_assignments(
        tmp_path / "bc.parquet", fmt="parquet", batch_id=second, type_ids=[t["A"], t["D"]]
    )
    got = duckdb.sql(f"SELECT region_id FROM read_parquet('{pq.as_posix()}')").fetchall()
    want = {r.id for r in _regions(svc.ws, second) if r.type_id in (t["A"], t["D"])}
    assert {g[0] for g in got} == want and len(got) == len(want)


def test_images_csv_keeps_the_images_labelled_with_the_types(scoped, tmp_path):
    svc, t = scoped
    every = _rows(svc.export_assignments(tmp_path / "all.csv", level="image"))
    first = svc.batches()[0].id
    rows = _rows(
        svc.export_assignments(tmp_path / "b.csv", level="image", batch_id=first, type_ids=[t["B"]])
    )
    name_b = svc.get_type(t["B"]).name
    want = [
        (r["image"], r["label"]) for r in every if r["batch"] == "first" and r["label"] == name_b
    ]
    assert want and [(r["image"], r["label"]) for r in rows] == want
    batch_rows = _rows(svc.export_assignments(tmp_path / "one.csv", level="image", batch_id=first))
    assert len(batch_rows) == 8 and {r["batch"] for r in batch_rows} == {"first"}


def test_coco_of_one_type_holds_its_regions_and_the_images_with_one(scoped, tmp_path):
    svc, t = scoped
    doc = json.loads(svc.export_coco(tmp_path / "a.json", type_ids=[t["A"]]).read_text())
    regions = [r for r in _regions(svc.ws) if r.type_id == t["A"] and not r.is_normal]
    assert [c["id"] for c in doc["categories"]] == [t["A"]]
    assert sorted(a["id"] for a in doc["annotations"]) == sorted(r.id for r in regions)
    assert {(im["protoatlas_batch_id"], im["protoatlas_image_id"]) for im in doc["images"]} == {
        (r.batch_id, r.image_id) for r in regions
    }
    assert [im["id"] for im in doc["images"]] == list(range(1, len(doc["images"]) + 1))
    ids = {im["id"] for im in doc["images"]}
    assert all(a["image_id"] in ids for a in doc["annotations"])


def test_coco_all_of_one_batch_and_a_proposed_type(scoped, tmp_path):
    svc, t = scoped
    second = svc.batches()[1].id
    path = svc.export_coco(tmp_path / "c.json", batch_id=second, types="all", type_ids=[t["C"]])
    doc = json.loads(path.read_text())
    regions = [r for r in _regions(svc.ws, second) if r.type_id == t["C"]]
    assert [(c["id"], c["protoatlas_status"]) for c in doc["categories"]] == [(t["C"], "proposed")]
    assert sorted(a["id"] for a in doc["annotations"]) == sorted(r.id for r in regions)
    assert {im["batch"] for im in doc["images"]} == {"second"}
    # the batch alone: every image of it, negatives too, and only confirmed categories
    doc = json.loads(svc.export_coco(tmp_path / "b.json", batch_id=second).read_text())
    assert len(doc["images"]) == 6
    assert {c["id"] for c in doc["categories"]} == {t["A"], t["B"]}


def test_label_studio_of_one_batch_and_two_types(scoped, tmp_path):
    svc, t = scoped
    first = svc.batches()[0].id
    path = svc.export_label_studio(
        tmp_path / "ls.json", batch_id=first, types="all", type_ids=[t["B"], t["C"]]
    )
    tasks = json.loads(path.read_text())
    done = [r for task in tasks for a in task["annotations"] for r in a["result"]]
    guessed = [r for task in tasks for p in task.get("predictions", []) for r in p["result"]]
    regions = _regions(svc.ws, first)
    assert sorted(r["id"] for r in done) == sorted(
        f"r{r.id}" for r in regions if r.type_id == t["B"]
    )
    assert sorted(r["id"] for r in guessed) == sorted(
        f"r{r.id}" for r in regions if r.type_id == t["C"]
    )
    assert {task["data"]["batch"] for task in tasks} == {"first"}
    assert all(task["annotations"] or task.get("predictions") for task in tasks)


def test_yolo_of_one_batch_and_one_type(scoped, tmp_path):
    svc, t = scoped
    second = svc.batches()[1].id
    out = svc.export_yolo(tmp_path / "y.zip", batch_id=second, type_ids=[t["B"]])
    regions = [r for r in _regions(svc.ws, second) if r.type_id == t["B"]]
    with zipfile.ZipFile(out) as z:
        names = z.namelist()
        assert z.read("classes.txt").decode().split() == [svc.get_type(t["B"]).name]
        labels = [n for n in names if n.startswith("labels/")]
        images = [n for n in names if n.startswith("images/")]
        lines = [ln.split() for n in labels for ln in z.read(n).decode().splitlines()]
    assert len(images) == len(labels) == len({r.image_id for r in regions})
    assert all(n.startswith(f"images/{second}/") for n in images)
    assert len(lines) == len(regions) and {ln[0] for ln in lines} == {"0"}


def test_crops_of_one_batch_and_one_type(scoped, tmp_path):
    svc, t = scoped
    first = svc.batches()[0].id
    out = svc.export_crops(tmp_path / "crops.zip", batch_id=first, type_ids=[t["A"]])
    regions = [r for r in _regions(svc.ws, first) if r.type_id == t["A"] and not r.is_normal]
    folder = svc.get_type(t["A"]).name
    with zipfile.ZipFile(out) as z:
        assert sorted(z.namelist()) == sorted(f"{folder}/{r.id}.png" for r in regions)
    out = svc.export_crops(tmp_path / "every.zip", types="all", batch_id=first)
    with zipfile.ZipFile(out) as z:
        folders = {n.split("/")[0] for n in z.namelist()}
    names = {svc.get_type(t[k]).name for k in "ABC"}
    assert folders == names  # the rejected type D is in no crops export


def test_unknown_ids_are_named(scoped, tmp_path):
    svc, t = scoped
    calls = [
        lambda **kw: svc.export_assignments(tmp_path / "x.csv", **kw),
        lambda **kw: svc.export_assignments(tmp_path / "x.csv", level="image", **kw),
        lambda **kw: svc.export_coco(tmp_path / "x.json", **kw),
        lambda **kw: svc.export_label_studio(tmp_path / "x.json", **kw),
        lambda **kw: svc.export_yolo(tmp_path / "x.zip", **kw),
        lambda **kw: svc.export_crops(tmp_path / "x.zip", **kw),
    ]
    for call in calls:
        with pytest.raises(NotFoundError, match="no batch with id 99"):
            call(batch_id=99)
        with pytest.raises(NotFoundError, match="no type with id 77"):
            call(type_ids=[t["A"], 77])
        with pytest.raises(ValidationError, match="type id must be an integer"):
            call(type_ids=["A"])
    assert not list(tmp_path.iterdir())  # nothing written


def test_a_type_the_format_does_not_hold_is_refused_by_name(scoped, tmp_path):
    svc, t = scoped
    name_c = svc.get_type(t["C"]).name
    for call in (svc.export_coco, svc.export_yolo, svc.export_label_studio):
        with pytest.raises(ValidationError, match=rf"type {t['C']} \({name_c}\) is proposed"):
            call(tmp_path / "x", type_ids=[t["C"]])
    with pytest.raises(ValidationError, match="confirmed types only"):
        svc.export_crops(tmp_path / "x.zip", type_ids=[t["C"]])
    with pytest.raises(ValidationError, match="is rejected .* confirmed and proposed types"):
        svc.export_coco(tmp_path / "x.json", types="all", type_ids=[t["D"]])
    with pytest.raises(StorageError):
        svc.export_crops(tmp_path / "x.zip", types="some")  # type: ignore[arg-type]


def test_a_merged_type_points_to_the_one_it_went_into(tmp_path):
    with Workspace.open(tmp_path, "w", embedding_dim=16) as ws:
        ws.ingest_batch(make_batch(6, n_types=2, seed=4))
        a, b = sorted(t.id for t in ws.list_types())
        ws.merge_types(b, a, expected={a: 1, b: 1}, actor="ann")  # a goes into b
        with pytest.raises(ValidationError, match=f"type {a} .* was merged into type {b}"):
            ws.export_assignments(tmp_path / "x.csv", type_ids=[a])


def test_an_empty_selection_is_a_valid_empty_export(scoped, tmp_path):
    svc, t = scoped
    rows = _rows(svc.export_assignments(tmp_path / "r.csv", type_ids=[]))
    assert rows == []
    with open(tmp_path / "r.csv") as fh:
        assert fh.readline().startswith("image,batch,region_id")
    assert _rows(svc.export_assignments(tmp_path / "i.csv", level="image", type_ids=[])) == []
    pq = svc.export_assignments(tmp_path / "r.parquet", fmt="parquet", type_ids=[])
    assert duckdb.sql(f"SELECT count(*) FROM read_parquet('{pq.as_posix()}')").fetchall() == [(0,)]
    doc = json.loads(svc.export_coco(tmp_path / "c.json", type_ids=[]).read_text())
    assert (doc["images"], doc["categories"], doc["annotations"]) == ([], [], [])
    assert json.loads(svc.export_label_studio(tmp_path / "l.json", type_ids=[]).read_text()) == []
    with zipfile.ZipFile(svc.export_yolo(tmp_path / "y.zip", type_ids=[])) as z:
        assert z.namelist() == ["classes.txt"] and z.read("classes.txt") == b""
    with zipfile.ZipFile(svc.export_crops(tmp_path / "k.zip", type_ids=[])) as z:
        assert z.namelist() == []
