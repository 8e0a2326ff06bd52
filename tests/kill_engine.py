"""The kill trials of the engine steps (``tests/test_kill.py``, ``benchmarks/bench_kill.py
--mode engine``): seeded random steps on one workspace through the service layer, where
most of the time goes to real engine work -- the first batch's discovery, later uploads
(sorted into the types, sometimes refitting the detector on new known-good images), a
fresh discovery stored into the workspace (what ``protoatlas discover --home`` does) and
``retrain`` -- between reviewer actions (confirm, reject, rename, merge, split, move,
undo, export). The engine runs at 128 px with the test suite's fast settings.

The log (one JSON line each, flushed and fsynced) has a ``start`` line before every step
and an ``ack`` line (the step's audit seq and hash) after it returned, so a trial knows
which step a SIGKILL interrupted and which decisions were acknowledged.

``python -m tests.kill_engine HOME LOG SEED`` runs until it is killed.
"""

from __future__ import annotations

import random
import signal
import sys
import time
from pathlib import Path

from engine.synth import SynthConfig, write_mvtec
from tests.conftest import TEST_IMAGE_SIZE
from tests.kill_workload import ACTOR, append, read_log, review_step, spawn, wait_for_step
from tests.service_fixtures import TYPES, fast_config

WS = "default"
#: Step kinds and their weights: the engine steps take most of the draws (and of the time).
KINDS = {
    "upload": 4,
    "retrain": 3,
    "discover": 1,
    "confirm": 1,
    "reject": 1,
    "rename": 1,
    "merge": 1,
    "split": 1,
    "move": 1,
    "undo": 1,
    "export": 1,
}
ENGINE_KINDS = ("upload", "retrain", "discover")


def write_batch(folder: Path, seed: int, *, first: bool = False, normals: int = 0) -> Path:
    """A small synthetic batch in the MVTec layout (``test/`` to upload, ``train/good``
    the known-good images): the first one has 8 normals and 10 test images, later ones 4
    test images (and ``normals`` known-good ones)."""
    return write_mvtec(
        folder,
        SynthConfig(size=(TEST_IMAGE_SIZE, TEST_IMAGE_SIZE)),
        n_train=8 if first else normals,
        n_test_good=1,
        n_per_type=3 if first else 1,
        types=TYPES,
        seed=seed,
    )


def _engine_step(service, kind: str, n: int, data: Path, seed: int) -> str | None:
    from protoatlas.service.discovery import discover, open_images

    if kind == "retrain":
        return "retrain" if service.retrain(actor=ACTOR) is not None else None
    model = service.model()
    first = model is None
    if model is not None and kind == "upload" and len(model.type_ids) == 0:
        # every type rejected or merged away: the service refuses to sort a batch into no
        # type (RuntimeError after the analysis), so discover the batch's types afresh
        kind = "discover"
    with_normals = first or kind == "discover" or n % 3 == 0
    batch = write_batch(
        data / f"b{n}", seed * 1000 + n, first=first, normals=4 if with_normals else 0
    )
    normals = batch / "train" / "good" if with_normals else None
    if kind == "discover" and not first:
        run = discover(normals, batch / "test", service.config, clusters="auto")
        images = open_images(batch / "test", service.config, progress=False, desc="")
        service.store_discovery(run, images, batch_name=f"b{n}", actor=ACTOR)
        return "discover"
    service.upload_batch(
        batch / "test", normals, clusters=3 if first else "auto", actor=ACTOR, batch_name=f"b{n}"
    )
    return "upload"


def run(home: Path, log: Path, seed: int) -> None:
    from protoatlas.service import ConflictError, StorageError, WorkspaceService

    rng = random.Random(seed)
    service = WorkspaceService(home, WS, config=fast_config(seed))
    data = home.parent / "data"
    out = home / "exports"
    out.mkdir(parents=True, exist_ok=True)
    kinds, weights = list(KINDS), list(KINDS.values())
    with open(log, "a", encoding="utf-8") as fh:
        n = 0
        while True:
            n += 1
            kind = rng.choices(kinds, weights)[0]
            first = service.ws.latest_model_version() is None
            if first or (kind not in ENGINE_KINDS and len(service.list_types()) < 2):
                kind = "upload"  # the first batch's discovery (or too few types to review)
            append(fh, {"start": kind, "step": n, "first": first, "t": round(time.time(), 3)})
            try:
                if kind in ENGINE_KINDS:
                    done = _engine_step(service, kind, n, data, seed)
                else:
                    done = review_step(service, rng, kind, n, out)
            except (ConflictError, StorageError, ValueError):
                continue  # refused: nothing to acknowledge
            if done is None:
                continue
            last = service.audit(limit=1)[0]
            append(
                fh,
                {
                    "ack": done,
                    "step": n,
                    "seq": last.seq,
                    "hash": last.hash,
                    "t": round(time.time(), 3),
                },
            )


def killed_in(entries: list[dict]) -> str:
    """The step a kill interrupted: the kind of the last ``start`` without its ``ack``, or
    ``between`` (the last step had returned, or was refused and the next not begun);
    ``first discovery`` for the upload of the workspace's first batch."""
    if not entries or "ack" in entries[-1]:
        return "between"
    last = entries[-1]
    return "first discovery" if last.get("first") else str(last["start"])


def trial(
    folder: Path,
    seed: int,
    steps: int = 16,
    within_s: float = 1.0,
    kind: str | None = None,
    start_timeout_s: float = 300,
) -> dict:
    """One trial: run the workload in a child process, SIGKILL it at a seeded moment -- up
    to ``within_s`` seconds after the start of its step k, k drawn from 1..``steps`` (steps,
    not seconds: the share of each step kind does not depend on how loaded the machine
    is; ``kind``: the k-th step of that kind) -- then check the workspace: it opens,
    ``doctor`` (with hashes) finds no error before and after the open for writing cleans
    up, every acknowledged decision is in the audit log with its hash, a batch is stored
    whole or not at all, and one more upload (or the first one) succeeds. Returns the
    figures."""
    from protoatlas.service import WorkspaceService
    from storage import Workspace, doctor

    home, log = folder / "home", folder / "log.jsonl"
    home.mkdir(parents=True, exist_ok=True)
    child = spawn("tests.kill_engine", str(home), str(log), str(seed))
    rng = random.Random(seed)
    step, delay = rng.randint(1, steps), rng.uniform(0, within_s)
    reached = wait_for_step(log, step, lambda: child.poll() is None, start_timeout_s, kind)
    time.sleep(delay)
    alive = child.poll() is None
    child.send_signal(signal.SIGKILL)
    _, err = child.communicate(timeout=60)
    entries = read_log(log)
    acked = [e for e in entries if "ack" in e]
    root = home / WS
    markers = len(list((root / "pending").iterdir())) if (root / "pending").is_dir() else 0
    token_tmp = len(list((root / "tokens").glob("*.tmp"))) if (root / "tokens").is_dir() else 0
    # as the kill left it (a read-only open cleans nothing), then opened for writing
    with Workspace.open(home, WS, read_only=True) as ws:
        before = doctor(ws, verify_hashes=True)
    service = WorkspaceService(home, WS, config=fast_config(seed))
    try:
        after = {(p.severity, p.what) for p in service.doctor()}
        after |= {(p.severity, p.what) for p in doctor(service.ws, verify_hashes=True)}
        entries_by_seq = {e.seq: e.hash for e in service.ws.audit(limit=10**7)}
        lost = [a for a in acked if entries_by_seq.get(a["seq"]) != a["hash"]]
        batches = service.ws.batches()
        partial = [b.name for b in batches if b.n_images == 0]
        stored = {b.name for b in batches}
        acked_batches = {f"b{a['step']}" for a in acked if a["ack"] in ("upload", "discover")}
        missing_batches = sorted(acked_batches - stored)
        unacked_batches = sorted(stored - acked_batches)
        n_batches = len(batches)
        try:  # the workspace is usable: one more engine step succeeds
            _engine_step(service, "upload", 10**4, folder / "after", seed)
            usable = len(service.ws.batches()) == n_batches + 1
        except Exception as exc:  # reported, and the test fails on it
            usable = False
            err += f"\nafter the kill: {exc!r}".encode()
        after |= {(p.severity, p.what) for p in doctor(service.ws) if p.severity == "error"}
    finally:
        service.close()
    return {
        "seed": seed,
        "kill_step": step,
        "kill_step_reached": reached,
        "killed_after_s": round(delay, 2),
        "alive_when_killed": alive,
        "killed_in": killed_in(entries),
        "steps_started": sum("start" in e for e in entries),
        "acknowledged": len(acked),
        "acknowledged_engine": sum(a["ack"] in ENGINE_KINDS for a in acked),
        "audit_entries": len(entries_by_seq),
        "lost": len(lost),
        "lost_batches": len(missing_batches),
        "unacknowledged_batches_kept": len(unacked_batches),
        "partial_batches": len(partial),
        "pending_markers": markers,
        "tokens_tmp_left": token_tmp,
        "doctor_errors_as_left": sum(p.severity == "error" for p in before),
        "doctor_warnings_as_left": sorted({p.what.split("(")[0].strip() for p in before}),
        "doctor_errors": sum(severity == "error" for severity, _ in after),
        "doctor_warnings": sorted(what for severity, what in after if severity != "error"),
        "usable_after": usable,
        "stderr": err.decode(errors="replace")[-800:] if not alive or not usable else "",
    }


if __name__ == "__main__":
    run(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]))
