"""Refining a workspace's detector (PRN): train, judge on held-out confirmed images, switch
only when asked, roll back.

* :meth:`RefineMixin.refine_detector` trains the residual segmenter
  (:func:`engine.refine_train.fit_refiner`) on generated anomalies on the workspace's
  normal images plus the confirmed defects (images with regions of confirmed types, their
  region masks as ground truth). A share of both is held out and scored before and after:
  image AUROC, pixel AUROC and AUPRO. The refined model is written as a *candidate* file;
  nothing in force changes.
* :meth:`RefineMixin.accept_refinement` puts a candidate's detector into the latest model: a
  new model version of kind ``refine`` (same types, prototypes and embeddings), audited.
* :meth:`RefineMixin.rollback_detector` puts the detector of an earlier version back (a new
  version of kind ``rollback``); versions are never deleted.

Stored maps and regions of earlier batches are not rewritten (reviewers' decisions refer to
them); batches uploaded after a switch are analysed with the detector in force
(docs/decisions.md, "Refinement in a workspace").
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from engine import metrics
from engine.calibration import even_sample
from engine.detector import PatchCoreDetector
from engine.discovery import DiscoveryModel, ProgressFn, no_progress
from engine.pseudo_anomalies import RealDefect
from engine.refine_train import MIN_NORMALS, fit_refiner
from protoatlas.service.answer_format import Answer
from protoatlas.service.core import DETECTOR_KINDS, ServiceCore
from protoatlas.service.persist import model_bytes
from storage import (
    ConflictError,
    ModelVersion,
    ModelVersionIn,
    NotFoundError,
    PrototypeIn,
    ValidationError,
    decode_rle,
)

REFINE_DIR = "refine"


@dataclass
class RefineCandidate:
    """A refined detector waiting for a reviewer's decision."""

    id: str
    #: The model version it refines (accepting it needs that version still in force).
    base_version: int
    #: image_auroc, pixel_auroc, aupro on the held-out images (NaN: not measurable).
    before: dict[str, float]
    after: dict[str, float]
    n_normals: int
    n_train_defects: int
    n_judge_defects: int
    n_judge_normals: int
    seconds: float
    train: dict[str, object] = field(default_factory=dict)

    @property
    def better(self) -> bool:
        """Every measurable held-out figure is at least as good, and one is better."""
        pairs = [
            (self.before[k], self.after[k])
            for k in ("image_auroc", "pixel_auroc", "aupro")
            if math.isfinite(self.before[k]) and math.isfinite(self.after[k])
        ]
        return bool(pairs) and all(a >= b for b, a in pairs) and any(a > b for b, a in pairs)

    def summary(self) -> str:
        def fmt(v: float) -> str:
            return f"{v:.3f}" if math.isfinite(v) else "n/a"

        rows = ", ".join(
            f"{k.replace('_', ' ')} {fmt(self.before[k])} -> {fmt(self.after[k])}"
            for k in ("image_auroc", "pixel_auroc", "aupro")
        )
        return (
            f"refined on {self.n_normals} normal and {self.n_train_defects} confirmed defect "
            f"images; judged on {self.n_judge_defects} defect and {self.n_judge_normals} "
            f"normal images held out: {rows}; fuse weight {self.train.get('fuse_weight', 'n/a')}"
        )


class _Images(Sequence[np.ndarray]):
    """Stored images by id, decoded when read."""

    def __init__(self, ws, ids: Sequence[int], max_pixels: int) -> None:
        self.ws, self.ids, self.max_pixels = ws, [int(i) for i in ids], max_pixels

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i):  # int only
        from engine.imageio import load_image

        path = self.ws.image_path(self.ids[i])
        return load_image(path, name=str(path.name), max_pixels=self.max_pixels)


def _held_out(ids: Sequence[int], share: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, judge) split of ``ids``: ``share`` of them (at least one when two or more)."""
    ids = sorted(int(i) for i in ids)
    if len(ids) < 2:
        return ids, []
    n_judge = max(1, int(round(share * len(ids))))
    order = np.random.default_rng(seed).permutation(len(ids))
    judge = sorted(ids[i] for i in order[:n_judge])
    return [i for i in ids if i not in set(judge)], judge


def held_out_metrics(
    det: PatchCoreDetector, images: Sequence[np.ndarray], masks: Sequence[np.ndarray]
) -> dict[str, float]:
    """Image AUROC, pixel AUROC and AUPRO of ``det`` on ``images`` with their ``masks``
    (an all-False mask: a normal image); NaN where a class is missing."""
    nan = float("nan")
    if not len(images):
        return {"image_auroc": nan, "pixel_auroc": nan, "aupro": nan}
    dets = det.score(images)
    labels = np.array([bool(m.any()) for m in masks])
    scores = np.array([d.score for d in dets])
    both = labels.any() and (~labels).any()
    maps = [d.anomaly_map for d in dets]
    return {
        "image_auroc": metrics.image_auroc(labels.astype(int), scores) if both else nan,
        "pixel_auroc": metrics.pixel_auroc(list(masks), maps) if labels.any() else nan,
        "aupro": metrics.aupro(list(masks), maps) if labels.any() else nan,
    }


class RefineMixin(ServiceCore):
    """Detector refinement (a part of :class:`~protoatlas.service.workspace.WorkspaceService`)."""

    def refine_dir(self) -> Path:
        return self.root / REFINE_DIR

    # ------------------------------------------------------------------ what it learns from
    def _confirmed_defects(self) -> dict[int, np.ndarray]:
        """image id -> union of the masks of its regions of confirmed types (not normal)."""
        confirmed = {t.id for t in self.ws.list_types() if t.status == "confirmed"}
        out: dict[int, np.ndarray] = {}
        for b in self.ws.batches():
            for r in self.ws.regions_for_batch(b.id, with_masks=True):
                if r.type_id in confirmed and not r.is_normal and r.mask is not None:
                    mask = decode_rle(r.mask).astype(bool)
                    out[r.image_id] = out[r.image_id] | mask if r.image_id in out else mask
        return out

    def _normal_images(self, defects: dict[int, np.ndarray]) -> list[int]:
        """Stored images judged normal: passed by the detector (or answered "not
        defective"), none of their regions confirmed and no reviewer calling them defective."""
        yes: set[int] = set()
        no: set[int] = set()
        for s in self.ws.suggestions(status="answered"):
            if s.kind == "defect" and "image_id" in s.target:
                (yes if Answer.load(s.answer).choice == "yes" else no).add(
                    int(s.target["image_id"])
                )
        out = set()
        for b in self.ws.batches():
            for image_id, _, _, flagged in self.ws.batch_images(b.id):
                if (not flagged or image_id in no) and image_id not in yes:
                    out.add(int(image_id))
        return sorted(out - set(defects))

    # ------------------------------------------------------------------ workflows
    def refine_detector(
        self,
        *,
        progress: ProgressFn = no_progress,
        max_real: int | None = None,
        fuse_weight: float | None = None,
    ) -> RefineCandidate:
        """Train a refined detector and judge it; returns the candidate (nothing switches).

        ``fuse_weight`` overrides :attr:`engine.config.RefineConfig.fuse_weight` for this
        candidate (how much the refined probability amplifies the map). Raises
        ValidationError when there is no fitted detector, fewer than
        :data:`engine.refine_train.MIN_NORMALS` normal images to learn from, or a negative
        ``fuse_weight``.
        """
        rcfg = self.config.refine
        if fuse_weight is not None:
            if not math.isfinite(fuse_weight) or fuse_weight < 0:
                raise ValidationError(f"fuse weight must be a number >= 0, got {fuse_weight!r}")
            rcfg = replace(rcfg, fuse_weight=float(fuse_weight))
        t0 = time.perf_counter()
        with self.engine_lock:
            model = self.model()
            mv = self.ws.latest_model_version()
            if model is None or mv is None or model.detector is None:
                raise ValidationError("no detector to refine: upload a first batch")
            det = model.detector
            if not det.is_fitted:
                raise ValidationError("this model's maps come from another tool: no detector")
            progress("load", 0.0)
            defects = self._confirmed_defects()
            normals = self._normal_images(defects)
            train_def, judge_def = _held_out(list(defects), rcfg.judge_share, self.config.seed)
            train_norm, judge_norm = _held_out(normals, rcfg.judge_share, self.config.seed)
            cap = rcfg.max_real if max_real is None else max_real
            train_def = train_def[: max(0, cap)]
            maxpix = self.config.data.max_pixels
            # at most one stored normal per generated image is read
            train_norm = [train_norm[int(i)] for i in even_sample(len(train_norm), rcfg.n_samples)]
            train_images: list[np.ndarray] = list(_Images(self.ws, train_norm, maxpix))
            origins = [-1] * len(train_images)
            if det.intensity is None:  # references are fitted normals, not stretched
                known = [i for i, o in enumerate(model.reference_index) if o >= 0]
                train_images += [model.references[i] for i in known]
                origins += [model.reference_index[i] for i in known]
            if len(train_images) < MIN_NORMALS:
                raise ValidationError(
                    f"refinement needs at least {MIN_NORMALS} normal images; the workspace "
                    f"has {len(normals)} images judged normal and the model "
                    f"{len(model.references)} usable reference normals"
                )
            judge_ids = judge_def + judge_norm
            judge_images = _Images(self.ws, judge_ids, maxpix)
            judge_masks = [
                defects[i] if i in defects else np.zeros(judge_images[k].shape[:2], bool)
                for k, i in enumerate(judge_ids)
            ]
            progress("judge", 0.05)
            before = held_out_metrics(det, judge_images, judge_masks)
            real = [RealDefect(_Images(self.ws, [i], maxpix)[0], defects[i]) for i in train_def]

            def report(stage: str, fraction: float) -> None:
                share = {"features": (0.1, 0.3), "train": (0.4, 0.45), "calibrate": (0.85, 0.05)}
                lo, width = share.get(stage, (0.9, 0.0))
                progress(stage, lo + width * fraction)

            try:
                fitted = fit_refiner(
                    det, train_images, real, origins=origins, config=rcfg, on_progress=report
                )
                progress("judge", 0.9)
                after = held_out_metrics(det, judge_images, judge_masks)
                candidate = RefineCandidate(
                    id=f"candidate-{mv.id}-{int(time.time() * 1000)}",
                    base_version=mv.id,
                    before=before,
                    after=after,
                    n_normals=len(train_images),
                    n_train_defects=len(train_def),
                    n_judge_defects=len(judge_def),
                    n_judge_normals=len(judge_norm),
                    seconds=time.perf_counter() - t0,
                    train=fitted.as_dict(),
                )
                # MEBin's value range was measured on the PatchCore maps: later batches
                # measure their own on the refined ones
                model.value_range = None
                self._write_candidate(model, candidate)
            finally:
                self._model = None  # the model in force is reloaded from its stored file
            progress("done", 1.0)
            return candidate

    def _write_candidate(self, model: DiscoveryModel, candidate: RefineCandidate) -> None:
        folder = self.refine_dir()
        folder.mkdir(parents=True, exist_ok=True)
        model.save(folder / f"{candidate.id}.npz")
        (folder / f"{candidate.id}.json").write_text(json.dumps(asdict(candidate), default=str))

    def refine_candidate(self, candidate_id: str) -> RefineCandidate:
        path = self.refine_dir() / f"{candidate_id}.json"
        if not candidate_id.startswith("candidate-") or not path.is_file():
            raise NotFoundError(f"no refinement candidate {candidate_id!r}")
        return RefineCandidate(**json.loads(path.read_text()))

    def accept_refinement(self, candidate_id: str, *, actor: str) -> int:
        """Make the candidate's detector the one in force: a new ``refine`` model version
        with the types of the latest version (retrains since the candidate was trained are
        kept). Refused when another detector was installed since (refine or rollback)."""
        candidate = self.refine_candidate(candidate_id)
        with self.engine_lock:
            latest = self.ws.latest_model_version()
            since = self.detector_since()
            if latest is None or latest.blob_path is None:
                raise ValidationError("no model in force to refine")
            if since is not None and since > candidate.base_version:
                raise ConflictError(
                    f"another detector was installed (model version {since}) after this "
                    f"refinement was trained on version {candidate.base_version}: refine again"
                )
            refined = DiscoveryModel.load(
                self.refine_dir() / f"{candidate_id}.npz", device=self.config.device
            )
            model = DiscoveryModel.load(latest.blob_path, device=self.config.device)
            model.detector = refined.detector
            model.value_range = None  # measured on the refined maps of later batches
            metrics_ = {
                "candidate": candidate.id,
                "trained_on": candidate.base_version,
                "before": candidate.before,
                "after": candidate.after,
                "train": candidate.train,
            }
            return self._store_detector("refine", model_bytes(model), metrics_, actor)

    def rollback_detector(self, *, actor: str, to_version: int | None = None) -> int:
        """Put back the detector of model version ``to_version`` (default: the one in force
        before the latest refinement), keeping today's types; a new ``rollback`` version."""
        with self.engine_lock:
            model = self.model()
            if model is None:
                raise ValidationError("no model to roll back")
            versions = self.ws.model_versions()
            if to_version is None:
                refines = [v for v in versions if v.kind == "refine"]
                if not refines:
                    raise ValidationError("no refinement to roll back")
                to_version = refines[-1].parent
            if to_version is None:
                raise ValidationError("the refinement has no earlier version to go back to")
            source = self.ws.model_version(int(to_version))
            if source.blob_path is None:
                raise ValidationError(f"model version {to_version} has no stored model")
            old = DiscoveryModel.load(source.blob_path, device=self.config.device)
            model.detector = old.detector
            model.value_range = old.value_range  # measured on that detector's maps
            blob = model_bytes(model)
            self._model = None
            return self._store_detector("rollback", blob, {"detector_of": int(to_version)}, actor)

    def detector_versions(self) -> list[ModelVersion]:
        """The model versions that installed a detector: the first, refinements, rollbacks."""
        versions = self.ws.model_versions()
        return [v for i, v in enumerate(versions) if i == 0 or v.kind in DETECTOR_KINDS]

    def _store_detector(self, kind: str, blob: bytes, info: dict, actor: str) -> int:
        """A new model version with ``blob``, the types' prototypes and embeddings kept."""
        ids, mat, counts = self.ws.prototypes()
        protos = [
            PrototypeIn(type=int(t), vector=mat[i], n_members=int(counts[i]))
            for i, t in enumerate(ids)
        ]
        region_ids, emb = self.ws.embeddings()
        mv = self.ws.apply_retrain(
            ModelVersionIn(kind=kind, model=blob, metrics=info),
            None,
            protos,
            (region_ids, emb) if len(region_ids) else None,
            actor=actor,
        )
        self._model = None
        return mv
