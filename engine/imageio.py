"""Decoding user-supplied image files into plain RGB arrays, defensively.

Every image that enters ProtoAtlas goes through :func:`load_image`, which always returns a
C-contiguous ``uint8`` array of shape ``(H, W, 3)`` in RGB order, or raises
:class:`ImageLoadError` whose message names the file and says what is wrong.

Decisions (all deliberate, all tested):

* **Alpha is dropped.** RGBA / LA / PA images keep their colour channels; transparency is
  ignored (not composited on a background). Industrial captures rarely carry meaningful alpha.
* **Palette images** (P) are expanded to their RGB colours.
* **High bit-depth integer images** (I;16, I;16B, I;16L, I) are reduced to 8 bits: if the
  largest value is <= 4095 the data is treated as 12-bit (value / 4095), otherwise it is
  divided by the type's full range (65535 for 16-bit). 32-bit integer data whose values do
  not fit 0..65535 is min-max scaled like float data.
* **Float images** (F) are min-max scaled to 0..255 (a constant image becomes all zeros;
  NaNs become 0).
* **Grayscale** is replicated to three channels.
* **EXIF orientation** is applied, so the array is upright as a viewer shows it.
* **Size limit**: ``width * height`` is checked against ``max_pixels`` from the header,
  before any pixel is decoded. PIL's own decompression-bomb limit is disabled (set to
  ``None`` on import of this module) because this module enforces its own.
* Truncated data is an error: ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is never enabled.
* **Formats** are those of the supported extensions (:data:`DECODED_FORMATS`), whatever the
  extension of the file says: a ``.png`` holding a JPEG loads, one holding an EPS or a PSD
  does not. Pillow's other plugins never see user bytes (its EPS plugin runs Ghostscript).
* **Memory**: the file's bytes, Pillow's decoded image and the output array are held at
  once, plus temporaries of a bounded size: high-depth data is scaled a block of
  :data:`CONVERT_BLOCK_PIXELS` at a time, so a 50-megapixel float TIFF (a few hundred KB
  when flat) stays under 1 GiB.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from engine.config import DataConfig

SUPPORTED_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
#: Pillow formats decoded (``Image.open(formats=...)``): those of :data:`SUPPORTED_EXTENSIONS`.
DECODED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "BMP", "TIFF")
#: Pixels of high-depth or float data scaled to 8 bits at a time (float64 temporaries of
#: 8 MiB whatever the image's size).
CONVERT_BLOCK_PIXELS: int = 1 << 20
#: Images above this many pixels are refused: :attr:`DataConfig.max_pixels`'s default.
DEFAULT_MAX_PIXELS: int = DataConfig().max_pixels

# We check width * height ourselves (see _check_size), before decoding.
Image.MAX_IMAGE_PIXELS = None

_TWELVE_BIT_MAX = 4095
_SIXTEEN_BIT_MAX = 65535
_HIGH_DEPTH_INT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
_GRAY_MODES = frozenset({"1", "L", "F"}) | _HIGH_DEPTH_INT_MODES
# Errors PIL raises for broken data, at open() or load() time.
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    TypeError,
    struct.error,
    zlib.error,
)

ImageSource = bytes | bytearray | memoryview | str | os.PathLike


class ImageLoadError(ValueError):
    """An image file could not be turned into an array; ``str()`` is ``"name: reason"``."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        """Keep the two-argument constructor working across pickling (multiprocessing)."""
        return (type(self), (self.name, self.reason))


def is_supported(name: str) -> bool:
    """True when ``name`` ends with one of :data:`SUPPORTED_EXTENSIONS` (any letter case)."""
    return name.lower().endswith(SUPPORTED_EXTENSIONS)


def _read_source(data: ImageSource, name: str | None) -> tuple[bytes, str]:
    """Return the raw bytes of ``data`` and the name to use in error messages."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data), name if name is not None else "<bytes>"
    if isinstance(data, (str, os.PathLike)):
        path = Path(data)
        label = name if name is not None else os.fspath(path)
        try:
            return path.read_bytes(), label
        except FileNotFoundError:
            raise ImageLoadError(label, "file not found") from None
        except OSError as exc:
            raise ImageLoadError(label, f"cannot read file ({exc.strerror or exc})") from exc
    raise TypeError(f"load_image expects bytes or a path, got {type(data).__name__}")


def _open_header(raw: bytes, name: str) -> Image.Image:
    """Identify the format and read the header only (no pixel data is decoded here)."""
    if not raw:
        raise ImageLoadError(name, "empty file")
    try:
        return Image.open(io.BytesIO(raw), formats=DECODED_FORMATS)
    except UnidentifiedImageError:
        raise ImageLoadError(name, "not a recognised image format") from None
    except _DECODE_ERRORS as exc:
        raise ImageLoadError(name, f"corrupt or truncated image data ({exc})") from exc


def _check_size(image: Image.Image, name: str, max_pixels: int) -> None:
    """Refuse zero-size images and images over ``max_pixels``, from the header alone."""
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageLoadError(name, f"image has zero size ({width} x {height})")
    pixels = width * height
    if pixels > max_pixels:
        raise ImageLoadError(
            name, f"image is {width} x {height} = {pixels} pixels, over the limit of {max_pixels}"
        )


def _decode(image: Image.Image, name: str) -> Image.Image:
    """Decode the pixel data and apply the EXIF orientation (in place: no copy)."""
    try:
        image.load()
        ImageOps.exif_transpose(image, in_place=True)
    except _DECODE_ERRORS as exc:
        raise ImageLoadError(name, f"corrupt or truncated image data ({exc})") from exc
    return image


def _open_decoded(data: ImageSource, name: str | None, max_pixels: int) -> tuple[Image.Image, str]:
    """Read, identify, size-check and decode ``data``; return the upright image and its name."""
    raw, label = _read_source(data, name)
    image = _open_header(raw, label)
    _check_size(image, label, max_pixels)
    return _decode(image, label), label


def _blocks(values: np.ndarray) -> Iterator[tuple[slice, np.ndarray]]:
    """``values`` flattened, as float64 blocks of :data:`CONVERT_BLOCK_PIXELS` values."""
    flat = values.reshape(-1)
    for start in range(0, flat.size, CONVERT_BLOCK_PIXELS):
        where = slice(start, start + CONVERT_BLOCK_PIXELS)
        yield where, flat[where].astype(np.float64)


def _scaled_to_uint8(values: np.ndarray, low: float, scale: float) -> np.ndarray:
    """``round((values - low) * scale)`` as uint8, non-finite values taken as ``low``;
    computed in float64 a block at a time."""
    out = np.empty(values.shape, dtype=np.uint8)
    flat_out = out.reshape(-1)
    for where, block in _blocks(values):
        block[~np.isfinite(block)] = low
        flat_out[where] = np.round((block - low) * scale)
    return out


def _minmax_to_uint8(values: np.ndarray) -> np.ndarray:
    """Scale finite values linearly to 0..255 (constant input -> zeros, NaN -> 0)."""
    low, high = np.inf, -np.inf
    for _, block in _blocks(values):
        finite = block[np.isfinite(block)]
        if finite.size:
            low, high = min(low, finite.min()), max(high, finite.max())
    if high <= low:  # no finite value, or a constant image
        return np.zeros(values.shape, dtype=np.uint8)
    return _scaled_to_uint8(values, low, 255.0 / (high - low))


def _high_depth_to_uint8(values: np.ndarray) -> np.ndarray:
    """Apply the module's 12/16-bit rule (see the module docstring) to integer data."""
    if values.size == 0:
        return values.astype(np.uint8)
    low, high = int(values.min()), int(values.max())
    if low < 0 or high > _SIXTEEN_BIT_MAX:
        return _minmax_to_uint8(values)
    full = _TWELVE_BIT_MAX if high <= _TWELVE_BIT_MAX else _SIXTEEN_BIT_MAX
    return _scaled_to_uint8(values, 0.0, 255.0 / full)


def _gray_to_uint8(image: Image.Image) -> np.ndarray:
    """(H, W) uint8 from a single-channel image of any supported depth."""
    values = np.asarray(image)
    if image.mode in _HIGH_DEPTH_INT_MODES:
        return _high_depth_to_uint8(values)
    if image.mode == "F":
        return _minmax_to_uint8(values)
    if values.dtype == bool:  # mode "1"
        return values.astype(np.uint8) * 255
    return values.astype(np.uint8)


def _to_rgb_array(image: Image.Image, name: str) -> np.ndarray:
    """Convert a decoded image of any supported mode to contiguous (H, W, 3) uint8 RGB."""
    if image.mode in _GRAY_MODES:
        gray = _gray_to_uint8(image)
        rgb = np.repeat(gray[:, :, None], 3, axis=2)
    else:
        try:  # convert drops alpha and expands palettes (and copies: not for RGB itself)
            rgb = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
        except (ValueError, OSError) as exc:
            raise ImageLoadError(name, f"unsupported image mode {image.mode!r} ({exc})") from exc
    return _validated(rgb, name)


def _validated(rgb: np.ndarray, name: str) -> np.ndarray:
    """Guarantee the output contract: contiguous uint8 (H, W, 3) with H, W > 0."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ImageLoadError(name, f"decoded to an unusable array of shape {rgb.shape}")
    return np.ascontiguousarray(rgb, dtype=np.uint8)


def load_image(
    data: ImageSource, name: str | None = None, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Decode an image file (bytes or path) into a contiguous uint8 (H, W, 3) RGB array.

    ``name`` is used in error messages (defaults to the path, or ``"<bytes>"``). Alpha is
    dropped, palettes expanded, grayscale replicated, EXIF orientation applied; 16-bit and
    32-bit integer data is reduced with the 12-bit/16-bit rule and float data min-max scaled
    (details in the module docstring). ``width * height`` is checked against ``max_pixels``
    from the header before pixels are decoded.

    Raises:
        ImageLoadError: empty file, not an image, over the pixel limit, zero size, corrupt or
            truncated data, unreadable file, or an unsupported mode.
    """
    image, label = _open_decoded(data, name, max_pixels)
    return _to_rgb_array(image, label)


def _mask_channel(image: Image.Image) -> np.ndarray:
    """The channel a mask is read from: raw gray values, or the first colour channel."""
    if image.mode in _GRAY_MODES or image.mode in ("LA", "La"):
        values = np.asarray(image)
        return values[:, :, 0] if values.ndim == 3 else values
    if image.mode in ("P", "PA"):
        return np.asarray(image.convert("L"))  # non-black palette colours count as True
    return np.asarray(image.convert("RGB"))[:, :, 0]


def read_mask(
    data: ImageSource, name: str | None = None, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Read a defect mask as a bool (H, W) array: any non-zero pixel is True.

    Grayscale (any depth) is tested on the raw values; colour images on their first (red)
    channel; palette images on the luminance of their colours. Errors as in
    :func:`load_image`.
    """
    image, label = _open_decoded(data, name, max_pixels)
    try:
        channel = _mask_channel(image)
    except (ValueError, OSError) as exc:
        raise ImageLoadError(label, f"unsupported mask mode {image.mode!r} ({exc})") from exc
    return np.ascontiguousarray(channel != 0)
