"""The storage form of an engine run: a :class:`~storage.BatchIngest` (images, regions,
assignments, new types, prototypes) from a :class:`~protoatlas.service.discovery.DiscoverRun`,
the tokens stored beside it, and the candidate regions just below the threshold."""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from engine.data import LazyImages, SkippedFile
from engine.discovery import NO_TYPE, DiscoveryModel, DiscoveryResult
from engine.tokens import RegionTokens
from protoatlas.service.discovery import DiscoverRun
from storage import (
    AssignmentsIn,
    BatchIngest,
    ImageIn,
    ModelVersionIn,
    NewType,
    PrototypeIn,
    RegionsIn,
    encode_rle,
)


def _image_in(images: LazyImages, i: int, result: DiscoveryResult) -> ImageIn:
    ref = images.refs[i]
    h, w = result.analysis.shapes[i]
    data = None if ref.path is not None else ref.read_bytes()
    return ImageIn(
        name=ref.name,
        width=int(w),
        height=int(h),
        path=ref.path,
        data=data,
        anomaly_score=float(result.analysis.scores[i]),
        is_anomalous=bool(result.analysis.is_anomalous[i]),
        anomaly_map=result.analysis.maps[i],
    )


def dedupe(
    images: LazyImages, stored: Callable[[list[str]], dict[str, tuple[str, str]]] | None = None
) -> list[SkippedFile]:
    """Drop images whose bytes repeat an earlier image of the batch (kept once) or, with
    ``stored`` (content hashes -> (batch, name) already in the workspace), an image the
    workspace already holds; each dropped one is reported with the reason."""
    seen: dict[str, str] = {}
    dupes: list[SkippedFile] = []
    shas: dict[str, str] = {}
    for ref in images.refs:
        sha = hashlib.sha256(ref.read_bytes()).hexdigest()
        if sha in seen:
            dupes.append(SkippedFile(ref.name, f"identical to {seen[sha]} (kept once)"))
        else:
            seen[sha] = ref.name
            shas[ref.name] = sha
    known = stored(sorted(set(shas.values()))) if stored is not None else {}
    for name, sha in shas.items():
        if sha in known:
            batch, first = known[sha]
            dupes.append(
                SkippedFile(name, f"already in the workspace ({first} of batch '{batch}')")
            )
    if dupes:
        if len(dupes) == len(images.refs):
            raise ValueError(
                f"every image of this upload is already in the workspace or repeats another: "
                f"{dupes[0].name}: {dupes[0].reason}"
            )
        images.drop({d.name for d in dupes})
    return dupes


def candidate_peaks(run: DiscoverRun, band: float) -> list[int]:
    """Indices into ``run.result.analysis.peaks`` of the images the detector passed that
    score within ``band`` below its threshold (their peak region becomes a candidate)."""
    an = run.result.analysis
    threshold = run.threshold
    if threshold is None or not np.isfinite(threshold) or run.result.peak_embeddings is None:
        return []
    floor = (1.0 - band) * threshold
    return [k for k, rec in enumerate(an.peaks) if an.scores[rec.image_index] >= floor]


def batch_ingest(
    run: DiscoverRun,
    images: LazyImages,
    *,
    name: str,
    params: dict,
    model: ModelVersionIn | int | None,
    existing: bool,
    candidates: Sequence[int] = (),
) -> BatchIngest:
    """The storage form of a run. ``existing``: the run's type ids are storage ids (assign),
    except ``run.result.new_type_ids``; otherwise all types are new (discover).
    ``candidates`` (indices into the analysis' peaks) are stored after the regions, as
    regions judged normal without a type."""
    res = run.result
    an = res.analysis
    new_ids = set(res.new_type_ids) if existing else {int(t) for t in res.type_ids}

    def ref(tid: int) -> object:
        return f"k{tid}" if tid in new_ids else int(tid)

    records = list(an.regions) + [an.peaks[k] for k in candidates]
    n = len(records)
    embeddings = res.embeddings
    if candidates:
        assert res.peak_embeddings is not None
        embeddings = np.concatenate([res.embeddings, res.peak_embeddings[list(candidates)]])
    regions = RegionsIn(
        image=np.array([r.image_index for r in records], dtype=np.int64),
        boxes=np.array([r.clip for r in records], dtype=np.int64).reshape(n, 4),
        anomaly_score=np.array([r.score for r in records], dtype=np.float64),
        masks=[encode_rle(r.full_mask(an.shapes[r.image_index])) for r in records],
        area=np.array([r.area for r in records], dtype=np.int64),
        embeddings=embeddings if n else None,
    )
    n_found = len(an.regions)
    assignments = AssignmentsIn(
        regions=np.arange(n, dtype=np.int64),
        types=[None if t == NO_TYPE else ref(int(t)) for t in res.region_type]
        + [None] * len(candidates),
        confidence=np.concatenate(
            [res.region_confidence.astype(np.float64), np.zeros(len(candidates))]
        ),
        is_normal=np.arange(n) >= n_found,
    )
    counts = {int(t): int((res.region_type == t).sum()) for t in res.type_ids}
    prototypes = [
        PrototypeIn(type=ref(int(t)), vector=v, n_members=counts[int(t)])
        for t, v in zip(res.type_ids, res.prototypes)
        if int(t) in new_ids
    ]
    return BatchIngest(
        name=name,
        images=[_image_in(images, i, res) for i in range(len(images))],
        regions=regions,
        params=params,
        model=model,
        new_types=[NewType(key=f"k{t}") for t in sorted(new_ids)],
        assignments=assignments if n else None,
        prototypes=prototypes if n_found else [],
    )


def stored_tokens(run: DiscoverRun, candidates: Sequence[int]) -> RegionTokens:
    """Tokens of the regions :func:`batch_ingest` stores, in its order."""
    an = run.result.analysis
    if not candidates or an.peak_tokens is None:
        return an.tokens
    return RegionTokens.concat([an.tokens, an.peak_tokens.select(list(candidates))])


def model_bytes(model: DiscoveryModel) -> bytes:
    """The model file's bytes (what a storage model version keeps)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = model.save(Path(tmp) / "model.npz")
        return path.read_bytes()
