"""Fast checks of the web app's parts (no server, no engine): login parsing, upload limits,
screen data over a storage-only workspace, the 2-D map, requirements.txt."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tomllib

from benchmarks.bench_webapp import build_workspace
from protoatlas.service import WorkspaceService
from webapp.security import Limits, RequireLogin, UploadError, parse_auth, stage_upload
from webapp.views import Views, project_2d

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------ login
def test_parse_auth():
    assert parse_auth(None) is None and parse_auth("  ") is None
    assert parse_auth("alice:pw") == [("alice", "pw")]
    assert parse_auth("alice:p:w, bob:x") == [("alice", "p:w"), ("bob", "x")]
    for bad in ("alice", ":pw", "alice:"):
        with pytest.raises(ValueError, match="user:password"):
            parse_auth(bad)


def test_only_the_login_page_and_static_files_are_public():
    for path in ("/", "/login", "/assets/index.js", "/static/img/logo.svg", "/favicon.ico"):
        assert RequireLogin.is_public(path), path
    for path in (
        "/config",
        "/gradio_api/info",
        "/gradio_api/queue/join",
        "/pa/thumb/1.jpg",
        "/gradio_api/file=/etc/passwd",
        "/gradio_api/upload",
        "/monitoring",
        "/gradio_api/call/list_types",
        "/assets",
        "/loginx",
    ):
        assert not RequireLogin.is_public(path), path


# ------------------------------------------------------------------------------ uploads
def _png(path: Path, side: int = 8) -> Path:
    from PIL import Image

    Image.fromarray(np.full((side, side, 3), 100, np.uint8)).save(path)
    return path


def _zip(path: Path, members: dict[str, bytes], symlink: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = 0o120777 << 16
            z.writestr(info, "/etc/passwd")
    return path


def test_stage_upload_images_and_zip(tmp_path):
    a = _png(tmp_path / "a.png")
    sub = tmp_path / "other"
    sub.mkdir()
    b = _png(sub / "a.png")  # same name from another folder: kept, renamed
    note = tmp_path / "notes.txt"
    note.write_text("x")
    staged = stage_upload([str(a), str(b), str(note)], tmp_path / "stage", Limits())
    assert staged is not None and staged.n_images == 2
    assert sorted(p.name for p in staged.source.iterdir()) == ["a-1.png", "a.png"]
    assert [s.name for s in staged.skipped] == ["notes.txt"]
    staged.close()
    assert not staged.source.exists()
    png = a.read_bytes()
    z = _zip(tmp_path / "batch.zip", {"line 1/cam/a.png": png, "b.png": png})
    staged = stage_upload([str(z)], tmp_path / "stage", Limits())
    assert staged.source == z and staged.n_images == 2 and staged.cleanup is None
    assert stage_upload([], tmp_path / "stage", Limits()) is None


def test_stage_upload_refuses_unsafe_or_oversized_uploads(tmp_path):
    png = _png(tmp_path / "a.png").read_bytes()
    stage = tmp_path / "stage"
    cases = {
        "traversal": (_zip(tmp_path / "t.zip", {"ok.png": png, "../../x.png": png}), Limits()),
        "absolute": (_zip(tmp_path / "abs.zip", {"/etc/x.png": png}), Limits()),
        "symlink": (_zip(tmp_path / "s.zip", {"ok.png": png}, symlink="link.png"), Limits()),
        "ratio": (
            _zip(tmp_path / "bomb.zip", {"big.png": b"\0" * (4 * 2**20)}),
            Limits(max_zip_ratio=100),
        ),
        "total": (
            _zip(tmp_path / "total.zip", {"a.png": png, "b.png": png}),
            Limits(max_zip_total_mb=0),
        ),
        "count": (
            _zip(tmp_path / "n.zip", {f"{i}.png": png for i in range(3)}),
            Limits(max_images=2),
        ),
        "size": (tmp_path / "a.png", Limits(max_file_mb=0)),
    }
    for what, (path, limits) in cases.items():
        with pytest.raises(UploadError) as err:
            stage_upload([str(path)], stage, limits)
        assert path.name in str(err.value) or "limit" in str(err.value), (what, err.value)
        assert str(tmp_path) not in str(err.value), (what, err.value)  # no server path shown
    with pytest.raises(UploadError, match="either one .zip"):
        stage_upload([str(cases["count"][0]), str(tmp_path / "a.png")], stage, Limits())
    notzip = tmp_path / "fake.zip"
    notzip.write_bytes(b"not a zip")
    with pytest.raises(UploadError, match="not a valid zip"):
        stage_upload([str(notzip)], stage, Limits())


# ------------------------------------------------------------------------------ screens
@pytest.fixture(scope="module")
def views(tmp_path_factory):
    ws = build_workspace(
        tmp_path_factory.mktemp("views"),
        n_images=40,
        n_types=3,
        type_names=["crack", "dent", "stain"],
    )
    service = WorkspaceService.over(ws)  # reads and actions: no engine needed here
    yield Views(service)
    service.close()


def test_cards_table_and_members(views):
    types = views.types()
    html = views.cards_html(types, selected=types[0].id)
    for t in types:
        assert f"data-type-id='{t.id}'" in html and t.name in html
    assert html.count("pa-selected") == 1 and "pa/thumb/" in html
    assert [r[0] for r in views.types_table(types)] == [t.id for t in types]
    members = views.type_members(types[0].id, "representative", limit=10)
    assert len(members) == min(10, types[0].n_regions)
    grid = views.members_html(members, selected=[members[1].region_id])
    assert grid.count("pa-member pa-on") == 1 and grid.count("<figure") == len(members)
    assert views.thumb(members[0].region_id)[:2] == b"\xff\xd8"
    assert views.crop(members[0].region_id).stat().st_size > 500


def test_type_actions_and_conflicts(views):
    t = views.types()[0]
    out = views.type_action(t.id, "confirm", expected_version=t.version, actor="ann")
    assert out["ok"] and views.service.get_type(t.id).status == "confirmed"
    stale = views.type_action(t.id, "rename", "x", expected_version=t.version, actor="bob")
    assert not stale["ok"] and stale["conflict"]
    assert views.type_action(t.id, "rename", "  ", actor="ann")["message"].startswith(
        "Type a new name"
    )
    members = views.type_members(t.id, limit=3)
    out = views.type_action(
        t.id, "split", region_ids=[m.region_id for m in members[:2]], actor="ann"
    )
    assert out["ok"] and len(out["type_ids"]) == 2
    new_id = out["type_ids"][1]
    assert views.service.get_type(new_id).n_regions == 2
    out = views.selection_action([members[2].region_id], "normal", actor="ann")
    assert out["ok"]
    assert views.type_action(-1, "undo", actor="ann")["ok"]
    rows = views.audit_rows(actor="ann")
    assert rows and {r[3] for r in rows} >= {"confirm_type", "split_type", "undo"}


def test_map_figure_has_one_trace_per_type(views):
    fig = views.map_figure()
    names = {tr.name for tr in fig.data}
    assert {"dent", "stain"} <= names
    assert sum(len(tr.x) for tr in fig.data) == 40
    assert fig.layout.dragmode == "lasso"


def test_project_2d_separates_clusters():
    rng = np.random.default_rng(0)
    x = np.r_[rng.normal(0, 1, (30, 16)), rng.normal(8, 1, (30, 16))]
    xy, method = project_2d(x)
    assert xy.shape == (60, 2) and method in ("PCA", "UMAP")
    a, b = xy[:30].mean(0), xy[30:].mean(0)
    assert np.linalg.norm(a - b) > 3 * xy[:30].std()
    assert project_2d(np.zeros((0, 4)))[0].shape == (0, 2)


def test_image_detail_views(views):
    m = views.type_members(views.types()[0].id, limit=1)[0]
    d = views.image_detail(m.image_id)
    # 96 px images are shown enlarged 4x (to at least 384 px)
    assert d["original"].shape == (384, 384, 3) and d["heat"].shape == (384, 384, 3)
    assert d["regions"].shape == (384, 384, 3) and d["prior"] is None
    # the region is painted in its type's colour where its mask is
    assert (np.abs(d["regions"].astype(int) - d["original"].astype(int)).sum(-1) > 60).any()
    assert any(r[0] == m.region_id for r in d["rows"])


# ------------------------------------------------------------------------------ packaging
def _names(reqs: list[str]) -> dict[str, str]:
    out = {}
    for r in reqs:
        name = re.split(r"[<>=!~ ;\[]", r.strip(), maxsplit=1)[0].lower()
        out[name] = r.strip()
    return out


def test_a_question_shows_its_crops_in_the_check_mark_grid(views):
    from webapp.views import Question

    t = views.types()[0]
    members = views.type_members(t.id, limit=3)
    q = Question(
        1,
        "confirm",
        "Is it one type?",
        "",
        {"type_id": t.id},
        [(str(views.crop(m.region_id)), f"{t.name} #{m.region_id}") for m in members],
        [],
    )
    grid = views.question_grid(q, pickable=True)
    assert "pa-pickable" in grid and grid.count("class='pa-member'") == len(members)
    for m in members:  # each crop by its region id, served by the crop route
        assert f"data-rid='{m.region_id}'" in grid and f"pa/crop/{m.region_id}.jpg" in grid
    assert "pa-pickable" not in views.question_grid(q, pickable=False)


def test_requirements_txt_matches_pyproject():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    lines = [
        ln
        for ln in (REPO / "requirements.txt").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    want, have = _names(pyproject), _names(lines)
    assert set(have) == set(want)
    for name, spec in have.items():
        if name == "gradio":  # the app needs Gradio 6 (a narrower range is still consistent)
            assert spec.startswith("gradio>=6")
            continue
        assert spec == want[name], (spec, want[name])


def test_spaces_entry_point_and_home(monkeypatch, tmp_path):
    from webapp.app import default_home  # the storage layer's rule, one for everything

    monkeypatch.setenv("PROTOATLAS_HOME", str(tmp_path))
    assert default_home() == tmp_path
    monkeypatch.delenv("PROTOATLAS_HOME")
    assert default_home() in (Path("/data/protoatlas"), Path("protoatlas-data"))
    text = (REPO / "app.py").read_text()
    assert "from webapp.app import serve" in text and "PROTOATLAS_HOME" in text


def test_service_keeps_the_vector_size_of_an_existing_workspace(tmp_path):
    """A workspace whose vectors were stored at another size (here 256-d, while the engine's
    default is 320) opens in the service and keeps its size; a new workspace takes the
    engine's."""
    from engine.config import ProtoAtlasConfig
    from protoatlas.service import WorkspaceService

    build_workspace(tmp_path, n_images=6, n_types=2).close()
    with WorkspaceService(tmp_path, "default") as service:
        assert service.ws.embedding_dim == 256
        assert len(service.ws.embeddings()[0]) > 0
    with WorkspaceService(tmp_path, "fresh") as service:
        assert service.ws.embedding_dim == ProtoAtlasConfig().discovery.vector_dim == 320 + 2 * 4
        assert service.config.discovery.context_weight > 0


def test_a_workspace_from_before_the_image_context_goes_on_without_it(tmp_path):
    """Vectors stored at the head embedding's size (320-d, before the image context): the
    service embeds new batches of that workspace without context, at that size."""
    from engine.config import ProtoAtlasConfig
    from protoatlas.service import WorkspaceService

    dim = ProtoAtlasConfig().discovery.embedding_dim
    build_workspace(tmp_path, n_images=6, n_types=2, dim=dim).close()
    with WorkspaceService(tmp_path, "default") as service:
        assert service.ws.embedding_dim == dim
        assert service.config.discovery.context_weight == 0.0
        assert service.config.discovery.vector_dim == dim


# ------------------------------------------------------------------------------ export
def test_export_of_a_batch_and_some_types_and_its_errors(tmp_path):
    import csv

    from webapp.tabs import export_holds

    ws = build_workspace(tmp_path / "home", n_images=12, n_types=3, type_names=["a", "b", "c"])
    service = WorkspaceService.over(ws)
    try:
        v = Views(service)
        batches, types = v.export_scopes()
        assert batches[0] == ("every batch", "") and [b[1] for b in batches[1:]] == ["1"]
        live = {t.name: t for t in v.types()}
        assert {value for _, value in types} == {str(t.id) for t in live.values()}
        a, b = live["a"], live["b"]
        path = v.export("csv", batch_id="1", type_ids=[str(a.id), "b"])  # an id and a name
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert sorted(r["type"] for r in rows) == sorted(["a"] * a.n_regions + ["b"] * b.n_regions)
        with pytest.raises(ValueError, match=rf"type {a.id} \(a\) is proposed"):
            v.export("crops", type_ids=["a"])
        service.ws.confirm_type(a.id, expected_version=a.version, actor="ann")
        with zipfile.ZipFile(v.export("crops", "", ["a"])) as z:
            assert {n.split("/")[0] for n in z.namelist()} == {"a"}
            assert len(z.namelist()) == a.n_regions
        with pytest.raises(LookupError, match="no batch with id 9"):
            v.export("coco", batch_id="9")
        with pytest.raises(LookupError, match="no type with id 99"):
            v.export("yolo", type_ids=["99"])
        with pytest.raises(ValueError, match="no type named 'zzz'"):
            v.export("csv", type_ids=["zzz"])
        with pytest.raises(ValueError, match="batch must be a batch id"):
            v.export("csv", batch_id="first")
        with pytest.raises(ValueError, match="exported whole"):
            v.export("audit_json", type_ids=["a"])
        assert v.export("audit_json", "", []).stat().st_size > 0  # the tab's empty scope
        assert all(any(f.iterdir()) for f in v.exports_dir.iterdir())  # none left empty
    finally:
        service.close()
    assert "confirmed types only" in export_holds("coco")
    assert "proposed" in export_holds("coco_all") and "rejected" in export_holds("csv")
    assert "always exported whole" in export_holds("audit_csv")
