"""Every region of a workspace with its current assignment, as arrays (one row per region,
sorted by region id): what retraining, the question strategies and the answers read."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from storage import Workspace


@dataclass
class RegionTable:
    """Every region of the workspace with its current assignment (rows by region id)."""

    region_ids: np.ndarray
    image_ids: np.ndarray
    batch_ids: np.ndarray
    type_ids: np.ndarray  # -1: none
    reviewed: np.ndarray  # assignment set by a reviewer
    is_normal: np.ndarray
    area: np.ndarray
    score: np.ndarray
    confidence: np.ndarray


def region_table(ws: Workspace) -> RegionTable:
    """The workspace's regions with their type (-1: none or a rejected/merged type)."""
    rows = [r for b in ws.batches() for r in ws.regions_for_batch(b.id, with_masks=False)]
    rows.sort(key=lambda r: r.id)
    return RegionTable(
        region_ids=np.array([r.id for r in rows], dtype=np.int64),
        image_ids=np.array([r.image_id for r in rows], dtype=np.int64),
        batch_ids=np.array([r.batch_id for r in rows], dtype=np.int64),
        type_ids=np.array(
            [
                -1
                if r.type_id is None or r.type_status not in ("proposed", "confirmed")
                else r.type_id
                for r in rows
            ],
            dtype=np.int64,
        ),
        reviewed=np.array([r.source == "reviewer" for r in rows], dtype=bool),
        is_normal=np.array([bool(r.is_normal) for r in rows], dtype=bool),
        area=np.array([r.area for r in rows], dtype=np.float64),
        score=np.array(
            [np.nan if r.anomaly_score is None else r.anomaly_score for r in rows], dtype=np.float64
        ),
        confidence=np.array(
            [np.nan if r.confidence is None else r.confidence for r in rows], dtype=np.float64
        ),
    )
