"""WorkspaceService: uploads (discover, assign), retraining, crash safety, answers to
suggestions. One discovery per session (tests/service_fixtures.py); tests that change a
workspace work on a copy of it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from engine.discovery import DiscoveryModel
from protoatlas.service import Answer, WorkspaceService, region_table
from storage import ConflictError, SuggestionIn
from tests.service_fixtures import (
    MARKER,
    WS,
    copy_home,
    data_root,
    discovered_home,
    fast_config,
    shared_base,
    zip_folder,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> tuple[Path, list[tuple[str, float]]]:
    return discovered_home(shared_base(tmp_path_factory))


@pytest.fixture
def service(base, tmp_path):
    home = copy_home(base[0], tmp_path / "home")
    with WorkspaceService(home, WS, config=fast_config()) as svc:
        yield svc


def assignments(ws) -> list[tuple]:
    with ws.read() as cur:
        return cur.execute(
            "SELECT region_id, type_id, source, is_normal, model_version, "
            "round(confidence, 5) FROM assignments ORDER BY region_id"
        ).fetchall()


def count(ws, table: str) -> int:
    with ws.read() as cur:
        return cur.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def errors(problems) -> list:
    return [p for p in problems if p.severity == "error"]


def assert_progress(calls: list[tuple[str, float]]) -> None:
    fractions = [f for _, f in calls]
    assert len(fractions) > 5
    assert fractions[0] == 0.0 and calls[-1] == ("done", 1.0)
    assert all(b >= a for a, b in zip(fractions, fractions[1:])), calls
    assert all(0.0 <= f <= 1.0 for f in fractions)


def live_types(ws) -> dict[int, object]:
    return {t.id: t for t in ws.list_types() if t.status in ("proposed", "confirmed")}


# ============================================================================== uploads
def test_first_batch_without_normals_is_a_clear_error(tmp_path, tmp_path_factory) -> None:
    data = data_root(shared_base(tmp_path_factory), "first")
    with WorkspaceService(tmp_path, WS, config=fast_config()) as svc:
        with pytest.raises(ValueError, match="first batch .*needs known-good images"):
            svc.upload_batch(data / "test")
        assert svc.ws.batches() == [] and svc.ws.latest_model_version() is None


def test_first_batch_discovers_types_and_stores_everything(service, base) -> None:
    ws = service.ws
    (batch,) = ws.batches()
    assert batch.name == "first" and batch.params["mode"] == "discover"
    assert batch.n_images == 14 and batch.n_regions > 0
    types = live_types(ws)
    assert len(types) == 3 and {t.status for t in types.values()} == {"proposed"}
    assert {t.origin for t in types.values()} == {"model"}
    regions = ws.regions_for_batch(batch.id, with_masks=False)
    assert all(r.source == "model" for r in regions)
    typed = {r.type_id for r in regions if r.type_id is not None}
    assert typed == set(types)
    # candidates (the strongest region of an image passed just below the threshold) are
    # stored judged normal, without a type; the others are the found regions
    found = [r for r in regions if not r.is_normal]
    assert all(r.type_id is None for r in regions if r.is_normal)
    assert sum(r.type_id is not None for r in found) >= len(found) - 2  # few outliers
    assert sum(t.n_regions for t in types.values()) == sum(r.type_id is not None for r in regions)

    mv = ws.latest_model_version()
    assert mv.kind == "discover" and batch.model_version == mv.id
    assert mv.blob_path.is_file() and mv.blob_path.stat().st_size > 0
    model = DiscoveryModel.load(mv.blob_path, device="cpu")  # the blob is the engine model
    assert len(model.type_ids) == 3
    ids, emb = ws.embeddings(mv.id)
    assert sorted(ids.tolist()) == sorted(r.id for r in regions)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-3)
    p_ids, _, n_members = ws.prototypes(mv.id)
    assert set(p_ids.tolist()) == set(types)

    path = service.tokens_path(batch.id)
    assert path.is_file()
    tok_ids, tokens = service.load_tokens(batch.id)
    assert tok_ids.tolist() == sorted(r.id for r in regions) and len(tokens) == len(regions)
    assert service.doctor() == []
    assert_progress(base[1])
    assert {s for s, _ in base[1]} >= {"fit", "detect", "types", "store", "done"}


def test_the_same_images_uploaded_again_are_refused_and_nothing_is_stored(
    service, tmp_path, tmp_path_factory
) -> None:
    data = data_root(shared_base(tmp_path_factory), "first")
    n_regions = sum(b.n_regions for b in service.batches())
    with pytest.raises(ValueError, match="already in the workspace"):
        service.upload_batch(data / "test", batch_name="again")
    assert [b.name for b in service.batches()] == ["first"]
    assert sum(b.n_regions for b in service.batches()) == n_regions


def test_images_already_in_the_workspace_are_skipped_and_said_so(
    service, tmp_path, tmp_path_factory
) -> None:
    first = data_root(shared_base(tmp_path_factory), "first")
    new = data_root(shared_base(tmp_path_factory), "second")
    folder = tmp_path / "mixed"
    (folder / "old").mkdir(parents=True)
    old = sorted((first / "test").rglob("*.png"))[:3]
    for i, p in enumerate(old):
        shutil.copyfile(p, folder / "old" / f"{i}.png")
    shutil.copyfile(sorted((new / "test").rglob("*.png"))[0], folder / "new.png")
    report = service.upload_batch(folder, batch_name="mixed")
    assert report.n_images == 1
    reasons = {s.name: s.reason for s in report.skipped}
    assert set(reasons) == {f"old/{i}.png" for i in range(3)}
    assert all("already in the workspace" in r and "batch 'first'" in r for r in reasons.values())


@pytest.fixture(scope="module")
def second(base, tmp_path_factory):
    """The discovered workspace after a second upload: a zip of new images of the same
    types, a few of a novel type and one image twice."""
    tmp = tmp_path_factory.mktemp("second")
    data = data_root(shared_base(tmp_path_factory), "second")
    archive = zip_folder(
        data / "test",
        tmp / "batch2.zip",
        extra={"zz/again.png": data / "test" / "scratch" / "000.png"},
    )
    home = copy_home(base[0], tmp / "home")
    outliers: list[np.ndarray] = []
    original = DiscoveryModel._propose_new_types

    def spy(self, result, idx):
        outliers.append(np.asarray(idx).copy())
        return original(self, result, idx)

    calls: list[tuple[str, float]] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(DiscoveryModel, "_propose_new_types", spy)
        with WorkspaceService(home, WS, config=fast_config()) as svc:
            before = {
                "types": set(live_types(svc.ws)),
                "mv": svc.ws.latest_model_version().id,
                "assignments": assignments(svc.ws),
            }
            report = svc.upload_batch(
                archive, batch_name="second", progress=lambda s, f: calls.append((s, f))
            )
    n_files = sum(1 for p in (data / "test").rglob("*.png")) + 1
    return {
        "home": home,
        "report": report,
        "before": before,
        "calls": calls,
        "outliers": outliers,
        "n_files": n_files,
    }


def test_second_batch_is_sorted_into_existing_types(second) -> None:
    rep, before = second["report"], second["before"]
    assert rep.mode == "assign" and rep.batch_id == 2
    assert rep.n_images == second["n_files"] - 1  # the repeated image is kept once
    dupes = [s for s in rep.skipped if "identical to" in s.reason]
    assert [(s.name, s.reason) for s in dupes] == [
        ("zz/again.png", "identical to scratch/000.png (kept once)")
    ]
    assert_progress(second["calls"])
    with WorkspaceService(second["home"], WS, config=fast_config()) as svc:
        ws = svc.ws
        assert ws.latest_model_version().id == before["mv"]  # no new model version
        b2 = ws.batches()[1]
        assert b2.model_version == before["mv"] and b2.params["mode"] == "assign"
        names = {n for _, n, _, _ in ws.batch_images(b2.id)}
        assert "zz/again.png" not in names and "scratch/000.png" in names
        regions = ws.regions_for_batch(b2.id, with_masks=False)
        assert len([r for r in regions if not r.is_normal]) == rep.n_regions > 0
        assert len(regions) == rep.n_regions + rep.n_candidates
        types = live_types(ws)
        in_batch = {r.type_id for r in regions if r.type_id is not None}
        new = sorted(set(types) - before["types"])
        assert rep.new_type_ids == new
        assert in_batch & before["types"], "nothing was sorted into an existing type"
        assert all(t > max(before["types"]) and types[t].status == "proposed" for t in new)
        assert in_batch <= before["types"] | set(new)
        # new types only for misfits: their regions were the model's outliers
        row_of = {r.id: i for i, r in enumerate(sorted(regions, key=lambda r: r.id))}
        misfits = set(np.concatenate(second["outliers"]).tolist()) if second["outliers"] else set()
        for r in regions:
            if r.type_id in new:
                assert row_of[r.id] in misfits
            elif r.type_id is not None:
                assert row_of[r.id] not in misfits
        # the first batch is untouched, the new batch has its tokens
        assert [a for a in assignments(ws) if a[0] < min(row_of)] == before["assignments"]
        tok_ids, _ = svc.load_tokens(b2.id)
        assert tok_ids.tolist() == sorted(r.id for r in regions)
        assert svc.doctor() == []


# ============================================================================ retraining
def _review_then_retrain(home: Path) -> dict:
    """Confirm the largest type, move a region of another type into it, mark one region
    normal; retrain. Returns what the tests compare."""
    with WorkspaceService(home, WS, config=fast_config()) as svc:
        ws = svc.ws
        types = sorted(live_types(ws).values(), key=lambda t: (-t.n_regions, t.id))
        keep, other = types[0], types[1]
        ws.confirm_type(keep.id, expected_version=keep.version, actor="alice")
        members = [m.region_id for m in ws.type_members(other.id)]
        moved, normal = members[0], members[1]
        svc_versions = {t.id: t.version for t in ws.list_types()}
        ws.move_regions(
            [moved],
            keep.id,
            expected={keep.id: svc_versions[keep.id], other.id: svc_versions[other.id]},
            actor="alice",
        )
        ws.mark_normal([normal], expected={other.id: ws.get_type(other.id).version}, actor="alice")
        mv_before = ws.latest_model_version().id
        stages: list[tuple[str, float]] = []
        mv = svc.retrain(actor="model", progress=lambda s, f: stages.append((s, f)))
        return {
            "keep": keep.id,
            "other": other.id,
            "moved": moved,
            "normal": normal,
            "mv_before": mv_before,
            "mv": mv,
            "stages": stages,
            "assignments": assignments(ws),
        }


def test_a_batch_with_no_type_left_to_sort_into_discovers_its_own(
    base, tmp_path, tmp_path_factory
) -> None:
    """Every type rejected or merged away: the next upload discovers the batch's types
    with the workspace's detector (before: the whole analysis ran, then "the model has no
    types yet")."""
    data = data_root(shared_base(tmp_path_factory), "second")
    archive = zip_folder(data / "test", tmp_path / "batch2.zip")
    home = copy_home(base[0], tmp_path / "home")
    with WorkspaceService(home, WS, config=fast_config()) as svc:
        for t in list(live_types(svc.ws).values()):
            svc.reject_type(t.id, actor="ann")
        assert not live_types(svc.ws)
        report = svc.upload_batch(archive, batch_name="after-rejects")
        assert report.mode == "discover" and report.new_type_ids
        assert set(report.new_type_ids) <= set(live_types(svc.ws))
        assert not errors(svc.doctor())


@pytest.fixture(scope="module")
def retrained(base, tmp_path_factory):
    home = copy_home(base[0], tmp_path_factory.mktemp("retrained") / "home")
    return home, _review_then_retrain(home)


def test_retrain_learns_from_confirmed_types_and_keeps_reviewer_decisions(retrained) -> None:
    home, got = retrained
    assert got["mv"] == got["mv_before"] + 1
    assert [s for s, _ in got["stages"]][0] == "load" and got["stages"][-1] == ("done", 1.0)
    with WorkspaceService(home, WS, config=fast_config()) as svc:
        ws = svc.ws
        mv = ws.latest_model_version()
        assert mv.id == got["mv"] and mv.kind == "retrain" and mv.parent == got["mv_before"]
        assert mv.blob_path.is_file() and mv.metrics["n_known"] == 1
        table = region_table(ws)
        row = {int(r): i for i, r in enumerate(table.region_ids)}
        # the reviewer's decisions stand
        i = row[got["moved"]]
        assert table.type_ids[i] == got["keep"] and table.reviewed[i]
        assert table.is_normal[row[got["normal"]]]
        assert ws.get_type(got["keep"]).status == "confirmed"
        # embeddings of the new version: every region with tokens except the normal one
        ids, _ = ws.embeddings(mv.id)
        with_tokens = set(svc.load_tokens(1)[0].tolist())
        normal = {int(r) for r, n in zip(table.region_ids, table.is_normal) if n}
        assert got["normal"] in normal
        assert set(ids.tolist()) == with_tokens - normal
        # prototypes: every live type with members
        p_ids, p_mat, _ = ws.prototypes(mv.id)
        used = {t.id for t in live_types(ws).values() if t.n_regions > 0}
        assert used <= set(p_ids.tolist())
        assert set(p_ids.tolist()) <= set(live_types(ws))
        # model assignments come from the new version
        model_rows = [a for a in assignments(ws) if a[2] == "model" and a[1] is not None]
        assert model_rows and all(a[4] == mv.id for a in model_rows)
        assert ws.audit(action="apply_retrain", limit=1)[0].actor == "model"
        assert errors(svc.doctor()) == []
        # the retrained model loads with the workspace's types as its index
        model = svc.model()
        assert set(model.type_ids.tolist()) == set(p_ids.tolist()) & set(live_types(ws))


def test_retrain_is_deterministic(retrained, base, tmp_path) -> None:
    home = copy_home(base[0], tmp_path / "home")
    again = _review_then_retrain(home)
    assert again["assignments"] == retrained[1]["assignments"]


def test_doctor_is_sound_after_a_retrain(retrained) -> None:
    with WorkspaceService(retrained[0], WS, config=fast_config()) as svc:
        assert errors(svc.doctor()) == []


def test_retrain_leaves_out_a_batch_without_tokens(second, tmp_path) -> None:
    home = copy_home(second["home"], tmp_path / "home")
    with WorkspaceService(home, WS, config=fast_config()) as svc:
        svc.tokens_path(1).unlink()
        warnings = svc.doctor()
        assert [(p.severity, p.where) for p in warnings] == [("warning", "batch 1 (first)")]
        assert "crop tokens missing" in warnings[0].what
        before = assignments(svc.ws)
        first_ids = {r.id for r in svc.ws.regions_for_batch(1, with_masks=False)}
        mv = svc.retrain()
        assert mv is not None
        ids, _ = svc.ws.embeddings(mv)
        normal = {r.id for r in svc.ws.regions_for_batch(2, with_masks=False) if r.is_normal}
        assert set(ids.tolist()) == set(svc.load_tokens(2)[0].tolist()) - normal
        after = assignments(svc.ws)
        assert [a for a in after if a[0] in first_ids] == [a for a in before if a[0] in first_ids]
        problems = svc.doctor()
        assert [p.where for p in problems if p.severity == "warning"] == ["batch 1 (first)"]
        assert errors(problems) == []


def _members(ws) -> dict[int, set[int]]:
    table = region_table(ws)
    out: dict[int, set[int]] = {}
    for r, t in zip(table.region_ids, table.type_ids):
        out.setdefault(int(t), set()).add(int(r))
    return out


def test_no_to_confirm_makes_the_retrain_split_that_type_and_move_nothing_else(
    base, tmp_path
) -> None:
    home = copy_home(base[0], tmp_path / "home")
    with WorkspaceService(home, WS, config=fast_config()) as svc:
        ws = svc.ws
        mixed, other = by_size(svc)[:2]
        ws.confirm_type(other.id, expected_version=other.version, actor="bob")
        sid = ask(svc, "confirm", {"type_id": mixed.id, "n_regions": mixed.n_regions})
        out = svc.answer_suggestion(sid, "no", actor="bob")
        assert out["applied"].startswith("marked as more than one type")
        assert svc.mixed_types() == {mixed.id}
        before = _members(ws)
        n_proposed = sum(
            1 for t in live_types(ws).values() if t.status == "proposed" and t.n_regions
        )
        svc.retrain()
        after = _members(ws)
        assert ws.latest_model_version().metrics["n_novel"] == n_proposed + 1
        new = set(after) - set(before)
        assert new, "the mixed type asked for one more prototype but no type was made"
        for t in new:  # new types form from the mixed type's members and untyped regions
            assert after[t] <= before[mixed.id] | before.get(-1, set())
        for t, members in before.items():  # other regions move only into the confirmed type
            if t not in (mixed.id, -1):
                assert members <= after[t] | (after[other.id] if t != other.id else set())
        assert before[other.id] <= after[other.id]
        assert after[mixed.id] < before[mixed.id]
        assert errors(svc.doctor()) == []
        # the "no" was acted on once: the next retrain asks for no further prototype
        retrains = ws.model_versions("retrain")
        assert [m.metrics["split_for"] for m in retrains] == [[sid]]
        assert [m.kind for m in ws.model_versions()][-1] == "retrain"
        svc.retrain()
        assert ws.model_versions("retrain")[-1].metrics["split_for"] == []
        assert set(_members(ws)) <= set(after) | {-1}


def test_retrain_without_a_model_does_nothing(tmp_path) -> None:
    with WorkspaceService(tmp_path, WS, config=fast_config()) as svc:
        assert svc.retrain() is None


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_killed_retrain_leaves_the_workspace_as_before(base, tmp_path) -> None:
    home = copy_home(base[0], tmp_path / "home")
    with WorkspaceService(home, WS, config=fast_config()) as svc:
        before = {
            "mv": count(svc.ws, "model_versions"),
            "emb": count(svc.ws, "embeddings"),
            "assignments": assignments(svc.ws),
            "types": svc.ws.list_types(),
        }
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.service_fixtures", "crash-retrain", str(home)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: list[str] = []
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:
            line = child.stdout.readline()
            seen.append(line.strip())
            if not line or line.startswith(MARKER) or "FINISHED" in line:
                break
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(30)
    assert seen[-1].startswith(MARKER), f"{seen} {child.stderr.read()[-2000:]}"
    assert "STAGE train" in seen and "STAGE store" in seen  # killed inside the write
    assert child.returncode == -signal.SIGKILL
    assert list((home / WS / "pending").iterdir())  # the killed write left its marker

    with WorkspaceService(home, WS, config=fast_config()) as svc:
        assert count(svc.ws, "model_versions") == before["mv"]
        assert count(svc.ws, "embeddings") == before["emb"]
        assert assignments(svc.ws) == before["assignments"]
        assert svc.ws.list_types() == before["types"]
        assert svc.doctor() == []
        assert not list((home / WS / "pending").iterdir())
        mv = svc.retrain()
        assert mv == before["mv"] + 1 and svc.ws.latest_model_version().kind == "retrain"


# =============================================================================== answers
def ask(svc: WorkspaceService, kind: str, target: dict) -> int:
    (sid,) = svc.ws.replace_open_suggestions([SuggestionIn(kind=kind, target=target, score=1.0)])
    return sid


def status_of(svc: WorkspaceService, sid: int) -> tuple[str, Answer | None]:
    """The question's status and its stored answer, read back (None while open)."""
    s = next(x for x in svc.ws.suggestions() if x.id == sid)
    return s.status, None if s.status == "open" else Answer.load(s.answer)


def by_size(svc: WorkspaceService) -> list:
    return sorted(live_types(svc.ws).values(), key=lambda t: (-t.n_regions, t.id))


def test_yes_to_confirm_with_a_name_confirms_and_renames(service) -> None:
    t = by_size(service)[0]
    sid = ask(service, "confirm", {"type_id": t.id})
    assert service.answer_suggestion(sid, "yes", actor="bob", name="scratch") == {
        "applied": "confirmed"
    }
    got = service.ws.get_type(t.id)
    assert (got.status, got.name, got.n_regions) == ("confirmed", "scratch", t.n_regions)
    assert status_of(service, sid) == ("answered", Answer("yes", name="scratch"))
    assert [e.action for e in service.ws.audit(actor="bob")][:3] == [
        "answer_suggestion",
        "rename_type",
        "confirm_type",
    ]


def test_yes_to_confirm_with_an_existing_name_merges_into_it(service) -> None:
    big, small = by_size(service)[:2]
    service.ws.rename_type(big.id, "Spot", expected_version=big.version, actor="bob")
    sid = ask(service, "confirm", {"type_id": small.id})
    out = service.answer_suggestion(sid, "y", actor="bob", name="SPOT")
    assert out == {"applied": "merged into Spot"}
    absorbed = service.ws.get_type(small.id)
    assert absorbed.status == "merged" and absorbed.merged_into == big.id
    assert service.ws.get_type(big.id).n_regions == big.n_regions + small.n_regions


def test_yes_to_merge_keeps_the_confirmed_type(service) -> None:
    big, small = by_size(service)[:2]
    service.ws.confirm_type(small.id, expected_version=small.version, actor="bob")
    sid = ask(service, "merge", {"type_ids": [big.id, small.id]})
    assert service.answer_suggestion(sid, "yes", actor="bob") == {"applied": "merged"}
    assert service.ws.get_type(big.id).merged_into == small.id
    assert service.ws.get_type(small.id).n_regions == big.n_regions + small.n_regions


def test_yes_to_merge_keeps_the_larger_type(service) -> None:
    a, b = by_size(service)[:2]
    # the fixture's types may be the same size: make the first one larger
    moved = service.ws.type_members(b.id)[0].region_id
    service.ws.move_regions([moved], a.id, expected={a.id: a.version, b.id: b.version}, actor="bob")
    big, small = by_size(service)[:2]
    assert big.n_regions > small.n_regions
    sid = ask(service, "merge", {"type_ids": [small.id, big.id]})
    service.answer_suggestion(sid, "yes", actor="bob")
    assert service.ws.get_type(small.id).merged_into == big.id


def test_yes_to_split_moves_the_smaller_group_to_a_new_type(service) -> None:
    t = by_size(service)[0]
    members = sorted(m.region_id for m in service.ws.type_members(t.id))
    assert len(members) >= 3
    groups = [members[1:], members[:1]]
    sid = ask(service, "split", {"type_id": t.id, "groups": groups})
    assert service.answer_suggestion(sid, "yes", actor="bob") == {"applied": "split"}
    new = [x for x in live_types(service.ws).values() if x.origin == "reviewer"]
    assert len(new) == 1 and new[0].status == "proposed"
    assert [m.region_id for m in service.ws.type_members(new[0].id)] == members[:1]
    assert sorted(m.region_id for m in service.ws.type_members(t.id)) == members[1:]

    # a split whose groups left the type meanwhile is refused, and stays open
    sid = ask(service, "split", {"type_id": t.id, "groups": [members[:1], members[1:]]})
    with pytest.raises(ValueError, match="nothing left to split"):
        service.answer_suggestion(sid, "yes", actor="bob")
    assert status_of(service, sid) == ("open", None)


def _a_region(svc: WorkspaceService, type_id: int) -> int:
    return svc.ws.type_members(type_id)[0].region_id


def test_label_answers_move_create_or_mark_normal(service) -> None:
    ws = service.ws
    a, b = by_size(service)[:2]
    r1, r2, r3 = (m.region_id for m in ws.type_members(a.id)[:3])
    table = lambda: region_table(ws)  # noqa: E731

    def where(rid: int) -> tuple[int, bool, bool]:
        t = table()
        i = int(np.flatnonzero(t.region_ids == rid)[0])
        return int(t.type_ids[i]), bool(t.reviewed[i]), bool(t.is_normal[i])

    sid = ask(service, "label", {"region_id": r1, "image_id": 0, "options": [a.id, b.id]})
    assert service.answer_suggestion(sid, str(b.id), actor="bob") == {
        "applied": f"moved to {b.name}"
    }
    assert where(r1) == (b.id, True, False)

    sid = ask(service, "label", {"region_id": r2, "image_id": 0, "options": [a.id, b.id]})
    assert service.answer_suggestion(sid, "dent", actor="bob") == {"applied": "labelled dent"}
    dent = service.type_by_name("DENT")
    assert dent is not None and dent.status == "confirmed" and where(r2) == (dent.id, True, False)

    sid = ask(service, "label", {"region_id": r3, "image_id": 0, "options": [a.id, b.id]})
    service.answer_suggestion(sid, "good", actor="bob")
    assert where(r3)[2] is True
    assert [status_of(service, s)[0] for s in (sid,)] == ["answered"]


def test_new_type_answers(service) -> None:
    a = by_size(service)[0]
    regions = [m.region_id for m in service.ws.type_members(a.id)[:2]]
    sid = ask(service, "new_type", {"region_ids": regions})
    service.answer_suggestion(sid, "yes", actor="bob", name="dent")
    dent = service.type_by_name("dent")
    assert dent.status == "confirmed"
    assert sorted(m.region_id for m in service.ws.type_members(dent.id)) == sorted(regions)

    b = by_size(service)[0]
    regions = [m.region_id for m in service.ws.type_members(b.id)[:1]]
    n_before = len(live_types(service.ws))
    sid = ask(service, "new_type", {"region_ids": regions})
    assert service.answer_suggestion(sid, "yes", actor="bob") == {"applied": "new type"}
    assert len(live_types(service.ws)) == n_before + 1


def test_skip_and_no_change_nothing_and_are_not_asked_again(service) -> None:
    ws = service.ws
    t = by_size(service)[0]
    before = assignments(ws)
    types_before = ws.list_types()
    rid = _a_region(service, t.id)
    s_confirm = ask(service, "confirm", {"type_id": t.id})
    # "no" to "is it one type?" only marks the type (the next retrain acts on it)
    assert service.answer_suggestion(s_confirm, "no", actor="bob")["applied"].startswith(
        "marked as more than one type"
    )
    members = sorted(m.region_id for m in ws.type_members(t.id))
    s_split = ask(service, "split", {"type_id": t.id, "groups": [members[:1], members[1:]]})
    assert service.answer_suggestion(s_split, "n", actor="bob") == {"applied": "nothing"}
    s_label = ask(service, "label", {"region_id": rid, "image_id": 0, "options": []})
    assert service.answer_suggestion(s_label, "skip", actor="bob") == {"applied": "skip"}
    assert status_of(service, s_confirm) == ("answered", Answer("no"))
    assert status_of(service, s_split) == ("answered", Answer("no"))
    assert status_of(service, s_label) == ("skipped", Answer("skip"))
    assert assignments(ws) == before and ws.list_types() == types_before

    assert service.declined() >= {("confirm", str(t.id)), ("label", str(rid))}
    assert service.review_state().mixed == {t.id}
    queue = service.refresh_suggestions()
    assert queue, "the discovered workspace has questions"
    assert not any(q.kind == "confirm" and q.target["type_id"] == t.id for q in queue)
    assert not any(q.kind == "label" and q.target["region_id"] == rid for q in queue)
    assert all(q.status == "open" for q in queue)
    assert [q.score for q in queue] == sorted((q.score for q in queue), reverse=True)
    assert service.next_suggestion().id == queue[0].id


def test_a_no_about_a_type_stands_until_the_type_changes_much(service) -> None:
    """ "No, not one type" is about the type as it was: once its size moved by more than
    ``answer_stale_change`` it may be asked again and is no longer treated as mixed."""
    t = by_size(service)[0]
    size = t.n_regions
    same = ask(service, "confirm", {"type_id": t.id, "n_regions": size})
    service.answer_suggestion(same, "no", actor="bob")
    assert service.mixed_types() == {t.id}
    assert ("confirm", str(t.id)) in service.declined()
    # the same answer given when the type was twice its size no longer stands
    other = by_size(service)[1]
    grown = ask(service, "confirm", {"type_id": other.id, "n_regions": 2 * other.n_regions})
    service.answer_suggestion(grown, "no", actor="bob")
    assert other.id not in service.mixed_types()
    assert ("confirm", str(other.id)) not in service.declined()
    split = ask(
        service,
        "split",
        {"type_id": other.id, "groups": [[1] * other.n_regions, [2] * other.n_regions]},
    )
    service.answer_suggestion(split, "skip", actor="bob")
    assert ("split", str(other.id)) not in service.declined()


def test_no_with_picked_members_moves_them_out_and_settles_the_no(service) -> None:
    """ "No, not one type: these do not belong" splits the picked members into a new
    proposed type at once; the type is then not treated as mixed and may be asked about
    again (as it is now)."""
    ws = service.ws
    t = by_size(service)[0]
    members = sorted(m.region_id for m in ws.type_members(t.id, limit=10**6))
    assert len(members) >= 3
    picked = members[:2]
    sid = ask(service, "confirm", {"type_id": t.id, "n_regions": len(members)})
    out = service.answer_suggestion(sid, "no", actor="bob", regions=picked)
    assert out["applied"].startswith(f"moved 2 member(s) that do not belong out of {t.name}")
    new = [x for x in live_types(ws).values() if x.origin == "reviewer"]
    assert len(new) == 1 and new[0].status == "proposed"
    assert sorted(m.region_id for m in ws.type_members(new[0].id)) == picked
    assert sorted(m.region_id for m in ws.type_members(t.id, limit=10**6)) == members[2:]
    assert status_of(service, sid) == ("answered", Answer("no", moved_out=2))
    assert t.id not in service.mixed_types()
    assert ("confirm", str(t.id)) not in service.declined()
    assert [e.action for e in ws.audit(actor="bob")][:2] == ["answer_suggestion", "split_type"]
    assert errors(service.doctor()) == []
    # undo: the answer, then the split
    assert ws.undo("bob").target["action"] == "answer_suggestion"
    assert ws.undo("bob").target["action"] == "split_type"
    assert sorted(m.region_id for m in ws.type_members(t.id, limit=10**6)) == members


def test_yes_with_picked_members_moves_them_out_then_confirms(service) -> None:
    ws = service.ws
    big, small = by_size(service)[:2]
    ws.rename_type(small.id, "spot", expected_version=small.version, actor="bob")
    members = sorted(m.region_id for m in ws.type_members(big.id, limit=10**6))
    sid = ask(service, "confirm", {"type_id": big.id})
    out = service.answer_suggestion(sid, "yes", actor="bob", name="scratch", regions=members[-1:])
    assert out["applied"].startswith("moved 1 member(s)") and out["applied"].endswith("; confirmed")
    got = ws.get_type(big.id)
    assert (got.status, got.name, got.n_regions) == ("confirmed", "scratch", len(members) - 1)
    assert status_of(service, sid) == ("answered", Answer("yes", name="scratch", moved_out=1))
    # with the name of an existing type: the rest merges into it, the pick stays out
    rest = live_types(ws)
    new = next(t for t in rest.values() if t.origin == "reviewer")
    assert [m.region_id for m in ws.type_members(new.id)] == members[-1:]
    third = next(
        (
            t
            for t in by_size(service)
            if t.id not in (big.id, small.id, new.id) and t.n_regions >= 2
        ),
        None,
    )
    assert third is not None, "the fixture discovers three types"
    inside = sorted(m.region_id for m in ws.type_members(third.id, limit=10**6))
    sid = ask(service, "confirm", {"type_id": third.id})
    out = service.answer_suggestion(sid, "yes", actor="bob", name="Spot", regions=inside[:1])
    assert out["applied"].endswith("merged into spot")
    assert ws.get_type(third.id).merged_into == small.id
    assert ws.get_type(small.id).n_regions == small.n_regions + len(inside) - 1
    assert errors(service.doctor()) == []


def test_a_question_shows_typical_and_borderline_members_of_a_large_type(service) -> None:
    ws = service.ws
    t, other = by_size(service)[:2]
    # one type of at least five images: the fixture's two largest together
    ws.merge_types(t.id, other.id, expected={t.id: t.version, other.id: other.version}, actor="bob")
    everyone = ws.representatives(t.id, n=10**6)
    assert len(everyone) >= 5, "the merged type spans at least five images"
    # small enough: every image once, nearest the prototype first
    assert service.question_members(t.id, n=len(everyone)) == everyone
    # too many images: half typical, then the least confident members of other images
    shown = service.question_members(t.id, n=4)
    assert len(shown) == 4 and len({m.image_id for m in shown}) == 4
    assert [m.region_id for m in shown[:2]] == [m.region_id for m in everyone[:2]]
    seen = {m.image_id for m in everyone[:2]}
    firsts = []  # the first (least confident) member of each other image
    for m in ws.type_members(t.id, limit=10**6, order="borderline"):
        if m.image_id not in seen:
            seen.add(m.image_id)
            firsts.append(m.region_id)
    assert [m.region_id for m in shown[2:]] == firsts[:2]


def test_a_pick_that_does_not_fit_the_question_changes_nothing(service) -> None:
    ws = service.ws
    a, b = by_size(service)[:2]
    members = sorted(m.region_id for m in ws.type_members(a.id, limit=10**6))
    other = ws.type_members(b.id)[0].region_id
    before = assignments(ws)
    sid = ask(service, "confirm", {"type_id": a.id})
    with pytest.raises(ValueError, match=rf"region {other} is not in type '{a.name}'"):
        service.answer_suggestion(sid, "no", actor="bob", regions=[members[0], other])
    with pytest.raises(ValueError, match=f"all {len(members)} members of {a.name} were picked"):
        service.answer_suggestion(sid, "no", actor="bob", regions=members)
    with pytest.raises(ValueError, match="all .* were picked"):
        service.answer_suggestion(sid, "yes", actor="bob", regions=members)
    assert status_of(service, sid) == ("open", None)
    merge = ask(service, "merge", {"type_ids": [a.id, b.id]})
    with pytest.raises(
        ValueError,
        match=r"goes with yes or no to \"is it one type\?\" only, "
        "not with 'no' to a merge question",
    ):
        service.answer_suggestion(merge, "no", actor="bob", regions=members[:1])
    assert assignments(ws) == before
    assert status_of(service, merge) == ("open", None)


def test_answering_twice_or_nonsense_is_a_clear_error(service) -> None:
    t = by_size(service)[0]
    sid = ask(service, "confirm", {"type_id": t.id})
    with pytest.raises(ValueError, match="answer yes, no or skip"):
        service.answer_suggestion(sid, "maybe", actor="bob")
    assert status_of(service, sid) == ("open", None)
    service.answer_suggestion(sid, "yes", actor="bob")
    with pytest.raises(ConflictError, match=f"suggestion {sid} is already answered by bob"):
        service.answer_suggestion(sid, "no", actor="carol")
    with pytest.raises(ValueError, match="no suggestion with id 999"):
        service.answer_suggestion(999, "yes", actor="bob")


def test_undo_after_an_applied_answer_restores_the_state(service) -> None:
    ws = service.ws
    big, small = by_size(service)[:2]
    before = assignments(ws)
    sid = ask(service, "merge", {"type_ids": [big.id, small.id]})
    service.answer_suggestion(sid, "yes", actor="bob")
    assert ws.get_type(small.id).status == "merged"
    assert ws.undo("bob").target["action"] == "answer_suggestion"  # the answer first...
    assert status_of(service, sid) == ("open", None)
    assert ws.undo("bob").target["action"] == "merge_types"  # ...then what it applied
    assert ws.get_type(small.id).status == "proposed"
    assert (ws.get_type(big.id).n_regions, ws.get_type(small.id).n_regions) == (
        big.n_regions,
        small.n_regions,
    )
    assert [a[:4] for a in assignments(ws)] == [a[:4] for a in before]
    assert errors(service.doctor()) == []


def test_declined_questions_do_not_crowd_out_the_queue(service, monkeypatch) -> None:
    # the question settings are part of the one config object, so they can be overridden
    monkeypatch.setattr(service, "config", service.config.with_overrides(suggest={"queue_size": 3}))
    first = service.refresh_suggestions()
    assert len(first) == 3
    for q in first:
        service.answer_suggestion(q.id, "skip", actor="bob")
    second = service.refresh_suggestions()
    assert len(second) == 3  # the next best questions, not an empty queue
    key = lambda q: (q.kind, json.dumps(q.target, sort_keys=True))  # noqa: E731
    assert not {key(q) for q in first} & {key(q) for q in second}


def test_an_answer_to_a_question_renewed_by_a_retrain_goes_to_its_successor(service) -> None:
    t = by_size(service)[0]
    old = ask(service, "confirm", {"type_id": t.id, "n_regions": t.n_regions})
    (new,) = service.ws.replace_open_suggestions(
        [
            SuggestionIn(
                kind="confirm", target={"type_id": t.id, "n_regions": t.n_regions + 1}, score=1.0
            )
        ]
    )
    assert status_of(service, old)[0] == "stale"
    assert service.answer_suggestion(old, "yes", actor="bob")["applied"] == "confirmed"
    assert status_of(service, new) == ("answered", Answer("yes"))
    assert status_of(service, old)[0] == "stale"
    assert service.ws.get_type(t.id).status == "confirmed"
    # a question the new queue no longer asks: a clear refusal, nothing applied
    other = by_size(service)[1]
    gone = ask(service, "confirm", {"type_id": other.id})
    service.ws.replace_open_suggestions([])
    with pytest.raises(ValueError, match="no longer asked"):
        service.answer_suggestion(gone, "yes", actor="bob")
    assert service.ws.get_type(other.id).status == "proposed"
