"""Training of the PRN refinement (:class:`engine.refine.ResidualRefiner`) on a fitted
detector: generated anomalies on its normals, plus confirmed real defects when given.

1. The normals are split: a few are held out to calibrate the refined image score, the
   others carry the generated anomalies (:func:`engine.pseudo_anomalies.make_anomaly`;
   :attr:`RefineConfig.normal_share` of them stay untouched as negatives). Each confirmed
   real defect (image and mask) joins :attr:`RefineConfig.real_repeats` times, flipped.
2. The frozen backbone runs once over every training image; each image's residuals, content
   cells, patch-distance grid and target (the share of each cell the mask covers) are cached.
3. The segmenter is trained on the cache with PRN's losses (focal + smooth-L1), on random
   windows of :attr:`RefineConfig.max_window_cells` cells (the largest attention window;
   smaller grids padded with cells outside the content), so images of any size batch.
4. The held-out normals are scored by the refined detector; the threshold is taken at the
   configured false-alarm rate, as for the PatchCore detector.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace

import cv2
import numpy as np
import torch

from engine.calibration import even_sample, threshold_at
from engine.config import ProtoAtlasConfig, RefineConfig
from engine.detector import PatchCoreDetector
from engine.preprocess import Geometry
from engine.pseudo_anomalies import RealDefect, as_rgb, make_anomaly
from engine.refine import RefinerInputs, ResidualRefiner, stack
from engine.residual_net import focal_loss, smooth_l1_loss

#: Fewest normals needed: some carry anomalies, some calibrate.
MIN_NORMALS = 2
ProgressFn = Callable[[str, float], None]


def _no_progress(stage: str, fraction: float) -> None:
    """Reports nothing."""


@dataclass
class RefineReport:
    """What one refinement run did."""

    n_samples: int
    n_real: int
    n_calibration: int
    kinds: dict[str, int]
    epochs: int
    final_loss: float
    threshold: float
    feature_seconds: float
    train_seconds: float
    calibrate_seconds: float
    #: ``fused`` maps: distance * (1 + fuse_weight * probability).
    fuse_weight: float = 1.0

    def as_dict(self) -> dict[str, object]:
        return {k: (dict(v) if isinstance(v, dict) else v) for k, v in self.__dict__.items()}


@dataclass
class _Cached:
    inputs: RefinerInputs
    target: torch.Tensor  # (1, h, w) float, share of each cell inside the mask
    shape: tuple[int, int]


def mask_to_grid(mask: np.ndarray, geometry: Geometry, stride: int, offset: float) -> np.ndarray:
    """(h, w) float32 share of each cell (of ``stride``, cell 0 centred at input pixel
    ``offset``) covered by the (H, W) bool ``mask`` of the original image."""
    top, left, bottom, right = geometry.box
    content = cv2.resize(
        np.asarray(mask, np.float32), (right - left, bottom - top), interpolation=cv2.INTER_AREA
    )
    canvas = np.zeros(geometry.input_hw, np.float32)
    canvas[top:bottom, left:right] = content
    box = cv2.blur(canvas, (stride, stride), borderType=cv2.BORDER_CONSTANT)
    # cv2.blur's window at pixel p spans [p - stride // 2, p + (stride - 1) // 2]: for an
    # even side its centre is half a pixel before p
    shift = stride // 2 - (stride - 1) / 2.0
    rows, cols = geometry.grid_shape(stride)
    matrix = np.array([[stride, 0.0, offset + shift], [0.0, stride, offset + shift]])
    return cv2.warpAffine(
        box,
        matrix,
        (cols, rows),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
    ).astype(np.float32)


def _flip(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator):
    if rng.random() < 0.5:
        image, mask = image[:, ::-1], mask[:, ::-1]
    if rng.random() < 0.5:
        image, mask = image[::-1], mask[::-1]
    return np.ascontiguousarray(image), np.ascontiguousarray(mask)


def _training_images(
    normals: Sequence[np.ndarray],
    pool: Sequence[int],
    defects: Sequence[RealDefect],
    config: ProtoAtlasConfig,
    rng: np.random.Generator,
    made: list[tuple[np.ndarray, int]],
    kinds: dict[str, int],
) -> Iterator[np.ndarray]:
    """Yield the training images; ``made`` gets each one's (mask, normal index or -1) and
    ``kinds`` the count per generator as they are made."""
    rcfg = config.refine
    order = rng.permutation(np.asarray(pool))
    for j in range(rcfg.n_samples):
        index = int(order[j % len(order)])
        image = as_rgb(normals[index])
        if rng.random() < rcfg.normal_share:
            made.append((np.zeros(image.shape[:2], bool), index))
            kinds["normal"] = kinds.get("normal", 0) + 1
            yield image
            continue
        new, mask, kind = make_anomaly(image, rng, rcfg, defects)
        kinds[kind] = kinds.get(kind, 0) + 1
        made.append((mask, index))
        yield new
    for defect in defects:
        for _ in range(rcfg.real_repeats):
            image, mask = _flip(as_rgb(defect.image), np.asarray(defect.mask, bool), rng)
            kinds["real"] = kinds.get("real", 0) + 1
            made.append((mask, -1))
            yield image


def _cache(
    det: PatchCoreDetector,
    refiner: ResidualRefiner,
    images: Iterator[np.ndarray],
    made: Sequence[tuple[np.ndarray | None, int]],
    origins: Sequence[int],
    n: int,
    on_progress: ProgressFn,
    stage: str = "features",
) -> list[_Cached]:
    """Run the backbone once over ``images`` and keep the segmenter's inputs and targets.

    ``made[j]`` is image j's (mask, normal index); a mask of None is all normal. A normal
    the detector was fitted on (``origins[index] >= 0``) is measured against the bank
    without its own patches, as an unseen image would be.
    """
    assert det.prototypes is not None
    stride, offset = det.finest
    out: list[_Cached] = []
    for batch in det.iter_patches(images):
        for i in range(len(batch)):
            mask, index = made[len(out)]
            valid = batch.valid[i]
            exclude = int(origins[index]) if index >= 0 else -1
            dist = det.patch_distances(batch.content(i), exclude=exclude)
            grid = np.full(valid.shape, float(dist.min()), np.float32)
            grid[valid] = dist
            assert batch.stage_valid is not None
            inputs = refiner.inputs(det.prototypes, batch.stage_maps[i], batch.stage_valid[i], grid)
            inputs.residuals = [r.half() for r in inputs.residuals]
            target = (
                np.zeros(valid.shape, np.float32)
                if mask is None
                else mask_to_grid(mask, batch.geometries[i], stride, offset)
            )
            out.append(_Cached(inputs, torch.from_numpy(target)[None], valid.shape))
        on_progress(stage, len(out) / max(n, 1))
    return out


def _residual_scales(cache: list[_Cached]) -> torch.Tensor:
    """Per stage, the median residual norm over the content cells of the cached images."""
    scales = []
    for k in range(len(cache[0].inputs.residuals)):
        norms = [
            x.inputs.residuals[k].float().norm(dim=0)[x.inputs.valid[k]]
            for x in cache[:: max(1, len(cache) // 64)]
        ]
        scales.append(float(torch.cat(norms).median()) if norms else 1.0)
    return torch.tensor(scales, dtype=torch.float32)


def _batches(n: int, size: int, rng: np.random.Generator) -> list[list[int]]:
    """Shuffled batches of ``size`` cached images."""
    order = rng.permutation(n)
    return [order[s : s + size].tolist() for s in range(0, n, size)]


def crop_window(
    item: _Cached, side: int, ratios: Sequence[int], rng: np.random.Generator
) -> tuple[RefinerInputs, torch.Tensor]:
    """A random window of ``side`` x ``side`` finest cells of a cached image (its inputs
    and target), padded with cells outside the content where the grid is smaller.

    ``ratios[k]`` is stage k's stride over the finest one; the window starts on a multiple
    of the largest, so every stage's cells line up with the finest ones as in the image.
    """
    step = max(ratios)
    h, w = item.shape
    top = int(rng.integers(0, max(0, h - side) // step + 1)) * step
    left = int(rng.integers(0, max(0, w - side) // step + 1)) * step

    def cut(x: torch.Tensor, ratio: int, fill: float | bool) -> torch.Tensor:
        n = side // ratio
        t, lf = top // ratio, left // ratio
        part = x[..., t : t + n, lf : lf + n]
        pad_h, pad_w = n - part.shape[-2], n - part.shape[-1]
        if pad_h or pad_w:
            shape = (*part.shape[:-2], n, n)
            out = torch.full(shape, fill, dtype=part.dtype)
            out[..., : part.shape[-2], : part.shape[-1]] = part
            return out
        return part

    inputs = item.inputs
    cropped = RefinerInputs(
        [cut(r, q, 0.0) for r, q in zip(inputs.residuals, ratios)],
        [cut(v, q, False) for v, q in zip(inputs.valid, ratios)],
        cut(inputs.distance, 1, 0.0),
    )
    return cropped, cut(item.target, 1, 0.0)


def training_targets(
    share: torch.Tensor, valid: torch.Tensor, config: RefineConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """(target, weight) of the losses from the (B, 1, h, w) mask share of each cell and the
    (B, 1, h, w) bool content cells: hard targets at :attr:`RefineConfig.target_min_share`
    (soft shares when None), weight 0 outside the content and 1 + positive_weight on the
    defect cells."""
    if config.target_min_share is None:
        target = share
    else:
        target = (share >= config.target_min_share).to(share.dtype)
    weight = valid.to(share.dtype) * (1.0 + config.positive_weight * (target > 0).to(share.dtype))
    return target, weight


def _image_score(refiner: ResidualRefiner, item: _Cached) -> float:
    """The refined image score (peak probability over the content) of a cached image."""
    prob = refiner.probability([item.inputs])[0]
    return float(prob[item.inputs.valid[0].numpy()].max())


def fit_refiner(
    det: PatchCoreDetector,
    normals: Sequence[np.ndarray],
    defects: Sequence[RealDefect] = (),
    *,
    origins: Sequence[int] | None = None,
    config: RefineConfig | None = None,
    on_progress: ProgressFn = _no_progress,
) -> RefineReport:
    """Train a residual segmenter on ``det`` (fitted) and install it (:meth:`set_refiner`).

    ``normals``: known-good images (any sequence that loads lazily); ``origins[i]``: the
    index of ``normals[i]`` among the images the detector was fitted on, -1 for one it was
    not (default: ``normals`` are those images, in order). ``defects``: confirmed real
    defects with their masks (may be empty: generated anomalies only). A detector that
    already has a refiner is refined afresh from its PatchCore state. ``config``: the
    refinement settings (default: those of the detector's config).
    """
    cfg = det.config if config is None else replace(det.config, refine=config)
    rcfg = cfg.refine
    det._require_fitted()
    if det.prototypes is None or det.threshold is None or det.calibration_scores is None:
        raise RuntimeError("detector is not fitted: call fit() or load() first")
    if len(normals) < MIN_NORMALS:
        raise ValueError(f"refinement needs at least {MIN_NORMALS} normal images")
    det.remove_refiner()
    origins = list(range(len(normals))) if origins is None else [int(o) for o in origins]
    if len(origins) != len(normals):
        raise ValueError(f"{len(origins)} origins for {len(normals)} normal images")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    n = len(normals)
    n_cal = int(min(rcfg.calibration_normals, max(1, n // 4)))
    held = set(int(i) for i in even_sample(n, n_cal))
    pool = [i for i in range(n) if i not in held]
    channels = [int(c.shape[1]) for c in det.prototypes.centroids]
    refiner = ResidualRefiner.new(
        channels,
        det.extractor.strides,
        det.extractor.offsets,
        rcfg,
        distance_scale=float(det.threshold),
        base_threshold=float(det.threshold),
        base_calibration=det.calibration_scores,
    )
    made: list[tuple[np.ndarray, int]] = []
    kinds: dict[str, int] = {}
    t0 = time.perf_counter()
    n_total = rcfg.n_samples + len(defects) * rcfg.real_repeats
    images = _training_images(normals, pool, defects, cfg, rng, made, kinds)
    cache = _cache(det, refiner, images, made, origins, n_total, on_progress)
    t1 = time.perf_counter()
    net = refiner.net
    net.scales.copy_(_residual_scales(cache))
    net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=rcfg.lr, weight_decay=rcfg.weight_decay)
    per_epoch = len(_batches(len(cache), rcfg.batch_size, rng))
    steps = max(1, rcfg.epochs * per_epoch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=rcfg.lr, total_steps=steps)
    strides = det.extractor.strides
    ratios = [max(1, int(s) // int(min(strides))) for s in strides]
    side = int(np.ceil(rcfg.max_window_cells / max(ratios))) * max(ratios)
    final, step = float("nan"), 0
    for epoch in range(rcfg.epochs):
        losses = []
        for idx in _batches(len(cache), rcfg.batch_size, rng):
            if step >= steps:
                break
            crops = [crop_window(cache[i], side, ratios, rng) for i in idx]
            residuals, valid, distance = stack([c[0] for c in crops])
            target, weight = training_targets(
                torch.stack([c[1] for c in crops]), valid[0][:, None], rcfg
            )
            logits = net(residuals, valid, distance)
            loss = focal_loss(logits, target, weight, rcfg.focal_gamma)
            loss = loss + rcfg.smooth_l1_weight * smooth_l1_loss(logits, target, weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            losses.append(float(loss.detach()))
        final = float(np.mean(losses)) if losses else final
        on_progress("train", (epoch + 1) / max(rcfg.epochs, 1))
    net.eval()
    del cache
    t2 = time.perf_counter()
    held_index = sorted(held)
    calib_made: list[tuple[np.ndarray | None, int]] = [(None, i) for i in held_index]
    calib = _cache(
        det,
        refiner,
        (as_rgb(normals[i]) for i in held_index),
        calib_made,
        origins,
        len(held_index),
        on_progress,
        stage="calibrate",
    )
    scores = np.array([_image_score(refiner, c) for c in calib], np.float32)
    refiner.refined_calibration = scores
    refiner.refined_threshold = threshold_at(scores, cfg.detector.false_alarm_rate)
    det.set_refiner(refiner, refiner.base_threshold, refiner.base_calibration)
    det.set_refiner_mode(refiner.combine, refiner.image_score)
    threshold = float(det.threshold)
    t3 = time.perf_counter()
    on_progress("calibrate", 1.0)
    report = RefineReport(
        n_samples=rcfg.n_samples,
        n_real=len(defects),
        n_calibration=len(held_index),
        kinds=kinds,
        epochs=rcfg.epochs,
        final_loss=final,
        threshold=threshold,
        feature_seconds=t1 - t0,
        train_seconds=t2 - t1,
        calibrate_seconds=t3 - t2,
        fuse_weight=float(rcfg.fuse_weight),
    )
    refiner.report = report.as_dict()
    return report
