"""Fitting images of any size and aspect ratio into the network input, and back.

Modes (``BackboneConfig.resize_mode``), each giving a :class:`Geometry`:

* ``native``: scale so that the shorter side is ``size`` pixels and keep the aspect ratio,
  the longer side rounded to a multiple of ``multiple`` (the backbone's largest stride), so
  no padding is needed and every content edge is an input edge, as in the normals. Elongated
  or large inputs are processed in overlapping tiles (:func:`tile_starts`) by
  :mod:`engine.feature_grid`.
* ``area``: the same, with the *area* scaled to ``size`` x ``size``.
* ``letterbox``: scale the longer side to ``size``, keep the aspect ratio, pad the rest with
  the edge pixels (replicate) to a ``size`` x ``size`` square, and remember where the image
  lies. Patches outside it are ignored.
* ``squash``: stretch to ``size`` x ``size`` (PatchCore's choice for square MVTec images).

Coordinates: a pixel of index ``y`` has its centre at ``y``; a feature cell ``j`` of a stage
of stride ``s`` has its centre at input pixel ``s * j + offset`` (``offset`` measured per
backbone stage, :func:`engine.backbone.measure_offsets`). :func:`grid_to_image` samples a
cell grid at every content pixel with that mapping, so maps line up with the image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from engine.config import IMAGENET_MEAN, IMAGENET_STD, RESIZE_MODES, ResizeMode


@dataclass(frozen=True)
class Geometry:
    """Where an original image of ``orig_hw`` lies inside its network input."""

    orig_hw: tuple[int, int]
    #: (height, width) of the network input (a multiple of the backbone's largest stride).
    input_hw: tuple[int, int]
    #: (top, left, bottom, right) of the image content in input pixels (exclusive end).
    box: tuple[int, int, int, int]

    @property
    def content_hw(self) -> tuple[int, int]:
        top, left, bottom, right = self.box
        return bottom - top, right - left

    def grid_shape(self, stride: int) -> tuple[int, int]:
        """Cells of a stage of ``stride`` over the whole input."""
        return self.input_hw[0] // stride, self.input_hw[1] // stride

    def grid_valid(self, stride: int, offset: float | None = None) -> np.ndarray:
        """Bool grid of the cells whose centre lies inside the content ``box``.

        ``offset`` is the input pixel of cell 0's centre (default ``stride / 2 - 0.5``).
        """
        off = stride / 2 - 0.5 if offset is None else offset
        rows_n, cols_n = self.grid_shape(stride)
        top, left, bottom, right = self.box
        ys = np.arange(rows_n) * stride + off
        xs = np.arange(cols_n) * stride + off
        rows = (ys >= top - 0.5) & (ys < bottom - 0.5)
        cols = (xs >= left - 0.5) & (xs < right - 0.5)
        return rows[:, None] & cols[None, :]


def _round_to(value: float, multiple: int) -> int:
    return max(multiple, int(round(value / multiple)) * multiple)


def plan_geometry(
    hw: tuple[int, int], size: int, mode: ResizeMode, multiple: int = 32, context_pad: int = 0
) -> Geometry:
    """The :class:`Geometry` of an image of ``hw`` = (H, W) in ``mode`` (no pixels needed).

    ``context_pad`` (``native`` and ``area``): mirrored context of that many input pixels,
    rounded up to half of ``multiple``, on every side of the content.
    """
    h, w = int(hw[0]), int(hw[1])
    if h < 1 or w < 1:
        raise ValueError(f"image has no pixels: {w} x {h}")
    if mode not in RESIZE_MODES:
        raise ValueError(
            f"unknown resize_mode '{mode}': expected one of " + ", ".join(RESIZE_MODES)
        )
    if mode in ("squash", "letterbox"):
        size = _round_to(size, multiple)
    if mode == "squash":
        return Geometry((h, w), (size, size), (0, 0, size, size))
    if mode == "letterbox":
        scale = size / max(h, w)
        new_h = max(1, min(size, round(h * scale)))
        new_w = max(1, min(size, round(w * scale)))
        top, left = (size - new_h) // 2, (size - new_w) // 2
        return Geometry((h, w), (size, size), (top, left, top + new_h, left + new_w))
    scale = size / min(h, w) if mode == "native" else size / math.sqrt(h * w)
    new_h, new_w = _round_to(h * scale, multiple), _round_to(w * scale, multiple)
    half = max(1, multiple // 2)  # both sides together stay a multiple of ``multiple``
    pad = -(-max(0, int(context_pad)) // half) * half
    box = (pad, pad, pad + new_h, pad + new_w)
    return Geometry((h, w), (new_h + 2 * pad, new_w + 2 * pad), box)


def mixed_framing(
    shapes: list[tuple[int, int]], size: int, mode: ResizeMode, multiple: int, share: float
) -> bool:
    """Whether images of ``shapes`` (H, W) come in mixed framings: fewer than ``share`` of
    them get the most common network input shape. False for no images."""
    if not shapes:
        return False
    inputs: dict[tuple[int, int], int] = {}
    for hw in shapes:
        key = plan_geometry(hw, size, mode, multiple).input_hw
        inputs[key] = inputs.get(key, 0) + 1
    return max(inputs.values()) < share * len(shapes)


def intensity_range(
    images, low: float, high: float, max_pixels: int = 200_000
) -> tuple[float, float]:
    """(low, high) percentiles of the grey values of ``images`` (a seeded sample of at most
    ``max_pixels`` pixels per image): the stretch :func:`stretch_contrast` applies."""
    rng = np.random.default_rng(0)
    parts = []
    for image in images:
        flat = np.asarray(image).reshape(-1)
        if len(flat) > max_pixels:
            flat = flat[rng.integers(0, len(flat), max_pixels)]
        parts.append(flat)
    lo, hi = np.percentile(np.concatenate(parts), [low, high])
    return float(lo), float(hi)


def stretch_contrast(image: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map grey values ``lo`` .. ``hi`` (all channels at once, so colours keep their ratios)
    linearly onto 0..255, clipping outside. A range under one grey level changes nothing."""
    if hi - lo < 1.0:
        return image
    lut = np.clip((np.arange(256, dtype=np.float32) - lo) * (255.0 / (hi - lo)), 0, 255)
    return np.rint(lut).astype(np.uint8)[image]


def fit_input(
    image: np.ndarray,
    size: int,
    mode: ResizeMode,
    multiple: int = 32,
    intensity: tuple[float, float] | None = None,
    context_pad: int = 0,
) -> tuple[np.ndarray, Geometry]:
    """Resize an (H, W, 3) uint8 image into its (Hi, Wi, 3) uint8 network input;
    ``intensity`` = (lo, hi) grey levels stretches it first (:func:`stretch_contrast`);
    ``context_pad``: mirrored context around the content (:func:`plan_geometry`)."""
    if intensity is not None:
        image = stretch_contrast(image, *intensity)
    geom = plan_geometry(image.shape[:2], size, mode, multiple, context_pad)
    h, w = geom.orig_hw
    ch, cw = geom.content_hw
    resized = (
        image
        if (ch, cw) == (h, w)
        else cv2.resize(image, (cw, ch), interpolation=_interp(h * w, ch * cw))
    )
    top, left, bottom, right = geom.box
    ih, iw = geom.input_hw
    if (top, left, bottom, right) == (0, 0, ih, iw):
        return np.ascontiguousarray(resized), geom
    border = cv2.BORDER_REPLICATE if mode == "letterbox" else cv2.BORDER_REFLECT
    out = cv2.copyMakeBorder(resized, top, ih - bottom, left, iw - right, border)
    return out, geom


def fit_square(image: np.ndarray, size: int, mode: ResizeMode) -> tuple[np.ndarray, Geometry]:
    """:func:`fit_input` for the square modes (``letterbox``, ``squash``)."""
    if mode not in ("letterbox", "squash"):
        raise ValueError(f"fit_square takes resize_mode 'letterbox' or 'squash', got '{mode}'")
    return fit_input(image, size, mode)


def grid_to_image(grid: np.ndarray, stride: int, offset: float, geometry: Geometry) -> np.ndarray:
    """Bilinear samples of a (h, w) cell grid at every content pixel of the network input.

    Returns a float32 (content height, content width) map: pixel ``y`` of the input reads
    the grid at ``(y - offset) / stride`` (edges replicated).
    """
    top, left, bottom, right = geometry.box
    inv = 1.0 / stride
    matrix = np.array(
        [[inv, 0.0, (left - offset) * inv], [0.0, inv, (top - offset) * inv]], dtype=np.float64
    )
    src = np.ascontiguousarray(grid, dtype=np.float32)
    return cv2.warpAffine(
        src,
        matrix,
        (right - left, bottom - top),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REPLICATE,
    )


def restore_map(content_map: np.ndarray, geometry: Geometry) -> np.ndarray:
    """A map over the content box (input resolution) resized to the original (H, W).

    A full input-size map (e.g. of the letterbox square) is first cut to the content box.
    """
    arr = np.asarray(content_map, dtype=np.float32)
    if arr.shape == geometry.input_hw and arr.shape != geometry.content_hw:
        top, left, bottom, right = geometry.box
        arr = arr[top:bottom, left:right]
    arr = np.ascontiguousarray(arr)
    h, w = geometry.orig_hw
    if arr.shape == (h, w):
        return arr
    return cv2.resize(arr, (w, h), interpolation=cv2.INTER_LINEAR)


def tile_starts(extent: int, tile: int, margin: int, multiple: int) -> list[int]:
    """Starts of overlapping tiles of ``tile`` pixels covering ``0..extent``.

    ``extent`` and ``tile`` are multiples of ``multiple``, and so is every start (the tiles'
    cell grids then line up with the whole image's). Consecutive tiles overlap by at least
    ``2 * margin`` where the step allows it; the last tile ends at ``extent``. One tile
    (start 0) when ``extent <= tile``.
    """
    if extent % multiple or tile % multiple:
        raise ValueError(f"extent {extent} and tile {tile} must be multiples of {multiple}")
    if extent <= tile:
        return [0]
    step = max(multiple, ((tile - 2 * margin) // multiple) * multiple)
    starts = list(range(0, extent - tile, step))
    starts.append(extent - tile)
    return starts


def to_tensor_batch(images: list[np.ndarray]) -> np.ndarray:
    """Stack (S, S, 3) uint8 images into a normalised float32 (B, 3, S, S) array."""
    scaled = np.stack(images).astype(np.float32) / 255.0
    batch = (scaled - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))


def _interp(src_pixels: int, dst_pixels: int) -> int:
    return cv2.INTER_AREA if dst_pixels < src_pixels else cv2.INTER_LINEAR
