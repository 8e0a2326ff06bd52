"""Exports: assignments (CSV/Parquet via DuckDB COPY), COCO JSON, and the audit log.

Image-level label rule (documented in docs/decisions.md): among an image's regions that
are assigned (not normal) to a confirmed or proposed type, take the confirmed ones if any,
then the highest confidence (ties: larger area, then lower region id); its type name is the
image's label. With no such region the label is ``good`` when every region is marked
normal (or the image has no region and is not flagged anomalous), and empty otherwise
(an anomaly whose type is unresolved). The columns start with ``image,label`` so the file
can be read back by ``import_labels``.

Scope: every region-level export takes ``batch_id`` (one batch; None: every batch) and
``type_ids`` (those types; None: every type the format holds). :func:`check_scope` refuses
an unknown batch or type id (:class:`NotFoundError` naming it), a merged type, and a type
the format does not hold (a proposed one in a confirmed-only export: :class:`ValidationError`
naming it and its status). A scope that selects nothing (``type_ids=[]``, or a type without
regions in the batch) gives a valid, empty file: a CSV with its header only, a COCO document
or Label Studio list without images, a zip without images. With a type scope the rows are the
regions of those types; the image-level CSV keeps the images whose label is one of them (the
label rule is unchanged); COCO, Label Studio and YOLO keep the images holding a region of
them (without a type scope every image of the batch scope, as negatives too).
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from storage.errors import NotFoundError, ValidationError
from storage.rle import rle_bbox, rle_from_json
from storage.sql import fetch_value

if TYPE_CHECKING:
    from storage.workspace import Workspace

REGION_SQL = """
    SELECT bi.name AS image, b.name AS batch, r.id AS region_id,
           r.box_top AS "top", r.box_left AS "left", r.box_bottom AS "bottom",
           r.box_right AS "right", r.area, r.anomaly_score,
           t.name AS type, t.status AS type_status, a.source, a.confidence,
           coalesce(a.is_normal, false) AS is_normal
    FROM regions r
    JOIN batches b ON b.id = r.batch_id
    JOIN batch_images bi ON bi.batch_id = r.batch_id AND bi.image_id = r.image_id
    LEFT JOIN assignments a ON a.region_id = r.id
    LEFT JOIN types t ON t.id = a.type_id
    WHERE (?::BIGINT IS NULL OR r.batch_id = ?)
      AND (?::BIGINT[] IS NULL OR list_contains(?::BIGINT[], a.type_id))
    ORDER BY b.id, bi.name, r.id
"""

IMAGE_SQL = """
    WITH cand AS (
        SELECT r.batch_id, r.image_id, t.id AS type_id, t.name, t.status, a.confidence,
               row_number() OVER (PARTITION BY r.batch_id, r.image_id
                   ORDER BY (t.status = 'confirmed') DESC, a.confidence DESC NULLS LAST,
                            r.area DESC, r.id) AS rn
        FROM regions r
        JOIN assignments a ON a.region_id = r.id
        JOIN types t ON t.id = a.type_id
        WHERE t.status IN ('confirmed', 'proposed') AND NOT a.is_normal),
    counts AS (
        SELECT r.batch_id, r.image_id, count(*) AS n_regions,
               count(*) FILTER (WHERE a.is_normal) AS n_normal
        FROM regions r LEFT JOIN assignments a ON a.region_id = r.id
        GROUP BY r.batch_id, r.image_id)
    SELECT bi.name AS image,
           CASE WHEN c.name IS NOT NULL THEN c.name
                WHEN coalesce(k.n_regions, 0) > 0 AND k.n_regions = k.n_normal THEN 'good'
                WHEN coalesce(k.n_regions, 0) = 0 AND NOT coalesce(bi.is_anomalous, false)
                    THEN 'good'
                ELSE '' END AS label,
           c.status AS type_status, c.confidence, b.name AS batch,
           coalesce(k.n_regions, 0) AS n_regions, bi.anomaly_score, bi.is_anomalous
    FROM batch_images bi
    JOIN batches b ON b.id = bi.batch_id
    LEFT JOIN cand c ON c.batch_id = bi.batch_id AND c.image_id = bi.image_id AND c.rn = 1
    LEFT JOIN counts k ON k.batch_id = bi.batch_id AND k.image_id = bi.image_id
    WHERE (?::BIGINT IS NULL OR bi.batch_id = ?)
      AND (?::BIGINT[] IS NULL OR list_contains(?::BIGINT[], c.type_id))
    ORDER BY b.id, bi.name
"""

#: Which types a COCO export's categories are: the confirmed ones, or every live type.
COCO_TYPES = {"confirmed": ("confirmed",), "all": ("confirmed", "proposed")}


def _id(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValidationError(f"a {what} id must be an integer, not {value!r}")
    return int(value)


def check_scope(
    cur: Any,
    batch_id: int | None,
    type_ids: Sequence[int] | None,
    statuses: Sequence[str] | None = None,
    what: str = "this export",
) -> tuple[int | None, list[int] | None]:
    """The scope of an export, checked: (batch id or None, sorted distinct type ids or None).

    Raises :class:`NotFoundError` for a batch or type id that does not exist and
    :class:`ValidationError` for a merged type, or for a type whose status is not one of
    ``statuses`` (the types the export ``what`` holds; None: every status but merged).
    """
    batch = None if batch_id is None else _id(batch_id, "batch")
    if batch is not None and not fetch_value(
        cur, "SELECT count(*) FROM batches WHERE id = ?", [batch]
    ):
        raise NotFoundError(f"no batch with id {batch}")
    if type_ids is None:
        return batch, None
    if isinstance(type_ids, (str, bytes)):
        raise ValidationError(f"type ids must be a list of integers, not {type_ids!r}")
    ids = sorted({_id(t, "type") for t in type_ids})
    found = {
        r[0]: (r[1], r[2], r[3])
        for r in cur.execute(
            "SELECT id, name, status, merged_into FROM types WHERE list_contains(?::BIGINT[], id)",
            [ids],
        ).fetchall()
    }
    for t in ids:
        if t not in found:
            raise NotFoundError(f"no type with id {t}")
        name, status, merged_into = found[t]
        if status == "merged":
            raise ValidationError(
                f"type {t} ({name}) was merged into type {merged_into}: export that one"
            )
        if statuses is not None and status not in statuses:
            raise ValidationError(
                f"type {t} ({name}) is {status} and {what} holds "
                f"{' and '.join(statuses)} types only"
            )
    return batch, ids


def _target(path: str | os.PathLike[str]) -> Path:
    path = Path(path).expanduser().resolve()
    if not path.parent.is_dir():
        raise NotFoundError(f"folder {path.parent} does not exist")
    return path


def _quoted(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def export_assignments(
    ws: "Workspace",
    path: str | os.PathLike[str],
    fmt: Literal["csv", "parquet"] = "csv",
    level: Literal["region", "image"] = "region",
    batch_id: int | None = None,
    type_ids: Sequence[int] | None = None,
) -> Path:
    """One row per region (or per batch image, ``level='image'``) via DuckDB COPY; with a
    scope, the regions of that batch and of those types (image level: the images whose
    label is one of those types)."""
    if fmt not in ("csv", "parquet"):
        raise ValidationError(f"format must be 'csv' or 'parquet', not {fmt!r}")
    if level not in ("region", "image"):
        raise ValidationError(f"level must be 'region' or 'image', not {level!r}")
    out = _target(path)
    options = "FORMAT csv, HEADER true" if fmt == "csv" else "FORMAT parquet"
    query = REGION_SQL if level == "region" else IMAGE_SQL
    with ws.read() as cur:
        batch, ids = check_scope(cur, batch_id, type_ids)
        cur.execute(f"COPY ({query}) TO {_quoted(out)} ({options})", [batch, batch, ids, ids])
    return out


def export_coco(
    ws: "Workspace",
    path: str | os.PathLike[str],
    batch_id: int | None = None,
    types: Literal["confirmed", "all"] = "confirmed",
    type_ids: Sequence[int] | None = None,
) -> Path:
    """COCO detection/segmentation JSON; categories are the confirmed types (``types="all"``:
    the proposed ones too, with ``"protoatlas_status"``); ``type_ids``: those of them only.

    One COCO image per batch membership (``file_name`` = the name in the upload, plus
    ``batch`` and ``sha256``); annotations are the regions assigned to one of those types
    (``bbox`` [x, y, w, h] the tight box of the mask, uncompressed RLE ``segmentation``,
    ``area``, ``iscrowd`` 0).
    """
    out = _target(path)
    doc = coco_document(ws, batch_id, types, type_ids, what="the COCO export")
    out.write_text(json.dumps(doc))
    return out


def _statuses(types: str) -> list[str]:
    if types not in COCO_TYPES:
        raise ValidationError(f"types must be one of {', '.join(COCO_TYPES)}, not {types!r}")
    return list(COCO_TYPES[types])


def coco_document(
    ws: "Workspace",
    batch_id: int | None = None,
    types: Literal["confirmed", "all"] = "confirmed",
    type_ids: Sequence[int] | None = None,
    what: str = "the COCO export",
) -> dict[str, Any]:
    """The COCO JSON document of :func:`export_coco` (each image also carries
    ``protoatlas_image_id`` and ``protoatlas_batch_id``). With ``type_ids`` the categories
    are those types and the images those holding one of their regions."""
    statuses = _statuses(types)
    with ws.read() as cur:
        batch_id, ids = check_scope(cur, batch_id, type_ids, statuses, what)
        imgs = cur.execute(
            """SELECT bi.batch_id, bi.image_id, bi.name, b.name, i.width, i.height, i.sha256
               FROM batch_images bi JOIN batches b ON b.id = bi.batch_id
               JOIN images i ON i.id = bi.image_id
               WHERE ? IS NULL OR bi.batch_id = ? ORDER BY bi.batch_id, bi.name""",
            [batch_id, batch_id],
        ).fetchall()
        cats = cur.execute(
            "SELECT id, name, status FROM types WHERE status IN (SELECT unnest(?::VARCHAR[])) "
            "AND (?::BIGINT[] IS NULL OR list_contains(?::BIGINT[], id)) ORDER BY id",
            [statuses, ids, ids],
        ).fetchall()
        anns = cur.execute(
            """SELECT r.id, r.batch_id, r.image_id, a.type_id, r.box_top, r.box_left,
                      r.box_bottom, r.box_right, r.area, r.mask, a.confidence, a.source
               FROM regions r JOIN assignments a ON a.region_id = r.id
               JOIN types t ON t.id = a.type_id
               WHERE t.status IN (SELECT unnest(?::VARCHAR[])) AND NOT a.is_normal
                 AND (? IS NULL OR r.batch_id = ?)
                 AND (?::BIGINT[] IS NULL OR list_contains(?::BIGINT[], a.type_id))
               ORDER BY r.id""",
            [statuses, batch_id, batch_id, ids, ids],
        ).fetchall()
    if ids is not None:  # a type scope: the images that hold one of its regions
        held = {(a[1], a[2]) for a in anns}
        imgs = [im for im in imgs if (im[0], im[1]) in held]
    coco_id = {}
    images = []
    for k, (b, i, name, bname, w, h, sha) in enumerate(imgs, start=1):
        coco_id[(b, i)] = k
        images.append(
            {
                "id": k,
                "file_name": name,
                "width": w,
                "height": h,
                "batch": bname,
                "sha256": sha,
                "protoatlas_image_id": i,
                "protoatlas_batch_id": b,
            }
        )
    annotations = []
    for rid, b, i, tid, top, left, bottom, right, area, mask, conf, source in anns:
        tight = rle_bbox(mask) if mask else None
        ann = {
            "id": rid,
            "image_id": coco_id[(b, i)],
            "category_id": tid,
            "bbox": list(tight) if tight else [left, top, right - left, bottom - top],
            "area": area,
            "iscrowd": 0,
            "protoatlas_confidence": conf,
            "protoatlas_source": source,
        }
        if mask:
            ann["segmentation"] = rle_from_json(mask)
        annotations.append(ann)
    doc = {
        "info": {"description": f"ProtoAtlas workspace {ws.name}"},
        "images": images,
        "categories": [
            {"id": t, "name": n, "supercategory": "defect", "protoatlas_status": st}
            for t, n, st in cats
        ],
        "annotations": annotations,
    }
    return doc


def export_label_studio(
    ws: "Workspace",
    path: str | os.PathLike[str],
    batch_id: int | None = None,
    types: Literal["confirmed", "all"] = "confirmed",
    type_ids: Sequence[int] | None = None,
) -> Path:
    """Label Studio tasks (JSON): one task per batch image (``data.image`` = its name in the
    upload), its regions as ``rectanglelabels`` in percent of the image, the types' names as
    labels (``from_name`` "label", ``to_name`` "image"); confirmed types are annotations,
    proposed ones (``types="all"``) predictions, for a reviewer to check. Scoped as
    :func:`coco_document`."""
    doc = coco_document(ws, batch_id, types, type_ids, what="the Label Studio export")
    names = {c["id"]: (c["name"], c["protoatlas_status"]) for c in doc["categories"]}
    by_image: dict[int, list[dict[str, Any]]] = {}
    for ann in doc["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    tasks = []
    for im in doc["images"]:
        done: list[dict[str, Any]] = []
        guessed: list[dict[str, Any]] = []
        for ann in by_image.get(im["id"], []):
            x, y, w, h = ann["bbox"]
            name, status = names[ann["category_id"]]
            (done if status == "confirmed" else guessed).append(
                {
                    "id": f"r{ann['id']}",
                    "type": "rectanglelabels",
                    "from_name": "label",
                    "to_name": "image",
                    "original_width": im["width"],
                    "original_height": im["height"],
                    "value": {
                        "x": 100.0 * x / im["width"],
                        "y": 100.0 * y / im["height"],
                        "width": 100.0 * w / im["width"],
                        "height": 100.0 * h / im["height"],
                        "rotation": 0,
                        "rectanglelabels": [name],
                    },
                }
            )
        task: dict[str, Any] = {
            "id": im["id"],
            "data": {"image": im["file_name"], "batch": im["batch"], "sha256": im["sha256"]},
            "annotations": [{"result": done}] if done else [],
        }
        if guessed:
            task["predictions"] = [{"model_version": "protoatlas", "result": guessed}]
        tasks.append(task)
    out = _target(path)
    out.write_text(json.dumps(tasks))
    return out


def export_yolo(
    ws: "Workspace",
    path: str | os.PathLike[str],
    batch_id: int | None = None,
    types: Literal["confirmed", "all"] = "confirmed",
    type_ids: Sequence[int] | None = None,
) -> Path:
    """A YOLO detection set as one zip: ``images/<batch id>/<name>`` (the stored files),
    ``labels/<batch id>/<name>.txt`` (``class cx cy w h``, normalised, one line per region;
    empty for an image without one) and ``classes.txt`` (class index = line number; with
    ``type_ids`` only those types). Scoped as :func:`coco_document`."""
    doc = coco_document(ws, batch_id, types, type_ids, what="the YOLO export")
    index = {c["id"]: k for k, c in enumerate(doc["categories"])}
    lines: dict[int, list[str]] = {}
    for ann in doc["annotations"]:
        x, y, w, h = ann["bbox"]
        im = doc["images"][ann["image_id"] - 1]
        cx, cy = (x + w / 2) / im["width"], (y + h / 2) / im["height"]
        lines.setdefault(ann["image_id"], []).append(
            f"{index[ann['category_id']]} {cx:.6f} {cy:.6f} "
            f"{w / im['width']:.6f} {h / im['height']:.6f}"
        )
    out = _target(path)
    tmp = out.with_name(out.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("classes.txt", "".join(f"{c['name']}\n" for c in doc["categories"]))
        for im in doc["images"]:
            stem = f"{im['protoatlas_batch_id']}/{im['file_name']}"
            z.write(ws.image_path(im["protoatlas_image_id"]), f"images/{stem}")
            label = stem.rsplit(".", 1)[0] + ".txt"
            z.writestr(f"labels/{label}", "".join(f"{ln}\n" for ln in lines.get(im["id"], [])))
    os.replace(tmp, out)
    return out


def crop_regions(
    ws: "Workspace",
    batch_id: int | None = None,
    types: Literal["confirmed", "all"] = "confirmed",
    type_ids: Sequence[int] | None = None,
) -> list[tuple[int, int, int, str, tuple[int, int, int, int]]]:
    """What the crops export holds: (region id, image id, type id, type name, stored box
    (top, left, bottom, right)) of every region assigned, not normal, to a confirmed type
    (``types="all"``: or proposed) of the scope, by region id."""
    statuses = _statuses(types)
    with ws.read() as cur:
        batch, ids = check_scope(cur, batch_id, type_ids, statuses, "the crops export")
        rows = cur.execute(
            """SELECT r.id, r.image_id, t.id, t.name,
                      r.box_top, r.box_left, r.box_bottom, r.box_right
               FROM regions r JOIN assignments a ON a.region_id = r.id
               JOIN types t ON t.id = a.type_id
               WHERE t.status IN (SELECT unnest(?::VARCHAR[])) AND NOT a.is_normal
                 AND (?::BIGINT IS NULL OR r.batch_id = ?)
                 AND (?::BIGINT[] IS NULL OR list_contains(?::BIGINT[], t.id))
               ORDER BY r.id""",
            [statuses, batch, batch, ids, ids],
        ).fetchall()
    return [(r[0], r[1], r[2], r[3], (r[4], r[5], r[6], r[7])) for r in rows]


def export_audit(
    ws: "Workspace", path: str | os.PathLike[str], fmt: Literal["csv", "json"] = "json"
) -> Path:
    """The whole audit log, oldest first, with its hash chain (JSON array or CSV)."""
    if fmt not in ("csv", "json"):
        raise ValidationError(f"format must be 'csv' or 'json', not {fmt!r}")
    out = _target(path)
    query = (
        "SELECT seq, ts, actor, action, target, type_ids, before, after, prev_hash, hash "
        "FROM audit_log ORDER BY seq"
    )
    with ws.read() as cur:
        if fmt == "csv":
            cur.execute(f"COPY ({query}) TO {_quoted(out)} (FORMAT csv, HEADER true)")
            return out
        rows = cur.execute(query).fetchall()
    entries = [
        {
            "seq": r[0],
            "ts": r[1].isoformat(),
            "actor": r[2],
            "action": r[3],
            "target": json.loads(r[4]),
            "type_ids": list(r[5]),
            "before": json.loads(r[6]),
            "after": json.loads(r[7]),
            "prev_hash": r[8],
            "hash": r[9],
        }
        for r in rows
    ]
    out.write_text(json.dumps(entries, indent=1))
    return out
