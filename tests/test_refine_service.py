"""Refining a workspace's detector: candidate, judgement, switch, rollback, CLI."""

from __future__ import annotations

import math

import numpy as np
import pytest

from engine.discovery import DiscoveryModel
from protoatlas import cli
from protoatlas.service import WorkspaceService
from storage import ConflictError, ValidationError
from tests.service_fixtures import (
    WS,
    copy_home,
    data_root,
    discovered_home,
    fast_config,
    shared_base,
)

#: A refinement small enough for a unit test (the product default trains 192 images).
SMALL = {"n_samples": 16, "epochs": 1, "batch_size": 4, "calibration_normals": 4}


def small_config():
    return fast_config().with_overrides(refine=SMALL)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return discovered_home(shared_base(tmp_path_factory))[0]


@pytest.fixture
def service(base, tmp_path):
    home = copy_home(base, tmp_path / "home")
    with WorkspaceService(home, WS, config=small_config()) as svc:
        yield svc


def _confirm_all(service: WorkspaceService) -> None:
    for t in service.ws.list_types():
        if t.status == "proposed":
            service.confirm_type(t.id, actor="alice")


def test_refine_writes_a_candidate_and_changes_nothing_in_force(service) -> None:
    _confirm_all(service)
    before_mv = service.ws.latest_model_version().id
    stages: list[tuple[str, float]] = []
    cand = service.refine_detector(progress=lambda s, f: stages.append((s, f)))
    assert service.ws.latest_model_version().id == before_mv  # asked, not switched
    assert cand.base_version == before_mv and cand.n_train_defects >= 1
    assert cand.n_judge_defects >= 1 and cand.n_normals >= 2
    for figures in (cand.before, cand.after):
        assert set(figures) == {"image_auroc", "pixel_auroc", "aupro"}
        assert math.isfinite(figures["pixel_auroc"]) and 0 <= figures["pixel_auroc"] <= 1
    fractions = [f for _, f in stages]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert service.model().detector.refiner is None  # the model in force is untouched
    assert "held out" in cand.summary()
    assert service.refine_candidate(cand.id).after == cand.after


def test_accepting_a_candidate_switches_and_rollback_brings_patchcore_back(service) -> None:
    _confirm_all(service)
    types_before = [(t.id, t.name, t.status, t.n_regions) for t in service.ws.list_types()]
    cand = service.refine_detector()
    mv = service.accept_refinement(cand.id, actor="alice")
    assert service.ws.latest_model_version().kind == "refine"
    model = service.model()
    assert model.detector.refiner is not None
    assert service.detector_since() == mv
    # types, prototypes and embeddings carried over
    assert [(t.id, t.name, t.status, t.n_regions) for t in service.ws.list_types()] == (
        types_before
    )
    assert len(service.ws.embeddings()[0]) > 0
    back = service.rollback_detector(actor="alice")
    assert service.ws.model_version(back).metrics["detector_of"] == cand.base_version
    assert service.model().detector.refiner is None
    versions = [v.kind for v in service.detector_versions()]
    assert versions[-2:] == ["refine", "rollback"]
    assert [e.action for e in service.ws.audit()][:2] == ["apply_retrain", "apply_retrain"]
    # a candidate trained before another detector was installed is refused
    with pytest.raises(ConflictError, match="refine again"):
        service.accept_refinement(cand.id, actor="alice")


def test_a_candidate_survives_a_retrain_and_keeps_the_new_types(service) -> None:
    """Answers retrain the model while a refinement trains: accepting it keeps the
    retrained types and installs the refined detector."""
    _confirm_all(service)
    cand = service.refine_detector()
    retrained = service.retrain(actor="model")
    assert retrained is not None and retrained > cand.base_version
    protos_before = service.ws.prototypes()[0].tolist()
    mv = service.accept_refinement(cand.id, actor="alice")
    assert service.ws.model_version(mv).metrics["trained_on"] == cand.base_version
    assert service.ws.prototypes()[0].tolist() == protos_before
    assert service.model().detector.refiner is not None


def test_a_refined_workspace_analyses_the_next_batch_with_refined_maps(
    service, tmp_path_factory
) -> None:
    _confirm_all(service)
    cand = service.refine_detector()
    service.accept_refinement(cand.id, actor="alice")
    second = data_root(shared_base(tmp_path_factory), "second")
    report = service.upload_batch(second / "test", batch_name="second")
    assert report.mode == "assign" and report.n_images > 0
    scores = [s for _, _, s, _ in service.ws.batch_images(report.batch_id)]
    det = service.model().detector
    assert det.refiner is not None and det.refiner.combine == "fused"
    threshold = det.threshold
    flagged = [f for *_, f in service.ws.batch_images(report.batch_id)]
    assert flagged == [s > threshold for s in scores]


def test_a_negative_fuse_weight_is_refused_before_any_work(service) -> None:
    with pytest.raises(ValidationError, match="fuse weight"):
        service.refine_detector(fuse_weight=-0.5)
    assert not service.refine_dir().exists() or not any(service.refine_dir().iterdir())


def test_refine_needs_a_detector(tmp_path) -> None:
    with WorkspaceService(tmp_path / "empty", WS, config=small_config()) as svc:
        with pytest.raises(ValidationError, match="upload a first batch"):
            svc.refine_detector()


def test_the_saved_model_knows_which_normals_its_references_are(service) -> None:
    model = DiscoveryModel.load(service.ws.latest_model_version().blob_path)
    assert len(model.reference_index) == len(model.references) > 0
    assert all(i >= 0 for i in model.reference_index)
    assert np.array_equal(np.unique(model.reference_index), sorted(model.reference_index))


def test_the_cli_refines_without_switching_then_accepts(base, tmp_path, monkeypatch, capsys):
    home = copy_home(base, tmp_path / "home")
    monkeypatch.setattr(
        cli,
        "_service",
        lambda args, read_only=False: WorkspaceService(
            args.home, args.workspace, config=small_config(), read_only=read_only
        ),
    )
    with WorkspaceService(home, WS, config=small_config()) as svc:
        _confirm_all(svc)
    assert (
        cli.main(
            ["refine", "--home", str(home), "--workspace", WS, "--no-switch", "--quiet"]
            + ["--fuse-weight", "0.3"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "not switched" in out and "pixel auroc" in out and "fuse weight 0.3" in out
    cand = out.split("--accept ")[1].split()[0]
    with WorkspaceService(home, WS, config=small_config(), read_only=True) as svc:
        candidate_model = DiscoveryModel.load(svc.refine_dir() / f"{cand}.npz")
    assert candidate_model.detector.refiner.fuse_weight == pytest.approx(0.3)
    assert cli.main(["refine", "--home", str(home), "--workspace", WS, "--accept", cand]) == 0
    assert "switched to the refined detector" in capsys.readouterr().out
    assert cli.main(["refine", "--home", str(home), "--workspace", WS, "--list"]) == 0
    assert "refine" in capsys.readouterr().out
    assert cli.main(["refine", "--home", str(home), "--workspace", WS, "--rollback"]) == 0
    assert "rolled back" in capsys.readouterr().out
