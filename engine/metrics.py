"""Evaluation metrics: anomaly detection (image/pixel AUROC, AUPRO) and defect-type clustering.

Conventions
-----------
* **Labels and masks**: ``1`` (or ``True``) means *anomalous*, ``0`` (``False``) means *normal*.
  Any other value is rejected with ``ValueError`` rather than silently thresholded.
* **Scores and maps**: higher means *more anomalous*. They must be finite numbers.
* **Pixel inputs** (``masks`` / ``maps``) are either one ``(N, H, W)`` array, a single ``(H, W)``
  array (one image), or a sequence of 2-D arrays whose shapes may differ from image to image;
  every map must have the same shape as its mask.
* **AUPRO** follows the official MVTec AD evaluation code: ground-truth regions are the
  8-connected components of each mask; PRO at threshold ``t`` is the mean, over all regions of
  all images, of the fraction of the region's pixels with score ``>= t``; FPR is the fraction of
  all normal pixels with score ``>= t``. The curve is computed exactly with one sort (a point
  per distinct score), integrated with the trapezoid rule up to ``fpr_limit`` (PRO linearly
  interpolated at exactly ``fpr_limit``) and divided by ``fpr_limit``, so a perfect map scores
  1.0 and a constant map scores ``fpr_limit / 2``.
* **Clustering**: ``y_true`` are true defect types, ``y_pred`` are cluster ids; both may be any
  hashable values (strings, ints, ...). Clusters are matched one-to-one to classes by the
  Hungarian algorithm on the contingency table (maximising agreements). When there are more
  clusters than classes, the unmatched clusters map to no class and all their members count as
  errors for accuracy and macro-F1.
* Degenerate inputs (empty, mismatched lengths, a single class for AUROC, no anomalous regions
  or no normal pixels for AUPRO) raise ``ValueError`` with a message saying what was wrong.

Pure numpy / scipy / scikit-learn: no torch.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import (
    adjusted_rand_score,
    f1_score,
    normalized_mutual_info_score,
    roc_auc_score,
)

__all__ = [
    "ClusterScores",
    "aupro",
    "cluster_metrics",
    "hungarian_match",
    "image_auroc",
    "pixel_auroc",
    "pro_curve",
]

#: 8-connectivity, as in the official MVTec AD evaluation.
_EIGHT_CONNECTED = np.ones((3, 3), dtype=int)


# --------------------------------------------------------------------------------------------
# Input validation helpers
# --------------------------------------------------------------------------------------------


def _binary(values: np.ndarray, name: str) -> np.ndarray:
    """``values`` as a bool array, or ``ValueError`` if it holds anything but 0/1/True/False."""
    if values.dtype == bool:
        return values
    if values.size and not np.isin(values, (0, 1)).all():
        found = np.unique(values[~np.isin(values, (0, 1))])[:5]
        raise ValueError(
            f"{name} must contain only 0/1 (or bool) values, found e.g. {found.tolist()}"
        )
    return values.astype(bool)


def _finite_scores(values: ArrayLike, name: str) -> np.ndarray:
    """``values`` as a float64 array, or ``ValueError`` if any entry is NaN/inf or non-numeric."""
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric: {exc}") from exc
    if not np.isfinite(array).all():
        raise ValueError(f"{name} must be finite (found NaN or inf)")
    return array


def _image_list(images: ArrayLike | Sequence[ArrayLike], name: str) -> list[np.ndarray]:
    """Split pixel input into a list of 2-D arrays (see module docstring for accepted forms)."""
    if isinstance(images, np.ndarray):
        if images.ndim == 3:
            return list(images)
        if images.ndim == 2:
            return [images]
        raise ValueError(
            f"{name} must be (N, H, W), (H, W) or a list of 2-D arrays, got ndim={images.ndim}"
        )
    if not isinstance(images, Iterable):
        raise TypeError(
            f"{name} must be an array or a sequence of 2-D arrays, got {type(images).__name__}"
        )
    out = [np.asarray(image) for image in images]
    for i, image in enumerate(out):
        if image.ndim != 2:
            raise ValueError(f"{name}[{i}] must be a 2-D array, got shape {image.shape}")
    return out


def _paired_images(
    masks: ArrayLike | Sequence[ArrayLike], maps: ArrayLike | Sequence[ArrayLike]
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Validated (bool masks, float64 maps) lists of equal length and matching shapes."""
    mask_list = _image_list(masks, "masks")
    map_list = _image_list(maps, "maps")
    if len(mask_list) != len(map_list):
        raise ValueError(f"got {len(mask_list)} masks but {len(map_list)} maps")
    if not mask_list:
        raise ValueError("masks and maps are empty")
    for i, (mask, amap) in enumerate(zip(mask_list, map_list)):
        if mask.shape != amap.shape:
            raise ValueError(
                f"image {i}: mask shape {mask.shape} differs from map shape {amap.shape}"
            )
    return (
        [_binary(mask, f"masks[{i}]") for i, mask in enumerate(mask_list)],
        [_finite_scores(amap, f"maps[{i}]") for i, amap in enumerate(map_list)],
    )


def _binary_auroc(labels: np.ndarray, scores: np.ndarray, what: str) -> float:
    """ROC AUC of flat bool ``labels`` against flat ``scores``; needs both classes present."""
    n_pos = int(labels.sum())
    if n_pos == 0 or n_pos == labels.size:
        present = "anomalous (1)" if n_pos else "normal (0)"
        raise ValueError(
            f"{what} AUROC needs both normal (0) and anomalous (1) samples; only {present} present"
        )
    return float(roc_auc_score(labels, scores))


# --------------------------------------------------------------------------------------------
# Anomaly detection
# --------------------------------------------------------------------------------------------


def image_auroc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Image-level ROC AUC.

    Args:
        labels: 1-D, 0 = normal, 1 = anomalous (bool accepted).
        scores: 1-D, same length, higher = more anomalous.

    Raises:
        ValueError: on length/shape mismatch, non-binary labels, non-finite scores, empty input
            or when only one class is present.
    """
    label_array = np.asarray(labels)
    score_array = _finite_scores(scores, "scores")
    if label_array.ndim != 1 or score_array.ndim != 1:
        raise ValueError(
            f"labels and scores must be 1-D, got shapes {label_array.shape} and {score_array.shape}"
        )
    if label_array.shape[0] != score_array.shape[0]:
        raise ValueError(f"got {label_array.shape[0]} labels but {score_array.shape[0]} scores")
    if label_array.size == 0:
        raise ValueError("labels and scores are empty")
    return _binary_auroc(_binary(label_array, "labels"), score_array, "image")


def pixel_auroc(
    masks: ArrayLike | Sequence[ArrayLike], maps: ArrayLike | Sequence[ArrayLike]
) -> float:
    """Pixel-level ROC AUC over all pixels of all images (flattened and concatenated).

    Args:
        masks: ground truth, (N, H, W) or a list of 2-D arrays; 1/True = anomalous pixel.
        maps: anomaly maps, same structure and shapes as ``masks``.

    Raises:
        ValueError: on shape mismatch, non-binary masks, non-finite maps, or a single class.
    """
    mask_list, map_list = _paired_images(masks, maps)
    labels = np.concatenate([mask.ravel() for mask in mask_list])
    scores = np.concatenate([amap.ravel() for amap in map_list])
    return _binary_auroc(labels, scores, "pixel")


def _pro_inputs(
    masks: ArrayLike | Sequence[ArrayLike], maps: ArrayLike | Sequence[ArrayLike]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """Flat per-pixel ``(scores, is_normal, pro_weight, n_normal, n_regions)`` of all images.

    ``pro_weight`` is ``1 / size`` of the pixel's 8-connected ground-truth region (0 for normal
    pixels); dividing its cumulative sum by ``n_regions`` gives PRO.
    """
    mask_list, map_list = _paired_images(masks, maps)
    n_pixels = sum(mask.size for mask in mask_list)
    scores = np.empty(n_pixels, dtype=np.float64)
    is_normal = np.empty(n_pixels, dtype=bool)
    pro_weight = np.empty(n_pixels, dtype=np.float64)
    n_regions = 0
    offset = 0
    for mask, amap in zip(mask_list, map_list):
        stop = offset + mask.size
        scores[offset:stop] = amap.ravel()
        labeled, n_here = ndimage.label(mask, structure=_EIGHT_CONNECTED)
        flat = labeled.ravel()
        is_normal[offset:stop] = flat == 0
        sizes = np.bincount(flat, minlength=n_here + 1).astype(np.float64)
        weight_of_label = np.zeros(n_here + 1, dtype=np.float64)
        weight_of_label[1:] = 1.0 / sizes[1:]
        pro_weight[offset:stop] = weight_of_label[flat]
        n_regions += int(n_here)
        offset = stop
    n_normal = int(np.count_nonzero(is_normal))
    if n_regions == 0:
        raise ValueError("AUPRO needs at least one anomalous region, but all masks are empty")
    if n_normal == 0:
        raise ValueError("AUPRO needs normal pixels, but every pixel of every mask is anomalous")
    return scores, is_normal, pro_weight, n_normal, n_regions


def _sweep(
    scores: np.ndarray, is_normal: np.ndarray, pro_weight: np.ndarray, n_normal: int, n_regions: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(fpr, pro)`` at each distinct score of ``scores``, thresholds in decreasing order.

    ``n_normal`` / ``n_regions`` are the totals over *all* pixels, so a subset holding every
    pixel above some threshold yields exactly the matching prefix of the full curve.
    """
    order = np.argsort(scores)[::-1]
    sorted_scores = scores[order]
    fp_count = np.cumsum(is_normal[order], dtype=np.int64)
    pro_sum = np.cumsum(pro_weight[order])
    # Ties: a threshold admits every pixel of its score at once, so keep the last of each run.
    keep = np.empty(sorted_scores.size, dtype=bool)
    np.not_equal(sorted_scores[1:], sorted_scores[:-1], out=keep[:-1])
    keep[-1] = True
    fpr = fp_count[keep] / n_normal
    pro = np.minimum(pro_sum[keep] / n_regions, 1.0)
    return fpr, pro


def pro_curve(
    masks: ArrayLike | Sequence[ArrayLike], maps: ArrayLike | Sequence[ArrayLike]
) -> tuple[np.ndarray, np.ndarray]:
    """The exact PRO curve: ``(fpr, pro)``, both non-decreasing, from (0, 0) to (1, 1).

    One point per distinct score value ``t`` (all pixels with score >= ``t`` called anomalous),
    in decreasing order of ``t``, with (0, 0) prepended and (1, 1) appended as in the official
    MVTec AD code. Each pixel of a ground-truth region of size ``s`` adds
    ``1 / (n_regions * s)`` to PRO once its score is reached; each normal pixel adds
    ``1 / n_normal`` to FPR. Regions are 8-connected components of each mask.

    Raises:
        ValueError: on bad input, when the masks contain no anomalous region, or no normal pixel.
    """
    fpr, pro = _sweep(*_pro_inputs(masks, maps))
    return np.concatenate(([0.0], fpr, [1.0])), np.concatenate(([0.0], pro, [1.0]))


def _area_up_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid area under (x, y) for x in [x[0], x_max]; x sorted, ``x[0] <= x_max <= x[-1]``.

    ``y`` is linearly interpolated at ``x_max`` when ``x_max`` falls between two points
    (mirrors ``trapezoid`` of the MVTec AD evaluation code).
    """
    n_inside = int(np.searchsorted(x, x_max, side="right"))
    xs, ys = x[:n_inside], y[:n_inside]
    area = float(np.sum(0.5 * (ys[1:] + ys[:-1]) * np.diff(xs)))
    if xs[-1] < x_max:
        x0, x1, y0, y1 = x[n_inside - 1], x[n_inside], y[n_inside - 1], y[n_inside]
        y_at = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
        area += 0.5 * (y0 + y_at) * (x_max - x0)
    return area


def aupro(
    masks: ArrayLike | Sequence[ArrayLike],
    maps: ArrayLike | Sequence[ArrayLike],
    fpr_limit: float = 0.3,
) -> float:
    """Normalised area under the PRO curve for FPR in ``[0, fpr_limit]`` (MVTec AD definition).

    Returns a value in [0, 1]: 1.0 for a perfect map, ``fpr_limit / 2`` for a constant map.
    Images whose mask is empty contribute only normal pixels (false positives).

    Only pixels scoring at least the threshold where FPR first reaches ``fpr_limit`` are
    sorted (found in linear time with ``np.partition``); the curve prefix they give is exactly
    that of :func:`pro_curve`.

    Args:
        masks: ground truth, (N, H, W) or a list of 2-D arrays; 1/True = anomalous pixel.
        maps: anomaly maps, same structure and shapes as ``masks``; higher = more anomalous.
        fpr_limit: integration limit in (0, 1]; 0.3 is the MVTec AD standard.

    Raises:
        ValueError: on bad input, ``fpr_limit`` outside (0, 1], no anomalous region or no normal
            pixel.
    """
    limit = float(fpr_limit)
    if not 0.0 < limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    scores, is_normal, pro_weight, n_normal, n_regions = _pro_inputs(masks, maps)
    # Number of false positives at which FPR is safely >= limit (one spare against rounding).
    n_fp = min(n_normal, int(np.ceil(limit * n_normal)) + 1)
    if n_fp < n_normal:
        normal_scores = scores[is_normal]
        cutoff = np.partition(normal_scores, n_normal - n_fp)[n_normal - n_fp]
        top = scores >= cutoff
        scores, is_normal, pro_weight = scores[top], is_normal[top], pro_weight[top]
    fpr, pro = _sweep(scores, is_normal, pro_weight, n_normal, n_regions)
    fpr = np.concatenate(([0.0], fpr))
    pro = np.concatenate(([0.0], pro))
    if fpr[-1] < limit:  # only when the full curve was swept and rounding left it below 1
        fpr, pro = np.append(fpr, 1.0), np.append(pro, 1.0)
    return _area_up_to(fpr, pro, limit) / limit


# --------------------------------------------------------------------------------------------
# Clustering
# --------------------------------------------------------------------------------------------


def _label_list(values: Sequence[Hashable] | np.ndarray, name: str) -> list[Hashable]:
    """A flat list of hashable labels (numpy scalars turned into Python scalars)."""
    if isinstance(values, np.ndarray) and values.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {values.shape}")
    out: list[Hashable] = []
    for value in values:
        item: Any = value.item() if isinstance(value, np.generic) else value
        try:
            hash(item)
        except TypeError as exc:
            raise ValueError(
                f"{name} must hold hashable labels, got {type(item).__name__}"
            ) from exc
        out.append(item)
    return out


def _ordered_unique(values: list[Hashable]) -> list[Hashable]:
    """Distinct values, sorted when they are mutually comparable, else in order of appearance."""
    unique = list(dict.fromkeys(values))
    try:
        return sorted(unique)  # type: ignore[type-var]
    except TypeError:
        return unique


def _validated_pair(
    y_true: Sequence[Hashable] | np.ndarray, y_pred: Sequence[Hashable] | np.ndarray
) -> tuple[list[Hashable], list[Hashable]]:
    """Both label lists, checked for equal, non-zero length."""
    true_list = _label_list(y_true, "y_true")
    pred_list = _label_list(y_pred, "y_pred")
    if len(true_list) != len(pred_list):
        raise ValueError(
            "y_true and y_pred must have the same length, "
            f"got {len(true_list)} and {len(pred_list)}"
        )
    if not true_list:
        raise ValueError("y_true and y_pred are empty")
    return true_list, pred_list


def _encode(values: list[Hashable], vocabulary: list[Hashable]) -> np.ndarray:
    """Integer codes of ``values`` by their index in ``vocabulary``."""
    index = {value: i for i, value in enumerate(vocabulary)}
    return np.fromiter((index[value] for value in values), dtype=np.int64, count=len(values))


def _match(
    true_list: list[Hashable], pred_list: list[Hashable]
) -> tuple[dict[Hashable, Hashable], list[Hashable], list[Hashable], np.ndarray, np.ndarray]:
    """Hungarian mapping plus the class/cluster vocabularies and integer codes."""
    classes = _ordered_unique(true_list)
    clusters = _ordered_unique(pred_list)
    true_codes = _encode(true_list, classes)
    pred_codes = _encode(pred_list, clusters)
    contingency = np.zeros((len(clusters), len(classes)), dtype=np.int64)
    np.add.at(contingency, (pred_codes, true_codes), 1)
    rows, cols = linear_sum_assignment(contingency, maximize=True)
    mapping = {clusters[r]: classes[c] for r, c in zip(rows.tolist(), cols.tolist())}
    return mapping, classes, clusters, true_codes, pred_codes


def hungarian_match(
    y_true: Sequence[Hashable] | np.ndarray, y_pred: Sequence[Hashable] | np.ndarray
) -> dict[Hashable, Hashable]:
    """One-to-one map from predicted cluster id to true class maximising agreements.

    Solved with ``scipy.optimize.linear_sum_assignment`` on the (clusters x classes)
    contingency table. With more clusters than classes, the extra clusters are absent from the
    result; with more classes than clusters, some classes receive no cluster.

    Raises:
        ValueError: on empty input or a length mismatch.
    """
    true_list, pred_list = _validated_pair(y_true, y_pred)
    return _match(true_list, pred_list)[0]


@dataclass(frozen=True)
class ClusterScores:
    """Agreement between discovered clusters and true defect types (all scores in [0, 1],
    except ARI which is in [-0.5, 1] and ~0 for random assignments)."""

    nmi: float
    ari: float
    accuracy: float
    macro_f1: float
    n_clusters: int
    n_classes: int


def cluster_metrics(
    y_true: Sequence[Hashable] | np.ndarray, y_pred: Sequence[Hashable] | np.ndarray
) -> ClusterScores:
    """NMI, ARI, Hungarian-matched accuracy and macro-F1 of ``y_pred`` against ``y_true``.

    * NMI: ``normalized_mutual_info_score`` (arithmetic normalisation);
      ARI: ``adjusted_rand_score``.
    * accuracy: fraction of samples whose cluster maps (via :func:`hungarian_match`) to their class.
    * macro_f1: sklearn macro-F1 over the true classes after mapping predictions through the
      match; samples in unmatched clusters get a label that is wrong for every class.

    Raises:
        ValueError: on empty input or a length mismatch (the message names both lengths).
    """
    true_list, pred_list = _validated_pair(y_true, y_pred)
    mapping, classes, clusters, true_codes, pred_codes = _match(true_list, pred_list)
    class_code = {value: i for i, value in enumerate(classes)}
    # Code of the class each cluster maps to; -1 (never a true class) for unmatched clusters.
    mapped_of_cluster = np.array(
        [class_code[mapping[c]] if c in mapping else -1 for c in clusters], dtype=np.int64
    )
    mapped = mapped_of_cluster[pred_codes]
    return ClusterScores(
        nmi=float(normalized_mutual_info_score(true_codes, pred_codes)),
        ari=float(adjusted_rand_score(true_codes, pred_codes)),
        accuracy=float(np.mean(mapped == true_codes)),
        macro_f1=float(
            f1_score(
                true_codes, mapped, labels=np.arange(len(classes)), average="macro", zero_division=0
            )
        ),
        n_clusters=len(clusters),
        n_classes=len(classes),
    )
