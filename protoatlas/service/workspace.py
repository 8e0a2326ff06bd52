"""The service over one workspace: ingest a batch -> run the engine -> persist -> suggest.

Both the CLI (``discover --home``, ``doctor``, ``export``, ``simulate-review``) and the web
app call :class:`WorkspaceService`; neither touches the engine or DuckDB directly for a
workflow. One service per workspace per process: it owns the :class:`storage.Workspace`
(one writer connection behind a lock) and serialises engine jobs behind ``engine_lock`` (the
concurrency limit on engine work); reviewer actions never wait for an engine job.

The class is assembled from the modules that hold each part: :mod:`.core` (workspace, model,
tokens, threshold), :mod:`.reads` (what the screens read, exports), :mod:`.actions`
(reviewer actions), :mod:`.questions` (the question queue), :mod:`.answers` (applying
answers), :mod:`.retrain` (learning from the decisions); this module adds the batch
workflows (upload, store a discovery) and the health check.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from engine.config import ProtoAtlasConfig
from engine.data import LazyImages, SkippedFile
from engine.discovery import BatchAnalysis, DiscoveryModel, DiscoveryResult, no_progress
from engine.discovery import ProgressFn as Progress
from engine.prior import prior_overrides
from protoatlas.service.actions import ActionsMixin
from protoatlas.service.answers import AnswersMixin
from protoatlas.service.discovery import DiscoverRun, checked, open_images
from protoatlas.service.persist import (
    batch_ingest,
    candidate_peaks,
    dedupe,
    model_bytes,
    stored_tokens,
)
from protoatlas.service.reads import ReadsMixin
from protoatlas.service.refine import RefineMixin
from protoatlas.service.retrain import RetrainMixin
from storage import BatchDeleted, ModelVersionIn, Problem, doctor


@dataclass
class UploadReport:
    """What :meth:`WorkspaceService.upload_batch` stored."""

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


@dataclass
class _Stored:
    """What one of the two batch workflows stored."""

    result: DiscoveryResult
    batch_id: int
    new_type_ids: list[int]
    mode: str
    n_candidates: int


class WorkspaceService(RetrainMixin, RefineMixin, AnswersMixin, ActionsMixin, ReadsMixin):
    """Workflows on one workspace: upload, review actions, retraining, suggestions, export.

    ``WorkspaceService(home, name, config=..., device=..., read_only=...)`` opens (creates)
    the workspace ``home/name``; use it as a context manager or call :meth:`close`.
    """

    def store_discovery(
        self,
        run: DiscoverRun,
        images: LazyImages,
        *,
        batch_name: str,
        actor: str,
        params: dict | None = None,
    ) -> int:
        """Persist a fresh discovery (new types, new model version) and cache its tokens."""
        res = run.result
        metrics = {
            "n_types": len(res.type_ids),
            "k_silhouette": {str(k): v for k, v in res.k_scores.items()},
        }
        cands = candidate_peaks(run, self.config.detector.candidate_band)
        ingest = batch_ingest(
            run,
            images,
            name=batch_name,
            params=params or {},
            model=ModelVersionIn(kind="discover", model=model_bytes(run.model), metrics=metrics),
            existing=False,
            candidates=cands,
        )
        batch_id = self.ws.ingest_batch(ingest, actor=actor)
        tokens = stored_tokens(run, cands)
        self._save_tokens(batch_id, self._region_ids(batch_id, len(tokens)), tokens)
        self._model = None
        return batch_id

    def upload_batch(
        self,
        images_src: str | os.PathLike,
        normals_src: str | os.PathLike | None = None,
        *,
        clusters: int | str = "auto",
        prior: str | None = None,
        prompt: str | None = None,
        actor: str = "reviewer",
        batch_name: str | None = None,
        progress: Progress = no_progress,
    ) -> UploadReport:
        """Analyse a batch and store it. The first batch needs known-good images and runs
        discovery; later ones are sorted into the workspace's types (new types proposed
        where they fit none). Known-good images given with a later batch refit the
        detector (the prototype head and types are kept)."""
        with self.engine_lock:
            t0 = time.perf_counter()
            config = self.config
            prior_cfg = prior_overrides(prior, prompt)
            if prior_cfg:
                config = config.with_overrides(prior=prior_cfg)
            progress("check", 0.0)
            images = open_images(images_src, config, progress=False, desc="check images")
            dupes = dedupe(images, self.ws.stored_images)
            model = self.model()
            name = batch_name or Path(images_src).name
            if model is None:
                if normals_src is None:
                    raise ValueError(
                        "the first batch of a workspace needs known-good images "
                        "(normals) to learn what normal looks like"
                    )
                stored = self._first_batch(
                    images, normals_src, config, clusters, name, actor, progress
                )
            else:
                stored = self._next_batch(
                    images, normals_src, model, config, clusters, name, actor, progress
                )
            progress("done", 1.0)
            analysis = stored.result.analysis
            return UploadReport(
                stored.batch_id,
                len(images),
                int(analysis.is_anomalous.sum()),
                len(analysis.regions),
                stored.new_type_ids,
                checked(images).skipped + dupes,
                stored.mode,
                {"total": time.perf_counter() - t0},
                stored.n_candidates,
            )

    def delete_batch(self, batch_id: int, *, actor: str = "reviewer") -> BatchDeleted:
        """Delete a batch (an upload that should not have been made): its images that no
        other batch lists, its regions and the decisions on them; the types, the model and
        the history stay. Waits for a running engine job (a retrain must not write vectors
        of regions being deleted). A snapshot is written first; not undoable."""
        with self.engine_lock:
            deleted = self.ws.delete_batch(int(batch_id), actor=actor)
            self.tokens_path(deleted.batch_id).unlink(missing_ok=True)
            self.refresh_suggestions()
            return deleted

    def _first_batch(
        self,
        images: LazyImages,
        normals_src: str | os.PathLike,
        config: ProtoAtlasConfig,
        clusters: int | str,
        name: str,
        actor: str,
        progress: Progress,
    ) -> _Stored:
        """Fit on the normals, discover the batch's types and store it (a new model)."""
        normals = open_images(normals_src, config, progress=False, desc="check normals")
        progress("fit", 0.05)
        model = DiscoveryModel(config)
        model.fit(normals)
        analysis = model.analyse(images, on_progress=_scaled(progress, 0.1, 0.85))
        return self._discover_and_store(
            images, normals, model, analysis, clusters, name, actor, progress
        )

    def _discover_and_store(
        self,
        images: LazyImages,
        normals: LazyImages | None,
        model: DiscoveryModel,
        analysis: BatchAnalysis,
        clusters: int | str,
        name: str,
        actor: str,
        progress: Progress,
    ) -> _Stored:
        """Discover the analysed batch's types and store it (a new discovery model)."""
        progress("types", 0.85)
        result = model.discover(analysis, clusters)
        normals_report = checked(normals) if normals is not None else None
        run = DiscoverRun(images.names, result, model, checked(images), normals_report)
        progress("store", 0.92)
        batch_id = self.store_discovery(
            run,
            images,
            batch_name=name,
            actor=actor,
            params={"clusters": clusters, "mode": "discover"},
        )
        n_cands = len(candidate_peaks(run, self.config.detector.candidate_band))
        return _Stored(result, batch_id, list(self._batch_types(batch_id)), "discover", n_cands)

    def _next_batch(
        self,
        images: LazyImages,
        normals_src: str | os.PathLike | None,
        model: DiscoveryModel,
        config: ProtoAtlasConfig,
        clusters: int | str,
        name: str,
        actor: str,
        progress: Progress,
    ) -> _Stored:
        """Sort a later batch into the workspace's types (refitting the detector first when
        normals come with it) and store it with the latest model version. When no type is
        left to sort into (every one rejected or merged away), the batch's types are
        discovered instead, with the workspace's detector."""
        normals = None
        if normals_src is not None:
            normals = open_images(normals_src, config, progress=False, desc="check normals")
            progress("fit", 0.05)
            model.fit(normals)
        analysis = model.analyse(images, on_progress=_scaled(progress, 0.1, 0.85))
        if model.head is None or len(model.type_ids) == 0:
            return self._discover_and_store(
                images, normals, model, analysis, clusters, name, actor, progress
            )
        result = model.assign(analysis)
        run = DiscoverRun(images.names, result, model, checked(images), None)
        progress("store", 0.92)
        mv = self.ws.latest_model_version()
        assert mv is not None
        cands = candidate_peaks(run, self.config.detector.candidate_band)
        ingest = batch_ingest(
            run,
            images,
            name=name,
            params={"mode": "assign"},
            model=mv.id,
            existing=True,
            candidates=cands,
        )
        batch_id = self.ws.ingest_batch(ingest, actor=actor)
        tokens = stored_tokens(run, cands)
        self._save_tokens(batch_id, self._region_ids(batch_id, len(tokens)), tokens)
        known = {int(x) for x in result.type_ids}
        new = [t for t in self._batch_types(batch_id) if t not in known or t in result.new_type_ids]
        self._model = None
        return _Stored(result, batch_id, new, "assign", len(cands))

    def _batch_types(self, batch_id: int) -> list[int]:
        types = {
            r.type_id
            for r in self.ws.regions_for_batch(batch_id, with_masks=False)
            if r.type_id is not None
        }
        created = {t.id for t in self.ws.list_types()}
        return sorted(types & created)

    # ------------------------------------------------------------------ health
    def doctor(self) -> list[Problem]:
        """Storage checks plus the service's own: every batch with regions has its tokens."""
        problems = list(doctor(self.ws))
        for b in self.ws.batches():
            if b.n_regions and not self.tokens_path(b.id).is_file():
                problems.append(
                    Problem(
                        "warning",
                        "crop tokens missing: the batch is left out of retraining",
                        f"batch {b.id} ({b.name})",
                    )
                )
        return problems


def persist_run(
    home: str | os.PathLike, run: DiscoverRun, *, source: str, name: str = "default"
) -> int:
    """Store a CLI ``discover`` run in the workspace ``home/name`` (as its first model or a
    new discovery model version); returns the batch id."""
    service = WorkspaceService(home, name, config=run.model.config)
    try:
        images = open_images(source, run.model.config, progress=False, desc="check images")
        if images.names != run.names:
            raise ValueError(f"{source} changed while it was analysed; run discover again")
        return service.store_discovery(run, images, batch_name=Path(source).name, actor="cli")
    finally:
        service.close()


def _scaled(progress: Progress, lo: float, hi: float) -> Progress:
    """Map the engine's analyse progress onto ``lo..hi``. Each of its stages counts 0..1 on
    its own ("detect", then "regions"), so each gets its half: fractions never go back."""
    mid = (lo + hi) / 2
    spans = {"detect": (lo, mid), "regions": (mid, hi)}

    def inner(stage: str, fraction: float) -> None:
        a, b = spans.get(stage, (lo, hi))
        progress(stage, a + (b - a) * fraction)

    return inner
