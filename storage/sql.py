"""SQL helpers every storage module shares: the clock, the type-version bump, new ids,
single-row reads and numpy columns exposed to SQL as a view.

This module imports no other ``storage`` module but ``errors``, so anything can import it
at the top (``schema`` and ``audit`` used to import each other for the clock).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import duckdb

from storage.errors import StorageError

Con = duckdb.DuckDBPyConnection


def utcnow() -> dt.datetime:
    """Naive UTC timestamp with microsecond precision (what DuckDB's TIMESTAMP stores)."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def bump_type_versions(con: duckdb.DuckDBPyConnection, type_ids: Iterable[int], now: Any) -> None:
    """Add one to the version of each type in ``type_ids`` (optimistic concurrency: an
    action that expected the old version is then refused) and stamp ``updated_at``."""
    ids = sorted({int(t) for t in type_ids})
    if ids:
        con.execute(
            "UPDATE types SET version = version + 1, updated_at = ? "
            "WHERE id IN (SELECT unnest(?::BIGINT[]))",
            [now, ids],
        )


def fetch_one(con: Con, sql: str, params: Sequence[Any] | None = None) -> tuple[Any, ...]:
    """The row of a query that always returns one (an aggregate such as ``count(*)``, or a
    ``meta`` entry every migrated workspace has); a missing row is a :class:`StorageError`
    naming the query, not a ``TypeError`` on ``None``."""
    row = con.execute(sql, params).fetchone()
    if row is None:
        raise StorageError(f"the workspace returned no row for: {' '.join(sql.split())}")
    return row


def fetch_value(con: Con, sql: str, params: Sequence[Any] | None = None) -> Any:
    """The first column of :func:`fetch_one`."""
    return fetch_one(con, sql, params)[0]


#: ``meta`` key of the largest id a table ever had (kept by ``storage.removal``).
MAX_ID_KEY = "max_id.{table}"


def next_id(con: Con, table: str, column: str = "id") -> int:
    """One more than the largest ``column`` of ``table`` (1 for an empty table), or than
    the largest it had before a delete (``meta`` ``max_id.<table>``): ids are never reused."""
    return int(
        fetch_value(
            con,
            f"SELECT greatest(coalesce(max({column}), 0), coalesce((SELECT CAST(value AS "
            f"BIGINT) FROM meta WHERE key = ?), 0)) + 1 FROM {table}",
            [MAX_ID_KEY.format(table=table)],
        )
    )


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
    except BaseException:
        # keep the statement's own error: after it the transaction is aborted, and
        # unregistering there raises "Current transaction is aborted" instead
        try:
            con.complete()
            con.unregister(name)
        except duckdb.Error:
            pass
        raise
    con.complete()
    con.unregister(name)


def insert_from(
    con: Con, sql: str, columns: Mapping[str, Any], params: Sequence[Any] | None = None
) -> None:
    """Run ``sql`` (which reads the view ``_src``) over numpy columns."""
    with registered(con, "_src", columns):
        con.execute(sql, params)
