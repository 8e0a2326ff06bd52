"""The service layer over a workspace: ingest a batch -> run the engine -> persist -> suggest.

Both the CLI (``discover --home``, ``doctor``, ``export``, ``simulate-review``) and the web
app call :class:`WorkspaceService`; neither touches the engine or DuckDB directly for a
workflow. One service per workspace per process: it owns the :class:`storage.Workspace`
(one writer connection behind a lock) and serialises engine jobs behind ``engine_lock`` (the
concurrency limit on engine work); reviewer actions never wait for an engine job.

Conventions:

* The engine's model file is stored as the blob of a storage *model version*; the types'
  prototypes live in DuckDB (``prototypes`` table) and the FAISS index is rebuilt from them
  whenever a model is loaded (:meth:`WorkspaceService.model`).
* Crop tokens (what retraining learns from) are cached per batch in
  ``<workspace>/tokens/batch-<id>.npz``, written after the batch's transaction commits.
  A batch whose tokens file is missing (process killed in between) is reported by
  :meth:`WorkspaceService.doctor` and left out of retraining.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.clustering import cluster, normalise
from engine.config import ProtoAtlasConfig
from engine.data import LazyImages, SkippedFile
from engine.discovery import NO_TYPE, DiscoveryModel, DiscoveryResult, no_progress
from engine.discovery import ProgressFn as Progress
from engine.prior import prior_overrides
from engine.tokens import RegionTokens
from protoatlas.discover import DiscoverRun, open_images
from protoatlas.suggest import ReviewState
from storage import (
    AssignmentsIn,
    BatchIngest,
    ImageIn,
    ModelVersionIn,
    NewType,
    PrototypeIn,
    RegionsIn,
    SuggestionIn,
    ValidationError,
    Workspace,
    doctor,
    encode_rle,
)

TOKENS_DIR = "tokens"
#: Tokens are cached in half precision (they are frozen-backbone features: plenty).
TOKENS_DTYPE = np.float16
#: A reviewer's "yes, defective" puts the threshold this fraction below the image's score.
THRESHOLD_EPSILON = 1e-6


@dataclass
class UploadReport:
    batch_id: int
    n_images: int
    n_anomalous: int
    n_regions: int
    new_type_ids: list[int]
    skipped: list[SkippedFile]
    mode: str  # "discover" (first batch) or "assign" (sorted into existing types)
    seconds: dict[str, float] = field(default_factory=dict)
    #: Candidate regions stored (images passed just below the threshold, judged normal).
    n_candidates: int = 0


# ============================================================================================
# persisting a run
# ============================================================================================


def _image_in(images: LazyImages, i: int, result: DiscoveryResult) -> ImageIn:
    ref = images.refs[i]
    h, w = result.analysis.shapes[i]
    data = None if ref.path is not None else ref.read_bytes()
    return ImageIn(name=ref.name, width=int(w), height=int(h), path=ref.path, data=data,
                   anomaly_score=float(result.analysis.scores[i]),
                   is_anomalous=bool(result.analysis.is_anomalous[i]),
                   anomaly_map=result.analysis.maps[i])


def _dedupe(images: LazyImages) -> list[SkippedFile]:
    """Drop images whose bytes repeat an earlier image of the batch (kept once)."""
    import hashlib

    seen: dict[str, str] = {}
    dupes: list[SkippedFile] = []
    for ref in images.refs:
        sha = hashlib.sha256(ref.read_bytes()).hexdigest()
        if sha in seen:
            dupes.append(SkippedFile(ref.name, f"identical to {seen[sha]} (kept once)"))
        else:
            seen[sha] = ref.name
    if dupes:
        images.drop({d.name for d in dupes})
    return dupes


def candidate_peaks(run: DiscoverRun, band: float) -> list[int]:
    """Indices into ``run.result.analysis.peaks`` of the images the detector passed that
    score within ``band`` below its threshold (their peak region becomes a candidate)."""
    an = run.result.analysis
    threshold = run.threshold
    if threshold is None or not np.isfinite(threshold) or run.result.peak_embeddings is None:
        return []
    floor = (1.0 - band) * threshold
    return [k for k, rec in enumerate(an.peaks) if an.scores[rec.image_index] >= floor]


def batch_ingest(run: DiscoverRun, images: LazyImages, *, name: str, params: dict,
                 model: ModelVersionIn | int | None, existing: bool,
                 candidates: Sequence[int] = ()) -> BatchIngest:
    """The storage form of a run. ``existing``: the run's type ids are storage ids (assign),
    except ``run.result.new_type_ids``; otherwise all types are new (discover).
    ``candidates`` (indices into the analysis' peaks) are stored after the regions, as
    regions judged normal without a type."""
    res = run.result
    an = res.analysis
    new_ids = set(res.new_type_ids) if existing else {int(t) for t in res.type_ids}

    def ref(tid: int) -> object:
        return f"k{tid}" if tid in new_ids else int(tid)

    records = list(an.regions) + [an.peaks[k] for k in candidates]
    n = len(records)
    embeddings = res.embeddings
    if candidates:
        assert res.peak_embeddings is not None
        embeddings = np.concatenate([res.embeddings, res.peak_embeddings[list(candidates)]])
    regions = RegionsIn(
        image=np.array([r.image_index for r in records], dtype=np.int64),
        boxes=np.array([r.clip for r in records], dtype=np.int64).reshape(n, 4),
        anomaly_score=np.array([r.score for r in records], dtype=np.float64),
        masks=[encode_rle(r.full_mask(an.shapes[r.image_index])) for r in records],
        area=np.array([r.area for r in records], dtype=np.int64),
        embeddings=embeddings if n else None)
    n_found = len(an.regions)
    assignments = AssignmentsIn(
        regions=np.arange(n, dtype=np.int64),
        types=[None if t == NO_TYPE else ref(int(t)) for t in res.region_type]
        + [None] * len(candidates),
        confidence=np.concatenate([res.region_confidence.astype(np.float64),
                                   np.zeros(len(candidates))]),
        is_normal=np.arange(n) >= n_found)
    counts = {int(t): int((res.region_type == t).sum()) for t in res.type_ids}
    prototypes = [PrototypeIn(type=ref(int(t)), vector=v, n_members=counts[int(t)])
                  for t, v in zip(res.type_ids, res.prototypes) if int(t) in new_ids]
    return BatchIngest(
        name=name, images=[_image_in(images, i, res) for i in range(len(images))],
        regions=regions, params=params, model=model,
        new_types=[NewType(key=f"k{t}") for t in sorted(new_ids)],
        assignments=assignments if n else None,
        prototypes=prototypes if n_found else [])


def stored_tokens(run: DiscoverRun, candidates: Sequence[int]) -> RegionTokens:
    """Tokens of the regions :func:`batch_ingest` stores, in its order."""
    an = run.result.analysis
    if not candidates or an.peak_tokens is None:
        return an.tokens
    return RegionTokens.concat([an.tokens, an.peak_tokens.select(list(candidates))])


def model_bytes(model: DiscoveryModel) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = model.save(Path(tmp) / "model.npz")
        return path.read_bytes()


def persist_run(home: str | os.PathLike, run: DiscoverRun, *, source: str,
                name: str = "default") -> int:
    """Store a CLI ``discover`` run in the workspace ``home/name`` (as its first model or a
    new discovery model version); returns the batch id."""
    service = WorkspaceService(home, name, config=run.model.config)
    try:
        images = open_images(source, run.model.config, progress=False, desc="check images")
        if images.names != run.names:
            raise ValueError(f"{source} changed while it was analysed; run discover again")
        return service.store_discovery(run, images, batch_name=Path(source).name,
                                       actor="cli")
    finally:
        service.close()


# ============================================================================================
# the service
# ============================================================================================


# ============================================================================================
# learning from feedback and active-learning suggestions
# ============================================================================================

@dataclass
class RegionTable:
    """Every region of the workspace with its current assignment (rows by region id)."""

    region_ids: np.ndarray
    image_ids: np.ndarray
    batch_ids: np.ndarray
    type_ids: np.ndarray      # -1: none
    reviewed: np.ndarray      # assignment set by a reviewer
    is_normal: np.ndarray
    area: np.ndarray
    score: np.ndarray
    confidence: np.ndarray

def region_table(ws: Workspace) -> RegionTable:
    rows = [r for b in ws.batches() for r in ws.regions_for_batch(b.id, with_masks=False)]
    rows.sort(key=lambda r: r.id)
    return RegionTable(
        region_ids=np.array([r.id for r in rows], dtype=np.int64),
        image_ids=np.array([r.image_id for r in rows], dtype=np.int64),
        batch_ids=np.array([r.batch_id for r in rows], dtype=np.int64),
        type_ids=np.array([-1 if r.type_id is None or r.type_status not in
                           ("proposed", "confirmed") else r.type_id for r in rows],
                          dtype=np.int64),
        reviewed=np.array([r.source == "reviewer" for r in rows], dtype=bool),
        is_normal=np.array([bool(r.is_normal) for r in rows], dtype=bool),
        area=np.array([r.area for r in rows], dtype=np.float64),
        score=np.array([np.nan if r.anomaly_score is None else r.anomaly_score
                        for r in rows], dtype=np.float64),
        confidence=np.array([np.nan if r.confidence is None else r.confidence
                             for r in rows], dtype=np.float64))

def _target_key(kind: str, target: dict) -> str:
    if kind == "confirm":
        return str(target["type_id"])
    if kind == "split":
        return str(target["type_id"])
    if kind == "merge":
        return ",".join(str(t) for t in sorted(target["type_ids"]))
    if kind in ("label", "defect"):
        return str(target["region_id"])
    return ",".join(str(r) for r in sorted(target.get("region_ids", [])))


def _retrained_assignments(new_type: np.ndarray, current: np.ndarray,
                           ref: dict[int, object], mixed: set[int], *, sims: np.ndarray,
                           established: set[int], margin: float) -> np.ndarray:
    """The retrained model's type per region (engine ids, ``NO_TYPE`` for outliers), applied
    where the reviewers left the question open, and only there:

    * regions without a type, or whose type got no prototype, take the new assignment;
    * members of a type a reviewer called mixed ("not one type") take it too, unless the
      model makes them outliers;
    * any other region stays in its type, except that it moves into an *established*
      confirmed type (``established``: storage ids) whose prototype is at least ``margin``
      (cosine) closer than its own type's.

    New types therefore form from mixed types' members and untyped regions only, and no
    region moves between the model's own proposals. ``current``: storage type id per region
    (-1: none); ``ref``: engine id -> storage id (int) or the key of a type the retrain
    creates (str); ``sims``: region x engine-type cosine similarities. Measured reasons are
    in docs/decisions.md (*Retraining*).
    """
    storage_to_engine = {v: k for k, v in ref.items() if isinstance(v, int)}
    out = new_type.copy()
    for r in range(len(out)):
        old = int(current[r])
        if old < 0 or old not in storage_to_engine:
            continue
        if old in mixed and out[r] != NO_TYPE:
            continue
        own = storage_to_engine[old]
        if out[r] == NO_TYPE or ref.get(int(out[r])) not in established or \
                sims[r, int(out[r])] < sims[r, own] + margin:
            out[r] = own
    return out


class ReviewMixin:
    """Learning from feedback and the active-learning queue (methods of
    :class:`WorkspaceService`)."""

    def retrain(self, actor: str = "model", progress: Progress = no_progress
                 ) -> int | None:
        """Retrain the prototype head from the cached tokens and the reviewers' decisions.

        Regions of confirmed types are labelled samples of known classes; regions marked normal
        are left out; the others are unlabelled, grouped into as many novel types as there are
        proposed types with members, plus one for each proposed type a reviewer called mixed
        (at least one when unlabelled regions exist). Novel prototypes keep the ids of the
        proposed types they overlap most (Hungarian matching); a novel prototype matching
        none becomes a new proposed type. The new assignments apply to the regions the
        reviewers left open (:func:`_retrained_assignments`): members of mixed types, regions
        without a type, and regions much closer to an established confirmed type.
        Reviewer-set assignments are never overwritten (storage guarantees it). Returns the
        new model version id, or None when there is nothing to learn from.
        """
        from scipy.optimize import linear_sum_assignment

        with self.engine_lock:
            model = self.model()
            if model is None:
                return None
            progress("load", 0.0)
            table = region_table(self.ws)
            row = {int(r): i for i, r in enumerate(table.region_ids)}
            ids_parts, tok_parts = [], []
            for b in self.ws.batches():
                got = self.load_tokens(b.id)
                if got is not None:
                    ids_parts.append(got[0])
                    tok_parts.append(got[1])
            if not tok_parts:
                return None
            region_ids = np.concatenate(ids_parts)
            tokens = RegionTokens.concat(tok_parts)
            keep = np.array([int(r) in row and not table.is_normal[row[int(r)]]
                             for r in region_ids], dtype=bool)
            region_ids, tokens = region_ids[keep], tokens.select(np.flatnonzero(keep))
            if len(region_ids) < 2:
                return None
            rows = np.array([row[int(r)] for r in region_ids], dtype=np.int64)
            current = table.type_ids[rows]
            types = {t.id: t for t in self.ws.list_types()}
            confirmed = sorted({int(t) for t in current
                                if t >= 0 and types[int(t)].status == "confirmed"})
            proposed = sorted({int(t) for t in current
                               if t >= 0 and types[int(t)].status == "proposed"})
            known_index = {t: i for i, t in enumerate(confirmed)}
            labels = np.array([known_index.get(int(t), -1) for t in current], dtype=np.int64)
            n_free = int((labels < 0).sum())
            # a proposed type a reviewer called mixed ("not one type") holds at least two
            # types: its "no" asks the next retrain, once, for one more novel prototype
            sizes = {t: info.n_regions for t, info in types.items()}
            no_answers = {t: sid for t, sid in self._standing_no_answers(sizes).items()
                          if t in proposed}
            mixed = set(no_answers)
            acted = {int(sid) for mv in self.ws.model_versions("retrain")
                     for sid in mv.metrics.get("split_for", [])}
            split_for = sorted(sid for sid in no_answers.values() if sid not in acted)
            k_novel = min(max(len(proposed) + len(split_for), 1 if n_free else 0), n_free)
            progress("train", 0.1)
            fit = model.fit_types(tokens, k_novel if (k_novel or confirmed) else "auto",
                                  labels=labels)
            # engine type index -> storage type id (known: confirmed ids; novel: matched)
            n_types = len(model.type_ids)
            ref: dict[int, object] = {i: confirmed[i] for i in range(fit.n_known)}
            novel = list(range(fit.n_known, n_types))
            if novel and proposed:
                overlap = np.zeros((len(novel), len(proposed)))
                for a, b in zip(fit.assigned, current):
                    if a >= fit.n_known and int(b) in proposed:
                        overlap[novel.index(int(a)), proposed.index(int(b))] += 1
                r_idx, c_idx = linear_sum_assignment(-overlap)
                for r, c in zip(r_idx, c_idx):
                    if overlap[r, c] > 0:
                        ref[novel[r]] = proposed[c]
            new_types = [NewType(key=f"r{i}") for i in novel if i not in ref]
            for i in novel:
                ref.setdefault(i, f"r{i}")
            region_type, conf, outlier, _ = model.classify(fit.embeddings)
            dcfg = self.config.discovery
            established = {t for t in confirmed
                           if types[t].n_regions >= dcfg.retrain_min_known_members}
            region_type = _retrained_assignments(
                region_type, current, ref, mixed, sims=fit.embeddings @ model.prototypes.T,
                established=established, margin=dcfg.retrain_switch_margin)
            counts = np.bincount(fit.assigned, minlength=n_types)
            protos = [PrototypeIn(type=ref[i], vector=model.prototypes[i],
                                  n_members=int(counts[i])) for i in range(n_types)]
            assignments = AssignmentsIn(
                regions=region_ids,
                types=[None if t == NO_TYPE else ref[int(t)] for t in region_type],
                confidence=conf.astype(np.float64))
            progress("store", 0.9)
            metrics = {"n_regions": int(len(region_ids)), "n_known": fit.n_known,
                       "split_for": split_for,
                       "n_novel": len(novel), "n_new_types": len(new_types),
                       "final_loss": fit.train.final_loss if fit.train.epochs else None}
            mv = self.ws.apply_retrain(
                ModelVersionIn(kind="retrain", model=model_bytes(model), metrics=metrics),
                assignments, protos, (region_ids, fit.embeddings), new_types=new_types,
                actor=actor)
            self._model = None
            progress("done", 1.0)
            return mv

    @property
    def suggest_config(self):
        """The question strategies' settings (``config.suggest``, with the config's seed)."""
        from dataclasses import replace

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
        types = {t.id: (t.name, t.status) for t in listed
                 if t.status in ("proposed", "confirmed")}
        p_ids, p_mat, _ = self.ws.prototypes()
        prototypes = {int(t): normalise(v[None])[0] for t, v in zip(p_ids, p_mat)
                      if int(t) in types}
        model = self.model()
        return ReviewState(
            candidates=self._candidates(table),
            threshold=None if model is None or model.detector is None
            else model.detector.threshold,
            mixed=self.mixed_types({t.id: t.n_regions for t in listed}) & set(types),
            region_ids=table.region_ids[sel], image_ids=table.image_ids[sel],
            embeddings=emb[[pos[int(r)] for r in table.region_ids[sel]]] if len(sel) else
            np.zeros((0, self.ws.embedding_dim), np.float32),
            region_type=table.type_ids[sel], reviewed=table.reviewed[sel],
            is_normal=table.is_normal[sel], types=types, prototypes=prototypes)

    def _candidates(self, table: RegionTable) -> list:
        """Candidate regions (stored judged normal by the model, on an image it passed) no
        reviewer has looked at, with their image's score."""
        from protoatlas.suggest import Candidate

        rows = np.flatnonzero(table.is_normal & ~table.reviewed)
        if len(rows) == 0:
            return []
        scores: dict[tuple[int, int], tuple[float | None, bool | None]] = {}
        for b in {int(table.batch_ids[r]) for r in rows}:
            for image_id, _, score, flagged in self.ws.batch_images(b):
                scores[(b, image_id)] = (score, flagged)
        out = []
        for r in rows:
            score, flagged = scores.get((int(table.batch_ids[r]), int(table.image_ids[r])),
                                        (None, None))
            if score is not None and not flagged:
                out.append(Candidate(int(table.region_ids[r]), int(table.image_ids[r]),
                                     float(score)))
        return out

    def defect_answers(self) -> list[tuple[float, bool]]:
        """(image score, defective?) of every answered "is this image defective?"."""
        out = []
        for s in self.ws.suggestions(status="answered"):
            if s.kind == "defect":
                out.append((float(s.target["score"]), not str(s.answer).startswith("no")))
        return out

    def threshold(self, calibrated: float | None) -> float | None:
        """The detector threshold in force: the calibrated one, lowered just below the
        score of the lowest-scoring image a reviewer called defective (recall first: a "no"
        only settles its own image)."""
        yes = [score for score, defective in self.defect_answers() if defective]
        if calibrated is None or not yes:
            return calibrated
        return float(min(calibrated, min(yes) * (1.0 - THRESHOLD_EPSILON)))

    def _type_sizes(self) -> dict[int, int]:
        return {t.id: t.n_regions for t in self.ws.list_types()}

    def mixed_types(self, sizes: dict[int, int] | None = None) -> set[int]:
        """Types a reviewer said are not one defect type (answered "no" to confirm), while
        they have not changed much since (:func:`protoatlas.suggest.answer_stands`)."""
        return set(self._standing_no_answers(sizes))

    def _standing_no_answers(self, sizes: dict[int, int] | None = None) -> dict[int, int]:
        """Type id -> id of the latest standing "no" to "is it one type?" (see
        :meth:`mixed_types`)."""
        from protoatlas.suggest import answer_stands

        sizes = self._type_sizes() if sizes is None else sizes
        cfg = self.suggest_config
        return {int(s.target["type_id"]): int(s.id)
                for s in sorted(self.ws.suggestions(status="answered"), key=lambda x: x.id)
                if s.kind == "confirm" and s.answer == "no"
                and answer_stands(s.target.get("n_regions"),
                                  sizes.get(int(s.target["type_id"]), 0), cfg)}

    def declined(self, sizes: dict[int, int] | None = None) -> set[tuple[str, str]]:
        """(kind, target key) of questions already answered or skipped: not asked again
        (an answer about a whole type, confirm or split, stands while the type keeps about
        its size, so a type that changed much can be asked about again)."""
        from protoatlas.suggest import answer_stands

        sizes = self._type_sizes() if sizes is None else sizes
        cfg = self.suggest_config
        out = set()
        for s in self.ws.suggestions():
            if s.status == "skipped" or s.status == "answered":
                if s.kind == "confirm" and str(s.answer or "").startswith("no:"):
                    continue  # the reviewer picked out what did not belong: ask again
                if s.kind in ("confirm", "split"):
                    asked = s.target.get("n_regions") if s.kind == "confirm" else \
                        sum(len(g) for g in s.target["groups"])
                    if answer_stands(asked, sizes.get(int(s.target["type_id"]), 0), cfg):
                        out.add((s.kind, str(s.target["type_id"])))
                    continue
                out.add((s.kind, _target_key(s.kind, s.target)))
        return out

    def refresh_suggestions(self, *, strategy: str = "ranked",
                             rng: np.random.Generator | None = None) -> list:
        """Recompute the open question queue (answered/declined ones are not asked again)."""
        from dataclasses import replace

        from protoatlas.suggest import suggest

        state = self.review_state()
        declined = self.declined()
        cfg = self.suggest_config
        # drop the declined questions before keeping queue_size of them, so that declined
        # questions cannot fill the queue (and leave it empty)
        every = suggest(state, replace(cfg, queue_size=2**31), strategy=strategy, rng=rng)
        qs = [q for q in every
              if (q.kind, _target_key(q.kind, q.target)) not in declined][:cfg.queue_size]
        mv = self.ws.latest_model_version()
        items = [SuggestionIn(kind=q.kind, target=q.target, score=q.score, reason=q.reason)
                 for q in qs]
        self.ws.replace_open_suggestions(items, model_version=mv.id if mv else None)
        return self.ws.open_suggestions() if strategy == "ranked" else \
            sorted(self.ws.open_suggestions(), key=lambda s: s.id)

    def next_suggestion(self):
        """The best open question (refreshing the queue when it is empty)."""
        open_ = self.ws.open_suggestions(limit=1)
        if not open_ or not self._still_stands(open_[0]):
            open_ = self.refresh_suggestions()
        return open_[0] if open_ else None

    def _still_stands(self, suggestion) -> bool:
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

    def question_members(self, type_id: int, n: int | None = None) -> list:
        """The members an "is it one type?" question shows (one region per image, at most
        ``n``, default ``config.suggest.shown_members``): every image's region nearest the
        prototype when the type spans at most ``n`` images; else half of them nearest the
        prototype and the rest its least confident (borderline) members, where members that
        do not belong are likelier."""
        n = self.suggest_config.shown_members if n is None else int(n)
        near = self.ws.representatives(type_id, n=n + 1)
        if len(near) <= n:
            return near
        out = near[:n - n // 2]
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

    def type_by_name(self, name: str):
        for t in self.ws.list_types():
            if t.name.lower() == name.lower() and t.status in ("proposed", "confirmed"):
                return t
        return None

    def place_regions(self, region_ids: Sequence[int], label: str, actor: str
                       ) -> None:
        """Put regions in the type called ``label`` (created, confirmed, when absent);
        ``good``/``normal`` marks them as false alarms."""
        table = region_table(self.ws)
        pos = {int(r): i for i, r in enumerate(table.region_ids)}
        region_ids = [int(r) for r in region_ids if int(r) in pos]
        if not region_ids:
            raise ValueError("the regions of this question no longer exist")
        touched = {int(table.type_ids[pos[r]]) for r in region_ids if table.type_ids[pos[r]] >= 0}
        if label.lower() in ("good", "normal"):
            self.ws.mark_normal(region_ids, expected=self._versions(touched), actor=actor)
            return
        target = self.type_by_name(label)
        if target is None:
            self.ws.create_type(region_ids, expected=self._versions(touched), actor=actor,
                                name=label, status="confirmed")
        else:
            self.ws.move_regions(region_ids, target.id,
                                 expected=self._versions(touched | {target.id}), actor=actor)

    def answer_suggestion(self, suggestion_id: int, answer: str, *,
                           actor: str, name: str | None = None,
                           regions: Sequence[int] | None = None) -> dict:
        """Apply a reviewer's answer to an open question, then record it.

        ``answer``: ``yes`` / ``no`` / ``skip`` for yes-no questions (``name`` optionally names
        a confirmed or new type; an existing name merges into that type), and for ``label``
        questions a type id, a type name (created when new) or ``good`` (false alarm).
        ``regions``: with yes or no to "is T one type?", the members the reviewer picked as
        not belonging; they move out into a new proposed type (one split) first. A "no" with
        a pick is settled: the next retrain does not carve the type again, and the type may
        be asked about again as it now is.
        """
        s = next((x for x in self.ws.suggestions() if x.id == suggestion_id), None)
        if s is None:
            raise ValueError(f"no suggestion with id {suggestion_id}")
        if s.status == "stale":
            # a retrain renewed the queue while the reviewer looked at the question: the
            # answer goes to the same question in the new queue, if it is still asked
            key = _target_key(s.kind, s.target)
            same = next((x for x in self.ws.open_suggestions()
                         if x.kind == s.kind and _target_key(x.kind, x.target) == key), None)
            if same is None:
                raise ValueError(f"question {suggestion_id} is no longer asked: the model "
                                 "was retrained since and renewed the questions")
            s, suggestion_id = same, same.id
        if s.status != "open":
            raise ValueError(f"suggestion {suggestion_id} is already {s.status}")
        answer = str(answer).strip()
        if answer.lower() == "skip":
            self.ws.answer_suggestion(suggestion_id, None, actor=actor, skip=True)
            return {"applied": "skip"}
        kind, target = s.kind, s.target
        applied = "nothing"
        picked = sorted({int(r) for r in regions or ()})
        if picked and not (kind == "confirm" and answer.lower() in ("yes", "y", "no", "n")):
            raise ValueError("a selection of members goes with yes or no to \"is it one "
                             f"type?\" only, not with {answer!r} to a {kind} question")
        if kind == "label":
            if answer.lstrip("-").isdigit():
                tid = int(answer)
                t = self.ws.get_type(tid)
                table = region_table(self.ws)
                touched = {int(x) for x in table.type_ids[
                    table.region_ids == target["region_id"]] if x >= 0}
                self.ws.move_regions([target["region_id"]], tid,
                                     expected=self._versions(touched | {t.id}), actor=actor)
                applied = f"moved to {t.name}"
            else:
                self.place_regions([target["region_id"]], answer, actor)
                applied = f"labelled {answer}"
        elif answer.lower() not in ("yes", "no", "y", "n"):
            raise ValueError(f"answer yes, no or skip to a {kind} question, not {answer!r}")
        elif kind == "defect":
            applied = self._answer_defect(int(target["region_id"]),
                                          answer.lower() in ("yes", "y"), name, actor)
        elif kind == "confirm" and answer.lower() in ("no", "n") and picked:
            applied = self._move_out(int(target["type_id"]), picked, actor)
        elif kind == "confirm" and answer.lower() in ("no", "n"):
            applied = ("marked as more than one type: the next retrain gives it one more "
                       "prototype and re-sorts its members")
        elif answer.lower() in ("yes", "y"):
            if kind == "confirm":
                tid = int(target["type_id"])
                moved = self._move_out(tid, picked, actor) + "; " if picked else ""
                existing = self.type_by_name(name) if name else None
                if existing is not None and existing.id != tid:
                    keep, absorb = existing.id, tid
                    self.ws.merge_types(keep, absorb, expected=self._versions([keep, absorb]),
                                        actor=actor)
                    applied = f"{moved}merged into {existing.name}"
                else:
                    t = self.ws.get_type(tid)
                    t = self.ws.confirm_type(tid, expected_version=t.version, actor=actor)
                    if name and name != t.name:
                        self.ws.rename_type(tid, name, expected_version=t.version, actor=actor)
                    applied = f"{moved}confirmed"
            elif kind == "merge":
                a, b = (int(x) for x in target["type_ids"])
                ta, tb = self.ws.get_type(a), self.ws.get_type(b)
                keep, absorb = (a, b) if (ta.status == "confirmed" or ta.n_regions >= tb.n_regions
                                          ) and tb.status != "confirmed" else (b, a)
                self.ws.merge_types(keep, absorb, expected=self._versions([keep, absorb]),
                                    actor=actor)
                applied = "merged"
            elif kind == "split":
                tid = int(target["type_id"])
                members = {m.region_id for m in self.ws.type_members(tid, limit=10**7)}
                groups = [[r for r in g if r in members] for g in target["groups"]]
                groups = [g for g in groups if g]
                if len(groups) < 2:
                    raise ValueError("the type changed since the question: nothing left to split")
                smaller = min(groups, key=len)
                t = self.ws.get_type(tid)
                self.ws.split_type(tid, [smaller], expected_version=t.version, actor=actor)
                applied = "split"
            elif kind == "new_type":
                if name:
                    self.place_regions(target["region_ids"], name, actor)
                else:
                    table = region_table(self.ws)
                    pos = {int(r): i for i, r in enumerate(table.region_ids)}
                    touched = {int(table.type_ids[pos[r]]) for r in target["region_ids"]
                               if r in pos and table.type_ids[pos[r]] >= 0}
                    self.ws.create_type(target["region_ids"], expected=self._versions(touched),
                                        actor=actor)
                applied = "new type"
        if kind != "label":  # stored as yes / no ("y", "N" ... alike), a name after "yes:"
            answer = "no" if answer.lower() in ("no", "n") else "yes"
        stored = f"{answer}:{name}" if name and answer != "no" else answer
        if picked and answer == "no":  # a settled "no", not a standing one
            stored = f"no:{len(picked)} moved out"
        self.ws.answer_suggestion(suggestion_id, stored, actor=actor)
        return {"applied": applied}

    def _answer_defect(self, region_id: int, defective: bool, name: str | None,
                       actor: str) -> str:
        """"Is this image defective?": yes types its candidate region (the named type, else
        the nearest one, else a new proposed type) and so lowers the threshold
        (:meth:`threshold`); no marks it normal for good."""
        if not defective:
            self.ws.mark_normal([region_id], expected={}, actor=actor)
            return "marked normal"
        if name:
            self.place_regions([region_id], name, actor)
            return f"labelled {name}"
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

    def _move_out(self, type_id: int, region_ids: Sequence[int], actor: str) -> str:
        """Split the picked members of ``type_id`` into a new proposed type (the storage
        refuses a pick that is not a member, changing nothing)."""
        t = self.ws.get_type(type_id)
        if len(region_ids) >= t.n_regions:
            raise ValueError(f"all {t.n_regions} members of {t.name} were picked: pick the "
                             "ones that do not belong (or reject the type)")
        new = self.ws.split_type(type_id, [list(region_ids)], expected_version=t.version,
                                 actor=actor)
        return (f"moved {len(region_ids)} member(s) that do not belong out of {t.name} into "
                f"a new type (#{new[0]})")





class WorkspaceService(ReviewMixin):
    """Workflows on one workspace: upload, review actions, retraining, suggestions, export."""

    def __init__(self, home: str | os.PathLike | None = None, name: str = "default", *,
                 config: ProtoAtlasConfig | None = None, device: str | None = None,
                 read_only: bool = False) -> None:
        self.config = config or ProtoAtlasConfig()
        if device is not None:
            self.config = self.config.with_overrides(device=device)
        self.ws = Workspace.open(home, name, read_only=read_only)
        if not read_only:
            try:
                self.ws.set_embedding_dim(self.config.discovery.embedding_dim)
            except ValidationError:
                # A workspace that already stores vectors keeps their size: its saved model
                # (and so every retrain of it) embeds at that size.
                pass
        #: One engine job (discovery, assignment, retraining) at a time per process.
        self.engine_lock = threading.Lock()
        self._model: DiscoveryModel | None = None
        self._model_version: int | None = None
        self._calibrated: float | None = None

    def close(self) -> None:
        self.ws.close()

    def __enter__(self) -> "WorkspaceService":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def root(self) -> Path:
        return self.ws.db_path.parent

    # ------------------------------------------------------------------ model
    def model(self) -> DiscoveryModel | None:
        """The latest model with the workspace's live types as its prototype index."""
        mv = self.ws.latest_model_version()
        if mv is None or mv.blob_path is None:
            return None
        if self._model is None or self._model_version != mv.id:
            self._model = DiscoveryModel.load(mv.blob_path, device=self.config.device)
            self._model_version = mv.id
            det = self._model.detector
            self._calibrated = det.threshold if det is not None else None
        self._sync_types(self._model, mv.id)
        if self._model.detector is not None:
            self._model.detector.threshold = self.threshold(self._calibrated)
        return self._model

    def _sync_types(self, model: DiscoveryModel, mv: int) -> None:
        """Point the model's prototypes at the workspace's usable types (FAISS from DuckDB).

        Outlier thresholds follow each prototype from the model file (matched by vector);
        types proposed later (new-type proposals, reviewer types) take the median one.
        """
        live = {t.id for t in self.ws.list_types() if t.status in ("proposed", "confirmed")}
        ids, mat, _ = self.ws.prototypes(mv)
        keep = [i for i, t in enumerate(ids) if int(t) in live]
        ids, mat = np.asarray(ids)[keep], np.asarray(mat)[keep]
        thresholds = np.full(len(ids), np.nan, np.float32)
        if len(model.prototypes) and len(ids):
            sims = normalise(mat) @ model.prototypes.T
            best = sims.argmax(axis=1)
            exact = sims[np.arange(len(ids)), best] > 0.9999
            thresholds[exact] = model.thresholds[best[exact]]
        fill = float(np.nanmedian(thresholds)) if np.isfinite(thresholds).any() else -1.0
        thresholds = np.where(np.isfinite(thresholds), thresholds, fill)
        model.set_types(ids, mat if len(ids) else np.zeros((0, model.prototypes.shape[1] if
                                                            model.prototypes.ndim == 2 else
                                                            self.ws.embedding_dim)),
                        thresholds)

    # ------------------------------------------------------------------ ingest
    def tokens_path(self, batch_id: int) -> Path:
        return self.root / TOKENS_DIR / f"batch-{batch_id}.npz"

    def _save_tokens(self, batch_id: int, region_ids: np.ndarray, tokens: RegionTokens) -> None:
        path = self.tokens_path(batch_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            np.savez(fh, region_ids=region_ids, tokens=tokens.tokens.astype(TOKENS_DTYPE),
                     anomaly=tokens.anomaly.astype(TOKENS_DTYPE),
                     regions=tokens.regions.astype(TOKENS_DTYPE),
                     grid=np.asarray(tokens.grid, dtype=np.int64))
        os.replace(tmp, path)

    def load_tokens(self, batch_id: int) -> tuple[np.ndarray, RegionTokens] | None:
        path = self.tokens_path(batch_id)
        if not path.is_file():
            return None
        with np.load(path, allow_pickle=False) as z:
            grid = tuple(int(v) for v in z["grid"])
            return z["region_ids"], RegionTokens(
                z["tokens"].astype(np.float32), z["anomaly"].astype(np.float32),
                z["regions"].astype(np.float32), (grid[0], grid[1]))

    def _region_ids(self, batch_id: int, n: int) -> np.ndarray:
        ids = np.array(sorted(r.id for r in self.ws.regions_for_batch(batch_id,
                                                                      with_masks=False)),
                       dtype=np.int64)
        if len(ids) != n:
            raise RuntimeError(f"batch {batch_id}: stored {len(ids)} regions, expected {n}")
        return ids

    def store_discovery(self, run: DiscoverRun, images: LazyImages, *, batch_name: str,
                        actor: str, params: dict | None = None) -> int:
        """Persist a fresh discovery (new types, new model version) and cache its tokens."""
        res = run.result
        metrics = {"n_types": len(res.type_ids), "k_silhouette": {
            str(k): v for k, v in res.k_scores.items()}}
        cands = candidate_peaks(run, self.config.detector.candidate_band)
        ingest = batch_ingest(run, images, name=batch_name, params=params or {},
                              model=ModelVersionIn(kind="discover", model=model_bytes(run.model),
                                                   metrics=metrics), existing=False,
                              candidates=cands)
        batch_id = self.ws.ingest_batch(ingest, actor=actor)
        tokens = stored_tokens(run, cands)
        self._save_tokens(batch_id, self._region_ids(batch_id, len(tokens)), tokens)
        self._model = None
        return batch_id

    def upload_batch(self, images_src: str | os.PathLike,
                     normals_src: str | os.PathLike | None = None, *,
                     clusters: int | str = "auto", prior: str | None = None,
                     prompt: str | None = None, actor: str = "reviewer",
                     batch_name: str | None = None, progress: Progress = no_progress
                     ) -> UploadReport:
        """Analyse a batch and store it. The first batch needs known-good images and runs
        discovery; later ones are sorted into the workspace's types (new types proposed
        where they fit none). Known-good images given with a later batch refit the
        detector (the prototype head and types are kept)."""
        import time

        with self.engine_lock:
            t0 = time.perf_counter()
            config = self.config
            prior_cfg = prior_overrides(prior, prompt)
            if prior_cfg:
                config = config.with_overrides(prior=prior_cfg)
            progress("check", 0.0)
            images = open_images(images_src, config, progress=False, desc="check images")
            dupes = _dedupe(images)
            model = self.model()
            name = batch_name or Path(images_src).name
            if model is None:
                if normals_src is None:
                    raise ValueError("the first batch of a workspace needs known-good images "
                                     "(normals) to learn what normal looks like")
                normals = open_images(normals_src, config, progress=False,
                                      desc="check normals")
                progress("fit", 0.05)
                model = DiscoveryModel(config)
                model.fit(normals)
                analysis = model.analyse(images, on_progress=_scaled(progress, 0.1, 0.85))
                progress("types", 0.85)
                result = model.discover(analysis, clusters)
                run = DiscoverRun(images.names, result, model, images.report, normals.report)
                progress("store", 0.92)
                batch_id = self.store_discovery(run, images, batch_name=name, actor=actor,
                                                params={"clusters": clusters, "mode": "discover"})
                new = list(self._batch_types(batch_id))
                mode = "discover"
                n_cands = len(candidate_peaks(run, self.config.detector.candidate_band))
            else:
                if normals_src is not None:
                    normals = open_images(normals_src, config, progress=False,
                                          desc="check normals")
                    progress("fit", 0.05)
                    model.fit(normals)
                analysis = model.analyse(images, on_progress=_scaled(progress, 0.1, 0.85))
                result = model.assign(analysis)
                run = DiscoverRun(images.names, result, model, images.report, None)
                progress("store", 0.92)
                mv = self.ws.latest_model_version()
                assert mv is not None
                cands = candidate_peaks(run, self.config.detector.candidate_band)
                ingest = batch_ingest(run, images, name=name, params={"mode": "assign"},
                                      model=mv.id, existing=True, candidates=cands)
                batch_id = self.ws.ingest_batch(ingest, actor=actor)
                tokens = stored_tokens(run, cands)
                self._save_tokens(batch_id, self._region_ids(batch_id, len(tokens)), tokens)
                new = [t for t in self._batch_types(batch_id)
                       if t not in set(int(x) for x in result.type_ids)
                       or t in result.new_type_ids]
                self._model = None
                mode = "assign"
                n_cands = len(cands)
            progress("done", 1.0)
            assert images.report is not None
            return UploadReport(batch_id, len(images), int(result.analysis.is_anomalous.sum()),
                                len(result.analysis.regions), new,
                                images.report.skipped + dupes, mode,
                                {"total": time.perf_counter() - t0}, n_cands)

    def _batch_types(self, batch_id: int) -> list[int]:
        types = {r.type_id for r in self.ws.regions_for_batch(batch_id, with_masks=False)
                 if r.type_id is not None}
        created = {t.id for t in self.ws.list_types()}
        return sorted(types & created)

    # ------------------------------------------------------------------ review actions
    def _versions(self, type_ids: Sequence[int]) -> dict[int, int]:
        return {int(t): self.ws.get_type(int(t)).version for t in type_ids}

    def split_type(self, type_id: int, parts: int = 2, *, expected_version: int, actor: str,
                   region_ids: Sequence[int] | None = None) -> list[int]:
        """Split a type in ``parts`` by clustering its members' embeddings, or move the given
        ``region_ids`` (a selection) into one new type."""
        if region_ids is not None:
            return self.ws.split_type(type_id, [list(region_ids)],
                                      expected_version=expected_version, actor=actor)
        members = self.ws.type_members(type_id, limit=1_000_000)
        if len(members) < parts:
            raise ValueError(f"type {type_id} has {len(members)} members: cannot split it in "
                             f"{parts}")
        ids, emb = self.ws.embeddings()
        row = {int(r): i for i, r in enumerate(ids)}
        have = [m.region_id for m in members if m.region_id in row]
        if len(have) < parts:
            raise ValueError(f"type {type_id}: too few members with embeddings to split")
        x = emb[[row[r] for r in have]]
        d = self.config.discovery
        labels, _ = cluster(x, parts, method=d.cluster_method, max_points=d.ward_max_points,
                            restarts=d.kmeans_restarts, seed=self.config.seed)
        sizes = np.bincount(labels, minlength=parts)
        keep = int(sizes.argmax())  # the largest part stays in the type
        groups = [[have[i] for i in np.flatnonzero(labels == k)] for k in range(parts)
                  if k != keep and sizes[k] > 0]
        return self.ws.split_type(type_id, groups, expected_version=expected_version,
                                  actor=actor)

    # ------------------------------------------------------------------ health, export
    def doctor(self) -> list:
        """Storage checks plus the service's own: every batch with regions has its tokens."""
        from storage.models import Problem

        problems = list(doctor(self.ws))
        for b in self.ws.batches():
            if b.n_regions and not self.tokens_path(b.id).is_file():
                problems.append(Problem("warning", "crop tokens missing: the batch is left "
                                        "out of retraining", f"batch {b.id} ({b.name})"))
        return problems


def _scaled(progress: Progress, lo: float, hi: float) -> Progress:
    """Map the engine's analyse progress onto ``lo..hi``. Each of its stages counts 0..1 on
    its own ("detect", then "regions"), so each gets its half: fractions never go back."""
    mid = (lo + hi) / 2
    spans = {"detect": (lo, mid), "regions": (mid, hi)}

    def inner(stage: str, fraction: float) -> None:
        a, b = spans.get(stage, (lo, hi))
        progress(stage, a + (b - a) * fraction)
    return inner

