"""Threshold calibration on known-good images: folds, held-out scores, a false-alarm rate.

The detector's memory bank is the union of one coreset per *fold* of the normal images
(:func:`assign_folds`). A normal image of fold ``f`` is scored against the bank without fold
``f``'s entries, i.e. as an unseen normal image; every normal image can so be held out
without leaving any out of the final bank. The threshold is the ``1 - false_alarm_rate``
quantile of those held-out scores (:func:`threshold_at`): on data like the normals, about that
fraction of good images is flagged.
"""

from __future__ import annotations

import numpy as np


def even_sample(n: int, k: int) -> np.ndarray:
    """Sorted distinct indices of at most ``k`` of ``n`` items, spread evenly from the first
    to the last."""
    return np.unique(np.linspace(0, n - 1, num=min(n, k)).round().astype(int))


def assign_folds(n: int, folds: int, seed: int) -> np.ndarray:
    """Fold index (0..F-1) of each of ``n`` images, balanced, in a seeded random order;
    F = min(folds, n). One fold (all zeros) when ``folds <= 1`` or ``n <= 1``."""
    f = max(1, min(int(folds), int(n)))
    order = np.random.default_rng(seed).permutation(n)
    out = np.empty(n, dtype=np.int64)
    out[order] = np.arange(n) % f
    return out


def pick_calibration(folds: np.ndarray, max_images: int, seed: int) -> np.ndarray:
    """Sorted indices of at most ``max_images`` images to hold out, spread evenly over the
    folds; none when there is a single fold (nothing to hold an image out against)."""
    n_folds = int(folds.max()) + 1 if len(folds) else 0
    if n_folds < 2:
        return np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(seed + 1)
    order = rng.permutation(len(folds))
    # round-robin over folds in that random order
    by_fold = [order[folds[order] == f] for f in range(n_folds)]
    picked: list[int] = []
    depth = 0
    while len(picked) < max_images and any(depth < len(b) for b in by_fold):
        for b in by_fold:
            if depth < len(b) and len(picked) < max_images:
                picked.append(int(b[depth]))
        depth += 1
    return np.sort(np.asarray(picked, dtype=np.int64))


def threshold_at(scores: np.ndarray, false_alarm_rate: float) -> float:
    """The score above which a fraction ``false_alarm_rate`` of ``scores`` lies.

    Linear interpolation between order statistics; with fewer than ``1 / rate`` scores this
    is (close to) their maximum. No scores: ``inf`` (nothing is flagged).
    """
    if not 0.0 < false_alarm_rate < 1.0:
        raise ValueError(f"false_alarm_rate must be in (0, 1), got {false_alarm_rate}")
    scores = np.asarray(scores, dtype=np.float64)
    if len(scores) == 0:
        return float("inf")
    return float(np.quantile(scores, 1.0 - false_alarm_rate))
