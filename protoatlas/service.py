"""Service layer: the workflows shared by the CLI and (later) the web UI.

Each function takes paths and a :class:`~engine.config.ProtoAtlasConfig`, runs the engine and
returns plain dataclasses; printing and argument parsing stay in ``cli.py``.
"""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from engine import metrics
from engine.config import ProtoAtlasConfig
from engine.data import LoadReport, list_images, load_images
from engine.detector import FitReport, ImageDetection, PatchCoreDetector

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
            {"image": n, "anomaly_score": f"{d.score:.6f}",
             "is_anomalous": int(d.score > self.threshold)}
            for n, d in zip(self.names, self.detections)
        ]


def detect(normals: str | os.PathLike, images: str | os.PathLike, config: ProtoAtlasConfig,
           *, progress: bool = False) -> DetectRun:
    """Fit on the known-good images in ``normals`` and score every image in ``images``."""
    t0 = time.perf_counter()
    normal_items, normals_report = load_images(
        list_images(normals), max_pixels=config.data.max_pixels, progress=progress,
        desc="load normals")
    test_items, images_report = load_images(
        list_images(images), max_pixels=config.data.max_pixels, progress=progress,
        desc="load images")
    t1 = time.perf_counter()
    det = PatchCoreDetector(config)
    fit = det.fit([im for _, im in normal_items], progress=progress)
    t2 = time.perf_counter()
    detections = det.score([im for _, im in test_items], progress=progress,
                           total=len(test_items))
    t3 = time.perf_counter()
    return DetectRun(
        names=[n for n, _ in test_items], detections=detections, threshold=fit.threshold,
        fit=fit, normals_report=normals_report, images_report=images_report,
        seconds={"load": t1 - t0, "fit": t2 - t1, "score": t3 - t2}, detector=det,
    )


def write_csv(path: str | os.PathLike, rows: list[dict[str, object]],
              columns: tuple[str, ...]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_labels(path: str | os.PathLike) -> dict[str, str]:
    """Read a ``image,label`` CSV (other columns ignored); label ``good`` means normal."""
    return {row["image"]: row["label"] for row in _label_rows(path)}


def read_label_keys(path: str | os.PathLike) -> list[str]:
    """The ``image`` column of a labels CSV (the names only, not the labels)."""
    return [row["image"] for row in _label_rows(path)]


def _label_rows(path: str | os.PathLike) -> list[dict[str, str]]:
    path = Path(path)
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or not {"image", "label"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: expected a header with columns 'image' and 'label'")
        return list(reader)


def _normal_name(name: str) -> str:
    name = name.strip().replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    return name.lstrip("/")


def match_names(names: Iterable[str], keys: Iterable[str]) -> dict[str, str]:
    """Image name (relative to the batch root) -> the labels-file entry naming it.

    The file may name images relative to the batch root (``broken_large/000.png``), to a
    folder above it (``test/broken_large/000.png``), by absolute path, or by a shorter tail
    (``000.png``); separators ``\\`` and a leading ``./`` do not matter. A tail counts only
    when whole path components agree and the pairing is unambiguous both ways: an entry that
    fits several images, or an image that several entries fit, is left out.
    """
    exact: dict[str, str] = {}
    by_base: dict[str, list[tuple[str, str]]] = {}
    for key in keys:
        norm = _normal_name(key)
        exact.setdefault(norm, key)
        by_base.setdefault(norm.rsplit("/", 1)[-1], []).append((norm, key))
    out: dict[str, str] = {}
    tails: dict[str, str] = {}
    fits: dict[str, int] = {}    # entry -> how many images it fits by its tail
    for name in names:
        norm = _normal_name(name)
        cands = by_base.get(norm.rsplit("/", 1)[-1], [])
        # the entries whose path and the image's agree on their whole common tail; the
        # longest such tail wins
        depth = {key: min(kn.count("/"), norm.count("/")) for kn, key in cands
                 if kn.endswith("/" + norm) or norm.endswith("/" + kn)}
        for key in depth:
            fits[key] = fits.get(key, 0) + 1
        if norm in exact:
            out[name] = exact[norm]
            continue
        best = [key for key, d in depth.items() if d == max(depth.values(), default=-1)]
        if len(best) == 1:
            tails[name] = best[0]
    taken = set(out.values())
    for name, key in tails.items():
        if fits[key] == 1 and key not in taken:
            out[name] = key
    return out


def heatmap_overlay(detection: ImageDetection, threshold: float) -> np.ndarray:
    """Colour (BGR) heat map; the detector threshold maps to the middle of the colour scale."""
    scale = 2.0 * threshold if np.isfinite(threshold) and threshold > 0 else \
        float(detection.anomaly_map.max() or 1.0)
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
    pairs = [(labels[named[n]], d.score) for n, d in zip(run.names, run.detections)
             if n in named]
    if not pairs:
        raise ValueError("none of the scored images appears in the labels file")
    truth = np.array([lab != "good" for lab, _ in pairs], dtype=int)
    scores = np.array([s for _, s in pairs])
    pred = (scores > run.threshold).astype(int)
    tp = int((pred & truth).sum())
    precision = tp / max(int(pred.sum()), 1)
    recall = tp / max(int(truth.sum()), 1)
    f1 = 2 * precision * recall / max(precision + recall, 1e-12)
    return {"n_labelled": len(pairs), "image_auroc": metrics.image_auroc(truth, scores),
            "precision": precision, "recall": recall, "f1": f1}
