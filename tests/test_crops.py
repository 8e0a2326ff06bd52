"""Square crops around MEBin main elements: boxes, merging, selection, extraction."""

from __future__ import annotations

import numpy as np
import pytest

from engine.crops import (
    Box,
    CropConfig,
    component_boxes,
    extract_crops,
    merge_boxes,
    select_boxes,
    side_limits,
    whole_image_box,
)

CFG = CropConfig()


def _mask(shape: tuple[int, int], *rects: tuple[int, int, int, int]) -> np.ndarray:
    """Bool mask with the given (top, left, bottom, right) rectangles set."""
    mask = np.zeros(shape, bool)
    for top, left, bottom, right in rects:
        mask[top:bottom, left:right] = True
    return mask


def _inside(box: Box, shape: tuple[int, int]) -> bool:
    return box.top >= 0 and box.left >= 0 and box.bottom <= shape[0] and box.right <= shape[1]


def _square(box: Box) -> bool:
    return box.height == box.width


# --- Box -----------------------------------------------------------------------------


def test_box_helpers():
    a, b = Box(0, 0, 10, 10), Box(13, 14, 20, 20)
    assert a.side == 10 and a.area == 100 and a.centre == (5.0, 5.0)
    assert not a.intersects(b)
    assert a.distance(b) == pytest.approx(5.0)  # gap of 3 rows and 4 columns
    assert Box(5, 5, 15, 15).intersects(a) and Box(5, 5, 15, 15).distance(a) == 0
    assert Box(10, 0, 20, 10).distance(a) == 0 and not Box(10, 0, 20, 10).intersects(a)
    assert a.union(b) == Box(0, 0, 20, 20)
    with pytest.raises(ValueError):
        Box(5, 5, 5, 10)


# --- component boxes -------------------------------------------------------------------


def test_single_pixel_component_gets_min_side():
    mask = _mask((256, 256), (100, 100, 101, 101))
    (box,) = component_boxes(mask, CFG)
    assert box.side == side_limits(mask.shape, CFG)[0] == 26
    assert _square(box) and box.contains(Box(100, 100, 101, 101))


def test_medium_component_is_padded():
    mask = _mask((256, 256), (100, 100, 150, 140))  # 50 x 40
    (box,) = component_boxes(mask, CFG)
    assert box.side == 60  # 50 + 10 % on each side
    assert box.contains(Box(100, 100, 150, 140))


def test_huge_component_clamped_to_max_side():
    mask = _mask((256, 256), (20, 20, 230, 230))
    (box,) = component_boxes(mask, CFG)
    assert box.side == 128 and _square(box) and _inside(box, mask.shape)


def test_boxes_near_borders_lie_inside_the_image():
    shape = (100, 200)
    mask = _mask(shape, (0, 0, 2, 2), (97, 197, 100, 200))
    boxes = component_boxes(mask, CFG)
    assert len(boxes) == 2
    assert all(_inside(b, shape) and _square(b) and b.side == 10 for b in boxes)
    assert boxes[0].top == 0 and boxes[0].left == 0
    assert boxes[1].bottom == 100 and boxes[1].right == 200


def test_non_square_image_uses_shorter_side():
    shape = (100, 400)
    mask = _mask(shape, (10, 10, 90, 390))
    (box,) = component_boxes(mask, CFG)
    assert box.side == 50 and _inside(box, shape)


# --- merging ------------------------------------------------------------------------------


def test_nearby_components_merged_into_one_square():
    shape = (256, 256)
    # Two 10x10 blobs 8 px apart: their min-size boxes overlap.
    mask = _mask(shape, (100, 100, 110, 110), (100, 118, 110, 128))
    boxes = merge_boxes(component_boxes(mask, CFG), shape, CFG)
    assert len(boxes) == 1
    (box,) = boxes
    assert _square(box) and _inside(box, shape)
    assert box.contains(Box(100, 100, 110, 128))


def test_boxes_just_within_merge_distance_are_merged():
    shape = (300, 300)  # merge distance 3 px
    close = [Box(0, 0, 40, 40), Box(0, 42, 40, 82)]
    far = [Box(0, 0, 40, 40), Box(0, 43, 40, 83)]
    assert len(merge_boxes(close, shape, CFG)) == 1
    assert merge_boxes(far, shape, CFG) == far


def test_far_components_stay_separate():
    shape = (256, 256)
    mask = _mask(shape, (20, 20, 30, 30), (200, 200, 210, 210), (20, 200, 30, 210))
    boxes = merge_boxes(component_boxes(mask, CFG), shape, CFG)
    assert len(boxes) == 3


def test_merging_repeats_until_stable():
    shape = (256, 256)
    # a-b overlap; their merged square then overlaps c, which touched neither.
    a, b, c = Box(100, 100, 130, 130), Box(100, 125, 130, 155), Box(60, 135, 92, 165)
    assert not a.intersects(c) and a.distance(c) > 3 and b.distance(c) > 3
    merged = merge_boxes([a, b, c], shape, CFG)
    assert len(merged) == 1
    assert all(merged[0].contains(x) for x in (a, b, c))


def test_merged_box_on_elongated_image_may_exceed_short_side():
    shape = (40, 400)
    # Merge distance is 0.4 px here: only touching boxes merge.
    boxes = [Box(0, 10, 20, 30), Box(0, 30, 20, 52), Box(0, 52, 20, 74)]
    assert len(merge_boxes([boxes[0], Box(0, 31, 20, 52)], shape, CFG)) == 2
    (merged,) = merge_boxes(boxes, shape, CFG)
    assert merged.side == 64 and _square(merged)
    assert merged.top < 0 and merged.bottom > 40  # sticks out across the short side
    assert merged.left <= 10 and merged.right >= 74


# --- selection -----------------------------------------------------------------------------


def test_selection_keeps_n_plus_one_largest():
    shape = (256, 256)
    rects = [(10, 10, 14, 14), (10, 200, 30, 220), (200, 10, 208, 18), (200, 200, 212, 212)]
    mask = _mask(shape, *rects)
    boxes = select_boxes(mask, 2, CFG)
    assert len(boxes) == 3
    # Areas 400 > 144 > 64 (the 16-px component is dropped), largest first.
    assert boxes[0].contains(Box(10, 200, 30, 220))
    assert boxes[1].contains(Box(200, 200, 212, 212))
    assert boxes[2].contains(Box(200, 10, 208, 18))
    assert len(select_boxes(mask, 10, CFG)) == 4


def test_empty_mask_gives_whole_image():
    assert select_boxes(np.zeros((64, 64), bool), 0, CFG) == [Box(0, 0, 64, 64)]
    box = select_boxes(np.zeros((40, 100), bool), 3, CFG)[0]
    assert box == whole_image_box((40, 100))
    assert _square(box) and box.side == 100 and box.left == 0 and box.top == -30
    with pytest.raises(ValueError):
        select_boxes(np.zeros((8, 8), bool), -1, CFG)


# --- extraction ------------------------------------------------------------------------------


def _image(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(100, 200, (*shape, 3), dtype=np.uint8)


def test_extract_crops_shapes_and_mask_content():
    shape = (256, 256)
    mask = _mask(shape, (100, 100, 140, 130))
    amap = np.zeros(shape, np.float32)
    amap[mask] = 2.0
    amap[120, 110] = 3.0
    boxes = select_boxes(mask, 1, CFG)
    (crop,) = extract_crops(_image(shape), amap, mask, boxes, CFG)
    size = CFG.output_size
    assert crop.image.shape == (size, size, 3) and crop.image.dtype == np.uint8
    assert crop.anomaly_map.shape == (size, size) and crop.anomaly_map.dtype == np.float32
    assert crop.mask.shape == (size, size) and crop.mask.dtype == bool
    assert crop.area == 40 * 30
    assert crop.score == pytest.approx(3.0)
    expected = crop.area * (size / crop.box.side) ** 2
    assert crop.mask.sum() == pytest.approx(expected, rel=0.1)
    # The resized mask and map agree on where the anomaly is.
    assert crop.anomaly_map[crop.mask].mean() > 1.5
    assert crop.anomaly_map[~crop.mask].mean() < 0.5


def test_extract_crop_pixels_match_original_when_not_resized():
    shape = (128, 128)
    cfg = CropConfig(output_size=40)
    image = _image(shape, seed=3)
    mask = _mask(shape, (50, 60, 80, 90))
    box = Box(45, 55, 85, 95)  # side 40 = output size: no resampling
    (crop,) = extract_crops(image, mask.astype(np.float32), mask, [box], cfg)
    assert np.array_equal(crop.image, image[45:85, 55:95])
    assert np.array_equal(crop.mask, mask[45:85, 55:95])


def test_non_square_image_and_border_boxes():
    shape = (120, 300)
    mask = _mask(shape, (0, 0, 5, 6), (110, 280, 120, 300))
    amap = mask.astype(np.float32)
    boxes = select_boxes(mask, 2, CFG)
    assert len(boxes) == 2 and all(_inside(b, shape) for b in boxes)
    crops = extract_crops(_image(shape), amap, mask, boxes, CFG)
    assert sorted(c.area for c in crops) == [30, 200]
    assert all(c.image.shape == (224, 224, 3) and c.mask.any() for c in crops)


def test_elongated_image_boxes_padded_by_edge_replication():
    shape = (30, 300)
    image = _image(shape, seed=5)
    mask = np.zeros(shape, bool)
    amap = np.zeros(shape, np.float32)
    (whole,) = select_boxes(mask, 0, CFG)
    assert whole.side == 300 and whole.top < 0
    (crop,) = extract_crops(image, amap, mask, [whole], CFG)
    # Replicated edges, not black padding: every pixel stays in the image's value range.
    assert crop.image.min() >= 100 and crop.image.max() < 200
    assert crop.area == 0 and not crop.mask.any()
    # A merged box sticking out of the short side: the mask padding adds no anomaly pixels.
    mask[10:20, 10:20] = True
    box = Box(-20, 0, 50, 70)
    (crop,) = extract_crops(image, mask.astype(np.float32), mask, [box], CFG)
    assert crop.area == 100
    assert crop.mask.sum() == pytest.approx(100 * (224 / 70) ** 2, rel=0.15)


def test_extract_validates_inputs():
    shape = (32, 32)
    mask = np.zeros(shape, bool)
    with pytest.raises(ValueError, match="same height and width"):
        extract_crops(_image(shape), np.zeros((16, 16), np.float32), mask, [Box(0, 0, 8, 8)])
    with pytest.raises(ValueError, match="uint8"):
        extract_crops(np.zeros((*shape, 3)), mask.astype(np.float32), mask, [Box(0, 0, 8, 8)])
    with pytest.raises(ValueError, match="overlap"):
        extract_crops(_image(shape), mask.astype(np.float32), mask, [Box(40, 40, 50, 50)])
    gray = extract_crops(_image(shape)[:, :, 0], mask.astype(np.float32), mask, [Box(0, 0, 8, 8)])
    assert gray[0].image.shape == (224, 224, 3)
