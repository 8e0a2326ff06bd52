"""Anomalous regions of an image: MEBin mask -> anomaly-centred square crops -> region records.

One :class:`Region` per selected crop box (:mod:`engine.crops`), carrying what the discovery
stage needs: the box in original pixels, its anomaly mask (full image, for export and display),
the crop image, and per-pixel crop maps of the anomaly score and of the three ProtoAnomalyNCD
regions (background / object / anomaly, :func:`engine.prior.region_map`).

An image the detector flags but in which MEBin finds no stable component still gets one region:
AnomalyNCD crops such images whole; ProtoAtlas does the same and takes as its mask the pixels
whose map value is above the image's own ``fallback_quantile`` (so there is something to weigh).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from engine.crops import (
    Box,
    CropConfig,
    clip_box,
    extract_crops,
    select_boxes,
    side_limits,
    square_box,
    whole_image_box,
)
from engine.mebin import MEBinConfig, MEBinResult, binarize
from engine.prior import region_map


class ClippedMask:
    """Mixin of a record holding an anomaly mask cut to ``clip`` (top, left, bottom, right:
    the part of its box inside the image): :meth:`full_mask` pastes it back."""

    mask: np.ndarray
    clip: tuple[int, int, int, int]

    def full_mask(self, shape: tuple[int, int]) -> np.ndarray:
        """The region's anomaly mask as a bool array of the image's (H, W)."""
        return paste_mask(self.mask, self.clip, shape)


@dataclass
class Region(ClippedMask):
    """One anomaly-centred crop of one image."""

    #: Index of the image in the batch.
    image_index: int
    #: Square crop box in original image pixels (may stick out of the image; see crops.py).
    box: Box
    #: Bool anomaly mask inside the box at the original resolution, cut to the part of the
    #: box that lies inside the image (``clip``); see :meth:`full_mask`.
    mask: np.ndarray
    #: (top, left, bottom, right) of the box clipped to the image.
    clip: tuple[int, int, int, int]
    #: Anomaly pixels of the region (original resolution).
    area: int
    #: Maximum anomaly-map value inside the box.
    score: float
    #: (S, S, 3) uint8 crop image.
    crop: np.ndarray
    #: (S, S) float32 crop of the anomaly map.
    crop_map: np.ndarray
    #: (S, S) uint8 crop of the region codes (0 background, 1 object, 2 anomaly).
    crop_regions: np.ndarray

    @property
    def box_tuple(self) -> tuple[int, int, int, int]:
        """(top, left, bottom, right)."""
        return (self.box.top, self.box.left, self.box.bottom, self.box.right)


def paste_mask(
    mask: np.ndarray, clip: tuple[int, int, int, int], shape: tuple[int, ...]
) -> np.ndarray:
    """A (H, W) bool image (``shape[:2]``), False but for ``mask`` at ``clip`` (top, left,
    bottom, right; ``mask`` has the clip's height and width)."""
    out = np.zeros(shape[:2], dtype=bool)
    top, left, bottom, right = clip
    out[top:bottom, left:right] = mask
    return out


@dataclass
class ImageRegions:
    """What the region step found in one image."""

    mebin: MEBinResult
    regions: list[Region]
    #: Whether the regions come from the whole-image fallback (MEBin found nothing).
    fallback: bool


def fallback_mask(anomaly_map: np.ndarray, quantile: float) -> np.ndarray:
    """Pixels above the image's own ``quantile`` of its map (never empty)."""
    amap = np.asarray(anomaly_map, dtype=np.float32)
    mask = amap >= np.quantile(amap, quantile)
    if not mask.any():
        mask = amap >= amap.max()
    return mask


def image_regions(
    index: int,
    image: np.ndarray,
    anomaly_map: np.ndarray,
    object_mask: np.ndarray,
    *,
    mebin_cfg: MEBinConfig,
    crop_cfg: CropConfig,
    value_range: tuple[float, float],
    fallback_quantile: float,
    mebin_side: int,
    peak_fallback: bool = False,
) -> ImageRegions:
    """Regions of one image that the detector flagged as anomalous.

    MEBin runs on the map shrunk so that its shorter side is at most ``mebin_side`` pixels
    (:func:`shrink_to`): its erosion kernel and step are in pixels, so this makes the
    binarization behave the same for a 256 px and a 4000 px image (AnomalyNCD works at one
    fixed size) while a 2048 x 128 fabric strip keeps its 128 px. The mask is
    then resized back (nearest) and the crops are cut from the original image.
    ``value_range`` is MEBin's normalisation range (one per data set, see
    :func:`engine.mebin.normalisation_range`); ``object_mask`` comes from the object prior.
    When MEBin finds nothing, the image is cropped whole (AnomalyNCD), or with
    ``peak_fallback`` one square of ``crop_cfg.peak_side_fraction`` of the shorter side is
    cut around the map's maximum (the mask: the image's top ``1 - fallback_quantile`` of
    map values inside it).
    """
    amap = np.asarray(anomaly_map, dtype=np.float32)
    if amap.shape != image.shape[:2]:
        raise ValueError(
            f"image {index}: anomaly map {amap.shape} does not match the image {image.shape[:2]}"
        )
    small = shrink_to(amap, mebin_side)
    res = binarize(small, value_range, mebin_cfg)
    fallback = not res.is_anomalous
    if fallback:
        mask = fallback_mask(amap, fallback_quantile)
        if peak_fallback:
            box = peak_box(amap, crop_cfg)
            inside = np.zeros_like(mask)
            top, left, bottom, right = clip_box(box, mask.shape)
            inside[top:bottom, left:right] = True
            mask = mask & inside
            if not mask.any():
                mask[np.unravel_index(int(np.argmax(amap)), amap.shape)] = True
            boxes = [box]
        else:
            boxes = [whole_image_box(mask.shape)]
    else:
        mask = (
            res.mask
            if small.shape == amap.shape
            else cv2.resize(
                res.mask.view(np.uint8),
                (amap.shape[1], amap.shape[0]),
                interpolation=cv2.INTER_NEAREST,
            ).astype(bool)
        )
        boxes = select_boxes(mask, res.n_components, crop_cfg)
    codes = region_map(np.asarray(object_mask, dtype=bool), mask)
    regions = []
    for crop in extract_crops(image, amap, mask, boxes, crop_cfg):
        clip = clip_box(crop.box, mask.shape)
        regions.append(
            Region(
                image_index=index,
                box=crop.box,
                mask=mask[clip[0] : clip[2], clip[1] : clip[3]].copy(),
                clip=clip,
                area=crop.area,
                score=crop.score,
                crop=crop.image,
                crop_map=crop.anomaly_map,
                crop_regions=_crop_codes(codes, crop.box, crop_cfg.output_size),
            )
        )
    return ImageRegions(res, regions, fallback)


def peak_box(anomaly_map: np.ndarray, crop_cfg: CropConfig) -> Box:
    """Square of ``peak_side_fraction`` of the shorter side (at least the minimum box side)
    centred on the map's maximum, shifted inside the image."""
    amap = np.asarray(anomaly_map)
    y, x = np.unravel_index(int(np.argmax(amap)), amap.shape)
    min_side, _ = side_limits(amap.shape, crop_cfg)
    side = max(min_side, int(round(crop_cfg.peak_side_fraction * min(amap.shape))))
    return square_box((y + 0.5, x + 0.5), side, amap.shape)


def resize_long_side(array: np.ndarray, side: int) -> np.ndarray:
    """``array`` (image or map) shrunk (area interpolation) so its longer side is at most
    ``side``; returned as is (a contiguous copy) when already small enough."""
    h, w = array.shape[:2]
    return _shrunk(array, side / max(h, w))


#: :func:`shrink_to` keeps at most ``side**2 * WORK_MAX_ASPECT`` pixels.
WORK_MAX_ASPECT = 16


def shrink_to(array: np.ndarray, side: int) -> np.ndarray:
    """``array`` (image or map) shrunk (area interpolation) so that its *shorter* side is at
    most ``side`` and it holds at most ``side**2 * WORK_MAX_ASPECT`` pixels: a square image
    ends at ``side`` x ``side`` and an elongated one (fabric, 16:1) keeps its short side, so
    thin structures survive. Returned as is (a contiguous copy) when already small enough."""
    h, w = array.shape[:2]
    scale = min(side / min(h, w), float(np.sqrt(side * side * WORK_MAX_ASPECT / (h * w))))
    return _shrunk(array, scale)


def _shrunk(array: np.ndarray, scale: float) -> np.ndarray:
    h, w = array.shape[:2]
    if scale >= 1.0:
        return np.ascontiguousarray(array).copy()
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(array, size, interpolation=cv2.INTER_AREA)


def _crop_codes(codes: np.ndarray, box: Box, size: int) -> np.ndarray:
    """Region codes inside ``box`` resized to ``size`` (nearest); outside the image = background."""
    top, left, bottom, right = clip_box(box, codes.shape)
    cut = np.zeros((box.height, box.width), dtype=np.uint8)
    cut[top - box.top : bottom - box.top, left - box.left : right - box.left] = codes[
        top:bottom, left:right
    ]
    return cv2.resize(cut, (size, size), interpolation=cv2.INTER_NEAREST)


def reference_box(box: Box, image_shape: tuple[int, ...], ref_shape: tuple[int, ...]) -> Box:
    """The square in a reference image matching ``box`` of an image of ``image_shape``.

    The centre keeps its relative position and the side scales with the shorter image side,
    so a region keeps its scale relative to the part even when the reference (a normal image
    kept by the model) has another size.
    """
    sy = ref_shape[0] / image_shape[0]
    sx = ref_shape[1] / image_shape[1]
    scale = min(ref_shape[:2]) / min(image_shape[:2])
    cy, cx = box.centre
    side = max(1, int(round(box.side * scale)))
    top = int(round(cy * sy - side / 2))
    left = int(round(cx * sx - side / 2))
    return Box(top, left, top + side, left + side)
