"""Detection benchmark: image AUROC, pixel AUROC, AUPRO, fit time, images/s, peak memory.

Usage (from the repo root, inside the venv)::

    python benchmarks/bench_detect.py [--mvtec DIR] [--set detector.coreset_max=8192 ...]
        [--out bench-out/detect.jsonl]

Each ``--set section.field=value`` overrides one field of ProtoAtlasConfig (value parsed as
JSON when possible). Runs one configuration per process so peak memory is its own.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import SHARED, machine, record  # noqa: E402
from engine.config import ProtoAtlasConfig  # noqa: E402
from protoatlas.evaluation import eval_detect  # noqa: E402


def parse_sets(items: list[str]) -> dict[str, dict[str, object]]:
    sections: dict[str, dict[str, object]] = {}
    for item in items:
        key, _, raw = item.partition("=")
        section, _, field = key.partition(".")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        sections.setdefault(section, {})[field] = tuple(value) if isinstance(value, list) else value
    return sections


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mvtec", default=str(SHARED / "mvtec_bottle"))
    parser.add_argument("--set", action="append", default=[], dest="sets")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="bench-out/detect.jsonl")
    args = parser.parse_args()
    overrides = parse_sets(args.sets)
    config = ProtoAtlasConfig(device=args.device).with_overrides(**overrides)
    result = eval_detect(args.mvtec, config)
    row = {
        "data": Path(args.mvtec).name,
        "overrides": args.sets,
        **asdict(result),
        "machine": machine(),
    }
    record(args.out, row)
    print(
        f"{Path(args.mvtec).name} {' '.join(args.sets) or '(defaults)'}: "
        f"img {result.image_auroc:.4f} pix {result.pixel_auroc:.4f} "
        f"aupro {result.aupro:.4f} | fit {result.fit_seconds:.1f}s "
        f"score {result.score_seconds:.1f}s ({result.images_per_second:.1f} img/s) "
        f"bank {result.bank_size} rss {result.peak_rss_mib:.0f} MiB"
    )


if __name__ == "__main__":
    main()
