"""Near misses: images the detector passes just below its threshold keep a candidate region,
are asked about ("is this image defective?"), and a "yes" types them and lowers the
threshold; the simulated reviewer answers these questions from its labels."""

from __future__ import annotations

import numpy as np
import pytest

from protoatlas.service import WorkspaceService, region_table
from protoatlas.service.suggestions import Candidate, ReviewState, SuggestConfig, defect_questions
from protoatlas.simulate import Oracle, ReviewerView
from tests.service_fixtures import WS, data_root, fast_config, shared_base


def _state(candidates, threshold) -> ReviewState:
    return ReviewState(
        region_ids=np.zeros(0, np.int64),
        image_ids=np.zeros(0, np.int64),
        embeddings=np.zeros((0, 4), np.float32),
        region_type=np.zeros(0, np.int64),
        reviewed=np.zeros(0, bool),
        is_normal=np.zeros(0, bool),
        types={},
        candidates=candidates,
        threshold=threshold,
    )


def test_defect_questions_rank_by_closeness_to_the_threshold() -> None:
    cands = [
        Candidate(1, 10, 9.0),
        Candidate(2, 11, 8.0),
        Candidate(3, 12, 9.9),
        Candidate(4, 13, 10.5),
        Candidate(5, 14, 5.0),
    ]
    qs = defect_questions(_state(cands, 10.0), SuggestConfig(defect_band=0.25))
    # above the (moved) threshold first, then the nearest below; 5.0 is 50 % below: not asked
    assert [q.target["region_id"] for q in qs] == [4, 3, 1, 2]
    assert qs[0].score > qs[1].score > qs[2].score > qs[3].score > 0
    assert "above the threshold" in qs[0].reason and "below" in qs[1].reason
    assert defect_questions(_state(cands, None), SuggestConfig()) == []


@pytest.fixture
def near_miss_service(tmp_path_factory, tmp_path):
    """A discovered workspace where every image the detector passed keeps a candidate."""
    data = data_root(shared_base(tmp_path_factory), "first")
    config = fast_config().with_overrides(detector={"candidate_band": 1.0})
    with WorkspaceService(tmp_path / "home", WS, config=config) as svc:
        svc.upload_batch(data / "test", data / "train" / "good", clusters=3, actor="t")
        yield svc


def _passed_images(svc) -> list[tuple[int, str, float]]:
    batch = svc.ws.batches()[0].id
    return [(i, n, s) for i, n, s, flagged in svc.ws.batch_images(batch) if not flagged]


def test_passed_images_keep_a_candidate_region_judged_normal(near_miss_service) -> None:
    svc = near_miss_service
    passed = _passed_images(svc)
    assert passed, "the fixture needs images the detector passes"
    table = region_table(svc.ws)
    for image_id, _, _ in passed:
        rows = np.flatnonzero(table.image_ids == image_id)
        assert len(rows) == 1 and table.is_normal[rows[0]] and table.type_ids[rows[0]] == -1
    # candidates have embeddings and cached tokens like every region (retraining skips them
    # while they are judged normal)
    ids, _ = svc.ws.embeddings()
    assert set(table.region_ids) <= set(int(r) for r in ids)
    tok_ids, tokens = svc.load_tokens(svc.ws.batches()[0].id)
    assert len(tok_ids) == len(table.region_ids) == len(tokens)
    assert not [p for p in svc.doctor() if p.severity == "error"]


def test_yes_types_the_image_and_lowers_the_threshold_undo_restores(near_miss_service) -> None:
    svc = near_miss_service
    calibrated = svc.model().detector.threshold
    svc.refresh_suggestions()
    q = next(s for s in svc.ws.open_suggestions() if s.kind == "defect")
    score = float(q.target["score"])
    assert score < calibrated
    out = svc.answer_suggestion(q.id, "yes", actor="t")
    assert out["applied"].startswith("defective")
    table = region_table(svc.ws)
    row = int(np.flatnonzero(table.region_ids == q.target["region_id"])[0])
    assert not table.is_normal[row] and table.type_ids[row] >= 0 and table.reviewed[row]
    moved = svc.model().detector.threshold
    assert score * (1 - 1e-5) < moved < score < calibrated
    assert svc.review_state().threshold == moved
    svc.ws.undo("t")  # the answer
    svc.ws.undo("t")  # the move
    assert svc.model().detector.threshold == calibrated
    table = region_table(svc.ws)
    assert table.is_normal[row] and table.type_ids[row] == -1


def test_no_marks_the_candidate_normal_and_is_not_asked_again(near_miss_service) -> None:
    svc = near_miss_service
    calibrated = svc.model().detector.threshold
    svc.refresh_suggestions()
    q = next(s for s in svc.ws.open_suggestions() if s.kind == "defect")
    svc.answer_suggestion(q.id, "no", actor="t")
    assert svc.model().detector.threshold == calibrated
    table = region_table(svc.ws)
    row = int(np.flatnonzero(table.region_ids == q.target["region_id"])[0])
    assert table.is_normal[row] and table.reviewed[row]
    asked = [s.target.get("region_id") for s in svc.refresh_suggestions() if s.kind == "defect"]
    assert q.target["region_id"] not in asked


def test_the_oracle_answers_defect_questions_from_its_labels(near_miss_service) -> None:
    svc = near_miss_service
    names = {img: name for b in svc.ws.batches() for img, name, _, _ in svc.ws.batch_images(b.id)}
    view = ReviewerView(svc, names)
    table = region_table(svc.ws)
    row = int(np.flatnonzero(table.is_normal)[0])
    target = {"region_id": int(table.region_ids[row])}
    image = names[int(table.image_ids[row])]
    good = Oracle({image: "good"}).answer("defect", target, view)
    assert good.answer == "no"
    bad = Oracle({image: "scratch"}).answer("defect", target, view)
    assert bad.answer == "yes" and bad.name == "scratch"
    assert Oracle({}).answer("defect", target, view).answer == "skip"
