"""Active-learning suggestions: the questions whose answers help the model most.

Every strategy reads a :class:`ReviewState` (the workspace's regions, their embeddings, types
and prototypes) and proposes scored questions; :func:`suggest` ranks them. Kinds:

* ``confirm`` -- "Is T3 one defect type?" for proposed types that are compact (mean cosine
  of the members to their prototype) and large: one answer labels a whole type.
* ``split`` -- "Should T7 be split?" when two-way clustering inside the type is clearly
  better than one group (silhouette of the 2-way split, Ward) and the two groups point in
  different directions (a tight type is not split however its silhouette comes out).
* ``merge`` -- "Are T2 and T5 the same type?" for pairs of types whose prototypes are close
  (cosine) and whose members are confused (many members nearly as close to the other).
* ``label`` -- "Which type is this image?" for the regions the model is least sure of
  (smallest margin between the two nearest prototypes), spread over images.
* ``new_type`` -- "Is this a new type?" for a group of unassigned (outlier) regions that are
  close to each other and far from every prototype.
* ``defect`` -- "Is this image defective?" for images the detector passed that scored just
  below its threshold (their strongest region is stored as a *candidate*, judged normal):
  closest to the threshold first, and first of all those a moved threshold now flags. A
  "yes" types the candidate region and lowers the workspace's threshold below the image's
  score (:meth:`protoatlas.service.core.ServiceCore.threshold`), so no near miss vanishes.

Scores are comparable across kinds (roughly "regions whose label the answer settles, times
the chance the question is not trivial"), so one ranked queue serves the reviewer. The
``random`` strategy picks uniformly among all candidate questions (the baseline of the
simulated-review benchmark). Pure computation: no storage, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from sklearn.metrics import silhouette_score

from engine.clustering import cluster, normalise
from engine.config import SuggestConfig

#: Kinds of question, in the order a tie is broken.
KINDS = ("confirm", "merge", "split", "new_type", "defect", "label")


@dataclass(frozen=True)
class Candidate:
    """A candidate region: the strongest region of an image the detector passed."""

    region_id: int
    image_id: int
    #: The image's anomaly score.
    score: float


@dataclass
class ReviewState:
    """A snapshot of what the suggestions look at (rows aligned with ``region_ids``)."""

    region_ids: np.ndarray
    image_ids: np.ndarray
    embeddings: np.ndarray
    #: Current type of each region (-1: none); ``reviewed`` marks reviewer-set assignments.
    region_type: np.ndarray
    reviewed: np.ndarray
    is_normal: np.ndarray
    #: type id -> (name, status) for usable types (proposed or confirmed).
    types: dict[int, tuple[str, str]]
    #: type id -> unit prototype (types without one use their members' mean).
    prototypes: dict[int, np.ndarray] = field(default_factory=dict)
    #: Types a reviewer said are not one defect type (answered "no" to confirm): their
    #: split and their members' labels become the most useful questions.
    mixed: set[int] = field(default_factory=set)
    #: Candidate regions no reviewer has looked at, and the detector threshold in force.
    candidates: list[Candidate] = field(default_factory=list)
    threshold: float | None = None

    def members(self, type_id: int) -> np.ndarray:
        return np.flatnonzero(self.region_type == type_id)

    def prototype(self, type_id: int) -> np.ndarray | None:
        if type_id in self.prototypes:
            return self.prototypes[type_id]
        idx = self.members(type_id)
        if len(idx) == 0:
            return None
        return normalise(self.embeddings[idx].mean(axis=0, keepdims=True))[0]


@dataclass
class Question:
    kind: str
    target: dict
    score: float
    reason: str


def answer_stands(asked_size: int | None, size: int, cfg: SuggestConfig) -> bool:
    """Whether an answer about a type of ``asked_size`` members still holds at ``size``."""
    if asked_size is None or asked_size <= 0:
        return True
    return abs(size - asked_size) <= cfg.answer_stale_change * asked_size


def _name(state: ReviewState, tid: int) -> str:
    return state.types.get(tid, (f"type {tid}", ""))[0]


def confirm_questions(state: ReviewState, cfg: SuggestConfig) -> list[Question]:
    out = []
    for tid, (name, status) in state.types.items():
        if status != "proposed":
            continue
        idx = state.members(tid)
        if len(idx) < cfg.min_type_size:
            continue
        proto = state.prototype(tid)
        compact = float(np.mean(state.embeddings[idx] @ proto))
        # a reviewed member still counts half: a proposed type a reviewer made (members
        # picked out of a mixed type) is asked about so that its answer names it
        unreviewed = int((~state.reviewed[idx]).sum())
        score = max(compact, 0.0) * np.log1p(unreviewed + 0.5 * (len(idx) - unreviewed))
        out.append(
            Question(
                "confirm",
                {"type_id": tid, "n_regions": int(len(idx))},
                float(score),
                f"{name}: {len(idx)} regions, compact (mean similarity "
                f"{compact:.2f}). Is it one defect type?",
            )
        )
    return out


def split_questions(state: ReviewState, cfg: SuggestConfig) -> list[Question]:
    out = []
    for tid, (name, status) in state.types.items():
        idx = state.members(tid)
        mixed = tid in state.mixed
        if len(idx) < (2 if mixed else 2 * max(cfg.min_type_size, 3)):
            continue
        x = normalise(state.embeddings[idx])
        labels, _ = cluster(
            x,
            2,
            method="ward",
            max_points=cfg.group_max_points,
            restarts=cfg.group_restarts,
            seed=cfg.seed,
        )
        if len(np.unique(labels)) < 2:
            continue
        sil = float(silhouette_score(x, labels, metric="cosine")) if len(idx) > 2 else 1.0
        centres = normalise(np.stack([x[labels == k].mean(axis=0) for k in range(2)]))
        apart = float(centres[0] @ centres[1])
        if (sil < cfg.split_silhouette or apart > cfg.split_max_similarity) and not mixed:
            continue
        groups = [state.region_ids[idx[labels == k]].tolist() for k in range(2)]
        smaller = min(len(g) for g in groups)
        # a type a reviewer called mixed: its split settles most regions at once, so it
        # comes before the label questions about its members
        boost = cfg.mixed_split_boost if mixed else 1.0
        out.append(
            Question(
                "split",
                {"type_id": tid, "groups": groups},
                float(max(sil, 0.1) * np.log1p(smaller) * 2 * boost),
                f"{name} looks like two groups ({len(groups[0])} + "
                f"{len(groups[1])} regions, silhouette {sil:.2f}). Should it be "
                "split?",
            )
        )
    return out


def merge_questions(state: ReviewState, cfg: SuggestConfig) -> list[Question]:
    ids = [t for t in state.types if len(state.members(t))]
    if len(ids) < 2:
        return []
    protos = {t: p for t in ids if (p := state.prototype(t)) is not None}
    ids = [t for t in ids if t in protos]
    pairs = [
        (a, b)
        for i, a in enumerate(ids)
        for b in ids[i + 1 :]
        if not (state.types[a][1] == "confirmed" and state.types[b][1] == "confirmed")
    ]
    all_sims = np.array(
        [float(protos[a] @ protos[b]) for i, a in enumerate(ids) for b in ids[i + 1 :]]
    )
    mean, std = float(all_sims.mean()), float(all_sims.std()) + 1e-6
    out = []
    for a, b in pairs:  # two confirmed types are distinct by the reviewers' word
        sim = float(protos[a] @ protos[b])
        z = (sim - mean) / std
        if z < cfg.merge_z or sim <= 0:
            continue
        ia, ib = state.members(a), state.members(b)
        # confusion: members about as close to the other prototype as to their own
        xa, xb = state.embeddings[ia], state.embeddings[ib]
        confused = float(
            np.mean(
                np.concatenate(
                    [
                        (xa @ protos[b]) > (xa @ protos[a]) - 0.1,
                        (xb @ protos[a]) > (xb @ protos[b]) - 0.1,
                    ]
                )
            )
        )
        score = (0.5 + confused) * min(z / 2, 1.5) * np.log1p(min(len(ia), len(ib)))
        out.append(
            Question(
                "merge",
                {"type_ids": [a, b]},
                float(score),
                f"{_name(state, a)} and {_name(state, b)} have close prototypes "
                f"(similarity {sim:.2f}, {confused:.0%} of their members in "
                "between). Are they the same type?",
            )
        )
    return out


def label_questions(state: ReviewState, cfg: SuggestConfig) -> list[Question]:
    ids = [t for t in state.types if state.prototype(t) is not None]
    open_rows = np.flatnonzero(~state.reviewed & ~state.is_normal)
    if len(ids) < 2 or len(open_rows) == 0:
        return []
    protos = np.stack([p for t in ids if (p := state.prototype(t)) is not None])
    sims = state.embeddings[open_rows] @ protos.T
    order = np.argsort(-sims, axis=1)
    top = sims[np.arange(len(open_rows)), order[:, 0]]
    second = sims[np.arange(len(open_rows)), order[:, 1]]
    margin = top - second
    out = []
    seen_images: set[int] = set()
    in_mixed = np.isin(state.region_type[open_rows], list(state.mixed))
    typical = _typical_unexplored(state, open_rows, in_mixed, cfg)
    # members of a mixed type: typical and unexplored first, then the least sure
    for j in np.lexsort((margin, -typical, ~in_mixed)):
        row = open_rows[j]
        image = int(state.image_ids[row])
        if image in seen_images:
            continue
        seen_images.add(image)
        options = [int(ids[k]) for k in order[j, :3]]
        if typical[j] > 0:
            score = cfg.mixed_boost * (cfg.typical_base + typical[j])
            reason = (
                f"{_name(state, int(state.region_type[row]))} holds more than one "
                "type. This region is typical of a part of it that no reviewed region "
                "resembles yet. Which type is it?"
            )
        else:
            boost = cfg.mixed_boost if int(state.region_type[row]) in state.mixed else 1.0
            score = (1.0 - margin[j]) * boost
            reason = (
                f"The model hesitates between {_name(state, options[0])} and "
                f"{_name(state, options[1])} (margin {margin[j]:.3f}). Which type is "
                "this region?"
            )
        out.append(
            Question(
                "label",
                {"region_id": int(state.region_ids[row]), "image_id": image, "options": options},
                float(score),
                reason,
            )
        )
        if len(out) >= cfg.max_label_questions:
            break
    return out


def _typical_unexplored(
    state: ReviewState, open_rows: np.ndarray, in_mixed: np.ndarray, cfg: SuggestConfig
) -> np.ndarray:
    """Per open row: for members of a mixed type, typicality (mean cosine to their nearest
    fellow members, TypiClust-like) times how far they are from every reviewed region
    (1 - the highest cosine, clipped at 0); 0 elsewhere. The answer about such a region
    names a part of the mixed type that no answer has named yet."""
    value = np.zeros(len(open_rows))
    reviewed = state.embeddings[state.reviewed & ~state.is_normal]
    for tid in state.mixed:
        sel = np.flatnonzero(in_mixed & (state.region_type[open_rows] == tid))
        members = state.members(tid)
        if len(sel) == 0 or len(members) < 2:
            continue
        x = state.embeddings[open_rows[sel]]
        sims = x @ state.embeddings[members].T
        k = min(cfg.typical_neighbours, len(members) - 1)
        # the highest similarity of a member is to itself: skip it
        typ = np.sort(sims, axis=1)[:, -1 - k : -1].mean(axis=1)
        cover = (x @ reviewed.T).max(axis=1) if len(reviewed) else np.zeros(len(x))
        value[sel] = np.clip(typ, 0, None) * (1.0 - np.clip(cover, 0, None)) + 1e-6
    return value


def new_type_questions(state: ReviewState, cfg: SuggestConfig) -> list[Question]:
    rows = np.flatnonzero((state.region_type < 0) & ~state.is_normal & ~state.reviewed)
    if len(rows) < cfg.new_type_min_size:
        return []
    x = normalise(state.embeddings[rows])
    k = max(1, len(rows) // max(cfg.new_type_min_size, 1))
    k = min(k, 8)
    labels, centres = cluster(
        x,
        k,
        method="ward",
        max_points=cfg.group_max_points,
        restarts=cfg.group_restarts,
        seed=cfg.seed,
    )
    out = []
    for c in range(len(centres)):
        members = rows[labels == c]
        if len(members) < cfg.new_type_min_size:
            continue
        tight = float(np.mean(state.embeddings[members] @ centres[c]))
        out.append(
            Question(
                "new_type",
                {"region_ids": state.region_ids[members].tolist()},
                float(max(tight, 0.0) * np.log1p(len(members))),
                f"{len(members)} regions fit no type but resemble each other "
                f"(mean similarity {tight:.2f}). Is this a new defect type?",
            )
        )
    return out


def defect_questions(state: ReviewState, cfg: SuggestConfig) -> list[Question]:
    t = state.threshold
    if not state.candidates or t is None or not np.isfinite(t) or t <= 0:
        return []
    scored = []
    for c in state.candidates:
        gap = (t - c.score) / t
        value = cfg.defect_weight * max(0.0, 1.0 - max(gap, 0.0) / cfg.defect_band)
        if gap <= 0:
            value += cfg.defect_above
        if value > 0:
            scored.append((value, c, gap))
    scored.sort(key=lambda x: (-x[0], x[1].region_id))
    out = []
    for value, c, gap in scored[: cfg.max_defect_questions]:
        where = (
            "above the threshold as reviewers moved it"
            if gap <= 0
            else f"{gap:.0%} below the detector's threshold"
        )
        out.append(
            Question(
                "defect",
                {"region_id": c.region_id, "image_id": c.image_id, "score": c.score},
                float(value),
                f"The detector passed this image as good: it scored {where}. Is it defective?",
            )
        )
    return out


STRATEGIES = {
    "confirm": confirm_questions,
    "merge": merge_questions,
    "split": split_questions,
    "new_type": new_type_questions,
    "defect": defect_questions,
    "label": label_questions,
}


def candidates(state: ReviewState, cfg: SuggestConfig = SuggestConfig()) -> list[Question]:
    """Every question every strategy proposes (unranked)."""
    out: list[Question] = []
    for kind in KINDS:
        out.extend(STRATEGIES[kind](state, cfg))
    return out


def suggest(
    state: ReviewState,
    cfg: SuggestConfig = SuggestConfig(),
    *,
    strategy: str = "ranked",
    rng: np.random.Generator | None = None,
) -> list[Question]:
    """The queue: ``ranked`` (best score first) or ``random`` (a random order)."""
    qs = candidates(state, cfg)
    if strategy == "random":
        rng = rng or np.random.default_rng(cfg.seed)
        return [qs[i] for i in rng.permutation(len(qs))][: cfg.queue_size]
    if strategy != "ranked":
        raise ValueError(f"unknown strategy {strategy!r}: expected 'ranked' or 'random'")
    rank = {k: i for i, k in enumerate(KINDS)}
    qs.sort(key=lambda q: (-q.score, rank[q.kind]))
    return qs[: cfg.queue_size]


def target_key(kind: str, target: dict) -> str:
    """What a question is about, as a string: the same question asked again has the same key."""
    if kind == "confirm":
        return str(target["type_id"])
    if kind == "split":
        return str(target["type_id"])
    if kind == "merge":
        return ",".join(str(t) for t in sorted(target["type_ids"]))
    if kind in ("label", "defect"):
        return str(target["region_id"])
    return ",".join(str(r) for r in sorted(target.get("region_ids", [])))
