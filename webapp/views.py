"""What each screen shows, as plain data (tables, HTML, figures, file paths): no Gradio here,
so the benchmark and the tests can time and check the screens without a browser.

Everything goes through :class:`protoatlas.service.WorkspaceService`: its workflows, its
reads and its reviewer actions (the web app never holds the storage workspace itself).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import threading
import time
import zoneinfo
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from protoatlas.service import (
    UNDOABLE_ACTIONS,
    ConflictError,
    ImageDetail,
    Member,
    NotFoundError,
    StorageError,
    TypeSummary,
)
from webapp.render import Renderer, type_colour
from webapp.security import escape, md_escape

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from protoatlas.service import WorkspaceService

#: Above the cards: find by name, sort, filter by status (applied by the page script, so
#: that typing never waits for the server; the choice survives a refresh of the cards).
CARD_TOOLS = (
    "<div class='pa-card-tools'><input type='search' class='pa-find' "
    "placeholder='Find a type (/)' aria-label='find a type by name'>"
    "<select class='pa-sort' aria-label='sort the types'><option value='size'>largest first"
    "</option><option value='name'>by name</option><option value='status'>by status</option>"
    "<option value='conf'>least confident first</option></select>"
    "<select class='pa-status' aria-label='show the types of status'><option value=''>every "
    "status</option><option value='proposed'>proposed</option><option value='confirmed'>"
    "confirmed</option><option value='rejected'>rejected</option></select></div>"
)
#: Audit actions that are not a reviewer's decision.
TYPE_COLUMNS = ["id", "name", "status", "regions", "images", "confidence"]
AUDIT_COLUMNS = ["#", "time", "reviewer", "action", "types", "details", "what happened", "undo"]
#: Audit actions in a reviewer's words ("{types}": the names of the types it touched).
ACTION_WORDS = {
    "ingest_batch": "uploaded a batch",
    "apply_retrain": "the model retrained",
    "replace_suggestions": "the questions were renewed",
    "adopt_types": "types were adopted",
    "confirm_type": "confirmed {types}",
    "reject_type": "rejected {types}",
    "rename_type": "renamed {types}",
    "merge_types": "merged {types}",
    "split_type": "split {types}",
    "move_regions": "moved regions to {types}",
    "mark_normal": "marked regions normal (from {types})",
    "create_type": "made a new type {types}",
    "import_labels": "imported labels",
    "answer_suggestion": "answered a question",
    "undo": "undid an action",
}
REGION_COLUMNS = [
    "region",
    "type",
    "status",
    "confidence",
    "source",
    "anomaly score",
    "area",
    "box (t, l, b, r)",
]
STATUS_BADGE = {
    "proposed": "#b45309",
    "confirmed": "#15803d",
    "rejected": "#b91c1c",
    "merged": "#6b7280",
}
EXPORTS = {
    "csv": ("assignments.csv", "regions with their type (CSV)"),
    "parquet": ("assignments.parquet", "regions with their type (Parquet)"),
    "images_csv": ("images.csv", "one row per image (CSV)"),
    "coco": ("coco.json", "COCO instances of the confirmed types: masks, boxes (JSON)"),
    "coco_all": ("coco-all.json", "COCO instances of every type, proposed ones too (JSON)"),
    "label_studio": ("label-studio.json", "Label Studio tasks: boxes of every type (JSON)"),
    "yolo": ("yolo.zip", "YOLO set of the confirmed types: images, labels, classes (zip)"),
    "crops": ("crops.zip", "the crops of the confirmed types, a folder per type (zip)"),
    "audit_json": ("audit.json", "the audit log (JSON)"),
    "audit_csv": ("audit.csv", "the audit log (CSV)"),
}
#: Which types each export holds (``None``: the audit log, always whole, no scope).
EXPORT_HOLDS: dict[str, str | None] = {
    "csv": "every type, rejected ones too",
    "parquet": "every type, rejected ones too",
    "images_csv": "every image; with types, those whose label is one of them",
    "coco": "the confirmed types only",
    "coco_all": "the confirmed and the proposed types",
    "label_studio": "the confirmed types (annotations) and the proposed ones (predictions)",
    "yolo": "the confirmed types only",
    "crops": "the confirmed types only",
    "audit_json": None,
    "audit_csv": None,
}


@dataclass
class BrowseRow:
    """One image of the Browse tab."""

    image_id: int
    name: str
    batch_id: int
    batch_name: str
    score: float | None
    flagged: bool
    n_regions: int
    type_ids: list[int]
    type_names: list[str]
    reviewed: bool


@dataclass
class BrowseFilter:
    """What the Browse tab keeps: a batch, a type (``-1``: images without a type), flagged
    or passed, reviewed or not, a score range; and the sort order."""

    batch_id: int | None = None
    type_id: int | None = None
    flagged: str = "all"  # all | flagged | passed
    reviewed: str = "all"  # all | reviewed | not reviewed
    min_score: float | None = None
    max_score: float | None = None
    sort: str = "score, highest first"

    def keeps(self, r: BrowseRow) -> bool:
        if self.batch_id is not None and r.batch_id != self.batch_id:
            return False
        if self.type_id is not None and (
            (self.type_id == -1 and r.type_ids)
            or (self.type_id >= 0 and self.type_id not in r.type_ids)
        ):
            return False
        if self.flagged != "all" and r.flagged != (self.flagged == "flagged"):
            return False
        if self.reviewed != "all" and r.reviewed != (self.reviewed == "reviewed"):
            return False
        score = r.score if r.score is not None else float("nan")
        if self.min_score is not None and not score >= self.min_score:
            return False
        if self.max_score is not None and not score <= self.max_score:
            return False
        return True


#: The Browse tab's orders: a sort key per choice (``BrowseFilter.sort`` is the default).
BROWSE_SORTS: dict[str, Callable[[BrowseRow], Any]] = {
    "score, highest first": lambda r: -(r.score if r.score is not None else -1e9),
    "score, lowest first": lambda r: r.score if r.score is not None else 1e9,
    "name": lambda r: (r.batch_id, r.name),
}


def question_text(kind: str, target: dict, name: Callable[[Any], str]) -> str:
    """The question a suggestion asks, with ``name(type id)`` for each type it is about."""
    if kind == "confirm":
        return f"Is {name(target.get('type_id'))} one defect type?"
    if kind == "merge":
        a, b = (list(target.get("type_ids") or []) + [None, None])[:2]
        return f"Are {name(a)} and {name(b)} the same defect type?"
    if kind == "split":
        return f"Should {name(target.get('type_id'))} be split?"
    if kind == "label":
        return f"Which type is region #{target.get('region_id')}?"
    if kind == "new_type":
        return f"Do these {len(target.get('region_ids') or [])} regions form a new defect type?"
    if kind == "defect":
        return "Is this image defective?"
    return f"{kind}: {json.dumps(target)}"


#: Confidences closer together than this (max - min) do not tell members apart.
CONFIDENCE_SPREAD = 0.05


def confidence_discriminates(values: Sequence[float | None]) -> bool:
    """Whether these confidences differ enough to be worth showing."""
    finite = [float(v) for v in values if v is not None and np.isfinite(v)]
    return len(finite) > 1 and max(finite) - min(finite) >= CONFIDENCE_SPREAD


def fmt_conf(value: float | None) -> str:
    return "–" if value is None or not np.isfinite(value) else f"{value:.2f}"


def type_label(t: TypeSummary) -> str:
    """A type in a list: its name, its id unless the name is the automatic ``T<id>``."""
    ident = "" if t.name == f"T{t.id}" else f"#{t.id}, "
    return f"{t.name} ({ident}{t.status}, {t.n_regions})"


@dataclass
class Question:
    """A suggestion as the Suggestions screen shows it."""

    id: int
    kind: str
    text: str
    reason: str
    target: dict
    images: list[tuple[str, str]]  # (crop path, caption)
    choices: list[tuple[str, Any]]  # answers of a "label" question: type ids, "good"
    #: ``text`` with its type names escaped for Markdown (what the screen shows).
    text_md: str = ""
    #: Open questions in the queue, this one first (0: not counted).
    n_open: int = 0

    @property
    def markdown(self) -> str:
        """The question and its reason as the Suggestions screen's Markdown (every user
        string escaped)."""
        return (
            f"### {self.text_md or md_escape(self.text)}\n{md_escape(self.reason)}  \n"
            f"<small>question #{self.id} · {self.kind}"
            + (f" · 1 of {self.n_open} open" if self.n_open else "")
            + "</small>"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "question": self.text,
            "n_open": self.n_open,
            "reason": self.reason,
            "target": self.target,
            "images": [c for _, c in self.images],
            # what the question offers: a type (or good) for a label question, else yes / no
            "answers": (["skip"] if self.kind == "label" else ["yes", "no", "skip"])
            + [f"{i}" for _, i in self.choices],
        }


class Views:
    """Screen data for one service (thread-safe: reads use snapshot cursors)."""

    def __init__(self, service: WorkspaceService) -> None:
        self.service = service
        self.screens = service.config.screens
        self.renderer = Renderer(service)
        self._regions: dict[int, tuple[int, tuple[int, int, int, int]]] = {}
        self._lock = threading.Lock()
        self._reps: dict[tuple, list[Member]] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.exports_dir = service.root / "exports"

    @property
    def root(self) -> Path:
        return self.service.root

    # ------------------------------------------------------------------ regions
    def _remember(self, members: Sequence[Member]) -> None:
        with self._lock:
            for m in members:
                self._regions[m.region_id] = (m.image_id, m.box)

    def region(self, region_id: int) -> tuple[int, tuple[int, int, int, int]]:
        """(image id, box) of a region (cached; rescanned from the batches on a miss)."""
        with self._lock:
            hit = self._regions.get(region_id)
        if hit is not None:
            return hit
        for b in self.service.batches():
            for r in self.service.regions_for_batch(b.id, with_masks=False):
                with self._lock:
                    self._regions[r.id] = (r.image_id, r.box)
        with self._lock:
            if region_id not in self._regions:
                raise NotFoundError(f"no region with id {region_id}")
            return self._regions[region_id]

    def crop(self, region_id: int) -> Path:
        image_id, box = self.region(region_id)
        return self.renderer.crop_path(region_id, image_id, box)

    def thumb(self, region_id: int) -> bytes:
        image_id, box = self.region(region_id)
        return self.renderer.thumb_bytes(region_id, image_id, box)

    # ------------------------------------------------------------------ types
    def types(self, include_rejected: bool = True) -> list[TypeSummary]:
        """The types the screens show: every type with members (an emptied type is kept in
        the workspace, for undo, but has nothing to review), rejected ones on request."""
        return [
            t
            for t in self.service.list_types()
            if t.n_regions > 0 and (include_rejected or t.status != "rejected")
        ]

    def reviewed(self) -> bool:
        """Whether any reviewer decision is in the workspace's history (the demo's note is
        shown until the first one)."""
        return any(
            e.action in UNDOABLE_ACTIONS or e.action == "undo" for e in self.service.audit(limit=50)
        )

    def types_table(self, types: Sequence[TypeSummary] | None = None) -> list[list[Any]]:
        types = self.types() if types is None else types
        return [
            [
                t.id,
                t.name,
                t.status,
                t.n_regions,
                t.n_images,
                None if t.mean_confidence is None else round(float(t.mean_confidence), 3),
            ]
            for t in types
        ]

    def type_choices(
        self, exclude: int | None = None, types: Sequence[TypeSummary] | None = None
    ) -> list[tuple[str, int]]:
        types = self.types() if types is None else types
        return [
            (type_label(t), t.id)
            for t in types
            if t.id != exclude and t.status in ("proposed", "confirmed")
        ]

    def cards_html(
        self,
        types: Sequence[TypeSummary] | None = None,
        n_thumbs: int | None = None,
        selected: int | None = None,
    ) -> str:
        """One card per type: name, status, size, confidence and representative crops."""
        types = self.types() if types is None else types
        n_thumbs = self.screens.card_thumbs if n_thumbs is None else n_thumbs
        if not types:
            return (
                "<div class='pa-empty'>No defect types yet. Upload a batch with known-good "
                "images on the <b>Upload</b> tab (or start with <code>--demo</code>).</div>"
            )
        cards = []
        for t in types:
            reps = self.representatives(t, n_thumbs)
            thumbs = "".join(
                f"<img loading='lazy' alt='region {m.region_id}' title='#{m.region_id} "
                f"{escape(m.image_name)}' src='pa/thumb/{m.region_id}.jpg'>"
                for m in reps
            )
            sel = " pa-selected" if t.id == selected else ""
            conf = -1.0 if t.mean_confidence is None else float(t.mean_confidence)
            cards.append(
                f"<div class='pa-card{sel}' role='button' tabindex='0' data-type-id='{t.id}' "
                f"data-name='{escape(t.name.lower())}' data-size='{t.n_regions}' "
                f"data-status='{escape(t.status)}' data-conf='{conf:.4f}' "
                f"style='--pa-type:{type_colour(t.id)}'>"
                f"<div class='pa-card-head'><span class='pa-swatch'></span>"
                f"<span class='pa-name'>{escape(t.name)}</span>"
                f"<span class='pa-badge' style='background:{STATUS_BADGE.get(t.status, '#555')}'>"
                f"{escape(t.status)}</span></div>"
                f"<div class='pa-meta'>#{t.id} · {t.n_regions} regions · {t.n_images} images · "
                f"confidence {fmt_conf(t.mean_confidence)}</div>"
                f"<div class='pa-thumbs'>{thumbs or '<i>no members</i>'}</div></div>"
            )
        # the render stamp makes every refresh a new value (Gradio then redraws) and lets a
        # benchmark see when the redrawn page is in place
        stamp = time.monotonic_ns()
        return f"{CARD_TOOLS}<div class='pa-cards' data-rendered='{stamp}'>{''.join(cards)}</div>"

    def representatives(self, t: TypeSummary, n: int) -> list[Member]:
        """The type's representatives, cached while the type is unchanged (same version,
        size and update time): the cards need them on every page load."""
        if not t.n_regions:
            return []
        key = (t.id, t.version, t.n_regions, t.updated_at, n)
        with self._lock:
            hit = self._reps.get(key)
        if hit is not None:
            return hit
        reps = self.service.representatives(t.id, n=n)
        self._remember(reps)
        with self._lock:
            if len(self._reps) > 4096:
                self._reps.clear()
            self._reps[key] = reps
        return reps

    def type_members(
        self, type_id: int, order: str = "representative", limit: int | None = None
    ) -> list[Member]:
        """One gallery page of a type's members (``screens.gallery_members`` by default)."""
        limit = self.screens.gallery_members if limit is None else limit
        if order == "representative":
            reps = self.service.representatives(
                type_id, n=min(self.screens.gallery_representatives, limit)
            )
            rest = self.service.type_members(type_id, limit=limit)
            seen = {m.region_id for m in reps}
            members = reps + [m for m in rest if m.region_id not in seen]
        else:
            members = self.service.type_members(
                type_id, limit=limit, order="borderline" if order == "borderline" else "confidence"
            )
        members = members[:limit]
        self._remember(members)
        return members

    def gallery(self, members: Sequence[Member]) -> list[tuple[str, str]]:
        return [
            (
                str(self.renderer.crop_path(m.region_id, m.image_id, m.box)),
                f"#{m.region_id} · {fmt_conf(m.confidence)}"
                + (" · reviewer" if m.source == "reviewer" else ""),
            )
            for m in members
        ]

    def members_html(
        self, members: Sequence[Member], selected: Sequence[int] = (), total: int | None = None
    ) -> str:
        """The selected type's members as a multi-select grid (crops served by
        ``pa/crop/<region>.jpg``; clicks handled by the page script). ``total``: the type's
        size, said above the grid when the page shows fewer ("48 of 156 shown")."""
        if not members:
            return "<div class='pa-empty'>This type has no members.</div>"
        on = set(int(r) for r in selected)
        total = len(members) if total is None else int(total)
        n_on = len(on)
        count = (
            f"<div class='pa-count' data-total='{total}'>{len(members)} of {total} shown"
            + (f" · {n_on} selected" if n_on else "")
            + " · <i>Select all</i> selects all "
            + f"{total}</div>"
            if total > len(members)
            else ""
        )
        items = []
        # a confidence shows only where it tells members apart (a model saved before the
        # calibration of docs/decisions.md, *Confidence*, says ~1.00 for nearly every
        # region, and 48 captions of "1.00" say nothing)
        telling = confidence_discriminates([m.confidence for m in members])
        for m in members:
            cls = "pa-member pa-on" if m.region_id in on else "pa-member"
            who = " · ✎" if m.source == "reviewer" else ""
            conf = f" · {fmt_conf(m.confidence)}" if telling else ""
            items.append(
                f"<figure class='{cls}' tabindex='0' data-rid='{m.region_id}' "
                f"title='#{m.region_id} · {escape(m.image_name)} · confidence "
                f"{fmt_conf(m.confidence)}'><img loading='lazy' alt='region {m.region_id}' "
                f"src='pa/crop/{m.region_id}.jpg'><figcaption>#{m.region_id}"
                f"{conf}{who}</figcaption></figure>"
            )
        return f"{count}<div class='pa-members'>{''.join(items)}</div>"

    def all_member_ids(self, type_id: int) -> list[int]:
        """Every member of a type (what "Select all" selects, shown or not)."""
        t = self.service.get_type(int(type_id))  # an unknown type: NotFoundError
        return [m.region_id for m in self.service.all_members(t.id)]

    def question_grid(self, q: Question, pickable: bool = False) -> str:
        """A question's crops as the Types tab's grid (each at its aspect, with its context
        and caption); with ``pickable`` a click marks a member as not belonging (the page
        script writes the picked ids into the pick box)."""
        items = []
        for _, caption in q.images:
            rid = caption.rsplit("#", 1)[-1] if "#" in caption else ""
            if not rid.isdigit():
                continue
            items.append(
                f"<figure class='pa-member' tabindex='0' data-rid='{rid}' "
                f"title='{escape(caption)}'><img loading='lazy' alt='region {rid}' "
                f"src='pa/crop/{rid}.jpg'><figcaption>{escape(caption)}</figcaption></figure>"
            )
        if not items:
            return ""
        cls = "pa-members pa-pickable" if pickable else "pa-members"
        return f"<div class='{cls}'>{''.join(items)}</div>"

    def type_header(self, t: TypeSummary) -> str:
        return (
            f"### {md_escape(t.name)} &nbsp;<span class='pa-badge' style='background:"
            f"{STATUS_BADGE.get(t.status, '#555')}'>{t.status}</span>\n"
            f"#{t.id} · {t.n_regions} regions in {t.n_images} images · mean confidence "
            f"{fmt_conf(t.mean_confidence)} · version {t.version} · made by {t.origin}"
        )

    def warm(self, n_thumbs: int | None = None, gallery: int | None = None) -> None:
        """Render the crops ahead (after an upload, at start): every card's thumbnails,
        then each type's first gallery page, so that opening a type is fast, then the
        Browse tab's first pages."""
        n_thumbs = self.screens.card_thumbs if n_thumbs is None else n_thumbs
        gallery = self.screens.gallery_members if gallery is None else gallery
        types = self.types()
        for t in types:
            for m in self.representatives(t, n_thumbs):
                if self._stop.is_set():
                    return
                try:
                    self.renderer.thumb_bytes(m.region_id, m.image_id, m.box)
                except (OSError, StorageError):
                    pass
        for t in types:
            if not gallery:
                break
            for m in self.type_members(t.id, "representative", gallery):
                if self._stop.is_set():
                    return
                try:
                    self.renderer.crop_path(m.region_id, m.image_id, m.box)
                except (OSError, StorageError):
                    pass
        # the Browse tab's first pages in its default order (highest score first)
        rows = sorted(self.browse_rows(), key=BROWSE_SORTS[BrowseFilter.sort])
        for r in rows[: self.screens.browse_page * self.screens.browse_warm_pages]:
            if self._stop.is_set():
                return
            try:
                self.renderer.image_thumb_bytes(r.image_id)
            except (OSError, StorageError):
                pass

    def warm_in_background(self) -> threading.Thread:
        thread = threading.Thread(target=self._warm_quietly, name="protoatlas-warm", daemon=True)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()
        return thread

    def stop(self) -> None:
        """Stop background warm-ups (before the workspace is closed)."""
        self._stop.set()
        with self._lock:
            threads = list(self._threads)
        for t in threads:
            t.join(timeout=30)

    def _warm_quietly(self) -> None:
        try:
            self.warm()
        except Exception:  # a picture cache must never take the app down
            log.warning("warming the picture cache failed", exc_info=True)

    # ------------------------------------------------------------------ type actions
    def type_action(
        self,
        type_id: int,
        action: str,
        argument: str = "",
        region_ids: Sequence[int] = (),
        expected_version: int | None = None,
        actor: str = "reviewer",
    ) -> dict[str, Any]:
        """Apply one reviewer action; returns {ok, message, type_ids}. Conflicts (someone
        else changed the type since ``expected_version``) and bad input come back as
        ``ok: False`` with a message that says what to do."""
        action = (action or "").strip().lower()
        region_ids = [int(r) for r in region_ids]
        try:
            if action == "undo":
                text = str(argument or "").strip().lstrip("#")
                if text and not text.isdigit():
                    return _fail(f"Not applied: {text!r} is not a history entry (pick a row).")
                seq = int(text) if text else None
                entry = self.service.undo(actor, seq)
                what = (entry.target or {}).get("action", entry.action)
                of = (entry.target or {}).get("undo_of")
                return {
                    "ok": True,
                    "message": f"Undid '{what}'" + (f" (history #{of})." if of else "."),
                    "type_ids": entry.type_ids,
                }
            t = self.service.get_type(int(type_id))
            version = (
                t.version
                if expected_version is None or expected_version < 0
                else int(expected_version)
            )
            handler = _TYPE_ACTIONS.get(action)
            if handler is None:
                return _fail(
                    f"Unknown action {action!r}: use confirm, reject, rename, merge, "
                    "split, move, normal, new_type or undo."
                )
            return handler(self, t, version, (argument or "").strip(), region_ids, actor)
        except ConflictError as exc:
            return _fail(
                f"Not applied: {exc}. Someone else changed it since you opened it; "
                "the view was refreshed, check and try again.",
                conflict=True,
            )
        except (StorageError, ValueError) as exc:
            return _fail(f"Not applied: {exc}")

    def _confirm(
        self, t: TypeSummary, version: int, argument: str, region_ids: list[int], actor: str
    ) -> dict[str, Any]:
        self.service.confirm_type(t.id, expected_version=version, actor=actor)
        return _ok(f"Confirmed {t.name}.", [t.id])

    def _reject(
        self, t: TypeSummary, version: int, argument: str, region_ids: list[int], actor: str
    ) -> dict[str, Any]:
        self.service.reject_type(t.id, expected_version=version, actor=actor)
        return _ok(f"Rejected {t.name}: its regions no longer count as a type.", [t.id])

    def _rename(
        self, t: TypeSummary, version: int, argument: str, region_ids: list[int], actor: str
    ) -> dict[str, Any]:
        if not argument:
            return _fail("Type a new name first.")
        self.service.rename_type(t.id, argument, expected_version=version, actor=actor)
        return _ok(f"Renamed {t.name} to {argument}.", [t.id])

    def _merge(
        self, t: TypeSummary, version: int, argument: str, region_ids: list[int], actor: str
    ) -> dict[str, Any]:
        other = self.service.get_type(_int(argument, "the type to merge into"))
        if other.id == t.id:
            return _fail("Pick another type to merge into.")
        self.service.merge_types(
            other.id, t.id, seen={t.id: version, other.id: other.version}, actor=actor
        )
        return _ok(f"Merged {t.name} into {other.name}.", [other.id, t.id])

    def _split(
        self, t: TypeSummary, version: int, argument: str, region_ids: list[int], actor: str
    ) -> dict[str, Any]:
        if region_ids:
            new = self.service.split_type(
                t.id, expected_version=version, actor=actor, region_ids=region_ids
            )
            return _ok(
                f"Moved the {len(region_ids)} selected regions out of {t.name} into a new type.",
                [t.id, *new],
            )
        parts = _int(argument or "2", "the number of parts")
        if parts < 2:
            return _fail("Split into at least 2 parts.")
        new = self.service.split_type(t.id, parts, expected_version=version, actor=actor)
        names = ", ".join(self.service.get_type(i).name for i in new)
        return _ok(f"Split {t.name} into {parts}: new type(s) {names}.", [t.id, *new])

    def _move(
        self, t: TypeSummary, version: int, argument: str, region_ids: list[int], actor: str
    ) -> dict[str, Any]:
        if not region_ids:
            return _fail("Select regions in the gallery first (click images).")
        dest = self.service.get_type(_int(argument, "the destination type"))
        self.service.move_regions(
            region_ids, dest.id, seen={t.id: version, dest.id: dest.version}, actor=actor
        )
        return _ok(f"Moved {len(region_ids)} region(s) to {dest.name}.", [t.id, dest.id])

    def _normal(
        self, t: TypeSummary, version: int, argument: str, region_ids: list[int], actor: str
    ) -> dict[str, Any]:
        if not region_ids:
            return _fail("Select regions in the gallery first (click images).")
        self.service.mark_normal(region_ids, seen={t.id: version}, actor=actor)
        return _ok(f"Marked {len(region_ids)} region(s) as normal (not a defect).", [t.id])

    def _new_type(
        self, t: TypeSummary, version: int, argument: str, region_ids: list[int], actor: str
    ) -> dict[str, Any]:
        if not region_ids:
            return _fail("Select regions first.")
        new_id = self.service.create_type(
            region_ids, seen={t.id: version}, actor=actor, name=argument or None
        )
        return _ok(
            f"Made a new type {self.service.get_type(new_id).name} of {len(region_ids)} region(s).",
            [t.id, new_id],
        )

    def selection_action(
        self, region_ids: Sequence[int], action: str, argument: str = "", actor: str = "reviewer"
    ) -> dict[str, Any]:
        """Act on regions picked anywhere (the map): new_type (argument = name) or normal."""
        ids = [int(r) for r in region_ids]
        if not ids:
            return _fail("Select regions first.")
        try:
            expected = self.service.expected_for(ids)
            if action == "new_type":
                new_id = self.service.create_type(
                    ids, seen=expected, actor=actor, name=(argument or "").strip() or None
                )
                return _ok(
                    f"Made a new type {self.service.get_type(new_id).name} of {len(ids)} "
                    "region(s).",
                    [new_id, *expected],
                )
            if action == "normal":
                self.service.mark_normal(ids, seen=expected, actor=actor)
                return _ok(f"Marked {len(ids)} region(s) as normal (not a defect).", list(expected))
            return _fail(f"Unknown action {action!r} for a selection.")
        except ConflictError as exc:
            return _fail(f"Not applied: {exc}", conflict=True)
        except (StorageError, ValueError) as exc:
            return _fail(f"Not applied: {exc}")

    # ------------------------------------------------------------------ suggestions
    def next_question(self) -> Question | None:
        """The best open question, with where it stands in the queue ("1 of 18")."""
        s = self.service.next_suggestion()
        if s is None:
            return None
        q = self.question(s)
        q.n_open = len(self.service.open_suggestions())
        return q

    def question(self, s) -> Question:
        target = dict(s.target or {})
        types = {t.id: t for t in self.service.list_types(include_merged=True)}

        def name(tid: Any) -> str:
            t = types.get(int(tid)) if tid is not None else None
            return t.name if t else f"#{tid}"

        images: list[tuple[str, str]] = []

        def add_members(tid: int, members: Sequence[Member], prefix: str = "") -> None:
            self._remember(members)
            images.extend(
                (str(self.crop(m.region_id)), f"{prefix}{name(tid)} #{m.region_id}")
                for m in members
            )

        def add_type(tid: int, n: int, prefix: str = "") -> None:
            add_members(tid, self.service.representatives(int(tid), n=n), prefix)

        def add_regions(ids: Sequence[int], n: int, prefix: str = "") -> None:
            for rid in list(ids)[:n]:
                try:
                    images.append((str(self.crop(int(rid))), f"{prefix}#{rid}"))
                except (NotFoundError, OSError):
                    pass

        kind = s.kind
        text = question_text(kind, target, name)
        text_md = question_text(kind, target, lambda tid: md_escape(name(tid)))
        if kind == "confirm":
            tid = int(target["type_id"])
            add_members(tid, self.service.question_members(tid))
        elif kind == "merge":
            a, b = target.get("type_ids", [None, None])[:2]
            add_type(a, 4, "A: ")
            add_type(b, 4, "B: ")
        elif kind == "split":
            groups = target.get("groups") or []
            if groups:
                for g, ids in enumerate(groups[:3]):
                    add_regions(ids, 4, f"part {g + 1}: ")
            else:
                add_type(target["type_id"], 8)
        elif kind == "label":
            rid = target.get("region_id")
            if rid is not None:
                add_regions([rid], 1, "this region: ")
            # beside the region, a few members of each candidate type to compare with
            for tid in (target.get("candidates") or target.get("type_ids") or [])[:3]:
                add_type(tid, self.screens.label_examples, "looks like ")
        elif kind == "new_type":
            ids = target.get("region_ids") or []
            add_regions(ids, 8)
        elif kind == "defect":
            rid = target.get("region_id")
            if rid is not None:
                add_regions([rid], 1, "its strongest region: ")
        else:
            if "type_id" in target:
                add_type(target["type_id"], 6)
        choices = self.type_choices() + [("good: not a defect", "good")] if kind == "label" else []
        return Question(
            int(s.id), kind, text, s.reason or "", target, images, choices, text_md=text_md
        )

    def answer(
        self,
        suggestion_id: int,
        answer: str,
        actor: str,
        name: str | None = None,
        regions: Sequence[int] = (),
    ) -> dict[str, Any]:
        """Answer a question through the service (which applies it and writes the audit).
        ``name`` optionally names the type a "yes" confirms or creates; ``regions`` are the
        members picked as not belonging with a yes or no to "is it one type?"."""
        svc = self.service
        answer = (answer or "").strip()
        name = (name or "").strip() or None
        if not answer:
            return _fail("Choose an answer: yes, no, skip or a type.")
        try:
            extra = {"regions": list(regions)} if regions else {}
            result = svc.answer_suggestion(
                int(suggestion_id), answer, actor=actor, name=name, **extra
            )
            out = dict(result) if isinstance(result, dict) else {"result": str(result)}
            applied = out.get("applied")
            out.setdefault("ok", True)
            out.setdefault(
                "message", f"Answered '{answer}'" + (f": {applied}." if applied else ".")
            )
            return out
        except ConflictError as exc:
            return _fail(f"Not applied: {exc}. The queue was refreshed.", conflict=True)
        except (StorageError, ValueError, KeyError) as exc:
            return _fail(f"Not applied: {exc}")

    # ------------------------------------------------------------------ map
    def map_points(self) -> dict[str, np.ndarray]:
        """2-D layout of the latest embeddings (UMAP when installed, else PCA)."""
        ids, emb = self.service.embeddings()
        info: dict[int, Any] = {}
        for b in self.service.batches():
            for r in self.service.regions_for_batch(b.id, with_masks=False):
                info[r.id] = r
                with self._lock:
                    self._regions[r.id] = (r.image_id, r.box)
        keep = np.array([int(i) in info for i in ids], dtype=bool)
        ids, emb = ids[keep], emb[keep]
        if len(ids) > self.screens.map_max_points:
            pick = np.sort(
                np.random.default_rng(0).choice(
                    len(ids), self.screens.map_max_points, replace=False
                )
            )
            ids, emb = ids[pick], emb[pick]
        xy, method = project_2d(emb)
        regions = [info[int(i)] for i in ids]
        return {"ids": ids, "xy": xy, "method": method, "regions": regions}

    def map_figure(self):
        import plotly.graph_objects as go

        pts = self.map_points()
        fig = go.Figure()
        groups: dict[str, list[int]] = {}
        for k, r in enumerate(pts["regions"]):
            label = "normal" if r.is_normal else (r.type_name or "unassigned")
            groups.setdefault(label, []).append(k)
        type_ids = {r.type_name: r.type_id for r in pts["regions"] if r.type_name}

        # types in id order (T2 before T10), then unassigned and normal regions
        def legend_order(item: tuple[str, list[int]]) -> tuple[int, str]:
            tid = type_ids.get(item[0])
            return (tid if tid is not None else 10**9, item[0])

        for label, rows in sorted(groups.items(), key=legend_order):
            rs = [pts["regions"][k] for k in rows]
            fig.add_trace(
                go.Scattergl(
                    x=pts["xy"][rows, 0],
                    y=pts["xy"][rows, 1],
                    mode="markers",
                    name=escape(label),
                    marker={
                        "size": 11,
                        "color": type_colour(type_ids.get(label)),
                        "line": {"width": 0.5, "color": "white"},
                    },
                    customdata=[[r.id, r.image_id] for r in rs],
                    text=[f"#{r.id} · {escape(label)} · conf {fmt_conf(r.confidence)}" for r in rs],
                    hovertemplate="%{text}<extra></extra>",
                )
            )
        fig.update_layout(
            dragmode="lasso",
            height=560,
            margin={"l": 10, "r": 10, "t": 36, "b": 10},
            title={"text": f"{len(pts['ids'])} regions · {pts['method']}", "x": 0.01},
            legend={"itemsizing": "constant"},
            template="plotly_white",
            xaxis={"showticklabels": False, "title": None},
            yaxis={"showticklabels": False, "title": None},
        )
        return fig

    # ------------------------------------------------------------------ image detail
    def image_pictures(self, image_id: int) -> dict[str, Any]:
        """The Image tab's side-by-side pictures: original, heat, regions, prior."""
        prior = None
        try:
            model = self.service.model()
            if model is not None and getattr(model, "prior", None) is not None:
                prior = model.prior.predict
        except Exception:  # no model yet / model file unreadable: the prior is optional
            log.info("no object prior for the image view", exc_info=True)
            prior = None
        return self.renderer.detail_views(int(image_id), prior=prior)

    def image_detail(self, image_id: int, pictures: bool = True) -> dict[str, Any]:
        """Summary, regions table and (``pictures``) the side-by-side pictures of one image
        (without them the pictures are None: the page asks for them next)."""
        d = self.service.image_detail(int(image_id))
        views = (
            self.image_pictures(d.id)
            if pictures
            else dict.fromkeys(("original", "heat", "regions", "prior"))
        )
        rows = [
            [
                r.id,
                "normal" if r.is_normal else (r.type_name or "unassigned"),
                r.type_status or "",
                None if r.confidence is None else round(r.confidence, 3),
                r.source or "",
                None if r.anomaly_score is None else round(r.anomaly_score, 3),
                r.area,
                str(tuple(r.box)),
            ]
            for r in d.regions
        ]
        b = d.batches[-1] if d.batches else None
        summary = (
            f"**Image #{d.id}** {md_escape(b.name if b else d.sha256[:12])} · "
            f"{d.width}×{d.height} · batch {md_escape(b.batch_name) if b else '–'} · "
            f"anomaly score {fmt_conf(b.anomaly_score) if b else '–'}"
            f"{' · flagged anomalous' if b and b.is_anomalous else ''} · "
            f"{len(d.regions)} region(s)"
        )
        return {"summary": summary, "rows": rows, "viewer": self.viewer_html(d.id, d), **views}

    def viewer_html(self, image_id: int, detail: ImageDetail | None = None) -> str:
        """The image viewer: the image at full resolution under two overlay layers (heat
        map, region outlines) with their toggles and opacity; zoom and pan are the page
        script's (wheel, drag, keys). ``detail``: the image's detail when already read."""
        d = detail if detail is not None else self.service.image_detail(int(image_id))
        # the layers change with the regions' types: a new stamp for every state
        state = tuple((r.id, r.type_id, r.is_normal, r.type_name) for r in d.regions)
        stamp = hashlib.sha1(repr(state).encode()).hexdigest()[:10]
        iid = int(d.id)
        return (
            f"<div class='pa-viewer' data-iid='{iid}' data-w='{d.width}' data-h='{d.height}'>"
            "<div class='pa-vtools'>"
            "<label title='h'><input type='checkbox' class='pa-v-heat' checked> heat map "
            "<kbd>h</kbd></label>"
            "<label title='o'><input type='checkbox' class='pa-v-outline' checked> region "
            "outlines <kbd>o</kbd></label>"
            "<label>heat opacity <input type='range' class='pa-v-opacity' min='0' max='100' "
            "value='60'></label>"
            "<span class='pa-v-zoom'>"
            "<button type='button' data-zoom='out' title='zoom out (-)'>−</button>"
            "<span class='pa-v-level'>fit</span>"
            "<button type='button' data-zoom='in' title='zoom in (+)'>+</button>"
            "<button type='button' data-zoom='fit' title='fit (0)'>fit</button>"
            "<button type='button' data-zoom='1' title='full resolution (1)'>1:1</button>"
            "</span>"
            f"<span class='pa-v-size'>{d.width}×{d.height} px · wheel: zoom · drag: pan · "
            "<kbd>n</kbd>/<kbd>p</kbd> next / previous image</span>"
            "</div>"
            "<div class='pa-vstage' tabindex='0'>"
            f"<div class='pa-vlayers' style='width:{d.width}px;height:{d.height}px'>"
            f"<img class='pa-v-base' alt='image {iid}' src='pa/full/{iid}.jpg'>"
            f"<img class='pa-v-heatimg' alt='' src='pa/heat/{iid}.png?v={stamp}'>"
            f"<img class='pa-v-outlineimg' alt='' src='pa/outline/{iid}.png?v={stamp}'>"
            "</div></div></div>"
        )

    def step_image(self, image_id: Any, delta: int) -> int | None:
        """The image before (``delta`` -1) or after (+1) this one in the image picker's
        order; the first one when ``image_id`` is not in it; None when there is none."""
        order = [iid for _, iid in self.batch_images(limit=10**9)]
        if not order:
            return None
        try:
            at = order.index(int(image_id))
        except (TypeError, ValueError):
            return order[0]
        return order[min(max(at + delta, 0), len(order) - 1)]

    def batch_images(self, batch_id: int | None = None, limit: int = 500) -> list[tuple[str, int]]:
        """(label, image id) choices for the image picker: images with regions first, then
        every other image of the batches by anomaly score (so that a missed defect just
        below the threshold can be opened too)."""
        out: list[tuple[str, int]] = []
        seen: set[int] = set()
        rest: list[tuple[float, str, int]] = []
        for b in reversed(self.service.batches()):
            if batch_id is not None and b.id != batch_id:
                continue
            for r in self.service.regions_for_batch(b.id, with_masks=False):
                if r.image_id not in seen:
                    seen.add(r.image_id)
                    out.append((f"#{r.image_id} (batch {b.id})", r.image_id))
            for image_id, name, score, _ in self.service.batch_images(b.id):
                if image_id not in seen:
                    seen.add(image_id)
                    label = f"#{image_id} {name} (batch {b.id}, score {fmt_conf(score)}, no region)"
                    rest.append((-(score if score is not None else -np.inf), label, image_id))
        out += [(label, image_id) for _, label, image_id in sorted(rest)]
        return out[:limit]

    # ------------------------------------------------------------------ browse
    def browse_rows(self) -> list[BrowseRow]:
        """Every image of every batch, with its score, whether it was flagged, its types and
        whether a reviewer decided about one of its regions."""
        types = {t.id: t.name for t in self.service.list_types(include_merged=True)}
        rows: list[BrowseRow] = []
        for b in self.service.batches():
            regions: dict[int, list[Any]] = {}
            for r in self.service.regions_for_batch(b.id, with_masks=False):
                regions.setdefault(r.image_id, []).append(r)
            for image_id, name, score, flagged in self.service.batch_images(b.id):
                rs = regions.get(image_id, [])
                tids = sorted(
                    {int(r.type_id) for r in rs if r.type_id is not None and not r.is_normal}
                )
                rows.append(
                    BrowseRow(
                        image_id,
                        name,
                        b.id,
                        b.name,
                        score,
                        bool(flagged),
                        len(rs),
                        tids,
                        [types.get(t, f"#{t}") for t in tids],
                        any(r.source == "reviewer" for r in rs),
                    )
                )
        return rows

    def browse(self, f: BrowseFilter, page: int = 0) -> tuple[str, str, int]:
        """(count line, grid HTML, page shown) of the images the filter keeps, sorted and
        one page (``screens.browse_page``) at a time."""
        rows = [r for r in self.browse_rows() if f.keeps(r)]
        rows.sort(key=BROWSE_SORTS.get(f.sort, BROWSE_SORTS[BrowseFilter.sort]))
        size = self.screens.browse_page
        pages = max(1, -(-len(rows) // size))
        page = min(max(int(page), 0), pages - 1)
        shown = rows[page * size : (page + 1) * size]
        items = []
        for r in shown:
            flag = "flagged" if r.flagged else "passed"
            names = ", ".join(escape(n) for n in r.type_names) or "no type"
            items.append(
                f"<figure class='pa-member pa-image' tabindex='0' data-iid='{r.image_id}' "
                f"title='#{r.image_id} {escape(r.name)} · batch {escape(r.batch_name)} · "
                f"score {fmt_conf(r.score)} · {flag} · {names}'>"
                f"<img loading='lazy' alt='image {r.image_id}' src='pa/image/{r.image_id}.jpg'>"
                f"<figcaption>#{r.image_id} · {fmt_conf(r.score)}"
                f"{' · ⚑' if r.flagged else ''} · {names}</figcaption></figure>"
            )
        first = page * size + 1 if shown else 0
        last = first + len(shown) - 1 if shown else 0
        count = (
            f"**{len(rows)} image(s)** match · showing {first}-{last} · page {page + 1} of {pages}"
        )
        grid = (
            f"<div class='pa-members'>{''.join(items)}</div>"
            if items
            else ("<div class='pa-empty'>No image matches these filters.</div>")
        )
        return count, grid, page

    def image_thumb(self, image_id: int) -> bytes:
        return self.renderer.image_thumb_bytes(int(image_id))

    # ------------------------------------------------------------------ history, export
    def audit_rows(
        self,
        actor: str | None = None,
        action: str | None = None,
        type_id: int | None = None,
        limit: int = 200,
        me: str | None = None,
        tz: str | None = None,
    ) -> list[list[Any]]:
        """The audit log's rows, newest first, times in the time zone ``tz`` (an IANA
        name, e.g. the browser's; None or unknown: UTC); the last column says whether
        ``me`` (the reviewer looking) may try to undo the row ("possible"), or that it
        was undone."""
        zone = _zone(tz)
        rows = []
        names = {t.id: t.name for t in self.service.list_types(include_merged=True)}
        now = dt.datetime.now(dt.timezone.utc)
        undone = {
            (e.target or {}).get("undo_of") for e in self.service.audit(action="undo", limit=10**6)
        }
        for e in self.service.audit(
            actor=actor or None, action=action or None, type_id=type_id, limit=limit
        ):
            ts = (
                e.ts.astimezone(dt.timezone.utc)
                if e.ts.tzinfo
                else e.ts.replace(tzinfo=dt.timezone.utc)
            )
            types = ", ".join(names.get(t, f"#{t}") for t in e.type_ids) or "–"
            words = ACTION_WORDS.get(e.action, e.action.replace("_", " ")).format(types=types)
            rows.append(
                [
                    e.seq,
                    f"{ts.astimezone(zone):%Y-%m-%d %H:%M:%S %Z} ({_ago(now - ts)})",
                    e.actor,
                    e.action,
                    ", ".join(str(t) for t in e.type_ids),
                    _summary(e),
                    f"{e.actor} {words}",
                    "undone"
                    if e.seq in undone
                    else (
                        "possible"
                        if e.action in UNDOABLE_ACTIONS and me is not None and e.actor == me
                        else ""
                    ),
                ]
            )
        return rows

    def audit_filters(self) -> tuple[list[str], list[str]]:
        entries = self.service.audit(limit=2000)
        return sorted({e.actor for e in entries}), sorted({e.action for e in entries})

    def type_filter(self, value: Any) -> int | None:
        """A type filter as typed: empty -> None (every type), an id, or a type's name."""
        text = "" if value is None else str(value).strip()
        if not text:
            return None
        if text.lstrip("-").isdigit():
            return int(text)
        for t in self.service.list_types(include_merged=True):
            if t.name.lower() == text.lower():
                return t.id
        raise ValueError(f"no type named {text!r}: give a type's id or name, or leave it empty")

    def export_scopes(self) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """The Export tab's choices: ("every batch", "") and each batch; each type with
        members (an empty list means every type)."""
        batches = [("every batch", "")] + [
            (f"{b.name} (#{b.id}, {b.n_images} images)", str(b.id)) for b in self.service.batches()
        ]
        types = [(type_label(t), str(t.id)) for t in self.types()]
        return batches, types

    def batch_choices(self) -> list[tuple[str, str]]:
        """Every batch as (label, id) for the Upload tab's delete box, newest first."""
        return [
            (f"{b.name} (#{b.id}, {b.n_images} images)", str(b.id))
            for b in sorted(self.service.batches(), key=lambda b: -b.id)
        ]

    def delete_batch(self, batch: Any, confirmed: bool, actor: str) -> dict[str, Any]:
        """Delete a batch (``confirmed`` must be ticked); {ok, message}."""
        text = "" if batch is None else str(batch).strip().lstrip("#")
        if not text:
            return _fail("Pick the batch to delete first.")
        if not text.isdigit():
            return _fail(f"Not deleted: {text!r} is not a batch id.")
        if not confirmed:
            return _fail("Not deleted: tick the box to confirm (a delete cannot be undone).")
        try:
            out = self.service.delete_batch(int(text), actor=actor)
        except (StorageError, ValueError) as exc:
            return _fail(f"Not deleted: {exc}")
        self.warm_in_background()
        reviewed = (
            f"; {out.n_reviewed} reviewer decision(s) on its regions went with it"
            if out.n_reviewed
            else ""
        )
        return _ok(
            f"Deleted batch {out.name} (#{out.batch_id}): {out.n_images} image(s), "
            f"{out.n_regions} region(s){reviewed}. A snapshot from before the delete is kept "
            "(protoatlas restore --list).",
            out.type_ids,
        )

    def export_scope(self, batch: Any, types: Any) -> tuple[int | None, list[int] | None]:
        """(batch id or None, type ids or None) from the Export tab's inputs: a batch id
        ("" or None: every batch), type ids or names (empty: every type)."""
        text = "" if batch is None else str(batch).strip().lstrip("#")
        if text and not text.isdigit():
            raise ValueError(f"batch must be a batch id, not {batch!r}")
        batch_id = int(text) if text else None
        if types is None or isinstance(types, (str, int)):
            types = [] if types in (None, "") else [types]
        ids = [self.type_filter(t) for t in types]
        type_ids = sorted({t for t in ids if t is not None}) or None
        return batch_id, type_ids

    def export(self, fmt: str, batch_id: Any = None, type_ids: Any = None) -> Path:
        """Write one export under ``exports/<time stamp>/``: all of it, or the batch
        ``batch_id`` and the types ``type_ids`` (ids or names; empty: every type the format
        holds, :data:`EXPORT_HOLDS`). An unknown id is a ``NotFoundError``, a type the
        format does not hold a ``ValueError``, both naming it."""
        if fmt not in EXPORTS:
            raise ValueError(f"unknown export format {fmt!r}; use one of {', '.join(EXPORTS)}")
        batch, types = self.export_scope(batch_id, type_ids)
        if EXPORT_HOLDS[fmt] is None and (batch is not None or types is not None):
            raise ValueError(
                "the audit log is exported whole (its hash chain): choose every batch and "
                "every type"
            )
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        folder = self.exports_dir / stamp
        folder.mkdir(parents=True, exist_ok=True)
        try:
            return self._write_export(fmt, folder / EXPORTS[fmt][0], batch, types)
        except Exception:
            with contextlib.suppress(OSError):  # a refused scope leaves no empty folder
                folder.rmdir()
            raise

    def _write_export(
        self, fmt: str, path: Path, batch_id: int | None, type_ids: list[int] | None
    ) -> Path:
        ws = self.service
        scope: dict[str, Any] = {"batch_id": batch_id, "type_ids": type_ids}
        if fmt == "csv":
            return ws.export_assignments(path, "csv", "region", **scope)
        if fmt == "parquet":
            return ws.export_assignments(path, "parquet", "region", **scope)
        if fmt == "images_csv":
            return ws.export_assignments(path, "csv", "image", **scope)
        if fmt == "coco":
            return ws.export_coco(path, **scope)
        if fmt == "coco_all":
            return ws.export_coco(path, types="all", **scope)
        if fmt == "label_studio":
            return ws.export_label_studio(path, types="all", **scope)
        if fmt == "yolo":
            return ws.export_yolo(path, **scope)
        if fmt == "crops":
            return ws.export_crops(path, **scope)
        if fmt == "audit_json":
            return ws.export_audit(path, "json")
        return ws.export_audit(path, "csv")


def project_2d(x: np.ndarray) -> tuple[np.ndarray, str]:
    """UMAP (when ``umap-learn`` is installed and there are enough points), else PCA."""
    x = np.asarray(x, dtype=np.float32)
    if len(x) == 0:
        return np.zeros((0, 2), np.float32), "PCA"
    if len(x) < 3:
        return np.c_[np.arange(len(x), dtype=np.float32), np.zeros(len(x), np.float32)], "PCA"
    try:
        import umap  # type: ignore[import-not-found]

        if len(x) >= 20:
            xy = umap.UMAP(
                n_components=2, random_state=0, n_neighbors=min(15, len(x) - 1)
            ).fit_transform(x)
            return np.asarray(xy, dtype=np.float32), "UMAP"
    except ImportError:
        pass
    c = x - x.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(c, full_matrices=False)
    xy = c @ vt[:2].T
    if xy.shape[1] < 2:
        xy = np.c_[xy, np.zeros(len(xy), np.float32)]
    return xy.astype(np.float32), "PCA"


def _zone(name: str | None) -> dt.tzinfo:
    """The time zone named ``name`` (IANA), or UTC when it is empty or unknown."""
    if name:
        try:
            return zoneinfo.ZoneInfo(str(name))
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            log.info("unknown time zone %r: times in UTC", name)
    return dt.timezone.utc


def _ago(delta: dt.timedelta) -> str:
    """How long ago, in a reviewer's words (the same in every time zone)."""
    s = max(int(delta.total_seconds()), 0)
    if s < 60:
        return "just now"
    if s < 3600:
        return f"{s // 60} min ago"
    if s < 86400:
        return f"{s // 3600} h ago"
    return f"{s // 86400} d ago"


def _summary(e) -> str:
    parts = []
    for key, value in (e.target or {}).items():
        if isinstance(value, list) and len(value) > 6:
            value = f"[{len(value)} items]"
        parts.append(f"{key}={value}")
    for side, data in (("after", e.after),):
        types = (data or {}).get("types") if isinstance(data, dict) else None
        if isinstance(types, dict):
            names = [
                f"{k}:{v.get('name')}/{v.get('status')}"
                for k, v in list(types.items())[:4]
                if isinstance(v, dict)
            ]
            if names:
                parts.append(f"{side} " + ", ".join(names))
    return "; ".join(parts)[:300]


def _int(value: Any, what: str) -> int:
    """A number the reviewer picked or typed; a clear message when there is none."""
    text = "" if value is None else str(value).strip()
    if not text:
        raise ValueError(f"choose {what} first")
    try:
        return int(float(text.split()[0].lstrip("#")))
    except (ValueError, IndexError):
        raise ValueError(f"{what}: {text!r} is not a type id (pick one from the list)") from None


def _ok(message: str, type_ids: Sequence[int]) -> dict[str, Any]:
    return {"ok": True, "message": message, "type_ids": [int(t) for t in type_ids]}


def _fail(message: str, conflict: bool = False) -> dict[str, Any]:
    return {"ok": False, "message": message, "type_ids": [], "conflict": conflict}


#: The Types tab's actions: action name -> Views method (type, version, argument, regions,
#: actor) -> result.
_TYPE_ACTIONS = {
    "confirm": Views._confirm,
    "reject": Views._reject,
    "rename": Views._rename,
    "merge": Views._merge,
    "split": Views._split,
    "move": Views._move,
    "normal": Views._normal,
    "new_type": Views._new_type,
}
