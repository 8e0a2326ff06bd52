"""Square crops around the main elements found by MEBin (AnomalyNCD's sub-image step).

* :func:`component_boxes`: one square box per 8-connected component of a mask, padded by
  ``pad_fraction`` of the component's longer side on each side, its side clamped to
  ``[min_side_fraction, max_side_fraction]`` of the shorter image side, and shifted to lie
  inside the image.
* :func:`merge_boxes`: boxes that overlap or are closer than ``merge_distance_fraction`` of
  the shorter image side are replaced by one square around their union, until no two boxes
  are that close. A merged square keeps the whole union (it is not bounded by the
  ``max_side_fraction`` limit, which only bounds the padding of a single component) but may
  not exceed the longer image side; on very elongated images it can therefore stick out
  across the shorter side, and :func:`extract_crops` pads it by edge replication.
* :func:`select_boxes`: keep the ``n_components + extra_boxes`` boxes holding the most anomaly
  pixels; an empty mask gives one square box covering the whole image.
* :func:`extract_crops`: cut each box from the image, the anomaly map and the mask, and resize
  to ``output_size`` x ``output_size``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from engine.config import CropConfig  # defined with the other configs; still importable here

#: 8-connectivity for components, as in MEBin.
_CONNECTIVITY = 8
#: Tolerance for float products such as ``0.1 * 250`` before rounding to whole pixels.
_ROUND_EPS = 1e-9


@dataclass(frozen=True)
class Box:
    """Axis-aligned box in pixel coordinates; ``bottom`` and ``right`` are exclusive."""

    top: int
    left: int
    bottom: int
    right: int

    def __post_init__(self) -> None:
        if self.bottom <= self.top or self.right <= self.left:
            raise ValueError(f"empty box: {self}")

    @property
    def height(self) -> int:
        return self.bottom - self.top

    @property
    def width(self) -> int:
        return self.right - self.left

    @property
    def side(self) -> int:
        """Longer side (the side of a square box)."""
        return max(self.height, self.width)

    @property
    def area(self) -> int:
        return self.height * self.width

    @property
    def centre(self) -> tuple[float, float]:
        """(row, column) of the box centre."""
        return (self.top + self.bottom) / 2, (self.left + self.right) / 2

    def intersects(self, other: Box) -> bool:
        """Whether the boxes share at least one pixel."""
        return (
            self.top < other.bottom
            and other.top < self.bottom
            and self.left < other.right
            and other.left < self.right
        )

    def distance(self, other: Box) -> float:
        """Euclidean gap between the boxes (0 when they touch or overlap)."""
        dy = max(0, other.top - self.bottom, self.top - other.bottom)
        dx = max(0, other.left - self.right, self.left - other.right)
        return math.hypot(dx, dy)

    def union(self, other: Box) -> Box:
        """Smallest box containing both."""
        return Box(
            min(self.top, other.top),
            min(self.left, other.left),
            max(self.bottom, other.bottom),
            max(self.right, other.right),
        )

    def contains(self, other: Box) -> bool:
        """Whether ``other`` lies entirely inside this box."""
        return (
            self.top <= other.top
            and self.left <= other.left
            and other.bottom <= self.bottom
            and other.right <= self.right
        )


@dataclass
class Crop:
    """One square sub-image around a main element, resized to ``output_size``."""

    box: Box
    #: (S, S, 3) uint8 image crop.
    image: np.ndarray
    #: (S, S) float32 anomaly-map crop (bilinear).
    anomaly_map: np.ndarray
    #: (S, S) bool mask crop (nearest neighbour).
    mask: np.ndarray
    #: Anomaly pixels inside the box at the original resolution.
    area: int
    #: Maximum of the anomaly map inside the box.
    score: float


def side_limits(image_shape: tuple[int, ...], cfg: CropConfig = CropConfig()) -> tuple[int, int]:
    """(min, max) side of a single-component box for an image of ``image_shape``."""
    short = min(image_shape[:2])
    min_side = max(1, cfg.min_side_px, math.ceil(cfg.min_side_fraction * short - _ROUND_EPS))
    max_side = math.floor(cfg.max_side_fraction * short + _ROUND_EPS)
    return min(min_side, short), max(min_side, min(max_side, short))


def square_box(centre: tuple[float, float], side: int, image_shape: tuple[int, ...]) -> Box:
    """Square of ``side`` centred on ``centre``, shifted to lie inside the image.

    Along an axis shorter than ``side`` the square is centred on the image instead (it then
    sticks out on both sides by the same amount, give or take a pixel).
    """
    top = _place(centre[0], side, image_shape[0])
    left = _place(centre[1], side, image_shape[1])
    return Box(top, left, top + side, left + side)


def whole_image_box(image_shape: tuple[int, ...]) -> Box:
    """Square covering the whole image (side = longer image side)."""
    h, w = image_shape[:2]
    return square_box((h / 2, w / 2), max(h, w), image_shape)


def component_boxes(mask: np.ndarray, cfg: CropConfig = CropConfig()) -> list[Box]:
    """One padded, clamped square box per 8-connected component of ``mask`` (raster order)."""
    binary = _checked_mask(mask)
    n_labels, _, stats, _ = cv2.connectedComponentsWithStats(
        binary.view(np.uint8), connectivity=_CONNECTIVITY
    )
    min_side, max_side = side_limits(binary.shape, cfg)
    boxes = []
    for x, y, w, h in stats[1:n_labels, :4]:
        longer = int(max(w, h))
        side = math.ceil(longer * (1 + 2 * cfg.pad_fraction) - _ROUND_EPS)
        side = min(max(side, min_side), max_side)
        boxes.append(square_box((y + h / 2, x + w / 2), side, binary.shape))
    return boxes


def merge_boxes(
    boxes: Sequence[Box], image_shape: tuple[int, ...], cfg: CropConfig = CropConfig()
) -> list[Box]:
    """Merge overlapping / close boxes into squares around their union until none are close.

    Output order follows the first box of each merged group.
    """
    limit = cfg.merge_distance_fraction * min(image_shape[:2])
    current = list(boxes)
    while len(current) > 1:
        groups = _close_groups(current, limit)
        if len(groups) == len(current):
            break
        current = [_merge_group([current[i] for i in g], image_shape, cfg) for g in groups]
    return current


def anomaly_area(mask: np.ndarray, box: Box) -> int:
    """Number of mask pixels inside ``box`` (the part within the image)."""
    top, left, bottom, right = clip_box(box, mask.shape)
    return int(np.count_nonzero(mask[top:bottom, left:right]))


def select_boxes(mask: np.ndarray, n_components: int, cfg: CropConfig = CropConfig()) -> list[Box]:
    """The ``n_components + extra_boxes`` merged boxes with the most anomaly pixels.

    Largest first (ties keep raster order). An empty mask gives ``[whole_image_box]``.
    """
    if n_components < 0:
        raise ValueError(f"n_components must be >= 0, got {n_components}")
    binary = _checked_mask(mask)
    if not binary.any():
        return [whole_image_box(binary.shape)]
    boxes = merge_boxes(component_boxes(binary, cfg), binary.shape, cfg)
    areas = [anomaly_area(binary, b) for b in boxes]
    order = sorted(range(len(boxes)), key=lambda i: -areas[i])
    return [boxes[i] for i in order[: n_components + cfg.extra_boxes]]


def extract_crops(
    image: np.ndarray,
    anomaly_map: np.ndarray,
    mask: np.ndarray,
    boxes: Sequence[Box],
    cfg: CropConfig = CropConfig(),
) -> list[Crop]:
    """Cut every box from image, map and mask and resize to ``output_size``.

    ``image`` is (H, W, 3), (H, W, 1) or (H, W) uint8; map and mask are (H, W). Parts of a box
    outside the image are filled by edge replication (image and map) and ``False`` (mask).
    """
    rgb = _checked_image(image)
    amap = np.asarray(anomaly_map, dtype=np.float32)
    binary = _checked_mask(mask)
    if amap.shape != rgb.shape[:2] or binary.shape != rgb.shape[:2]:
        raise ValueError(
            f"image {rgb.shape[:2]}, anomaly map {amap.shape} and mask {binary.shape} "
            "must have the same height and width"
        )
    return [_crop_one(rgb, amap, binary, box, cfg.output_size) for box in boxes]


def _place(centre: float, side: int, extent: int) -> int:
    """Start of a ``side`` interval centred on ``centre`` and shifted into ``[0, extent)``."""
    if side > extent:
        return (extent - side) // 2
    start = math.floor(centre - side / 2 + 0.5)
    return min(max(start, 0), extent - side)


def _close_groups(boxes: Sequence[Box], limit: float) -> list[list[int]]:
    """Groups (connected components) of boxes linked by overlap or distance < ``limit``."""
    coords = np.array([[b.top, b.left, b.bottom, b.right] for b in boxes], dtype=np.float64)
    top, left, bottom, right = (coords[:, k] for k in range(4))
    gap_y = np.maximum(top[None, :] - bottom[:, None], top[:, None] - bottom[None, :])
    gap_x = np.maximum(left[None, :] - right[:, None], left[:, None] - right[None, :])
    overlap = (gap_y < 0) & (gap_x < 0)
    close = np.hypot(np.maximum(gap_y, 0), np.maximum(gap_x, 0)) < limit
    _, labels = connected_components(csr_matrix(overlap | close), directed=False)
    groups: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        groups.setdefault(int(label), []).append(index)
    return sorted(groups.values(), key=lambda g: g[0])


def _merge_group(group: Sequence[Box], image_shape: tuple[int, ...], cfg: CropConfig) -> Box:
    """Square around the union of ``group``, at least the minimum side, at most the image."""
    if len(group) == 1:
        return group[0]
    union = group[0]
    for box in group[1:]:
        union = union.union(box)
    min_side, _ = side_limits(image_shape, cfg)
    side = min(max(union.side, min_side), max(image_shape[:2]))
    return square_box(union.centre, side, image_shape)


def clip_box(box: Box, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of the part of ``box`` inside an image of ``shape``."""
    h, w = shape[:2]
    return max(box.top, 0), max(box.left, 0), min(box.bottom, h), min(box.right, w)


def _checked_mask(mask: np.ndarray) -> np.ndarray:
    arr = np.asarray(mask)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"mask must be a non-empty 2-D array, got shape {arr.shape}")
    return np.ascontiguousarray(arr.astype(bool, copy=False))


def _checked_image(image: np.ndarray) -> np.ndarray:
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3):
        raise ValueError(f"image must be (H, W), (H, W, 1) or (H, W, 3), got {arr.shape}")
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return arr


def _cut(array: np.ndarray, box: Box, border: int) -> np.ndarray:
    """The box region of ``array``, with out-of-image parts filled by ``border`` mode."""
    top, left, bottom, right = clip_box(box, array.shape)
    if bottom <= top or right <= left:
        raise ValueError(f"{box} does not overlap the image of shape {array.shape[:2]}")
    region = np.ascontiguousarray(array[top:bottom, left:right])
    pads = (top - box.top, box.bottom - bottom, left - box.left, box.right - right)
    if not any(pads):
        return region
    return cv2.copyMakeBorder(region, *pads, border, value=0)


def _crop_one(rgb: np.ndarray, amap: np.ndarray, binary: np.ndarray, box: Box, size: int) -> Crop:
    image_cut = _cut(rgb, box, cv2.BORDER_REPLICATE)
    map_cut = _cut(amap, box, cv2.BORDER_REPLICATE)
    mask_cut = _cut(binary.view(np.uint8), box, cv2.BORDER_CONSTANT)
    shrink = box.height * box.width > size * size
    image_interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    top, left, bottom, right = clip_box(box, rgb.shape)
    return Crop(
        box=box,
        image=cv2.resize(image_cut, (size, size), interpolation=image_interp),
        anomaly_map=cv2.resize(map_cut, (size, size), interpolation=cv2.INTER_LINEAR),
        mask=cv2.resize(mask_cut, (size, size), interpolation=cv2.INTER_NEAREST).astype(bool),
        area=int(np.count_nonzero(mask_cut)),
        score=float(amap[top:bottom, left:right].max()),
    )
