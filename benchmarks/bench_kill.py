"""SIGKILL trials (the reliability issue's long mode): ``python benchmarks/bench_kill.py
[--trials 50]`` runs the workload of ``tests/kill_workload.py`` (ingest, confirm, reject,
rename, merge, split, move, undo, export through the service layer) in a child process,
kills it at a seeded random moment, then checks that the workspace opens, that ``doctor``
finds no error and that every acknowledged decision is in the audit log with its hash.
Results: one JSON line per trial in ``--out``, a summary on stdout (RELIABILITY.md)."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.kill_workload import trial  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=50)
    ap.add_argument("--first-seed", type=int, default=1000)
    ap.add_argument("--out", default="bench-out/kill.jsonl")
    args = ap.parse_args()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows = []
    for seed in range(args.first_seed, args.first_seed + args.trials):
        folder = Path(tempfile.mkdtemp(prefix="kill-"))
        try:
            row = trial(folder, seed)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        rows.append(row)
        with open(args.out, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
    killed = [r for r in rows if r["alive_when_killed"]]
    print(
        f"trials {len(rows)}, killed while running {len(killed)}, "
        f"acknowledged decisions {sum(r['acknowledged'] for r in rows)}, "
        f"lost {sum(r['lost'] for r in rows)}, "
        f"workspaces with doctor errors {sum(r['doctor_errors'] > 0 for r in rows)}, "
        f"{time.perf_counter() - t0:.0f} s"
    )


if __name__ == "__main__":
    main()
