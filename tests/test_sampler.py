"""Greedy coreset: covers the data far better than a random subset of the same size."""

from __future__ import annotations

import numpy as np
import pytest

from engine.knn import NearestNeighbours
from engine.sampler import coreset_size, greedy_coreset


def _clustered(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # one big blob and 8 small far-away blobs (rare normal patterns)
    big = rng.normal(0, 1, (4000, 16))
    small = [rng.normal(20 * rng.normal(size=16), 0.1, (5, 16)) for _ in range(8)]
    return np.concatenate([big, *small]).astype(np.float32)


def _coverage_radius(x: np.ndarray, idx: np.ndarray) -> float:
    dist, _ = NearestNeighbours(x[idx]).search(x, k=1)
    return float(dist.max())


def test_coreset_keeps_rare_patterns_that_random_sampling_misses() -> None:
    x = _clustered()
    idx = greedy_coreset(x, 40, projection_dim=8, seed=0)
    assert len(np.unique(idx)) == 40
    rand = np.random.default_rng(0).choice(len(x), 40, replace=False)
    assert _coverage_radius(x, idx) < 0.5 * _coverage_radius(x, rand)
    assert (idx >= 4000).sum() >= 8  # every small blob is represented


def test_coreset_is_deterministic_and_respects_candidates() -> None:
    x = _clustered(1)
    a = greedy_coreset(x, 30, max_candidates=1000, seed=3)
    b = greedy_coreset(x, 30, max_candidates=1000, seed=3)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, greedy_coreset(x, 30, max_candidates=1000, seed=4))


def test_coreset_size_rules() -> None:
    assert coreset_size(1000, 0.1, 50) == 50
    assert coreset_size(1000, 0.01, 50) == 10
    assert coreset_size(3, 0.01, 50) == 1
    with pytest.raises(ValueError):
        coreset_size(10, 0.0, 5)
    with pytest.raises(ValueError):
        greedy_coreset(np.zeros((5, 2), np.float32), 6)


def test_knn_returns_euclidean_distances() -> None:
    bank = np.array([[0, 0], [3, 4]], np.float32)
    dist, idx = NearestNeighbours(bank).search(np.array([[3, 4], [0, 1]], np.float32), k=1)
    assert idx[:, 0].tolist() == [1, 0]
    assert np.allclose(dist[:, 0], [0.0, 1.0])
    with pytest.raises(ValueError):
        NearestNeighbours(bank).search(np.zeros((1, 3), np.float32))
