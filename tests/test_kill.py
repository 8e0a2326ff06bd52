"""SIGKILL at seeded random moments while a workload ingests, reviews, undoes and exports
(issue: reliability): the workspace opens, the doctor finds it sound, and no decision that
was acknowledged is lost. ``PROTOATLAS_KILL_TRIALS=N`` runs N trials (long mode;
``benchmarks/bench_kill.py`` records them)."""

from __future__ import annotations

import os

import pytest

from tests.kill_workload import trial

pytestmark = pytest.mark.slow

TRIALS = int(os.environ.get("PROTOATLAS_KILL_TRIALS", "3"))


@pytest.mark.parametrize("seed", range(TRIALS))
def test_a_kill_at_a_random_moment_loses_nothing_acknowledged(tmp_path, seed) -> None:
    out = trial(tmp_path, seed)
    assert out["alive_when_killed"], out["stderr"]  # the kill hit a running workload
    assert out["acknowledged"] > 0  # it had done something worth losing
    assert out["lost"] == 0 and out["doctor_errors"] == 0, out
