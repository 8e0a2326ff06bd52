"""A full disk during ingest (issue: reliability): a clear error naming the workspace, the
batch rolled back, the workspace usable afterwards. On a real small filesystem (a tmpfs
mounted for the test; skipped where mounting is not allowed) and with the image store's
write made to fail with ENOSPC (everywhere)."""

from __future__ import annotations

import errno
import os
import subprocess
import uuid

import pytest

from benchmarks.bench_webapp import make_batch
from storage import DiskFullError, Workspace, doctor
from storage.files import ContentStore

DIM = 32


def _batch(n: int, side: int = 96):
    return make_batch(
        n_images=40, n_types=2, dim=DIM, seed=n, name=f"b{n}", prefix=f"b{n}/", side=side
    )


def _files(root) -> set[str]:
    """The stored files (images, blobs), snapshots and the database aside."""
    return {
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and p.parts[len(root.parts)] in ("images", "blobs")
    }


def _sound(ws: Workspace) -> bool:
    return not [p for p in doctor(ws) if p.severity == "error"]


def test_a_write_refused_for_space_rolls_the_batch_back(tmp_path, monkeypatch) -> None:
    ws = Workspace.open(tmp_path, "default", embedding_dim=DIM)
    try:
        ws.ingest_batch(_batch(1), actor="t")
        files_before = _files(tmp_path / "default")
        real_put, calls = ContentStore.put, []

        def full_after_three(self, data, *args, **kwargs):
            calls.append(1)
            if len(calls) > 3:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_put(self, data, *args, **kwargs)

        monkeypatch.setattr(ContentStore, "put", full_after_three)
        with pytest.raises(DiskFullError, match=r"workspace 'default': the disk is full.*'b2'"):
            ws.ingest_batch(_batch(2), actor="t")
        monkeypatch.setattr(ContentStore, "put", real_put)
        assert [b.name for b in ws.batches()] == ["b1"]
        assert _sound(ws)
        assert _files(tmp_path / "default") - files_before == set()  # its files are gone
        ws.ingest_batch(_batch(3), actor="t")  # usable afterwards
        assert [b.name for b in ws.batches()] == ["b1", "b3"]
    finally:
        ws.close()


@pytest.fixture()
def small_disk(tmp_path):
    where = tmp_path / f"small-{uuid.uuid4().hex[:6]}"
    where.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(where)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield where
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_a_full_small_disk_gives_a_clear_error_and_loses_nothing(small_disk) -> None:
    ws = Workspace.open(small_disk, "default", embedding_dim=DIM)
    try:
        stored = []
        with pytest.raises(DiskFullError, match="workspace 'default': the disk is full"):
            for n in range(1, 50):
                ws.ingest_batch(_batch(n, side=256), actor="t")
                stored.append(f"b{n}")
        assert stored and [b.name for b in ws.batches()] == stored
        assert _sound(ws)
        t = ws.list_types()[0]
        ws.rename_type(t.id, "after-full", expected_version=t.version, actor="t")  # usable
    finally:
        ws.close()
    with Workspace.open(small_disk, "default") as again:
        assert [b.name for b in again.batches()] == stored and _sound(again)
