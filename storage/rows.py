"""Rows the writers share (ingest, retrain, review): new types, type references, regions.

``create_types`` inserts types with automatic names ``T<n>``; ``resolve_refs`` turns the
type references of model input (a new-type key, an existing id, or ``None``) into ids;
``require_regions`` refuses region ids that do not exist.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import duckdb
import numpy as np

from storage.checks import check_type_name
from storage.errors import NotFoundError, ValidationError
from storage.models import NewType
from storage.sql import fetch_one, next_id, registered

Con = duckdb.DuckDBPyConnection


def types_state(con: Con) -> dict[int, tuple[str, str, int | None]]:
    """id -> (lower name, status, merged_into) of every type."""
    return {
        r[0]: (r[1].lower(), r[2], r[3])
        for r in con.execute("SELECT id, name, status, merged_into FROM types").fetchall()
    }


def follow_merges(types: Mapping[int, tuple[str, str, int | None]], type_id: int) -> int:
    """The type ``type_id`` ended up in after merges (stops on a merge cycle)."""
    seen = set()
    while True:
        _, status, merged_into = types[type_id]
        if status != "merged" or merged_into is None or type_id in seen:
            return type_id
        seen.add(type_id)
        type_id = int(merged_into)


def create_types(
    con: Con, new_types: Sequence[NewType], *, origin: str, status: str, now: Any
) -> dict[str, int]:
    """Insert new types (automatic names ``T<id>``, the type's own id, where none is given,
    so that a type has one number everywhere); key -> id."""
    if not new_types:
        return {}
    keys = [t.key for t in new_types]
    if len(set(keys)) != len(keys) or not all(isinstance(k, str) and k for k in keys):
        raise ValidationError("new type keys must be distinct non-empty strings")
    taken = {
        r[0]
        for r in con.execute("SELECT lower(name) FROM types WHERE status <> 'merged'").fetchall()
    }
    first = next_id(con, "types")
    out, rows = {}, []
    for i, t in enumerate(new_types):
        if t.name is None:
            name, n = f"T{first + i}", 1
            while name.lower() in taken:  # a reviewer gave another type this name
                name, n = f"T{first + i}-{n}", n + 1
        else:
            name = check_type_name(t.name)
            if name.lower() in taken:
                raise ValidationError(
                    f"a type named {name!r} already exists; type names are "
                    "unique (case-insensitive)"
                )
        taken.add(name.lower())
        out[t.key] = first + i
        rows.append([first + i, name, status, now, 1, origin, now, None])
    con.executemany(
        "INSERT INTO types (id, name, status, created_at, version, origin, "
        "updated_at, merged_into) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    return out


def resolve_refs(
    con: Con, refs: Sequence[Any], new_ids: Mapping[str, int], follow: bool = True
) -> np.ndarray:
    """Type references -> int64 ids (-1 for None); merged types are followed if ``follow``."""
    types = types_state(con)
    cache: dict[Any, int] = {}
    out = np.empty(len(refs), dtype=np.int64)
    for i, ref in enumerate(refs):
        if ref in cache:
            out[i] = cache[ref]
            continue
        if ref is None:
            value = -1
        elif isinstance(ref, str):
            if ref not in new_ids:
                raise ValidationError(f"type key {ref!r} is not one of the new types")
            value = new_ids[ref]
        elif isinstance(ref, (int, np.integer)) and not isinstance(ref, bool):
            if int(ref) not in types:
                raise NotFoundError(f"no type with id {int(ref)}")
            value = follow_merges(types, int(ref)) if follow else int(ref)
        else:
            raise ValidationError(
                f"a type reference must be a new-type key (str), a type id "
                f"(int) or None, got {ref!r}"
            )
        cache[ref] = value
        out[i] = value
    return out


def require_regions(con: Con, region_ids: np.ndarray) -> None:
    """Raise :class:`NotFoundError` unless every id of ``region_ids`` (int64) is a region."""
    with registered(con, "_ids", {"rid": region_ids}):
        missing = fetch_one(
            con, "SELECT min(rid), count(*) FROM _ids WHERE rid NOT IN (SELECT id FROM regions)"
        )
    if missing[1]:
        raise NotFoundError(f"{missing[1]} region id(s) do not exist (e.g. {missing[0]})")
