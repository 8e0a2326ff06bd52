"""Discovery benchmark: the full method against k-means baselines, an ablation, and speed.

Usage (repo root, inside the venv)::

    python benchmarks/bench_discover.py eval --mvtec DIR [--clusters 3|auto]
    python benchmarks/bench_discover.py ablation --mvtec DIR --clusters K
    python benchmarks/bench_discover.py speed --mvtec DIR
    python benchmarks/bench_discover.py seeds --mvtec DIR --clusters K [--dims 256,320]
    python benchmarks/bench_discover.py xsdd [--root DIR]

``eval`` is ``protoatlas eval-discover`` recorded as JSON; ``ablation`` re-runs the method
with one component off at a time (guidance, region factor, object prior, residual tokens,
training, Ward); ``seeds`` re-runs the type step (one analysis) with seeds 0-5 at each
embedding dimension of ``--dims`` and reports mean / min / max; ``speed`` times ``discover``
end to end and ``assign`` on a saved model;
``xsdd`` checks the clustering head alone on pre-cropped images without normals. Results are
appended to ``bench-out/discover.jsonl`` with the machine and load.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks.common import SHARED, machine, record  # noqa: E402
from engine import metrics  # noqa: E402
from engine.config import ProtoAtlasConfig  # noqa: E402
from engine.data import LazyImages, list_images, load_mvtec  # noqa: E402
from engine.discovery import NO_TYPE, DiscoveryModel  # noqa: E402

OUT = "bench-out/discover.jsonl"

#: Ablations: name -> config overrides (analysis-level ones need new tokens).
ABLATIONS: dict[str, dict] = {
    "full method": {},
    "no guidance (beta=0, no region factor, no residual weighting)": {
        "discovery": {
            "guidance_beta": 0.0,
            "region_factors": (0.0, 0.0, 0.0),
            "residual_power": 0.0,
            "learn_factors": False,
        }
    },
    "no region factor": {"discovery": {"region_factors": (0.0, 0.0, 0.0), "learn_factors": False}},
    "no object prior (prior=none)": {"prior": {"backend": "none"}},
    "residual tokens off": {"discovery": {"use_residual": False}},
    "no training (head_epochs=0)": {"discovery": {"head_epochs": 0}},
    "k-means instead of Ward": {"discovery": {"cluster_method": "kmeans"}},
}
_ANALYSIS_KEYS = {"prior", "use_residual", "n_references"}


def _load(root: Path) -> tuple[LazyImages, LazyImages, list[str]]:
    data = load_mvtec(root)
    normals = LazyImages(data.train)
    normals.validate()
    test = LazyImages([s.ref for s in data.test])
    test.validate()
    kind = {s.ref.name: s.defect_type for s in data.test}
    return normals, test, [kind[n] for n in test.names]


def _score(truth: list[str], analysis, result) -> dict[str, float]:
    idx = [i for i, t in enumerate(truth) if t != "good"]
    pred = [
        "none"
        if not analysis.is_anomalous[i] or result.image_type[i] == NO_TYPE
        else str(result.image_type[i])
        for i in idx
    ]
    m = metrics.cluster_metrics([truth[i] for i in idx], pred)
    return {"nmi": m.nmi, "ari": m.ari, "f1": m.macro_f1, "k": len(result.type_ids)}


def cmd_eval(args: argparse.Namespace) -> None:
    from protoatlas.evaluation import eval_discover

    clusters = args.clusters if args.clusters == "auto" else int(args.clusters)
    res = eval_discover(args.mvtec, ProtoAtlasConfig(device=args.device), clusters=clusters)
    row = {"bench": "eval", **asdict(res), "machine": machine(), "load": os.getloadavg()[0]}
    record(args.out, row)
    for m in res.methods:
        print(
            f"{res.data} K={res.clusters}: {m.method:40s} NMI {m.nmi:.3f} ARI {m.ari:.3f} "
            f"F1 {m.f1:.3f} K {m.k_found} {m.seconds:.1f}s"
        )


def cmd_ablation(args: argparse.Namespace) -> None:
    normals, test, truth = _load(Path(args.mvtec))
    clusters = args.clusters if args.clusters == "auto" else int(args.clusters)
    base = ProtoAtlasConfig(device=args.device)
    cache: dict[str, tuple[DiscoveryModel, object]] = {}
    for name, over in ABLATIONS.items():
        cfg = base.with_overrides(**over)
        key = repr(
            {k: v for k, v in over.items() if k == "prior"}
            | {k: v for k, v in over.get("discovery", {}).items() if k in _ANALYSIS_KEYS}
        )
        if key not in cache:
            model = DiscoveryModel(cfg)
            model.fit(normals)
            cache[key] = (model, model.analyse(test))
        model, analysis = cache[key]
        model.config = cfg
        model.value_range = None
        result = model.discover(analysis, clusters)
        s = _score(truth, analysis, result)
        record(
            args.out,
            {
                "bench": "ablation",
                "data": Path(args.mvtec).name,
                "clusters": str(clusters),
                "variant": name,
                **s,
                "machine": machine(),
                "load": os.getloadavg()[0],
            },
        )
        print(
            f"{Path(args.mvtec).name} K={clusters}: {name:62s} NMI {s['nmi']:.3f} "
            f"ARI {s['ari']:.3f} F1 {s['f1']:.3f} K {s['k']}",
            flush=True,
        )


def cmd_seeds(args: argparse.Namespace) -> None:
    normals, test, truth = _load(Path(args.mvtec))
    clusters = args.clusters if args.clusters == "auto" else int(args.clusters)
    base = ProtoAtlasConfig(device=args.device)
    model = DiscoveryModel(base)
    model.fit(normals)
    analysis = model.analyse(test)
    for dim in (int(d) for d in args.dims.split(",")):
        scores = []
        for seed in range(args.n_seeds):
            model.config = replace(base.with_overrides(discovery={"embedding_dim": dim}), seed=seed)
            model.value_range = None
            scores.append(_score(truth, analysis, model.discover(analysis, clusters)))
        table = np.array([[s["nmi"], s["ari"], s["f1"]] for s in scores])
        row = {
            "bench": "seeds",
            "data": Path(args.mvtec).name,
            "clusters": str(clusters),
            "embedding_dim": dim,
            "per_seed": scores,
            **{
                f"{k}_{stat}": float(f(table[:, j]))
                for j, k in enumerate(("nmi", "ari", "f1"))
                for stat, f in (("mean", np.mean), ("min", np.min), ("max", np.max))
            },
            "machine": machine(),
            "load": os.getloadavg()[0],
        }
        record(args.out, row)
        print(
            f"{Path(args.mvtec).name} K={clusters} d={dim}, seeds 0-{args.n_seeds - 1}: "
            f"NMI {table[:, 0].mean():.3f} ({table[:, 0].min():.3f}-{table[:, 0].max():.3f}) "
            f"ARI {table[:, 1].mean():.3f} ({table[:, 1].min():.3f}-{table[:, 1].max():.3f}) "
            f"F1 {table[:, 2].mean():.3f} ({table[:, 2].min():.3f}-{table[:, 2].max():.3f}); "
            f"seed 0: {table[0, 0]:.3f} / {table[0, 1]:.3f} / {table[0, 2]:.3f}",
            flush=True,
        )


def cmd_speed(args: argparse.Namespace) -> None:
    from protoatlas.cli import main

    root = Path(args.mvtec)
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model.npz"
        t0 = time.perf_counter()
        code = main(
            [
                "discover",
                "--normals",
                str(root / "train" / "good"),
                "--images",
                str(root / "test"),
                "--out",
                str(Path(tmp) / "d.csv"),
                "--clusters",
                "3",
                "--save-model",
                str(model),
                "--quiet",
                "--device",
                args.device,
            ]
        )
        t_discover = time.perf_counter() - t0
        assert code == 0
        n = len(list_images(root / "test"))
        t0 = time.perf_counter()
        code = main(
            [
                "assign",
                "--model",
                str(model),
                "--images",
                str(root / "test"),
                "--out",
                str(Path(tmp) / "a.csv"),
                "--quiet",
                "--device",
                args.device,
            ]
        )
        t_assign = time.perf_counter() - t0
        assert code == 0
    row = {
        "bench": "speed",
        "data": root.name,
        "discover_seconds": t_discover,
        "assign_seconds": t_assign,
        "assign_images": n,
        "assign_images_per_second": n / t_assign,
        "machine": machine(),
        "load": os.getloadavg()[0],
    }
    record(args.out, row)
    print(
        f"{root.name}: discover end to end {t_discover:.1f}s; assign {n} images in "
        f"{t_assign:.1f}s ({n / t_assign:.1f} img/s, model load included)"
    )


def cmd_xsdd(args: argparse.Namespace) -> None:
    """Clustering head alone: every pre-cropped image is one region (no normals, no map)."""
    from engine.clustering import spherical_kmeans
    from engine.crops import Box
    from engine.regions import Region

    root = Path(args.root)
    images = LazyImages(list_images(root))
    images.validate()
    truth = [n.split("/")[0] for n in images.names]
    k = len(set(truth))
    cfg = ProtoAtlasConfig(device=args.device).with_overrides(discovery={"use_residual": False})
    model = DiscoveryModel(cfg)
    size = cfg.crops.output_size
    import cv2

    regions = []
    for i in range(len(images)):
        im = images[i]
        crop = cv2.resize(im, (size, size), interpolation=cv2.INTER_LINEAR)
        regions.append(
            Region(
                i,
                Box(0, 0, im.shape[0], im.shape[1]),
                np.ones(im.shape[:2], bool),
                (0, 0, im.shape[0], im.shape[1]),
                im.shape[0] * im.shape[1],
                1.0,
                crop,
                np.zeros((size, size), np.float32),
                np.full((size, size), 2, np.uint8),
            )
        )
    tokens = model.encoder.encode(regions, [r.mask.shape for r in regions], [[] for _ in regions])
    pooled = tokens.tokens.mean(axis=1)
    rows = []
    for name, x in [("k-means on mean crop tokens", pooled)]:
        lab, _ = spherical_kmeans(x, k, restarts=10, seed=0)
        m = metrics.cluster_metrics(truth, [str(v) for v in lab])
        rows.append((name, m))
    for name, over in [
        ("head (Ward + training)", {}),
        ("head, k-means init", {"cluster_method": "kmeans"}),
        ("head, no training", {"head_epochs": 0}),
    ]:
        model.config = cfg.with_overrides(discovery=over)
        fit = model.fit_types(tokens, k)
        m = metrics.cluster_metrics(truth, [str(v) for v in fit.assigned])
        rows.append((name, m))
    for name, m in rows:
        record(
            args.out,
            {
                "bench": "xsdd",
                "variant": name,
                "nmi": m.nmi,
                "ari": m.ari,
                "f1": m.macro_f1,
                "machine": machine(),
            },
        )
        print(
            f"xsdd ({len(images)} images, {k} types): {name:32s} NMI {m.nmi:.3f} "
            f"ARI {m.ari:.3f} F1 {m.macro_f1:.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("eval", "ablation", "speed", "seeds"):
        p = sub.add_parser(name)
        p.add_argument("--mvtec", default=str(SHARED / "mvtec_bottle"))
        p.add_argument("--clusters", default="3")
        p.add_argument("--device", default="cpu")
        p.add_argument("--out", default=OUT)
        if name == "seeds":
            p.add_argument("--dims", default="256,320")
            p.add_argument("--n-seeds", type=int, default=6)
    p = sub.add_parser("xsdd")
    p.add_argument("--root", default=str(SHARED / "xsdd"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=OUT)
    args = parser.parse_args()
    {
        "eval": cmd_eval,
        "ablation": cmd_ablation,
        "speed": cmd_speed,
        "seeds": cmd_seeds,
        "xsdd": cmd_xsdd,
    }[args.cmd](args)


if __name__ == "__main__":
    main()
