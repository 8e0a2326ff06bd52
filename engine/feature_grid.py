"""Backbone features of images of any size: network inputs, overlapping tiles, size batches.

:func:`iter_image_features` turns a stream of (H, W, 3) uint8 images into one
:class:`ImageFeatures` per image, in order: every selected stage as one cell grid over the
whole network input (:mod:`engine.preprocess` decides that input). An input larger than
``tile_size`` along an axis is cut into overlapping tiles (:func:`engine.preprocess.tile_starts`);
each tile contributes only the cells of its own part, at least ``tile_margin`` pixels from its
inner edges, so the stitched grid matches a single pass up to the backbone's far field, at
bounded memory. Inputs (or tiles) of the same size are batched together; a window of images
is read ahead so that images of mixed sizes still batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from engine.backbone import FeatureExtractor
from engine.config import BackboneConfig
from engine.preprocess import Geometry, fit_input, intensity_range, tile_starts, to_tensor_batch

#: Images read ahead per window, in batches: mixed sizes batch within a window.
WINDOW_BATCHES = 4


@dataclass
class ImageFeatures:
    """Backbone features of one image."""

    #: One (C_k, H_in / s_k, W_in / s_k) float tensor per selected stage, finest first.
    maps: list[torch.Tensor]
    geometry: Geometry
    #: (P,) pooled global feature (pre-logits; tiles weighted by the area they own), or None.
    pooled: torch.Tensor | None

    def pooled_vector(self) -> torch.Tensor:
        """:attr:`pooled` of features extracted with ``pooled=True``."""
        if self.pooled is None:
            raise ValueError("these features were extracted without pooled=True")
        return self.pooled


@dataclass
class _Tile:
    image: int  # index within the window
    top: int
    left: int
    own: tuple[int, int, int, int]  # (top, left, bottom, right) owned, in input pixels


def _ownership(starts: list[int], tile: int, extent: int, multiple: int) -> list[tuple[int, int]]:
    """Per tile start, the [begin, end) input range it contributes (seams at overlap middles,
    on multiples of ``multiple``)."""
    bounds = [0]
    for a, b in zip(starts, starts[1:]):
        end_a = min(a + tile, extent)
        mid = (b + end_a) / 2
        bounds.append(int(round(mid / multiple)) * multiple)
    bounds.append(extent)
    return [(bounds[i], bounds[i + 1]) for i in range(len(starts))]


def plan_tiles(
    geometry: Geometry, tile: int, margin: int, multiple: int
) -> list[tuple[int, int, int, int, tuple[int, int, int, int]]]:
    """(top, left, height, width, owned box) of every tile of an input of ``geometry``."""
    ih, iw = geometry.input_hw
    th, tw = min(tile, ih), min(tile, iw)
    ys = tile_starts(ih, th, margin, multiple)
    xs = tile_starts(iw, tw, margin, multiple)
    own_y = _ownership(ys, th, ih, multiple)
    own_x = _ownership(xs, tw, iw, multiple)
    return [
        (y, x, th, tw, (oy[0], ox[0], oy[1], ox[1]))
        for y, oy in zip(ys, own_y)
        for x, ox in zip(xs, own_x)
    ]


def iter_image_features(
    extractor: FeatureExtractor,
    images: Iterable[np.ndarray],
    cfg: BackboneConfig,
    *,
    pooled: bool = False,
    intensity: tuple[float, float] | None = None,
    context_pad: int = 0,
) -> Iterator[ImageFeatures]:
    """:class:`ImageFeatures` of every image of ``images``, in order. ``intensity``: the
    fitted grey-level stretch of ``cfg.contrast == "normals"``; ``context_pad``: mirrored
    context around each input (:func:`engine.preprocess.plan_geometry`)."""
    window: list[np.ndarray] = []
    size = max(1, cfg.batch_size) * WINDOW_BATCHES
    for image in images:
        window.append(image)
        if len(window) == size:
            yield from _window_features(extractor, window, cfg, pooled, intensity, context_pad)
            window = []
    if window:
        yield from _window_features(extractor, window, cfg, pooled, intensity, context_pad)


def input_intensity(
    image: np.ndarray, cfg: BackboneConfig, fitted: tuple[float, float] | None
) -> tuple[float, float] | None:
    """The grey-level stretch to apply to ``image`` under ``cfg.contrast``."""
    if cfg.contrast == "image":
        return intensity_range([image], *cfg.contrast_percentiles)
    if cfg.contrast in ("normals", "auto"):
        return fitted
    return None


def _window_features(
    extractor: FeatureExtractor,
    images: list[np.ndarray],
    cfg: BackboneConfig,
    pooled: bool,
    intensity: tuple[float, float] | None,
    context_pad: int,
) -> list[ImageFeatures]:
    multiple = extractor.max_stride
    tile = max(multiple, (cfg.tile_size // multiple) * multiple)
    margin = cfg.tile_margin
    inputs, geoms = [], []
    groups: dict[tuple[int, int], list[_Tile]] = {}
    for i, image in enumerate(images):
        arr, geom = fit_input(
            image,
            cfg.image_size,
            cfg.resize_mode,
            multiple,
            input_intensity(image, cfg, intensity),
            context_pad,
        )
        inputs.append(arr)
        geoms.append(geom)
        for top, left, th, tw, own in plan_tiles(geom, tile, margin, multiple):
            groups.setdefault((th, tw), []).append(_Tile(i, top, left, own))
    maps: list[list[torch.Tensor] | None] = [None] * len(images)
    pooled_sum: list[torch.Tensor | None] = [None] * len(images)
    strides = extractor.strides
    bs = max(1, cfg.batch_size)
    for (th, tw), tiles in groups.items():
        for start in range(0, len(tiles), bs):
            chunk = tiles[start : start + bs]
            batch = to_tensor_batch(
                [inputs[t.image][t.top : t.top + th, t.left : t.left + tw] for t in chunk]
            )
            feats = extractor(batch, pooled=pooled)
            for b, t in enumerate(chunk):
                image_maps = maps[t.image]
                if image_maps is None:
                    ih, iw = geoms[t.image].input_hw
                    image_maps = maps[t.image] = [
                        torch.empty((m.shape[1], ih // s, iw // s))
                        for m, s in zip(feats.maps, strides)
                    ]
                o_top, o_left, o_bottom, o_right = t.own
                for dst, m, s in zip(image_maps, feats.maps, strides):
                    dst[:, o_top // s : o_bottom // s, o_left // s : o_right // s] = m[
                        b,
                        :,
                        (o_top - t.top) // s : (o_bottom - t.top) // s,
                        (o_left - t.left) // s : (o_right - t.left) // s,
                    ].cpu()
                if feats.pooled is not None:
                    weight = (o_bottom - o_top) * (o_right - o_left)
                    part = feats.pooled[b].cpu() * weight
                    so_far = pooled_sum[t.image]
                    pooled_sum[t.image] = part if so_far is None else so_far + part
    out = []
    for image_maps, total, geom in zip(maps, pooled_sum, geoms):
        assert image_maps is not None  # every image has at least one tile
        vec = None
        if total is not None:
            ih, iw = geom.input_hw
            vec = total / float(ih * iw)
        out.append(ImageFeatures(image_maps, geom, vec))
    return out
