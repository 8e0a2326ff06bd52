"""Data classes in and out of the workspace API (numpy arrays for vectors and columns),
and the converters from DuckDB rows to the output classes that more than one module reads.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeAlias

import numpy as np

TypeStatus = Literal["proposed", "confirmed", "rejected", "merged"]
Source = Literal["model", "reviewer"]
SuggestionStatus = Literal["open", "answered", "skipped", "stale"]
Severity = Literal["error", "warning"]

Progress: TypeAlias = Callable[[str, int, int], None]
"""Progress callback of a long write: ``progress(stage, done, total)``.

``stage`` names the step (``"files"``, ``"regions"``, ``"embeddings"``,
``"assignments"``); ``done`` of ``total`` items of that stage are written so far.
"""

# A mask ("MaskLike" below) is a boolean (h, w) array over the whole image, a COCO RLE
# dict or its JSON text. A type reference ("TypeRef") in ingest/retrain input is a
# ``NewType.key`` (str) or an existing type id (int).


# ----------------------------------------------------------------------------- inputs
@dataclass
class ImageIn:
    """One image of an uploaded batch."""

    #: Path relative to the upload (folder or zip member); unique within the batch.
    name: str
    width: int
    height: int
    #: The file's bytes, or ``path`` to read them from (exactly one of the two).
    data: bytes | None = None
    path: str | Path | None = None
    #: sha256 of the bytes; computed when absent, verified when given.
    sha256: str | None = None
    #: File extension; taken from ``name`` when absent.
    ext: str | None = None
    anomaly_score: float | None = None
    is_anomalous: bool | None = None
    #: Float 2-D anomaly map with the image's aspect ratio (any resolution, e.g. the
    #: detector's working size; displays resize it); stored as a 16-bit PNG blob (png16.py).
    anomaly_map: np.ndarray | None = None


@dataclass
class RegionIn:
    """One anomalous region (row form; see :class:`RegionsIn` for the columnar form)."""

    #: Index of its image in ``BatchIngest.images``.
    image: int
    #: (top, left, bottom, right) in original pixels; bottom/right exclusive.
    box: tuple[int, int, int, int]
    anomaly_score: float | None = None
    mask: Any = None  # MaskLike
    area: int | None = None
    embedding: np.ndarray | None = None


@dataclass
class RegionsIn:
    """Regions of a batch, column-wise (fast for 10^5..10^6 regions)."""

    image: np.ndarray  # (n,) int, index into BatchIngest.images
    boxes: np.ndarray  # (n, 4) int: top, left, bottom, right
    anomaly_score: np.ndarray | None = None  # (n,) float
    masks: Sequence[Any] | None = None  # n MaskLike values
    area: np.ndarray | None = None  # (n,) int; default: mask area, else box area
    embeddings: np.ndarray | None = None  # (n, d) float

    def __len__(self) -> int:
        return int(np.asarray(self.image).shape[0])

    @classmethod
    def from_records(cls, records: Sequence[RegionIn]) -> "RegionsIn":
        n = len(records)
        emb = None
        if n and any(r.embedding is not None for r in records):
            if any(r.embedding is None for r in records):
                raise ValueError("either every region has an embedding or none has")
            emb = np.stack([np.asarray(r.embedding, dtype=np.float32) for r in records])
        return cls(
            image=np.array([r.image for r in records], dtype=np.int64),
            boxes=np.array([r.box for r in records], dtype=np.int64).reshape(n, 4),
            anomaly_score=np.array(
                [np.nan if r.anomaly_score is None else r.anomaly_score for r in records],
                dtype=np.float64,
            ),
            masks=[r.mask for r in records],
            area=None
            if any(r.area is None for r in records)
            else np.array([r.area for r in records], dtype=np.int64),
            embeddings=emb,
        )


@dataclass
class NewType:
    """A type proposed by the model; ``key`` is a temporary reference used in the same call."""

    key: str
    #: ``None``: the next free automatic name ``T<n>``.
    name: str | None = None


@dataclass
class AssignmentsIn:
    """Model assignments, column-wise.

    ``regions`` holds indices into ``BatchIngest.regions`` for :meth:`ingest_batch` and
    region ids for :meth:`apply_retrain`. ``types[i]`` is a ``NewType.key`` (str), an
    existing type id (int; a merged type is followed to the type it was merged into) or
    ``None`` (unassigned).
    """

    regions: np.ndarray
    types: Sequence[Any]
    confidence: np.ndarray
    #: :meth:`ingest_batch` only: per entry, whether the region is stored as judged normal
    #: (a candidate region of an image the detector passed, with no type); None: none is.
    is_normal: np.ndarray | None = None


@dataclass
class PrototypeIn:
    type: Any  # TypeRef (not None)
    vector: np.ndarray
    n_members: int


@dataclass
class ModelVersionIn:
    """A model produced by discovery or retraining."""

    kind: str  # e.g. "discover", "retrain"
    model: bytes | None = None  # the saved engine model (stored as a blob)
    ext: str = "npz"
    metrics: Mapping[str, Any] = field(default_factory=dict)
    parent: int | None = None  # None: the latest model version, if any


@dataclass
class BatchIngest:
    """Everything one upload produces; :meth:`Workspace.ingest_batch` stores it atomically."""

    name: str
    images: Sequence[ImageIn]
    regions: RegionsIn | Sequence[RegionIn] = field(default_factory=list)
    params: Mapping[str, Any] = field(default_factory=dict)
    #: A new model version, the id of an existing one (a batch sorted by it), or None.
    model: ModelVersionIn | int | None = None
    new_types: Sequence[NewType] = field(default_factory=list)
    assignments: AssignmentsIn | None = None
    prototypes: Sequence[PrototypeIn] = field(default_factory=list)


@dataclass
class SuggestionIn:
    kind: str  # e.g. "merge", "name", "borderline"
    target: Mapping[str, Any]  # JSON-able, e.g. {"type_ids": [3, 7]}
    score: float = 0.0
    reason: str = ""


# ---------------------------------------------------------------------------- outputs
@dataclass(frozen=True)
class TypeSummary:
    id: int
    name: str
    status: str
    origin: str
    version: int
    n_regions: int
    n_images: int
    mean_confidence: float | None
    merged_into: int | None
    created_at: dt.datetime
    updated_at: dt.datetime


@dataclass(frozen=True)
class Member:
    region_id: int
    image_id: int
    batch_id: int
    image_name: str
    box: tuple[int, int, int, int]
    area: int
    anomaly_score: float | None
    confidence: float | None
    source: str
    similarity: float | None = None  # cosine to the type prototype (representatives only)


@dataclass(frozen=True)
class RegionInfo:
    id: int
    batch_id: int
    image_id: int
    box: tuple[int, int, int, int]
    area: int
    anomaly_score: float | None
    mask: dict[str, Any] | None  # COCO RLE dict
    type_id: int | None
    type_name: str | None
    type_status: str | None
    source: str | None
    confidence: float | None
    is_normal: bool


@dataclass(frozen=True)
class BatchImageInfo:
    batch_id: int
    batch_name: str
    name: str
    anomaly_score: float | None
    is_anomalous: bool | None
    map_path: Path | None
    map_min: float | None
    map_max: float | None


@dataclass(frozen=True)
class ImageDetail:
    id: int
    sha256: str
    ext: str
    width: int
    height: int
    path: Path
    batches: list[BatchImageInfo]
    regions: list[RegionInfo]


@dataclass(frozen=True)
class BatchInfo:
    id: int
    name: str
    params: dict[str, Any]
    created_at: dt.datetime
    model_version: int | None
    n_images: int
    n_regions: int


@dataclass(frozen=True)
class ModelVersion:
    id: int
    parent: int | None
    kind: str
    created_at: dt.datetime
    blob_path: Path | None
    metrics: dict[str, Any]


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    ts: dt.datetime
    actor: str
    action: str
    target: dict[str, Any]
    type_ids: list[int]
    before: dict[str, Any]
    after: dict[str, Any]
    hash: str | None


@dataclass(frozen=True)
class Suggestion:
    id: int
    kind: str
    target: dict[str, Any]
    score: float | None
    reason: str | None
    status: str
    answer: str | None
    answered_by: str | None
    answered_at: dt.datetime | None
    created_at: dt.datetime
    model_version: int | None


@dataclass(frozen=True)
class ImportReport:
    rows: int
    images_matched: int
    regions_assigned: int
    regions_normal: int
    types_created: list[int]
    unknown_images: list[str]
    images_without_regions: list[str]


@dataclass(frozen=True)
class Problem:
    """One finding of :func:`storage.doctor.doctor`; ``error`` makes a workspace unsound."""

    severity: Severity
    what: str
    where: str

    def __str__(self) -> str:
        return f"{self.severity}: {self.what} ({self.where})"


# ------------------------------------------------------------------- rows -> outputs
def optional_float(value: Any) -> float | None:
    """A nullable number read from DuckDB as a float (``None`` for NULL and NaN)."""
    return None if value is None or (isinstance(value, float) and np.isnan(value)) else float(value)


def audit_entry(r: Sequence[Any]) -> AuditEntry:
    """An ``audit_log`` row (seq, ts, actor, action, target, type_ids, before, after, hash)."""
    return AuditEntry(
        seq=r[0],
        ts=r[1],
        actor=r[2],
        action=r[3],
        target=json.loads(r[4]),
        type_ids=list(r[5]),
        before=json.loads(r[6]),
        after=json.loads(r[7]),
        hash=r[8],
    )


def suggestion(r: Sequence[Any]) -> Suggestion:
    """A ``suggestions`` row (id, kind, target, score, reason, status, answer, answered_by,
    answered_at, created_at, model_version)."""
    return Suggestion(
        id=r[0],
        kind=r[1],
        target=json.loads(r[2]),
        score=optional_float(r[3]),
        reason=r[4],
        status=r[5],
        answer=r[6],
        answered_by=r[7],
        answered_at=r[8],
        created_at=r[9],
        model_version=r[10],
    )
