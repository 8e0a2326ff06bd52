"""A workspace: one DuckDB file plus content-addressed ``images/`` and ``blobs/`` folders.

Layout of ``<home>/<name>/``::

    workspace.duckdb            all tables (see docs/decisions.md, "Storage")
    images/ab/ab12...ef.png     uploaded images, named by sha256, original extension
    blobs/cd/cd34...01.png      anomaly maps (16-bit PNG) and saved models (.npz)
    pending/<pid>-<uuid>        marker of an ingest/retrain between its files and commit
    snapshots/<n>-<utc stamp>/  rotating exports of the database (see ``storage.snapshots``)

Concurrency: one writer connection per process, shared by every ``Workspace`` object of
the same file in that process and guarded by a lock; every write runs in
``with ws.transaction() as con:``. Reads use per-thread cursors (their own DuckDB
connections), each read in a snapshot transaction, so they see the last committed state
and do not wait for a long write. DuckDB locks the file, so a second *process* gets
:class:`WorkspaceLockedError`.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, TypeVar

import duckdb
import numpy as np

from storage import audit, export, ingest, removal, review, schema, snapshots
from storage.config import StorageConfig
from storage.errors import (
    DamagedWorkspaceError,
    DiskFullError,
    NotFoundError,
    SchemaError,
    StorageError,
    ValidationError,
    WorkspaceLockedError,
)
from storage.files import ContentStore
from storage.models import (
    AssignmentsIn,
    AuditEntry,
    BatchImageInfo,
    BatchInfo,
    BatchIngest,
    ImageDetail,
    ImportReport,
    Member,
    ModelVersion,
    ModelVersionIn,
    NewType,
    Progress,
    PrototypeIn,
    RegionInfo,
    Suggestion,
    SuggestionIn,
    TypeSummary,
    audit_entry,
    suggestion,
)
from storage.models import optional_float as _f
from storage.png16 import decode_map
from storage.removal import BatchDeleted
from storage.rle import rle_from_json
from storage.snapshots import RestoreResult, SnapshotInfo, Snapshotter
from storage.sql import fetch_value

ENV_HOME = "PROTOATLAS_HOME"


def _referenced_files(cur: duckdb.DuckDBPyConnection) -> tuple[set[str], set[str]]:
    """(image refs, blob refs) that the rows of a workspace database point to."""
    images = {r[0] for r in cur.execute("SELECT sha256 || '.' || ext FROM images").fetchall()}
    blobs = {
        r[0]
        for r in cur.execute(
            "SELECT map_blob FROM batch_images WHERE map_blob IS NOT NULL UNION "
            "SELECT blob FROM model_versions WHERE blob IS NOT NULL"
        ).fetchall()
    }
    return images, blobs


DEFAULT_HOME = "protoatlas-data"
log = logging.getLogger(__name__)

DB_FILE = "workspace.duckdb"
PENDING = "pending"  # markers of writes whose files may not be committed yet
_T = TypeVar("_T")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

#: Hugging Face Spaces' persistent storage, used for the data when it is there and writable.
SPACES_DATA = Path("/data")


def default_home() -> Path:
    """Data directory: ``$PROTOATLAS_HOME`` if set; else ``/data/protoatlas`` when a
    writable ``/data`` exists (Spaces persistent storage); else ``./protoatlas-data``."""
    value = os.environ.get(ENV_HOME, "").strip()
    if value:
        return Path(value).expanduser()
    if SPACES_DATA.is_dir() and os.access(SPACES_DATA, os.W_OK):
        return SPACES_DATA / "protoatlas"
    return Path(DEFAULT_HOME)


#: errno values of a full disk or quota (ENOSPC, EDQUOT, EFBIG).
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def _disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk (or a quota or file size limit) ran out."""
    if isinstance(exc, OSError):
        return exc.errno in DISK_FULL_ERRNOS
    return "No space left on device" in str(exc) or "Disk quota exceeded" in str(exc)


def workspace_names(home: str | os.PathLike[str] | None = None) -> list[str]:
    """Names of the workspaces under ``home`` (folders holding a workspace database),
    sorted; none when ``home`` does not exist."""
    root = Path(home if home is not None else default_home()).expanduser()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if _NAME.match(p.name) and (p / DB_FILE).is_file())


def workspace_snapshots(
    home: str | os.PathLike[str] | None = None, name: str = "default"
) -> list[SnapshotInfo]:
    """The snapshots of the workspace ``<home>/<name>/``, newest first (without opening
    its database, which may be damaged); NotFoundError when there is no such folder."""
    check_workspace_name(name)
    root = Path(home if home is not None else default_home()).expanduser().resolve() / name
    if not root.is_dir():
        raise NotFoundError(f"no workspace {name!r} ({root})")
    return snapshots.list_snapshots(root)


def check_workspace_name(name: str) -> str:
    """``name`` if it may name a workspace, else a ValidationError saying what may."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValidationError(
            f"workspace name {name!r} must be 1-64 letters, digits, "
            "'_', '-' or '.', starting with a letter or digit"
        )
    return name


class _Handle:
    """The per-process state of one open DuckDB file (shared by Workspace objects)."""

    def __init__(self, con: duckdb.DuckDBPyConnection, key: str, read_only: bool) -> None:
        self.con = con
        self.key = key
        self.read_only = read_only
        self.lock = threading.RLock()
        self.depth = 0
        self.refs = 1
        self.reader_root = con.cursor()
        self.reader_lock = threading.Lock()
        self.local = threading.local()
        self.cursors: list[duckdb.DuckDBPyConnection] = []
        self.closed = False
        self.owner: int | None = None  # thread holding the write transaction
        self.snapshotter: Snapshotter | None = None
        self._snapshot_cursor: duckdb.DuckDBPyConnection | None = None

    def reader(self) -> duckdb.DuckDBPyConnection:
        cur = getattr(self.local, "cursor", None)
        if cur is None:
            with self.reader_lock:
                if self.closed:
                    raise StorageError("the workspace is closed")
                cur = self.reader_root.cursor()
                self.cursors.append(cur)
            self.local.cursor = cur
            self.local.depth = 0
        return cur

    @contextmanager
    def read(
        self, cur: duckdb.DuckDBPyConnection | None = None
    ) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read transaction on this thread's cursor (nested use joins it)."""
        own = cur is None
        cur = self.reader() if cur is None else cur
        outer = not own or self.local.depth == 0
        if outer:
            cur.execute("BEGIN TRANSACTION")
        if own:
            self.local.depth += 1
        try:
            yield cur
        except BaseException:
            if own:
                self.local.depth -= 1
            if outer:
                try:
                    cur.execute("ROLLBACK")
                except duckdb.Error:
                    pass
            raise
        if own:
            self.local.depth -= 1
        if outer:
            cur.execute("COMMIT")

    @contextmanager
    def snapshot_read(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read transaction on the cursor kept for snapshots (any thread, one at a time:
        the snapshotter serialises its writes)."""
        with self.reader_lock:
            if self.closed:
                raise StorageError("the workspace is closed")
            if self._snapshot_cursor is None:
                self._snapshot_cursor = self.reader_root.cursor()
                self.cursors.append(self._snapshot_cursor)
            cur = self._snapshot_cursor
        with self.read(cur) as c:
            yield c

    def close(self) -> None:
        if self.snapshotter is not None:
            self.snapshotter.wait()
        with self.lock, self.reader_lock:
            self.closed = True
            for cur in self.cursors:
                cur.close()
            self.reader_root.close()
            self.con.close()


_HANDLES: dict[str, _Handle] = {}
_HANDLES_LOCK = threading.Lock()


def _connect(
    db: Path, label: str, read_only: bool, cfg: StorageConfig, name: str = ""
) -> duckdb.DuckDBPyConnection:
    """Connect to ``db``; a file DuckDB cannot read back is a DamagedWorkspaceError
    (``name`` given), another process's lock a WorkspaceLockedError."""
    existed = db.is_file()
    settings: dict[str, Any] = {}
    if cfg.threads:
        settings["threads"] = cfg.threads
    if cfg.memory_limit:
        settings["memory_limit"] = cfg.memory_limit
    try:
        return duckdb.connect(str(db), read_only=read_only, config=settings)
    except duckdb.IOException as exc:
        msg = str(exc)
        if "lock" in msg.lower():
            m = re.search(r"PID (\d+)", msg)
            pid = int(m.group(1)) if m else None
            raise WorkspaceLockedError(
                f"workspace {label} is in use by another process (pid {pid or 'unknown'}); "
                "close ProtoAtlas there or open another workspace",
                pid=pid,
            ) from None
        if existed and name and snapshots.looks_damaged(exc, reading=True):
            raise snapshots.damaged_error(db.parent, name, db, exc) from None
        raise StorageError(f"cannot open workspace {label}: {msg.splitlines()[0]}") from None
    except duckdb.Error as exc:
        if existed and name and snapshots.looks_damaged(exc, reading=True):
            raise snapshots.damaged_error(db.parent, name, db, exc) from None
        raise StorageError(f"cannot open workspace {label}: {str(exc).splitlines()[0]}") from None


def _verify(db: Path, label: str, name: str, cfg: StorageConfig) -> None:
    """Read the whole existing file once through a read-only connection (so a damaged file
    is never written to, not even by a WAL checkpoint); DamagedWorkspaceError if it fails."""
    con = _connect(db, label, True, cfg, name)
    try:
        snapshots.verify_readable(con)
    except duckdb.Error as exc:
        if snapshots.looks_damaged(exc, reading=True) or isinstance(exc, duckdb.IOException):
            raise snapshots.damaged_error(db.parent, name, db, exc) from None
        raise
    finally:
        con.close()


def _snapshotter(
    root: Path, con: duckdb.DuckDBPyConnection, cfg: StorageConfig
) -> Snapshotter | None:
    """The snapshot schedule of a freshly opened writer, counting the decisions made since
    the newest snapshot (so a restart does not reset the count)."""
    if not cfg.snapshots:
        return None
    seq, _ = audit.head(con)
    base = snapshots.base_seq(snapshots.list_snapshots(root), seq)
    return Snapshotter(
        root,
        every=cfg.snapshot_every_decisions,
        keep=cfg.snapshot_keep,
        background=cfg.snapshot_in_background,
        sync=cfg.sync_files,
        decisions=snapshots.decisions_after(con, base),
    )


class Workspace:
    """The repository API of one workspace. Open with :meth:`Workspace.open`."""

    def __init__(self, root: Path, name: str, handle: _Handle, config: StorageConfig) -> None:
        self.root = root
        self.name = name
        self.config = config
        self._h = handle
        self._closed = False
        self.images = ContentStore(root / "images")
        self.blobs = ContentStore(root / "blobs")

    # ------------------------------------------------------------------ open / close
    @classmethod
    def open(
        cls,
        home: str | os.PathLike[str] | None = None,
        name: str = "default",
        *,
        embedding_dim: int | None = None,
        read_only: bool = False,
        config: StorageConfig | None = None,
    ) -> "Workspace":
        """Open (creating and migrating as needed) the workspace ``<home>/<name>/``.

        ``embedding_dim`` is recorded when the workspace is created (default
        ``config.embedding_dim``); it may change later only while no vector is stored.
        ``read_only`` opens without migrating or cleaning (for inspection and ``doctor``).
        """
        cfg = config or StorageConfig()
        check_workspace_name(name)
        home_path = Path(home if home is not None else default_home()).expanduser().resolve()
        root = home_path / name
        db = root / DB_FILE
        label = f"{name!r} ({root})"
        with _HANDLES_LOCK:
            handle = _HANDLES.get(str(db))
            if handle is not None:
                if handle.read_only and not read_only:
                    raise StorageError(
                        f"workspace {label} is already open read-only in this "
                        "process; close it before opening it for writing"
                    )
                handle.refs += 1
                fresh = False
            else:
                if read_only and not db.is_file():
                    raise NotFoundError(f"no workspace {label}: {DB_FILE} does not exist")
                if not read_only:
                    root.mkdir(parents=True, exist_ok=True)
                if cfg.verify_on_open and db.is_file():
                    _verify(db, label, name, cfg)
                con = _connect(db, label, read_only, cfg, name)
                try:
                    if read_only:
                        have = schema.current_version(con)
                        if have != schema.LATEST:
                            raise SchemaError(
                                f"workspace {label} has schema version {have}, this ProtoAtlas "
                                f"uses {schema.LATEST}; open it once for writing to migrate"
                            )
                    else:
                        dim = embedding_dim or cfg.embedding_dim
                        schema.migrate(con, dim=dim, label=f"workspace {label}")
                    snapper = _snapshotter(root, con, cfg) if not read_only else None
                except duckdb.Error as exc:
                    con.close()
                    if snapshots.looks_damaged(exc, reading=True):
                        raise snapshots.damaged_error(root, name, db, exc) from None
                    raise
                except BaseException:
                    con.close()
                    raise
                handle = _Handle(con, str(db), read_only)
                if snapper is not None:
                    handle.snapshotter = snapper
                    snapper.bind(handle.snapshot_read)
                _HANDLES[str(db)] = handle
                fresh = True
        ws = cls(root, name, handle, cfg)
        try:
            if not read_only:
                if embedding_dim is not None:
                    ws.set_embedding_dim(embedding_dim)
                if fresh:
                    (root / "images").mkdir(exist_ok=True)
                    (root / "blobs").mkdir(exist_ok=True)
                    (root / PENDING).mkdir(exist_ok=True)
                    markers = list((root / PENDING).iterdir())
                    if cfg.clean_orphans_on_open and markers:
                        ws.clean_orphans()
                        for marker in markers:
                            marker.unlink(missing_ok=True)
                    ws._purge_deleted()
        except BaseException:
            ws.close()
            raise
        return ws

    def close(self) -> None:
        """Release this object; the file closes when the process's last one is closed
        (after the snapshot being written, if any)."""
        if self._closed:
            return
        self._closed = True
        with _HANDLES_LOCK:
            self._h.refs -= 1
            if self._h.refs > 0:
                return
            _HANDLES.pop(self._h.key, None)
        self._h.close()

    def __enter__(self) -> "Workspace":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Workspace({self.name!r}, {str(self.root)!r})"

    @property
    def db_path(self) -> Path:
        return self.root / DB_FILE

    @property
    def read_only(self) -> bool:
        return self._h.read_only

    def _check_open(self) -> None:
        if self._closed or self._h.closed:
            raise StorageError(f"workspace {self.name!r} is closed")

    # ---------------------------------------------------------------- transactions
    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """One atomic write: ``with ws.transaction() as con: con.execute(...)``.

        Serialised per process by a lock; nested use in the same thread joins the outer
        transaction. Any exception rolls everything back. Do not keep ``con`` afterwards.
        """
        self._check_open()
        if self._h.read_only:
            raise StorageError(f"workspace {self.name!r} is open read-only")
        h = self._h
        with h.lock:
            if h.depth:
                h.depth += 1
                try:
                    yield h.con
                finally:
                    h.depth -= 1
                return
            h.con.execute("BEGIN TRANSACTION")
            h.depth = 1
            h.owner = threading.get_ident()
            try:
                yield h.con
            except BaseException as exc:
                h.depth = 0
                h.owner = None
                try:
                    h.con.execute("ROLLBACK")
                except duckdb.Error:
                    pass
                if snapshots.looks_damaged(exc):
                    raise self._damaged(exc) from exc
                raise
            h.depth = 0
            h.owner = None
            try:
                h.con.execute("COMMIT")
            except duckdb.Error as exc:
                try:
                    h.con.execute("ROLLBACK")
                except duckdb.Error:
                    pass
                if snapshots.looks_damaged(exc):
                    raise self._damaged(exc) from exc
                raise StorageError(
                    f"commit failed, nothing was changed: {str(exc).splitlines()[0]}"
                ) from None

    @contextmanager
    def read(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only snapshot on this thread's cursor (never blocks on the writer)."""
        self._check_open()
        try:
            with self._h.read() as cur:
                yield cur
        except duckdb.Error as exc:
            if snapshots.looks_damaged(exc):
                raise self._damaged(exc) from exc
            raise

    def _damaged(self, exc: BaseException) -> DamagedWorkspaceError:
        return snapshots.damaged_error(self.root, self.name, self.db_path, exc)

    # ------------------------------------------------------------------- snapshots
    def snapshots(self) -> list[SnapshotInfo]:
        """The workspace's snapshots, newest first."""
        return snapshots.list_snapshots(self.root)

    def snapshot(self, reason: str = "manual") -> SnapshotInfo:
        """Write a snapshot now (on this thread; raises on failure, unlike the automatic
        ones), keeping at most ``config.snapshot_keep``."""
        self._check_open()
        snapper = self._h.snapshotter
        if snapper is None:
            raise StorageError(
                f"workspace {self.name!r} writes no snapshots (read-only or snapshots off)"
            )
        snapper.wait()
        return snapper.write(reason)

    def wait_for_snapshots(self) -> None:
        """Until the snapshot being written in the background (if any) is on disk."""
        if self._h.snapshotter is not None:
            self._h.snapshotter.wait()

    def _snapshot_due(self, reason: str) -> None:
        """After a committed batch ("batch") or reviewer decision ("decision")."""
        snapper = self._h.snapshotter
        if snapper is None:
            return
        if self._h.depth and self._h.owner == threading.get_ident():
            snapper.defer(reason)  # inside the caller's own transaction: not committed yet
            return
        if reason == "decision":
            snapper.decided()
        else:
            snapper.request(reason)

    def _decided(self, result: _T) -> _T:
        self._snapshot_due("decision")
        return result

    @classmethod
    def restore(
        cls,
        home: str | os.PathLike[str] | None = None,
        name: str = "default",
        snapshot: int | None = None,
        *,
        config: StorageConfig | None = None,
    ) -> RestoreResult:
        """Rebuild ``<home>/<name>/workspace.duckdb`` from a snapshot (default the newest).

        The snapshot is imported into a new file first; then the current file (damaged or
        not) and its WAL are renamed to ``workspace.duckdb.damaged-<UTC stamp>`` (never
        deleted) and the new one takes its place. The result lists the audit entries of the
        old file that the restored state lacks, as far as it can still be read. Refused
        while the workspace is open, in this process or another.
        """
        cfg = config or StorageConfig()
        check_workspace_name(name)
        home_path = Path(home if home is not None else default_home()).expanduser().resolve()
        root = home_path / name
        db = root / DB_FILE
        label = f"{name!r} ({root})"
        if not root.is_dir():
            raise NotFoundError(f"no workspace {label}")
        snap = snapshots.pick(root, name, snapshot)
        with _HANDLES_LOCK:
            if str(db) in _HANDLES:
                raise StorageError(
                    f"workspace {label} is open in this process; close it before restoring"
                )
            if db.is_file():  # another process holding it: WorkspaceLockedError
                try:
                    _connect(db, label, True, cfg).close()
                except WorkspaceLockedError:
                    raise
                except StorageError:
                    pass  # damaged: that is why we restore
            stamp = snapshots.utc_stamp()
            tmp = root / f".restore-{stamp}-{uuid.uuid4().hex[:8]}.duckdb"
            try:
                chain = snapshots.load_snapshot(snap, tmp)
            except (duckdb.Error, StorageError, OSError) as exc:
                for leftover in (tmp, tmp.with_name(tmp.name + ".wal")):
                    leftover.unlink(missing_ok=True)
                raise StorageError(
                    f"snapshot {snap.number} of workspace {label} cannot be loaded "
                    f"({str(exc).strip().splitlines()[0]}); nothing was changed: try another "
                    "one with --snapshot N"
                ) from None
            if cfg.sync_files:
                os.sync()
            moved = snapshots.move_aside(db, stamp)
            os.replace(tmp, db)
        try:  # files of batches deleted after the snapshot: back from deleted/
            con = duckdb.connect(str(db), read_only=True)
            try:
                images, blobs = _referenced_files(con)
            finally:
                con.close()
            removal.bring_back(root, {"images": images, "blobs": blobs})
        except (duckdb.Error, OSError):
            log.warning("could not bring deleted batches' files back", exc_info=True)
        damaged = moved[0] if moved and not moved[0].name.endswith(".wal") else None
        lost, n_lost, note = snapshots.lost_entries(damaged, chain, snap.audit_seq)
        return RestoreResult(snap, db, moved, lost, n_lost, note, stamp)

    # ----------------------------------------------------------------- meta / files
    @property
    def embedding_dim(self) -> int:
        with self.read() as cur:
            return schema.embedding_dim(cur)

    def schema_version(self) -> int:
        with self.read() as cur:
            return schema.current_version(cur)

    def set_embedding_dim(self, dim: int) -> None:
        """Change the vector dimension; allowed only while no embedding/prototype exists."""
        with self.transaction() as con:
            schema.set_embedding_dim(con, self.name, dim)

    def image_path(self, image_id: int) -> Path:
        with self.read() as cur:
            row = cur.execute("SELECT sha256, ext FROM images WHERE id = ?", [image_id]).fetchone()
        if row is None:
            raise NotFoundError(f"no image with id {image_id}")
        return self.images.path(f"{row[0]}.{row[1]}")

    def blob_path(self, ref: str) -> Path:
        return self.blobs.path(ref)

    def referenced_files(self, cur: duckdb.DuckDBPyConnection) -> tuple[set[str], set[str]]:
        """(image refs, blob refs) that rows point to."""
        return _referenced_files(cur)

    @contextmanager
    def pending_files(self) -> Iterator[None]:
        """Mark a write that puts files before its commit (ingest, retrain).

        The marker is removed only when the block succeeds; a marker left behind (killed
        or failed write) makes the next writer open scan for orphan files. Without one the
        open skips the scan (5 s for 5 * 10^5 images measured).
        """
        folder = self.root / PENDING
        folder.mkdir(exist_ok=True)
        marker = folder / f"{os.getpid()}-{uuid.uuid4().hex}"
        marker.touch()
        yield
        marker.unlink(missing_ok=True)

    def clean_orphans(self) -> list[Path]:
        """Delete files no row references (leftovers of a killed write); returns them.

        Runs under the writer lock, so no ingest of this process is between its file
        writes and its commit; DuckDB's file lock excludes other processes.
        """
        with self.transaction() as con:
            images, blobs = self.referenced_files(con)
            removed = self.images.orphans(images) + self.blobs.orphans(blobs)
            for path in removed:
                try:
                    path.unlink()
                except FileNotFoundError:
                    pass
        return removed

    # --------------------------------------------------------------------- reads
    def list_types(self, include_merged: bool = False) -> list[TypeSummary]:
        """The types page: every type with its size and mean confidence (largest first)."""
        with self.read() as cur:
            rows = cur.execute(
                """SELECT t.id, t.name, t.status, t.origin, t.version,
                          coalesce(s.n_regions, 0), coalesce(s.n_images, 0),
                          CASE WHEN s.n_regions > 0 THEN s.sum_confidence / s.n_regions END,
                          t.merged_into, t.created_at, t.updated_at
                   FROM types t LEFT JOIN type_stats s ON s.type_id = t.id
                   WHERE ? OR t.status <> 'merged'
                   ORDER BY coalesce(s.n_regions, 0) DESC, t.id""",
                [include_merged],
            ).fetchall()
        return [TypeSummary(*r) for r in rows]

    def get_type(self, type_id: int) -> TypeSummary:
        for t in self.list_types(include_merged=True):
            if t.id == type_id:
                return t
        raise NotFoundError(f"no type with id {type_id}")

    @staticmethod
    def _members(cur: duckdb.DuckDBPyConnection, page: Sequence[Sequence[Any]]) -> list[Member]:
        """Details of ``page`` rows (region_id, confidence, source, similarity), in order.

        Two steps (pick the page from ``assignments`` alone, then look up those few regions)
        instead of one join: at 10^6 regions the join-then-sort took ~3x longer.
        """
        if not page:
            return []
        rows = cur.execute(
            """SELECT r.id, r.image_id, r.batch_id, bi.name, r.box_top, r.box_left,
                      r.box_bottom, r.box_right, r.area, r.anomaly_score
               FROM regions r
               JOIN batch_images bi ON bi.batch_id = r.batch_id AND bi.image_id = r.image_id
               WHERE r.id IN (SELECT unnest(?::BIGINT[]))""",
            [[int(p[0]) for p in page]],
        ).fetchall()
        by_id = {r[0]: r for r in rows}
        out = []
        for rid, conf, source, sim in page:
            r = by_id[rid]
            out.append(
                Member(
                    region_id=rid,
                    image_id=r[1],
                    batch_id=r[2],
                    image_name=r[3],
                    box=(r[4], r[5], r[6], r[7]),
                    area=r[8],
                    anomaly_score=_f(r[9]),
                    confidence=_f(conf),
                    source=source,
                    similarity=_f(sim),
                )
            )
        return out

    def type_members(
        self,
        type_id: int,
        limit: int = 50,
        offset: int = 0,
        order: Literal["confidence", "borderline"] = "confidence",
    ) -> list[Member]:
        """One page of a type's regions: most confident first, or least ("borderline")."""
        if order not in ("confidence", "borderline"):
            raise ValidationError(f"order must be 'confidence' or 'borderline', not {order!r}")
        direction = "DESC NULLS LAST" if order == "confidence" else "ASC NULLS FIRST"
        with self.read() as cur:
            page = cur.execute(
                "SELECT region_id, confidence, source, NULL FROM assignments WHERE type_id = ? "
                f"ORDER BY confidence {direction}, region_id LIMIT ? OFFSET ?",
                [type_id, int(limit), int(offset)],
            ).fetchall()
            return self._members(cur, page)

    def representatives(self, type_id: int, n: int = 8) -> list[Member]:
        """Up to ``n`` regions (one per image) closest to the type's latest prototype.

        Closeness is the cosine similarity of embeddings of the prototype's model version;
        types without a prototype (made by reviewers) fall back to highest confidence.
        """
        with self.read() as cur:
            proto = cur.execute(
                "SELECT model_version, vector FROM prototypes WHERE type_id = ? "
                "ORDER BY model_version DESC LIMIT 1",
                [type_id],
            ).fetchone()
            dim = schema.embedding_dim(cur)
            sims = (
                "SELECT NULL::BIGINT AS region_id, NULL::DOUBLE AS sim WHERE false"
                if proto is None
                else f"""SELECT e.region_id, array_cosine_similarity(e.vector, ?::FLOAT[{dim}])
                            AS sim FROM embeddings e
                        WHERE e.model_version = ? AND e.region_id IN (SELECT region_id FROM m)"""
            )
            params = [type_id] + ([] if proto is None else [list(proto[1]), proto[0]])
            page = cur.execute(
                f"""WITH m AS (SELECT region_id, confidence, source FROM assignments
                               WHERE type_id = ?),
                    s AS ({sims})
                    SELECT m.region_id, m.confidence, m.source, s.sim
                    FROM m LEFT JOIN s ON s.region_id = m.region_id
                    JOIN regions r ON r.id = m.region_id
                    QUALIFY row_number() OVER (PARTITION BY r.image_id
                        ORDER BY s.sim DESC NULLS LAST, m.confidence DESC NULLS LAST,
                                 m.region_id) = 1
                    ORDER BY s.sim DESC NULLS LAST, m.confidence DESC NULLS LAST, m.region_id
                    LIMIT ?""",
                params + [int(n)],
            ).fetchall()
            return self._members(cur, page)

    _REGION_SQL = """
        SELECT r.id, r.batch_id, r.image_id, r.box_top, r.box_left, r.box_bottom, r.box_right,
               r.area, r.anomaly_score, {mask}, a.type_id, t.name, t.status, a.source,
               a.confidence, coalesce(a.is_normal, false)
        FROM regions r
        LEFT JOIN assignments a ON a.region_id = r.id
        LEFT JOIN types t ON t.id = a.type_id
    """

    @staticmethod
    def _region(row: Sequence[Any]) -> RegionInfo:
        return RegionInfo(
            id=row[0],
            batch_id=row[1],
            image_id=row[2],
            box=(row[3], row[4], row[5], row[6]),
            area=row[7],
            anomaly_score=_f(row[8]),
            mask=rle_from_json(row[9]) if row[9] else None,
            type_id=row[10],
            type_name=row[11],
            type_status=row[12],
            source=row[13],
            confidence=_f(row[14]),
            is_normal=bool(row[15]),
        )

    def image_detail(self, image_id: int) -> ImageDetail:
        """An image with its batch memberships (score, map) and all its regions."""
        with self.read() as cur:
            img = cur.execute(
                "SELECT id, sha256, ext, width, height FROM images WHERE id = ?", [image_id]
            ).fetchone()
            if img is None:
                raise NotFoundError(f"no image with id {image_id}")
            memberships = cur.execute(
                """SELECT bi.batch_id, b.name, bi.name, bi.anomaly_score, bi.is_anomalous,
                          bi.map_blob, bi.map_min, bi.map_max
                   FROM batch_images bi JOIN batches b ON b.id = bi.batch_id
                   WHERE bi.image_id = ? ORDER BY bi.batch_id""",
                [image_id],
            ).fetchall()
            regions = cur.execute(
                self._REGION_SQL.format(mask="r.mask") + " WHERE r.image_id = ? ORDER BY r.id",
                [image_id],
            ).fetchall()
        return ImageDetail(
            id=img[0],
            sha256=img[1],
            ext=img[2],
            width=img[3],
            height=img[4],
            path=self.images.path(f"{img[1]}.{img[2]}"),
            batches=[
                BatchImageInfo(
                    batch_id=m[0],
                    batch_name=m[1],
                    name=m[2],
                    anomaly_score=_f(m[3]),
                    is_anomalous=m[4],
                    map_path=self.blobs.path(m[5]) if m[5] else None,
                    map_min=_f(m[6]),
                    map_max=_f(m[7]),
                )
                for m in memberships
            ],
            regions=[self._region(r) for r in regions],
        )

    def anomaly_map(self, batch_id: int, image_id: int) -> np.ndarray | None:
        """The float anomaly map stored for an image in a batch (``None`` if none)."""
        with self.read() as cur:
            row = cur.execute(
                "SELECT map_blob, map_min, map_max FROM batch_images "
                "WHERE batch_id = ? AND image_id = ?",
                [batch_id, image_id],
            ).fetchone()
        if row is None:
            raise NotFoundError(f"image {image_id} is not in batch {batch_id}")
        if row[0] is None:
            return None
        return decode_map(self.blobs.path(row[0]).read_bytes(), row[1], row[2])

    def regions_for_batch(self, batch_id: int, with_masks: bool = True) -> list[RegionInfo]:
        with self.read() as cur:
            if fetch_value(cur, "SELECT count(*) FROM batches WHERE id = ?", [batch_id]) == 0:
                raise NotFoundError(f"no batch with id {batch_id}")
            rows = cur.execute(
                self._REGION_SQL.format(mask="r.mask" if with_masks else "NULL")
                + " WHERE r.batch_id = ? ORDER BY r.id",
                [batch_id],
            ).fetchall()
        return [self._region(r) for r in rows]

    def batches(self) -> list[BatchInfo]:
        with self.read() as cur:
            rows = cur.execute(
                """SELECT b.id, b.name, b.params, b.created_at, b.model_version,
                          (SELECT count(*) FROM batch_images bi WHERE bi.batch_id = b.id),
                          (SELECT count(*) FROM regions r WHERE r.batch_id = b.id)
                   FROM batches b ORDER BY b.id"""
            ).fetchall()
        return [BatchInfo(r[0], r[1], json.loads(r[2]), r[3], r[4], r[5], r[6]) for r in rows]

    def stored_images(self, sha256s: Sequence[str]) -> dict[str, tuple[str, str]]:
        """Which of these contents (SHA-256 hex of the file bytes) the workspace already
        holds: sha -> (batch name, image name in it) of its first upload."""
        if not sha256s:
            return {}
        with self.read() as cur:
            rows = cur.execute(
                """SELECT i.sha256, b.name, bi.name FROM images i
                   JOIN batch_images bi ON bi.image_id = i.id JOIN batches b ON b.id = bi.batch_id
                   WHERE i.sha256 IN (SELECT unnest(?::VARCHAR[]))
                   ORDER BY bi.batch_id, bi.name""",
                [list(sha256s)],
            ).fetchall()
        out: dict[str, tuple[str, str]] = {}
        for sha, batch, name in rows:
            out.setdefault(sha, (batch, name))
        return out

    def batch_images(self, batch_id: int) -> list[tuple[int, str, float | None, bool | None]]:
        """(image id, name in the batch, anomaly score, is_anomalous) of every image of a
        batch, by name."""
        with self.read() as cur:
            if fetch_value(cur, "SELECT count(*) FROM batches WHERE id = ?", [batch_id]) == 0:
                raise NotFoundError(f"no batch with id {batch_id}")
            rows = cur.execute(
                "SELECT image_id, name, anomaly_score, is_anomalous "
                "FROM batch_images WHERE batch_id = ? ORDER BY name",
                [batch_id],
            ).fetchall()
        return [(int(r[0]), r[1], _f(r[2]), None if r[3] is None else bool(r[3])) for r in rows]

    def embeddings(self, model_version: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(region ids, float32 matrix (n, d)) of one model version (default: latest)."""
        if model_version is None:
            latest = self.latest_model_version()
            if latest is None:
                return np.zeros(0, np.int64), np.zeros((0, self.embedding_dim), np.float32)
            model_version = latest.id
        with self.read() as cur:
            dim = schema.embedding_dim(cur)
            got = cur.execute(
                "SELECT region_id, vector FROM embeddings WHERE model_version = ? "
                "ORDER BY region_id",
                [model_version],
            ).fetchnumpy()
        ids = np.asarray(got["region_id"], dtype=np.int64)
        if len(ids) == 0:
            return ids, np.zeros((0, dim), np.float32)
        return ids, np.stack(list(got["vector"])).astype(np.float32, copy=False)

    def prototypes(
        self, model_version: int | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(type ids, float32 matrix, n_members) of one model version (default: latest)."""
        if model_version is None:
            latest = self.latest_model_version()
            model_version = latest.id if latest else -1
        with self.read() as cur:
            dim = schema.embedding_dim(cur)
            got = cur.execute(
                "SELECT type_id, vector, n_members FROM prototypes "
                "WHERE model_version = ? ORDER BY type_id",
                [model_version],
            ).fetchnumpy()
        ids = np.asarray(got["type_id"], dtype=np.int64)
        if len(ids) == 0:
            return ids, np.zeros((0, dim), np.float32), np.zeros(0, np.int64)
        return (
            ids,
            np.stack(list(got["vector"])).astype(np.float32),
            np.asarray(got["n_members"], dtype=np.int64),
        )

    def _model_version(self, row: Sequence[Any]) -> ModelVersion:
        return ModelVersion(
            id=row[0],
            parent=row[1],
            kind=row[2],
            created_at=row[3],
            blob_path=self.blobs.path(row[4]) if row[4] else None,
            metrics=json.loads(row[5]),
        )

    def latest_model_version(self) -> ModelVersion | None:
        with self.read() as cur:
            row = cur.execute(
                "SELECT id, parent, kind, created_at, blob, metrics "
                "FROM model_versions ORDER BY id DESC LIMIT 1"
            ).fetchone()
        return None if row is None else self._model_version(row)

    def model_versions(self, kind: str | None = None) -> list[ModelVersion]:
        """Every model version (optionally of one kind), oldest first."""
        with self.read() as cur:
            rows = cur.execute(
                "SELECT id, parent, kind, created_at, blob, metrics "
                "FROM model_versions WHERE ? IS NULL OR kind = ? ORDER BY id",
                [kind, kind],
            ).fetchall()
        return [self._model_version(r) for r in rows]

    def model_version(self, model_version_id: int) -> ModelVersion:
        with self.read() as cur:
            row = cur.execute(
                "SELECT id, parent, kind, created_at, blob, metrics "
                "FROM model_versions WHERE id = ?",
                [model_version_id],
            ).fetchone()
        if row is None:
            raise NotFoundError(f"no model version {model_version_id}")
        return self._model_version(row)

    def audit(
        self,
        actor: str | None = None,
        action: str | None = None,
        type_id: int | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[AuditEntry]:
        """Audit entries, newest first, optionally filtered by actor, action and type."""
        where: list[str] = ["true"]
        params: list[str | int] = []
        if actor is not None:
            where.append("actor = ?")
            params.append(actor)
        if action is not None:
            where.append("action = ?")
            params.append(action)
        if type_id is not None:
            where.append("list_contains(type_ids, ?)")
            params.append(int(type_id))
        with self.read() as cur:
            rows = cur.execute(
                "SELECT seq, ts, actor, action, target, type_ids, before, after, hash "
                f"FROM audit_log WHERE {' AND '.join(where)} ORDER BY seq DESC LIMIT ? OFFSET ?",
                params + [int(limit), int(offset)],
            ).fetchall()
        return [audit_entry(r) for r in rows]

    def open_suggestions(self, limit: int | None = None) -> list[Suggestion]:
        """Open suggestions, highest score first."""
        return self.suggestions(status="open", limit=limit)

    def suggestions(self, status: str | None = None, limit: int | None = None) -> list[Suggestion]:
        with self.read() as cur:
            rows = cur.execute(
                "SELECT id, kind, target, score, reason, status, answer, answered_by, "
                "answered_at, created_at, model_version FROM suggestions "
                "WHERE ? IS NULL OR status = ? ORDER BY score DESC NULLS LAST, id LIMIT ?",
                [status, status, int(limit) if limit is not None else 2**62],
            ).fetchall()
        return [suggestion(r) for r in rows]

    # ------------------------------------------------------------ writes (delegated)
    def ingest_batch(
        self, batch: BatchIngest, *, actor: str = "model", progress: Progress | None = None
    ) -> int:
        """Store a whole batch (files, rows, vectors, model, types) in one transaction.
        A full disk raises :class:`DiskFullError` naming the workspace; the batch's files
        and rows are then gone and the workspace is as before."""
        try:
            batch_id = ingest.ingest_batch(self, batch, actor=actor, progress=progress)
        except (OSError, duckdb.Error) as exc:
            if not _disk_full(exc):
                raise
            try:  # the files it wrote before the disk ran out: gone, and their space freed
                self.clean_orphans()
            except (OSError, duckdb.Error, StorageError):
                log.warning("could not remove the failed batch's files yet", exc_info=True)
            raise DiskFullError(
                f"workspace {self.name!r}: the disk is full ({exc}) while storing batch "
                f"{batch.name!r}; nothing of the batch was kept. Free some space and upload "
                "it again."
            ) from None
        self._snapshot_due("batch")
        return batch_id

    def delete_batch(self, batch_id: int, *, actor: str) -> BatchDeleted:
        """Delete a batch: its images no other batch lists, its regions, their assignments
        (reviewer decisions included) and embeddings; open questions go stale. One
        transaction and one ``delete_batch`` audit row; not undoable, so a snapshot is
        written first (``protoatlas restore`` brings the batch back). The files no row
        references any more are removed after the commit. Ids are never reused."""
        self._check_open()
        if self._h.snapshotter is not None:
            self.snapshot(f"before deleting batch {int(batch_id)}")
        deleted = removal.delete_batch(self, batch_id, actor)
        try:
            with self.transaction() as con:  # under the writer lock: no ingest between
                images, blobs = self.referenced_files(con)
                removal.set_aside(self.root, deleted, {"images": images, "blobs": blobs})
            self._purge_deleted()
        except (OSError, duckdb.Error, StorageError):  # left as orphans: the next open
            log.warning("could not set the deleted batch's files aside", exc_info=True)
        return deleted

    def _purge_deleted(self) -> list[Path]:
        """Remove deleted batches' files once no kept snapshot predates their delete."""
        return removal.purge(self.root, [s.audit_seq for s in self.snapshots()])

    def apply_retrain(
        self,
        model: ModelVersionIn | int,
        assignments: AssignmentsIn | None,
        prototypes: Sequence[PrototypeIn] = (),
        embeddings: tuple[np.ndarray, np.ndarray] | None = None,
        *,
        new_types: Sequence[NewType] = (),
        actor: str = "model",
        progress: Progress | None = None,
    ) -> int:
        """Store a retrain result; never overwrites reviewer-sourced assignments."""
        return ingest.apply_retrain(
            self,
            model,
            assignments,
            prototypes,
            embeddings,
            new_types=new_types,
            actor=actor,
            progress=progress,
        )

    def confirm_type(self, type_id: int, *, expected_version: int, actor: str) -> TypeSummary:
        return self._decided(review.set_status(self, type_id, "confirmed", expected_version, actor))

    def reject_type(self, type_id: int, *, expected_version: int, actor: str) -> TypeSummary:
        return self._decided(review.set_status(self, type_id, "rejected", expected_version, actor))

    def rename_type(
        self, type_id: int, name: str, *, expected_version: int, actor: str
    ) -> TypeSummary:
        return self._decided(review.rename_type(self, type_id, name, expected_version, actor))

    def merge_types(
        self, keep: int, absorb: int, *, expected: Mapping[int, int], actor: str
    ) -> TypeSummary:
        return self._decided(review.merge_types(self, keep, absorb, expected, actor))

    def split_type(
        self,
        type_id: int,
        groups: Sequence[Sequence[int]],
        *,
        expected_version: int,
        actor: str,
        names: Sequence[str | None] | None = None,
    ) -> list[int]:
        return self._decided(
            review.split_type(self, type_id, groups, expected_version, actor, names)
        )

    def move_regions(
        self, region_ids: Sequence[int], to_type_id: int, *, expected: Mapping[int, int], actor: str
    ) -> None:
        review.move_regions(self, region_ids, to_type_id, expected, actor)
        self._snapshot_due("decision")

    def create_type(
        self,
        region_ids: Sequence[int],
        *,
        expected: Mapping[int, int],
        actor: str,
        name: str | None = None,
        status: str = "proposed",
    ) -> int:
        return self._decided(review.create_type(self, region_ids, expected, actor, name, status))

    def mark_normal(
        self, region_ids: Sequence[int], *, expected: Mapping[int, int], actor: str
    ) -> None:
        review.mark_normal(self, region_ids, expected, actor)
        self._snapshot_due("decision")

    def undo(self, actor: str, seq: int | None = None) -> AuditEntry:
        return self._decided(review.undo(self, actor, seq))

    def import_labels(
        self, csv_path: str | os.PathLike[str], *, actor: str, batch_id: int | None = None
    ) -> ImportReport:
        return self._decided(review.import_labels(self, csv_path, actor, batch_id))

    def replace_open_suggestions(
        self,
        items: Sequence[SuggestionIn],
        *,
        model_version: int | None = None,
        actor: str = "model",
    ) -> list[int]:
        return review.replace_open_suggestions(self, items, model_version, actor)

    def answer_suggestion(
        self, suggestion_id: int, answer: str | None, *, actor: str, skip: bool = False
    ) -> Suggestion:
        return self._decided(review.answer_suggestion(self, suggestion_id, answer, actor, skip))

    # ------------------------------------------------------------------- exports
    # Region-level exports take a scope: ``batch_id`` (None: every batch) and ``type_ids``
    # (None: every type the format holds); see ``storage.export`` for what a scope keeps.
    def export_assignments(
        self,
        path: str | os.PathLike[str],
        fmt: Literal["csv", "parquet"] = "csv",
        level: Literal["region", "image"] = "region",
        batch_id: int | None = None,
        type_ids: Sequence[int] | None = None,
    ) -> Path:
        return export.export_assignments(self, path, fmt, level, batch_id, type_ids)

    def export_coco(
        self,
        path: str | os.PathLike[str],
        batch_id: int | None = None,
        types: Literal["confirmed", "all"] = "confirmed",
        type_ids: Sequence[int] | None = None,
    ) -> Path:
        return export.export_coco(self, path, batch_id, types, type_ids)

    def export_label_studio(
        self,
        path: str | os.PathLike[str],
        batch_id: int | None = None,
        types: Literal["confirmed", "all"] = "confirmed",
        type_ids: Sequence[int] | None = None,
    ) -> Path:
        return export.export_label_studio(self, path, batch_id, types, type_ids)

    def export_yolo(
        self,
        path: str | os.PathLike[str],
        batch_id: int | None = None,
        types: Literal["confirmed", "all"] = "confirmed",
        type_ids: Sequence[int] | None = None,
    ) -> Path:
        return export.export_yolo(self, path, batch_id, types, type_ids)

    def crop_regions(
        self,
        batch_id: int | None = None,
        types: Literal["confirmed", "all"] = "confirmed",
        type_ids: Sequence[int] | None = None,
    ) -> list[tuple[int, int, int, str, tuple[int, int, int, int]]]:
        """(region id, image id, type id, type name, box) of what a crops export holds."""
        return export.crop_regions(self, batch_id, types, type_ids)

    def export_audit(
        self, path: str | os.PathLike[str], fmt: Literal["csv", "json"] = "json"
    ) -> Path:
        return export.export_audit(self, path, fmt)
