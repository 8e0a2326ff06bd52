"""PRN refinement against the PatchCore detector on the suite's sets with masks.

Usage::

    python benchmarks/bench_refine.py [--suite FILE] [--only NAME ...] [--real 0 10]
        [--label TEXT] [--out bench-out/refine.jsonl] [--set KEY=VALUE ...]
        [--fuse-weights 0.1 0.25 1]

For every set of the suite that has pixel masks (``aitex`` has none), one row for the
PatchCore detector and one per number of real defects: the refinement trained on generated
anomalies plus that many real defect images with their masks
(:func:`protoatlas.evaluation.pick_real_defects`). Those images are left out of every row's
evaluation, so all rows score the same images. ``--set refine.epochs=10`` overrides a
:class:`engine.config.RefineConfig` field; ``--fuse-weights`` adds a ``fused`` row per
weight from the same training. Prints the Markdown table for BENCHMARKS.md and
appends one JSON line per row to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import REPO, machine, record  # noqa: E402
from engine.config import ProtoAtlasConfig  # noqa: E402
from engine.data import load_mvtec  # noqa: E402
from protoatlas.evaluation import eval_refine, materialised, read_suite  # noqa: E402

DEFAULT_SUITE = REPO / "benchmarks" / "suite.csv"
COLUMNS = (
    "data",
    "method",
    "n_real",
    "image_auroc",
    "pixel_auroc",
    "aupro",
    "recall",
    "false_alarm_rate",
    "train_seconds",
    "n_eval",
)


def _overrides(pairs: list[str]) -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {}
    for pair in pairs:
        key, _, raw = pair.partition("=")
        section, _, name = key.partition(".")
        if not name:
            raise SystemExit(f"--set needs section.field=value, got {pair!r}")
        out.setdefault(section, {})[name] = json.loads(raw)
    return out


def _fmt(v: object) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default=str(DEFAULT_SUITE))
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--real", nargs="+", type=int, default=[0, 10])
    parser.add_argument("--label", default="refine")
    parser.add_argument("--out", default=str(REPO / "bench-out" / "refine.jsonl"))
    parser.add_argument("--set", nargs="*", default=[], dest="overrides")
    parser.add_argument("--fuse-weights", nargs="*", type=float, default=[])
    args = parser.parse_args()
    config = ProtoAtlasConfig(device="cpu")
    over = _overrides(args.overrides)
    if over:
        config = config.with_overrides(**over)
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for item in read_suite(args.suite):
        if args.only and item.name not in args.only:
            continue
        if not (item.path.startswith("synth:") or Path(item.path).is_dir()):
            print(f"skipped {item.name}: {item.path} is absent", file=sys.stderr)
            continue
        with materialised(item.path) as root:
            if not load_mvtec(root).has_masks:
                print(f"skipped {item.name}: no pixel masks", file=sys.stderr)
                continue
            t0 = time.perf_counter()
            rows = eval_refine(
                root, config, real=tuple(args.real), name=item.name, fuse_weights=args.fuse_weights
            )
        for r in rows:
            row = asdict(r)
            print("| " + " | ".join(_fmt(row[c]) for c in COLUMNS) + " |", flush=True)
            record(
                args.out,
                {
                    "label": args.label,
                    **row,
                    "machine": machine(),
                    "set_seconds": time.perf_counter() - t0,
                    "overrides": over,
                },
            )


if __name__ == "__main__":
    main()
