"""``protoatlas restore`` (and ``doctor`` on a damaged workspace): list the snapshots,
restore one, keep the damaged file, report what was lost and the doctor's verdict."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest

from protoatlas.cli import main
from protoatlas.service import WorkspaceService
from storage import StorageConfig, Workspace
from tests.storage_fixtures import make_batch

NAME = "default"
INLINE = StorageConfig(snapshot_in_background=False, snapshot_every_decisions=2)


def run(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    return code, out.getvalue(), err.getvalue()


def _tokens(home: Path, batch_id: int) -> Path:
    path = home / NAME / "tokens" / f"batch-{batch_id}.npz"
    path.parent.mkdir(exist_ok=True)
    np.savez(path, region_ids=np.zeros(0, np.int64))
    return path


@pytest.fixture
def home(tmp_path) -> Path:
    """Batch 1 (snapshot 1), two decisions (snapshot 2), batch 2 (snapshot 3), then one
    decision no snapshot holds. Each batch has its crop-tokens file, as the service writes."""
    home = tmp_path / "home"
    with Workspace.open(home, NAME, embedding_dim=8, config=INLINE) as ws:
        ws.ingest_batch(make_batch(12, dim=8, seed=1, name="first"))
        for status in ("confirm", "reject"):
            t = ws.list_types()[0 if status == "confirm" else 1]
            getattr(ws, f"{status}_type")(t.id, expected_version=t.version, actor="alice")
        types = [t.id for t in ws.list_types() if t.status != "rejected"][:2]
        ws.ingest_batch(
            make_batch(6, dim=8, seed=2, name="second", image_prefix="b", existing_types=types)
        )
        t = ws.list_types()[0]
        ws.rename_type(t.id, "scratch", expected_version=t.version, actor="bob")
    _tokens(home, 1)
    _tokens(home, 2)
    return home


def _damage(home: Path) -> Path:
    db = home / NAME / "workspace.duckdb"
    with open(db, "r+b") as fh:
        fh.truncate(db.stat().st_size // 2)
    return db


def test_restore_list_shows_number_time_batches_and_audit_entries(home) -> None:
    code, out, err = run(["restore", "--home", str(home), "--list"])
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0] == "snapshots of workspace 'default', newest first:"
    assert lines[1].split() == [
        "number",
        "created",
        "(UTC)",
        "batches",
        "audit",
        "entries",
        "reason",
    ]
    rows = [line.split() for line in lines[2:]]
    assert [(r[0], r[3], r[4], r[5]) for r in rows] == [
        ("3", "2", "4", "batch"),
        ("2", "1", "3", "decisions"),
        ("1", "1", "1", "batch"),
    ]
    assert all(len(r[1]) == 10 and len(r[2]) == 8 for r in rows)  # date, time
    # --list changes nothing
    assert sorted(p.name for p in (home / NAME).glob("workspace.duckdb*")) == ["workspace.duckdb"]


def test_doctor_on_a_damaged_workspace_names_the_file_and_the_restore_command(home) -> None:
    db = _damage(home)
    code, out, err = run(["doctor", "--home", str(home)])
    assert code == 2 and out == ""
    assert f"the database file {db} looks damaged" in err
    assert "#3 " in err and f"protoatlas restore --home {home.resolve()} --workspace default" in err


def test_restore_the_newest_snapshot_reports_the_loss_and_the_doctor(home) -> None:
    db = _damage(home)
    damaged = db.read_bytes()
    code, out, err = run(["restore", "--home", str(home)])
    assert code == 0, err
    assert "restored workspace 'default' from snapshot 3 (" in out
    assert "batches: 2, audit entries: 4)" in out
    (aside,) = list((home / NAME).glob("workspace.duckdb.damaged-*"))
    assert f"kept the previous file as {aside}" in out and aside.read_bytes() == damaged
    assert "lost: 1 audit entries after the snapshot" in out
    (lost,) = [line for line in out.splitlines() if "rename_type" in line]
    assert lost.split()[0] == "5" and "bob" in lost and '"name": "scratch"' in lost
    assert out.strip().endswith("0 error(s), 0 warning(s): workspace is sound")
    with WorkspaceService(home, NAME) as svc:
        assert "scratch" not in {t.name for t in svc.list_types()}
        assert [b.name for b in svc.batches()] == ["first", "second"]
    code, out, _ = run(["doctor", "--home", str(home)])
    assert code == 0 and out.strip().endswith("workspace is sound")


def test_restore_an_older_snapshot_sets_the_lost_batch_tokens_aside(home) -> None:
    code, out, err = run(["restore", "--home", str(home), "--snapshot", "1"])
    assert code == 0, err
    assert "from snapshot 1 (" in out and "lost: 4 audit entries" in out
    tokens = home / NAME / "tokens"
    assert (tokens / "batch-1.npz").is_file() and not (tokens / "batch-2.npz").exists()
    (aside,) = list(tokens.glob("lost-*/batch-2.npz"))
    assert f"set aside the crop tokens of a batch the snapshot lacks: {aside}" in out
    assert out.strip().endswith("workspace is sound")
    # restoring again keeps the first restore's file aside as well: nothing is deleted
    code, _, err = run(["restore", "--home", str(home), "--snapshot", "3"])
    assert code == 0, err
    assert len(list((home / NAME).glob("workspace.duckdb.damaged-*"))) >= 1


def test_restore_without_snapshots_is_a_clear_error(tmp_path) -> None:
    home = tmp_path / "home"
    with Workspace.open(home, NAME, embedding_dim=8, config=StorageConfig(snapshots=False)) as ws:
        ws.ingest_batch(make_batch(4, dim=8, seed=3))
    code, out, _ = run(["restore", "--home", str(home), "--list"])
    assert code == 0 and out.strip() == "workspace 'default' has no snapshot yet"
    code, out, err = run(["restore", "--home", str(home)])
    assert code == 2 and out == ""
    assert "protoatlas: error: workspace 'default'" in err and "has no snapshot under" in err
    assert "nothing to restore from" in err
    code, _, err = run(["restore", "--home", str(home), "--workspace", "other"])
    assert code == 2 and "no workspace 'other'" in err


def test_restore_an_unknown_snapshot_number(home) -> None:
    code, _, err = run(["restore", "--home", str(home), "--snapshot", "9"])
    assert code == 2 and "has no snapshot 9; it has 3, 2, 1" in err
    assert not list((home / NAME).glob("workspace.duckdb.damaged-*"))
