"""DiscoveryModel end to end on the synthetic generator: discover, assign, save/load, maps."""

from __future__ import annotations

import json
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from engine.config import ProtoAtlasConfig
from engine.detector import ModelFormatError, PatchCoreDetector, read_npz, write_npz
from engine.discovery import NO_TYPE, DiscoveryError, DiscoveryModel
from engine.metrics import cluster_metrics
from engine.synth import SynthConfig, generate
from tests.conftest import TEST_IMAGE_SIZE

S = TEST_IMAGE_SIZE
SEEN = ("scratch", "spot", "missing")


def small_discovery_config() -> ProtoAtlasConfig:
    return ProtoAtlasConfig(device="cpu").with_overrides(
        backbone={"image_size": S, "batch_size": 8},
        detector={"prototypes_per_scale": 16},
        crops={"output_size": 128},
        discovery={"head_epochs": 5, "n_references": 4},
    )


def alien(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A defect the generator never makes: a small green/yellow checkerboard patch."""
    out = image.copy()
    y, x = rng.integers(40, 76, 2)
    yy, xx = np.mgrid[:14, :14]
    out[y : y + 14, x : x + 14] = np.where(
        ((yy // 3 + xx // 3) % 2 == 1)[..., None], (40, 230, 60), (250, 250, 40)
    )
    return out


@pytest.fixture(scope="module")
def world():
    """20 normals; a discovery batch of 4 good + 3 types x 6; a later batch of 1 good +
    the same 3 types x 3; a batch mixing 3 images of a seen type with 3 of an unseen one."""
    sc = SynthConfig(size=(S, S))
    normals = [s.image for s in generate(sc, n_normal=20, n_per_type=0, types=(), seed=11)]
    batch = generate(sc, n_normal=4, n_per_type=6, types=SEEN, seed=12)
    later = generate(sc, n_normal=1, n_per_type=3, types=SEEN, seed=13)
    rng = np.random.default_rng(0)
    aliens = [
        alien(s.image, rng) for s in generate(sc, n_normal=3, n_per_type=0, types=(), seed=14)
    ]
    model = DiscoveryModel(small_discovery_config())
    model.fit(normals)
    analysis = model.analyse([s.image for s in batch])
    result = model.discover(analysis, 3)
    later_analysis = model.analyse([s.image for s in later])
    later_result = model.assign(later_analysis)
    scratches = [s.image for s in later if s.label == "scratch"]
    mixed = scratches + aliens
    mixed_result = model.assign(model.analyse(mixed))
    return SimpleNamespace(
        normals=normals,
        batch=batch,
        later=later,
        model=model,
        analysis=analysis,
        result=result,
        later_result=later_result,
        mixed=mixed,
        mixed_result=mixed_result,
        n_scratch=len(scratches),
    )


def type_of_label(world) -> dict[str, int]:
    """The discovered type that holds most images of each true label."""
    out = {}
    for label in SEEN:
        types = [t for s, t in zip(world.batch, world.result.image_type) if s.label == label]
        out[label] = max(set(types), key=types.count)
    return out


def test_discover_gives_one_type_per_anomalous_image(world) -> None:
    res, batch = world.result, world.batch
    truly = np.array([s.label != "good" for s in batch])
    flagged = res.analysis.is_anomalous
    # detection: no false alarm, at most one faint defect passed at this small input size
    assert not flagged[~truly].any() and flagged[truly].sum() >= truly.sum() - 1
    defect = flagged
    assert (res.image_type[~defect] == NO_TYPE).all()
    assert not res.image_outlier[~defect].any()
    typed = res.image_type != NO_TYPE
    assert (typed | res.image_outlier)[defect].all()  # each anomalous image: a type or outlier
    assert list(res.type_ids) == [0, 1, 2] and res.new_type_ids == [0, 1, 2]
    assert set(res.image_type[typed]) <= {0, 1, 2}
    assert ((res.image_confidence >= 0) & (res.image_confidence <= 1)).all()
    assert (res.image_confidence[typed] > 0).all()
    truth = [s.label for s, d in zip(batch, defect) if d]
    pred = [str(t) for t in res.image_type[defect]]
    scores = cluster_metrics(truth, pred)
    assert scores.nmi > 0.8, scores  # chance is about 0
    # model state matches the result
    np.testing.assert_allclose(np.linalg.norm(world.model.prototypes, axis=1), 1.0, atol=1e-5)
    assert len(world.model.thresholds) == 3
    np.testing.assert_allclose(res.attention.sum(axis=1), 1.0, atol=1e-5)
    assert len(res.region_type) == len(res.analysis.regions) == len(res.embeddings)
    # every image, flagged or not, has the type nearest to its strongest (or peak) region;
    # an image with regions gets its region's type unless that region is an outlier
    assert set(res.nearest_type) <= {0, 1, 2}
    assert len(res.analysis.peaks) == int((~flagged).sum())
    agree = typed & ~res.image_outlier
    assert np.mean(res.nearest_type[agree] == res.image_type[agree]) >= 0.9
    assert list(res.n_regions[~flagged]) == [0] * int((~flagged).sum())


def test_regions_lie_on_the_defects(world) -> None:
    res, batch = world.result, world.batch
    hits = [
        bool((r.full_mask(res.analysis.shapes[r.image_index]) & batch[r.image_index].mask).any())
        for r in res.analysis.regions
    ]
    assert np.mean(hits) > 0.8


def test_auto_k_on_the_same_regions(world) -> None:
    auto = DiscoveryModel(small_discovery_config()).discover(world.analysis, "auto")
    assert auto.k_scores and 2 <= len(auto.type_ids) <= 5
    defect = auto.analysis.is_anomalous
    truth = [s.label for s, d in zip(world.batch, defect) if d]
    assert cluster_metrics(truth, [str(t) for t in auto.image_type[defect]]).nmi > 0.6


def test_assign_sorts_a_later_batch_by_nearest_saved_type(world) -> None:
    res, later = world.later_result, world.later
    expect = type_of_label(world)
    assert len(set(expect.values())) == 3
    anomalous = res.analysis.is_anomalous
    truly = np.array([s.label != "good" for s in later])
    # no false alarm; the faintest scratches score like good images at this small input size
    assert not anomalous[~truly].any() and anomalous[truly].sum() >= truly.sum() - 2
    # every image has its nearest saved type, flagged or not
    assert set(res.nearest_type) <= set(world.model.type_ids) | set(res.new_type_ids)
    # the nearest saved prototype (FAISS index, the caller's ids) is the right type
    _, ids = world.model.index.search(res.embeddings, k=1)
    truth = [expect[later[r.image_index].label] for r in res.analysis.regions]
    assert np.mean(ids[:, 0] == truth) >= 0.9
    # regions and images that assign puts into a saved type are in the right one
    saved = np.isin(res.region_type, world.model.type_ids)
    assert (res.region_type[saved] == np.array(truth)[saved]).all()
    for sample, t in zip(later, res.image_type):
        if t in world.model.type_ids:
            assert t == expect[sample.label]
    # new types get fresh ids and a consistent image verdict
    assert all(t not in world.model.type_ids for t in res.new_type_ids)
    assert not (res.image_outlier & (res.image_type != NO_TYPE)).any()


def test_assign_keeps_most_images_of_known_types_in_their_saved_type(world) -> None:
    expect = type_of_label(world)
    pairs = [
        (expect[s.label], t)
        for s, t in zip(world.later, world.later_result.image_type)
        if s.label != "good"
    ]
    assert np.mean([a == b for a, b in pairs]) >= 2 / 3


def test_unseen_defect_type_is_proposed_as_a_new_type(world) -> None:
    res, n = world.mixed_result, world.n_scratch
    # every unseen defect is flagged (the faintest scratch may pass, see above)
    assert res.analysis.is_anomalous[n:].all() and res.analysis.is_anomalous[:n].sum() >= n - 1
    assert res.new_type_ids, "the unseen defect should form a proposed type"
    alien_types = res.image_type[n:]
    novel = np.isin(alien_types, res.new_type_ids) | res.image_outlier[n:]
    assert novel.all()
    # most of the seen type in the same batch stays in its saved type, and every proposed
    # type is made mostly of the unseen defect
    assert np.mean(res.image_type[:n] == type_of_label(world)["scratch"]) >= 2 / 3
    for t in res.new_type_ids:
        assert (alien_types == t).sum() > (res.image_type[:n] == t).sum()
    # images in a new type are not reported as outliers, and the type has a prototype
    assert not res.image_outlier[np.isin(res.image_type, res.new_type_ids)].any()
    assert len(res.prototypes) == len(res.type_ids) == 3 + len(res.new_type_ids)
    assert res.new_type_ids[0] == int(world.model.type_ids.max()) + 1


def test_save_load_round_trip_gives_identical_assign(world, tmp_path) -> None:
    path = world.model.save(tmp_path / "discovery.npz")
    loaded = DiscoveryModel.load(path)
    assert np.array_equal(loaded.type_ids, world.model.type_ids)
    assert np.array_equal(loaded.prototypes, world.model.prototypes)
    assert loaded.value_range == world.model.value_range
    again = loaded.assign(loaded.analyse(world.mixed))
    first = world.mixed_result
    assert first.new_type_ids  # the comparison covers proposed types too
    np.testing.assert_array_equal(again.analysis.scores, first.analysis.scores)
    np.testing.assert_allclose(again.embeddings, first.embeddings, atol=1e-6)
    np.testing.assert_array_equal(again.region_type, first.region_type)
    np.testing.assert_array_equal(again.image_type, first.image_type)
    np.testing.assert_allclose(again.image_confidence, first.image_confidence, atol=1e-6)
    np.testing.assert_allclose(again.region_confidence, first.region_confidence, atol=1e-6)
    np.testing.assert_array_equal(again.image_outlier, first.image_outlier)
    assert again.new_type_ids == first.new_type_ids


def test_calibration_changes_the_reported_confidence_only(world) -> None:
    """The image vote weighs regions by the uncalibrated probability: types, outliers and
    nearest types are those of an uncalibrated run; the reported confidences spread."""
    cfg = small_discovery_config().with_overrides(discovery={"calibrate_confidence": False})
    plain_model = DiscoveryModel(cfg)
    plain = plain_model.discover(world.analysis, 3)
    res = world.result
    assert plain_model.temperature == cfg.discovery.confidence_temperature
    assert world.model.temperature > 2 * cfg.discovery.confidence_temperature
    np.testing.assert_array_equal(plain.region_type, res.region_type)
    np.testing.assert_array_equal(plain.image_type, res.image_type)
    np.testing.assert_array_equal(plain.image_outlier, res.image_outlier)
    np.testing.assert_array_equal(plain.nearest_type, res.nearest_type)
    np.testing.assert_allclose(plain.region_vote, res.region_vote)
    np.testing.assert_allclose(plain.region_confidence, plain.region_vote)
    assert plain.region_confidence.min() > 0.99  # the saturation the calibration removes
    typed = res.region_type != NO_TYPE
    conf = res.region_confidence[typed]
    assert conf.max() - conf.min() >= 0.05 and conf.max() < 0.99
    # an image's confidence: the calibrated confidences of its regions of the winning type
    one = np.flatnonzero((res.n_regions == 1) & (res.image_type != NO_TYPE))
    assert len(one)
    region_of = {img: r for r, img in enumerate(res.analysis.region_image)}
    np.testing.assert_allclose(
        res.image_confidence[one], res.region_confidence[[region_of[i] for i in one]], atol=1e-6
    )


def test_the_fitted_temperature_travels_with_the_model(world, tmp_path) -> None:
    path = world.model.save(tmp_path / "calibrated.npz")
    assert DiscoveryModel.load(path).temperature == pytest.approx(world.model.temperature)
    arrays = read_npz(path)
    meta = json.loads(arrays["meta"].tobytes().decode())
    del meta["confidence_temperature"]  # a model saved before calibration
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    old = DiscoveryModel.load(write_npz(tmp_path / "old.npz", arrays))
    assert old.temperature == old.config.discovery.confidence_temperature
    res = old.assign(world.later_result.analysis)
    assert res.region_confidence[res.region_type != NO_TYPE].min() > 0.99


def test_loading_another_kind_or_version_is_a_clear_error(world, tmp_path) -> None:
    det = PatchCoreDetector(small_discovery_config())
    det.fit(world.normals[:6])
    det_path = det.save(tmp_path / "detector.npz")
    with pytest.raises(ModelFormatError, match="not a discovery model"):
        DiscoveryModel.load(det_path)
    arrays = read_npz(world.model.save(tmp_path / "good.npz"))
    meta = json.loads(arrays["meta"].tobytes().decode())
    meta["format_version"] = 99
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    future = write_npz(tmp_path / "future.npz", arrays)
    with pytest.raises(ModelFormatError, match="format version 99"):
        DiscoveryModel.load(future)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip at all")
    with pytest.raises(ModelFormatError, match="not a ProtoAtlas model file"):
        DiscoveryModel.load(junk)


def test_external_maps_flag_images_by_mebin(world) -> None:
    model = DiscoveryModel(small_discovery_config())
    model.fit(world.normals, fit_detector=False)
    assert not model.detector.is_fitted
    rng = np.random.default_rng(2)
    samples = world.batch[2:4] + world.batch[4::3]  # 2 good, 2 of each type
    maps = []
    for s in samples:
        amap = rng.normal(0.0, 0.01, (S, S)).astype(np.float32)
        if s.label != "good":
            blob = cv2.GaussianBlur(s.mask.astype(np.float32), (0, 0), 3.0)
            amap += blob / blob.max()
        # a map at another resolution (same aspect ratio) is resized to the image
        maps.append(cv2.resize(amap, (S // 2, S // 2), interpolation=cv2.INTER_AREA))
    images = [s.image for s in samples]
    analysis = model.analyse(images, maps=maps)
    defect = np.array([s.label != "good" for s in samples])
    assert defect.sum() == 6
    assert np.array_equal(analysis.is_anomalous, defect)
    # the score is the maximum of the map resized to its image
    expected = [cv2.resize(m, (S, S), interpolation=cv2.INTER_LINEAR).max() for m in maps]
    np.testing.assert_allclose(analysis.scores, expected, rtol=1e-6)
    assert all(analysis.is_anomalous[r.image_index] for r in analysis.regions)
    hits = [
        bool((r.full_mask((S, S)) & samples[r.image_index].mask).any()) for r in analysis.regions
    ]
    assert np.mean(hits) > 0.9
    result = model.discover(analysis, 3)
    assert ((result.image_type != NO_TYPE) | result.image_outlier)[defect].all()
    with pytest.raises(DiscoveryError, match="no fitted detector"):
        model.analyse(images)
    with pytest.raises(DiscoveryError, match="3 anomaly maps for 8 images"):
        model.analyse(images, maps=maps[:3])


def test_misuse_is_a_clear_error(world) -> None:
    fresh = DiscoveryModel(small_discovery_config())
    with pytest.raises(RuntimeError, match="not fitted"):
        fresh.analyse([world.normals[0]])
    with pytest.raises(RuntimeError, match="no types yet"):
        fresh.assign(world.analysis)
    with pytest.raises(DiscoveryError, match="no known-good images"):
        fresh.fit([])
    with pytest.raises(DiscoveryError, match="--clusters must be >= 1"):
        fresh.discover(world.analysis, 0)


def test_an_unknown_mebin_range_is_refused(world, monkeypatch) -> None:
    bad = world.model.config.with_overrides(discovery={"mebin_range": "some"})
    monkeypatch.setattr(world.model, "config", bad)
    with pytest.raises(ValueError, match="mebin_range"):
        world.model.analyse([world.normals[0]])
