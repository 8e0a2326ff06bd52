"""Anomaly maps as 16-bit greyscale PNG files, written and read without an image library.

A float map ``m`` is stored as ``q = round((m - min) / (max - min) * 65535)`` in a standard
16-bit greyscale PNG (any viewer opens it); ``min`` and ``max`` are kept in the
``batch_images`` row, so ``m ~= min + q / 65535 * (max - min)`` with an error of at most
``(max - min) / 131070``. Rows use PNG filter 2 ("Up"), which compresses smooth maps well.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

from storage.errors import ValidationError

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_LEVELS = 65535


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data))
        + kind
        + data
        + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def encode_png16(q: np.ndarray) -> bytes:
    """Encode a 2-D uint16 array as a greyscale 16-bit PNG."""
    q = np.asarray(q)
    if q.ndim != 2 or q.dtype != np.uint16 or 0 in q.shape:
        raise ValidationError(
            f"a 16-bit PNG needs a non-empty 2-D uint16 array, got {q.dtype} {q.shape}"
        )
    h, w = q.shape
    raw = q.astype(">u2").view(np.uint8).reshape(h, 2 * w)
    up = raw.copy()
    up[1:] = raw[1:] - raw[:-1]  # uint8 arithmetic wraps modulo 256, as PNG requires
    rows = np.concatenate([np.full((h, 1), 2, dtype=np.uint8), up], axis=1)
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 0, 0, 0, 0)
    return (
        _SIGNATURE
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
        + _chunk(b"IEND", b"")
    )


def decode_png16(data: bytes) -> np.ndarray:
    """Decode a PNG written by :func:`encode_png16` (16-bit grey, filters None/Up)."""
    if not data.startswith(_SIGNATURE):
        raise ValidationError("not a PNG file")
    pos, idat, header = len(_SIGNATURE), [], None
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    if header is None or header[2:4] != (16, 0) or header[6] != 0:
        raise ValidationError("only non-interlaced 16-bit greyscale PNGs are supported here")
    w, h = header[0], header[1]
    rows = np.frombuffer(zlib.decompress(b"".join(idat)), dtype=np.uint8).reshape(h, 2 * w + 1)
    filters, body = rows[:, 0], rows[:, 1:].copy()
    if not np.isin(filters, (0, 2)).all():
        raise ValidationError("PNG uses a row filter other than None/Up (not written here)")
    for y in range(1, h):  # undo "Up" row by row (a row may also use filter None)
        if filters[y] == 2:
            body[y] += body[y - 1]
    return body.view(">u2").reshape(h, w).astype(np.uint16)


def encode_map(values: np.ndarray) -> tuple[bytes, float, float]:
    """Quantise a float anomaly map to a 16-bit PNG; returns (png bytes, min, max)."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or 0 in values.shape:
        raise ValidationError(f"an anomaly map must be a non-empty 2-D array, got {values.shape}")
    if not np.isfinite(values).all():
        raise ValidationError("an anomaly map contains NaN or infinite values")
    lo, hi = float(values.min()), float(values.max())
    if hi > lo:
        q = np.rint((values - lo) / (hi - lo) * _LEVELS).astype(np.uint16)
    else:
        q = np.zeros(values.shape, dtype=np.uint16)
    return encode_png16(q), lo, hi


def decode_map(data: bytes, lo: float, hi: float) -> np.ndarray:
    """Inverse of :func:`encode_map` (float32 map)."""
    q = decode_png16(data).astype(np.float64)
    return (lo + q / _LEVELS * (hi - lo)).astype(np.float32)
