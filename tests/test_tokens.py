"""Crop tokens: shapes, PRN-style residuals against reference normals, guidance arrays."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.backbone import FeatureExtractor
from engine.config import BackboneConfig
from engine.crops import CropConfig
from engine.mebin import MEBinConfig
from engine.prior import ANOMALY
from engine.regions import Region, image_regions
from engine.synth import SynthConfig, generate
from engine.tokens import N_REGION_CODES, CropEncoder, RegionTokens
from tests.conftest import TEST_IMAGE_SIZE

S = TEST_IMAGE_SIZE
CROP = CropConfig(output_size=224)  # 7 x 7 tokens at stride 32
#: The pasted defect, (top, left, bottom, right): inside the top-left quadrant of the box.
DEFECT = (38, 38, 52, 52)


@pytest.fixture(scope="module")
def extractor() -> FeatureExtractor:
    cfg = BackboneConfig(image_size=S, feature_strides=(32,), batch_size=8)
    return FeatureExtractor(cfg, torch.device("cpu"))


@pytest.fixture(scope="module")
def normals() -> list[np.ndarray]:
    return [
        s.image
        for s in generate(SynthConfig(size=(S, S)), n_normal=2, n_per_type=0, types=(), seed=5)
    ]


def blob(centre=(64, 64), sigma=12.0) -> np.ndarray:
    yy, xx = np.mgrid[:S, :S]
    return np.exp(-((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) / (2 * sigma**2)).astype(
        np.float32
    )


def regions_of(image: np.ndarray, amap: np.ndarray, index: int = 0) -> list[Region]:
    obj = np.zeros((S, S), bool)
    obj[16:112, 16:112] = True
    return image_regions(
        index,
        image,
        amap,
        obj,
        mebin_cfg=MEBinConfig(),
        crop_cfg=CROP,
        value_range=(0.3, 1.0),
        fallback_quantile=0.97,
        mebin_side=256,
    ).regions


@pytest.fixture(scope="module")
def encoded(extractor, normals):
    """One region cut from a normal image and the same region with a pasted defect, both
    encoded as residuals against that normal image."""
    clean = normals[0]
    broken = clean.copy()
    t, l, b, r = DEFECT
    broken[t:b, l:r] = (250, 40, 30)
    amap = blob()
    (reg_clean,) = regions_of(clean, amap)
    (reg_broken,) = regions_of(broken, amap)
    assert reg_clean.box == reg_broken.box
    enc = CropEncoder(extractor, use_residual=True, crop_cfg=CROP)
    tokens = enc.encode([reg_clean, reg_broken], [clean.shape] * 2, [[clean], [clean]])
    raw = CropEncoder(extractor, use_residual=False, crop_cfg=CROP).encode(
        [reg_clean, reg_broken], [clean.shape] * 2, [[], []]
    )
    return tokens, raw, reg_broken.box, enc


def test_encode_shapes(encoded) -> None:
    tokens, raw, _, enc = encoded
    h, w = tokens.grid
    assert (h, w) == (7, 7)
    assert tokens.tokens.shape == (2, h * w, enc.channels) == raw.tokens.shape
    assert tokens.anomaly.shape == (2, h * w)
    assert tokens.regions.shape == (2, h * w, N_REGION_CODES)
    assert tokens.tokens.dtype == tokens.anomaly.dtype == tokens.regions.dtype == np.float32
    assert len(tokens) == 2 and len(tokens.select([1])) == 1
    both = RegionTokens.concat([tokens, tokens.select([0])])
    assert len(both) == 3 and np.array_equal(both.tokens[2], tokens.tokens[0])


def test_identical_crop_has_zero_residual(encoded) -> None:
    tokens, raw, _, _ = encoded
    raw_norm = np.linalg.norm(raw.tokens[0], axis=1)
    res_norm = np.linalg.norm(tokens.tokens[0], axis=1)
    assert raw_norm.min() > 1.0  # the raw tokens are far from zero...
    assert res_norm.max() <= 1e-3 * raw_norm.mean()  # ...their residuals are not


def test_pasted_defect_raises_residual_at_its_tokens(encoded) -> None:
    tokens, _, box, _ = encoded
    h, w = tokens.grid
    norm = np.linalg.norm(tokens.tokens[1], axis=1).reshape(h, w)
    # token (i, j) covers crop rows i*side/h..(i+1)*side/h: find the defect's tokens
    t, l, b, r = DEFECT
    rows = (np.arange(h) + 0.5) * box.height / h + box.top
    cols = (np.arange(w) + 0.5) * box.width / w + box.left
    at_defect = ((rows >= t) & (rows < b))[:, None] & ((cols >= l) & (cols < r))[None, :]
    far = (rows > b + 12)[:, None] & (cols > r + 12)[None, :]
    assert at_defect.any() and far.any()
    assert norm[at_defect].mean() > 2.0 * norm[far].mean()
    assert norm[at_defect].min() > 0.1 * np.linalg.norm(tokens.tokens[1], axis=1).max()


def test_anomaly_is_standardised_per_crop_and_fractions_sum_to_one(encoded) -> None:
    tokens, _, _, _ = encoded
    np.testing.assert_allclose(tokens.anomaly.mean(axis=1), 0.0, atol=1e-4)
    np.testing.assert_allclose(tokens.anomaly.std(axis=1), 1.0, atol=1e-3)
    np.testing.assert_allclose(tokens.regions.sum(axis=2), 1.0, atol=1e-5)
    assert (tokens.regions >= 0).all()
    # the crop is centred on the blob: the centre token is mostly anomaly, and the most
    # anomalous token is where the anomaly fraction is high
    h, w = tokens.grid
    centre = (h // 2) * w + w // 2
    assert tokens.regions[0, centre, ANOMALY] > 0.9
    assert tokens.anomaly[0].argmax() == centre


def test_anomaly_scale_does_not_matter(extractor, normals) -> None:
    """Standardised per crop: a map 10x stronger gives the same guidance."""
    enc = CropEncoder(extractor, use_residual=False, crop_cfg=CROP)
    (weak,) = regions_of(normals[1], blob())
    strong = Region(**{**weak.__dict__, "crop_map": weak.crop_map * 10.0 + 3.0})
    out = enc.encode([weak, strong], [normals[1].shape] * 2, [[], []])
    np.testing.assert_allclose(out.anomaly[0], out.anomaly[1], atol=1e-4)


def test_empty_and_mismatched_inputs(encoded) -> None:
    _, _, _, enc = encoded
    empty = enc.encode([], [], [])
    assert len(empty) == 0 and empty.grid == (7, 7)
    assert empty.tokens.shape == (0, 49, enc.channels) and empty.regions.shape == (0, 49, 3)
    with pytest.raises(ValueError, match="equal lengths"):
        enc.encode([], [(S, S)], [])
    with pytest.raises(ValueError, match="nothing to concatenate"):
        RegionTokens.concat([])
