"""The service layer: every workflow the CLI and the web app run.

* :mod:`.detection` -- fit the detector, score a folder, heat maps (``protoatlas detect``);
* :mod:`.discovery` -- the ``discover`` / ``assign`` runs over folders;
* :mod:`.labels` -- labels files and matching their entries to image names;
* :mod:`.workspace` -- :class:`WorkspaceService`, the workflows on a stored workspace
  (ingest a batch -> engine -> persist -> suggest, every reviewer action, answers,
  retraining, export), assembled from :mod:`.core`, :mod:`.reads`, :mod:`.actions`,
  :mod:`.questions`, :mod:`.answers` and :mod:`.retrain`;
* :mod:`.suggestions` -- the active-learning question strategies (pure computation);
* :mod:`.background` -- retraining in a worker thread after answers;
* :mod:`.recovery` -- a damaged database: list the snapshots, restore one
  (``protoatlas restore``).

Callers (``protoatlas.cli``, ``webapp``) import from here: the workspace's domain types and
errors are re-exported so that they never import ``storage`` themselves.
"""

from protoatlas.service.answer_format import Answer
from protoatlas.service.background import BackgroundRetrainer
from protoatlas.service.recovery import RestoreReport, restore_workspace, snapshots_of
from protoatlas.service.region_table import RegionTable, region_table
from protoatlas.service.workspace import UploadReport, WorkspaceService, persist_run
from storage import (
    UNDOABLE_ACTIONS,
    AuditEntry,
    BatchInfo,
    ConflictError,
    DamagedWorkspaceError,
    ImageDetail,
    Member,
    NotFoundError,
    RegionInfo,
    SnapshotInfo,
    StorageError,
    Suggestion,
    TypeSummary,
    ValidationError,
    WorkspaceLockedError,
    check_workspace_name,
    default_home,
    workspace_names,
)

__all__ = [
    "Answer",
    "AuditEntry",
    "BackgroundRetrainer",
    "BatchInfo",
    "ConflictError",
    "DamagedWorkspaceError",
    "ImageDetail",
    "Member",
    "NotFoundError",
    "RegionInfo",
    "RegionTable",
    "RestoreReport",
    "SnapshotInfo",
    "StorageError",
    "Suggestion",
    "TypeSummary",
    "UNDOABLE_ACTIONS",
    "UploadReport",
    "ValidationError",
    "WorkspaceLockedError",
    "WorkspaceService",
    "check_workspace_name",
    "default_home",
    "persist_run",
    "region_table",
    "restore_workspace",
    "snapshots_of",
    "workspace_names",
]
