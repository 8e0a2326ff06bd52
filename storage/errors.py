"""Errors of the storage layer. Every message is one line that says what to do."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


class StorageError(Exception):
    """Base class of every error raised on purpose by ``storage``."""


class ValidationError(StorageError, ValueError):
    """The caller passed something the workspace cannot accept (names the offending item)."""


class NotFoundError(StorageError, LookupError):
    """A type, region, image, batch, suggestion or model version id does not exist."""

    def __str__(self) -> str:  # LookupError would quote the message like a KeyError
        return str(self.args[0]) if self.args else ""


class ConflictError(StorageError):
    """Optimistic concurrency: a type changed since the caller read it; nothing was applied."""

    def __init__(
        self,
        message: str,
        *,
        type_id: int | None = None,
        expected: int | None = None,
        actual: int | None = None,
    ) -> None:
        super().__init__(message)
        self.type_id = type_id
        self.expected = expected
        self.actual = actual


class WorkspaceLockedError(StorageError):
    """Another process holds the workspace's DuckDB file (one writer process at a time)."""

    def __init__(self, message: str, *, pid: int | None = None) -> None:
        super().__init__(message)
        self.pid = pid


class SchemaError(StorageError):
    """The workspace file has a schema this version cannot use (newer, or not migrated)."""


class DamagedWorkspaceError(StorageError):
    """The workspace's DuckDB file cannot be read back (truncated, overwritten, bad checksum).

    ``path`` is the file, ``snapshots`` the snapshots it can be restored from (newest
    first, :class:`storage.snapshots.SnapshotInfo`) and ``reason`` DuckDB's first line.
    """

    def __init__(
        self,
        message: str,
        *,
        path: Path | None = None,
        snapshots: Sequence[Any] = (),
        reason: str = "",
    ) -> None:
        super().__init__(message)
        self.path = path
        self.snapshots = list(snapshots)
        self.reason = reason


class DiskFullError(StorageError):
    """The disk (or a quota) ran out while a batch was stored; nothing of it was kept."""
