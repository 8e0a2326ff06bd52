"""MEBin: stable-interval search, normalisation range, binarization of synthetic maps."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from engine.mebin import (
    MEBinConfig,
    binarize,
    longest_stable_run,
    mebin,
    normalisation_range,
    sweep_thresholds,
)

SIZE = 128
NOISE_STD = 0.02
BLOB_SIGMA = 6.0
CENTRES = [(30, 30), (30, 98), (98, 64)]
AMPLITUDES = [1.0, 0.9, 0.8]


def blob_map(
    n_blobs: int, seed: int, shape: tuple[int, int] = (SIZE, SIZE), centres=CENTRES
) -> np.ndarray:
    """Low Gaussian noise plus ``n_blobs`` well-separated Gaussian blobs."""
    rng = np.random.default_rng(seed)
    out = rng.normal(0.0, NOISE_STD, shape).astype(np.float32)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for (cy, cx), amp in list(zip(centres, AMPLITUDES))[:n_blobs]:
        out += amp * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * BLOB_SIGMA**2))
    return out


@pytest.fixture(scope="module")
def blob_maps() -> list[np.ndarray]:
    return [blob_map(k, seed=k) for k in range(4)]


# --- longest_stable_run ----------------------------------------------------------------


def test_longest_run_picks_longest_nonzero_run():
    counts = [0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 3, 3, 0]
    assert longest_stable_run(counts, 4) == (2, 6, 11)


def test_longest_run_ignores_zero_runs_and_short_runs():
    assert longest_stable_run([0] * 10, 4) == (0, -1, -1)
    assert longest_stable_run([0, 0, 0, 0, 0, 0, 5, 5, 5], 4) == (0, -1, -1)


def test_longest_run_does_not_join_separate_runs_of_same_count():
    assert longest_stable_run([1, 1, 1, 0, 1, 1, 1], 4) == (0, -1, -1)


def test_longest_run_tie_prefers_earliest_and_run_at_end_counts():
    assert longest_stable_run([1, 1, 1, 1, 2, 2, 2, 2], 4) == (1, 0, 3)
    assert longest_stable_run([0, 3, 3, 3, 3, 3], 4) == (3, 1, 5)
    assert longest_stable_run([], 4) == (0, -1, -1)


def test_sweep_thresholds_default():
    t = sweep_thresholds(MEBinConfig())
    assert t[0] == 255 and t[-1] == 3 and len(t) == 64
    assert np.all(np.diff(t) == -4)


# --- normalisation range -----------------------------------------------------------------


def test_normalisation_range_is_min_and_max_of_maxima(blob_maps):
    lo, hi = normalisation_range(blob_maps)
    maxima = [float(m.max()) for m in blob_maps]
    assert lo == pytest.approx(min(maxima)) and hi == pytest.approx(max(maxima))


def test_range_floor_raises_low_end(blob_maps):
    lo, hi = normalisation_range(blob_maps)
    floor = (lo + hi) / 2
    assert normalisation_range(blob_maps, MEBinConfig(range_floor=floor)) == pytest.approx(
        (floor, hi)
    )
    # A floor below the smallest maximum changes nothing.
    assert normalisation_range(blob_maps, MEBinConfig(range_floor=lo - 1.0)) == pytest.approx(
        (lo, hi)
    )
    # A floor above every maximum collapses the range: every image is judged normal.
    cfg = MEBinConfig(range_floor=hi + 1.0)
    assert all(r.n_components == 0 for r in mebin(blob_maps, cfg))


# --- binarization ---------------------------------------------------------------------


@pytest.mark.parametrize("n_blobs", [1, 2, 3])
def test_blob_count_and_centres(blob_maps, n_blobs):
    result = mebin(blob_maps)[n_blobs]
    assert result.n_components == n_blobs
    for cy, cx in CENTRES[:n_blobs]:
        assert result.mask[cy, cx]
    n_labels, _ = cv2.connectedComponents(result.mask.view(np.uint8), connectivity=8)
    assert n_labels - 1 == n_blobs
    assert result.stable_length >= MEBinConfig().min_stable_steps
    # Blobs are well separated: the mask stays local to them.
    assert result.mask.mean() < 0.25


def test_noise_map_is_normal(blob_maps):
    result = mebin(blob_maps)[0]
    noise = blob_maps[0]
    assert result.n_components == 0 or result.threshold > noise.max()
    assert not result.mask.any()


def test_threshold_in_original_units(blob_maps):
    result = mebin(blob_maps)[2]
    amap = blob_maps[2]
    lo, hi = normalisation_range(blob_maps)
    assert lo < result.threshold < hi
    assert np.all(amap[result.mask] >= result.threshold - 1e-5)
    # The mask is the un-eroded binarization (minus specks): it covers the high pixels.
    big = amap >= result.threshold + 0.05
    assert np.all(result.mask[big])


def test_counts_match_explicit_binary_erosion(blob_maps):
    cfg = MEBinConfig()
    lo, hi = normalisation_range(blob_maps)
    amap = blob_maps[3]
    result = binarize(amap, (lo, hi), cfg)
    norm = np.clip((amap - lo) / (hi - lo) * 255, 0, 255)
    kernel = np.ones((cfg.erosion_kernel, cfg.erosion_kernel), np.uint8)
    expected = []
    for t in sweep_thresholds(cfg):
        eroded = cv2.erode((norm >= t).astype(np.uint8), kernel)
        expected.append(cv2.connectedComponents(eroded, connectivity=8)[0] - 1)
    assert np.array_equal(result.counts, expected)


def test_specks_vanishing_under_erosion_are_dropped():
    amap = np.zeros((96, 96), np.float32)
    amap[10:40, 10:40] = 1.0  # a plateau that survives 6x6 erosion
    amap[70:73, 70:73] = 1.0  # a 3x3 speck that does not
    noise = np.full((96, 96), 0.0, np.float32)
    noise[0, 0] = 0.1  # non-constant normal map setting the low end of the range
    result = mebin([noise, amap])[1]
    assert result.n_components == 1
    assert result.mask[10:40, 10:40].all()  # not eroded
    assert result.mask.sum() == 30 * 30
    assert not result.mask[70:73, 70:73].any()


def test_constant_and_zero_maps_are_normal(blob_maps):
    constant = np.full((SIZE, SIZE), 0.7, np.float32)
    zeros = np.zeros((SIZE, SIZE), np.float32)
    results = mebin([constant, zeros, *blob_maps])
    assert results[0].n_components == 0 and not results[0].mask.any()
    assert results[1].n_components == 0 and not results[1].mask.any()
    assert results[0].threshold == float("inf")
    assert results[-1].n_components == 3  # the others are unaffected


def test_degenerate_range_judges_everything_normal(blob_maps):
    results = mebin(blob_maps, value_range=(0.5, 0.5))
    assert all(r.n_components == 0 and not r.mask.any() for r in results)
    # A single map: min and max of the maxima coincide.
    assert mebin([blob_maps[3]])[0].n_components == 0
    assert mebin([]) == []


def test_maps_of_different_shapes():
    maps = [
        blob_map(1, seed=1, shape=(SIZE, SIZE), centres=[(60, 60)]),
        blob_map(2, seed=2, shape=(96, 160), centres=[(40, 30), (50, 120)]),
        blob_map(0, seed=3, shape=(64, 64)),
    ]
    results = mebin(maps)
    assert [r.mask.shape for r in results] == [m.shape for m in maps]
    assert [r.n_components for r in results] == [1, 2, 0]
    assert results[1].mask[40, 30] and results[1].mask[50, 120]


def test_nan_raises_naming_the_map_index(blob_maps):
    bad = blob_maps[1].copy()
    bad[5, 5] = np.nan
    with pytest.raises(ValueError, match="anomaly map 2"):
        mebin([blob_maps[0], blob_maps[2], bad])
    with pytest.raises(ValueError, match="anomaly map 1"):
        normalisation_range([blob_maps[0], bad])
    with pytest.raises(ValueError, match="NaN"):
        binarize(bad, (0.0, 1.0))


def test_invalid_inputs():
    with pytest.raises(ValueError, match="2-D"):
        mebin([np.zeros((4, 4, 3))])
    with pytest.raises(ValueError):
        MEBinConfig(step=0)
