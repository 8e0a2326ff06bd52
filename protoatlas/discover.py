"""Service layer for discovery: ``discover``, ``assign`` and ``eval-discover`` workflows.

Paths and a :class:`~engine.config.ProtoAtlasConfig` in, plain dataclasses out; the CLI and
the web app (through :mod:`protoatlas.workspace`) call these. Images are streamed
(:class:`engine.data.LazyImages`): a batch of thousands of images is not held in memory.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine import metrics
from engine.clustering import estimate_k, spherical_kmeans
from engine.config import ProtoAtlasConfig
from engine.data import (LazyImages, LoadReport, SkippedFile, check_map_shape, find_map,
                         list_images, load_mvtec, read_anomaly_map)
from engine.discovery import NO_TYPE, DiscoveryModel, DiscoveryResult

DISCOVER_COLUMNS = ("image", "anomaly_score", "is_anomalous", "cluster", "confidence",
                    "outlier")

Progress = Callable[[str, float], None]


def _quiet(stage: str, fraction: float) -> None:
    return None


@dataclass
class DiscoverRun:
    """Everything one ``discover`` or ``assign`` run produced."""

    names: list[str]
    result: DiscoveryResult
    model: DiscoveryModel
    images_report: LoadReport
    normals_report: LoadReport | None
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def threshold(self) -> float | None:
        det = self.model.detector
        return det.threshold if det is not None and det.is_fitted else None

    def rows(self) -> list[dict[str, object]]:
        """One CSV row per image (the ``discover`` contract)."""
        res = self.result
        rows = []
        for i, name in enumerate(self.names):
            anomalous = bool(res.analysis.is_anomalous[i])
            typed = anomalous and res.image_type[i] != NO_TYPE
            rows.append({
                "image": name,
                "anomaly_score": f"{res.analysis.scores[i]:.6f}",
                "is_anomalous": int(anomalous),
                "cluster": str(int(res.image_type[i])) if typed else "",
                "confidence": f"{res.image_confidence[i]:.4f}" if typed else "0.0000",
                "outlier": int(anomalous and bool(res.image_outlier[i])),
            })
        return rows

    def report(self) -> dict[str, object]:
        """The run report written next to the CSV."""
        res = self.result
        return {
            "images": _report_dict(self.images_report),
            "normals": _report_dict(self.normals_report) if self.normals_report else None,
            "threshold": self.threshold,
            "n_images": len(self.names),
            "n_anomalous": int(res.analysis.is_anomalous.sum()),
            "n_regions": len(res.analysis.regions),
            "types": [int(t) for t in res.type_ids],
            "new_types": [int(t) for t in res.new_type_ids],
            "n_outlier_regions": int(res.region_outlier.sum()),
            "k_silhouette": {str(k): round(v, 4) for k, v in res.k_scores.items()},
            "seconds": {k: round(v, 2) for k, v in self.seconds.items()},
        }


def _report_dict(report: LoadReport) -> dict[str, object]:
    return {"loaded": len(report.loaded),
            "skipped": [{"name": s.name, "reason": s.reason} for s in report.skipped]}


def open_images(source: str | os.PathLike, config: ProtoAtlasConfig, *, progress: bool,
                desc: str) -> LazyImages:
    """List a folder or zip and keep the images that decode (bad ones go in the report)."""
    images = LazyImages(list_images(source), max_pixels=config.data.max_pixels)
    images.validate(progress=progress, desc=desc)
    return images


def load_maps(maps_dir: str | os.PathLike, images: LazyImages) -> list[np.ndarray]:
    """The anomaly map of every image; images without a usable map are dropped from
    ``images`` and listed in its report with the reason (a clear per-file error)."""
    root = Path(maps_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"--maps {root}: no such directory")
    maps: dict[str, np.ndarray] = {}
    bad: list[SkippedFile] = []
    for name, shape in zip(images.names, images.shapes):
        path = find_map(root, name)
        if path is None:
            bad.append(SkippedFile(name, f"no anomaly map in {root} (looked for the same "
                                         "relative name with .npy, .png or .tif)"))
            continue
        try:
            amap = read_anomaly_map(path)
            check_map_shape(amap, shape, str(path))
        except ValueError as exc:
            bad.append(SkippedFile(name, str(exc)))
            continue
        maps[name] = amap
    if bad:
        assert images.report is not None
        images.report.skipped.extend(bad)
        missing = {s.name for s in bad}
        images.report.loaded = [n for n in images.report.loaded if n not in missing]
        images.drop(missing)
    if len(images) == 0:
        raise ValueError("no image has a usable anomaly map: "
                         + "; ".join(f"{s.name} ({s.reason})" for s in bad[:5]))
    return [maps[name] for name in images.names]


def discover(normals: str | os.PathLike, images: str | os.PathLike,
             config: ProtoAtlasConfig, *, clusters: int | str = "auto",
             maps_dir: str | os.PathLike | None = None, progress: bool = False,
             on_progress: Progress = _quiet) -> DiscoverRun:
    """Fit on ``normals``, then detect, localise and group the anomalies of ``images``."""
    t0 = time.perf_counter()
    normal_images = open_images(normals, config, progress=progress, desc="check normals")
    batch = open_images(images, config, progress=progress, desc="check images")
    maps = load_maps(maps_dir, batch) if maps_dir is not None else None
    t1 = time.perf_counter()
    on_progress("fit", 0.0)
    model = DiscoveryModel(config)
    model.fit(normal_images, fit_detector=maps is None, progress=progress)
    t2 = time.perf_counter()
    analysis = model.analyse(batch, maps=maps, progress=progress, on_progress=on_progress)
    t3 = time.perf_counter()
    on_progress("types", 0.0)
    result = model.discover(analysis, clusters, progress=progress)
    t4 = time.perf_counter()
    return DiscoverRun(batch.names, result, model, batch.report, normal_images.report,
                       {"load": t1 - t0, "fit": t2 - t1, **analysis.seconds,
                        "types": t4 - t3, "total": t4 - t0})


def assign(model_path: str | os.PathLike, images: str | os.PathLike, *,
           device: str | None = None, maps_dir: str | os.PathLike | None = None,
           progress: bool = False, on_progress: Progress = _quiet) -> DiscoverRun:
    """Sort a new batch into the types of a saved model; propose new types where needed."""
    t0 = time.perf_counter()
    model = DiscoveryModel.load(model_path, device=device)
    batch = open_images(images, model.config, progress=progress, desc="check images")
    maps = load_maps(maps_dir, batch) if maps_dir is not None else None
    t1 = time.perf_counter()
    analysis = model.analyse(batch, maps=maps, progress=progress, on_progress=on_progress)
    result = model.assign(analysis)
    t2 = time.perf_counter()
    return DiscoverRun(batch.names, result, model, batch.report, None,
                       {"load": t1 - t0, **analysis.seconds, "total": t2 - t0})


# ============================================================================================
# eval-discover: the full method against training-free k-means baselines
# ============================================================================================


@dataclass
class MethodScores:
    method: str
    nmi: float
    ari: float
    f1: float
    accuracy: float
    k_found: int
    seconds: float


@dataclass
class EvalDiscoverResult:
    data: str
    n_defect_images: int
    n_types: int
    clusters: str
    methods: list[MethodScores]
    detection_recall: float
    false_alarms: int


def _scores(method: str, truth: Sequence[str], pred: Sequence[object], k: int,
            seconds: float) -> MethodScores:
    m = metrics.cluster_metrics(list(truth), [str(p) for p in pred])
    return MethodScores(method, m.nmi, m.ari, m.macro_f1, m.accuracy, k, seconds)


def _kmeans_labels(x: np.ndarray, clusters: int | str, config: ProtoAtlasConfig
                   ) -> tuple[np.ndarray, int]:
    d = config.discovery
    k = estimate_k(x, d.max_clusters, restarts=d.kmeans_restarts, seed=config.seed)[0] \
        if clusters == "auto" else int(clusters)
    labels, _ = spherical_kmeans(x, k, restarts=d.kmeans_restarts, seed=config.seed)
    return labels, k


def eval_discover(root: str | os.PathLike, config: ProtoAtlasConfig, *,
                  clusters: int | str = "auto", progress: bool = False
                  ) -> EvalDiscoverResult:
    """Discovery metrics on an MVTec-layout folder (defect types = sub-folders of test/).

    Every method is scored on the same images, the defective test images, against their
    folder names. The full method uses its own detection: a defect image it does not flag
    (or leaves as an outlier) counts as one more, wrong, cluster. The k-means baselines are
    given the defect images directly.
    """
    data = load_mvtec(root)
    normals = LazyImages(data.train, max_pixels=config.data.max_pixels)
    normals.validate(progress=progress, desc="check normals")
    test = LazyImages([s.ref for s in data.test], max_pixels=config.data.max_pixels)
    test.validate(progress=progress, desc="check test")
    kind = {s.ref.name: s.defect_type for s in data.test}
    truth_all = [kind[n] for n in test.names]
    defect_idx = [i for i, t in enumerate(truth_all) if t != "good"]
    if not defect_idx:
        raise ValueError(f"{root}: no defective test images to discover types in")
    truth = [truth_all[i] for i in defect_idx]
    methods: list[MethodScores] = []

    t0 = time.perf_counter()
    model = DiscoveryModel(config)
    model.fit(normals, progress=progress)
    t_fit = time.perf_counter() - t0
    t1 = time.perf_counter()
    analysis = model.analyse(test, progress=progress)
    result = model.discover(analysis, clusters, progress=progress)
    t_full = time.perf_counter() - t1 + t_fit
    pred = ["none" if not analysis.is_anomalous[i] or result.image_type[i] == NO_TYPE
            else int(result.image_type[i]) for i in defect_idx]
    full = _scores("full method", truth, pred, len(result.type_ids), t_full)

    defect_images = _Subset(test, defect_idx)
    det = model.detector
    assert det is not None
    # 1. whole-image pooled backbone features
    t = time.perf_counter()
    pooled = np.concatenate([b.pooled.cpu().numpy() for b in
                             det.iter_patches(defect_images, pooled=True)])
    lab, k = _kmeans_labels(pooled, clusters, config)
    methods.append(_scores("k-means: whole-image pooled", truth, lab, k,
                           time.perf_counter() - t))
    # 2. crop features without guidance: mean of raw crop tokens, image = area-weighted mean
    t = time.perf_counter()
    plain = DiscoveryModel(config.with_overrides(discovery={"use_residual": False}),
                           device=model.device)
    plain.detector, plain.references = det, model.references
    plain.reference_descriptors = model.reference_descriptors
    plain.prior = model.prior
    plain_an = plain.analyse(test, progress=progress)
    crop_desc = plain_an.tokens.tokens.mean(axis=1)
    x = _image_means(crop_desc, plain_an, defect_idx)
    lab, k = _kmeans_labels(x, clusters, config)
    methods.append(_scores("k-means: crops, no guidance", truth, lab, k,
                           time.perf_counter() - t + t_fit))
    # 3. anomaly-weighted residual features on the full image (training-free)
    t = time.perf_counter()
    x = np.stack([_weighted_residual(res, valid, d.patch_scores) for (res, valid), d in
                  zip(det.residual_features(defect_images), det.iter_score(defect_images))])
    lab, k = _kmeans_labels(x, clusters, config)
    methods.append(_scores("k-means: anomaly-weighted residuals", truth, lab, k,
                           time.perf_counter() - t + t_fit))
    methods.append(full)
    flagged = analysis.is_anomalous
    return EvalDiscoverResult(
        data=Path(root).name, n_defect_images=len(defect_idx), n_types=len(set(truth)),
        clusters=str(clusters), methods=methods,
        detection_recall=float(np.mean([flagged[i] for i in defect_idx])),
        false_alarms=int(sum(flagged[i] for i, t in enumerate(truth_all) if t == "good")))


class _Subset(Sequence[np.ndarray]):
    def __init__(self, seq: Sequence[np.ndarray], index: Sequence[int]) -> None:
        self.seq, self.index = seq, list(index)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i):  # type: ignore[override]
        return self.seq[self.index[i]]


def _image_means(region_desc: np.ndarray, analysis, image_index: Sequence[int]) -> np.ndarray:
    """Per image: sqrt(area)-weighted mean of its regions' unit descriptors (zeros if none)."""
    unit = region_desc / np.maximum(np.linalg.norm(region_desc, axis=1, keepdims=True), 1e-12)
    out = np.zeros((len(image_index), region_desc.shape[1]), np.float32)
    row = {img: j for j, img in enumerate(image_index)}
    for r, rec in enumerate(analysis.regions):
        if rec.image_index in row:
            out[row[rec.image_index]] += np.sqrt(max(rec.area, 1)) * unit[r]
    return out + 1e-6


def _weighted_residual(residual: np.ndarray, valid: np.ndarray, grid_map: np.ndarray
                       ) -> np.ndarray:
    """Softmax of the standardised anomaly map (the detector's patch scores, on the same
    grid as the residuals) as pooling weights over the patch residuals."""
    values = grid_map[valid]
    z = (grid_map - values.mean()) / (values.std() + 1e-6)
    weights = np.where(valid, np.exp(np.where(valid, z, 0.0) - z[valid].max()), 0.0)
    weights /= weights.sum()
    return (residual * weights[..., None]).sum(axis=(0, 1))
