"""The review web app (Gradio Blocks): upload, types, suggestions, map, image detail,
history and export. ``serve()`` is what ``protoatlas serve`` and ``app.py`` (Spaces) call.

Named API endpoints (``gradio_client``; see docs/webapp.md): ``upload_batch``,
``list_types``, ``type_detail``, ``type_action``, ``next_suggestion``,
``answer_suggestion``, ``refresh_suggestions``, ``retrain``, ``undo``, ``image_detail``,
``audit``, ``export``, ``delete_batch``.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from protoatlas.service import BackgroundRetrainer, StorageError, default_home
from webapp.access import AUTH_ENV, Access, NotAllowedError, Role, guard, needs, read
from webapp.assets import CSS, HEAD
from webapp.security import (
    Limits,
    RequireLogin,
    UploadError,
    md_escape,
    parse_auth,
    public_message,
    stage_upload,
)
from webapp.tabs import (
    BrowseTab,
    ExportTab,
    HistoryTab,
    ImageTab,
    MapTab,
    SuggestionsTab,
    TypesTab,
    UploadTab,
    browse_tab,
    export_holds,
    export_tab,
    history_tab,
    image_tab,
    map_tab,
    ordered,
    suggestions_tab,
    types_tab,
    upload_tab,
)
from webapp.views import TYPE_COLUMNS, BrowseFilter, Views, type_label
from webapp.workspaces import WorkspaceHost

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # the service imports torch: only for the annotations
    from protoatlas.service import UploadReport, WorkspaceService

STAGES = {
    "check": "Checking the images",
    "fit": "Learning what normal looks like",
    "detect": "Finding anomalies",
    "regions": "Cutting out anomalous regions",
    "types": "Discovering defect types",
    "assign": "Sorting into types",
    "store": "Saving to the workspace",
    "features": "Generating anomalies and reading their features",
    "train": "Training the refinement network",
    "calibrate": "Calibrating the refined threshold",
    "judge": "Comparing on held-out confirmed images",
    "done": "Done",
}
#: Engine jobs (uploads, retraining) share one concurrency group of size 1.
ENGINE = "engine"
#: Environment switch of the background retrain after each answer ("0": off).
AUTO_RETRAIN_ENV = "PROTOATLAS_AUTO_RETRAIN"
#: Seconds ``close()`` waits for a background retrain to finish.
RETRAIN_WAIT_S = 120.0


# ----------------------------------------------------------------------------- helpers
#: The number of types an upload may ask for (or "auto").
UPLOAD_CLUSTERS = (2, 50)


def _clusters_of(value: Any) -> int | str:
    """The upload form's "number of types": ``auto`` or a whole number in range."""
    text = str(value or "auto").strip().lower()
    if text == "auto":
        return "auto"
    try:
        k = int(float(text))
    except ValueError:
        raise gr.Error(
            f"Number of types: 'auto' or a whole number, not '{value}'", print_exception=False
        ) from None
    lo, hi = UPLOAD_CLUSTERS
    if not lo <= k <= hi:
        raise gr.Error(
            f"Number of types must be between {lo} and {hi} (or auto).", print_exception=False
        )
    return k


#: Length of the session id kept in an anonymous reviewer's name.
SESSION_TAG = 6


def _score_bound(value: Any, what: str) -> float | None:
    """A score bound as typed: empty -> no bound, else a number (a clear message if not)."""
    text = "" if value is None else str(value).strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise gr.Error(f"{what}: '{text}' is not a number", print_exception=False) from None


def _hf_user_of(request: gr.Request | None) -> str | None:
    """The Hugging Face OAuth user name of a request (None: not signed in, or no OAuth)."""
    try:
        info = request.request.session.get("oauth_info") or {}  # type: ignore[union-attr]
        user = (info.get("userinfo") or {}).get("preferred_username")
        return str(user) if user else None
    except Exception:  # no session middleware (OAuth off)
        log.debug("no login session", exc_info=True)
        return None


def actor_of(request: gr.Request | None) -> str:
    """The logged-in user, the Hugging Face OAuth user, or ``reviewer-<session>`` for an
    anonymous browser session (so that each session has its own undo), else "reviewer"."""
    if request is None:
        return "reviewer"
    name = getattr(request, "username", None)
    if name:
        return str(name)
    user = _hf_user_of(request)
    if user:
        return user
    session = str(getattr(request, "session_hash", None) or "")
    return f"reviewer-{session[:SESSION_TAG]}" if session else "reviewer"


def _gpu(fn: Callable) -> Callable:
    """ZeroGPU: run engine jobs under ``spaces.GPU`` when the package is importable and the
    Space runs on ZeroGPU hardware (``SPACES_ZERO_GPU``; elsewhere the decorator is a no-op
    anyway)."""
    if not os.environ.get("SPACES_ZERO_GPU"):
        return fn
    try:
        import spaces  # type: ignore[import-not-found]
    except ImportError:
        return fn
    return spaces.GPU(duration=int(os.environ.get("PROTOATLAS_GPU_SECONDS", "300")))(fn)


def _call_engine(fn: Callable, *args: Any, **kwargs: Any) -> Any:
    return fn(*args, **kwargs)


call_engine = _gpu(_call_engine)


def _msg(result: dict[str, Any]) -> str:
    mark = "✔" if result.get("ok") else "✖"
    return f"{mark} {md_escape(result.get('message', ''))}"


def _to_int(value: Any) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(float(str(value).split(":")[0].strip().lstrip("#")))
    except ValueError:
        return None


def _api_int(value: Any, field: str) -> int:
    """An API argument that must be a whole number; a clear error naming the field."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise gr.Error(f"{field} must be a whole number, not {value!r}", print_exception=False)
    try:
        number = float(value)
        if number != int(number):
            raise ValueError
        return int(number)
    except (ValueError, OverflowError):
        shown = value if len(str(value)) <= 40 else f"{str(value)[:40]}..."
        raise gr.Error(
            f"{field} must be a whole number, not {shown!r}", print_exception=False
        ) from None


def _ids(value: Any) -> list[int]:
    """Region ids from a list or a text like "12, 15 #17"."""
    if value is None:
        return []
    items = (
        value
        if isinstance(value, (list, tuple))
        else str(value).replace(";", ",").replace(" ", ",").split(",")
    )
    out = []
    for v in items:
        v = str(v).strip().lstrip("#")
        if v:
            try:
                out.append(int(float(v)))
            except ValueError:  # a clear message, and no traceback in the server log
                raise gr.Error(
                    f"'{v}' is not a region id (use numbers separated by commas)",
                    print_exception=False,
                ) from None
    return list(dict.fromkeys(out))


# ----------------------------------------------------------------------------- the app
class ReviewApp:
    """The Gradio Blocks over one :class:`~protoatlas.service.WorkspaceService`."""

    def __init__(
        self,
        service: WorkspaceService,
        *,
        limits: Limits | None = None,
        note: str | None = None,
        auth_on: bool = False,
        access: Access | None = None,
        auto_retrain: bool | None = None,
        workspaces: WorkspaceHost | None = None,
        base: str = "",
    ) -> None:
        self.service = service
        #: The other workspaces of the server (None: this one alone), and the relative
        #: path from this app's page to the server's root.
        self.workspaces = workspaces
        self.base = base
        #: Retrain in the background after every answered question (off on ZeroGPU, where
        #: the GPU is only lent inside a request; ``PROTOATLAS_AUTO_RETRAIN=0`` turns it off).
        self.auto_retrain = (
            auto_retrain
            if auto_retrain is not None
            else (
                os.environ.get(AUTO_RETRAIN_ENV, "1") != "0"
                and not os.environ.get("SPACES_ZERO_GPU")
            )
        )
        self.retrainer = BackgroundRetrainer(service, runner=call_engine, on_busy=self._retraining)
        self.views = Views(service)
        self.limits = limits or Limits.from_env()
        self.note = note
        self.auth_on = auth_on
        #: Who has which role (``webapp.access``); everyone is an admin without it.
        self.access = access or Access()
        self.staging = self.views.root / "uploads"
        self.staging.mkdir(parents=True, exist_ok=True)
        self.jobs_lock = threading.Lock()
        self.running: dict[str, str] = {}  # job id -> description (shown in the header)
        self.blocks = self._build()

    def close(self) -> None:
        """Stop the server and the background work (the service stays open)."""
        self.retrainer.wait(RETRAIN_WAIT_S)
        self.views.stop()
        if self.workspaces is not None and not self.base:  # the server's first workspace
            self.workspaces.close()
        self.blocks.close()

    # ---------------------------------------------------------------- header
    @read
    def header(self, request: gr.Request | None = None) -> str:
        svc = self.views.service
        batches = svc.batches()
        types = self.views.types()
        n_conf = sum(t.status == "confirmed" for t in types)
        n_images = sum(b.n_images for b in batches)
        who = actor_of(request)
        role = f" ({self.role_of(request).label})" if self.access.restricted else ""
        login = (
            f" · signed in as **{md_escape(who)}**{role} ([log out](logout))"
            if self.auth_on
            else (f" · {md_escape(who)}{role}" if role else "")
        )
        with self.jobs_lock:
            jobs = list(self.running.values())
        busy = f"  \n⏳ Running: {'; '.join(jobs)}" if jobs else ""
        note = f"  \n{self.note}" if self.note and not self.views.reviewed() else ""
        return (
            f"# ProtoAtlas\nWorkspace **{md_escape(svc.name)}** · {len(batches)} batch(es) · "
            f"{n_images} images · {len(types)} types ({n_conf} confirmed){login}"
            f"{busy}{note}"
        )

    # ---------------------------------------------------------------- types
    def panel(
        self, type_id: Any, order: str, show_rejected: bool, keep: list[int] | None = None
    ) -> list[Any]:
        """Everything on the Types tab, for the selected type (or the largest one): the
        values of ``TypesTab.PANEL``, in its order."""
        v = self.views
        types = v.types(include_rejected=bool(show_rejected))
        ids = [t.id for t in types]
        tid = _to_int(type_id)
        if tid not in ids:
            tid = ids[0] if ids else None
        cards = v.cards_html(types, selected=tid)
        table = v.types_table(types)
        choices = [(type_label(t), t.id) for t in types]
        if tid is None:
            return ordered(
                TypesTab.PANEL,
                cards=cards,
                table=table,
                type_dd=gr.update(choices=choices, value=None),
                type_md="No type selected.",
                gallery="",
                selection="",
                merge_dd=gr.update(choices=[], value=None),
                move_dd=gr.update(choices=[], value=None),
                seen={},
            )
        t = next(x for x in types if x.id == tid)
        members = v.type_members(tid, order or "representative")
        mids = {m.region_id for m in members}
        keep = [r for r in (keep or []) if r in mids]
        others = v.type_choices(exclude=tid)
        return ordered(
            TypesTab.PANEL,
            cards=cards,
            table=table,
            type_dd=gr.update(choices=choices, value=tid),
            type_md=v.type_header(t),
            gallery=v.members_html(members, keep, total=t.n_regions),
            selection=", ".join(str(r) for r in keep),
            merge_dd=gr.update(choices=others, value=None),
            move_dd=gr.update(choices=others, value=None),
            seen={"type_id": tid, "version": t.version},
        )

    def act(
        self,
        action: str,
        type_id: Any,
        argument: Any,
        selection: Any,
        seen: dict | None,
        order: str,
        show_rejected: bool,
        request: gr.Request | None,
    ) -> list[Any]:
        tid = _to_int(type_id)
        if tid is None and action != "undo":
            return [
                "✖ Pick a type first (click a card or use the Type list).",
                *self.panel(None, order, show_rejected),
            ]
        expected = None
        if seen and seen.get("type_id") == tid:
            expected = seen.get("version")
        arg = "" if argument is None else str(argument)
        result = self.views.type_action(
            tid or -1, action, arg, _ids(selection), expected, actor_of(request)
        )
        nxt = tid
        if result.get("ok") and action == "merge":
            nxt = _to_int(arg)
        return [_msg(result), *self.panel(nxt, order, show_rejected)]

    # ---------------------------------------------------------------- suggestions
    def question(self) -> list[Any]:
        """The next open question on the Suggestions tab: the values of
        ``SuggestionsTab.QUESTION``, in its order."""
        q = self.views.next_question()
        if q is None:
            return ordered(
                SuggestionsTab.QUESTION,
                question_md="### No open questions\nEvery question so far is answered. "
                "*Refresh questions* asks the model for new ones (after more "
                "review or an upload).",
                gallery="",
                sugg_id=None,
                label_dd=gr.update(choices=[], value=None, visible=False),
                label_btn=gr.update(visible=False),
                pick=gr.update(value="", visible=False),
                yes_btn=gr.update(visible=False),
                no_btn=gr.update(visible=False),
                name=gr.update(value="", visible=False),
            )
        label = q.kind == "label"
        return ordered(
            SuggestionsTab.QUESTION,
            question_md=q.markdown,
            gallery=self.views.question_grid(q, pickable=q.kind in ("confirm", "defect")),
            sugg_id=q.id,
            label_dd=gr.update(choices=q.choices, value=None, visible=label),
            label_btn=gr.update(visible=label),
            pick=gr.update(value="", visible=q.kind in ("confirm", "defect")),
            # a label question is answered with a type (or good), not yes / no / a name
            yes_btn=gr.update(visible=not label),
            no_btn=gr.update(visible=not label),
            name=gr.update(value="", visible=not label),
        )

    def answer(
        self,
        answer: Any,
        suggestion_id: Any,
        request: gr.Request | None,
        name: str | None = None,
        picked: list[int] | tuple = (),
    ) -> list[Any]:
        sid = _to_int(suggestion_id)
        if sid is None:
            return ["✖ No question is open.", *self.question()]
        result = self.learn(
            self.views.answer(sid, str(answer or ""), actor_of(request), name, picked), answer
        )
        return [_msg(result), *self.question()]

    def learn(self, result: dict[str, Any], answer: Any) -> dict[str, Any]:
        """After an applied answer (not a skip), retrain in the background when
        ``auto_retrain`` is on; says so in the result's message."""
        if not (
            self.auto_retrain and result.get("ok") and str(answer or "").strip().lower() != "skip"
        ):
            return result
        self.retrainer.request()
        result = dict(result)
        result["message"] = (
            f"{result.get('message', '')} The model learns from it in the "
            "background; the next questions follow the retrain."
        ).strip()
        return result

    def _retraining(self, busy: bool) -> None:
        with self.jobs_lock:
            if busy:
                self.running["auto-retrain"] = (
                    f"retraining in the background (since {dt.datetime.now():%H:%M:%S})"
                )
            else:
                self.running.pop("auto-retrain", None)

    def refresh_suggestions(self) -> dict[str, Any]:
        svc = self.service
        items = svc.refresh_suggestions()
        n = len(items) if items is not None else len(svc.open_suggestions())
        return {"ok": True, "message": f"{n} open question(s).", "n_open": n}

    def retrain(
        self, request: gr.Request | None, progress: gr.Progress | None = None
    ) -> dict[str, Any]:
        svc = self.service
        cb = self._progress(progress)
        with self._job("retraining"):
            version = call_engine(svc.retrain, actor=actor_of(request), progress=cb)
        self.views.warm_in_background()
        svc.refresh_suggestions()
        if version is None:
            return {
                "ok": True,
                "message": "Nothing new to learn from yet (confirm, name or "
                "correct some types first).",
                "model_version": None,
            }
        return {
            "ok": True,
            "message": f"Retrained on every decision so far: model version {version}.",
            "model_version": version,
        }

    def refine(self, request: gr.Request | None, progress: gr.Progress | None = None) -> dict:
        """Train a refined detector and report it against the one in force (no switch)."""
        svc = self.service
        cb = self._progress(progress)
        with self._job("refining the detector"):
            cand = call_engine(svc.refine_detector, progress=cb)
        verdict = (
            "It is better on every held-out figure: switch to it?"
            if cand.better
            else "It is not better on every held-out figure; you may still switch to it."
        )
        return {
            "ok": True,
            "message": f"Refined detector ready ({cand.seconds:.0f} s): {cand.summary()}. "
            + verdict,
            "candidate": cand.id,
        }

    def accept_refinement(self, request: gr.Request | None, candidate: str | None) -> dict:
        if not candidate:
            return {"ok": False, "message": "No refined detector waiting: refine first."}
        with self._job("switching the detector"):
            mv = call_engine(
                self.service.accept_refinement, str(candidate), actor=actor_of(request)
            )
        return {
            "ok": True,
            "message": f"Switched: model version {mv} uses the refined detector for the "
            "next batches (the stored maps stay as they were).",
        }

    def rollback_detector(self, request: gr.Request | None) -> dict:
        with self._job("rolling back the detector"):
            mv = call_engine(self.service.rollback_detector, actor=actor_of(request))
        return {"ok": True, "message": f"Rolled back: model version {mv}."}

    # ---------------------------------------------------------------- uploads
    def _job(self, what: str):
        app = self

        class _Ctx:
            def __enter__(self_inner):
                self_inner.key = f"{what}-{time.monotonic_ns()}"
                with app.jobs_lock:
                    app.running[self_inner.key] = f"{what} (since {dt.datetime.now():%H:%M:%S})"

            def __exit__(self_inner, *exc):
                with app.jobs_lock:
                    app.running.pop(self_inner.key, None)

        return _Ctx()

    @staticmethod
    def _progress(progress: gr.Progress | None) -> Callable[[str, float], None]:
        def cb(stage: str, fraction: float) -> None:
            if progress is not None:
                try:
                    progress(
                        float(min(max(fraction, 0.0), 1.0)),
                        desc=STAGES.get(stage, stage.capitalize()),
                    )
                except Exception:  # progress display must never break the job
                    log.debug("progress display failed", exc_info=True)

        return cb

    def upload(
        self,
        images: Any,
        normals: Any,
        prompt: str | None,
        clusters: Any,
        prior: str | None,
        batch_name: str | None,
        request: gr.Request | None,
        progress: gr.Progress | None = None,
    ) -> tuple[str, list[list[str]]]:
        started = time.perf_counter()
        k = _clusters_of(clusters)  # checked before anything is staged
        staged, staged_normals = self._stage(images, normals)
        notes: list[str] = []
        prompt = (prompt or "").strip() or None
        backend = self._prior_backend(prompt, prior, notes)
        name = (batch_name or "").strip() or (
            Path(staged.source).stem
            if staged.source and staged.source.suffix == ".zip"
            else f"upload {dt.datetime.now():%Y-%m-%d %H:%M}"
        )
        cb = self._progress(progress)
        cb("check", 0.0)
        try:
            with self._job(f"analysing '{name}'"):
                report = call_engine(
                    self.service.upload_batch,
                    staged.source,
                    staged_normals.source if staged_normals else None,
                    clusters=k,
                    prior=backend,
                    prompt=prompt,
                    actor=actor_of(request),
                    batch_name=name,
                    progress=cb,
                )
        except (ValueError, FileNotFoundError, ImportError, RuntimeError) as exc:
            raise gr.Error(
                f"Upload not analysed: {public_message(exc)}", print_exception=False
            ) from None
        finally:
            staged.close()
            if staged_normals:
                staged_normals.close()
        self.views.warm(gallery=0)
        self.views.warm_in_background()
        try:
            self.service.refresh_suggestions()
        except Exception as exc:  # suggestions are optional after an upload
            log.warning("questions not refreshed after an upload", exc_info=True)
            notes.append(f"Questions not refreshed: {exc}")
        skipped = [
            [s.name, s.reason]
            for s in list(staged.skipped)
            + (staged_normals.skipped if staged_normals else [])
            + list(report.skipped)
        ]
        return self._upload_summary(name, report, skipped, notes, started), skipped

    def _stage(self, images: Any, normals: Any) -> tuple[Any, Any]:
        """The uploaded images and known-good files, checked and staged; nothing stays
        staged when either is refused."""
        staged = staged_normals = None
        try:
            staged = stage_upload(
                images if isinstance(images, list) else [images] if images else [],
                self.staging,
                self.limits,
                "images",
            )
            staged_normals = stage_upload(
                normals if isinstance(normals, list) else [normals] if normals else [],
                self.staging,
                self.limits,
                "normals",
            )
        except UploadError as exc:
            if staged is not None:  # the images were staged, the normals refused
                staged.close()
            raise gr.Error(str(exc), print_exception=False) from None
        if staged is None:
            if staged_normals is not None:
                staged_normals.close()
            raise gr.Error(
                "Choose the images to analyse first: image files or one .zip.",
                print_exception=False,
            )
        return staged, staged_normals

    def _prior_backend(self, prompt: str | None, prior: str | None, notes: list[str]) -> str:
        """The object prior an upload uses: the one picked, else grounded-SAM when a prompt
        is given and its checkpoints are configured, else classical (saying why)."""
        backend = (prior or "auto").strip()
        if backend != "auto":
            return backend
        sam = self.service.config.prior
        if prompt and sam.sam_checkpoint and sam.groundingdino_checkpoint:
            return "grounded-sam"
        if prompt:
            notes.append(
                f"The prompt '{prompt}' was kept with the batch, but the "
                "classical object prior was used: grounded-SAM checkpoints "
                "are not configured on this server."
            )
        return "classical"

    def _upload_summary(
        self,
        name: str,
        report: UploadReport,
        skipped: list[list[str]],
        notes: list[str],
        started: float,
    ) -> str:
        mode = "discovered" if report.mode == "discover" else "sorted into the existing types"
        new = (
            ", ".join(md_escape(self.views.service.get_type(t).name) for t in report.new_type_ids)
            or "none"
        )
        return (
            f"### ✔ Batch '{md_escape(name)}' (#{report.batch_id}) {mode}\n"
            f"- {report.n_images} images analysed, {report.n_anomalous} flagged anomalous, "
            f"{report.n_regions} anomalous regions\n- new types: {new}\n"
            f"- {len(skipped)} file(s) skipped{' (see the table)' if skipped else ''}\n"
            f"- took {time.perf_counter() - started:.1f} s\n"
            + "".join(f"- {md_escape(n)}\n" for n in notes)
            + "\nOpen the **Types** tab to review."
        )

    # ---------------------------------------------------------------- map
    @read
    def map_selection(self, text: Any) -> tuple[Any, list[tuple[str, str]]]:
        """The lassoed regions' count and crops. A selection cleared (the map redrawn after
        an action) keeps the message, so that the action's outcome stays readable."""
        ids = _ids(text)
        if not ids:
            return gr.update(), []
        items = []
        for rid in ids[: self.views.screens.lasso_crops]:
            try:
                items.append((str(self.views.crop(rid)), f"#{rid}"))
            except Exception:  # a region deleted since the lasso: left out of the gallery
                log.warning("no crop for region %s", rid, exc_info=True)
        more = f" (showing {len(items)})" if len(ids) > len(items) else ""
        return f"**{len(ids)} region(s) selected**{more}", items

    def map_act(self, action: str, text: Any, argument: Any, request: gr.Request | None) -> str:
        ids = _ids(text)
        if not ids:
            return "✖ Select regions on the map first (lasso or box)."
        v = self.views
        if action == "move":
            dest = _to_int(argument)
            if dest is None:
                return "✖ Choose the type to move the selection to."
            first = v.service.get_type(dest)
            return _msg(v.type_action(first.id, "move", str(dest), ids, None, actor_of(request)))
        # new type / mark normal: anchor on the type of the first selected region
        result = v.selection_action(ids, action, str(argument or ""), actor_of(request))
        return _msg(result)

    # ---------------------------------------------------------------- image detail
    @read
    def image_pictures(self, image_id: Any) -> list[Any]:
        """The side-by-side pictures of the image shown (``ImageTab.PICTURES``), asked for
        after the viewer: the viewer does not wait for four PNGs."""
        iid = _to_int(image_id)
        if iid is None:
            return [gr.update() for _ in ImageTab.PICTURES]
        try:
            d = self.views.image_pictures(iid)
        except Exception as exc:
            raise gr.Error(f"Image {iid}: {exc}", print_exception=False) from None
        return ordered(ImageTab.PICTURES, **{k: d[k] for k in ImageTab.PICTURES})

    def image(self, image_id: Any, pictures: bool = True) -> list[Any]:
        """One image on the Image tab: the values of ``ImageTab.DETAIL``, in its order
        (without ``pictures`` the side-by-side ones are cleared: ``image_pictures`` next)."""
        iid = _to_int(image_id)
        if iid is None:
            raise gr.Error("Choose an image (or type its id).", print_exception=False)
        try:
            d = self.views.image_detail(iid, pictures=pictures)
        except Exception as exc:
            raise gr.Error(f"Image {iid}: {exc}", print_exception=False) from None
        return ordered(
            ImageTab.DETAIL,
            summary=d["summary"],
            original=d["original"],
            heat=d["heat"],
            regions=d["regions"],
            prior=d["prior"],
            table=d["rows"],
            viewer=d["viewer"],
        )

    # ---------------------------------------------------------------- build
    def _build(self) -> gr.Blocks:
        """Lays out the tabs, then wires them in one fixed order (the order of the events
        gives the undocumented endpoints their names)."""
        with gr.Blocks(title="ProtoAtlas review", fill_width=True) as blocks:
            with gr.Row():
                with gr.Column(scale=3):
                    header = gr.Markdown(elem_id="pa-header")
                if self.workspaces is not None:
                    self._workspace_controls(blocks)
            with gr.Tabs(selected="types") as tabs:
                types = types_tab()
                suggestions = suggestions_tab()
                upload = upload_tab(self.limits)
                map_ = map_tab()
                browse = browse_tab()
                image = image_tab()
                history = history_tab()
                export = export_tab()

            # every event that refreshes the Types tab runs this (its endpoints: panel, ...)
            @read
            def panel(type_id, order_v, rejected, sel=None):
                return self.panel(type_id, order_v, rejected, sel)

            @read
            def on_load(request: gr.Request):
                return [self.header(request), *self.panel(None, "representative", False)]

            blocks.load(on_load, outputs=[header, *types.outputs()], api_visibility="undocumented")
            # the header (counts, running analyses) follows other sessions' work
            gr.Timer(15).tick(
                self.header,
                outputs=[header],
                api_visibility="undocumented",
                show_progress="hidden",
                queue=False,
            )
            self._wire_types(types, panel, header, tabs, image)
            self._wire_suggestions(suggestions, header)
            self._suggestions_api()
            self._wire_upload(upload, panel, header, types)
            self._wire_map(map_)
            self._wire_image(image)
            self._wire_browse(browse, tabs, image)
            self._wire_history(history)
            self._wire_export(export)
            types.tab.select(
                panel, inputs=types.inputs(), outputs=types.outputs(), api_visibility="undocumented"
            )
        #: handlers per role; every handler that acts is checked against the caller's role
        self.handler_roles = guard(blocks, self.check_role)
        return blocks

    # ---- Roles
    def role_of(self, request: gr.Request | None) -> Role:
        """The caller's role (``webapp.access``)."""
        if request is None:
            return Role.ADMIN if not self.access.restricted else Role.VIEWER
        login = getattr(request, "username", None)
        return self.access.role(str(login) if login else None, _hf_user_of(request))

    def check_role(self, request: gr.Request | None, needed: Role) -> None:
        """Raise a clear error when the caller's role is below ``needed``; nothing runs."""
        role = self.role_of(request)
        if role >= needed:
            return
        who = actor_of(request)
        log.info("refused: %s (%s) needs %s", who, role.label, needed.label)
        what = {
            Role.REVIEWER: "reviewing (confirm, reject, rename, merge, split, move, answer, undo)",
            Role.ADMIN: "uploads, retraining, exports and new workspaces",
        }[needed]
        raise NotAllowedError(
            f"{who} is a {role.label}: {what} need the {needed.label} role. Ask an admin "
            f"(roles are set in {AUTH_ENV}).",
            print_exception=False,
        )

    # ---- Workspaces
    def _workspace_controls(self, blocks: gr.Blocks) -> None:
        """The workspace list (choosing one opens it) and a box to create a new one."""
        host = self.workspaces
        assert host is not None
        here = self.service.root.name
        with gr.Column(scale=2, min_width=380):
            with gr.Row(elem_id="pa-ws"):
                pick = gr.Dropdown(
                    label="Workspace",
                    show_label=False,
                    container=False,
                    choices=host.choices(self.base),
                    value=host.href(here, self.base),
                    elem_id="pa-ws-pick",
                    interactive=True,
                    scale=3,
                    min_width=120,
                )
                name = gr.Textbox(
                    placeholder="new workspace",
                    show_label=False,
                    container=False,
                    max_lines=1,
                    scale=3,
                    min_width=120,
                    elem_id="pa-ws-name",
                )
                create = gr.Button(
                    "Create", size="sm", scale=1, min_width=70, elem_id="pa-ws-create"
                )
            go = gr.Textbox(visible=False)
        navigate = "(url) => { if (url) window.location.assign(url); return url; }"

        @read
        def fresh_list():
            return gr.update(choices=host.choices(self.base), value=host.href(here, self.base))

        blocks.load(fresh_list, outputs=[pick], api_visibility="undocumented", queue=False)
        pick.input(None, inputs=[pick], js=navigate)

        @needs(Role.ADMIN)
        def create_workspace(value, request: gr.Request):
            """Creates a workspace of this server's home folder and opens it."""
            try:
                made = host.create(value)
            except (ValueError, StorageError) as exc:
                raise gr.Error(str(exc), print_exception=False) from None
            log.info("workspace %s created by %s", made, actor_of(request))
            return host.href(made, self.base)

        create.click(
            create_workspace, inputs=[name], outputs=[go], api_name="create_workspace"
        ).success(None, inputs=[go], js=navigate)
        name.submit(
            create_workspace, inputs=[name], outputs=[go], api_visibility="undocumented"
        ).success(None, inputs=[go], js=navigate)

    # ---- Types
    def _wire_types(
        self, t: TypesTab, panel: Callable, header: gr.Markdown, tabs: gr.Tabs, image: ImageTab
    ) -> None:
        v = self.views

        @read
        def list_types() -> dict[str, Any]:
            """Every type of the workspace with members (rejected ones too, not merged or
            emptied ones), as a table: {"headers": [id, name, status, regions, images, confidence],
            "data": [[...], ...]}."""
            return {"headers": TYPE_COLUMNS, "data": v.types_table()}

        gr.api(list_types, api_name="list_types")

        @read
        def refresh(type_id, order_v, rejected, request: gr.Request):
            return [self.header(request), *self.panel(type_id, order_v, rejected)]

        t.refresh_btn.click(
            refresh,
            inputs=t.inputs(),
            outputs=[header, *t.outputs()],
            api_visibility="undocumented",
        )
        for trigger in (t.type_dd.input, t.order.change, t.show_rejected.change):
            trigger(panel, inputs=t.inputs(), outputs=t.outputs(), api_visibility="undocumented")

        @read
        def picked(value, order_v, rejected):
            return self.panel(_to_int(value), order_v, rejected)

        t.pick.change(
            picked,
            inputs=[t.pick, t.order, t.show_rejected],
            outputs=t.outputs(),
            api_visibility="undocumented",
        )

        @read
        def select_all(type_id, order_v):
            """Select every member of the type, the ones beyond this page too."""
            tid = _to_int(type_id)
            if tid is None:
                return gr.update(), "", "✖ Pick a type first."
            ids = v.all_member_ids(tid)
            members = v.type_members(tid, order_v or "representative")
            note = f"✔ All {len(ids)} members selected"
            if len(ids) > len(members):
                note += f" ({len(members)} shown)"
            return (
                v.members_html(members, ids, total=len(ids)),
                ", ".join(str(r) for r in ids),
                note + ".",
            )

        t.sel_all.click(
            select_all,
            inputs=[t.type_dd, t.order],
            outputs=[t.gallery, t.selection, t.msg],
            api_visibility="undocumented",
        )
        t.sel_none.click(None, js="() => window.paSelectAll(false)", api_visibility="undocumented")
        self._wire_type_actions(t, header)
        self._wire_open_image(t, tabs, image)
        self._types_api()

    def _wire_type_actions(self, t: TypesTab, header: gr.Markdown) -> None:
        """The action buttons under the members (each refreshes the header after)."""

        @read
        def clear_if_applied(message):
            """The name box empties once its name was used (it kept the old name)."""
            return "" if str(message or "").startswith("✔") else gr.update()

        def bind(button, action, argument):
            @needs(Role.REVIEWER)
            def fn(type_id, arg, sel, seen_v, order_v, rejected, request: gr.Request):
                return self.act(action, type_id, arg, sel, seen_v, order_v, rejected, request)

            event = button.click(
                fn,
                inputs=[t.type_dd, argument, t.selection, t.seen, t.order, t.show_rejected],
                outputs=[t.msg, *t.outputs()],
                api_visibility="undocumented",
            ).then(self.header, outputs=[header], api_visibility="undocumented")
            if action in ("rename", "new_type"):
                event.then(
                    clear_if_applied,
                    inputs=[t.msg],
                    outputs=[t.rename_tb],
                    api_visibility="undocumented",
                    queue=False,
                )

        bind(t.confirm_btn, "confirm", t.rename_tb)
        bind(t.reject_btn, "reject", t.rename_tb)
        bind(t.undo_btn, "undo", t.rename_tb)
        bind(t.rename_btn, "rename", t.rename_tb)
        bind(t.newtype_btn, "new_type", t.rename_tb)
        bind(t.merge_btn, "merge", t.merge_dd)
        bind(t.split_btn, "split", t.parts)
        bind(t.move_btn, "move", t.move_dd)
        bind(t.normal_btn, "normal", t.rename_tb)

    def _wire_open_image(self, t: TypesTab, tabs: gr.Tabs, image: ImageTab) -> None:
        """ "Open image" (and a double-click on a member) shows its image on the Image tab."""
        v = self.views

        @read
        def open_image(value):
            ids = _ids(str(value or "").split(":")[0])
            if not ids:
                raise gr.Error("Select an image in the gallery first.", print_exception=False)
            try:
                image_id = v.region(ids[0])[0]
            except LookupError as exc:
                raise gr.Error(str(exc), print_exception=False) from None
            return (
                gr.Tabs(selected="image"),
                gr.update(choices=v.batch_images(), value=image_id),
                *self.image(image_id, pictures=False),
            )

        outputs = [tabs, image.image_dd, *image.outputs()]
        for event in (
            t.open_img.click(
                open_image, inputs=[t.selection], outputs=outputs, api_visibility="undocumented"
            ),
            t.open_box.change(
                open_image, inputs=[t.open_box], outputs=outputs, api_visibility="undocumented"
            ),
        ):
            self._then_pictures(event, image)

    def _types_api(self) -> None:
        """The named endpoints of the Types tab's data and actions."""
        v = self.views

        @read
        def type_detail(type_id: int) -> dict[str, Any]:
            """One type: its summary and its members (region id, image id, image name,
            confidence, source), representative first."""
            try:
                t = v.service.get_type(_api_int(type_id, "type_id"))
            except (LookupError, StorageError) as exc:
                raise gr.Error(str(exc), print_exception=False) from None
            members = v.type_members(t.id, "representative")
            return {
                "id": t.id,
                "name": t.name,
                "status": t.status,
                "version": t.version,
                "regions": t.n_regions,
                "images": t.n_images,
                "confidence": t.mean_confidence,
                "members": [
                    {
                        "region_id": m.region_id,
                        "image_id": m.image_id,
                        "image": m.image_name,
                        "confidence": m.confidence,
                        "source": m.source,
                    }
                    for m in members
                ],
            }

        gr.api(type_detail, api_name="type_detail")

        @needs(Role.REVIEWER)
        def type_action(
            type_id: int,
            action: str,
            argument: str = "",
            region_ids: list[int] | None = None,
            expected_version: int = -1,
            request: gr.Request = None,
        ) -> dict[str, Any]:
            """Apply a reviewer action to a type. action: confirm | reject | rename
            (argument = new name) | merge (argument = id of the type to merge into) |
            split (argument = parts, or region_ids = the part to move out) | move
            (region_ids to argument = type id) | normal (region_ids) | new_type
            (region_ids, argument = name) | undo. expected_version: the type version
            you saw (-1 = current). Returns {ok, message, type_ids, conflict}."""
            if not isinstance(region_ids, (list, tuple, type(None))):
                raise gr.Error("region_ids must be a list of region ids", print_exception=False)
            return v.type_action(
                _api_int(type_id, "type_id"),
                str(action or ""),
                "" if argument is None else str(argument),
                [_api_int(r, "region_ids") for r in region_ids or []],
                _api_int(expected_version, "expected_version"),
                actor_of(request),
            )

        gr.api(type_action, api_name="type_action")

        @needs(Role.REVIEWER)
        def undo(request: gr.Request = None) -> dict[str, Any]:
            """Undo the last reviewer action of the workspace."""
            return v.type_action(-1, "undo", actor=actor_of(request))

        gr.api(undo, api_name="undo")

    # ---- Suggestions
    def _wire_suggestions(self, s: SuggestionsTab, header: gr.Markdown) -> None:
        v = self.views
        shown = s.outputs()

        @read
        def fresh_header(request: gr.Request):
            return self.header(request)

        @read
        def show_question():
            return self.question()

        s.tab.select(show_question, outputs=shown, api_visibility="undocumented")
        s.next_btn.click(show_question, outputs=shown, api_visibility="undocumented")

        def answer_with(value):
            @needs(Role.REVIEWER)
            def fn(sid, name, picked, request: gr.Request):
                return self.answer(
                    value,
                    sid,
                    request,
                    name if value == "yes" else None,
                    _ids(picked) if value != "skip" else (),
                )

            return fn

        for button, value in ((s.yes_btn, "yes"), (s.no_btn, "no"), (s.skip_btn, "skip")):
            button.click(
                answer_with(value),
                inputs=[s.sugg_id, s.name, s.pick],
                outputs=[s.msg, *shown],
                api_visibility="undocumented",
            ).then(read(lambda: ""), outputs=[s.name], api_visibility="undocumented").then(
                fresh_header, outputs=[header], api_visibility="undocumented", queue=False
            )

        @needs(Role.REVIEWER)
        def answer_label(type_id, sid, request: gr.Request):
            if type_id is None:
                return ["✖ Choose the type first.", *self.question()]
            return self.answer(str(type_id), sid, request)

        s.label_btn.click(
            answer_label,
            inputs=[s.label_dd, s.sugg_id],
            outputs=[s.msg, *shown],
            api_visibility="undocumented",
        ).then(fresh_header, outputs=[header], api_visibility="undocumented", queue=False)

        @needs(Role.REVIEWER)
        def undo_answer(request: gr.Request):
            return [_msg(v.type_action(-1, "undo", actor=actor_of(request))), *self.question()]

        s.undo_btn.click(undo_answer, outputs=[s.msg, *shown], api_visibility="undocumented").then(
            fresh_header, outputs=[header], api_visibility="undocumented", queue=False
        )

        @needs(Role.REVIEWER)
        def refresh_questions(request: gr.Request):
            return [_msg(self.refresh_suggestions()), *self.question()]

        s.refresh_btn.click(
            refresh_questions,
            outputs=[s.msg, *shown],
            api_visibility="undocumented",
            concurrency_id="suggest",
            concurrency_limit=1,
        )

        @needs(Role.ADMIN)
        def retrain_ui(request: gr.Request, progress=gr.Progress(track_tqdm=True)):
            return [_msg(self.retrain(request, progress)), *self.question()]

        s.retrain_btn.click(
            retrain_ui,
            outputs=[s.msg, *shown],
            api_visibility="undocumented",
            concurrency_id=ENGINE,
            concurrency_limit=1,
        )

        @needs(Role.ADMIN)
        def refine_ui(request: gr.Request, progress=gr.Progress(track_tqdm=True)):
            result = self.refine(request, progress)
            return _msg(result), result.get("candidate"), gr.update(visible=True)

        s.refine_btn.click(
            refine_ui,
            outputs=[s.refine_msg, s.candidate, s.switch_btn],
            api_visibility="undocumented",
            concurrency_id=ENGINE,
            concurrency_limit=1,
        )

        @needs(Role.ADMIN)
        def switch_ui(candidate, request: gr.Request):
            result = self.accept_refinement(request, candidate)
            return _msg(result), None, gr.update(visible=False)

        s.switch_btn.click(
            switch_ui,
            inputs=[s.candidate],
            outputs=[s.refine_msg, s.candidate, s.switch_btn],
            api_visibility="undocumented",
            concurrency_id=ENGINE,
            concurrency_limit=1,
        )

        @needs(Role.ADMIN)
        def rollback_ui(request: gr.Request):
            return _msg(self.rollback_detector(request))

        s.rollback_btn.click(
            rollback_ui,
            outputs=[s.refine_msg],
            api_visibility="undocumented",
            concurrency_id=ENGINE,
            concurrency_limit=1,
        )

    def _suggestions_api(self) -> None:
        """The named endpoints of the question queue and of retraining."""
        v = self.views

        @read
        def next_suggestion() -> dict[str, Any]:
            """The next open question (highest score first): {id, kind, question, reason,
            target, images, answers}; id is null when the queue is empty."""
            q = v.next_question()
            if q is None:
                return {
                    "id": None,
                    "kind": None,
                    "question": None,
                    "reason": None,
                    "target": {},
                    "images": [],
                    "answers": [],
                }
            return q.as_dict()

        gr.api(next_suggestion, api_name="next_suggestion")

        @needs(Role.REVIEWER)
        def answer_suggestion(
            suggestion_id: int,
            answer: str,
            name: str = "",
            region_ids: list[int] | None = None,
            request: gr.Request = None,
        ) -> dict[str, Any]:
            """Answer a question: "yes", "no", "skip", or (label questions) a type id, a
            type name or "good". name (optional): the name a "yes" gives the type.
            region_ids (optional, with yes or no to "is T one type?"): the members that
            do not belong; they move out into a new type first. The service applies the
            answer and writes the audit. Returns {ok, message, applied}."""
            if not isinstance(region_ids, (list, tuple, type(None))):
                raise gr.Error("region_ids must be a list of region ids", print_exception=False)
            answer = "" if answer is None else str(answer)
            return self.learn(
                v.answer(
                    _api_int(suggestion_id, "suggestion_id"),
                    answer,
                    actor_of(request),
                    "" if name is None else str(name),
                    [_api_int(r, "region_ids") for r in region_ids or []],
                ),
                answer,
            )

        gr.api(answer_suggestion, api_name="answer_suggestion")

        @needs(Role.REVIEWER)
        def refresh_suggestions_api(request: gr.Request = None) -> dict[str, Any]:
            """Recompute the question queue from the current workspace."""
            return self.refresh_suggestions()

        gr.api(
            refresh_suggestions_api,
            api_name="refresh_suggestions",
            concurrency_id="suggest",
            concurrency_limit=1,
        )

        @needs(Role.ADMIN)
        def retrain(request: gr.Request = None) -> dict[str, Any]:
            """Retrain the model on every decision so far (one engine job at a time)."""
            return self.retrain(request)

        gr.api(retrain, api_name="retrain", concurrency_id=ENGINE, concurrency_limit=1)

        @needs(Role.ADMIN)
        def refine_detector(request: gr.Request = None) -> dict[str, Any]:
            """Train a refined detector (PRN) and compare it with the one in force on
            held-out confirmed images: {ok, message, candidate}; nothing switches."""
            return self.refine(request)

        gr.api(
            refine_detector, api_name="refine_detector", concurrency_id=ENGINE, concurrency_limit=1
        )

        @needs(Role.ADMIN)
        def accept_refinement(candidate: str, request: gr.Request = None) -> dict[str, Any]:
            """Switch to the refined detector ``candidate`` (from refine_detector)."""
            return self.accept_refinement(request, candidate)

        gr.api(
            accept_refinement,
            api_name="accept_refinement",
            concurrency_id=ENGINE,
            concurrency_limit=1,
        )

        @needs(Role.ADMIN)
        def rollback_detector(request: gr.Request = None) -> dict[str, Any]:
            """Put back the detector from before the last switch."""
            return self.rollback_detector(request)

        gr.api(
            rollback_detector,
            api_name="rollback_detector",
            concurrency_id=ENGINE,
            concurrency_limit=1,
        )

    # ---- Upload
    def _wire_upload(
        self, u: UploadTab, panel: Callable, header: gr.Markdown, types: TypesTab
    ) -> None:
        """An upload, then the Types tab and the header show the new batch."""

        @needs(Role.ADMIN)
        def upload_batch(
            images,
            normals,
            prompt,
            clusters,
            prior,
            name,
            request: gr.Request,
            progress=gr.Progress(track_tqdm=False),  # stage names only, no raw tqdm bars
        ):
            return self.upload(images, normals, prompt, clusters, prior, name, request, progress)

        @read
        def busy(running: bool):
            label = "Analysing… (reviewing goes on meanwhile)" if running else "Upload and analyse"
            return gr.update(interactive=not running, value=label)

        # the button is disabled while its batch runs (a second click would queue a second
        # analysis of the same files); .then runs after a failed upload too
        u.button.click(
            read(lambda: busy(True)), outputs=[u.button], api_visibility="undocumented", queue=False
        ).then(
            upload_batch,
            inputs=[u.images, u.normals, u.prompt, u.clusters, u.prior, u.name],
            outputs=[u.report, u.skipped],
            api_name="upload_batch",
            concurrency_id=ENGINE,
            concurrency_limit=1,
            show_progress_on=[u.report],
        ).then(
            read(lambda: busy(False)),
            outputs=[u.button],
            api_visibility="undocumented",
            queue=False,
        ).then(
            panel, inputs=types.inputs(), outputs=types.outputs(), api_visibility="undocumented"
        ).then(self.header, outputs=[header], api_visibility="undocumented")

        @read
        def batch_list():
            return gr.update(choices=self.views.batch_choices(), value=None), False

        u.tab.select(
            batch_list, outputs=[u.del_batch, u.del_confirm], api_visibility="undocumented"
        )

        @needs(Role.ADMIN)
        def delete_batch(batch: str, confirmed: bool, request: gr.Request = None) -> dict[str, Any]:
            """Delete a batch (its id; ``confirmed`` must be true): its images, regions and
            the decisions on them. Not undoable; a snapshot from before it is kept."""
            return self.views.delete_batch(batch, bool(confirmed), actor_of(request))

        @needs(Role.ADMIN)
        def delete_ui(batch, confirmed, request: gr.Request):
            result = delete_batch(batch, confirmed, request)
            choices = gr.update(choices=self.views.batch_choices(), value=None)
            return _msg(result), choices, False

        u.del_btn.click(
            delete_ui,
            inputs=[u.del_batch, u.del_confirm],
            outputs=[u.del_msg, u.del_batch, u.del_confirm],
            api_visibility="undocumented",
            concurrency_id=ENGINE,
            concurrency_limit=1,
        ).then(
            panel, inputs=types.inputs(), outputs=types.outputs(), api_visibility="undocumented"
        ).then(self.header, outputs=[header], api_visibility="undocumented")
        gr.api(delete_batch, api_name="delete_batch", concurrency_id=ENGINE, concurrency_limit=1)

    # ---- Map
    def _wire_map(self, m: MapTab) -> None:
        v = self.views

        @read
        def draw_map():
            fig = v.map_figure()
            return fig, gr.update(choices=v.type_choices(), value=None)

        m.button.click(draw_map, outputs=[m.plot, m.move_dd], api_visibility="undocumented")
        m.tab.select(draw_map, outputs=[m.plot, m.move_dd], api_visibility="undocumented")
        m.pick.change(
            self.map_selection,
            inputs=[m.pick],
            outputs=[m.info, m.gallery],
            api_visibility="undocumented",
            trigger_mode="always_last",
        )

        def map_action(action):
            @needs(Role.REVIEWER)
            def fn(text, arg, request: gr.Request):
                message = self.map_act(action, text, arg, request)
                fig = v.map_figure()
                return message, fig, gr.update(choices=v.type_choices(), value=None)

            return fn

        for button, action, arg in (
            (m.move_btn, "move", m.move_dd),
            (m.new_btn, "new_type", m.new_name),
            (m.normal_btn, "normal", m.new_name),
        ):
            button.click(
                map_action(action),
                inputs=[m.pick, arg],
                outputs=[m.info, m.plot, m.move_dd],
                api_visibility="undocumented",
            )

    # ---- Image, History, Export
    def _wire_image(self, i: ImageTab) -> None:
        v = self.views

        @read
        def image_detail(image_id):
            return self.image(image_id)

        i.show_btn.click(
            image_detail, inputs=[i.image_dd], outputs=i.outputs(), api_name="image_detail"
        )

        @read
        def picked_image(image_id):
            """A pick in the list shows the image; a half-typed id waits for *Show* (an
            error toast on every keystroke, then another on the click, was one too many)."""
            if _to_int(image_id) is None:
                return [gr.update() for _ in i.outputs()]
            return self.image(image_id, pictures=False)

        self._then_pictures(
            i.image_dd.input(
                picked_image,
                inputs=[i.image_dd],
                outputs=i.outputs(),
                api_visibility="undocumented",
            ),
            i,
        )

        def step(delta):
            @read
            def fn(image_id):
                """The previous / next image of the picker's order (keys p / n)."""
                target = v.step_image(image_id, delta)
                if target is None:
                    return [gr.update() for _ in range(1 + len(i.outputs()))]
                return (gr.update(value=target), *self.image(target, pictures=False))

            return fn

        for button, delta in ((i.prev_btn, -1), (i.next_btn, 1)):
            event = button.click(
                step(delta),
                inputs=[i.image_dd],
                outputs=[i.image_dd, *i.outputs()],
                api_visibility="undocumented",
                concurrency_id="image-step",
                concurrency_limit=1,
            )
            self._then_pictures(event, i)
        i.tab.select(
            read(lambda: gr.update(choices=v.batch_images())),
            outputs=[i.image_dd],
            api_visibility="undocumented",
        )

    def _then_pictures(self, event: Any, i: ImageTab) -> None:
        """After ``event`` showed an image's viewer, its side-by-side pictures."""
        event.success(
            self.image_pictures,
            inputs=[i.image_dd],
            outputs=i.pictures(),
            api_visibility="undocumented",
            show_progress="hidden",
        )

    def browse(
        self,
        batch: Any,
        type_id: Any,
        flagged: Any,
        reviewed: Any,
        lo: Any,
        hi: Any,
        sort: Any,
        page: Any,
    ) -> tuple[str, str, int]:
        """The Browse tab's count line, grid and page for these filters."""
        f = BrowseFilter(
            batch_id=_to_int(batch),
            type_id=_to_int(type_id),
            flagged=str(flagged or "all"),
            reviewed=str(reviewed or "all"),
            min_score=_score_bound(lo, "Score from"),
            max_score=_score_bound(hi, "Score to"),
            sort=str(sort or "score, highest first"),
        )
        return self.views.browse(f, int(page or 0))

    def _wire_browse(self, b: BrowseTab, tabs: gr.Tabs, image: ImageTab) -> None:
        v = self.views
        shown = [b.count, b.grid, b.page]

        @read
        def first_page(*filters):
            return self.browse(*filters, 0)

        def step(delta):
            @read
            def fn(*args):
                *filters, page = args
                return self.browse(*filters, int(page or 0) + delta)

            return fn

        @read
        def on_select():
            batches = [("every batch", "")] + [
                (f"{x.name} (#{x.id})", str(x.id)) for x in v.service.batches()
            ]
            types = [("any", ""), ("no type", "-1")] + [
                (type_label(t), str(t.id)) for t in v.types()
            ]
            count, grid, page = self.browse(
                "", "", "all", "all", None, None, "score, highest first", 0
            )
            return (
                gr.update(choices=batches, value=""),
                gr.update(choices=types, value=""),
                count,
                grid,
                page,
            )

        b.tab.select(on_select, outputs=[b.batch, b.type_dd, *shown], api_visibility="undocumented")
        # .input, not .change: the tab's own refresh of the lists must not fire them again;
        # one at a time, so that an older filter's answer never lands after a newer one's
        for control in b.filters():
            control.input(
                first_page,
                inputs=b.filters(),
                outputs=shown,
                api_visibility="undocumented",
                trigger_mode="always_last",
                concurrency_id="browse",
                concurrency_limit=1,
            )
        b.prev_btn.click(
            step(-1), inputs=[*b.filters(), b.page], outputs=shown, api_visibility="undocumented"
        )
        b.next_btn.click(
            step(1), inputs=[*b.filters(), b.page], outputs=shown, api_visibility="undocumented"
        )

        @read
        def open_image(value):
            image_id = _to_int(str(value or "").split(":")[0])
            if image_id is None:
                return [gr.update() for _ in range(2 + len(image.outputs()))]
            return (
                gr.Tabs(selected="image"),
                gr.update(choices=v.batch_images(), value=image_id),
                *self.image(image_id, pictures=False),
            )

        self._then_pictures(
            b.open_box.change(
                open_image,
                inputs=[b.open_box],
                outputs=[tabs, image.image_dd, *image.outputs()],
                api_visibility="undocumented",
            ),
            image,
        )

    def _wire_history(self, h: HistoryTab) -> None:
        v = self.views

        @read
        def audit(actor, action, type_id, tz="", request: gr.Request = None):
            """The audit log, newest first, filtered by reviewer, action and type (an id or
            a name; empty: every type); times in the time zone ``tz`` (an IANA name, the
            browser's; empty: UTC). The last column says which rows the caller may undo."""
            try:
                tid = v.type_filter(type_id)
            except ValueError as exc:
                raise gr.Error(str(exc), print_exception=False) from None
            return v.audit_rows(
                actor or None, action or None, tid, me=actor_of(request), tz=tz or None
            )

        @read
        def audit_tab(tz, request: gr.Request):
            actors, actions = v.audit_filters()
            return (
                gr.update(choices=[""] + actors),
                gr.update(choices=[""] + actions),
                v.audit_rows(me=actor_of(request), tz=tz or None),
            )

        h.button.click(
            audit, inputs=[h.actor, h.action, h.type_id, h.tz], outputs=[h.table], api_name="audit"
        )
        h.tab.select(
            audit_tab,
            inputs=[h.tz],
            outputs=[h.actor, h.action, h.table],
            api_visibility="undocumented",
        )

        @needs(Role.REVIEWER)
        def undo_mine(actor_v, action_v, type_v, tz, request: gr.Request):
            """Undo this reviewer's last action from the History tab, then show the log."""
            message = _msg(v.type_action(-1, "undo", actor=actor_of(request)))
            return message, audit(actor_v, action_v, type_v, tz, request)

        h.undo_btn.click(
            undo_mine,
            inputs=[h.actor, h.action, h.type_id, h.tz],
            outputs=[h.msg, h.table],
            api_visibility="undocumented",
        )

        @read
        def pick_row(table, evt: gr.SelectData):
            """A click on a row picks its entry; the button says whether it can be undone."""
            try:
                row = table.iloc[evt.index[0]] if hasattr(table, "iloc") else table[evt.index[0]]
                seq, state = str(row[0]), str(row[len(row) - 1])
            except (IndexError, KeyError, TypeError):
                return gr.update(), gr.update()
            return seq, gr.update(
                value=f"↶ Undo #{seq}" if state == "possible" else f"#{seq}: {state or 'not yours'}"
            )

        h.table.select(
            pick_row,
            inputs=[h.table],
            outputs=[h.picked, h.undo_row_btn],
            api_visibility="undocumented",
        )

        @needs(Role.REVIEWER)
        def undo_row(seq, actor_v, action_v, type_v, tz, request: gr.Request):
            """Undo the picked history entry (the reviewer's own, while nothing later
            touched its types), then show the log."""
            if not str(seq or "").strip():
                return "Pick a row (or type its #) first.", audit(
                    actor_v, action_v, type_v, tz, request
                )
            message = _msg(v.type_action(-1, "undo", str(seq), actor=actor_of(request)))
            return message, audit(actor_v, action_v, type_v, tz, request)

        h.undo_row_btn.click(
            undo_row,
            inputs=[h.picked, h.actor, h.action, h.type_id, h.tz],
            outputs=[h.msg, h.table],
            api_visibility="undocumented",
        )

    def _wire_export(self, e: ExportTab) -> None:
        v = self.views

        @needs(Role.ADMIN)
        def export(fmt, batch="", types=None, request: gr.Request = None):
            """Export a format (one batch: its id; some types: their ids or names; empty:
            everything, as with the format alone)."""
            try:
                return str(v.export(fmt or "csv", batch_id=batch, type_ids=types))
            except (ValueError, LookupError) as exc:
                raise gr.Error(str(exc), print_exception=False) from None

        @read
        def export_tab_selected():
            batches, types = v.export_scopes()
            return gr.update(choices=batches), gr.update(choices=types)

        e.button.click(
            export, inputs=[e.fmt, e.batch, e.types], outputs=[e.file], api_name="export"
        )
        e.fmt.change(
            read(export_holds), inputs=[e.fmt], outputs=[e.holds], api_visibility="undocumented"
        )
        e.tab.select(export_tab_selected, outputs=[e.batch, e.types], api_visibility="undocumented")


# ----------------------------------------------------------------------------- launching
def _picture_routes(views: Views) -> list[Route]:
    """``pa/thumb/<region>.jpg`` (cards, map hovers), ``pa/crop/<region>.jpg`` (the members
    grid), ``pa/image/<image>.jpg`` (the Browse grid) and the viewer's layers,
    ``pa/full/<image>.jpg``, ``pa/heat/<image>.png`` and ``pa/outline/<image>.png``:
    rendered once where they cannot change, then served from the workspace's caches."""

    def route(path: str, render: Callable[[int], bytes], media: str = "image/jpeg") -> Route:
        async def endpoint(request: Request) -> Response:
            name = request.path_params["name"]
            try:
                key = int(name.split(".")[0])
                data = await run_in_threadpool(render, key)
            except (ValueError, LookupError, OSError):
                return JSONResponse({"detail": "no such picture"}, status_code=404)
            return Response(
                data, media_type=media, headers={"Cache-Control": "private, max-age=86400"}
            )

        return Route(path, endpoint)

    r = views.renderer
    return [
        route("/pa/thumb/{name}", views.thumb),
        route("/pa/crop/{name}", lambda rid: views.crop(rid).read_bytes()),
        route("/pa/image/{name}", views.image_thumb),
        route("/pa/full/{name}", r.full_bytes),
        # the page asks for these with a stamp of the regions' state (?v=...)
        route("/pa/heat/{name}", r.heat_layer_bytes, "image/png"),
        route("/pa/outline/{name}", r.outline_layer_bytes, "image/png"),
    ]


def launch(
    service,
    *,
    host: str = "127.0.0.1",
    port: int | None = 7860,
    auth: list[tuple[str, str]] | None = None,
    access: Access | None = None,
    limits: Limits | None = None,
    note: str | None = None,
    quiet: bool = False,
    prevent_thread_lock: bool = False,
    max_threads: int = 40,
    auto_retrain: bool | None = None,
) -> tuple[ReviewApp, str]:
    """Build the app over ``service`` and start its server; returns (app, local URL).
    ``auth``: the login pairs (None: no login); ``access``: the roles (None: every
    logged-in user an admin).
    ``auto_retrain``: retrain in the background after each answer (None: on, unless
    ``PROTOATLAS_AUTO_RETRAIN=0`` or ZeroGPU)."""

    def make_app(svc, base: str) -> ReviewApp:
        return ReviewApp(
            svc,
            limits=limits,
            note=note if not base else None,
            auth_on=bool(auth),
            access=access,
            auto_retrain=auto_retrain,
            workspaces=hosting,
            base=base,
        )

    root = Path(service.root)
    hosting = WorkspaceHost(root.parent, root.name, config=service.config, make_app=make_app)
    app = make_app(service, "")
    blocks = app.blocks
    blocks.queue(default_concurrency_limit=8, max_size=200)
    app.views.warm_in_background()
    (root / "exports").mkdir(exist_ok=True)
    # what every workspace's Blocks share (the first one's launch, the others' mounts)
    options: dict[str, Any] = {
        "auth": auth,
        "auth_message": "ProtoAtlas: sign in to review." if auth else None,
        "show_error": True,
        "ssr_mode": False,
        "mcp_server": False,
        "max_file_size": f"{app.limits.max_file_mb}mb",
        "footer_links": ["api", "settings"],
        "theme": gr.themes.Soft(),
        "css": CSS,
        "head": HEAD,
    }
    _, url, _ = blocks.launch(
        server_name=host,
        server_port=port,
        prevent_thread_lock=prevent_thread_lock,
        quiet=quiet,
        max_threads=max_threads,
        allowed_paths=[str(app.views.renderer.cache_dir), str(root / "exports")],
        app_kwargs={
            "middleware": [Middleware(RequireLogin)],
            "routes": [*_picture_routes(app.views), hosting.open_route()],
        },
        **options,
    )
    hosting.server_app = blocks.server_app
    hosting.options = options
    hosting.routes = _picture_routes
    return app, url


def serve(
    home: str | os.PathLike | None = None,
    workspace: str = "default",
    host: str = "127.0.0.1",
    port: int = 7860,
    demo: bool = False,
    device: str | None = "auto",
    quiet: bool = False,
    block: bool = True,
) -> int:
    """Open (or create) the workspace, prepare the demo on first start, serve the app."""
    from protoatlas.service import WorkspaceService
    from webapp.demo import demo_config, prepare_demo

    t0 = time.perf_counter()
    home = Path(home) if home else default_home()
    home.mkdir(parents=True, exist_ok=True)
    auth = parse_auth(os.environ.get(AUTH_ENV))
    access = Access.from_env()
    config = demo_config(device) if demo else None
    service = WorkspaceService(
        home, workspace, config=config, device=None if demo else (device or "auto")
    )
    note = None
    if demo and not service.batches():

        def say(text: str) -> None:
            if not quiet:
                print(text, file=sys.stderr, flush=True)

        say(f"ProtoAtlas demo: first start, preparing the synthetic batch in {home} ...")
        report = prepare_demo(service, home, say=say)
        note = (
            f"Demo workspace: {report.n_images} synthetic images, "
            f"{len(report.new_type_ids)} proposed types. Review them on this tab."
        )
        say(f"demo ready in {time.perf_counter() - t0:.0f} s")
    elif demo:
        note = "Demo workspace (already prepared)."
    app, url = launch(
        service,
        host=host,
        port=port,
        auth=auth,
        access=access,
        note=note,
        quiet=True,
        prevent_thread_lock=True,
    )
    print(
        f"ProtoAtlas is running at {url} (workspace {home / workspace}; "
        f"{'login on' if auth else 'no login'}); started in "
        f"{time.perf_counter() - t0:.0f} s. Press Ctrl+C to stop.",
        flush=True,
    )
    if not block:
        return 0
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        app.close()
        service.close()
    return 0
