"""Deleting a batch: its rows in one transaction, then the files no row references.

What goes: the batch, its images that no other batch lists, its regions with their
assignments and embeddings, and the open questions (they may point at its regions; the
service asks the model for new ones). What stays: types (a type the batch filled may be
left empty), prototypes and model versions (the model learnt from the batch), and the audit
log, where one ``delete_batch`` row records the touched types' states, every reviewer
decision on the batch's regions before and after (``None``), and the counts.

Ids are never reused: the largest id of ``batches``, ``images`` and ``regions`` before
the delete is kept in ``meta`` (``max_id.<table>``, read by :func:`storage.sql.next_id`),
so a crop cache, a token file or an audit row naming an old id never meets a new row.

A delete is not undoable (``undo`` never picks it); the workspace takes a snapshot first,
so ``protoatlas restore`` brings the batch back. The snapshot holds rows, not files: the
files only the batch used are set aside under ``deleted/<seq>-batch-<id>/`` (the store's
layout) and moved back by a restore that needs them. They are removed for good once no kept
snapshot is older than the delete (snapshots rotate: ``StorageConfig.snapshot_keep``),
checked at each delete and each writer open; without snapshots, at once.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb

from storage import audit, summary
from storage.checks import check_actor
from storage.errors import NotFoundError
from storage.sql import MAX_ID_KEY, bump_type_versions, fetch_one, fetch_value, utcnow

if TYPE_CHECKING:
    from storage.workspace import Workspace

Con = duckdb.DuckDBPyConnection
#: Tables whose ids a delete must not let a later insert reuse.
ID_TABLES = ("batches", "images", "regions")
#: Where a deleted batch's files wait while a snapshot from before the delete is kept.
DELETED_DIR = "deleted"
_SET_ASIDE = re.compile(r"^(\d+)-batch-(\d+)$")
#: The content stores, by folder name.
STORES = ("images", "blobs")


@dataclass(frozen=True)
class BatchDeleted:
    """What :func:`delete_batch` removed."""

    batch_id: int
    name: str
    n_images: int
    #: images removed from the store (the others are listed by another batch too)
    n_images_removed: int
    n_regions: int
    #: reviewer decisions on the batch's regions (moves, normal marks) that went with them
    n_reviewed: int
    type_ids: tuple[int, ...]
    #: audit seq of the ``delete_batch`` row
    seq: int
    #: the file refs (``<sha>.<ext>``) the batch's rows pointed to, per store
    files: dict[str, set[str]]


def _keep_max_ids(con: Con) -> None:
    for table in ID_TABLES:
        current = int(fetch_value(con, f"SELECT coalesce(max(id), 0) FROM {table}"))
        con.execute(
            "INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = "
            "CAST(greatest(CAST(meta.value AS BIGINT), CAST(excluded.value AS BIGINT)) AS VARCHAR)",
            [MAX_ID_KEY.format(table=table), str(current)],
        )


def delete_batch(ws: "Workspace", batch_id: int, actor: str) -> BatchDeleted:
    """See :meth:`storage.workspace.Workspace.delete_batch`."""
    actor = check_actor(actor)
    batch_id = int(batch_id)
    with ws.transaction() as con:
        row = con.execute("SELECT name FROM batches WHERE id = ?", [batch_id]).fetchone()
        if row is None:
            raise NotFoundError(f"no batch with id {batch_id}")
        name = str(row[0])
        n_images = int(
            fetch_value(con, "SELECT count(*) FROM batch_images WHERE batch_id = ?", [batch_id])
        )
        in_batch = "SELECT id FROM regions WHERE batch_id = ?"
        n_regions, lo, hi = fetch_one(
            con, "SELECT count(*), min(id), max(id) FROM regions WHERE batch_id = ?", [batch_id]
        )
        n_regions = int(n_regions)
        type_ids = sorted(
            int(r[0])
            for r in con.execute(
                f"SELECT DISTINCT type_id FROM assignments WHERE type_id IS NOT NULL AND "
                f"region_id IN ({in_batch})",
                [batch_id],
            ).fetchall()
        )
        reviewed = [
            int(r[0])
            for r in con.execute(
                f"SELECT region_id FROM assignments WHERE source = 'reviewer' AND "
                f"region_id IN ({in_batch}) ORDER BY region_id",
                [batch_id],
            ).fetchall()
        ]
        open_ids = [
            int(r[0])
            for r in con.execute("SELECT id FROM suggestions WHERE status = 'open'").fetchall()
        ]
        before = {
            "types": audit.snapshot_types(con, type_ids),
            "assignments": audit.snapshot_assignments(con, reviewed),
            "suggestions": audit.snapshot_suggestions(con, open_ids),
        }
        _keep_max_ids(con)
        only_here = (
            "SELECT image_id FROM batch_images WHERE batch_id = ? AND image_id NOT IN "
            "(SELECT image_id FROM batch_images WHERE batch_id <> ?)"
        )
        n_removed = int(
            fetch_value(con, f"SELECT count(*) FROM ({only_here})", [batch_id, batch_id])
        )
        files = {
            "images": {
                str(r[0])
                for r in con.execute(
                    "SELECT sha256 || '.' || ext FROM images WHERE id IN "
                    "(SELECT image_id FROM batch_images WHERE batch_id = ?)",
                    [batch_id],
                ).fetchall()
            },
            "blobs": {
                str(r[0])
                for r in con.execute(
                    "SELECT map_blob FROM batch_images WHERE batch_id = ? AND map_blob IS NOT NULL",
                    [batch_id],
                ).fetchall()
            },
        }
        con.execute(f"DELETE FROM embeddings WHERE region_id IN ({in_batch})", [batch_id])
        con.execute(f"DELETE FROM assignments WHERE region_id IN ({in_batch})", [batch_id])
        con.execute("DELETE FROM regions WHERE batch_id = ?", [batch_id])
        con.execute(f"DELETE FROM images WHERE id IN ({only_here})", [batch_id, batch_id])
        con.execute("DELETE FROM batch_images WHERE batch_id = ?", [batch_id])
        con.execute("DELETE FROM batches WHERE id = ?", [batch_id])
        con.execute("UPDATE suggestions SET status = 'stale' WHERE status = 'open'")
        now = utcnow()
        bump_type_versions(con, type_ids, now)
        summary.refresh(con, type_ids)
        after = {
            "types": audit.snapshot_types(con, type_ids),
            "assignments": audit.snapshot_assignments(con, reviewed),
            "suggestions": audit.snapshot_suggestions(con, open_ids),
        }
        seq = audit.append_raw(
            con,
            actor=actor,
            action="delete_batch",
            target={
                "batch_id": batch_id,
                "name": name,
                "n_images": n_images,
                "n_images_removed": n_removed,
                "n_regions": n_regions,
                "n_reviewed": len(reviewed),
                # a batch's regions have consecutive ids: the audit replay drops these
                "region_id_range": None if lo is None else [int(lo), int(hi)],
            },
            type_ids=type_ids,
            before=before,
            after=after,
        )
    return BatchDeleted(
        batch_id, name, n_images, n_removed, n_regions, len(reviewed), tuple(type_ids), seq, files
    )


# ------------------------------------------------------------------------ the files
def _store_path(folder: Path, ref: str) -> Path:
    return folder / ref[:2] / ref


def set_aside(root: Path, deleted: BatchDeleted, referenced: dict[str, set[str]]) -> int:
    """After the commit: move the deleted batch's files that no row references any more
    to ``deleted/<seq>-batch-<id>/``; returns how many."""
    target = root / DELETED_DIR / f"{deleted.seq}-batch-{deleted.batch_id}"
    moved = 0
    for store in STORES:
        for ref in sorted(deleted.files[store] - referenced[store]):
            src = _store_path(root / store, ref)
            if not src.is_file():
                continue
            dst = _store_path(target / store, ref)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
            moved += 1
    return moved


def bring_back(root: Path, referenced: dict[str, set[str]]) -> int:
    """After a restore: move back every set-aside file the restored rows reference but the
    store lacks; returns how many."""
    back = 0
    folder = root / DELETED_DIR
    if not folder.is_dir():
        return 0
    for aside in sorted(folder.iterdir()):
        for store in STORES:
            for ref in referenced[store]:
                src = _store_path(aside / store, ref)
                dst = _store_path(root / store, ref)
                if src.is_file() and not dst.is_file():
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(src, dst)
                    back += 1
    return back


def purge(root: Path, snapshot_seqs: Sequence[int]) -> list[Path]:
    """Remove the set-aside files of deletes that no kept snapshot predates (given the
    kept snapshots' last audit seqs); returns the folders removed."""
    folder = root / DELETED_DIR
    if not folder.is_dir():
        return []
    removed = []
    for aside in sorted(folder.iterdir()):
        m = _SET_ASIDE.match(aside.name)
        if m is None:
            continue
        seq = int(m.group(1))
        if not any(s < seq for s in snapshot_seqs):
            shutil.rmtree(aside, ignore_errors=True)
            removed.append(aside)
    return removed
