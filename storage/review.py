"""Reviewer actions: one transaction and one audit row each, with optimistic concurrency.

Every action takes the version the caller last saw of each type it touches; a mismatch
raises :class:`ConflictError` (naming the type, who changed it and how) before anything is
written. Every action increments the version of each type it touches. Region-level
actions (move, split, mark normal, label import) make the assignment reviewer-sourced with
confidence 1.0, which a retrain never overwrites; a merge is a type-level action and keeps
each moved assignment's source and confidence.

Undo restores the before-state stored in the action's audit row (versions are bumped,
never restored, so stale clients still conflict) and writes an ``undo`` row.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import numpy as np

from storage import audit, summary
from storage.checks import check_actor, check_type_name
from storage.errors import ConflictError, NotFoundError, StorageError, ValidationError
from storage.models import (
    AuditEntry,
    ImportReport,
    NewType,
    Suggestion,
    SuggestionIn,
    TypeSummary,
    audit_entry,
    suggestion,
)
from storage.rows import create_types, require_regions
from storage.sql import (
    bump_type_versions,
    fetch_one,
    fetch_value,
    insert_from,
    next_id,
    registered,
    utcnow,
)

if TYPE_CHECKING:
    from storage.workspace import Workspace

Con = duckdb.DuckDBPyConnection
UNDOABLE = {
    "confirm_type",
    "reject_type",
    "rename_type",
    "merge_types",
    "split_type",
    "move_regions",
    "mark_normal",
    "import_labels",
    "answer_suggestion",
    "create_type",
}
REVIEWER_STATE = {"source": "reviewer", "confidence": 1.0, "model_version": None}


# -------------------------------------------------------------------------- helpers
def _ids(values: Iterable[Any], what: str) -> list[int]:
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ValidationError(f"{what} must be integer ids, got {v!r}")
        out.append(int(v))
    if len(set(out)) != len(out):
        raise ValidationError(f"{what} contain an id twice")
    return out


def _type_rows(con: Con, ids: Iterable[int]) -> dict[int, dict[str, Any]]:
    ids = sorted(set(ids))
    if not ids:
        return {}
    rows = con.execute(
        "SELECT id, name, status, version, merged_into FROM types "
        "WHERE id IN (SELECT unnest(?::BIGINT[]))",
        [ids],
    ).fetchall()
    return {
        r[0]: {"name": r[1], "status": r[2], "version": r[3], "merged_into": r[4]} for r in rows
    }


def _label(tid: int, row: Mapping[str, Any]) -> str:
    return f"type {row['name']!r} (id {tid})"


def _last_change(con: Con, tid: int) -> str:
    last = con.execute(
        "SELECT actor, action, ts FROM audit_log WHERE list_contains(type_ids, ?) "
        "ORDER BY seq DESC LIMIT 1",
        [tid],
    ).fetchone()
    if last is None:
        return "by an unknown writer"
    return f"by {last[0]} ({last[1]}) at {last[2]:%Y-%m-%d %H:%M:%S} UTC"


def check_versions(
    con: Con, expected: Mapping[int, int], touched: Iterable[int], usable: Iterable[int] = ()
) -> dict[int, dict[str, Any]]:
    """Verify the caller's expected versions; ``usable`` types must not be merged."""
    touched = set(touched)
    try:
        exp = {int(k): int(v) for k, v in dict(expected).items()}
    except (TypeError, ValueError):
        raise ValidationError("expected must map type ids to integer versions") from None
    rows = _type_rows(con, touched | set(exp))
    for tid in sorted(touched | set(exp)):
        if tid not in rows:
            raise NotFoundError(f"no type with id {tid}")
    # versions first: when a type the caller saw changed meanwhile (say, the regions it
    # moves were moved elsewhere), that is the conflict to report, not the type it never saw
    for tid in sorted(exp):
        row = rows[tid]
        if row["version"] != exp[tid]:
            raise ConflictError(
                f"{_label(tid, row)} was changed {_last_change(con, tid)}: you expected "
                f"version {exp[tid]}, it is now {row['version']}; reload and try again "
                "(nothing was applied)",
                type_id=tid,
                expected=exp[tid],
                actual=row["version"],
            )
    for tid in sorted(touched):
        if tid not in exp:
            raise ValidationError(
                f"{_label(tid, rows[tid])} is changed by this action: pass its expected version"
            )
    for tid in usable:
        row = rows[tid]
        if row["status"] == "merged":
            raise ValidationError(
                f"{_label(tid, row)} was merged into type {row['merged_into']}; use that type"
            )
    return rows


def _name_free(con: Con, name: str, except_id: int | None) -> None:
    row = con.execute(
        "SELECT id FROM types WHERE lower(name) = lower(?) AND status <> 'merged' "
        "AND id IS DISTINCT FROM ?",
        [name, except_id],
    ).fetchone()
    if row is not None:
        raise ValidationError(
            f"a type named {name!r} already exists (id {row[0]}); type names "
            "are unique (case-insensitive)"
        )


def write_assignments(con: Con, states: Mapping[Any, Mapping[str, Any] | None]) -> None:
    """Set assignment rows to ``states`` (region id -> state, ``None`` deletes the row)."""
    delete = [int(k) for k, v in states.items() if v is None]
    keep = [(int(k), v) for k, v in states.items() if v is not None]
    if delete:
        con.execute(
            "DELETE FROM assignments WHERE region_id IN (SELECT unnest(?::BIGINT[]))", [delete]
        )
    if keep:
        insert_from(
            con,
            """INSERT INTO assignments (region_id, type_id, confidence,
                model_version, source, is_normal)
            SELECT rid, nullif(tid, -1), CASE WHEN isnan(conf) THEN NULL ELSE conf END,
                   nullif(mv, -1), src, normal FROM _src
            ON CONFLICT (region_id) DO UPDATE SET type_id = excluded.type_id,
                confidence = excluded.confidence, model_version = excluded.model_version,
                source = excluded.source, is_normal = excluded.is_normal""",
            {
                "rid": np.array([k for k, _ in keep], dtype=np.int64),
                "tid": np.array(
                    [-1 if v["type_id"] is None else v["type_id"] for _, v in keep], dtype=np.int64
                ),
                "conf": np.array(
                    [np.nan if v["confidence"] is None else v["confidence"] for _, v in keep],
                    dtype=np.float64,
                ),
                "mv": np.array(
                    [-1 if v["model_version"] is None else v["model_version"] for _, v in keep],
                    dtype=np.int64,
                ),
                "src": np.array([v["source"] for _, v in keep], dtype=object),
                "normal": np.array([bool(v["is_normal"]) for _, v in keep], dtype=bool),
            },
        )


def _record(
    con: Con,
    actor: str,
    action: str,
    target: Mapping[str, Any],
    type_ids: Iterable[int],
    region_ids: Iterable[int],
    before: Mapping[str, Any],
    suggestion_ids: Iterable[int] = (),
) -> int:
    """Refresh the summary of touched types and append the audit row (after-state read)."""
    type_ids, region_ids = sorted(set(type_ids)), sorted(set(region_ids))
    suggestion_ids = sorted(set(suggestion_ids))
    summary.refresh(con, type_ids)
    after: dict[str, Any] = {"types": audit.snapshot_types(con, type_ids)}
    if region_ids:
        after["assignments"] = audit.snapshot_assignments(con, region_ids)
    if suggestion_ids:
        after["suggestions"] = audit.snapshot_suggestions(con, suggestion_ids)
    return audit.append_raw(
        con,
        actor=actor,
        action=action,
        target=target,
        type_ids=type_ids,
        before=before,
        after=after,
    )


def _before(
    con: Con,
    type_ids: Iterable[int],
    region_ids: Iterable[int] = (),
    new_type_ids: Iterable[int] = (),
) -> dict[str, Any]:
    before: dict[str, Any] = {
        "types": {**audit.snapshot_types(con, type_ids), **{str(t): None for t in new_type_ids}}
    }
    region_ids = list(region_ids)
    if region_ids:
        before["assignments"] = audit.snapshot_assignments(con, region_ids)
    return before


def _regions_exist(con: Con, region_ids: list[int]) -> None:
    require_regions(con, np.array(region_ids, dtype=np.int64))


def _missing_regions(con: Con, region_ids: list[int]) -> list[int]:
    """The ids of ``region_ids`` that no region row has (sorted)."""
    if not region_ids:
        return []
    return [
        int(r[0])
        for r in con.execute(
            "SELECT unnest(?::BIGINT[]) AS rid EXCEPT SELECT id FROM regions ORDER BY rid",
            [region_ids],
        ).fetchall()
    ]


def _current_types(con: Con, region_ids: list[int]) -> set[int]:
    return {
        r[0]
        for r in con.execute(
            "SELECT DISTINCT type_id FROM assignments WHERE type_id IS NOT NULL AND region_id IN "
            "(SELECT unnest(?::BIGINT[]))",
            [region_ids],
        ).fetchall()
    }


# -------------------------------------------------------------------- type actions
def set_status(
    ws: "Workspace", type_id: int, status: str, expected_version: int, actor: str
) -> TypeSummary:
    actor = check_actor(actor)
    with ws.transaction() as con:
        rows = check_versions(con, {type_id: expected_version}, [type_id], usable=[type_id])
        # already so: no new version and no audit entry (an undo would undo nothing)
        if rows[type_id]["status"] != status:
            before = _before(con, [type_id])
            con.execute("UPDATE types SET status = ? WHERE id = ?", [status, type_id])
            bump_type_versions(con, [type_id], utcnow())
            _record(
                con,
                actor,
                "confirm_type" if status == "confirmed" else "reject_type",
                {"type_id": type_id},
                [type_id],
                [],
                before,
            )
    return ws.get_type(type_id)


def rename_type(
    ws: "Workspace", type_id: int, name: str, expected_version: int, actor: str
) -> TypeSummary:
    actor = check_actor(actor)
    name = check_type_name(name)
    with ws.transaction() as con:
        rows = check_versions(con, {type_id: expected_version}, [type_id], usable=[type_id])
        if rows[type_id]["name"] != name:  # the same name: nothing to record
            _name_free(con, name, type_id)
            before = _before(con, [type_id])
            con.execute("UPDATE types SET name = ? WHERE id = ?", [name, type_id])
            bump_type_versions(con, [type_id], utcnow())
            _record(
                con, actor, "rename_type", {"type_id": type_id, "name": name}, [type_id], [], before
            )
    return ws.get_type(type_id)


def merge_types(
    ws: "Workspace", keep: int, absorb: int, expected: Mapping[int, int], actor: str
) -> TypeSummary:
    actor = check_actor(actor)
    keep, absorb = _ids([keep, absorb], "merge_types(keep, absorb)")
    with ws.transaction() as con:
        check_versions(con, expected, [keep, absorb], usable=[keep, absorb])
        members = [
            r[0]
            for r in con.execute(
                "SELECT region_id FROM assignments WHERE type_id = ?", [absorb]
            ).fetchall()
        ]
        before = _before(con, [keep, absorb], members)
        con.execute("UPDATE assignments SET type_id = ? WHERE type_id = ?", [keep, absorb])
        con.execute(
            "UPDATE types SET status = 'merged', merged_into = ? WHERE id = ?", [keep, absorb]
        )
        bump_type_versions(con, [keep, absorb], utcnow())
        _record(
            con,
            actor,
            "merge_types",
            {"keep": keep, "absorb": absorb, "n_regions": len(members)},
            [keep, absorb],
            members,
            before,
        )
    return ws.get_type(keep)


def split_type(
    ws: "Workspace",
    type_id: int,
    groups: Sequence[Sequence[int]],
    expected_version: int,
    actor: str,
    names: Sequence[str | None] | None = None,
) -> list[int]:
    """Each group becomes a new proposed type; members not listed stay. Returns new ids."""
    actor = check_actor(actor)
    groups = [_ids(g, "split groups") for g in groups]
    if not groups or any(not g for g in groups):
        raise ValidationError("split_type needs at least one non-empty group of region ids")
    listed = [r for g in groups for r in g]
    if len(set(listed)) != len(listed):
        raise ValidationError("a region id appears in two split groups")
    if names is not None and len(names) != len(groups):
        raise ValidationError(f"split_type got {len(names)} names for {len(groups)} groups")
    with ws.transaction() as con:
        rows = check_versions(con, {type_id: expected_version}, [type_id], usable=[type_id])
        with registered(con, "_ids", {"rid": np.array(listed, dtype=np.int64)}):
            outside = con.execute(
                "SELECT rid FROM _ids WHERE rid NOT IN "
                "(SELECT region_id FROM assignments WHERE type_id = ?) ORDER BY rid LIMIT 1",
                [type_id],
            ).fetchone()
        if outside is not None:
            raise ValidationError(
                f"region {outside[0]} is not in {_label(type_id, rows[type_id])}"
                "; split only moves the type's own members"
            )
        before = _before(con, [type_id], listed)
        now = utcnow()
        new = create_types(
            con,
            [
                NewType(key=str(i), name=None if names is None else names[i])
                for i in range(len(groups))
            ],
            origin="reviewer",
            status="proposed",
            now=now,
        )
        new_ids = [new[str(i)] for i in range(len(groups))]
        before["types"].update({str(t): None for t in new_ids})
        write_assignments(
            con,
            {
                r: {"type_id": new_ids[i], "is_normal": False, **REVIEWER_STATE}
                for i, g in enumerate(groups)
                for r in g
            },
        )
        bump_type_versions(con, [type_id], now)
        _record(
            con,
            actor,
            "split_type",
            {"type_id": type_id, "new_type_ids": new_ids, "sizes": [len(g) for g in groups]},
            [type_id, *new_ids],
            listed,
            before,
        )
    return new_ids


def move_regions(
    ws: "Workspace",
    region_ids: Sequence[int],
    to_type_id: int,
    expected: Mapping[int, int],
    actor: str,
) -> None:
    actor = check_actor(actor)
    region_ids = _ids(region_ids, "region ids")
    if not region_ids:
        raise ValidationError("move_regions needs at least one region id")
    with ws.transaction() as con:
        _regions_exist(con, region_ids)
        touched = _current_types(con, region_ids) | {int(to_type_id)}
        rows = check_versions(con, expected, touched, usable=[int(to_type_id)])
        if rows[int(to_type_id)]["status"] == "rejected":
            raise ValidationError(
                f"{_label(int(to_type_id), rows[int(to_type_id)])} is "
                "rejected; confirm it first or choose another type"
            )
        before = _before(con, touched, region_ids)
        write_assignments(
            con,
            {
                r: {"type_id": int(to_type_id), "is_normal": False, **REVIEWER_STATE}
                for r in region_ids
            },
        )
        bump_type_versions(con, touched, utcnow())
        _record(
            con,
            actor,
            "move_regions",
            {"region_ids": region_ids, "to_type_id": int(to_type_id)},
            touched,
            region_ids,
            before,
        )


def create_type(
    ws: "Workspace",
    region_ids: Sequence[int],
    expected: Mapping[int, int],
    actor: str,
    name: str | None = None,
    status: str = "proposed",
) -> int:
    """A new reviewer type holding ``region_ids`` (taken from whatever type, or none, they
    were in; e.g. a group of outliers, or one image named with a new label). Returns its id."""
    actor = check_actor(actor)
    region_ids = _ids(region_ids, "region ids")
    if not region_ids:
        raise ValidationError("create_type needs at least one region id")
    if status not in ("proposed", "confirmed"):
        raise ValidationError(f"a new type is 'proposed' or 'confirmed', not {status!r}")
    if name is not None:
        name = check_type_name(name)
    with ws.transaction() as con:
        _regions_exist(con, region_ids)
        touched = _current_types(con, region_ids)
        check_versions(con, expected, touched)
        if name is not None:
            _name_free(con, name, None)
        before = _before(con, touched, region_ids)
        now = utcnow()
        new_id = create_types(
            con, [NewType(key="new", name=name)], origin="reviewer", status=status, now=now
        )["new"]
        before["types"][str(new_id)] = None
        write_assignments(
            con, {r: {"type_id": new_id, "is_normal": False, **REVIEWER_STATE} for r in region_ids}
        )
        bump_type_versions(con, touched, now)
        _record(
            con,
            actor,
            "create_type",
            {"type_id": new_id, "region_ids": region_ids, "name": name, "status": status},
            [*touched, new_id],
            region_ids,
            before,
        )
    return new_id


def mark_normal(
    ws: "Workspace", region_ids: Sequence[int], expected: Mapping[int, int], actor: str
) -> None:
    """False alarm: the regions leave their type and are flagged normal."""
    actor = check_actor(actor)
    region_ids = _ids(region_ids, "region ids")
    if not region_ids:
        raise ValidationError("mark_normal needs at least one region id")
    with ws.transaction() as con:
        _regions_exist(con, region_ids)
        touched = _current_types(con, region_ids)
        check_versions(con, expected, touched)
        before = _before(con, touched, region_ids)
        write_assignments(
            con, {r: {"type_id": None, "is_normal": True, **REVIEWER_STATE} for r in region_ids}
        )
        bump_type_versions(con, touched, utcnow())
        _record(con, actor, "mark_normal", {"region_ids": region_ids}, touched, region_ids, before)


# ------------------------------------------------------------------------------ undo
def _state_equal(
    a: Mapping[str, Any] | None, b: Mapping[str, Any] | None, ignore: tuple[str, ...] = ()
) -> bool:
    if a is None or b is None:
        return a is b
    keys = (set(a) | set(b)) - set(ignore)
    return all(a.get(k) == b.get(k) for k in keys)


def _last_undoable(
    con: Con, actor: str
) -> tuple[int, str, list[int], dict[str, Any], dict[str, Any]]:
    """(seq, action, type ids, before, after) of ``actor``'s last action not undone yet."""
    undone = {
        json.loads(r[0]).get("undo_of")
        for r in con.execute(
            "SELECT target FROM audit_log WHERE actor = ? AND action = 'undo'", [actor]
        ).fetchall()
    }
    rows = con.execute(
        "SELECT seq, action, target, type_ids, before, after FROM audit_log "
        "WHERE actor = ? AND action IN (SELECT unnest(?::VARCHAR[])) "
        "ORDER BY seq DESC",
        [actor, sorted(UNDOABLE)],
    ).fetchall()
    row = next((r for r in rows if r[0] not in undone), None)
    if row is None:
        raise StorageError(f"{actor} has nothing to undo")
    seq, action, _, type_ids, before_s, after_s = row
    return seq, action, list(type_ids), json.loads(before_s), json.loads(after_s)


def _undoable_entry(
    con: Con, actor: str, seq: int
) -> tuple[int, str, list[int], dict[str, Any], dict[str, Any]]:
    """(seq, action, type ids, before, after) of audit entry ``seq`` if ``actor`` may undo
    it: their own, an action that can be undone, not undone yet."""
    row = con.execute(
        "SELECT seq, actor, action, type_ids, before, after FROM audit_log WHERE seq = ?",
        [int(seq)],
    ).fetchone()
    if row is None:
        raise NotFoundError(f"no audit entry #{seq}")
    _, who, action, type_ids, before_s, after_s = row
    if action not in UNDOABLE:
        raise ValidationError(f"audit #{seq} ({action}) is not a reviewer action: no undo")
    if who != actor:
        raise ConflictError(f"audit #{seq} is {who}'s action: only {who} can undo it")
    undone_by = next(
        (
            r[0]
            for r in con.execute(
                "SELECT seq, target FROM audit_log WHERE action = 'undo' AND seq > ?", [int(seq)]
            ).fetchall()
            if json.loads(r[1]).get("undo_of") == int(seq)
        ),
        None,
    )
    if undone_by is not None:
        raise ConflictError(f"audit #{seq} was undone already (audit #{undone_by})")
    return int(seq), action, list(type_ids), json.loads(before_s), json.loads(after_s)


def _refuse_later_changes(con: Con, seq: int, actor: str, type_ids: list[int], what: str) -> None:
    """Later actions by others on the same types conflict, unless they were undone later
    too (an action and its undo cancel out; the state check confirms)."""
    others = con.execute(
        "SELECT seq, actor, action, ts, list_intersect(type_ids, ?::BIGINT[]), target "
        "FROM audit_log WHERE seq > ? AND actor <> ? "
        "AND len(list_intersect(type_ids, ?::BIGINT[])) > 0 ORDER BY seq",
        [type_ids, seq, actor, type_ids],
    ).fetchall()
    neutral = set()
    for r in others:
        undo_of = json.loads(r[5]).get("undo_of") if r[2] == "undo" else None
        if undo_of is not None and undo_of > seq:
            neutral |= {r[0], undo_of}
    later = next((r for r in others if r[0] not in neutral), None)
    if later is not None:
        raise ConflictError(
            f"{what}: type {later[4][0]} was changed later by {later[1]} "
            f"({later[2]}, audit #{later[0]}) at {later[3]:%Y-%m-%d %H:%M:%S}"
            " UTC",
            type_id=later[4][0],
        )


def _refuse_changed_since(
    con: Con, before: Mapping[str, Any], after: Mapping[str, Any], what: str
) -> dict[str, Any]:
    """The current state must still be the action's after-state (else someone changed it);
    returns the current snapshot of the suggestions the action changed."""
    now_types = audit.snapshot_types(con, [int(t) for t in after.get("types", {})])
    for tid, state in after.get("types", {}).items():
        if not _state_equal(now_types.get(tid), state, ignore=("version",)):
            raise ConflictError(f"{what}: type {tid} changed since", type_id=int(tid))
    gone = _missing_regions(con, [int(r) for r in after.get("assignments", {})])
    if gone:
        raise ConflictError(
            f"{what}: {len(gone)} of its regions (e.g. region {gone[0]}) were deleted with "
            "their batch since"
        )
    now_assign = audit.snapshot_assignments(con, [int(r) for r in after.get("assignments", {})])
    for rid, state in after.get("assignments", {}).items():
        if not _state_equal(now_assign.get(rid), state):
            raise ConflictError(f"{what}: region {rid} was changed since")
    now_sugg = audit.snapshot_suggestions(con, [int(s) for s in before.get("suggestions", {})])
    for sid, state in after.get("suggestions", {}).items():
        if not _state_equal(now_sugg.get(sid), state):
            raise ConflictError(f"{what}: suggestion {sid} was changed since")
    return now_sugg


def _restore(con: Con, before: Mapping[str, Any], what: str, now: object) -> None:
    """Put types, assignments and suggestions back to ``before``: types it created are
    deleted (unless in use now), the others get their state back with a version bump."""
    to_delete = []
    for tid, state in before.get("types", {}).items():
        if state is None:
            to_delete.append(int(tid))
            continue
        if state["status"] != "merged":
            _name_free_undo(con, state["name"], int(tid), what)
        con.execute(
            "UPDATE types SET name = ?, status = ?, origin = ?, merged_into = ?, "
            "version = version + 1, updated_at = ? WHERE id = ?",
            [state["name"], state["status"], state["origin"], state["merged_into"], now, int(tid)],
        )
    write_assignments(con, before.get("assignments", {}))
    for tid in to_delete:
        used = fetch_value(
            con,
            "SELECT (SELECT count(*) FROM assignments WHERE type_id = ?) + "
            "(SELECT count(*) FROM prototypes WHERE type_id = ?) + "
            "(SELECT count(*) FROM types WHERE merged_into = ?)",
            [tid, tid, tid],
        )
        if used:
            raise ConflictError(f"{what}: type {tid} it created is in use now", type_id=tid)
        con.execute("DELETE FROM types WHERE id = ?", [tid])
    for sid, state in before.get("suggestions", {}).items():
        con.execute(
            "UPDATE suggestions SET status = ?, answer = ?, answered_by = ?, "
            "answered_at = ? WHERE id = ?",
            [
                state["status"],
                state["answer"],
                state["answered_by"],
                state["answered_at"],
                int(sid),
            ],
        )


def undo(ws: "Workspace", actor: str, seq: int | None = None) -> AuditEntry:
    """Revert ``actor``'s last action that is not undone yet (see module docstring), or,
    with ``seq``, that one of their actions: possible while nothing later touched its
    types (a later action of theirs too; an action and its undo cancel out)."""
    actor = check_actor(actor)
    with ws.transaction() as con:
        if seq is None:
            seq, action, type_ids, before, after = _last_undoable(con, actor)
            later_than_others = actor
        else:
            seq, action, type_ids, before, after = _undoable_entry(con, actor, seq)
            later_than_others = ""  # every later action counts, the actor's own too
        what = f"cannot undo {action} (audit #{seq})"
        _refuse_later_changes(con, seq, later_than_others, type_ids, what)
        now_sugg = _refuse_changed_since(con, before, after, what)
        sugg_ids = [int(s) for s in before.get("suggestions", {})]
        type_keys = [int(t) for t in before.get("types", {})]
        region_keys = [int(r) for r in before.get("assignments", {})]
        undo_before = _before(con, type_keys, region_keys)
        if sugg_ids:
            undo_before["suggestions"] = now_sugg
        _restore(con, before, what, utcnow())
        new_seq = _record(
            con,
            actor,
            "undo",
            {"undo_of": seq, "action": action},
            type_keys,
            region_keys,
            undo_before,
            sugg_ids,
        )
        entry = fetch_one(
            con,
            "SELECT seq, ts, actor, action, target, type_ids, before, "
            "after, hash FROM audit_log WHERE seq = ?",
            [new_seq],
        )
    return audit_entry(entry)


def _name_free_undo(con: Con, name: str, tid: int, what: str) -> None:
    try:
        _name_free(con, name, tid)
    except ValidationError:
        raise ConflictError(
            f"{what}: the name {name!r} is now used by another type", type_id=tid
        ) from None


# ----------------------------------------------------------------------- label import
def _read_labels(path: Path) -> list[tuple[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None:
                raise ValidationError(f"{path.name} is empty; expected a header 'image,label'")
            cols = [h.strip().lower() for h in header]
            if "image" not in cols or "label" not in cols:
                raise ValidationError(
                    f"{path.name} needs columns 'image' and 'label', found "
                    f"{', '.join(header) or 'none'}"
                )
            ii, li = cols.index("image"), cols.index("label")
            out = []
            for line, row in enumerate(reader, start=2):
                if not row or all(not c.strip() for c in row):
                    continue
                if len(row) <= max(ii, li):
                    raise ValidationError(
                        f"{path.name} line {line}: expected at least {max(ii, li) + 1} columns"
                    )
                out.append((row[ii].strip(), row[li].strip()))
    except OSError as exc:
        raise ValidationError(f"cannot read labels file {path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ValidationError(f"{path.name} is not a UTF-8 CSV file: {exc}") from None
    return out


def _labels_of(path: Path) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """(rows of the file, image -> label): one label per image, each a valid type name."""
    labels: dict[str, str] = {}
    rows = _read_labels(path)
    for image, label in rows:
        if not image or not label:
            continue
        if image in labels and labels[image].lower() != label.lower():
            raise ValidationError(
                f"{path.name}: image {image!r} has two labels, {labels[image]!r} and {label!r}"
            )
        labels[image] = label
    for label in {v for v in labels.values() if v.lower() != "good"}:
        check_type_name(label)
    return rows, labels


def _locate_images(
    con: Con, labels: Mapping[str, str], batch_id: int | None, path: Path
) -> dict[str, tuple[int, int]]:
    """image name -> (batch id, image id) of the labelled images found (in ``batch_id``)."""
    names = np.array(list(labels), dtype=object)
    with registered(con, "_names", {"name": names}):
        found = con.execute(
            "SELECT bi.name, bi.batch_id, bi.image_id FROM batch_images bi "
            "JOIN _names n ON n.name = bi.name WHERE ? IS NULL OR bi.batch_id = ?",
            [batch_id, batch_id],
        ).fetchall()
    where: dict[str, tuple[int, int]] = {}
    for name, b, i in found:
        if name in where:
            raise ValidationError(
                f"image {name!r} is in batches {where[name][0]} and {b}; pass batch_id to say which"
            )
        where[name] = (b, i)
    if labels and not where:
        raise ValidationError(
            f"none of the {len(labels)} images in {path.name} is in the "
            "workspace (names are paths relative to the upload, e.g. "
            f"{next(iter(labels))!r})"
        )
    return where


def _label_types(
    con: Con, labels: Mapping[str, str], where: Mapping[str, Any]
) -> tuple[dict[str, int], list[int], list[str]]:
    """(lower label -> existing type id, ids to confirm, labels that need a new type)."""
    type_by_label: dict[str, int] = {}
    wanted = sorted({labels[n] for n in where if labels[n].lower() != "good"}, key=str.lower)
    existing = {
        r[1].lower(): (r[0], r[2])
        for r in con.execute(
            "SELECT id, name, status FROM types WHERE status <> 'merged'"
        ).fetchall()
    }
    to_confirm, missing = [], []
    for label in wanted:
        if label.lower() in existing:
            tid, status = existing[label.lower()]
            type_by_label[label.lower()] = tid
            if status != "confirmed":
                to_confirm.append(tid)
        else:
            missing.append(label)
    return type_by_label, to_confirm, missing


def _regions_of_images(con: Con, where: Mapping[str, tuple[int, int]]) -> list[tuple[int, str]]:
    """(region id, image name) of every region of the matched images."""
    pairs = list(where.items())
    with registered(
        con,
        "_imgs",
        {
            "name": np.array([p[0] for p in pairs], dtype=object),
            "bid": np.array([p[1][0] for p in pairs], dtype=np.int64),
            "iid": np.array([p[1][1] for p in pairs], dtype=np.int64),
        },
    ):
        return [
            (r[0], r[1])
            for r in con.execute(
                "SELECT r.id, i.name FROM regions r JOIN _imgs i "
                "ON r.batch_id = i.bid AND r.image_id = i.iid"
            ).fetchall()
        ]


def _label_states(
    reg: Sequence[tuple[int, str]], labels: Mapping[str, str], type_by_label: Mapping[str, int]
) -> tuple[dict[int, dict[str, Any]], int]:
    """(region id -> reviewer assignment state, number marked normal) from the labels."""
    states: dict[int, dict[str, Any]] = {}
    n_normal = 0
    for rid, name in reg:
        label = labels[name]
        if label.lower() == "good":
            states[rid] = {"type_id": None, "is_normal": True, **REVIEWER_STATE}
            n_normal += 1
        else:
            states[rid] = {
                "type_id": type_by_label[label.lower()],
                "is_normal": False,
                **REVIEWER_STATE,
            }
    return states, n_normal


def import_labels(
    ws: "Workspace", csv_path: str | os.PathLike[str], actor: str, batch_id: int | None = None
) -> ImportReport:
    """Labels ``image,label`` (``good`` = normal) -> confirmed types, reviewer assignments."""
    actor = check_actor(actor)
    path = Path(csv_path)
    rows, labels = _labels_of(path)
    with ws.transaction() as con:
        if (
            batch_id is not None
            and fetch_value(con, "SELECT count(*) FROM batches WHERE id = ?", [batch_id]) == 0
        ):
            raise NotFoundError(f"no batch with id {batch_id}")
        where = _locate_images(con, labels, batch_id, path)
        unknown = sorted(set(labels) - set(where))
        now = utcnow()
        type_by_label, to_confirm, missing = _label_types(con, labels, where)
        reg = _regions_of_images(con, where)
        region_ids = [r[0] for r in reg]
        with_regions = {r[1] for r in reg}
        touched = _current_types(con, region_ids) | set(to_confirm) | set(type_by_label.values())
        before = _before(con, touched, region_ids)
        created = create_types(
            con,
            [NewType(key=l.lower(), name=l) for l in missing],
            origin="reviewer",
            status="confirmed",
            now=now,
        )
        type_by_label.update(created)
        before["types"].update({str(t): None for t in created.values()})
        if to_confirm:
            con.execute(
                "UPDATE types SET status = 'confirmed' WHERE id IN (SELECT unnest(?::BIGINT[]))",
                [to_confirm],
            )
        states, n_normal = _label_states(reg, labels, type_by_label)
        write_assignments(con, states)
        bump_type_versions(con, touched, now)
        all_types = touched | set(created.values())
        _record(
            con,
            actor,
            "import_labels",
            {
                "file": path.name,
                "rows": len(rows),
                "images": len(where),
                "regions": len(region_ids),
                "batch_id": batch_id,
            },
            all_types,
            region_ids,
            before,
        )
    return ImportReport(
        rows=len(rows),
        images_matched=len(where),
        regions_assigned=len(reg) - n_normal,
        regions_normal=n_normal,
        types_created=sorted(created.values()),
        unknown_images=unknown,
        images_without_regions=sorted(
            n for n in where if n not in with_regions and labels[n].lower() != "good"
        ),
    )


# ------------------------------------------------------------------------ suggestions
def replace_open_suggestions(
    ws: "Workspace", items: Sequence[SuggestionIn], model_version: int | None, actor: str
) -> list[int]:
    """Mark every open suggestion ``stale`` and insert ``items`` as the new open ones."""
    actor = check_actor(actor)
    prepared = []
    for it in items:
        if not isinstance(it.kind, str) or not it.kind:
            raise ValidationError("a suggestion needs a kind")
        try:
            target = audit.canonical(dict(it.target))
        except (TypeError, ValueError) as exc:
            raise ValidationError(f"suggestion target must be JSON-serialisable: {exc}") from None
        if not np.isfinite(float(it.score)):
            raise ValidationError("suggestion score must be finite")
        prepared.append((it.kind, target, float(it.score), it.reason or ""))
    with ws.transaction() as con:
        if (
            model_version is not None
            and fetch_value(
                con, "SELECT count(*) FROM model_versions WHERE id = ?", [model_version]
            )
            == 0
        ):
            raise NotFoundError(f"no model version {model_version}")
        stale = [
            r[0]
            for r in con.execute(
                "SELECT id FROM suggestions WHERE status = 'open' ORDER BY id"
            ).fetchall()
        ]
        before = {"suggestions": audit.snapshot_suggestions(con, stale)}
        con.execute("UPDATE suggestions SET status = 'stale' WHERE status = 'open'")
        first = next_id(con, "suggestions")
        now = utcnow()
        ids = list(range(first, first + len(prepared)))
        if prepared:
            con.executemany(
                "INSERT INTO suggestions (id, kind, target, score, reason, status, "
                "created_at, model_version) VALUES (?, ?, ?, ?, ?, 'open', ?, ?)",
                [[i, *p, now, model_version] for i, p in zip(ids, prepared)],
            )
        audit.append_raw(
            con,
            actor=actor,
            action="replace_suggestions",
            target={"new_ids": ids, "staled": len(stale), "model_version": model_version},
            type_ids=[],
            before=before,
            after={"suggestions": audit.snapshot_suggestions(con, stale)},
        )
    return ids


def answer_suggestion(
    ws: "Workspace", suggestion_id: int, answer: str | None, actor: str, skip: bool
) -> Suggestion:
    actor = check_actor(actor)
    with ws.transaction() as con:
        row = con.execute(
            "SELECT status, answered_by, answered_at FROM suggestions WHERE id = ?", [suggestion_id]
        ).fetchone()
        if row is None:
            raise NotFoundError(f"no suggestion with id {suggestion_id}")
        if row[0] != "open":
            by = f" by {row[1]} at {row[2]:%Y-%m-%d %H:%M:%S} UTC" if row[1] else ""
            raise ConflictError(
                f"suggestion {suggestion_id} is already {row[0]}{by}; nothing was changed"
            )
        before = {"types": {}, "suggestions": audit.snapshot_suggestions(con, [suggestion_id])}
        con.execute(
            "UPDATE suggestions SET status = ?, answer = ?, answered_by = ?, "
            "answered_at = ? WHERE id = ?",
            ["skipped" if skip else "answered", answer, actor, utcnow(), suggestion_id],
        )
        _record(
            con,
            actor,
            "answer_suggestion",
            {"suggestion_id": suggestion_id, "answer": answer, "skipped": skip},
            [],
            [],
            before,
            [suggestion_id],
        )
        out = fetch_one(
            con,
            "SELECT id, kind, target, score, reason, status, answer, "
            "answered_by, answered_at, created_at, model_version "
            "FROM suggestions WHERE id = ?",
            [suggestion_id],
        )
    return suggestion(out)
