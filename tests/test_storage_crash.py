"""A process SIGKILLed inside an ingest or a retrain leaves the workspace as before."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from storage import AssignmentsIn, ModelVersionIn, Workspace, doctor
from tests.storage_fixtures import MARKER, counts, crash_batch, make_batch

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")


def _files(root: Path) -> set[str]:
    """Names of the image and blob files of a workspace folder."""
    return {p.name for sub in ("images", "blobs") for p in (root / sub).rglob("*") if p.is_file()}


def _assignments(ws):
    with ws.read() as cur:
        return cur.execute("SELECT * FROM assignments ORDER BY region_id").fetchall()


def _kill_inside(command: str, home: Path, chunk: int) -> str:
    """Start the child, wait for its marker (printed inside the transaction), SIGKILL it."""
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.storage_fixtures", command, str(home), str(chunk)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    line = ""
    try:
        while time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line or line.startswith(MARKER) or "FINISHED" in line:
                break
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(30)
    assert line.startswith(MARKER), (
        f"child never reached the kill point: {line!r} {child.stderr.read()[-2000:]}"
    )
    assert child.returncode == -signal.SIGKILL
    return line


def test_killed_ingest_leaves_the_workspace_as_before_and_can_be_retried(tmp_path):
    with Workspace.open(tmp_path, "w", embedding_dim=8) as ws:
        ws.ingest_batch(make_batch(20, dim=8, seed=1, name="small"))
        before, types_before = counts(ws), ws.list_types()
    files_before = _files(tmp_path / "w")

    line = _kill_inside("crash-ingest", tmp_path, 50_000)
    assert "embeddings 100000 150000" in line  # 150 000 regions were already inserted
    leftovers = _files(tmp_path / "w") - files_before
    assert len(leftovers) == 1_001  # the killed ingest had written its images and model
    assert len(list((tmp_path / "w" / "pending").iterdir())) == 1  # and left its marker

    with Workspace.open(tmp_path, "w") as ws:
        assert counts(ws) == before
        assert ws.list_types() == types_before
        assert _files(tmp_path / "w") == files_before  # orphans removed at open
        assert doctor(ws) == []
        batch_id = ws.ingest_batch(crash_batch())  # the retry succeeds
        after = counts(ws)
        assert after["regions"] == before["regions"] + 150_000
        assert after["images"] == before["images"] + 1_000
        assert ws.batches()[-1].id == batch_id and ws.batches()[-1].n_regions == 150_000
        assert doctor(ws) == []


def test_killed_retrain_leaves_the_workspace_as_before_and_can_be_retried(tmp_path):
    with Workspace.open(tmp_path, "w", embedding_dim=8) as ws:
        ws.ingest_batch(
            make_batch(
                1_000,
                regions_per_image=40,
                dim=8,
                n_types=4,
                seed=2,
                size=(16, 16),
                with_masks=False,
            )
        )
        a = ws.list_types()[0]
        ws.confirm_type(a.id, expected_version=1, actor="ann")
        before, assign_before = counts(ws), _assignments(ws)
        types_before = ws.list_types()
    files_before = _files(tmp_path / "w")

    _kill_inside("crash-retrain", tmp_path, 10_000)
    assert len(_files(tmp_path / "w") - files_before) == 1  # the new model blob, uncommitted

    with Workspace.open(tmp_path, "w") as ws:
        assert counts(ws) == before
        assert _assignments(ws) == assign_before
        assert ws.list_types() == types_before
        assert _files(tmp_path / "w") == files_before  # the retrained model blob is gone
        assert doctor(ws) == []
        ids, _ = ws.embeddings()
        types = [t.id for t in ws.list_types()]
        mv = ws.apply_retrain(
            ModelVersionIn(kind="retrain", model=b"retrained"),
            AssignmentsIn(
                regions=ids,
                types=[types[i % len(types)] for i in range(len(ids))],
                confidence=np.full(len(ids), 0.9),
            ),
            embeddings=(ids, np.ones((len(ids), 8))),
        )
        assert ws.latest_model_version().id == mv
        assert counts(ws)["embeddings"] == 2 * before["embeddings"]
        assert doctor(ws) == []
