"""``protoatlas`` command line: a thin shell over :mod:`protoatlas.service`.

Every subcommand accepts ``--quiet`` (no progress bars) and exits non-zero with a one-line
reason on failure (set ``PROTOATLAS_DEBUG=1`` for the traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

from engine.config import ProtoAtlasConfig

EXIT_FAILURE = 2


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _engine_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="compute device (default: auto = cuda when available)")
    parser.add_argument("--backbone", default=None,
                        help="timm backbone name (default efficientnet_lite0, bundled weights)")
    parser.add_argument("--weights", default=None,
                        help="local checkpoint file for a backbone whose weights are not bundled")
    parser.add_argument("--image-size", type=int, default=None,
                        help="network input side in pixels (default 256)")
    parser.add_argument("--resize", default=None, choices=["letterbox", "squash"],
                        help="how non-square images are fitted (default letterbox)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def _config_from(args: argparse.Namespace) -> ProtoAtlasConfig:
    backbone = {k: v for k, v in {
        "name": args.backbone, "weights": args.weights, "image_size": args.image_size,
        "resize_mode": args.resize}.items() if v is not None}
    cfg = ProtoAtlasConfig(device=args.device, seed=args.seed)
    return cfg.with_overrides(backbone=backbone) if backbone else cfg


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="protoatlas",
        description="Find anomalies in industrial images and discover their defect types.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("detect", help="fit on known-good images, score a batch")
    p.add_argument("--normals", required=True, help="folder (or .zip) of known-good images")
    p.add_argument("--images", required=True, help="folder or .zip of images to score")
    p.add_argument("--out", required=True, help="output CSV: image,anomaly_score,is_anomalous")
    p.add_argument("--maps", default=None, help="folder for heat-map PNGs (optional)")
    p.add_argument("--save-model", default=None, help="write the fitted detector (.npz)")
    p.add_argument("--labels", default=None,
                   help="optional image,label CSV ('good' = normal): print AUROC and F1")
    _engine_options(p)
    _common(p)

    p = sub.add_parser("eval-detect", help="image/pixel AUROC and AUPRO on an MVTec folder")
    p.add_argument("--mvtec", required=True, help="MVTec-layout category folder")
    p.add_argument("--json", default=None, help="also write the results as JSON here")
    _engine_options(p)
    _common(p)

    p = sub.add_parser("synth", help="write the seeded synthetic demo set (MVTec layout)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kind", default="object", choices=["object", "texture"])
    _common(p)
    return parser


def cmd_detect(args: argparse.Namespace) -> int:
    from protoatlas import service

    run = service.detect(args.normals, args.images, _config_from(args),
                         progress=not args.quiet)
    out = service.write_csv(args.out, run.rows(), service.SCORE_COLUMNS)
    report = {
        "normals": asdict(run.normals_report), "images": asdict(run.images_report),
        "threshold": run.threshold, "seconds": run.seconds,
        "fit": {"n_fit_images": run.fit.n_fit_images,
                "n_calibration_images": run.fit.n_calibration_images,
                "bank_size": run.fit.bank_size},
    }
    report_path = out.with_name(out.stem + "_report.json")
    report_path.write_text(json.dumps(report, indent=2))
    for label, rep in (("normals", run.normals_report), ("images", run.images_report)):
        if rep.skipped:
            _warn(f"{label}: {rep.summary()}")
    if run.fit.n_calibration_images == 0:
        _warn("too few normal images to calibrate a threshold: is_anomalous is 0 everywhere")
    if args.maps:
        service.write_heatmaps(args.maps, run)
    if args.save_model:
        run.detector.save(args.save_model)
    n_flag = sum(int(r["is_anomalous"]) for r in run.rows())
    print(f"scored {len(run.names)} images, {n_flag} anomalous "
          f"(threshold {run.threshold:.4f}); wrote {out} and {report_path.name}")
    print("time: " + ", ".join(f"{k} {v:.1f}s" for k, v in run.seconds.items()))
    if args.labels:
        m = service.label_metrics(run, service.read_labels(args.labels))
        print(f"image AUROC {m['image_auroc']:.4f} | is_anomalous precision "
              f"{m['precision']:.3f} recall {m['recall']:.3f} F1 {m['f1']:.3f} "
              f"({m['n_labelled']} labelled images)")
    return 0


def cmd_eval_detect(args: argparse.Namespace) -> int:
    from protoatlas import service

    res = service.eval_detect(args.mvtec, _config_from(args), progress=not args.quiet)
    print(f"image AUROC {res.image_auroc:.4f} | pixel AUROC {res.pixel_auroc:.4f} | "
          f"AUPRO(0.3) {res.aupro:.4f}")
    print(f"fit {res.fit_seconds:.1f}s on {res.n_train} normals (bank {res.bank_size}) | "
          f"score {res.score_seconds:.1f}s for {res.n_test} images "
          f"({res.images_per_second:.1f} img/s) | peak RSS {res.peak_rss_mib:.0f} MiB")
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(res), indent=2))
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from engine import synth

    cfg = synth.SynthConfig(kind=args.kind)
    root = synth.write_mvtec(args.out, cfg, seed=args.seed)
    print(f"wrote the synthetic demo set to {root}")
    return 0


COMMANDS = {"detect": cmd_detect, "eval-detect": cmd_eval_detect, "synth": cmd_synth}


def _warn(message: str) -> None:
    print(f"protoatlas: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("protoatlas: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - one-line reason is the CLI contract
        if os.environ.get("PROTOATLAS_DEBUG"):
            raise
        reason = " ".join(str(exc).split()) or type(exc).__name__
        print(f"protoatlas: error: {reason}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
