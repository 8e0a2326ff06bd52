"""Derived test sets made on the fly from an MVTec-layout folder (never stored in the repo).

``gray_aspect``: every image turned grayscale, cropped to a random aspect ratio (the crop
always contains the whole defect mask) and rescaled by a random factor, so the set has many
sizes and aspect ratios, like real line-scan or tile data. Used to choose between letterbox
and squash resizing without tuning on square colour images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

ASPECT_RANGE = (0.5, 1.0)  # kept fraction of one side
SCALE_RANGE = (0.6, 1.4)


def _crop_box(
    rng: np.random.Generator, h: int, w: int, mask: np.ndarray | None
) -> tuple[int, int, int, int]:
    keep = rng.uniform(*ASPECT_RANGE)
    along_width = rng.random() < 0.5
    size = int(round((w if along_width else h) * keep))
    full = w if along_width else h
    lo_need, hi_need = 0, full
    if mask is not None and mask.any():
        axis = mask.any(axis=0) if along_width else mask.any(axis=1)
        idx = np.flatnonzero(axis)
        lo_need, hi_need = int(idx[0]), int(idx[-1]) + 1
        size = max(size, hi_need - lo_need)
    start_min = max(0, hi_need - size)
    start_max = min(lo_need, full - size)
    start = int(rng.integers(start_min, max(start_min, start_max) + 1))
    if along_width:
        return 0, start, h, start + size
    return start, 0, start + size, w


def make_gray_aspect(src: Path, dst: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for image_path in sorted(src.glob("t*/*/*.png")):  # train/good and test/<type>
        rel = image_path.relative_to(src)
        defect = rel.parts[1]
        mask_path = src / "ground_truth" / defect / f"{image_path.stem}_mask.png"
        image = Image.open(image_path).convert("L")
        mask = np.asarray(Image.open(mask_path)) > 0 if mask_path.is_file() else None
        top, left, bottom, right = _crop_box(rng, image.height, image.width, mask)
        scale = rng.uniform(*SCALE_RANGE)
        new_size = (max(8, round((right - left) * scale)), max(8, round((bottom - top) * scale)))
        out = dst / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        image.crop((left, top, right, bottom)).resize(new_size, Image.BILINEAR).save(out)
        if mask is not None:
            m = Image.fromarray(mask.astype(np.uint8) * 255).crop((left, top, right, bottom))
            mout = dst / "ground_truth" / defect / f"{image_path.stem}_mask.png"
            mout.parent.mkdir(parents=True, exist_ok=True)
            m.resize(new_size, Image.NEAREST).save(mout)
    return dst
