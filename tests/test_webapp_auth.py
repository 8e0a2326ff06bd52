"""Login on (``PROTOATLAS_AUTH``): every route refuses a request without a session, except
the login page and its static files, which must not reveal anything of the workspace."""

from __future__ import annotations

import http.cookiejar
import re
import urllib.error
import urllib.parse
import urllib.request

import pytest

pytest.importorskip("gradio_client")
from gradio_client import Client  # noqa: E402

from benchmarks.bench_webapp import build_workspace  # noqa: E402
from protoatlas.service import WorkspaceService  # noqa: E402
from webapp.app import launch  # noqa: E402
from webapp.security import RequireLogin, parse_auth  # noqa: E402

SECRET_TYPE = "zebra-crack-7731"


@pytest.fixture(scope="module")
def locked(tmp_path_factory):
    home = tmp_path_factory.mktemp("auth")
    build_workspace(home, n_images=24, n_types=3, type_names=[SECRET_TYPE, "dent", "stain"]).close()
    service = WorkspaceService(home, "default")
    app, url = launch(
        service,
        port=None,
        quiet=True,
        prevent_thread_lock=True,
        auth=parse_auth("alice:s3cret-pw, bob:other"),
    )
    yield app, url.rstrip("/"), service
    app.close()
    service.close()


def _request(
    url: str,
    method: str = "GET",
    opener=None,
    data: bytes | None = None,
    headers: dict | None = None,
) -> tuple[int, bytes]:
    req = urllib.request.Request(url, method=method, data=data, headers=headers or {})
    try:
        with (opener or urllib.request.build_opener()).open(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _concrete(path: str) -> str:
    """A concrete URL path for a route template ({param} and {param:path} filled in)."""
    return re.sub(r"\{[^}]+\}", "1", path)


def _routes(routes, prefix: str = "") -> list[tuple[str, set[str]]]:
    """(path, methods) of every HTTP route, mounted sub-routers included."""
    out = []
    for r in routes:
        if hasattr(r, "methods") and r.methods:
            out.append((prefix + r.path, set(r.methods)))
        elif hasattr(r, "original_router"):  # an included router (FastAPI >= 0.130)
            out.extend(_routes(r.original_router.routes, prefix + r.include_context.prefix))
        elif hasattr(r, "routes"):  # Mount
            out.extend(_routes(r.routes, prefix + r.path))
    return out


def test_every_route_refuses_requests_without_login(locked):
    app, url, service = locked
    routes = _routes(app.blocks.server_app.routes)
    assert len(routes) > 40, routes
    checked = 0
    for route_path, methods in routes:
        path = _concrete(route_path)
        for method in sorted(methods - {"OPTIONS"}):
            body = b"{}" if method == "POST" else None
            status, data = _request(
                url + path, method, data=body, headers={"content-type": "application/json"}
            )
            checked += 1
            if RequireLogin.is_public(path):
                assert SECRET_TYPE.encode() not in data, f"{method} {path} leaks a type name"
                assert str(service.root).encode() not in data, f"{method} {path} leaks a path"
            else:
                assert status == 401, f"{method} {path} answered {status} without a login"
    assert checked > 40
    # the picture routes and Gradio's file route too, with real ids and paths
    rid = service.ws.regions_for_batch(1, with_masks=False)[0].id
    for path in (
        f"/pa/thumb/{rid}.jpg",
        f"/pa/crop/{rid}.jpg",
        "/gradio_api/info",
        "/config",
        f"/gradio_api/file={service.root / 'workspace.duckdb'}",
        "/gradio_api/queue/data?session_hash=x",
        "/gradio_api/upload",
    ):
        assert _request(url + path)[0] == 401, path


def test_login_page_is_served_and_gives_nothing_away(locked):
    _, url, _ = locked
    status, page = _request(url + "/")
    assert status == 200
    assert SECRET_TYPE.encode() not in page


def test_logged_in_users_get_in_and_wrong_passwords_do_not(locked):
    _, url, _ = locked
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    bad = urllib.parse.urlencode({"username": "alice", "password": "wrong"}).encode()
    status, _ = _request(
        url + "/login", "POST", opener, bad, {"content-type": "application/x-www-form-urlencoded"}
    )
    assert status in (400, 401)
    assert _request(url + "/config", opener=opener)[0] == 401
    good = urllib.parse.urlencode({"username": "alice", "password": "s3cret-pw"}).encode()
    status, _ = _request(
        url + "/login", "POST", opener, good, {"content-type": "application/x-www-form-urlencoded"}
    )
    assert status == 200
    status, config = _request(url + "/config", opener=opener)
    assert status == 200 and b"components" in config
    with pytest.raises(Exception):
        Client(url, auth=("alice", "nope"), verbose=False)
    client = Client(url, auth=("alice", "s3cret-pw"), verbose=False)
    table = client.predict(api_name="/list_types")
    assert SECRET_TYPE in {row[1] for row in table["data"]}
    t = next(row for row in table["data"] if row[1] == "dent")
    assert client.predict(t[0], "confirm", "", None, -1, api_name="/type_action")["ok"]
    # the audit names the logged-in reviewer
    assert client.predict("alice", "confirm_type", None, api_name="/audit")["data"]


def test_another_workspace_needs_the_same_login_and_names_the_reviewer(locked):
    app, url, service = locked
    assert _request(url + "/pa/open/default")[0] == 401
    client = Client(url, auth=("alice", "s3cret-pw"), verbose=False)
    assert client.predict("line-b", api_name="/create_workspace") == "pa/open/line-b"
    assert _request(url + "/pa/open/line-b")[0] == 401
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    good = urllib.parse.urlencode({"username": "alice", "password": "s3cret-pw"}).encode()
    headers = {"content-type": "application/x-www-form-urlencoded"}
    assert _request(url + "/login", "POST", opener, good, headers)[0] == 200
    status, _ = _request(url + "/pa/open/line-b", opener=opener)  # mounts it, redirects
    assert status == 200
    # mounted now: without a login every one of its routes is refused
    for path in ("/w/line-b/config", "/w/line-b/gradio_api/info", "/w/line-b/pa/full/1.jpg"):
        assert _request(url + path)[0] == 401, path
    assert _request(url + "/w/line-b/config", opener=opener)[0] == 200  # one login for all
    other = Client(url + "/w/line-b/", auth=("alice", "s3cret-pw"), verbose=False)
    assert other.predict(api_name="/list_types")["data"] == []
    assert SECRET_TYPE not in str(other.predict(api_name="/list_types"))
