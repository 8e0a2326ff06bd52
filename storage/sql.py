"""SQL helpers every storage module shares: the clock and the type-version bump.

This module imports no other ``storage`` module, so anything can import it at the top
(``schema`` and ``audit`` used to import each other for the clock).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

import duckdb


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
