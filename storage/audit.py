"""Append-only, hash-chained audit log and the state snapshots its rows carry.

Row hash = sha256(prev_hash + "\\n" + canonical JSON of
[seq, ts, actor, action, target, type_ids, before, after]) where target/before/after are the
stored JSON texts and ts is the ISO text of the stored timestamp. The first row's prev_hash
is 64 zeros. The head (last seq and hash) is also kept in ``meta`` so that a truncated tail
is noticed. The API only ever INSERTs into ``audit_log``.

Snapshots (``before``/``after``) are ``{"types": {id: state|null}, "assignments":
{region_id: state|null}, "suggestions": {id: state}}``; ``null`` means "did not exist".
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import duckdb

from storage.sql import next_id, utcnow

GENESIS = "0" * 64
TYPE_FIELDS = ("name", "status", "origin", "merged_into", "version")
ASSIGNMENT_FIELDS = ("type_id", "is_normal", "source", "confidence", "model_version")
SUGGESTION_FIELDS = ("status", "answer", "answered_by", "answered_at")


def canonical(value: Any) -> str:
    """Deterministic JSON text (sorted keys, no spaces, no NaN)."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), allow_nan=False, default=_default
    )


def _default(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(value, "item"):  # numpy scalar
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def row_hash(
    prev: str,
    seq: int,
    ts_iso: str,
    actor: str,
    action: str,
    target: str,
    type_ids: Iterable[int],
    before: str,
    after: str,
) -> str:
    body = canonical(
        [int(seq), ts_iso, actor, action, target, [int(t) for t in type_ids], before, after]
    )
    return hashlib.sha256((prev + "\n" + body).encode()).hexdigest()


def _ids_sql(ids: Iterable[int]) -> list[int]:
    return sorted({int(i) for i in ids})


def _snapshot_rows(
    con: duckdb.DuckDBPyConnection, table: str, key: str, fields: Sequence[str], ids: Iterable[int]
) -> dict[str, Any]:
    """{str(id): {field: value} or None when the row does not exist} for ``ids``."""
    ids = _ids_sql(ids)
    out: dict[str, Any] = {str(i): None for i in ids}
    if ids:
        rows = con.execute(
            f"SELECT {key}, {', '.join(fields)} FROM {table} "
            f"WHERE {key} IN (SELECT unnest(?::BIGINT[]))",
            [ids],
        ).fetchall()
        for row in rows:
            out[str(row[0])] = dict(zip(fields, row[1:]))
    return out


def snapshot_types(con: duckdb.DuckDBPyConnection, ids: Iterable[int]) -> dict[str, Any]:
    return _snapshot_rows(con, "types", "id", TYPE_FIELDS, ids)


def snapshot_assignments(
    con: duckdb.DuckDBPyConnection, region_ids: Iterable[int]
) -> dict[str, Any]:
    return _snapshot_rows(con, "assignments", "region_id", ASSIGNMENT_FIELDS, region_ids)


def snapshot_suggestions(con: duckdb.DuckDBPyConnection, ids: Iterable[int]) -> dict[str, Any]:
    ids = _ids_sql(ids)
    out: dict[str, Any] = {}
    if ids:
        rows = con.execute(
            f"SELECT id, {', '.join(SUGGESTION_FIELDS)} FROM suggestions "
            "WHERE id IN (SELECT unnest(?::BIGINT[]))",
            [ids],
        ).fetchall()
        for row in rows:
            out[str(row[0])] = json.loads(canonical(dict(zip(SUGGESTION_FIELDS, row[1:]))))
    return out


def head(con: duckdb.DuckDBPyConnection) -> tuple[int, str]:
    """(last seq, its hash) of the chain, read from the log itself."""
    row = con.execute("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
    return (0, GENESIS) if row is None else (int(row[0]), row[1] or GENESIS)


def _set_meta(con: duckdb.DuckDBPyConnection, key: str, value: str) -> None:
    con.execute(
        "INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [key, value],
    )


def append_raw(
    con: duckdb.DuckDBPyConnection,
    *,
    actor: str,
    action: str,
    target: Mapping[str, Any],
    type_ids: Iterable[int],
    before: Mapping[str, Any],
    after: Mapping[str, Any],
    chained: bool = True,
) -> int:
    """Append one row (inside the caller's transaction); returns its seq."""
    ts = utcnow()
    ids = _ids_sql(type_ids)
    target_s, before_s, after_s = canonical(target), canonical(before), canonical(after)
    if not chained:  # schema version 2 had no hash columns
        seq = next_id(con, "audit_log", "seq")
        con.execute(
            "INSERT INTO audit_log VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [seq, ts, actor, action, target_s, ids, before_s, after_s],
        )
        return seq
    seq_prev, prev = head(con)
    seq = seq_prev + 1
    digest = row_hash(prev, seq, ts.isoformat(), actor, action, target_s, ids, before_s, after_s)
    con.execute(
        "INSERT INTO audit_log (seq, ts, actor, action, target, type_ids, before, "
        "after, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [seq, ts, actor, action, target_s, ids, before_s, after_s, prev, digest],
    )
    _set_meta(con, "audit_head", f"{seq}:{digest}")
    return seq


def backfill_chain(con: duckdb.DuckDBPyConnection) -> None:
    """Migration step: compute prev_hash/hash for rows written before the chain existed."""
    prev, last = GENESIS, 0
    rows = con.execute(
        "SELECT seq, ts, actor, action, target, type_ids, before, after FROM audit_log ORDER BY seq"
    ).fetchall()
    for seq, ts, actor, action, target, type_ids, before, after in rows:
        digest = row_hash(prev, seq, ts.isoformat(), actor, action, target, type_ids, before, after)
        con.execute(
            "UPDATE audit_log SET prev_hash = ?, hash = ? WHERE seq = ?", [prev, digest, seq]
        )
        prev, last = digest, seq
    _set_meta(con, "audit_head", f"{last}:{prev}")


def verify_chain(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str]]:
    """Problems of the chain as (message, where); empty when intact."""
    problems: list[tuple[str, str]] = []
    prev, expected_seq = GENESIS, 1
    cur = con.execute(
        "SELECT seq, ts, actor, action, target, type_ids, before, after, "
        "prev_hash, hash FROM audit_log ORDER BY seq"
    )
    while True:
        batch = cur.fetchmany(10_000)
        if not batch:
            break
        for seq, ts, actor, action, target, type_ids, before, after, prev_hash, digest in batch:
            where = f"audit_log seq {seq}"
            if seq != expected_seq:
                problems.append(
                    (f"audit sequence jumps from {expected_seq - 1} to {seq} (rows deleted)", where)
                )
            if prev_hash != prev:
                problems.append(("audit row does not link to the previous row's hash", where))
            actual = row_hash(
                prev_hash or GENESIS,
                seq,
                ts.isoformat(),
                actor,
                action,
                target,
                type_ids,
                before,
                after,
            )
            if actual != digest:
                problems.append(("audit row content does not match its hash (edited)", where))
            prev, expected_seq = digest or GENESIS, seq + 1
    stored = con.execute("SELECT value FROM meta WHERE key = 'audit_head'").fetchone()
    last = f"{expected_seq - 1}:{prev}"
    if stored is None and expected_seq > 1:
        problems.append(("the audit head is missing from meta", "meta audit_head"))
    elif stored is not None and stored[0] != last:
        problems.append(
            (
                f"audit head in meta ({stored[0][:20]}...) differs from the last row "
                f"({last[:20]}...): rows removed from the end or meta edited",
                "meta audit_head",
            )
        )
    return problems
