"""SQL helpers every storage module shares: the clock, the type-version bump, new ids
and numpy columns exposed to SQL as a view.

This module imports no other ``storage`` module, so anything can import it at the top
(``schema`` and ``audit`` used to import each other for the clock).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import duckdb

Con = duckdb.DuckDBPyConnection


def utcnow() -> dt.datetime:
    """Naive UTC timestamp with microsecond precision (what DuckDB's TIMESTAMP stores)."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def bump_type_versions(con: duckdb.DuckDBPyConnection, type_ids: Iterable[int],
                       now: Any) -> None:
    """Add one to the version of each type in ``type_ids`` (optimistic concurrency: an
    action that expected the old version is then refused) and stamp ``updated_at``."""
    ids = sorted({int(t) for t in type_ids})
    if ids:
        con.execute("UPDATE types SET version = version + 1, updated_at = ? "
                    "WHERE id IN (SELECT unnest(?::BIGINT[]))", [now, ids])


def next_id(con: Con, table: str, column: str = "id") -> int:
    return int(con.execute(f"SELECT coalesce(max({column}), 0) + 1 FROM {table}").fetchone()[0])


@contextmanager
def registered(con: Con, name: str, columns: Mapping[str, Any]) -> Iterator[None]:
    """Expose numpy columns to SQL as the view ``name`` for the duration of the block.

    DuckDB 2.0 refuses ``register`` while a previous ``execute`` result is unfinished
    (an INSERT's row count counts), hence ``complete()`` first.
    """
    con.complete()
    con.register(name, dict(columns))
    try:
        yield
    finally:
        con.complete()
        con.unregister(name)


def insert_from(con: Con, sql: str, columns: Mapping[str, Any],
                params: Sequence[Any] | None = None) -> None:
    """Run ``sql`` (which reads the view ``_src``) over numpy columns."""
    with registered(con, "_src", columns):
        con.execute(sql, params)
