"""MEBin: main-element binarization of anomaly maps (AnomalyNCD, CVPR 2025).

Turns each continuous anomaly map into a bool mask of its *main elements* and an estimate of
how many anomalies the image holds, without a hand-picked threshold:

1. One normalisation range per data set: from the smallest to the largest per-image maximum
   (:func:`normalisation_range`); each map is mapped linearly onto ``0..levels-1`` over that
   range, values outside it clipped.
2. The threshold sweeps from ``levels - 1`` down in steps of ``step``; at each step the map is
   binarized (``map >= t``), eroded once with an ``erosion_kernel`` square and its 8-connected
   components are counted (:attr:`MEBinResult.counts`).
3. A *stable interval* is a run of equal, non-zero counts at least ``min_stable_steps`` long
   (:func:`longest_stable_run`). The longest one wins; its count is the estimated number of
   anomalies and its low end is the threshold. No stable interval: the image is judged normal.
4. The final mask is the binarization at that threshold, *not* eroded, keeping only the
   components that survive the erosion (so specks smaller than the kernel are dropped).

Speed: binary erosion commutes with thresholding (``erode(map >= t) == erode_grey(map) >= t``,
both a minimum over the kernel window), so each map is eroded once in grey levels and every
sweep step costs one comparison plus one ``cv2.connectedComponents`` call; steps above the
eroded maximum are skipped (their count is 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from engine.config import MEBinConfig  # defined with the other configs; still importable here

#: 8-connectivity for component counting, as in AnomalyNCD.
_CONNECTIVITY = 8


@dataclass
class MEBinResult:
    """MEBin's verdict on one anomaly map."""

    #: Bool (H, W) mask of the main elements (empty when judged normal).
    mask: np.ndarray
    #: Chosen threshold in original map units (``mask == map >= threshold`` up to dropped
    #: specks); ``inf`` when the image is judged normal.
    threshold: float
    #: Estimated number of anomalies; 0 means the image is judged normal.
    n_components: int
    #: Length, in sweep steps, of the winning stable interval (0 when judged normal).
    stable_length: int
    #: Component count at each sweep step (aligned with :func:`sweep_thresholds`).
    counts: np.ndarray

    @property
    def is_anomalous(self) -> bool:
        """Whether MEBin found at least one anomaly."""
        return self.n_components > 0


def sweep_thresholds(cfg: MEBinConfig = MEBinConfig()) -> np.ndarray:
    """Normalised thresholds of the sweep, highest first (default: 255, 251, ..., 3)."""
    return np.arange(cfg.levels - 1, 0, -cfg.step, dtype=np.int64)


def longest_stable_run(counts: Sequence[int] | np.ndarray, min_len: int) -> tuple[int, int, int]:
    """Longest run of equal, non-zero values at least ``min_len`` long.

    Returns ``(count, start_idx, end_idx)`` with ``end_idx`` inclusive; on ties the earliest
    run (highest thresholds) wins. Returns ``(0, -1, -1)`` when no run qualifies.
    """
    values = np.asarray(counts, dtype=np.int64).ravel()
    best = (0, -1, -1)
    best_len = 0
    start = 0
    for i in range(1, len(values) + 1):
        if i < len(values) and values[i] == values[start]:
            continue
        length = i - start
        if values[start] != 0 and length >= min_len and length > best_len:
            best, best_len = (int(values[start]), start, i - 1), length
        start = i
    return best


def normalisation_range(
    maps: Sequence[np.ndarray], cfg: MEBinConfig = MEBinConfig()
) -> tuple[float, float]:
    """Data-set range ``(lo, hi)``: smallest and largest per-image maximum.

    With ``cfg.range_floor`` the low end is ``max(range_floor, lo)``; ``hi`` is never below
    ``lo`` (``lo == hi`` means every map will be judged normal).
    """
    arrays = [_checked_map(m, i) for i, m in enumerate(maps)]
    return _range_of(arrays, cfg)


def binarize(
    anomaly_map: np.ndarray, value_range: tuple[float, float], cfg: MEBinConfig = MEBinConfig()
) -> MEBinResult:
    """Run MEBin on one map, normalised over ``value_range`` (see :func:`normalisation_range`)."""
    return _binarize_checked(_checked_map(anomaly_map, None), _checked_range(value_range), cfg)


def mebin(
    maps: Sequence[np.ndarray],
    cfg: MEBinConfig = MEBinConfig(),
    value_range: tuple[float, float] | None = None,
) -> list[MEBinResult]:
    """Run MEBin on a data set of maps (shapes may differ).

    ``value_range`` defaults to :func:`normalisation_range` of ``maps``. Raises ``ValueError``
    naming the index of any map that is not 2-D or holds NaN / inf.
    """
    arrays = [_checked_map(m, i) for i, m in enumerate(maps)]
    if not arrays:
        return []
    rng = _range_of(arrays, cfg) if value_range is None else _checked_range(value_range)
    return [_binarize_checked(a, rng, cfg) for a in arrays]


def _checked_map(anomaly_map: np.ndarray, index: int | None) -> np.ndarray:
    """The map as a float32 2-D array; ValueError (naming ``index``) if invalid."""
    name = "anomaly map" if index is None else f"anomaly map {index}"
    arr = np.asarray(anomaly_map)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array, got shape {arr.shape}")
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or inf values")
    return arr


def _checked_range(value_range: tuple[float, float]) -> tuple[float, float]:
    lo, hi = (float(v) for v in value_range)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"value_range must be finite, got {value_range}")
    return lo, hi


def _range_of(arrays: Sequence[np.ndarray], cfg: MEBinConfig) -> tuple[float, float]:
    if not arrays:
        raise ValueError("normalisation_range needs at least one anomaly map")
    maxima = [float(a.max()) for a in arrays]
    lo, hi = min(maxima), max(maxima)
    if cfg.range_floor is not None:
        lo = max(float(cfg.range_floor), lo)
    return lo, max(hi, lo)


def _normalise(arr: np.ndarray, lo: float, hi: float, cfg: MEBinConfig) -> np.ndarray:
    """Map ``lo..hi`` onto ``0..levels-1`` (float32, clipped)."""
    top = cfg.levels - 1
    scaled = (arr - np.float32(lo)) * np.float32(top / (hi - lo))
    return np.clip(scaled, 0.0, top).astype(np.float32, copy=False)


def _count_sweep(eroded: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """8-connected component count of ``eroded >= t`` for every threshold ``t``."""
    counts = np.zeros(len(thresholds), dtype=np.int64)
    peak = float(eroded.max())
    for i, t in enumerate(thresholds):
        if t > peak:
            continue
        binary = (eroded >= t).view(np.uint8)
        n_labels, _ = cv2.connectedComponents(binary, connectivity=_CONNECTIVITY)
        counts[i] = n_labels - 1
    return counts


def _main_elements(binary: np.ndarray, survivors: np.ndarray) -> np.ndarray:
    """Components of ``binary`` that contain at least one ``survivors`` pixel."""
    _, labels = cv2.connectedComponents(binary.view(np.uint8), connectivity=_CONNECTIVITY)
    keep = np.unique(labels[survivors & binary])
    keep = keep[keep > 0]
    return np.isin(labels, keep)


def _normal_result(shape: tuple[int, ...], counts: np.ndarray) -> MEBinResult:
    return MEBinResult(
        mask=np.zeros(shape, dtype=bool),
        threshold=float("inf"),
        n_components=0,
        stable_length=0,
        counts=counts,
    )


def _binarize_checked(
    arr: np.ndarray, value_range: tuple[float, float], cfg: MEBinConfig
) -> MEBinResult:
    """MEBin on a validated float32 map."""
    lo, hi = value_range
    thresholds = sweep_thresholds(cfg)
    if hi <= lo or float(arr.max()) == float(arr.min()):
        return _normal_result(arr.shape, np.zeros(len(thresholds), dtype=np.int64))
    norm = _normalise(arr, lo, hi, cfg)
    kernel = np.ones((cfg.erosion_kernel, cfg.erosion_kernel), dtype=np.uint8)
    eroded = cv2.erode(norm, kernel)
    counts = _count_sweep(eroded, thresholds)
    count, start, end = longest_stable_run(counts, cfg.min_stable_steps)
    if count == 0:
        return _normal_result(arr.shape, counts)
    level = float(thresholds[end])
    mask = _main_elements(norm >= level, eroded >= level)
    return MEBinResult(
        mask=mask,
        threshold=lo + level / (cfg.levels - 1) * (hi - lo),
        n_components=count,
        stable_length=end - start + 1,
        counts=counts,
    )
