"""doctor finds every kind of damage (and nothing on a healthy workspace)."""

from __future__ import annotations

import pytest

from storage import Workspace, doctor, is_sound
from tests.storage_fixtures import make_batch


@pytest.fixture()
def ws(tmp_path):
    with Workspace.open(tmp_path, "w", embedding_dim=16) as w:
        w.ingest_batch(make_batch(10, n_types=2, seed=3, with_maps=True))
        a, b = sorted(w.list_types(), key=lambda t: t.id)
        w.rename_type(a.id, "crack", expected_version=1, actor="ann")
        w.move_regions(
            [w.type_members(b.id, limit=1)[0].region_id],
            a.id,
            expected={a.id: 2, b.id: 1},
            actor="ann",
        )
        w.confirm_type(b.id, expected_version=2, actor="bob")
        assert doctor(w) == []
        yield w


def _sql(ws, *statements):
    """Damage the workspace behind the API's back."""
    with ws.transaction() as con:
        for s in statements:
            con.execute(s)


def _errors(ws, **kw):
    problems = doctor(ws, **kw)
    assert not is_sound(problems)
    return " | ".join(f"{p.what} @ {p.where}" for p in problems if p.severity == "error")


def test_edited_audit_row_breaks_the_hash_chain(ws):
    _sql(ws, "UPDATE audit_log SET actor = 'mallory' WHERE seq = 2")
    assert "audit row content does not match its hash (edited) @ audit_log seq 2" in _errors(ws)


def test_deleted_audit_rows_are_noticed(ws):
    _sql(ws, "DELETE FROM audit_log WHERE seq = 2")
    text = _errors(ws)
    assert "jumps from 1 to 3" in text and "does not link" in text


def test_truncated_audit_tail_is_noticed(ws):
    _sql(ws, "DELETE FROM audit_log WHERE seq = (SELECT max(seq) FROM audit_log)")
    text = _errors(ws)
    assert "audit head in meta" in text
    assert "differs from its last audit entry" in text  # bob's confirm has no entry now


def test_type_changed_outside_the_api(ws):
    _sql(ws, "UPDATE types SET name = 'sneaky' WHERE name = 'crack'")
    assert "name 'crack' -> 'sneaky'" in _errors(ws)


def test_type_created_outside_the_api(ws):
    _sql(
        ws,
        "INSERT INTO types VALUES (50, 'ghost', 'confirmed', now()::TIMESTAMP, 1, "
        "'reviewer', now()::TIMESTAMP, NULL)",
        "INSERT INTO type_stats VALUES (50, 0, 0, 0)",
    )
    assert "type 50 ('ghost') has no audit entry" in _errors(ws)


def test_reviewer_assignment_changed_outside_the_api(ws):
    _sql(ws, "UPDATE assignments SET confidence = 0.5 WHERE source = 'reviewer'")
    text = _errors(ws)
    assert "1 reviewer assignments differ" in text and "type summary" in text


def test_broken_references(ws):
    _sql(ws, "DELETE FROM regions WHERE id = 3", "DELETE FROM model_versions")
    text = _errors(ws)
    assert "1 assignments of regions that do not exist (e.g. 3)" in text
    assert "1 embeddings of regions that do not exist" in text
    assert "embeddings of model versions that do not exist" in text
    assert "prototypes of model versions" in text and "batches whose model version" in text


def test_stale_summary(ws):
    _sql(ws, "UPDATE type_stats SET n_regions = n_regions + 1")
    assert "type summary of type" in _errors(ws)


def test_files_missing_changed_and_orphaned(ws):
    detail = ws.image_detail(1)
    detail.path.unlink()
    blob = detail.batches[0].map_path
    blob.write_bytes(blob.read_bytes()[::-1])  # same size, other content
    text = _errors(ws)
    assert "1 referenced files are missing" in text and "differ" not in text
    assert "1 files differ from their recorded size or sha256" in _errors(ws, verify_hashes=True)


def test_orphan_files_are_a_warning_and_removed_after_an_unfinished_write(ws, tmp_path):
    stray = ws.images.root / "ab" / ("ab" + "0" * 62 + ".png")
    stray.parent.mkdir(exist_ok=True)
    stray.write_bytes(b"left by a killed ingest")
    problems = doctor(ws)
    assert [p.severity for p in problems] == ["warning"] and "1 files no row" in problems[0].what
    assert is_sound(problems)
    ws.close()
    with Workspace.open(tmp_path, "w") as again:  # no unfinished write: no scan at open
        assert stray.exists()
    (tmp_path / "w" / "pending" / "123-abc").touch()  # what a killed ingest leaves
    with Workspace.open(tmp_path, "w") as again:
        assert not stray.exists() and doctor(again) == []
        assert list((tmp_path / "w" / "pending").iterdir()) == []
        stray.write_bytes(b"x")
        assert again.clean_orphans() == [stray] and not stray.exists()
