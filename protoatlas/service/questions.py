"""The active-learning question queue of a workspace: the review state the strategies of
:mod:`protoatlas.service.suggestions` read, which answered questions stand, and the queue
itself (refreshed, checked, with the members a question shows)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from engine.clustering import normalise
from engine.config import SuggestConfig
from protoatlas.service.answer_format import Answer
from protoatlas.service.core import ServiceCore
from protoatlas.service.region_table import RegionTable, region_table
from protoatlas.service.suggestions import (
    Candidate,
    ReviewState,
    answer_stands,
    suggest,
    target_key,
)
from storage import Member, Suggestion, SuggestionIn


class QuestionsMixin(ServiceCore):
    """The question queue (a part of :class:`~protoatlas.service.workspace.WorkspaceService`)."""

    @property
    def suggest_config(self) -> SuggestConfig:
        """The question strategies' settings (``config.suggest``, with the config's seed)."""
        return replace(self.config.suggest, seed=self.config.seed)

    def review_state(self) -> ReviewState:
        """Regions, embeddings (latest model version), types and prototypes, for the
        suggestion strategies."""
        table = region_table(self.ws)
        ids, emb = self.ws.embeddings()
        pos = {int(r): i for i, r in enumerate(ids)}
        have = np.array([int(r) in pos for r in table.region_ids], dtype=bool)
        sel = np.flatnonzero(have)
        listed = self.ws.list_types()
        types = {t.id: (t.name, t.status) for t in listed if t.status in ("proposed", "confirmed")}
        p_ids, p_mat, _ = self.ws.prototypes()
        prototypes = {
            int(t): normalise(v[None])[0] for t, v in zip(p_ids, p_mat) if int(t) in types
        }
        model = self.model()
        return ReviewState(
            candidates=self._candidates(table),
            threshold=None if model is None or model.detector is None else model.detector.threshold,
            mixed=self.mixed_types({t.id: t.n_regions for t in listed}) & set(types),
            region_ids=table.region_ids[sel],
            image_ids=table.image_ids[sel],
            embeddings=emb[[pos[int(r)] for r in table.region_ids[sel]]]
            if len(sel)
            else np.zeros((0, self.ws.embedding_dim), np.float32),
            region_type=table.type_ids[sel],
            reviewed=table.reviewed[sel],
            is_normal=table.is_normal[sel],
            types=types,
            prototypes=prototypes,
        )

    def _candidates(self, table: RegionTable) -> list[Candidate]:
        """Candidate regions (stored judged normal by the model, on an image it passed) no
        reviewer has looked at, with their image's score; only batches scored by the
        detector in force (scores of another detector are in another unit)."""
        rows = np.flatnonzero(table.is_normal & ~table.reviewed)
        if len(rows) == 0:
            return []
        scores: dict[tuple[int, int], tuple[float | None, bool | None]] = {}
        since = self.detector_since()
        current = {
            b.id
            for b in self.ws.batches()
            if since is None or (b.model_version is not None and b.model_version >= since)
        }
        for b in {int(table.batch_ids[r]) for r in rows} & current:
            for image_id, _, score, flagged in self.ws.batch_images(b):
                scores[(b, image_id)] = (score, flagged)
        out = []
        for r in rows:
            score, flagged = scores.get(
                (int(table.batch_ids[r]), int(table.image_ids[r])), (None, None)
            )
            if score is not None and not flagged:
                out.append(
                    Candidate(int(table.region_ids[r]), int(table.image_ids[r]), float(score))
                )
        return out

    def _type_sizes(self) -> dict[int, int]:
        return {t.id: t.n_regions for t in self.ws.list_types()}

    def mixed_types(self, sizes: dict[int, int] | None = None) -> set[int]:
        """Types a reviewer said are not one defect type (answered "no" to confirm), while
        they have not changed much since (:func:`protoatlas.service.suggestions.answer_stands`)."""
        return set(self._standing_no_answers(sizes))

    def _standing_no_answers(self, sizes: dict[int, int] | None = None) -> dict[int, int]:
        """Type id -> id of the latest standing "no" to "is it one type?" (see
        :meth:`mixed_types`)."""
        sizes = self._type_sizes() if sizes is None else sizes
        cfg = self.suggest_config
        return {
            int(s.target["type_id"]): int(s.id)
            for s in sorted(self.ws.suggestions(status="answered"), key=lambda x: x.id)
            if s.kind == "confirm"
            and Answer.load(s.answer).is_standing_no
            and answer_stands(
                s.target.get("n_regions"), sizes.get(int(s.target["type_id"]), 0), cfg
            )
        }

    def declined(self, sizes: dict[int, int] | None = None) -> set[tuple[str, str]]:
        """(kind, target key) of questions already answered or skipped: not asked again
        (an answer about a whole type, confirm or split, stands while the type keeps about
        its size, so a type that changed much can be asked about again)."""
        sizes = self._type_sizes() if sizes is None else sizes
        cfg = self.suggest_config
        out = set()
        for s in self.ws.suggestions():
            if s.status == "skipped" or s.status == "answered":
                if s.kind == "confirm" and Answer.load(s.answer).is_settled_no:
                    continue  # the reviewer picked out what did not belong: ask again
                if s.kind in ("confirm", "split"):
                    asked = (
                        s.target.get("n_regions")
                        if s.kind == "confirm"
                        else sum(len(g) for g in s.target["groups"])
                    )
                    if answer_stands(asked, sizes.get(int(s.target["type_id"]), 0), cfg):
                        out.add((s.kind, str(s.target["type_id"])))
                    continue
                out.add((s.kind, target_key(s.kind, s.target)))
        return out

    def refresh_suggestions(
        self, *, strategy: str = "ranked", rng: np.random.Generator | None = None
    ) -> list[Suggestion]:
        """Recompute the open question queue (answered/declined ones are not asked again)."""
        with self.queue_lock:  # not while an answer is half-applied
            return self._refresh_suggestions(strategy, rng)

    def _refresh_suggestions(
        self, strategy: str, rng: np.random.Generator | None
    ) -> list[Suggestion]:
        state = self.review_state()
        declined = self.declined()
        cfg = self.suggest_config
        # drop the declined questions before keeping queue_size of them, so that declined
        # questions cannot fill the queue (and leave it empty)
        every = suggest(state, replace(cfg, queue_size=2**31), strategy=strategy, rng=rng)
        qs = [q for q in every if (q.kind, target_key(q.kind, q.target)) not in declined][
            : cfg.queue_size
        ]
        mv = self.ws.latest_model_version()
        items = [
            SuggestionIn(kind=q.kind, target=q.target, score=q.score, reason=q.reason) for q in qs
        ]
        self.ws.replace_open_suggestions(items, model_version=mv.id if mv else None)
        return (
            self.ws.open_suggestions()
            if strategy == "ranked"
            else sorted(self.ws.open_suggestions(), key=lambda s: s.id)
        )

    def next_suggestion(self) -> Suggestion | None:
        """The best open question (refreshing the queue when it is empty)."""
        open_ = self.ws.open_suggestions(limit=1)
        if not open_ or not self._still_stands(open_[0]):
            open_ = self.refresh_suggestions()
        return open_[0] if open_ else None

    def _still_stands(self, suggestion: Suggestion) -> bool:
        """Whether the types a queued question is about still exist and have members (an
        action since the queue was built may have emptied or merged one: the queue is then
        rebuilt rather than asking about an empty type)."""
        target = dict(suggestion.target or {})
        ids = list(target.get("type_ids") or [])
        if target.get("type_id") is not None:
            ids.append(target["type_id"])
        if not ids:
            return True
        types = {t.id: t for t in self.ws.list_types()}
        return all(int(i) in types and types[int(i)].n_regions > 0 for i in ids)

    def question_members(self, type_id: int, n: int | None = None) -> list[Member]:
        """The members an "is it one type?" question shows (one region per image, at most
        ``n``, default ``config.suggest.shown_members``): every image's region nearest the
        prototype when the type spans at most ``n`` images; else half of them nearest the
        prototype and the rest its least confident (borderline) members, where members that
        do not belong are likelier."""
        n = self.suggest_config.shown_members if n is None else int(n)
        near = self.ws.representatives(type_id, n=n + 1)
        if len(near) <= n:
            return near
        out = near[: n - n // 2]
        seen = {m.image_id for m in out}
        offset = 0
        while len(out) < n:
            page = self.ws.type_members(type_id, limit=4 * n, offset=offset, order="borderline")
            if not page:
                break
            offset += len(page)
            for m in page:
                if m.image_id not in seen and len(out) < n:
                    seen.add(m.image_id)
                    out.append(m)
        return out
