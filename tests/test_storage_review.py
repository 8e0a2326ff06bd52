"""Reviewer actions, optimistic concurrency, undo, label import, suggestions, audit."""

from __future__ import annotations

import numpy as np
import pytest

from storage import (
    AssignmentsIn,
    ConflictError,
    ModelVersionIn,
    NotFoundError,
    StorageError,
    SuggestionIn,
    ValidationError,
    Workspace,
    doctor,
)
from tests.storage_fixtures import make_batch


@pytest.fixture()
def ws(tmp_path):
    with Workspace.open(tmp_path, "w", embedding_dim=16) as w:
        w.ingest_batch(make_batch(30, n_types=3, seed=1))
        yield w


def _types(ws):
    return sorted(ws.list_types(include_merged=True), key=lambda t: t.id)


def _state(ws):
    """Everything a reviewer action may change, except versions and timestamps."""
    types = [(t.id, t.name, t.status, t.n_regions, t.n_images, t.merged_into) for t in _types(ws)]
    with ws.read() as cur:
        assignments = cur.execute("SELECT * FROM assignments ORDER BY region_id").fetchall()
    return types, assignments


def _members(ws, type_id):
    return [m.region_id for m in ws.type_members(type_id, limit=10_000)]


def test_confirm_reject_rename_bump_versions_and_write_audit(ws):
    a, b, _ = _types(ws)
    t = ws.confirm_type(a.id, expected_version=1, actor="ann")
    assert (t.status, t.version) == ("confirmed", 2)
    t = ws.rename_type(a.id, "Scratch", expected_version=2, actor="ann")
    assert (t.name, t.version) == ("Scratch", 3)
    assert ws.reject_type(b.id, expected_version=1, actor="bob").status == "rejected"
    entries = ws.audit(actor="ann")
    assert [e.action for e in entries] == ["rename_type", "confirm_type"]
    assert entries[0].before["types"][str(a.id)]["name"] == a.name
    assert entries[0].after["types"][str(a.id)] == {
        "name": "Scratch",
        "status": "confirmed",
        "origin": "model",
        "merged_into": None,
        "version": 3,
    }
    with pytest.raises(ValidationError, match="named 'scratch' already exists"):
        ws.rename_type(b.id, "  scratch ", expected_version=2, actor="bob")
    with pytest.raises(ValidationError, match="'good' is reserved"):
        ws.rename_type(b.id, "Good", expected_version=2, actor="bob")
    assert doctor(ws) == []


def test_stale_version_conflicts_and_nothing_is_applied_twice(ws):
    a = _types(ws)[0]
    seen = a.version  # two browser tabs read the types page
    ws.rename_type(a.id, "dent", expected_version=seen, actor="alice")
    n_audit = len(ws.audit())
    with pytest.raises(ConflictError) as err:
        ws.rename_type(a.id, "crack", expected_version=seen, actor="bob")
    msg = str(err.value)
    assert "type 'dent'" in msg and f"id {a.id}" in msg and "alice (rename_type)" in msg
    assert "expected version 1, it is now 2" in msg and "\n" not in msg
    assert (err.value.type_id, err.value.expected, err.value.actual) == (a.id, 1, 2)
    with pytest.raises(ConflictError):  # alice's own retry of the same request
        ws.rename_type(a.id, "dent", expected_version=seen, actor="alice")
    assert ws.get_type(a.id).name == "dent" and ws.get_type(a.id).version == 2
    assert len(ws.audit()) == n_audit


def test_every_touched_type_needs_an_expected_version(ws):
    a, b, _ = _types(ws)
    with pytest.raises(ValidationError, match=f"id {b.id}.* pass its expected version"):
        ws.merge_types(a.id, b.id, expected={a.id: 1}, actor="ann")
    with pytest.raises(NotFoundError, match="no type with id 404"):
        ws.merge_types(a.id, 404, expected={a.id: 1, 404: 1}, actor="ann")


def test_merge_moves_members_and_hides_the_absorbed_type(ws):
    a, b, c = _types(ws)
    before_b = ws.type_members(b.id, limit=1000)
    kept = ws.merge_types(a.id, b.id, expected={a.id: 1, b.id: 1}, actor="ann")
    assert kept.n_regions == a.n_regions + b.n_regions and kept.version == 2
    assert [t.id for t in ws.list_types()] == sorted(
        [a.id, c.id], key=lambda i: -ws.get_type(i).n_regions
    )
    gone = ws.get_type(b.id)
    assert (gone.status, gone.merged_into, gone.n_regions) == ("merged", a.id, 0)
    after = {m.region_id: m for m in ws.type_members(a.id, limit=1000)}
    for m in before_b:  # a merge keeps each assignment's source and confidence
        assert after[m.region_id].confidence == m.confidence
        assert after[m.region_id].source == "model"
    with pytest.raises(ValidationError, match="was merged into type"):
        ws.confirm_type(b.id, expected_version=2, actor="ann")
    assert doctor(ws) == []


def test_split_creates_types_from_groups_and_leaves_the_rest(ws):
    a = _types(ws)[0]
    members = _members(ws, a.id)
    g1, g2 = members[:3], members[3:5]
    new = ws.split_type(a.id, [g1, g2], expected_version=1, actor="ann", names=["hairline", None])
    assert len(new) == 2
    assert sorted(_members(ws, new[0])) == sorted(g1)
    assert sorted(_members(ws, new[1])) == sorted(g2)
    assert sorted(_members(ws, a.id)) == sorted(members[5:])
    t1, t2 = ws.get_type(new[0]), ws.get_type(new[1])
    assert (t1.name, t1.status, t1.origin) == ("hairline", "proposed", "reviewer")
    assert t2.name == f"T{t2.id}" and ws.get_type(a.id).version == 2
    other = _members(ws, _types(ws)[1].id)[0]
    with pytest.raises(ValidationError, match=f"region {other} is not in type"):
        ws.split_type(a.id, [[other]], expected_version=2, actor="ann")
    assert doctor(ws) == []


def test_move_and_mark_normal(ws):
    a, b, c = _types(ws)
    ra, rb = _members(ws, a.id)[0], _members(ws, b.id)[0]
    with pytest.raises(ValidationError, match=f"id {b.id}"):
        ws.move_regions([ra, rb], c.id, expected={a.id: 1, c.id: 1}, actor="ann")
    ws.move_regions([ra, rb], c.id, expected={a.id: 1, b.id: 1, c.id: 1}, actor="ann")
    types = {t.id: t for t in _types(ws)}
    assert types[c.id].n_regions == c.n_regions + 2 and types[a.id].n_regions == a.n_regions - 1
    assert all(v.version == 2 for v in types.values())
    ws.mark_normal([ra], expected={c.id: 2}, actor="ann")
    region = next(r for r in ws.regions_for_batch(1) if r.id == ra)
    assert region.is_normal and region.type_id is None and region.source == "reviewer"
    assert ws.get_type(c.id).n_regions == c.n_regions + 1
    ws.reject_type(b.id, expected_version=2, actor="ann")
    with pytest.raises(ValidationError, match="is rejected"):
        ws.move_regions([ra], b.id, expected={b.id: 3}, actor="ann")
    ws.move_regions([ra], a.id, expected={a.id: 2}, actor="ann")  # a normal region comes back
    assert not next(r for r in ws.regions_for_batch(1) if r.id == ra).is_normal
    assert doctor(ws) == []


def _do(ws, action):
    a, b, c = _types(ws)
    if action == "confirm":
        ws.confirm_type(a.id, expected_version=a.version, actor="ann")
    elif action == "rename":
        ws.rename_type(a.id, "renamed", expected_version=a.version, actor="ann")
    elif action == "merge":
        ws.merge_types(a.id, b.id, expected={a.id: a.version, b.id: b.version}, actor="ann")
    elif action == "split":
        ws.split_type(a.id, [_members(ws, a.id)[:2]], expected_version=a.version, actor="ann")
    elif action == "move":
        ws.move_regions(
            _members(ws, a.id)[:3], c.id, expected={a.id: a.version, c.id: c.version}, actor="ann"
        )
    elif action == "normal":
        ws.mark_normal(_members(ws, b.id)[:2], expected={b.id: b.version}, actor="ann")


@pytest.mark.parametrize("action", ["confirm", "rename", "merge", "split", "move", "normal"])
def test_undo_restores_the_state_before_the_action(ws, action):
    ws.rename_type(_types(ws)[2].id, "other", expected_version=1, actor="bob")
    before = _state(ws)
    versions = {t.id: t.version for t in _types(ws)}
    _do(ws, action)
    assert _state(ws) != before
    entry = ws.undo("ann")
    assert entry.action == "undo" and entry.actor == "ann"
    assert _state(ws) == before
    for t in _types(ws):  # versions move forward, so stale clients still conflict
        assert t.version >= versions.get(t.id, 0)
    assert doctor(ws) == []
    with pytest.raises(StorageError, match="ann has nothing to undo"):
        ws.undo("ann")


def test_undo_walks_back_and_conflicts_with_later_changes_by_others(ws):
    a, b, c = _types(ws)
    start = _state(ws)
    ws.confirm_type(a.id, expected_version=1, actor="ann")
    ws.merge_types(a.id, b.id, expected={a.id: 2, b.id: 1}, actor="ann")
    ws.rename_type(a.id, "crack", expected_version=3, actor="bob")
    mid = _state(ws)
    with pytest.raises(
        ConflictError,
        match=r"cannot undo merge_types .* changed later by bob "
        r"\(rename_type",
    ):
        ws.undo("ann")
    assert _state(ws) == mid
    ws.undo("bob")
    ws.undo("ann")  # the merge
    ws.undo("ann")  # the confirm
    assert _state(ws) == start
    assert [e.action for e in ws.audit(action="undo")] == ["undo"] * 3
    assert doctor(ws) == []


def test_model_retrain_after_an_action_blocks_its_undo(ws):
    a, b, _ = _types(ws)
    ws.move_regions(_members(ws, a.id)[:1], b.id, expected={a.id: 1, b.id: 1}, actor="ann")
    ids, _ = ws.embeddings()
    ws.apply_retrain(
        ModelVersionIn(kind="retrain"),
        AssignmentsIn(regions=ids, types=[a.id] * len(ids), confidence=np.full(len(ids), 0.5)),
    )
    with pytest.raises(ConflictError, match="changed later by model \\(apply_retrain"):
        ws.undo("ann")


def test_import_labels(ws, tmp_path):
    a = _types(ws)[0]
    ws.rename_type(a.id, "Scratch", expected_version=1, actor="ann")
    csv = tmp_path / "labels.csv"
    csv.write_text(
        "image,label\nimg/000000.png,scratch\nimg/000001.png,dent\n"
        "img/000002.png,good\nmissing.png,dent\nimg/000003.png,\n"
    )
    report = ws.import_labels(csv, actor="ann")
    assert report.rows == 5 and report.images_matched == 3
    assert report.unknown_images == ["missing.png"]
    assert report.regions_assigned == 4 and report.regions_normal == 2
    assert len(report.types_created) == 1
    dent = ws.get_type(report.types_created[0])
    assert (dent.name, dent.status, dent.origin, dent.n_regions) == (
        "dent",
        "confirmed",
        "reviewer",
        2,
    )
    assert ws.get_type(a.id).status == "confirmed"  # existing name, any case, is confirmed
    detail = ws.image_detail(1)
    assert {(r.type_id, r.source, r.confidence) for r in detail.regions} == {
        (a.id, "reviewer", 1.0)
    }
    # a retrain cannot move them
    ids, _ = ws.embeddings()
    ws.apply_retrain(
        ModelVersionIn(kind="retrain"),
        AssignmentsIn(regions=ids, types=[None] * len(ids), confidence=np.zeros(len(ids))),
    )
    assert {r.type_id for r in ws.image_detail(1).regions} == {a.id}
    assert doctor(ws) == []


def test_import_labels_errors(ws, tmp_path):
    ws.ingest_batch(make_batch(2, seed=1, name="second"))  # same names in batch 2
    csv = tmp_path / "l.csv"
    csv.write_text("image,label\nimg/000000.png,dent\n")
    with pytest.raises(ValidationError, match="is in batches 1 and 2; pass batch_id"):
        ws.import_labels(csv, actor="ann")
    assert ws.import_labels(csv, actor="ann", batch_id=2).images_matched == 1
    csv.write_text("file,class\na,b\n")
    with pytest.raises(ValidationError, match="needs columns 'image' and 'label'"):
        ws.import_labels(csv, actor="ann")
    csv.write_text("image,label\nnope.png,dent\n")
    with pytest.raises(ValidationError, match="none of the 1 images"):
        ws.import_labels(csv, actor="ann")
    csv.write_text("image,label\nimg/000004.png,dent\nimg/000004.png,crack\n")
    with pytest.raises(ValidationError, match="two labels"):
        ws.import_labels(csv, actor="ann")


def test_import_labels_can_be_undone(ws, tmp_path):
    before = _state(ws)
    csv = tmp_path / "labels.csv"
    csv.write_text("image,label\nimg/000000.png,dent\nimg/000001.png,good\n")
    ws.import_labels(csv, actor="ann")
    ws.undo("ann")
    assert _state(ws) == before
    assert doctor(ws) == []


def test_suggestions_lifecycle(ws):
    first = ws.replace_open_suggestions(
        [
            SuggestionIn("merge", {"type_ids": [1, 2]}, 0.4, "a"),
            SuggestionIn("name", {"type_id": 3}, 0.9, "b"),
        ]
    )
    assert [s.id for s in ws.open_suggestions()] == [first[1], first[0]]  # by score
    answered = ws.answer_suggestion(first[1], "crack", actor="ann")
    assert (answered.status, answered.answer, answered.answered_by) == ("answered", "crack", "ann")
    with pytest.raises(ConflictError, match="already answered by ann"):
        ws.answer_suggestion(first[1], "dent", actor="bob")
    ws.answer_suggestion(first[0], None, actor="bob", skip=True)
    ws.undo("bob")  # reopens the skipped one
    assert [s.id for s in ws.open_suggestions()] == [first[0]]
    second = ws.replace_open_suggestions([SuggestionIn("merge", {"type_ids": [2, 3]}, 0.5)])
    assert [s.id for s in ws.open_suggestions()] == second
    assert {s.id: s.status for s in ws.suggestions()} == {
        first[0]: "stale",
        first[1]: "answered",
        second[0]: "open",
    }
    with pytest.raises(NotFoundError):
        ws.answer_suggestion(999, "x", actor="ann")
    assert doctor(ws) == []


def test_audit_filters(ws):
    a, b, _ = _types(ws)
    ws.confirm_type(a.id, expected_version=1, actor="ann")
    ws.reject_type(b.id, expected_version=1, actor="bob")
    assert [e.action for e in ws.audit(actor="bob")] == ["reject_type"]
    assert [e.action for e in ws.audit(type_id=a.id)] == ["confirm_type", "ingest_batch"]
    assert [e.actor for e in ws.audit(action="confirm_type")] == ["ann"]
    assert len(ws.audit(limit=1)) == 1
    seqs = [e.seq for e in ws.audit()]
    assert seqs == sorted(seqs, reverse=True)
