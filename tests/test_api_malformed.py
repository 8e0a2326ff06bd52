"""Malformed calls to every named endpoint (issue: reliability, "Bad input"): wrong types,
unknown ids, huge strings, negative numbers. Each gets a clear error or a refusal, never a
traceback, never a message with a server path, and the workspace stays sound."""

from __future__ import annotations

import re

import pytest

pytest.importorskip("gradio_client")
from gradio_client import Client  # noqa: E402

from benchmarks.bench_webapp import build_workspace  # noqa: E402
from protoatlas.service import WorkspaceService  # noqa: E402
from storage import doctor  # noqa: E402
from webapp.app import launch  # noqa: E402

pytestmark = pytest.mark.slow

#: Bad values tried for every parameter in turn (the others keep a harmless value).
BAD = ["", "x" * 100_000, -1, -(10**12), 10**18, "not a number", "../../etc/passwd", None, [], {}]
#: Endpoints whose parameters are uploaded files (their bad input is tested with files).
FILE_ENDPOINTS = {"/upload_batch"}
SKIP = {"/retrain"}  # runs the engine: no model in this storage-only workspace


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    home = tmp_path_factory.mktemp("malformed")
    build_workspace(home, n_images=24, n_types=3).close()
    service = WorkspaceService(home, "default")
    app, url = launch(service, port=None, quiet=True, prevent_thread_lock=True)
    yield service, Client(url, verbose=False)
    app.close()
    service.close()


def _endpoints(client: Client) -> dict[str, list[dict]]:
    api = client.view_api(return_format="dict", print_info=False)
    return {name: info["parameters"] for name, info in api["named_endpoints"].items()}


#: Python's own words for a bad conversion: a message a user should never see.
RAW = re.compile(r"invalid literal|int\(\) argument|has no attribute|NoneType|object is not")


def test_every_named_endpoint_answers_bad_input_clearly(served) -> None:
    service, client = served
    root = str(service.root)
    ws = service.ws
    # a harmless value for the parameters without a default, so each bad value is the
    # only thing wrong with its call
    harmless = {
        "type_id": ws.list_types()[0].id,
        "image_id": ws.regions_for_batch(1, with_masks=False)[0].image_id,
        "action": "rename",
    }
    endpoints = _endpoints(client)
    assert {"/list_types", "/type_action", "/audit", "/export", "/image_detail"} <= set(endpoints)
    tried = 0
    for name, params in sorted(endpoints.items()):
        if name in FILE_ENDPOINTS or name in SKIP or not params:
            continue
        for k in range(len(params)):
            for bad in BAD:
                args = [
                    p["parameter_default"]
                    if p.get("parameter_has_default")
                    else harmless.get(p["parameter_name"])
                    for p in params
                ]
                args[k] = bad
                tried += 1
                try:
                    out = client.predict(*args, api_name=name)
                except Exception as exc:  # a clear refusal: Gradio's error, one message
                    text = str(exc)
                    assert "Traceback" not in text, (name, k, bad, text[:300])
                    assert not RAW.search(text), (name, k, bad, text[:300])
                    assert root not in text, (name, k, bad, "leaks the workspace path")
                    continue
                text = str(out)
                assert root not in text, (name, k, bad, "leaks the workspace path")
                if isinstance(out, dict) and "ok" in out and not out["ok"]:
                    assert out.get("message"), (name, k, bad)
    assert tried > 100
    problems = doctor(service.ws)
    assert not [p for p in problems if p.severity == "error"], problems
