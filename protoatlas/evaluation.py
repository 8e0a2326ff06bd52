"""Evaluation workflows: detection and discovery metrics on one or many labelled sets.

A *set* is an MVTec-layout folder (``train/good``, ``test/<type>``, optionally
``ground_truth``) or a generated one (``synth:<kind>[:seed]``, written to a temporary folder
by :mod:`engine.synth`). A *suite* is a list of sets with their number of defect types; the
suite table has one row per set and their mean, so that every engine default can be chosen
on many kinds of data at once (``docs/decisions.md``).

Suite files are CSV with a header ``path,clusters[,name]``: ``path`` relative to the file (or
absolute, or ``synth:...``), ``clusters`` an integer K or ``auto``; lines starting with ``#``
are comments.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import resource
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from engine import metrics
from engine.calibration import threshold_at
from engine.config import ProtoAtlasConfig
from engine.data import LazyImages, load_mvtec, read_masks
from engine.detector import PatchCoreDetector, weighted_residual

if TYPE_CHECKING:
    from engine.discovery import DiscoveryModel

#: Prefix of a generated set in a suite (``synth:object``, ``synth:texture:3``).
SYNTH_PREFIX = "synth:"


@dataclass(frozen=True)
class SuiteSet:
    """One evaluation set: where it is and how many defect types it has."""

    name: str
    path: str
    clusters: int | str = "auto"


def parse_clusters(value: str) -> int | str:
    """``auto`` or a positive integer, else ValueError naming the value."""
    value = str(value).strip()
    if value == "auto":
        return value
    try:
        k = int(value)
    except ValueError:
        raise ValueError(f"expected a positive integer or 'auto', got {value!r}") from None
    if k < 1:
        raise ValueError(f"expected a positive integer or 'auto', got {k}")
    return k


def read_suite(path: str | os.PathLike) -> list[SuiteSet]:
    """The sets of a suite CSV (see the module docstring); errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"suite file not found: {path}")
    rows = [
        line
        for line in path.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    reader = csv.DictReader(rows)
    if reader.fieldnames is None or "path" not in reader.fieldnames:
        raise ValueError(f"{path}: expected a header with columns 'path' and 'clusters'")
    sets = []
    for line, row in enumerate(reader, start=2):
        raw = (row.get("path") or "").strip()
        if not raw:
            raise ValueError(f"{path}, row {line}: empty path")
        where = (
            raw
            if raw.startswith(SYNTH_PREFIX) or Path(raw).is_absolute()
            else str((path.parent / raw).resolve())
        )
        try:
            k = parse_clusters(row.get("clusters") or "auto")
        except ValueError as exc:
            raise ValueError(f"{path}, row {line}: clusters: {exc}") from None
        name = (row.get("name") or "").strip() or _set_name(raw)
        sets.append(SuiteSet(name, where, k))
    if not sets:
        raise ValueError(f"{path}: the suite lists no sets")
    return sets


def _set_name(path: str) -> str:
    if path.startswith(SYNTH_PREFIX):
        return path.replace(":", "_")
    return Path(path).name


def suite_sets(
    mvtec: Sequence[str] | None, suite: str | None, clusters: int | str = "auto"
) -> list[SuiteSet]:
    """The sets named by repeated ``--mvtec DIR`` (all with ``clusters``) and ``--suite``."""
    sets = [SuiteSet(_set_name(p), p, clusters) for p in (mvtec or [])]
    if suite:
        sets.extend(read_suite(suite))
    if not sets:
        raise ValueError("give at least one --mvtec DIR or a --suite FILE")
    return sets


@contextlib.contextmanager
def materialised(path: str) -> Iterator[Path]:
    """The folder of a set: itself, or a generated ``synth:<kind>[:seed]`` set written to a
    temporary folder for the duration of the block."""
    if not path.startswith(SYNTH_PREFIX):
        yield Path(path)
        return
    from engine import synth

    parts = path[len(SYNTH_PREFIX) :].split(":")
    kind = parts[0] or "object"
    seed = int(parts[1]) if len(parts) > 1 and parts[1] else 0
    if kind not in synth.SCENE_KINDS:
        raise ValueError(
            f"unknown generated set {path!r}: kinds are " + ", ".join(synth.SCENE_KINDS)
        )
    with tempfile.TemporaryDirectory(prefix="protoatlas-synth-") as tmp:
        yield synth.write_mvtec(Path(tmp) / kind, synth.kind_config(kind), seed=seed)


# --------------------------------------------------------------------------------------------
# memory
# --------------------------------------------------------------------------------------------


def reset_peak_rss() -> None:
    """Restart the peak-memory count of this process (Linux; a no-op elsewhere)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_rss_mib() -> float:
    """Peak resident memory of this process since the last :func:`reset_peak_rss`, in MiB
    (``VmHWM``; elsewhere the lifetime peak from ``getrusage``)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024**2 if sys.platform == "darwin" else 1024)


# --------------------------------------------------------------------------------------------
# detection
# --------------------------------------------------------------------------------------------


@dataclass
class EvalDetectResult:
    """Detection metrics of one set. Rates are at the calibrated threshold."""

    data: str
    image_auroc: float
    #: NaN when the set has no pixel masks.
    pixel_auroc: float
    aupro: float
    #: Defective test images flagged; good test images flagged (NaN without good images).
    recall: float
    false_alarm_rate: float
    threshold: float
    n_train: int
    n_test: int
    fit_seconds: float
    score_seconds: float
    images_per_second: float
    peak_rss_mib: float
    bank_size: int
    #: Recall and false-alarm rate with the threshold calibrated at other rates (same fit):
    #: rate -> (recall, false-alarm rate on the good test images).
    at_rates: dict[str, list[float]] = field(default_factory=dict)


#: Calibration rates :func:`eval_detect` also reports recall and false alarms at.
REPORTED_RATES = (0.01, 0.02, 0.05, 0.1)


def detection_metrics(
    labels: np.ndarray, scores: np.ndarray, threshold: float
) -> tuple[float, float, float]:
    """(image AUROC, recall, false-alarm rate) of ``scores > threshold``; NaN where a class
    is absent."""
    labels = np.asarray(labels, dtype=bool)
    flagged = np.asarray(scores) > threshold
    auroc = (
        metrics.image_auroc(labels.astype(int), scores)
        if labels.any() and (~labels).any()
        else float("nan")
    )
    recall = float(flagged[labels].mean()) if labels.any() else float("nan")
    far = float(flagged[~labels].mean()) if (~labels).any() else float("nan")
    return auroc, recall, far


def eval_detect(
    root: str | os.PathLike,
    config: ProtoAtlasConfig,
    *,
    progress: bool = False,
    name: str | None = None,
    refine: bool = False,
) -> EvalDetectResult:
    """Fit on ``train/good`` of an MVTec-layout folder, score ``test``, compute the metrics.

    ``refine``: refine the fitted detector (PRN, generated anomalies only) before scoring;
    the fit time then includes the refinement."""
    reset_peak_rss()
    data = load_mvtec(root)
    train = LazyImages(
        data.train, max_pixels=config.data.max_pixels, max_file_bytes=config.data.max_file_bytes
    )
    train.validate(progress=progress, desc="check train")
    test = LazyImages(
        [s.ref for s in data.test],
        max_pixels=config.data.max_pixels,
        max_file_bytes=config.data.max_file_bytes,
    )
    report = test.validate(progress=progress, desc="check test")
    if report.skipped:
        raise ValueError(f"MVTec test set has unreadable images: {report.summary()}")
    t0 = time.perf_counter()
    det = PatchCoreDetector(config)
    fit = det.fit(train, progress=progress)
    if refine:
        from engine.refine_train import fit_refiner

        fit_refiner(det, train)
    t1 = time.perf_counter()
    dets = det.score(test, progress=progress, total=len(test))
    t2 = time.perf_counter()
    labels = np.array([s.defect_type != "good" for s in data.test])
    scores = np.array([d.score for d in dets])
    assert det.threshold is not None and det.calibration_scores is not None
    auroc, recall, far = detection_metrics(labels, scores, det.threshold)
    at_rates = {}
    for rate in REPORTED_RATES:
        _, r, f = detection_metrics(labels, scores, threshold_at(det.calibration_scores, rate))
        at_rates[str(rate)] = [r, f]
    pixel_auroc = aupro = float("nan")
    if data.has_masks and labels.any():
        masks = [read_masks([s], shape)[0] for s, shape in zip(data.test, test.shapes)]
        maps = [d.anomaly_map for d in dets]
        pixel_auroc, aupro = metrics.pixel_auroc(masks, maps), metrics.aupro(masks, maps)
    return EvalDetectResult(
        data=name or Path(root).name,
        image_auroc=auroc,
        pixel_auroc=pixel_auroc,
        aupro=aupro,
        recall=recall,
        false_alarm_rate=far,
        threshold=det.threshold,
        n_train=len(train),
        n_test=len(test),
        fit_seconds=t1 - t0,
        score_seconds=t2 - t1,
        images_per_second=len(test) / max(t2 - t1, 1e-9),
        peak_rss_mib=peak_rss_mib(),
        bank_size=fit.bank_size,
        at_rates=at_rates,
    )


# --------------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------------


@dataclass
class Column:
    """One column of a printed suite table."""

    title: str
    key: str
    fmt: str = ".3f"


DETECT_COLUMNS = [
    Column("image AUROC", "image_auroc"),
    Column("pixel AUROC", "pixel_auroc"),
    Column("AUPRO", "aupro"),
    Column("recall", "recall"),
    Column("FAR", "false_alarm_rate"),
    Column("fit s", "fit_seconds", ".1f"),
    Column("score s", "score_seconds", ".1f"),
    Column("peak MiB", "peak_rss_mib", ".0f"),
]


def mean_row(rows: Sequence[dict[str, object]], keys: Sequence[str]) -> dict[str, object]:
    """Mean of each numeric column over the rows that have a finite value."""
    out: dict[str, object] = {"data": "mean"}
    for key in keys:
        numbers = [v for r in rows if isinstance(v := r.get(key), (int, float))]
        values = [float(v) for v in numbers if math.isfinite(float(v))]
        out[key] = float(np.mean(values)) if values else float("nan")
    return out


def format_table(
    rows: Sequence[dict[str, object]], columns: Sequence[Column], with_mean: bool = True
) -> str:
    """A Markdown table, one row per set (plus the mean); NaN prints as ``-``."""
    all_rows = list(rows)
    if with_mean and len(all_rows) > 1:
        all_rows.append(mean_row(all_rows, [c.key for c in columns]))
    head = "| data | " + " | ".join(c.title for c in columns) + " |"
    rule = "|---|" + "---|" * len(columns)
    lines = [head, rule]
    for r in all_rows:
        cells = []
        for c in columns:
            v = r.get(c.key)
            if isinstance(v, (int, float)) and math.isfinite(float(v)):
                cells.append(format(float(v), c.fmt))
            elif isinstance(v, str):
                cells.append(v)
            else:
                cells.append("-")
        lines.append(f"| {r['data']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def as_row(result: object) -> dict[str, object]:
    """A dataclass result as a flat dict (nested lists are left out)."""
    return {
        f.name: getattr(result, f.name)
        for f in fields(result)  # type: ignore[arg-type]
        if not isinstance(getattr(result, f.name), (list, dict))
    }


# --------------------------------------------------------------------------------------------
# discovery
# --------------------------------------------------------------------------------------------


@dataclass
class MethodScores:
    """Agreement of one method's types with the true defect types of the defective images."""

    method: str
    #: ``typed``: every defective image gets a type (AnomalyNCD's protocol); ``product``:
    #: a defective image judged normal (or an outlier) counts as a wrong answer.
    protocol: str
    nmi: float
    ari: float
    #: Hungarian-matched accuracy (AnomalyNCD's "F1" is this micro-F1).
    accuracy: float
    macro_f1: float
    k_found: int
    seconds: float


@dataclass
class EvalDiscoverResult:
    data: str
    n_defect_images: int
    n_types: int
    clusters: str
    methods: list[MethodScores]
    #: Detection at the calibrated threshold, from the same fit.
    image_auroc: float
    detection_recall: float
    false_alarm_rate: float
    false_alarms: int
    fit_seconds: float
    seconds: float
    peak_rss_mib: float
    #: The number of types ``clusters="auto"`` finds on the same analysis (-1: not run).
    k_auto: int = -1

    def method(self, name: str, protocol: str) -> MethodScores:
        for m in self.methods:
            if m.method == name and m.protocol == protocol:
                return m
        raise KeyError(f"no {name!r} in the {protocol} protocol")


FULL_METHOD = "full method"
#: Labels of defective images the product leaves without a type.
MISSED, OUTLIER = "(judged normal)", "(outlier)"


def _scores(
    method: str, protocol: str, truth: Sequence[str], pred: Sequence[object], k: int, seconds: float
) -> MethodScores:
    m = metrics.cluster_metrics(list(truth), [str(p) for p in pred])
    return MethodScores(method, protocol, m.nmi, m.ari, m.accuracy, m.macro_f1, k, seconds)


def _kmeans_labels(
    x: np.ndarray, clusters: int | str, config: ProtoAtlasConfig
) -> tuple[np.ndarray, int]:
    from engine.clustering import estimate_k, spherical_kmeans

    d = config.discovery
    k = (
        estimate_k(x, d.max_clusters, restarts=d.kmeans_restarts, seed=config.seed)[0]
        if clusters == "auto"
        else int(clusters)
    )
    labels, _ = spherical_kmeans(x, k, restarts=d.kmeans_restarts, seed=config.seed)
    return labels, k


def eval_discover(
    root: str | os.PathLike,
    config: ProtoAtlasConfig,
    *,
    clusters: int | str = "auto",
    progress: bool = False,
    name: str | None = None,
    baselines: bool = True,
    auto_k: bool = True,
    refine: bool = False,
) -> EvalDiscoverResult:
    """Discovery metrics on an MVTec-layout folder (defect types = sub-folders of test/).

    Every method is scored on the defective test images against their folder names, in
    two protocols: ``typed`` (each image's nearest type; AnomalyNCD's) and ``product``
    (a defective image the detector passes, or leaves as an outlier, is a wrong answer).
    The k-means baselines cluster every defective image directly; in the product protocol
    the images the full method's detector passes are wrong answers for them too. With
    ``auto_k`` and a given K, discovery also runs with ``clusters="auto"`` on the same
    analysis to report the K it would find (``k_auto``). ``refine``: discovery runs on the
    maps of the detector refined on generated anomalies (PRN; the fit time includes it).
    """
    from engine.discovery import NO_TYPE, DiscoveryModel

    reset_peak_rss()
    normals, test, truth_all = _labelled_sets(root, config, progress)
    defect_idx = [i for i, t in enumerate(truth_all) if t != "good"]
    if not defect_idx:
        raise ValueError(f"{root}: no defective test images to discover types in")
    truth = [truth_all[i] for i in defect_idx]

    t0 = time.perf_counter()
    model = DiscoveryModel(config)
    model.fit(normals, progress=progress)
    if refine:
        from engine.refine_train import fit_refiner

        assert model.detector is not None
        fit_refiner(model.detector, normals)
    t_fit = time.perf_counter() - t0
    analysis = model.analyse(test, progress=progress)
    result = model.discover(analysis, clusters, progress=progress)
    t_full = time.perf_counter() - t0
    flagged = analysis.is_anomalous
    k_full = len(result.type_ids)

    def product(labels: Sequence[object]) -> list[object]:
        """The labels in the product protocol: a defective image passed is missed."""
        return [lab if flagged[i] else MISSED for i, lab in zip(defect_idx, labels)]

    full = [
        OUTLIER if result.image_type[i] == NO_TYPE else int(result.image_type[i])
        for i in defect_idx
    ]
    assert result.nearest_type is not None
    full_typed = [int(result.nearest_type[i]) for i in defect_idx]
    methods = [
        _scores(FULL_METHOD, "typed", truth, full_typed, k_full, t_full),
        _scores(FULL_METHOD, "product", truth, product(full), k_full, t_full),
    ]
    if baselines:
        for label, labels, k, seconds in _baselines(
            model, analysis, test, defect_idx, clusters, config, progress
        ):
            methods.append(_scores(label, "typed", truth, labels, k, seconds + t_fit))
            methods.append(_scores(label, "product", truth, product(labels), k, seconds + t_fit))
    k_auto = k_full if clusters == "auto" else -1
    if auto_k and clusters != "auto":
        k_auto = len(model.discover(analysis, "auto").type_ids)
    auroc, recall, far = _detection_scores(root, model, analysis.scores, truth_all)
    return EvalDiscoverResult(
        data=name or Path(root).name,
        n_defect_images=len(defect_idx),
        n_types=len(set(truth)),
        clusters=str(clusters),
        methods=methods,
        image_auroc=auroc,
        detection_recall=recall,
        false_alarm_rate=far,
        false_alarms=int(sum(flagged[i] for i, t in enumerate(truth_all) if t == "good")),
        fit_seconds=t_fit,
        seconds=t_full,
        peak_rss_mib=peak_rss_mib(),
        k_auto=k_auto,
    )


def _detection_scores(
    root: str | os.PathLike, model: DiscoveryModel, scores: np.ndarray, truth: Sequence[str]
) -> tuple[float, float, float]:
    """Image AUROC, recall and false-alarm rate of the model's calibrated threshold."""
    if model.detector is None or model.detector.threshold is None:
        raise RuntimeError(f"{root}: the detector was not calibrated (too few normal images)")
    labels = np.array([t != "good" for t in truth])
    return detection_metrics(labels, scores, model.detector.threshold)


def _labelled_sets(
    root: str | os.PathLike, config: ProtoAtlasConfig, progress: bool
) -> tuple[LazyImages, LazyImages, list[str]]:
    """The checked normals and test images of an MVTec-layout folder, and each test image's
    folder name (``good`` or the defect type)."""
    data = load_mvtec(root)
    normals = LazyImages(
        data.train, max_pixels=config.data.max_pixels, max_file_bytes=config.data.max_file_bytes
    )
    normals.validate(progress=progress, desc="check normals")
    test = LazyImages(
        [s.ref for s in data.test],
        max_pixels=config.data.max_pixels,
        max_file_bytes=config.data.max_file_bytes,
    )
    test.validate(progress=progress, desc="check test")
    kind = {s.ref.name: s.defect_type for s in data.test}
    return normals, test, [kind[n] for n in test.names]


def _baselines(model, analysis, test, defect_idx, clusters, config, progress):
    """(name, labels of the defective images, K, seconds) of the three k-means baselines."""
    from engine.discovery import DiscoveryModel

    defect_images = _Subset(test, defect_idx)
    det = model.detector
    # 1. whole-image pooled backbone features
    t = time.perf_counter()
    pooled = np.concatenate(
        [b.pooled.cpu().numpy() for b in det.iter_patches(defect_images, pooled=True)]
    )
    lab, k = _kmeans_labels(pooled, clusters, config)
    yield "k-means: whole-image pooled", lab, k, time.perf_counter() - t
    # 2. crop features without guidance: mean of raw crop tokens, image = area-weighted mean
    t = time.perf_counter()
    plain = DiscoveryModel(
        config.with_overrides(discovery={"use_residual": False}), device=model.device
    )
    plain.detector, plain.references = det, model.references
    plain.reference_descriptors = model.reference_descriptors
    plain.prior = model.prior
    plain_an = plain.analyse(test, progress=progress)
    x = _image_means(plain_an, defect_idx)
    lab, k = _kmeans_labels(x, clusters, config)
    yield "k-means: crops, no guidance", lab, k, time.perf_counter() - t
    # 3. anomaly-weighted residual features on the full image (training-free)
    t = time.perf_counter()
    x = np.stack(
        [
            weighted_residual(res, valid, d.patch_scores)
            for (res, valid), d in zip(
                det.residual_features(defect_images), det.iter_score(defect_images)
            )
        ]
    )
    lab, k = _kmeans_labels(x, clusters, config)
    yield "k-means: anomaly-weighted residuals", lab, k, time.perf_counter() - t


class _Subset(Sequence[np.ndarray]):
    def __init__(self, seq: Sequence[np.ndarray], index: Sequence[int]) -> None:
        self.seq, self.rows = seq, list(index)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):  # int only: what the detector reads
        return self.seq[self.rows[i]]


def _image_means(analysis, image_index: Sequence[int]) -> np.ndarray:
    """Per image: sqrt(area)-weighted mean of its regions' unit mean-token descriptors; an
    image without regions (judged normal) uses its peak region."""

    def unit(tokens) -> np.ndarray:
        desc = tokens.tokens.mean(axis=1)
        return desc / np.maximum(np.linalg.norm(desc, axis=1, keepdims=True), 1e-12)

    row = {img: j for j, img in enumerate(image_index)}
    out = np.zeros((len(image_index), analysis.tokens.tokens.shape[2]), np.float32)
    for records, tokens in (
        (analysis.regions, analysis.tokens),
        (analysis.peaks, analysis.peak_tokens),
    ):
        if not records or tokens is None:
            continue
        vecs = unit(tokens)
        for r, rec in enumerate(records):
            if rec.image_index in row:
                out[row[rec.image_index]] += np.sqrt(max(rec.area, 1)) * vecs[r]
    return out + 1e-6


DISCOVER_COLUMNS = [
    Column("K", "k_found", ".0f"),
    Column("K auto", "k_auto", ".0f"),
    Column("NMI typed", "typed_nmi"),
    Column("ARI typed", "typed_ari"),
    Column("acc typed", "typed_accuracy"),
    Column("F1 typed", "typed_macro_f1"),
    Column("NMI product", "product_nmi"),
    Column("ARI product", "product_ari"),
    Column("acc product", "product_accuracy"),
    Column("F1 product", "product_macro_f1"),
    Column("best k-means NMI typed", "baseline_typed_nmi"),
    Column("best k-means NMI product", "baseline_product_nmi"),
    Column("recall", "detection_recall"),
    Column("FAR", "false_alarm_rate"),
    Column("seconds", "seconds", ".0f"),
]


def discover_row(res: EvalDiscoverResult) -> dict[str, object]:
    """One flat suite-table row of an :class:`EvalDiscoverResult`."""
    row = as_row(res)
    for protocol in ("typed", "product"):
        full = res.method(FULL_METHOD, protocol)
        row["k_found"] = full.k_found
        for key in ("nmi", "ari", "accuracy", "macro_f1"):
            row[f"{protocol}_{key}"] = getattr(full, key)
        others = [m.nmi for m in res.methods if m.method != FULL_METHOD and m.protocol == protocol]
        row[f"baseline_{protocol}_nmi"] = max(others) if others else float("nan")
    return row


# --------------------------------------------------------------------------------------------
# refinement (PRN)
# --------------------------------------------------------------------------------------------


@dataclass
class EvalRefineRow:
    """Detection metrics of one detector on a set's evaluation images."""

    data: str
    method: str
    n_real: int
    image_auroc: float
    pixel_auroc: float
    aupro: float
    recall: float
    false_alarm_rate: float
    train_seconds: float
    n_eval: int


#: The rows of a refinement: (method, map, image score). ``refined``: PRN's map and image
#: score; ``fused``: the patch distance amplified by the refined probability, with the
#: PatchCore image score and threshold.
REFINE_MODES = (("refined", "refined", "refined"), ("fused", "fused", "patchcore"))


def pick_real_defects(truth: Sequence[str], n_real: int, seed: int) -> list[int]:
    """``n_real`` defective test images spread over the types (round robin over the types
    in name order, a seeded random image of each), the real defects a refinement may see."""
    rng = np.random.default_rng(seed)
    by_type: dict[str, list[int]] = {}
    for i, t in enumerate(truth):
        if t != "good":
            by_type.setdefault(t, []).append(i)
    pools = {t: list(rng.permutation(v)) for t, v in sorted(by_type.items())}
    picked: list[int] = []
    while len(picked) < n_real and any(pools.values()):
        for t in sorted(pools):
            if pools[t] and len(picked) < n_real:
                picked.append(int(pools[t].pop()))
    return sorted(picked)


def eval_refine(
    root: str | os.PathLike,
    config: ProtoAtlasConfig,
    *,
    real: Sequence[int] = (0, 10),
    progress: bool = False,
    name: str | None = None,
    fuse_weights: Sequence[float] = (),
) -> list[EvalRefineRow]:
    """The PatchCore detector against its PRN refinement (:mod:`engine.refine_train`) on an
    MVTec-layout folder with masks.

    The largest of ``real`` defective test images (:func:`pick_real_defects`) are left out
    of every evaluation, so that all rows score the same images; a refinement with ``n``
    real defects trains on generated anomalies plus the first ``n`` of them (with their
    masks) and gives one row per :data:`REFINE_MODES`, plus one ``fused w=...`` row per
    ``fuse_weights`` (the same training, another :attr:`RefineConfig.fuse_weight`).
    """
    from engine.pseudo_anomalies import RealDefect
    from engine.refine_train import fit_refiner

    normals, test, truth = _labelled_sets(root, config, progress)
    data = load_mvtec(root)
    if not data.has_masks:
        raise ValueError(f"{root}: refinement is judged on pixel masks; this set has none")
    by_name = {s.ref.name: s for s in data.test}
    samples = [by_name[n] for n in test.names]
    held = pick_real_defects(truth, max(real), config.seed)
    keep = [i for i in range(len(test)) if i not in set(held)]
    labels = np.array([truth[i] != "good" for i in keep])
    masks = [read_masks([samples[i]], test.shapes[i])[0] for i in keep]
    det = PatchCoreDetector(config)
    det.fit(normals, progress=progress)
    label = name or Path(root).name
    eval_images = _Subset(test, keep)

    def row(method: str, n_real: int, seconds: float) -> EvalRefineRow:
        dets = det.score(eval_images, progress=progress, total=len(keep))
        scores = np.array([d.score for d in dets])
        assert det.threshold is not None
        auroc, recall, far = detection_metrics(labels, scores, det.threshold)
        maps = [d.anomaly_map for d in dets]
        return EvalRefineRow(
            label,
            method,
            n_real,
            auroc,
            metrics.pixel_auroc(masks, maps),
            metrics.aupro(masks, maps),
            recall,
            far,
            seconds,
            len(keep),
        )

    rows = [row("patchcore", 0, 0.0)]
    for n_real in real:
        defects = [
            RealDefect(np.asarray(test[i]), read_masks([samples[i]], test.shapes[i])[0])
            for i in held[:n_real]
        ]
        t0 = time.perf_counter()
        fit_refiner(det, normals, defects)
        seconds = time.perf_counter() - t0
        for method, combine, image_score in REFINE_MODES:
            det.set_refiner_mode(combine, image_score, config.refine.fuse_weight)
            rows.append(row(method, n_real, seconds))
        for weight in fuse_weights:
            det.set_refiner_mode("fused", "patchcore", weight)
            rows.append(row(f"fused w={weight:g}", n_real, seconds))
    det.remove_refiner()
    return rows
