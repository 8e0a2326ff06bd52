"""Snapshots and damaged files: what a snapshot costs, and what damage does to an open.

Usage (from the repo root, inside the venv)::

    python benchmarks/bench_snapshots.py [--regions 3000] [--large 100000] [--runs 20]
        [--damage-trials 200] [--seed 0] [--out bench-out/snapshots.jsonl]

1. A workspace of ``--regions`` regions (``bench_webapp.build_workspace``: one 96 x 96 PNG,
   mask, anomaly map and 256-d embedding per region, 6 types) plus 100 reviewer actions.
   Timed over ``--runs``: one snapshot (``Workspace.snapshot``: EXPORT DATABASE to Parquet,
   manifest, rename, rotation), a writer open with and without ``verify_on_open``, and a
   restore (``Workspace.restore``: import into a new file, move aside, rename).
2. ``--damage-trials`` damaged copies of its closed database file, each seeded
   (``seed + i``): even trials truncate the file at a uniform fraction, odd ones overwrite
   4 KiB at a uniform offset with random bytes. Each copy is opened: a
   ``DamagedWorkspaceError`` is the wanted outcome; a copy that opens is compared, table by
   table (a hash of every column), with the original: "intact" (the damage hit unused
   space) or "WRONG" (silently different data: must be 0). Every damaged copy is then
   restored from its newest snapshot and checked with ``doctor`` (verify_hashes).
3. ``--large N`` (0 to skip): snapshot, verify and restore times at N regions
   (``bench_storage.make_batch``: 2 regions per image, 256-d, 50 types).
One JSON line goes to ``--out``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_webapp import build_workspace  # noqa: E402
from benchmarks.common import machine, record  # noqa: E402
from storage import DamagedWorkspaceError, StorageConfig, Workspace, doctor, is_sound  # noqa: E402
from storage.snapshots import user_tables  # noqa: E402

NAME = "w"
QUIET = StorageConfig(snapshots=False)


def stats(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "max_ms": float(ms.max()),
        "n": len(ms),
    }


def folder_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def reviewer_actions(ws: Workspace, n: int) -> None:
    types = ws.list_types()
    for i in range(n):
        t = ws.get_type(types[i % len(types)].id)
        ws.rename_type(t.id, f"type {i}", expected_version=t.version, actor="bench")


def write_everywhere(ws: Workspace) -> None:
    """Writes that insert into every table with a primary key (so DuckDB loads each
    index): a new type from two regions, a rename, a suggestion, a retrain's vectors."""
    from storage import AssignmentsIn, ModelVersionIn, PrototypeIn, SuggestionIn

    t = ws.list_types()[0]
    regions = [m.region_id for m in ws.type_members(t.id, limit=2)]
    new = ws.create_type(regions, expected={t.id: t.version}, actor="bench")
    ws.rename_type(new, "written", expected_version=ws.get_type(new).version, actor="bench")
    ws.replace_open_suggestions([SuggestionIn(kind="defect", target={"x": 1}, score=1.0)])
    ids, _ = ws.embeddings()
    vec = np.ones((len(ids), ws.embedding_dim), np.float32)
    ws.apply_retrain(
        ModelVersionIn(kind="retrain", model=b"m"),
        AssignmentsIn(regions=ids[:1], types=[new], confidence=np.array([0.5])),
        [PrototypeIn(type=new, vector=vec[0], n_members=1)],
        embeddings=(ids, vec),
    )
    from benchmarks.bench_storage import make_batch

    centres = np.zeros((2, ws.embedding_dim), np.float32)
    ws.ingest_batch(
        make_batch(
            np.random.default_rng(1), 10**6, 4, ws.embedding_dim, centres, ["c0", "c1"], True
        )
    )


def content(db: Path) -> dict[str, tuple]:
    """Per table: row count and the xor of the hashes of every column (order-free)."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        return {
            t: tuple(
                con.execute(f'SELECT count(*), bit_xor(hash(COLUMNS(*))) FROM "{t}"').fetchone()
            )
            for t in user_tables(con)
        }
    finally:
        con.close()


def timings(home: Path, runs: int) -> dict[str, object]:
    """Snapshot, open (verified or not) and restore times of the workspace ``home/w``."""
    out: dict[str, object] = {}
    with Workspace.open(home, NAME, config=StorageConfig(snapshot_keep=max(5, runs))) as ws:
        ws.snapshot()  # warm-up
        snaps = [ws.snapshot() for _ in range(runs)]
    out["snapshot"] = stats([s.seconds for s in snaps])
    out["snapshot_mb"] = folder_mb(snaps[-1].path)
    out["database_mb"] = (home / NAME / "workspace.duckdb").stat().st_size / 1e6
    for label, verify in (("open_verified", True), ("open_unverified", False)):
        cfg = StorageConfig(snapshots=False, verify_on_open=verify)
        seconds = []
        for _ in range(runs):
            t0 = time.perf_counter()
            Workspace.open(home, NAME, config=cfg).close()
            seconds.append(time.perf_counter() - t0)
        out[label] = stats(seconds)
    seconds = []
    for _ in range(max(3, runs // 4)):
        t0 = time.perf_counter()
        res = Workspace.restore(home, NAME)
        seconds.append(time.perf_counter() - t0)
        for p in res.moved_aside:
            p.unlink()
    out["restore"] = stats(seconds)
    return out


def damage(kind: str, db: Path, rng: np.random.Generator) -> str:
    size = db.stat().st_size
    if kind == "truncate":
        at = int(rng.uniform(0, 1) * size)
        with open(db, "r+b") as fh:
            fh.truncate(at)
        return f"truncated at {at} of {size}"
    at = int(rng.integers(0, size - 4096))
    with open(db, "r+b") as fh:
        fh.seek(at)
        fh.write(rng.bytes(4096))
    return f"4 KiB overwritten at {at} of {size}"


def damage_trials(home: Path, trials: int, seed: int, tmp: Path) -> dict[str, object]:
    root = home / NAME
    original = content(root / "workspace.duckdb")
    outcomes = dict.fromkeys(["error_at_open", "intact", "error_later", "WRONG", "other_error"], 0)
    by_kind: dict[str, dict[str, int]] = {}
    others: list[str] = []
    restored_sound = 0
    for i in range(trials):
        rng = np.random.default_rng(seed + i)
        kind = "truncate" if i % 2 == 0 else "overwrite"
        trial = tmp / f"trial-{i}"
        (trial / NAME / "pending").mkdir(parents=True)
        shutil.copyfile(root / "workspace.duckdb", trial / NAME / "workspace.duckdb")
        shutil.copytree(root / "snapshots", trial / NAME / "snapshots")
        for sub in ("images", "blobs"):  # read only (doctor): shared, not copied
            (trial / NAME / sub).symlink_to(root / sub)
        db = trial / NAME / "workspace.duckdb"
        what = damage(kind, db, rng)
        try:
            Workspace.open(trial, NAME, config=QUIET).close()
        except DamagedWorkspaceError as exc:
            outcome = "error_at_open"
            assert str(db) in str(exc) and "protoatlas restore" in str(exc), exc
        except Exception as exc:  # noqa: BLE001 - counted and shown
            outcome = "other_error"
            others.append(f"{what}: {type(exc).__name__}: {exc}"[:300])
        else:
            outcome = "intact" if content(db) == original else "WRONG"
            if outcome == "intact":  # and it stays usable: doctor, then writes to every index
                try:
                    with Workspace.open(trial, NAME, config=QUIET) as ws:
                        problems = doctor(ws, verify_hashes=True)
                        write_everywhere(ws)
                    outcome = "intact" if is_sound(problems) else "WRONG"
                except DamagedWorkspaceError as exc:
                    outcome = "error_later"
                    assert str(db) in str(exc) and "protoatlas restore" in str(exc), exc
                except Exception as exc:  # noqa: BLE001 - counted and shown
                    outcome = "other_error"
                    others.append(f"later, {what}: {type(exc).__name__}: {exc}"[:300])
            if outcome != "intact":
                others.append(f"{outcome} after {what}")
        outcomes[outcome] += 1
        by_kind.setdefault(kind, {}).setdefault(outcome, 0)
        by_kind[kind][outcome] += 1
        Workspace.restore(trial, NAME)
        with Workspace.open(trial, NAME, config=QUIET) as ws:
            restored_sound += is_sound(doctor(ws, verify_hashes=True))
        shutil.rmtree(trial)
    return {
        "trials": trials,
        "outcomes": outcomes,
        "by_kind": by_kind,
        "restored_sound": restored_sound,
        "examples": others[:10],
    }


def build_large(home: Path, n: int) -> None:
    from benchmarks.bench_storage import make_batch

    rng = np.random.default_rng(n)
    centres = rng.normal(size=(50, 256)).astype(np.float32) * 3
    refs: list = [f"c{i}" for i in range(50)]
    with Workspace.open(home, NAME, embedding_dim=256, config=QUIET) as ws:
        done = 0
        while done < n:
            m = min(100_000, n - done)
            first = done == 0
            ws.ingest_batch(make_batch(rng, done, m, 256, centres, refs, first))
            if first:
                refs = [t.id for t in sorted(ws.list_types(), key=lambda t: t.id)]
            done += m
        reviewer_actions(ws, 100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regions", type=int, default=3000)
    parser.add_argument("--large", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--damage-trials", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench-out/snapshots.jsonl")
    parser.add_argument("--tmp", default=None, help="where the workspaces are built")
    args = parser.parse_args()
    info = machine()
    tmp = Path(tempfile.mkdtemp(prefix="bench-snapshots-", dir=args.tmp))
    result: dict[str, object] = {"bench": "snapshots", "loadavg_1m_before": os.getloadavg()[0]}
    try:
        home = tmp / "home"
        build_workspace(home, NAME, n_images=args.regions, seed=args.seed).close()
        with Workspace.open(home, NAME, config=QUIET) as ws:
            reviewer_actions(ws, 100)
        # its one snapshot (after the batch, before the actions) is what the trials restore
        result["damage"] = damage_trials(home, args.damage_trials, args.seed, tmp)
        print(f"damage: {result['damage']}", flush=True)
        result["small"] = {"regions": args.regions, **timings(home, args.runs)}
        print(f"{args.regions} regions: {result['small']}", flush=True)
        if args.large:
            big = tmp / "big"
            build_large(big, args.large)
            result["large"] = {"regions": args.large, **timings(big, max(3, args.runs // 4))}
            print(f"{args.large} regions: {result['large']}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    record(args.out, {**result, "config": vars(args), "machine": info})
    print(f"results appended to {args.out}")


if __name__ == "__main__":
    main()
