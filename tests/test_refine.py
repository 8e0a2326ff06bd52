"""PRN refinement: residuals, multi-size window attention, generators, losses, training,
save/load."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from scipy.ndimage import binary_dilation

from engine.config import RefineConfig
from engine.detector import PatchCoreDetector
from engine.preprocess import plan_geometry
from engine.prototypes import ResidualPrototypes
from engine.pseudo_anomalies import GENERATORS, RealDefect, make_anomaly, paste_defect
from engine.refine import ResidualRefiner
from engine.refine_train import fit_refiner, mask_to_grid, training_targets
from engine.residual_net import (
    MultiSizeAttention,
    ResidualSegmenter,
    focal_loss,
    merge,
    partition,
    smooth_l1_loss,
    window_side,
)
from tests.conftest import held_out


# ------------------------------------------------------------------ prototypes and residuals
def test_residual_of_a_prototype_is_zero_and_of_others_their_offset() -> None:
    protos = ResidualPrototypes([np.eye(3, dtype=np.float32) * 2.0])
    fmap = torch.zeros(1, 3, 2, 2)
    fmap[0, :, 0, 0] = torch.tensor([2.0, 0.0, 0.0])  # a prototype
    fmap[0, :, 1, 1] = torch.tensor([0.0, 2.5, 0.0])  # nearest: (0, 2, 0)
    res = protos.residual_maps([fmap])[0]
    assert res.shape == (1, 3, 2, 2)
    assert torch.allclose(res[0, :, 0, 0], torch.zeros(3))
    assert torch.allclose(res[0, :, 1, 1], torch.tensor([0.0, 0.5, 0.0]))


# ------------------------------------------------------------------ window attention
@pytest.mark.parametrize("size", [(7, 5), (8, 8), (3, 17)])
@pytest.mark.parametrize("window", [(1, 1), (2, 3), (4, 4)])
def test_partition_and_merge_are_inverse(size, window) -> None:
    x = torch.randn(2, 4, *size)
    valid = torch.ones(2, *size, dtype=torch.bool)
    tokens, tvalid, padded = partition(x, valid, window)
    assert tokens.shape[1:] == (window[0] * window[1], 4)
    assert int(tvalid.sum()) == 2 * size[0] * size[1]  # padding cells are invalid
    assert torch.equal(merge(tokens, 2, padded, window, size), x)


def test_window_sides_follow_the_fractions_and_the_cap() -> None:
    attn = MultiSizeAttention(8, 2, (1.0, 0.5, 0.25, 0.125), max_window_cells=16)
    assert attn.windows((32, 32)) == [(16, 16), (16, 16), (8, 8), (4, 4)]
    assert attn.windows((8, 64)) == [(8, 16), (4, 16), (2, 16), (1, 8)]
    assert window_side(3, 0.125, 32) == 1


def test_attention_ignores_cells_outside_the_content() -> None:
    """Changing the features of invalid cells changes nothing in valid cells, and invalid
    cells come out as 0."""
    torch.manual_seed(0)
    attn = MultiSizeAttention(8, 2, (1.0, 0.5), max_window_cells=32).eval()
    x = torch.randn(1, 8, 6, 10)
    valid = torch.zeros(1, 6, 10, dtype=torch.bool)
    valid[:, 1:5, 2:9] = True
    other = x.clone()
    other[:, :, ~valid[0]] = torch.randn(int((~valid).sum()) * 1, 8).T * 100
    with torch.no_grad():
        a, b = attn(x, valid), attn(other, valid)
    assert torch.allclose(a[:, :, valid[0]], b[:, :, valid[0]], atol=1e-5)
    assert torch.count_nonzero(a[:, :, ~valid[0]]) == 0


def test_segmenter_output_is_one_logit_per_finest_cell() -> None:
    net = ResidualSegmenter([6, 10], [8, 16], [3.5, 7.5], width=8, heads=2)
    res = [torch.randn(2, 6, 8, 12), torch.randn(2, 10, 4, 6)]
    valid = [torch.ones(2, 8, 12, dtype=torch.bool), torch.ones(2, 4, 6, dtype=torch.bool)]
    out = net(res, valid, torch.rand(2, 1, 8, 12))
    assert out.shape == (2, 1, 8, 12)
    with pytest.raises(ValueError, match="distance"):
        net(res, valid)


def test_segmenter_learns_where_the_residual_is_large() -> None:
    """A toy task: the target is where the first residual channel is large. A few hundred
    steps bring the loss well below its start."""
    torch.manual_seed(0)
    net = ResidualSegmenter([4], [8], [3.5], width=8, heads=2, use_distance=False)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    valid = [torch.ones(4, 8, 8, dtype=torch.bool)]
    losses = []
    for _ in range(150):
        res = torch.randn(4, 4, 8, 8) * 0.3
        target = (torch.rand(4, 1, 8, 8) < 0.15).float()
        res[:, :1] += target * 3.0
        logits = net([res], valid)
        loss = focal_loss(logits, target, valid[0][:, None]) + smooth_l1_loss(
            logits, target, valid[0][:, None]
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-10:]) < 0.25 * np.mean(losses[:10])


# ------------------------------------------------------------------ losses
def test_losses_are_zero_when_right_and_grow_when_wrong() -> None:
    target = torch.tensor([[[[1.0, 0.0]]]])
    valid = torch.ones(1, 1, 1, 2, dtype=torch.bool)
    right = torch.tensor([[[[12.0, -12.0]]]])
    wrong = -right
    assert focal_loss(right, target, valid) < 1e-6
    assert smooth_l1_loss(right, target, valid) < 1e-6
    assert focal_loss(wrong, target, valid) > 1.0
    assert smooth_l1_loss(wrong, target, valid) == pytest.approx(0.5, abs=1e-3)
    # invalid cells do not count
    half = torch.tensor([[[[True, False]]]])
    mixed = torch.tensor([[[[12.0, 12.0]]]])
    assert focal_loss(mixed, target, half) < 1e-6
    # focusing: an easy wrong-ish cell weighs less than with gamma 0
    mid = torch.tensor([[[[1.0, -1.0]]]])
    assert focal_loss(mid, target, valid, gamma=2.0) < focal_loss(mid, target, valid, gamma=0.0)


def test_training_targets_are_hard_at_the_share_and_weigh_defect_cells() -> None:
    share = torch.tensor([[[[0.0, 0.005, 0.02, 0.6]]]])
    valid = torch.tensor([[[[True, True, True, False]]]])
    cfg = RefineConfig(target_min_share=0.01, positive_weight=9.0)
    target, weight = training_targets(share, valid, cfg)
    assert target.tolist() == [[[[0.0, 0.0, 1.0, 1.0]]]]
    # no weight outside the content, 1 + 9 on the defect cells inside it
    assert weight.tolist() == [[[[1.0, 1.0, 10.0, 0.0]]]]
    plain_cfg = RefineConfig(target_min_share=None, positive_weight=0)
    soft, plain = training_targets(share, valid, plain_cfg)
    assert torch.equal(soft, share)
    assert plain.tolist() == [[[[1.0, 1.0, 1.0, 0.0]]]]
    # a weighted loss: the same wrong answer costs more on a weighted defect cell
    logits = torch.full_like(share, -3.0)
    assert focal_loss(logits, target, weight) > focal_loss(logits, target, plain)


def _refiner(**kw) -> ResidualRefiner:
    cfg = RefineConfig(**kw)
    return ResidualRefiner.new([8], [8], [3.5], cfg, 2.0, 2.0, np.ones(3, np.float32))


def test_fused_map_amplifies_the_distance_by_the_fuse_weight() -> None:
    distance = np.array([[2.0, 4.0]], np.float32)
    prob = np.array([[0.5, 1.0]], np.float32)
    np.testing.assert_allclose(_refiner(fuse_weight=0.0).combined(prob, distance), [[1.0, 2.0]])
    np.testing.assert_allclose(_refiner(fuse_weight=0.5).combined(prob, distance), [[1.25, 3.0]])
    np.testing.assert_allclose(
        _refiner(combine="refined", fuse_weight=0.5).combined(prob, distance), prob
    )
    with pytest.raises(ValueError, match="fuse_weight"):
        _refiner(fuse_weight=-1.0)


def test_fuse_weight_is_saved_and_old_files_fuse_with_weight_one() -> None:
    arrays, meta = _refiner(fuse_weight=0.25).to_arrays()
    assert ResidualRefiner.from_arrays(arrays, meta).fuse_weight == 0.25
    meta.pop("fuse_weight")
    assert ResidualRefiner.from_arrays(arrays, meta).fuse_weight == 1.0


# ------------------------------------------------------------------ generators
def _scene(seed: int = 0, size=(96, 128)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.full((*size, 3), 120, np.uint8)
    return np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("seed", range(6))
def test_a_pasted_defect_changes_only_pixels_at_its_mask(seed: int) -> None:
    rng = np.random.default_rng(seed)
    src = _scene(seed + 10, (80, 80))
    mask = np.zeros((80, 80), bool)
    mask[30:42, 20:50] = True
    src[mask] = (250, 30, 30)
    cfg = RefineConfig()
    image = _scene(seed)
    out, out_mask = paste_defect(image, RealDefect(src, mask), rng, cfg)
    assert out.shape == image.shape and out_mask.shape == image.shape[:2]
    assert out_mask.any()
    changed = np.abs(out.astype(int) - image.astype(int)).max(axis=2) > 0
    # the feathered rim lies within a few pixels of the mask; nothing changes farther away
    rim = int(np.ceil(3 * cfg.paste_feather_px * cfg.paste_scale[1] * 96 / 80)) + 2
    assert not (changed & ~binary_dilation(out_mask, iterations=rim)).any()
    # the mask is red defect pixels: they changed, strongly
    delta = np.abs(out.astype(int) - image.astype(int)).max(axis=2)
    assert (delta[out_mask] > 40).mean() > 0.9


def test_a_defect_needs_a_mask_that_matches_its_image() -> None:
    with pytest.raises(ValueError, match="does not match"):
        paste_defect(
            _scene(), RealDefect(_scene(1), np.ones((5, 5), bool)), np.random.default_rng()
        )
    with pytest.raises(ValueError, match="at least"):
        paste_defect(
            _scene(), RealDefect(_scene(1), np.zeros((96, 128), bool)), np.random.default_rng()
        )


@pytest.mark.parametrize("kind", GENERATORS)
def test_every_generator_changes_the_image_only_inside_its_mask(kind: str) -> None:
    weights = tuple(1.0 if g == kind else 0.0 for g in GENERATORS)
    cfg = RefineConfig(kind_weights=weights, paste_feather_px=0.0)
    src = _scene(3)
    mask = np.zeros(src.shape[:2], bool)
    mask[40:50, 40:70] = True
    src[mask] = 255
    for seed in range(4):
        image = _scene(seed)
        out, out_mask, used = make_anomaly(
            image, np.random.default_rng(seed), cfg, [RealDefect(src, mask)]
        )
        assert used == kind or (kind == "painted" and used == "perlin")
        changed = (out != image).any(axis=2)
        # a paste is resampled: its weight fades out within a pixel or two of its mask
        allowed = binary_dilation(out_mask, iterations=2) if kind == "paste" else out_mask
        assert out_mask.any() and not (changed & ~allowed).any()
        assert changed[out_mask].mean() > 0.5


def test_paste_is_never_drawn_without_real_defects() -> None:
    cfg = RefineConfig(kind_weights=(0.0, 0.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="no generator"):
        make_anomaly(_scene(), np.random.default_rng(0), cfg, [])


# ------------------------------------------------------------------ targets
def test_mask_to_grid_gives_each_cell_the_share_it_covers() -> None:
    geom = plan_geometry((64, 96), 64, "native", multiple=32)
    assert geom.input_hw == (64, 96)
    mask = np.zeros((64, 96), bool)
    mask[8:16, 16:24] = True  # exactly cell (1, 2) of stride 8
    mask[40:44, 0:8] = True  # half of cell (5, 0)
    grid = mask_to_grid(mask, geom, 8, 3.5)
    assert grid.shape == (8, 12)
    assert grid[1, 2] == pytest.approx(1.0, abs=1e-5)
    assert grid[5, 0] == pytest.approx(0.5, abs=1e-5)
    assert grid.sum() == pytest.approx(1.5, abs=1e-4)


# ------------------------------------------------------------------ training and save/load
@pytest.fixture(scope="module")
def refined(small_config, synth_samples):
    normals = [s.image for s in synth_samples if s.label == "good"][:16]
    cfg = small_config.with_overrides(refine={"n_samples": 24, "epochs": 2, "batch_size": 4})
    det = PatchCoreDetector(cfg)
    det.fit(normals)
    base = (det.threshold, det.calibration_scores.copy())
    defects = [RealDefect(s.image, s.mask) for s in synth_samples if s.label != "good"][:2]
    report = fit_refiner(det, normals, defects)
    return det, report, base


def test_refinement_installs_a_calibrated_refiner(refined, synth_samples) -> None:
    det, report, (base_threshold, _) = refined
    assert det.refiner is not None
    assert sum(report.kinds.values()) == 24 + 2 * det.config.refine.real_repeats
    assert report.kinds["real"] == 2 * det.config.refine.real_repeats
    assert report.n_calibration == 4 and np.isfinite(report.final_loss)
    images = [s.image for s in held_out(synth_samples)][:4]
    # the default: fused maps, the PatchCore score and threshold
    assert det.refiner.combine == "fused" and det.threshold == base_threshold
    fused = det.score(images)
    det.set_refiner_mode("refined", "refined")
    try:
        assert det.threshold == pytest.approx(det.refiner.refined_threshold)
        assert 0.0 <= det.threshold <= 1.0  # a probability
        assert len(det.calibration_scores) == report.n_calibration
        for r in det.score(images):
            assert 0.0 <= r.score <= 1.0 and r.anomaly_map.max() <= 1.0
    finally:
        det.set_refiner_mode("fused", "patchcore")
    assert det.threshold == base_threshold
    assert det.refiner.fuse_weight == det.config.refine.fuse_weight
    det.set_refiner_mode("fused", "patchcore", 0.0)
    try:  # weight 0: the PatchCore map divided by the distance scale (checked below)
        zero = det.score(images[:2])
    finally:
        det.set_refiner_mode("fused", "patchcore", det.config.refine.fuse_weight)
    plain = copy.copy(det)
    plain.remove_refiner()
    assert plain.refiner is None and plain.threshold == base_threshold
    # fused maps are the PatchCore maps amplified where the segmenter sees a defect
    for f, p in zip(fused, plain.score(images)):
        assert f.score == pytest.approx(p.score)
        assert not np.allclose(f.anomaly_map, p.anomaly_map / det.refiner.distance_scale)
    for z, p in zip(zero, plain.score(images[:2])):
        np.testing.assert_allclose(
            z.anomaly_map, p.anomaly_map / det.refiner.distance_scale, rtol=1e-4, atol=1e-5
        )


def test_a_refined_detector_saves_and_loads_with_the_same_maps(refined, synth_samples, tmp_path):
    det, _, _ = refined
    images = [s.image for s in held_out(synth_samples)][:3]
    before = det.score(images)
    loaded = PatchCoreDetector.load(det.save(tmp_path / "refined.npz"), device="cpu")
    assert loaded.refiner is not None and loaded.threshold == pytest.approx(det.threshold)
    assert loaded.refiner.combine == det.refiner.combine
    assert loaded.refiner.refined_threshold == pytest.approx(det.refiner.refined_threshold)
    after = loaded.score(images)
    for a, b in zip(before, after):
        assert a.score == pytest.approx(b.score, abs=1e-6)
        np.testing.assert_allclose(a.anomaly_map, b.anomaly_map, atol=1e-6)
    assert loaded.refiner.report["n_real"] == 2
    assert np.array_equal(loaded.bank_origin, det.bank_origin)


def test_patch_distances_can_leave_an_image_out(fitted, synth_samples) -> None:
    det, _ = fitted
    normal = [s.image for s in synth_samples if s.label == "good"][0]
    batch = next(det.iter_patches([normal]))
    content = batch.content(0)
    own = det.patch_distances(content)
    unseen = det.patch_distances(content, exclude=0)
    assert (unseen >= own - 1e-6).all() and unseen.mean() > own.mean()
