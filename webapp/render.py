"""Pictures for the review screens: region crops with the anomaly overlay, heat maps,
region masks and the object prior. Pure numpy/PIL over the storage read API.

Crops are cached as JPEG files under ``<workspace>/webcache/crops/`` (regions never change
their pixels, so a region id is a stable cache key); the most recent decoded images, maps
and image details are kept in small in-memory LRU caches.
"""

from __future__ import annotations

import colorsys
import io
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

if TYPE_CHECKING:
    from protoatlas.service import WorkspaceService


log = logging.getLogger(__name__)

CROP_SIDE = 160
#: Image-detail pictures of smaller images are enlarged (integer factor) to about this side.
DETAIL_MIN_SIDE = 384
THUMB_SIDE = 96
#: The viewer's outlines are one layer pixel wide per this many pixels of its longer side.
OUTLINE_PER_PX = 256
#: Qualitative palette (Tableau 20 without the greys); a type keeps its colour by id.
PALETTE = [
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#bcbd22",
    "#17becf",
    "#aec7e8",
    "#ffbb78",
    "#98df8a",
    "#ff9896",
    "#c5b0d5",
    "#c49c94",
    "#f7b6d2",
    "#dbdb8d",
    "#9edae5",
]
UNASSIGNED = "#7f7f7f"


def type_colour(type_id: int | None) -> str:
    """A type's colour: the palette's for the first ones, then distinct hues (golden angle),
    so that colours do not repeat after the palette's length."""
    if type_id is None:
        return UNASSIGNED
    k = int(type_id)
    if 0 <= k < len(PALETTE):
        return PALETTE[k]
    hue = (k * 137.508) % 360
    r, g, b = colorsys.hls_to_rgb(hue / 360, 0.45, 0.65)
    return f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}"


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    h = hex_colour.lstrip("#")
    return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)


def _jet(x: np.ndarray) -> np.ndarray:
    """A jet-like colour map of ``x`` in [0, 1] -> uint8 (..., 3)."""
    x = np.clip(x, 0.0, 1.0)
    r = np.clip(1.5 - np.abs(4 * x - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * x - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * x - 1), 0, 1)
    return (np.stack([r, g, b], axis=-1) * 255).astype(np.uint8)


class _LRU:
    def __init__(self, size: int) -> None:
        self.size = size
        self.data: OrderedDict[Any, Any] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: Any, make: Callable[[], Any]) -> Any:
        with self.lock:
            if key in self.data:
                self.data.move_to_end(key)
                return self.data[key]
        value = make()
        with self.lock:
            self.data[key] = value
            while len(self.data) > self.size:
                self.data.popitem(last=False)
        return value


class Renderer:
    """Renders pictures of one workspace (thread-safe; caches on disk and in memory)."""

    def __init__(self, service: WorkspaceService, cache_dir: str | Path | None = None) -> None:
        self.service = service
        self.cache_dir = Path(cache_dir) if cache_dir else service.root / "webcache"
        (self.cache_dir / "crops").mkdir(parents=True, exist_ok=True)
        screens = service.config.screens
        self.min_crop_side = screens.min_crop_side
        self.overlay_max_side = screens.overlay_max_side
        self.heat_floor = screens.heat_floor
        self._images = _LRU(screens.image_cache)
        self._details = _LRU(screens.detail_cache)
        self._maps = _LRU(screens.map_cache)

    # ----------------------------------------------------------------- sources
    def image(self, image_id: int) -> np.ndarray:
        def load() -> np.ndarray:
            path = self.service.image_path(image_id)
            with Image.open(path) as im:
                return np.asarray(_to_rgb(im))

        return self._images.get(image_id, load)

    def detail(self, image_id: int):
        return self._details.get(image_id, lambda: self.service.image_detail(image_id))

    def heat(self, image_id: int, batch_id: int | None = None) -> np.ndarray | None:
        """The anomaly map at the image's size, scaled to [0, 1] (None when not stored)."""

        def load() -> np.ndarray | None:
            d = self.detail(image_id)
            memberships = [b for b in d.batches if batch_id is None or b.batch_id == batch_id]
            if not memberships:
                return None
            m = memberships[-1]
            amap = self.service.anomaly_map(m.batch_id, image_id)
            if amap is None:
                return None
            amap = np.asarray(amap, dtype=np.float32)
            if amap.shape != (d.height, d.width):
                amap = np.asarray(
                    Image.fromarray(amap, mode="F").resize((d.width, d.height), Image.BILINEAR)
                )
            lo, hi = float(np.percentile(amap, 50)), float(amap.max())
            return np.clip((amap - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(amap)

        return self._maps.get((image_id, batch_id), load)

    def region_mask(self, image_id: int, region_id: int) -> np.ndarray | None:
        for r in self.detail(image_id).regions:
            if r.id == region_id and r.mask is not None:
                return self.service.region_mask(r.mask).astype(bool)
        return None

    # ----------------------------------------------------------------- crops
    def crop_path(self, region_id: int, image_id: int, box: tuple[int, int, int, int]) -> Path:
        """JPEG of the region with context, anomaly overlay and the region's outline."""
        path = self.cache_dir / "crops" / f"{int(region_id)}.jpg"
        if path.is_file():
            return path
        picture = self.crop_image(region_id, image_id, box)
        tmp = path.with_suffix(f".{threading.get_ident()}.tmp")
        picture.save(tmp, "JPEG", quality=88)
        tmp.replace(path)
        return path

    def crop_image(
        self, region_id: int, image_id: int, box: tuple[int, int, int, int]
    ) -> Image.Image:
        rgb = self.image(image_id)
        h, w = rgb.shape[:2]
        top, left, bottom, right = (int(v) for v in box)
        cy, cx = (top + bottom) / 2, (left + right) / 2
        side = max(bottom - top, right - left) * 1.6
        side = int(min(max(side, self.min_crop_side, 0.25 * min(h, w)), max(h, w)))
        y0 = int(np.clip(cy - side / 2, 0, max(h - side, 0)))
        x0 = int(np.clip(cx - side / 2, 0, max(w - side, 0)))
        y1, x1 = min(y0 + side, h), min(x0 + side, w)
        crop = rgb[y0:y1, x0:x1].astype(np.float32)
        heat = self.heat(image_id)
        if heat is not None:
            hc = heat[y0:y1, x0:x1]
            alpha = (0.5 * np.clip((hc - 0.3) / 0.7, 0, 1))[..., None]
            crop = crop * (1 - alpha) + _jet(hc).astype(np.float32) * alpha
        picture = Image.fromarray(crop.clip(0, 255).astype(np.uint8))
        mask = self.region_mask(image_id, region_id)
        if mask is not None:
            outline = _outline(mask[y0:y1, x0:x1])
            arr = np.asarray(picture).copy()
            arr[outline] = (255, 235, 59)
            picture = Image.fromarray(arr)
        else:
            ImageDraw.Draw(picture).rectangle(
                [left - x0, top - y0, right - x0 - 1, bottom - y0 - 1], outline=(255, 235, 59)
            )
        return picture.resize((CROP_SIDE, CROP_SIDE), Image.LANCZOS)

    def thumb_bytes(self, region_id: int, image_id: int, box: tuple[int, int, int, int]) -> bytes:
        """Small JPEG of the crop (for cards and map hovers)."""

        def make() -> Image.Image:
            with Image.open(self.crop_path(region_id, image_id, box)) as im:
                return im.resize((THUMB_SIDE, THUMB_SIDE), Image.LANCZOS)

        return _cached_jpeg(self.cache_dir / "crops" / f"{int(region_id)}_t.jpg", make, 82)

    def image_thumb_bytes(self, image_id: int) -> bytes:
        """Small JPEG of a whole image (the Browse grid), its longer side ``THUMB_SIDE``."""

        def make() -> Image.Image:
            with Image.open(self.service.image_path(image_id)) as im:
                small = _to_rgb(im)
            small.thumbnail((THUMB_SIDE * 2, THUMB_SIDE * 2), Image.LANCZOS)
            return small

        return _cached_jpeg(self.cache_dir / "images" / f"{int(image_id)}.jpg", make, 82)

    # ----------------------------------------------------------------- viewer layers
    def full_bytes(self, image_id: int) -> bytes:
        """The whole image at its full resolution as JPEG (the viewer's base layer)."""

        def make() -> Image.Image:
            with Image.open(self.service.image_path(image_id)) as im:
                return _to_rgb(im)

        # no chroma halving: this is the close look
        return _cached_jpeg(self.cache_dir / "full" / f"{int(image_id)}.jpg", make, 92, 0)

    def _layer_size(self, image_id: int) -> tuple[int, int, float]:
        """(width, height, scale) of the viewer's overlay layers for this image."""
        d = self.detail(image_id)
        longest = max(d.width, d.height)
        # small images: an integer enlargement, so that outlines and labels stay sharp
        scale = min(
            max(1.0, float(np.ceil(2 * DETAIL_MIN_SIDE / longest))), self.overlay_max_side / longest
        )
        return max(1, round(d.width * scale)), max(1, round(d.height * scale)), scale

    def heat_layer_bytes(self, image_id: int) -> bytes:
        """PNG (RGBA) of the anomaly map in the jet colours, clear where the map is low
        (below ``heat_floor``); fully clear when the image has no stored map."""
        w, h, _ = self._layer_size(image_id)
        rgba = np.zeros((h, w, 4), np.uint8)
        heat = self.heat(image_id)
        if heat is not None:
            if heat.shape != (h, w):
                heat = np.asarray(
                    Image.fromarray(heat.astype(np.float32), mode="F").resize(
                        (w, h), Image.BILINEAR
                    )
                )
            rgba[..., :3] = _jet(heat)
            alpha = np.clip((heat - self.heat_floor) / (1 - self.heat_floor), 0, 1)
            rgba[..., 3] = (255 * alpha).astype(np.uint8)
        return _png(rgba)

    def outline_layer_bytes(self, image_id: int) -> bytes:
        """PNG (RGBA) of every region's outline in its type's colour (a box where a region
        has no mask) with its id and type, clear elsewhere."""
        w, h, scale = self._layer_size(image_id)
        rgba = np.zeros((h, w, 4), np.uint8)
        d = self.service.image_detail(image_id)  # fresh: types change with every action
        for r in d.regions:
            if r.mask is None:
                continue
            m = self.service.region_mask(r.mask).astype(bool)
            if m.shape != (h, w):
                m = np.asarray(Image.fromarray(m).resize((w, h), Image.NEAREST))
            colour = _rgb(UNASSIGNED if r.is_normal else type_colour(r.type_id))
            # a line about 3 screen pixels wide at fit, and a dark rim outside it that keeps
            # it visible on any grey
            k = max(2, round(max(w, h) / OUTLINE_PER_PX))
            edge = m & ~_grow(m, k, shrink=True)
            rgba[_grow(m, k) & ~m] = (0, 0, 0, 200)
            rgba[edge] = (*colour, 255)
        picture = Image.fromarray(rgba, mode="RGBA")
        draw = ImageDraw.Draw(picture)
        try:
            font = ImageFont.load_default(size=max(11, min(h, w) // 24))
        except TypeError:  # Pillow < 10.1
            font = ImageFont.load_default()
        for r in d.regions:
            t, left, b, right = (round(v * scale) for v in r.box)
            colour = _rgb(UNASSIGNED if r.is_normal else type_colour(r.type_id))
            if r.mask is None:
                draw.rectangle([left, t, right - 1, b - 1], outline=(*colour, 255), width=2)
            label = "normal" if r.is_normal else (r.type_name or "unassigned")
            draw.text(
                (left + 3, t + 2),
                f"#{r.id} {label}",
                fill=(255, 255, 255, 255),
                font=font,
                stroke_width=2,
                stroke_fill=(0, 0, 0, 255),
            )
        return _png(np.asarray(picture))

    # ----------------------------------------------------------------- image detail
    def detail_views(
        self,
        image_id: int,
        batch_id: int | None = None,
        prior: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> dict[str, np.ndarray | None]:
        """original, heat (overlay), regions (coloured masks + boxes), prior (overlay)."""
        rgb = self.image(image_id)
        h0, w0 = rgb.shape[:2]
        f = max(1, int(np.ceil(DETAIL_MIN_SIDE / max(h0, w0))))  # small images: enlarge
        if f > 1:
            rgb = np.asarray(Image.fromarray(rgb).resize((w0 * f, h0 * f), Image.LANCZOS))
        out: dict[str, np.ndarray | None] = {"original": rgb}
        heat = self.heat(image_id, batch_id)
        if heat is not None and f > 1:
            heat = np.asarray(
                Image.fromarray(heat.astype(np.float32), mode="F").resize(
                    (w0 * f, h0 * f), Image.BILINEAR
                )
            )
        if heat is None:
            out["heat"] = None
        else:
            alpha = (0.35 + 0.5 * heat)[..., None]
            out["heat"] = (rgb * (1 - alpha) + _jet(heat) * alpha).clip(0, 255).astype(np.uint8)
        d = self.service.image_detail(image_id)  # fresh: types change with every action
        canvas = (rgb.astype(np.float32) * 0.45).astype(np.uint8)
        picture = Image.fromarray(canvas)
        arr = np.asarray(picture).copy()
        for r in d.regions:
            if batch_id is not None and r.batch_id != batch_id:
                continue
            colour = np.array(_rgb(UNASSIGNED if r.is_normal else type_colour(r.type_id)))
            if r.mask is not None:
                m = self.service.region_mask(r.mask).astype(bool)
                if f > 1:
                    m = np.kron(m, np.ones((f, f), dtype=bool))
                arr[m] = (0.35 * arr[m] + 0.65 * colour).astype(np.uint8)
        picture = Image.fromarray(arr)
        draw = ImageDraw.Draw(picture)
        try:
            font = ImageFont.load_default(size=max(11, rgb.shape[0] // 28))
        except TypeError:  # Pillow < 10.1
            font = ImageFont.load_default()
        for r in d.regions:
            if batch_id is not None and r.batch_id != batch_id:
                continue
            t, l, b, rr = (v * f for v in r.box)
            colour = _rgb(UNASSIGNED if r.is_normal else type_colour(r.type_id))
            draw.rectangle([l, t, rr - 1, b - 1], outline=colour, width=max(1, rgb.shape[0] // 200))
            label = "normal" if r.is_normal else (r.type_name or "unassigned")
            draw.text(
                (l + 3, t + 2),
                f"#{r.id} {label}",
                fill=(255, 255, 255),
                font=font,
                stroke_width=2,
                stroke_fill=(0, 0, 0),
            )
        out["regions"] = np.asarray(picture)
        if prior is None:
            out["prior"] = None
        else:
            try:
                obj = np.asarray(prior(self.image(image_id))).astype(bool)
                if f > 1:
                    obj = np.kron(obj, np.ones((f, f), dtype=bool))
            except Exception:  # the prior is an optional picture, never an error page
                log.warning("object prior of image %s failed", image_id, exc_info=True)
                obj = None
            if obj is None or obj.shape != rgb.shape[:2]:
                out["prior"] = None
            else:
                tint = np.array([46, 160, 67], dtype=np.float32)
                p = rgb.astype(np.float32)
                p[obj] = 0.5 * p[obj] + 0.5 * tint
                p[~obj] *= 0.35
                p[_outline(obj)] = (255, 255, 255)
                out["prior"] = p.clip(0, 255).astype(np.uint8)
        return out


def _cached_jpeg(
    path: Path, make: Callable[[], Image.Image], quality: int, subsampling: int = -1
) -> bytes:
    """The JPEG at ``path``, or ``make()`` saved there first (atomically: a temporary file
    per thread, then a rename, so a reader never sees half a picture)."""
    if path.is_file():
        return path.read_bytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    make().save(buf, "JPEG", quality=quality, subsampling=subsampling)
    data = buf.getvalue()
    tmp = path.with_suffix(f".{threading.get_ident()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return data


def _png(rgba: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgba, mode="RGBA").save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float32)
        hi = 4095.0 if arr.max() <= 4095 else 65535.0
        return Image.fromarray((arr / hi * 255).clip(0, 255).astype(np.uint8)).convert("RGB")
    return im.convert("RGB")


def _grow(mask: np.ndarray, k: int, shrink: bool = False) -> np.ndarray:
    """``mask`` grown (or, with ``shrink``, eroded) by ``k`` px (4-neighbourhood steps)."""
    m = mask.astype(bool)
    for _ in range(k):
        g = m.copy()
        if shrink:
            g[1:, :] &= m[:-1, :]
            g[:-1, :] &= m[1:, :]
            g[:, 1:] &= m[:, :-1]
            g[:, :-1] &= m[:, 1:]
        else:
            g[1:, :] |= m[:-1, :]
            g[:-1, :] |= m[1:, :]
            g[:, 1:] |= m[:, :-1]
            g[:, :-1] |= m[:, 1:]
        m = g
    return m


def _outline(mask: np.ndarray) -> np.ndarray:
    if mask.size == 0:
        return mask
    m = mask.astype(bool)
    inner = m.copy()
    inner[1:, :] &= m[:-1, :]
    inner[:-1, :] &= m[1:, :]
    inner[:, 1:] &= m[:, :-1]
    inner[:, :-1] &= m[:, 1:]
    edge = m & ~inner
    # thicken to 2 px so the outline survives the resize to the crop size
    thick = edge.copy()
    thick[1:, :] |= edge[:-1, :]
    thick[:, 1:] |= edge[:, :-1]
    return thick
