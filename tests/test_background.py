"""BackgroundRetrainer: one retrain at a time, requests during a run fold into one more."""

from __future__ import annotations

import threading

from protoatlas.service.background import BackgroundRetrainer


class FakeService:
    def __init__(self, fail_first: bool = False) -> None:
        self.gate = threading.Event()
        self.started = threading.Event()
        self.calls: list[str] = []
        self.fail_first = fail_first
        self.version = 0

    def retrain(self, actor: str) -> int:
        self.calls.append(f"retrain:{actor}")
        self.started.set()
        assert self.gate.wait(10), "the test never opened the gate"
        if self.fail_first and self.version == 0:
            self.version = -1
            raise RuntimeError("disk full")
        self.version = max(self.version, 0) + 1
        return self.version

    def refresh_suggestions(self) -> None:
        self.calls.append("refresh")


def test_requests_during_a_run_fold_into_one_more_run() -> None:
    svc = FakeService()
    busy: list[bool] = []
    r = BackgroundRetrainer(svc, on_busy=busy.append)
    assert r.request() is True
    assert svc.started.wait(5) and r.busy
    assert [r.request() for _ in range(5)] == [False] * 5  # folded while the first runs
    svc.gate.set()
    assert r.wait(10)
    assert svc.calls == ["retrain:model", "refresh", "retrain:model", "refresh"]
    assert (r.runs, r.last_version, r.last_error) == (2, 2, None)
    assert busy == [True, False, True, False] and not r.busy
    svc.started.clear()
    assert r.request() is True  # idle again: a new request starts a new run
    assert r.wait(10) and r.runs == 3


def test_a_failed_run_is_reported_and_the_next_request_runs_again() -> None:
    svc = FakeService(fail_first=True)
    svc.gate.set()
    r = BackgroundRetrainer(svc)
    r.request()
    assert r.wait(10)
    assert r.last_error == "RuntimeError: disk full" and svc.calls == ["retrain:model"]
    r.request()
    assert r.wait(10)
    assert r.last_error is None and r.last_version == 1
    assert svc.calls == ["retrain:model", "retrain:model", "refresh"]


def test_the_runner_wraps_every_retrain() -> None:
    svc = FakeService()
    svc.gate.set()
    seen = []

    def runner(fn, **kwargs):
        seen.append(kwargs)
        return fn(**kwargs)

    r = BackgroundRetrainer(svc, runner=runner)
    r.request()
    assert r.wait(10) and seen == [{"actor": "model"}]
