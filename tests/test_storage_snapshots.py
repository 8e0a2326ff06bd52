"""Rotating snapshots, the error on opening a damaged file, and restoring from a snapshot."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import duckdb
import numpy as np
import pytest

from storage import (
    DamagedWorkspaceError,
    NotFoundError,
    StorageConfig,
    StorageError,
    Workspace,
    doctor,
    workspace_snapshots,
)
from storage.snapshots import MANIFEST, SNAPSHOTS
from storage.sql import registered
from tests.storage_fixtures import make_batch

DIM = 8
#: Snapshots written inline, so that each test sees them as soon as the action returns.
INLINE = StorageConfig(snapshot_in_background=False, snapshot_every_decisions=3, snapshot_keep=3)


def _open(home: Path, config: StorageConfig = INLINE) -> Workspace:
    return Workspace.open(home, "w", embedding_dim=DIM, config=config)


def _rename(ws: Workspace, i: int, actor: str = "alice") -> None:
    """One reviewer decision (a rename of the first type)."""
    t = ws.list_types()[0]
    ws.rename_type(t.id, f"name {i}", expected_version=t.version, actor=actor)


def _assignments(ws: Workspace) -> list[tuple]:
    with ws.read() as cur:
        return cur.execute("SELECT * FROM assignments ORDER BY region_id").fetchall()


def _state(ws: Workspace) -> tuple:
    """What a restore must bring back: types (with versions), assignments, audit log."""
    return (
        ws.list_types(include_merged=True),
        _assignments(ws),
        [(e.seq, e.hash) for e in ws.audit(limit=10_000)],
    )


def _workspace_with_snapshot(home: Path) -> tuple[tuple, list[int]]:
    """A batch, 3 decisions (snapshot 2 is taken at the third), then 2 more decisions that
    no snapshot holds. Returns (the state of snapshot 2, the seqs of the 2 later entries)."""
    with _open(home) as ws:
        ws.ingest_batch(make_batch(30, dim=DIM, seed=3))
        t = ws.list_types()[1]
        ws.confirm_type(t.id, expected_version=t.version, actor="alice")
        regions = [m.region_id for m in ws.type_members(t.id, limit=2)]
        ws.mark_normal(regions, expected={t.id: t.version + 1}, actor="bob")
        _rename(ws, 0)
        at_snapshot = _state(ws)
        assert [s.number for s in ws.snapshots()] == [2, 1]
        _rename(ws, 1)
        _rename(ws, 2, actor="carol")
        later = [e.seq for e in ws.audit(limit=2)][::-1]
    return at_snapshot, later


def _used_block_offset(db: Path) -> tuple[int, int]:
    """(byte offset, file size) of the middle one of the blocks that hold table data.

    DuckDB's file: 3 header blocks of 4 KiB, then blocks of ``block_size`` bytes, each
    starting with its checksum; a block id from ``pragma_storage_info`` is its index.
    """
    con = duckdb.connect(str(db), read_only=True)
    try:
        block_size = con.execute("SELECT block_size FROM pragma_database_size()").fetchone()[0]
        tables = [r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()]
        blocks = sorted(
            {
                r[0]
                for t in tables
                for r in con.execute(
                    f"SELECT block_id FROM pragma_storage_info('{t}') WHERE block_id >= 0"
                ).fetchall()
            }
        )
    finally:
        con.close()
    middle = blocks[len(blocks) // 2]
    return 3 * 4096 + middle * block_size + 1024, db.stat().st_size


# ------------------------------------------------------------------- snapshots
def test_a_batch_writes_a_complete_snapshot(tmp_path) -> None:
    with _open(tmp_path) as ws:
        ws.ingest_batch(make_batch(20, dim=DIM, seed=1))
        (snap,) = ws.snapshots()
        n_audit = len(ws.audit(limit=1000))
        head = ws.audit(limit=1)[0]
    assert (snap.number, snap.reason, snap.batches) == (1, "batch", 1)
    assert (snap.audit_entries, snap.audit_seq, snap.audit_hash) == (n_audit, head.seq, head.hash)
    assert (snap.regions, snap.types) == (40, 4)
    assert snap.path.parent == tmp_path / "w" / SNAPSHOTS
    assert snap.path.name.startswith("1-") and snap.path.name.endswith("Z")
    files = {p.name for p in snap.path.iterdir()}
    assert {MANIFEST, "schema.sql", "load.sql", "regions.parquet", "audit_log.parquet"} <= files
    # nothing half-written is left beside it
    assert [p.name for p in (tmp_path / "w" / SNAPSHOTS).iterdir()] == [snap.path.name]
    assert workspace_snapshots(tmp_path, "w") == [snap]


def test_a_snapshot_every_n_decisions_counted_across_reopens(tmp_path) -> None:
    with _open(tmp_path) as ws:
        ws.ingest_batch(make_batch(10, dim=DIM, seed=2))  # snapshot 1 (batch)
        for i in range(7):
            _rename(ws, i)
        snaps = ws.snapshots()
        # decisions 3 and 6 took snapshots 2 and 3; the 7th is not in any
        assert [(s.number, s.reason) for s in snaps] == [
            (3, "decisions"),
            (2, "decisions"),
            (1, "batch"),
        ]
        assert [s.audit_entries for s in snaps] == [7, 4, 1]
    with _open(tmp_path) as ws:  # the count goes on from the audit log, not from zero
        _rename(ws, 7)
        assert len(ws.snapshots()) == 3
        _rename(ws, 8)
        newest = ws.snapshots()[0]
        assert (newest.number, newest.audit_entries) == (4, 10)
    # other actions are not decisions: a suggestion refresh alone takes no snapshot
    with _open(tmp_path) as ws:
        ws.replace_open_suggestions([])
        ws.replace_open_suggestions([])
        ws.replace_open_suggestions([])
        assert ws.snapshots()[0].number == 4


def test_rotation_keeps_at_most_k_and_drops_the_oldest(tmp_path) -> None:
    with _open(tmp_path) as ws:
        for k in range(6):
            ws.ingest_batch(make_batch(4, dim=DIM, seed=10 + k, name=f"b{k}", image_prefix=f"p{k}"))
            assert len(ws.snapshots()) == min(k + 1, 3)
        snaps = ws.snapshots()
    assert [s.number for s in snaps] == [6, 5, 4]
    assert [s.batches for s in snaps] == [6, 5, 4]
    names = sorted(p.name.split("-")[0] for p in (tmp_path / "w" / SNAPSHOTS).iterdir())
    assert names == ["4", "5", "6"]  # 1, 2 and 3 are gone, nothing else is there


def test_background_snapshots_are_written_by_close(tmp_path) -> None:
    cfg = StorageConfig(snapshot_every_decisions=2)  # background, the default
    ws = _open(tmp_path, cfg)
    ws.ingest_batch(make_batch(10, dim=DIM, seed=4))
    _rename(ws, 0)
    _rename(ws, 1)
    ws.close()  # waits for the worker
    snaps = workspace_snapshots(tmp_path, "w")
    assert snaps and snaps[0].audit_entries == 3
    assert {s.reason for s in snaps} <= {"batch", "decisions"}


def test_a_failed_snapshot_is_logged_and_the_action_succeeds(tmp_path, caplog) -> None:
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / SNAPSHOTS).write_text("a file where the snapshots folder should be")
    with caplog.at_level(logging.WARNING, logger="storage.snapshots"):
        with _open(tmp_path) as ws:
            batch_id = ws.ingest_batch(make_batch(10, dim=DIM, seed=5))
            for i in range(3):
                _rename(ws, i)
            assert ws.batches()[0].id == batch_id and ws.list_types()[0].name == "name 2"
    failures = [r for r in caplog.records if "snapshot of" in r.getMessage()]
    assert len(failures) == 2  # the batch's and the third decision's
    assert all(r.levelno == logging.WARNING for r in failures)


# ----------------------------------------------------------- damaged file on open
def _damaged_message(home: Path, **kw) -> DamagedWorkspaceError:
    with pytest.raises(DamagedWorkspaceError) as info:
        Workspace.open(home, "w", config=INLINE, **kw)
    return info.value


@pytest.mark.parametrize("fraction", [0.5, 0.001])
def test_a_truncated_file_is_a_clear_error_naming_it(tmp_path, fraction) -> None:
    _workspace_with_snapshot(tmp_path)
    db = tmp_path / "w" / "workspace.duckdb"
    with open(db, "r+b") as fh:
        fh.truncate(int(db.stat().st_size * fraction))
    for read_only in (False, True):
        err = _damaged_message(tmp_path, read_only=read_only)
        text = str(err)
        assert f"the database file {db} looks damaged" in text
        assert "#2 " in text and "#1 " in text and text.index("#2 ") < text.index("#1 ")
        assert f"protoatlas restore --home {tmp_path} --workspace w" in text
        assert "\n" not in text
        assert err.path == db and [s.number for s in err.snapshots] == [2, 1]


def test_random_bytes_in_the_middle_are_a_clear_error_naming_it(tmp_path) -> None:
    _workspace_with_snapshot(tmp_path)
    db = tmp_path / "w" / "workspace.duckdb"
    offset, size = _used_block_offset(db)
    assert 0.2 * size < offset < 0.8 * size  # the middle of the file
    with open(db, "r+b") as fh:
        fh.seek(offset)
        fh.write(np.random.default_rng(18).bytes(4096))
    err = _damaged_message(tmp_path)
    assert f"{db} looks damaged" in str(err) and "checksum" in err.reason.lower()
    assert "protoatlas restore" in str(err)


def test_a_damaged_file_without_snapshots_says_there_is_none(tmp_path) -> None:
    with _open(tmp_path, StorageConfig(snapshots=False)) as ws:
        ws.ingest_batch(make_batch(10, dim=DIM, seed=6))
    db = tmp_path / "w" / "workspace.duckdb"
    with open(db, "r+b") as fh:
        fh.truncate(db.stat().st_size // 2)
    err = _damaged_message(tmp_path)
    assert f"{db} looks damaged" in str(err) and "there is no snapshot under" in str(err)
    assert err.snapshots == []


def test_a_damaged_file_is_not_written_by_the_open(tmp_path) -> None:
    _workspace_with_snapshot(tmp_path)
    db = tmp_path / "w" / "workspace.duckdb"
    with open(db, "r+b") as fh:
        fh.truncate(db.stat().st_size // 2)
    before = db.read_bytes()
    _damaged_message(tmp_path)
    assert db.read_bytes() == before


# ------------------------------------------------------------------------ restore
def test_restore_brings_back_the_last_snapshot_and_keeps_the_damaged_file(tmp_path) -> None:
    at_snapshot, later = _workspace_with_snapshot(tmp_path)
    db = tmp_path / "w" / "workspace.duckdb"
    with open(db, "r+b") as fh:
        fh.truncate(db.stat().st_size // 2)
    damaged_bytes = db.read_bytes()

    res = Workspace.restore(tmp_path, "w")

    assert res.snapshot.number == 2 and res.database == db
    (aside,) = res.moved_aside
    assert aside.name == f"workspace.duckdb.damaged-{res.stamp}"
    assert aside.read_bytes() == damaged_bytes  # kept as it was
    # what the snapshot lacks: the two later decisions, read from the damaged file
    assert res.lost is not None and [e.seq for e in res.lost] == later
    assert [(e.actor, e.action) for e in res.lost] == [
        ("alice", "rename_type"),
        ("carol", "rename_type"),
    ]
    with _open(tmp_path) as ws:
        assert _state(ws) == at_snapshot
        assert doctor(ws, verify_hashes=True) == []
        _rename(ws, 9)  # the workspace works on
        assert ws.list_types()[0].name == "name 9"
    assert not list((tmp_path / "w").glob(".restore-*"))


def test_restore_an_older_snapshot_by_number(tmp_path) -> None:
    _workspace_with_snapshot(tmp_path)
    with _open(tmp_path) as ws:
        first = ws.snapshots()[-1]
    res = Workspace.restore(tmp_path, "w", snapshot=first.number)
    assert res.snapshot.number == 1
    assert res.lost is not None and len(res.lost) == 5  # the damage-free file had 6 entries
    with _open(tmp_path) as ws:
        assert len(ws.audit(limit=100)) == first.audit_entries == 1
        assert doctor(ws, verify_hashes=True) == []
        assert all(t.status == "proposed" for t in ws.list_types())
        # decisions are counted from the restored snapshot, not from the newer ones
        for i in range(3):
            _rename(ws, 20 + i)
        assert ws.snapshots()[0].number == 3 and ws.snapshots()[0].audit_entries == 4


def test_restore_moves_the_wal_aside_too(tmp_path) -> None:
    _workspace_with_snapshot(tmp_path)
    wal = tmp_path / "w" / "workspace.duckdb.wal"
    wal.write_bytes(np.random.default_rng(7).bytes(5000))  # a WAL DuckDB cannot replay
    res = Workspace.restore(tmp_path, "w")
    assert not wal.exists()
    assert [p.name for p in res.moved_aside] == [
        f"workspace.duckdb.damaged-{res.stamp}",
        f"workspace.duckdb.damaged-{res.stamp}.wal",
    ]
    with _open(tmp_path) as ws:
        assert doctor(ws) == []


def test_restore_when_the_damaged_file_cannot_be_read_says_it_cannot_tell(tmp_path) -> None:
    _workspace_with_snapshot(tmp_path)
    db = tmp_path / "w" / "workspace.duckdb"
    db.write_bytes(np.random.default_rng(8).bytes(3 * 4096))
    res = Workspace.restore(tmp_path, "w")
    assert res.lost is None and res.lost_count is None and "cannot tell" in res.lost_note
    with _open(tmp_path) as ws:
        assert doctor(ws) == []


def test_restore_without_a_snapshot_is_a_clear_error(tmp_path) -> None:
    with _open(tmp_path, StorageConfig(snapshots=False)) as ws:
        ws.ingest_batch(make_batch(5, dim=DIM, seed=9))
    with pytest.raises(NotFoundError, match=r"has no snapshot under .*snapshots: nothing"):
        Workspace.restore(tmp_path, "w")
    with pytest.raises(NotFoundError, match="no workspace 'nope'"):
        Workspace.restore(tmp_path, "nope")
    _workspace_with_snapshot(tmp_path / "other")
    with pytest.raises(NotFoundError, match="has no snapshot 7; it has 2, 1"):
        Workspace.restore(tmp_path / "other", "w", snapshot=7)


def test_restore_refuses_an_open_workspace(tmp_path) -> None:
    _workspace_with_snapshot(tmp_path)
    db = tmp_path / "w" / "workspace.duckdb"
    with _open(tmp_path):
        with pytest.raises(StorageError, match="is open in this process; close it"):
            Workspace.restore(tmp_path, "w")
    assert db.is_file() and not list((tmp_path / "w").glob("*.damaged-*"))


def test_a_snapshot_that_cannot_be_loaded_changes_nothing(tmp_path) -> None:
    _workspace_with_snapshot(tmp_path)
    db = tmp_path / "w" / "workspace.duckdb"
    before = db.read_bytes()
    newest = workspace_snapshots(tmp_path, "w")[0]
    (newest.path / "regions.parquet").write_bytes(b"not parquet")
    with pytest.raises(StorageError, match="snapshot 2 .* cannot be loaded .* nothing was changed"):
        Workspace.restore(tmp_path, "w")
    assert db.read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "w").iterdir() if p.is_file()) == ["workspace.duckdb"]
    assert os.path.isdir(newest.path)


def test_damage_met_by_a_later_statement_is_the_same_clear_error(tmp_path) -> None:
    """DuckDB loads an index lazily, so a damaged index block can pass the open and fail
    the first write that reads it: that error names the file and the restore too, and the
    transaction is rolled back."""
    _workspace_with_snapshot(tmp_path)
    db = tmp_path / "w" / "workspace.duckdb"
    corrupt = "Corrupt database file: computed checksum 1 does not match stored checksum 2"
    with _open(tmp_path) as ws:
        with pytest.raises(DamagedWorkspaceError, match=f"{db} looks damaged .*#2 ") as info:
            with ws.transaction() as con:
                con.execute("INSERT INTO meta VALUES ('probe', 'x')")
                raise duckdb.IOException(corrupt)
        assert info.value.reason == corrupt
        with ws.read() as cur:
            assert cur.execute("SELECT count(*) FROM meta WHERE key = 'probe'").fetchone() == (0,)
        with pytest.raises(DamagedWorkspaceError, match="protoatlas restore"):
            with ws.read():
                raise duckdb.IOException("Could not read enough bytes from file")
        # a statement's own error is not hidden by the cleanup of a registered view
        with pytest.raises(duckdb.CatalogException):
            with ws.transaction() as con:
                with registered(con, "_src", {"a": np.arange(3)}):
                    con.execute("SELECT * FROM no_such_table")
