"""The core of a workspace service: the open workspace, the config, the latest model with the
workspace's live types as its prototype index, the cached crop tokens, and the detector
threshold in force.

Conventions:

* The engine's model file is stored as the blob of a storage *model version*; the types'
  prototypes live in DuckDB (``prototypes`` table) and the FAISS index is rebuilt from them
  whenever a model is loaded (:meth:`ServiceCore.model`).
* Crop tokens (what retraining learns from) are cached per batch in
  ``<workspace>/tokens/batch-<id>.npz``, written after the batch's transaction commits.
  A batch whose tokens file is missing (process killed in between) is reported by
  ``WorkspaceService.doctor`` and left out of retraining.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import numpy as np

from engine.clustering import normalise
from engine.config import DeviceName, ProtoAtlasConfig
from engine.discovery import DiscoveryModel
from engine.tokens import RegionTokens
from protoatlas.service.answer_format import Answer
from storage import ValidationError, Workspace

TOKENS_DIR = "tokens"
#: Tokens are cached in half precision (they are frozen-backbone features: plenty).
TOKENS_DTYPE = np.float16
#: A reviewer's "yes, defective" puts the threshold this fraction below the image's score.
THRESHOLD_EPSILON = 1e-6
#: A stored prototype is the model file's own (and keeps its outlier threshold) when their
#: cosine similarity exceeds this (the same vector, up to float32 rounding).
SAME_PROTOTYPE_COSINE = 0.9999
#: Model-version kinds that change the detector (and so the unit of image scores).
DETECTOR_KINDS = ("refine", "rollback")


_S = TypeVar("_S", bound="ServiceCore")


class ServiceCore:
    """The workspace, the config and the current model of one service (the base of every
    part of :class:`~protoatlas.service.workspace.WorkspaceService`)."""

    def __init__(
        self,
        home: str | os.PathLike | None = None,
        name: str = "default",
        *,
        config: ProtoAtlasConfig | None = None,
        device: DeviceName | None = None,
        read_only: bool = False,
    ) -> None:
        config = config or ProtoAtlasConfig()
        if device is not None:
            config = replace(config, device=device)
        self._attach(Workspace.open(home, name, read_only=read_only), config)

    @classmethod
    def over(cls: type[_S], ws: Workspace, config: ProtoAtlasConfig | None = None) -> _S:
        """A service over a workspace that is already open (tests and benchmarks that build
        one without the engine); :meth:`close` closes it."""
        service = cls.__new__(cls)
        service._attach(ws, config or ProtoAtlasConfig())
        return service

    def _attach(self, ws: Workspace, config: ProtoAtlasConfig) -> None:
        self.config = config
        self.ws = ws
        if not ws.read_only:
            try:
                self.ws.set_embedding_dim(self.config.discovery.vector_dim)
            except ValidationError:
                # A workspace that already stores vectors keeps their size: its saved model
                # (and so every retrain of it) embeds at that size. One made before the
                # image context (head embedding alone) goes on without it.
                d = self.config.discovery
                if self.ws.embedding_dim == d.embedding_dim != d.vector_dim:
                    self.config = config.with_overrides(discovery={"context_weight": 0.0})
        #: One engine job (discovery, assignment, retraining) at a time per process.
        self.engine_lock = threading.Lock()
        #: The question queue: an answer's check, what it applies and its record happen
        #: under it (two reviewers answering one question: one applies, the other is told),
        #: and a refresh of the queue waits for it.
        self.queue_lock = threading.RLock()
        self._model: DiscoveryModel | None = None
        self._model_version: int | None = None
        self._calibrated: float | None = None

    def close(self) -> None:
        self.ws.close()

    def __enter__(self: _S) -> _S:
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
            exact = sims[np.arange(len(ids)), best] > SAME_PROTOTYPE_COSINE
            thresholds[exact] = model.thresholds[best[exact]]
        fill = float(np.nanmedian(thresholds)) if np.isfinite(thresholds).any() else -1.0
        thresholds = np.where(np.isfinite(thresholds), thresholds, fill)
        dim = model.prototypes.shape[1] if model.prototypes.ndim == 2 else self.ws.embedding_dim
        model.set_types([int(t) for t in ids], mat if len(ids) else np.zeros((0, dim)), thresholds)

    # ------------------------------------------------------------------ tokens
    def tokens_path(self, batch_id: int) -> Path:
        return self.root / TOKENS_DIR / f"batch-{batch_id}.npz"

    def _save_tokens(self, batch_id: int, region_ids: np.ndarray, tokens: RegionTokens) -> None:
        path = self.tokens_path(batch_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            np.savez(
                fh,
                region_ids=region_ids,
                tokens=tokens.tokens.astype(TOKENS_DTYPE),
                anomaly=tokens.anomaly.astype(TOKENS_DTYPE),
                regions=tokens.regions.astype(TOKENS_DTYPE),
                grid=np.asarray(tokens.grid, dtype=np.int64),
                image_pooled=np.asarray(tokens.image_pooled, dtype=np.float32),
                image_residual=np.asarray(tokens.image_residual, dtype=np.float32),
            )
        os.replace(tmp, path)

    def load_tokens(self, batch_id: int) -> tuple[np.ndarray, RegionTokens] | None:
        path = self.tokens_path(batch_id)
        if not path.is_file():
            return None
        with np.load(path, allow_pickle=False) as z:
            grid = tuple(int(v) for v in z["grid"])
            return z["region_ids"], RegionTokens(
                z["tokens"].astype(np.float32),
                z["anomaly"].astype(np.float32),
                z["regions"].astype(np.float32),
                (grid[0], grid[1]),
                # batches stored before the image context have none
                z["image_pooled"] if "image_pooled" in z.files else None,
                z["image_residual"] if "image_residual" in z.files else None,
            )

    def _region_ids(self, batch_id: int, n: int) -> np.ndarray:
        ids = np.array(
            sorted(r.id for r in self.ws.regions_for_batch(batch_id, with_masks=False)),
            dtype=np.int64,
        )
        if len(ids) != n:
            raise RuntimeError(f"batch {batch_id}: stored {len(ids)} regions, expected {n}")
        return ids

    def _versions(self, type_ids: Iterable[int]) -> dict[int, int]:
        """The current version of each type (what an action expects to find)."""
        return {int(t): self.ws.get_type(int(t)).version for t in type_ids}

    def detector_since(self) -> int | None:
        """The model version from which the detector in force scores images (the latest
        refinement or rollback: image scores before it are in another unit), or None."""
        got = [v.id for v in self.ws.model_versions() if v.kind in DETECTOR_KINDS]
        return max(got) if got else None

    def defect_answers(self) -> list[tuple[float, bool]]:
        """(image score, defective?) of every answered "is this image defective?" asked
        since the detector in force was installed (:meth:`detector_since`)."""
        since = self.detector_since()
        out = []
        for s in self.ws.suggestions(status="answered"):
            if since is not None and (s.model_version is None or s.model_version < since):
                continue
            if s.kind == "defect":
                out.append((float(s.target["score"]), Answer.load(s.answer).choice == "yes"))
        return out

    def threshold(self, calibrated: float | None) -> float | None:
        """The detector threshold in force: the calibrated one, lowered just below the
        score of the lowest-scoring image a reviewer called defective (recall first: a "no"
        only settles its own image)."""
        yes = [score for score, defective in self.defect_answers() if defective]
        if calibrated is None or not yes:
            return calibrated
        return float(min(calibrated, min(yes) * (1.0 - THRESHOLD_EPSILON)))
