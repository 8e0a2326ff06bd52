"""PatchCore detector: separates synthetic defects, localises them, saves and loads."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine.detector import MODEL_FORMAT_VERSION, ModelFormatError, PatchCoreDetector
from engine.metrics import image_auroc, pixel_auroc
from tests.conftest import held_out


def test_defects_score_higher_and_are_localised(fitted, synth_samples) -> None:
    det, _ = fitted
    test = held_out(synth_samples)
    results = det.score([s.image for s in test])
    labels = np.array([s.label != "good" for s in test], int)
    scores = np.array([r.score for r in results])
    assert image_auroc(labels, scores) >= 0.95
    defects = [(s, r) for s, r in zip(test, results) if s.label != "good"]
    assert pixel_auroc([s.mask for s, _ in defects], [r.anomaly_map for _, r in defects]) >= 0.9
    for s, r in defects:
        assert r.anomaly_map.shape == s.mask.shape and r.anomaly_map.dtype == np.float32


def test_threshold_is_calibrated_on_held_out_normals(fitted, synth_samples) -> None:
    """Every normal is in the bank and is also scored as unseen (against the other folds);
    the threshold is the 1 - false_alarm_rate quantile of those scores."""
    det, report = fitted
    assert report.n_folds == 5 and report.n_fit_images == 16
    assert report.n_calibration_images == 16
    scores = report.calibration_scores
    assert report.threshold == pytest.approx(float(np.quantile(scores, 0.98)))
    assert np.mean(scores > report.threshold) <= max(0.02, 1 / len(scores)) + 1e-9
    # held-out scores are those of unseen normals: above the in-bank scores of the same images
    normals = [s.image for s in synth_samples if s.label == "good"][:16]
    in_bank = np.array([r.score for r in det.score(normals)])
    assert np.median(scores) > np.median(in_bank)
    test = held_out(synth_samples)
    flagged = [r.score > det.threshold for r in det.score([s.image for s in test])]
    truth = [s.label != "good" for s in test]
    agree = np.mean(np.array(flagged) == np.array(truth))
    assert agree >= 0.8


@pytest.mark.parametrize("bank", ["other_folds", "leave_one_out"])
def test_calibration_scores_each_normal_against_a_bank_it_did_not_shape(
    small_config, synth_samples, bank
) -> None:
    """Either calibration bank scores a normal above its in-bank score (its own entries are
    never searched); leave-one-out searches more of the bank, so it scores lower than the
    other folds alone."""
    normals = [s.image for s in synth_samples if s.label == "good"][:16]
    det = PatchCoreDetector(small_config.with_overrides(detector={"calibration_bank": bank}))
    report = det.fit(normals)
    in_bank = np.array([r.score for r in det.score(normals)])
    assert np.median(report.calibration_scores) > np.median(in_bank)
    if bank == "leave_one_out":
        folds = PatchCoreDetector(
            small_config.with_overrides(detector={"calibration_bank": "other_folds"})
        )
        folds.fit(normals)
        assert np.array_equal(folds.knn.bank, det.knn.bank)
        assert np.median(report.calibration_scores) < np.median(folds.calibration_scores)


def test_an_unknown_calibration_bank_is_refused(small_config, synth_samples) -> None:
    det = PatchCoreDetector(small_config.with_overrides(detector={"calibration_bank": "x"}))
    with pytest.raises(ValueError, match="calibration_bank"):
        det.fit([s.image for s in synth_samples if s.label == "good"][:4])


def test_bank_is_a_coreset_of_the_patches(fitted) -> None:
    """One coreset per fold, together 10 % of the patches (give or take a rounding each)."""
    det, report = fitted
    assert report.bank_size == len(det.knn.bank)
    assert abs(report.bank_size - 0.1 * report.n_patches) <= report.n_folds


def test_false_alarm_rate_moves_the_threshold(fitted) -> None:
    det, report = fitted
    low = det.set_false_alarm_rate(0.2)
    high = det.set_false_alarm_rate(0.02)
    assert low < high == pytest.approx(report.threshold)
    with pytest.raises(ValueError, match="false_alarm_rate"):
        det.set_false_alarm_rate(0.0)


def test_non_square_and_grayscale_inputs_keep_their_shape(fitted, synth_samples) -> None:
    det, _ = fitted
    image = synth_samples[-1].image
    wide = np.concatenate([image, image], axis=1)[:100]
    gray = np.repeat(image.mean(axis=2, keepdims=True), 3, axis=2).astype(np.uint8)
    out = det.score([wide, gray])
    assert out[0].anomaly_map.shape == (100, wide.shape[1])
    assert out[1].anomaly_map.shape == image.shape[:2]
    assert np.isfinite(out[0].score) and np.isfinite(out[1].score)


def test_save_load_round_trip_gives_identical_scores(fitted, synth_samples, tmp_path) -> None:
    det, _ = fitted
    path = det.save(tmp_path / "model.npz")
    again = PatchCoreDetector.load(path, device="cpu")
    images = [s.image for s in held_out(synth_samples)[:4]]
    a = [r.score for r in det.score(images)]
    b = [r.score for r in again.score(images)]
    assert np.allclose(a, b, rtol=1e-5)
    assert again.threshold == det.threshold
    assert again.config == det.config


def test_loading_another_format_version_is_a_clear_error(fitted, tmp_path) -> None:
    det, _ = fitted
    path = det.save(tmp_path / "model.npz")
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    meta = json.loads(arrays["meta"].tobytes().decode())
    meta["format_version"] = MODEL_FORMAT_VERSION + 1
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(tmp_path / "future.npz", **arrays)
    with pytest.raises(ModelFormatError, match="format version"):
        PatchCoreDetector.load(tmp_path / "future.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a model")
    with pytest.raises(ModelFormatError, match="junk.npz"):
        PatchCoreDetector.load(tmp_path / "junk.npz")


def test_residuals_are_larger_on_defects(fitted, synth_samples) -> None:
    det, _ = fitted
    defects = [s for s in synth_samples if s.label in ("spot", "missing")]
    ratios = []
    for s, (res, valid) in zip(defects, det.residual_features([s.image for s in defects])):
        h, w, _ = res.shape
        assert valid.shape == (h, w)
        cell = s.mask.shape[0] // h
        inside = s.mask.reshape(h, cell, w, cell).mean(axis=(1, 3)) > 0.3
        norm = np.linalg.norm(res, axis=2)
        ratios.append(norm[inside].mean() / norm[~inside].mean())
    assert np.median(ratios) > 1.3


def test_fit_is_deterministic(small_config, synth_samples) -> None:
    normals = [s.image for s in synth_samples if s.label == "good"][:6]
    a = PatchCoreDetector(small_config)
    b = PatchCoreDetector(small_config)
    a.fit(normals)
    b.fit(normals)
    assert np.array_equal(a.knn.bank, b.knn.bank)


def test_unfitted_detector_refuses_to_score(small_config) -> None:
    with pytest.raises(RuntimeError, match="not fitted"):
        PatchCoreDetector(small_config).score([np.zeros((32, 32, 3), np.uint8)])
    with pytest.raises(ValueError, match="no normal images"):
        PatchCoreDetector(small_config).fit([])


def test_fixed_size_normals_get_no_context(fitted) -> None:
    det, _ = fitted
    assert det.config.backbone.context == "auto" and det.context_pad == 0


def _mixed_sizes(synth_samples) -> list[np.ndarray]:
    """Normals cut to varying widths: a mixed framing (no two share one input shape)."""
    normals = [s.image for s in synth_samples if s.label == "good"][:8]
    return [im[:, : im.shape[1] - 4 * i] for i, im in enumerate(normals)]


def test_mixed_size_normals_get_mirrored_context(small_config, synth_samples, tmp_path) -> None:
    images = _mixed_sizes(synth_samples)
    det = PatchCoreDetector(small_config)
    det.fit(images)
    assert det.context_pad == small_config.backbone.context_pad > 0
    again = PatchCoreDetector.load(det.save(tmp_path / "model.npz"), device="cpu")
    assert again.context_pad == det.context_pad
    a, b = det.score(images[:2]), again.score(images[:2])
    assert np.allclose([r.score for r in a], [r.score for r in b], rtol=1e-5)
    for image, result in zip(images[:2], a):
        assert result.anomaly_map.shape == image.shape[:2]  # the padding is cut off again
        assert np.isfinite(result.patch_scores).sum() > 0


@pytest.mark.parametrize("context, mixed, want", [("none", True, 0), ("mirror", False, 32)])
def test_context_none_and_mirror_override_the_rule(
    small_config, synth_samples, context, mixed, want
) -> None:
    cfg = small_config.with_overrides(backbone={"context": context, "context_pad": 32})
    images = (
        _mixed_sizes(synth_samples)
        if mixed
        else [s.image for s in synth_samples if s.label == "good"][:8]
    )
    det = PatchCoreDetector(cfg)
    det.fit_preprocessing(images)
    assert det.context_pad == want
