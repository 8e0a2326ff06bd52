"""Undo from a History row: a reviewer's own entry, while nothing later touched its types
(issue: review screens, "History ... with undo from a row where it is still possible")."""

from __future__ import annotations

import pytest

from benchmarks.bench_webapp import build_workspace
from protoatlas.service import ConflictError, NotFoundError, ValidationError, WorkspaceService
from webapp.views import Views


@pytest.fixture()
def views(tmp_path):
    ws = build_workspace(tmp_path, n_images=24, n_types=3, type_names=["crack", "dent", "stain"])
    service = WorkspaceService.over(ws)
    yield Views(service)
    service.close()


def _seq(views: Views, action: str, actor: str) -> int:
    return next(e.seq for e in views.service.audit(actor=actor, action=action, limit=50))


def test_an_older_entry_is_undone_while_later_ones_touch_other_types(views) -> None:
    svc = views.service
    a, b, _ = sorted(views.types(), key=lambda t: t.id)
    svc.rename_type(a.id, "first", actor="ann")
    old = _seq(views, "rename_type", "ann")
    svc.confirm_type(b.id, expected_version=svc.get_type(b.id).version, actor="ann")
    entry = svc.undo("ann", old)  # not the last one: the confirm of b stays
    assert entry.target["undo_of"] == old
    assert svc.get_type(a.id).name == "crack"
    assert svc.get_type(b.id).status == "confirmed"


def test_a_row_cannot_be_undone_once_a_later_action_touched_its_type(views) -> None:
    svc = views.service
    a = sorted(views.types(), key=lambda t: t.id)[0]
    svc.rename_type(a.id, "first", actor="ann")
    old = _seq(views, "rename_type", "ann")
    svc.confirm_type(a.id, expected_version=svc.get_type(a.id).version, actor="ann")
    with pytest.raises(ConflictError, match="changed later by ann"):
        svc.undo("ann", old)
    assert svc.get_type(a.id).name == "first"  # nothing changed


def test_someone_elses_an_undone_or_a_non_reviewer_entry_is_refused(views) -> None:
    svc = views.service
    a = sorted(views.types(), key=lambda t: t.id)[0]
    svc.rename_type(a.id, "first", actor="ann")
    seq = _seq(views, "rename_type", "ann")
    with pytest.raises(ConflictError, match="is ann's action"):
        svc.undo("bob", seq)
    svc.undo("ann", seq)
    with pytest.raises(ConflictError, match="undone already"):
        svc.undo("ann", seq)
    ingest = svc.audit(action="ingest_batch", limit=1)[0].seq
    with pytest.raises(ValidationError, match="not a reviewer action"):
        svc.undo("ann", ingest)
    with pytest.raises(NotFoundError, match="no audit entry #99999"):
        svc.undo("ann", 99999)


def test_the_history_says_which_rows_the_reviewer_may_undo(views) -> None:
    svc = views.service
    a, b, _ = sorted(views.types(), key=lambda t: t.id)
    svc.rename_type(a.id, "first", actor="ann")
    svc.rename_type(b.id, "second", actor="bob")
    ann, bob = _seq(views, "rename_type", "ann"), _seq(views, "rename_type", "bob")
    state = {row[0]: row[-1] for row in views.audit_rows(me="ann")}
    assert state[ann] == "possible" and state[bob] == ""
    out = views.type_action(-1, "undo", str(ann), actor="ann")
    assert out["ok"] and f"history #{ann}" in out["message"]
    state = {row[0]: row[-1] for row in views.audit_rows(me="ann")}
    assert state[ann] == "undone"
    refused = views.type_action(-1, "undo", str(bob), actor="ann")
    assert not refused["ok"] and "only bob can undo it" in refused["message"]
    assert not views.type_action(-1, "undo", "abc", actor="ann")["ok"]


def test_history_times_are_in_the_reviewers_time_zone(views) -> None:
    utc = views.audit_rows()[0][1]
    berlin = views.audit_rows(tz="Europe/Berlin")[0][1]
    assert " UTC " in utc and (" CET " in berlin or " CEST " in berlin)
    assert utc != berlin
    assert " UTC " in views.audit_rows(tz="Not/AZone")[0][1]
