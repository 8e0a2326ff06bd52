"""Rotating snapshots of a workspace database, damage detection, and restore.

Layout under the workspace folder::

    snapshots/7-20260509T073512Z/    one snapshot: DuckDB EXPORT DATABASE (Parquet files,
        schema.sql, load.sql)        schema.sql and load.sql) plus manifest.json
    snapshots/.tmp-8-<uuid>/         a snapshot being written (never listed, removed later)

A snapshot is exported from a read transaction, so it is one consistent state even while
the writer goes on; it is written under a temporary name and renamed into place once its
manifest is written, so a listed snapshot is always complete. At most ``keep`` are kept:
the oldest is renamed away, then deleted. Restoring imports a snapshot into a new file
beside the database, then moves the damaged file aside (``workspace.duckdb.damaged-<UTC>``,
never deleted) and renames the new one into place.

A damaged file (truncated, bytes overwritten) is found at open: DuckDB verifies a block's
checksum whenever it reads it, and :func:`verify_readable` reads every column of every
table once. :func:`looks_damaged` recognises DuckDB's errors for such files.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import shutil
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from storage import audit
from storage.errors import DamagedWorkspaceError, NotFoundError, StorageError
from storage.review import UNDOABLE
from storage.sql import fetch_value

log = logging.getLogger(__name__)

SNAPSHOTS = "snapshots"
MANIFEST = "manifest.json"
TMP_PREFIX = ".tmp-"
DROP_PREFIX = ".drop-"
DAMAGED_MARK = ".damaged-"
STAMP = "%Y%m%dT%H%M%SZ"
_DIR = re.compile(r"^(\d+)-(\d{8}T\d{6}Z)$")

#: Audit actions that are reviewer decisions (what ``snapshot_every_decisions`` counts).
DECISIONS = frozenset(UNDOABLE | {"undo"})

#: Fragments of DuckDB's messages about a file it cannot read back (lower case).
_DAMAGE_SIGNS = (
    "corrupt database file",
    "checksum",
    "could not read enough bytes",
    "not a valid duckdb database file",
    "replaying wal",
    "invalid block",
    "database has been invalidated",
)

Con = duckdb.DuckDBPyConnection


@dataclass(frozen=True)
class SnapshotInfo:
    """One snapshot, as its manifest describes it."""

    number: int
    created_at: dt.datetime  # naive UTC
    path: Path
    reason: str  # "batch", "decisions" or "manual"
    batches: int
    audit_entries: int
    audit_seq: int  # last audit seq it holds (0: none)
    audit_hash: str
    regions: int
    types: int
    schema_version: int
    rows: dict[str, int]
    seconds: float  # time the export took

    def label(self) -> str:
        return f"#{self.number} {self.created_at:%Y-%m-%d %H:%M:%S} UTC"


@dataclass(frozen=True)
class LostEntry:
    """An audit entry of the damaged file that the restored state does not hold."""

    seq: int
    ts: dt.datetime | None
    actor: str
    action: str
    target: dict[str, Any] | None  # None when that column could not be read


@dataclass(frozen=True)
class RestoreResult:
    """What :meth:`storage.Workspace.restore` did."""

    snapshot: SnapshotInfo
    database: Path
    #: The damaged file (and its ``.wal``) under their new names; empty if there was none.
    moved_aside: list[Path]
    #: Audit entries of the damaged file after the snapshot (``None``: cannot tell).
    lost: list[LostEntry] | None
    #: How many entries were lost when only that much could be read (else ``len(lost)``).
    lost_count: int | None
    #: One sentence on what could (not) be read of the damaged file.
    lost_note: str
    #: The UTC stamp of the restore (in the names of what was set aside).
    stamp: str


def utc_stamp(now: dt.datetime | None = None) -> str:
    return (now or dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)).strftime(STAMP)


def _quote(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ------------------------------------------------------------------------ damage
def looks_damaged(exc: BaseException, *, reading: bool = False) -> bool:
    """Whether a DuckDB error says the file cannot be read back as written.

    ``reading``: the error came from opening the file or :func:`verify_readable`, where an
    internal or deserialisation error can only come from the bytes read.
    """
    seen: set[int] = set()
    err: BaseException | None = exc
    while err is not None and id(err) not in seen:  # the error itself, or one it masks
        seen.add(id(err))
        if isinstance(err, duckdb.Error):
            if reading and isinstance(
                err,
                (duckdb.InternalException, duckdb.FatalException, duckdb.SerializationException),
            ):
                return True
            text = str(err).lower()
            if any(sign in text for sign in _DAMAGE_SIGNS):
                return True
        err = err.__cause__ or err.__context__
    return False


def user_tables(con: Con) -> list[str]:
    rows = con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() "
        "AND schema_name = 'main' ORDER BY table_name"
    ).fetchall()
    return [r[0] for r in rows]


def verify_readable(con: Con) -> None:
    """Read every column of every table once (DuckDB checks each block's checksum as it
    loads it), and look one key up in each primary key and unique index (which loads its
    root blocks; DuckDB loads an index lazily, so the rest of a large one is only read by
    the writes that need it). Raises DuckDB's error on the first block that cannot be read
    back."""
    for table in user_tables(con):
        con.execute(f'SELECT bit_xor(hash(COLUMNS(*))), count(*) FROM "{table}"').fetchall()
    keys = con.execute(
        "SELECT table_name, constraint_column_names FROM duckdb_constraints() "
        "WHERE database_name = current_database() AND schema_name = 'main' "
        "AND constraint_type IN ('PRIMARY KEY', 'UNIQUE') ORDER BY table_name, constraint_index"
    ).fetchall()
    for table, columns in keys:
        names = ", ".join(f'"{c}"' for c in columns)
        first = con.execute(f'SELECT {names} FROM "{table}" LIMIT 1').fetchone()
        if first is not None:
            where = " AND ".join(f'"{c}" = ?' for c in columns)
            con.execute(f'SELECT count(*) FROM "{table}" WHERE {where}', list(first)).fetchall()


def damaged_error(root: Path, name: str, db: Path, exc: BaseException) -> DamagedWorkspaceError:
    """The one-line error for a damaged file: what, which snapshots, the restore command."""
    reason = _first_line(exc)
    snaps = list_snapshots(root)
    what = f"workspace {name!r}: the database file {db} looks damaged ({reason})"
    if snaps:
        listed = ", ".join(s.label() for s in snaps)
        how = (
            f"{len(snaps)} snapshot(s) to restore from, newest first: {listed}; restore the "
            f"newest with: protoatlas restore --home {root.parent} --workspace {name} "
            "(--list to see them, --snapshot N for another one; the damaged file is kept)"
        )
    else:
        how = (
            f"there is no snapshot under {root / SNAPSHOTS} to restore from: restore the "
            "folder from a backup, or move the file aside to start an empty workspace"
        )
    return DamagedWorkspaceError(f"{what}; {how}", path=db, snapshots=snaps, reason=reason)


# --------------------------------------------------------------------- snapshots
def _read_manifest(path: Path, number: int) -> SnapshotInfo | None:
    try:
        m = json.loads((path / MANIFEST).read_text())
        return SnapshotInfo(
            number=number,
            created_at=dt.datetime.fromisoformat(m["created_at"]),
            path=path,
            reason=str(m["reason"]),
            batches=int(m["batches"]),
            audit_entries=int(m["audit_entries"]),
            audit_seq=int(m["audit_seq"]),
            audit_hash=str(m["audit_hash"]),
            regions=int(m["regions"]),
            types=int(m["types"]),
            schema_version=int(m["schema_version"]),
            rows={str(k): int(v) for k, v in m["rows"].items()},
            seconds=float(m["seconds"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _numbered(folder: Path) -> list[tuple[int, Path]]:
    if not folder.is_dir():
        return []
    out = []
    for entry in folder.iterdir():
        m = _DIR.match(entry.name)
        if m and entry.is_dir():
            out.append((int(m.group(1)), entry))
    return sorted(out, reverse=True)


def list_snapshots(root: Path) -> list[SnapshotInfo]:
    """The complete snapshots of the workspace folder ``root``, newest first."""
    out = []
    for number, path in _numbered(root / SNAPSHOTS):
        info = _read_manifest(path, number)
        if info is not None:
            out.append(info)
    return out


def _remove(path: Path) -> None:
    """Rename away then delete, so a half-deleted snapshot is never listed."""
    drop = path.with_name(f"{DROP_PREFIX}{path.name}-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(path, drop)
    except OSError:
        return
    shutil.rmtree(drop, ignore_errors=True)


def _clear_leftovers(folder: Path) -> None:
    """Temporary folders of snapshots that were interrupted (a killed process)."""
    for entry in folder.iterdir():
        if entry.name.startswith((TMP_PREFIX, DROP_PREFIX)):
            shutil.rmtree(entry, ignore_errors=True)


def write_snapshot(
    root: Path, cur: Con, *, reason: str, keep: int, sync: bool = True
) -> SnapshotInfo:
    """Export the state ``cur`` sees (it must be in a read transaction) as the next
    snapshot of ``root``, then drop the oldest beyond ``keep``. One writer per folder."""
    t0 = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    folder = root / SNAPSHOTS
    folder.mkdir(exist_ok=True)
    _clear_leftovers(folder)
    number = max((n for n, _ in _numbered(folder)), default=0) + 1
    tables = user_tables(cur)
    rows = {t: int(fetch_value(cur, f'SELECT count(*) FROM "{t}"')) for t in tables}
    seq, digest = audit.head(cur) if "audit_log" in rows else (0, audit.GENESIS)
    version = int(fetch_value(cur, "SELECT coalesce(max(version), 0) FROM schema_version"))
    tmp = folder / f"{TMP_PREFIX}{number}-{uuid.uuid4().hex}"
    try:
        cur.execute(f"EXPORT DATABASE {_quote(tmp)} (FORMAT parquet)")
        seconds = (dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) - t0).total_seconds()
        manifest = {
            "number": number,
            "created_at": t0.isoformat(),
            "reason": reason,
            "batches": rows.get("batches", 0),
            "audit_entries": rows.get("audit_log", 0),
            "audit_seq": seq,
            "audit_hash": digest,
            "regions": rows.get("regions", 0),
            "types": rows.get("types", 0),
            "schema_version": version,
            "rows": rows,
            "seconds": round(seconds, 4),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        if sync:
            os.sync()
        final = folder / f"{number}-{utc_stamp(t0)}"
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for _, old in _numbered(folder)[keep:]:
        _remove(old)
    info = _read_manifest(final, number)
    assert info is not None
    return info


def decisions_after(cur: Con, seq: int) -> int:
    """Reviewer decisions in the audit log after ``seq``."""
    return int(
        fetch_value(
            cur,
            "SELECT count(*) FROM audit_log WHERE seq > ? "
            "AND action IN (SELECT unnest(?::VARCHAR[]))",
            [int(seq), sorted(DECISIONS)],
        )
    )


class Snapshotter:
    """When to snapshot one open database, and the worker that writes the snapshots.

    ``read()`` must give a cursor in a read transaction on the calling thread. Failures
    are logged (``storage.snapshots``) and never raised to the action that asked.
    """

    def __init__(
        self,
        root: Path,
        read: Callable[[], AbstractContextManager[Con]] | None = None,
        *,
        every: int,
        keep: int,
        background: bool,
        sync: bool,
        decisions: int = 0,
    ) -> None:
        self.root = root
        self._read = read
        self.every = every
        self.keep = keep
        self.background = background
        self.sync = sync
        self.decisions = decisions
        self.failures = 0
        self.last: SnapshotInfo | None = None
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._pending: str | None = None
        self._thread: threading.Thread | None = None

    def bind(self, read: Callable[[], AbstractContextManager[Con]]) -> None:
        self._read = read

    def decided(self, n: int = 1) -> None:
        """Count ``n`` reviewer decisions; snapshot when ``every`` are reached."""
        with self._lock:
            self.decisions += n
            due = self.decisions >= self.every
            if due:
                self.decisions = 0
        if due:
            self.request("decisions")

    def defer(self, reason: str) -> None:
        """A decision or batch inside the caller's open transaction: nothing is committed
        yet, so only count it (a batch makes the next decision take the snapshot)."""
        with self._lock:
            if reason == "batch":
                self.decisions = max(self.decisions, self.every - 1)
            else:
                self.decisions += 1

    def request(self, reason: str) -> None:
        """Write a snapshot now (or in the worker) of the last committed state."""
        with self._lock:
            self.decisions = 0  # any snapshot restarts the count
        if not self.background:
            self._write(reason)
            return
        with self._lock:
            self._pending = reason
            if self._thread is not None:
                return  # the running worker takes the request when it is done
            self._thread = threading.Thread(
                target=self._work, name="storage-snapshot", daemon=False
            )
            self._thread.start()

    def _work(self) -> None:
        while True:
            with self._lock:
                reason, self._pending = self._pending, None
                if reason is None:
                    self._thread = None  # under the lock: a later request starts a new one
                    return
            self._write(reason)

    def _write(self, reason: str) -> None:
        try:
            self.write(reason)
        except Exception as exc:  # noqa: BLE001 - a snapshot never fails the user's action
            self.failures += 1
            log.warning("snapshot of %s failed (%s): %s", self.root, reason, _first_line(exc))

    def write(self, reason: str) -> SnapshotInfo:
        """Write one snapshot now on this thread (raises on failure)."""
        if self._read is None:
            raise StorageError("the snapshotter is not bound to a database")
        with self._lock:
            self.decisions = 0
        with self._write_lock, self._read() as cur:
            info = write_snapshot(self.root, cur, reason=reason, keep=self.keep, sync=self.sync)
        self.last = info
        log.info("snapshot %d of %s written in %.3f s", info.number, self.root, info.seconds)
        return info

    def wait(self) -> None:
        """Until the worker has written every requested snapshot."""
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()


def base_seq(snaps: Sequence[SnapshotInfo], head_seq: int) -> int:
    """The audit seq decisions are counted from: that of the newest snapshot not ahead of
    the database (after a restore of an older snapshot, the newer ones are ahead)."""
    for s in snaps:
        if s.audit_seq <= head_seq:
            return s.audit_seq
    return 0


# ------------------------------------------------------------------------ restore
def pick(root: Path, name: str, number: int | None) -> SnapshotInfo:
    snaps = list_snapshots(root)
    if not snaps:
        raise NotFoundError(
            f"workspace {name!r} ({root}) has no snapshot under {root / SNAPSHOTS}: "
            "nothing to restore from (snapshots are written after each batch and every "
            "few reviewer decisions)"
        )
    if number is None:
        return snaps[0]
    for s in snaps:
        if s.number == number:
            return s
    have = ", ".join(str(s.number) for s in snaps)
    raise NotFoundError(f"workspace {name!r} has no snapshot {number}; it has {have}")


def load_snapshot(snap: SnapshotInfo, target: Path) -> set[tuple[int, str]]:
    """Import ``snap`` into the new file ``target`` and check it against its manifest;
    returns the (seq, hash) of every audit entry it holds."""
    con = duckdb.connect(str(target))
    try:
        con.execute(f"IMPORT DATABASE {_quote(snap.path)}")
        for table, n in snap.rows.items():
            got = int(fetch_value(con, f'SELECT count(*) FROM "{table}"'))
            if got != n:
                raise StorageError(f"table {table} has {got} rows, the manifest says {n}")
        seq, digest = audit.head(con) if "audit_log" in snap.rows else (0, audit.GENESIS)
        if (seq, digest) != (snap.audit_seq, snap.audit_hash):
            raise StorageError(f"its audit head is {seq}, the manifest says {snap.audit_seq}")
        chain = {
            (int(s), str(h))
            for s, h in (
                con.execute("SELECT seq, hash FROM audit_log").fetchall()
                if "audit_log" in snap.rows
                else []
            )
        }
        con.execute("CHECKPOINT")
        return chain
    finally:
        con.close()


def move_aside(db: Path, stamp: str) -> list[Path]:
    """Rename the database file and its WAL to ``<file>.damaged-<stamp>[.wal]``."""
    moved = []
    target = db.with_name(f"{db.name}{DAMAGED_MARK}{stamp}")
    if db.exists():
        os.rename(db, target)
        moved.append(target)
    wal = db.with_name(db.name + ".wal")
    if wal.exists():
        wal_target = target.with_name(target.name + ".wal")
        os.rename(wal, wal_target)
        moved.append(wal_target)
    return moved


def lost_entries(
    damaged: Path | None, chain: Iterable[tuple[int, str]], snap_seq: int
) -> tuple[list[LostEntry] | None, int | None, str]:
    """Audit entries of the damaged file that are not in the restored chain, as far as
    the file can be read: (entries or None, count or None, a sentence)."""
    if damaged is None:
        return None, None, "there was no database file to compare with: cannot tell"
    known = set(chain)
    try:
        con = duckdb.connect(str(damaged), read_only=True)
    except duckdb.Error as exc:
        return None, None, f"the damaged file cannot be opened ({_first_line(exc)}): cannot tell"
    try:
        errors = []
        for cols in ("seq, ts, actor, action, target, hash", "seq, ts, actor, action, NULL, hash"):
            try:
                rows = con.execute(f"SELECT {cols} FROM audit_log ORDER BY seq").fetchall()
            except duckdb.Error as exc:
                errors.append(_first_line(exc))
                continue
            lost = [
                LostEntry(
                    int(r[0]), r[1], str(r[2]), str(r[3]), None if r[4] is None else _json(r[4])
                )
                for r in rows
                if (int(r[0]), str(r[5])) not in known
            ]
            note = "its audit log was read" + (" (without targets)" if "NULL" in cols else "")
            return lost, len(lost), note
        try:
            head = str(fetch_value(con, "SELECT value FROM meta WHERE key = 'audit_head'"))
            last = int(head.split(":")[0])
            n = max(0, last - snap_seq)
            return (
                None,
                n,
                f"its audit log cannot be read ({errors[0]}), but its head is entry {last}: "
                f"about {n} entries after the snapshot's {snap_seq}",
            )
        except (duckdb.Error, StorageError, ValueError) as exc:
            return None, None, f"its audit log cannot be read ({errors[0]}; {exc}): cannot tell"
    finally:
        con.close()


def _json(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
