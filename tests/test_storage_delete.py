"""Deleting a batch (``Workspace.delete_batch``): its rows and files go in one transaction,
the rest of the workspace stays sound, the audit records it, ids are never reused, and a
snapshot taken first brings it back."""

from __future__ import annotations

import pytest

from benchmarks.bench_webapp import make_batch
from storage import ConflictError, NotFoundError, SuggestionIn, Workspace, doctor

DIM = 16


def _errors(ws: Workspace) -> list:
    return [p for p in doctor(ws, verify_hashes=True) if p.severity == "error"]


def _count(ws: Workspace, sql: str, params=None) -> int:
    with ws.read() as cur:
        return int(cur.execute(sql, params or []).fetchone()[0])


@pytest.fixture
def two(tmp_path):
    """A workspace of two batches; the second repeats two of the first's images."""
    ws = Workspace.open(tmp_path, "w", embedding_dim=DIM)
    first = ws.ingest_batch(
        make_batch(n_images=8, n_types=2, dim=DIM, seed=1, name="first"), actor="up"
    )
    second_batch = make_batch(n_images=6, n_types=2, dim=DIM, seed=2, name="second", prefix="s/")
    shared = make_batch(n_images=8, n_types=2, dim=DIM, seed=1, name="x").images[:2]
    second_batch.images[:2] = shared  # the same content: stored once, listed by both
    second = ws.ingest_batch(second_batch, actor="up")
    yield ws, first, second
    ws.close()


def test_a_deleted_batch_leaves_no_row_and_no_file(two) -> None:
    ws, first, second = two
    kept_regions = {r.id for r in ws.regions_for_batch(first, with_masks=False)}
    gone_regions = {r.id for r in ws.regions_for_batch(second, with_masks=False)}
    n_files = sum(1 for p in ws.images.root.rglob("*") if p.is_file())
    n_images = _count(ws, "SELECT count(*) FROM images")
    out = ws.delete_batch(second, actor="ada")
    assert (out.batch_id, out.name, out.n_images, out.n_regions) == (
        second,
        "second",
        6,
        len(gone_regions),
    )
    assert out.n_images_removed == 4  # the 2 shared ones stay for the first batch
    assert [b.id for b in ws.batches()] == [first]
    assert {r.id for r in ws.regions_for_batch(first, with_masks=False)} == kept_regions
    gone = sorted(gone_regions)
    for table, col in (
        ("regions", "id"),
        ("assignments", "region_id"),
        ("embeddings", "region_id"),
    ):
        sql = f"SELECT count(*) FROM {table} WHERE {col} IN (SELECT unnest(?::BIGINT[]))"
        assert _count(ws, sql, [gone]) == 0, table
    assert _count(ws, "SELECT count(*) FROM batch_images WHERE batch_id = ?", [second]) == 0
    assert _count(ws, "SELECT count(*) FROM images") == n_images - 4
    # the files of the removed images are gone at once; every kept image still has its file
    assert sum(1 for p in ws.images.root.rglob("*") if p.is_file()) == n_files - 4
    assert not _errors(ws)
    entry = ws.audit(limit=1)[0]
    assert (entry.action, entry.actor) == ("delete_batch", "ada")
    assert entry.target["n_regions"] == len(gone_regions)


def test_a_delete_counts_in_the_types_and_conflicts_with_stale_views(two) -> None:
    ws, first, second = two
    before = {t.id: t for t in ws.list_types()}
    n_second = {}
    with ws.read() as cur:
        for tid, n in cur.execute(
            "SELECT type_id, count(*) FROM assignments a JOIN regions r ON r.id = a.region_id "
            "WHERE r.batch_id = ? AND type_id IS NOT NULL GROUP BY type_id",
            [second],
        ).fetchall():
            n_second[tid] = n
    out = ws.delete_batch(second, actor="ada")
    assert set(out.type_ids) == set(n_second)
    after = {t.id: t for t in ws.list_types()}
    for tid, n in n_second.items():
        assert after[tid].n_regions == before[tid].n_regions - n
        assert after[tid].version == before[tid].version + 1
    stale = next(iter(n_second))
    with pytest.raises(ConflictError):
        ws.rename_type(stale, "late", expected_version=before[stale].version, actor="rita")


def test_reviewer_decisions_on_its_regions_are_recorded_and_their_undo_refused(two) -> None:
    ws, first, second = two
    rids = sorted(r.id for r in ws.regions_for_batch(second, with_masks=False))[:2]
    t = ws.list_types()[0]
    expected = {x.id: x.version for x in ws.list_types()}
    ws.mark_normal(rids, expected=expected, actor="rita")
    ws.replace_open_suggestions([SuggestionIn(kind="confirm", target={"type_id": t.id})])
    out = ws.delete_batch(second, actor="ada")
    assert out.n_reviewed == 2
    entry = ws.audit(limit=1)[0]
    assert set(entry.before["assignments"]) == {str(r) for r in rids}
    assert all(v is None for v in entry.after["assignments"].values())
    assert ws.open_suggestions() == []  # the queue went stale with the batch
    assert not _errors(ws)  # the audit replay agrees with the state
    with pytest.raises(ConflictError, match="changed later by ada \\(delete_batch"):
        ws.undo("rita")
    assert not _errors(ws)


def test_undo_of_a_decision_on_deleted_regions_alone_is_refused(two) -> None:
    """Every region of the batch marked normal: the delete touches no type, so only the
    regions tell the undo that its decision is gone."""
    ws, first, second = two
    rids = sorted(r.id for r in ws.regions_for_batch(second, with_masks=False))
    ws.mark_normal(rids, expected={t.id: t.version for t in ws.list_types()}, actor="rita")
    assert ws.delete_batch(second, actor="ada").type_ids == ()
    with pytest.raises(ConflictError, match=f"{len(rids)} of its regions .* were deleted with"):
        ws.undo("rita")
    assert not _errors(ws)


def test_ids_are_never_reused_after_a_delete(two) -> None:
    ws, first, second = two
    last_region = max(r.id for r in ws.regions_for_batch(second, with_masks=False))
    with ws.read() as cur:
        last_image = cur.execute("SELECT max(id) FROM images").fetchone()[0]
    ws.delete_batch(second, actor="ada")
    again = ws.ingest_batch(
        make_batch(n_images=6, n_types=2, dim=DIM, seed=3, name="third", prefix="t/"), actor="up"
    )
    assert again > second
    assert min(r.id for r in ws.regions_for_batch(again, with_masks=False)) > last_region
    assert min(i for i, *_ in ws.batch_images(again)) > last_image
    assert not _errors(ws)


def test_an_unknown_batch_changes_nothing(two) -> None:
    ws, first, second = two
    n = len(ws.audit())
    with pytest.raises(NotFoundError, match="no batch with id 99"):
        ws.delete_batch(99, actor="ada")
    assert len(ws.audit()) == n and len(ws.batches()) == 2


def test_the_snapshot_before_the_delete_brings_the_batch_back(two, tmp_path) -> None:
    ws, first, second = two
    n_regions = len(ws.regions_for_batch(second, with_masks=False))
    ws.delete_batch(second, actor="ada")
    snap = ws.snapshots()[0]
    assert "before deleting batch" in snap.reason
    ws.close()
    Workspace.restore(tmp_path, "w", snapshot=snap.number)
    back = Workspace.open(tmp_path, "w")
    try:
        assert [b.id for b in back.batches()] == [first, second]
        assert len(back.regions_for_batch(second, with_masks=False)) == n_regions
        assert not _errors(back)
    finally:
        back.close()


def _aside(ws: Workspace) -> list:
    return sorted(p for p in (ws.root / "deleted").rglob("*") if p.is_file())


def test_the_files_wait_aside_until_no_snapshot_predates_the_delete(tmp_path) -> None:
    from storage import StorageConfig

    ws = Workspace.open(tmp_path, "w", embedding_dim=DIM, config=StorageConfig(snapshot_keep=2))
    try:
        ws.ingest_batch(make_batch(n_images=4, n_types=2, dim=DIM, seed=1, name="a"), actor="up")
        doomed = ws.ingest_batch(
            make_batch(n_images=4, n_types=2, dim=DIM, seed=2, name="b", prefix="b/"), actor="up"
        )
        out = ws.delete_batch(doomed, actor="ada")
        aside = _aside(ws)
        assert len([p for p in aside if "/images/" in str(p)]) == out.n_images_removed == 4
        assert all(f"{out.seq}-batch-{doomed}" in str(p) for p in aside)
        for n in range(2):  # two more batches: the snapshot from before the delete rotates out
            ws.ingest_batch(
                make_batch(
                    n_images=4, n_types=2, dim=DIM, seed=10 + n, name=f"c{n}", prefix=f"c{n}/"
                ),
                actor="up",
            )
            ws.wait_for_snapshots()
            assert _aside(ws), "kept while a snapshot from before the delete is kept"
        assert all(s.audit_seq >= out.seq for s in ws.snapshots())
    finally:
        ws.close()
    ws = Workspace.open(tmp_path, "w", config=StorageConfig(snapshot_keep=2))
    try:
        assert _aside(ws) == []  # removed at the writer open
        assert not _errors(ws)
    finally:
        ws.close()


def test_without_snapshots_the_files_go_at_once(tmp_path) -> None:
    from storage import StorageConfig

    ws = Workspace.open(tmp_path, "w", embedding_dim=DIM, config=StorageConfig(snapshots=False))
    try:
        ws.ingest_batch(make_batch(n_images=4, n_types=2, dim=DIM, seed=1, name="a"), actor="up")
        doomed = ws.ingest_batch(
            make_batch(n_images=4, n_types=2, dim=DIM, seed=2, name="b", prefix="b/"), actor="up"
        )
        ws.delete_batch(doomed, actor="ada")
        assert _aside(ws) == [] and not _errors(ws)
    finally:
        ws.close()


def test_the_audit_replay_agrees_after_a_delete(two) -> None:
    from storage.replay import differences, replay

    ws, first, second = two
    types = sorted(ws.list_types(), key=lambda t: t.id)
    a, b = types[0], types[1]
    ws.merge_types(a.id, b.id, expected={a.id: a.version, b.id: b.version}, actor="rita")
    rids = sorted(r.id for r in ws.regions_for_batch(second, with_masks=False))
    ws.move_regions(
        rids[:2], a.id, expected={t.id: t.version for t in ws.list_types()}, actor="rita"
    )
    ws.undo("rita")  # the log now holds their model-sourced state
    ws.mark_normal(rids[2:3], expected={t.id: t.version for t in ws.list_types()}, actor="rita")
    ws.delete_batch(second, actor="ada")
    ws.ingest_batch(
        make_batch(n_images=4, n_types=2, dim=DIM, seed=9, name="later", prefix="l/"), actor="up"
    )
    with ws.read() as cur:
        folded = replay(cur)
        assert folded.breaks == []
        assert differences(cur, folded) == []
    assert not _errors(ws)
