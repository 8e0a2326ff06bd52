"""Discovery engine: find the anomalous images of a batch, where, and group them into types.

Pipeline (ProtoAnomalyNCD on top of AnomalyNCD, with PRN residuals), all pure compute:

1. **Detection** (:class:`~engine.detector.PatchCoreDetector`, fitted on the known-good
   images) gives each image a score, ``is_anomalous`` (score above the threshold calibrated
   on held-out normals) and an anomaly map; or the maps come from another tool
   (:meth:`DiscoveryModel.analyse` with ``maps=``).
2. **MEBin** turns each flagged map into main-element masks; **anomaly-centred crops** are cut
   around them (:mod:`engine.regions`).
3. **Object prior** (:mod:`engine.prior`) labels crop pixels background / object / anomaly.
4. **Crop tokens** (:mod:`engine.tokens`): frozen-backbone tokens of each crop, as residuals
   against the same box in the closest reference normals (PRN), cached once.
5. **Guided attention + prototypes** (:mod:`engine.protonet`, :mod:`engine.prototrain`):
   the anomaly map and the Region Guidance Factor bias the attention pooling of the tokens;
   the pooled descriptor is projected onto the unit sphere; cosine prototypes, initialised by
   k-means (K given or estimated, :mod:`engine.clustering`), optionally trained SimGCD-style.
6. **Outliers**: regions far below their prototype's usual similarity are left out of every
   type. **Region -> image**: weighted vote of the regions.
7. **FAISS prototype index** (:mod:`engine.protoindex`): ``assign`` sorts a new batch into the
   saved types by nearest prototype and proposes new types where its regions fit none.

The fitted state (:class:`DiscoveryModel`) saves to one ``.npz`` of arrays plus JSON.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import get_args

import cv2
import numpy as np
import torch
from scipy.ndimage import gaussian_filter
from tqdm import tqdm

from engine.backbone import FeatureExtractor
from engine.calibration import even_sample
from engine.clustering import (
    auto_min_size,
    cluster,
    estimate_k,
    image_votes,
    normalise,
    outlier_thresholds,
    region_weights,
    softmax,
)
from engine.confidence import calibrated_temperature
from engine.config import MebinRange, ProtoAtlasConfig
from engine.detector import (
    PatchCoreDetector,
    check_model_meta,
    read_model,
    resolve_device_arg,
    write_model,
)
from engine.feature_grid import input_intensity
from engine.image_context import ContextMeans, with_context
from engine.mebin import normalisation_range
from engine.preprocess import stretch_contrast
from engine.prior import ObjectPrior, make_prior
from engine.protoindex import PrototypeIndex
from engine.protonet import PoolSettings, PrototypeHead
from engine.prototrain import TrainReport, embed_all, train_head
from engine.regions import ClippedMask, ImageRegions, Region, image_regions, shrink_to
from engine.tokens import CropEncoder, RegionTokens

MODEL_KIND = "protoatlas-discovery"
#: Version of the discovery model file format.
MODEL_FORMAT_VERSION = 1
#: Type id of "no type" (not anomalous, or an outlier).
NO_TYPE = -1
#: Confidence cap of an assignment whose top-1 and top-2 similarities are closer than
#: ``DiscoveryConfig.assign_margin``.
LOW_MARGIN_CONFIDENCE = 0.5


class DiscoveryError(ValueError):
    """Discovery cannot run on this input (the message says why)."""


@dataclass
class RegionRecord(ClippedMask):
    """A region without its pixel crops (what results and storage keep)."""

    image_index: int
    #: (top, left, bottom, right) square crop box in original pixels (may exceed the image).
    box: tuple[int, int, int, int]
    #: (top, left, bottom, right) of the box clipped to the image.
    clip: tuple[int, int, int, int]
    #: Bool mask inside ``clip`` at the original resolution.
    mask: np.ndarray
    area: int
    score: float
    #: The region comes from the whole-image fallback (MEBin found no stable component).
    fallback: bool

    @classmethod
    def of(cls, region: Region, fallback: bool) -> "RegionRecord":
        return cls(
            region.image_index,
            region.box_tuple,
            region.clip,
            region.mask,
            region.area,
            region.score,
            fallback,
        )


@dataclass
class BatchAnalysis:
    """Everything about a batch before clustering: detection, regions and their tokens."""

    shapes: list[tuple[int, int]]
    scores: np.ndarray
    is_anomalous: np.ndarray
    #: Anomaly maps shrunk to at most ``mebin_side`` on the shorter side (float32,
    #: :func:`engine.regions.shrink_to`).
    maps: list[np.ndarray]
    regions: list[RegionRecord]
    tokens: RegionTokens
    value_range: tuple[float, float]
    seconds: dict[str, float] = field(default_factory=dict)
    #: One region per image that is not anomalous: its strongest MEBin region, or a crop
    #: around the map's maximum. Never a type member: it gives :attr:`DiscoveryResult.
    #: nearest_type` (AnomalyNCD's protocol types every image), with its tokens.
    peaks: list[RegionRecord] = field(default_factory=list)
    peak_tokens: RegionTokens | None = None

    @property
    def n_images(self) -> int:
        return len(self.shapes)

    @property
    def region_image(self) -> np.ndarray:
        return np.array([r.image_index for r in self.regions], dtype=np.int64)


@dataclass
class DiscoveryResult:
    """Types of the regions and images of one batch."""

    analysis: BatchAnalysis
    #: (R, d) unit embeddings and (R, T) attention weights of the regions.
    embeddings: np.ndarray
    attention: np.ndarray
    #: Per region: type id (``NO_TYPE`` for outliers), confidence in [0, 1] (calibrated:
    #: :mod:`engine.confidence`), outlier flag, the cosine similarity to the assigned (or
    #: nearest) prototype, and the region's weight in its image's vote (the uncalibrated
    #: probability at ``confidence_temperature``: near-hard).
    region_type: np.ndarray
    region_confidence: np.ndarray
    region_outlier: np.ndarray
    region_similarity: np.ndarray
    region_vote: np.ndarray
    #: Per image: type id (``NO_TYPE`` when not anomalous or an outlier), confidence, outlier.
    image_type: np.ndarray
    image_confidence: np.ndarray
    image_outlier: np.ndarray
    #: Type ids and their unit prototypes (rows aligned).
    type_ids: np.ndarray
    prototypes: np.ndarray
    #: Ids among ``type_ids`` proposed by this run (all of them for ``discover``).
    new_type_ids: list[int]
    #: ``clusters="auto"``: mean silhouette of every K tried.
    k_scores: dict[int, float] = field(default_factory=dict)
    train: TrainReport | None = None
    #: Per image, flagged or not: the type nearest to its strongest region (an image judged
    #: normal: its peak region, :attr:`BatchAnalysis.peaks`), outliers included; NO_TYPE
    #: when there are no types. AnomalyNCD's protocol (every defective image typed).
    nearest_type: np.ndarray | None = None
    #: (P, d) embeddings of :attr:`BatchAnalysis.peaks` (rows aligned with them).
    peak_embeddings: np.ndarray | None = None

    @property
    def n_regions(self) -> np.ndarray:
        """Regions per image (0 for an image judged normal)."""
        return np.bincount(self.analysis.region_image, minlength=self.analysis.n_images)


@dataclass
class TypeFit:
    """What :meth:`DiscoveryModel.fit_types` learned, per region and overall."""

    embeddings: np.ndarray
    attention: np.ndarray
    #: Index into the new types (0..K-1) of each region (labelled regions: their label).
    assigned: np.ndarray
    n_known: int
    k_scores: dict[int, float]
    train: TrainReport


#: An image's context descriptors (pooled global feature, anomaly-weighted residual).
_Context = tuple[np.ndarray, np.ndarray] | None


@dataclass
class _Detected:
    """The detection pass over a batch (:meth:`DiscoveryModel.analyse`), per image."""

    scores: np.ndarray
    shapes: list[tuple[int, int]] = field(default_factory=list)
    #: Maps shrunk to at most ``mebin_side`` on the shorter side, smoothed by
    #: ``region_sigma``.
    small_maps: list[np.ndarray] = field(default_factory=list)
    descriptors: list[np.ndarray] = field(default_factory=list)
    #: Per image (pooled global feature, anomaly-weighted residual), or None when the
    #: image context is not described (``context_weight`` 0, or given maps).
    context: list[_Context] = field(default_factory=list)


@dataclass
class _PendingRegions:
    """Regions of one chunk of images, encoded together, with their records."""

    regions: list[Region] = field(default_factory=list)
    shapes: list[tuple[int, int]] = field(default_factory=list)
    references: list[list[np.ndarray]] = field(default_factory=list)
    records: list[RegionRecord] = field(default_factory=list)
    context: list[_Context] = field(default_factory=list)

    def add(
        self,
        region: Region,
        fallback: bool,
        shape: tuple[int, int],
        references: list[np.ndarray],
        context: _Context,
    ) -> None:
        self.regions.append(region)
        self.records.append(RegionRecord.of(region, fallback))
        self.shapes.append(shape)
        self.references.append(references)
        self.context.append(context)

    def encode(self, encoder: CropEncoder) -> RegionTokens:
        tokens = encoder.encode(self.regions, self.shapes, self.references)
        if not self.context or any(c is None for c in self.context):
            return tokens
        return tokens.with_context(
            np.stack([c[0] for c in self.context]),  # type: ignore[index]
            np.stack([c[1] for c in self.context]),  # type: ignore[index]
        )


@dataclass
class _FoundRegions:
    """The region pass over a batch: records and token chunks of regions and peaks."""

    records: list[RegionRecord] = field(default_factory=list)
    peaks: list[RegionRecord] = field(default_factory=list)
    token_parts: list[RegionTokens] = field(default_factory=list)
    peak_parts: list[RegionTokens] = field(default_factory=list)


#: A progress callback: (stage name, fraction done 0..1).
ProgressFn = Callable[[str, float], None]


def no_progress(stage: str, fraction: float) -> None:
    """The :data:`ProgressFn` that reports nothing."""
    return None


class DiscoveryModel:
    """Fitted discovery state: detector, object prior, reference normals, head, prototypes."""

    def __init__(
        self, config: ProtoAtlasConfig | None = None, device: str | torch.device | None = None
    ) -> None:
        self.config = config or ProtoAtlasConfig()
        self.device = resolve_device_arg(device, self.config.device)
        self.detector: PatchCoreDetector | None = None
        self.prior: ObjectPrior = make_prior(self.config.prior)
        self.references: list[np.ndarray] = []
        #: Index of each reference among the fitted normals (-1: not known).
        self.reference_index: list[int] = []
        self.reference_descriptors = np.zeros((0, 0), np.float32)
        self.value_range: tuple[float, float] | None = None
        self.head: PrototypeHead | None = None
        self.type_ids = np.zeros(0, np.int64)
        self.prototypes = np.zeros((0, self.config.discovery.vector_dim), np.float32)
        self.thresholds = np.zeros(0, np.float32)
        #: Temperature of the reported confidence (fitted by :meth:`fit_types`).
        self.temperature = float(self.config.discovery.confidence_temperature)
        #: Centres of the image-context parts of the embedding (None: head embedding alone;
        #: set by :meth:`fit_types`, :mod:`engine.image_context`).
        self.context_means: ContextMeans | None = None
        self._encoder: CropEncoder | None = None

    # ------------------------------------------------------------------ components
    @property
    def encoder(self) -> CropEncoder:
        if self._encoder is None:
            dcfg = self.config.discovery
            bcfg = replace(
                self.config.backbone,
                feature_strides=tuple(dcfg.token_strides),
                feature_indices=None,
            )
            self._encoder = CropEncoder(
                FeatureExtractor(bcfg, self.device),
                use_residual=dcfg.use_residual,
                crop_cfg=self.config.crops,
            )
        return self._encoder

    def _pool_settings(self) -> PoolSettings:
        d = self.config.discovery
        background, obj, anomaly = d.region_factors
        return PoolSettings(
            d.guidance_beta,
            (background, obj, anomaly),
            d.residual_power,
            d.learn_factors,
            d.scorer_hidden,
        )

    def _new_head(self, channels: int, n_prototypes: int) -> PrototypeHead:
        d = self.config.discovery
        return PrototypeHead(
            channels, d.embedding_dim, n_prototypes, self._pool_settings(), self.config.seed
        ).to(self.device)

    def _require_detector(self) -> PatchCoreDetector:
        if self.detector is None:
            raise RuntimeError("discovery model is not fitted: call fit() or load() first")
        return self.detector

    # ------------------------------------------------------------------ fitting
    def fit(
        self, normals: Sequence[np.ndarray], *, fit_detector: bool = True, progress: bool = False
    ) -> None:
        """Fit the detector, keep reference normals and fit the object prior on them.

        ``fit_detector=False`` is for anomaly maps coming from another tool: the backbone
        still describes images (to pick references) but no memory bank is built.
        """
        if len(normals) == 0:
            raise DiscoveryError("no known-good images to fit on")
        det = PatchCoreDetector(self.config, device=self.device)
        if fit_detector:
            det.fit(normals, progress=progress)
        else:
            det.fit_preprocessing(normals)
        self.detector = det
        self._keep_references(normals)
        # The prior is fitted on the kept references, so that a loaded model (which keeps
        # only those) refits exactly the same prior.
        self.prior.fit(self.references)

    def _keep_references(self, normals: Sequence[np.ndarray]) -> None:
        dcfg = self.config.discovery
        keep = even_sample(len(normals), dcfg.max_kept_references)
        self.reference_index = [int(i) for i in keep]
        self.references = [shrink_to(self.stretched(normals[i]), dcfg.reference_side) for i in keep]
        self.reference_descriptors = np.array(
            list(self._require_detector().iter_descriptors(self.references)), np.float32
        )

    def stretched(self, image: np.ndarray) -> np.ndarray:
        """``image`` with the detector's grey-level stretch (``BackboneConfig.contrast``), so
        that crops and references are cut from what the backbone saw."""
        det = self.detector
        fitted = det.intensity if det is not None else None
        stretch = input_intensity(image, self.config.backbone, fitted)
        return image if stretch is None else stretch_contrast(image, *stretch)

    def _references_for(self, descriptor: np.ndarray) -> list[np.ndarray]:
        k = min(self.config.discovery.n_references, len(self.references))
        if k == 0 or not self.config.discovery.use_residual:
            return []
        sims = normalise(self.reference_descriptors) @ normalise(descriptor[None])[0]
        order = np.argsort(-sims, kind="stable")[:k]
        return [self.references[i] for i in order]

    # ------------------------------------------------------------------ analysis
    def analyse(
        self,
        images: Sequence[np.ndarray],
        *,
        maps: Sequence[np.ndarray] | None = None,
        progress: bool = False,
        on_progress: ProgressFn = no_progress,
    ) -> BatchAnalysis:
        """Detect, find regions and encode their tokens for every image of ``images``.

        ``images`` may be any sequence that loads lazily (``len`` and indexing); each image
        is read twice (scoring, then crops) and never all kept at once. With ``maps`` (one
        float map per image, any resolution: resized to the image) the detector's maps are
        replaced by the given ones; images are then flagged by MEBin alone.
        """
        det = self._require_detector()
        _check_batch(det, len(images), maps)
        external = maps is not None
        t0 = time.perf_counter()
        detected = self._detect_all(images, maps, progress, on_progress)
        t1 = time.perf_counter()
        flagged, floor = _flag_images(det, detected.scores, external)
        range_maps, floor = self._range_maps(detected.small_maps, flagged, floor)
        value_range = self.value_range or self._value_range(range_maps, floor)
        found = self._region_pass(
            images,
            detected,
            flagged,
            value_range,
            external=external,
            progress=progress,
            on_progress=on_progress,
        )
        tokens, peak_tokens = self._concat_tokens(found.token_parts, found.peak_parts)
        t2 = time.perf_counter()
        return BatchAnalysis(
            detected.shapes,
            detected.scores,
            flagged,
            detected.small_maps,
            found.records,
            tokens,
            value_range,
            {"detect": t1 - t0, "regions": t2 - t1},
            found.peaks,
            peak_tokens,
        )

    def _detect_all(
        self,
        images: Sequence[np.ndarray],
        maps: Sequence[np.ndarray] | None,
        progress: bool,
        on_progress: ProgressFn,
    ) -> _Detected:
        """The detection pass: per image its shape, score, descriptor and its map shrunk to
        ``mebin_side`` (smoothed by ``region_sigma``)."""
        dcfg = self.config.discovery
        n = len(images)
        detected = _Detected(scores=np.zeros(n, np.float32))
        bar = tqdm(total=n, desc="detect", disable=not progress, file=sys.stderr, leave=False)
        for i, (shape, score, amap, descriptor, context) in enumerate(
            self._detect_pass(images, maps)
        ):
            detected.shapes.append(shape)
            detected.context.append(context)
            detected.scores[i] = score
            small = shrink_to(amap, dcfg.mebin_side)
            if dcfg.region_sigma > 0:
                small = gaussian_filter(small, dcfg.region_sigma).astype(np.float32)
            detected.small_maps.append(small)
            detected.descriptors.append(descriptor)
            bar.update(1)
            on_progress("detect", (i + 1) / n)
        bar.close()
        return detected

    def _range_maps(
        self, small_maps: list[np.ndarray], flagged: np.ndarray, floor: float | None
    ) -> tuple[list[np.ndarray], float | None]:
        """The maps MEBin's normalisation range spans (``DiscoveryConfig.mebin_range``) and
        the floor of that range."""
        mebin_range = self.config.discovery.mebin_range
        if mebin_range not in get_args(MebinRange):
            raise ValueError(
                f"DiscoveryConfig.mebin_range must be one of "
                f"{get_args(MebinRange)}, got {mebin_range!r}"
            )
        if mebin_range == "all":  # AnomalyNCD: every map of the batch, no floor
            return small_maps, None
        return [m for m, f in zip(small_maps, flagged) if f], floor

    def _region_pass(
        self,
        images: Sequence[np.ndarray],
        detected: _Detected,
        flagged: np.ndarray,
        value_range: tuple[float, float],
        *,
        external: bool,
        progress: bool,
        on_progress: ProgressFn,
    ) -> _FoundRegions:
        """Regions of every image and their tokens, encoded a chunk of images at a time.

        A flagged image gives all its regions; any other image its strongest one, a *peak*
        (which type is nearest). With ``external`` maps, an image in which MEBin finds no
        stable component is no longer flagged (``flagged`` is updated in place).
        """
        n = len(images)
        found = _FoundRegions()
        chunk = max(1, self.config.backbone.batch_size)
        bar = tqdm(total=n, desc="regions", disable=not progress, file=sys.stderr, leave=False)
        for start in range(0, n, chunk):
            regions, peaks = _PendingRegions(), _PendingRegions()
            for i in range(start, min(n, start + chunk)):
                image = self.stretched(images[i])
                got = self._image_regions(
                    i, image, detected, value_range, peak_fallback=not flagged[i]
                )
                if external and got.fallback:
                    flagged[i] = False
                refs = self._references_for(detected.descriptors[i])
                if flagged[i]:
                    for region in got.regions:
                        regions.add(
                            region, got.fallback, detected.shapes[i], refs, detected.context[i]
                        )
                else:  # not an anomaly: its strongest region only says which type is nearest
                    region = max(got.regions, key=lambda r: r.score)
                    peaks.add(region, got.fallback, detected.shapes[i], refs, detected.context[i])
            if regions.regions:
                found.token_parts.append(regions.encode(self.encoder))
            if peaks.regions:
                found.peak_parts.append(peaks.encode(self.encoder))
            found.records.extend(regions.records)
            found.peaks.extend(peaks.records)
            bar.update(min(n, start + chunk) - start)
            on_progress("regions", min(1.0, (start + chunk) / n))
        bar.close()
        return found

    def _image_regions(
        self,
        i: int,
        image: np.ndarray,
        detected: _Detected,
        value_range: tuple[float, float],
        *,
        peak_fallback: bool,
    ) -> ImageRegions:
        """:func:`engine.regions.image_regions` of image ``i`` (already stretched), its map
        resized back from the shrunk one."""
        dcfg = self.config.discovery
        height, width = detected.shapes[i]
        full_map = cv2.resize(
            detected.small_maps[i], (width, height), interpolation=cv2.INTER_LINEAR
        )
        return image_regions(
            i,
            image,
            full_map,
            self.prior.predict(image),
            mebin_cfg=self.config.mebin,
            crop_cfg=self.config.crops,
            value_range=value_range,
            fallback_quantile=dcfg.fallback_quantile,
            mebin_side=dcfg.mebin_side,
            peak_fallback=peak_fallback,
        )

    def _concat_tokens(
        self, token_parts: list[RegionTokens], peak_parts: list[RegionTokens]
    ) -> tuple[RegionTokens, RegionTokens]:
        """The regions' and the peaks' tokens, each empty when there are none."""
        if token_parts and peak_parts:
            return RegionTokens.concat(token_parts), RegionTokens.concat(peak_parts)
        empty = self.encoder.encode([], [], [])
        return (
            RegionTokens.concat(token_parts) if token_parts else empty,
            RegionTokens.concat(peak_parts) if peak_parts else empty,
        )

    def _detect_pass(
        self, images: Sequence[np.ndarray], maps: Sequence[np.ndarray] | None
    ) -> Iterable[tuple[tuple[int, int], float, np.ndarray, np.ndarray, _Context]]:
        """(shape, score, map, descriptor, image context or None) per image, from the
        detector or the given maps (which have no context: no residuals)."""
        det = self._require_detector()
        if maps is None:
            described = self.config.discovery.context_weight > 0
            for d in det.iter_score(_Iter(images), context=described):
                shape = (int(d.anomaly_map.shape[0]), int(d.anomaly_map.shape[1]))
                context = None if d.pooled is None or d.residual is None else (d.pooled, d.residual)
                yield shape, float(d.score), d.anomaly_map, d.descriptor, context
            return
        shapes: list[tuple[int, int]] = []

        def remember(seq: Sequence[np.ndarray]) -> Iterable[np.ndarray]:
            for i in range(len(seq)):
                image = seq[i]
                shapes.append((int(image.shape[0]), int(image.shape[1])))
                yield image

        for i, descriptor in enumerate(det.iter_descriptors(remember(images))):
            amap = _external_map(maps[i], shapes[i], i)
            yield shapes[i], float(amap.max()), amap, descriptor, None

    def _value_range(
        self, flagged_maps: list[np.ndarray], floor: float | None
    ) -> tuple[float, float]:
        if not flagged_maps:
            return (0.0, 0.0)
        cfg = replace(self.config.mebin, range_floor=floor)
        lo, hi = normalisation_range(flagged_maps, cfg)
        if hi <= lo:  # a single flagged image, or all equally strong: span up from the floor
            lo = floor if floor is not None else 0.0
        return (float(lo), float(hi))

    # ------------------------------------------------------------------ discovery
    def discover(
        self,
        analysis: BatchAnalysis,
        clusters: int | str = "auto",
        *,
        labels: np.ndarray | None = None,
        progress: bool = False,
    ) -> DiscoveryResult:
        """Group the regions of ``analysis`` into types (ids 0..K-1) and set the prototypes.

        ``labels`` (optional, per region: known-type index or -1) turns on the supervised
        terms (reviewer-confirmed types). ``clusters`` is an int K (novel types) or "auto".
        """
        self.value_range = analysis.value_range
        if len(analysis.regions) == 0:
            return self._empty_result(analysis)
        fit = self.fit_types(analysis.tokens, clusters, labels=labels, progress=progress)
        result = self._result(
            analysis, fit.embeddings, fit.attention, self.type_ids, [int(t) for t in self.type_ids]
        )
        if fit.n_known:  # _result re-derives types from the prototypes: labels are facts
            known = np.asarray(labels) >= 0
            result.region_type[known] = self.type_ids[fit.assigned[known]]
            result.region_outlier[known] = False
            result.region_similarity[known] = (
                fit.embeddings[known] * self.prototypes[fit.assigned[known]]
            ).sum(axis=1)
            result.region_confidence[known] = 1.0
            result.region_vote[known] = 1.0
            self._vote_images(result)
        result.k_scores = fit.k_scores
        result.train = fit.train
        self._set_nearest_types(result)
        return result

    def _set_nearest_types(self, result: DiscoveryResult) -> None:
        """Fill :attr:`DiscoveryResult.nearest_type` from the regions and the peaks."""
        analysis = result.analysis
        nearest = np.full(analysis.n_images, NO_TYPE, np.int64)
        result.nearest_type = nearest
        if len(result.type_ids) == 0:
            return
        protos = normalise(result.prototypes)
        if len(result.embeddings):
            best = (result.embeddings @ protos.T).argmax(axis=1)
            strongest: dict[int, tuple[float, int]] = {}
            for r, rec in enumerate(analysis.regions):
                if rec.image_index not in strongest or rec.score > strongest[rec.image_index][0]:
                    strongest[rec.image_index] = (rec.score, r)
            for img, (_, r) in strongest.items():
                nearest[img] = result.type_ids[best[r]]
        if analysis.peaks and analysis.peak_tokens is not None and self.head is not None:
            emb, _ = self.embed(analysis.peak_tokens)
            result.peak_embeddings = emb
            best = (emb @ protos.T).argmax(axis=1)
            for rec, b in zip(analysis.peaks, best):
                nearest[rec.image_index] = result.type_ids[b]

    def fit_types(
        self,
        tokens: RegionTokens,
        clusters: int | str = "auto",
        *,
        labels: np.ndarray | None = None,
        progress: bool = False,
    ) -> "TypeFit":
        """Train a fresh head on ``tokens`` and set the types (ids 0..K-1): known types
        (``labels`` 0..n_known-1, kept as ids 0..n_known-1) first, then the novel ones that
        received members. ``clusters`` counts the novel types ("auto": estimated)."""
        dcfg = self.config.discovery
        n_regions = len(tokens)
        if n_regions == 0:
            raise DiscoveryError("no regions to group")
        labels = (
            np.full(n_regions, -1, np.int64)
            if labels is None
            else np.asarray(labels, dtype=np.int64)
        )
        n_known = int(labels.max()) + 1 if (labels >= 0).any() else 0
        head = self._new_head(tokens.tokens.shape[2], 1)
        head_emb0, _ = embed_all(head, tokens, self.device)
        # with a context weight the embedding always has the context parts (zero where the
        # tokens have no context), so that every batch of a workspace has one vector size
        use_context = dcfg.context_weight > 0
        # the untrained embedding, in the space the types are grouped in
        context = (
            ContextMeans.fit(head_emb0, tokens, dcfg.context_components) if use_context else None
        )
        emb0 = (
            head_emb0
            if context is None
            else with_context(head_emb0, tokens, context, dcfg.context_weight)
        )
        free = int((labels < 0).sum())
        k_scores: dict[int, float] = {}
        if clusters == "auto":
            k_novel, k_scores = estimate_k(
                emb0[labels < 0],
                dcfg.max_clusters,
                restarts=dcfg.kmeans_restarts,
                seed=self.config.seed,
                method=dcfg.cluster_method,
                max_points=dcfg.ward_max_points,
                min_size=auto_min_size(free, dcfg.auto_min_fraction, dcfg.auto_min_size_cap),
            )
        else:
            k_novel = int(clusters)
            if k_novel < 0 or (k_novel == 0 and n_known == 0):
                raise DiscoveryError(f"--clusters must be >= 1 or 'auto', got {clusters}")
        k_novel = min(k_novel, free)
        head.set_prototypes(
            torch.from_numpy(self._initial_prototypes(head_emb0, labels, n_known, k_novel))
        )
        report = train_head(
            head,
            tokens,
            labels,
            n_known,
            dcfg,
            seed=self.config.seed,
            device=self.device,
            progress=progress,
        )
        self.head = head
        emb, attention = embed_all(head, tokens, self.device)
        if context is not None:  # the trained crop embedding beside the context, regrouped
            self.context_means = replace(context, embedding=emb.mean(axis=0).astype(np.float32))
            emb = with_context(emb, tokens, self.context_means, dcfg.context_weight)
            sims = emb @ self._initial_prototypes(emb, labels, n_known, k_novel).T
        else:
            self.context_means = None
            sims = emb @ normalise(head.prototypes.detach().cpu().numpy()).T
        assigned = sims.argmax(axis=1)
        if n_known:  # reviewer labels are facts: labelled regions stay in their type
            assigned = np.where(labels >= 0, labels, assigned)
        used = np.unique(np.concatenate([np.arange(n_known), assigned]))
        remap = {old: new for new, old in enumerate(used)}
        assigned = np.array([remap[a] for a in assigned], dtype=np.int64)
        prototypes = normalise(
            np.stack([emb[assigned == k].mean(axis=0) for k in range(len(used))])
        )
        self._set_types(np.arange(len(used), dtype=np.int64), prototypes, emb, assigned)
        self.temperature = (
            # neighbour agreement in the untrained head embedding, as without context (in
            # the joint space the demo's mean confidence overstated its accuracy by 0.11)
            calibrated_temperature(head_emb0, emb @ self.prototypes.T, assigned, dcfg)
            if dcfg.calibrate_confidence
            else float(dcfg.confidence_temperature)
        )
        return TypeFit(emb, attention, assigned, n_known, k_scores, report)

    def classify(self, emb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per embedding: (type id or NO_TYPE for outliers, confidence (calibrated), outlier
        flag, similarity to the nearest prototype) against the current types."""
        if len(self.type_ids) == 0:
            n = len(emb)
            return (
                np.full(n, NO_TYPE, np.int64),
                np.zeros(n, np.float32),
                np.ones(n, bool),
                np.zeros(n, np.float32),
            )
        sims = emb @ self.prototypes.T
        best = sims.argmax(axis=1)
        best_sim = sims[np.arange(len(sims)), best]
        outlier = best_sim < self.thresholds[best]
        conf = self._probability(sims, best, self.temperature)
        region_type = np.where(outlier, NO_TYPE, self.type_ids[best]).astype(np.int64)
        return region_type, conf, outlier, best_sim.astype(np.float32)

    def vote_weights(self, emb: np.ndarray) -> np.ndarray:
        """Per embedding: its weight in the image vote, the probability of the nearest
        prototype at ``confidence_temperature`` (uncalibrated, near-hard)."""
        if len(self.type_ids) == 0:
            return np.zeros(len(emb), np.float32)
        sims = emb @ self.prototypes.T
        return self._probability(
            sims, sims.argmax(axis=1), self.config.discovery.confidence_temperature
        )

    def _probability(self, sims: np.ndarray, best: np.ndarray, temperature: float) -> np.ndarray:
        """Softmax probability of column ``best`` of each row at ``temperature``, capped at
        :data:`LOW_MARGIN_CONFIDENCE` where the two nearest prototypes are within
        ``assign_margin``."""
        rows = np.arange(len(sims))
        conf = softmax(sims, temperature)[rows, best]
        if sims.shape[1] > 1:
            top2 = np.sort(sims, axis=1)[:, -2]
            low_margin = (sims[rows, best] - top2) < self.config.discovery.assign_margin
            conf = np.where(low_margin, np.minimum(conf, LOW_MARGIN_CONFIDENCE), conf)
        return conf.astype(np.float32)

    def _initial_prototypes(
        self, emb: np.ndarray, labels: np.ndarray, n_known: int, k_novel: int
    ) -> np.ndarray:
        known = [normalise(emb[labels == k].mean(axis=0, keepdims=True))[0] for k in range(n_known)]
        free = emb[labels < 0] if n_known else emb
        if len(free) == 0:
            return np.stack(known)
        dcfg = self.config.discovery
        if k_novel == 0:
            return np.stack(known)
        _, centres = cluster(
            free,
            min(k_novel, len(free)),
            method=dcfg.cluster_method,
            max_points=dcfg.ward_max_points,
            restarts=dcfg.kmeans_restarts,
            seed=self.config.seed,
        )
        if not known:
            return centres
        return semi_supervised_kmeans(
            emb, labels, np.concatenate([np.stack(known), centres]), dcfg.ss_kmeans_iterations
        )

    def _set_types(
        self, type_ids: np.ndarray, prototypes: np.ndarray, emb: np.ndarray, assigned: np.ndarray
    ) -> None:
        """Store prototypes and their outlier thresholds (from the members' similarities,
        in-sample: see docs/decisions.md for the measured trade-off against leave-one-out)."""
        self.type_ids = np.asarray(type_ids, dtype=np.int64)
        self.prototypes = normalise(prototypes)
        own = (emb * self.prototypes[assigned]).sum(axis=1)
        self.thresholds = outlier_thresholds(
            own, assigned, len(type_ids), self.config.discovery.outlier_mads
        )

    def set_types(
        self, type_ids: Sequence[int], prototypes: np.ndarray, thresholds: np.ndarray | None = None
    ) -> None:
        """Replace the types (e.g. with the ids the storage layer gave them)."""
        self.type_ids = np.asarray(type_ids, dtype=np.int64)
        self.prototypes = normalise(np.asarray(prototypes, dtype=np.float32))
        if thresholds is not None:
            self.thresholds = np.asarray(thresholds, dtype=np.float32)
        elif len(self.thresholds) != len(self.type_ids):
            self.thresholds = np.full(len(self.type_ids), -1.0, np.float32)

    @property
    def index(self) -> PrototypeIndex:
        return PrototypeIndex(self.type_ids, self.prototypes)

    # ------------------------------------------------------------------ assignment
    def embed(self, tokens: RegionTokens) -> tuple[np.ndarray, np.ndarray]:
        """(R, d) embeddings (with the image context when the types were grouped with it)
        and (R, T) attention of regions with the current head."""
        if self.head is None:
            raise RuntimeError("no prototype head: run discover() or load a model first")
        emb, attention = embed_all(self.head, tokens, self.device)
        if self.context_means is not None:
            emb = with_context(
                emb, tokens, self.context_means, self.config.discovery.context_weight
            )
        return emb, attention

    def assign(self, analysis: BatchAnalysis) -> DiscoveryResult:
        """Sort a new batch into the saved types; propose new types for what fits none."""
        if self.head is None or len(self.type_ids) == 0:
            raise RuntimeError("the model has no types yet: run discover first")
        if not analysis.regions:
            result = self._empty_result(analysis)
            self._set_nearest_types(result)
            return result
        emb, attention = self.embed(analysis.tokens)
        result = self._result(analysis, emb, attention, self.type_ids, [])
        outliers = np.flatnonzero(result.region_outlier)
        dcfg = self.config.discovery
        if len(outliers) >= dcfg.new_type_min_size:
            self._propose_new_types(result, outliers)
        self._set_nearest_types(result)
        return result

    def _propose_new_types(self, result: DiscoveryResult, outliers: np.ndarray) -> None:
        """Cluster outlier regions; groups of at least ``new_type_min_size`` become new types."""
        dcfg = self.config.discovery
        sub = result.embeddings[outliers]
        k, _ = estimate_k(
            sub,
            min(dcfg.max_clusters, max(1, len(sub) // dcfg.new_type_min_size)),
            restarts=dcfg.kmeans_restarts,
            seed=self.config.seed,
            method=dcfg.cluster_method,
            max_points=dcfg.ward_max_points,
            min_size=dcfg.new_type_min_size,
        )
        labels, centres = cluster(
            sub,
            max(k, 1),
            method=dcfg.cluster_method,
            max_points=dcfg.ward_max_points,
            restarts=dcfg.kmeans_restarts,
            seed=self.config.seed,
        )
        next_id = int(result.type_ids.max()) + 1 if len(result.type_ids) else 0
        new_ids: list[int] = []
        new_protos: list[np.ndarray] = []
        joined: list[np.ndarray] = []
        for c in range(len(centres)):
            members = outliers[labels == c]
            if len(members) < dcfg.new_type_min_size:
                continue
            tid = next_id + len(new_ids)
            new_ids.append(tid)
            new_protos.append(centres[c])
            joined.append(members)
            result.region_type[members] = tid
            result.region_outlier[members] = False
            sims = result.embeddings[members] @ centres[c]
            result.region_similarity[members] = sims
            result.region_vote[members] = np.clip(sims, 0.0, 1.0)
        if not new_ids:
            return
        result.type_ids = np.concatenate([result.type_ids, new_ids])
        result.prototypes = np.concatenate([result.prototypes, np.stack(new_protos)])
        result.new_type_ids = new_ids
        # the members' confidence: the calibrated softmax over the saved and the new types
        protos = normalise(result.prototypes)
        old = len(protos) - len(new_ids)
        for j, members in enumerate(joined):
            sims = result.embeddings[members] @ protos.T
            col = np.full(len(members), old + j)
            result.region_confidence[members] = self._probability(sims, col, self.temperature)
        self._vote_images(result)

    # ------------------------------------------------------------------ results
    def _result(
        self,
        analysis: BatchAnalysis,
        emb: np.ndarray,
        attention: np.ndarray,
        type_ids: np.ndarray,
        new_ids: list[int],
    ) -> DiscoveryResult:
        region_type, conf, outlier, best_sim = self.classify(emb)
        n = analysis.n_images
        result = DiscoveryResult(
            analysis=analysis,
            embeddings=emb,
            attention=attention,
            region_type=region_type,
            region_confidence=conf,
            region_outlier=outlier,
            region_similarity=best_sim,
            region_vote=self.vote_weights(emb),
            image_type=np.full(n, NO_TYPE, np.int64),
            image_confidence=np.zeros(n, np.float32),
            image_outlier=np.zeros(n, bool),
            type_ids=np.asarray(type_ids).copy(),
            prototypes=self.prototypes.copy(),
            new_type_ids=list(new_ids),
        )
        self._vote_images(result)
        return result

    def _vote_images(self, result: DiscoveryResult) -> None:
        """Image type = weighted vote of its non-outlier regions (weighing each by its
        uncalibrated ``region_vote``); all-outlier images are outliers themselves."""
        analysis = result.analysis
        # a re-vote (after new types or labels) starts afresh: no stale outlier flags
        result.image_type[:] = NO_TYPE
        result.image_confidence[:] = 0.0
        result.image_outlier[:] = False
        ids = list(result.type_ids)
        col = {t: j for j, t in enumerate(ids)}
        onehot = np.zeros((len(result.region_type), len(ids)), np.float32)
        calibrated = np.zeros_like(onehot)
        for r, t in enumerate(result.region_type):
            if t != NO_TYPE:
                onehot[r, col[int(t)]] = result.region_vote[r]
                calibrated[r, col[int(t)]] = result.region_confidence[r]
        weights = region_weights(
            [r.area for r in analysis.regions], [r.score for r in analysis.regions]
        )
        votes = image_votes(onehot, weights, analysis.region_image, analysis.n_images)
        shares = image_votes(calibrated, weights, analysis.region_image, analysis.n_images)
        has_region = np.zeros(analysis.n_images, bool)
        has_region[analysis.region_image] = True
        total = votes.sum(axis=1)
        for i in range(analysis.n_images):
            if not analysis.is_anomalous[i] or not has_region[i]:
                continue
            if total[i] <= 0:
                result.image_outlier[i] = True
                continue
            j = int(votes[i].argmax())
            result.image_type[i] = ids[j]
            # the weighted mean over all of the image's regions of (calibrated confidence if
            # the region has the winning type, else 0): agreement and confidence in one number
            result.image_confidence[i] = float(shares[i, j])

    def _empty_result(self, analysis: BatchAnalysis) -> DiscoveryResult:
        n = analysis.n_images
        d = self.prototypes.shape[1]  # the size this model embeds at (a loaded one: its own)
        t = analysis.tokens.grid[0] * analysis.tokens.grid[1]
        return DiscoveryResult(
            analysis=analysis,
            embeddings=np.zeros((0, d), np.float32),
            attention=np.zeros((0, t), np.float32),
            region_type=np.zeros(0, np.int64),
            region_confidence=np.zeros(0, np.float32),
            region_outlier=np.zeros(0, bool),
            region_similarity=np.zeros(0, np.float32),
            region_vote=np.zeros(0, np.float32),
            image_type=np.full(n, NO_TYPE, np.int64),
            image_confidence=np.zeros(n, np.float32),
            image_outlier=np.zeros(n, bool),
            type_ids=self.type_ids.copy(),
            prototypes=self.prototypes.copy(),
            new_type_ids=[],
            nearest_type=np.full(n, NO_TYPE, np.int64),
        )

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        """One ``.npz``: detector arrays, prior mask, references, head weights, prototypes."""
        det = self._require_detector()
        arrays: dict[str, np.ndarray] = {}
        det_meta = None
        if det.is_fitted:
            det_arrays, det_meta = det.to_arrays()
            arrays.update({f"detector.{k}": v for k, v in det_arrays.items()})
        for i, ref in enumerate(self.references):
            arrays[f"reference.{i}"] = ref
        arrays["reference_descriptors"] = self.reference_descriptors
        head_shape = None
        if self.head is not None:
            for name, tensor in self.head.state_dict().items():
                arrays[f"head.{name}"] = tensor.detach().cpu().numpy()
            head_shape = [
                int(self.head.pool.norm.normalized_shape[0]),
                int(self.head.prototypes.shape[0]),
            ]
        arrays["type_ids"] = self.type_ids
        arrays["prototypes"] = self.prototypes
        arrays["thresholds"] = self.thresholds
        if self.context_means is not None:
            for name, values in self.context_means.to_arrays().items():
                arrays[f"context_mean.{name}"] = values
        meta = {
            "kind": MODEL_KIND,
            "format_version": MODEL_FORMAT_VERSION,
            "config": json.loads(self.config.to_json()),
            "detector": det_meta,
            "n_references": len(self.references),
            "reference_index": list(self.reference_index),
            "head_shape": head_shape,
            "value_range": list(self.value_range) if self.value_range else None,
            "confidence_temperature": self.temperature,
        }
        return write_model(path, arrays, meta)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device | None = None) -> "DiscoveryModel":
        """Load a model written by :meth:`save`; another kind or version is a clear error."""
        arrays, meta = read_model(path)
        check_model_meta(
            meta,
            MODEL_KIND,
            MODEL_FORMAT_VERSION,
            source=str(path),
            what="a discovery model",
            again="run discover again",
            hint=" (write one with protoatlas discover --save-model)",
        )
        config = ProtoAtlasConfig.from_dict(meta["config"])
        if "context_weight" not in meta["config"].get("discovery", {}):
            # saved before the image context: it embeds, and stores, as it did then
            config = config.with_overrides(discovery={"context_weight": 0.0})
        model = cls(config, device=device)
        det_arrays = {k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith("detector.")}
        model.detector = (
            PatchCoreDetector(config, device=model.device)
            if meta["detector"] is None
            else PatchCoreDetector.from_arrays(
                det_arrays, meta["detector"], device=model.device, source=str(path)
            )
        )
        model.references = [arrays[f"reference.{i}"] for i in range(meta["n_references"])]
        # older models: which fitted normal each reference is was not kept
        model.reference_index = list(meta.get("reference_index") or [-1] * len(model.references))
        model.reference_descriptors = arrays["reference_descriptors"]
        if model.references:
            model.prior.fit(model.references)
        if meta["head_shape"] is not None:
            channels, k = meta["head_shape"]
            model.head = model._new_head(channels, k)
            state = {
                k.split(".", 1)[1]: torch.from_numpy(v)
                for k, v in arrays.items()
                if k.startswith("head.")
            }
            model.head.load_state_dict(state)
            model.head.eval()
        model.type_ids = arrays["type_ids"].astype(np.int64)
        model.prototypes = arrays["prototypes"].astype(np.float32)
        model.thresholds = arrays["thresholds"].astype(np.float32)
        context = {
            k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith("context_mean.")
        }
        # models saved before the image context embed with the head alone
        model.context_means = ContextMeans.from_arrays(context) if context else None
        model.value_range = tuple(meta["value_range"]) if meta["value_range"] else None
        # models saved before calibration report at the configured temperature
        model.temperature = float(
            meta.get("confidence_temperature", config.discovery.confidence_temperature)
        )
        return model


def _check_batch(det: PatchCoreDetector, n: int, maps: Sequence[np.ndarray] | None) -> None:
    """The batch of :meth:`DiscoveryModel.analyse` can be analysed (else DiscoveryError)."""
    if n == 0:
        raise DiscoveryError("the batch holds no usable image")
    if maps is None and not det.is_fitted:
        raise DiscoveryError(
            "this model has no fitted detector (it was made from given "
            "anomaly maps): give the maps of the new images too"
        )
    if maps is not None and len(maps) != n:
        raise DiscoveryError(f"{len(maps)} anomaly maps for {n} images")


def _flag_images(
    det: PatchCoreDetector, scores: np.ndarray, external: bool
) -> tuple[np.ndarray, float | None]:
    """Which images the detector flags, and the floor of MEBin's range (its threshold)."""
    if not external:
        threshold = det.threshold if det.threshold is not None else float("inf")
        return scores > threshold, (threshold if np.isfinite(threshold) else None)
    # no calibrated threshold: MEBin decides (no stable component = normal)
    return np.ones(len(scores), dtype=bool), None


def semi_supervised_kmeans(
    emb: np.ndarray, labels: np.ndarray, centres: np.ndarray, iterations: int
) -> np.ndarray:
    """GCD's semi-supervised k-means on unit vectors: labelled rows stay in their class
    (0..n_known-1), unlabelled rows go to the nearest centre, known or novel; centres are
    the members' means. Unlabelled regions that belong to a known type thus join it instead
    of keeping a novel prototype alive; novel centres left empty keep their last position
    (and lose their type when nothing is assigned to them after training)."""
    centres = normalise(centres)
    free = labels < 0
    for _ in range(iterations):
        assigned = np.where(free, (emb @ centres.T).argmax(axis=1), labels)
        new = centres.copy()
        for k in range(len(centres)):
            members = emb[assigned == k]
            if len(members):
                new[k] = members.mean(axis=0)
        new = normalise(new)
        if np.allclose(new, centres, atol=1e-6):
            break
        centres = new
    return centres


class _Iter:
    """Iterate a lazily indexed sequence."""

    def __init__(self, seq: Sequence[np.ndarray]) -> None:
        self.seq = seq

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self.seq[i] for i in range(len(self.seq)))


def _external_map(amap: np.ndarray, shape: tuple[int, int], index: int) -> np.ndarray:
    arr: np.ndarray = np.asarray(amap, dtype=np.float32)
    if arr.ndim != 2 or not np.isfinite(arr).all():
        raise DiscoveryError(f"anomaly map {index} must be a finite 2-D array, got {arr.shape}")
    if arr.shape != shape:
        arr = cv2.resize(arr, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    return arr
