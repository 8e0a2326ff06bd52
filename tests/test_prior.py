"""Tests for the object prior (engine/prior.py)."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.prior import (
    ANOMALY,
    BACKGROUND,
    OBJECT,
    PRIOR_BACKENDS,
    ClassicalPrior,
    GroundedSamPrior,
    NoPrior,
    ObjectPrior,
    PriorConfig,
    PriorUnavailableError,
    _cxcywh_to_xyxy,
    _dino_tensor,
    _hub_offline,
    make_prior,
    region_map,
)
from engine.synth import SynthConfig, generate, make_scene

#: Minimum IoU of the classical prior with the true object mask on synthetic scenes.
MIN_IOU = 0.85
N_FIT = 12
BOTTLE = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "mvtec_bottle"


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def _scenes(cfg: SynthConfig, n: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` (image, true object mask) pairs."""
    return [make_scene(np.random.default_rng([seed, i]), cfg) for i in range(n)]


def _fitted(cfg: SynthConfig, prior_cfg: PriorConfig | None = None) -> ClassicalPrior:
    prior = ClassicalPrior(prior_cfg)
    prior.fit([image for image, _ in _scenes(cfg, N_FIT, seed=0)])
    return prior


# ---------------------------------------------------------------------------------------------
# Regions, factory, NoPrior
# ---------------------------------------------------------------------------------------------


def test_region_map_precedence() -> None:
    obj = np.zeros((4, 5), dtype=bool)
    obj[1:3, 1:4] = True
    anomaly = np.zeros_like(obj)
    anomaly[1, 1] = True  # inside the object
    anomaly[3, 4] = True  # on the background
    regions = region_map(obj, anomaly)
    assert regions.dtype == np.uint8 and regions.shape == obj.shape
    assert regions[1, 1] == ANOMALY and regions[3, 4] == ANOMALY
    assert regions[2, 2] == OBJECT and regions[0, 0] == BACKGROUND
    assert (regions == OBJECT).sum() == obj.sum() - 1
    with pytest.raises(ValueError):
        region_map(obj, anomaly[:3])


def test_make_prior_backends_and_unknown_name() -> None:
    assert isinstance(make_prior(), ClassicalPrior)
    assert isinstance(make_prior(PriorConfig(backend="none")), NoPrior)
    for prior in (make_prior(), NoPrior()):
        assert isinstance(prior, ObjectPrior)
    with pytest.raises(ValueError) as info:
        make_prior(PriorConfig(backend="sam2"))
    for name in PRIOR_BACKENDS:
        assert name in str(info.value)


def test_no_prior_is_whole_image() -> None:
    prior = NoPrior()
    prior.fit([])
    mask = prior.predict(np.zeros((7, 9, 3), np.uint8))
    assert mask.dtype == bool and mask.shape == (7, 9) and mask.all()


# ---------------------------------------------------------------------------------------------
# Classical prior on synthetic scenes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(256, 256), (192, 320)], ids=["square", "wide"])
@pytest.mark.parametrize("shape", ["disc", "rounded_rect"])
def test_classical_matches_true_object(shape: str, size: tuple[int, int]) -> None:
    cfg = SynthConfig(object_shape=shape, size=size)
    prior = _fitted(cfg)
    for image, truth in _scenes(cfg, 4, seed=1):
        mask = prior.predict(image)
        assert mask.dtype == bool and mask.shape == size
        assert _iou(mask, truth) >= MIN_IOU


def test_classical_single_image_rule_before_fit() -> None:
    image, truth = _scenes(SynthConfig(object_shape="rounded_rect"), 1, seed=2)[0]
    assert _iou(ClassicalPrior().predict(image), truth) >= MIN_IOU


def test_classical_texture_is_whole_image_at_any_size() -> None:
    prior = _fitted(SynthConfig(kind="texture"))
    image = _scenes(SynthConfig(kind="texture"), 1, seed=1)[0][0]
    assert prior.predict(image).all()
    other = cv2.resize(image, (100, 60))
    mask = prior.predict(other)
    assert mask.shape == (60, 100) and mask.all()


def test_classical_predict_other_size_and_aspect() -> None:
    cfg = SynthConfig()
    prior = _fitted(cfg)
    image, truth = _scenes(cfg, 1, seed=3)[0]
    small = prior.predict(cv2.resize(image, (100, 100), interpolation=cv2.INTER_AREA))
    assert small.shape == (100, 100)
    expected = cv2.resize(truth.astype(np.uint8), (100, 100)).astype(bool)
    assert _iou(small, expected) >= MIN_IOU
    # Another aspect ratio: the fitted mask does not apply, the rule runs on the image.
    wide = np.zeros((256, 400, 3), np.uint8)
    wide[:] = cfg.background_rgb
    wide[:, 72:328] = image
    wide_truth = np.zeros((256, 400), bool)
    wide_truth[:, 72:328] = truth
    mask = prior.predict(wide)
    assert mask.shape == (256, 400)
    assert _iou(mask, wide_truth) >= MIN_IOU


def test_classical_keeps_missing_defects_inside_object() -> None:
    """Default prior (no per-image refinement) keeps bites out of the edge as object."""
    cfg = SynthConfig()
    samples = generate(cfg, n_normal=N_FIT, n_per_type=3, types=("missing",), seed=4)
    prior = ClassicalPrior()
    prior.fit([s.image for s in samples if s.label == "good"])
    for sample in samples[N_FIT:]:
        covered = (prior.predict(sample.image) & sample.mask).sum() / sample.mask.sum()
        assert covered >= 0.9


def test_classical_refine_band_follows_a_shifted_object() -> None:
    cfg = SynthConfig(position_jitter_px=0.0)
    normals = [image for image, _ in _scenes(cfg, N_FIT, seed=0)]
    image, truth = _scenes(cfg, 1, seed=5)[0]
    shift = np.float32([[1, 0, 5], [0, 1, 0]])  # 5 px to the right
    moved = cv2.warpAffine(image, shift, (256, 256), borderMode=cv2.BORDER_REPLICATE)
    moved_truth = cv2.warpAffine(truth.astype(np.uint8), shift, (256, 256)).astype(bool)
    plain, refined = ClassicalPrior(), ClassicalPrior(PriorConfig(refine_band=4))
    plain.fit(normals)
    refined.fit(normals)
    assert _iou(refined.predict(moved), moved_truth) > _iou(plain.predict(moved), moved_truth)


def test_classical_input_validation() -> None:
    with pytest.raises(ValueError):
        ClassicalPrior().fit([])
    with pytest.raises(ValueError):
        ClassicalPrior().predict(np.zeros((4, 4, 2), np.uint8))
    grey = ClassicalPrior().predict(np.zeros((30, 40), np.uint8))
    assert grey.shape == (30, 40) and grey.all()  # plain image: no object -> whole image


@pytest.mark.shared_data
def test_classical_on_mvtec_bottle() -> None:
    if not BOTTLE.is_dir():
        pytest.skip(f"shared data set not available: {BOTTLE} (only present beside the repo)")
    files = sorted((BOTTLE / "train" / "good").glob("*.png"))[:20]
    normals = [cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB) for f in files]
    prior = ClassicalPrior()
    prior.fit(normals)
    mask = prior.predict(normals[0])
    height, width = mask.shape
    cy, cx, r = height // 2, width // 2, min(height, width) // 4
    assert mask[cy - r : cy + r, cx - r : cx + r].all()  # bottle centre
    corner = max(4, min(height, width) // 10)
    for corner_view in (
        mask[:corner, :corner],
        mask[:corner, -corner:],
        mask[-corner:, :corner],
        mask[-corner:, -corner:],
    ):
        assert not corner_view.any()
    assert 0.4 < mask.mean() < 0.85


# ---------------------------------------------------------------------------------------------
# Grounded SAM prior
# ---------------------------------------------------------------------------------------------


class _BoxSam:
    """A SamPredictor stand-in whose mask is exactly the box."""

    def __init__(self) -> None:
        self.shape: tuple[int, int] | None = None

    def set_image(self, image: np.ndarray) -> None:
        self.shape = image.shape[:2]

    def predict(self, *, box: np.ndarray, multimask_output: bool):
        assert self.shape is not None and not multimask_output
        mask = np.zeros((1, *self.shape), dtype=bool)
        x0, y0, x1, y1 = np.round(box).astype(int)
        mask[0, y0:y1, x0:x1] = True
        return mask, np.ones(1), np.zeros((1, 8, 8))


class _FakeDetector:
    def __init__(self, boxes: list[tuple[float, float, float, float]]) -> None:
        self.boxes = boxes
        self.calls: list[tuple[tuple[int, ...], str]] = []

    def __call__(self, image: np.ndarray, prompt: str) -> list[tuple[float, float, float, float]]:
        self.calls.append((image.shape, prompt))
        return list(self.boxes)


def test_grounded_sam_unions_boxes_and_whole_image_without_boxes() -> None:
    image = np.zeros((40, 60, 3), np.uint8)
    detector = _FakeDetector([(5, 5, 15, 20), (30, 10, 70, 30)])  # second one clipped
    prior = GroundedSamPrior(
        PriorConfig(backend="grounded-sam", prompt=" bottle "),
        box_detector=detector,
        sam_predictor=_BoxSam(),
    )
    prior.fit([image])
    mask = prior.predict(image)
    expected = np.zeros((40, 60), bool)
    expected[5:20, 5:15] = True
    expected[10:30, 30:60] = True
    assert np.array_equal(mask, expected)
    assert detector.calls == [((40, 60, 3), "bottle")]
    assert len(prior.last_boxes) == 2
    detector.boxes = []
    assert prior.predict(image).all() and prior.last_boxes == []


def test_grounded_sam_needs_a_prompt() -> None:
    with pytest.raises(ValueError, match="prompt"):
        GroundedSamPrior(
            PriorConfig(backend="grounded-sam"),
            box_detector=_FakeDetector([]),
            sam_predictor=_BoxSam(),
        )


def test_grounded_sam_missing_files_are_named(tmp_path: Path) -> None:
    cfg = PriorConfig(
        backend="grounded-sam", prompt="bottle", sam_checkpoint=str(tmp_path / "nope.pth")
    )
    with pytest.raises(PriorUnavailableError) as info:
        make_prior(cfg)
    text = str(info.value)
    assert isinstance(info.value, ImportError)
    for needle in (
        "sam_checkpoint",
        "nope.pth",
        "sam_vit_b_01ec64.pth",
        "groundingdino_checkpoint",
        "groundingdino_swint_ogc.pth",
        "groundingdino_config",
        "text_encoder_dir",
        "bert-base-uncased",
    ):
        assert needle in text
    # The groundingdino package is not installed here: the message says how to get it.
    try:
        import groundingdino  # noqa: F401
    except ImportError:
        assert 'pip install "protoatlas[sam]"' in text
    # With the detector injected, only SAM's requirements remain.
    with pytest.raises(PriorUnavailableError) as info:
        GroundedSamPrior(cfg, box_detector=_FakeDetector([]))
    assert "sam_checkpoint" in str(info.value) and "groundingdino" not in str(info.value)


def test_groundingdino_helpers_box_conversion_and_input(monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    boxes = _cxcywh_to_xyxy(np.array([[0.5, 0.5, 0.5, 0.25]], np.float32), (40, 80))
    assert boxes == [(20.0, 15.0, 60.0, 25.0)]
    tensor = _dino_tensor(np.zeros((100, 300, 3), np.uint8))
    assert isinstance(tensor, torch.Tensor) and tuple(tensor.shape) == (3, 444, 1333)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with _hub_offline():
        assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert "HF_HUB_OFFLINE" not in os.environ


def _tiny_sam_predictor():
    """A random-initialised SAM small enough for a unit test, in a real SamPredictor."""
    torch = pytest.importorskip("torch")
    modeling = pytest.importorskip(
        "segment_anything.modeling", reason="segment-anything not installed (the sam extra)"
    )
    from segment_anything import SamPredictor

    torch.manual_seed(0)
    img_size, patch, dim = 64, 16, 32
    grid = img_size // patch
    sam = modeling.Sam(
        image_encoder=modeling.ImageEncoderViT(
            img_size=img_size, patch_size=patch, embed_dim=dim, depth=1, num_heads=1, out_chans=dim
        ),
        prompt_encoder=modeling.PromptEncoder(
            embed_dim=dim,
            image_embedding_size=(grid, grid),
            input_image_size=(img_size, img_size),
            mask_in_chans=4,
        ),
        mask_decoder=modeling.MaskDecoder(
            transformer_dim=dim,
            iou_head_hidden_dim=16,
            transformer=modeling.TwoWayTransformer(
                depth=1, embedding_dim=dim, num_heads=1, mlp_dim=dim
            ),
        ),
    ).eval()
    return SamPredictor(sam)


def test_grounded_sam_with_tiny_real_sam() -> None:
    pytest.importorskip(
        "segment_anything", reason="segment-anything not installed (pip install 'protoatlas[sam]')"
    )
    image = make_scene(np.random.default_rng(0), SynthConfig(size=(48, 80)))[0]
    detector = _FakeDetector([(10.0, 8.0, 60.0, 40.0)])
    prior = GroundedSamPrior(
        PriorConfig(backend="grounded-sam", prompt="disc"),
        box_detector=detector,
        sam_predictor=_tiny_sam_predictor(),
    )
    mask = prior.predict(image)
    assert mask.dtype == bool and mask.shape == (48, 80)
    assert detector.calls == [((48, 80, 3), "disc")]
    assert prior.last_boxes == [(10.0, 8.0, 60.0, 40.0)]
    detector.boxes = []
    assert prior.predict(image).all()


def test_grounded_sam_reads_the_given_sam_checkpoint(tmp_path: Path) -> None:
    """With the file present, SAM is built from that path: a corrupt file fails to load
    (not a PriorUnavailableError, and nothing is fetched)."""
    pytest.importorskip(
        "segment_anything", reason="segment-anything not installed (pip install 'protoatlas[sam]')"
    )
    bad = tmp_path / "sam_vit_b_01ec64.pth"
    bad.write_bytes(b"not a checkpoint")
    cfg = PriorConfig(
        backend="grounded-sam", prompt="bottle", sam_checkpoint=str(bad), device="cpu"
    )
    with pytest.raises(Exception) as info:
        GroundedSamPrior(cfg, box_detector=_FakeDetector([]))
    assert not isinstance(info.value, PriorUnavailableError)


def test_a_prompt_without_a_backend_asks_for_grounded_sam() -> None:
    from engine.prior import prior_overrides

    assert prior_overrides(None, None) == {}
    assert prior_overrides(None, "bottle") == {"backend": "grounded-sam", "prompt": "bottle"}
    assert prior_overrides("classical", "bottle") == {"backend": "classical", "prompt": "bottle"}
    assert prior_overrides("none", "") == {"backend": "none"}
