"""Speed at the size of the real tile data: fit + score of 761 normals and 583 images.

Usage::

    python benchmarks/bench_speed.py tiles [--normals 761] [--images 583]
        [--out bench-out/speed.jsonl] [-- ENGINE OPTIONS]
    python benchmarks/bench_speed.py bottle [--mvtec DIR] [-- ENGINE OPTIONS]

``tiles`` writes a generated set of grayscale tiles of 222-403 x 103-632 px (the sizes of
the held-out magnetic-tile data; :func:`engine.synth.kind_config`) with that many normals
and test images (a third good), then times ``protoatlas eval-detect`` on it: the target is
fit + score within 3 minutes on 2 cores. ``bottle`` times ``protoatlas discover`` end to end
on MVTec bottle with K=3 (the figure in README). Each run is its own process.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import SHARED, machine, record, split_engine_args  # noqa: E402


def _tiles(args: argparse.Namespace, engine: list[str]) -> dict:
    from engine import synth

    with tempfile.TemporaryDirectory() as tmp:
        good = args.images // 3
        per_type = (args.images - good) // len(synth.TILE_DEFECTS)
        root = synth.write_mvtec(
            Path(tmp) / "tiles",
            synth.kind_config("tile"),
            n_train=args.normals,
            n_test_good=good,
            n_per_type=per_type,
            seed=0,
        )
        out = Path(tmp) / "result.json"
        t = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "protoatlas.cli",
                "eval-detect",
                "--mvtec",
                str(root),
                "--json",
                str(out),
                "--quiet",
                *engine,
            ],
            check=True,
        )
        wall = time.perf_counter() - t
        res = json.loads(out.read_text())
    return {
        "bench": "speed-tiles",
        "n_normals": args.normals,
        "n_images": good + per_type * len(synth.TILE_DEFECTS),
        "wall_seconds": wall,
        "fit_seconds": res["fit_seconds"],
        "score_seconds": res["score_seconds"],
        "peak_rss_mib": res["peak_rss_mib"],
        "image_auroc": res["image_auroc"],
    }


def _bottle(args: argparse.Namespace, engine: list[str]) -> dict:
    root = Path(args.mvtec)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "protoatlas.cli",
                "discover",
                "--normals",
                str(root / "train" / "good"),
                "--images",
                str(root / "test"),
                "--out",
                str(Path(tmp) / "types.csv"),
                "--clusters",
                "3",
                "--quiet",
                *engine,
            ],
            check=True,
        )
        wall = time.perf_counter() - t
        report = json.loads((Path(tmp) / "types_report.json").read_text())
    return {"bench": "speed-bottle-discover", "wall_seconds": wall, "seconds": report["seconds"]}


def main() -> None:
    argv, engine = split_engine_args(sys.argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["tiles", "bottle"])
    parser.add_argument("--normals", type=int, default=761)
    parser.add_argument("--images", type=int, default=583)
    parser.add_argument("--mvtec", default=str(SHARED / "mvtec_bottle"))
    parser.add_argument("--out", default="bench-out/speed.jsonl")
    args = parser.parse_args(argv)
    row = (_tiles if args.what == "tiles" else _bottle)(args, engine)
    row.update({"engine": engine, "machine": machine()})
    record(args.out, row)
    print(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
