"""Replay of the audit log: the state its entries add up to, and where they do not chain.

Every audited write stores the before- and after-state of what it changed (types,
assignments, suggestions; ``storage.audit``). Folding the after-states in ``seq`` order gives
the state the log describes; each entry's before-state must equal that fold for everything
it names. Two writers that both acted on the same state (a lost update: the second one
overwrote the first without seeing it) break that chain even when the final state matches
the last entry, which is all ``doctor`` checks.

What the log does not hold is allowed for: rows first seen in an entry's before-state
(a model's assignments of a new batch, a suggestion inserted by a refresh) are adopted, and
model-sourced assignments may change between entries after an ``apply_retrain`` (a retrain
rewrites them without a per-region snapshot; reviewer assignments it never touches).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import duckdb

from storage.audit import ASSIGNMENT_FIELDS, SUGGESTION_FIELDS, TYPE_FIELDS
from storage.sql import fetch_value

#: Entries that rewrite model-sourced assignments without snapshotting each region.
MODEL_REWRITES = frozenset({"apply_retrain"})
#: Entries that delete the regions of a target ``region_id_range`` [first, last].
REGION_DELETES = frozenset({"delete_batch"})
_KINDS = (("types", TYPE_FIELDS), ("assignments", ASSIGNMENT_FIELDS))


@dataclass
class Replay:
    """The folded state (id -> state, ``None``: removed) and the chain's breaks."""

    types: dict[int, dict[str, Any] | None] = field(default_factory=dict)
    assignments: dict[int, dict[str, Any] | None] = field(default_factory=dict)
    suggestions: dict[int, dict[str, Any]] = field(default_factory=dict)
    #: (seq, what) for each before-state that differs from the fold.
    breaks: list[tuple[int, str]] = field(default_factory=list)
    n_entries: int = 0


def _same(a: dict[str, Any] | None, b: dict[str, Any] | None, fields: tuple[str, ...]) -> bool:
    if a is None or b is None:
        return a is b
    return all(a.get(k) == b.get(k) for k in fields)


def replay(cur: duckdb.DuckDBPyConnection) -> Replay:
    """Fold the audit log of the workspace ``cur`` reads (inside ``ws.read()``)."""
    out = Replay()
    folded_at: dict[int, int] = {}  # region id -> seq of the entry that folded it
    last_rewrite = 0  # seq of the last MODEL_REWRITES entry
    result = cur.execute(
        "SELECT seq, actor, action, before, after, target FROM audit_log ORDER BY seq"
    )
    while True:
        rows = result.fetchmany(10_000)
        if not rows:
            break
        for seq, actor, action, before_s, after_s, target_s in rows:
            out.n_entries += 1
            before, after = json.loads(before_s), json.loads(after_s)
            for kind, fields in _KINDS:
                state: dict[int, Any] = getattr(out, kind)
                for key, was in before.get(kind, {}).items():
                    k = int(key)
                    if k not in state or _same(state[k], was, fields):
                        continue
                    if kind == "assignments":
                        now = state[k]
                        model = now is not None and now.get("source") != "reviewer"
                        if model and last_rewrite > folded_at.get(k, 0):
                            continue  # a retrain may have re-sorted it since
                    out.breaks.append(
                        (
                            seq,
                            f"{action} by {actor}: {kind[:-1]} {k} was {state[k]}, entry saw {was}",
                        )
                    )
                for key, now in after.get(kind, {}).items():
                    state[int(key)] = now
                    if kind == "assignments":
                        folded_at[int(key)] = seq
            for key, was in before.get("suggestions", {}).items():
                k = int(key)
                if k in out.suggestions and not _same(out.suggestions[k], was, SUGGESTION_FIELDS):
                    out.breaks.append(
                        (
                            seq,
                            f"{action} by {actor}: suggestion {k} was "
                            f"{out.suggestions[k]}, entry saw {was}",
                        )
                    )
            for key, now in after.get("suggestions", {}).items():
                out.suggestions[int(key)] = now
            if action in MODEL_REWRITES:
                last_rewrite = seq
            if action in REGION_DELETES:
                span = (json.loads(target_s) or {}).get("region_id_range")
                if span:
                    for k in out.assignments:
                        if span[0] <= k <= span[1]:
                            out.assignments[k] = None
    return out


def differences(cur: duckdb.DuckDBPyConnection, folded: Replay, limit: int = 20) -> list[str]:
    """Where the current tables differ from the replay (at most ``limit`` lines): every
    type, every reviewer assignment, every assignment the log names (model-sourced ones
    unless a retrain came later), every suggestion the log names, and suggestions it does
    not name must still be open."""
    out: list[str] = []

    def rows(sql: str, fields: tuple[str, ...]) -> dict[int, dict[str, Any]]:
        return {r[0]: dict(zip(fields, r[1:])) for r in cur.execute(sql).fetchall()}

    types = rows(f"SELECT id, {', '.join(TYPE_FIELDS)} FROM types", TYPE_FIELDS)
    for tid in sorted(set(types) | set(folded.types)):
        have, logged = types.get(tid), folded.types.get(tid)
        if not _same(have, logged, TYPE_FIELDS):
            out.append(f"type {tid}: table {have}, replay {logged}")
    assigns = rows(
        f"SELECT region_id, {', '.join(ASSIGNMENT_FIELDS)} FROM assignments", ASSIGNMENT_FIELDS
    )
    retrained = (
        fetch_value(
            cur,
            "SELECT count(*) FROM audit_log WHERE action IN (SELECT unnest(?::VARCHAR[]))",
            [sorted(MODEL_REWRITES)],
        )
        > 0
    )
    for rid in sorted(
        set(folded.assignments) | {r for r, a in assigns.items() if a["source"] == "reviewer"}
    ):
        have, logged = assigns.get(rid), folded.assignments.get(rid)
        if rid not in folded.assignments:
            out.append(f"region {rid}: reviewer assignment {have} with no audit entry")
        elif not _same(have, logged, ASSIGNMENT_FIELDS):
            model = logged is not None and logged.get("source") != "reviewer"
            if not (model and retrained):
                out.append(f"region {rid}: table {have}, replay {logged}")
    sugg = rows(f"SELECT id, {', '.join(SUGGESTION_FIELDS)} FROM suggestions", SUGGESTION_FIELDS)
    for sid, have in sorted(sugg.items()):
        logged = folded.suggestions.get(sid)
        if logged is None:
            if have["status"] != "open":
                out.append(f"suggestion {sid}: {have['status']} with no audit entry")
        elif (
            have["status"] != logged["status"]
            or have["answer"] != logged["answer"]
            or (have["answered_by"] != logged["answered_by"])
        ):
            out.append(f"suggestion {sid}: table {have}, replay {logged}")
    return out[:limit]
