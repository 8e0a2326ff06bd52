"""``doctor``: check a workspace's integrity. Sound = no problem of severity ``error``.

DuckDB enforces primary keys but the schema declares no foreign keys (DuckDB cannot ALTER
a table that others reference, which the migrations need), so references are checked here
by queries, together with files on disk, the audit hash chain, the audit log against the
current state, the type summary and the schema version.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

import duckdb

from storage import audit, schema, summary
from storage.models import Problem, Severity
from storage.sql import fetch_one

if TYPE_CHECKING:
    from storage.workspace import Workspace

# (query returning (count, example), message, where) -- each finds rows that break a rule.
_CHECKS: list[tuple[str, str, str]] = [
    (
        "SELECT count(*), min(batch_id) FROM batch_images WHERE batch_id NOT IN "
        "(SELECT id FROM batches)",
        "batch image rows whose batch does not exist",
        "batch_images.batch_id",
    ),
    (
        "SELECT count(*), min(image_id) FROM batch_images WHERE image_id NOT IN "
        "(SELECT id FROM images)",
        "batch image rows whose image does not exist",
        "batch_images.image_id",
    ),
    (
        "SELECT count(*), min(n) FROM (SELECT batch_id || '/' || image_id AS n FROM batch_images "
        "GROUP BY batch_id, image_id HAVING count(*) > 1)",
        "images listed twice in one batch",
        "batch_images",
    ),
    (
        "SELECT count(*), min(r.id) FROM regions r WHERE NOT EXISTS (SELECT 1 FROM batch_images "
        "bi WHERE bi.batch_id = r.batch_id AND bi.image_id = r.image_id)",
        "regions whose (batch, image) is not a batch image",
        "regions",
    ),
    (
        "SELECT count(*), min(r.id) FROM regions r JOIN images i ON i.id = r.image_id "
        "WHERE r.box_top < 0 OR r.box_left < 0 OR r.box_bottom > i.height OR "
        "r.box_right > i.width OR r.box_bottom <= r.box_top OR r.box_right <= r.box_left",
        "regions whose box is empty or outside the image",
        "regions.box_*",
    ),
    (
        "SELECT count(*), min(region_id) FROM assignments WHERE region_id NOT IN "
        "(SELECT id FROM regions)",
        "assignments of regions that do not exist",
        "assignments.region_id",
    ),
    (
        "SELECT count(*), min(region_id) FROM assignments WHERE type_id IS NOT NULL AND "
        "type_id NOT IN (SELECT id FROM types)",
        "assignments to types that do not exist",
        "assignments.type_id",
    ),
    (
        "SELECT count(*), min(region_id) FROM assignments WHERE is_normal AND type_id IS NOT NULL",
        "regions marked normal that still have a type",
        "assignments.is_normal",
    ),
    (
        "SELECT count(*), min(a.region_id) FROM assignments a JOIN types t ON t.id = a.type_id "
        "WHERE t.status = 'merged'",
        "assignments to a merged type",
        "assignments.type_id",
    ),
    (
        "SELECT count(*), min(region_id) FROM assignments WHERE source NOT IN "
        "('model', 'reviewer')",
        "assignments with an unknown source",
        "assignments.source",
    ),
    (
        "SELECT count(*), min(region_id) FROM assignments WHERE confidence < 0 OR confidence > 1",
        "assignment confidence outside [0, 1]",
        "assignments.confidence",
    ),
    (
        "SELECT count(*), min(region_id) FROM embeddings WHERE region_id NOT IN "
        "(SELECT id FROM regions)",
        "embeddings of regions that do not exist",
        "embeddings.region_id",
    ),
    (
        "SELECT count(*), min(model_version) FROM embeddings WHERE model_version NOT IN "
        "(SELECT id FROM model_versions)",
        "embeddings of model versions that do not exist",
        "embeddings.model_version",
    ),
    (
        "SELECT count(*), min(type_id) FROM prototypes WHERE type_id NOT IN (SELECT id FROM types)",
        "prototypes of types that do not exist",
        "prototypes.type_id",
    ),
    (
        "SELECT count(*), min(model_version) FROM prototypes WHERE model_version NOT IN "
        "(SELECT id FROM model_versions)",
        "prototypes of model versions that do not exist",
        "prototypes.model_version",
    ),
    (
        "SELECT count(*), min(id) FROM model_versions WHERE parent IS NOT NULL AND parent NOT IN "
        "(SELECT id FROM model_versions)",
        "model versions whose parent does not exist",
        "model_versions.parent",
    ),
    (
        "SELECT count(*), min(id) FROM batches WHERE model_version IS NOT NULL AND model_version "
        "NOT IN (SELECT id FROM model_versions)",
        "batches whose model version does not exist",
        "batches.model_version",
    ),
    (
        "SELECT count(*), min(id) FROM types WHERE status NOT IN "
        "('proposed', 'confirmed', 'rejected', 'merged') OR origin NOT IN ('model', 'reviewer')",
        "types with an unknown status or origin",
        "types.status",
    ),
    (
        "SELECT count(*), min(id) FROM types WHERE (status = 'merged') <> "
        "(merged_into IS NOT NULL) OR (merged_into IS NOT NULL AND merged_into NOT IN "
        "(SELECT id FROM types))",
        "merged types without a valid merged_into (or the reverse)",
        "types.merged_into",
    ),
    (
        "SELECT count(*), min(n) FROM (SELECT lower(name) AS n FROM types WHERE status <> 'merged' "
        "GROUP BY lower(name) HAVING count(*) > 1)",
        "type names used twice",
        "types.name",
    ),
    (
        "SELECT count(*), min(id) FROM suggestions WHERE status NOT IN "
        "('open', 'answered', 'skipped', 'stale')",
        "suggestions with an unknown status",
        "suggestions.status",
    ),
]


def doctor(ws: "Workspace", verify_hashes: bool = False) -> list[Problem]:
    """All problems found (empty list: the workspace is sound and consistent).

    ``verify_hashes`` also re-reads every image and blob file and checks its sha256
    (slow on large workspaces; by default only presence and size are checked).
    """
    problems: list[Problem] = []

    def add(severity: Severity, what: str, where: str) -> None:
        problems.append(Problem(severity, what, where))

    with ws.read() as cur:
        version = schema.current_version(cur)
        if version != schema.LATEST:
            add(
                "error",
                f"schema version is {version}, expected {schema.LATEST} "
                "(open the workspace for writing to migrate)",
                "schema_version",
            )
            return problems
        for sql, what, where in _CHECKS:
            count, example = fetch_one(cur, sql)
            if count:
                add("error", f"{count} {what} (e.g. {example})", where)
        _check_dim(cur, add)
        _check_summary(cur, add)
        for what, where in audit.verify_chain(cur):
            add("error", what, where)
        _check_audit_state(cur, add)
        _check_files(ws, cur, add, verify_hashes)
    return problems


def is_sound(problems: list[Problem]) -> bool:
    """The exit rule of the CLI: sound when no problem has severity ``error``."""
    return not any(p.severity == "error" for p in problems)


def _check_dim(cur: duckdb.DuckDBPyConnection, add: Any) -> None:
    dim = cur.execute("SELECT value FROM meta WHERE key = 'embedding_dim'").fetchone()
    if dim is None:
        add("error", "embedding dimension missing from meta", "meta.embedding_dim")
        return
    for table in ("embeddings", "prototypes"):
        kind = cur.execute(
            "SELECT data_type FROM information_schema.columns WHERE "
            "table_name = ? AND column_name = 'vector'",
            [table],
        ).fetchone()
        if kind is None or kind[0] != f"FLOAT[{dim[0]}]":
            add(
                "error",
                f"{table}.vector is {kind[0] if kind else 'missing'}, meta says FLOAT[{dim[0]}]",
                f"{table}.vector",
            )


def _check_summary(cur: duckdb.DuckDBPyConnection, add: Any) -> None:
    want = summary.recomputed(cur)
    have = {
        r[0]: (r[1], r[2], r[3])
        for r in cur.execute(
            "SELECT type_id, n_regions, n_images, sum_confidence FROM type_stats"
        ).fetchall()
    }
    for tid in sorted(set(want) | set(have)):
        w, h = want.get(tid), have.get(tid)
        if w is None or h is None or w[:2] != h[:2] or abs(w[2] - h[2]) > 1e-6 * max(1, w[0]):
            add("error", f"type summary of type {tid} is {h}, recomputed {w}", "type_stats")


def _check_audit_state(cur: duckdb.DuckDBPyConnection, add: Any) -> None:
    """Replay after-states: types and reviewer assignments must equal the last entry."""
    types: dict[int, Any] = {}
    assigns: dict[int, Any] = {}
    result = cur.execute("SELECT seq, after FROM audit_log ORDER BY seq")
    while True:
        rows = result.fetchmany(10_000)
        if not rows:
            break
        for seq, after_s in rows:
            after = json.loads(after_s)
            for tid, state in after.get("types", {}).items():
                types[int(tid)] = (seq, state)
            for rid, state in after.get("assignments", {}).items():
                assigns[int(rid)] = (seq, state)
    fields = audit.TYPE_FIELDS
    current = {
        r[0]: dict(zip(fields, r[1:]))
        for r in cur.execute(f"SELECT id, {', '.join(fields)} FROM types").fetchall()
    }
    for tid, state in current.items():
        if tid not in types:
            add("error", f"type {tid} ({state['name']!r}) has no audit entry", f"types id {tid}")
            continue
        seq, logged = types[tid]
        if logged is None:
            add(
                "error",
                f"type {tid} exists but audit #{seq} records it as removed",
                f"types id {tid}",
            )
        elif any(logged.get(k) != state[k] for k in fields):
            diff = ", ".join(
                f"{k} {logged.get(k)!r} -> {state[k]!r}"
                for k in fields
                if logged.get(k) != state[k]
            )
            add(
                "error",
                f"type {tid} differs from its last audit entry #{seq}: {diff}",
                f"types id {tid}",
            )
    for tid, (seq, logged) in types.items():
        if logged is not None and tid not in current:
            add(
                "error",
                f"type {tid} was removed without an audit entry (last #{seq})",
                f"types id {tid}",
            )
    afields = audit.ASSIGNMENT_FIELDS
    reviewer = {
        r[0]: dict(zip(afields, r[1:]))
        for r in cur.execute(
            f"SELECT region_id, {', '.join(afields)} FROM assignments WHERE source = 'reviewer'"
        ).fetchall()
    }
    bad = [rid for rid, state in reviewer.items() if rid not in assigns or assigns[rid][1] != state]
    logged_reviewer = [
        rid
        for rid, (_, s) in assigns.items()
        if s is not None and s.get("source") == "reviewer" and rid not in reviewer
    ]
    if bad:
        add(
            "error",
            f"{len(bad)} reviewer assignments differ from (or lack) their audit entry "
            f"(e.g. region {min(bad)})",
            "assignments.source = reviewer",
        )
    if logged_reviewer:
        add(
            "error",
            f"{len(logged_reviewer)} reviewer assignments in the audit log were "
            f"changed without an entry (e.g. region {min(logged_reviewer)})",
            "assignments",
        )


def _check_files(ws: "Workspace", cur: duckdb.DuckDBPyConnection, add: Any, verify: bool) -> None:
    missing, wrong = [], []
    for sha, ext, n_bytes in cur.execute("SELECT sha256, ext, n_bytes FROM images").fetchall():
        path = ws.images.path(f"{sha}.{ext}")
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            missing.append(path.name)
            continue
        if size != n_bytes or (verify and hashlib.sha256(path.read_bytes()).hexdigest() != sha):
            wrong.append(path.name)
    images, blobs = ws.referenced_files(cur)
    for ref in sorted(blobs):
        path = ws.blobs.path(ref)
        if not path.is_file():
            missing.append(ref)
        elif verify and hashlib.sha256(path.read_bytes()).hexdigest() != ref.split(".")[0]:
            wrong.append(ref)
    if missing:
        add(
            "error",
            f"{len(missing)} referenced files are missing (e.g. {missing[0]})",
            "images/ and blobs/",
        )
    if wrong:
        add(
            "error",
            f"{len(wrong)} files differ from their recorded size or sha256 (e.g. {wrong[0]})",
            "images/ and blobs/",
        )
    orphans = ws.images.orphans(images) + ws.blobs.orphans(blobs)
    if orphans:
        add(
            "warning",
            f"{len(orphans)} files no row references (e.g. {orphans[0].name}); "
            "they are removed the next time the workspace is opened for writing",
            "images/ and blobs/",
        )
