"""Synthetic data for the storage tests, and subprocess entry points for crash/lock tests.

Run as ``python -m tests.storage_fixtures <command> <home> ...`` from the repo root.
"""

from __future__ import annotations

import io
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from storage import (
    AssignmentsIn,
    BatchIngest,
    ImageIn,
    ModelVersionIn,
    NewType,
    PrototypeIn,
    RegionsIn,
    StorageConfig,
    Workspace,
)

MARKER = "INSIDE-TRANSACTION"


def make_batch(
    n_images: int,
    *,
    regions_per_image: int = 2,
    dim: int = 16,
    n_types: int = 4,
    seed: int = 0,
    name: str = "batch",
    size: tuple[int, int] = (24, 32),
    with_maps: bool = False,
    with_masks: bool = True,
    existing_types: list[int] | None = None,
    model: bool = True,
    image_prefix: str = "img",
) -> BatchIngest:
    """A batch of ``n_images`` distinct images with ``regions_per_image`` regions each.

    Regions are assigned round-robin-free (by a seeded draw) to ``n_types`` new types
    (keys ``c0..``) or to ``existing_types`` ids when given; embeddings are clustered
    around per-type centres so prototypes mean something.
    """
    rng = np.random.default_rng(seed)
    h, w = size
    images = []
    for i in range(n_images):
        data = b"\x89PNG-fake" + f"{image_prefix}/{seed}/{i}".encode() + rng.bytes(16)
        amap = rng.random((h, w)).astype(np.float32) if with_maps else None
        images.append(
            ImageIn(
                name=f"{image_prefix}/{i:06d}.png",
                width=w,
                height=h,
                data=data,
                anomaly_score=float(rng.random()),
                is_anomalous=True,
                anomaly_map=amap,
            )
        )
    n = n_images * regions_per_image
    img = np.repeat(np.arange(n_images), regions_per_image)
    top = rng.integers(0, h // 2, n)
    left = rng.integers(0, w // 2, n)
    bottom = top + rng.integers(1, h // 2, n)
    right = left + rng.integers(1, w // 2, n)
    boxes = np.stack([top, left, bottom, right], axis=1)
    masks = None
    if with_masks:
        masks = []
        for t, l, b, r in boxes:
            m = np.zeros((h, w), dtype=bool)
            m[t:b, l:r] = True
            masks.append(m)
    refs = existing_types if existing_types is not None else [f"c{k}" for k in range(n_types)]
    k_of = rng.integers(0, len(refs), n)
    centres = rng.normal(size=(len(refs), dim)).astype(np.float32) * 3
    emb = (centres[k_of] + rng.normal(size=(n, dim))).astype(np.float32) if model else None
    return BatchIngest(
        name=name,
        params={"seed": seed},
        images=images,
        regions=RegionsIn(
            image=img, boxes=boxes, anomaly_score=rng.random(n), masks=masks, embeddings=emb
        ),
        model=ModelVersionIn(kind="discover", model=b"model-" + rng.bytes(8), metrics={"n": n})
        if model
        else None,
        new_types=[]
        if existing_types is not None
        else [NewType(key=f"c{k}") for k in range(n_types)],
        assignments=AssignmentsIn(
            regions=np.arange(n), types=[refs[k] for k in k_of], confidence=rng.uniform(0.3, 1.0, n)
        ),
        prototypes=[
            PrototypeIn(type=refs[k], vector=centres[k], n_members=int((k_of == k).sum()))
            for k in range(len(refs))
        ]
        if model
        else [],
    )


def with_pngs(batch: BatchIngest, seed: int = 0) -> BatchIngest:
    """``batch`` with real (noise) PNG files in place of the fake bytes, for what opens the
    images (the crops export)."""
    from PIL import Image

    def png(k: int, h: int, w: int) -> bytes:
        rgb = np.random.default_rng(k).integers(0, 255, (h, w, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="PNG")
        return buf.getvalue()

    batch.images = [
        replace(im, data=png(seed * 100_000 + i, im.height, im.width))
        for i, im in enumerate(batch.images)
    ]
    return batch


def counts(ws: Workspace) -> dict[str, int]:
    """Row count of every table (the "before-state" of crash tests)."""
    out = {}
    with ws.read() as cur:
        for (table,) in cur.execute(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = 'main' ORDER BY 1"
        ).fetchall():
            out[table] = cur.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    return out


def _kill_point(stage_wanted: str, after: int):
    def progress(stage: str, done: int, total: int) -> None:
        if stage == stage_wanted and done >= after:
            print(MARKER, stage, done, total, flush=True)
            time.sleep(120)  # the parent SIGKILLs us here, inside the transaction

    return progress


def main(argv: list[str]) -> None:
    command, home = argv[0], Path(argv[1])
    cfg = StorageConfig(insert_chunk_rows=int(argv[2]) if len(argv) > 2 else 50_000)
    if command == "try-open":
        try:
            Workspace.open(home, "w")
        except Exception as exc:  # noqa: BLE001 - we print what the user would see
            print(f"{type(exc).__name__}: {exc}", flush=True)
        return
    ws = Workspace.open(home, "w", config=cfg)
    if command == "crash-ingest":
        batch = crash_batch()
        ws.ingest_batch(batch, progress=_kill_point("embeddings", 2 * cfg.insert_chunk_rows))
    elif command == "crash-retrain":
        ids, _ = ws.embeddings()
        emb = np.random.default_rng(5).normal(size=(len(ids), ws.embedding_dim))
        types = [t.id for t in ws.list_types()]
        ws.apply_retrain(
            ModelVersionIn(kind="retrain", model=b"retrained"),
            AssignmentsIn(
                regions=ids,
                types=[types[i % len(types)] for i in range(len(ids))],
                confidence=np.full(len(ids), 0.9),
            ),
            embeddings=(ids, emb),
            progress=_kill_point("assignments", cfg.insert_chunk_rows),
        )
    print("FINISHED-WITHOUT-KILL", flush=True)


def crash_batch() -> BatchIngest:
    """The large batch the crash test kills mid-ingest (and then retries)."""
    return make_batch(
        1_000,
        regions_per_image=150,
        dim=8,
        seed=99,
        name="big",
        size=(16, 16),
        with_masks=False,
        image_prefix="big",
    )


if __name__ == "__main__":
    main(sys.argv[1:])
