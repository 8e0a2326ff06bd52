"""Persistence: one DuckDB workspace per data set (see ``storage.workspace``).

``storage`` never imports torch, gradio, ``protoatlas`` or ``webapp``; it depends on
numpy and duckdb only. Typical use::

    from storage import Workspace, BatchIngest, ImageIn
    with Workspace.open("protoatlas-data", "bottles") as ws:
        batch_id = ws.ingest_batch(BatchIngest(name="line 3", images=[...], ...))
        types = ws.list_types()

A damaged database file raises :class:`DamagedWorkspaceError` at open;
``Workspace.restore(home, name)`` rebuilds it from the newest snapshot
(see ``storage.snapshots``).
"""

from storage.config import StorageConfig
from storage.doctor import doctor, is_sound
from storage.errors import (
    ConflictError,
    DamagedWorkspaceError,
    DiskFullError,
    NotFoundError,
    SchemaError,
    StorageError,
    ValidationError,
    WorkspaceLockedError,
)
from storage.models import (
    AssignmentsIn,
    AuditEntry,
    BatchImageInfo,
    BatchInfo,
    BatchIngest,
    ImageDetail,
    ImageIn,
    ImportReport,
    Member,
    ModelVersion,
    ModelVersionIn,
    NewType,
    Problem,
    PrototypeIn,
    RegionIn,
    RegionInfo,
    RegionsIn,
    Suggestion,
    SuggestionIn,
    TypeSummary,
)
from storage.png16 import decode_map, encode_map
from storage.removal import BatchDeleted
from storage.review import UNDOABLE as UNDOABLE_ACTIONS
from storage.rle import decode_rle, encode_rle, rle_area, rle_from_json, rle_to_json
from storage.schema import LATEST as SCHEMA_VERSION
from storage.snapshots import LostEntry, RestoreResult, SnapshotInfo
from storage.workspace import (
    Workspace,
    check_workspace_name,
    default_home,
    workspace_names,
    workspace_snapshots,
)

__all__ = [
    "DiskFullError",
    "AssignmentsIn",
    "AuditEntry",
    "BatchDeleted",
    "BatchImageInfo",
    "BatchInfo",
    "BatchIngest",
    "ConflictError",
    "DamagedWorkspaceError",
    "ImageDetail",
    "ImageIn",
    "ImportReport",
    "LostEntry",
    "Member",
    "ModelVersion",
    "ModelVersionIn",
    "NewType",
    "NotFoundError",
    "Problem",
    "PrototypeIn",
    "RegionIn",
    "RegionInfo",
    "RegionsIn",
    "RestoreResult",
    "SCHEMA_VERSION",
    "SchemaError",
    "SnapshotInfo",
    "StorageConfig",
    "StorageError",
    "Suggestion",
    "SuggestionIn",
    "TypeSummary",
    "ValidationError",
    "Workspace",
    "WorkspaceLockedError",
    "decode_map",
    "decode_rle",
    "UNDOABLE_ACTIONS",
    "check_workspace_name",
    "default_home",
    "workspace_names",
    "workspace_snapshots",
    "doctor",
    "encode_map",
    "encode_rle",
    "is_sound",
    "rle_area",
    "rle_from_json",
    "rle_to_json",
]
