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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.clustering import cluster, normalise
from engine.config import ProtoAtlasConfig
from engine.data import LazyImages, SkippedFile
from engine.discovery import NO_TYPE, DiscoveryModel, DiscoveryResult
from engine.tokens import RegionTokens
from protoatlas.discover import DiscoverRun, open_images
from storage import (AssignmentsIn, BatchIngest, ImageIn, ModelVersionIn, NewType, PrototypeIn,
                     RegionsIn, Workspace, doctor, encode_rle)

Progress = Callable[[str, float], None]
TOKENS_DIR = "tokens"
#: Tokens are cached in half precision (they are frozen-backbone features: plenty).
TOKENS_DTYPE = np.float16


def _quiet(stage: str, fraction: float) -> None:
    return None


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


def batch_ingest(run: DiscoverRun, images: LazyImages, *, name: str, params: dict,
                 model: ModelVersionIn | int | None, existing: bool) -> BatchIngest:
    """The storage form of a run. ``existing``: the run's type ids are storage ids (assign),
    except ``run.result.new_type_ids``; otherwise all types are new (discover)."""
    res = run.result
    an = res.analysis
    new_ids = set(res.new_type_ids) if existing else {int(t) for t in res.type_ids}

    def ref(tid: int) -> object:
        return f"k{tid}" if tid in new_ids else int(tid)

    n = len(an.regions)
    regions = RegionsIn(
        image=np.array([r.image_index for r in an.regions], dtype=np.int64),
        boxes=np.array([r.clip for r in an.regions], dtype=np.int64).reshape(n, 4),
        anomaly_score=np.array([r.score for r in an.regions], dtype=np.float64),
        masks=[encode_rle(r.full_mask(an.shapes[r.image_index])) for r in an.regions],
        area=np.array([r.area for r in an.regions], dtype=np.int64),
        embeddings=res.embeddings if n else None)
    assignments = AssignmentsIn(
        regions=np.arange(n, dtype=np.int64),
        types=[None if t == NO_TYPE else ref(int(t)) for t in res.region_type],
        confidence=res.region_confidence.astype(np.float64))
    counts = {int(t): int((res.region_type == t).sum()) for t in res.type_ids}
    prototypes = [PrototypeIn(type=ref(int(t)), vector=v, n_members=counts[int(t)])
                  for t, v in zip(res.type_ids, res.prototypes) if int(t) in new_ids]
    return BatchIngest(
        name=name, images=[_image_in(images, i, res) for i in range(len(images))],
        regions=regions, params=params, model=model,
        new_types=[NewType(key=f"k{t}") for t in sorted(new_ids)],
        assignments=assignments if n else None, prototypes=prototypes if n else [])


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


class WorkspaceService:
    """Workflows on one workspace: upload, review actions, retraining, suggestions, export."""

    def __init__(self, home: str | os.PathLike | None = None, name: str = "default", *,
                 config: ProtoAtlasConfig | None = None, device: str | None = None,
                 read_only: bool = False) -> None:
        self.config = config or ProtoAtlasConfig()
        if device is not None:
            self.config = self.config.with_overrides(device=device)
        self.ws = Workspace.open(home, name, embedding_dim=self.config.discovery.embedding_dim,
                                 read_only=read_only)
        #: One engine job (discovery, assignment, retraining) at a time per process.
        self.engine_lock = threading.Lock()
        self._model: DiscoveryModel | None = None
        self._model_version: int | None = None

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
        self._sync_types(self._model, mv.id)
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
        ingest = batch_ingest(run, images, name=batch_name, params=params or {},
                              model=ModelVersionIn(kind="discover", model=model_bytes(run.model),
                                                   metrics=metrics), existing=False)
        batch_id = self.ws.ingest_batch(ingest, actor=actor)
        self._save_tokens(batch_id, self._region_ids(batch_id, len(res.analysis.regions)),
                          res.analysis.tokens)
        self._model = None
        return batch_id

    def upload_batch(self, images_src: str | os.PathLike,
                     normals_src: str | os.PathLike | None = None, *,
                     clusters: int | str = "auto", prior: str | None = None,
                     prompt: str | None = None, actor: str = "reviewer",
                     batch_name: str | None = None, progress: Progress = _quiet
                     ) -> UploadReport:
        """Analyse a batch and store it. The first batch needs known-good images and runs
        discovery; later ones are sorted into the workspace's types (new types proposed
        where they fit none). Known-good images given with a later batch refit the
        detector (the prototype head and types are kept)."""
        import time

        with self.engine_lock:
            t0 = time.perf_counter()
            config = self.config
            prior_cfg = {k: v for k, v in {"backend": prior, "prompt": prompt}.items() if v}
            if prompt and not prior:
                prior_cfg["backend"] = "grounded-sam"
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
                ingest = batch_ingest(run, images, name=name, params={"mode": "assign"},
                                      model=mv.id, existing=True)
                batch_id = self.ws.ingest_batch(ingest, actor=actor)
                self._save_tokens(batch_id, self._region_ids(batch_id, len(analysis.regions)),
                                  analysis.tokens)
                new = [t for t in self._batch_types(batch_id)
                       if t not in set(int(x) for x in result.type_ids)
                       or t in result.new_type_ids]
                self._model = None
                mode = "assign"
            progress("done", 1.0)
            assert images.report is not None
            return UploadReport(batch_id, len(images), int(result.analysis.is_anomalous.sum()),
                                len(result.analysis.regions), new,
                                images.report.skipped + dupes, mode,
                                {"total": time.perf_counter() - t0})

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
    def inner(stage: str, fraction: float) -> None:
        progress(stage, lo + (hi - lo) * fraction)
    return inner

