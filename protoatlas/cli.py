"""``protoatlas`` command line: a thin shell over :mod:`protoatlas.service` (and the
evaluation and simulated-review harnesses of :mod:`protoatlas.evaluation` and
:mod:`protoatlas.simulate`).

Every subcommand accepts ``--quiet`` (no progress bars) and exits non-zero with a one-line
reason on failure (set ``PROTOATLAS_DEBUG=1`` for the traceback).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias, get_args

from engine.config import (
    RESIZE_MODES,
    BackboneConfig,
    Context,
    DetectorConfig,
    DiscoveryConfig,
    ProtoAtlasConfig,
)
from engine.synth import SCENE_KINDS

if TYPE_CHECKING:
    from protoatlas.service import WorkspaceService

EXIT_FAILURE = 2


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="log what the library does (the INFO level) on stderr",
    )


def _engine_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda"],
        help="compute device (default: auto = cuda when available)",
    )
    parser.add_argument(
        "--backbone",
        default=None,
        help="timm backbone name (default efficientnet_lite0, bundled weights)",
    )
    parser.add_argument(
        "--weights",
        default=None,
        help="local checkpoint file for a backbone whose weights are not "
        "bundled, or 'hub' for timm's pretrained weights (downloads)",
    )
    parser.add_argument(
        "--image-size", type=int, default=None, help="network input side in pixels (default 256)"
    )
    parser.add_argument(
        "--resize",
        default=None,
        choices=list(RESIZE_MODES),
        help=f"how images become the network input (default {BackboneConfig().resize_mode})",
    )
    parser.add_argument(
        "--context",
        default=None,
        choices=list(get_args(Context)),
        help="mirrored context around each input: none, mirror, or auto = mirror when "
        f"the normals come in mixed sizes (default {BackboneConfig().context})",
    )
    parser.add_argument(
        "--false-alarm-rate",
        type=_rate,
        default=None,
        help="fraction of good images the calibrated threshold flags "
        f"(default {DetectorConfig().false_alarm_rate})",
    )
    parser.add_argument(
        "--image-context-weight",
        type=_weight,
        default=None,
        help="weight of each image's pooled feature and anomaly-weighted residual beside "
        "the crop embedding when grouping types; 0 = the crop alone "
        f"(default {DiscoveryConfig().context_weight})",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def _weight(value: str) -> float:
    try:
        weight = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value!r}")
    if not (weight >= 0.0 and math.isfinite(weight)):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {weight}")
    return weight


def _rate(value: str) -> float:
    try:
        rate = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {value!r}")
    if not 0.0 < rate < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {rate}")
    return rate


def _config_from(args: argparse.Namespace) -> ProtoAtlasConfig:
    backbone = {
        k: v
        for k, v in {
            "name": args.backbone,
            "weights": args.weights,
            "image_size": args.image_size,
            "resize_mode": args.resize,
            "context": getattr(args, "context", None),
        }.items()
        if v is not None
    }
    cfg = ProtoAtlasConfig(device=args.device, seed=args.seed)
    sections: dict[str, dict] = {}
    if backbone:
        sections["backbone"] = backbone
    detector = {
        k: v
        for k, v in {"false_alarm_rate": getattr(args, "false_alarm_rate", None)}.items()
        if v is not None
    }
    if detector:
        sections["detector"] = detector
    weight = getattr(args, "image_context_weight", None)
    if weight is not None:
        sections["discovery"] = {"context_weight": weight}
    return cfg.with_overrides(**sections) if sections else cfg


def _clusters(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        k = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {value!r}")
    if k < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {k}")
    return k


def _suite_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--mvtec",
        action="append",
        default=None,
        metavar="DIR",
        help="MVTec-layout set (train/good, test/<type>, optional ground_truth); "
        "repeat for several, or 'synth:<kind>[:seed]' for a generated one",
    )
    p.add_argument(
        "--suite",
        default=None,
        metavar="FILE",
        help="CSV 'path,clusters[,name]' listing sets and their number of types",
    )
    p.add_argument("--json", default=None, help="also write the results as JSON here")
    p.add_argument(
        "--refine",
        action="store_true",
        help="refine the detector (PRN) on generated anomalies after fitting, before scoring",
    )


#: What ``add_subparsers`` returns (each ``_add_<command>`` adds one subcommand to it).
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def _workspace_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--home", default=None, help="data directory (default $PROTOATLAS_HOME)")
    p.add_argument("--workspace", default="default", help="workspace name inside --home")


def _add_detect(sub: Subparsers) -> None:
    p = sub.add_parser("detect", help="fit on known-good images, score a batch")
    p.add_argument("--normals", required=True, help="folder (or .zip) of known-good images")
    p.add_argument("--images", required=True, help="folder or .zip of images to score")
    p.add_argument("--out", required=True, help="output CSV: image,anomaly_score,is_anomalous")
    p.add_argument("--maps", default=None, help="folder for heat-map PNGs (optional)")
    p.add_argument("--save-model", default=None, help="write the fitted detector (.npz)")
    p.add_argument(
        "--labels",
        default=None,
        help="optional image,label CSV ('good' = normal): print AUROC and F1",
    )
    _engine_options(p)
    _common(p)


def _add_eval_detect(sub: Subparsers) -> None:
    p = sub.add_parser(
        "eval-detect", help="image/pixel AUROC, AUPRO, recall and false alarms on labelled sets"
    )
    _suite_options(p)
    _engine_options(p)
    _common(p)


def _add_discover(sub: Subparsers) -> None:
    p = sub.add_parser("discover", help="find anomalies in a batch and group them into types")
    p.add_argument("--normals", required=True, help="folder (or .zip) of known-good images")
    p.add_argument("--images", required=True, help="folder or .zip of images to analyse")
    p.add_argument(
        "--out",
        required=True,
        help="output CSV: image,anomaly_score,is_anomalous,cluster,confidence,outlier",
    )
    p.add_argument(
        "--clusters",
        default="auto",
        type=_clusters,
        help="number of defect types K, or 'auto' (default) to estimate it",
    )
    p.add_argument(
        "--prompt", default=None, help="object name for the grounded-sam prior, e.g. 'bottle'"
    )
    p.add_argument(
        "--prior",
        default=None,
        choices=["classical", "none", "grounded-sam"],
        help="object prior (default classical; 'none' for textures)",
    )
    p.add_argument(
        "--maps",
        default=None,
        help="folder of anomaly maps from another tool (same relative names, "
        ".png 8/16-bit or .npy): the detector is not fitted",
    )
    p.add_argument("--save-model", default=None, help="write the discovery model (.npz)")
    p.add_argument(
        "--home", default=None, help="also store the batch in this workspace folder (see 'serve')"
    )
    _engine_options(p)
    _common(p)


def _add_assign(sub: Subparsers) -> None:
    p = sub.add_parser("assign", help="sort a new batch into the types of a saved model")
    p.add_argument("--model", required=True, help="model written by discover --save-model")
    p.add_argument("--images", required=True, help="folder or .zip of images to sort")
    p.add_argument("--out", required=True, help="output CSV (same columns as discover)")
    p.add_argument("--maps", default=None, help="anomaly maps, for a model made with --maps")
    p.add_argument(
        "--device",
        default=None,
        choices=["auto", "cpu", "cuda"],
        help="compute device (default: the model's)",
    )
    _common(p)


def _add_eval_discover(sub: Subparsers) -> None:
    p = sub.add_parser(
        "eval-discover", help="discovery metrics on labelled sets, against k-means baselines"
    )
    _suite_options(p)
    p.add_argument(
        "--clusters",
        default="auto",
        type=_clusters,
        help="number of defect types K of the --mvtec sets, or 'auto'",
    )
    p.add_argument(
        "--no-baselines",
        action="store_true",
        help="score the full method only (the baselines re-run the analysis)",
    )
    _engine_options(p)
    _common(p)


def _add_serve(sub: Subparsers) -> None:
    p = sub.add_parser("serve", help="start the web app (review UI) on a workspace")
    p.add_argument(
        "--home",
        default=None,
        help="data directory (default: $PROTOATLAS_HOME, else ./protoatlas-data)",
    )
    p.add_argument("--workspace", default="default", help="workspace name inside --home")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument(
        "--demo",
        action="store_true",
        help="on first start, generate the synthetic demo batch and discover its types",
    )
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    _common(p)


def _add_simulate_review(sub: Subparsers) -> None:
    p = sub.add_parser(
        "simulate-review", help="measure the review loop with a simulated reviewer (labels file)"
    )
    p.add_argument("--normals", required=True, help="folder (or .zip) of known-good images")
    p.add_argument("--images", required=True, help="folder or .zip of images")
    p.add_argument(
        "--labels", required=True, help="CSV with columns image,label (label 'good' = normal)"
    )
    p.add_argument("--budget", type=int, required=True, help="number of questions answered")
    p.add_argument(
        "--out", required=True, help="output CSV: step,actions,nmi,ari,f1,n_types,clicks,detector"
    )
    p.add_argument(
        "--refine-after",
        type=int,
        default=None,
        metavar="N",
        help="refine the detector once N types are confirmed (switch when it is better)",
    )
    p.add_argument(
        "--strategy",
        default="ranked",
        choices=["ranked", "random"],
        help="ranked suggestions (default) or random questions (baseline)",
    )
    p.add_argument("--clusters", default="auto", type=_clusters)
    p.add_argument(
        "--home",
        default=None,
        help="keep the simulation's workspace here (default: a temporary folder)",
    )
    _engine_options(p)
    _common(p)


def _add_doctor(sub: Subparsers) -> None:
    p = sub.add_parser("doctor", help="check a workspace's integrity (exit 0 only when sound)")
    _workspace_options(p)
    _common(p)


def _add_restore(sub: Subparsers) -> None:
    p = sub.add_parser(
        "restore",
        help="rebuild a damaged workspace database from one of its automatic snapshots",
        description="Restore the workspace's database from a snapshot (default: the newest). "
        "The current file is kept as workspace.duckdb.damaged-<UTC stamp>, never deleted; "
        "the doctor checks then run, and the audit entries the snapshot lacks are listed.",
    )
    _workspace_options(p)
    p.add_argument(
        "--snapshot",
        type=int,
        default=None,
        metavar="N",
        help="the snapshot number to restore (see --list; default: the newest)",
    )
    p.add_argument("--list", action="store_true", help="list the snapshots and change nothing")
    _common(p)


def _add_export(sub: Subparsers) -> None:
    p = sub.add_parser(
        "export",
        help="export a workspace's types, masks or audit log (all, one batch or some types)",
    )
    _workspace_options(p)
    p.add_argument(
        "--format",
        required=True,
        choices=[
            "csv",
            "parquet",
            "images-csv",
            "coco",
            "coco-all",
            "label-studio",
            "yolo",
            "crops",
            "audit-json",
            "audit-csv",
        ],
    )
    p.add_argument("--out", required=True, help="output file")
    p.add_argument(
        "--batch",
        type=int,
        default=None,
        metavar="ID",
        help="only the batch with this id (default: every batch)",
    )
    p.add_argument(
        "--type",
        type=int,
        action="append",
        default=None,
        dest="type_ids",
        metavar="ID",
        help="only this type (repeat for several; default: every type the format holds). "
        "coco, yolo and crops hold the confirmed types, coco-all and label-studio the "
        "proposed ones too, the CSVs and Parquet every type; images-csv keeps the images "
        "labelled with one of them. A type the format does not hold is refused; the "
        "audit log is always whole",
    )
    _common(p)


def _add_import_labels(sub: Subparsers) -> None:
    p = sub.add_parser("import-labels", help="import known labels (CSV image,label)")
    _workspace_options(p)
    p.add_argument("--labels", required=True, help="CSV with columns image,label")
    p.add_argument("--actor", default="import", help="who imports (audit log)")
    _common(p)


def _add_delete_batch(sub: Subparsers) -> None:
    p = sub.add_parser(
        "delete-batch",
        help="delete a batch: its images, regions and the decisions on them (not undoable)",
        description="Delete a batch of a workspace: its images that no other batch has, its "
        "regions and the reviewer decisions on them; types, the model and the history stay. "
        "A snapshot from before the delete is kept: `protoatlas restore` brings it back.",
    )
    _workspace_options(p)
    p.add_argument("--batch", type=int, help="the batch id (without it: list the batches)")
    p.add_argument("--yes", action="store_true", help="confirm (required: it cannot be undone)")
    p.add_argument("--actor", default="cli", help="who deletes (audit log)")
    _common(p)


def _add_refine(sub: Subparsers) -> None:
    p = sub.add_parser(
        "refine",
        help="refine a workspace's detector (PRN) on generated and confirmed defects",
        description="Train the residual segmentation network on generated anomalies and the "
        "defects reviewers confirmed, judge it on held-out confirmed images (before / after) "
        "and switch to it only when asked: --yes, or an answer at the prompt. The refined "
        "model is kept as a candidate until then; every earlier detector stays available "
        "(--rollback).",
    )
    _workspace_options(p)
    what = p.add_mutually_exclusive_group()
    what.add_argument("--yes", action="store_true", help="switch without asking")
    what.add_argument(
        "--no-switch", action="store_true", help="train and judge only (keep the candidate)"
    )
    what.add_argument("--accept", metavar="ID", help="switch to a candidate trained earlier")
    what.add_argument(
        "--rollback", action="store_true", help="put the detector from before the last switch back"
    )
    what.add_argument("--list", action="store_true", help="list the detector versions")
    p.add_argument("--to", type=int, default=None, metavar="N", help="with --rollback: version N")
    p.add_argument(
        "--max-real", type=int, default=None, help="most confirmed defect images to train on"
    )
    p.add_argument(
        "--fuse-weight",
        type=float,
        default=None,
        help="how much the refined probability amplifies the map: distance * (1 + W * p) "
        "(default: the config's, 0.1)",
    )
    p.add_argument("--actor", default="cli", help="who switches (audit log)")
    _common(p)


def _add_synth(sub: Subparsers) -> None:
    p = sub.add_parser("synth", help="write the seeded synthetic demo set (MVTec layout)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--kind",
        default="object",
        choices=list(SCENE_KINDS),
        help="object, texture, pcb (binary traces, tiny defects) or tile "
        "(grayscale, varying sizes)",
    )
    _common(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="protoatlas",
        description="Find anomalies in industrial images and discover their defect types.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (
        _add_detect,
        _add_eval_detect,
        _add_discover,
        _add_assign,
        _add_eval_discover,
        _add_serve,
        _add_simulate_review,
        _add_doctor,
        _add_restore,
        _add_export,
        _add_import_labels,
        _add_delete_batch,
        _add_refine,
        _add_synth,
    ):
        add(sub)
    return parser


def cmd_detect(args: argparse.Namespace) -> int:
    from protoatlas.service import detection as service

    run = service.detect(args.normals, args.images, _config_from(args), progress=not args.quiet)
    out = service.write_csv(args.out, run.rows(), service.SCORE_COLUMNS)
    report = {
        "normals": asdict(run.normals_report),
        "images": asdict(run.images_report),
        "threshold": run.threshold,
        "seconds": run.seconds,
        "fit": {
            "n_fit_images": run.fit.n_fit_images,
            "n_calibration_images": run.fit.n_calibration_images,
            "n_folds": run.fit.n_folds,
            "bank_size": run.fit.bank_size,
        },
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
    if args.save_model and run.detector is not None:
        run.detector.save(args.save_model)
    n_flag = sum(1 for r in run.rows() if r["is_anomalous"])
    print(
        f"scored {len(run.names)} images, {n_flag} anomalous "
        f"(threshold {run.threshold:.4f}); wrote {out} and {report_path.name}"
    )
    print("time: " + ", ".join(f"{k} {v:.1f}s" for k, v in run.seconds.items()))
    if args.labels:
        from protoatlas.service.labels import read_labels

        m = service.label_metrics(run, read_labels(args.labels))
        print(
            f"image AUROC {m['image_auroc']:.4f} | is_anomalous precision "
            f"{m['precision']:.3f} recall {m['recall']:.3f} F1 {m['f1']:.3f} "
            f"({m['n_labelled']} labelled images)"
        )
    return 0


def cmd_eval_detect(args: argparse.Namespace) -> int:
    from protoatlas import evaluation as ev

    rows, results = [], []
    for item in ev.suite_sets(args.mvtec, args.suite):
        with ev.materialised(item.path) as root:
            res = ev.eval_detect(
                root,
                _config_from(args),
                progress=not args.quiet,
                name=item.name,
                refine=args.refine,
            )
        results.append(asdict(res))
        rows.append(ev.as_row(res))
        print(
            f"{res.data}: image AUROC {res.image_auroc:.4f} | pixel AUROC "
            f"{res.pixel_auroc:.4f} | AUPRO(0.3) {res.aupro:.4f} | recall {res.recall:.3f} "
            f"at false-alarm rate {res.false_alarm_rate:.3f}",
            flush=True,
        )
        print(
            f"  fit {res.fit_seconds:.1f}s on {res.n_train} normals (bank {res.bank_size}) | "
            f"score {res.score_seconds:.1f}s for {res.n_test} images "
            f"({res.images_per_second:.1f} img/s) | peak RSS {res.peak_rss_mib:.0f} MiB",
            flush=True,
        )
    if len(rows) > 1:
        print(ev.format_table(rows, ev.DETECT_COLUMNS))
    if args.json:
        Path(args.json).write_text(
            json.dumps(results if len(results) > 1 else results[0], indent=2)
        )
    return 0


def _discover_config(args: argparse.Namespace) -> ProtoAtlasConfig:
    cfg = _config_from(args)
    from engine.prior import prior_overrides

    prior = prior_overrides(args.prior, args.prompt)
    return cfg.with_overrides(prior=prior) if prior else cfg


def _write_discover_outputs(args: argparse.Namespace, run) -> Path:
    from protoatlas.service import detection as service
    from protoatlas.service.discovery import DISCOVER_COLUMNS

    out = service.write_csv(args.out, run.rows(), DISCOVER_COLUMNS)
    report_path = out.with_name(out.stem + "_report.json")
    report_path.write_text(json.dumps(run.report(), indent=2))
    for label, rep in (("normals", run.normals_report), ("images", run.images_report)):
        if rep is not None and rep.skipped:
            _warn(f"{label}: {rep.summary()}")
    res = run.result
    n_anom = int(res.analysis.is_anomalous.sum())
    print(
        f"{len(run.names)} images, {n_anom} anomalous, {len(res.type_ids)} types"
        + (f" ({len(res.new_type_ids)} new)" if hasattr(args, "model") else "")
        + f", {int(res.region_outlier.sum())} outlier regions; wrote {out} and "
        f"{report_path.name}"
    )
    print("time: " + ", ".join(f"{k} {v:.1f}s" for k, v in run.seconds.items()))
    return out


def cmd_discover(args: argparse.Namespace) -> int:
    from protoatlas.service import discovery as discover

    cfg = _discover_config(args)
    run = discover.discover(
        args.normals,
        args.images,
        cfg,
        clusters=args.clusters,
        maps_dir=args.maps,
        progress=not args.quiet,
    )
    _write_discover_outputs(args, run)
    if args.save_model:
        run.model.save(args.save_model)
    if args.home:
        from protoatlas.service import persist_run

        batch_id = persist_run(args.home, run, source=str(args.images))
        print(f"stored as batch {batch_id} in workspace {args.home}")
    return 0


def cmd_assign(args: argparse.Namespace) -> int:
    from protoatlas.service import discovery as discover

    run = discover.assign(
        args.model, args.images, device=args.device, maps_dir=args.maps, progress=not args.quiet
    )
    _write_discover_outputs(args, run)
    return 0


def cmd_eval_discover(args: argparse.Namespace) -> int:
    from protoatlas import evaluation as ev

    rows, results = [], []
    for item in ev.suite_sets(args.mvtec, args.suite, args.clusters):
        with ev.materialised(item.path) as root:
            res = ev.eval_discover(
                root,
                _config_from(args),
                clusters=item.clusters,
                progress=not args.quiet,
                name=item.name,
                baselines=not args.no_baselines,
                refine=args.refine,
            )
        results.append(asdict(res))
        rows.append(ev.discover_row(res))
        print(
            f"{res.data}: {res.n_defect_images} defect images of {res.n_types} types "
            f"(clusters={res.clusters}); detection recall {res.detection_recall:.3f}, "
            f"{res.false_alarms} good images flagged"
        )
        print(
            f"  {'method':38s} {'protocol':8s} {'NMI':>6s} {'ARI':>6s} {'acc':>6s} "
            f"{'F1':>6s} {'K':>3s} {'seconds':>8s}"
        )
        for m in res.methods:
            print(
                f"  {m.method:38s} {m.protocol:8s} {m.nmi:6.3f} {m.ari:6.3f} "
                f"{m.accuracy:6.3f} {m.macro_f1:6.3f} {m.k_found:3d} {m.seconds:8.1f}",
                flush=True,
            )
        if res.k_auto >= 0:
            print(f"  K found with clusters=auto: {res.k_auto}")
    if len(rows) > 1:
        print(ev.format_table(rows, ev.DISCOVER_COLUMNS))
    if args.json:
        Path(args.json).write_text(
            json.dumps(results if len(results) > 1 else results[0], indent=2)
        )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from webapp.app import serve

    return serve(
        home=args.home,
        workspace=args.workspace,
        host=args.host,
        port=args.port,
        demo=args.demo,
        device=args.device,
        quiet=args.quiet,
    )


def cmd_simulate_review(args: argparse.Namespace) -> int:
    from protoatlas import simulate

    curve = simulate.simulate(
        args.normals,
        args.images,
        args.labels,
        _config_from(args),
        budget=args.budget,
        strategy=args.strategy,
        clusters=args.clusters,
        home=args.home,
        progress=not args.quiet,
        refine_after=args.refine_after,
    )
    out = simulate.write_curve(args.out, curve)
    first, last = curve[0], curve[-1]
    print(
        f"{args.strategy}: ARI {first.ari:.3f} -> {last.ari:.3f}, NMI {first.nmi:.3f} -> "
        f"{last.nmi:.3f} after {last.actions} answers; wrote {out}"
    )
    return 0


def _service(args: argparse.Namespace, read_only: bool = False) -> WorkspaceService:
    from protoatlas.service import WorkspaceService

    return WorkspaceService(args.home, args.workspace, read_only=read_only)


def cmd_doctor(args: argparse.Namespace) -> int:
    with _service(args) as service:
        problems = service.doctor()
    return _print_doctor(problems)


def _print_doctor(problems: list) -> int:
    for p in problems:
        print(p)
    errors = [p for p in problems if p.severity == "error"]
    print(
        f"{len(errors)} error(s), {len(problems) - len(errors)} warning(s): "
        + ("workspace is sound" if not errors else "workspace is NOT sound")
    )
    return 0 if not errors else 1


def cmd_restore(args: argparse.Namespace) -> int:
    from protoatlas.service import restore_workspace, snapshots_of

    if args.list:
        snaps = snapshots_of(args.home, args.workspace)
        if not snaps:
            print(f"workspace {args.workspace!r} has no snapshot yet")
            return 0
        print(f"snapshots of workspace {args.workspace!r}, newest first:")
        print(f"{'number':>6}  {'created (UTC)':19}  {'batches':>7}  {'audit entries':>13}  reason")
        for s in snaps:
            print(
                f"{s.number:>6}  {s.created_at:%Y-%m-%d %H:%M:%S}  {s.batches:>7}  "
                f"{s.audit_entries:>13}  {s.reason}"
            )
        return 0
    report = restore_workspace(args.home, args.workspace, args.snapshot)
    res, snap = report.result, report.result.snapshot
    print(
        f"restored workspace {args.workspace!r} from snapshot {snap.number} "
        f"({snap.created_at:%Y-%m-%d %H:%M:%S} UTC; batches: {snap.batches}, "
        f"audit entries: {snap.audit_entries})"
    )
    for path in res.moved_aside:
        print(f"kept the previous file as {path}")
    if res.lost is not None and not res.lost:
        print(f"lost: nothing ({res.lost_note}: every entry is in the snapshot)")
    elif res.lost is not None:
        print(f"lost: {len(res.lost)} audit entries after the snapshot ({res.lost_note}):")
        for e in res.lost:
            when = f"{e.ts:%Y-%m-%d %H:%M:%S}" if e.ts is not None else "?"
            target = json.dumps(e.target, sort_keys=True) if e.target is not None else "?"
            print(f"  {e.seq:>6}  {when}  {e.actor}  {e.action}  {target}")
    elif res.lost_count is not None:
        print(f"lost: about {res.lost_count} audit entries ({res.lost_note})")
    else:
        print(f"lost: cannot tell ({res.lost_note})")
    for path in report.tokens_set_aside:
        print(f"set aside the crop tokens of a batch the snapshot lacks: {path}")
    return _print_doctor(report.problems)


def cmd_export(args: argparse.Namespace) -> int:
    kind = args.format
    scope = {"batch_id": args.batch, "type_ids": args.type_ids}
    if kind.startswith("audit-") and (args.batch is not None or args.type_ids):
        raise ValueError("the audit log is exported whole (its hash chain): drop --batch/--type")
    with _service(args) as service:
        if kind in ("csv", "parquet"):
            path = service.export_assignments(args.out, fmt=kind, level="region", **scope)
        elif kind == "images-csv":
            path = service.export_assignments(args.out, fmt="csv", level="image", **scope)
        elif kind == "coco":
            path = service.export_coco(args.out, **scope)
        elif kind == "coco-all":
            path = service.export_coco(args.out, types="all", **scope)
        elif kind == "label-studio":
            path = service.export_label_studio(args.out, types="all", **scope)
        elif kind == "yolo":
            path = service.export_yolo(args.out, **scope)
        elif kind == "crops":
            path = service.export_crops(args.out, **scope)
        else:
            path = service.export_audit(args.out, fmt=kind.split("-")[1])
    print(f"wrote {path}")
    return 0


def cmd_import_labels(args: argparse.Namespace) -> int:
    with _service(args) as service:
        rep = service.import_labels(args.labels, actor=args.actor)
    print(
        f"{rep.rows} rows: {rep.images_matched} images matched, {rep.regions_assigned} "
        f"regions labelled, {rep.regions_normal} marked normal, "
        f"{len(rep.types_created)} types created"
    )
    if rep.unknown_images:
        _warn(
            f"{len(rep.unknown_images)} images not in the workspace, e.g. {rep.unknown_images[0]}"
        )
    return 0


def cmd_delete_batch(args: argparse.Namespace) -> int:
    if args.batch is None:
        with _service(args, read_only=True) as service:
            batches = service.batches()
        print("id  images  regions  created (UTC)     name")
        for b in batches:
            print(
                f"{b.id:<3} {b.n_images:>6} {b.n_regions:>8}  "
                f"{b.created_at:%Y-%m-%d %H:%M}  {b.name}"
            )
        return 0
    if not args.yes:
        _warn(f"batch {args.batch} not deleted: add --yes to confirm (it cannot be undone)")
        return EXIT_FAILURE
    with _service(args) as service:
        out = service.delete_batch(args.batch, actor=args.actor)
    print(
        f"deleted batch {out.name!r} (#{out.batch_id}): {out.n_images} images "
        f"({out.n_images_removed} removed from the store), {out.n_regions} regions, "
        f"{out.n_reviewed} reviewer decisions on them; audit #{out.seq}. "
        "`protoatlas restore --list` shows the snapshot from before it."
    )
    return 0


def cmd_refine(args: argparse.Namespace) -> int:
    with _service(args) as service:
        if args.list:
            for v in service.detector_versions():
                print(f"{v.id:<4} {v.kind:<9} {v.created_at:%Y-%m-%d %H:%M}  parent {v.parent}")
            return 0
        if args.rollback:
            mv = service.rollback_detector(actor=args.actor, to_version=args.to)
            print(
                f"rolled back: model version {mv} uses the detector of version "
                f"{service.ws.model_version(mv).metrics['detector_of']}"
            )
            return 0
        if args.accept:
            mv = service.accept_refinement(args.accept, actor=args.actor)
            print(f"switched to the refined detector: model version {mv}")
            return 0

        def show(stage: str, fraction: float) -> None:
            if not args.quiet:
                print(f"\rrefine: {stage:<10} {fraction:4.0%}", end="", file=sys.stderr)

        candidate = service.refine_detector(
            progress=show, max_real=args.max_real, fuse_weight=args.fuse_weight
        )
        if not args.quiet:
            print(file=sys.stderr)
        print(candidate.summary())
        verdict = "better" if candidate.better else "not better on every held-out figure"
        print(f"candidate {candidate.id}: {verdict} ({candidate.seconds:.0f} s)")
        switch = args.yes
        if not args.yes and not args.no_switch and sys.stdin.isatty():
            switch = input("switch to the refined detector? [y/N] ").strip().lower() == "y"
        if switch:
            mv = service.accept_refinement(candidate.id, actor=args.actor)
            print(f"switched to the refined detector: model version {mv}")
        else:
            print(f"not switched; later: protoatlas refine --accept {candidate.id}")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from engine import synth

    cfg = synth.kind_config(args.kind)
    root = synth.write_mvtec(args.out, cfg, seed=args.seed)
    print(f"wrote the synthetic {args.kind} set to {root}")
    return 0


COMMANDS = {
    "detect": cmd_detect,
    "eval-detect": cmd_eval_detect,
    "synth": cmd_synth,
    "discover": cmd_discover,
    "assign": cmd_assign,
    "eval-discover": cmd_eval_discover,
    "serve": cmd_serve,
    "simulate-review": cmd_simulate_review,
    "doctor": cmd_doctor,
    "restore": cmd_restore,
    "export": cmd_export,
    "import-labels": cmd_import_labels,
    "delete-batch": cmd_delete_batch,
    "refine": cmd_refine,
}


def _warn(message: str) -> None:
    print(f"protoatlas: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
        format="protoatlas: %(levelname)s: %(name)s: %(message)s",
    )
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
