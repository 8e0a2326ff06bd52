"""Deleting a batch through the service, the web app (an admin's action, also an API
endpoint) and the CLI (``protoatlas delete-batch``)."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

from benchmarks.bench_webapp import build_workspace, make_batch
from protoatlas.cli import main
from protoatlas.service import WorkspaceService
from storage import Workspace, doctor
from webapp.views import Views

DIM = 16


def _sound(ws) -> bool:
    return not [p for p in doctor(ws, verify_hashes=True) if p.severity == "error"]


def _two_batches(home, name="default"):
    ws = build_workspace(home, name, n_images=10, n_types=2, dim=DIM)
    ws.ingest_batch(
        make_batch(n_images=6, n_types=2, dim=DIM, seed=5, name="wrong one", prefix="w/"),
        actor="up",
    )
    return ws


def test_the_service_deletes_the_batch_its_tokens_and_refreshes_the_questions(tmp_path):
    ws = _two_batches(tmp_path)
    service = WorkspaceService.over(ws)
    try:
        doomed = max(b.id for b in service.batches())
        path = service.tokens_path(doomed)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, region_ids=np.zeros(1))
        out = service.delete_batch(doomed, actor="ada")
        assert out.name == "wrong one" and out.n_images == 6
        assert not path.exists()
        assert [b.id for b in service.batches()] == [1]
        last = ws.audit(limit=2)
        assert [e.action for e in last] == ["replace_suggestions", "delete_batch"]
        assert _sound(ws)
    finally:
        service.close()


def test_the_views_need_a_batch_and_the_confirmation(tmp_path):
    ws = _two_batches(tmp_path)
    service = WorkspaceService.over(ws)
    try:
        v = Views(service)
        choices = v.batch_choices()
        assert choices[0] == ("wrong one (#2, 6 images)", "2")  # newest first
        assert "Pick the batch" in v.delete_batch(None, True, "ada")["message"]
        assert "tick the box" in v.delete_batch("2", False, "ada")["message"]
        assert "'x' is not a batch id" in v.delete_batch("x", True, "ada")["message"]
        assert "no batch with id 9" in v.delete_batch("9", True, "ada")["message"]
        assert len(service.batches()) == 2  # none of those deleted anything
        out = v.delete_batch("#2", True, "ada")
        assert out["ok"] and "Deleted batch wrong one (#2): 6 image(s)" in out["message"]
        assert "protoatlas restore" in out["message"]
        assert v.batch_choices() == [(choices[1][0], "1")]
        v.stop()
    finally:
        service.close()


def _run(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    return code, out.getvalue(), err.getvalue()


def test_the_cli_lists_asks_for_yes_and_deletes(tmp_path):
    _two_batches(tmp_path, "line").close()
    base = ["delete-batch", "--home", str(tmp_path), "--workspace", "line"]
    code, out, _ = _run(base)
    assert code == 0 and "wrong one" in out and "bench batch" in out
    code, _, err = _run([*base, "--batch", "2"])
    assert code != 0 and "add --yes" in err
    code, _, err = _run([*base, "--batch", "7", "--yes"])
    assert code != 0 and "no batch with id 7" in err and "Traceback" not in err
    code, out, _ = _run([*base, "--batch", "2", "--yes", "--actor", "ada"])
    assert code == 0 and "deleted batch 'wrong one' (#2): 6 images" in out
    with Workspace.open(tmp_path, "line") as ws:
        assert [b.id for b in ws.batches()] == [1]
        assert [e.actor for e in ws.audit() if e.action == "delete_batch"] == ["ada"]
        assert _sound(ws)


@pytest.mark.slow
def test_an_admin_deletes_through_the_api(tmp_path):
    pytest.importorskip("gradio_client")
    from gradio_client import Client

    from webapp.access import Access
    from webapp.app import launch
    from webapp.security import parse_auth

    _two_batches(tmp_path).close()
    service = WorkspaceService(tmp_path, "default")
    users = "ada:a-pw:admin,rita:r-pw:reviewer"
    app, url = launch(
        service,
        port=None,
        quiet=True,
        prevent_thread_lock=True,
        auth=parse_auth(users),
        access=Access.from_env({"PROTOATLAS_AUTH": users}),
        auto_retrain=False,
    )
    try:
        rita = Client(url, auth=("rita", "r-pw"), verbose=False)
        with pytest.raises(Exception, match="rita is a reviewer"):
            rita.predict("2", True, api_name="/delete_batch")
        ada = Client(url, auth=("ada", "a-pw"), verbose=False)
        out = ada.predict("2", True, api_name="/delete_batch")
        assert out["ok"], out
        assert [b.id for b in service.batches()] == [1]
        assert [e.actor for e in service.ws.audit() if e.action == "delete_batch"] == ["ada"]
        assert _sound(service.ws)
    finally:
        app.close()
        service.close()
