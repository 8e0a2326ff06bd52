"""Anomalous regions of one image: MEBin mask -> square crops -> Region records."""

from __future__ import annotations

import numpy as np
import pytest

from engine.crops import Box, CropConfig, whole_image_box
from engine.mebin import MEBinConfig
from engine.prior import ANOMALY, BACKGROUND, OBJECT
from engine.regions import fallback_mask, image_regions, reference_box, resize_long_side

SHAPE = (120, 200)  # non-square on purpose
CENTRES = [(40, 50), (80, 150)]
SIGMA = 5.0
CROP = CropConfig(output_size=64)


def blob_map(
    shape=SHAPE, centres=CENTRES, amp: float = 1.0, seed: int = 0, sigma: float = SIGMA
) -> np.ndarray:
    """Tiny noise plus one Gaussian blob per centre (peak ``amp``)."""
    rng = np.random.default_rng(seed)
    out = rng.normal(0.0, 0.01, shape).astype(np.float32)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for cy, cx in centres:
        out += amp * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
    return out.astype(np.float32)


def image_of(shape=SHAPE) -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.integers(0, 255, (*shape, 3), dtype=np.uint8)


def run(
    amap,
    image=None,
    *,
    object_mask=None,
    value_range=(0.3, 1.0),
    mebin_side=256,
    quantile=0.97,
    index=0,
):
    image = image_of(amap.shape) if image is None else image
    obj = np.ones(amap.shape, bool) if object_mask is None else object_mask
    return image_regions(
        index,
        image,
        amap,
        obj,
        mebin_cfg=MEBinConfig(),
        crop_cfg=CROP,
        value_range=value_range,
        fallback_quantile=quantile,
        mebin_side=mebin_side,
    )


def _contains(box: Box, point: tuple[int, int]) -> bool:
    return box.top <= point[0] < box.bottom and box.left <= point[1] < box.right


def test_two_blobs_give_two_regions_boxed_around_them() -> None:
    amap = blob_map()
    found = run(amap)
    assert not found.fallback and found.mebin.n_components == 2
    assert len(found.regions) == 2
    for centre in CENTRES:  # every blob lies in exactly one box
        assert sum(_contains(r.box, centre) for r in found.regions) == 1
    for r in found.regions:
        assert r.box.height == r.box.width  # square
        assert r.image_index == 0
        assert r.crop.shape == (64, 64, 3) and r.crop.dtype == np.uint8
        assert r.crop_map.shape == (64, 64) and r.crop_regions.shape == (64, 64)
        assert r.score == pytest.approx(
            float(amap[r.clip[0] : r.clip[2], r.clip[1] : r.clip[3]].max())
        )
        assert r.score > 0.9
        # the mask lives inside the (clipped) box and is the blob's core
        top, left, bottom, right = r.clip
        assert r.mask.shape == (bottom - top, right - left) and r.mask.any()
        assert r.area == int(r.mask.sum())
        assert (ANOMALY in r.crop_regions) and (OBJECT in r.crop_regions)
        assert BACKGROUND not in r.crop_regions  # object mask is the whole image


def test_full_mask_round_trip_and_union_is_the_mebin_mask() -> None:
    amap = blob_map()
    found = run(amap)
    union = np.zeros(SHAPE, bool)
    for r in found.regions:
        full = r.full_mask(SHAPE)
        assert full.shape == SHAPE
        top, left, bottom, right = r.clip
        assert np.array_equal(full[top:bottom, left:right], r.mask)
        outside = full.copy()
        outside[top:bottom, left:right] = False
        assert not outside.any()
        # the mask is the blob: map values above the low end of MEBin's range
        assert amap[full].min() > 0.3 and amap[full].max() > 0.9
        union |= full
    assert np.array_equal(union, found.mebin.mask)


def test_mebin_on_a_shrunk_map_gives_masks_at_full_resolution() -> None:
    big = blob_map(shape=(480, 800), centres=[(160, 200), (320, 600)], seed=3, sigma=20.0)
    small = run(big, mebin_side=200)
    assert len(small.regions) == 2
    for r in small.regions:
        full = r.full_mask(big.shape)
        assert full.shape == (480, 800)
        cy, cx = np.argwhere(full).mean(axis=0)
        assert min(abs(cy - y) + abs(cx - x) for y, x in [(160, 200), (320, 600)]) < 10


def test_anomaly_outside_the_object_mask_is_still_anomaly_code() -> None:
    amap = blob_map()
    obj = np.zeros(SHAPE, bool)
    obj[:, 100:] = True  # the first blob (column 50) lies on the background
    found = run(amap, object_mask=obj)
    left_region = next(r for r in found.regions if _contains(r.box, CENTRES[0]))
    assert ANOMALY in left_region.crop_regions and BACKGROUND in left_region.crop_regions
    assert OBJECT not in left_region.crop_regions


def test_whole_image_fallback_when_mebin_finds_nothing() -> None:
    # The map is weaker than the data set's normalisation range: every level is 0 for MEBin
    amap = blob_map(amp=0.5)
    found = run(amap, value_range=(0.6, 1.0), quantile=0.97)
    assert found.fallback and not found.mebin.is_anomalous
    (region,) = found.regions
    assert region.box == whole_image_box(SHAPE)
    expected = amap >= np.quantile(amap, 0.97)
    assert np.array_equal(region.full_mask(SHAPE), expected)
    assert 0.02 < expected.mean() < 0.04  # the top 3 % of the pixels
    assert region.area == int(expected.sum())
    # the fallback box sticks out of the non-square image: clip is the image itself
    assert region.clip == (0, 0, SHAPE[0], SHAPE[1])


def test_fallback_mask_is_never_empty() -> None:
    flat = np.zeros((10, 10), np.float32)
    assert fallback_mask(flat, 0.97).all()
    peak = flat.copy()
    peak[3, 4] = 1.0
    mask = fallback_mask(peak, 0.999)
    assert mask.sum() == 1 and mask[3, 4]


def test_mismatched_map_and_image_names_the_image() -> None:
    amap = blob_map()
    with pytest.raises(ValueError, match=r"image 7: anomaly map \(120, 200\) does not match"):
        run(amap, image=image_of((120, 201)), index=7)


def test_resize_long_side() -> None:
    arr = np.ones((300, 150), np.float32)
    assert resize_long_side(arr, 100).shape == (100, 50)
    same = resize_long_side(arr, 400)
    assert same.shape == (300, 150) and same is not arr


@pytest.mark.parametrize("ref_shape", [(240, 400), (60, 100), (200, 200), (120, 200)])
def test_reference_box_keeps_relative_position_and_scale(ref_shape) -> None:
    box = Box(20, 130, 60, 170)  # side 40, centre (40, 150) in a 120 x 200 image
    ref = reference_box(box, SHAPE, ref_shape)
    assert ref.height == ref.width
    cy, cx = ref.centre
    assert cy / ref_shape[0] == pytest.approx(40 / SHAPE[0], abs=1.0 / ref_shape[0])
    assert cx / ref_shape[1] == pytest.approx(150 / SHAPE[1], abs=1.0 / ref_shape[1])
    assert ref.side / min(ref_shape) == pytest.approx(40 / min(SHAPE), abs=1.0 / min(ref_shape))
    if ref_shape == SHAPE:
        assert ref == box


def test_shrink_to_keeps_the_short_side_of_strips() -> None:
    from engine.regions import shrink_to

    assert shrink_to(np.zeros((1024, 1024), np.float32), 256).shape == (256, 256)
    assert shrink_to(np.zeros((128, 2048), np.float32), 256).shape == (128, 2048)  # fabric
    assert shrink_to(np.zeros((300, 400), np.float32), 256).shape == (256, 341)
    tall = shrink_to(np.zeros((10_000, 313), np.float32), 256)
    assert tall.shape[0] * tall.shape[1] <= 256 * 256 * 16 and tall.shape[1] < 256
