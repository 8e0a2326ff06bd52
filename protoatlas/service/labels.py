"""Labels files: read an ``image,label`` CSV and pair its entries with a batch's image names
(relative paths, absolute paths and unambiguous tails all match)."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from pathlib import Path


def read_labels(path: str | os.PathLike) -> dict[str, str]:
    """Read a ``image,label`` CSV (other columns ignored); label ``good`` means normal."""
    return {row["image"]: row["label"] for row in _label_rows(path)}


def read_label_keys(path: str | os.PathLike) -> list[str]:
    """The ``image`` column of a labels CSV (the names only, not the labels)."""
    return [row["image"] for row in _label_rows(path)]


def _label_rows(path: str | os.PathLike) -> list[dict[str, str]]:
    path = Path(path)
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or not {"image", "label"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: expected a header with columns 'image' and 'label'")
        return list(reader)


def _normal_name(name: str) -> str:
    name = name.strip().replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    return name.lstrip("/")


def match_names(names: Iterable[str], keys: Iterable[str]) -> dict[str, str]:
    """Image name (relative to the batch root) -> the labels-file entry naming it.

    The file may name images relative to the batch root (``broken_large/000.png``), to a
    folder above it (``test/broken_large/000.png``), by absolute path, or by a shorter tail
    (``000.png``); separators ``\\`` and a leading ``./`` do not matter. A tail counts only
    when whole path components agree and the pairing is unambiguous both ways: an entry that
    fits several images, or an image that several entries fit, is left out.
    """
    exact: dict[str, str] = {}
    by_base: dict[str, list[tuple[str, str]]] = {}
    for key in keys:
        norm = _normal_name(key)
        exact.setdefault(norm, key)
        by_base.setdefault(norm.rsplit("/", 1)[-1], []).append((norm, key))
    out: dict[str, str] = {}
    tails: dict[str, str] = {}
    fits: dict[str, int] = {}  # entry -> how many images it fits by its tail
    for name in names:
        norm = _normal_name(name)
        cands = by_base.get(norm.rsplit("/", 1)[-1], [])
        # the entries whose path and the image's agree on their whole common tail; the
        # longest such tail wins
        depth = {
            key: min(kn.count("/"), norm.count("/"))
            for kn, key in cands
            if kn.endswith("/" + norm) or norm.endswith("/" + kn)
        }
        for key in depth:
            fits[key] = fits.get(key, 0) + 1
        if norm in exact:
            out[name] = exact[norm]
            continue
        best = [key for key, d in depth.items() if d == max(depth.values(), default=-1)]
        if len(best) == 1:
            tails[name] = best[0]
    taken = set(out.values())
    for name, key in tails.items():
        if fits[key] == 1 and key not in taken:
            out[name] = key
    return out
