"""Tests for the synthetic image generator (engine/synth.py)."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest
from sklearn.model_selection import LeaveOneOut, cross_val_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from engine.synth import (
    DEFECT_TYPES,
    SynthConfig,
    SynthSample,
    add_defect,
    cutpaste,
    generate,
    make_normal,
    make_scene,
    perlin_anomaly,
    perlin_noise,
    write_mvtec,
)

OBJECT = SynthConfig()
TEXTURE = SynthConfig(kind="texture")
NON_SQUARE = (192, 320)
#: Mean absolute change (grey levels) a defect must make inside its mask.
MIN_INSIDE_CHANGE = 20.0
SAMPLES_PER_TYPE = 10


def _defect_pairs(
    cfg: SynthConfig, defect_type: str, n: int, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """(clean, defective, mask, object mask) for ``n`` seeded samples of one type."""
    pairs = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        clean, support = make_scene(rng, cfg)
        image, mask = add_defect(clean, defect_type, rng, cfg, support)
        pairs.append((clean, image, mask, support))
    return pairs


# ---------------------------------------------------------------------------------------------
# Determinism, shapes, dtypes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cfg", [OBJECT, TEXTURE], ids=["object", "texture"])
def test_same_seed_identical_different_seed_differs(cfg: SynthConfig) -> None:
    a = generate(cfg, n_normal=2, n_per_type=1, seed=5)
    b = generate(cfg, n_normal=2, n_per_type=1, seed=5)
    c = generate(cfg, n_normal=2, n_per_type=1, seed=6)
    for x, y in zip(a, b):
        assert x.image.tobytes() == y.image.tobytes()
        assert np.array_equal(x.mask, y.mask)
    for x, z in zip(a, c):
        assert not np.array_equal(x.image, z.image)


def test_make_normal_uses_only_the_given_generator() -> None:
    np.random.seed(0)
    first = make_normal(np.random.default_rng(11), OBJECT)
    np.random.seed(1)  # global state must not matter
    second = make_normal(np.random.default_rng(11), OBJECT)
    assert np.array_equal(first, second)


@pytest.mark.parametrize("kind", ["object", "texture"])
@pytest.mark.parametrize("size", [(256, 256), NON_SQUARE])
def test_shapes_dtypes_and_labels(kind: str, size: tuple[int, int]) -> None:
    cfg = SynthConfig(kind=kind, size=size)
    samples = generate(cfg, n_normal=2, n_per_type=1, seed=1)
    assert [s.label for s in samples] == ["good", "good", *DEFECT_TYPES]
    assert [s.index for s in samples] == [0, 1] + [0] * len(DEFECT_TYPES)
    for sample in samples:
        assert isinstance(sample, SynthSample)
        assert sample.image.shape == (*size, 3) and sample.image.dtype == np.uint8
        assert sample.mask.shape == size and sample.mask.dtype == bool
        assert sample.mask.any() == (sample.label != "good")


def test_rounded_rect_object_and_subset_of_types() -> None:
    cfg = SynthConfig(object_shape="rounded_rect", size=NON_SQUARE)
    samples = generate(cfg, n_normal=0, n_per_type=2, types=("fold", "spot"), seed=3)
    assert [s.label for s in samples] == ["fold", "fold", "spot", "spot"]
    assert all(s.mask.any() for s in samples)


def test_invalid_arguments_raise() -> None:
    with pytest.raises(ValueError):
        SynthConfig(kind="nope")
    with pytest.raises(ValueError):
        generate(OBJECT, n_normal=0, n_per_type=1, types=("dent",), seed=0)
    image = make_normal(np.random.default_rng(0), OBJECT)
    with pytest.raises(ValueError):
        add_defect(image, "dent", np.random.default_rng(0), OBJECT)


# ---------------------------------------------------------------------------------------------
# Defects
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cfg", [OBJECT, TEXTURE, SynthConfig(size=NON_SQUARE)], ids=["object", "texture", "non-square"]
)
@pytest.mark.parametrize("defect_type", DEFECT_TYPES)
def test_defect_mask_area_locality_and_strength(cfg: SynthConfig, defect_type: str) -> None:
    for clean, image, mask, support in _defect_pairs(cfg, defect_type, 4):
        area = mask.mean()
        assert cfg.min_area_frac <= area <= cfg.max_area_frac
        assert np.array_equal(image[~mask], clean[~mask])
        inside = np.abs(image.astype(np.int16) - clean.astype(np.int16))[mask].mean()
        assert inside > MIN_INSIDE_CHANGE
        assert support[mask].mean() >= 0.9


@pytest.mark.parametrize("defect_type", DEFECT_TYPES)
def test_defect_lies_on_estimated_object_when_no_mask_given(defect_type: str) -> None:
    rng = np.random.default_rng(42)
    clean, support = make_scene(rng, OBJECT)
    image, mask = add_defect(clean, defect_type, rng, OBJECT)  # object mask estimated
    assert mask.any()
    assert support[mask].mean() >= 0.9
    assert np.array_equal(image[~mask], clean[~mask])


def _elongation(mask: np.ndarray) -> float:
    """Ratio of the larger to the smaller eigenvalue of the mask-pixel covariance."""
    coords = np.argwhere(mask).astype(float)
    eig = np.linalg.eigvalsh(np.cov(coords.T))
    return float(eig[-1] / max(eig[0], 1e-6))


def _descriptor(clean: np.ndarray, image: np.ndarray, mask: np.ndarray) -> list[float]:
    """Hand-crafted description of a defect region."""
    delta = image.astype(float)[mask] - clean.astype(float)[mask]
    lum = delta.mean(axis=1)
    return [
        lum.mean(),  # brighter or darker on average
        np.abs(lum).mean(),  # strength
        (lum > 0).mean(),  # share of brightened pixels (fold: both)
        (delta[:, 0] - delta[:, 2]).mean(),  # shift towards red / brown
        np.log(_elongation(mask)),
        np.log(mask.sum()),
    ]


def test_defect_types_are_separable_by_simple_descriptors() -> None:
    features, labels = [], []
    for defect_type in DEFECT_TYPES:
        for clean, image, mask, _ in _defect_pairs(OBJECT, defect_type, SAMPLES_PER_TYPE, 9):
            features.append(_descriptor(clean, image, mask))
            labels.append(defect_type)
    model = make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors=1))
    accuracy = cross_val_score(model, np.array(features), labels, cv=LeaveOneOut()).mean()
    assert accuracy >= 0.8


@pytest.mark.parametrize("cfg", [OBJECT, TEXTURE], ids=["object", "texture"])
def test_normals_vary_little_compared_with_defects(cfg: SynthConfig) -> None:
    normals = generate(cfg, n_normal=8, n_per_type=0, seed=2)
    stack = np.stack([s.image for s in normals]).astype(float)
    spread = stack.std(axis=0).mean()
    assert spread > 0  # samples do vary
    weakest = min(
        np.abs(image.astype(float) - clean)[mask].mean()
        for defect_type in DEFECT_TYPES
        for clean, image, mask, _ in _defect_pairs(cfg, defect_type, 3)
    )
    assert spread < 0.3 * weakest


# ---------------------------------------------------------------------------------------------
# MVTec layout
# ---------------------------------------------------------------------------------------------


def _read_labels(root: Path) -> list[list[str]]:
    with open(root / "labels.csv", newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


def test_write_mvtec_layout_masks_and_labels(tmp_path: Path) -> None:
    types = ("scratch", "missing")
    cfg = SynthConfig(size=NON_SQUARE)
    root = write_mvtec(
        tmp_path / "synth", cfg, n_train=3, n_test_good=2, n_per_type=2, types=types, seed=4
    )
    assert root == tmp_path / "synth"
    assert sorted(p.name for p in (root / "train" / "good").iterdir()) == [
        "000.png",
        "001.png",
        "002.png",
    ]
    assert sorted(p.name for p in (root / "test").iterdir()) == ["good", "missing", "scratch"]
    assert not (root / "ground_truth" / "good").exists()
    for defect_type in types:
        for i in range(2):
            image = cv2.imread(str(root / "test" / defect_type / f"{i:03d}.png"))
            mask = cv2.imread(
                str(root / "ground_truth" / defect_type / f"{i:03d}_mask.png"), cv2.IMREAD_UNCHANGED
            )
            assert image.shape == (*NON_SQUARE, 3)
            assert mask.shape == NON_SQUARE and mask.dtype == np.uint8
            assert set(np.unique(mask)) == {0, 255}
    rows = _read_labels(root)
    assert rows[0] == ["image", "label"]
    assert rows[1:] == [
        ["good/000.png", "good"],
        ["good/001.png", "good"],
        ["scratch/000.png", "scratch"],
        ["scratch/001.png", "scratch"],
        ["missing/000.png", "missing"],
        ["missing/001.png", "missing"],
    ]
    for image_path, _ in rows[1:]:
        assert (root / "test" / image_path).is_file()
    train0 = cv2.imread(str(root / "train" / "good" / "000.png"))
    test0 = cv2.imread(str(root / "test" / "good" / "000.png"))
    assert not np.array_equal(train0, test0)  # separate random streams


def test_write_mvtec_images_match_generate(tmp_path: Path) -> None:
    root = write_mvtec(
        tmp_path, OBJECT, n_train=1, n_test_good=1, n_per_type=1, types=("spot",), seed=8
    )
    expected = generate(OBJECT, n_normal=1, n_per_type=1, types=("spot",), seed=8)[1]
    written = cv2.cvtColor(cv2.imread(str(root / "test" / "spot" / "000.png")), cv2.COLOR_BGR2RGB)
    mask = cv2.imread(str(root / "ground_truth" / "spot" / "000_mask.png"), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(written, expected.image)
    assert np.array_equal(mask > 0, expected.mask)


def test_default_demo_set_counts(tmp_path: Path) -> None:
    # its speed is a benchmark figure (BENCHMARKS.md), not a timed unit test
    root = write_mvtec(tmp_path)
    assert len(list((root / "train" / "good").glob("*.png"))) == 60
    assert len(list((root / "test" / "good").glob("*.png"))) == 10
    for defect_type in DEFECT_TYPES:
        assert len(list((root / "test" / defect_type).glob("*.png"))) == 12
        assert len(list((root / "ground_truth" / defect_type).glob("*_mask.png"))) == 12
    assert len(_read_labels(root)) == 1 + 10 + 12 * len(DEFECT_TYPES)


# ---------------------------------------------------------------------------------------------
# Pseudo-anomalies
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape, res", [((256, 256), (4, 4)), ((100, 150), (3, 7))])
def test_perlin_noise_range_and_determinism(shape: tuple[int, int], res: tuple[int, int]) -> None:
    a = perlin_noise(shape, res, np.random.default_rng(3))
    b = perlin_noise(shape, res, np.random.default_rng(3))
    c = perlin_noise(shape, res, np.random.default_rng(4))
    assert a.shape == shape
    assert a.min() >= 0.0 and a.max() <= 1.0
    assert a.max() - a.min() > 0.3  # not flat
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    # smooth: neighbouring pixels differ far less than the full range
    assert np.abs(np.diff(a, axis=1)).max() < 0.1


@pytest.mark.parametrize("seed", range(6))
def test_cutpaste_and_perlin_anomaly_masks(seed: int) -> None:
    image = make_normal(np.random.default_rng(seed), SynthConfig(size=NON_SQUARE))
    for make in (cutpaste, perlin_anomaly):
        out, mask = make(image, np.random.default_rng(seed))
        assert out.shape == image.shape and out.dtype == np.uint8
        assert mask.shape == image.shape[:2] and mask.dtype == bool
        assert mask.any()
        assert np.array_equal(out[~mask], image[~mask])
        assert np.array_equal(out, make(image, np.random.default_rng(seed))[0])
    # an explicit texture of another size is resized and blended in
    texture = np.full((32, 48, 3), 255, np.uint8)
    out, mask = perlin_anomaly(image, np.random.default_rng(seed), texture=texture)
    assert np.array_equal(out[~mask], image[~mask])
    changed = np.abs(out.astype(int) - image)[mask].mean()
    assert changed > 0.3 * (255 - image[mask].astype(float).mean()) - 1
