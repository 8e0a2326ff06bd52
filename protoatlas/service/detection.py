"""Detection runs: fit the detector on known-good images, score a folder, write CSVs and heat
maps, and score the result against a labels file.

Each function takes paths and a :class:`~engine.config.ProtoAtlasConfig`, runs the engine and
returns plain dataclasses; printing and argument parsing stay in ``protoatlas.cli``.
"""

from __future__ import annotations

import csv
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from engine import metrics
from engine.config import ProtoAtlasConfig
from engine.data import LoadReport, list_images, load_images
from engine.detector import FitReport, ImageDetection, PatchCoreDetector
from protoatlas.service.labels import match_names

SCORE_COLUMNS = ("image", "anomaly_score", "is_anomalous")


@dataclass
class DetectRun:
    """Everything one ``detect`` run produced."""

    names: list[str]
    detections: list[ImageDetection]
    threshold: float
    fit: FitReport
    normals_report: LoadReport
    images_report: LoadReport
    seconds: dict[str, float] = field(default_factory=dict)
    detector: PatchCoreDetector | None = None

    def rows(self) -> list[dict[str, object]]:
        return [
            {
                "image": n,
                "anomaly_score": f"{d.score:.6f}",
                "is_anomalous": int(d.score > self.threshold),
            }
            for n, d in zip(self.names, self.detections)
        ]


def detect(
    normals: str | os.PathLike,
    images: str | os.PathLike,
    config: ProtoAtlasConfig,
    *,
    progress: bool = False,
) -> DetectRun:
    """Fit on the known-good images in ``normals`` and score every image in ``images``."""
    t0 = time.perf_counter()
    normal_items, normals_report = load_images(
        list_images(normals),
        max_pixels=config.data.max_pixels,
        max_file_bytes=config.data.max_file_bytes,
        progress=progress,
        desc="load normals",
    )
    test_items, images_report = load_images(
        list_images(images),
        max_pixels=config.data.max_pixels,
        max_file_bytes=config.data.max_file_bytes,
        progress=progress,
        desc="load images",
    )
    t1 = time.perf_counter()
    det = PatchCoreDetector(config)
    fit = det.fit([im for _, im in normal_items], progress=progress)
    t2 = time.perf_counter()
    detections = det.score([im for _, im in test_items], progress=progress, total=len(test_items))
    t3 = time.perf_counter()
    return DetectRun(
        names=[n for n, _ in test_items],
        detections=detections,
        threshold=fit.threshold,
        fit=fit,
        normals_report=normals_report,
        images_report=images_report,
        seconds={"load": t1 - t0, "fit": t2 - t1, "score": t3 - t2},
        detector=det,
    )


def write_csv(
    path: str | os.PathLike, rows: list[dict[str, object]], columns: tuple[str, ...]
) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def heatmap_overlay(detection: ImageDetection, threshold: float) -> np.ndarray:
    """Colour (BGR) heat map; the detector threshold maps to the middle of the colour scale."""
    scale = (
        2.0 * threshold
        if np.isfinite(threshold) and threshold > 0
        else float(detection.anomaly_map.max() or 1.0)
    )
    norm = np.clip(detection.anomaly_map / scale, 0.0, 1.0)
    return cv2.applyColorMap((norm * 255).astype(np.uint8), cv2.COLORMAP_JET)


def write_heatmaps(out_dir: str | os.PathLike, run: DetectRun) -> int:
    """One PNG per scored image under ``out_dir``, mirroring the input's relative paths."""
    root = Path(out_dir)
    for name, det in zip(run.names, run.detections):
        target = root / (name.rsplit(".", 1)[0] + ".png")
        target.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(target), heatmap_overlay(det, run.threshold)):
            raise OSError(f"could not write heat map {target}")
    return len(run.names)


def label_metrics(run: DetectRun, labels: dict[str, str]) -> dict[str, float]:
    """Image AUROC and the F1 of ``is_anomalous`` for the scored images that have a label."""
    named = match_names(run.names, labels)
    pairs = [(labels[named[n]], d.score) for n, d in zip(run.names, run.detections) if n in named]
    if not pairs:
        raise ValueError("none of the scored images appears in the labels file")
    truth = np.array([lab != "good" for lab, _ in pairs], dtype=int)
    scores = np.array([s for _, s in pairs])
    pred = (scores > run.threshold).astype(int)
    tp = int((pred & truth).sum())
    precision = tp / max(int(pred.sum()), 1)
    recall = tp / max(int(truth.sum()), 1)
    f1 = 2 * precision * recall / max(precision + recall, 1e-12)
    return {
        "n_labelled": len(pairs),
        "image_auroc": metrics.image_auroc(truth, scores),
        "precision": precision,
        "recall": recall,
        "f1": f1,
    }
