"""Checks of writer input that need no database: each raises :class:`ValidationError`.

Shared by the model-side writes (``storage.ingest``) and the reviewer actions
(``storage.review``); they run before any file is written or transaction opened.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from storage import audit
from storage.errors import ValidationError
from storage.models import AssignmentsIn, ModelVersionIn, NewType, PrototypeIn


def check_actor(actor: str) -> str:
    if not isinstance(actor, str) or not actor.strip() or len(actor) > 100:
        raise ValidationError(
            f"actor must be a non-empty name of at most 100 characters, got {actor!r}"
        )
    return actor.strip()


def check_type_name(name: str) -> str:
    """A type name: 1-100 printable characters, not the reserved label 'good'."""
    if not isinstance(name, str):
        raise ValidationError(f"a type name must be text, got {type(name).__name__}")
    name = name.strip()
    if not name or len(name) > 100 or any(ord(c) < 32 for c in name):
        raise ValidationError(f"type name {name!r} must be 1-100 printable characters")
    if name.lower() == "good":
        raise ValidationError("'good' is reserved for normal images and cannot name a type")
    return name


def check_matrix(mat: Any, n: int, what: str) -> np.ndarray:
    mat = np.asarray(mat, dtype=np.float32)
    if mat.ndim != 2 or mat.shape[0] != n or mat.shape[1] < 1:
        raise ValidationError(f"{what} must be a ({n}, d) matrix, got shape {mat.shape}")
    if not np.isfinite(mat).all():
        raise ValidationError(f"{what} contain NaN or infinite values")
    return mat


def check_model(model: ModelVersionIn | int | None) -> None:
    if isinstance(model, ModelVersionIn):
        if not isinstance(model.kind, str) or not model.kind:
            raise ValidationError("a model version needs a kind, e.g. 'discover' or 'retrain'")
        try:
            audit.canonical(dict(model.metrics))
        except (TypeError, ValueError) as exc:
            raise ValidationError(f"model metrics must be JSON-serialisable: {exc}") from None
    elif model is not None and not isinstance(model, (int, np.integer)):
        raise ValidationError(
            "model must be a ModelVersionIn, an existing model version id or None"
        )


def check_prototypes(prototypes: Sequence[PrototypeIn], dim: int | None) -> int | None:
    for p in prototypes:
        v = np.asarray(p.vector, dtype=np.float32)
        if v.ndim != 1 or (dim is not None and v.shape[0] != dim):
            raise ValidationError(
                f"prototype of type {p.type!r} has shape {v.shape}, "
                f"expected ({dim if dim is not None else 'd'},)"
            )
        if not np.isfinite(v).all():
            raise ValidationError(f"prototype of type {p.type!r} contains NaN or inf")
        if p.type is None or int(p.n_members) < 0:
            raise ValidationError("a prototype needs a type and n_members >= 0")
        dim = v.shape[0]
    return dim


def check_assignments(
    a: AssignmentsIn, n_regions: int | None, what: str
) -> tuple[np.ndarray, np.ndarray]:
    regions = np.asarray(a.regions, dtype=np.int64).reshape(-1)
    conf = np.asarray(a.confidence, dtype=np.float64).reshape(-1)
    if len(a.types) != len(regions) or len(conf) != len(regions):
        raise ValidationError(
            f"assignments: regions, types and confidence differ in length "
            f"({len(regions)}, {len(a.types)}, {len(conf)})"
        )
    if len(np.unique(regions)) != len(regions):
        raise ValidationError(f"assignments name a {what} twice")
    if n_regions is not None and len(regions) and (regions.min() < 0 or regions.max() >= n_regions):
        raise ValidationError(f"assignments refer to region index outside 0..{n_regions - 1}")
    if not np.isfinite(conf).all() or (conf < 0).any() or (conf > 1).any():
        raise ValidationError("assignment confidence must be finite and in [0, 1]")
    if a.is_normal is not None and np.shape(a.is_normal) != (len(regions),):
        raise ValidationError(
            f"assignments: is_normal has {np.size(a.is_normal)} entries for {len(regions)} regions"
        )
    return regions, conf


def check_new_types(new_types: Sequence[NewType], refs: Sequence[Any]) -> None:
    """Up-front checks (before any file is written) of new types and string references."""
    keys = [t.key for t in new_types]
    if len(set(keys)) != len(keys) or not all(isinstance(k, str) and k for k in keys):
        raise ValidationError("new type keys must be distinct non-empty strings")
    names = [check_type_name(t.name).lower() for t in new_types if t.name is not None]
    if len(set(names)) != len(names):
        raise ValidationError("two new types have the same name")
    unknown = {r for r in refs if isinstance(r, str)} - set(keys)
    if unknown:
        raise ValidationError(f"type key {sorted(unknown)[0]!r} is not one of the new types")
