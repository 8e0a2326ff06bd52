"""Review-flow bugs found by trying the app as a reviewer (issue: review screens), checked
on a storage-only workspace through the service and the screens' data (no engine)."""

from __future__ import annotations

import pytest

from benchmarks.bench_webapp import build_workspace
from protoatlas.service import WorkspaceService
from webapp.views import Views


@pytest.fixture()
def views(tmp_path):
    ws = build_workspace(tmp_path, n_images=24, n_types=3, type_names=["crack", "dent", "stain"])
    service = WorkspaceService.over(ws)
    yield Views(service)
    service.close()


def _audit_count(views: Views) -> int:
    return len(views.service.audit(limit=10_000))


def test_confirming_a_confirmed_type_writes_nothing_so_one_undo_undoes_it(views) -> None:
    t = views.types()[0]
    assert views.type_action(t.id, "confirm", actor="ann")["ok"]
    n, version = _audit_count(views), views.service.get_type(t.id).version
    again = views.type_action(t.id, "confirm", actor="ann")
    assert again["ok"]
    assert _audit_count(views) == n and views.service.get_type(t.id).version == version
    assert views.type_action(-1, "undo", actor="ann")["ok"]
    assert views.service.get_type(t.id).status == "proposed"


def test_renaming_to_the_same_name_writes_nothing(views) -> None:
    t = views.types()[0]
    n = _audit_count(views)
    assert views.type_action(t.id, "rename", t.name, actor="ann")["ok"]
    assert _audit_count(views) == n and views.service.get_type(t.id).version == t.version


@pytest.mark.parametrize("value", ["", None, "  "])
def test_the_history_type_filter_left_empty_means_every_type(views, value) -> None:
    assert views.type_filter(value) is None
    assert views.audit_rows(None, None, views.type_filter(value))


def test_the_history_type_filter_takes_an_id_or_a_name(views) -> None:
    t = views.types()[0]
    assert views.type_filter(str(t.id)) == t.id
    assert views.type_filter(t.name.upper()) == t.id
    with pytest.raises(ValueError, match="no type named"):
        views.type_filter("no such type")


def test_a_type_has_one_number_its_automatic_name_is_its_id(views) -> None:
    svc = views.service
    t = max(views.types(), key=lambda x: x.n_regions)
    members = [m.region_id for m in views.type_members(t.id, limit=4)]
    svc.rename_type(t.id, f"T{t.id + 1000}", actor="ann")
    new = svc.split_type(
        t.id, expected_version=svc.get_type(t.id).version, actor="ann", region_ids=members[:1]
    )
    made = svc.create_type(members[1:2], actor="ann")
    for tid in (*new, made):
        assert svc.get_type(tid).name == f"T{tid}"
    # a name a reviewer already gave is not reused: the new type gets a suffix
    clash = made + 1
    svc.rename_type(t.id, f"T{clash}", actor="ann")
    other = svc.create_type(members[2:3], actor="ann")
    assert other == clash and svc.get_type(other).name == f"T{clash}-1"


def test_a_type_emptied_by_moves_leaves_the_cards_lists_and_header_counts(views) -> None:
    a, b = sorted(views.types(), key=lambda t: t.id)[:2]
    members = [m.region_id for m in views.service.type_members(a.id, limit=10_000)]
    assert views.type_action(a.id, "confirm", actor="ann")["ok"]
    out = views.type_action(a.id, "move", str(b.id), region_ids=members, actor="ann")
    assert out["ok"], out
    assert views.service.get_type(a.id).n_regions == 0
    assert a.id not in {t.id for t in views.types()}
    assert a.id not in {tid for _, tid in views.type_choices()}
    assert f"data-type-id='{a.id}'" not in views.cards_html()
    # undo brings it back with its members
    assert views.type_action(-1, "undo", actor="ann")["ok"]
    assert a.id in {t.id for t in views.types()}


def test_the_demo_note_is_shown_until_the_first_reviewer_decision(views) -> None:
    assert not views.reviewed()
    t = views.types()[0]
    assert views.type_action(t.id, "confirm", actor="ann")["ok"]
    assert views.reviewed()


def test_a_large_type_says_how_many_members_are_shown_and_select_all_means_all(tmp_path):
    ws = build_workspace(tmp_path, n_images=120, n_types=2, type_names=["big", "small"])
    service = WorkspaceService.over(ws)
    try:
        views = Views(service)
        t = max(views.types(), key=lambda x: x.n_regions)
        page = views.type_members(t.id)
        assert len(page) == service.config.screens.gallery_members < t.n_regions
        html = views.members_html(page, total=t.n_regions)
        assert f"{len(page)} of {t.n_regions} shown" in html
        every = views.all_member_ids(t.id)
        assert len(every) == len(set(every)) == t.n_regions
        other = next(x for x in views.types() if x.id != t.id)
        out = views.type_action(t.id, "normal", region_ids=every, actor="ann")
        assert out["ok"] and f"Marked {t.n_regions} region(s)" in out["message"]
        assert service.get_type(t.id).n_regions == 0 and service.get_type(other.id).n_regions
    finally:
        service.close()


HOSTILE = "<b>x</b><img src=x onerror=alert(1)>**y**"


def _raw(text: str, markdown: bool) -> list[str]:
    """The pieces of the hostile name that would render as markup if they were left raw
    (``**y**`` only matters where the text is read as Markdown)."""
    pieces = ("<b>x", "<img src=x") + (("**y**",) if markdown else ())
    return [p for p in pieces if p in text]


def test_a_hostile_type_name_is_escaped_wherever_it_is_shown(tmp_path) -> None:
    import time

    from protoatlas.service import UploadReport
    from storage import SuggestionIn
    from webapp.app import ReviewApp, _msg

    ws = build_workspace(tmp_path, n_images=24, n_types=3, type_names=["crack", "dent", "stain"])
    service = WorkspaceService.over(ws)
    try:
        app = ReviewApp(service, note="demo", auto_retrain=False)
        v = app.views
        a, b = sorted(v.types(), key=lambda t: t.id)[:2]
        renamed = v.type_action(a.id, "rename", HOSTILE, actor=HOSTILE)
        assert renamed["ok"]
        hostile = service.get_type(a.id)
        assert hostile.name == HOSTILE  # stored as typed
        ws.replace_open_suggestions(
            [
                SuggestionIn(kind="confirm", target={"type_id": a.id}, score=2.0, reason=HOSTILE),
                SuggestionIn(kind="merge", target={"type_ids": [a.id, b.id]}, score=1.0),
            ]
        )
        questions = [v.question(s).markdown for s in service.open_suggestions()]
        members = v.type_members(a.id, limit=2)
        report = UploadReport(1, 24, 24, 48, [a.id], [], "discover")
        places = {
            "rename message": _msg(renamed),
            "confirm message": _msg(v.type_action(a.id, "confirm", actor="ann")),
            "merge message": _msg(v.type_action(b.id, "merge", str(a.id), actor="ann")),
            "cards": v.cards_html(),
            "type header": v.type_header(service.get_type(a.id)),
            "members grid": v.members_html(members),
            "questions": "\n".join(questions),
            "header": app.header(None),
            "upload summary": app._upload_summary(HOSTILE, report, [], [HOSTILE], time.time()),
            "image summary": v.image_detail(members[0].image_id)["summary"],
            "map legend": " ".join(str(t.name) + str(t.text) for t in v.map_figure().data),
        }
        html_places = {"cards", "members grid", "map legend"}
        leaks = {
            place: got
            for place, text in places.items()
            if (got := _raw(text, markdown=place not in html_places))
        }
        assert not leaks, leaks
        # and the name shows as typed: escaped, not dropped
        from webapp.security import escape, md_escape

        for place in ("rename message", "confirm message", "type header", "questions"):
            assert md_escape(HOSTILE) in places[place], place
        assert escape(HOSTILE) in places["cards"]
    finally:
        service.close()


def test_hostile_batch_file_and_reviewer_names_are_escaped_wherever_shown(tmp_path) -> None:
    """Batch names, file names (zip members may be named anything) and reviewer names:
    Browse, the image summary, the viewer, the upload summary, the history, the export and
    image pickers."""
    import time

    from benchmarks.bench_webapp import make_batch
    from protoatlas.service import UploadReport
    from webapp.app import ReviewApp
    from webapp.security import md_escape
    from webapp.views import BrowseFilter

    ws = build_workspace(tmp_path, n_images=8, n_types=2)
    prefix = "<b>x</b><img src=x onerror=alert(1)>**y**-"
    ws.ingest_batch(make_batch(n_images=6, n_types=2, name=HOSTILE, prefix=prefix), actor=HOSTILE)
    service = WorkspaceService.over(ws)
    try:
        app = ReviewApp(service, auto_retrain=False)
        v = app.views
        bid = max(b.id for b in service.batches())
        image_id = v.batch_images(bid)[0][1]
        detail = v.image_detail(image_id)
        t = v.types()[0]
        v.type_action(t.id, "rename", "plain", actor=HOSTILE)
        report = UploadReport(bid, 6, 6, 6, [], [], "discover")
        places = {
            "browse grid": v.browse(BrowseFilter(batch_id=bid))[1],
            "image summary": detail["summary"],
            "viewer": detail["viewer"],
            "upload summary": app._upload_summary(HOSTILE, report, [], [prefix], time.time()),
            "history": str(v.audit_rows()),
            "export batches": str(v.export_scopes()[0]),
        }
        # the hostile names reach every place (Dropdowns and tables show them as text)
        for place in ("history", "export batches"):
            assert "<img src=x" in places[place], place
        # and the places this app renders as HTML or Markdown show them escaped
        markdown = {"image summary", "upload summary"}
        rendered = {k: places[k] for k in ("browse grid", "viewer", *markdown)}
        leaks = {p: got for p, x in rendered.items() if (got := _raw(x, markdown=p in markdown))}
        assert not leaks, leaks
        assert "&lt;b&gt;x" in places["browse grid"]  # shown escaped, not dropped
        assert md_escape(prefix) in places["image summary"]
    finally:
        service.close()


def test_the_map_keeps_an_actions_message_when_its_selection_is_cleared(tmp_path) -> None:
    from webapp.app import ReviewApp

    ws = build_workspace(tmp_path, n_images=12, n_types=2, type_names=["crack", "dent"])
    service = WorkspaceService.over(ws)
    try:
        app = ReviewApp(service, auto_retrain=False)
        t = app.views.types()[0]
        rid = app.views.type_members(t.id, limit=1)[0].region_id
        message = app.map_act("normal", str(rid), "", None)
        assert message.startswith("✔")
        info, crops = app.map_selection("")  # the redrawn map clears the lasso
        assert crops == [] and isinstance(info, dict) and "value" not in info  # kept as is
        import gradio as gr

        with pytest.raises(gr.Error, match="'x' is not a region id") as err:
            app.map_selection(f"{rid}, x")  # junk in the box: a message, no traceback logged
        assert err.value.print_exception is False
        info, crops = app.map_selection(f"{rid}, #{rid}")
        assert "1 region(s) selected" in info
    finally:
        service.close()


def test_an_action_without_its_target_says_what_to_choose(views) -> None:
    t = views.types()[0]
    out = views.type_action(t.id, "merge", "", actor="ann")
    assert not out["ok"] and "choose the type to merge into first" in out["message"]
    out = views.type_action(t.id, "move", "abc", region_ids=[1], actor="ann")
    assert not out["ok"] and "'abc' is not a type id" in out["message"]


def test_images_without_regions_can_be_opened_too(tmp_path) -> None:
    from storage import BatchIngest, ImageIn

    ws = build_workspace(tmp_path, n_images=10, n_types=2, type_names=["crack", "dent"])
    service = WorkspaceService.over(ws)
    try:
        ws.ingest_batch(
            BatchIngest(
                name="passed",
                images=[
                    ImageIn(
                        name="ok.png",
                        width=8,
                        height=8,
                        data=b"\x89PNG-ok" + bytes(8),
                        anomaly_score=0.2,
                        is_anomalous=False,
                    )
                ],
            )
        )
        views = Views(service)
        choices = views.batch_images()
        assert any("ok.png" in label and "no region" in label for label, _ in choices)
        with_regions = [c for c in choices if "no region" not in c[0]]
        assert choices[: len(with_regions)] == with_regions  # images with regions first
    finally:
        service.close()


def test_the_question_says_where_it_stands_in_the_queue(views) -> None:
    from storage import SuggestionIn

    t = views.types()[0]
    views.service.ws.replace_open_suggestions(
        [SuggestionIn(kind="confirm", target={"type_id": x.id}, score=1.0) for x in views.types()]
    )
    q = views.next_question()
    assert q is not None and q.n_open == len(views.types())
    assert f"1 of {len(views.types())} open" in q.markdown and t.id >= 1


def test_browse_filters_sorts_and_pages_every_image(tmp_path) -> None:
    from storage import BatchIngest, ImageIn
    from webapp.views import BrowseFilter

    ws = build_workspace(tmp_path, n_images=30, n_types=2, type_names=["crack", "dent"])
    service = WorkspaceService.over(ws)
    try:
        ws.ingest_batch(
            BatchIngest(
                name="passed",
                images=[
                    ImageIn(
                        name=f"ok{i}.png",
                        width=8,
                        height=8,
                        data=b"\x89PNG-" + bytes([i]) * 9,
                        anomaly_score=0.1 + i / 100,
                        is_anomalous=False,
                    )
                    for i in range(5)
                ],
            )
        )
        views = Views(service)
        rows = views.browse_rows()
        assert len(rows) == 35
        passed = [r for r in rows if BrowseFilter(flagged="passed").keeps(r)]
        assert {r.name for r in passed} == {f"ok{i}.png" for i in range(5)}
        untyped = [r for r in rows if BrowseFilter(type_id=-1).keeps(r)]
        assert {r.name for r in untyped} >= {f"ok{i}.png" for i in range(5)}
        crack = views.types()[0]
        typed = [r for r in rows if BrowseFilter(type_id=crack.id).keeps(r)]
        assert typed and all(crack.id in r.type_ids for r in typed)
        low = BrowseFilter(flagged="passed", max_score=0.125, sort="score, lowest first")
        count, grid, page = views.browse(low)
        assert "3 image(s)" in count and grid.index("ok0.png") < grid.index("ok2.png")
        views.screens = type(views.screens)(browse_page=10)
        count, grid, page = views.browse(BrowseFilter(), page=99)  # past the end: the last
        assert page == 3 and "page 4 of 4" in count and grid.count("data-iid=") == 5
        assert views.image_thumb(rows[0].image_id)[:2] == b"\xff\xd8"
    finally:
        service.close()


def test_history_says_who_did_what_to_which_type_and_how_long_ago(views) -> None:
    t = views.types()[0]
    assert views.type_action(t.id, "rename", "crack-renamed", actor="ann")["ok"]
    assert views.type_action(t.id, "confirm", actor="ann")["ok"]
    rows = views.audit_rows(actor="ann")
    assert rows[0][6] == "ann confirmed crack-renamed"
    assert rows[1][6] == "ann renamed crack-renamed"
    assert "just now" in rows[0][1]


def test_confidence_is_shown_only_where_it_tells_members_apart(views) -> None:
    from dataclasses import replace

    from webapp.views import confidence_discriminates

    assert not confidence_discriminates([0.9999, 0.99986, 1.0])
    assert confidence_discriminates([0.62, 0.97])
    assert not confidence_discriminates([0.5, None])
    t = views.types()[0]
    members = views.type_members(t.id, limit=4)
    flat = [replace(m, confidence=0.9999) for m in members]
    assert "· 1.00</figcaption>" not in views.members_html(flat)
    spread = [replace(m, confidence=0.5 + 0.1 * i) for i, m in enumerate(members)]
    assert "· 0.50</figcaption>" in views.members_html(spread)


def test_the_map_legend_is_in_type_order_with_a_colour_per_type(tmp_path) -> None:
    """Bug 16: the legend was sorted as text (T1, T10, T2) and colours repeated after 10."""
    ws = build_workspace(tmp_path, n_images=120, n_types=14)
    service = WorkspaceService.over(ws)
    try:
        fig = Views(service).map_figure()
        names = [t.name for t in fig.data]
        ids = [int(n[1:]) for n in names if n.startswith("T")]
        assert len(ids) == 14 and ids == sorted(ids)
        colours = [t.marker.color for t in fig.data]
        assert len(set(colours)) == len(colours)
    finally:
        service.close()
