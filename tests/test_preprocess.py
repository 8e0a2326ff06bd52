"""Letterbox / squash geometry and the way back to the original image."""

from __future__ import annotations

import numpy as np
import pytest

from engine.preprocess import fit_square, restore_map, to_tensor_batch


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


def test_restore_map_inverts_the_letterbox() -> None:
    image = np.zeros((90, 180, 3), np.uint8)
    _, geom = fit_square(image, 256, "letterbox")
    score = np.zeros((256, 256), np.float32)
    top, left, bottom, right = geom.box
    score[top:bottom, left:left + (right - left) // 2] = 1.0  # left half of the content
    back = restore_map(score, geom)
    assert back.shape == (90, 180)
    assert back[:, :80].mean() > 0.95 and back[:, 100:].mean() < 0.05


def test_unknown_mode_is_an_error() -> None:
    with pytest.raises(ValueError, match="resize_mode"):
        fit_square(np.zeros((10, 10, 3), np.uint8), 32, "crop")  # type: ignore[arg-type]


def test_tensor_batch_is_imagenet_normalised() -> None:
    batch = to_tensor_batch([np.full((4, 4, 3), 255, np.uint8)])
    assert batch.shape == (1, 3, 4, 4) and batch.dtype == np.float32
    assert np.allclose(batch[0, :, 0, 0], (1 - np.array([0.485, 0.456, 0.406]))
                       / np.array([0.229, 0.224, 0.225]), atol=1e-5)
