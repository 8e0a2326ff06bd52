"""Exports: assignments (CSV, Parquet, image level), COCO JSON, audit log."""

from __future__ import annotations

import csv
import json

import duckdb
import numpy as np
import pytest

from storage import BatchIngest, ImageIn, RegionIn, ValidationError, Workspace, decode_rle
from tests.storage_fixtures import make_batch


@pytest.fixture()
def ws(tmp_path):
    with Workspace.open(tmp_path, "w", embedding_dim=16) as w:
        w.ingest_batch(make_batch(12, n_types=3, seed=2))
        yield w


def _read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_region_csv_and_parquet(ws, tmp_path):
    a = sorted(ws.list_types(), key=lambda t: t.id)[0]
    ws.rename_type(a.id, "crack", expected_version=1, actor="ann")
    region = ws.type_members(a.id, limit=1)[0]
    ws.mark_normal([ws.type_members(a.id, limit=2)[1].region_id], expected={a.id: 2}, actor="ann")
    rows = _read_csv(ws.export_assignments(tmp_path / "r.csv"))
    assert len(rows) == 24
    assert list(rows[0])[:3] == ["image", "batch", "region_id"]
    row = next(r for r in rows if int(r["region_id"]) == region.region_id)
    assert (row["image"], row["batch"], row["type"], row["type_status"], row["source"]) == (
        region.image_name,
        "batch",
        "crack",
        "proposed",
        "model",
    )
    assert [int(row[k]) for k in ("top", "left", "bottom", "right")] == list(region.box)
    assert float(row["confidence"]) == pytest.approx(region.confidence)
    assert sum(r["is_normal"] == "true" for r in rows) == 1
    pq = ws.export_assignments(tmp_path / "r.parquet", fmt="parquet")
    back = duckdb.sql(
        f"SELECT region_id, type, confidence FROM read_parquet('{pq}') ORDER BY region_id"
    ).fetchall()
    assert len(back) == 24
    assert back[region.region_id - 1] == (region.region_id, "crack", region.confidence)
    with pytest.raises(ValidationError, match="format must be"):
        ws.export_assignments(tmp_path / "x", fmt="xlsx")


def test_image_level_rule(tmp_path):
    with Workspace.open(tmp_path, "w") as ws:
        imgs = [
            ImageIn(name=f"{n}.png", width=10, height=10, data=n.encode(), is_anomalous=an)
            for n, an in [("both", True), ("normal", True), ("clean", False), ("open", True)]
        ]
        from storage import AssignmentsIn, NewType

        ws.ingest_batch(
            BatchIngest(
                name="b",
                images=imgs,
                regions=[
                    RegionIn(0, (0, 0, 2, 2)),
                    RegionIn(0, (3, 3, 9, 9)),
                    RegionIn(1, (0, 0, 2, 2)),
                    RegionIn(3, (0, 0, 2, 2)),
                ],
                new_types=[NewType("p", "pit"), NewType("s", "smear")],
                assignments=AssignmentsIn(
                    regions=np.array([0, 1, 2, 3]),
                    types=["p", "s", "p", None],
                    confidence=np.array([0.5, 0.9, 0.8, 0.4]),
                ),
            )
        )
        pit = next(t for t in ws.list_types() if t.name == "pit")
        ws.confirm_type(pit.id, expected_version=1, actor="ann")
        ws.mark_normal([3], expected={pit.id: 2}, actor="ann")
        rows = {
            r["image"]: r
            for r in _read_csv(ws.export_assignments(tmp_path / "i.csv", level="image"))
        }
        # confirmed pit (0.5) beats proposed smear (0.9); all-normal and clean images are good
        assert rows["both.png"]["label"] == "pit"
        assert rows["both.png"]["type_status"] == "confirmed"
        assert rows["normal.png"]["label"] == "good"
        assert rows["clean.png"]["label"] == "good"
        assert rows["open.png"]["label"] == ""  # an anomaly whose type is unresolved
        report = ws.import_labels(tmp_path / "i.csv", actor="ann")  # the export reads back
        assert report.images_matched == 3 and report.types_created == []


def test_coco_has_confirmed_types_only(ws, tmp_path):
    a, b, c = sorted(ws.list_types(), key=lambda t: t.id)
    ws.confirm_type(a.id, expected_version=1, actor="ann")
    ws.confirm_type(b.id, expected_version=1, actor="ann")
    ws.reject_type(c.id, expected_version=1, actor="ann")
    doc = json.loads(ws.export_coco(tmp_path / "coco.json").read_text())
    assert [cat["id"] for cat in doc["categories"]] == [a.id, b.id]
    assert len(doc["images"]) == 12
    assert {im["file_name"] for im in doc["images"]} == {f"img/{i:06d}.png" for i in range(12)}
    assert len(doc["annotations"]) == a.n_regions + b.n_regions
    images = {im["id"]: im for im in doc["images"]}
    regions = {r.id: r for r in ws.regions_for_batch(1)}
    for ann in doc["annotations"]:
        region = regions[ann["id"]]
        assert region.type_id == ann["category_id"] and ann["segmentation"] == region.mask
        x, y, w, h = ann["bbox"]
        mask = decode_rle(ann["segmentation"])
        im = images[ann["image_id"]]
        assert mask.shape == (im["height"], im["width"])
        ys, xs = np.nonzero(mask)
        assert (xs.min(), ys.min(), xs.max() + 1 - x, ys.max() + 1 - y) == (x, y, w, h)
        assert ann["area"] == mask.sum() and ann["iscrowd"] == 0


def test_audit_export_json_and_csv(ws, tmp_path):
    a = ws.list_types()[0]
    ws.rename_type(a.id, "x", expected_version=1, actor="ann")
    entries = json.loads(ws.export_audit(tmp_path / "a.json").read_text())
    assert [e["action"] for e in entries] == ["ingest_batch", "rename_type"]
    assert entries[1]["prev_hash"] == entries[0]["hash"]
    assert entries[1]["after"]["types"][str(a.id)]["name"] == "x"
    rows = _read_csv(ws.export_audit(tmp_path / "a.csv", fmt="csv"))
    assert [r["actor"] for r in rows] == ["model", "ann"]
    assert rows[1]["hash"] == entries[1]["hash"]


def test_coco_bbox_is_the_tight_box_of_the_mask_not_the_stored_crop_box(tmp_path):
    batch = make_batch(6, n_types=2, seed=3)
    regions = batch.regions
    masks = []
    for (t, l, b, r), m in zip(regions.boxes, regions.masks):
        tight = np.zeros_like(m)
        tight[t, l] = True  # one pixel in the stored box's corner
        masks.append(tight)
    batch.regions.masks = masks
    with Workspace.open(tmp_path, "w", embedding_dim=16) as ws:
        ws.ingest_batch(batch)
        for t in ws.list_types():
            ws.confirm_type(t.id, expected_version=t.version, actor="ann")
        doc = json.loads(ws.export_coco(tmp_path / "coco.json").read_text())
        boxes = {r.id: r.box for r in ws.regions_for_batch(1)}
    assert doc["annotations"]
    for ann in doc["annotations"]:
        top, left, bottom, right = boxes[ann["id"]]
        assert ann["bbox"] == [left, top, 1, 1]


def test_coco_of_every_type_includes_the_proposed_ones(ws, tmp_path):
    a, b, c = sorted(ws.list_types(), key=lambda t: t.id)
    ws.confirm_type(a.id, expected_version=1, actor="ann")
    ws.reject_type(c.id, expected_version=1, actor="ann")
    doc = json.loads(ws.export_coco(tmp_path / "all.json", types="all").read_text())
    assert {(cat["id"], cat["protoatlas_status"]) for cat in doc["categories"]} == {
        (a.id, "confirmed"),
        (b.id, "proposed"),
    }
    assert len(doc["annotations"]) == a.n_regions + b.n_regions
    with pytest.raises(ValidationError, match="types must be one of"):
        ws.export_coco(tmp_path / "x.json", types="some")  # type: ignore[arg-type]


def test_label_studio_tasks_hold_the_boxes_in_percent_confirmed_as_annotations(ws, tmp_path):
    a, b, _ = sorted(ws.list_types(), key=lambda t: t.id)
    ws.confirm_type(a.id, expected_version=1, actor="ann")
    ws.rename_type(a.id, "crack", expected_version=2, actor="ann")
    coco = json.loads(ws.export_coco(tmp_path / "c.json", types="all").read_text())
    tasks = json.loads(ws.export_label_studio(tmp_path / "ls.json", types="all").read_text())
    assert len(tasks) == len(coco["images"]) == 12
    done = [r for t in tasks for a_ in t["annotations"] for r in a_["result"]]
    guessed = [r for t in tasks for p in t.get("predictions", []) for r in p["result"]]
    assert {r["value"]["rectanglelabels"][0] for r in done} == {"crack"}
    assert len(done) == a.n_regions and len(guessed) == len(coco["annotations"]) - a.n_regions
    ann = {f"r{x['id']}": x for x in coco["annotations"]}
    images = {im["id"]: im for im in coco["images"]}
    for r in done + guessed:
        x, y, w, h = ann[r["id"]]["bbox"]
        im = images[ann[r["id"]]["image_id"]]
        v = r["value"]
        assert v["x"] == pytest.approx(100 * x / im["width"])
        assert v["height"] == pytest.approx(100 * h / im["height"])
        assert (r["from_name"], r["to_name"], r["type"]) == ("label", "image", "rectanglelabels")


def test_yolo_zip_has_every_image_a_label_file_each_and_the_classes(ws, tmp_path):
    import zipfile

    a, b, c = sorted(ws.list_types(), key=lambda t: t.id)
    for t in (a, b):
        ws.confirm_type(t.id, expected_version=1, actor="ann")
    out = ws.export_yolo(tmp_path / "yolo.zip")
    coco = json.loads(ws.export_coco(tmp_path / "c.json").read_text())
    with zipfile.ZipFile(out) as z:
        names = z.namelist()
        classes = z.read("classes.txt").decode().split()
        assert classes == [cat["name"] for cat in coco["categories"]]
        images = [n for n in names if n.startswith("images/")]
        labels = [n for n in names if n.startswith("labels/")]
        assert len(images) == len(labels) == 12
        rows = [ln.split() for n in labels for ln in z.read(n).decode().splitlines()]
    assert len(rows) == a.n_regions + b.n_regions
    for cls, *box in rows:
        assert int(cls) in (0, 1) and all(0.0 <= float(v) <= 1.0 for v in box)
