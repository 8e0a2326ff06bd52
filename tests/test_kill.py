"""SIGKILL at seeded random moments (issue: reliability): the workspace opens, the doctor
finds it sound, and no decision that was acknowledged is lost -- while a workload ingests,
reviews, undoes and exports (storage steps), while the engine discovers, uploads and
retrains into the workspace, and while the served app is driven through its API.
``PROTOATLAS_KILL_TRIALS=N`` runs N storage trials (long mode: ``benchmarks/bench_kill.py
--mode storage|engine|app`` records them)."""

from __future__ import annotations

import os

import pytest

from tests.kill_engine import ENGINE_KINDS
from tests.kill_workload import trial

pytestmark = pytest.mark.slow

TRIALS = int(os.environ.get("PROTOATLAS_KILL_TRIALS", "3"))


@pytest.mark.parametrize("seed", range(TRIALS))
def test_a_kill_at_a_random_moment_loses_nothing_acknowledged(tmp_path, seed) -> None:
    out = trial(tmp_path, seed)
    assert out["alive_when_killed"], out["stderr"]  # the kill hit a running workload
    assert out["acknowledged"] > 0  # it had done something worth losing
    assert out["lost"] == 0 and out["doctor_errors"] == 0, out


def test_a_kill_inside_an_engine_upload_loses_nothing_and_leaves_no_partial_batch(tmp_path) -> None:
    from tests.kill_engine import trial as engine_trial

    # seed 5: killed within 0.2 s of the start of the third upload (the first is the
    # workspace's discovery), with retrains and reviewer steps before it
    out = engine_trial(tmp_path, 5, steps=3, within_s=0.2, kind="upload")
    assert out["alive_when_killed"] and out["kill_step_reached"], out["stderr"]
    assert out["killed_in"] in ENGINE_KINDS, out  # inside the engine step, not between
    assert out["acknowledged_engine"] >= 2  # the discovery and an upload were acknowledged
    assert out["lost"] == 0 and out["lost_batches"] == 0, out
    assert out["doctor_errors_as_left"] == 0 and out["doctor_errors"] == 0, out
    assert out["partial_batches"] == 0, out
    assert out["usable_after"], out["stderr"]  # one more upload succeeds


def test_a_killed_server_loses_nothing_and_serve_restarts_on_its_workspace(tmp_path) -> None:
    pytest.importorskip("gradio_client")
    from tests.kill_app import prepare_home
    from tests.kill_app import trial as app_trial

    home = prepare_home(tmp_path / "seed")
    # seed 0: the server is killed within 0.2 s of the start of the reviewer's second upload
    out = app_trial(tmp_path / "t", 0, home, steps=2, within_s=0.2, kind="upload")
    assert out["alive_when_killed"] and out["kill_step_reached"], out["stderr"]
    assert out["killed_in"] == "upload", out
    assert out["acknowledged"] > 0, out
    assert out["lost"] == 0 and out["lost_as_left"] == 0, out
    assert out["doctor_errors_as_left"] == 0 and out["doctor_errors"] == 0, out
    assert out["restarted"], out["stderr"]  # the dead server's lock did not refuse it
    assert out["action_after_restart"] and out["action_after_restart_kept"], out
