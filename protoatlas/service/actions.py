"""Reviewer actions on types and regions (confirm, reject, rename, merge, split, move, mark
normal, new type, undo): each checks the versions of the types it touches (optimistic
concurrency: the storage refuses an action on a type someone changed since) and writes one
audit entry."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

from engine.clustering import cluster
from protoatlas.service.reads import ReadsMixin
from storage import AuditEntry, ImportReport, TypeSummary


class ActionsMixin(ReadsMixin):
    """Reviewer actions (a part of :class:`~protoatlas.service.workspace.WorkspaceService`).

    ``expected_version`` / ``seen``: the version(s) of the types the reviewer looked at
    (None: the current one). The types the given regions are in *now* are added to ``seen``
    at their current version (:meth:`expected_for`).
    """

    def expected_for(
        self, region_ids: Sequence[int], seen: Mapping[int, int] | None = None
    ) -> dict[int, int]:
        """``seen`` plus the current version of every type the regions are in now (the
        versions in ``seen`` are checked by the storage, not overwritten)."""
        out = {int(k): int(v) for k, v in (seen or {}).items()}
        wanted = {int(r) for r in region_ids}
        current = {
            int(r.type_id)
            for b in self.ws.batches()
            for r in self.ws.regions_for_batch(b.id, with_masks=False)
            if r.id in wanted and r.type_id is not None
        }
        out.update(self._versions(sorted(current - set(out))))
        return out

    def _version(self, type_id: int, expected_version: int | None) -> int:
        if expected_version is None or expected_version < 0:
            return self.ws.get_type(int(type_id)).version
        return int(expected_version)

    def confirm_type(
        self, type_id: int, *, expected_version: int | None = None, actor: str
    ) -> TypeSummary:
        return self.ws.confirm_type(
            int(type_id), actor=actor, expected_version=self._version(type_id, expected_version)
        )

    def reject_type(
        self, type_id: int, *, expected_version: int | None = None, actor: str
    ) -> TypeSummary:
        return self.ws.reject_type(
            int(type_id), actor=actor, expected_version=self._version(type_id, expected_version)
        )

    def rename_type(
        self, type_id: int, name: str, *, expected_version: int | None = None, actor: str
    ) -> TypeSummary:
        return self.ws.rename_type(
            int(type_id),
            name,
            actor=actor,
            expected_version=self._version(type_id, expected_version),
        )

    def merge_types(
        self, keep: int, absorb: int, *, seen: Mapping[int, int] | None = None, actor: str
    ) -> TypeSummary:
        """Merge ``absorb`` into ``keep`` (``seen``: the versions the reviewer looked at)."""
        expected = {**self._versions([keep, absorb]), **dict(seen or {})}
        return self.ws.merge_types(int(keep), int(absorb), expected=expected, actor=actor)

    def move_regions(
        self,
        region_ids: Sequence[int],
        to_type_id: int,
        *,
        seen: Mapping[int, int] | None = None,
        actor: str,
    ) -> None:
        expected = self.expected_for(
            region_ids, {**self._versions([to_type_id]), **dict(seen or {})}
        )
        self.ws.move_regions(
            [int(r) for r in region_ids], int(to_type_id), expected=expected, actor=actor
        )

    def mark_normal(
        self, region_ids: Sequence[int], *, seen: Mapping[int, int] | None = None, actor: str
    ) -> None:
        self.ws.mark_normal(
            [int(r) for r in region_ids], expected=self.expected_for(region_ids, seen), actor=actor
        )

    def create_type(
        self,
        region_ids: Sequence[int],
        *,
        seen: Mapping[int, int] | None = None,
        actor: str,
        name: str | None = None,
        status: str = "proposed",
    ) -> int:
        """A new type of the given regions (moved out of the types they are in)."""
        return self.ws.create_type(
            [int(r) for r in region_ids],
            expected=self.expected_for(region_ids, seen),
            actor=actor,
            name=name,
            status=status,
        )

    def import_labels(
        self, csv_path: str | os.PathLike[str], *, actor: str, batch_id: int | None = None
    ) -> ImportReport:
        """Apply a known ``image,label`` CSV (``good`` marks an image's regions normal)."""
        return self.ws.import_labels(csv_path, actor=actor, batch_id=batch_id)

    def undo(self, actor: str, seq: int | None = None) -> AuditEntry:
        """Undo ``actor``'s latest action that is not undone yet, or audit entry ``seq``
        (theirs, while nothing later touched its types)."""
        return self.ws.undo(actor, seq)

    def split_type(
        self,
        type_id: int,
        parts: int = 2,
        *,
        expected_version: int,
        actor: str,
        region_ids: Sequence[int] | None = None,
    ) -> list[int]:
        """Split a type in ``parts`` by clustering its members' embeddings, or move the given
        ``region_ids`` (a selection) into one new type."""
        if region_ids is not None:
            return self.ws.split_type(
                type_id, [list(region_ids)], expected_version=expected_version, actor=actor
            )
        members = self.all_members(type_id)
        if len(members) < parts:
            raise ValueError(
                f"type {type_id} has {len(members)} members: cannot split it in {parts}"
            )
        ids, emb = self.ws.embeddings()
        row = {int(r): i for i, r in enumerate(ids)}
        have = [m.region_id for m in members if m.region_id in row]
        if len(have) < parts:
            raise ValueError(f"type {type_id}: too few members with embeddings to split")
        x = emb[[row[r] for r in have]]
        d = self.config.discovery
        labels, _ = cluster(
            x,
            parts,
            method=d.cluster_method,
            max_points=d.ward_max_points,
            restarts=d.kmeans_restarts,
            seed=self.config.seed,
        )
        sizes = np.bincount(labels, minlength=parts)
        keep = int(sizes.argmax())  # the largest part stays in the type
        groups = [
            [have[i] for i in np.flatnonzero(labels == k)]
            for k in range(parts)
            if k != keep and sizes[k] > 0
        ]
        return self.ws.split_type(type_id, groups, expected_version=expected_version, actor=actor)
