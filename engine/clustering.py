"""Clustering helpers on unit embeddings: k-means, the number of types, outliers, votes.

* :func:`cluster` -- the grouping that initialises the prototypes: Ward's agglomerative
  clustering (default) or k-means, on L2-normalised vectors, returning unit centres.
  Ward merges, bottom-up, the two groups whose union adds the least within-group variance;
  unlike k-means it does not assume round, equally sized groups, and on the small and
  uneven groups of a defect batch it measured clearly better (docs/decisions.md,
  *Discovery*). Above ``ward_max_points`` vectors,
  k-means first makes that many micro-clusters and Ward groups their centres (Ward needs
  quadratic memory).
* :func:`spherical_kmeans` -- k-means on L2-normalised vectors with unit centres, several
  seeded restarts (scikit-learn), so cosine similarity is the measure throughout.
* :func:`estimate_k` -- ``clusters="auto"``: the grouping for every K in ``2..max_k`` and
  the K with the highest mean silhouette (cosine), among the groupings whose every group
  holds at least ``min_size`` vectors. Without that floor the silhouette of a small batch
  keeps rising as groups shrink to two or three members (the K it finds per set:
  ``BENCHMARKS.md``, *The development suite*). On ties the smaller K wins. Fewer than 4
  regions give K = 1.
* :func:`outlier_thresholds` -- per prototype, ``median - m * MAD`` of its members'
  similarities (a robust z-score), the MAD never below a typical type's.
  A region below its prototype's threshold is an outlier: it is kept out of every type.
* :func:`image_votes` -- an image's type is the vote of its regions' prototype
  probabilities, each weighted by ``sqrt(anomaly area) * anomaly score`` (AnomalyNCD weighs
  crops by their mask area; the score adds how sure the detector is).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from sklearn.cluster import AgglomerativeClustering, KMeans
from sklearn.metrics import silhouette_score

from engine.config import DiscoveryConfig

#: MAD of a normal distribution relative to its standard deviation.
_MAD_TO_STD = 1.4826
#: Prototypes with fewer members than this use the pooled statistics.
_MIN_MEMBERS_FOR_OWN_STATS = 20
#: ``estimate_k`` on fewer vectors than this gives K = 1 (no grouping to compare).
MIN_POINTS_TO_SPLIT = 4
#: ``clusters="auto"`` never asks for types smaller than this (:func:`auto_min_size`).
AUTO_MIN_SIZE_FLOOR = 3


def normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def spherical_kmeans(
    x: np.ndarray, k: int, *, restarts: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(labels (N,), unit centres (k, d)) of k-means on the normalised rows of ``x``."""
    xn = normalise(x)
    k = int(max(1, min(k, len(xn))))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate points: fewer distinct clusters is fine
        km = KMeans(n_clusters=k, n_init=restarts, random_state=seed).fit(xn.astype(np.float64))
    labels = km.labels_.astype(np.int64)
    centres = normalise(
        np.stack(
            [
                xn[labels == c].mean(0) if (labels == c).any() else km.cluster_centers_[c]
                for c in range(k)
            ]
        )
    )
    return labels, centres


def ward(
    x: np.ndarray, k: int, *, max_points: int, restarts: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(labels (N,), unit centres (k, d)) of Ward clustering on the normalised rows of ``x``."""
    xn = normalise(x)
    k = int(max(1, min(k, len(xn))))
    if k == 1:
        return np.zeros(len(xn), np.int64), normalise(xn.mean(axis=0, keepdims=True))
    if len(xn) > max_points:
        micro, micro_centres = spherical_kmeans(xn, max_points, restarts=1, seed=seed)
        top, _ = ward(micro_centres, k, max_points=max_points, restarts=restarts, seed=seed)
        labels = top[micro]
    else:
        labels = (
            AgglomerativeClustering(n_clusters=k, linkage="ward")
            .fit_predict(xn.astype(np.float64))
            .astype(np.int64)
        )
    return labels, _centres(xn, labels, k)


def _centres(xn: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    return normalise(
        np.stack(
            [
                xn[labels == c].mean(axis=0)
                if (labels == c).any()
                else np.zeros(xn.shape[1], np.float32)
                for c in range(k)
            ]
        )
    )


def cluster(
    x: np.ndarray, k: int, *, method: str, max_points: int, restarts: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Group ``x`` into ``k`` clusters with ``method`` ("ward" or "kmeans")."""
    if method == "ward":
        return ward(x, k, max_points=max_points, restarts=restarts, seed=seed)
    if method == "kmeans":
        return spherical_kmeans(x, k, restarts=restarts, seed=seed)
    raise ValueError(f"unknown clustering method {method!r}: expected 'ward' or 'kmeans'")


def estimate_k(
    x: np.ndarray,
    max_k: int,
    *,
    restarts: int,
    seed: int,
    method: str = "kmeans",
    max_points: int = DiscoveryConfig().ward_max_points,
    min_size: int = 1,
) -> tuple[int, dict[int, float]]:
    """Best K by mean cosine silhouette over ``2..max_k`` among groupings whose groups all
    have at least ``min_size`` members (and the score of every admissible K)."""
    xn = normalise(x)
    n = len(xn)
    if n < MIN_POINTS_TO_SPLIT:
        return 1, {}
    scores: dict[int, float] = {}
    for k in range(2, min(max_k, n - 1) + 1):
        labels, _ = cluster(
            xn, k, method=method, max_points=max_points, restarts=restarts, seed=seed
        )
        counts = np.bincount(labels, minlength=k)
        if (counts > 0).sum() < 2 or counts[counts > 0].min() < min_size:
            continue
        scores[k] = float(silhouette_score(xn, labels, metric="cosine"))
    if not scores:
        return 1, scores
    best = max(scores.values())
    return min(k for k, s in scores.items() if s >= best - 1e-9), scores


def auto_min_size(n: int, fraction: float, cap: int) -> int:
    """Smallest type size ``clusters="auto"`` accepts for ``n`` regions."""
    return int(max(AUTO_MIN_SIZE_FLOOR, min(cap, int(np.ceil(fraction * n)))))


def outlier_thresholds(
    similarity: np.ndarray, labels: np.ndarray, n_prototypes: int, mads: float
) -> np.ndarray:
    """Per-prototype similarity threshold below which a member is an outlier:
    ``median_k - mads * max(MAD_k, typical MAD)``, the typical MAD being the median of the
    types' own MADs. Each type keeps its own median (a diffuse type is not cut off by the
    tighter ones) and a spread no smaller than a typical type's (a few near-identical
    members would otherwise make a type reject everything else). Types with fewer than
    ``_MIN_MEMBERS_FOR_OWN_STATS`` members use the pooled median and MAD."""
    similarity = np.asarray(similarity, dtype=np.float64)
    labels = np.asarray(labels)
    if len(similarity) == 0:
        return np.full(n_prototypes, -1.0, np.float32)
    pooled_med, pooled_mad = _median_mad(similarity)
    out = np.full(n_prototypes, pooled_med - mads * pooled_mad, dtype=np.float64)
    own = {
        k: _median_mad(similarity[labels == k])
        for k in range(n_prototypes)
        if (labels == k).sum() >= _MIN_MEMBERS_FOR_OWN_STATS
    }
    if own:
        typical = float(np.median([mad for _, mad in own.values()]))
        for k, (med, mad) in own.items():
            out[k] = med - mads * max(mad, typical)
    return out.astype(np.float32)


def _median_mad(values: np.ndarray) -> tuple[float, float]:
    med = float(np.median(values))
    mad = float(np.median(np.abs(values - med))) * _MAD_TO_STD
    return med, max(mad, 1e-3)


def softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def region_weights(areas: Sequence[float], scores: Sequence[float]) -> np.ndarray:
    """Vote weight of each region: sqrt(area) x score (both floored at a tiny positive)."""
    a = np.sqrt(np.maximum(np.asarray(areas, dtype=np.float64), 1.0))
    s = np.maximum(np.asarray(scores, dtype=np.float64), 1e-6)
    return (a * s).astype(np.float32)


def image_votes(
    probs: np.ndarray, weights: np.ndarray, image_index: np.ndarray, n_images: int
) -> np.ndarray:
    """(n_images, K) weighted mean of the region probabilities of each image (rows of
    images without regions are zero)."""
    probs = np.asarray(probs, dtype=np.float64)
    out = np.zeros((n_images, probs.shape[1]), dtype=np.float64)
    total = np.zeros(n_images, dtype=np.float64)
    np.add.at(out, image_index, probs * weights[:, None])
    np.add.at(total, image_index, weights)
    has = total > 0
    out[has] /= total[has, None]
    return out.astype(np.float32)
