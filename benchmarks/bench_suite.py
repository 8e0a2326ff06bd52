"""The suite table: detection and discovery on every development set, one row each + mean.

Usage::

    python benchmarks/bench_suite.py [--suite FILE] [--only NAME ...] [--detect-only]
        [--label TEXT] [--out bench-out/suite.jsonl] [-- ENGINE OPTIONS]

Each set runs in its own process (``protoatlas eval-detect`` then ``protoatlas
eval-discover``, both with ``--json``), so peak memory is per set. The default suite is
``benchmarks/suite.csv``: the real sets of ``../shared/datasets`` that are present plus the
generated kinds. Engine options after ``--`` go to both commands (e.g. ``-- --resize
letterbox``), which is how the defaults were compared (docs/decisions.md). Prints the two
Markdown tables for BENCHMARKS.md and appends one JSON line per set to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import REPO, machine, record, split_engine_args  # noqa: E402
from protoatlas.evaluation import (  # noqa: E402
    DETECT_COLUMNS,
    DISCOVER_COLUMNS,
    EvalDiscoverResult,
    MethodScores,
    SuiteSet,
    discover_row,
    format_table,
    read_suite,
)

DEFAULT_SUITE = REPO / "benchmarks" / "suite.csv"


def _run(cmd: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        proc = subprocess.run([*cmd, "--json", str(out), "--quiet"], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip()[-2000:]}")
        return json.loads(out.read_text())


def _available(item: SuiteSet) -> bool:
    return item.path.startswith("synth:") or Path(item.path).is_dir()


def main() -> None:
    argv, engine = split_engine_args(sys.argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default=str(DEFAULT_SUITE))
    parser.add_argument("--only", nargs="*", default=None, help="set names to run")
    parser.add_argument("--detect-only", action="store_true")
    parser.add_argument("--no-baselines", action="store_true")
    parser.add_argument("--label", default="default")
    parser.add_argument("--out", default="bench-out/suite.jsonl")
    args = parser.parse_args(argv)
    exe = [sys.executable, "-m", "protoatlas.cli"]
    sets = [
        s
        for s in read_suite(args.suite)
        if _available(s) and (not args.only or s.name in args.only)
    ]
    skipped = [s.name for s in read_suite(args.suite) if not _available(s)]
    if skipped:
        print(f"not present here, skipped: {', '.join(skipped)}", file=sys.stderr)
    det_rows, disc_rows = [], []
    for item in sets:
        det = _run([*exe, "eval-detect", "--mvtec", item.path, *engine])
        det["data"] = item.name
        det_rows.append(det)
        row = {
            "bench": "suite",
            "label": args.label,
            "engine": engine,
            "set": item.name,
            "detect": det,
            "machine": machine(),
            "load": os.getloadavg()[0],
        }
        print(
            f"{item.name}: detect image AUROC {det['image_auroc']:.3f} recall "
            f"{det['recall']:.3f} FAR {det['false_alarm_rate']:.3f}",
            flush=True,
        )
        if not args.detect_only:
            cmd = [
                *exe,
                "eval-discover",
                "--mvtec",
                item.path,
                "--clusters",
                str(item.clusters),
                *engine,
            ]
            disc = _run(cmd + (["--no-baselines"] if args.no_baselines else []))
            disc["data"] = item.name
            methods = [MethodScores(**m) for m in disc.pop("methods")]
            res = EvalDiscoverResult(methods=methods, **disc)
            disc_rows.append(discover_row(res))
            row["discover"] = {**disc, "methods": [m.__dict__ for m in methods]}
            print(
                f"{item.name}: NMI typed {disc_rows[-1]['typed_nmi']:.3f} product "
                f"{disc_rows[-1]['product_nmi']:.3f}",
                flush=True,
            )
        record(args.out, row)
    print(f"\nlabel: {args.label}; engine options: {' '.join(engine) or '(defaults)'}")
    print("\nDetection (`protoatlas eval-detect`):\n")
    print(format_table(det_rows, DETECT_COLUMNS))
    if disc_rows:
        print("\nDiscovery (`protoatlas eval-discover`):\n")
        print(format_table(disc_rows, DISCOVER_COLUMNS))


if __name__ == "__main__":
    main()
