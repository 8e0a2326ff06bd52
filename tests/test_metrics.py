"""Tests for engine.metrics: every metric against hand-computed cases and a brute-force AUPRO."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
from scipy import ndimage

from engine.metrics import (
    ClusterScores,
    aupro,
    cluster_metrics,
    hungarian_match,
    image_auroc,
    pixel_auroc,
    pro_curve,
)

# --------------------------------------------------------------------------------------------
# AUROC
# --------------------------------------------------------------------------------------------


def test_image_auroc_hand_computed() -> None:
    # positives {0.35, 0.8}, negatives {0.1, 0.4}; pairs pos > neg:
    # 0.35>0.1 yes, 0.35>0.4 no, 0.8>0.1 yes, 0.8>0.4 yes -> 3/4.
    assert image_auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)


def test_image_auroc_ties_count_half_and_bool_labels() -> None:
    # One pair, tied scores -> 1/2. Reversed ranking -> 0.
    assert image_auroc(np.array([False, True]), [0.5, 0.5]) == pytest.approx(0.5)
    assert image_auroc([1, 0], [0.1, 0.9]) == pytest.approx(0.0)


@pytest.mark.parametrize("labels", [[0, 0, 0], [1, 1]])
def test_image_auroc_single_class_raises(labels: list[int]) -> None:
    with pytest.raises(ValueError, match="both normal"):
        image_auroc(labels, np.linspace(0, 1, len(labels)))


def test_image_auroc_bad_input_raises() -> None:
    with pytest.raises(ValueError, match="3 labels but 2 scores"):
        image_auroc([0, 1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="0/1"):
        image_auroc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="finite"):
        image_auroc([0, 1], [0.1, float("nan")])
    with pytest.raises(ValueError, match="empty"):
        image_auroc([], [])


def test_pixel_auroc_hand_computed_varying_shapes() -> None:
    # image 1 (1x2): mask [0,1], map [0.2,0.6]; image 2 (2x1): mask [1,0]^T, map [0.3,0.5]^T.
    # positives {0.6, 0.3}, negatives {0.2, 0.5}:
    # 0.6>0.2 yes, 0.6>0.5 yes, 0.3>0.2 yes, 0.3>0.5 no -> 3/4.
    masks = [np.array([[0, 1]]), np.array([[1], [0]])]
    maps = [np.array([[0.2, 0.6]]), np.array([[0.3], [0.5]])]
    assert pixel_auroc(masks, maps) == pytest.approx(0.75)


def test_pixel_auroc_stacked_array_and_errors() -> None:
    masks = np.zeros((2, 3, 3), dtype=bool)
    masks[0, 1, 1] = True
    maps = masks.astype(float)  # perfect separation
    assert pixel_auroc(masks, maps) == pytest.approx(1.0)
    assert pixel_auroc(masks, 1.0 - maps) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="both normal"):
        pixel_auroc(np.zeros((2, 3, 3)), maps)
    with pytest.raises(ValueError, match="shape"):
        pixel_auroc([np.zeros((2, 2))], [np.zeros((2, 3))])
    with pytest.raises(ValueError, match="1 masks but 2 maps"):
        pixel_auroc([np.zeros((2, 2))], [np.zeros((2, 2)), np.zeros((2, 2))])


# --------------------------------------------------------------------------------------------
# AUPRO
# --------------------------------------------------------------------------------------------


def two_image_case() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Two components of different sizes; one normal pixel tied with an anomalous one.

    image 1 (1x4): mask [1 0 0 0], map [0.9 0.6 0.2 0.1]   -> region A = {0.9} (size 1)
    image 2 (2x2): mask [[1 1],[1 0]], map [[0.8 0.5],[0.3 0.8]]
                                                         -> region B = {0.8, 0.5, 0.3} (size 3)
    normal pixels: 0.6, 0.2, 0.1 (image 1) and 0.8 (image 2) -> n_normal = 4, n_regions = 2.
    """
    masks = [np.array([[1, 0, 0, 0]]), np.array([[1, 1], [1, 0]])]
    maps = [np.array([[0.9, 0.6, 0.2, 0.1]]), np.array([[0.8, 0.5], [0.3, 0.8]])]
    return masks, maps


def test_pro_curve_hand_computed_points() -> None:
    # threshold: FPR, PRO = (cov(A) + cov(B)) / 2
    # 0.9: 0/4,  (1 + 0)/2   = 1/2
    # 0.8: 1/4,  (1 + 1/3)/2 = 2/3   (normal 0.8 ties with a B pixel: one sloped step)
    # 0.6: 2/4,  2/3
    # 0.5: 2/4,  (1 + 2/3)/2 = 5/6
    # 0.3: 2/4,  1
    # 0.2: 3/4,  1
    # 0.1: 4/4,  1
    # plus (0, 0) in front and (1, 1) at the end.
    fpr, pro = pro_curve(*two_image_case())
    np.testing.assert_allclose(fpr, [0, 0, 0.25, 0.5, 0.5, 0.5, 0.75, 1, 1])
    np.testing.assert_allclose(pro, [0, 0.5, 2 / 3, 2 / 3, 5 / 6, 1, 1, 1, 1])


@pytest.mark.parametrize(
    ("limit", "expected"),
    [
        # up to 0.1: PRO at 0.1 on the segment (0,1/2)-(0.25,2/3) = 1/2 + (1/6)(0.1/0.25) = 17/30;
        # area = 0.1 * (1/2 + 17/30) / 2 = 4/75; / 0.1 = 8/15.
        (0.1, 8 / 15),
        # up to 0.3: 0.25 * (1/2 + 2/3) / 2 = 7/48, plus 0.05 * 2/3 = 1/30 -> 43/240; / 0.3 = 43/72.
        (0.3, 43 / 72),
        # up to 1: 7/48 + 0.25 * 2/3 + 0.5 * 1 = 7/48 + 8/48 + 24/48 = 39/48 = 13/16.
        (1.0, 13 / 16),
    ],
)
def test_aupro_hand_computed(limit: float, expected: float) -> None:
    assert aupro(*two_image_case(), fpr_limit=limit) == pytest.approx(expected, abs=1e-12)


def test_aupro_perfect_map_is_one() -> None:
    masks = np.zeros((3, 16, 16), dtype=bool)
    masks[0, 2:5, 2:9] = True
    masks[1, 10:12, 1:3] = True  # image 2 has an empty mask
    maps = masks.astype(np.float32) * 0.7 + 0.1
    # Curve: (0,0) -> (0,1) -> (1,1): area up to any limit is limit * 1.
    assert aupro(masks, maps) == pytest.approx(1.0)
    assert aupro(masks, maps, fpr_limit=0.05) == pytest.approx(1.0)


def test_aupro_constant_map_is_half_limit() -> None:
    # All scores tie: the only curve point is (1, 1), so the curve is the diagonal PRO = FPR;
    # area up to L is L^2 / 2, normalised by L -> L / 2.
    masks = np.zeros((2, 10, 10), dtype=bool)
    masks[0, 3:6, 3:6] = True
    maps = np.full((2, 10, 10), 0.42)
    assert aupro(masks, maps) == pytest.approx(0.15)
    assert aupro(masks, maps, fpr_limit=0.8) == pytest.approx(0.4)


def test_aupro_inverted_map_is_zero() -> None:
    # Every normal pixel outranks every anomalous one: PRO stays 0 until FPR = 1.
    masks = np.zeros((1, 6, 6), dtype=bool)
    masks[0, :2, :2] = True
    assert aupro(masks, 1.0 - masks.astype(float)) == pytest.approx(0.0)


def test_pro_uses_eight_connectivity() -> None:
    # mask: two pixels in a row plus one diagonal neighbour -> ONE 8-connected region of size 3
    # (with 4-connectivity it would be regions of size 2 and 1).
    # Only the diagonal pixel scores 1.0: PRO at t=1 is 1/3 (it would be (0 + 1)/2 with 4-conn).
    mask = np.array([[1, 1, 0], [0, 0, 1], [0, 0, 0]])
    amap = np.zeros((3, 3))
    amap[1, 2] = 1.0
    fpr, pro = pro_curve([mask], [amap])
    assert fpr[1] == 0.0
    assert pro[1] == pytest.approx(1 / 3)


def brute_force_aupro(masks: list[np.ndarray], maps: list[np.ndarray], limit: float) -> float:
    """Slow reference: evaluate PRO and FPR at every distinct threshold, integrate piecewise."""
    regions = []
    for i, mask in enumerate(masks):
        labeled, n = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [(i, labeled == k) for k in range(1, n + 1)]
    n_normal = sum(int((~mask.astype(bool)).sum()) for mask in masks)
    points = [(0.0, 0.0)]
    for t in np.unique(np.concatenate([m.ravel() for m in maps]))[::-1]:
        false_pos = sum(
            int(((amap >= t) & ~mask.astype(bool)).sum()) for mask, amap in zip(masks, maps)
        )
        pro = np.mean([np.mean(maps[i][region] >= t) for i, region in regions])
        points.append((false_pos / n_normal, float(pro)))
    points.append((1.0, 1.0))
    area = 0.0
    for (x0, y0), (x1, y1) in pairwise(points):
        if x0 >= limit:
            break
        if x1 <= limit:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            y_at = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            area += (limit - x0) * (y0 + y_at) / 2
    return area / limit


def random_case(seed: int, decimals: int | None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Blob masks (one image left empty) and noisy maps on images of varying shapes."""
    rng = np.random.default_rng(seed)
    masks, maps = [], []
    for shape in [(12, 10), (8, 8), (16, 9), (10, 10)]:
        blobs = ndimage.gaussian_filter(rng.random(shape), 1.5) > 0.55
        masks.append(blobs if len(masks) != 1 else np.zeros(shape, dtype=bool))
        amap = rng.random(shape) + 0.6 * masks[-1]
        maps.append(np.round(amap, decimals) if decimals is not None else amap)
    return masks, maps


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("decimals", [None, 1])  # 1 decimal -> many ties
@pytest.mark.parametrize("limit", [0.05, 0.3, 0.5, 1.0])
def test_aupro_matches_brute_force(seed: int, decimals: int | None, limit: float) -> None:
    masks, maps = random_case(seed, decimals)
    assert sum(ndimage.label(m, structure=np.ones((3, 3)))[1] for m in masks) >= 2
    expected = brute_force_aupro(masks, maps, limit)
    assert 0.0 < expected < 1.0
    assert aupro(masks, maps, fpr_limit=limit) == pytest.approx(expected, abs=1e-10)


def test_pro_curve_matches_brute_force_points() -> None:
    masks, maps = random_case(3, 1)
    fpr, pro = pro_curve(masks, maps)
    regions = []
    for i, mask in enumerate(masks):
        labeled, n = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [(i, labeled == k) for k in range(1, n + 1)]
    n_normal = sum(int((~m).sum()) for m in masks)
    thresholds = np.unique(np.concatenate([m.ravel() for m in maps]))[::-1]
    assert len(fpr) == len(thresholds) + 2
    for j, t in enumerate(thresholds, start=1):
        fp = sum(int(((a >= t) & ~m).sum()) for m, a in zip(masks, maps))
        assert fpr[j] == pytest.approx(fp / n_normal)
        assert pro[j] == pytest.approx(np.mean([np.mean(maps[i][r] >= t) for i, r in regions]))


def test_aupro_errors() -> None:
    maps = np.zeros((2, 4, 4))
    with pytest.raises(ValueError, match="anomalous region"):
        aupro(np.zeros((2, 4, 4), dtype=bool), maps)
    with pytest.raises(ValueError, match="normal pixels"):
        aupro(np.ones((2, 4, 4), dtype=bool), maps)
    mask = np.zeros((2, 4, 4), dtype=bool)
    mask[0, 0, 0] = True
    for bad_limit in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="fpr_limit"):
            aupro(mask, maps, fpr_limit=bad_limit)
    with pytest.raises(ValueError, match="0/1"):
        aupro(mask * 255, maps)
    with pytest.raises(ValueError, match="finite"):
        aupro(mask, np.full((2, 4, 4), np.inf))


def test_aupro_handles_mvtec_sized_input() -> None:
    # 83 images of 256x256 (an MVTec category's test split); speed is a benchmark matter.
    rng = np.random.default_rng(0)
    masks = np.zeros((83, 256, 256), dtype=bool)
    masks[:60, 100:140, 80:150] = True
    masks[:30, 10:20, 10:30] = True
    maps = rng.random((83, 256, 256), dtype=np.float32) + 0.5 * masks
    value = aupro(masks, maps)
    assert 0.5 < value < 1.0


# --------------------------------------------------------------------------------------------
# Clustering
# --------------------------------------------------------------------------------------------


def test_permuted_labels_score_perfectly() -> None:
    y_true = [0, 0, 1, 1, 2, 2]
    y_pred = ["x", "x", "z", "z", "y", "y"]
    assert hungarian_match(y_true, y_pred) == {"x": 0, "z": 1, "y": 2}
    scores = cluster_metrics(y_true, y_pred)
    assert scores == ClusterScores(
        nmi=pytest.approx(1.0),  # type: ignore[arg-type]
        ari=pytest.approx(1.0),  # type: ignore[arg-type]
        accuracy=1.0,
        macro_f1=pytest.approx(1.0),  # type: ignore[arg-type]
        n_clusters=3,
        n_classes=3,
    )


def test_cluster_metrics_hand_computed_confusion() -> None:
    # contingency (cluster -> class counts): 0: a2 | 1: a1 b2 | 2: c1
    # best match 0->a, 1->b, 2->c: 2 + 2 + 1 = 5 correct -> accuracy 5/6.
    # mapped predictions [a a b b b c]:
    #   a: tp 2 fp 0 fn 1 -> P 1,   R 2/3 -> F1 0.8
    #   b: tp 2 fp 1 fn 0 -> P 2/3, R 1   -> F1 0.8
    #   c: tp 1 fp 0 fn 0                 -> F1 1
    # macro-F1 = (0.8 + 0.8 + 1) / 3 = 13/15.
    y_true = ["a", "a", "a", "b", "b", "c"]
    y_pred = np.array([0, 0, 1, 1, 1, 2])
    assert hungarian_match(y_true, y_pred) == {0: "a", 1: "b", 2: "c"}
    scores = cluster_metrics(y_true, y_pred)
    assert scores.accuracy == pytest.approx(5 / 6)
    assert scores.macro_f1 == pytest.approx(13 / 15)
    assert 0.0 < scores.nmi < 1.0
    assert 0.0 < scores.ari < 1.0
    assert (scores.n_clusters, scores.n_classes) == (3, 3)


def test_more_clusters_than_classes() -> None:
    # contingency: 0: a2 | 1: b2 | 2: b2 -> 0->a and ONE of {1, 2} -> b; the other is unmatched.
    # accuracy = (2 + 2) / 6 = 2/3.
    # F1: a: P 1, R 1 -> 1;  b: tp 2, fp 0, fn 2 -> P 1, R 1/2 -> 2/3.  macro = (1 + 2/3)/2 = 5/6.
    y_true = ["a", "a", "b", "b", "b", "b"]
    y_pred = [0, 0, 1, 1, 2, 2]
    mapping = hungarian_match(y_true, y_pred)
    assert len(mapping) == 2
    assert mapping[0] == "a"
    assert sorted(v for k, v in mapping.items() if k != 0) == ["b"]
    scores = cluster_metrics(y_true, y_pred)
    assert scores.accuracy == pytest.approx(2 / 3)
    assert scores.macro_f1 == pytest.approx(5 / 6)
    assert (scores.n_clusters, scores.n_classes) == (3, 2)


def test_fewer_clusters_than_classes() -> None:
    # One cluster holding three classes: it maps to one class -> 1/3 correct.
    # F1: the matched class has P 1/3, R 1 -> 1/2; the other two 0 -> macro 1/6.
    # NMI and ARI of a constant prediction are 0.
    scores = cluster_metrics(["a", "b", "c"], ["k", "k", "k"])
    assert scores.accuracy == pytest.approx(1 / 3)
    assert scores.macro_f1 == pytest.approx(1 / 6)
    assert scores.nmi == pytest.approx(0.0)
    assert scores.ari == pytest.approx(0.0)
    assert len(hungarian_match(["a", "b", "c"], ["k", "k", "k"])) == 1


def test_cluster_scores_is_frozen() -> None:
    scores = cluster_metrics([1, 2], [1, 2])
    with pytest.raises(AttributeError):
        scores.nmi = 0.0  # type: ignore[misc]


def test_cluster_metrics_errors() -> None:
    with pytest.raises(ValueError, match="empty"):
        cluster_metrics([], [])
    with pytest.raises(ValueError, match="3 and 2"):
        cluster_metrics(["a", "b", "c"], [0, 1])
    with pytest.raises(ValueError, match="3 and 2"):
        hungarian_match(["a", "b", "c"], [0, 1])
    with pytest.raises(ValueError, match="1-D"):
        cluster_metrics(np.zeros((2, 2)), np.zeros((2, 2)))
