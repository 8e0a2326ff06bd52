"""FAISS index of type prototypes: inner product over unit vectors, ids = type ids.

``IndexIDMap2`` over ``IndexFlatIP``: exact cosine search (a workspace has tens of types, not
millions), ids chosen by the caller (the storage layer's type ids), so a search result names a
type directly. Works with ``faiss-cpu`` and ``faiss-gpu``; the index is tiny and stays on the
CPU. Persisted as plain arrays (ids + vectors) inside the discovery model file.
"""

from __future__ import annotations

import faiss
import numpy as np

from engine.clustering import normalise


class PrototypeIndex:
    """Nearest prototypes of embeddings, returning the caller's type ids."""

    def __init__(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        vectors = np.ascontiguousarray(normalise(vectors), dtype=np.float32)
        if vectors.ndim != 2 or len(ids) != len(vectors):
            raise ValueError(f"{len(ids)} ids for prototype array of shape {vectors.shape}")
        if len(np.unique(ids)) != len(ids):
            raise ValueError("prototype ids must be unique")
        self.ids = ids
        self.vectors = vectors
        self.index = faiss.IndexIDMap2(faiss.IndexFlatIP(vectors.shape[1]))
        if len(ids):
            self.index.add_with_ids(vectors, ids)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    def search(self, embeddings: np.ndarray, k: int = 2) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, ids), each (N, k); missing neighbours have id -1 and sim -inf."""
        arr = np.asarray(embeddings)
        if arr.ndim != 2 or arr.shape[1] != self.dim:
            raise ValueError(f"embeddings must be (n, {self.dim}), got {arr.shape}")
        q = np.ascontiguousarray(normalise(arr), dtype=np.float32)
        if q.shape[1] != self.dim:
            raise ValueError(f"embeddings must be (n, {self.dim}), got {q.shape}")
        if len(self) == 0:
            return (np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64))
        sims, ids = self.index.search(q, k)
        sims = np.where(ids >= 0, sims, -np.inf).astype(np.float32)
        return sims, ids

    def reconstruct(self, type_id: int) -> np.ndarray:
        """The stored prototype vector of ``type_id``."""
        out = np.empty(self.dim, np.float32)  # faiss fills and returns this buffer
        return self.index.reconstruct(int(type_id), out)
