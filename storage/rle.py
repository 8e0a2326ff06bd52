"""COCO *uncompressed* run-length encoding of binary masks.

Format (exactly COCO's): ``{"size": [h, w], "counts": [n0, n1, n2, ...]}`` where the mask is
read column-major (Fortran order, down each column first) and the counts alternate runs of
0 and 1 starting with a run of 0 (which may be 0 long). The sum of counts is ``h * w``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from storage.errors import ValidationError

RLE = dict[str, list[int]]


def _counts(mask: np.ndarray) -> tuple[int, int, list[int]]:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValidationError(f"a mask must be 2-D (h, w), got shape {mask.shape}")
    h, w = mask.shape
    flat = mask.ravel(order="F")
    if flat.dtype != np.bool_:
        flat = flat.astype(bool)
    if flat.size == 0:
        return int(h), int(w), []
    change = np.flatnonzero(flat[1:] != flat[:-1])
    bounds = np.empty(len(change) + 2, dtype=np.int64)
    bounds[0], bounds[-1] = 0, flat.size
    bounds[1:-1] = change + 1
    counts = (bounds[1:] - bounds[:-1]).tolist()
    if flat[0]:
        counts.insert(0, 0)
    return int(h), int(w), counts


def encode_rle(mask: np.ndarray) -> RLE:
    """Encode a 2-D boolean (or 0/1) mask as a COCO uncompressed RLE dict."""
    h, w, counts = _counts(mask)
    return {"size": [h, w], "counts": counts}


def encode_rle_text(mask: np.ndarray) -> tuple[str, int]:
    """(compact JSON text, area) of a mask: what ``regions.mask`` stores, built directly."""
    h, w, counts = _counts(mask)
    return (f'{{"size":[{h},{w}],"counts":[{",".join(map(str, counts))}]}}', sum(counts[1::2]))


def _check(rle: Mapping[str, Any]) -> tuple[int, int, np.ndarray]:
    try:
        h, w = (int(v) for v in rle["size"])
        counts = np.asarray(rle["counts"], dtype=np.int64)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValidationError(
            f"not a COCO uncompressed RLE (needs size [h, w] and a list of counts): {exc}"
        ) from None
    if counts.ndim != 1 or (counts < 0).any() or int(counts.sum()) != h * w:
        raise ValidationError(f"RLE counts must be non-negative and sum to h*w = {h * w}")
    return h, w, counts


def decode_rle(rle: Mapping[str, Any] | str) -> np.ndarray:
    """Decode a COCO uncompressed RLE (dict or its JSON text) to a boolean (h, w) mask."""
    if isinstance(rle, str):
        rle = rle_from_json(rle)
    h, w, counts = _check(rle)
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, counts)
    return flat.reshape((w, h)).T.copy() if h * w else np.zeros((h, w), dtype=bool)


def rle_area(rle: Mapping[str, Any] | str) -> int:
    """Number of foreground pixels of an RLE (sum of the odd-position counts)."""
    if isinstance(rle, str):
        rle = rle_from_json(rle)
    return int(sum(rle["counts"][1::2]))


def rle_bbox(rle: Mapping[str, Any] | str) -> tuple[int, int, int, int] | None:
    """The tight box ``(x, y, w, h)`` of an RLE's foreground (COCO's ``bbox``), read from the
    runs without decoding the mask; None for an empty mask."""
    if isinstance(rle, str):
        rle = rle_from_json(rle)
    h, _, counts = _check(rle)
    ends = np.cumsum(counts)
    starts = ends - counts
    fg = (np.arange(len(counts)) % 2 == 1) & (counts > 0)
    if not fg.any() or h == 0:
        return None
    s, e = starts[fg], ends[fg] - 1  # first and last flat index (column-major) of each run
    col0, col1 = s // h, e // h
    row0 = np.where(col0 == col1, s % h, 0)  # a run over a column break covers every row
    row1 = np.where(col0 == col1, e % h, h - 1)
    x0, x1, y0, y1 = int(col0.min()), int(col1.max()), int(row0.min()), int(row1.max())
    return x0, y0, x1 - x0 + 1, y1 - y0 + 1


def rle_to_json(rle: Mapping[str, Any]) -> str:
    """Compact JSON text of an RLE, as stored in ``regions.mask``."""
    _check(rle)
    return json.dumps(
        {"size": [int(v) for v in rle["size"]], "counts": [int(c) for c in rle["counts"]]},
        separators=(",", ":"),
    )


def rle_from_json(text: str) -> RLE:
    """Parse the JSON text of ``regions.mask``."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValidationError(f"mask is not valid JSON: {exc}") from None
    _check(value)
    return value
