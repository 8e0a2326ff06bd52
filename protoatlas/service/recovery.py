"""Recovering a workspace whose database is damaged: list its snapshots, restore one.

``storage`` writes the snapshots (after each batch and every few reviewer decisions) and
rebuilds the database from one (:meth:`storage.Workspace.restore`, which keeps the damaged
file aside). This module adds what the service owns: the crop tokens of batches the
restored state no longer has are set aside too (a later batch reuses their ids), and the
doctor checks run on the result.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from engine.config import ProtoAtlasConfig
from protoatlas.service.core import TOKENS_DIR
from protoatlas.service.workspace import WorkspaceService
from storage import Problem, RestoreResult, SnapshotInfo, Workspace, workspace_snapshots

__all__ = ["RestoreReport", "restore_workspace", "snapshots_of"]


@dataclass
class RestoreReport:
    """What :func:`restore_workspace` did and found."""

    result: RestoreResult
    #: The doctor's findings on the restored workspace (sound = no error).
    problems: list[Problem]
    #: Crop-token files of batches the snapshot does not hold, moved under ``tokens/``.
    tokens_set_aside: list[Path] = field(default_factory=list)

    @property
    def sound(self) -> bool:
        return not any(p.severity == "error" for p in self.problems)


def snapshots_of(home: str | os.PathLike | None, name: str = "default") -> list[SnapshotInfo]:
    """The workspace's snapshots, newest first (its database is not opened)."""
    return workspace_snapshots(home, name)


def restore_workspace(
    home: str | os.PathLike | None,
    name: str = "default",
    snapshot: int | None = None,
    *,
    config: ProtoAtlasConfig | None = None,
) -> RestoreReport:
    """Rebuild the workspace's database from a snapshot (default the newest), keep the
    damaged file aside, then run the doctor on the result."""
    result = Workspace.restore(home, name, snapshot)
    with WorkspaceService(home, name, config=config) as service:
        kept = {b.id for b in service.batches()}
        moved = _set_aside_tokens(service.root, kept, result)
        problems = service.doctor()
    return RestoreReport(result, problems, moved)


def _set_aside_tokens(root: Path, kept: set[int], result: RestoreResult) -> list[Path]:
    folder = root / TOKENS_DIR
    if not folder.is_dir():
        return []
    aside = folder / f"lost-{result.stamp}"
    moved = []
    for path in sorted(folder.glob("batch-*.npz")):
        stem = path.stem.removeprefix("batch-")
        if stem.isdigit() and int(stem) not in kept:
            aside.mkdir(exist_ok=True)
            target = aside / path.name
            os.replace(path, target)
            moved.append(target)
    return moved
