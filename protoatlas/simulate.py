"""Simulated reviewer: measures how fast answered suggestions improve the types.

``protoatlas simulate-review`` runs discovery into a fresh workspace, then for ``budget``
steps takes the top open question (or a random one with ``--strategy random``), lets an
:class:`Oracle` answer it truthfully from a labels file, applies the answer and retrains as
the app would, and records NMI / ARI / F1 of the image-level types against the labels.

The loop only learns labels through :meth:`Oracle.answer`, which is given the question and
looks at what a reviewer would see for it (the members of the types it names, the region it
shows); nothing else reads the labels file except the metric, which never feeds back.

Oracle rules (a careful reviewer):

* ``confirm`` "Is T3 one type?": yes when at least ``purity`` of its members' images share
  one label, and the reviewer names it with that label (an existing name merges), else no.
  Either way, among the members the question shows, the reviewer picks those whose label is
  not the majority's (they move out into a new type first); a type that is mostly false
  alarms is a plain no.
* ``split``: yes when the two proposed groups' majority labels differ.
* ``merge``: yes when both types' majority labels are equal.
* ``label`` "Which type is this?": the region's image label (``good``: a false alarm). The
  app lists every type with its members, so the reviewer picks the type named so, else the
  purest (then largest) type whose members are at least ``purity`` of this
  label, else gives a new name.
* ``new_type``: yes, with its majority label as name, when the group is ``purity`` pure.
"""

from __future__ import annotations

import csv
import os
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from engine import metrics
from engine.config import ProtoAtlasConfig
from engine.data import list_images
from protoatlas.service import WorkspaceService, region_table
from protoatlas.service.labels import match_names, read_label_keys, read_labels

CURVE_COLUMNS = ("step", "actions", "nmi", "ari", "f1", "n_types", "clicks", "detector")
#: Label of images the metric scores but the method left without a type.
NONE = "__none__"


class Reply(NamedTuple):
    """An answer: ``answer`` (yes / no / skip / a type), ``name`` for the type, and for a
    yes or no to "is T one type?" the ``regions`` picked as not belonging."""

    answer: str
    name: str | None = None
    regions: tuple[int, ...] = ()


class Oracle:
    """Answers only the question asked, from the true labels of the images it shows."""

    def __init__(
        self, labels: dict[str, str], purity: float = 0.8, names: Sequence[str] | None = None
    ) -> None:
        self._labels = labels
        self.purity = purity
        self.questions = 0
        #: The batch's image names: the labels file may name them by another path
        #: (:func:`protoatlas.service.labels.match_names`); None: exact names only.
        self._names = names
        self._keys: dict[str, str] | None = None

    def _label_of(self, image_name: str) -> str | None:
        if self._names is None:
            return self._labels.get(image_name)
        if self._keys is None:
            self._keys = match_names(self._names, self._labels)
        key = self._keys.get(image_name)
        return None if key is None else self._labels[key]

    def _majority(self, names: Sequence[str]) -> tuple[str | None, float]:
        labels = [self._label_of(n) for n in names]
        labels = [lab for lab in labels if lab is not None]
        if not labels:
            return None, 0.0
        label, count = Counter(labels).most_common(1)[0]
        return label, count / len(labels)

    def answer(self, kind: str, target: dict, view: "ReviewerView") -> Reply:
        """The reply to a question of ``kind`` about ``target``."""
        self.questions += 1
        if kind == "confirm":
            label, share = self._majority(view.type_images(int(target["type_id"])))
            if label is None or label == "good":
                return Reply("no")
            shown = view.shown_members(int(target["type_id"]))
            odd = tuple(rid for rid, image in shown if self._label_of(image) not in (None, label))
            if share >= self.purity:
                return Reply("yes", label, odd)
            return Reply("no", None, odd)
        if kind == "merge":
            a, b = (self._majority(view.type_images(int(t)))[0] for t in target["type_ids"])
            return Reply("yes") if a is not None and a == b else Reply("no")
        if kind == "split":
            majorities = [self._majority(view.region_images(g))[0] for g in target["groups"]]
            return Reply("yes") if len(set(majorities)) > 1 else Reply("no")
        if kind == "label":
            label = self._label_of(view.region_images([int(target["region_id"])])[0])
            if label is None or label == "good":
                return Reply(label or "skip")
            # the app lists every type with its members: a reviewer picks the type whose
            # members are of this kind (by name first, else the purest, then largest)
            tid = self._type_for(label, view)
            return Reply(str(tid) if tid is not None else label)
        if kind == "new_type":
            label, share = self._majority(view.region_images(target["region_ids"]))
            ok = label is not None and label != "good" and share >= self.purity
            return Reply("yes", label) if ok else Reply("no")
        if kind == "defect":
            label = self._label_of(view.region_images([int(target["region_id"])])[0])
            if label is None:
                return Reply("skip")
            if label == "good":
                return Reply("no")
            return Reply("yes", view.type_name(self._type_for(label, view)) or label)
        return Reply("skip")

    def _type_for(self, label: str, view: "ReviewerView") -> int | None:
        """The type a reviewer would put a region of ``label`` in: the one of that name,
        else the purest type of that label (then the largest), else None."""
        named = view.type_named(label)
        if named is not None:
            return named
        pure = []
        for tid in view.type_ids():
            members = view.type_images(tid)
            major, share = self._majority(members)
            if major == label and share >= self.purity:
                pure.append((share, len(members), -tid))
        return -max(pure)[2] if pure else None


class ReviewerView:
    """What a reviewer sees in the app: image names of a type's members or of regions."""

    def __init__(self, service: WorkspaceService, image_names: dict[int, str]) -> None:
        self.service = service
        self.image_names = image_names
        self._table = region_table(service.ws)

    def refresh(self) -> None:
        self._table = region_table(self.service.ws)

    def type_images(self, type_id: int) -> list[str]:
        rows = np.flatnonzero(self._table.type_ids == type_id)
        return [self.image_names[int(i)] for i in self._table.image_ids[rows]]

    def type_ids(self) -> list[int]:
        """The types the app lists (usable, with members)."""
        return sorted({int(t) for t in self._table.type_ids if t >= 0})

    def type_named(self, name: str) -> int | None:
        t = self.service.type_by_name(name)
        return None if t is None else int(t.id)

    def type_name(self, type_id: int | None) -> str | None:
        return None if type_id is None else self.service.ws.get_type(int(type_id)).name

    def shown_members(self, type_id: int) -> list[tuple[int, str]]:
        """(region id, image name) of the members an "is it one type?" question shows."""
        return [
            (m.region_id, self.image_names[m.image_id])
            for m in self.service.question_members(type_id)
        ]

    def region_images(self, region_ids: Sequence[int]) -> list[str]:
        pos = {int(r): i for i, r in enumerate(self._table.region_ids)}
        return [
            self.image_names[int(self._table.image_ids[pos[int(r)]])]
            for r in region_ids
            if int(r) in pos
        ]


@dataclass
class StepScores:
    step: int
    actions: int
    nmi: float
    ari: float
    f1: float
    n_types: int
    #: The reviewer's effort so far: answers plus members picked plus names typed
    #: (:func:`reply_clicks`).
    clicks: int = 0
    #: The detector in force: ``patchcore``, or ``refined`` once a refinement was accepted
    #: (``--refine-after``).
    detector: str = "patchcore"

    def row(self) -> dict[str, object]:
        return {
            "step": self.step,
            "actions": self.actions,
            "nmi": f"{self.nmi:.4f}",
            "ari": f"{self.ari:.4f}",
            "f1": f"{self.f1:.4f}",
            "n_types": self.n_types,
            "clicks": self.clicks,
            "detector": self.detector,
        }


def reply_clicks(reply: Reply) -> int:
    """What an answer costs the reviewer, counted honestly: the answer itself, one click per
    member picked as not belonging, and one more when a name is typed (a "yes" with a name,
    or a label answered with a new type's name rather than picked from the list)."""
    typed_label = reply.answer.lower() not in ("yes", "no", "skip", "good") and not (
        reply.answer.lstrip("-").isdigit()
    )
    return 1 + len(reply.regions) + int(bool(reply.name)) + int(typed_label)


def image_types(service: WorkspaceService) -> dict[int, int]:
    """Image id -> type id by the weighted vote of its typed regions (area x score)."""
    table = region_table(service.ws)
    votes: dict[int, dict[int, float]] = {}
    for img, tid, normal, area, score in zip(
        table.image_ids, table.type_ids, table.is_normal, table.area, table.score
    ):
        if tid < 0 or normal:
            continue
        w = float(np.sqrt(max(area, 1.0)) * (score if np.isfinite(score) else 1.0))
        per_type = votes.setdefault(int(img), {})
        per_type[int(tid)] = per_type.get(int(tid), 0.0) + w
    # the heaviest type; a tie goes to the type voted first
    return {img: max(c, key=c.__getitem__) for img, c in votes.items()}


def score_state(
    service: WorkspaceService,
    labels: dict[str, str],
    image_ids: dict[str, int],
    step: int,
    actions: int,
    clicks: int = 0,
) -> StepScores:
    """Metrics of the image-level types on the labelled anomalous images."""
    types = image_types(service)
    truth, pred = [], []
    for name, key in match_names(image_ids, labels).items():
        label = labels[key]
        if label == "good":
            continue
        truth.append(label)
        pred.append(str(types.get(image_ids[name], NONE)))
    if not truth:
        raise ValueError("no anomalous image of the batch has a label in the labels file")
    m = metrics.cluster_metrics(truth, pred)
    live = {
        t.id
        for t in service.ws.list_types()
        if t.status in ("proposed", "confirmed") and t.n_regions > 0
    }
    return StepScores(step, actions, m.nmi, m.ari, m.macro_f1, len(live), clicks)


def simulate(
    normals: str | os.PathLike,
    images: str | os.PathLike,
    labels_path: str | os.PathLike,
    config: ProtoAtlasConfig,
    *,
    budget: int,
    strategy: str = "ranked",
    clusters: int | str = "auto",
    home: str | os.PathLike | None = None,
    progress: bool = False,
    refine_after: int | None = None,
) -> list[StepScores]:
    """Run discovery then ``budget`` answered questions; one :class:`StepScores` per step
    (step 0 = the unsupervised start).

    ``refine_after``: once that many types are confirmed, refine the detector (PRN) once and
    switch to it when it is better on the held-out confirmed images, as a reviewer reading
    the report would; the rows say which detector is in force.
    """
    if strategy not in ("ranked", "random"):
        raise ValueError(f"unknown strategy {strategy!r}: expected 'ranked' or 'random'")
    keys, listed = read_label_keys(labels_path), list_images(images)
    if not match_names([r.name for r in listed], keys):
        raise ValueError(
            f"{labels_path}: none of its {len(keys)} image names matches an image of "
            f"{images} (for example {keys[0] if keys else 'none'!r} against "
            f"{listed[0].name if listed else 'no image'!r}); name the images by their path "
            "relative to the images folder, e.g. 'crack/000.png'"
        )
    labels = read_labels(labels_path)
    tmp = None
    if home is None:
        tmp = tempfile.TemporaryDirectory(prefix="protoatlas-sim-")
        home = tmp.name
    service = WorkspaceService(home, "simulation", config=config)
    try:
        if service.ws.batches():
            raise ValueError(f"{home}: the simulation needs an empty workspace")
        service.upload_batch(images, normals, clusters=clusters, actor="simulation")
        names = _image_names(service)
        image_ids = {v: k for k, v in names.items()}
        oracle = Oracle(labels, names=list(image_ids))
        view = ReviewerView(service, names)
        rng = np.random.default_rng(config.seed)
        curve = [score_state(service, labels, image_ids, 0, 0)]
        actions = clicks = 0
        detector, tried = "patchcore", False
        for step in range(1, budget + 1):
            queue = service.refresh_suggestions(strategy=strategy, rng=rng)
            if queue:
                q = queue[0]
                view.refresh()
                reply = oracle.answer(q.kind, q.target, view)
                clicks += reply_clicks(reply)  # a refused answer cost the reviewer as much
                try:
                    service.answer_suggestion(
                        q.id, reply.answer, actor="oracle", name=reply.name, regions=reply.regions
                    )
                    actions += 1
                except ValueError:
                    service.ws.answer_suggestion(q.id, None, actor="oracle", skip=True)
                service.retrain(actor="model")
            if refine_after is not None and detector == "patchcore" and not tried:
                confirmed = sum(t.status == "confirmed" for t in service.ws.list_types())
                if confirmed >= refine_after:
                    tried = True
                    detector = _refine(service, progress)
            row = score_state(service, labels, image_ids, step, actions, clicks)
            row.detector = detector
            curve.append(row)
            if progress:
                c = curve[-1]
                print(
                    f"step {step}: ARI {c.ari:.3f} NMI {c.nmi:.3f} F1 {c.f1:.3f} types {c.n_types}",
                    flush=True,
                )
        return curve
    finally:
        service.close()
        if tmp is not None:
            tmp.cleanup()


def _refine(service: WorkspaceService, progress: bool) -> str:
    """Refine the detector; accept it when better. Returns the detector in force."""
    candidate = service.refine_detector()
    if progress:
        print(f"refine: {candidate.summary()}", flush=True)
    if not candidate.better:
        return "patchcore"
    service.accept_refinement(candidate.id, actor="simulation")
    return "refined"


def _image_names(service: WorkspaceService) -> dict[int, str]:
    return {
        img: name for b in service.ws.batches() for img, name, _, _ in service.ws.batch_images(b.id)
    }


def write_curve(path: str | os.PathLike, curve: Sequence[StepScores]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(CURVE_COLUMNS))
        writer.writeheader()
        writer.writerows(s.row() for s in curve)
    return path
