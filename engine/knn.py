"""Nearest-neighbour search over a memory bank with FAISS (``faiss-cpu`` or ``faiss-gpu``).

The index is exact (``IndexFlatL2``): the coreset keeps the bank small enough that an exact
search is both fast and free of recall loss. On a CUDA device the index moves to the GPU when
the installed FAISS has GPU support; otherwise it stays on the CPU, so code works with either
package.
"""

from __future__ import annotations

import faiss
import numpy as np


def faiss_has_gpu() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


class NearestNeighbours:
    """Exact L2 k-NN over a fixed float32 bank; distances returned as Euclidean (not squared)."""

    def __init__(self, bank: np.ndarray, use_gpu: bool = False) -> None:
        bank = np.ascontiguousarray(bank, dtype=np.float32)
        if bank.ndim != 2 or len(bank) == 0:
            raise ValueError(f"memory bank must be a non-empty 2-D array, got {bank.shape}")
        self.bank = bank
        index: faiss.Index = faiss.IndexFlatL2(bank.shape[1])
        self.on_gpu = bool(use_gpu and faiss_has_gpu())
        if self.on_gpu:
            self._resources = faiss.StandardGpuResources()
            index = faiss.index_cpu_to_gpu(self._resources, 0, index)
        index.add(bank)
        self.index = index

    @property
    def dim(self) -> int:
        return self.bank.shape[1]

    def search(self, queries: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """(distances, indices), each (n_queries, k)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries must be (n, {self.dim}), got {queries.shape}")
        sq, idx = self.index.search(queries, min(k, len(self.bank)))
        return np.sqrt(np.maximum(sq, 0.0)), idx
