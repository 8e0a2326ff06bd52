"""Applying reviewers' answers to the queue's questions: one handler per (question kind,
choice) of the typed :class:`~protoatlas.service.answer_format.Answer`.

Questions and what their answers do:

=============  =======================================  ======================================
kind           yes                                      no
=============  =======================================  ======================================
``confirm``    confirm the type (``name``: rename, or   a standing "mixed": the next retrain
               merge into the type of that name)        gives it one more prototype
``merge``      merge the two types                      nothing
``split``      split off the smaller group              nothing
``new_type``   make the regions a type (``name``)       nothing
``defect``     type the candidate region (lowers the    mark the candidate normal
               threshold below the image's score)
``label``      (no yes/no: a type id, a type name or ``good``)
=============  =======================================  ======================================

With yes or no to ``confirm``, the members the reviewer picked as not belonging first move out
into a new proposed type; a "no" with such a pick is *settled*, not a standing "mixed".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import cast

import numpy as np

from engine.clustering import normalise
from protoatlas.service.answer_format import NORMAL_LABELS, Answer
from protoatlas.service.reads import ReadsMixin
from protoatlas.service.region_table import region_table
from protoatlas.service.suggestions import target_key
from storage import ConflictError, Suggestion, TypeSummary

Handler = Callable[["AnswersMixin", Suggestion, Answer, Sequence[int], str], str]


class AnswersMixin(ReadsMixin):
    """Applying answers (a part of :class:`~protoatlas.service.workspace.WorkspaceService`)."""

    def type_by_name(self, name: str) -> TypeSummary | None:
        """The live (proposed or confirmed) type of that name, ignoring case."""
        for t in self.ws.list_types():
            if t.name.lower() == name.lower() and t.status in ("proposed", "confirmed"):
                return t
        return None

    def place_regions(self, region_ids: Sequence[int], label: str, actor: str) -> None:
        """Put regions in the type called ``label`` (created, confirmed, when absent);
        ``good``/``normal`` marks them as false alarms."""
        table = region_table(self.ws)
        pos = {int(r): i for i, r in enumerate(table.region_ids)}
        region_ids = [int(r) for r in region_ids if int(r) in pos]
        if not region_ids:
            raise ValueError("the regions of this question no longer exist")
        touched = {int(table.type_ids[pos[r]]) for r in region_ids if table.type_ids[pos[r]] >= 0}
        if label.lower() in NORMAL_LABELS:
            self.ws.mark_normal(region_ids, expected=self._versions(touched), actor=actor)
            return
        target = self.type_by_name(label)
        if target is None:
            self.ws.create_type(
                region_ids,
                expected=self._versions(touched),
                actor=actor,
                name=label,
                status="confirmed",
            )
        else:
            self.ws.move_regions(
                region_ids, target.id, expected=self._versions(touched | {target.id}), actor=actor
            )

    def _open_question(self, suggestion_id: int) -> Suggestion:
        """The open question ``suggestion_id``; an answer to a question a retrain renewed
        goes to the same question in the new queue, if it is still asked."""
        s = next((x for x in self.ws.suggestions() if x.id == suggestion_id), None)
        if s is None:
            raise ValueError(f"no suggestion with id {suggestion_id}")
        if s.status == "stale":
            key = target_key(s.kind, s.target)
            same = next(
                (
                    x
                    for x in self.ws.open_suggestions()
                    if x.kind == s.kind and target_key(x.kind, x.target) == key
                ),
                None,
            )
            if same is None:
                raise ValueError(
                    f"question {suggestion_id} is no longer asked: the model "
                    "was retrained since and renewed the questions"
                )
            s = same
        if s.status != "open":
            by = f" by {s.answered_by}" if s.answered_by else ""
            raise ConflictError(f"suggestion {s.id} is already {s.status}{by}; nothing was changed")
        return s

    def answer_suggestion(
        self,
        suggestion_id: int,
        answer: str | Answer,
        *,
        actor: str,
        name: str | None = None,
        regions: Sequence[int] | None = None,
    ) -> dict[str, str]:
        """Apply a reviewer's answer to an open question, then record it.

        ``answer``: an :class:`Answer`, or the text :meth:`Answer.parse` reads (``yes`` /
        ``no`` / ``skip``; for ``label`` questions a type id, a type name, created when new,
        or ``good``); ``name`` optionally names the type a yes confirms or creates (an
        existing name merges into that type). ``regions``: with yes or no to "is T one
        type?", the members the reviewer picked as not belonging; they move out into a new
        proposed type (one split) first. What each answer does: the table of this module.
        Returns ``{"applied": <what was done>}``.
        """
        with self.queue_lock:  # the question stays open until its answer is recorded
            s = self._open_question(suggestion_id)
            a = answer if isinstance(answer, Answer) else Answer.parse(answer, s.kind, name=name)
            if a.choice == "skip":
                self.ws.answer_suggestion(s.id, None, actor=actor, skip=True)
                return {"applied": "skip"}
            picked = sorted({int(r) for r in regions or ()})
            if picked and not (s.kind == "confirm" and a.choice in ("yes", "no")):
                raise ValueError(
                    'a selection of members goes with yes or no to "is it one '
                    f'type?" only, not with {a.choice!r} to a {s.kind} question'
                )
            handler = HANDLERS.get((s.kind, a.choice))
            if handler is None:
                raise ValueError(f"a {s.kind} question cannot be answered {a.choice!r}")
            applied = handler(self, s, a, picked, actor)
            if picked:
                a = Answer(a.choice, name=a.name, moved_out=len(picked))
            self.ws.answer_suggestion(s.id, a.dump(), actor=actor)
            return {"applied": applied}

    # ------------------------------------------------------------------ handlers
    def _label(self, s: Suggestion, a: Answer, picked: Sequence[int], actor: str) -> str:
        region = int(s.target["region_id"])
        if a.type_id is None:
            self.place_regions([region], str(a.label), actor)
            return f"labelled {a.label}"
        t = self.ws.get_type(a.type_id)
        table = region_table(self.ws)
        touched = {int(x) for x in table.type_ids[table.region_ids == region] if x >= 0}
        self.ws.move_regions([region], t.id, expected=self._versions(touched | {t.id}), actor=actor)
        return f"moved to {t.name}"

    def _defect(self, s: Suggestion, a: Answer, picked: Sequence[int], actor: str) -> str:
        """ "Is this image defective?": yes types its candidate region (the named type, else
        the nearest one, else a new proposed type) and so lowers the threshold
        (:meth:`threshold`); no marks it normal for good."""
        region_id = int(s.target["region_id"])
        if a.choice == "no":
            self.ws.mark_normal([region_id], expected={}, actor=actor)
            return "marked normal"
        if a.name:
            self.place_regions([region_id], a.name, actor)
            return f"labelled {a.name}"
        ids, emb = self.ws.embeddings()
        p_ids, p_mat, _ = self.ws.prototypes()
        live = {t.id for t in self.ws.list_types() if t.status in ("proposed", "confirmed")}
        keep = [i for i, t in enumerate(p_ids) if int(t) in live]
        hit = np.flatnonzero(np.asarray(ids) == region_id)
        if keep and len(hit):
            sims = normalise(np.asarray(p_mat)[keep]) @ emb[int(hit[0])]
            tid = int(np.asarray(p_ids)[keep][int(np.argmax(sims))])
            self.ws.move_regions([region_id], tid, expected=self._versions([tid]), actor=actor)
            return f"defective: moved to {self.ws.get_type(tid).name}"
        new = self.ws.create_type([region_id], expected={}, actor=actor)
        return f"defective: new type #{new}"

    def _confirm_no(self, s: Suggestion, a: Answer, picked: Sequence[int], actor: str) -> str:
        if picked:
            return self._move_out(int(s.target["type_id"]), picked, actor)
        return (
            "marked as more than one type: the next retrain gives it one more "
            "prototype and re-sorts its members"
        )

    def _confirm_yes(self, s: Suggestion, a: Answer, picked: Sequence[int], actor: str) -> str:
        tid = int(s.target["type_id"])
        moved = self._move_out(tid, picked, actor) + "; " if picked else ""
        existing = self.type_by_name(a.name) if a.name else None
        if existing is not None and existing.id != tid:
            keep, absorb = existing.id, tid
            self.ws.merge_types(keep, absorb, expected=self._versions([keep, absorb]), actor=actor)
            return f"{moved}merged into {existing.name}"
        t = self.ws.get_type(tid)
        t = self.ws.confirm_type(tid, expected_version=t.version, actor=actor)
        if a.name and a.name != t.name:
            self.ws.rename_type(tid, a.name, expected_version=t.version, actor=actor)
        return f"{moved}confirmed"

    def _merge_yes(self, s: Suggestion, a: Answer, picked: Sequence[int], actor: str) -> str:
        x, y = (int(v) for v in s.target["type_ids"])
        tx, ty = self.ws.get_type(x), self.ws.get_type(y)
        keep, absorb = (
            (x, y)
            if (tx.status == "confirmed" or tx.n_regions >= ty.n_regions)
            and ty.status != "confirmed"
            else (y, x)
        )
        self.ws.merge_types(keep, absorb, expected=self._versions([keep, absorb]), actor=actor)
        return "merged"

    def _split_yes(self, s: Suggestion, a: Answer, picked: Sequence[int], actor: str) -> str:
        tid = int(s.target["type_id"])
        members = {m.region_id for m in self.all_members(tid)}
        groups = [[r for r in g if r in members] for g in s.target["groups"]]
        groups = [g for g in groups if g]
        if len(groups) < 2:
            raise ValueError("the type changed since the question: nothing left to split")
        t = self.ws.get_type(tid)
        self.ws.split_type(tid, [min(groups, key=len)], expected_version=t.version, actor=actor)
        return "split"

    def _new_type_yes(self, s: Suggestion, a: Answer, picked: Sequence[int], actor: str) -> str:
        region_ids = s.target["region_ids"]
        if a.name:
            self.place_regions(region_ids, a.name, actor)
            return "new type"
        table = region_table(self.ws)
        pos = {int(r): i for i, r in enumerate(table.region_ids)}
        touched = {
            int(table.type_ids[pos[r]])
            for r in region_ids
            if r in pos and table.type_ids[pos[r]] >= 0
        }
        self.ws.create_type(region_ids, expected=self._versions(touched), actor=actor)
        return "new type"

    def _nothing(self, s: Suggestion, a: Answer, picked: Sequence[int], actor: str) -> str:
        return "nothing"

    def _move_out(self, type_id: int, region_ids: Sequence[int], actor: str) -> str:
        """Split the picked members of ``type_id`` into a new proposed type (the storage
        refuses a pick that is not a member, changing nothing)."""
        t = self.ws.get_type(type_id)
        if len(region_ids) >= t.n_regions:
            raise ValueError(
                f"all {t.n_regions} members of {t.name} were picked: pick the "
                "ones that do not belong (or reject the type)"
            )
        new = self.ws.split_type(
            type_id, [list(region_ids)], expected_version=t.version, actor=actor
        )
        return (
            f"moved {len(region_ids)} member(s) that do not belong out of {t.name} into "
            f"a new type (#{new[0]})"
        )


#: (question kind, choice) -> what the answer does.
HANDLERS: dict[tuple[str, str], Handler] = cast(
    dict[tuple[str, str], Handler],
    {
        ("label", "label"): AnswersMixin._label,
        ("defect", "yes"): AnswersMixin._defect,
        ("defect", "no"): AnswersMixin._defect,
        ("confirm", "yes"): AnswersMixin._confirm_yes,
        ("confirm", "no"): AnswersMixin._confirm_no,
        ("merge", "yes"): AnswersMixin._merge_yes,
        ("merge", "no"): AnswersMixin._nothing,
        ("split", "yes"): AnswersMixin._split_yes,
        ("split", "no"): AnswersMixin._nothing,
        ("new_type", "yes"): AnswersMixin._new_type_yes,
        ("new_type", "no"): AnswersMixin._nothing,
    },
)
