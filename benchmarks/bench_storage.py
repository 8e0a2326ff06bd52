"""Storage benchmark: ingest rate and the types-page queries at 10^4..10^6 regions.

Usage (from the repo root, inside the venv)::

    python benchmarks/bench_storage.py [--sizes 10000 100000 1000000] [--dim 256]
        [--types 50] [--runs 60] [--out bench-out/storage.jsonl] [--tmp DIR]

Synthetic data: ~2 regions per image, 64x64 images (tiny PNG-like byte strings, one file
each), full-image boolean masks (RLE-encoded during the ingest), clustered ``dim``-d
embeddings, ~50 types. Batches of at most 100 000 regions, each one ``ingest_batch`` (one
transaction); the first batch proposes the types, later ones assign to them.
Timed: ingest (files + rows + vectors, not the data generation), ``list_types`` (the types
page) and the first ``type_members`` page (p50/p95 over ``--runs`` runs), the plain
GROUP BY the summary table replaces, reading all embeddings, reopening, a few reviewer
actions, and ``doctor``. One JSON line per size goes to ``--out``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine, record  # noqa: E402
from storage import (  # noqa: E402
    AssignmentsIn,
    BatchIngest,
    ImageIn,
    ModelVersionIn,
    NewType,
    PrototypeIn,
    RegionsIn,
    StorageConfig,
    Workspace,
    doctor,
    summary,  # noqa: E402
)

GROUP_BY_SQL = summary._STATS_SQL.format(where="")  # what list_types would run without it


def make_batch(
    rng: np.random.Generator,
    first_image: int,
    n_regions: int,
    dim: int,
    centres: np.ndarray,
    type_refs: list,
    new_types: bool,
    size: int = 64,
    per_image: int = 2,
) -> BatchIngest:
    n_images = int(np.ceil(n_regions / per_image))
    images = [
        ImageIn(
            name=f"cam{(first_image + i) % 7}/{first_image + i:07d}.png",
            width=size,
            height=size,
            data=b"\x89PNG" + (first_image + i).to_bytes(8, "little"),
            anomaly_score=float(s),
            is_anomalous=True,
        )
        for i, s in enumerate(rng.random(n_images))
    ]
    img = np.minimum(np.arange(n_regions) // per_image, n_images - 1)
    top = rng.integers(0, size // 2, n_regions)
    left = rng.integers(0, size // 2, n_regions)
    h = rng.integers(2, size // 2, n_regions)
    w = rng.integers(2, size // 2, n_regions)
    boxes = np.stack([top, left, top + h, left + w], axis=1)
    masks = []
    for t, l, b, r in boxes:
        m = np.zeros((size, size), dtype=bool)
        m[t:b, l:r] = True
        masks.append(m)
    k = rng.integers(0, len(centres), n_regions)
    emb = centres[k] + rng.normal(size=(n_regions, dim)).astype(np.float32)
    return BatchIngest(
        name=f"batch-{first_image}",
        images=images,
        params={"bench": True},
        regions=RegionsIn(
            image=img, boxes=boxes, anomaly_score=rng.random(n_regions), masks=masks, embeddings=emb
        ),
        model=ModelVersionIn(kind="discover", model=rng.bytes(1024)) if new_types else 1,
        new_types=[NewType(key=f"c{i}") for i in range(len(centres))] if new_types else [],
        assignments=AssignmentsIn(
            regions=np.arange(n_regions),
            types=[type_refs[i] for i in k],
            confidence=rng.uniform(0.2, 1.0, n_regions),
        ),
        prototypes=[
            PrototypeIn(type=type_refs[i], vector=centres[i], n_members=int((k == i).sum()))
            for i in range(len(centres))
        ]
        if new_types
        else [],
    )


def timings(fn, runs: int) -> dict[str, float]:
    fn()  # warm-up
    ms = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        ms.append((time.perf_counter() - t0) * 1000)
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "max_ms": float(np.max(ms)),
    }


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run_size(n: int, args: argparse.Namespace, home: Path) -> dict[str, object]:
    rng = np.random.default_rng(n)
    centres = (rng.normal(size=(args.types, args.dim)) * 2).astype(np.float32)
    ws = Workspace.open(home, "bench", embedding_dim=args.dim)
    ingest_s, files_s, done, first_image = 0.0, 0.0, 0, 0
    refs: list = [f"c{i}" for i in range(args.types)]
    while done < n:
        m = min(args.batch_regions, n - done)
        batch = make_batch(rng, first_image, m, args.dim, centres, refs, new_types=done == 0)
        marks: dict[str, float] = {}
        t0 = time.perf_counter()
        ws.ingest_batch(
            batch, progress=lambda stage, d, t: marks.__setitem__(stage, time.perf_counter() - t0)
        )
        ingest_s += time.perf_counter() - t0
        files_s += marks["files"]  # files written + masks encoded + os.sync, before the tx
        if done == 0:
            refs = [t.id for t in sorted(ws.list_types(), key=lambda t: t.id)]
        done += m
        first_image += len(batch.images)
        del batch
    types = ws.list_types()
    assert sum(t.n_regions for t in types) == n
    largest = types[0]
    result: dict[str, object] = {
        "regions": n,
        "images": first_image,
        "types": len(types),
        "dim": args.dim,
        "ingest_s": ingest_s,
        "ingest_regions_per_s": n / ingest_s,
        "ingest_files_stage_s": files_s,
        "ingest_db_stage_s": ingest_s - files_s,
        "ingest_db_regions_per_s": n / max(ingest_s - files_s, 1e-9),
        "list_types": timings(lambda: ws.list_types(), args.runs),
        "type_members_page": timings(lambda: ws.type_members(largest.id, limit=50), args.runs),
        "type_members_borderline": timings(
            lambda: ws.type_members(largest.id, limit=50, order="borderline"), args.runs
        ),
        "representatives": timings(
            lambda: ws.representatives(largest.id, 8), max(5, args.runs // 6)
        ),
    }

    def group_by():
        with ws.read() as cur:
            cur.execute(GROUP_BY_SQL).fetchall()

    result["plain_group_by"] = timings(group_by, max(10, args.runs // 3))
    result["read_all_embeddings_s"] = timed(lambda: ws.embeddings())
    a, b = types[1], types[2]
    members = [m.region_id for m in ws.type_members(a.id, limit=10)]
    result["rename_type_ms"] = 1000 * timed(
        lambda: ws.rename_type(a.id, "bench-renamed", expected_version=a.version, actor="bench")
    )
    result["move_10_regions_ms"] = 1000 * timed(
        lambda: ws.move_regions(
            members, b.id, expected={a.id: a.version + 1, b.id: b.version}, actor="bench"
        )
    )
    result["merge_types_ms"] = 1000 * timed(
        lambda: ws.merge_types(
            a.id, b.id, expected={a.id: a.version + 2, b.id: b.version + 1}, actor="bench"
        )
    )
    result["merged_regions"] = a.n_regions + b.n_regions
    result["undo_merge_ms"] = 1000 * timed(lambda: ws.undo("bench"))
    problems = []
    result["doctor_s"] = timed(lambda: problems.extend(doctor(ws)))
    result["doctor_problems"] = [str(p) for p in problems]
    ws.close()
    result["reopen_s"] = timed(lambda: Workspace.open(home, "bench").close())
    result["db_mib"] = (home / "bench" / "workspace.duckdb").stat().st_size / 2**20
    return result


def print_table(rows: list[dict]) -> None:
    """The results as one line per size (the BENCHMARKS.md table)."""
    header = (
        "regions",
        "ingest reg/s",
        "db-stage reg/s",
        "types p50",
        "types p95",
        "members p50",
        "members p95",
        "border p95",
        "reps p50",
        "GROUP BY p50",
        "embeddings s",
        "merge ms",
        "doctor s",
        "reopen s",
        "db MiB",
    )
    print(" | ".join(header))
    for r in rows:
        print(
            " | ".join(
                [
                    f"{r['regions']:,}",
                    f"{r['ingest_regions_per_s']:,.0f}",
                    f"{r['ingest_db_regions_per_s']:,.0f}",
                    f"{r['list_types']['p50_ms']:.2f}",
                    f"{r['list_types']['p95_ms']:.2f}",
                    f"{r['type_members_page']['p50_ms']:.1f}",
                    f"{r['type_members_page']['p95_ms']:.1f}",
                    f"{r['type_members_borderline']['p95_ms']:.1f}",
                    f"{r['representatives']['p50_ms']:.1f}",
                    f"{r['plain_group_by']['p50_ms']:.1f}",
                    f"{r['read_all_embeddings_s']:.2f}",
                    f"{r['merge_types_ms']:.0f}",
                    f"{r['doctor_s']:.1f}",
                    f"{r['reopen_s']:.2f}",
                    f"{r['db_mib']:.0f}",
                ]
            )
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--types", type=int, default=50)
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--batch-regions", type=int, default=100_000)
    parser.add_argument("--out", default="bench-out/storage.jsonl")
    parser.add_argument("--tmp", default=None, help="where the workspaces are built")
    parser.add_argument("--keep", action="store_true", help="keep the workspaces")
    args = parser.parse_args()
    info = machine()
    rows = []
    for n in args.sizes:
        load = os.getloadavg()
        home = Path(tempfile.mkdtemp(prefix=f"bench-storage-{n}-", dir=args.tmp))
        try:
            res = run_size(n, args, home)
        finally:
            if not args.keep:
                shutil.rmtree(home, ignore_errors=True)
        res["loadavg_1m_before"] = load[0]  # other work sharing the cores skews timings
        record(
            args.out,
            {
                "bench": "storage",
                **res,
                "config": vars(args),
                "storage_config": StorageConfig().__dict__,
                "machine": info,
            },
        )
        rows.append(res)
        print(
            f"{n:>9,} regions: ingest {res['ingest_regions_per_s']:,.0f} regions/s "
            f"({res['ingest_s']:.1f} s) | list_types p50 {res['list_types']['p50_ms']:.2f} "
            f"p95 {res['list_types']['p95_ms']:.2f} ms | members p50 "
            f"{res['type_members_page']['p50_ms']:.1f} p95 "
            f"{res['type_members_page']['p95_ms']:.1f} ms",
            flush=True,
        )
    print()
    print_table(rows)
    print(f"\nmachine: {info['cpu']}, {info['cores']} cores; results appended to {args.out}")


if __name__ == "__main__":
    main()
