"""Letterbox vs squash on square colour images and on a grayscale many-aspect variant.

Usage: python benchmarks/bench_resize_mode.py [--mvtec DIR] [--out bench-out/resize.jsonl]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import SHARED, machine, record  # noqa: E402
from benchmarks.variants import make_gray_aspect  # noqa: E402
from engine.config import ProtoAtlasConfig  # noqa: E402
from protoatlas.evaluation import eval_detect  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mvtec", default=str(SHARED / "mvtec_bottle"))
    parser.add_argument("--out", default="bench-out/resize.jsonl")
    parser.add_argument("--only-variant", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        variant = make_gray_aspect(Path(args.mvtec), Path(tmp) / "gray_aspect")
        sets = [("gray_aspect", variant)]
        if not args.only_variant:
            sets.insert(0, ("original", Path(args.mvtec)))
        for label, root in sets:
            for mode in ("letterbox", "squash"):
                cfg = ProtoAtlasConfig(device="cpu").with_overrides(backbone={"resize_mode": mode})
                res = eval_detect(root, cfg)
                record(
                    args.out,
                    {
                        "data": f"{Path(args.mvtec).name}/{label}",
                        "mode": mode,
                        **asdict(res),
                        "machine": machine(),
                    },
                )
                print(
                    f"{label:12s} {mode:9s} img {res.image_auroc:.4f} "
                    f"pix {res.pixel_auroc:.4f} aupro {res.aupro:.4f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
