"""Learning from feedback: retrain the prototype head from the cached crop tokens and the
reviewers' decisions, and decide which regions the new model may move."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from engine.discovery import NO_TYPE, DiscoveryModel, TypeFit, no_progress
from engine.discovery import ProgressFn as Progress
from engine.tokens import RegionTokens
from protoatlas.service.persist import model_bytes
from protoatlas.service.questions import QuestionsMixin
from protoatlas.service.region_table import region_table
from storage import AssignmentsIn, ModelVersionIn, NewType, PrototypeIn, TypeSummary


def _retrained_assignments(
    new_type: np.ndarray,
    current: np.ndarray,
    ref: dict[int, object],
    mixed: set[int],
    *,
    sims: np.ndarray,
    established: set[int],
    margin: float,
) -> np.ndarray:
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
        if (
            out[r] == NO_TYPE
            or ref.get(int(out[r])) not in established
            or sims[r, int(out[r])] < sims[r, own] + margin
        ):
            out[r] = own
    return out


@dataclass
class _Training:
    """What one retrain learns from: the regions with tokens (not marked normal), their
    current storage type, and the known (confirmed) and proposed types among them."""

    region_ids: np.ndarray
    tokens: RegionTokens
    current: np.ndarray  # storage type id per region (-1: none)
    types: dict[int, TypeSummary]
    confirmed: list[int]
    proposed: list[int]


def _match_novel(
    fit: TypeFit, n_types: int, confirmed: list[int], proposed: list[int], current: np.ndarray
) -> dict[int, object]:
    """Engine type index -> storage type id: known types are the confirmed ids in order; a
    novel prototype keeps the id of the proposed type it overlaps most (Hungarian matching),
    or gets the key ``r<i>`` of a type the retrain creates."""
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
    for i in novel:
        ref.setdefault(i, f"r{i}")
    return ref


class RetrainMixin(QuestionsMixin):
    """``retrain`` (a part of :class:`~protoatlas.service.workspace.WorkspaceService`)."""

    def retrain(self, actor: str = "model", progress: Progress = no_progress) -> int | None:
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
        with self.engine_lock:
            model = self.model()
            if model is None:
                return None
            progress("load", 0.0)
            data = self._training_data()
            if data is None:
                return None
            labels = np.array(
                [
                    {t: i for i, t in enumerate(data.confirmed)}.get(int(t), -1)
                    for t in data.current
                ],
                dtype=np.int64,
            )
            n_free = int((labels < 0).sum())
            # a proposed type a reviewer called mixed ("not one type") holds at least two
            # types: its "no" asks the next retrain, once, for one more novel prototype
            sizes = {t: info.n_regions for t, info in data.types.items()}
            no_answers = {
                t: sid for t, sid in self._standing_no_answers(sizes).items() if t in data.proposed
            }
            acted = {
                int(sid)
                for mv in self.ws.model_versions("retrain")
                for sid in mv.metrics.get("split_for", [])
            }
            split_for = sorted(sid for sid in no_answers.values() if sid not in acted)
            k_novel = min(max(len(data.proposed) + len(split_for), 1 if n_free else 0), n_free)
            progress("train", 0.1)
            fit = model.fit_types(
                data.tokens, k_novel if (k_novel or data.confirmed) else "auto", labels=labels
            )
            mv = self._store_retrain(model, fit, data, set(no_answers), split_for, actor, progress)
            self._model = None
            progress("done", 1.0)
            return mv

    def _training_data(self) -> _Training | None:
        """The cached tokens of every batch joined to the regions' current assignments
        (None when fewer than two regions have tokens)."""
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
        keep = np.array(
            [int(r) in row and not table.is_normal[row[int(r)]] for r in region_ids], dtype=bool
        )
        region_ids, tokens = region_ids[keep], tokens.select(np.flatnonzero(keep))
        if len(region_ids) < 2:
            return None
        rows = np.array([row[int(r)] for r in region_ids], dtype=np.int64)
        current = table.type_ids[rows]
        types = {t.id: t for t in self.ws.list_types()}
        in_use = {int(t) for t in current if t >= 0}
        return _Training(
            region_ids,
            tokens,
            current,
            types,
            confirmed=sorted(t for t in in_use if types[t].status == "confirmed"),
            proposed=sorted(t for t in in_use if types[t].status == "proposed"),
        )

    def _store_retrain(
        self,
        model: DiscoveryModel,
        fit: TypeFit,
        data: _Training,
        mixed: set[int],
        split_for: list[int],
        actor: str,
        progress: Progress,
    ) -> int:
        """Apply the retrained model where reviewers left the question open and store it as a
        new model version (prototypes, assignments, embeddings, new types, one transaction)."""
        n_types = len(model.type_ids)
        ref = _match_novel(fit, n_types, data.confirmed, data.proposed, data.current)
        novel = list(range(fit.n_known, n_types))
        new_types = [NewType(key=str(ref[i])) for i in novel if isinstance(ref[i], str)]
        region_type, conf, _, _ = model.classify(fit.embeddings)
        dcfg = self.config.discovery
        established = {
            t for t in data.confirmed if data.types[t].n_regions >= dcfg.retrain_min_known_members
        }
        region_type = _retrained_assignments(
            region_type,
            data.current,
            ref,
            mixed,
            sims=fit.embeddings @ model.prototypes.T,
            established=established,
            margin=dcfg.retrain_switch_margin,
        )
        counts = np.bincount(fit.assigned, minlength=n_types)
        protos = [
            PrototypeIn(type=ref[i], vector=model.prototypes[i], n_members=int(counts[i]))
            for i in range(n_types)
        ]
        assignments = AssignmentsIn(
            regions=data.region_ids,
            types=[None if t == NO_TYPE else ref[int(t)] for t in region_type],
            confidence=conf.astype(np.float64),
        )
        progress("store", 0.9)
        metrics = {
            "n_regions": int(len(data.region_ids)),
            "n_known": fit.n_known,
            "split_for": split_for,
            "n_novel": len(novel),
            "n_new_types": len(new_types),
            "final_loss": fit.train.final_loss if fit.train.epochs else None,
        }
        return self.ws.apply_retrain(
            ModelVersionIn(kind="retrain", model=model_bytes(model), metrics=metrics),
            assignments,
            protos,
            (data.region_ids, fit.embeddings),
            new_types=new_types,
            actor=actor,
        )
