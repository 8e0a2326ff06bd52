"""Clustering helpers: K estimation, Ward (with micro-clusters), outliers, votes."""

from __future__ import annotations

import numpy as np
import pytest

import engine.clustering as clustering
from engine.clustering import (
    auto_min_size,
    cluster,
    estimate_k,
    image_votes,
    outlier_thresholds,
    region_weights,
    softmax,
    ward,
)
from engine.metrics import cluster_metrics

D = 16


def blobs(sizes, spread: float = 0.15, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Points around orthogonal unit directions, ``sizes[k]`` of them in group k."""
    rng = np.random.default_rng(seed)
    centres = np.linalg.qr(rng.normal(size=(D, len(sizes))))[0].T
    truth = np.repeat(np.arange(len(sizes)), sizes)
    x = centres[truth] + rng.normal(0, spread, (len(truth), D))
    return x.astype(np.float32), truth


@pytest.mark.parametrize("method", ["kmeans", "ward"])
@pytest.mark.parametrize("k", [2, 4, 6])
def test_estimate_k_finds_the_number_of_blobs(method, k) -> None:
    x, _ = blobs([12] * k, seed=k)
    found, scores = estimate_k(x, 10, restarts=3, seed=0, method=method)
    assert found == k
    assert set(scores) == set(range(2, 11))
    assert all(-1 <= s <= 1 for s in scores.values())


def test_estimate_k_respects_min_size() -> None:
    x, _ = blobs([15, 15, 15, 2], seed=1)  # a 2-point group far from the others
    assert estimate_k(x, 8, restarts=3, seed=0, method="ward")[0] == 4
    found, scores = estimate_k(x, 8, restarts=3, seed=0, method="ward", min_size=5)
    assert found == 3
    assert 4 not in scores  # the grouping with the 2-point group is not admissible


def test_estimate_k_small_inputs() -> None:
    x, _ = blobs([1, 1, 1])
    assert estimate_k(x, 5, restarts=1, seed=0) == (1, {})
    x, _ = blobs([2, 2])
    # every K would leave a group below min_size
    assert estimate_k(x, 5, restarts=1, seed=0, min_size=3)[0] == 1


def test_ward_recovers_groups_and_returns_unit_centres() -> None:
    x, truth = blobs([20, 8, 4], seed=2)  # uneven sizes
    labels, centres = ward(x, 3, max_points=2000, restarts=3, seed=0)
    assert cluster_metrics(truth, labels).ari == 1.0
    assert centres.shape == (3, D)
    np.testing.assert_allclose(np.linalg.norm(centres, axis=1), 1.0, atol=1e-5)
    # each centre is the direction of its members' mean
    for c in range(3):
        mean = x[labels == c] / np.linalg.norm(x[labels == c], axis=1, keepdims=True)
        mean = mean.mean(axis=0)
        assert centres[c] @ (mean / np.linalg.norm(mean)) > 0.9999


def test_ward_above_max_points_uses_micro_clusters(monkeypatch) -> None:
    x, truth = blobs([90, 60, 30], seed=3)
    calls = []
    real = clustering.spherical_kmeans

    def spy(data, k, **kw):
        calls.append((len(data), k))
        return real(data, k, **kw)

    monkeypatch.setattr(clustering, "spherical_kmeans", spy)
    labels, centres = ward(x, 3, max_points=25, restarts=2, seed=0)
    assert calls == [(180, 25)]  # 180 points -> 25 micro-clusters, then Ward on those
    assert labels.shape == (180,) and centres.shape == (3, D)
    assert cluster_metrics(truth, labels).ari == 1.0
    calls.clear()
    ward(x, 3, max_points=2000, restarts=2, seed=0)
    assert calls == []  # below the limit: plain Ward


def test_cluster_dispatch_and_k_bounds() -> None:
    x, truth = blobs([10, 10], seed=4)
    labels, centres = cluster(x, 2, method="kmeans", max_points=100, restarts=3, seed=0)
    assert cluster_metrics(truth, labels).ari == 1.0
    np.testing.assert_allclose(np.linalg.norm(centres, axis=1), 1.0, atol=1e-5)
    one, centre = cluster(x, 1, method="ward", max_points=100, restarts=1, seed=0)
    assert (one == 0).all() and centre.shape == (1, D)
    many, _ = cluster(x[:3], 10, method="ward", max_points=100, restarts=1, seed=0)
    assert sorted(many) == [0, 1, 2]  # K is capped at the number of points
    with pytest.raises(ValueError, match="unknown clustering method 'dbscan'"):
        cluster(x, 2, method="dbscan", max_points=100, restarts=1, seed=0)


#: Members a prototype needs for its own outlier statistics (fewer: pooled statistics).
OWN = clustering._MIN_MEMBERS_FOR_OWN_STATS


def test_outlier_threshold_flags_a_planted_far_point_only() -> None:
    rng = np.random.default_rng(5)
    sims = np.concatenate(
        [
            0.9 + rng.normal(0, 0.01, OWN),
            [0.3],  # prototype 0 + outlier
            0.7 + rng.normal(0, 0.02, OWN),
        ]
    )  # prototype 1
    labels = np.array([0] * (OWN + 1) + [1] * OWN)
    thr = outlier_thresholds(sims, labels, 2, mads=3.5)
    assert thr.shape == (2,) and thr.dtype == np.float32
    flagged = sims < thr[labels]
    assert flagged[OWN] and flagged.sum() == 1
    # per-prototype statistics: prototype 1's members (0.7) are not outliers by
    # prototype 0's standard
    assert thr[1] < 0.7 < thr[0]


def test_small_prototypes_use_pooled_statistics() -> None:
    rng = np.random.default_rng(6)
    big = 0.9 + rng.normal(0, 0.01, OWN)
    sims = np.concatenate([big, [0.5, 0.52]])
    labels = np.array([0] * OWN + [1, 1])  # prototype 1 has 2 members, 2 has none
    thr = outlier_thresholds(sims, labels, 3, mads=3.5)
    med = np.median(sims)
    pooled = med - 3.5 * max(np.median(np.abs(sims - med)) * 1.4826, 1e-3)
    assert thr[1] == pytest.approx(pooled) and thr[2] == pytest.approx(pooled)
    med0 = np.median(big)
    own = med0 - 3.5 * max(np.median(np.abs(big - med0)) * 1.4826, 1e-3)
    assert thr[0] == pytest.approx(own, abs=1e-6) and thr[0] > thr[1]


def test_image_votes_are_weighted_means() -> None:
    probs = np.array([[1.0, 0.0], [0.0, 1.0], [0.2, 0.8]])
    weights = region_weights([9.0, 1.0, 4.0], [1.0, 1.0, 0.5])  # sqrt(area) * score
    np.testing.assert_allclose(weights, [3.0, 1.0, 1.0])
    votes = image_votes(probs, weights, np.array([0, 0, 2]), 3)
    np.testing.assert_allclose(votes[0], [0.75, 0.25], atol=1e-6)
    np.testing.assert_allclose(votes[1], [0.0, 0.0])  # no region
    np.testing.assert_allclose(votes[2], [0.2, 0.8], atol=1e-6)
    # a heavier region wins the image even against a more confident light one
    votes = image_votes(
        np.array([[0.6, 0.4], [0.0, 1.0]]),
        region_weights([400.0, 4.0], [1.0, 1.0]),
        np.array([0, 0]),
        1,
    )
    assert votes[0].argmax() == 0
    # tiny areas and scores are floored, never zero weight
    assert (region_weights([0.0], [0.0]) > 0).all()


def test_auto_min_size() -> None:
    assert auto_min_size(10, 0.08, 25) == 3  # floor
    assert auto_min_size(100, 0.08, 25) == 8
    assert auto_min_size(101, 0.08, 25) == 9  # ceil
    assert auto_min_size(10_000, 0.08, 25) == 25  # cap


def test_softmax_rows_sum_to_one_and_sharpen() -> None:
    p = softmax(np.array([[0.9, 0.8], [0.1, 0.1]]), 0.05)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-6)
    assert p[0, 0] == pytest.approx(1 / (1 + np.exp(-2.0)), rel=1e-5)
    np.testing.assert_allclose(p[1], [0.5, 0.5])
