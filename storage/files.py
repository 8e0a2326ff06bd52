"""Content-addressed file store: ``<root>/<sha[:2]>/<sha>.<ext>``.

Writes go to a temporary file in the same folder and are renamed into place with
``os.replace``, so a file under its final name is always complete, and writing the same
content twice is harmless (same name, same bytes). Rows reference files by
``<sha>.<ext>``; files no row references are orphans, removed by the writer at open.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

from storage.errors import ValidationError

TMP_MARK = ".tmp-"
_EXT = re.compile(r"^[a-z0-9]{1,10}$")
_REF = re.compile(r"^([0-9a-f]{64})\.([a-z0-9]{1,10})$")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def normalise_ext(ext: str) -> str:
    """Lower-case extension without the dot; refuses anything odd (it becomes a file name)."""
    ext = ext.lower().lstrip(".")
    if not _EXT.match(ext):
        raise ValidationError(f"file extension {ext!r} is not 1-10 letters/digits")
    return ext


def make_ref(sha: str, ext: str) -> str:
    return f"{sha}.{normalise_ext(ext)}"


def parse_ref(ref: str) -> tuple[str, str]:
    m = _REF.match(ref)
    if not m:
        raise ValidationError(f"not a content reference <sha256>.<ext>: {ref!r}")
    return m.group(1), m.group(2)


class ContentStore:
    """One content-addressed folder (``images/`` or ``blobs/``) of a workspace."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, ref: str) -> Path:
        sha, _ = parse_ref(ref)
        return self.root / sha[:2] / ref

    def put(self, data: bytes, ext: str, sha: str | None = None) -> tuple[str, bool]:
        """Store ``data``; returns (ref, whether a new file was written)."""
        actual = sha256_bytes(data)
        if sha is not None and sha.lower() != actual:
            raise ValidationError(f"sha256 given as {sha} but the bytes hash to {actual}")
        ref = make_ref(actual, ext)
        final = self.path(ref)
        if final.exists() and final.stat().st_size == len(data):
            return ref, False
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f"{ref}{TMP_MARK}{os.getpid()}")
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, final)
        return ref, True

    def iter_files(self) -> Iterator[Path]:
        """Every file under the store (final names and leftover temporaries)."""
        if not self.root.is_dir():
            return
        for sub in os.scandir(self.root):
            if sub.is_dir(follow_symlinks=False):
                for entry in os.scandir(sub.path):
                    if entry.is_file(follow_symlinks=False):
                        yield Path(entry.path)
            elif sub.is_file(follow_symlinks=False):
                yield Path(sub.path)

    def orphans(self, referenced: set[str]) -> list[Path]:
        """Files that are not a referenced ``<sha>.<ext>`` in its right sub-folder."""
        out = []
        for path in self.iter_files():
            name = path.name
            if name in referenced and path.parent.name == name[:2] \
                    and path.parent.parent == self.root:
                continue
            out.append(path)
        return out
