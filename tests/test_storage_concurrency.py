"""One writer process; readers never wait for a writer; threads share the writer safely."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from storage import ConflictError, Workspace, WorkspaceLockedError, doctor
from tests.storage_fixtures import make_batch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def ws(tmp_path):
    with Workspace.open(tmp_path, "w", embedding_dim=16) as w:
        w.ingest_batch(make_batch(20, n_types=3, seed=4))
        yield w


def test_a_second_process_gets_a_clear_error(ws, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "tests.storage_fixtures", "try-open", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    line = out.stdout.strip()
    assert line.startswith("WorkspaceLockedError: workspace 'w'")
    assert f"is in use by another process (pid {os.getpid()})" in line
    assert "\n" not in line


def test_lock_error_is_translated(monkeypatch, tmp_path):
    import duckdb

    def locked(*a, **k):
        raise duckdb.IOException(
            'IO Error: Could not set lock on file "x": Conflicting lock '
            "is held in /usr/bin/python3 (PID 4242). See also ..."
        )

    monkeypatch.setattr(duckdb, "connect", locked)
    with pytest.raises(
        WorkspaceLockedError, match=r"in use by another process \(pid 4242\)"
    ) as err:
        Workspace.open(tmp_path, "x")
    assert err.value.pid == 4242


def test_reads_do_not_wait_for_a_long_write(ws):
    inside, release = threading.Event(), threading.Event()
    types_before = [(t.id, t.name) for t in ws.list_types()]

    def long_write():
        with ws.transaction() as con:
            con.execute("UPDATE types SET name = name || '-new'")
            inside.set()
            release.wait(30)

    writer = threading.Thread(target=long_write)
    writer.start()
    assert inside.wait(10)
    t0 = time.perf_counter()
    seen = [(t.id, t.name) for t in ws.list_types()]
    members = ws.type_members(seen[0][0], limit=5)
    elapsed = time.perf_counter() - t0
    release.set()
    writer.join(10)
    assert elapsed < 2 and seen == types_before and len(members) == 5  # the committed state
    assert all(t.name.endswith("-new") for t in ws.list_types())


def test_writes_from_threads_are_serialised_and_conflicts_are_exact(ws):
    target = ws.list_types()[0]
    barrier = threading.Barrier(4)
    results: list[str] = []

    def stale_rename(i):
        barrier.wait()
        try:
            ws.rename_type(
                target.id, f"name-{i}", expected_version=target.version, actor=f"user{i}"
            )
            results.append("ok")
        except ConflictError:
            results.append("conflict")

    threads = [threading.Thread(target=stale_rename, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == ["conflict"] * 3 + ["ok"]
    assert ws.get_type(target.id).version == target.version + 1
    assert len(ws.audit(action="rename_type")) == 1

    def retrying_renames(i):  # each a real change (re-confirming a type changes nothing)
        for k in range(5):
            while True:
                t = ws.get_type(target.id)
                try:
                    ws.rename_type(
                        target.id, f"u{i}-{k}", expected_version=t.version, actor=f"u{i}"
                    )
                    break
                except ConflictError:
                    continue

    threads = [threading.Thread(target=retrying_renames, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert ws.get_type(target.id).version == target.version + 1 + 15
    assert len(ws.audit(action="rename_type", limit=100)) == 1 + 15
    assert doctor(ws) == []


def test_nested_transactions_join_and_roll_back_together(ws):
    n = len(ws.list_types())
    with pytest.raises(RuntimeError):
        with ws.transaction() as con:
            con.execute("DELETE FROM type_stats")
            a = ws.list_types()[0]
            ws.rename_type(a.id, "inner", expected_version=a.version, actor="ann")  # joins
            raise RuntimeError("abort all")
    assert len(ws.list_types()) == n and "inner" not in {t.name for t in ws.list_types()}
    assert doctor(ws) == []  # the summary deleted inside the aborted block is intact


def test_the_cli_beside_a_running_app_is_refused_with_the_holder_named(tmp_path):
    """Two processes on one workspace (issue: reliability): the served app holds it, a CLI
    command on the same workspace is refused in one line naming the holder, and the
    workspace is sound and unchanged afterwards."""
    from benchmarks.bench_webapp import build_workspace
    from protoatlas.service import WorkspaceService
    from storage import doctor
    from webapp.app import launch

    build_workspace(tmp_path, n_images=8, n_types=2).close()
    service = WorkspaceService(tmp_path, "default")
    app, _ = launch(service, port=None, quiet=True, prevent_thread_lock=True)
    try:
        before = len(service.audit(limit=10_000))
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "protoatlas",
                "export",
                "--home",
                str(tmp_path),
                "--format",
                "csv",
                "--out",
                str(tmp_path / "x.csv"),
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode != 0
        assert f"in use by another process (pid {os.getpid()})" in out.stderr
        assert "Traceback" not in out.stderr
        assert not (tmp_path / "x.csv").exists()
        assert len(service.audit(limit=10_000)) == before
        assert not [p for p in doctor(service.ws) if p.severity == "error"]
    finally:
        app.close()
        service.close()
