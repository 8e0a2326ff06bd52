"""Mirrored input context (``BackboneConfig.context``) on sets of mixed and fixed framing.

Usage: python benchmarks/bench_context.py [--out bench-out/context.jsonl]

For every real set of ``../shared/datasets`` with masks (bottle, tire) a
``gray_aspect`` variant is made on the fly (:mod:`benchmarks.variants`: grayscale, random
crops keeping the defect, random scale, so the images come in many sizes, like cut tiles),
plus the generated ``synth:tile`` kind (mixed sizes by construction) and ``synth:pcb``
(one size). Each is evaluated with ``--context none`` and ``--context mirror``; ``auto``
picks mirror exactly where the normals have mixed framings, and the table says which.
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
from engine.data import LazyImages, load_mvtec  # noqa: E402
from engine.detector import PatchCoreDetector  # noqa: E402
from protoatlas.evaluation import eval_detect, materialised  # noqa: E402

#: Real sets with masks (the variant's crops keep the whole defect; aitex has no masks, so
#: its crops could cut the defect away).
REAL = ("mvtec_bottle", "mvtec3d_tire")


def _auto_mirrors(root: Path) -> bool:
    det = PatchCoreDetector(ProtoAtlasConfig(device="cpu"))
    det.fit_preprocessing(LazyImages(load_mvtec(root).train))
    return det.context_pad > 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench-out/context.jsonl")
    args = parser.parse_args()
    print("| data | auto mirrors | context | image AUROC | pixel AUROC | AUPRO | recall | FAR |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        sets: list[tuple[str, str]] = [
            (f"{name} gray_aspect", str(make_gray_aspect(SHARED / name, Path(tmp) / name)))
            for name in REAL
            if (SHARED / name / "train").is_dir()
        ]
        sets += [("synth_tile", "synth:tile"), ("synth_pcb", "synth:pcb")]
        for label, path in sets:
            with materialised(path) as root:
                auto = _auto_mirrors(root)
                for context in ("none", "mirror"):
                    cfg = ProtoAtlasConfig(device="cpu").with_overrides(
                        backbone={"context": context}
                    )
                    res = eval_detect(root, cfg, name=label)
                    record(
                        args.out,
                        {
                            "context": context,
                            "auto_mirrors": auto,
                            **asdict(res),
                            "machine": machine(),
                        },
                    )
                    print(
                        f"| {label} | {'yes' if auto else 'no'} | {context} | "
                        f"{res.image_auroc:.3f} | {res.pixel_auroc:.3f} | {res.aupro:.3f} | "
                        f"{res.recall:.3f} | {res.false_alarm_rate:.3f} |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
