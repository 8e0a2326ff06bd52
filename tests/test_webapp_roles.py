"""Roles (issue 18, "Access"): viewer reads, reviewer acts, admin uploads, retrains,
exports and creates workspaces. Every event handler of the app carries a role, read from the
app itself, so a new button or endpoint cannot slip through unchecked."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr
import pytest

pytest.importorskip("gradio_client")
from gradio_client import Client  # noqa: E402

from benchmarks.bench_webapp import build_workspace  # noqa: E402
from protoatlas.service import WorkspaceService  # noqa: E402
from storage import doctor  # noqa: E402
from webapp.access import (  # noqa: E402
    ROLE_ATTR,
    Access,
    Role,
    UnmarkedHandlerError,
    guard,
    needs,
    parse_roles,
    parse_users,
    read,
)
from webapp.app import ReviewApp, launch  # noqa: E402
from webapp.security import parse_auth  # noqa: E402

AUTH = "vera:v-pw:viewer, rita:r-pw:reviewer, ada:a-pw:admin"


# ------------------------------------------------------------------------------ syntax
def test_login_entries_give_roles_and_default_to_admin() -> None:
    users = {u.name: (u.password, u.role) for u in parse_users(AUTH + ",old:pw")}
    assert users == {
        "vera": ("v-pw", Role.VIEWER),
        "rita": ("r-pw", Role.REVIEWER),
        "ada": ("a-pw", Role.ADMIN),
        "old": ("pw", Role.ADMIN),  # no role: as before roles existed
    }
    # a password may hold ':'; a last part that is not a role stays in the password
    (u,) = parse_users("bob:pa:ss")
    assert (u.password, u.role) == ("pa:ss", Role.ADMIN)
    (u,) = parse_users("bob:pa:admin:Reviewer")
    assert (u.password, u.role) == ("pa:admin", Role.REVIEWER)
    assert parse_auth(AUTH) == [("vera", "v-pw"), ("rita", "r-pw"), ("ada", "a-pw")]
    assert parse_users("") == [] and parse_auth("  ") is None


@pytest.mark.parametrize(
    "bad, says",
    [
        ("bob", "PROTOATLAS_AUTH must be 'user:password[:role]'"),
        ("bob::viewer", "without a user or password"),
        (":pw", "without a user or password"),
        ("bob:pw,bob:other", "the user 'bob' is given twice"),
    ],
)
def test_malformed_login_entries_are_named(bad: str, says: str) -> None:
    with pytest.raises(ValueError, match=says.replace("[", r"\[").replace("]", r"\]")):
        parse_users(bad)


def test_hf_roles_and_their_defaults() -> None:
    assert parse_roles("alice:admin, bob:Reviewer") == {"alice": Role.ADMIN, "bob": Role.REVIEWER}
    with pytest.raises(ValueError, match="PROTOATLAS_HF_ROLES: unknown role 'boss'"):
        parse_roles("alice:boss")
    env = {"PROTOATLAS_HF_ROLES": "alice:admin,bob:reviewer"}
    access = Access.from_env(env)
    assert access.role(None, "alice") == Role.ADMIN
    assert access.role(None, "bob") == Role.REVIEWER
    assert access.role(None, "mallory") == Role.VIEWER  # any other HF user
    assert access.role(None, None) == Role.VIEWER  # a visitor not signed in
    env["PROTOATLAS_HF_DEFAULT_ROLE"] = "reviewer"
    assert Access.from_env(env).role(None, "mallory") == Role.REVIEWER
    with pytest.raises(ValueError, match="PROTOATLAS_HF_DEFAULT_ROLE"):
        Access.from_env({"PROTOATLAS_HF_DEFAULT_ROLE": "root"})
    # nothing configured: a local single-user server, everyone an admin
    assert not Access.from_env({}).restricted
    assert Access.from_env({}).role(None, None) == Role.ADMIN
    # login roles come first; the login users' roles apply to the login names
    both = Access.from_env({"PROTOATLAS_AUTH": AUTH, **env})
    assert both.role("vera", "alice") == Role.VIEWER
    assert both.role(None, "alice") == Role.ADMIN


# ------------------------------------------------------------------------------ handlers
@pytest.fixture(scope="module")
def built(tmp_path_factory):
    home = tmp_path_factory.mktemp("roles-built")
    build_workspace(home, n_images=12, n_types=3).close()
    service = WorkspaceService(home, "default")
    app = ReviewApp(service, access=Access.from_env({"PROTOATLAS_AUTH": AUTH}))
    yield app
    app.close()
    service.close()


def test_every_handler_of_the_app_has_a_role(built: ReviewApp) -> None:
    fns = [bf for bf in built.blocks.fns.values() if bf.fn is not None]
    assert len(fns) > 80
    for bf in fns:
        assert isinstance(getattr(bf.fn, ROLE_ATTR, None), Role), bf.name
    roles = {bf.api_name: getattr(bf.fn, ROLE_ATTR) for bf in fns if bf.api_visibility == "public"}
    assert roles["list_types"] == roles["type_detail"] == roles["audit"] == Role.VIEWER
    assert roles["type_action"] == roles["answer_suggestion"] == roles["undo"] == Role.REVIEWER
    for name in ("upload_batch", "retrain", "export"):
        assert roles[name] == Role.ADMIN, name
    assert built.handler_roles[Role.REVIEWER] >= 12 and built.handler_roles[Role.ADMIN] >= 4


def test_an_unmarked_handler_stops_the_app_from_being_built() -> None:
    def act(x, request: gr.Request):
        return x

    with gr.Blocks() as blocks:
        box = gr.Textbox()
        box.submit(act, inputs=[box], outputs=[box])
    with pytest.raises(UnmarkedHandlerError, match="act.*has no role"):
        guard(blocks, lambda request, role: None)

    def acts_blind(x):
        return x

    with gr.Blocks() as blocks:
        box = gr.Textbox()
        box.submit(needs(Role.REVIEWER)(acts_blind), inputs=[box], outputs=[box])
    with pytest.raises(UnmarkedHandlerError, match="takes no gr.Request"):
        guard(blocks, lambda request, role: None)
    with gr.Blocks() as blocks:
        box = gr.Textbox()
        box.submit(read(acts_blind), inputs=[box], outputs=[box])
    assert guard(blocks, lambda request, role: None)[Role.VIEWER] == 1


def _request(username=None, hf_user=None):
    session = {"oauth_info": {"userinfo": {"preferred_username": hf_user}}} if hf_user else {}
    return SimpleNamespace(
        username=username, session_hash="abcdef123456", request=SimpleNamespace(session=session)
    )


def test_the_caller_role_from_login_and_from_hugging_face(built: ReviewApp) -> None:
    assert built.role_of(_request("vera")) == Role.VIEWER
    assert built.role_of(_request("rita")) == Role.REVIEWER
    assert built.role_of(_request("ada")) == Role.ADMIN
    built.check_role(_request("rita"), Role.REVIEWER)  # allowed: nothing raised
    with pytest.raises(gr.Error, match="vera is a viewer: .* need the reviewer role"):
        built.check_role(_request("vera"), Role.REVIEWER)
    with pytest.raises(gr.Error, match="rita is a reviewer: uploads.* need the admin role"):
        built.check_role(_request("rita"), Role.ADMIN)
    hf = ReviewApp.__new__(ReviewApp)
    hf.access = Access.from_env({"PROTOATLAS_HF_ROLES": "alice:admin"})
    assert hf.role_of(_request(hf_user="alice")) == Role.ADMIN
    assert hf.role_of(_request(hf_user="mallory")) == Role.VIEWER
    assert hf.role_of(_request()) == Role.VIEWER
    with pytest.raises(gr.Error, match="mallory is a viewer"):
        hf.check_role(_request(hf_user="mallory"), Role.REVIEWER)


# ------------------------------------------------------------------------------ served
@pytest.fixture(scope="module")
def served(tmp_path_factory):
    home = tmp_path_factory.mktemp("roles")
    build_workspace(home, n_images=24, n_types=3).close()
    service = WorkspaceService(home, "default")
    app, url = launch(
        service,
        port=None,
        quiet=True,
        prevent_thread_lock=True,
        auth=parse_auth(AUTH),
        access=Access.from_env({"PROTOATLAS_AUTH": AUTH}),
        auto_retrain=False,
    )
    yield app, url, service
    app.close()
    service.close()


def _args(params: list[dict], harmless: dict) -> list:
    out = []
    for p in params:
        has = p.get("parameter_has_default")
        out.append(p["parameter_default"] if has else harmless.get(p["parameter_name"]))
    return out


@pytest.mark.slow
def test_each_role_is_refused_what_it_may_not_do(served) -> None:
    app, url, service = served
    ws = service.ws
    roles = {
        "/" + bf.api_name: getattr(bf.fn, ROLE_ATTR)
        for bf in app.blocks.fns.values()
        if bf.fn is not None and bf.api_visibility == "public"
    }
    assert roles["/create_workspace"] == Role.ADMIN  # the server's workspace controls
    harmless = {"type_id": ws.list_types()[0].id, "action": "confirm", "value": "line-x"}
    users = {"vera": ("v-pw", Role.VIEWER), "rita": ("r-pw", Role.REVIEWER)}
    refused = 0
    for user, (password, role) in users.items():
        client = Client(url, auth=(user, password), verbose=False)
        api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
        assert set(api) == set(roles), "every named endpoint has a role"
        for name, info in sorted(api.items()):
            if roles[name] <= role:
                continue
            before = len(ws.audit())
            exports = sorted((service.root / "exports").iterdir())
            with pytest.raises(Exception, match=f"{user} is a {role.label}: .*need the "):
                client.predict(*_args(info["parameters"], harmless), api_name=name)
            refused += 1
            assert len(ws.audit()) == before, f"{name} as {user} changed the audit"
            assert sorted((service.root / "exports").iterdir()) == exports
        # what the role may do works
        assert client.predict(api_name="/list_types")["data"]
        assert not (service.root.parent / "line-x").exists()
    # viewer: the 8 endpoints that act; reviewer: the 4 admin ones
    assert refused == sum(r > role for _, role in users.values() for r in roles.values()) >= 12
    # the reviewer acts, and the audit names them; an admin exports
    rita = Client(url, auth=("rita", "r-pw"), verbose=False)
    t = ws.list_types()[0]
    assert rita.predict(t.id, "confirm", "", None, -1, api_name="/type_action")["ok"]
    assert max(ws.audit(), key=lambda e: e.seq).actor == "rita"
    ada = Client(url, auth=("ada", "a-pw"), verbose=False)
    assert str(ada.predict("csv", "", [], api_name="/export")).endswith(".csv")
    assert not [p for p in doctor(ws) if p.severity == "error"]


@pytest.mark.slow
def test_another_workspace_has_the_same_roles(served) -> None:
    _, url, _ = served
    ada = Client(url, auth=("ada", "a-pw"), verbose=False)
    assert ada.predict("line-r", api_name="/create_workspace") == "pa/open/line-r"
    vera = Client(url, auth=("vera", "v-pw"), verbose=False)
    # opening it mounts its app; its handlers are guarded alike
    with pytest.raises(Exception, match="vera is a viewer"):
        vera.predict("line-s", api_name="/create_workspace")
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
    data = b"username=ada&password=a-pw"
    opener.open(urllib.request.Request(url.rstrip("/") + "/login", data=data), timeout=30)
    opener.open(url.rstrip("/") + "/pa/open/line-r", timeout=30)
    other = Client(url.rstrip("/") + "/w/line-r/", auth=("vera", "v-pw"), verbose=False)
    with pytest.raises(Exception, match="vera is a viewer"):
        other.predict(-1, "undo", "", None, -1, api_name="/type_action")
