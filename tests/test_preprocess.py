"""Network-input geometry (native, area, letterbox, squash), tiles, and the way back."""

from __future__ import annotations

import numpy as np
import pytest

from engine.preprocess import (
    fit_input,
    fit_square,
    grid_to_image,
    mixed_framing,
    plan_geometry,
    restore_map,
    tile_starts,
    to_tensor_batch,
)


def test_letterbox_keeps_aspect_and_centres() -> None:
    image = np.full((100, 200, 3), 200, np.uint8)
    square, geom = fit_square(image, 256, "letterbox")
    assert square.shape == (256, 256, 3)
    assert geom.box == (64, 0, 192, 256)
    valid = geom.grid_valid(8)
    assert valid.shape == (32, 32)
    assert valid[8:24].all() and not valid[:8].any() and not valid[24:].any()


def test_squash_fills_the_square() -> None:
    square, geom = fit_square(np.zeros((50, 300, 3), np.uint8), 128, "squash")
    assert square.shape == (128, 128, 3) and geom.box == (0, 0, 128, 128)
    assert geom.grid_valid(16).all()


@pytest.mark.parametrize(
    "hw, want",
    [
        ((600, 290), (544, 256)),
        ((128, 2048), (256, 4096)),
        ((256, 256), (256, 256)),
        ((32, 900), (256, 7200)),
    ],
)
def test_native_scales_the_shorter_side_without_padding(hw, want) -> None:
    geom = plan_geometry(hw, 256, "native", 32)
    assert geom.input_hw == want and geom.box == (0, 0, *want)
    assert geom.grid_valid(8).all()
    h, w = hw
    assert abs((want[0] / want[1]) / (h / w) - 1) <= 16 / min(want)  # aspect kept to a cell


@pytest.mark.parametrize("pad, used", [(0, 0), (1, 16), (16, 16), (20, 32), (32, 32)])
def test_context_pad_surrounds_the_content_and_is_masked(pad, used) -> None:
    geom = plan_geometry((300, 400), 256, "native", 32, context_pad=pad)
    assert geom.content_hw == (256, 352)
    assert geom.box == (used, used, used + 256, used + 352)
    assert geom.input_hw == (256 + 2 * used, 352 + 2 * used)
    assert geom.input_hw[0] % 32 == 0 == geom.input_hw[1] % 32
    valid = geom.grid_valid(8)
    assert valid.sum() == (256 // 8) * (352 // 8)  # only content cells count
    assert not valid[: used // 8].any() and not valid[:, : used // 8].any()


def test_context_pad_mirrors_the_image() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (256, 288, 3), dtype=np.uint8)
    arr, geom = fit_input(image, 256, "native", 32, context_pad=32)
    top, left, bottom, right = geom.box
    assert np.array_equal(arr[top:bottom, left:right], image)
    assert np.array_equal(arr[top - 1], arr[top]) and np.array_equal(arr[top - 5], arr[top + 4])
    assert np.array_equal(arr[:, right], arr[:, right - 1])


def test_context_pad_leaves_the_square_modes_alone() -> None:
    for mode in ("letterbox", "squash"):
        assert plan_geometry((100, 200), 256, mode, 32, context_pad=32).input_hw == (256, 256)


def test_mixed_framing_counts_input_shapes_not_pixels() -> None:
    same = [(300, 400)] * 10
    assert not mixed_framing(same, 256, "native", 32, 0.9)
    assert not mixed_framing(same + [(600, 800)], 256, "native", 32, 0.9)  # same input shape
    assert not mixed_framing(same + [(300, 900)], 256, "native", 32, 0.9)  # 10 of 11 share
    varied = [(300, 300 + 50 * i) for i in range(10)]
    assert mixed_framing(varied, 256, "native", 32, 0.9)
    assert not mixed_framing([], 256, "native", 32, 0.9)


def test_area_keeps_the_pixel_budget() -> None:
    geom = plan_geometry((128, 2048), 256, "area", 32)
    assert geom.input_hw == (64, 1024)
    ih, iw = plan_geometry((3000, 4000), 256, "area", 32).input_hw
    assert abs(ih * iw - 256 * 256) / 65536 < 0.1 and ih % 32 == 0 == iw % 32


def test_fit_input_resizes_content() -> None:
    arr, geom = fit_input(np.zeros((300, 400, 3), np.uint8), 256, "native", 32)
    assert arr.shape == (256, 352, 3) and geom.orig_hw == (300, 400)


def test_restore_map_inverts_the_letterbox() -> None:
    image = np.zeros((90, 180, 3), np.uint8)
    _, geom = fit_square(image, 256, "letterbox")
    score = np.zeros((256, 256), np.float32)
    top, left, bottom, right = geom.box
    score[top:bottom, left : left + (right - left) // 2] = 1.0  # left half of the content
    back = restore_map(score, geom)
    assert back.shape == (90, 180)
    assert back[:, :80].mean() > 0.95 and back[:, 100:].mean() < 0.05


def test_grid_to_image_puts_a_cell_at_its_offset() -> None:
    """A single hot cell j of a stride-8 grid peaks at pixel 8 j + offset."""
    geom = plan_geometry((256, 256), 256, "native", 32)
    for offset in (-3.5, 3.5):
        grid = np.zeros((32, 32), np.float32)
        grid[10, 20] = 1.0
        up = grid_to_image(grid, 8, offset, geom)
        assert up.shape == (256, 256)
        y, x = np.unravel_index(int(np.argmax(up)), up.shape)
        assert abs(y - (80 + offset)) <= 0.5 and abs(x - (160 + offset)) <= 0.5


@pytest.mark.parametrize(
    "extent, tile, margin",
    [(256, 512, 64), (4096, 512, 64), (544, 512, 64), (7200, 512, 64), (1024, 256, 32)],
)
def test_tiles_cover_and_overlap(extent, tile, margin) -> None:
    starts = tile_starts(extent, tile, margin, 32)
    assert starts[0] == 0 and all(s % 32 == 0 for s in starts)
    assert min(starts[-1] + tile, extent) == extent
    for a, b in zip(starts, starts[1:]):
        assert b > a and a + tile - b >= min(2 * margin, tile - 32)
    with pytest.raises(ValueError, match="multiples"):
        tile_starts(100, 64, 8, 32)


def test_unknown_mode_is_an_error() -> None:
    with pytest.raises(ValueError, match="resize_mode"):
        fit_input(np.zeros((10, 10, 3), np.uint8), 32, "crop")  # type: ignore[arg-type]


def test_tensor_batch_is_imagenet_normalised() -> None:
    batch = to_tensor_batch([np.full((4, 4, 3), 255, np.uint8)])
    assert batch.shape == (1, 3, 4, 4) and batch.dtype == np.float32
    assert np.allclose(
        batch[0, :, 0, 0],
        (1 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225]),
        atol=1e-5,
    )
