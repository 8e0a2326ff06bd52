"""Tests for engine.imageio: every mode to uint8 RGB, EXIF, and every kind of bad file."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from engine.imageio import (
    DEFAULT_MAX_PIXELS,
    SUPPORTED_EXTENSIONS,
    ImageLoadError,
    is_supported,
    load_image,
    read_mask,
)


def encode(image: Image.Image, fmt: str = "PNG", **kwargs: object) -> bytes:
    """Encode ``image`` in ``fmt`` and return the bytes."""
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def write(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` and return it."""
    path.write_bytes(data)
    return path


def noisy_rgb(width: int = 64, height: int = 48, seed: int = 0) -> Image.Image:
    """A random RGB image (incompressible, so halving its file cuts pixel data)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def assert_rgb_uint8(array: np.ndarray, height: int, width: int) -> None:
    """The output contract: contiguous uint8 (H, W, 3)."""
    assert array.dtype == np.uint8
    assert array.shape == (height, width, 3)
    assert array.flags.c_contiguous


# ---------------------------------------------------------------------------- constants


def test_constants_and_extension_check() -> None:
    assert SUPPORTED_EXTENSIONS == (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
    assert DEFAULT_MAX_PIXELS == 50_000_000
    assert is_supported("a/B.PNG") and is_supported("x.TiFf")
    assert not is_supported("notes.txt") and not is_supported("png")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_image_load_error_format_and_pickle() -> None:
    err = ImageLoadError("a.png", "empty file")
    assert str(err) == "a.png: empty file"
    assert (err.name, err.reason) == ("a.png", "empty file")
    assert isinstance(err, ValueError)
    clone = pickle.loads(pickle.dumps(err))
    assert str(clone) == str(err) and clone.reason == "empty file"


# ---------------------------------------------------------------------------- modes


def test_mode_l_is_replicated() -> None:
    gray = np.array([[0, 10], [200, 255]], dtype=np.uint8)
    out = load_image(encode(Image.fromarray(gray, "L")))
    assert_rgb_uint8(out, 2, 2)
    for channel in range(3):
        np.testing.assert_array_equal(out[:, :, channel], gray)


def test_mode_rgb_exact() -> None:
    rgb = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [1, 2, 3]]], dtype=np.uint8)
    out = load_image(encode(Image.fromarray(rgb, "RGB")))
    assert_rgb_uint8(out, 2, 2)
    np.testing.assert_array_equal(out, rgb)


def test_mode_rgba_drops_alpha() -> None:
    rgba = np.array([[[10, 20, 30, 0], [40, 50, 60, 128], [70, 80, 90, 255]]], dtype=np.uint8)
    out = load_image(encode(Image.fromarray(rgba, "RGBA")))
    assert_rgb_uint8(out, 1, 3)
    np.testing.assert_array_equal(out, rgba[:, :, :3])


def test_mode_la_drops_alpha() -> None:
    image = Image.new("LA", (2, 1))
    image.putpixel((0, 0), (7, 0))
    image.putpixel((1, 0), (99, 255))
    out = load_image(encode(image))
    np.testing.assert_array_equal(out[0, :, 0], [7, 99])
    np.testing.assert_array_equal(out[0, :, 2], [7, 99])


def test_mode_p_expands_palette() -> None:
    image = Image.new("P", (3, 1))
    image.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    for x, index in enumerate((2, 0, 1)):
        image.putpixel((x, 0), index)
    out = load_image(encode(image))
    assert_rgb_uint8(out, 1, 3)
    np.testing.assert_array_equal(out[0], [[0, 0, 255], [255, 0, 0], [0, 255, 0]])


def test_mode_i16_full_range_divides_by_65535() -> None:
    data = np.array([[0, 32768, 65535]], dtype=np.uint16)
    image = Image.fromarray(data)
    assert image.mode == "I;16"
    out = load_image(encode(image))
    assert_rgb_uint8(out, 1, 3)
    np.testing.assert_array_equal(out[0, :, 0], [0, 128, 255])
    np.testing.assert_array_equal(out[0, :, 1], out[0, :, 2])


def test_mode_i16_twelve_bit_divides_by_4095() -> None:
    data = np.array([[0, 2048, 4095]], dtype=np.uint16)
    out = load_image(encode(Image.fromarray(data)))
    np.testing.assert_array_equal(out[0, :, 0], [0, 128, 255])  # not [0, 8, 16]


def test_mode_i16_big_endian_tiff() -> None:
    data = np.array([[0, 65535]], dtype=">u2")
    image = Image.frombytes("I;16B", (2, 1), data.tobytes())
    out = load_image(encode(image, "TIFF"))
    np.testing.assert_array_equal(out[0, :, 0], [0, 255])


def test_mode_i32_and_float_tiff() -> None:
    ints = Image.fromarray(np.array([[0, 65535]], dtype=np.int32), "I")
    np.testing.assert_array_equal(load_image(encode(ints, "TIFF"))[0, :, 0], [0, 255])
    floats = Image.fromarray(np.array([[-1.0, 0.0, 1.0]], dtype=np.float32), "F")
    out = load_image(encode(floats, "TIFF"))
    assert_rgb_uint8(out, 1, 3)
    np.testing.assert_array_equal(out[0, :, 0], [0, 128, 255])


def test_mode_1_bilevel() -> None:
    image = Image.new("1", (2, 1))
    image.putpixel((1, 0), 1)
    out = load_image(encode(image))
    assert_rgb_uint8(out, 1, 2)
    np.testing.assert_array_equal(out[0], [[0, 0, 0], [255, 255, 255]])


def test_mode_cmyk() -> None:
    image = Image.new("CMYK", (2, 1))
    image.putpixel((0, 0), (0, 0, 0, 0))  # white
    image.putpixel((1, 0), (255, 0, 0, 0))  # cyan
    out = load_image(encode(image, "TIFF"))
    assert_rgb_uint8(out, 1, 2)
    np.testing.assert_array_equal(out[0], [[255, 255, 255], [0, 255, 255]])


@pytest.mark.parametrize("fmt,suffix", [("BMP", ".bmp"), ("TIFF", ".tif"), ("TIFF", ".tiff")])
def test_bmp_and_tiff_load_from_path(tmp_path: Path, fmt: str, suffix: str) -> None:
    source = noisy_rgb(5, 4)
    path = write(tmp_path / f"img{suffix}", encode(source, fmt))
    out = load_image(path)
    assert_rgb_uint8(out, 4, 5)
    np.testing.assert_array_equal(out, np.asarray(source))


def test_exif_orientation_is_applied() -> None:
    rgb = np.zeros((20, 40, 3), dtype=np.uint8)  # H=20, W=40
    rgb[:10, :10] = 255  # white block at the top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = encode(Image.fromarray(rgb), "JPEG", exif=exif.tobytes(), quality=95)
    out = load_image(data, "rotated.jpg")
    assert_rgb_uint8(out, 40, 20)
    assert out[:10, -10:].mean() > 200  # top-left went to top-right
    assert out[:10, :10].mean() < 50


# ---------------------------------------------------------------------------- bad files


def assert_load_error(path: Path, reason_part: str, **kwargs: object) -> ImageLoadError:
    """load_image(path) raises ImageLoadError naming the file and giving the reason."""
    with pytest.raises(ImageLoadError) as info:
        load_image(path, **kwargs)
    message = str(info.value)
    assert path.name in message and reason_part in message
    assert reason_part in info.value.reason
    return info.value


def test_empty_file(tmp_path: Path) -> None:
    err = assert_load_error(write(tmp_path / "empty.png", b""), "empty file")
    assert err.reason == "empty file"


def test_text_file_named_png(tmp_path: Path) -> None:
    path = write(tmp_path / "notes.png", b"this is not an image\n" * 10)
    assert_load_error(path, "not a recognised image format")


def test_truncated_png(tmp_path: Path) -> None:
    data = encode(noisy_rgb())
    assert_load_error(write(tmp_path / "cut.png", data[: len(data) // 2]), "corrupt or truncated")


def test_truncated_jpeg(tmp_path: Path) -> None:
    data = encode(noisy_rgb(), "JPEG")
    assert_load_error(write(tmp_path / "cut.jpg", data[: len(data) // 2]), "corrupt or truncated")


def test_over_pixel_limit(tmp_path: Path) -> None:
    path = write(tmp_path / "big.png", encode(noisy_rgb(64, 48)))
    err = assert_load_error(path, "over the limit of 1000", max_pixels=1000)
    assert "64 x 48 = 3072 pixels" in err.reason
    assert load_image(path, max_pixels=3072).shape == (48, 64, 3)  # the limit is inclusive


def test_pixel_limit_checked_before_decoding(tmp_path: Path) -> None:
    data = encode(noisy_rgb(64, 48))
    path = write(tmp_path / "big_cut.png", data[: len(data) // 2])  # header intact, data not
    assert_load_error(path, "over the limit", max_pixels=100)


def test_missing_file(tmp_path: Path) -> None:
    assert_load_error(tmp_path / "nowhere.png", "file not found")


def test_bytes_error_uses_given_name_or_placeholder() -> None:
    with pytest.raises(ImageLoadError, match=r"^upload/x\.png: empty file$"):
        load_image(b"", "upload/x.png")
    with pytest.raises(ImageLoadError, match=r"^<bytes>: not a recognised image format$"):
        load_image(b"GIF? no")


def test_wrong_argument_type() -> None:
    with pytest.raises(TypeError, match="bytes or a path"):
        load_image(123)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- masks


def test_read_mask_gray_any_nonzero() -> None:
    gray = np.array([[0, 1], [255, 0]], dtype=np.uint8)
    mask = read_mask(encode(Image.fromarray(gray, "L")), "m.png")
    assert mask.dtype == bool and mask.shape == (2, 2)
    np.testing.assert_array_equal(mask, [[False, True], [True, False]])


def test_read_mask_16bit_keeps_small_values() -> None:
    data = np.array([[0, 1, 65535]], dtype=np.uint16)
    np.testing.assert_array_equal(read_mask(encode(Image.fromarray(data)))[0], [False, True, True])


def test_read_mask_rgb_uses_first_channel() -> None:
    rgb = np.array([[[0, 255, 255], [9, 0, 0]]], dtype=np.uint8)
    np.testing.assert_array_equal(read_mask(encode(Image.fromarray(rgb)))[0], [False, True])


def test_read_mask_errors_name_file(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match="m_mask.png: empty file"):
        read_mask(write(tmp_path / "m_mask.png", b""))
