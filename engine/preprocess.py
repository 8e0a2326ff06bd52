"""Fitting images of any size and aspect ratio into the square network input, and back.

Two modes (``BackboneConfig.resize_mode``):

* ``letterbox``: scale the longer side to ``size``, keep the aspect ratio, pad the rest with
  the edge pixels (replicate), and remember where the image lies. Anomaly maps are cropped to
  that box before being resized back, and patches outside it are ignored.
* ``squash``: stretch to ``size`` x ``size`` (PatchCore's choice for square MVTec images).

Both are measured in ``benchmarks/bench_resize_mode.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from engine.config import IMAGENET_MEAN, IMAGENET_STD, ResizeMode


@dataclass(frozen=True)
class Geometry:
    """Where an original image of ``orig_hw`` lies inside the square network input."""

    orig_hw: tuple[int, int]
    size: int
    #: (top, left, bottom, right) of the image content in network-input pixels (exclusive end).
    box: tuple[int, int, int, int]

    def grid_valid(self, stride: int) -> np.ndarray:
        """Bool (size/stride, size/stride) mask of patches whose centre lies inside ``box``."""
        cells = self.size // stride
        centres = (np.arange(cells) + 0.5) * stride
        top, left, bottom, right = self.box
        rows = (centres >= top) & (centres < bottom)
        cols = (centres >= left) & (centres < right)
        return rows[:, None] & cols[None, :]


def fit_square(image: np.ndarray, size: int, mode: ResizeMode) -> tuple[np.ndarray, Geometry]:
    """Resize an (H, W, 3) uint8 image into a (size, size, 3) uint8 network input."""
    h, w = image.shape[:2]
    if mode == "squash":
        out = cv2.resize(image, (size, size), interpolation=_interp(h * w, size * size))
        return out, Geometry((h, w), size, (0, 0, size, size))
    if mode != "letterbox":
        raise ValueError(f"unknown resize_mode '{mode}': expected 'letterbox' or 'squash'")
    scale = size / max(h, w)
    new_h = max(1, min(size, round(h * scale)))
    new_w = max(1, min(size, round(w * scale)))
    resized = cv2.resize(image, (new_w, new_h), interpolation=_interp(h * w, new_h * new_w))
    top = (size - new_h) // 2
    left = (size - new_w) // 2
    out = cv2.copyMakeBorder(
        resized, top, size - new_h - top, left, size - new_w - left, cv2.BORDER_REPLICATE
    )
    return out, Geometry((h, w), size, (top, left, top + new_h, left + new_w))


def restore_map(score_map: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Crop a (size, size) map to the image box and resize it to the original (H, W)."""
    top, left, bottom, right = geometry.box
    cropped = np.ascontiguousarray(score_map[top:bottom, left:right], dtype=np.float32)
    h, w = geometry.orig_hw
    if cropped.shape == (h, w):
        return cropped
    return cv2.resize(cropped, (w, h), interpolation=cv2.INTER_LINEAR)


def to_tensor_batch(images: list[np.ndarray]) -> np.ndarray:
    """Stack (S, S, 3) uint8 images into a normalised float32 (B, 3, S, S) array."""
    batch = np.stack(images).astype(np.float32) / 255.0
    batch = (batch - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))


def _interp(src_pixels: int, dst_pixels: int) -> int:
    return cv2.INTER_AREA if dst_pixels < src_pixels else cv2.INTER_LINEAR
