"""PatchCore-style anomaly detector with PRN-style residual prototypes.

Fit: locally aware patch features of the normal images -> greedy coreset memory bank ->
exact FAISS k-NN index; k-means prototypes per stage (PRN); a threshold calibrated on normal
images held out of the bank. Score: each patch's distance to its nearest bank entry gives the
patch map; the image score is the patch maximum times PatchCore's re-weighting; the map is
upsampled to the input, Gaussian-smoothed and resized back to the original image.

Torch model (backbone, feature aggregation) and this fitting/scoring wrapper are kept apart,
in the style of anomalib; sub-steps live in ``sampler.py``, ``knn.py``, ``patch_features.py``
and ``prototypes.py`` (PatchCore's split).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

import numpy as np
import torch
from scipy.ndimage import gaussian_filter
from tqdm import tqdm

from engine.backbone import FeatureExtractor
from engine.calibration import assign_folds, even_sample, pick_calibration, threshold_at
from engine.config import CalibrationBank, ProtoAtlasConfig
from engine.device import resolve_device
from engine.feature_grid import ImageFeatures, iter_image_features
from engine.knn import NearestNeighbours
from engine.patch_features import aggregate
from engine.preprocess import Geometry, grid_to_image, intensity_range, mixed_framing, restore_map
from engine.prototypes import ResidualPrototypes
from engine.refine import RefinerInputs, ResidualRefiner
from engine.sampler import coreset_size, greedy_coreset

#: Version of the saved-model format; bumped whenever the arrays or JSON change meaning.
MODEL_FORMAT_VERSION = 1
MODEL_KIND = "protoatlas-patchcore"
#: The normals' grey-level stretch (``contrast="normals"``) and framing
#: (``context="auto"``) are judged on an even sample of at most this many of them.
INTENSITY_SAMPLE_IMAGES = 64
#: Added to the standard deviation of a map before standardising it (flat maps).
WEIGHT_EPS = 1e-6
#: Random patch features per image and stage the k-means prototypes are fitted on.
PROTOTYPE_SAMPLES_PER_IMAGE = 64
#: Neighbours searched to find the nearest bank entry from another image
#: (:meth:`PatchCoreDetector.patch_distances`).
EXCLUDE_NEIGHBOURS = 32


class ModelFormatError(ValueError):
    """A saved model cannot be loaded (wrong kind, wrong version, missing arrays)."""


@dataclass
class PatchBatch:
    """Patch features of a batch of images, each on its own finest feature grid."""

    features: list[torch.Tensor]  # per image (D, h, w)
    stage_maps: list[list[torch.Tensor]]  # per image, per stage (C_k, h_k, w_k), averaged
    geometries: list[Geometry]
    valid: list[np.ndarray]  # per image (h, w) bool: patch centre inside the image content
    pooled: torch.Tensor | None  # (B, P) global features when requested
    #: per image, per stage (h_k, w_k) bool content cells
    stage_valid: list[list[np.ndarray]] | None = None

    def __len__(self) -> int:
        return len(self.features)

    def flat(self, i: int) -> np.ndarray:
        """(h * w, D) float32 patch features of image ``i`` (row-major cells)."""
        f = self.features[i]
        return f.permute(1, 2, 0).reshape(-1, f.shape[0]).cpu().numpy()

    def content(self, i: int) -> np.ndarray:
        """(n_valid, D) float32 features of image ``i``'s content cells."""
        return self.flat(i)[self.valid[i].reshape(-1)]


@dataclass
class ImageDetection:
    """Detection output for one image."""

    score: float
    anomaly_map: np.ndarray  # (H, W) float32 at the original image size
    patch_scores: np.ndarray  # (h, w) float32 on the feature grid (NaN outside the image)
    #: (D,) mean patch feature over the image content: a global descriptor used to pick the
    #: closest reference normals.
    descriptor: np.ndarray
    #: (P,) the backbone's pooled global feature (pre-logits), when scored with ``context``.
    pooled: np.ndarray | None = None
    #: (R,) anomaly-weighted residual descriptor (:func:`weighted_residual` of the residuals
    #: against the prototypes), when scored with ``context``.
    residual: np.ndarray | None = None


@dataclass
class FitReport:
    n_fit_images: int
    #: Normal images scored as unseen (against the bank without their fold) to calibrate.
    n_calibration_images: int
    n_patches: int
    bank_size: int
    threshold: float
    calibration_scores: np.ndarray
    n_folds: int = 1


class PatchCoreDetector:
    """Fit on normal images, then score new images; save/load as arrays + JSON."""

    def __init__(
        self,
        config: ProtoAtlasConfig | None = None,
        device: torch.device | None = None,
        extractor: FeatureExtractor | None = None,
    ) -> None:
        self.config = config or ProtoAtlasConfig()
        self.device = device or resolve_device(self.config.device)
        self.extractor = extractor or FeatureExtractor(self.config.backbone, self.device)
        self.knn: NearestNeighbours | None = None
        self.prototypes: ResidualPrototypes | None = None
        self.threshold: float | None = None
        self.calibration_scores: np.ndarray | None = None
        #: Grey-level stretch fitted on the normals (``contrast == "normals"``), else None.
        self.intensity: tuple[float, float] | None = None
        #: Mirrored context (px) around every input, decided on the normals
        #: (``BackboneConfig.context``).
        self.context_pad: int = 0
        #: PRN refinement (:mod:`engine.refine`): when set, maps (and, in ``refined``
        #: image-score mode, scores and threshold) come from its residual segmenter.
        self.refiner: ResidualRefiner | None = None
        #: (bank size,) int32: the index (in the fitted normals) each bank entry comes from;
        #: None for models saved before it was kept.
        self.bank_origin: np.ndarray | None = None

    def _neighbours(self, bank: np.ndarray) -> NearestNeighbours:
        """Exact k-NN over ``bank``, on the GPU when the detector runs on CUDA."""
        return NearestNeighbours(bank, use_gpu=self.device.type == "cuda")

    # ------------------------------------------------------------------ features
    @property
    def finest(self) -> tuple[int, float]:
        """(stride, offset) of the patch grid (the finest selected stage)."""
        i = int(np.argmin(self.extractor.strides))
        return self.extractor.strides[i], self.extractor.offsets[i]

    def iter_patches(
        self,
        images: Iterable[np.ndarray],
        *,
        pooled: bool = False,
        progress: bool = False,
        desc: str = "features",
        total: int | None = None,
    ) -> Iterator[PatchBatch]:
        """Yield :class:`PatchBatch` for consecutive batches of ``images`` (any sizes)."""
        bcfg = self.config.backbone
        ext = self.extractor
        bar = tqdm(total=total, desc=desc, disable=not progress, file=sys.stderr, leave=False)
        pending: list[ImageFeatures] = []

        def flush() -> PatchBatch:
            feats, stages, valids, stage_valids = [], [], [], []
            for item in pending:
                stage_np = [
                    item.geometry.grid_valid(s, o) for s, o in zip(ext.strides, ext.offsets)
                ]
                stage_valids.append(stage_np)
                stage_valid = [torch.from_numpy(v)[None] for v in stage_np]
                masked = None if all(bool(v.all()) for v in stage_valid) else stage_valid
                patch, per_stage = aggregate(
                    [m[None] for m in item.maps],
                    ext.strides,
                    ext.offsets,
                    self.config.detector.patch_neighbourhood,
                    masked,
                )
                feats.append(patch[0])
                stages.append([m[0] for m in per_stage])
                stride, offset = self.finest
                valids.append(item.geometry.grid_valid(stride, offset))
            vec = torch.stack([p.pooled_vector() for p in pending]) if pooled else None
            return PatchBatch(
                feats, stages, [p.geometry for p in pending], valids, vec, stage_valids
            )

        with bar:
            for item in iter_image_features(
                ext,
                images,
                bcfg,
                pooled=pooled,
                intensity=self.intensity,
                context_pad=self.context_pad,
            ):
                pending.append(item)
                if len(pending) == bcfg.batch_size:
                    yield flush()
                    bar.update(len(pending))
                    pending = []
            if pending:
                yield flush()
                bar.update(len(pending))

    # ------------------------------------------------------------------ fitting
    def fit(self, images: Sequence[np.ndarray], progress: bool = False) -> FitReport:
        """Fit the memory bank, prototypes and threshold on known-good ``images``.

        The bank is the union of one coreset per fold of the images; the threshold is
        calibrated on images scored against the bank without their own fold
        (:mod:`engine.calibration`).
        """
        dcfg = self.config.detector
        if len(images) == 0:
            raise ValueError("no normal images to fit on")
        n = len(images)
        self.fit_preprocessing(images)
        folds = assign_folds(n, dcfg.calibration_folds, self.config.seed)
        n_folds = int(folds.max()) + 1
        calib = set(pick_calibration(folds, dcfg.calibration_max_images, self.config.seed).tolist())
        per_image: list[np.ndarray] = []
        kept: dict[int, np.ndarray] = {}
        stage_samples: list[list[np.ndarray]] = []
        rng = np.random.default_rng(self.config.seed)
        for batch in self.iter_patches(
            (images[i] for i in range(n)), progress=progress, desc="fit: features", total=n
        ):
            for i in range(len(batch)):
                per_image.append(batch.content(i))
                if len(per_image) - 1 in calib:
                    kept[len(per_image) - 1] = per_image[-1]
            stage_samples.append(self._sample_stage_features(batch, rng))
        counts = np.array([len(p) for p in per_image])
        n_patches = int(counts.sum())
        n_keep = coreset_size(n_patches, dcfg.coreset_ratio, dcfg.coreset_max)
        fold_banks: list[np.ndarray] = []
        fold_origin: list[np.ndarray] = []  # the normal image each bank entry comes from
        for f in range(n_folds):
            members = np.flatnonzero(folds == f)
            part = np.concatenate([per_image[i] for i in members]).astype(np.float32)
            share = len(part) / n_patches
            keep = greedy_coreset(
                part,
                max(1, min(len(part), int(round(n_keep * share)))),
                projection_dim=dcfg.coreset_projection_dim,
                max_candidates=max(1, int(round(dcfg.coreset_candidates * share))),
                seed=self.config.seed + f,
                device=self.device,
                progress=progress,
            )
            fold_banks.append(part[keep])
            fold_origin.append(np.repeat(members, counts[members])[keep])
            for member in members:
                if member not in kept:
                    per_image[member] = np.zeros((0, part.shape[1]), np.float32)  # free memory
        del per_image
        self.knn = self._neighbours(np.concatenate(fold_banks))
        self.bank_origin = np.concatenate(fold_origin).astype(np.int32)
        per_stage = [
            np.concatenate([s[i] for s in stage_samples]) for i in range(len(stage_samples[0]))
        ]
        self.prototypes = ResidualPrototypes.fit(
            per_stage, dcfg.prototypes_per_scale, dcfg.prototype_iterations, self.config.seed
        )
        scores = self._calibration_scores(kept, folds, fold_banks, fold_origin)
        self.calibration_scores = scores
        self.threshold = threshold_at(scores, dcfg.false_alarm_rate)
        return FitReport(
            n, len(scores), n_patches, len(self.knn.bank), self.threshold, scores, n_folds
        )

    def _calibration_scores(
        self,
        kept: dict[int, np.ndarray],
        folds: np.ndarray,
        fold_banks: list[np.ndarray],
        fold_origin: list[np.ndarray],
    ) -> np.ndarray:
        """Scores of the calibration images ``kept`` (index -> content patches), each
        against a bank it did not shape (``DetectorConfig.calibration_bank``)."""
        scores = []
        how = self.config.detector.calibration_bank
        if how not in get_args(CalibrationBank):
            raise ValueError(
                f"DetectorConfig.calibration_bank must be one of "
                f"{get_args(CalibrationBank)}, got {how!r}"
            )
        if how == "leave_one_out":
            bank, origin = np.concatenate(fold_banks), np.concatenate(fold_origin)
            for i in sorted(kept):
                rest = self._neighbours(bank[origin != i])
                scores.append(self._content_score(kept[i], rest))
            return np.asarray(scores, np.float32)
        for f in range(len(fold_banks)):
            held = [i for i in sorted(kept) if folds[i] == f]
            if not held:
                continue
            others = self._neighbours(
                np.concatenate([b for g, b in enumerate(fold_banks) if g != f])
            )
            scores.extend(self._content_score(kept[i], others) for i in held)
        return np.asarray(scores, np.float32)

    def fit_preprocessing(self, images: Sequence[np.ndarray]) -> None:
        """Decide the input context (``BackboneConfig.context``) and fit the grey-level
        stretch on the normals (``contrast`` ``normals``, or ``auto`` and they are dark),
        from an even sample of at most :data:`INTENSITY_SAMPLE_IMAGES` of them, each read
        at most once."""
        bcfg = self.config.backbone
        pick = (
            [int(i) for i in even_sample(len(images), INTENSITY_SAMPLE_IMAGES)]
            if len(images)
            else []
        )
        shapes = _known_shapes(images, pick)
        seen: list[tuple[int, int]] = []

        def sampled() -> Iterator[np.ndarray]:
            for i in pick:
                image = np.asarray(images[i])
                seen.append(image.shape[:2])
                yield image

        self.intensity = None
        if bcfg.contrast in ("normals", "auto") and pick:
            lo, hi = intensity_range(sampled(), *bcfg.contrast_percentiles)
            if bcfg.contrast == "normals" or hi < bcfg.dark_level:
                self.intensity = (lo, hi)
        self.context_pad = 0
        if bcfg.context == "mirror" or (
            bcfg.context == "auto"
            and mixed_framing(
                shapes or seen or [np.asarray(images[i]).shape[:2] for i in pick],
                bcfg.image_size,
                bcfg.resize_mode,
                self.extractor.max_stride,
                bcfg.fixed_frame_share,
            )
        ):
            self.context_pad = int(bcfg.context_pad)

    def _content_score(self, content: np.ndarray, knn: NearestNeighbours) -> float:
        """Image score of an image's content patches against ``knn``'s bank."""
        dist, nn_idx = knn.search(content, k=1)
        pos = int(np.argmax(dist[:, 0]))
        weight = self._reweight(content[pos], int(nn_idx[pos, 0]), knn)
        return float(dist[pos, 0] * weight)

    def _sample_stage_features(
        self, batch: PatchBatch, rng: np.random.Generator
    ) -> list[np.ndarray]:
        """Up to :data:`PROTOTYPE_SAMPLES_PER_IMAGE` random patch features per image and
        stage, for the k-means prototypes."""
        out = []
        for k in range(len(batch.stage_maps[0])):
            parts = []
            for stages in batch.stage_maps:
                fmap = stages[k]
                flat = fmap.permute(1, 2, 0).reshape(-1, fmap.shape[0]).cpu().numpy()
                take = rng.choice(
                    len(flat), size=min(len(flat), PROTOTYPE_SAMPLES_PER_IMAGE), replace=False
                )
                parts.append(flat[np.sort(take)])
            out.append(np.concatenate(parts))
        return out

    def set_false_alarm_rate(self, rate: float) -> float:
        """Re-derive the threshold from the stored calibration scores at ``rate``."""
        if self.calibration_scores is None:
            raise RuntimeError("detector is not fitted: call fit() or load() first")
        self.threshold = threshold_at(self.calibration_scores, rate)
        return self.threshold

    # ------------------------------------------------------------------ scoring
    def _require_fitted(self) -> NearestNeighbours:
        if self.knn is None:
            raise RuntimeError("detector is not fitted: call fit() or load() first")
        return self.knn

    def score(
        self, images: Iterable[np.ndarray], progress: bool = False, total: int | None = None
    ) -> list[ImageDetection]:
        """Score images (any size); returns one :class:`ImageDetection` per image."""
        return list(self.iter_score(images, progress=progress, total=total))

    def iter_score(
        self,
        images: Iterable[np.ndarray],
        progress: bool = False,
        total: int | None = None,
        *,
        context: bool = False,
    ) -> Iterator[ImageDetection]:
        """One :class:`ImageDetection` per image; with ``context`` each also carries the
        pooled global feature and the anomaly-weighted residual descriptor (what discovery
        describes an image's context with)."""
        knn = self._require_fitted()
        dcfg = self.config.detector
        stride, offset = self.finest
        context = context and self.prototypes is not None
        for batch in self.iter_patches(
            images, pooled=context, progress=progress, desc="score", total=total
        ):
            flats = [batch.flat(i) for i in range(len(batch))]
            contents = [f[v.reshape(-1)] for f, v in zip(flats, batch.valid)]
            dist, nn_idx = knn.search(np.concatenate(contents), k=1)
            start = 0
            for i, content in enumerate(contents):
                d = dist[start : start + len(content), 0]
                nn = nn_idx[start : start + len(content), 0]
                start += len(content)
                valid = batch.valid[i]
                grid = np.full(valid.shape, np.nan, np.float32)
                grid[valid] = d
                pos = int(np.argmax(d))
                score = float(d[pos] * self._reweight(content[pos], int(nn[pos]), knn))
                filled = np.where(valid, grid, float(d.min())).astype(np.float32)
                geom = batch.geometries[i]
                if self.refiner is not None:
                    score, grid, filled = self._refined(batch, i, filled, score)
                up = grid_to_image(filled, stride, offset, geom)
                smooth = gaussian_filter(up, sigma=dcfg.map_sigma)
                pooled, residual = self._context(batch, i, grid) if context else (None, None)
                yield ImageDetection(
                    score,
                    restore_map(smooth, geom),
                    grid,
                    content.mean(axis=0).astype(np.float32),
                    pooled,
                    residual,
                )

    def _context(
        self, batch: PatchBatch, i: int, grid: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(pooled global feature, anomaly-weighted residual descriptor) of image ``i``."""
        assert self.prototypes is not None and batch.pooled is not None
        ext = self.extractor
        res = self.prototypes.residual_features(
            [m[None] for m in batch.stage_maps[i]], ext.strides, ext.offsets
        )
        residual = res[0].permute(1, 2, 0).numpy()
        return (
            batch.pooled[i].cpu().numpy().astype(np.float32),
            weighted_residual(residual, batch.valid[i], grid),
        )

    def patch_distances(self, content: np.ndarray, exclude: int = -1) -> np.ndarray:
        """(n,) distance of each content patch to its nearest bank entry; with ``exclude``
        >= 0, to the nearest entry that does not come from fitted normal ``exclude`` (an
        image of the bank scored as if unseen; needs :attr:`bank_origin`)."""
        knn = self._require_fitted()
        if exclude < 0 or self.bank_origin is None:
            return knn.search(content, k=1)[0][:, 0]
        k = min(EXCLUDE_NEIGHBOURS, len(knn.bank))
        dist, idx = knn.search(content, k=k)
        own = self.bank_origin[np.clip(idx, 0, len(self.bank_origin) - 1)] == exclude
        first = np.argmax(~own, axis=1)
        picked = dist[np.arange(len(dist)), first]
        return np.where((~own).any(axis=1), picked, dist[:, -1]).astype(np.float32)

    def refiner_inputs(self, batch: PatchBatch, i: int, filled: np.ndarray) -> RefinerInputs:
        """The residual segmenter's inputs for image ``i`` of ``batch`` (``filled``: its
        (h, w) patch-distance grid with the cells outside the content filled)."""
        if self.refiner is None or self.prototypes is None or batch.stage_valid is None:
            raise RuntimeError("this detector has no refiner")
        return self.refiner.inputs(
            self.prototypes, batch.stage_maps[i], batch.stage_valid[i], filled
        )

    def _refined(
        self, batch: PatchBatch, i: int, filled: np.ndarray, score: float
    ) -> tuple[float, np.ndarray, np.ndarray]:
        """(image score, grid with NaN outside the content, filled grid) of the refiner."""
        assert self.refiner is not None
        prob = self.refiner.probability([self.refiner_inputs(batch, i, filled)])[0]
        valid = batch.valid[i]
        if self.refiner.image_score == "refined":
            score = float(prob[valid].max())
        values = self.refiner.combined(prob, filled)
        grid = np.where(valid, values, np.nan).astype(np.float32)
        return score, grid, np.where(valid, values, float(values[valid].min())).astype(np.float32)

    def set_refiner(self, refiner: ResidualRefiner, threshold: float, scores: np.ndarray) -> None:
        """Use ``refiner`` from now on, with the threshold and calibration scores it was
        calibrated to (the PatchCore ones are kept in it for :meth:`remove_refiner`)."""
        self.refiner = refiner
        self.threshold = float(threshold)
        self.calibration_scores = np.asarray(scores, np.float32)

    def set_refiner_mode(
        self, combine: str, image_score: str, fuse_weight: float | None = None
    ) -> None:
        """Switch the installed refiner's map (``combine``, and ``fuse_weight`` when
        given) and image score, with the threshold that goes with that score."""
        ref = self.refiner
        if ref is None:
            raise RuntimeError("this detector has no refiner")
        if image_score == "refined" and ref.refined_threshold is None:
            raise RuntimeError("this refiner was saved without its refined calibration")
        ref.combine, ref.image_score = combine, image_score
        if fuse_weight is not None:
            ref.fuse_weight = float(fuse_weight)
        ref.__post_init__()
        if image_score == "refined":
            assert ref.refined_calibration is not None and ref.refined_threshold is not None
            self.threshold = float(ref.refined_threshold)
            self.calibration_scores = ref.refined_calibration
        else:
            self.threshold = ref.base_threshold
            self.calibration_scores = ref.base_calibration

    def remove_refiner(self) -> None:
        """Back to the PatchCore maps, scores and threshold."""
        if self.refiner is None:
            return
        self.threshold = self.refiner.base_threshold
        self.calibration_scores = self.refiner.base_calibration
        self.refiner = None

    def _reweight(
        self, query: np.ndarray, nearest: int, knn: NearestNeighbours | None = None
    ) -> float:
        """PatchCore's image-score weight ``1 - softmax(distances to N_b(m*))[m*]``."""
        knn = knn or self._require_fitted()
        b = self.config.detector.reweight_neighbours
        if b <= 1 or len(knn.bank) < 2:
            return 1.0
        _, neigh = knn.search(knn.bank[nearest][None], k=b)
        neigh = neigh[0][neigh[0] >= 0]
        if nearest not in neigh:
            neigh = np.concatenate([[nearest], neigh[:-1]])
        dists = np.linalg.norm(knn.bank[neigh] - query[None], axis=1)
        logits = dists - dists.max()
        soft = np.exp(logits) / np.exp(logits).sum()
        return float(1.0 - soft[int(np.where(neigh == nearest)[0][0])])

    def iter_descriptors(self, images: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Global descriptor (mean valid patch feature, as in scoring) of each image; needs
        no fitting (the backbone alone)."""
        for batch in self.iter_patches(images):
            for i in range(len(batch)):
                yield batch.content(i).mean(axis=0).astype(np.float32)

    @property
    def is_fitted(self) -> bool:
        return self.knn is not None

    def residual_features(
        self, images: Iterable[np.ndarray], progress: bool = False
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield per image ``(residual (h, w, D), valid (h, w))`` against the prototypes."""
        if self.prototypes is None:
            raise RuntimeError("detector is not fitted: call fit() or load() first")
        ext = self.extractor
        for batch in self.iter_patches(images, progress=progress, desc="residuals"):
            for i in range(len(batch)):
                res = self.prototypes.residual_features(
                    [m[None] for m in batch.stage_maps[i]], ext.strides, ext.offsets
                )
                yield res[0].permute(1, 2, 0).numpy(), batch.valid[i]

    # ------------------------------------------------------------------ persistence
    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, object]]:
        """The fitted state as plain arrays plus JSON-able metadata (no pickled objects)."""
        knn = self._require_fitted()
        assert self.prototypes is not None and self.calibration_scores is not None
        meta = {
            "kind": MODEL_KIND,
            "format_version": MODEL_FORMAT_VERSION,
            "config": json.loads(self.config.to_json()),
            "threshold": self.threshold,
            "n_stages": len(self.prototypes.centroids),
            "intensity": list(self.intensity) if self.intensity is not None else None,
            "context_pad": self.context_pad,
        }
        arrays = {"bank": knn.bank, "calibration_scores": self.calibration_scores}
        if self.bank_origin is not None:
            arrays["bank_origin"] = self.bank_origin
        for i, c in enumerate(self.prototypes.centroids):
            arrays[f"prototypes_{i}"] = c
        meta["refiner"] = None
        if self.refiner is not None:
            ref_arrays, meta["refiner"] = self.refiner.to_arrays()
            arrays.update(ref_arrays)
        return arrays, meta

    def save(self, path: str | Path) -> Path:
        """Write arrays + JSON metadata to one ``.npz`` file (no pickled objects)."""
        arrays, meta = self.to_arrays()
        return write_model(path, arrays, meta)

    @classmethod
    def load(
        cls, path: str | Path, device: str | torch.device | None = None
    ) -> "PatchCoreDetector":
        """Load a model written by :meth:`save`; other kinds/versions are a clear error."""
        arrays, meta = read_model(path)
        return cls.from_arrays(arrays, meta, device=device, source=str(path))

    @classmethod
    def from_arrays(
        cls,
        arrays: dict[str, np.ndarray],
        meta: dict,
        *,
        device: str | torch.device | None = None,
        source: str = "model",
        extractor: FeatureExtractor | None = None,
    ) -> "PatchCoreDetector":
        """Rebuild a detector from :meth:`to_arrays` output (kind and version checked)."""
        check_model_meta(
            meta,
            MODEL_KIND,
            MODEL_FORMAT_VERSION,
            source=source,
            what="a detector",
            again="refit the model",
        )
        config = ProtoAtlasConfig.from_dict(meta["config"])
        det = cls(config, device=resolve_device_arg(device, config.device), extractor=extractor)
        det.knn = det._neighbours(arrays["bank"])
        det.prototypes = ResidualPrototypes(
            [arrays[f"prototypes_{i}"] for i in range(int(meta["n_stages"]))]
        )
        det.threshold = float(meta["threshold"]) if meta["threshold"] is not None else None
        if meta.get("intensity") is not None:
            det.intensity = (float(meta["intensity"][0]), float(meta["intensity"][1]))
        det.context_pad = int(meta.get("context_pad", 0))  # older models: no context
        det.calibration_scores = arrays["calibration_scores"]
        if "bank_origin" in arrays:
            det.bank_origin = arrays["bank_origin"].astype(np.int32)
        if meta.get("refiner"):  # older models: no refiner
            det.refiner = ResidualRefiner.from_arrays(arrays, meta["refiner"])
        return det


def _known_shapes(images: Sequence[np.ndarray], pick: Sequence[int]) -> list[tuple[int, int]]:
    """(H, W) of ``images[pick]`` when known without reading them (a validated
    :class:`engine.data.LazyImages` has ``shapes``), else an empty list."""
    shapes = getattr(images, "shapes", None)
    if shapes is None or len(shapes) != len(images):
        return []
    return [(int(shapes[i][0]), int(shapes[i][1])) for i in pick]


def resolve_device_arg(device: str | torch.device | None, default: str) -> torch.device:
    """A device given as a torch.device, a name (``auto|cpu|cuda``) or None (use ``default``)."""
    if isinstance(device, torch.device):
        return device
    return resolve_device(device or default)


def write_model(path: str | Path, arrays: dict[str, np.ndarray], meta: dict) -> Path:
    """Arrays plus their JSON metadata (stored as the ``meta`` array) in one ``.npz``."""
    return write_npz(
        path, {**arrays, "meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)}
    )


def read_model(path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """(arrays, metadata) of a file written by :func:`write_model`."""
    arrays = read_npz(path)
    if "meta" not in arrays:
        raise ModelFormatError(f"{path} is not a ProtoAtlas model file (no metadata)")
    return arrays, json.loads(arrays["meta"].tobytes().decode())


def check_model_meta(
    meta: dict, kind: str, version: int, *, source: str, what: str, again: str, hint: str = ""
) -> None:
    """A clear :class:`ModelFormatError` unless ``meta`` is of ``kind`` and ``version``."""
    if meta.get("kind") != kind:
        raise ModelFormatError(f"{source} holds a '{meta.get('kind')}', not {what}{hint}")
    if meta.get("format_version") != version:
        raise ModelFormatError(
            f"{source} has {what.removeprefix('a ')} format version "
            f"{meta.get('format_version')}; this ProtoAtlas reads version {version}: {again}"
        )


def write_npz(path: str | Path, arrays: dict[str, np.ndarray]) -> Path:
    """Write arrays to one compressed ``.npz`` (parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        np.savez_compressed(fh, allow_pickle=False, **arrays)
    return path


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz`` written by :func:`write_npz` (never unpickles)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError) as exc:
        raise ModelFormatError(f"{path} is not a ProtoAtlas model file ({exc})") from exc


def weighted_residual(residual: np.ndarray, valid: np.ndarray, grid_map: np.ndarray) -> np.ndarray:
    """(D,) residuals ``(h, w, D)`` pooled with the softmax of the standardised anomaly map
    ``grid_map`` (h, w) over the ``valid`` cells as weights: what the image's most anomalous
    cells depart from normal by (training-free)."""
    values = grid_map[valid]
    z = (grid_map - values.mean()) / (values.std() + WEIGHT_EPS)
    weights = np.where(valid, np.exp(np.where(valid, z, 0.0) - z[valid].max()), 0.0)
    weights /= weights.sum()
    return (residual * weights[..., None]).sum(axis=(0, 1)).astype(np.float32)
