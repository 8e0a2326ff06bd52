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
        self._root = str(self.root)
        self._dirs: set[str] = set()

    def path(self, ref: str) -> Path:
        sha, _ = parse_ref(ref)
        return self.root / sha[:2] / ref

    def put(
        self, data: bytes, ext: str, sha: str | None = None, *, trust_sha: bool = False
    ) -> tuple[str, bool]:
        """Store ``data``; returns (ref, whether a new file was written).

        ``sha`` is verified unless ``trust_sha`` (the caller has just hashed the bytes).
        Plain ``os`` calls and a cache of created sub-folders: 0.05 ms per small file
        instead of 0.25 ms with pathlib (measured on the development machine).
        """
        if sha is None or not trust_sha:
            actual = sha256_bytes(data)
            if sha is not None and sha.lower() != actual:
                raise ValidationError(f"sha256 given as {sha} but the bytes hash to {actual}")
            sha = actual
        ref = make_ref(sha, ext)
        sub = os.path.join(self._root, sha[:2])
        final = os.path.join(sub, ref)
        try:
            if os.stat(final).st_size == len(data):
                return ref, False
        except FileNotFoundError:
            pass
        if sub not in self._dirs:
            os.makedirs(sub, exist_ok=True)
            self._dirs.add(sub)
        tmp = f"{final}{TMP_MARK}{os.getpid()}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        except FileNotFoundError:  # the sub-folder was removed behind our back
            os.makedirs(sub, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
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
            if (
                name in referenced
                and path.parent.name == name[:2]
                and path.parent.parent == self.root
            ):
                continue
            out.append(path)
        return out
