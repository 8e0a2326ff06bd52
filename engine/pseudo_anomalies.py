"""Training anomalies for the residual segmenter (PRN's anomaly generation).

* **Seen appearance**: :func:`paste_defect` cuts a confirmed real defect out of its image
  (by its mask) and pastes it, scaled, rotated, flipped and blended, onto a normal image.
* **Unseen appearance**: :func:`engine.synth.perlin_anomaly` (a Perlin-noise region filled
  with a foreign texture, DRAEM-style) and :func:`engine.synth.cutpaste`.
* **The project's generator**: :func:`engine.synth.add_defect`'s painters (scratches,
  cracks, spots, missing material, folds) on the whole image.

:func:`make_anomaly` draws one of them by the configured odds. Every generator returns the
new image and the bool mask of the pixels it changed; outside the mask (dilated by the
paste's feathered edge) the image is unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from engine.config import RefineConfig
from engine.synth import DEFECT_TYPES, add_defect, cutpaste, kind_config, perlin_anomaly

#: The generators :func:`make_anomaly` draws from, in the order of
#: :attr:`RefineConfig.kind_weights`.
GENERATORS: tuple[str, ...] = ("perlin", "cutpaste", "painted", "paste")
#: Fewest mask pixels a real defect needs to be pasted.
MIN_DEFECT_PIXELS = 4
#: A pasted defect's blend weight at or above which its pixel is in the output mask
#: (as a share of the blend weight): the feathered rim below it is not "defect".
MASK_ALPHA_SHARE = 0.5


@dataclass
class RealDefect:
    """A confirmed real defect: its (H, W, 3) uint8 image and (H, W) bool mask."""

    image: np.ndarray
    mask: np.ndarray


def as_rgb(image: np.ndarray) -> np.ndarray:
    """``image`` as a contiguous (H, W, 3) uint8 array (grey replicated)."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) or (H, W) image, got shape {arr.shape}")
    return np.ascontiguousarray(arr.astype(np.uint8))


def paste_defect(
    image: np.ndarray,
    defect: RealDefect,
    rng: np.random.Generator,
    config: RefineConfig | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Paste ``defect`` onto ``image``: cut by its mask, scaled, rotated, flipped, blended.

    The defect's size is kept relative to the shorter image side (a defect from a larger
    image stays the same share of the product). Returns (new image, bool mask of the pasted
    defect); pixels farther than the feather from the mask are unchanged.
    """
    cfg = config or RefineConfig()
    image = as_rgb(image)
    src, mask = as_rgb(defect.image), np.asarray(defect.mask, bool)
    if mask.shape != src.shape[:2]:
        raise ValueError(f"defect mask {mask.shape} does not match its image {src.shape[:2]}")
    if mask.sum() < MIN_DEFECT_PIXELS:
        raise ValueError(f"a defect to paste needs at least {MIN_DEFECT_PIXELS} mask pixels")
    ys, xs = np.nonzero(mask)
    pad = int(math.ceil(2 * cfg.paste_feather_px)) + 1
    y0, y1 = max(0, ys.min() - pad), min(src.shape[0], ys.max() + 1 + pad)
    x0, x1 = max(0, xs.min() - pad), min(src.shape[1], xs.max() + 1 + pad)
    patch: np.ndarray = src[y0:y1, x0:x1].astype(np.float32)
    alpha: np.ndarray = mask[y0:y1, x0:x1].astype(np.float32)
    if cfg.paste_feather_px > 0:
        alpha = cv2.GaussianBlur(alpha, (0, 0), cfg.paste_feather_px)
    # scale relative to the shorter side, then rotate about the patch centre
    rel = min(image.shape[:2]) / min(src.shape[:2])
    scale = rel * float(rng.uniform(*cfg.paste_scale))
    angle = float(rng.uniform(*cfg.paste_rotation_deg))
    ph, pw = alpha.shape
    rad = math.radians(angle)
    side_h = int(math.ceil((abs(ph * math.cos(rad)) + abs(pw * math.sin(rad))) * scale)) + 1
    side_w = int(math.ceil((abs(pw * math.cos(rad)) + abs(ph * math.sin(rad))) * scale)) + 1
    limit = max(1, min(image.shape[:2]) - 1)
    if max(side_h, side_w) > limit:  # never larger than the target image
        shrink = limit / max(side_h, side_w)
        scale *= shrink
        side_h, side_w = max(1, int(side_h * shrink)), max(1, int(side_w * shrink))
    rot = cv2.getRotationMatrix2D((pw / 2.0, ph / 2.0), angle, scale)
    rot[:, 2] += (side_w / 2.0 - pw / 2.0, side_h / 2.0 - ph / 2.0)
    patch = cv2.warpAffine(patch, rot, (side_w, side_h), flags=cv2.INTER_LINEAR)
    alpha = cv2.warpAffine(alpha, rot, (side_w, side_h), flags=cv2.INTER_LINEAR)
    if rng.random() < 0.5:
        patch, alpha = patch[:, ::-1], alpha[:, ::-1]
    if rng.random() < 0.5:
        patch, alpha = patch[::-1], alpha[::-1]
    beta = float(rng.uniform(*cfg.paste_blend))
    alpha = np.clip(alpha, 0.0, 1.0) * beta
    h, w = image.shape[:2]
    ty = int(rng.integers(0, max(1, h - side_h + 1)))
    tx = int(rng.integers(0, max(1, w - side_w + 1)))
    region = (slice(ty, ty + side_h), slice(tx, tx + side_w))
    a = alpha[: h - ty, : w - tx]
    p = patch[: h - ty, : w - tx]
    out = image.astype(np.float32)
    base = out[region]
    out[region] = base * (1.0 - a[..., None]) + p * a[..., None]
    new = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    full = np.zeros((h, w), bool)
    full[region] = a >= MASK_ALPHA_SHARE * beta
    if not full.any():  # a tiny defect shrunk below one pixel: its strongest pixel
        peak = np.unravel_index(int(np.argmax(a)), a.shape)
        full[ty + peak[0], tx + peak[1]] = True
    return new, full


def painted_defect(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One of the project's painted defects (:data:`engine.synth.DEFECT_TYPES`) anywhere on
    ``image`` (the whole image is the support)."""
    image = as_rgb(image)
    h, w = image.shape[:2]
    cfg = kind_config("texture", size=(h, w))
    kind = DEFECT_TYPES[int(rng.integers(len(DEFECT_TYPES)))]
    return add_defect(image, kind, rng, cfg, object_mask=np.ones((h, w), bool))


def make_anomaly(
    image: np.ndarray,
    rng: np.random.Generator,
    config: RefineConfig | None = None,
    defects: Sequence[RealDefect] = (),
) -> tuple[np.ndarray, np.ndarray, str]:
    """One generated anomaly on ``image``: (new image, bool mask, generator name).

    The generator is drawn by :attr:`RefineConfig.kind_weights`; ``paste`` only when
    ``defects`` are given. A painter that cannot place its defect falls back to Perlin.
    """
    cfg = config or RefineConfig()
    image = as_rgb(image)
    weights = np.asarray(cfg.kind_weights, np.float64)
    if len(weights) != len(GENERATORS) or (weights < 0).any():
        raise ValueError(
            f"RefineConfig.kind_weights needs {len(GENERATORS)} non-negative odds "
            f"({', '.join(GENERATORS)}), got {cfg.kind_weights}"
        )
    if not defects:
        weights[GENERATORS.index("paste")] = 0.0
    if weights.sum() <= 0:
        raise ValueError("RefineConfig.kind_weights gives no generator a chance")
    kind = GENERATORS[int(rng.choice(len(GENERATORS), p=weights / weights.sum()))]
    if kind == "paste":
        defect = defects[int(rng.integers(len(defects)))]
        new, mask = paste_defect(image, defect, rng, cfg)
    elif kind == "cutpaste":
        new, mask = cutpaste(image, rng)
    elif kind == "painted":
        try:
            new, mask = painted_defect(image, rng)
        except RuntimeError:
            kind = "perlin"
            new, mask = perlin_anomaly(image, rng)
    else:
        new, mask = perlin_anomaly(image, rng)
    return new, mask, kind
