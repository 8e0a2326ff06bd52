"""Many reviewers at once (issue 18, "Load"): concurrent ``gradio_client`` reviewers on
loopback while a real batch is analysed lose and double nothing, the audit log replays to
the final state, and losers of a race are told it was a conflict. The long runs are
``benchmarks/bench_load.py`` (RELIABILITY.md); this is the short one, plus the races the
benchmark found, replayed deterministically."""

from __future__ import annotations

import threading

import pytest

from benchmarks.bench_webapp import build_workspace
from protoatlas.service import WorkspaceService
from protoatlas.service import answers as answers_module
from storage import ConflictError, SuggestionIn, Workspace
from storage.replay import differences, replay


@pytest.fixture
def home(tmp_path):
    build_workspace(tmp_path, n_images=12, n_types=3).close()
    return tmp_path


def _members(ws: Workspace, tid: int) -> list[int]:
    return [m.region_id for m in ws.type_members(tid, limit=1000)]


def test_a_move_of_regions_someone_moved_meanwhile_is_a_conflict(home) -> None:
    """Ann and Bob both saw region r in type A; Ann moves it to B, then Bob (with the
    version of A he saw) moves it to C: Bob is told someone changed A (a conflict), not
    to "pass the expected version" of B, which he never saw it in."""
    ws = Workspace.open(home, "default")
    try:
        a, b, c = (t.id for t in ws.list_types()[:3])
        r = _members(ws, a)[0]
        seen_a = ws.get_type(a).version
        ws.move_regions([r], b, expected={a: seen_a, b: ws.get_type(b).version}, actor="ann")
        with pytest.raises(ConflictError, match="changed by ann"):
            ws.move_regions([r], c, expected={a: seen_a, c: ws.get_type(c).version}, actor="bob")
        assert ws.get_type(c).n_regions == len(_members(ws, c))
        assert r in _members(ws, b)
    finally:
        ws.close()


def test_two_answers_to_one_question_apply_one_and_tell_the_other(home, monkeypatch) -> None:
    """Bob answers "yes" to "is A one type?" (his handler is held half-way); Ann answers
    "no" meanwhile. Exactly one answer counts; the other reviewer is told it was a
    conflict and has written nothing (before the fix Bob's confirm was applied although
    he was told "not applied")."""
    service = WorkspaceService(home, "default")
    try:
        ws = service.ws
        tid = ws.list_types()[0].id
        (sid,) = ws.replace_open_suggestions(
            [SuggestionIn(kind="confirm", target={"type_id": tid}, score=1.0, reason="test")]
        )
        entered, release = threading.Event(), threading.Event()
        confirm_yes = answers_module.HANDLERS[("confirm", "yes")]

        def held(self, s, a, picked, actor):
            entered.set()
            release.wait(5)
            return confirm_yes(self, s, a, picked, actor)

        monkeypatch.setitem(answers_module.HANDLERS, ("confirm", "yes"), held)
        outcome: dict[str, object] = {}

        def answer(who: str, text: str) -> None:
            try:
                outcome[who] = service.answer_suggestion(sid, text, actor=who)
            except Exception as exc:  # the loser's error, checked below
                outcome[who] = exc

        bob = threading.Thread(target=answer, args=("bob", "yes"))
        bob.start()
        assert entered.wait(5)
        ann = threading.Thread(target=answer, args=("ann", "no"))
        ann.start()
        ann.join(0.5)  # with the fix Ann waits for Bob's answer to finish
        release.set()
        bob.join(10)
        ann.join(10)
        losers = [w for w, o in outcome.items() if isinstance(o, Exception)]
        assert len(outcome) == 2 and len(losers) == 1, outcome
        (loser,) = losers
        assert isinstance(outcome[loser], ConflictError), outcome[loser]
        assert ws.audit(actor=loser) == [], [e.action for e in ws.audit(actor=loser)]
        winner = "ann" if loser == "bob" else "bob"
        assert [e.action for e in ws.audit(actor=winner)][0] == "answer_suggestion"
        with ws.read() as cur:
            folded = replay(cur)
            assert folded.breaks == [] and differences(cur, folded) == []
    finally:
        service.close()


def test_replay_finds_a_lost_update(home) -> None:
    """The replay check can fail: an audit entry whose before-state is not what the log
    said the type was (two writers acting on the same version) is a break."""
    ws = Workspace.open(home, "default")
    try:
        tid = ws.list_types()[0].id
        ws.rename_type(tid, "first", expected_version=ws.get_type(tid).version, actor="ann")
        ws.rename_type(tid, "second", expected_version=ws.get_type(tid).version, actor="bob")
        with ws.read() as cur:
            assert replay(cur).breaks == []
        # as if Bob's write had not seen Ann's: its before-state names the type "other"
        with ws.transaction() as con:
            con.execute(
                "UPDATE audit_log SET before = replace(before, '\"first\"', '\"other\"') "
                "WHERE seq = (SELECT max(seq) FROM audit_log)"
            )
        with ws.read() as cur:
            folded = replay(cur)
            diffs = differences(cur, folded)
        assert len(folded.breaks) == 1 and "rename_type by bob" in folded.breaks[0][1]
        assert diffs == []  # the final state still matches: only the chain shows it
    finally:
        ws.close()


@pytest.mark.slow
def test_five_reviewers_while_a_batch_is_analysed(tmp_path) -> None:
    pytest.importorskip("gradio_client")
    from benchmarks.bench_load import run_load

    r = run_load(
        reviewers=5,
        seconds=8,
        seed=1,
        images=60,
        types=6,
        batch_per_type=2,
        server="thread",
        tmp=str(tmp_path),
    )
    assert r["crashed_reviewers"] == []
    assert r["uploads"] and r["uploads"][0]["ok"], r["uploads"]
    audit, state = r["audit_check"], r["workspace_check"]
    assert audit["actors_distinct"]
    assert audit["acknowledged"] > 10, audit
    for key in ("lost", "doubled", "wrong_entry", "entry_for_noop", "orphan_entries"):
        assert audit[key] == 0, (key, audit["examples"])
    assert audit["applied_though_refused"] == 0, audit["examples"]
    assert state["replay_breaks"] == 0, state["replay_break_examples"]
    assert state["state_differs"] == 0, state["state_diff_examples"]
    assert state["doctor_errors"] == []
    assert r["tracebacks"] == 0 and r["http_5xx"] == 0, r["errors"]
    assert r["errors"] == {}, r["errors"]
    # losers of a race are told: every refusal that names another reviewer's change is
    # marked as a conflict, with a message that says so
    assert r["conflicts"] > 0 and r["conflicts"] == r["conflicts_told_why"]
    writes = sum(r["per_action"][a]["n"] for a in ("confirm", "rename", "move", "undo"))
    assert writes > 10
