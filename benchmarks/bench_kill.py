"""SIGKILL trials (the reliability issue's long mode):
``python benchmarks/bench_kill.py [--mode storage|engine|app|all] [--trials 50]``.

* ``storage``: the workload of ``tests/kill_workload.py`` (storage-only ingests, confirm,
  reject, rename, merge, split, move, undo, export through the service layer) in a child
  process, killed at a seeded random moment;
* ``engine``: ``tests/kill_engine.py``, the same reviewer steps between real engine steps
  (the first batch's discovery, later uploads, a discovery stored into the workspace,
  retrain) at 128 px; after the kill one more upload must succeed;
* ``app``: ``tests/kill_app.py``, ``protoatlas serve`` in its own process driven through
  its API (``gradio_client``) and SIGKILLed; every ``--restart-every``-th trial restarts
  ``serve`` on the killed server's workspace and applies one more decision there.

Each trial checks that the workspace opens, that ``doctor`` finds no error and that every
acknowledged decision is in the audit log. Results: one JSON line per trial in ``--out``
(``bench-out/kill-<mode>.jsonl``), a summary per mode on stdout (RELIABILITY.md).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODES = ("storage", "engine", "app")


def _trials(mode: str, seeds: range, restart_every: int):
    """(seed, figures) of each trial of ``mode``."""
    base = Path(tempfile.mkdtemp(prefix=f"kill-{mode}-"))
    try:
        seed_home = None
        if mode == "app":
            from tests.kill_app import prepare_home

            seed_home = prepare_home(base / "seed")
        for i, seed in enumerate(seeds):
            folder = base / f"trial-{seed}"
            folder.mkdir()
            try:
                if mode == "storage":
                    from tests.kill_workload import trial

                    yield trial(folder, seed)
                elif mode == "engine":
                    from tests.kill_engine import trial as engine_trial

                    yield engine_trial(folder, seed)
                else:
                    from tests.kill_app import trial as app_trial

                    assert seed_home is not None
                    yield app_trial(folder, seed, seed_home, restart=i % restart_every == 0)
            finally:
                shutil.rmtree(folder, ignore_errors=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def summary(mode: str, rows: list[dict], seconds: float) -> str:
    killed = [r for r in rows if r["alive_when_killed"]]
    parts = [
        f"{mode}: trials {len(rows)}, killed while running {len(killed)}",
        f"acknowledged decisions {sum(r['acknowledged'] for r in rows)}",
        f"lost {sum(r['lost'] for r in rows)}",
        f"workspaces with doctor errors {sum(r['doctor_errors'] > 0 for r in rows)}",
    ]
    if mode != "storage":
        parts.append(f"of them engine steps {sum(r['acknowledged_engine'] for r in rows)}")
        where = Counter(r["killed_in"] for r in rows)
        parts.append("killed in " + ", ".join(f"{k} {v}" for k, v in where.most_common()))
        warned = Counter(w for r in rows for w in r["doctor_warnings_as_left"])
        parts.append(f"warnings as left {dict(warned)}")
        parts.append(f"pending markers left {sum(r['pending_markers'] > 0 for r in rows)}")
    if mode == "engine":
        parts.append(f"usable after {sum(bool(r['usable_after']) for r in rows)}")
        parts.append(f"partial batches {sum(r['partial_batches'] for r in rows)}")
        parts.append(
            f"unacknowledged batches kept {sum(r['unacknowledged_batches_kept'] for r in rows)}"
        )
        warned = Counter(w for r in rows for w in r["doctor_warnings"])
        parts.append(f"warnings after the open {dict(warned)}")
    if mode == "app":
        tried = [r for r in rows if r["restarted"] is not None]
        parts.append(
            f"restarts {len(tried)}, came up {sum(bool(r['restarted']) for r in tried)}, "
            f"decision after it kept {sum(bool(r['action_after_restart_kept']) for r in tried)}"
        )
    parts.append(f"{seconds:.0f} s")
    return ", ".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mode", choices=(*MODES, "all"), default="storage")
    ap.add_argument("--trials", type=int, default=50, help="trials per mode")
    ap.add_argument("--first-seed", type=int, default=1000)
    ap.add_argument("--restart-every", type=int, default=5, help="app mode: restart serve")
    ap.add_argument("--out", default=None, help="JSON lines (default bench-out/kill-MODE.jsonl)")
    args = ap.parse_args()
    lines = []
    for mode in MODES if args.mode == "all" else (args.mode,):
        out = Path(args.out or f"bench-out/kill-{mode}.jsonl")
        out.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        rows = []
        seeds = range(args.first_seed, args.first_seed + args.trials)
        for row in _trials(mode, seeds, max(1, args.restart_every)):
            rows.append(row)
            with open(out, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
        lines.append(summary(mode, rows, time.perf_counter() - t0))
        print(lines[-1], flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
