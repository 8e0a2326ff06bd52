"""Memory-bank subsampling: greedy k-centre coreset (PatchCore), with random projection.

Greedy coreset picks, one at a time, the feature farthest from everything picked so far, so
the bank covers the whole normal feature distribution (rare normal patterns included) with a
fraction of its size. Distances are computed in a Gaussian random projection of
``projection_dim`` dimensions (Johnson-Lindenstrauss; PatchCore uses 128) over at most
``max_candidates`` randomly pre-drawn candidates, which bounds the cost at
``n_select x max_candidates x projection_dim`` multiply-adds whatever the data size.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm


def coreset_size(n_features: int, ratio: float, maximum: int) -> int:
    """How many bank entries to keep: ``ratio`` of the features, at most ``maximum``, >= 1."""
    if n_features <= 0:
        raise ValueError("no features to subsample")
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"coreset_ratio must be in (0, 1], got {ratio}")
    return int(max(1, min(maximum, round(n_features * ratio), n_features)))


def greedy_coreset(
    features: np.ndarray,
    n_select: int,
    *,
    projection_dim: int = 128,
    max_candidates: int | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> np.ndarray:
    """Indices (into ``features``) of a greedy k-centre coreset of ``n_select`` rows."""
    n = len(features)
    if not 1 <= n_select <= n:
        raise ValueError(f"n_select must be in 1..{n}, got {n_select}")
    rng = np.random.default_rng(seed)
    candidates = np.arange(n)
    if max_candidates is not None and n > max_candidates:
        candidates = np.sort(rng.choice(n, size=max(max_candidates, n_select), replace=False))
    if n_select == len(candidates):
        return candidates
    x = torch.as_tensor(features[candidates], dtype=torch.float32, device=device)
    if projection_dim and x.shape[1] > projection_dim:
        gen = torch.Generator().manual_seed(seed)
        proj = torch.randn(x.shape[1], projection_dim, generator=gen) / projection_dim**0.5
        x = x @ proj.to(device)
    sq_norms = (x * x).sum(dim=1)
    start = int(rng.integers(len(candidates)))
    min_dist = _sq_dist_to(x, sq_norms, start)
    chosen = [start]
    for _ in tqdm(range(n_select - 1), desc="coreset", disable=not progress, leave=False):
        idx = int(torch.argmax(min_dist))
        chosen.append(idx)
        torch.minimum(min_dist, _sq_dist_to(x, sq_norms, idx), out=min_dist)
    return candidates[np.asarray(chosen)]


def _sq_dist_to(x: torch.Tensor, sq_norms: torch.Tensor, idx: int) -> torch.Tensor:
    centre = x[idx]
    return (sq_norms - 2.0 * (x @ centre) + sq_norms[idx]).clamp_(min=0.0)
