"""Model-side writes: a whole batch (``ingest_batch``) and a retrain result (``apply_retrain``).

Both follow the same crash-safe order: validate everything, write content-addressed files
(temp file + ``os.replace``, idempotent), make them durable, then insert every row in ONE
DuckDB transaction. A process killed before COMMIT leaves the database as it was; the
files it wrote are orphans that the next writer open deletes, and retrying succeeds.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import numpy as np

from storage import audit, schema, summary
from storage.checks import (
    check_actor,
    check_assignments,
    check_matrix,
    check_model,
    check_new_types,
    check_prototypes,
)
from storage.errors import NotFoundError, ValidationError
from storage.files import normalise_ext
from storage.models import (
    AssignmentsIn,
    BatchIngest,
    ImageIn,
    ModelVersionIn,
    NewType,
    Progress,
    PrototypeIn,
    RegionIn,
    RegionsIn,
)
from storage.png16 import encode_map
from storage.rle import encode_rle_text, rle_from_json, rle_to_json
from storage.rows import create_types, resolve_refs
from storage.sql import bump_type_versions, insert_from, next_id, registered, utcnow

if TYPE_CHECKING:
    from storage.workspace import Workspace

Con = duckdb.DuckDBPyConnection


# ------------------------------------------------------------------------ helpers
def vector_sql(dim: int) -> str:
    return "list_value(" + ", ".join(f"v{i}" for i in range(dim)) + f")::FLOAT[{dim}]"


def vector_columns(mat: np.ndarray) -> dict[str, np.ndarray]:
    return {f"v{i}": np.ascontiguousarray(mat[:, i], dtype=np.float32)
            for i in range(mat.shape[1])}


def insert_embeddings(con: Con, region_ids: np.ndarray, mat: np.ndarray, model_version: int,
                      chunk: int, progress: Progress | None) -> None:
    dim = mat.shape[1]
    select = vector_sql(dim)
    for start in range(0, len(region_ids), chunk):
        stop = min(start + chunk, len(region_ids))
        cols = vector_columns(mat[start:stop])
        cols["rid"] = region_ids[start:stop]
        insert_from(con, f"INSERT INTO embeddings SELECT rid, {int(model_version)}, {select} "
                         "FROM _src", cols)
        if progress:
            progress("embeddings", stop, len(region_ids))


def insert_model_version(con: Con, ws: "Workspace", model: ModelVersionIn | int | None,
                         blob_ref: str | None, now: Any) -> int | None:
    if model is None:
        return None
    if isinstance(model, (int, np.integer)):
        if con.execute("SELECT count(*) FROM model_versions WHERE id = ?",
                       [int(model)]).fetchone()[0] == 0:
            raise NotFoundError(f"no model version {int(model)}")
        return int(model)
    parent = model.parent
    if parent is None:
        parent = con.execute("SELECT max(id) FROM model_versions").fetchone()[0]
    elif con.execute("SELECT count(*) FROM model_versions WHERE id = ?",
                     [parent]).fetchone()[0] == 0:
        raise NotFoundError(f"parent model version {parent} does not exist")
    mv = next_id(con, "model_versions")
    con.execute("INSERT INTO model_versions VALUES (?, ?, ?, ?, ?, ?)",
                [mv, parent, model.kind, now, blob_ref, audit.canonical(dict(model.metrics))])
    return mv


def _bump_type_versions(con: Con, type_ids: Iterable[int], now: object) -> dict[str, Any]:
    """Bump the version of existing types a batch change touched (optimistic concurrency);
    returns their audit snapshot from before the change."""
    existing = sorted(type_ids)
    before = audit.snapshot_types(con, existing)
    bump_type_versions(con, existing, now)
    return before


def insert_prototypes(con: Con, prototypes: Sequence[PrototypeIn], mv: int,
                      new_ids: Mapping[str, int]) -> list[int]:
    if not prototypes:
        return []
    # A prototype describes the model's cluster: it stays on the type it names, merged or not.
    ids = resolve_refs(con, [p.type for p in prototypes], new_ids, follow=False)
    if len(set(ids.tolist())) != len(ids):
        raise ValidationError("two prototypes refer to the same type")
    clash = con.execute("SELECT min(type_id) FROM prototypes WHERE model_version = ? AND "
                        "type_id IN (SELECT unnest(?::BIGINT[]))", [mv, ids.tolist()]).fetchone()
    if clash[0] is not None:
        raise ValidationError(f"model version {mv} already has a prototype for type {clash[0]}")
    mat = np.stack([np.asarray(p.vector, dtype=np.float32) for p in prototypes])
    cols = vector_columns(mat)
    cols["tid"] = ids
    cols["n"] = np.array([int(p.n_members) for p in prototypes], dtype=np.int64)
    insert_from(con, f"INSERT INTO prototypes SELECT {int(mv)}, tid, {vector_sql(mat.shape[1])}, "
                     "n FROM _src", cols)
    return ids.tolist()


def _sync(ws: "Workspace", wrote: bool) -> None:
    if wrote and ws.config.sync_files and hasattr(os, "sync"):
        os.sync()


# ------------------------------------------------------------------- batch ingest
def _image_bytes(img: ImageIn) -> bytes:
    if (img.data is None) == (img.path is None):
        raise ValidationError(f"image {img.name!r}: give exactly one of data and path")
    if img.data is not None:
        return bytes(img.data)
    try:
        return Path(img.path).read_bytes()  # type: ignore[arg-type]
    except OSError as exc:
        raise ValidationError(f"image {img.name!r}: cannot read {img.path}: "
                              f"{exc.strerror or exc}") from None


def _mask_text(mask: Any, h: int, w: int, i: int) -> tuple[str | None, int | None]:
    """(RLE JSON text, area) of one region mask, checked against its image size."""
    if mask is None:
        return None, None
    if isinstance(mask, np.ndarray):
        if mask.shape != (h, w):
            raise ValidationError(f"region {i}: mask shape {mask.shape} is not its image's "
                                  f"({h}, {w})")
        return encode_rle_text(mask)
    rle = rle_from_json(mask) if isinstance(mask, str) else mask
    text = rle_to_json(rle)
    if [int(v) for v in rle["size"]] != [h, w]:
        raise ValidationError(f"region {i}: mask size {list(rle['size'])} is not its image's "
                              f"[{h}, {w}]")
    return text, int(sum(rle["counts"][1::2]))


def as_regions(regions: RegionsIn | Sequence[RegionIn]) -> RegionsIn:
    if isinstance(regions, RegionsIn):
        return regions
    return RegionsIn.from_records(list(regions))


def ingest_batch(ws: "Workspace", batch: BatchIngest, *, actor: str = "model",
                 progress: Progress | None = None) -> int:
    """See :meth:`storage.workspace.Workspace.ingest_batch`; returns the new batch id."""
    actor = check_actor(actor)
    if not isinstance(batch.name, str) or not batch.name.strip():
        raise ValidationError("a batch needs a non-empty name")
    try:
        params_text = audit.canonical(dict(batch.params))
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"batch params must be JSON-serialisable: {exc}") from None
    images = list(batch.images)
    if not images:
        raise ValidationError(f"batch {batch.name!r} has no images")
    names = [im.name for im in images]
    if not all(isinstance(n, str) and n and "\x00" not in n for n in names):
        raise ValidationError("every image needs a non-empty name (its path in the upload)")
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ValidationError(f"image name {dup!r} appears twice in batch {batch.name!r}")
    widths = np.array([im.width for im in images], dtype=np.int64)
    heights = np.array([im.height for im in images], dtype=np.int64)
    if (widths < 1).any() or (heights < 1).any():
        raise ValidationError("every image needs width and height >= 1")
    exts = []
    for im in images:
        ext = im.ext or (os.path.splitext(im.name)[1] or ".bin")
        exts.append(normalise_ext(ext))
    check_model(batch.model)

    regions = as_regions(batch.regions)
    n = len(regions)
    img_idx = np.asarray(regions.image, dtype=np.int64).reshape(-1)
    boxes = np.asarray(regions.boxes, dtype=np.int64).reshape(n, 4) if n else \
        np.zeros((0, 4), np.int64)
    if len(img_idx) and (img_idx.min() < 0 or img_idx.max() >= len(images)):
        raise ValidationError(f"a region refers to image index outside 0..{len(images) - 1}")
    h_r, w_r = heights[img_idx], widths[img_idx]
    top, left, bottom, right = boxes.T
    bad = np.flatnonzero((top < 0) | (left < 0) | (bottom > h_r) | (right > w_r)
                         | (bottom <= top) | (right <= left))
    if len(bad):
        i = int(bad[0])
        raise ValidationError(f"region {i}: box (top, left, bottom, right) = "
                              f"{tuple(int(v) for v in boxes[i])} is empty or outside its "
                              f"{int(w_r[i])}x{int(h_r[i])} image {names[img_idx[i]]!r}")
    scores = (np.full(n, np.nan) if regions.anomaly_score is None
              else np.asarray(regions.anomaly_score, dtype=np.float64).reshape(-1))
    if len(scores) != n:
        raise ValidationError(f"anomaly_score has {len(scores)} values for {n} regions")
    masks = regions.masks
    if masks is not None and len(masks) != n:
        raise ValidationError(f"masks has {len(masks)} entries for {n} regions")
    mask_text = np.empty(n, dtype=object)
    mask_area = np.full(n, -1, dtype=np.int64)
    if masks is not None:
        for i, m in enumerate(masks):
            text, area = _mask_text(m, int(h_r[i]), int(w_r[i]), i)
            mask_text[i] = text
            if area is not None:
                mask_area[i] = area
    if regions.area is not None:
        area = np.asarray(regions.area, dtype=np.int64).reshape(-1)
        if len(area) != n or (area < 0).any():
            raise ValidationError("region areas must be n non-negative integers")
    else:
        area = np.where(mask_area >= 0, mask_area, (bottom - top) * (right - left))
    emb = None
    if regions.embeddings is not None:
        emb = check_matrix(regions.embeddings, n, "region embeddings")
        if batch.model is None:
            raise ValidationError("embeddings need the model version that computed them")
    dim = check_prototypes(batch.prototypes, emb.shape[1] if emb is not None else None)
    if batch.prototypes and batch.model is None:
        raise ValidationError("prototypes need the model version that computed them")
    if batch.assignments is not None:
        a_regions, a_conf = check_assignments(batch.assignments, n, "region index")
    check_new_types(batch.new_types, [p.type for p in batch.prototypes]
                    + (list(batch.assignments.types) if batch.assignments is not None else []))
    maps = [im.anomaly_map for im in images]
    for im, m in zip(images, maps):
        if m is not None and not map_fits_image(np.shape(m), im.height, im.width):
            raise ValidationError(f"image {im.name!r}: anomaly map shape {np.shape(m)} does "
                                  f"not have the aspect of the {im.width}x{im.height} image")

    # Pass 1: hashes (refuse identical content twice in the batch before writing anything).
    shas: list[str] = []
    first_name: dict[str, str] = {}
    for im in images:
        data = _image_bytes(im)
        sha = hashlib.sha256(data).hexdigest()
        if im.sha256 is not None and im.sha256.lower() != sha:
            raise ValidationError(f"image {im.name!r}: sha256 given as {im.sha256} but the "
                                  f"bytes hash to {sha}")
        if sha in first_name:
            raise ValidationError(f"images {first_name[sha]!r} and {im.name!r} of batch "
                                  f"{batch.name!r} have identical content; keep one of them")
        first_name[sha] = im.name
        shas.append(sha)
    prep = _Prepared(images, names, exts, shas, widths, heights, maps, n, img_idx, top, left,
                     bottom, right, area, scores, mask_text, emb, dim,
                     a_regions if batch.assignments is not None else None,
                     a_conf if batch.assignments is not None else None, params_text)
    with ws.pending_files():
        return _write_batch(ws, batch, prep, actor, progress)


def map_fits_image(map_shape: tuple[int, ...], height: int, width: int) -> bool:
    """Whether a 2-D map of ``map_shape`` can be the anomaly map of a height x width image.

    A map may be stored at a lower resolution than its image (detectors and MEBin work at
    a few hundred pixels), each side rounded to whole pixels on its own: it fits when one
    common scale, rounded per side, gives its shape to within a pixel on each side (so a
    256 x 108 map fits a 288 x 122 image, and any aspect up to 1:32 and beyond is fine).
    """
    if len(map_shape) != 2 or min(map_shape) < 1 or height < 1 or width < 1:
        return False
    mh, mw = int(map_shape[0]), int(map_shape[1])
    for scale in (mh / height, mw / width):
        if abs(height * scale - mh) <= 1.0 and abs(width * scale - mw) <= 1.0:
            return True
    return False


@dataclass
class _Prepared:
    """The validated, column-wise content of a batch (internal to ``ingest_batch``)."""

    images: list[ImageIn]
    names: list[str]
    exts: list[str]
    shas: list[str]
    widths: np.ndarray
    heights: np.ndarray
    maps: list[Any]
    n: int
    img_idx: np.ndarray
    top: np.ndarray
    left: np.ndarray
    bottom: np.ndarray
    right: np.ndarray
    area: np.ndarray
    scores: np.ndarray
    mask_text: np.ndarray
    emb: np.ndarray | None
    dim: int | None
    a_regions: np.ndarray | None
    a_conf: np.ndarray | None
    params_text: str


def _write_batch(ws: "Workspace", batch: BatchIngest, p: _Prepared, actor: str,
                 progress: Progress | None) -> int:
    """Files first (content-addressed, idempotent, made durable), then ONE transaction."""
    cfg = ws.config
    images, names, exts, shas, widths, heights, maps = (p.images, p.names, p.exts, p.shas,
                                                        p.widths, p.heights, p.maps)
    n, img_idx, top, left, bottom, right = p.n, p.img_idx, p.top, p.left, p.bottom, p.right
    area, scores, mask_text, emb, dim = p.area, p.scores, p.mask_text, p.emb, p.dim
    a_regions, a_conf, params_text = p.a_regions, p.a_conf, p.params_text
    wrote = False
    map_refs: list[str | None] = []
    map_lo = np.full(len(images), np.nan)
    map_hi = np.full(len(images), np.nan)
    n_bytes = np.zeros(len(images), dtype=np.int64)
    for i, im in enumerate(images):
        data = _image_bytes(im)
        n_bytes[i] = len(data)
        _, new = ws.images.put(data, exts[i], shas[i], trust_sha=True)
        wrote |= new
        if maps[i] is not None:
            png, lo, hi = encode_map(maps[i])
            ref, new = ws.blobs.put(png, "png")
            wrote |= new
            map_refs.append(ref)
            map_lo[i], map_hi[i] = lo, hi
        else:
            map_refs.append(None)
        if progress and (i + 1) % 1000 == 0:
            progress("files", i + 1, len(images))
    model_ref = None
    if isinstance(batch.model, ModelVersionIn) and batch.model.model is not None:
        model_ref, new = ws.blobs.put(bytes(batch.model.model), batch.model.ext)
        wrote |= new
    _sync(ws, wrote)
    if progress:
        progress("files", len(images), len(images))

    with ws.transaction() as con:
        now = utcnow()
        if dim is not None:
            schema.set_embedding_dim(con, ws.name, dim)
        mv = insert_model_version(con, ws, batch.model, model_ref, now)
        batch_id = next_id(con, "batches")
        con.execute("INSERT INTO batches VALUES (?, ?, ?, ?, ?)",
                    [batch_id, batch.name.strip(), params_text, now, mv])
        # images: reuse rows of content seen before
        sha_arr = np.array(shas, dtype=object)
        with registered(con, "_shas", {"sha": sha_arr}):
            known = dict(con.execute("SELECT i.sha256, i.id FROM images i "
                                     "JOIN _shas s ON s.sha = i.sha256").fetchall())
        new_idx = [i for i, s in enumerate(shas) if s not in known]
        first = next_id(con, "images")
        image_ids = np.empty(len(images), dtype=np.int64)
        for k, i in enumerate(new_idx):
            known[shas[i]] = first + k
        for i, s in enumerate(shas):
            image_ids[i] = known[s]
        if new_idx:
            sel = np.array(new_idx, dtype=np.int64)
            insert_from(con, "INSERT INTO images SELECT id, sha, ext, w, h, nb, ? FROM _src", {
                "id": image_ids[sel], "sha": sha_arr[sel],
                "ext": np.array(exts, dtype=object)[sel], "w": widths[sel], "h": heights[sel],
                "nb": n_bytes[sel]}, [now])
        anomalous = np.array([-1 if im.is_anomalous is None else int(bool(im.is_anomalous))
                              for im in images], dtype=np.int8)
        img_scores = np.array([np.nan if im.anomaly_score is None else float(im.anomaly_score)
                               for im in images], dtype=np.float64)
        insert_from(con, f"""INSERT INTO batch_images SELECT {batch_id}, iid, name,
                CASE WHEN isnan(score) THEN NULL ELSE score END,
                CASE WHEN anom < 0 THEN NULL ELSE anom = 1 END, blob,
                CASE WHEN isnan(lo) THEN NULL ELSE lo END,
                CASE WHEN isnan(hi) THEN NULL ELSE hi END FROM _src""", {
            "iid": image_ids, "name": np.array(names, dtype=object), "score": img_scores,
            "anom": anomalous, "blob": np.array(map_refs, dtype=object), "lo": map_lo,
            "hi": map_hi})
        # regions, chunked
        base = next_id(con, "regions")
        region_ids = base + np.arange(n, dtype=np.int64)
        chunk = max(1, cfg.insert_chunk_rows)
        for start in range(0, n, chunk):
            s = slice(start, min(start + chunk, n))
            insert_from(con, f"""INSERT INTO regions SELECT id, {batch_id}, iid, t, l, b, r,
                    area, CASE WHEN isnan(score) THEN NULL ELSE score END, mask FROM _src""", {
                "id": region_ids[s], "iid": image_ids[img_idx[s]], "t": top[s], "l": left[s],
                "b": bottom[s], "r": right[s], "area": area[s], "score": scores[s],
                "mask": mask_text[s]})
            if progress:
                progress("regions", s.stop, n)
        if emb is not None:
            insert_embeddings(con, region_ids, emb, int(mv), chunk, progress)  # type: ignore
        new_ids = create_types(con, batch.new_types, origin="model", status="proposed",
                               now=now)
        touched: set[int] = set()
        if batch.assignments is not None and a_regions is not None and len(a_regions):
            tids = resolve_refs(con, batch.assignments.types, new_ids)
            a_normal = np.zeros(len(a_regions), dtype=bool) \
                if batch.assignments.is_normal is None else \
                np.asarray(batch.assignments.is_normal, dtype=bool)
            if np.any(a_normal & (tids >= 0)):
                raise ValidationError("a region stored as judged normal cannot have a type")
            for start in range(0, len(a_regions), chunk):
                s = slice(start, min(start + chunk, len(a_regions)))
                insert_from(con, """INSERT INTO assignments (region_id, type_id, confidence,
                        model_version, source, is_normal)
                        SELECT rid, nullif(tid, -1), conf, ?, 'model', normal FROM _src""", {
                    "rid": region_ids[a_regions[s]], "tid": tids[s], "conf": a_conf[s],
                    "normal": a_normal[s]}, [mv])
                if progress:
                    progress("assignments", s.stop, len(a_regions))
            touched = {int(t) for t in np.unique(tids) if t >= 0}
        if batch.prototypes:
            insert_prototypes(con, batch.prototypes, int(mv), new_ids)  # type: ignore[arg-type]
        created = set(new_ids.values())
        before_types = _bump_type_versions(con, touched - created, now)
        summary.refresh(con, touched | created)
        all_ids = sorted(touched | created)
        audit.append_raw(
            con, actor=actor, action="ingest_batch",
            target={"batch_id": batch_id, "name": batch.name.strip(), "n_images": len(images),
                    "n_new_images": len(new_idx), "n_regions": n, "model_version": mv},
            type_ids=all_ids,
            before={"types": {**before_types, **{str(t): None for t in created}}},
            after={"types": audit.snapshot_types(con, all_ids)})
    return batch_id


# ------------------------------------------------------------------------ retrain
def apply_retrain(ws: "Workspace", model: ModelVersionIn | int,
                  assignments: AssignmentsIn | None, prototypes: Sequence[PrototypeIn] = (),
                  embeddings: tuple[np.ndarray, np.ndarray] | None = None, *,
                  new_types: Sequence[NewType] = (), actor: str = "model",
                  progress: Progress | None = None) -> int:
    """See :meth:`storage.workspace.Workspace.apply_retrain`; returns the model version id.

    Model assignments replace only assignments whose source is ``model`` (or absent);
    a region a reviewer placed (or marked normal) keeps the reviewer's decision. Regions
    not listed keep their current assignment.
    """
    actor = check_actor(actor)
    if model is None:
        raise ValidationError("a retrain result needs its model version")
    check_model(model)
    dim = None
    emb_ids = emb = None
    if embeddings is not None:
        emb_ids = np.asarray(embeddings[0], dtype=np.int64).reshape(-1)
        emb = check_matrix(embeddings[1], len(emb_ids), "embeddings")
        if len(np.unique(emb_ids)) != len(emb_ids):
            raise ValidationError("embeddings name a region twice")
        dim = emb.shape[1]
    dim = check_prototypes(prototypes, dim)
    if assignments is not None:
        a_ids, a_conf = check_assignments(assignments, None, "region id")
    check_new_types(new_types, [p.type for p in prototypes]
                    + (list(assignments.types) if assignments is not None else []))
    with ws.pending_files():
        model_ref, wrote = None, False
        if isinstance(model, ModelVersionIn) and model.model is not None:
            model_ref, wrote = ws.blobs.put(bytes(model.model), model.ext)
        _sync(ws, wrote)
        return _write_retrain(ws, model, model_ref, assignments, prototypes, emb_ids, emb,
                              dim, a_ids if assignments is not None else None,
                              a_conf if assignments is not None else None, new_types, actor,
                              progress)


def _write_retrain(ws: "Workspace", model: ModelVersionIn | int, model_ref: str | None,
                   assignments: AssignmentsIn | None, prototypes: Sequence[PrototypeIn],
                   emb_ids: np.ndarray | None, emb: np.ndarray | None, dim: int | None,
                   a_ids: np.ndarray | None, a_conf: np.ndarray | None,
                   new_types: Sequence[NewType], actor: str, progress: Progress | None) -> int:
    chunk = max(1, ws.config.insert_chunk_rows)
    with ws.transaction() as con:
        now = utcnow()
        if dim is not None:
            schema.set_embedding_dim(con, ws.name, dim)
        mv = int(insert_model_version(con, ws, model, model_ref, now))  # type: ignore[arg-type]
        for ids in ([emb_ids] if emb_ids is not None else []) + \
                   ([a_ids] if a_ids is not None else []):
            with registered(con, "_ids", {"rid": ids}):
                missing = con.execute("SELECT min(rid), count(*) FROM _ids WHERE rid NOT IN "
                                      "(SELECT id FROM regions)").fetchone()
            if missing[1]:
                raise NotFoundError(f"{missing[1]} region id(s) do not exist "
                                    f"(e.g. {missing[0]})")
        if emb is not None:
            insert_embeddings(con, emb_ids, emb, mv, chunk, progress)  # type: ignore[arg-type]
        new_ids = create_types(con, new_types, origin="model", status="proposed", now=now)
        touched: set[int] = set()
        # types whose members only got new confidences: their summary (mean confidence)
        # must be refreshed too, without a version bump (membership did not change)
        restated: set[int] = set()
        n_skipped = n_changed = 0
        if assignments is not None and a_ids is not None and len(a_ids):
            tids = resolve_refs(con, assignments.types, new_ids)
            for start in range(0, len(a_ids), chunk):
                s = slice(start, min(start + chunk, len(a_ids)))
                with registered(con, "_src", {"rid": a_ids[s], "tid": tids[s],
                                               "conf": a_conf[s]}):
                    con.execute("""CREATE OR REPLACE TEMP TABLE _retrain AS
                        SELECT s.rid, nullif(s.tid, -1) AS tid, s.conf,
                               a.region_id IS NOT NULL AS had, a.type_id AS old_tid,
                               coalesce(a.source, 'model') AS old_source,
                               coalesce(a.is_normal, false) AS old_normal
                        FROM _src s LEFT JOIN assignments a ON a.region_id = s.rid""")
                stats = con.execute("""SELECT
                        count(*) FILTER (WHERE old_source = 'reviewer'),
                        count(*) FILTER (WHERE old_source <> 'reviewer' AND
                            (NOT had OR old_tid IS DISTINCT FROM tid OR old_normal))
                    FROM _retrain""").fetchone()
                n_skipped += stats[0]
                n_changed += stats[1]
                touched |= {r[0] for r in con.execute("""
                    SELECT old_tid FROM _retrain WHERE old_source <> 'reviewer'
                        AND old_tid IS DISTINCT FROM tid AND old_tid IS NOT NULL
                    UNION SELECT tid FROM _retrain WHERE old_source <> 'reviewer'
                        AND (NOT had OR old_tid IS DISTINCT FROM tid OR old_normal)
                        AND tid IS NOT NULL""").fetchall()}
                restated |= {r[0] for r in con.execute(
                    "SELECT DISTINCT tid FROM _retrain WHERE old_source <> 'reviewer' "
                    "AND tid IS NOT NULL").fetchall()}
                con.execute(f"""INSERT INTO assignments (region_id, type_id, confidence,
                        model_version, source, is_normal)
                    SELECT rid, tid, conf, {mv}, 'model', false FROM _retrain
                    WHERE old_source <> 'reviewer'
                    ON CONFLICT (region_id) DO UPDATE SET type_id = excluded.type_id,
                        confidence = excluded.confidence,
                        model_version = excluded.model_version,
                        source = 'model', is_normal = false""")
                if progress:
                    progress("assignments", s.stop, len(a_ids))
            con.execute("DROP TABLE IF EXISTS _retrain")
        insert_prototypes(con, prototypes, mv, new_ids)
        created = set(new_ids.values())
        before_types = _bump_type_versions(con, touched - created, now)
        summary.refresh(con, touched | created | restated)
        all_ids = sorted(touched | created)
        audit.append_raw(
            con, actor=actor, action="apply_retrain",
            target={"model_version": mv,
                    "n_assignments": 0 if a_ids is None else len(a_ids),
                    "n_changed": n_changed, "n_kept_reviewer": n_skipped,
                    "n_embeddings": 0 if emb_ids is None else len(emb_ids),
                    "n_prototypes": len(prototypes)},
            type_ids=all_ids,
            before={"types": {**before_types, **{str(t): None for t in created}}},
            after={"types": audit.snapshot_types(con, all_ids)})
    return mv
