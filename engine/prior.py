"""Object prior: which pixels of an image belong to the inspected object.

ProtoAnomalyNCD splits every image into three regions (:func:`region_map`): background,
object and anomaly. The object part comes from an *object prior*, a small interface
(:class:`ObjectPrior`: ``fit(normals)`` then ``predict(image) -> bool mask``) with three
backends, picked by :attr:`PriorConfig.backend` through :func:`make_prior`:

* ``"classical"`` (default, :class:`ClassicalPrior`): offline, no weights. The object is
  estimated once from the normal images (what differs from the background seen along the
  image border), then reused for every image of the same framing.
* ``"none"`` (:class:`NoPrior`): the whole image is object. Right for textures (fabric,
  metal sheet, tiles), where there is no background.
* ``"grounded-sam"`` (:class:`GroundedSamPrior`): the paper's prior, text prompt ->
  GroundingDINO boxes -> SAM masks. Needs the ``sam`` extra
  (``pip install "protoatlas[sam]"``) and local checkpoint files; nothing is downloaded.

Masks are ``bool`` arrays of the image's ``(H, W)``. This module is pure compute: torch,
segment-anything and groundingdino are imported lazily, only by the grounded-SAM backend.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import cv2
import numpy as np
from scipy import ndimage

# PriorConfig and PRIOR_BACKENDS live in engine.config and stay importable from here
from engine.config import IMAGENET_MEAN, IMAGENET_STD, PRIOR_BACKENDS, PriorConfig

# =============================================================================================
# Regions
# =============================================================================================

#: Region codes of :func:`region_map`.
BACKGROUND = 0
OBJECT = 1
ANOMALY = 2


def prior_overrides(backend: str | None, prompt: str | None) -> dict[str, str]:
    """The :class:`PriorConfig` fields a command's ``--prior`` / ``--prompt`` set: the
    ones given, and a prompt without a backend asks for ``grounded-sam`` (the only
    backend that reads it)."""
    out = {k: v for k, v in {"backend": backend, "prompt": prompt}.items() if v}
    if prompt and not backend:
        out["backend"] = "grounded-sam"
    return out


#: Install hint for the grounded-SAM backend.
SAM_EXTRA_HINT = 'pip install "protoatlas[sam]"'

Box = tuple[float, float, float, float]
BoxDetector = Callable[[np.ndarray, str], list[Box]]


def region_map(object_mask: np.ndarray, anomaly_mask: np.ndarray) -> np.ndarray:
    """``uint8 (H, W)`` region codes: ANOMALY where anomalous, else OBJECT / BACKGROUND.

    The anomaly wins over the object, and an anomaly outside the object (debris on the
    background, say) is still ANOMALY.
    """
    obj = np.asarray(object_mask, dtype=bool)
    anomaly = np.asarray(anomaly_mask, dtype=bool)
    if obj.shape != anomaly.shape or obj.ndim != 2:
        raise ValueError(
            f"object and anomaly masks must be equal (H, W) arrays, "
            f"got {obj.shape} and {anomaly.shape}"
        )
    regions = np.full(obj.shape, BACKGROUND, dtype=np.uint8)
    regions[obj] = OBJECT
    regions[anomaly] = ANOMALY
    return regions


# =============================================================================================
# Configuration and interface
# =============================================================================================


@runtime_checkable
class ObjectPrior(Protocol):
    """Estimates the object's pixels: ``fit`` on normal images, then ``predict`` per image."""

    def fit(self, normals: Sequence[np.ndarray]) -> None:
        """Learn from defect-free images (RGB ``(H, W, 3)`` uint8); may do nothing."""

    def predict(self, image: np.ndarray) -> np.ndarray:
        """Bool ``(H, W)`` object mask of ``image``."""


class PriorUnavailableError(ImportError):
    """A prior backend cannot be built here: a missing package or checkpoint file.

    Derives from :class:`ImportError` so callers can treat it like an absent optional extra
    (e.g. fall back to the classical prior); ``str()`` says exactly what to install or set.
    """


def make_prior(cfg: PriorConfig | None = None) -> ObjectPrior:
    """The prior named by ``cfg.backend`` (default: classical)."""
    cfg = PriorConfig() if cfg is None else cfg
    if cfg.backend == "none":
        return NoPrior()
    if cfg.backend == "classical":
        return ClassicalPrior(cfg)
    if cfg.backend == "grounded-sam":
        return GroundedSamPrior(cfg)
    raise ValueError(
        f"unknown prior backend {cfg.backend!r}; expected one of {', '.join(PRIOR_BACKENDS)}"
    )


class NoPrior:
    """The whole image is object (textures: there is no background)."""

    def fit(self, normals: Sequence[np.ndarray]) -> None:
        """Nothing to learn."""

    def predict(self, image: np.ndarray) -> np.ndarray:
        """All-True mask of the image's size."""
        return np.ones(np.asarray(image).shape[:2], dtype=bool)


# =============================================================================================
# Classical prior: helpers
# =============================================================================================


def _as_rgb_float(image: np.ndarray) -> np.ndarray:
    """``float32 (H, W, 3)`` from grey ``(H, W)``, RGB or RGBA input (0..255 scale)."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4) or min(arr.shape[:2]) < 1:
        raise ValueError(f"expected an (H, W), (H, W, 3) or (H, W, 4) image, got {arr.shape}")
    return arr[..., :3].astype(np.float32)


def _working_shape(shape: tuple[int, ...], long_side: int) -> tuple[int, int]:
    """(h, w) with the long side ``long_side`` (never upscaled) and the aspect kept."""
    height, width = shape[:2]
    scale = min(1.0, long_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def _resize(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Area-resize (down) / linear-resize (up) a float image to ``shape`` = (h, w)."""
    if array.shape[:2] == shape:
        return array
    shrinking = shape[0] * shape[1] < array.shape[0] * array.shape[1]
    interp = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(array, (shape[1], shape[0]), interpolation=interp)


def _resize_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bool mask resized to ``shape`` = (h, w), by linear interpolation and a 0.5 cut."""
    if mask.shape == shape:
        return mask.copy()
    soft = cv2.resize(mask.astype(np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    return soft >= 0.5


def _aspect(shape: tuple[int, ...]) -> float:
    """Width / height."""
    return shape[1] / shape[0]


def _border(array: np.ndarray, width: int) -> np.ndarray:
    """The pixels of a ``width``-px frame along the image border, as ``(N, ...)``."""
    frame = np.zeros(array.shape[:2], dtype=bool)
    frame[:width], frame[-width:], frame[:, :width], frame[:, -width:] = True, True, True, True
    return array[frame]


def _border_width(shape: tuple[int, ...], cfg: PriorConfig) -> int:
    """Border frame width in px (at least 1)."""
    return max(1, round(min(shape[:2]) * cfg.border_fraction))


def _otsu(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a set of floats (a value in their range; their max if constant)."""
    flat = values.ravel()
    low, high = float(flat.min()), float(flat.max())
    if high - low < 1e-6:
        return high
    hist, edges = np.histogram(flat, bins=bins, range=(low, high))
    centres = (edges[:-1] + edges[1:]) / 2.0
    weight0 = np.cumsum(hist)[:-1].astype(np.float64)
    weight1 = flat.size - weight0
    sum0 = np.cumsum(hist * centres)[:-1]
    mean0 = sum0 / np.maximum(weight0, 1)
    mean1 = (np.sum(hist * centres) - sum0) / np.maximum(weight1, 1)
    between = weight0 * weight1 * (mean0 - mean1) ** 2
    return float(edges[1:-1][int(np.argmax(between))])


def _cue_threshold(cue: np.ndarray, border_width: int, margin: float, cfg: PriorConfig) -> float:
    """Otsu on the cue, but never below the border's spread (quantile) plus ``margin``."""
    floor = float(np.quantile(_border(cue, border_width), cfg.border_quantile)) + margin
    return max(_otsu(cue), floor)


def _box(array: np.ndarray, size: int) -> np.ndarray:
    """Box-filter mean over a ``size`` x ``size`` window (reflected border)."""
    return cv2.blur(array, (size, size), borderType=cv2.BORDER_REFLECT)


def _colour_distance(image: np.ndarray, background: np.ndarray, cfg: PriorConfig) -> np.ndarray:
    """Euclidean RGB distance of the median-filtered image to the background colour, (H, W).

    A median filter (not a box blur) removes noise and fine grain but keeps the object's
    outline where it is, so the threshold's exact value barely moves the boundary.
    """
    as_u8 = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    smooth = cv2.medianBlur(as_u8, cfg.smoothing).astype(np.float32)
    return np.linalg.norm(smooth - background, axis=2)


def _local_texture(image: np.ndarray, cfg: PriorConfig) -> np.ndarray:
    """Local std of the grey image over a ``smoothing`` window, (H, W)."""
    grey = image.mean(axis=2)
    mean = _box(grey, cfg.smoothing)
    var = _box(grey * grey, cfg.smoothing) - mean * mean
    return np.sqrt(np.maximum(var, 0.0))


def _shrink(mask: np.ndarray, radius: int) -> np.ndarray:
    """Erode by ``radius`` px: undoes the outward spread of a cue computed over a window."""
    if radius <= 0:
        return mask
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.erode(mask.astype(np.uint8), kernel, borderType=cv2.BORDER_REPLICATE).astype(bool)


def _keep_large_components(mask: np.ndarray, min_ratio: float) -> np.ndarray:
    """Drop 8-connected components smaller than ``min_ratio`` x the largest one."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(
        mask.astype(np.uint8), connectivity=8
    )
    if count <= 2:  # background + at most one component
        return mask
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = np.flatnonzero(areas >= min_ratio * areas.max()) + 1
    return np.isin(labels, keep)


def _clean(mask: np.ndarray, cfg: PriorConfig) -> np.ndarray:
    """Closing (bridges gaps), fill holes (the object is solid), keep the large components."""
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (cfg.closing, cfg.closing))
    padding = cfg.closing * cfg.closing_iterations  # closing must not glue to the frame
    padded = np.pad(mask.astype(np.uint8), padding)
    closed = cv2.morphologyEx(padded, cv2.MORPH_CLOSE, kernel, iterations=cfg.closing_iterations)
    closed = closed[padding:-padding, padding:-padding].astype(bool)
    filled = ndimage.binary_fill_holes(closed)
    return _keep_large_components(filled, cfg.min_component_ratio)


def _whole_if_degenerate(mask: np.ndarray, cfg: PriorConfig) -> np.ndarray:
    """The whole image when the mask covers too little or too much of it (texture case)."""
    fraction = float(mask.mean())
    if fraction < cfg.min_object_fraction or fraction > cfg.max_object_fraction:
        return np.ones_like(mask, dtype=bool)
    return mask


@dataclass(frozen=True)
class _Estimate:
    """A classical estimate at working resolution and what produced it."""

    mask: np.ndarray  # bool (h, w)
    background: np.ndarray  # float32 (3,) RGB
    colour_threshold: float


def _estimate(median: np.ndarray, variation: np.ndarray | None, cfg: PriorConfig) -> _Estimate:
    """Object mask from a (median) image and optional cross-normal std, at its resolution.

    Object = colour far from the border colour, OR strong local texture, OR strong
    disagreement between normals (each cue thresholded by :func:`_cue_threshold`), then
    cleaned (:func:`_clean`) and checked for degeneracy (:func:`_whole_if_degenerate`).
    """
    width = _border_width(median.shape, cfg)
    background = np.median(_border(median, width), axis=0).astype(np.float32)
    distance = _colour_distance(median, background, cfg)
    colour_thr = _cue_threshold(distance, width, cfg.colour_margin, cfg)
    texture = _local_texture(median, cfg)
    spread = texture > _cue_threshold(texture, width, cfg.texture_margin, cfg)
    if variation is not None:
        spread |= variation > _cue_threshold(variation, width, cfg.variation_margin, cfg)
    raw = (distance > colour_thr) | _shrink(spread, cfg.smoothing // 2)
    mask = _whole_if_degenerate(_clean(raw, cfg), cfg)
    return _Estimate(mask=mask, background=background, colour_threshold=colour_thr)


# =============================================================================================
# Classical prior
# =============================================================================================


class ClassicalPrior:
    """Offline object prior estimated from the normal images; no weights, no training.

    ``fit(normals)``:

    1. Resize every normal to the working resolution (``working_size`` px on the long side;
       all normals are assumed to share one framing, and are resized to the first one's).
    2. Per-pixel median image (robust to the odd defect or reflection) and per-pixel std of
       the grey level across normals (where the part moves or varies).
    3. Background colour = median colour of a thin frame along the border of the median
       image: industrial captures put the part in the middle of a plain backdrop.
    4. Three cues, each thresholded by Otsu but never below the border's own spread
       (``border_quantile``) plus a margin, so textures are not split in two:
       colour distance to the background (``colour_margin``), local std of the grey median
       (``texture_margin``: a textured part on a similar-coloured backdrop) and cross-normal
       std (``variation_margin``: a part whose position or rotation varies). Object = any cue.
    5. Morphological closing, hole filling (the part is solid: dark holes and inner
       background show through as object, a conservative choice) and removal of specks
       smaller than ``min_component_ratio`` of the largest component.
    6. If the result covers less than ``min_object_fraction`` or more than
       ``max_object_fraction`` of the image, there is no separable object (texture, tiles):
       the whole image is object.

    ``predict(image)``: the fitted mask resized to the image when the aspect ratio matches
    the normals' (within ``aspect_tolerance``); with ``refine_band > 0`` the band around the
    fitted boundary is re-decided per image by the colour rule. When the fit found no object
    (texture), every image is whole-image object, whatever its size. For another aspect
    ratio, or before ``fit``, the same rule (colour and texture cues, no cross-normal cue) is
    applied to the image itself.
    """

    def __init__(self, cfg: PriorConfig | None = None) -> None:
        self.cfg = PriorConfig() if cfg is None else cfg
        self._fitted: _Estimate | None = None

    @property
    def fitted_mask(self) -> np.ndarray | None:
        """The fitted object mask at working resolution (None before ``fit``)."""
        return None if self._fitted is None else self._fitted.mask.copy()

    def fit(self, normals: Sequence[np.ndarray]) -> None:
        """Estimate the object mask from defect-free images."""
        if len(normals) == 0:
            raise ValueError("ClassicalPrior.fit needs at least one normal image")
        shape = _working_shape(np.asarray(normals[0]).shape, self.cfg.working_size)
        stack = np.stack([_resize(_as_rgb_float(n), shape) for n in normals])
        median = np.median(stack, axis=0).astype(np.float32)
        variation = None
        if len(normals) >= self.cfg.min_normals_for_variation:
            variation = _box(stack.mean(axis=3).std(axis=0).astype(np.float32), self.cfg.smoothing)
        self._fitted = _estimate(median, variation, self.cfg)

    def predict(self, image: np.ndarray) -> np.ndarray:
        """Bool ``(H, W)`` object mask of ``image`` (see the class docstring)."""
        rgb = _as_rgb_float(image)
        full_shape = rgb.shape[:2]
        fitted = self._fitted
        if fitted is not None and fitted.mask.all():  # texture: whole image at any size
            return np.ones(full_shape, dtype=bool)
        if fitted is None or not self._same_framing(full_shape):
            return self._from_image(rgb)
        if self.cfg.refine_band <= 0:
            return _resize_mask(fitted.mask, full_shape)
        work = _resize(rgb, fitted.mask.shape)
        return _resize_mask(self._refine(work, fitted), full_shape)

    def _same_framing(self, shape: tuple[int, int]) -> bool:
        """Whether an image of ``shape`` has the normals' aspect ratio."""
        assert self._fitted is not None
        fitted_aspect = _aspect(self._fitted.mask.shape)
        return abs(_aspect(shape) / fitted_aspect - 1.0) <= self.cfg.aspect_tolerance

    def _from_image(self, rgb: np.ndarray) -> np.ndarray:
        """The rule applied to one image on its own, at working resolution, resized back."""
        work = _resize(rgb, _working_shape(rgb.shape, self.cfg.working_size))
        return _resize_mask(_estimate(work, None, self.cfg).mask, rgb.shape[:2])

    def _refine(self, work: np.ndarray, fitted: _Estimate) -> np.ndarray:
        """Re-decide the ``refine_band`` px around the fitted boundary by the colour rule."""
        if fitted.mask.all():
            return fitted.mask
        size = 2 * self.cfg.refine_band + 1
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
        fitted_u8 = fitted.mask.astype(np.uint8)
        inner = cv2.erode(fitted_u8, kernel).astype(bool)
        outer = cv2.dilate(fitted_u8, kernel).astype(bool)
        colour = _colour_distance(work, fitted.background, self.cfg) > fitted.colour_threshold
        return _clean(inner | (colour & outer), self.cfg)


# =============================================================================================
# Grounded SAM prior
# =============================================================================================

#: Example checkpoint file names per SAM model type (the official releases).
SAM_CHECKPOINT_NAMES: dict[str, str] = {
    "vit_b": "sam_vit_b_01ec64.pth",
    "vit_l": "sam_vit_l_0b3195.pth",
    "vit_h": "sam_vit_h_4b8939.pth",
}
#: GroundingDINO's short side / long-side cap at inference (its ``load_image`` transform).
_DINO_SHORT_SIDE = 800
_DINO_MAX_SIDE = 1333
_IMAGENET_MEAN = np.asarray(IMAGENET_MEAN, np.float32)
_IMAGENET_STD = np.asarray(IMAGENET_STD, np.float32)


class SamPredictorLike(Protocol):
    """What :class:`GroundedSamPrior` uses of ``segment_anything.SamPredictor``."""

    def set_image(self, image: np.ndarray) -> None:
        """Embed an RGB ``(H, W, 3)`` uint8 image."""

    def predict(self, *, box: np.ndarray, multimask_output: bool) -> Any:
        """``(masks (1, H, W), scores, logits)`` for an ``xyxy`` pixel box."""


def _missing_file(value: str | None, field: str, what: str) -> str | None:
    """A line naming ``field`` when it is unset or not an existing file, else None."""
    if not value:
        return f"{field} is not set: give {what}"
    if not Path(value).is_file():
        return f"{field}={value!r} is not a file: give {what}"
    return None


def _missing_text_encoder(value: str | None) -> str | None:
    """A line naming ``text_encoder_dir`` when it is unset or lacks ``config.json``."""
    what = (
        "a local directory with the bert-base-uncased files (config.json, vocab.txt, "
        "tokenizer_config.json, model.safetensors or pytorch_model.bin)"
    )
    if not value:
        return f"text_encoder_dir is not set: give {what}"
    if not (Path(value) / "config.json").is_file():
        return f"text_encoder_dir={value!r} has no config.json: give {what}"
    return None


def _missing_module(module: str) -> str | None:
    """A line naming ``module`` when it cannot be imported, else None."""
    try:
        __import__(module)
    except ImportError as exc:
        return f"python package {module!r} is not importable ({exc}): {SAM_EXTRA_HINT}"
    return None


def _sam_problems(cfg: PriorConfig) -> list[str]:
    """Why a SAM predictor cannot be built from ``cfg`` (empty when it can)."""
    name = SAM_CHECKPOINT_NAMES.get(cfg.sam_model_type, "the matching SAM .pth")
    what = (
        f"a SAM {cfg.sam_model_type} checkpoint such as {name} "
        f"(matching sam_model_type={cfg.sam_model_type!r})"
    )
    problems = [
        _missing_module("segment_anything"),
        _missing_file(cfg.sam_checkpoint, "sam_checkpoint", what),
    ]
    return [p for p in problems if p]


def _dino_problems(cfg: PriorConfig) -> list[str]:
    """Why a GroundingDINO detector cannot be built from ``cfg`` (empty when it can)."""
    problems = [
        _missing_module("groundingdino"),
        _missing_file(
            cfg.groundingdino_checkpoint,
            "groundingdino_checkpoint",
            "a GroundingDINO checkpoint such as groundingdino_swint_ogc.pth",
        ),
        _missing_file(
            cfg.groundingdino_config,
            "groundingdino_config",
            "the matching model config such as GroundingDINO_SwinT_OGC.py",
        ),
        _missing_text_encoder(cfg.text_encoder_dir),
    ]
    return [p for p in problems if p]


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """Forbid Hugging Face downloads while loading (restores the environment after)."""
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    saved = {key: os.environ.get(key) for key in keys}
    os.environ.update({key: "1" for key in keys})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _build_sam_predictor(cfg: PriorConfig) -> SamPredictorLike:
    """``SamPredictor`` around ``sam_model_registry[type](checkpoint=...)`` on the device."""
    from segment_anything import SamPredictor, sam_model_registry

    from engine.device import resolve_device

    if cfg.sam_model_type not in sam_model_registry:
        raise ValueError(
            f"unknown sam_model_type {cfg.sam_model_type!r}; "
            f"expected one of {', '.join(sorted(sam_model_registry))}"
        )
    model = sam_model_registry[cfg.sam_model_type](checkpoint=cfg.sam_checkpoint)
    model.to(resolve_device(cfg.device)).eval()
    return SamPredictor(model)


def _load_groundingdino(cfg: PriorConfig, device: str) -> Any:
    """GroundingDINO from local files, with the text encoder read from ``text_encoder_dir``.

    Same steps as ``groundingdino.util.inference.load_model`` (config -> ``build_model`` ->
    checkpoint ``["model"]``), except that the config's ``text_encoder_type`` (normally the
    hub name ``bert-base-uncased``) is replaced by the local directory, which
    GroundingDINO's ``get_tokenlizer`` / ``get_pretrained_language_model`` accept, and the
    Hugging Face hub is switched offline while loading: nothing is downloaded.
    """
    import torch
    from groundingdino.models import build_model
    from groundingdino.util.misc import clean_state_dict
    from groundingdino.util.slconfig import SLConfig

    # both files were checked by _dino_problems before the detector was built
    assert cfg.groundingdino_config is not None and cfg.groundingdino_checkpoint is not None
    args = SLConfig.fromfile(cfg.groundingdino_config)
    args.device = device
    args.text_encoder_type = str(cfg.text_encoder_dir)
    with _hub_offline():
        model = build_model(args)
    checkpoint = torch.load(cfg.groundingdino_checkpoint, map_location="cpu")
    model.load_state_dict(clean_state_dict(checkpoint["model"]), strict=False)
    return model.to(device).eval()


def _dino_tensor(image: np.ndarray) -> Any:
    """GroundingDINO's input: short side 800 (long side <= 1333), ImageNet-normalised CHW."""
    import torch

    height, width = image.shape[:2]
    scale = min(_DINO_SHORT_SIDE / min(height, width), _DINO_MAX_SIDE / max(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR).astype(np.float32)
    normed = (resized / 255.0 - _IMAGENET_MEAN) / _IMAGENET_STD
    return torch.from_numpy(np.ascontiguousarray(normed.transpose(2, 0, 1)))


class _GroundingDinoDetector:
    """Box detector: ``(image, prompt) -> [xyxy pixel boxes]`` via GroundingDINO's ``predict``."""

    def __init__(self, cfg: PriorConfig) -> None:
        from engine.device import resolve_device

        self.cfg = cfg
        self.device = str(resolve_device(cfg.device))
        self.model = _load_groundingdino(cfg, self.device)

    def __call__(self, image: np.ndarray, prompt: str) -> list[Box]:
        from groundingdino.util.inference import predict

        kwargs: dict[str, Any] = {}
        if "device" in inspect.signature(predict).parameters:  # older releases force CUDA
            kwargs["device"] = self.device
        boxes, _, _ = predict(
            model=self.model,
            image=_dino_tensor(image),
            caption=prompt,
            box_threshold=self.cfg.box_threshold,
            text_threshold=self.cfg.text_threshold,
            **kwargs,
        )
        return _cxcywh_to_xyxy(np.asarray(boxes, dtype=np.float32), image.shape[:2])


def _cxcywh_to_xyxy(boxes: np.ndarray, shape: tuple[int, int]) -> list[Box]:
    """Normalised ``(cx, cy, w, h)`` rows to pixel ``(x0, y0, x1, y1)`` tuples."""
    height, width = shape
    out = []
    for cx, cy, w, h in boxes.reshape(-1, 4):
        out.append(
            (
                float((cx - w / 2) * width),
                float((cy - h / 2) * height),
                float((cx + w / 2) * width),
                float((cy + h / 2) * height),
            )
        )
    return out


def _clip_box(box: Sequence[float], shape: tuple[int, int]) -> np.ndarray:
    """An ``xyxy`` box clipped to the image, as a float32 array."""
    height, width = shape
    x0, y0, x1, y1 = (float(v) for v in box)
    return np.array(
        [
            np.clip(x0, 0, width),
            np.clip(y0, 0, height),
            np.clip(x1, 0, width),
            np.clip(y1, 0, height),
        ],
        dtype=np.float32,
    )


class GroundedSamPrior:
    """The paper's prior: text prompt -> GroundingDINO boxes -> one SAM mask per box (union).

    Components are built from local files named in the config (``sam_checkpoint``,
    ``groundingdino_checkpoint``, ``groundingdino_config``, ``text_encoder_dir``; see
    :class:`PriorConfig`), or injected (tests, other detectors): ``box_detector(image,
    prompt) -> [(x0, y0, x1, y1), ...]`` in pixels, and ``sam_predictor`` with
    ``segment_anything.SamPredictor``'s ``set_image`` / ``predict(box=, multimask_output=)``.

    When the detector finds no box the whole image is object: a prior that hides the
    object would hide its defects, while a whole-image prior only loses the background
    suppression. ``last_boxes`` keeps the boxes of the latest ``predict`` for debugging.

    Raises (at construction):
        ValueError: no ``prompt``.
        PriorUnavailableError: a package or a checkpoint file is missing; the message lists
            every missing item and the install command.
    """

    def __init__(
        self,
        cfg: PriorConfig,
        *,
        box_detector: BoxDetector | None = None,
        sam_predictor: SamPredictorLike | None = None,
    ) -> None:
        prompt = (cfg.prompt or "").strip()
        if not prompt:
            raise ValueError(
                "grounded-sam prior needs a text prompt naming the object, "
                "e.g. PriorConfig(prompt='bottle')"
            )
        problems = [] if sam_predictor is not None else _sam_problems(cfg)
        problems += [] if box_detector is not None else _dino_problems(cfg)
        if problems:
            raise PriorUnavailableError(
                "grounded-sam prior is unavailable:\n  - " + "\n  - ".join(problems)
            )
        self.cfg = cfg
        self.prompt = prompt
        self.sam_predictor = sam_predictor or _build_sam_predictor(cfg)
        self.box_detector = box_detector or _GroundingDinoDetector(cfg)
        self.last_boxes: list[Box] = []

    def fit(self, normals: Sequence[np.ndarray]) -> None:
        """Nothing to learn: the prior is zero-shot."""

    def predict(self, image: np.ndarray) -> np.ndarray:
        """Union of the SAM masks of the prompt's boxes; the whole image when none."""
        rgb = np.ascontiguousarray(_as_rgb_float(image).clip(0, 255).astype(np.uint8))
        shape = rgb.shape[:2]
        self.last_boxes = [
            (float(x0), float(y0), float(x1), float(y1))
            for x0, y0, x1, y1 in self.box_detector(rgb, self.prompt)
        ]
        if not self.last_boxes:
            return np.ones(shape, dtype=bool)
        self.sam_predictor.set_image(rgb)
        mask = np.zeros(shape, dtype=bool)
        for box in self.last_boxes:
            masks, _, _ = self.sam_predictor.predict(
                box=_clip_box(box, shape), multimask_output=False
            )
            mask |= np.asarray(masks, dtype=bool).reshape(-1, *shape).any(axis=0)
        return mask
