"""What the screens read from a workspace (types, members, images, maps, batches, history,
exports): thin typed passes to the storage repository, so that the web app and the CLI never
hold a :class:`storage.Workspace` themselves."""

from __future__ import annotations

import io
import os
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from protoatlas.service.core import ServiceCore
from storage import (
    AuditEntry,
    BatchInfo,
    ImageDetail,
    Member,
    RegionInfo,
    Suggestion,
    TypeSummary,
    decode_rle,
)

#: A page size above any type's size: :meth:`ReadsMixin.all_members` reads them all.
ALL_MEMBERS = 10**7


class ReadsMixin(ServiceCore):
    """Reads and exports (a part of :class:`~protoatlas.service.workspace.WorkspaceService`)."""

    @property
    def name(self) -> str:
        """The workspace's name."""
        return self.ws.name

    def batches(self) -> list[BatchInfo]:
        return self.ws.batches()

    def list_types(self, include_merged: bool = False) -> list[TypeSummary]:
        return self.ws.list_types(include_merged=include_merged)

    def get_type(self, type_id: int) -> TypeSummary:
        return self.ws.get_type(int(type_id))

    def type_members(
        self,
        type_id: int,
        limit: int = 50,
        offset: int = 0,
        order: Literal["confidence", "borderline"] = "confidence",
    ) -> list[Member]:
        return self.ws.type_members(int(type_id), limit=limit, offset=offset, order=order)

    def all_members(self, type_id: int) -> list[Member]:
        """Every member of a type (a split, "Select all"), best first."""
        return self.ws.type_members(int(type_id), limit=ALL_MEMBERS)

    def representatives(self, type_id: int, n: int = 8) -> list[Member]:
        return self.ws.representatives(int(type_id), n=n)

    def regions_for_batch(self, batch_id: int, with_masks: bool = False) -> list[RegionInfo]:
        return self.ws.regions_for_batch(int(batch_id), with_masks=with_masks)

    def batch_images(self, batch_id: int) -> list[tuple[int, str, float | None, bool | None]]:
        """(image id, name in the batch, anomaly score, flagged) of every image of a batch."""
        return self.ws.batch_images(int(batch_id))

    def image_detail(self, image_id: int) -> ImageDetail:
        return self.ws.image_detail(int(image_id))

    def image_path(self, image_id: int) -> Path:
        return self.ws.image_path(int(image_id))

    def anomaly_map(self, batch_id: int, image_id: int) -> np.ndarray | None:
        """The stored anomaly map (float32, at the image's size or the stored scale)."""
        return self.ws.anomaly_map(int(batch_id), int(image_id))

    @staticmethod
    def region_mask(rle: dict) -> np.ndarray:
        """A region's stored mask (run-length encoded) as a bool array (H, W)."""
        return decode_rle(rle)

    def embeddings(self) -> tuple[np.ndarray, np.ndarray]:
        """(region ids (N,), embeddings (N, D)) of the latest model version."""
        return self.ws.embeddings()

    def open_suggestions(self, limit: int | None = None) -> list[Suggestion]:
        return self.ws.open_suggestions(limit=limit)

    def audit(
        self,
        actor: str | None = None,
        action: str | None = None,
        type_id: int | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[AuditEntry]:
        return self.ws.audit(
            actor=actor, action=action, type_id=type_id, limit=limit, offset=offset
        )

    # ------------------------------------------------------------------ exports
    # Every region-level export takes a scope: ``batch_id`` (one batch; None: every batch)
    # and ``type_ids`` (those types; None: every type the format holds). An unknown id is a
    # NotFoundError naming it, a type the format does not hold (a proposed one in a
    # confirmed-only export, a merged one) a ValidationError; a scope that selects nothing
    # gives a valid, empty file.
    def export_assignments(
        self,
        path: str | os.PathLike[str],
        fmt: Literal["csv", "parquet"] = "csv",
        level: Literal["region", "image"] = "region",
        batch_id: int | None = None,
        type_ids: Sequence[int] | None = None,
    ) -> Path:
        return self.ws.export_assignments(path, fmt, level, batch_id=batch_id, type_ids=type_ids)

    def export_coco(
        self,
        path: str | os.PathLike[str],
        batch_id: int | None = None,
        types: Literal["confirmed", "all"] = "confirmed",
        type_ids: Sequence[int] | None = None,
    ) -> Path:
        """COCO JSON of the confirmed types (``types="all"``: the proposed ones too)."""
        return self.ws.export_coco(path, batch_id, types, type_ids=type_ids)

    def export_label_studio(
        self,
        path: str | os.PathLike[str],
        batch_id: int | None = None,
        types: Literal["confirmed", "all"] = "confirmed",
        type_ids: Sequence[int] | None = None,
    ) -> Path:
        """Label Studio tasks: confirmed types as annotations, proposed ones as predictions."""
        return self.ws.export_label_studio(path, batch_id, types, type_ids=type_ids)

    def export_yolo(
        self,
        path: str | os.PathLike[str],
        batch_id: int | None = None,
        types: Literal["confirmed", "all"] = "confirmed",
        type_ids: Sequence[int] | None = None,
    ) -> Path:
        """A zip of images, YOLO label files and classes.txt."""
        return self.ws.export_yolo(path, batch_id, types, type_ids=type_ids)

    def export_crops(
        self,
        path: str | os.PathLike[str],
        types: Literal["confirmed", "all"] = "confirmed",
        batch_id: int | None = None,
        type_ids: Sequence[int] | None = None,
    ) -> Path:
        """A zip with one folder per type (its name) holding every member's crop as PNG
        (``<region id>.png``, the region's box in the original image): the confirmed types,
        or with ``types="all"`` the proposed ones too (an empty zip when the scope holds
        no region)."""
        from PIL import Image

        regions = self.ws.crop_regions(batch_id, types, type_ids)  # checks the scope first
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        with zipfile.ZipFile(tmp, "w") as z:
            for region_id, image_id, type_id, type_name, box in regions:
                top, left, bottom, right = box
                with Image.open(self.ws.image_path(image_id)) as im:
                    crop = im.crop((left, top, right, bottom))
                    buf = io.BytesIO()
                    crop.save(buf, format="PNG")
                folder = _safe_folder(type_name, type_id)
                z.writestr(f"{folder}/{region_id}.png", buf.getvalue())
        os.replace(tmp, out)
        return out

    def export_audit(
        self, path: str | os.PathLike[str], fmt: Literal["csv", "json"] = "json"
    ) -> Path:
        return self.ws.export_audit(path, fmt)


def _safe_folder(name: str, type_id: int) -> str:
    """A type's folder name in an export: its name with path characters replaced (and its id
    when nothing is left)."""
    clean = re.sub(r"[^\w.\- ]+", "_", name).strip(" .") or f"type-{type_id}"
    return clean
