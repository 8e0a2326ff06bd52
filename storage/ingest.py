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
from dataclasses import dataclass, field
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
from storage.rows import create_types, require_regions, resolve_refs
from storage.sql import (
    bump_type_versions,
    fetch_one,
    fetch_value,
    insert_from,
    next_id,
    registered,
    utcnow,
)

if TYPE_CHECKING:
    from storage.workspace import Workspace

Con = duckdb.DuckDBPyConnection


# ------------------------------------------------------------------------ helpers
def vector_sql(dim: int) -> str:
    return "list_value(" + ", ".join(f"v{i}" for i in range(dim)) + f")::FLOAT[{dim}]"


def vector_columns(mat: np.ndarray) -> dict[str, np.ndarray]:
    return {f"v{i}": np.ascontiguousarray(mat[:, i], dtype=np.float32) for i in range(mat.shape[1])}


def insert_embeddings(
    con: Con,
    region_ids: np.ndarray,
    mat: np.ndarray,
    model_version: int,
    chunk: int,
    progress: Progress | None,
) -> None:
    dim = mat.shape[1]
    select = vector_sql(dim)
    for start in range(0, len(region_ids), chunk):
        stop = min(start + chunk, len(region_ids))
        cols = vector_columns(mat[start:stop])
        cols["rid"] = region_ids[start:stop]
        insert_from(
            con,
            f"INSERT INTO embeddings SELECT rid, {int(model_version)}, {select} FROM _src",
            cols,
        )
        if progress:
            progress("embeddings", stop, len(region_ids))


def insert_model_version(
    con: Con, model: ModelVersionIn | int, blob_ref: str | None, now: Any
) -> int:
    """The id of an existing model version, or of the new row ``model`` is stored as."""
    if isinstance(model, (int, np.integer)):
        if fetch_value(con, "SELECT count(*) FROM model_versions WHERE id = ?", [int(model)]) == 0:
            raise NotFoundError(f"no model version {int(model)}")
        return int(model)
    parent = model.parent
    if parent is None:
        parent = fetch_value(con, "SELECT max(id) FROM model_versions")
    elif fetch_value(con, "SELECT count(*) FROM model_versions WHERE id = ?", [parent]) == 0:
        raise NotFoundError(f"parent model version {parent} does not exist")
    mv = next_id(con, "model_versions")
    con.execute(
        "INSERT INTO model_versions VALUES (?, ?, ?, ?, ?, ?)",
        [mv, parent, model.kind, now, blob_ref, audit.canonical(dict(model.metrics))],
    )
    return mv


def _require_model(mv: int | None, what: str) -> int:
    """``mv`` where ``what`` is being stored (validation already refused it without one)."""
    if mv is None:
        raise ValidationError(f"{what} need the model version that computed them")
    return mv


def _bump_type_versions(con: Con, type_ids: Iterable[int], now: object) -> dict[str, Any]:
    """Bump the version of existing types a batch change touched (optimistic concurrency);
    returns their audit snapshot from before the change."""
    existing = sorted(type_ids)
    before = audit.snapshot_types(con, existing)
    bump_type_versions(con, existing, now)
    return before


def _record_type_changes(
    con: Con,
    *,
    actor: str,
    action: str,
    target: Mapping[str, Any],
    touched: set[int],
    created: set[int],
    now: object,
    restated: set[int] | None = None,
) -> None:
    """Last step of a model-side write: bump the versions of the existing types it touched,
    refresh the summary of those, the new ones and ``restated``, append the audit row."""
    before_types = _bump_type_versions(con, touched - created, now)
    summary.refresh(con, touched | created | (restated or set()))
    all_ids = sorted(touched | created)
    audit.append_raw(
        con,
        actor=actor,
        action=action,
        target=target,
        type_ids=all_ids,
        before={"types": {**before_types, **{str(t): None for t in created}}},
        after={"types": audit.snapshot_types(con, all_ids)},
    )


def insert_prototypes(
    con: Con, prototypes: Sequence[PrototypeIn], mv: int, new_ids: Mapping[str, int]
) -> list[int]:
    if not prototypes:
        return []
    # A prototype describes the model's cluster: it stays on the type it names, merged or not.
    ids = resolve_refs(con, [p.type for p in prototypes], new_ids, follow=False)
    if len(set(ids.tolist())) != len(ids):
        raise ValidationError("two prototypes refer to the same type")
    clash = fetch_one(
        con,
        "SELECT min(type_id) FROM prototypes WHERE model_version = ? AND "
        "type_id IN (SELECT unnest(?::BIGINT[]))",
        [mv, ids.tolist()],
    )
    if clash[0] is not None:
        raise ValidationError(f"model version {mv} already has a prototype for type {clash[0]}")
    mat = np.stack([np.asarray(p.vector, dtype=np.float32) for p in prototypes])
    cols = vector_columns(mat)
    cols["tid"] = ids
    cols["n"] = np.array([int(p.n_members) for p in prototypes], dtype=np.int64)
    insert_from(
        con,
        f"INSERT INTO prototypes SELECT {int(mv)}, tid, {vector_sql(mat.shape[1])}, n FROM _src",
        cols,
    )
    return ids.tolist()


def _sync(ws: "Workspace", wrote: bool) -> None:
    if wrote and ws.config.sync_files and hasattr(os, "sync"):
        os.sync()


# ----------------------------------------------------------- batch ingest: validation
@dataclass
class _Images:
    """The validated images of a batch, column-wise (internal to ``ingest_batch``)."""

    items: list[ImageIn]
    names: list[str]
    exts: list[str]
    widths: np.ndarray
    heights: np.ndarray
    maps: list[Any]
    #: sha256 of each image's bytes (filled by the hashing pass, before any file is written)
    shas: list[str] = field(default_factory=list)


@dataclass
class _Regions:
    """The validated regions of a batch, column-wise."""

    n: int
    img_idx: np.ndarray
    top: np.ndarray
    left: np.ndarray
    bottom: np.ndarray
    right: np.ndarray
    area: np.ndarray
    scores: np.ndarray
    mask_text: np.ndarray


@dataclass
class _ModelOutputs:
    """The validated model outputs of a batch: region embeddings and assignments."""

    emb: np.ndarray | None
    dim: int | None
    #: (region indices, confidences) of ``batch.assignments``
    assignments: tuple[np.ndarray, np.ndarray] | None


@dataclass
class _Prepared:
    """The validated, column-wise content of a batch (internal to ``ingest_batch``)."""

    images: _Images
    regions: _Regions
    outputs: _ModelOutputs
    params_text: str


def _image_bytes(img: ImageIn) -> bytes:
    if img.data is not None and img.path is None:
        return bytes(img.data)
    if img.path is None or img.data is not None:
        raise ValidationError(f"image {img.name!r}: give exactly one of data and path")
    try:
        return Path(img.path).read_bytes()
    except OSError as exc:
        raise ValidationError(
            f"image {img.name!r}: cannot read {img.path}: {exc.strerror or exc}"
        ) from None


def _mask_text(mask: Any, h: int, w: int, i: int) -> tuple[str | None, int | None]:
    """(RLE JSON text, area) of one region mask, checked against its image size."""
    if mask is None:
        return None, None
    if isinstance(mask, np.ndarray):
        if mask.shape != (h, w):
            raise ValidationError(
                f"region {i}: mask shape {mask.shape} is not its image's ({h}, {w})"
            )
        return encode_rle_text(mask)
    rle = rle_from_json(mask) if isinstance(mask, str) else mask
    text = rle_to_json(rle)
    if [int(v) for v in rle["size"]] != [h, w]:
        raise ValidationError(
            f"region {i}: mask size {list(rle['size'])} is not its image's [{h}, {w}]"
        )
    return text, int(sum(rle["counts"][1::2]))


def as_regions(regions: RegionsIn | Sequence[RegionIn]) -> RegionsIn:
    if isinstance(regions, RegionsIn):
        return regions
    return RegionsIn.from_records(list(regions))


def _check_batch_header(batch: BatchIngest) -> str:
    """The batch name and params; returns the params as canonical JSON text."""
    if not isinstance(batch.name, str) or not batch.name.strip():
        raise ValidationError("a batch needs a non-empty name")
    try:
        return audit.canonical(dict(batch.params))
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"batch params must be JSON-serialisable: {exc}") from None


def _check_images(batch: BatchIngest) -> _Images:
    """Names (unique, non-empty), sizes and extensions of the batch's images."""
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
    return _Images(images, names, exts, widths, heights, [im.anomaly_map for im in images])


def _check_regions(regions: RegionsIn, images: _Images) -> _Regions:
    """Image indices, boxes (inside their image), scores, masks and areas of the regions."""
    n = len(regions)
    img_idx = np.asarray(regions.image, dtype=np.int64).reshape(-1)
    boxes = (
        np.asarray(regions.boxes, dtype=np.int64).reshape(n, 4) if n else np.zeros((0, 4), np.int64)
    )
    if len(img_idx) and (img_idx.min() < 0 or img_idx.max() >= len(images.items)):
        raise ValidationError(f"a region refers to image index outside 0..{len(images.items) - 1}")
    h_r, w_r = images.heights[img_idx], images.widths[img_idx]
    top, left, bottom, right = boxes.T
    bad = np.flatnonzero(
        (top < 0) | (left < 0) | (bottom > h_r) | (right > w_r) | (bottom <= top) | (right <= left)
    )
    if len(bad):
        i = int(bad[0])
        raise ValidationError(
            f"region {i}: box (top, left, bottom, right) = "
            f"{tuple(int(v) for v in boxes[i])} is empty or outside its "
            f"{int(w_r[i])}x{int(h_r[i])} image {images.names[img_idx[i]]!r}"
        )
    scores = (
        np.full(n, np.nan)
        if regions.anomaly_score is None
        else np.asarray(regions.anomaly_score, dtype=np.float64).reshape(-1)
    )
    if len(scores) != n:
        raise ValidationError(f"anomaly_score has {len(scores)} values for {n} regions")
    mask_text, mask_area = _check_masks(regions.masks, n, h_r, w_r)
    if regions.area is not None:
        area = np.asarray(regions.area, dtype=np.int64).reshape(-1)
        if len(area) != n or (area < 0).any():
            raise ValidationError("region areas must be n non-negative integers")
    else:
        area = np.where(mask_area >= 0, mask_area, (bottom - top) * (right - left))
    return _Regions(n, img_idx, top, left, bottom, right, area, scores, mask_text)


def _check_masks(
    masks: Sequence[Any] | None, n: int, h_r: np.ndarray, w_r: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(RLE JSON text or None, area or -1) of each region's mask."""
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
    return mask_text, mask_area


def _check_model_outputs(batch: BatchIngest, embeddings: Any, n: int) -> _ModelOutputs:
    """Embeddings, prototypes, assignments and new types (outputs need their model)."""
    emb = None
    if embeddings is not None:
        emb = check_matrix(embeddings, n, "region embeddings")
        if batch.model is None:
            raise ValidationError("embeddings need the model version that computed them")
    dim = check_prototypes(batch.prototypes, emb.shape[1] if emb is not None else None)
    if batch.prototypes and batch.model is None:
        raise ValidationError("prototypes need the model version that computed them")
    assignments = None
    if batch.assignments is not None:
        assignments = check_assignments(batch.assignments, n, "region index")
    check_new_types(
        batch.new_types,
        [p.type for p in batch.prototypes]
        + (list(batch.assignments.types) if batch.assignments is not None else []),
    )
    return _ModelOutputs(emb, dim, assignments)


def _check_maps(images: _Images) -> None:
    for im, m in zip(images.items, images.maps):
        if m is not None and not map_fits_image(np.shape(m), im.height, im.width):
            raise ValidationError(
                f"image {im.name!r}: anomaly map shape {np.shape(m)} does "
                f"not have the aspect of the {im.width}x{im.height} image"
            )


def _hash_images(batch_name: str, images: Sequence[ImageIn]) -> list[str]:
    """sha256 of each image; refuses identical content twice in the batch."""
    shas: list[str] = []
    first_name: dict[str, str] = {}
    for im in images:
        data = _image_bytes(im)
        sha = hashlib.sha256(data).hexdigest()
        if im.sha256 is not None and im.sha256.lower() != sha:
            raise ValidationError(
                f"image {im.name!r}: sha256 given as {im.sha256} but the bytes hash to {sha}"
            )
        if sha in first_name:
            raise ValidationError(
                f"images {first_name[sha]!r} and {im.name!r} of batch "
                f"{batch_name!r} have identical content; keep one of them"
            )
        first_name[sha] = im.name
        shas.append(sha)
    return shas


def ingest_batch(
    ws: "Workspace", batch: BatchIngest, *, actor: str = "model", progress: Progress | None = None
) -> int:
    """See :meth:`storage.workspace.Workspace.ingest_batch`; returns the new batch id."""
    actor = check_actor(actor)
    params_text = _check_batch_header(batch)
    images = _check_images(batch)
    check_model(batch.model)
    regions_in = as_regions(batch.regions)
    regions = _check_regions(regions_in, images)
    outputs = _check_model_outputs(batch, regions_in.embeddings, regions.n)
    _check_maps(images)
    # Pass 1: hashes (refuse identical content twice in the batch before writing anything).
    images.shas = _hash_images(batch.name, images.items)
    prep = _Prepared(images, regions, outputs, params_text)
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


# -------------------------------------------------------------- batch ingest: writing
@dataclass
class _Files:
    """What writing a batch's files gave, per image: its size and its anomaly-map blob."""

    n_bytes: np.ndarray
    map_refs: list[str | None]
    map_lo: np.ndarray
    map_hi: np.ndarray
    model_ref: str | None = None


def _write_batch_files(
    ws: "Workspace", batch: BatchIngest, images: _Images, progress: Progress | None
) -> _Files:
    """Images, anomaly maps and the model blob (content-addressed, idempotent), synced."""
    count = len(images.items)
    files = _Files(
        n_bytes=np.zeros(count, dtype=np.int64),
        map_refs=[],
        map_lo=np.full(count, np.nan),
        map_hi=np.full(count, np.nan),
    )
    wrote = False
    for i, im in enumerate(images.items):
        data = _image_bytes(im)
        files.n_bytes[i] = len(data)
        _, new = ws.images.put(data, images.exts[i], images.shas[i], trust_sha=True)
        wrote |= new
        if images.maps[i] is not None:
            png, lo, hi = encode_map(images.maps[i])
            ref, new = ws.blobs.put(png, "png")
            wrote |= new
            files.map_refs.append(ref)
            files.map_lo[i], files.map_hi[i] = lo, hi
        else:
            files.map_refs.append(None)
        if progress and (i + 1) % 1000 == 0:
            progress("files", i + 1, count)
    if isinstance(batch.model, ModelVersionIn) and batch.model.model is not None:
        files.model_ref, new = ws.blobs.put(bytes(batch.model.model), batch.model.ext)
        wrote |= new
    _sync(ws, wrote)
    if progress:
        progress("files", count, count)
    return files


def _insert_images(con: Con, images: _Images, files: _Files, now: object) -> tuple[np.ndarray, int]:
    """(image id of each batch image, number of new ones): rows of content seen before are
    reused, the others inserted."""
    sha_arr = np.array(images.shas, dtype=object)
    with registered(con, "_shas", {"sha": sha_arr}):
        known = dict(
            con.execute(
                "SELECT i.sha256, i.id FROM images i JOIN _shas s ON s.sha = i.sha256"
            ).fetchall()
        )
    new_idx = [i for i, s in enumerate(images.shas) if s not in known]
    first = next_id(con, "images")
    image_ids = np.empty(len(images.items), dtype=np.int64)
    for k, i in enumerate(new_idx):
        known[images.shas[i]] = first + k
    for i, s in enumerate(images.shas):
        image_ids[i] = known[s]
    if new_idx:
        sel = np.array(new_idx, dtype=np.int64)
        insert_from(
            con,
            "INSERT INTO images SELECT id, sha, ext, w, h, nb, ? FROM _src",
            {
                "id": image_ids[sel],
                "sha": sha_arr[sel],
                "ext": np.array(images.exts, dtype=object)[sel],
                "w": images.widths[sel],
                "h": images.heights[sel],
                "nb": files.n_bytes[sel],
            },
            [now],
        )
    return image_ids, len(new_idx)


def _insert_batch_images(
    con: Con, batch_id: int, images: _Images, image_ids: np.ndarray, files: _Files
) -> None:
    """The batch's membership rows: name, score, anomaly flag and map of each image."""
    anomalous = np.array(
        [-1 if im.is_anomalous is None else int(bool(im.is_anomalous)) for im in images.items],
        dtype=np.int8,
    )
    img_scores = np.array(
        [np.nan if im.anomaly_score is None else float(im.anomaly_score) for im in images.items],
        dtype=np.float64,
    )
    insert_from(
        con,
        f"""INSERT INTO batch_images SELECT {batch_id}, iid, name,
            CASE WHEN isnan(score) THEN NULL ELSE score END,
            CASE WHEN anom < 0 THEN NULL ELSE anom = 1 END, blob,
            CASE WHEN isnan(lo) THEN NULL ELSE lo END,
            CASE WHEN isnan(hi) THEN NULL ELSE hi END FROM _src""",
        {
            "iid": image_ids,
            "name": np.array(images.names, dtype=object),
            "score": img_scores,
            "anom": anomalous,
            "blob": np.array(files.map_refs, dtype=object),
            "lo": files.map_lo,
            "hi": files.map_hi,
        },
    )


def _insert_regions(
    con: Con,
    batch_id: int,
    regions: _Regions,
    image_ids: np.ndarray,
    chunk: int,
    progress: Progress | None,
) -> np.ndarray:
    """The batch's regions, ``chunk`` rows per INSERT; returns their new ids."""
    n = regions.n
    base = next_id(con, "regions")
    region_ids = base + np.arange(n, dtype=np.int64)
    for start in range(0, n, chunk):
        s = slice(start, min(start + chunk, n))
        insert_from(
            con,
            f"""INSERT INTO regions SELECT id, {batch_id}, iid, t, l, b, r,
                area, CASE WHEN isnan(score) THEN NULL ELSE score END, mask FROM _src""",
            {
                "id": region_ids[s],
                "iid": image_ids[regions.img_idx[s]],
                "t": regions.top[s],
                "l": regions.left[s],
                "b": regions.bottom[s],
                "r": regions.right[s],
                "area": regions.area[s],
                "score": regions.scores[s],
                "mask": regions.mask_text[s],
            },
        )
        if progress:
            progress("regions", s.stop, n)
    return region_ids


def _insert_assignments(
    con: Con,
    a: AssignmentsIn | None,
    outputs: _ModelOutputs,
    region_ids: np.ndarray,
    new_ids: Mapping[str, int],
    mv: int | None,
    chunk: int,
    progress: Progress | None,
) -> set[int]:
    """The model's assignments of the batch's regions; returns the types they name."""
    if a is None or outputs.assignments is None or not len(outputs.assignments[0]):
        return set()
    a_regions, a_conf = outputs.assignments
    tids = resolve_refs(con, a.types, new_ids)
    a_normal = (
        np.zeros(len(a_regions), dtype=bool)
        if a.is_normal is None
        else np.asarray(a.is_normal, dtype=bool)
    )
    if np.any(a_normal & (tids >= 0)):
        raise ValidationError("a region stored as judged normal cannot have a type")
    for start in range(0, len(a_regions), chunk):
        s = slice(start, min(start + chunk, len(a_regions)))
        insert_from(
            con,
            """INSERT INTO assignments (region_id, type_id, confidence,
                model_version, source, is_normal)
                SELECT rid, nullif(tid, -1), conf, ?, 'model', normal FROM _src""",
            {
                "rid": region_ids[a_regions[s]],
                "tid": tids[s],
                "conf": a_conf[s],
                "normal": a_normal[s],
            },
            [mv],
        )
        if progress:
            progress("assignments", s.stop, len(a_regions))
    return {int(t) for t in np.unique(tids) if t >= 0}


def _write_batch(
    ws: "Workspace", batch: BatchIngest, p: _Prepared, actor: str, progress: Progress | None
) -> int:
    """Files first (content-addressed, idempotent, made durable), then ONE transaction."""
    files = _write_batch_files(ws, batch, p.images, progress)
    chunk = max(1, ws.config.insert_chunk_rows)
    with ws.transaction() as con:
        now = utcnow()
        if p.outputs.dim is not None:
            schema.set_embedding_dim(con, ws.name, p.outputs.dim)
        mv = (
            None
            if batch.model is None
            else insert_model_version(con, batch.model, files.model_ref, now)
        )
        batch_id = next_id(con, "batches")
        con.execute(
            "INSERT INTO batches VALUES (?, ?, ?, ?, ?)",
            [batch_id, batch.name.strip(), p.params_text, now, mv],
        )
        image_ids, n_new_images = _insert_images(con, p.images, files, now)
        _insert_batch_images(con, batch_id, p.images, image_ids, files)
        region_ids = _insert_regions(con, batch_id, p.regions, image_ids, chunk, progress)
        if p.outputs.emb is not None:
            insert_embeddings(
                con, region_ids, p.outputs.emb, _require_model(mv, "embeddings"), chunk, progress
            )
        new_ids = create_types(con, batch.new_types, origin="model", status="proposed", now=now)
        touched = _insert_assignments(
            con, batch.assignments, p.outputs, region_ids, new_ids, mv, chunk, progress
        )
        if batch.prototypes:
            insert_prototypes(con, batch.prototypes, _require_model(mv, "prototypes"), new_ids)
        _record_type_changes(
            con,
            actor=actor,
            action="ingest_batch",
            target={
                "batch_id": batch_id,
                "name": batch.name.strip(),
                "n_images": len(p.images.items),
                "n_new_images": n_new_images,
                "n_regions": p.regions.n,
                "model_version": mv,
            },
            touched=touched,
            created=set(new_ids.values()),
            now=now,
        )
    return batch_id


# ------------------------------------------------------------------------ retrain
@dataclass
class _RetrainVectors:
    """The validated vectors of a retrain result (internal to ``apply_retrain``)."""

    #: (region ids, (n, d) matrix)
    embeddings: tuple[np.ndarray, np.ndarray] | None
    dim: int | None
    #: (region ids, confidences) of the assignments
    assignments: tuple[np.ndarray, np.ndarray] | None


def apply_retrain(
    ws: "Workspace",
    model: ModelVersionIn | int,
    assignments: AssignmentsIn | None,
    prototypes: Sequence[PrototypeIn] = (),
    embeddings: tuple[np.ndarray, np.ndarray] | None = None,
    *,
    new_types: Sequence[NewType] = (),
    actor: str = "model",
    progress: Progress | None = None,
) -> int:
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
    emb = None
    if embeddings is not None:
        emb_ids = np.asarray(embeddings[0], dtype=np.int64).reshape(-1)
        emb = (emb_ids, check_matrix(embeddings[1], len(emb_ids), "embeddings"))
        if len(np.unique(emb_ids)) != len(emb_ids):
            raise ValidationError("embeddings name a region twice")
        dim = emb[1].shape[1]
    dim = check_prototypes(prototypes, dim)
    checked = None
    if assignments is not None:
        checked = check_assignments(assignments, None, "region id")
    check_new_types(
        new_types,
        [p.type for p in prototypes] + (list(assignments.types) if assignments is not None else []),
    )
    with ws.pending_files():
        model_ref, wrote = None, False
        if isinstance(model, ModelVersionIn) and model.model is not None:
            model_ref, wrote = ws.blobs.put(bytes(model.model), model.ext)
        _sync(ws, wrote)
        return _write_retrain(
            ws,
            model,
            model_ref,
            assignments,
            prototypes,
            _RetrainVectors(emb, dim, checked),
            new_types,
            actor,
            progress,
        )


@dataclass
class _Merged:
    """What merging model assignments into the stored ones did."""

    #: types that gained or lost members (their version is bumped)
    touched: set[int] = field(default_factory=set)
    #: types whose members only got new confidences: their summary (mean confidence)
    #: must be refreshed too, without a version bump (membership did not change)
    restated: set[int] = field(default_factory=set)
    n_skipped: int = 0  # kept, because a reviewer placed them
    n_changed: int = 0


def _merge_chunk(con: Con, columns: Mapping[str, np.ndarray], mv: int, out: _Merged) -> None:
    """Merge one chunk (rid, tid, conf) of model assignments, counting into ``out``."""
    with registered(con, "_src", columns):
        con.execute("""CREATE OR REPLACE TEMP TABLE _retrain AS
            SELECT s.rid, nullif(s.tid, -1) AS tid, s.conf,
                   a.region_id IS NOT NULL AS had, a.type_id AS old_tid,
                   coalesce(a.source, 'model') AS old_source,
                   coalesce(a.is_normal, false) AS old_normal
            FROM _src s LEFT JOIN assignments a ON a.region_id = s.rid""")
    stats = fetch_one(
        con,
        """SELECT
            count(*) FILTER (WHERE old_source = 'reviewer'),
            count(*) FILTER (WHERE old_source <> 'reviewer' AND
                (NOT had OR old_tid IS DISTINCT FROM tid OR old_normal))
        FROM _retrain""",
    )
    out.n_skipped += stats[0]
    out.n_changed += stats[1]
    out.touched |= {
        r[0]
        for r in con.execute("""
        SELECT old_tid FROM _retrain WHERE old_source <> 'reviewer'
            AND old_tid IS DISTINCT FROM tid AND old_tid IS NOT NULL
        UNION SELECT tid FROM _retrain WHERE old_source <> 'reviewer'
            AND (NOT had OR old_tid IS DISTINCT FROM tid OR old_normal)
            AND tid IS NOT NULL""").fetchall()
    }
    out.restated |= {
        r[0]
        for r in con.execute(
            "SELECT DISTINCT tid FROM _retrain WHERE old_source <> 'reviewer' AND tid IS NOT NULL"
        ).fetchall()
    }
    con.execute(f"""INSERT INTO assignments (region_id, type_id, confidence,
            model_version, source, is_normal)
        SELECT rid, tid, conf, {mv}, 'model', false FROM _retrain
        WHERE old_source <> 'reviewer'
        ON CONFLICT (region_id) DO UPDATE SET type_id = excluded.type_id,
            confidence = excluded.confidence,
            model_version = excluded.model_version,
            source = 'model', is_normal = false""")


def _merge_model_assignments(
    con: Con,
    assignments: AssignmentsIn | None,
    checked: tuple[np.ndarray, np.ndarray] | None,
    new_ids: Mapping[str, int],
    mv: int,
    chunk: int,
    progress: Progress | None,
) -> _Merged:
    """Model assignments replace model-sourced (or absent) ones, ``chunk`` rows at a time."""
    out = _Merged()
    if assignments is None or checked is None or not len(checked[0]):
        return out
    a_ids, a_conf = checked
    tids = resolve_refs(con, assignments.types, new_ids)
    for start in range(0, len(a_ids), chunk):
        s = slice(start, min(start + chunk, len(a_ids)))
        _merge_chunk(con, {"rid": a_ids[s], "tid": tids[s], "conf": a_conf[s]}, mv, out)
        if progress:
            progress("assignments", s.stop, len(a_ids))
    con.execute("DROP TABLE IF EXISTS _retrain")
    return out


def _write_retrain(
    ws: "Workspace",
    model: ModelVersionIn | int,
    model_ref: str | None,
    assignments: AssignmentsIn | None,
    prototypes: Sequence[PrototypeIn],
    v: _RetrainVectors,
    new_types: Sequence[NewType],
    actor: str,
    progress: Progress | None,
) -> int:
    """ONE transaction: model version, embeddings, new types, assignments, prototypes."""
    chunk = max(1, ws.config.insert_chunk_rows)
    with ws.transaction() as con:
        now = utcnow()
        if v.dim is not None:
            schema.set_embedding_dim(con, ws.name, v.dim)
        mv = insert_model_version(con, model, model_ref, now)
        for ids in ([v.embeddings[0]] if v.embeddings is not None else []) + (
            [v.assignments[0]] if v.assignments is not None else []
        ):
            require_regions(con, ids)
        if v.embeddings is not None:
            insert_embeddings(con, v.embeddings[0], v.embeddings[1], mv, chunk, progress)
        new_ids = create_types(con, new_types, origin="model", status="proposed", now=now)
        merged = _merge_model_assignments(
            con, assignments, v.assignments, new_ids, mv, chunk, progress
        )
        insert_prototypes(con, prototypes, mv, new_ids)
        _record_type_changes(
            con,
            actor=actor,
            action="apply_retrain",
            target={
                "model_version": mv,
                "n_assignments": 0 if v.assignments is None else len(v.assignments[0]),
                "n_changed": merged.n_changed,
                "n_kept_reviewer": merged.n_skipped,
                "n_embeddings": 0 if v.embeddings is None else len(v.embeddings[0]),
                "n_prototypes": len(prototypes),
            },
            touched=merged.touched,
            created=set(new_ids.values()),
            now=now,
            restated=merged.restated,
        )
    return mv
