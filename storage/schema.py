"""Workspace schema and its ordered forward migrations.

``MIGRATIONS[i]`` brings a workspace from version ``i`` to ``i + 1``; each step runs in its
own transaction together with the row it adds to ``schema_version``, so a crash leaves the
file at the previous version and the next open resumes. Steps only CREATE TABLE,
ADD COLUMN and UPDATE/INSERT data, and no table has a secondary index (CREATE INDEX):
in DuckDB 2.0.1 ``ALTER TABLE .. ADD COLUMN`` works on tables with a PRIMARY KEY or
UNIQUE constraint, but RENAME COLUMN and DROP COLUMN fail on a table that an index
depends on (tests/test_storage_schema.py checks this stays true).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import duckdb
import numpy as np

from storage import audit, summary
from storage.errors import SchemaError, ValidationError
from storage.sql import fetch_value, utcnow

Connection = duckdb.DuckDBPyConnection


def vector_tables_sql(dim: int) -> list[str]:
    """The two tables whose column type depends on the workspace embedding dimension."""
    return [
        f"""CREATE TABLE embeddings(
            region_id BIGINT NOT NULL,
            model_version BIGINT NOT NULL,
            vector FLOAT[{dim}] NOT NULL,
            PRIMARY KEY (region_id, model_version))""",
        f"""CREATE TABLE prototypes(
            model_version BIGINT NOT NULL,
            type_id BIGINT NOT NULL,
            vector FLOAT[{dim}] NOT NULL,
            n_members BIGINT NOT NULL,
            PRIMARY KEY (model_version, type_id))""",
    ]


def _v1_core(con: Connection, dim: int) -> None:
    """Detection and discovery results: batches, images, regions, vectors, types."""
    for sql in [
        "CREATE TABLE meta(key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL)",
        """CREATE TABLE batches(
            id BIGINT PRIMARY KEY, name VARCHAR NOT NULL, params VARCHAR NOT NULL,
            created_at TIMESTAMP NOT NULL, model_version BIGINT)""",
        """CREATE TABLE images(
            id BIGINT PRIMARY KEY, sha256 VARCHAR NOT NULL UNIQUE, ext VARCHAR NOT NULL,
            width INTEGER NOT NULL, height INTEGER NOT NULL, n_bytes BIGINT NOT NULL,
            created_at TIMESTAMP NOT NULL)""",
        """CREATE TABLE batch_images(
            batch_id BIGINT NOT NULL, image_id BIGINT NOT NULL, name VARCHAR NOT NULL,
            anomaly_score DOUBLE, is_anomalous BOOLEAN,
            map_blob VARCHAR, map_min DOUBLE, map_max DOUBLE,
            PRIMARY KEY (batch_id, name))""",
        """CREATE TABLE regions(
            id BIGINT PRIMARY KEY, batch_id BIGINT NOT NULL, image_id BIGINT NOT NULL,
            box_top INTEGER NOT NULL, box_left INTEGER NOT NULL,
            box_bottom INTEGER NOT NULL, box_right INTEGER NOT NULL,
            area BIGINT NOT NULL, anomaly_score DOUBLE, mask VARCHAR)""",
        """CREATE TABLE model_versions(
            id BIGINT PRIMARY KEY, parent BIGINT, kind VARCHAR NOT NULL,
            created_at TIMESTAMP NOT NULL, blob VARCHAR, metrics VARCHAR NOT NULL)""",
        """CREATE TABLE types(
            id BIGINT PRIMARY KEY, name VARCHAR NOT NULL, status VARCHAR NOT NULL,
            created_at TIMESTAMP NOT NULL)""",
        """CREATE TABLE assignments(
            region_id BIGINT PRIMARY KEY, type_id BIGINT, confidence DOUBLE,
            model_version BIGINT)""",
        *vector_tables_sql(dim),
    ]:
        con.execute(sql)
    con.execute(
        "INSERT INTO meta VALUES ('embedding_dim', ?), ('created_at', ?), "
        "('next_type_number', '1')",
        [str(dim), utcnow().isoformat()],
    )


def _v2_review(con: Connection, dim: int) -> None:
    """Review: type versions/origin, assignment source and normal flag, the audit log."""
    for sql in [
        "ALTER TABLE types ADD COLUMN version BIGINT NOT NULL DEFAULT 1",
        "ALTER TABLE types ADD COLUMN origin VARCHAR NOT NULL DEFAULT 'model'",
        "ALTER TABLE types ADD COLUMN updated_at TIMESTAMP",
        "ALTER TABLE types ADD COLUMN merged_into BIGINT",
        "UPDATE types SET updated_at = created_at",
        "ALTER TABLE assignments ADD COLUMN source VARCHAR NOT NULL DEFAULT 'model'",
        "ALTER TABLE assignments ADD COLUMN is_normal BOOLEAN NOT NULL DEFAULT false",
        """CREATE TABLE audit_log(
            seq BIGINT PRIMARY KEY, ts TIMESTAMP NOT NULL, actor VARCHAR NOT NULL,
            action VARCHAR NOT NULL, target VARCHAR NOT NULL, type_ids BIGINT[] NOT NULL,
            before VARCHAR NOT NULL, after VARCHAR NOT NULL)""",
    ]:
        con.execute(sql)
    # Types that existed before the audit log get a synthetic creation entry, so the rule
    # "every type's state equals the after-state of its last audit entry" holds from here on.
    fields = ("name", "status", "origin", "merged_into", "version")  # frozen at v2
    rows = con.execute(f"SELECT id, {', '.join(fields)} FROM types ORDER BY id").fetchall()
    if rows:
        ids = [r[0] for r in rows]
        after = {str(r[0]): dict(zip(fields, r[1:])) for r in rows}
        audit.append_raw(
            con,
            actor="migration",
            action="adopt_types",
            target={"schema_version": 2},
            type_ids=ids,
            before={"types": {str(i): None for i in ids}},
            after={"types": after},
            chained=False,
        )


def _v3_suggestions_and_chain(con: Connection, dim: int) -> None:
    """Suggestions queue; audit rows become a sha256 hash chain (back-filled here)."""
    for sql in [
        """CREATE TABLE suggestions(
            id BIGINT PRIMARY KEY, kind VARCHAR NOT NULL, target VARCHAR NOT NULL,
            score DOUBLE, reason VARCHAR, status VARCHAR NOT NULL, answer VARCHAR,
            answered_by VARCHAR, answered_at TIMESTAMP, created_at TIMESTAMP NOT NULL,
            model_version BIGINT)""",
        "ALTER TABLE audit_log ADD COLUMN prev_hash VARCHAR",
        "ALTER TABLE audit_log ADD COLUMN hash VARCHAR",
    ]:
        con.execute(sql)
    audit.backfill_chain(con)


def _v4_type_summary(con: Connection, dim: int) -> None:
    """Per-type summary maintained by every write, so the types page does not GROUP BY."""
    con.execute("""CREATE TABLE type_stats(
        type_id BIGINT PRIMARY KEY, n_regions BIGINT NOT NULL, n_images BIGINT NOT NULL,
        sum_confidence DOUBLE NOT NULL)""")
    summary.rebuild(con)


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    apply: Callable[[Connection, int], None]


MIGRATIONS: list[Migration] = [
    Migration(1, "core tables", _v1_core),
    Migration(2, "review: type versions, assignment source, audit log", _v2_review),
    Migration(3, "suggestions and audit hash chain", _v3_suggestions_and_chain),
    Migration(4, "type summary for the types page", _v4_type_summary),
]
LATEST = MIGRATIONS[-1].version


def current_version(con: Connection) -> int:
    """Schema version of an open file (0 for a new, empty file)."""
    exists = fetch_value(
        con, "SELECT count(*) FROM information_schema.tables WHERE table_name = 'schema_version'"
    )
    if not exists:
        return 0
    value = fetch_value(con, "SELECT max(version) FROM schema_version")
    return int(value or 0)


def embedding_dim(con: Connection) -> int:
    """The vector dimension recorded in ``meta`` (every migrated workspace has one)."""
    return int(fetch_value(con, "SELECT value FROM meta WHERE key='embedding_dim'"))


def migrate(con: Connection, *, dim: int, upto: int = LATEST, label: str = "workspace") -> int:
    """Apply migrations ``current+1 .. upto``; returns the number applied."""
    con.execute(
        "CREATE TABLE IF NOT EXISTS schema_version("
        "version INTEGER PRIMARY KEY, name VARCHAR NOT NULL, applied_at TIMESTAMP)"
    )
    have = current_version(con)
    if have > LATEST:
        raise SchemaError(
            f"{label} has schema version {have} but this ProtoAtlas knows up to "
            f"{LATEST}; upgrade ProtoAtlas to open it"
        )
    if have > 0:
        dim = embedding_dim(con)
    applied = 0
    for step in MIGRATIONS:
        if have < step.version <= upto:
            con.execute("BEGIN TRANSACTION")
            try:
                step.apply(con, dim)
                con.execute(
                    "INSERT INTO schema_version VALUES (?, ?, ?)",
                    [step.version, step.name, utcnow()],
                )
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            applied += 1
    return applied


def set_embedding_dim(con: Connection, name: str, dim: int) -> None:
    """Inside a transaction: make the vector tables ``FLOAT[dim]`` if they are empty."""
    if not isinstance(dim, (int, np.integer)) or not 1 <= int(dim) <= 65536:
        raise ValidationError(f"embedding dimension must be an integer in 1..65536, got {dim!r}")
    dim = int(dim)
    have = embedding_dim(con)
    if have == dim:
        return
    stored = fetch_value(
        con, "SELECT (SELECT count(*) FROM embeddings) + (SELECT count(*) FROM prototypes)"
    )
    if stored:
        raise ValidationError(
            f"workspace {name!r} stores {have}-d embeddings; got {dim}-d "
            "vectors (use a new workspace for another embedding size)"
        )
    con.execute("DROP TABLE embeddings")
    con.execute("DROP TABLE prototypes")
    for sql in vector_tables_sql(dim):
        con.execute(sql)
    con.execute("UPDATE meta SET value = ? WHERE key = 'embedding_dim'", [str(dim)])
