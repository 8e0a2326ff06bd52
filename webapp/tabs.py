"""The review app's screens: for each tab, a dataclass of its components and the function
that lays them out (no handlers here: :class:`webapp.app.ReviewApp` wires the events).

Where a handler fills many components at once, the tab names them in one tuple (e.g.
``TypesTab.PANEL``): the handler returns its values by name through :func:`ordered`, and
the event's ``outputs`` come from the same tuple, so the two cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import gradio as gr

from engine.config import DiscoveryConfig
from webapp.assets import KEYS_HELP
from webapp.security import Limits
from webapp.views import AUDIT_COLUMNS, EXPORT_HOLDS, EXPORTS, REGION_COLUMNS, TYPE_COLUMNS

PRIOR_CHOICES = [
    ("auto (classical; grounded-SAM for the prompt when configured)", "auto"),
    ("classical: object from the known-good images", "classical"),
    ("none: textures, the whole image is the object", "none"),
    ("grounded-SAM: text prompt (needs local checkpoints)", "grounded-sam"),
]
CLUSTER_CHOICES = ["auto"] + [str(k) for k in range(2, DiscoveryConfig().max_clusters + 1)]
ORDERS = [
    ("representative first", "representative"),
    ("most confident", "confidence"),
    ("borderline (least confident)", "borderline"),
]
#: The file types the upload boxes accept.
UPLOAD_TYPES = ["image", ".zip", ".tif", ".tiff", ".bmp"]


def ordered(names: tuple[str, ...], **values: Any) -> list[Any]:
    """A handler's ``values``, by component name, in the order of ``names`` (the order of
    the event's ``outputs``)."""
    if values.keys() != set(names):
        raise TypeError(f"expected the values of {names}, got {tuple(values)}")
    return [values[name] for name in names]


# ----------------------------------------------------------------------------- Types
@dataclass
class TypesTab:
    """The type cards and the selected type's members and actions."""

    tab: gr.Tab
    refresh_btn: gr.Button
    show_rejected: gr.Checkbox
    cards: gr.HTML
    pick: gr.Textbox  # hidden: the card the script clicked
    table: gr.Dataframe
    type_dd: gr.Dropdown
    order: gr.Radio
    type_md: gr.Markdown
    gallery: gr.HTML
    selection: gr.Textbox
    sel_all: gr.Button
    sel_none: gr.Button
    open_img: gr.Button
    open_box: gr.Textbox  # hidden: the thumbnail the script double-clicked
    msg: gr.Markdown
    confirm_btn: gr.Button
    reject_btn: gr.Button
    undo_btn: gr.Button
    rename_tb: gr.Textbox
    rename_btn: gr.Button
    newtype_btn: gr.Button
    merge_dd: gr.Dropdown
    merge_btn: gr.Button
    move_dd: gr.Dropdown
    move_btn: gr.Button
    parts: gr.Number
    split_btn: gr.Button
    normal_btn: gr.Button
    seen: gr.State  # {type_id, version} of the type on screen

    #: What ``ReviewApp.panel`` fills, in this order.
    PANEL: ClassVar[tuple[str, ...]] = (
        "cards",
        "table",
        "type_dd",
        "type_md",
        "gallery",
        "selection",
        "merge_dd",
        "move_dd",
        "seen",
    )

    def outputs(self) -> list[Any]:
        """The components ``ReviewApp.panel`` returns values for, in its order."""
        return [getattr(self, name) for name in self.PANEL]

    def inputs(self) -> list[Any]:
        """What ``ReviewApp.panel`` reads: the type, the order, show rejected types."""
        return [self.type_dd, self.order, self.show_rejected]


def _type_list() -> dict[str, Any]:
    """The Types tab's left column: the cards (and the same as a table)."""
    with gr.Column(scale=5, min_width=340):
        with gr.Row():
            refresh_btn = gr.Button("↻ Refresh", size="sm", scale=0, elem_id="pa-refresh")
            show_rejected = gr.Checkbox(False, label="show rejected types", container=False)
        cards = gr.HTML(elem_id="pa-cards")
        pick = gr.Textbox(
            elem_id="pa-type-pick", elem_classes="pa-hidden", max_lines=1, label="pick"
        )
        with gr.Accordion("Types as a table", open=False):
            table = gr.Dataframe(
                headers=TYPE_COLUMNS, interactive=False, label="types", max_height=320
            )
    return dict(
        refresh_btn=refresh_btn, show_rejected=show_rejected, cards=cards, pick=pick, table=table
    )


def _type_head() -> dict[str, Any]:
    """The top of the Types tab's right column: the type and its header."""
    with gr.Row(elem_id="pa-type-row"):
        type_dd = gr.Dropdown(label="Type", choices=[], scale=2, elem_id="pa-type-dd")
        order = gr.Radio(ORDERS, value="representative", label="Order", scale=3)
    type_md = gr.Markdown(elem_id="pa-type-head")
    return dict(type_dd=type_dd, order=order, type_md=type_md)


def _type_members() -> dict[str, Any]:
    """Below the actions: the type's members and the selection."""
    msg = gr.Markdown(elem_id="pa-msg")
    gallery = gr.HTML(elem_id="pa-gallery")
    with gr.Row(elem_id="pa-sel-row"):
        selection = gr.Textbox(
            label="Selected region ids",
            info="click images; shift-click: a range; double-click opens the image",
            elem_id="pa-selection",
            scale=4,
            max_lines=1,
        )
        sel_all = gr.Button("Select all", size="sm", scale=0, elem_id="pa-sel-all")
        sel_none = gr.Button("Clear", size="sm", scale=0, elem_id="pa-sel-none")
        open_img = gr.Button("Open image", size="sm", scale=0, elem_id="pa-open-image")
    open_box = gr.Textbox(
        elem_id="pa-open-box", elem_classes="pa-hidden", max_lines=1, label="open"
    )
    return dict(
        gallery=gallery,
        selection=selection,
        sel_all=sel_all,
        sel_none=sel_none,
        open_img=open_img,
        open_box=open_box,
        msg=msg,
    )


def _type_actions() -> dict[str, Any]:
    """The reviewer's actions, above the members grid so that the frequent ones (confirm,
    rename, merge, split) are in view at 1440 x 900 without scrolling."""
    with gr.Row(elem_classes="pa-actions"):
        confirm_btn = gr.Button(
            "✔ Confirm type (c)", variant="primary", size="sm", elem_id="pa-confirm"
        )
        reject_btn = gr.Button("✖ Reject type (x)", variant="stop", size="sm", elem_id="pa-reject")
        undo_btn = gr.Button("↶ Undo last (z)", size="sm", elem_id="pa-undo")
    with gr.Row(elem_classes="pa-actions"):
        rename_tb = gr.Textbox(
            show_label=False,
            placeholder="new name, e.g. scratch",
            scale=3,
            max_lines=1,
            container=False,
            elem_id="pa-rename-tb",
        )
        rename_btn = gr.Button("Rename", size="sm", scale=1, elem_id="pa-rename")
        merge_btn = gr.Button("Merge this type into →", size="sm", scale=2, elem_id="pa-merge")
        merge_dd = gr.Dropdown(
            label="Merge this type into",
            show_label=False,
            choices=[],
            scale=3,
            container=False,
            elem_id="pa-merge-dd",
        )
    with gr.Row(elem_classes="pa-actions"):
        split_btn = gr.Button(
            "Split selected (or into parts) →", size="sm", scale=3, elem_id="pa-split"
        )
        parts = gr.Number(
            2,
            label="Split into parts",
            show_label=False,
            precision=0,
            minimum=2,
            maximum=12,
            scale=1,
            min_width=60,
            container=False,
            elem_id="pa-parts",
        )
        move_btn = gr.Button("Move selected to →", size="sm", scale=2, elem_id="pa-move")
        move_dd = gr.Dropdown(
            label="Move selected to",
            show_label=False,
            choices=[],
            scale=3,
            container=False,
            elem_id="pa-move-dd",
        )
    with gr.Row(elem_classes="pa-actions"):
        newtype_btn = gr.Button("Selected → new type", size="sm", elem_id="pa-newtype")
        normal_btn = gr.Button("Selected are normal", size="sm", elem_id="pa-normal")
    return dict(
        confirm_btn=confirm_btn,
        reject_btn=reject_btn,
        undo_btn=undo_btn,
        rename_tb=rename_tb,
        rename_btn=rename_btn,
        newtype_btn=newtype_btn,
        merge_dd=merge_dd,
        merge_btn=merge_btn,
        move_dd=move_dd,
        move_btn=move_btn,
        parts=parts,
        split_btn=split_btn,
        normal_btn=normal_btn,
    )


def types_tab() -> TypesTab:
    """Lays out the Types tab: the cards left, the selected type right."""
    with gr.Tab("Types", id="types") as tab:
        with gr.Row(equal_height=False):
            left = _type_list()
            with gr.Column(scale=7, min_width=420):
                head = _type_head()
                actions = _type_actions()
                members = _type_members()
        seen = gr.State({})
    return TypesTab(tab=tab, seen=seen, **left, **head, **members, **actions)


# ----------------------------------------------------------------------------- Suggestions
@dataclass
class SuggestionsTab:
    """One question at a time, with its answers."""

    tab: gr.Tab
    question_md: gr.Markdown
    gallery: gr.HTML
    yes_btn: gr.Button
    no_btn: gr.Button
    skip_btn: gr.Button
    undo_btn: gr.Button
    name: gr.Textbox
    pick: gr.Textbox
    label_dd: gr.Dropdown
    label_btn: gr.Button
    msg: gr.Markdown
    next_btn: gr.Button
    refresh_btn: gr.Button
    retrain_btn: gr.Button
    refine_btn: gr.Button
    switch_btn: gr.Button
    rollback_btn: gr.Button
    refine_msg: gr.Markdown
    candidate: gr.State  # the id of the refined detector waiting for a decision
    sugg_id: gr.State  # the id of the question on screen

    #: What ``ReviewApp.question`` fills, in this order.
    QUESTION: ClassVar[tuple[str, ...]] = (
        "question_md",
        "gallery",
        "sugg_id",
        "label_dd",
        "label_btn",
        "pick",
        "yes_btn",
        "no_btn",
        "name",
    )

    def outputs(self) -> list[Any]:
        """The components ``ReviewApp.question`` returns values for, in its order."""
        return [getattr(self, name) for name in self.QUESTION]


def suggestions_tab() -> SuggestionsTab:
    """Lays out the Suggestions tab: the question, its images and the answers."""
    with gr.Tab("Suggestions", id="suggestions") as tab:
        with gr.Column(elem_id="pa-suggest-panel"):
            question_md = gr.Markdown(elem_id="pa-question")
            # the same check-mark grid as the Types tab (no full-size preview on a click)
            gallery = gr.HTML(elem_id="pa-sugg-grid")
            with gr.Row():
                yes_btn = gr.Button("Yes  (y)", variant="primary", elem_id="pa-yes")
                no_btn = gr.Button("No  (n)", elem_id="pa-no")
                skip_btn = gr.Button("Skip  (s)", elem_id="pa-skip")
                undo_btn = gr.Button("↶ Undo  (u)", elem_id="pa-sugg-undo")
            name = gr.Textbox(
                label="Name for the type (optional, used by yes)",
                placeholder="e.g. scratch",
                max_lines=1,
                elem_id="pa-sugg-name",
            )
            pick = gr.Textbox(
                label="Members that do not belong (click a thumbnail to pick it, again to "
                "unpick; with yes or no they move out into a new type first)",
                placeholder="e.g. 12, 15",
                max_lines=1,
                visible=False,
                elem_id="pa-sugg-pick",
            )
            with gr.Row():
                label_dd = gr.Dropdown(label="It is this type", choices=[], visible=False, scale=3)
                label_btn = gr.Button("Answer with this type", visible=False, scale=1)
            msg = gr.Markdown(elem_id="pa-sugg-msg")
            gr.HTML(KEYS_HELP)
            with gr.Row():
                next_btn = gr.Button("Next question", size="sm")
                refresh_btn = gr.Button("Refresh questions", size="sm")
                retrain_btn = gr.Button("Retrain the model now", size="sm")
            with gr.Accordion("Refine the detector (PRN)", open=False):
                gr.Markdown(
                    "Trains a residual segmentation network on generated anomalies and the "
                    "defects of confirmed types, and compares it with the detector in force "
                    "on confirmed images held out. Nothing switches until you say so; the "
                    "previous detector can always be put back."
                )
                with gr.Row():
                    refine_btn = gr.Button("Refine detector", size="sm", elem_id="pa-refine")
                    switch_btn = gr.Button(
                        "Switch to the refined detector",
                        size="sm",
                        variant="primary",
                        visible=False,
                        elem_id="pa-refine-switch",
                    )
                    rollback_btn = gr.Button(
                        "Roll back the detector", size="sm", elem_id="pa-refine-rollback"
                    )
                refine_msg = gr.Markdown(elem_id="pa-refine-msg")
        candidate = gr.State(None)
        sugg_id = gr.State(None)
    return SuggestionsTab(
        tab=tab,
        question_md=question_md,
        gallery=gallery,
        yes_btn=yes_btn,
        no_btn=no_btn,
        skip_btn=skip_btn,
        undo_btn=undo_btn,
        name=name,
        pick=pick,
        label_dd=label_dd,
        label_btn=label_btn,
        msg=msg,
        next_btn=next_btn,
        refresh_btn=refresh_btn,
        retrain_btn=retrain_btn,
        refine_btn=refine_btn,
        switch_btn=switch_btn,
        rollback_btn=rollback_btn,
        refine_msg=refine_msg,
        candidate=candidate,
        sugg_id=sugg_id,
    )


# ----------------------------------------------------------------------------- Upload
@dataclass
class UploadTab:
    """A new batch: its images, its known-good images and the analysis settings."""

    images: gr.File
    normals: gr.File
    prompt: gr.Textbox
    prior: gr.Dropdown
    clusters: gr.Dropdown
    name: gr.Textbox
    button: gr.Button
    report: gr.Markdown
    skipped: gr.Dataframe
    tab: gr.Tab
    #: deleting a batch: which, the confirmation, the button, its message
    del_batch: gr.Dropdown
    del_confirm: gr.Checkbox
    del_btn: gr.Button
    del_msg: gr.Markdown


def upload_tab(limits: Limits) -> UploadTab:
    """Lays out the Upload tab (``limits``: the upload limits it states)."""
    with gr.Tab("Upload", id="upload") as tab:
        with gr.Row():
            with gr.Column():
                images = gr.File(
                    label="Images: files, or one .zip (any folder depth)",
                    file_count="multiple",
                    file_types=UPLOAD_TYPES,
                    elem_id="pa-up-images",
                )
                normals = gr.File(
                    label="Known-good images (optional after the first batch: "
                    "the workspace's are reused)",
                    file_count="multiple",
                    file_types=UPLOAD_TYPES,
                    elem_id="pa-up-normals",
                )
            with gr.Column():
                prompt = gr.Textbox(
                    label="Object (prompt for the object prior)",
                    placeholder="e.g. bottle, tile",
                    max_lines=1,
                )
                prior = gr.Dropdown(PRIOR_CHOICES, value="auto", label="Object prior")
                clusters = gr.Dropdown(
                    CLUSTER_CHOICES,
                    value="auto",
                    allow_custom_value=True,
                    label="Number of defect types",
                )
                name = gr.Textbox(
                    label="Batch name (optional)", max_lines=1, elem_id="pa-upload-name"
                )
                button = gr.Button("Upload and analyse", variant="primary", elem_id="pa-upload")
                gr.Markdown(
                    f"<small>Limits: {limits.max_file_mb} MB per file, {limits.max_images} "
                    f"images per batch, zip up to {limits.max_zip_total_mb} MB uncompressed "
                    f"and {limits.max_zip_ratio:.0f}:1 compression. One analysis runs at a "
                    "time; reviewing goes on meanwhile.</small>"
                )
        report = gr.Markdown(elem_id="pa-up-report")
        skipped = gr.Dataframe(
            headers=["file", "reason"],
            interactive=False,
            label="Skipped files",
            max_height=260,
            elem_id="pa-up-skipped",
        )
        with gr.Accordion("Delete a batch", open=False, elem_id="pa-del"):
            gr.Markdown(
                "<small>Removes the batch's images (those no other batch has), its regions "
                "and the decisions on them; types and the history stay. It cannot be undone, "
                "but a snapshot from before it is kept (<code>protoatlas restore</code>). "
                "Admins only.</small>"
            )
            with gr.Row():
                del_batch = gr.Dropdown(
                    label="Batch", choices=[], scale=3, elem_id="pa-del-batch", interactive=True
                )
                del_confirm = gr.Checkbox(
                    label="Yes, delete it and the decisions on its regions",
                    scale=2,
                    elem_id="pa-del-confirm",
                )
                del_btn = gr.Button("Delete batch", variant="stop", scale=1, elem_id="pa-del-btn")
            del_msg = gr.Markdown(elem_id="pa-del-msg")
    return UploadTab(
        images=images,
        normals=normals,
        prompt=prompt,
        prior=prior,
        clusters=clusters,
        name=name,
        button=button,
        report=report,
        skipped=skipped,
        tab=tab,
        del_batch=del_batch,
        del_confirm=del_confirm,
        del_btn=del_btn,
        del_msg=del_msg,
    )


# ----------------------------------------------------------------------------- Map
@dataclass
class MapTab:
    """The 2-D map of the region embeddings and what to do with a lasso selection."""

    tab: gr.Tab
    button: gr.Button
    plot: gr.Plot
    pick: gr.Textbox
    info: gr.Markdown
    gallery: gr.Gallery
    move_dd: gr.Dropdown
    move_btn: gr.Button
    new_name: gr.Textbox
    new_btn: gr.Button
    normal_btn: gr.Button


def map_tab() -> MapTab:
    """Lays out the Map tab: the plot, the selection and its actions."""
    with gr.Tab("Map", id="map") as tab:
        with gr.Row():
            button = gr.Button("Draw / refresh the map", size="sm", scale=0)
            gr.Markdown(
                "Hover a point to see its crop; drag a **lasso** (default) or **box** "
                "(toolbar) to select regions, then act below."
            )
        plot = gr.Plot(elem_id="pa-map", label="Region embeddings")
        pick = gr.Textbox(
            label="Selected region ids (filled by the lasso; you can also type them)",
            elem_id="pa-map-pick",
            max_lines=2,
        )
        info = gr.Markdown(
            "No regions selected: drag a lasso or box on the map.", elem_id="pa-map-msg"
        )
        gallery = gr.Gallery(
            columns=12,
            height=170,
            allow_preview=True,
            elem_id="pa-map-gallery",
            label="Selection",
            object_fit="cover",
        )
        with gr.Row():
            move_dd = gr.Dropdown(label="Move selection to", choices=[], scale=3)
            move_btn = gr.Button("Move", scale=1)
            new_name = gr.Textbox(label="New type name (optional)", scale=2, max_lines=1)
            new_btn = gr.Button("Selection → new type", scale=1)
            normal_btn = gr.Button("Selection is normal", scale=1)
    return MapTab(
        tab=tab,
        button=button,
        plot=plot,
        pick=pick,
        info=info,
        gallery=gallery,
        move_dd=move_dd,
        move_btn=move_btn,
        new_name=new_name,
        new_btn=new_btn,
        normal_btn=normal_btn,
    )


# ----------------------------------------------------------------------------- Image
@dataclass
class ImageTab:
    """One image: its heat map, its regions, its object prior."""

    tab: gr.Tab
    image_dd: gr.Dropdown
    show_btn: gr.Button
    prev_btn: gr.Button
    next_btn: gr.Button
    summary: gr.Markdown
    viewer: gr.HTML
    original: gr.Image
    heat: gr.Image
    regions: gr.Image
    prior: gr.Image
    table: gr.Dataframe

    #: What ``ReviewApp.image`` fills, in this order.
    DETAIL: ClassVar[tuple[str, ...]] = (
        "summary",
        "original",
        "heat",
        "regions",
        "prior",
        "table",
        "viewer",
    )

    def outputs(self) -> list[Any]:
        """The components ``ReviewApp.image`` returns values for, in its order."""
        return [getattr(self, name) for name in self.DETAIL]

    #: The side-by-side pictures, which the page asks for after the viewer is shown.
    PICTURES: ClassVar[tuple[str, ...]] = ("original", "heat", "regions", "prior")

    def pictures(self) -> list[Any]:
        return [getattr(self, name) for name in self.PICTURES]


@dataclass
class BrowseTab:
    """Every image, filtered and sorted, a page at a time; a click opens it."""

    tab: gr.Tab
    batch: gr.Dropdown
    type_dd: gr.Dropdown
    flagged: gr.Radio
    reviewed: gr.Radio
    min_score: gr.Textbox
    max_score: gr.Textbox
    sort: gr.Radio
    prev_btn: gr.Button
    next_btn: gr.Button
    page: gr.State
    count: gr.Markdown
    grid: gr.HTML
    open_box: gr.Textbox  # hidden: the image the script clicked

    def filters(self) -> list[Any]:
        """The filter inputs, in the order ``ReviewApp.browse`` takes them."""
        return [
            self.batch,
            self.type_dd,
            self.flagged,
            self.reviewed,
            self.min_score,
            self.max_score,
            self.sort,
        ]


def browse_tab() -> BrowseTab:
    """Lays out the Browse tab: the filters, the page controls and the image grid."""
    with gr.Tab("Browse", id="browse") as tab:
        with gr.Row():
            batch = gr.Dropdown(label="Batch", choices=[("every batch", "")], value="", scale=2)
            type_dd = gr.Dropdown(label="Type", choices=[("any", "")], value="", scale=2)
            flagged = gr.Radio(
                ["all", "flagged", "passed"],
                value="all",
                label="Detector",
                elem_id="pa-browse-flagged",
            )
            reviewed = gr.Radio(["all", "reviewed", "not reviewed"], value="all", label="Reviewer")
        with gr.Row():
            # text boxes: an empty number box would send 0 (empty = no bound here)
            min_score = gr.Textbox(label="Score from (empty: any)", value="", max_lines=1)
            max_score = gr.Textbox(label="Score to (empty: any)", value="", max_lines=1)
            sort = gr.Radio(
                ["score, highest first", "score, lowest first", "name"],
                value="score, highest first",
                label="Sort",
            )
            prev_btn = gr.Button("← Previous page", size="sm", scale=0)
            next_btn = gr.Button("Next page →", size="sm", scale=0)
        count = gr.Markdown(elem_id="pa-browse-count")
        grid = gr.HTML(elem_id="pa-browse-grid")
        open_box = gr.Textbox(elem_id="pa-browse-open", elem_classes="pa-hidden", label="open")
        page = gr.State(0)
    return BrowseTab(
        tab=tab,
        batch=batch,
        type_dd=type_dd,
        flagged=flagged,
        reviewed=reviewed,
        min_score=min_score,
        max_score=max_score,
        sort=sort,
        prev_btn=prev_btn,
        next_btn=next_btn,
        page=page,
        count=count,
        grid=grid,
        open_box=open_box,
    )


def image_tab() -> ImageTab:
    """Lays out the Image tab: the image picker and its four pictures."""
    with gr.Tab("Image", id="image") as tab:
        with gr.Row():
            image_dd = gr.Dropdown(
                label="Image (those with regions first)",
                choices=[],
                scale=3,
                allow_custom_value=True,
                elem_id="pa-image-dd",
            )
            show_btn = gr.Button("Show", scale=0)
            prev_btn = gr.Button("← Previous (p)", scale=0, elem_id="pa-img-prev")
            next_btn = gr.Button("Next (n) →", scale=0, elem_id="pa-img-next")
        summary = gr.Markdown(elem_id="pa-image-md")
        viewer = gr.HTML(elem_id="pa-viewer")
        gr.Markdown("Side by side:", elem_classes="pa-count")
        with gr.Row(elem_id="pa-image-row"):
            original = gr.Image(label="Original", interactive=False, height=300)
            heat = gr.Image(label="Anomaly heat map", interactive=False, height=300)
            regions = gr.Image(label="Regions (coloured by type)", interactive=False, height=300)
            prior = gr.Image(label="Object prior", interactive=False, height=300)
        table = gr.Dataframe(headers=REGION_COLUMNS, interactive=False, label="Regions")
    return ImageTab(
        tab=tab,
        image_dd=image_dd,
        show_btn=show_btn,
        prev_btn=prev_btn,
        next_btn=next_btn,
        summary=summary,
        viewer=viewer,
        original=original,
        heat=heat,
        regions=regions,
        prior=prior,
        table=table,
    )


# ----------------------------------------------------------------------------- History
@dataclass
class HistoryTab:
    """The audit log, filtered."""

    tab: gr.Tab
    actor: gr.Dropdown
    action: gr.Dropdown
    type_id: gr.Textbox
    button: gr.Button
    table: gr.Dataframe
    undo_btn: gr.Button
    picked: gr.Textbox
    undo_row_btn: gr.Button
    msg: gr.Markdown
    tz: gr.Textbox  # hidden: the browser's time zone, set by the page script


def history_tab() -> HistoryTab:
    """Lays out the History tab: the filters over the audit log."""
    with gr.Tab("History", id="history") as tab:
        with gr.Row():
            actor = gr.Dropdown(label="Reviewer", choices=[""], value="", allow_custom_value=True)
            action = gr.Dropdown(label="Action", choices=[""], value="", allow_custom_value=True)
            type_id = gr.Textbox(
                label="Type (id or name; empty: every type)",
                value="",
                max_lines=1,
                elem_id="pa-history-type",
            )
            button = gr.Button("Filter / refresh", scale=0)
            undo_btn = gr.Button("↶ Undo my last action", scale=0, elem_id="pa-history-undo")
        with gr.Row():
            picked = gr.Textbox(
                label="History entry # (click a row)",
                value="",
                max_lines=1,
                scale=1,
                elem_id="pa-history-pick",
            )
            undo_row_btn = gr.Button("↶ Undo this entry", scale=0, elem_id="pa-history-undo-row")
        msg = gr.Markdown(elem_id="pa-history-msg")
        tz = gr.Textbox("", elem_id="pa-tz", elem_classes="pa-hidden", label="time zone")
        table = gr.Dataframe(
            headers=AUDIT_COLUMNS,
            interactive=False,
            label="Audit log (newest first)",
            wrap=True,
            column_widths=["5%", "15%", "11%", "10%", "7%", "27%", "18%", "7%"],
            max_height=600,
            elem_id="pa-history",
        )
    return HistoryTab(
        tab=tab,
        actor=actor,
        action=action,
        type_id=type_id,
        button=button,
        table=table,
        undo_btn=undo_btn,
        picked=picked,
        undo_row_btn=undo_row_btn,
        msg=msg,
        tz=tz,
    )


# ----------------------------------------------------------------------------- Export
@dataclass
class ExportTab:
    """A download of the workspace's decisions: all of them, one batch's or some types'."""

    tab: gr.Tab
    fmt: gr.Radio
    batch: gr.Dropdown
    types: gr.Dropdown
    holds: gr.Markdown
    button: gr.Button
    file: gr.File


def export_holds(fmt: str | None) -> str:
    """The line under the formats: which types the chosen one holds."""
    holds = EXPORT_HOLDS.get(str(fmt or "csv"), "")
    if holds is None:
        return "The audit log is always exported whole (every batch and type: its hash chain)."
    return f"Holds {holds}. A type the format does not hold is refused."


def export_tab() -> ExportTab:
    """Lays out the Export tab: the format, the scope (a batch, some types) and the
    download. The lists are filled when the tab is selected; both accept a typed id."""
    with gr.Tab("Export", id="export") as tab:
        fmt = gr.Radio(
            [(label, key) for key, (_, label) in EXPORTS.items()],
            value="csv",
            label="What to export",
        )
        holds = gr.Markdown(export_holds("csv"), elem_id="pa-export-holds")
        with gr.Row():
            batch = gr.Dropdown(
                label="Batch",
                choices=[("every batch", "")],
                value="",
                allow_custom_value=True,
                elem_id="pa-export-batch",
            )
            types = gr.Dropdown(
                label="Types (empty: every type)",
                choices=[],
                value=[],
                multiselect=True,
                allow_custom_value=True,
                elem_id="pa-export-types",
            )
        button = gr.Button("Export", variant="primary", elem_id="pa-export")
        file = gr.File(label="Download", height=90, elem_id="pa-export-file")
    return ExportTab(
        tab=tab, fmt=fmt, batch=batch, types=types, holds=holds, button=button, file=file
    )
