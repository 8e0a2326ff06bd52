"""FAISS prototype index: the caller's type ids, exact cosine nearest, clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from engine.protoindex import PrototypeIndex

IDS = np.array([17, 4, 250, 9])


def vectors(seed: int = 0, d: int = 8) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(len(IDS), d)).astype(np.float32) * 3.0  # not unit: normalised


def test_search_returns_type_ids_of_the_nearest_prototypes() -> None:
    protos = vectors()
    index = PrototypeIndex(IDS, protos)
    assert len(index) == 4 and index.dim == 8
    rng = np.random.default_rng(1)
    queries = rng.normal(size=(50, 8)).astype(np.float32)
    sims, ids = index.search(queries, k=2)
    assert sims.shape == ids.shape == (50, 2)
    unit_p = protos / np.linalg.norm(protos, axis=1, keepdims=True)
    unit_q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    cos = unit_q @ unit_p.T
    order = np.argsort(-cos, axis=1)
    assert np.array_equal(ids[:, 0], IDS[order[:, 0]])
    assert np.array_equal(ids[:, 1], IDS[order[:, 1]])
    np.testing.assert_allclose(sims[:, 0], cos.max(axis=1), atol=1e-5)
    assert (sims[:, 0] >= sims[:, 1]).all()


def test_a_prototype_finds_itself_and_reconstructs() -> None:
    protos = vectors(2)
    index = PrototypeIndex(IDS, protos)
    sims, ids = index.search(protos * 0.5, k=1)  # scale does not matter (cosine)
    assert np.array_equal(ids[:, 0], IDS)
    np.testing.assert_allclose(sims[:, 0], 1.0, atol=1e-5)
    unit = protos[2] / np.linalg.norm(protos[2])
    np.testing.assert_allclose(index.reconstruct(250), unit, atol=1e-6)


def test_more_neighbours_than_prototypes_are_padded() -> None:
    index = PrototypeIndex(IDS[:2], vectors()[:2])
    sims, ids = index.search(vectors(3)[:1], k=4)
    assert list(ids[0, 2:]) == [-1, -1] and np.isneginf(sims[0, 2:]).all()
    assert set(ids[0, :2]) == set(IDS[:2])


def test_empty_index() -> None:
    index = PrototypeIndex(np.zeros(0, np.int64), np.zeros((0, 8), np.float32))
    assert len(index) == 0
    sims, ids = index.search(np.ones((3, 8), np.float32), k=2)
    assert ids.shape == (3, 2) and (ids == -1).all() and np.isneginf(sims).all()


def test_dimension_mismatch_and_bad_ids_are_clear_errors() -> None:
    index = PrototypeIndex(IDS, vectors())
    with pytest.raises(ValueError, match=r"embeddings must be \(n, 8\), got \(2, 5\)"):
        index.search(np.ones((2, 5), np.float32))
    with pytest.raises(ValueError, match="must be unique"):
        PrototypeIndex(np.array([1, 2, 2, 3]), vectors())
    with pytest.raises(ValueError, match="3 ids for prototype array of shape"):
        PrototypeIndex(IDS[:3], vectors())
