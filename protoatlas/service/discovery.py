"""Service layer for discovery: the ``discover`` and ``assign`` workflows.

Paths and a :class:`~engine.config.ProtoAtlasConfig` in, plain dataclasses out; the CLI and
the web app (through :class:`protoatlas.service.WorkspaceService`) call these. Images are streamed
(:class:`engine.data.LazyImages`): a batch of thousands of images is not held in memory.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.config import ProtoAtlasConfig
from engine.data import (
    LazyImages,
    LoadReport,
    SkippedFile,
    check_map_shape,
    find_map,
    list_images,
    read_anomaly_map,
)
from engine.discovery import NO_TYPE, DiscoveryModel, DiscoveryResult, no_progress
from engine.discovery import ProgressFn as Progress

DISCOVER_COLUMNS = (
    "image",
    "anomaly_score",
    "is_anomalous",
    "cluster",
    "confidence",
    "outlier",
    "nearest_type",
    "n_regions",
)


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
        n_regions = res.n_regions
        nearest = (
            res.nearest_type if res.nearest_type is not None else np.full(len(self.names), NO_TYPE)
        )
        rows = []
        for i, name in enumerate(self.names):
            anomalous = bool(res.analysis.is_anomalous[i])
            typed = anomalous and res.image_type[i] != NO_TYPE
            rows.append(
                {
                    "image": name,
                    "anomaly_score": f"{res.analysis.scores[i]:.6f}",
                    "is_anomalous": int(anomalous),
                    "cluster": str(int(res.image_type[i])) if typed else "",
                    "confidence": f"{res.image_confidence[i]:.4f}" if typed else "0.0000",
                    "outlier": int(anomalous and bool(res.image_outlier[i])),
                    "nearest_type": str(int(nearest[i])) if nearest[i] != NO_TYPE else "",
                    "n_regions": int(n_regions[i]),
                }
            )
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
            # the temperature of the reported confidences (fitted by discover)
            "confidence_temperature": round(self.model.temperature, 4),
            "seconds": {k: round(v, 2) for k, v in self.seconds.items()},
        }


def checked(images: LazyImages) -> LoadReport:
    """The load report of images that :func:`open_images` checked."""
    if images.report is None:
        raise RuntimeError("the images were not checked (open them with open_images)")
    return images.report


def _report_dict(report: LoadReport) -> dict[str, object]:
    return {
        "loaded": len(report.loaded),
        "skipped": [{"name": s.name, "reason": s.reason} for s in report.skipped],
    }


def open_images(
    source: str | os.PathLike, config: ProtoAtlasConfig, *, progress: bool, desc: str
) -> LazyImages:
    """List a folder or zip and keep the images that decode (bad ones go in the report)."""
    images = LazyImages(
        list_images(source),
        max_pixels=config.data.max_pixels,
        max_file_bytes=config.data.max_file_bytes,
    )
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
            bad.append(
                SkippedFile(
                    name,
                    f"no anomaly map in {root} (looked for the same "
                    "relative name with .npy, .png or .tif)",
                )
            )
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
        raise ValueError(
            "no image has a usable anomaly map: "
            + "; ".join(f"{s.name} ({s.reason})" for s in bad[:5])
        )
    return [maps[name] for name in images.names]


def discover(
    normals: str | os.PathLike,
    images: str | os.PathLike,
    config: ProtoAtlasConfig,
    *,
    clusters: int | str = "auto",
    maps_dir: str | os.PathLike | None = None,
    progress: bool = False,
    on_progress: Progress = no_progress,
) -> DiscoverRun:
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
    return DiscoverRun(
        batch.names,
        result,
        model,
        checked(batch),
        checked(normal_images),
        {"load": t1 - t0, "fit": t2 - t1, **analysis.seconds, "types": t4 - t3, "total": t4 - t0},
    )


def assign(
    model_path: str | os.PathLike,
    images: str | os.PathLike,
    *,
    device: str | None = None,
    maps_dir: str | os.PathLike | None = None,
    progress: bool = False,
    on_progress: Progress = no_progress,
) -> DiscoverRun:
    """Sort a new batch into the types of a saved model; propose new types where needed."""
    t0 = time.perf_counter()
    model = DiscoveryModel.load(Path(model_path), device=device)
    batch = open_images(images, model.config, progress=progress, desc="check images")
    maps = load_maps(maps_dir, batch) if maps_dir is not None else None
    t1 = time.perf_counter()
    analysis = model.analyse(batch, maps=maps, progress=progress, on_progress=on_progress)
    result = model.assign(analysis)
    t2 = time.perf_counter()
    return DiscoverRun(
        batch.names,
        result,
        model,
        checked(batch),
        None,
        {"load": t1 - t0, **analysis.seconds, "total": t2 - t0},
    )
