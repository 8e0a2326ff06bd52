"""Seeded synthetic industrial-inspection images: normals, labelled defects, pseudo-anomalies.

Three uses: the product's built-in demo batch (:func:`write_mvtec`), test fixtures
(:func:`generate`) and PRN/DRAEM-style pseudo-anomalies for self-supervised training
(:func:`cutpaste`, :func:`perlin_anomaly`).

Scenes (``SynthConfig.kind``):

* ``"texture"``: brushed metal, i.e. filtered noise with an oriented grain plus a soft mottle.
  All samples share one texture *family* (``SynthConfig.family_seed``); a sample is a randomly
  offset crop of it with a small brightness change and sensor noise.
* ``"object"``: a machined disc (bottle top) or a rounded-rectangle part centred on a plain
  dark background, with its own grain, rim and lighting gradient; position, rotation and
  brightness are jittered slightly per sample.

Defects (:data:`DEFECT_TYPES`), each with a bool mask of exactly the pixels it changed
(pixels outside the mask are never modified) whose area is kept within
``[min_area_frac, max_area_frac]`` of the image (default 0.2 %-5 %):

* ``scratch``: thin, long, slightly curved bright line (quadratic Bezier curve).
* ``crack``: dark, jagged, thin random-walk path with one or more branches.
* ``spot``: roundish rust-coloured blob with soft edges and a wobbly outline.
* ``missing``: irregular chunk absent (sharp-edged polygon filled with background colour);
  on objects it is a bite out of the edge.
* ``fold``: tapered band with a bright side and a dark side meeting at a sharp crease line.

Determinism: every random draw comes from the ``numpy.random.Generator`` passed in (or one
derived from ``seed`` by :class:`numpy.random.SeedSequence`); the same seed gives
byte-identical arrays. No global random state is touched.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from engine.synth_surfaces import PAINTERS as _SURFACE_PAINTERS
from engine.synth_surfaces import PCB_DEFECTS, TILE_DEFECTS
from engine.synth_surfaces import RENDERERS as _SURFACE_RENDERERS

DEFECT_TYPES: tuple[str, ...] = ("scratch", "crack", "spot", "missing", "fold")
SCENE_KINDS: tuple[str, ...] = ("texture", "object", "pcb", "tile")
#: Grayscale kinds: written as one-channel PNGs.
GRAY_KINDS: tuple[str, ...] = ("pcb", "tile")
#: Defect types of each scene kind (``pcb`` and ``tile``: :mod:`engine.synth_surfaces`).
KIND_DEFECTS: dict[str, tuple[str, ...]] = {
    "texture": DEFECT_TYPES,
    "object": DEFECT_TYPES,
    "pcb": PCB_DEFECTS,
    "tile": TILE_DEFECTS,
}
_ALL_DEFECTS: tuple[str, ...] = tuple(dict.fromkeys(DEFECT_TYPES + PCB_DEFECTS + TILE_DEFECTS))
OBJECT_SHAPES: tuple[str, ...] = ("disc", "rounded_rect")
GOOD = "good"

RGB = tuple[int, int, int]
FloatRange = tuple[float, float]

# Seed-sequence stream ids: train normals, test normals and each defect type get
# independent random streams, so changing one count never changes the other samples.
_STREAM_TRAIN = 0
_STREAM_NORMAL = 1
_STREAM_DEFECT_BASE = 100

_UINT8_MAX = 255.0
# cv2 drawing with sub-pixel precision: coordinates are multiplied by 2**_DRAW_SHIFT.
_DRAW_SHIFT = 4
# Points per drawn curve (scratch Bezier).
_CURVE_POINTS = 64


@dataclass(frozen=True)
class SynthConfig:
    """Every parameter of the generator, with its default. Lengths given as ``*_frac`` are
    fractions of the image's shorter side; ``*_px`` widths are for a 256 px image and scale
    with the shorter side (see ``reference_side``)."""

    # ---- scene ---------------------------------------------------------------------------
    #: Image size as (height, width) in pixels; non-square is fine.
    size: tuple[int, int] = (256, 256)
    #: When set, ((h_min, h_max), (w_min, w_max)): every sample draws its own size in these
    #: inclusive ranges (``size`` is then only the nominal size).
    size_range: tuple[tuple[int, int], tuple[int, int]] | None = None
    #: ``"object"`` (part on a dark background) or ``"texture"`` (full-frame surface).
    kind: str = "object"
    #: Object outline for ``kind="object"``: ``"disc"`` (bottle top) or ``"rounded_rect"``.
    object_shape: str = "disc"
    #: Seed of the texture family shared by all samples (grain pattern).
    family_seed: int = 1234
    #: Background colour (object scenes) and fill colour of ``missing`` defects.
    background_rgb: RGB = (22, 24, 28)
    #: Mean surface colour of the object / texture.
    surface_rgb: RGB = (168, 171, 178)
    #: Shorter side at which ``*_px`` widths hold; widths scale by ``min(size) / this``.
    reference_side: int = 256

    # ---- surface texture -----------------------------------------------------------------
    #: Direction of the brushed grain, degrees.
    grain_angle_deg: float = 25.0
    #: Gaussian sigma along / across the grain (px) of the filtered noise.
    grain_sigma_along: float = 10.0
    grain_sigma_across: float = 0.8
    #: Relative brightness amplitude (std) of the grain.
    grain_amplitude: float = 0.06
    #: Sigma (px) and relative amplitude of the low-frequency mottle.
    mottle_sigma: float = 24.0
    mottle_amplitude: float = 0.03
    #: Std of per-pixel sensor noise, grey levels.
    sensor_noise: float = 1.5

    # ---- per-sample variation of normals --------------------------------------------------
    #: Relative brightness jitter: gain drawn uniformly in ``1 +- this``.
    brightness_jitter: float = 0.03
    #: Max texture phase shift (px) in each direction.
    texture_offset_px: int = 6
    #: Max object position jitter (px) in each direction.
    position_jitter_px: float = 3.0
    #: Max object rotation jitter, degrees.
    rotation_jitter_deg: float = 4.0

    # ---- object geometry and shading ------------------------------------------------------
    #: Disc radius (or rectangle half-height) as a fraction of the shorter side.
    object_size_frac: float = 0.36
    #: Rounded rectangle: half-width / half-height, and corner radius / half-height.
    rect_aspect: float = 1.3
    rect_corner_frac: float = 0.3
    #: Width of the darker rim, as a fraction of the object radius, and its relative shade.
    rim_width_frac: float = 0.09
    rim_shade: float = 0.78
    #: Disc machining rings: period (px) and relative amplitude.
    ring_period_px: float = 9.0
    ring_amplitude: float = 0.025
    #: Relative brightness change across the object from the top-left light.
    light_gradient: float = 0.08

    # ---- defects: common ------------------------------------------------------------------
    #: Allowed defect mask area as a fraction of the image (inclusive).
    min_area_frac: float = 0.002
    max_area_frac: float = 0.05
    #: Defect centres keep at least this distance (px) from the object / image edge.
    edge_margin_px: float = 10.0
    #: Redraws allowed to meet the area range (a defect clipped by the object edge, say).
    max_attempts: int = 30
    #: Anti-aliased line pixels with coverage below this are left untouched (not in the mask).
    line_alpha_threshold: float = 0.25

    # ---- scratch --------------------------------------------------------------------------
    scratch_length_frac: FloatRange = (0.25, 0.5)
    #: Max sideways bow of the curve as a fraction of its length.
    scratch_bend_frac: float = 0.12
    scratch_width_px: float = 2.0
    scratch_rgb: RGB = (246, 246, 240)
    scratch_strength: float = 0.85

    # ---- crack ----------------------------------------------------------------------------
    crack_length_frac: FloatRange = (0.25, 0.42)
    #: Random-walk step as a fraction of the shorter side, and heading jitter (radians, std).
    crack_step_frac: float = 0.02
    crack_jag_rad: float = 0.55
    crack_width_px: float = 2.0
    #: Number of side branches (inclusive range) and their length relative to the main path.
    crack_branches: tuple[int, int] = (1, 3)
    crack_branch_frac: FloatRange = (0.25, 0.5)
    #: Angle of a branch away from the main direction, radians.
    crack_branch_angle_rad: FloatRange = (0.5, 1.2)
    crack_rgb: RGB = (28, 24, 22)
    crack_strength: float = 0.9

    # ---- spot -----------------------------------------------------------------------------
    spot_radius_frac: FloatRange = (0.035, 0.065)
    #: Minor/major axis ratio range of the blob.
    spot_aspect: FloatRange = (0.65, 1.0)
    #: Relative radius wobble of the outline.
    spot_wobble: float = 0.12
    #: Soft edge: full colour inside ``1 - soft``, fading to zero at ``1 + soft`` (radii).
    spot_softness: float = 0.3
    spot_rgb: RGB = (150, 82, 36)
    spot_strength: float = 0.9
    #: Relative brightness variation inside the blob.
    spot_texture: float = 0.12

    # ---- missing --------------------------------------------------------------------------
    missing_radius_frac: FloatRange = (0.05, 0.085)
    #: Polygon vertex count (inclusive range) and radial jitter of the vertices.
    missing_vertices: tuple[int, int] = (7, 12)
    missing_radius_jitter: float = 0.3

    # ---- fold -----------------------------------------------------------------------------
    fold_length_frac: FloatRange = (0.3, 0.5)
    fold_width_frac: FloatRange = (0.045, 0.07)
    #: Relative brightness change at the crease (bright side +, dark side -).
    fold_strength: float = 0.5
    #: The dark side is this much stronger than the bright side.
    fold_dark_ratio: float = 1.2
    #: Fraction of the length over which each end fades out.
    fold_taper_frac: float = 0.25
    #: Shading below this relative level is left untouched (not in the mask).
    fold_threshold: float = 0.06

    def __post_init__(self) -> None:
        height, width = self.size
        if height < 16 or width < 16:
            raise ValueError(f"SynthConfig.size must be at least 16x16, got {self.size}")
        if self.kind not in SCENE_KINDS:
            raise ValueError(f"SynthConfig.kind must be one of {SCENE_KINDS}, got {self.kind!r}")
        if self.object_shape not in OBJECT_SHAPES:
            raise ValueError(f"SynthConfig.object_shape must be one of {OBJECT_SHAPES}")
        if not 0.0 < self.min_area_frac < self.max_area_frac <= 1.0:
            raise ValueError("SynthConfig needs 0 < min_area_frac < max_area_frac <= 1")

    @property
    def short_side(self) -> int:
        """The shorter image side in pixels."""
        return min(self.size)

    @property
    def px_scale(self) -> float:
        """Factor applied to ``*_px`` widths for this image size."""
        return self.short_side / self.reference_side


@dataclass
class SynthSample:
    """One generated image with its ground truth."""

    #: (H, W, 3) uint8 RGB image.
    image: np.ndarray
    #: (H, W) bool defect mask (all False for ``"good"``).
    mask: np.ndarray
    #: ``"good"`` or one of :data:`DEFECT_TYPES`.
    label: str
    #: Position within its label group (the file number in :func:`write_mvtec`).
    index: int


# =============================================================================================
# Small numeric helpers
# =============================================================================================


def _to_uint8(image: np.ndarray) -> np.ndarray:
    """Round and clip a float image to uint8."""
    return np.clip(np.rint(image), 0, _UINT8_MAX).astype(np.uint8)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    """Hermite smoothstep of ``x`` clipped to [0, 1]."""
    t = np.clip(x, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _uniform(rng: np.random.Generator, bounds: FloatRange) -> float:
    """One uniform draw in ``[bounds[0], bounds[1])``."""
    return float(rng.uniform(bounds[0], bounds[1]))


def _stream_rng(seed: int, stream: int, index: int) -> np.random.Generator:
    """Independent generator for sample ``index`` of ``stream`` under ``seed``."""
    return np.random.default_rng(np.random.SeedSequence([seed, stream, index]))


def _defect_stream(defect_type: str) -> int:
    """Stream id of a defect type (fixed by name, not by position in ``types``)."""
    return _STREAM_DEFECT_BASE + _ALL_DEFECTS.index(defect_type)


def _sample_config(cfg: SynthConfig, rng: np.random.Generator) -> SynthConfig:
    """``cfg`` with this sample's own size when ``cfg.size_range`` is set."""
    if cfg.size_range is None:
        return cfg
    (h0, h1), (w0, w1) = cfg.size_range
    size = (int(rng.integers(h0, h1 + 1)), int(rng.integers(w0, w1 + 1)))
    return dataclasses.replace(cfg, size=size)


def kind_config(kind: str, **overrides) -> SynthConfig:
    """A :class:`SynthConfig` with the usual settings of ``kind``: ``pcb`` crops are 128 px
    with tiny defects; ``tile`` images draw sizes like magnetic-tile crops (222-403 x
    103-632 px) and allow large low-contrast defects."""
    defaults: dict[str, object] = {"kind": kind}
    if kind == "pcb":
        defaults.update(size=(128, 128), min_area_frac=0.0003, max_area_frac=0.01)
    elif kind == "tile":
        defaults.update(
            size=(300, 300),
            size_range=((222, 403), (103, 632)),
            min_area_frac=0.0004,
            max_area_frac=0.15,
        )
    defaults.update(overrides)
    return SynthConfig(**defaults)  # type: ignore[arg-type]


def _sensor_noise(rng: np.random.Generator, shape: tuple[int, ...], cfg: SynthConfig) -> np.ndarray:
    """Gaussian sensor noise of the given shape, in grey levels."""
    return rng.normal(0.0, cfg.sensor_noise, shape).astype(np.float32)


# =============================================================================================
# Normal scenes
# =============================================================================================


def _unit_std(field: np.ndarray) -> np.ndarray:
    """Zero-mean, unit-std copy of ``field`` (unchanged if constant)."""
    centred = field - field.mean()
    std = float(centred.std())
    return centred / std if std > 0 else centred


@functools.lru_cache(maxsize=8)
def _family_texture(cfg: SynthConfig) -> np.ndarray:
    """The shared relative-brightness texture (square float32, read-only) of the family.

    Oriented grain (anisotropic Gaussian-filtered noise, rotated to ``grain_angle_deg``) plus
    a low-frequency mottle. Large enough for any offset crop and any rotated object lookup.
    """
    height, width = cfg.size
    side = int(math.ceil(math.hypot(height, width))) + 2 * cfg.texture_offset_px + 8
    big = int(math.ceil(side * math.sqrt(2.0))) + 2
    rng = np.random.default_rng(cfg.family_seed)
    noise = rng.standard_normal((big, big)).astype(np.float32)
    grain = cv2.GaussianBlur(
        noise,
        (0, 0),
        sigmaX=cfg.grain_sigma_along,
        sigmaY=cfg.grain_sigma_across,
        borderType=cv2.BORDER_REFLECT,
    )
    centre = (big / 2.0, big / 2.0)
    rot = cv2.getRotationMatrix2D(centre, cfg.grain_angle_deg, 1.0)
    grain = cv2.warpAffine(
        grain, rot, (big, big), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
    )
    start = (big - side) // 2
    grain = grain[start : start + side, start : start + side]
    mottle_noise = rng.standard_normal((side, side)).astype(np.float32)
    mottle = cv2.GaussianBlur(
        mottle_noise, (0, 0), sigmaX=cfg.mottle_sigma, borderType=cv2.BORDER_REFLECT
    )
    texture = (
        cfg.grain_amplitude * _unit_std(grain) + cfg.mottle_amplitude * _unit_std(mottle)
    ).astype(np.float32)
    texture.setflags(write=False)
    return texture


def _render_texture_scene(rng: np.random.Generator, cfg: SynthConfig) -> np.ndarray:
    """Float (H, W, 3) brushed-metal surface: offset crop of the family texture."""
    height, width = cfg.size
    texture = _family_texture(cfg)
    max_off = 2 * cfg.texture_offset_px
    oy, ox = (int(v) for v in rng.integers(0, max_off + 1, size=2))
    crop = texture[oy : oy + height, ox : ox + width]
    gain = 1.0 + rng.uniform(-cfg.brightness_jitter, cfg.brightness_jitter)
    surface = np.asarray(cfg.surface_rgb, np.float32) * np.float32(gain)
    return surface * (1.0 + crop)[..., None] + _sensor_noise(rng, (height, width, 3), cfg)


def _object_signed_distance(
    u: np.ndarray, v: np.ndarray, radius: float, cfg: SynthConfig
) -> np.ndarray:
    """Signed distance (px, negative inside) to the object outline in object coordinates."""
    if cfg.object_shape == "disc":
        return np.hypot(u, v) - radius
    half_w, half_h = radius * cfg.rect_aspect, radius
    corner = radius * cfg.rect_corner_frac
    qx = np.abs(u) - half_w + corner
    qy = np.abs(v) - half_h + corner
    outside = np.hypot(np.maximum(qx, 0.0), np.maximum(qy, 0.0))
    inside = np.minimum(np.maximum(qx, qy), 0.0)
    return outside + inside - corner


def _render_object_scene(
    rng: np.random.Generator, cfg: SynthConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Float (H, W, 3) object on background, and the bool object support."""
    height, width = cfg.size
    jitter = cfg.position_jitter_px
    cy = (height - 1) / 2.0 + rng.uniform(-jitter, jitter)
    cx = (width - 1) / 2.0 + rng.uniform(-jitter, jitter)
    angle = math.radians(rng.uniform(-cfg.rotation_jitter_deg, cfg.rotation_jitter_deg))
    gain = 1.0 + rng.uniform(-cfg.brightness_jitter, cfg.brightness_jitter)
    phase = rng.uniform(-cfg.texture_offset_px, cfg.texture_offset_px, size=2)

    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    dx, dy = xx - np.float32(cx), yy - np.float32(cy)
    cos_a, sin_a = np.float32(math.cos(angle)), np.float32(math.sin(angle))
    u = cos_a * dx + sin_a * dy
    v = -sin_a * dx + cos_a * dy
    radius = cfg.object_size_frac * cfg.short_side
    sdist = _object_signed_distance(u, v, radius, cfg)
    alpha = np.clip(0.5 - sdist, 0.0, 1.0)

    texture = _family_texture(cfg)
    mid = texture.shape[0] / 2.0
    grain = cv2.remap(
        texture,
        u + np.float32(mid + phase[0]),
        v + np.float32(mid + phase[1]),
        interpolation=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REFLECT,
    )
    shade = 1.0 - cfg.light_gradient * (dx + dy) / np.float32(radius * math.sqrt(2.0))
    rim_width = cfg.rim_width_frac * radius
    rim = 1.0 - (1.0 - cfg.rim_shade) * np.clip(sdist + rim_width + 0.5, 0.0, 1.0)
    relief = shade * rim * (1.0 + grain)
    if cfg.object_shape == "disc":
        rings = np.sin(np.hypot(u, v) * np.float32(2.0 * math.pi / cfg.ring_period_px))
        relief = relief * (1.0 + cfg.ring_amplitude * rings)

    surface = np.asarray(cfg.surface_rgb, np.float32) * np.float32(gain) * relief[..., None]
    background = np.asarray(cfg.background_rgb, np.float32)
    image = alpha[..., None] * surface + (1.0 - alpha[..., None]) * background
    image = image + _sensor_noise(rng, (height, width, 3), cfg)
    return image, alpha >= 0.5


def make_scene(rng: np.random.Generator, cfg: SynthConfig) -> tuple[np.ndarray, np.ndarray]:
    """A normal image (H, W, 3 uint8) and its bool object mask (all True for textures)."""
    if cfg.kind in _SURFACE_RENDERERS:
        image = _SURFACE_RENDERERS[cfg.kind](rng, cfg.size)
        support = np.ones(cfg.size, dtype=bool)
    elif cfg.kind == "texture":
        image = _render_texture_scene(rng, cfg)
        support = np.ones(cfg.size, dtype=bool)
    else:
        image, support = _render_object_scene(rng, cfg)
    return _to_uint8(image), support


def make_normal(rng: np.random.Generator, cfg: SynthConfig) -> np.ndarray:
    """A defect-free (H, W, 3) uint8 RGB image drawn from ``rng``."""
    return make_scene(rng, cfg)[0]


#: Colour distance from the background above which a pixel counts as object.
_OBJECT_COLOUR_DISTANCE = 40.0
#: Morphological clean-up kernel (px) for :func:`estimate_object_mask`.
_OBJECT_CLEANUP_PX = 3


def estimate_object_mask(image: np.ndarray, cfg: SynthConfig) -> np.ndarray:
    """Bool object mask of a synthetic image: pixels far from the background colour.

    All True for texture scenes. Used by :func:`add_defect` when no mask is given.
    """
    if cfg.kind != "object":
        return np.ones(image.shape[:2], dtype=bool)
    diff = image.astype(np.float32) - np.asarray(cfg.background_rgb, np.float32)
    far = (np.linalg.norm(diff, axis=2) > _OBJECT_COLOUR_DISTANCE).astype(np.uint8)
    kernel = np.ones((_OBJECT_CLEANUP_PX, _OBJECT_CLEANUP_PX), np.uint8)
    far = cv2.morphologyEx(far, cv2.MORPH_CLOSE, kernel)
    return cv2.morphologyEx(far, cv2.MORPH_OPEN, kernel).astype(bool)


# =============================================================================================
# Defects
# =============================================================================================


@dataclass(frozen=True)
class _DefectContext:
    """What a defect painter needs: the clean image, where it may go, randomness, config."""

    image: np.ndarray  # float32 (H, W, 3)
    support: np.ndarray  # bool (H, W)
    edge_distance: np.ndarray  # float32 (H, W): px to the nearest non-support pixel / border
    rng: np.random.Generator
    cfg: SynthConfig

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W)."""
        return self.support.shape


def _edge_distance(support: np.ndarray) -> np.ndarray:
    """Distance (px) of each pixel to the closest non-support pixel or the image border."""
    padded = np.pad(support.astype(np.uint8), 1)
    dist = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return dist[1:-1, 1:-1]


def _sample_point(ctx: _DefectContext, low: float, high: float = math.inf) -> np.ndarray:
    """Random (x, y) support pixel whose edge distance lies in [low, high] (relaxed if none)."""
    dist = ctx.edge_distance
    candidates = np.flatnonzero((dist >= low) & (dist <= high))
    if candidates.size == 0:
        candidates = np.flatnonzero(ctx.support)
    flat = int(candidates[ctx.rng.integers(candidates.size)])
    y, x = divmod(flat, ctx.shape[1])
    return np.array([x, y], dtype=np.float64)


def _polyline_alpha(shape: tuple[int, int], paths: Sequence[tuple[np.ndarray, int]]) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of open polylines given as ((N, 2) xy points, width)."""
    canvas = np.zeros(shape, np.uint8)
    scale = 1 << _DRAW_SHIFT
    for points, width in paths:
        pts = np.rint(points * scale).astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(
            canvas,
            [pts],
            False,
            255,
            thickness=max(1, width),
            lineType=cv2.LINE_AA,
            shift=_DRAW_SHIFT,
        )
    return canvas.astype(np.float32) / _UINT8_MAX


def _scaled_width(cfg: SynthConfig, width_px: float) -> int:
    """Integer line width for this image size."""
    return max(1, int(round(width_px * cfg.px_scale)))


def _blend_towards(
    ctx: _DefectContext, alpha: np.ndarray, rgb: RGB, strength: float
) -> tuple[np.ndarray, np.ndarray]:
    """Blend the image towards a colour by ``alpha * strength``; mask where alpha is visible."""
    target = np.asarray(rgb, np.float32)
    weight = (alpha * np.float32(strength))[..., None]
    new = ctx.image + weight * (target - ctx.image)
    return new, alpha >= ctx.cfg.line_alpha_threshold


def _paint_scratch(ctx: _DefectContext) -> tuple[np.ndarray, np.ndarray]:
    """Thin, long, slightly curved bright line (quadratic Bezier)."""
    cfg, rng = ctx.cfg, ctx.rng
    length = _uniform(rng, cfg.scratch_length_frac) * cfg.short_side
    theta = rng.uniform(0.0, math.pi)
    direction = np.array([math.cos(theta), math.sin(theta)])
    normal = np.array([-direction[1], direction[0]])
    centre = _sample_point(ctx, cfg.edge_margin_px)
    bend = rng.uniform(-cfg.scratch_bend_frac, cfg.scratch_bend_frac) * length
    p0 = centre - direction * length / 2.0
    p2 = centre + direction * length / 2.0
    p1 = centre + normal * 2.0 * bend  # the curve's midpoint is offset by ``bend``
    t = np.linspace(0.0, 1.0, _CURVE_POINTS)[:, None]
    points = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
    alpha = _polyline_alpha(ctx.shape, [(points, _scaled_width(cfg, cfg.scratch_width_px))])
    return _blend_towards(ctx, alpha, cfg.scratch_rgb, cfg.scratch_strength)


def _random_walk(
    rng: np.random.Generator,
    start: np.ndarray,
    heading: float,
    length: float,
    step: float,
    jag: float,
) -> np.ndarray:
    """(N, 2) points of a jagged walk from ``start`` along ``heading`` for ``length`` px."""
    n_steps = max(2, int(round(length / step)))
    headings = heading + rng.normal(0.0, jag, n_steps)
    steps = step * np.stack([np.cos(headings), np.sin(headings)], axis=1)
    return np.vstack([start, start + np.cumsum(steps, axis=0)])


def _paint_crack(ctx: _DefectContext) -> tuple[np.ndarray, np.ndarray]:
    """Dark, jagged, thin branching path."""
    cfg, rng = ctx.cfg, ctx.rng
    length = _uniform(rng, cfg.crack_length_frac) * cfg.short_side
    step = max(2.0, cfg.crack_step_frac * cfg.short_side)
    theta = rng.uniform(0.0, 2.0 * math.pi)
    centre = _sample_point(ctx, cfg.edge_margin_px)
    start = centre - length / 2.0 * np.array([math.cos(theta), math.sin(theta)])
    main = _random_walk(rng, start, theta, length, step, cfg.crack_jag_rad)
    width = _scaled_width(cfg, cfg.crack_width_px)
    paths = [(main, width)]
    n_branches = int(rng.integers(cfg.crack_branches[0], cfg.crack_branches[1] + 1))
    for _ in range(n_branches):
        origin = main[int(rng.integers(len(main) // 5, len(main)))]
        side = 1.0 if rng.random() < 0.5 else -1.0
        heading = theta + side * _uniform(rng, cfg.crack_branch_angle_rad)
        branch_len = _uniform(rng, cfg.crack_branch_frac) * length
        branch = _random_walk(rng, origin, heading, branch_len, step, cfg.crack_jag_rad)
        paths.append((branch, max(1, width - 1)))
    alpha = _polyline_alpha(ctx.shape, paths)
    return _blend_towards(ctx, alpha, cfg.crack_rgb, cfg.crack_strength)


def _local_coords(
    shape: tuple[int, int], centre: np.ndarray, angle: float
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates rotated into a frame at ``centre`` whose first axis has ``angle``."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    dx, dy = xx - np.float32(centre[0]), yy - np.float32(centre[1])
    cos_a, sin_a = np.float32(math.cos(angle)), np.float32(math.sin(angle))
    return cos_a * dx + sin_a * dy, -sin_a * dx + cos_a * dy


#: Number of angular harmonics (orders 2, 3, 4) that wobble the spot outline.
_SPOT_HARMONICS = (2, 3, 4)
#: Sigma (px at 256) of the mottle inside a spot.
_SPOT_MOTTLE_SIGMA_PX = 2.0


def _paint_spot(ctx: _DefectContext) -> tuple[np.ndarray, np.ndarray]:
    """Roundish rust-coloured blob with soft edges and a wobbly outline."""
    cfg, rng = ctx.cfg, ctx.rng
    radius = _uniform(rng, cfg.spot_radius_frac) * cfg.short_side
    aspect = _uniform(rng, cfg.spot_aspect)
    centre = _sample_point(ctx, max(cfg.edge_margin_px, radius))
    u, v = _local_coords(ctx.shape, centre, rng.uniform(0.0, math.pi))
    dist = np.hypot(u / radius, v / (radius * aspect))
    polar = np.arctan2(v, u)
    wobble = sum(
        rng.uniform(-1.0, 1.0) * np.cos(k * polar + rng.uniform(0, 2 * math.pi))
        for k in _SPOT_HARMONICS
    ) / len(_SPOT_HARMONICS)
    dist = dist / (1.0 + cfg.spot_wobble * wobble)
    soft = cfg.spot_softness
    alpha = _smoothstep((1.0 + soft - dist) / (2.0 * soft)).astype(np.float32)
    mottle = cv2.GaussianBlur(
        rng.standard_normal(ctx.shape).astype(np.float32),
        (0, 0),
        sigmaX=_SPOT_MOTTLE_SIGMA_PX * cfg.px_scale,
    )
    colour = (
        np.asarray(cfg.spot_rgb, np.float32)
        * (1.0 + cfg.spot_texture * _unit_std(mottle))[..., None]
    )
    weight = (alpha * np.float32(cfg.spot_strength))[..., None]
    new = ctx.image + weight * (colour - ctx.image)
    return new, alpha >= cfg.line_alpha_threshold


def _paint_missing(ctx: _DefectContext) -> tuple[np.ndarray, np.ndarray]:
    """Sharp-edged irregular chunk replaced by the background colour (a bite on objects)."""
    cfg, rng = ctx.cfg, ctx.rng
    radius = _uniform(rng, cfg.missing_radius_frac) * cfg.short_side
    if cfg.kind == "object":  # a bite out of the object's edge
        centre = _sample_point(ctx, 0.2 * radius, 0.6 * radius)
    else:  # a hole in the surface
        centre = _sample_point(ctx, max(cfg.edge_margin_px, radius))
    n_vertices = int(rng.integers(cfg.missing_vertices[0], cfg.missing_vertices[1] + 1))
    angles = np.sort(rng.uniform(0.0, 2.0 * math.pi, n_vertices))
    jitter = cfg.missing_radius_jitter
    radii = radius * rng.uniform(1.0 - jitter, 1.0 + jitter, n_vertices)
    polygon = centre + np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    canvas = np.zeros(ctx.shape, np.uint8)
    cv2.fillPoly(canvas, [np.rint(polygon).astype(np.int32)], 1, lineType=cv2.LINE_8)
    mask = canvas.astype(bool)
    fill = np.asarray(cfg.background_rgb, np.float32) + _sensor_noise(rng, (*ctx.shape, 3), cfg)
    new = np.where(mask[..., None], fill, ctx.image)
    return new, mask


def _paint_fold(ctx: _DefectContext) -> tuple[np.ndarray, np.ndarray]:
    """Tapered band: bright side and dark side meeting at a sharp crease line."""
    cfg, rng = ctx.cfg, ctx.rng
    length = _uniform(rng, cfg.fold_length_frac) * cfg.short_side
    half_width = _uniform(rng, cfg.fold_width_frac) * cfg.short_side / 2.0
    centre = _sample_point(ctx, max(cfg.edge_margin_px, half_width))
    along, across = _local_coords(ctx.shape, centre, rng.uniform(0.0, math.pi))
    falloff = np.clip(1.0 - np.abs(across) / half_width, 0.0, 1.0) ** 1.5
    profile = np.where(across < 0, falloff, -cfg.fold_dark_ratio * falloff)
    taper_len = cfg.fold_taper_frac * length
    envelope = _smoothstep((length / 2.0 - np.abs(along)) / taper_len)
    shading = (profile * envelope).astype(np.float32)
    new = ctx.image * (1.0 + cfg.fold_strength * shading)[..., None]
    return new, np.abs(shading) >= cfg.fold_threshold


_PAINTERS: dict[str, Callable[[_DefectContext], tuple[np.ndarray, np.ndarray]]] = {
    "scratch": _paint_scratch,
    "crack": _paint_crack,
    "spot": _paint_spot,
    "missing": _paint_missing,
    "fold": _paint_fold,
}


def add_defect(
    image: np.ndarray,
    defect_type: str,
    rng: np.random.Generator,
    cfg: SynthConfig,
    object_mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Paint one defect onto a copy of ``image``; return (defective image, bool mask).

    The mask is the region the defect changed; pixels outside it equal ``image``. For object
    scenes the defect is clipped to ``object_mask`` (estimated from the image when None).
    Geometry is redrawn until the mask area lies in ``[min_area_frac, max_area_frac]``.

    Raises:
        ValueError: unknown ``defect_type`` or badly shaped input.
        RuntimeError: no draw met the area range within ``cfg.max_attempts``.
    """
    painters = _SURFACE_PAINTERS.get(cfg.kind, _PAINTERS)
    if defect_type not in painters:
        raise ValueError(
            f"unknown defect type {defect_type!r} for kind {cfg.kind!r}; "
            f"expected one of {KIND_DEFECTS[cfg.kind]}"
        )
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    support = (
        estimate_object_mask(image, cfg)
        if object_mask is None
        else np.asarray(object_mask, dtype=bool)
    )
    if support.shape != image.shape[:2] or not support.any():
        raise ValueError("object_mask must be a non-empty (H, W) mask matching the image")
    ctx = _DefectContext(
        image=image.astype(np.float32),
        support=support,
        edge_distance=_edge_distance(support),
        rng=rng,
        cfg=cfg,
    )
    n_pixels = support.size
    for _ in range(cfg.max_attempts):
        new, mask = painters[defect_type](ctx)
        mask &= support
        if cfg.min_area_frac <= mask.sum() / n_pixels <= cfg.max_area_frac:
            return np.where(mask[..., None], _to_uint8(new), image), mask
    raise RuntimeError(
        f"could not place a {defect_type!r} defect within the area range "
        f"in {cfg.max_attempts} attempts (image {image.shape[:2]})"
    )


# =============================================================================================
# Batches and the MVTec layout
# =============================================================================================


def _normals(cfg: SynthConfig, n: int, seed: int, stream: int) -> list[SynthSample]:
    """``n`` good samples from one random stream."""
    samples = []
    for i in range(n):
        rng = _stream_rng(seed, stream, i)
        own = _sample_config(cfg, rng)
        samples.append(SynthSample(make_normal(rng, own), np.zeros(own.size, dtype=bool), GOOD, i))
    return samples


def _defects(cfg: SynthConfig, defect_type: str, n: int, seed: int) -> list[SynthSample]:
    """``n`` samples of one defect type, each on its own fresh normal scene."""
    samples = []
    for i in range(n):
        rng = _stream_rng(seed, _defect_stream(defect_type), i)
        own = _sample_config(cfg, rng)
        clean, support = make_scene(rng, own)
        image, mask = add_defect(clean, defect_type, rng, own, support)
        samples.append(SynthSample(image, mask, defect_type, i))
    return samples


def _check_types(types: Sequence[str] | None, kind: str = "object") -> tuple[str, ...]:
    """Validate a defect-type selection (None: every type of ``kind``)."""
    allowed = KIND_DEFECTS[kind]
    if types is None:
        return allowed
    unknown = [t for t in types if t not in allowed]
    if unknown:
        raise ValueError(f"unknown defect types {unknown}; expected a subset of {allowed}")
    return tuple(types)


def generate(
    cfg: SynthConfig,
    *,
    n_normal: int,
    n_per_type: int,
    types: Sequence[str] | None = None,
    seed: int,
) -> list[SynthSample]:
    """``n_normal`` good samples, then ``n_per_type`` samples of each type in ``types``
    (default: every defect type of ``cfg.kind``).

    Each (seed, label, index) has its own random stream, so e.g. asking for more normals
    leaves the defect samples unchanged.
    """
    samples = _normals(cfg, n_normal, seed, _STREAM_NORMAL)
    for defect_type in _check_types(types, cfg.kind):
        samples.extend(_defects(cfg, defect_type, n_per_type, seed))
    return samples


def _write_png(path: Path, array: np.ndarray, gray: bool = False) -> None:
    """Write an RGB (H, W, 3) or grey (H, W) uint8 array as PNG (``gray``: one channel)."""
    if gray and array.ndim == 3:
        array = np.ascontiguousarray(array[..., 0])
    data = cv2.cvtColor(array, cv2.COLOR_RGB2BGR) if array.ndim == 3 else array
    if not cv2.imwrite(str(path), data):
        raise OSError(f"could not write {path}")


def write_mvtec(
    root: str | os.PathLike[str],
    cfg: SynthConfig | None = None,
    *,
    n_train: int = 60,
    n_test_good: int = 10,
    n_per_type: int = 12,
    types: Sequence[str] | None = None,
    seed: int = 0,
) -> Path:
    """Write a synthetic data set in the MVTec AD layout under ``root``; return ``root``.

    Layout: ``train/good/000.png``, ``test/good/000.png``, ``test/<type>/000.png``,
    ``ground_truth/<type>/000_mask.png`` (0/255) and ``labels.csv`` (``image,label`` with
    paths relative to ``test/``). Train normals, test normals and defects use separate
    random streams of ``seed``. ``cfg`` defaults to ``SynthConfig()`` (object scenes).
    """
    cfg = SynthConfig() if cfg is None else cfg
    types = _check_types(types, cfg.kind)
    gray = cfg.kind in GRAY_KINDS
    root = Path(root)
    train_dir = root / "train" / GOOD
    train_dir.mkdir(parents=True, exist_ok=True)
    for sample in _normals(cfg, n_train, seed, _STREAM_TRAIN):
        _write_png(train_dir / f"{sample.index:03d}.png", sample.image, gray)

    rows: list[tuple[str, str]] = []
    test = generate(cfg, n_normal=n_test_good, n_per_type=n_per_type, types=types, seed=seed)
    for sample in test:
        (root / "test" / sample.label).mkdir(parents=True, exist_ok=True)
        name = f"{sample.index:03d}"
        _write_png(root / "test" / sample.label / f"{name}.png", sample.image, gray)
        rows.append((f"{sample.label}/{name}.png", sample.label))
        if sample.label != GOOD:
            mask_dir = root / "ground_truth" / sample.label
            mask_dir.mkdir(parents=True, exist_ok=True)
            _write_png(mask_dir / f"{name}_mask.png", sample.mask.astype(np.uint8) * 255)

    with open(root / "labels.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(("image", "label"))
        writer.writerows(rows)
    return root


# =============================================================================================
# Pseudo-anomalies for self-supervised training (PRN / DRAEM / CutPaste)
# =============================================================================================


def _fade(t: np.ndarray) -> np.ndarray:
    """Perlin's quintic fade curve 6t^5 - 15t^4 + 10t^3."""
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def perlin_noise(
    shape: tuple[int, int], res: tuple[int, int], rng: np.random.Generator
) -> np.ndarray:
    """Classic 2-D gradient (Perlin) noise, float32 in [0, 1], with ``res`` cells per axis.

    Any shape works (no divisibility needed): pixel ``(y, x)`` samples the lattice at
    ``(y * res[0] / H, x * res[1] / W)``. Random unit gradients sit on the
    ``(res[0] + 1, res[1] + 1)`` lattice corners.
    """
    height, width = shape
    ry, rx = res
    if height < 1 or width < 1 or ry < 1 or rx < 1:
        raise ValueError(f"perlin_noise needs positive shape and res, got {shape}, {res}")
    angles = rng.uniform(0.0, 2.0 * math.pi, (ry + 1, rx + 1))
    grad_x, grad_y = np.cos(angles), np.sin(angles)
    y = np.arange(height) * (ry / height)
    x = np.arange(width) * (rx / width)
    yi, xi = np.floor(y).astype(int), np.floor(x).astype(int)
    yf, xf = (y - yi)[:, None], (x - xi)[None, :]

    def corner(dy: int, dx: int) -> np.ndarray:
        gy = grad_y[(yi + dy)[:, None], (xi + dx)[None, :]]
        gx = grad_x[(yi + dy)[:, None], (xi + dx)[None, :]]
        return gx * (xf - dx) + gy * (yf - dy)

    wy, wx = _fade(yf), _fade(xf)
    top = corner(0, 0) * (1 - wx) + corner(0, 1) * wx
    bottom = corner(1, 0) * (1 - wx) + corner(1, 1) * wx
    noise = top * (1 - wy) + bottom * wy  # in [-sqrt(1/2), sqrt(1/2)]
    return np.clip(noise * math.sqrt(2.0) * 0.5 + 0.5, 0.0, 1.0).astype(np.float32)


#: CutPaste patch area as a fraction of the image, and log-uniform aspect-ratio range.
CUTPASTE_AREA: FloatRange = (0.02, 0.15)
CUTPASTE_ASPECT: FloatRange = (0.3, 3.3)
#: Probability and range (degrees) of rotating the pasted patch.
CUTPASTE_ROTATE_P = 0.5
CUTPASTE_ROTATION_DEG: FloatRange = (-45.0, 45.0)
#: Colour jitter of the patch: relative brightness and contrast range.
CUTPASTE_JITTER = 0.1
#: Perlin lattice resolutions are 2**k for k in this inclusive range (per axis).
PERLIN_RES_EXP: tuple[int, int] = (1, 4)
#: Perlin map threshold (values are in [0, 1], centred on 0.5) for the anomaly mask.
PERLIN_THRESHOLD = 0.62
#: If no draw crosses the threshold, the top fraction of the last map becomes the mask.
PERLIN_FALLBACK_TOP = 0.03
PERLIN_ATTEMPTS = 10
#: Blend weight of the foreign texture inside the mask.
PERLIN_BLEND: FloatRange = (0.3, 1.0)
#: Max relative colour shift per channel of the self-texture.
SELF_TEXTURE_SHIFT = 0.35


def _cutpaste_patch(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A colour-jittered (optionally rotated) rectangular patch and its bool validity mask."""
    height, width = image.shape[:2]
    area = _uniform(rng, CUTPASTE_AREA) * height * width
    aspect = math.exp(rng.uniform(math.log(CUTPASTE_ASPECT[0]), math.log(CUTPASTE_ASPECT[1])))
    ph = int(np.clip(round(math.sqrt(area * aspect)), 1, height - 1))
    pw = int(np.clip(round(math.sqrt(area / aspect)), 1, width - 1))
    y0, x0 = int(rng.integers(0, height - ph + 1)), int(rng.integers(0, width - pw + 1))
    patch: np.ndarray = image[y0 : y0 + ph, x0 : x0 + pw].astype(np.float32)
    gain = 1.0 + rng.uniform(-CUTPASTE_JITTER, CUTPASTE_JITTER, 3)
    contrast = 1.0 + rng.uniform(-CUTPASTE_JITTER, CUTPASTE_JITTER)
    mean = patch.mean(axis=(0, 1))
    patch = _to_uint8(((patch - mean) * contrast + mean) * gain)
    valid: np.ndarray = np.ones((ph, pw), np.uint8)
    if rng.random() < CUTPASTE_ROTATE_P:
        angle = _uniform(rng, CUTPASTE_ROTATION_DEG)
        side_h = int(
            math.ceil(
                abs(ph * math.cos(math.radians(angle))) + abs(pw * math.sin(math.radians(angle)))
            )
        )
        side_w = int(
            math.ceil(
                abs(pw * math.cos(math.radians(angle))) + abs(ph * math.sin(math.radians(angle)))
            )
        )
        if side_h < height and side_w < width:
            rot: np.ndarray = cv2.getRotationMatrix2D((pw / 2.0, ph / 2.0), angle, 1.0)
            rot[:, 2] += ((side_w - pw) / 2.0, (side_h - ph) / 2.0)
            patch = cv2.warpAffine(patch, rot, (side_w, side_h), flags=cv2.INTER_LINEAR)
            valid = cv2.warpAffine(valid, rot, (side_w, side_h), flags=cv2.INTER_NEAREST)
    return patch, valid.astype(bool)


def cutpaste(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """CutPaste: copy a random rectangle (colour-jittered, maybe rotated) elsewhere.

    Returns (new image, bool mask of the pasted pixels); pixels outside the mask are
    unchanged and the mask is never empty.
    """
    height, width = image.shape[:2]
    patch, valid = _cutpaste_patch(image, rng)
    ph, pw = valid.shape
    y0, x0 = int(rng.integers(0, height - ph + 1)), int(rng.integers(0, width - pw + 1))
    if not valid.any():  # degenerate rotation of a tiny patch
        valid[ph // 2, pw // 2] = True
    mask = np.zeros((height, width), dtype=bool)
    mask[y0 : y0 + ph, x0 : x0 + pw] = valid
    out = image.copy()
    out[mask] = patch[valid]
    return out, mask


def _self_texture(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A shuffled, colour-shifted copy of ``image`` (rolled, flipped, channel-scaled)."""
    height, width = image.shape[:2]
    shifted = np.roll(image, (int(rng.integers(height)), int(rng.integers(width))), axis=(0, 1))
    if rng.random() < 0.5:
        shifted = shifted[::-1]
    if rng.random() < 0.5:
        shifted = shifted[:, ::-1]
    shifted = shifted[..., rng.permutation(3)].astype(np.float32)
    gains = 1.0 + rng.uniform(-SELF_TEXTURE_SHIFT, SELF_TEXTURE_SHIFT, 3)
    return shifted * gains


def _noise_texture(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A random colourful Perlin-noise texture, float (H, W, 3) in 0..255."""
    res = (2 ** PERLIN_RES_EXP[1], 2 ** PERLIN_RES_EXP[1])
    channels = [perlin_noise(shape, res, rng) for _ in range(3)]
    return np.stack(channels, axis=2) * _UINT8_MAX


def _perlin_mask(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Thresholded Perlin map at a random resolution; never empty."""
    noise = np.zeros(shape, np.float32)
    low, high = PERLIN_RES_EXP
    for _ in range(PERLIN_ATTEMPTS):
        res = (2 ** int(rng.integers(low, high + 1)), 2 ** int(rng.integers(low, high + 1)))
        noise = perlin_noise(shape, res, rng)
        mask = noise > PERLIN_THRESHOLD
        if mask.any():
            return mask
    return noise >= np.quantile(noise, 1.0 - PERLIN_FALLBACK_TOP)


def perlin_anomaly(
    image: np.ndarray, rng: np.random.Generator, texture: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """DRAEM-style anomaly: blend a foreign texture into a thresholded Perlin-noise region.

    ``texture`` (any size, RGB) is resized to the image; by default it is, with equal odds, a
    shuffled colour-shifted copy of the image or a random Perlin colour-noise texture. The
    texture weight inside the mask is drawn from ``PERLIN_BLEND`` ([0.3, 1)). Returns
    (new image, non-empty bool mask); pixels outside the mask are unchanged.
    """
    height, width = image.shape[:2]
    mask = _perlin_mask((height, width), rng)
    if texture is None:
        source = (
            _self_texture(image, rng)
            if rng.random() < 0.5
            else _noise_texture((height, width), rng)
        )
    else:
        source = np.asarray(texture)
        if source.ndim == 2:
            source = np.repeat(source[..., None], 3, axis=2)
        if source.shape[:2] != (height, width):
            source = cv2.resize(source, (width, height), interpolation=cv2.INTER_LINEAR)
        source = source.astype(np.float32)
    beta = _uniform(rng, PERLIN_BLEND)
    blended = _to_uint8((1.0 - beta) * image.astype(np.float32) + beta * source)
    out = image.copy()
    out[mask] = blended[mask]
    return out, mask
