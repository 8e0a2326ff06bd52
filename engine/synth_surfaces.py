"""Two more synthetic kinds, modelled on the real data the first detector failed on.

* ``pcb``: binary line patterns (printed-circuit crops, 128 px): traces on lanes with 45-degree
  jogs, pads and vias; defects are tiny (a few to a few dozen pixels): ``open`` (a trace cut),
  ``short`` (a thin bridge between traces), ``mousebite`` (bites out of a trace edge),
  ``spur`` (a thin protrusion), ``copper`` (a stray blob), ``pinhole`` (a hole in copper).
* ``tile``: grayscale surfaces of varying size and aspect under uneven light (magnetic-tile
  style); defects ``blowhole`` (a small dark pit with a bright rim), ``crack`` (a thin dark
  jagged line), ``fray`` (ragged strands at an edge), ``break`` (a chunk missing at the
  border) and ``uneven`` (a large, low-contrast brightness blotch).

Scene renderers return a float (H, W, 3) image and its support (all True); painters take a
:class:`engine.synth._DefectContext` and return (new float image, bool mask of what changed),
as the painters of :mod:`engine.synth` do. Every draw comes from the generator passed in.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import cv2
import numpy as np

#: Defect types of each kind of this module.
PCB_DEFECTS: tuple[str, ...] = ("open", "short", "mousebite", "spur", "copper", "pinhole")
TILE_DEFECTS: tuple[str, ...] = ("blowhole", "crack", "fray", "break", "uneven")

# ---- pcb geometry at 128 px (scaled with the shorter side) --------------------------------
PCB_REFERENCE_SIDE = 128
PCB_PITCH_PX = 14.0
PCB_WIDTH_PX = (4.0, 6.0)
PCB_LANE_FILL = 0.75
PCB_JOG_P = 0.3
PCB_PAD_P = 0.6
PCB_VIAS = (1, 4)
PCB_COPPER = 255.0
PCB_BOARD = 0.0

# ---- tile appearance at 256 px -------------------------------------------------------------
TILE_REFERENCE_SIDE = 256
TILE_BASE = (95.0, 135.0)
TILE_GRAIN = 6.0
TILE_SPECKLE = 4.0
TILE_LIGHT = 0.18
TILE_GRADIENT = 0.10
TILE_BACKGROUND = 14.0


def _scale(shape: tuple[int, int], reference: int) -> float:
    return min(shape) / reference


# =============================================================================================
# Scenes
# =============================================================================================


def render_pcb(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Float (H, W, 3) binary trace layout (copper 255 on board 0)."""
    h, w = shape
    s = _scale(shape, PCB_REFERENCE_SIDE)
    pitch = PCB_PITCH_PX * s
    width = max(2, int(round(rng.uniform(*PCB_WIDTH_PX) * s)))
    horizontal = rng.random() < 0.5
    extent, across = (w, h) if horizontal else (h, w)
    offset = rng.uniform(0.3, 0.7) * pitch
    lanes = np.arange(offset, across - 0.3 * pitch, pitch)
    canvas = np.zeros((h, w), np.uint8)
    used = set()

    def point(along: float, lane: float) -> tuple[int, int]:
        return (
            (int(round(along)), int(round(lane)))
            if horizontal
            else (int(round(lane)), int(round(along)))
        )

    pad_r = max(2, int(round(width * 1.0)))
    for k, lane in enumerate(lanes):
        if rng.random() > PCB_LANE_FILL:
            continue
        length = rng.uniform(0.35, 1.0) * extent
        a = rng.uniform(-0.1 * extent, extent - length)
        b = a + length
        pts = [point(a, lane)]
        if rng.random() < PCB_JOG_P and k + 1 < len(lanes) and (k + 1) not in used:
            mid = a + rng.uniform(0.3, 0.6) * length
            pts += [point(mid, lane), point(mid + pitch, lanes[k + 1]), point(b, lanes[k + 1])]
            used.add(k + 1)
        else:
            pts.append(point(b, lane))
        used.add(k)
        cv2.polylines(
            canvas,
            [np.array(pts, np.int32).reshape(-1, 1, 2)],
            False,
            1,
            thickness=width,
            lineType=cv2.LINE_8,
        )
        for end in (pts[0], pts[-1]):
            if rng.random() < PCB_PAD_P:
                cv2.circle(canvas, end, pad_r, 1, thickness=-1, lineType=cv2.LINE_8)
    n_vias = int(rng.integers(PCB_VIAS[0], PCB_VIAS[1] + 1))
    free = cv2.distanceTransform((1 - canvas).astype(np.uint8), cv2.DIST_L2, 3)
    for _ in range(n_vias):
        candidates = np.flatnonzero(free.ravel() > pad_r + 3)
        if candidates.size == 0:
            break
        y, x = divmod(int(candidates[rng.integers(candidates.size)]), w)
        cv2.circle(canvas, (x, y), pad_r, 1, thickness=-1, lineType=cv2.LINE_8)
        free = cv2.distanceTransform((1 - canvas).astype(np.uint8), cv2.DIST_L2, 3)
    grey = np.where(canvas > 0, PCB_COPPER, PCB_BOARD).astype(np.float32)
    return np.repeat(grey[..., None], 3, axis=2)


def _perlin(shape: tuple[int, int], res: int, rng: np.random.Generator) -> np.ndarray:
    from engine.synth import perlin_noise

    return perlin_noise(shape, (res, res), rng) * 2.0 - 1.0


def render_tile(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Float (H, W, 3) grey tile surface: grain, speckle, uneven light and a gradient."""
    h, w = shape
    s = _scale(shape, TILE_REFERENCE_SIDE)
    base = rng.uniform(*TILE_BASE)
    grain = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), 0.7 * s)
    speckle = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), 2.0 * s)
    grain = grain / (grain.std() + 1e-6) * TILE_GRAIN
    speckle = speckle / (speckle.std() + 1e-6) * TILE_SPECKLE
    light = 1.0 + TILE_LIGHT * _perlin(shape, int(rng.integers(1, 4)), rng)
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = math.cos(angle) * (xx / w - 0.5) + math.sin(angle) * (yy / h - 0.5)
    light = light * (1.0 + TILE_GRADIENT * 2.0 * ramp)
    grey = (base + grain + speckle) * light
    return np.repeat(grey[..., None].astype(np.float32), 3, axis=2)


# =============================================================================================
# Painters
# =============================================================================================


def _copper(ctx) -> np.ndarray:
    return ctx.image[..., 0] > 127


def _pick(ctx, candidates: np.ndarray) -> tuple[int, int] | None:
    flat = np.flatnonzero(candidates.ravel())
    if flat.size == 0:
        return None
    y, x = divmod(int(flat[ctx.rng.integers(flat.size)]), ctx.shape[1])
    return y, x


def _unchanged(ctx) -> tuple[np.ndarray, np.ndarray]:
    """A copy of the image and an empty defect mask: no place for the defect was found."""
    return ctx.image.copy(), np.zeros(ctx.shape, bool)


def _set(ctx, region: np.ndarray, value: float) -> tuple[np.ndarray, np.ndarray]:
    new = ctx.image.copy()
    new[region] = value
    changed = np.abs(new - ctx.image).max(axis=2) > 0
    return new, changed


def _disk(shape: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def _distances(ctx) -> tuple[np.ndarray, np.ndarray]:
    """(distance of copper pixels to the board, distance of board pixels to copper)."""
    copper = _copper(ctx).astype(np.uint8)
    inside = cv2.distanceTransform(copper, cv2.DIST_L2, 3)
    outside = cv2.distanceTransform(1 - copper, cv2.DIST_L2, 3)
    return inside, outside


def _pcb_s(ctx) -> float:
    return _scale(ctx.shape, PCB_REFERENCE_SIDE)


def _paint_open(ctx):
    inside, _ = _distances(ctx)
    ridge = (inside >= 2) & (inside >= cv2.dilate(inside, np.ones((3, 3))) - 0.01)
    at = _pick(ctx, ridge)
    if at is None:
        return _unchanged(ctx)
    radius = inside[at] + 1.0 + ctx.rng.uniform(0, 1.0) * _pcb_s(ctx)
    return _set(ctx, _disk(ctx.shape, at, radius) & _copper(ctx), 0.0)


def _paint_short(ctx):
    copper = _copper(ctx)
    n, labels = cv2.connectedComponents(copper.astype(np.uint8), connectivity=8)
    _, outside = _distances(ctx)
    s = _pcb_s(ctx)
    width = max(1, int(round(ctx.rng.uniform(1, 2) * s)))
    edge = copper & (cv2.erode(copper.astype(np.uint8), np.ones((3, 3))) == 0)
    for _ in range(20):
        at = _pick(ctx, edge)
        if at is None or n < 3:
            break
        y, x = at
        reach = int(round(PCB_PITCH_PX * s))
        y0, y1 = max(0, y - reach), min(ctx.shape[0], y + reach + 1)
        x0, x1 = max(0, x - reach), min(ctx.shape[1], x + reach + 1)
        window = labels[y0:y1, x0:x1]
        other = (window > 0) & (window != labels[y, x])
        if not other.any():
            continue
        oy, ox = np.nonzero(other)
        d = (oy + y0 - y) ** 2 + (ox + x0 - x) ** 2
        j = int(np.argmin(d))
        canvas = np.zeros(ctx.shape, np.uint8)
        cv2.line(canvas, (x, y), (int(ox[j] + x0), int(oy[j] + y0)), 1, thickness=width)
        return _set(ctx, canvas.astype(bool) & ~copper, PCB_COPPER)
    return _unchanged(ctx)


def _edge_pixels(ctx) -> np.ndarray:
    copper = _copper(ctx).astype(np.uint8)
    return (copper > 0) & (cv2.erode(copper, np.ones((3, 3))) == 0)


def _paint_mousebite(ctx):
    s = _pcb_s(ctx)
    at = _pick(ctx, _edge_pixels(ctx))
    if at is None:
        return _unchanged(ctx)
    region = np.zeros(ctx.shape, bool)
    y, x = at
    for _ in range(int(ctx.rng.integers(2, 4))):
        cy = y + ctx.rng.uniform(-3, 3) * s
        cx = x + ctx.rng.uniform(-3, 3) * s
        region |= _disk(ctx.shape, (cy, cx), ctx.rng.uniform(1.5, 2.5) * s)
    return _set(ctx, region & _copper(ctx), 0.0)


def _paint_spur(ctx):
    s = _pcb_s(ctx)
    at = _pick(ctx, _edge_pixels(ctx))
    if at is None:
        return _unchanged(ctx)
    copper = _copper(ctx).astype(np.float32)
    gy = cv2.Sobel(copper, cv2.CV_32F, 0, 1)
    gx = cv2.Sobel(copper, cv2.CV_32F, 1, 0)
    y, x = at
    d = -np.array([gy[y, x], gx[y, x]])
    d = d / (np.linalg.norm(d) + 1e-6)
    d = d + ctx.rng.normal(0, 0.3, 2)
    length = ctx.rng.uniform(3, 7) * s
    end = (int(round(x + d[1] * length)), int(round(y + d[0] * length)))
    canvas = np.zeros(ctx.shape, np.uint8)
    cv2.line(canvas, (x, y), end, 1, thickness=max(1, int(round(ctx.rng.uniform(1, 2) * s))))
    return _set(ctx, canvas.astype(bool) & ~_copper(ctx), PCB_COPPER)


def _paint_copper(ctx):
    s = _pcb_s(ctx)
    _, outside = _distances(ctx)
    at = _pick(ctx, outside >= 5 * s)
    if at is None:
        return _unchanged(ctx)
    region = np.zeros(ctx.shape, bool)
    for _ in range(int(ctx.rng.integers(1, 4))):
        c = (at[0] + ctx.rng.uniform(-2, 2) * s, at[1] + ctx.rng.uniform(-2, 2) * s)
        region |= _disk(ctx.shape, c, ctx.rng.uniform(1.5, 3.0) * s)
    return _set(ctx, region & ~_copper(ctx), PCB_COPPER)


def _paint_pinhole(ctx):
    s = _pcb_s(ctx)
    inside, _ = _distances(ctx)
    radius = ctx.rng.uniform(1.0, 2.0) * s
    at = _pick(ctx, inside >= radius + 1.5)
    if at is None:
        return _unchanged(ctx)
    return _set(ctx, _disk(ctx.shape, at, radius) & _copper(ctx), PCB_BOARD)


def _tile_s(ctx) -> float:
    return _scale(ctx.shape, TILE_REFERENCE_SIDE)


def _shade(ctx, factor: np.ndarray, threshold: float = 0.04) -> tuple[np.ndarray, np.ndarray]:
    """Multiply the image by ``factor`` (H, W); mask where the change is visible."""
    new = ctx.image * factor[..., None]
    return new, np.abs(factor - 1.0) >= threshold


def _paint_blowhole(ctx):
    from engine.synth import _sample_point, _smoothstep

    s = _tile_s(ctx)
    radius = ctx.rng.uniform(3.0, 8.0) * s
    x, y = _sample_point(ctx, radius + 4)
    yy, xx = np.mgrid[0 : ctx.shape[0], 0 : ctx.shape[1]].astype(np.float32)
    r = np.hypot(yy - y, xx - x) / radius
    pit = _smoothstep((1.15 - r) / 0.3) * ctx.rng.uniform(0.45, 0.65)
    rim = np.exp(-((r - 1.15) ** 2) / 0.02) * 0.15
    return _shade(ctx, (1.0 - pit + rim).astype(np.float32), 0.06)


def _dark_paths(ctx, paths, strength: float):
    from engine.synth import _polyline_alpha

    alpha = _polyline_alpha(ctx.shape, paths)
    factor = 1.0 - strength * alpha
    new = ctx.image * factor[..., None]
    return new, alpha >= ctx.cfg.line_alpha_threshold


def _paint_tile_crack(ctx):
    from engine.synth import _random_walk, _sample_point

    s = _tile_s(ctx)
    short = min(ctx.shape)
    length = ctx.rng.uniform(0.2, 0.5) * short
    theta = ctx.rng.uniform(0, 2 * math.pi)
    centre = _sample_point(ctx, 8)
    start = centre - length / 2 * np.array([math.cos(theta), math.sin(theta)])
    walk = _random_walk(ctx.rng, start, theta, length, max(2.0, 0.02 * short), 0.5)
    width = max(1, int(round(ctx.rng.uniform(1.0, 2.0) * s)))
    return _dark_paths(ctx, [(walk, width)], ctx.rng.uniform(0.5, 0.7))


def _paint_fray(ctx):
    from engine.synth import _random_walk

    s = _tile_s(ctx)
    h, w = ctx.shape
    side = int(ctx.rng.integers(4))
    along = ctx.rng.uniform(0.2, 0.8)
    base = {
        0: np.array([along * w, 2.0]),
        1: np.array([along * w, h - 3.0]),
        2: np.array([2.0, along * h]),
        3: np.array([w - 3.0, along * h]),
    }[side]
    inward = {0: math.pi / 2, 1: -math.pi / 2, 2: 0.0, 3: math.pi}[side]
    paths = []
    for _ in range(int(ctx.rng.integers(3, 7))):
        start = base + ctx.rng.uniform(-12, 12, 2) * s
        heading = inward + ctx.rng.uniform(-0.7, 0.7)
        walk = _random_walk(
            ctx.rng, start, heading, ctx.rng.uniform(10, 30) * s, max(1.5, 2.0 * s), 0.6
        )
        paths.append((walk, 1))
    return _dark_paths(ctx, paths, ctx.rng.uniform(0.45, 0.65))


def _paint_break(ctx):
    s = _tile_s(ctx)
    h, w = ctx.shape
    corner = ctx.rng.random() < 0.5
    radius = ctx.rng.uniform(16, 36) * s
    if corner:
        cy, cx = (
            (0.0 if ctx.rng.random() < 0.5 else h - 1.0),
            (0.0 if ctx.rng.random() < 0.5 else w - 1.0),
        )
    else:
        side = int(ctx.rng.integers(4))
        t = ctx.rng.uniform(0.2, 0.8)
        cy, cx = {0: (0.0, t * w), 1: (h - 1.0, t * w), 2: (t * h, 0.0), 3: (t * h, w - 1.0)}[side]
    n = int(ctx.rng.integers(7, 12))
    angles = np.sort(ctx.rng.uniform(0, 2 * math.pi, n))
    radii = radius * ctx.rng.uniform(0.6, 1.3, n)
    poly = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)
    canvas = np.zeros(ctx.shape, np.uint8)
    cv2.fillPoly(canvas, [np.rint(poly).astype(np.int32)], 1)
    region = canvas.astype(bool)
    new = ctx.image.copy()
    new[region] = TILE_BACKGROUND + ctx.rng.normal(0, 1.5, (int(region.sum()), 3))
    return new, region


def _paint_uneven(ctx):
    from engine.synth import _sample_point, _smoothstep

    short = min(ctx.shape)
    radius = ctx.rng.uniform(0.12, 0.25) * short
    x, y = _sample_point(ctx, 4)
    yy, xx = np.mgrid[0 : ctx.shape[0], 0 : ctx.shape[1]].astype(np.float32)
    aspect = ctx.rng.uniform(0.5, 1.0)
    r = np.hypot((yy - y) / aspect, xx - x) / radius
    sign = 1.0 if ctx.rng.random() < 0.4 else -1.0
    blob = _smoothstep((1.2 - r) / 0.6) * sign * ctx.rng.uniform(0.12, 0.2)
    return _shade(ctx, (1.0 + blob).astype(np.float32), 0.04)


#: Painters of this module, by kind and defect type.
PAINTERS: dict[str, dict[str, Callable]] = {
    "pcb": {
        "open": _paint_open,
        "short": _paint_short,
        "mousebite": _paint_mousebite,
        "spur": _paint_spur,
        "copper": _paint_copper,
        "pinhole": _paint_pinhole,
    },
    "tile": {
        "blowhole": _paint_blowhole,
        "crack": _paint_tile_crack,
        "fray": _paint_fray,
        "break": _paint_break,
        "uneven": _paint_uneven,
    },
}
RENDERERS: dict[str, Callable[[np.random.Generator, tuple[int, int]], np.ndarray]] = {
    "pcb": render_pcb,
    "tile": render_tile,
}
