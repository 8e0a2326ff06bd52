"""Finding image files in folders and zip archives, and loading them without aborting.

* :func:`list_images` lists a directory tree or a ``.zip`` archive as :class:`ImageRef`
  handles (name + where the bytes are). Archives are checked for path traversal, symlinks and
  zip-bomb sizes before anything is listed, and are never extracted to disk.
* :func:`iter_images` / :func:`load_images` decode refs with :func:`engine.imageio.load_image`;
  a bad file is skipped with its reason, never fatal (unless nothing usable remains). A file
  or member over ``max_file_bytes`` is skipped unread, and a member is inflated no further
  than the size it declares (the size the archive checks saw).
* :func:`load_mvtec` reads the MVTec AD folder layout, :func:`read_masks` its masks.
"""

from __future__ import annotations

import dataclasses
import os
import re
import stat
import sys
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import overload

import numpy as np
from PIL import Image

from engine.config import DataConfig
from engine.imageio import (
    DEFAULT_MAX_PIXELS,
    SUPPORTED_EXTENSIONS,
    ImageLoadError,
    is_supported,
    load_image,
    read_mask,
)

DEFAULT_MAX_TOTAL_BYTES: int = 4 * 1024**3
DEFAULT_MAX_RATIO: float = 200.0
DEFAULT_MAX_MEMBERS: int = 100_000
#: Files and zip members above this many bytes are skipped unread:
#: :attr:`DataConfig.max_file_bytes`'s default.
DEFAULT_MAX_FILE_BYTES: int = DataConfig().max_file_bytes
#: Compression methods of the zip members that are read. :mod:`zipfile` inflates bzip2 and
#: LZMA data in unbounded steps (800 bytes of bzip2 expand to 1 GiB in one call), so members
#: compressed otherwise are skipped with a reason; cameras and desktop tools write these two.
ZIP_READ_METHODS: frozenset[int] = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED})
_ZIP_METHOD_NAMES = {zipfile.ZIP_BZIP2: "bzip2", zipfile.ZIP_LZMA: "LZMA"}
#: Members smaller than this (uncompressed) are not ratio-checked: a small flat-colour BMP or
#: TIFF legitimately compresses far more than 200:1 and cannot hurt anyone.
RATIO_CHECK_MIN_BYTES: int = 1024**2
#: How many skipped files :meth:`LoadReport.summary` lists before "... and N more".
SUMMARY_MAX_ITEMS: int = 20

_DRIVE_LETTER = re.compile(r"^[A-Za-z]:")
_IGNORED_DIRS = frozenset({"__MACOSX"})


# --------------------------------------------------------------------------------------------
# References to image bytes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageRef:
    """A listed image: its display ``name`` and where its bytes live.

    ``name`` is the POSIX-style path relative to the listed root, or the zip member name.
    Exactly one source is set: ``path`` (a file on disk) or ``zip_path`` + ``member``.
    """

    name: str
    path: Path | None = None
    zip_path: Path | None = None
    member: str | None = None

    def __post_init__(self) -> None:
        on_disk = self.path is not None
        in_zip = self.zip_path is not None and self.member is not None
        if on_disk == in_zip:
            raise ValueError(
                f"ImageRef {self.name!r}: set either path, or zip_path and member (not both)"
            )

    def read_bytes(self, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> bytes:
        """Return the file's bytes (a zip member is read in memory, never extracted).

        Raises:
            ImageLoadError: the file (a member: uncompressed) is over ``max_bytes``, or a
                member's compression method is not one of :data:`ZIP_READ_METHODS`.
        """
        if self.path is not None:
            return _read_file(self.path, self.name, max_bytes)
        assert self.zip_path is not None and self.member is not None
        with zipfile.ZipFile(self.zip_path) as archive:
            return _read_member(archive, self.member, self.name, max_bytes)


def _over_limit(name: str, size: int, max_bytes: int, what: str) -> ImageLoadError:
    return ImageLoadError(name, f"{what} is {size} bytes, over the limit of {max_bytes}")


def _read_file(path: Path, name: str, max_bytes: int) -> bytes:
    """The bytes of a file on disk, refused unread when it is over ``max_bytes``."""
    size = path.stat().st_size
    if size > max_bytes:
        raise _over_limit(name, size, max_bytes, "file")
    return path.read_bytes()


def _read_member(archive: zipfile.ZipFile, member: str, name: str, max_bytes: int) -> bytes:
    """The uncompressed bytes of ``member``, never more than it declares.

    ``ZipFile.read`` inflates in one call of up to 2 GiB whatever the member declares (a
    1 MiB member declaring 100 bytes inflates to 1 GiB before it is cut); reading exactly the
    declared size bounds inflation by it, so the archive checks on declared sizes hold.
    """
    info = archive.getinfo(member)
    if info.compress_type not in ZIP_READ_METHODS:
        method = _ZIP_METHOD_NAMES.get(info.compress_type, "an unsupported method")
        raise ImageLoadError(
            name,
            f"zip member compressed with {method} (method {info.compress_type}); only stored "
            "and deflated members are read",
        )
    if info.file_size > max_bytes:
        raise _over_limit(name, info.file_size, max_bytes, "zip member (uncompressed)")
    with archive.open(info) as stream:
        return stream.read(info.file_size)


class _ByteReader:
    """Reads many refs, keeping each zip archive open once instead of once per member."""

    def __init__(self) -> None:
        self._archives: dict[Path, zipfile.ZipFile] = {}

    def read(self, ref: ImageRef, max_bytes: int) -> bytes:
        """Bytes of ``ref``, reusing an already open archive when there is one."""
        if ref.zip_path is None or ref.member is None:
            return ref.read_bytes(max_bytes)
        archive = self._archives.get(ref.zip_path)
        if archive is None:
            archive = self._archives[ref.zip_path] = zipfile.ZipFile(ref.zip_path)
        return _read_member(archive, ref.member, ref.name, max_bytes)

    def close(self) -> None:
        """Close every archive opened so far."""
        for archive in self._archives.values():
            archive.close()
        self._archives.clear()


# --------------------------------------------------------------------------------------------
# Listing
# --------------------------------------------------------------------------------------------


class ArchiveError(ValueError):
    """A zip archive is invalid or unsafe; the message names the archive and the member."""


def _is_hidden(part: str) -> bool:
    """True for path components that are skipped: dot-files/dirs and ``__MACOSX``."""
    return part.startswith(".") or part in _IGNORED_DIRS


def _inside(path: Path, root: Path) -> bool:
    """True when the fully resolved ``path`` lies inside the resolved ``root``."""
    try:
        path.resolve(strict=True).relative_to(root)
    except (OSError, ValueError, RuntimeError):  # broken link, outside, or a link loop
        return False
    return True


class ImageListing(list):
    """The :class:`ImageRef` list of a folder or zip, plus what was passed over and why
    (:attr:`skipped`: other file types, hidden files, broken or outside-pointing links), so
    that "no images found" can say what the folder held instead."""

    def __init__(
        self, refs: Iterable[ImageRef] = (), skipped: Iterable["SkippedFile"] = (), source: str = ""
    ) -> None:
        super().__init__(refs)
        self.skipped: list[SkippedFile] = list(skipped)
        self.source = source

    def nothing_found(self) -> str:
        """The message for a listing without images: where, and what was there instead."""
        head = f"no images found in {self.source}" if self.source else "no images found"
        head += " (supported extensions: " + ", ".join(SUPPORTED_EXTENSIONS) + ")"
        if not self.skipped:
            return head + "; the folder holds no files"
        return f"{head}; skipped {len(self.skipped)}: " + _skipped_summary(self.skipped)


def _walk_directory(root: Path) -> ImageListing:
    """Recursive listing of ``root``. Symbolic links to files are followed wherever they
    point (data-versioning tools keep the bytes elsewhere); links to folders only within
    ``root`` (and each folder once, so link loops end)."""
    real_root = root.resolve()
    refs: list[ImageRef] = []
    skipped: list[SkippedFile] = []
    seen_dirs: set[Path] = set()
    pending: list[Path] = [root]
    while pending:
        directory = pending.pop()
        real_dir = directory.resolve()
        if real_dir in seen_dirs:  # a symlinked directory seen already: avoid loops
            continue
        seen_dirs.add(real_dir)
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            skipped.append(
                SkippedFile(
                    directory.relative_to(root).as_posix() or ".",
                    f"folder not readable ({exc.strerror or exc})",
                )
            )
            continue
        for entry in entries:
            path = Path(entry.path)
            name = path.relative_to(root).as_posix()
            if _is_hidden(entry.name):
                if not entry.is_dir():
                    skipped.append(SkippedFile(name, "hidden file"))
                continue
            link = entry.is_symlink()
            if link and not path.exists():
                skipped.append(SkippedFile(name, "broken symbolic link"))
                continue
            if entry.is_dir():
                if link and not _inside(path, real_root):
                    skipped.append(
                        SkippedFile(
                            name, f"symbolic link to a folder outside {root} (not followed)"
                        )
                    )
                    continue
                pending.append(path)
            elif entry.is_file():
                if is_supported(entry.name):
                    refs.append(ImageRef(name=name, path=path))
                else:
                    skipped.append(SkippedFile(name, "not an image file extension"))
            else:
                skipped.append(SkippedFile(name, "not a regular file"))
    return ImageListing(
        sorted(refs, key=lambda r: r.name), sorted(skipped, key=lambda s: s.name), str(root)
    )


def _member_problem(info: zipfile.ZipInfo, max_ratio: float) -> str | None:
    """Why a single zip member makes the archive unsafe, or None when it is fine."""
    name = info.filename
    parts = re.split(r"[\\/]", name)
    if not name:
        return "has an empty name"
    if name.startswith(("/", "\\")):
        return "has an absolute path"
    if _DRIVE_LETTER.match(name):
        return "has a drive letter"
    if ".." in parts:
        return "has a '..' path component"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "is a symbolic link"
    if info.file_size >= RATIO_CHECK_MIN_BYTES:
        ratio = info.file_size / info.compress_size if info.compress_size else float("inf")
        if ratio > max_ratio:
            return f"has a compression ratio of {ratio:.0f}:1, over the limit of {max_ratio:g}:1"
    return None


def _check_archive(
    zip_path: Path,
    infos: list[zipfile.ZipInfo],
    max_total_bytes: int,
    max_ratio: float,
    max_members: int,
) -> None:
    """Raise :class:`ArchiveError` when the archive as a whole, or any member, is unsafe."""
    if len(infos) > max_members:
        raise ArchiveError(
            f"{zip_path}: archive has {len(infos)} members, over the limit of {max_members}"
        )
    seen: set[str] = set()
    for info in infos:
        problem = _member_problem(info, max_ratio)
        if problem is not None:
            raise ArchiveError(f"{zip_path}: member {info.filename!r} {problem}; archive refused")
        listed_as = _display_name(info)
        if listed_as in seen and not info.is_dir():
            raise ArchiveError(
                f"{zip_path}: member {info.filename!r} repeats the name {listed_as!r} of an "
                "earlier member; archive refused"
            )
        seen.add(listed_as)
    total = sum(info.file_size for info in infos)
    if total > max_total_bytes:
        raise ArchiveError(
            f"{zip_path}: archive would uncompress to {total} bytes, "
            f"over the limit of {max_total_bytes}"
        )


def _display_name(info: zipfile.ZipInfo) -> str:
    """The name a member is listed under (POSIX separators)."""
    return info.filename.replace("\\", "/")


def _is_listed_member(info: zipfile.ZipInfo) -> bool:
    """True for regular, visible members with a supported image extension."""
    if info.is_dir():
        return False
    parts = re.split(r"[\\/]", info.filename)
    return not any(_is_hidden(p) for p in parts if p) and is_supported(info.filename)


def _list_zip(
    zip_path: Path, max_total_bytes: int, max_ratio: float, max_members: int
) -> ImageListing:
    """Safety-check and list a zip archive (nothing is extracted)."""
    try:
        with zipfile.ZipFile(zip_path) as archive:
            infos = archive.infolist()
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        NotImplementedError,  # a version-needed-to-extract above what zipfile reads
        OSError,
        EOFError,
        ValueError,  # UnicodeDecodeError: a member name flagged UTF-8 that is not
    ) as exc:
        raise ArchiveError(f"{zip_path} is not a valid zip archive ({exc})") from exc
    _check_archive(zip_path, infos, max_total_bytes, max_ratio, max_members)
    absolute = zip_path.resolve()
    refs = [
        ImageRef(name=_display_name(info), zip_path=absolute, member=info.filename)
        for info in infos
        if _is_listed_member(info)
    ]
    skipped = [
        SkippedFile(info.filename, "not an image file extension")
        for info in infos
        if not info.is_dir() and not _is_listed_member(info)
    ]
    return ImageListing(sorted(refs, key=lambda r: r.name), skipped, str(zip_path))


def list_images(
    source: str | os.PathLike,
    *,
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
    max_ratio: float = DEFAULT_MAX_RATIO,
    max_members: int = DEFAULT_MAX_MEMBERS,
) -> ImageListing:
    """List the images in a directory tree or a ``.zip`` archive, sorted by name.

    Only :data:`SUPPORTED_EXTENSIONS` (any case) are listed; hidden files/folders (``.``)
    and ``__MACOSX`` are skipped. In a folder, symbolic links to files are followed
    wherever they lead, links to folders only inside it; a zip's symbolic links refuse it.
    What was passed over is in the returned listing's ``skipped``.
    A zip archive is refused as a whole (:class:`ArchiveError`) when any member is absolute,
    has a drive letter or ``..``, is a symlink, has an empty name or the name of an earlier
    member (``\\`` read as ``/``), or (when >= 1 MiB) expands more than ``max_ratio`` times;
    or when it holds more than ``max_members`` members or more than ``max_total_bytes``
    uncompressed, or cannot be read at all. Members compressed otherwise than stored or
    deflated are listed and skipped when read (:data:`ZIP_READ_METHODS`).

    Raises:
        FileNotFoundError: ``source`` does not exist.
        ArchiveError: the zip archive is invalid or unsafe.
        ValueError: ``source`` is a file that is not a ``.zip`` archive.
    """
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if path.is_dir():
        return _walk_directory(path)
    if path.suffix.lower() == ".zip":
        return _list_zip(path, max_total_bytes, max_ratio, max_members)
    raise ValueError(f"{path}: expected a directory or a .zip archive, got another kind of file")


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


@dataclass
class SkippedFile:
    """A file that was not loaded, and why."""

    name: str
    reason: str


@dataclass
class LoadReport:
    """Which files were loaded and which were skipped (with reasons)."""

    loaded: list[str] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)

    def summary(self) -> str:
        """One line, e.g. ``"loaded 80, skipped 2: a.png (empty file); b.png (...)"``."""
        head = f"loaded {len(self.loaded)}, skipped {len(self.skipped)}"
        if not self.skipped:
            return head
        return f"{head}: " + _skipped_summary(self.skipped)


def _skipped_summary(skipped: Sequence[SkippedFile]) -> str:
    """``"a.png (empty file); b.png (...); ... and 3 more"``: the first
    :data:`SUMMARY_MAX_ITEMS` files named with their reasons."""
    items = [f"{s.name} ({s.reason})" for s in skipped[:SUMMARY_MAX_ITEMS]]
    more = len(skipped) - SUMMARY_MAX_ITEMS
    if more > 0:
        items.append(f"... and {more} more")
    return "; ".join(items)


def _nothing_found(listing: "ImageListing | None") -> str:
    if listing is not None:
        return listing.nothing_found()
    return (
        "no images found: nothing to load (supported extensions: "
        + ", ".join(SUPPORTED_EXTENSIONS)
        + ")"
    )


class NoUsableImagesError(ValueError):
    """No image could be loaded; ``report`` holds the reasons (None when the input was empty)."""

    def __init__(self, message: str, report: LoadReport | None = None) -> None:
        super().__init__(message)
        self.report = report


def _load_one(
    reader: _ByteReader, ref: ImageRef, max_pixels: int, max_file_bytes: int
) -> np.ndarray | SkippedFile:
    """Load one ref, turning any failure into a :class:`SkippedFile`."""
    try:
        raw = reader.read(ref, max_file_bytes)
    except ImageLoadError as exc:
        return SkippedFile(ref.name, exc.reason)
    except Exception as exc:  # noqa: BLE001 - a bad file must never abort a batch
        return SkippedFile(ref.name, f"cannot read file ({type(exc).__name__}: {exc})")
    try:
        return load_image(raw, ref.name, max_pixels=max_pixels)
    except ImageLoadError as exc:
        return SkippedFile(ref.name, exc.reason)
    except Exception as exc:  # noqa: BLE001 - decoder bugs on hostile input: skip, don't abort
        return SkippedFile(ref.name, f"unexpected decoding error ({type(exc).__name__}: {exc})")


def _progress(refs: Iterable[ImageRef], enabled: bool, desc: str) -> Iterable[ImageRef]:
    """Wrap ``refs`` in a tqdm bar on stderr when ``enabled``."""
    if not enabled:
        return refs
    from tqdm import tqdm

    total = len(refs) if isinstance(refs, Sequence) else None
    return tqdm(refs, total=total, desc=desc, file=sys.stderr, unit="img")


def iter_images(
    refs: Iterable[ImageRef],
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    progress: bool = False,
    desc: str = "loading",
) -> Iterator[tuple[str, np.ndarray] | SkippedFile]:
    """Decode refs one at a time, yielding ``(name, rgb_array)`` or a :class:`SkippedFile`.

    Nothing is kept in memory beyond the current image, so large batches can be streamed.
    A file (a zip member: uncompressed) over ``max_file_bytes`` is skipped unread.
    """
    reader = _ByteReader()
    try:
        for ref in _progress(refs, progress, desc):
            result = _load_one(reader, ref, max_pixels, max_file_bytes)
            yield result if isinstance(result, SkippedFile) else (ref.name, result)
    finally:
        reader.close()


def load_images(
    refs: Iterable[ImageRef],
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    progress: bool = False,
    desc: str = "loading",
) -> tuple[list[tuple[str, np.ndarray]], LoadReport]:
    """Load every ref, skipping bad files with their reason.

    Raises:
        NoUsableImagesError: ``refs`` is empty, or every file was skipped (the message
            contains :meth:`LoadReport.summary`).
    """
    listing = refs if isinstance(refs, ImageListing) else None
    refs = list(refs)
    if not refs:
        raise NoUsableImagesError(_nothing_found(listing))
    images: list[tuple[str, np.ndarray]] = []
    report = LoadReport()
    for item in iter_images(
        refs, max_pixels=max_pixels, max_file_bytes=max_file_bytes, progress=progress, desc=desc
    ):
        if isinstance(item, SkippedFile):
            report.skipped.append(item)
        else:
            images.append(item)
            report.loaded.append(item[0])
    if not images:
        raise NoUsableImagesError(f"no usable images: {report.summary()}", report)
    return images, report


class LazyImages(Sequence[np.ndarray]):
    """The loadable images of a list of refs, decoded on access and never all kept.

    :meth:`validate` decodes every ref once, keeps those that load and reports the others;
    after it, ``images[i]`` decodes the i-th good ref again. A batch of thousands of large
    images is thus processed in constant memory at the price of decoding some images twice.
    """

    def __init__(
        self,
        refs: Sequence[ImageRef],
        *,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    ) -> None:
        self.max_pixels = max_pixels
        self.max_file_bytes = max_file_bytes
        self._listing = refs if isinstance(refs, ImageListing) else None
        self._refs = list(refs)
        self.shapes: list[tuple[int, int]] = []
        self.report: LoadReport | None = None

    def validate(self, *, progress: bool = False, desc: str = "checking") -> LoadReport:
        """Keep the refs that decode; raise :class:`NoUsableImagesError` if none does."""
        if not self._refs:
            raise NoUsableImagesError(_nothing_found(self._listing))
        report = LoadReport()
        good = []
        shapes = []
        by_name = {ref.name: ref for ref in self._refs}
        for item in iter_images(
            self._refs,
            max_pixels=self.max_pixels,
            max_file_bytes=self.max_file_bytes,
            progress=progress,
            desc=desc,
        ):
            if isinstance(item, SkippedFile):
                report.skipped.append(item)
            else:
                report.loaded.append(item[0])
                good.append(by_name[item[0]])
                shapes.append(item[1].shape[:2])
        if not good:
            raise NoUsableImagesError(f"no usable images: {report.summary()}", report)
        self._refs = good
        self.shapes = shapes
        self.report = report
        return report

    def drop(self, names: set[str]) -> None:
        """Forget the refs named in ``names`` (e.g. images whose anomaly map is missing)."""
        keep = [i for i, ref in enumerate(self._refs) if ref.name not in names]
        self._refs = [self._refs[i] for i in keep]
        self.shapes = [self.shapes[i] for i in keep]

    @property
    def names(self) -> list[str]:
        return [ref.name for ref in self._refs]

    @property
    def refs(self) -> list[ImageRef]:
        return list(self._refs)

    def __len__(self) -> int:
        return len(self._refs)

    @overload
    def __getitem__(self, index: int) -> np.ndarray: ...

    @overload
    def __getitem__(self, index: slice) -> list[np.ndarray]: ...

    def __getitem__(self, index: int | slice) -> np.ndarray | list[np.ndarray]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        ref = self._refs[index]
        return load_image(ref.read_bytes(self.max_file_bytes), ref.name, max_pixels=self.max_pixels)


#: Extensions searched for an anomaly map, in order (``--maps``).
MAP_EXTENSIONS: tuple[str, ...] = (".npy", ".png", ".tif", ".tiff")
#: Relative aspect-ratio difference above which a map does not belong to its image.
MAP_ASPECT_TOLERANCE: float = 0.02


def read_anomaly_map(path: Path) -> np.ndarray:
    """A float32 2-D anomaly map from ``.npy`` (any real dtype) or an 8/16-bit image
    (scaled to 0..1 by its type's range). Raises ValueError naming the file."""
    try:
        if path.suffix.lower() == ".npy":
            arr = np.load(path, allow_pickle=False)
        else:
            with Image.open(path) as im:
                arr = np.asarray(im)
            if arr.dtype == np.uint8:
                arr = arr.astype(np.float32) / 255.0
            elif arr.dtype in (np.uint16, np.int32) or arr.dtype.kind in "iu":
                arr = arr.astype(np.float32) / 65535.0
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one clear error
        raise ValueError(f"{path}: cannot read anomaly map ({type(exc).__name__}: {exc})") from exc
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[2] in (1, 3, 4):
        arr = arr[..., 0]
    if arr.ndim != 2 or arr.size == 0 or arr.dtype.kind not in "fiub":
        raise ValueError(
            f"{path}: an anomaly map must be one 2-D array of numbers, "
            f"got shape {arr.shape} dtype {arr.dtype}"
        )
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise ValueError(f"{path}: anomaly map contains NaN or inf")
    return arr


def find_map(maps_root: Path, name: str) -> Path | None:
    """The map file of image ``name`` (same relative path, map extension, or same name)."""
    stem = Path(name).with_suffix("")
    for ext in MAP_EXTENSIONS:
        candidate = maps_root / stem.with_suffix(ext)
        if candidate.is_file():
            return candidate
    same = maps_root / name
    return same if same.is_file() else None


def check_map_shape(amap: np.ndarray, image_shape: tuple[int, ...], where: str) -> None:
    """A map may have any resolution but must share its image's aspect ratio."""
    h, w = image_shape[:2]
    mh, mw = amap.shape
    if abs((mw / mh) / (w / h) - 1.0) > MAP_ASPECT_TOLERANCE:
        raise ValueError(
            f"{where}: anomaly map is {mw}x{mh} but its image is {w}x{h} "
            "(another aspect ratio: not this image's map)"
        )


# --------------------------------------------------------------------------------------------
# MVTec AD layout
# --------------------------------------------------------------------------------------------

GOOD = "good"


@dataclass
class MVTecSample:
    """A test image with its defect type (``"good"`` for normal) and its mask, if any."""

    ref: ImageRef
    defect_type: str
    mask_ref: ImageRef | None


@dataclass
class MVTecDataset:
    """An MVTec-style dataset: normal training images and labelled test images."""

    root: Path
    train: list[ImageRef]
    test: list[MVTecSample]
    #: Whether the set has pixel masks (a ``ground_truth/`` folder); without them only
    #: image-level metrics can be computed.
    has_masks: bool = True

    @property
    def defect_types(self) -> list[str]:
        """Sorted defect types present in ``test``, excluding ``"good"``."""
        return sorted({s.defect_type for s in self.test if s.defect_type != GOOD})


def _list_under(root: Path, sub: Path) -> list[ImageRef]:
    """List ``root/sub`` with names relative to ``root`` (e.g. ``train/good/000.png``)."""
    prefix = sub.as_posix()
    return [
        dataclasses.replace(ref, name=f"{prefix}/{ref.name}") for ref in list_images(root / sub)
    ]


def _mask_ref(root: Path, defect_type: str, ref: ImageRef) -> ImageRef:
    """The mask of a defect image: ``ground_truth/<type>/<stem>_mask.png`` (must exist)."""
    relative = Path(ref.name).relative_to(Path("test") / defect_type)
    mask_rel = Path("ground_truth") / defect_type / relative.parent / f"{relative.stem}_mask.png"
    mask_path = root / mask_rel
    if not mask_path.is_file():
        raise ValueError(f"{ref.name}: missing ground-truth mask, expected {mask_path}")
    return ImageRef(name=mask_rel.as_posix(), path=mask_path)


def _test_samples(root: Path, with_masks: bool) -> list[MVTecSample]:
    """All ``test/<type>/*`` images with their masks (empty when ``test/`` is absent)."""
    test_dir = root / "test"
    if not test_dir.is_dir():
        return []
    samples: list[MVTecSample] = []
    for type_dir in sorted(p for p in test_dir.iterdir() if p.is_dir() and not _is_hidden(p.name)):
        defect_type = type_dir.name
        for ref in _list_under(root, Path("test") / defect_type):
            mask = (
                None if defect_type == GOOD or not with_masks else _mask_ref(root, defect_type, ref)
            )
            samples.append(MVTecSample(ref=ref, defect_type=defect_type, mask_ref=mask))
    return samples


def load_mvtec(root: str | os.PathLike) -> MVTecDataset:
    """Read an MVTec AD category folder: ``train/good/``, ``test/<type>/``, ``ground_truth/``.

    When the folder has a ``ground_truth/`` folder, every defect image
    ``test/<type>/<stem>.<ext>`` needs ``ground_truth/<type>/<stem>_mask.png``; without one
    the set has no masks (``has_masks`` False: image-level labels only, as in AITEX).
    ``good`` test images have no mask. A missing ``test/`` folder gives an empty ``test`` list.

    Raises:
        FileNotFoundError: ``root`` or ``root/train/good`` does not exist.
        ValueError: a defect image has no mask.
    """
    root_path = Path(root)
    if not root_path.is_dir():
        raise FileNotFoundError(f"{root_path}: MVTec dataset folder not found")
    train_dir = root_path / "train" / GOOD
    if not train_dir.is_dir():
        raise FileNotFoundError(
            f"{root_path}: not an MVTec-style folder, expected normal training images in "
            f"{train_dir}"
        )
    with_masks = (root_path / "ground_truth").is_dir()
    return MVTecDataset(
        root=root_path,
        train=_list_under(root_path, Path("train") / GOOD),
        test=_test_samples(root_path, with_masks),
        has_masks=with_masks,
    )


def _fit_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize a bool mask to (height, width) with nearest-neighbour sampling if needed."""
    if mask.shape == (height, width):
        return mask
    resized = Image.fromarray(mask.astype(np.uint8) * 255).resize(
        (width, height), Image.Resampling.NEAREST
    )
    return np.asarray(resized) > 127


def read_masks(samples: Sequence[MVTecSample], shape: Sequence[int]) -> np.ndarray:
    """Bool (N, H, W) masks for ``samples`` at ``shape`` = (H, W[, C]); zeros where no mask.

    Masks of another size are resized with nearest-neighbour sampling.
    """
    if len(shape) < 2 or shape[0] <= 0 or shape[1] <= 0:
        raise ValueError(f"read_masks: shape must start with a positive (H, W), got {tuple(shape)}")
    height, width = int(shape[0]), int(shape[1])
    out = np.zeros((len(samples), height, width), dtype=bool)
    for i, sample in enumerate(samples):
        if sample.mask_ref is not None:
            mask = read_mask(sample.mask_ref.read_bytes(), sample.mask_ref.name)
            out[i] = _fit_mask(mask, height, width)
    return out
