"""A reviewer's and an uploader's work on one workspace, for the kill trials
(``tests/test_kill.py``, ``benchmarks/bench_kill.py``): seeded random steps (ingest a batch,
confirm, reject, rename, merge, split, move, undo, export, delete a batch) through the
service layer, each acknowledged decision written to a log (one JSON line per step,
flushed and fsynced after the step returned) so that a trial can check, after a SIGKILL at
any moment, that nothing acknowledged was lost.

``python -m tests.kill_workload HOME LOG SEED`` runs until it is killed.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from benchmarks.bench_webapp import make_batch
from protoatlas.service import ConflictError, StorageError, WorkspaceService
from storage import Workspace

ACTOR = "kill-trial"
#: Images of each batch the workload ingests (small: many steps per second).
BATCH_IMAGES = 6
#: Embedding size of the workload's workspace.
DIM = 32


def append(fh: IO[str], entry: dict) -> None:
    """One line of a trial's log, on disk before the workload goes on."""
    fh.write(json.dumps(entry) + "\n")
    fh.flush()
    os.fsync(fh.fileno())


def read_log(log: Path) -> list[dict]:
    """The log's entries (a line the kill cut short is left out)."""
    if not log.is_file():
        return []
    out = []
    for line in log.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def spawn(module: str, *args: str) -> subprocess.Popen:
    """``python -m module args...`` from the repository root, stdout discarded, stderr kept
    (a trial reports it)."""
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=Path(__file__).resolve().parents[1],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def wait_for_step(log: Path, k: int, alive, timeout_s: float, kind: str | None = None) -> bool:
    """Wait until the log shows the start of step ``k`` (its ``k``-th ``start`` line, or
    ``kind``: its ``k``-th start of that kind); False when ``alive()`` turns false or
    ``timeout_s`` passes first."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout_s and alive():
        starts = [e for e in read_log(log) if "start" in e and kind in (None, e["start"])]
        if len(starts) >= k:
            return True
        time.sleep(0.01)
    return False


def review_step(
    service: WorkspaceService, rng: random.Random, kind: str, n: int, out: Path
) -> str | None:
    """One reviewer step of ``kind`` on a random type; its action name, or None when it
    applied nothing (an export, or too few members)."""
    types = [t for t in service.list_types() if t.n_regions > 0]
    t = rng.choice(types)
    if kind == "confirm":
        service.confirm_type(t.id, actor=ACTOR)
    elif kind == "reject":
        service.reject_type(t.id, actor=ACTOR)
    elif kind == "rename":
        service.rename_type(t.id, f"name-{n}", actor=ACTOR)
    elif kind == "merge":
        other = rng.choice([x for x in types if x.id != t.id])
        service.merge_types(t.id, other.id, actor=ACTOR)
    elif kind in ("split", "move"):
        members = [m.region_id for m in service.type_members(t.id, limit=50)]
        if len(members) < 2:
            return None
        part = members[: max(1, len(members) // 2)]
        if kind == "split":
            service.split_type(
                t.id, expected_version=service.get_type(t.id).version, actor=ACTOR, region_ids=part
            )
        else:
            other = rng.choice([x for x in types if x.id != t.id])
            service.move_regions(part, other.id, actor=ACTOR)
    elif kind == "undo":
        service.undo(ACTOR)
    else:
        service.export_assignments(out / f"export-{n % 3}.csv", "csv", "region")
        return None
    return kind


def _step(service: WorkspaceService, rng: random.Random, n: int, out: Path) -> str | None:
    """One random step; its action name, or None when it applied nothing."""
    types = [t for t in service.list_types() if t.n_regions > 0]
    kind = rng.choice(
        ["ingest", "confirm", "reject", "rename", "merge", "split", "move", "undo", "export"]
        + ["delete"]
    )
    if kind == "delete":
        batches = service.batches()
        if len(batches) < 2:
            return None
        service.delete_batch(rng.choice(batches).id, actor=ACTOR)
        return "delete_batch"
    if kind == "ingest" or len(types) < 2:
        batch = make_batch(
            n_images=BATCH_IMAGES, n_types=2, dim=DIM, seed=n, name=f"b{n}", prefix=f"b{n}/"
        )
        service.ws.ingest_batch(batch, actor=ACTOR)
        return "ingest_batch"
    return review_step(service, rng, kind, n, out)


def run(home: Path, log: Path, seed: int) -> None:
    rng = random.Random(seed)
    Workspace.open(home, "default", embedding_dim=DIM).close()
    service = WorkspaceService(home, "default")
    service.ws.set_embedding_dim(DIM)
    out = home / "exports"
    out.mkdir(exist_ok=True)
    with open(log, "a", encoding="utf-8") as fh:
        n = 0
        while True:
            n += 1
            try:
                done = _step(service, rng, n, out)
            except (ConflictError, StorageError, ValueError):
                continue  # refused: nothing to acknowledge
            if done is None:
                continue
            last = service.audit(limit=1)[0]
            append(fh, {"step": n, "action": done, "seq": last.seq, "hash": last.hash})


def trial(folder: Path, seed: int, window_s: float = 4.0, start_timeout_s: float = 120.0) -> dict:
    """One trial: run the workload in a child process, wait for its first acknowledged
    step, SIGKILL it at a seeded moment up to ``window_s`` seconds later, then open the
    workspace, run the doctor and compare the audit log with the acknowledged steps.
    Returns the figures."""
    from storage import doctor

    home, log = folder / "home", folder / "ack.jsonl"
    child = spawn("tests.kill_workload", str(home), str(log), str(seed))
    t0 = time.perf_counter()
    while not (log.is_file() and log.stat().st_size > 0):
        if child.poll() is not None or time.perf_counter() - t0 > start_timeout_s:
            break
        time.sleep(0.05)
    delay = random.Random(seed).uniform(0, window_s)
    time.sleep(delay)
    alive = child.poll() is None
    child.send_signal(signal.SIGKILL)
    _, err = child.communicate(timeout=60)
    lines = log.read_text().splitlines() if log.is_file() else []
    acked = [json.loads(line) for line in lines if line.strip()]
    with Workspace.open(home, "default") as ws:
        problems = [p for p in doctor(ws) if p.severity == "error"]
        entries = {e.seq: e.hash for e in ws.audit(limit=10**7)}
    lost = [a for a in acked if entries.get(a["seq"]) != a["hash"]]
    return {
        "seed": seed,
        "killed_after_first_ack_s": round(delay, 2),
        "alive_when_killed": alive,
        "acknowledged": len(acked),
        "audit_entries": len(entries),
        "lost": len(lost),
        "doctor_errors": len(problems),
        "stderr": err.decode(errors="replace")[-500:] if not alive else "",
    }


if __name__ == "__main__":
    run(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]))
