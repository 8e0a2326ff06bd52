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

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter
from tqdm import tqdm

from engine.backbone import FeatureExtractor
from engine.config import ProtoAtlasConfig
from engine.device import resolve_device
from engine.knn import NearestNeighbours
from engine.patch_features import aggregate
from engine.preprocess import Geometry, fit_square, restore_map, to_tensor_batch
from engine.prototypes import ResidualPrototypes
from engine.sampler import coreset_size, greedy_coreset

#: Version of the saved-model format; bumped whenever the arrays or JSON change meaning.
MODEL_FORMAT_VERSION = 1
MODEL_KIND = "protoatlas-patchcore"


class ModelFormatError(ValueError):
    """A saved model cannot be loaded (wrong kind, wrong version, missing arrays)."""


@dataclass
class PatchBatch:
    """Patch features of a batch of images on the finest feature grid."""

    features: torch.Tensor  # (B, D, h, w)
    stage_maps: list[torch.Tensor]  # per-stage locally averaged maps (for prototypes)
    geometries: list[Geometry]
    valid: np.ndarray  # (B, h, w) bool: patch centre inside the image content
    pooled: torch.Tensor | None  # (B, P) global features when requested


@dataclass
class ImageDetection:
    """Detection output for one image."""

    score: float
    anomaly_map: np.ndarray  # (H, W) float32 at the original image size
    patch_scores: np.ndarray  # (h, w) float32 on the feature grid (NaN outside the image)
    #: (D,) mean patch feature over the image content: a global descriptor used to pick the
    #: closest reference normals.
    descriptor: np.ndarray


@dataclass
class FitReport:
    n_fit_images: int
    n_calibration_images: int
    n_patches: int
    bank_size: int
    threshold: float
    calibration_scores: np.ndarray


class PatchCoreDetector:
    """Fit on normal images, then score new images; save/load as arrays + JSON."""

    def __init__(self, config: ProtoAtlasConfig | None = None,
                 device: torch.device | None = None,
                 extractor: FeatureExtractor | None = None) -> None:
        self.config = config or ProtoAtlasConfig()
        self.device = device or resolve_device(self.config.device)
        self.extractor = extractor or FeatureExtractor(self.config.backbone, self.device)
        self.knn: NearestNeighbours | None = None
        self.prototypes: ResidualPrototypes | None = None
        self.threshold: float | None = None
        self.calibration_scores: np.ndarray | None = None

    # ------------------------------------------------------------------ features
    def iter_patches(self, images: Iterable[np.ndarray], *, pooled: bool = False,
                     progress: bool = False, desc: str = "features",
                     total: int | None = None) -> Iterator[PatchBatch]:
        """Yield :class:`PatchBatch` for consecutive batches of ``images``."""
        bcfg = self.config.backbone
        stride = min(self.extractor.strides)
        bar = tqdm(total=total, desc=desc, disable=not progress, file=sys.stderr, leave=False)
        squares: list[np.ndarray] = []
        geoms: list[Geometry] = []

        def flush() -> PatchBatch:
            feats = self.extractor(to_tensor_batch(squares), pooled=pooled)
            patch, stages = aggregate(feats, self.config.detector.patch_neighbourhood)
            valid = np.stack([g.grid_valid(stride) for g in geoms])
            return PatchBatch(patch, stages, list(geoms), valid, feats.pooled)

        with bar:
            for image in images:
                square, geom = fit_square(image, bcfg.image_size, bcfg.resize_mode)
                squares.append(square)
                geoms.append(geom)
                if len(squares) == bcfg.batch_size:
                    yield flush()
                    bar.update(len(squares))
                    squares, geoms = [], []
            if squares:
                yield flush()
                bar.update(len(squares))

    # ------------------------------------------------------------------ fitting
    def fit(self, images: Sequence[np.ndarray], progress: bool = False) -> FitReport:
        """Fit the memory bank, prototypes and threshold on known-good ``images``."""
        dcfg = self.config.detector
        if len(images) == 0:
            raise ValueError("no normal images to fit on")
        fit_idx, calib_idx = self._split_calibration(len(images))
        feats: list[np.ndarray] = []
        stage_samples: list[list[np.ndarray]] = []
        rng = np.random.default_rng(self.config.seed)
        for batch in self.iter_patches((images[i] for i in fit_idx), progress=progress,
                                       desc="fit: features", total=len(fit_idx)):
            flat = batch.features.permute(0, 2, 3, 1).cpu().numpy()
            feats.append(flat[batch.valid])
            stage_samples.append(self._sample_stage_features(batch, rng))
        bank_all = np.concatenate(feats).astype(np.float32)
        n_keep = coreset_size(len(bank_all), dcfg.coreset_ratio, dcfg.coreset_max)
        keep = greedy_coreset(
            bank_all, n_keep, projection_dim=dcfg.coreset_projection_dim,
            max_candidates=dcfg.coreset_candidates, seed=self.config.seed,
            device=self.device, progress=progress,
        )
        self.knn = NearestNeighbours(bank_all[keep], use_gpu=self.device.type == "cuda")
        per_stage = [np.concatenate([s[i] for s in stage_samples])
                     for i in range(len(stage_samples[0]))]
        self.prototypes = ResidualPrototypes.fit(
            per_stage, dcfg.prototypes_per_scale, dcfg.prototype_iterations, self.config.seed)
        calib = [images[i] for i in calib_idx]
        scores = np.array([d.score for d in self.score(calib)], np.float32) if calib else \
            np.zeros(0, np.float32)
        self.calibration_scores = scores
        self.threshold = self._threshold_from(scores)
        return FitReport(len(fit_idx), len(calib_idx), len(bank_all), n_keep,
                         self.threshold, scores)

    def _split_calibration(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        dcfg = self.config.detector
        n_cal = int(round(n * dcfg.calibration_fraction))
        n_cal = max(n_cal, dcfg.calibration_min) if n > dcfg.calibration_min else 0
        order = np.random.default_rng(self.config.seed).permutation(n)
        return np.sort(order[n_cal:]), np.sort(order[:n_cal])

    def _sample_stage_features(self, batch: PatchBatch, rng: np.random.Generator
                               ) -> list[np.ndarray]:
        """Up to 64 random patch features per image and stage, for the k-means prototypes."""
        out = []
        for fmap in batch.stage_maps:
            flat = fmap.permute(0, 2, 3, 1).reshape(-1, fmap.shape[1]).cpu().numpy()
            take = rng.choice(len(flat), size=min(len(flat), 64 * fmap.shape[0]),
                              replace=False)
            out.append(flat[np.sort(take)])
        return out

    def _threshold_from(self, scores: np.ndarray) -> float:
        """mean + k*std of the held-out normal scores, and at least their maximum.

        With no held-out normals (too few images) the threshold is +inf: nothing is flagged,
        and the CLI warns that the threshold could not be calibrated.
        """
        if len(scores) == 0:
            return float("inf")
        k = self.config.detector.threshold_sigmas
        return float(max(scores.max(), scores.mean() + k * scores.std()))

    # ------------------------------------------------------------------ scoring
    def _require_fitted(self) -> NearestNeighbours:
        if self.knn is None:
            raise RuntimeError("detector is not fitted: call fit() or load() first")
        return self.knn

    def score(self, images: Iterable[np.ndarray], progress: bool = False,
              total: int | None = None) -> list[ImageDetection]:
        """Score images (any size); returns one :class:`ImageDetection` per image."""
        return list(self.iter_score(images, progress=progress, total=total))

    def iter_score(self, images: Iterable[np.ndarray], progress: bool = False,
                   total: int | None = None) -> Iterator[ImageDetection]:
        knn = self._require_fitted()
        dcfg = self.config.detector
        size = self.config.backbone.image_size
        for batch in self.iter_patches(images, progress=progress, desc="score", total=total):
            b, d, h, w = batch.features.shape
            flat = batch.features.permute(0, 2, 3, 1).reshape(-1, d).cpu().numpy()
            dist, nn_idx = knn.search(flat, k=1)
            dist = dist[:, 0].reshape(b, h, w)
            nn_idx = nn_idx[:, 0].reshape(b, h, w)
            grids = torch.from_numpy(np.where(batch.valid, dist, np.nan).astype(np.float32))
            for i in range(b):
                grid = grids[i].numpy()
                valid = batch.valid[i]
                flat_pos = int(np.nanargmax(grid))
                query = flat.reshape(b, h * w, d)[i, flat_pos]
                weight = self._reweight(query, int(nn_idx[i].reshape(-1)[flat_pos]))
                score = float(grid.reshape(-1)[flat_pos] * weight)
                filled = np.where(valid, grid, np.nanmin(grid)).astype(np.float32)
                up = F.interpolate(torch.from_numpy(filled)[None, None], size=(size, size),
                                   mode="bilinear", align_corners=False)[0, 0].numpy()
                smooth = gaussian_filter(up, sigma=dcfg.map_sigma)
                descriptor = flat.reshape(b, h * w, d)[i][valid.reshape(-1)].mean(axis=0)
                yield ImageDetection(score, restore_map(smooth, batch.geometries[i]), grid,
                                     descriptor.astype(np.float32))

    def _reweight(self, query: np.ndarray, nearest: int) -> float:
        """PatchCore's image-score weight ``1 - softmax(distances to N_b(m*))[m*]``."""
        knn = self._require_fitted()
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
            b, d, h, w = batch.features.shape
            flat = batch.features.permute(0, 2, 3, 1).reshape(b, h * w, d).cpu().numpy()
            for i in range(b):
                yield flat[i][batch.valid[i].reshape(-1)].mean(axis=0).astype(np.float32)

    @property
    def is_fitted(self) -> bool:
        return self.knn is not None

    def residual_features(self, images: Iterable[np.ndarray], progress: bool = False
                          ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield per image ``(residual (h, w, D), valid (h, w))`` against the prototypes."""
        if self.prototypes is None:
            raise RuntimeError("detector is not fitted: call fit() or load() first")
        for batch in self.iter_patches(images, progress=progress, desc="residuals"):
            res = self.prototypes.residual_features(batch.stage_maps).permute(0, 2, 3, 1)
            for i in range(res.shape[0]):
                yield res[i].numpy(), batch.valid[i]

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
        }
        arrays = {"bank": knn.bank, "calibration_scores": self.calibration_scores}
        for i, c in enumerate(self.prototypes.centroids):
            arrays[f"prototypes_{i}"] = c
        return arrays, meta

    def save(self, path: str | Path) -> Path:
        """Write arrays + JSON metadata to one ``.npz`` file (no pickled objects)."""
        arrays, meta = self.to_arrays()
        return write_model(path, arrays, meta)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device | None = None
             ) -> "PatchCoreDetector":
        """Load a model written by :meth:`save`; other kinds/versions are a clear error."""
        arrays, meta = read_model(path)
        return cls.from_arrays(arrays, meta, device=device, source=str(path))

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], meta: dict, *,
                    device: str | torch.device | None = None, source: str = "model",
                    extractor: FeatureExtractor | None = None) -> "PatchCoreDetector":
        """Rebuild a detector from :meth:`to_arrays` output (kind and version checked)."""
        check_model_meta(meta, MODEL_KIND, MODEL_FORMAT_VERSION, source=source,
                         what="a detector", again="refit the model")
        config = ProtoAtlasConfig.from_dict(meta["config"])
        det = cls(config, device=resolve_device_arg(device, config.device), extractor=extractor)
        det.knn = NearestNeighbours(arrays["bank"], use_gpu=det.device.type == "cuda")
        det.prototypes = ResidualPrototypes(
            [arrays[f"prototypes_{i}"] for i in range(int(meta["n_stages"]))])
        det.threshold = float(meta["threshold"]) if meta["threshold"] is not None else None
        det.calibration_scores = arrays["calibration_scores"]
        return det


def resolve_device_arg(device: str | torch.device | None, default: str) -> torch.device:
    """A device given as a torch.device, a name (``auto|cpu|cuda``) or None (use ``default``)."""
    if isinstance(device, torch.device):
        return device
    return resolve_device(device or default)


def write_model(path: str | Path, arrays: dict[str, np.ndarray], meta: dict) -> Path:
    """Arrays plus their JSON metadata (stored as the ``meta`` array) in one ``.npz``."""
    return write_npz(path, {**arrays,
                            "meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)})


def read_model(path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """(arrays, metadata) of a file written by :func:`write_model`."""
    arrays = read_npz(path)
    if "meta" not in arrays:
        raise ModelFormatError(f"{path} is not a ProtoAtlas model file (no metadata)")
    return arrays, json.loads(arrays["meta"].tobytes().decode())


def check_model_meta(meta: dict, kind: str, version: int, *, source: str, what: str,
                     again: str, hint: str = "") -> None:
    """A clear :class:`ModelFormatError` unless ``meta`` is of ``kind`` and ``version``."""
    if meta.get("kind") != kind:
        raise ModelFormatError(f"{source} holds a '{meta.get('kind')}', not {what}{hint}")
    if meta.get("format_version") != version:
        raise ModelFormatError(
            f"{source} has {what.removeprefix('a ')} format version "
            f"{meta.get('format_version')}; this ProtoAtlas reads version {version}: {again}")


def write_npz(path: str | Path, arrays: dict[str, np.ndarray]) -> Path:
    """Write arrays to one compressed ``.npz`` (parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        np.savez_compressed(fh, **arrays)
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
