"""Fuzzing the image and zip loaders with bad input (issue 18): ``engine.imageio.load_image``
and ``read_mask``, ``engine.data.list_images`` and ``iter_images`` over folders and zips, and
the web upload staging ``webapp.security.stage_upload``.

The contract every case is held to: the call ends in a clear error of a type the project
uses (:class:`ImageLoadError`, :class:`ArchiveError`, :class:`UploadError`), whose message
names the file or the member, or in a clean skip (a :class:`SkippedFile` with the name and a
reason); never another exception, never a file written outside the target folder (the whole
tree of each example's folder, the temporary folder included, is compared before and after),
and a bounded memory (peak RSS of the worst cases measured in a subprocess).

The properties run a fixed, derandomised number of examples (``EXAMPLES``);
``PROTOATLAS_FUZZ_EXAMPLES=N`` runs every property with ``N`` examples instead (the long
mode, e.g. ``PROTOATLAS_FUZZ_EXAMPLES=5000``). ``--hypothesis-show-statistics`` prints how
the examples ended (the ``outcome:`` events). The figures are in RELIABILITY.md.
"""

from __future__ import annotations

import bz2
import contextlib
import io
import json
import os
import random
import re
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from engine.config import DataConfig
from engine.data import (
    DEFAULT_MAX_MEMBERS,
    DEFAULT_MAX_RATIO,
    ArchiveError,
    SkippedFile,
    iter_images,
    list_images,
)
from engine.imageio import ImageLoadError, load_image, read_mask
from webapp.security import Limits, StagedUpload, UploadError, stage_upload

ROOT = Path(__file__).resolve().parents[1]
MiB = 1024**2
#: Examples per property in the default suite; ``PROTOATLAS_FUZZ_EXAMPLES`` overrides all.
EXAMPLES = {
    "random_bytes": 400,
    "mutated_image": 400,
    "declared_size": 300,
    "zip_members": 250,
    "mutated_zip": 300,
    "upload": 120,
}
LONG_EXAMPLES = int(os.environ.get("PROTOATLAS_FUZZ_EXAMPLES", "0"))
#: The peak RSS the worst cases must stay under (they measure 30 to 620 MiB).
RSS_BOUND_MIB = 1024
#: Pixel limit of the declared-size property: sizes under it decode (so it is kept small).
SMALL_MAX_PIXELS = 250_000


def fuzz(prop: str) -> settings:
    """The derandomised settings of one property (its default or the long mode's count)."""
    return settings(
        derandomize=True,
        database=None,
        deadline=None,
        max_examples=LONG_EXAMPLES or EXAMPLES[prop],
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# ------------------------------------------------------------------------------ the sandbox
def tree(root: Path) -> set[str]:
    """Every path under ``root`` (files, folders, links), relative."""
    found = set()
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            found.add(os.path.relpath(os.path.join(folder, name), root))
    return found


@contextlib.contextmanager
def sandbox() -> Iterator[Path]:
    """A fresh folder whose ``tmp/`` is the process's temporary folder while it is open:
    inputs go under ``in/``, uploads are staged under ``stage/``, and :func:`watched` checks
    that nothing is written anywhere else in it."""
    with tempfile.TemporaryDirectory(prefix="fuzz-") as name:
        root = Path(name)
        (root / "in").mkdir()
        (root / "tmp").mkdir()
        saved = tempfile.tempdir
        tempfile.tempdir = str(root / "tmp")
        try:
            yield root
        finally:
            tempfile.tempdir = saved


@contextlib.contextmanager
def watched(root: Path) -> Iterator[None]:
    """Fail when the block leaves a new path under ``root`` outside ``root/stage``."""
    before = tree(root)
    yield
    written = {p for p in tree(root) - before if p != "stage" and not p.startswith("stage/")}
    assert not written, f"files written outside the target folder: {sorted(written)}"


# ------------------------------------------------------------------------------ oracles
def check_image(result: object) -> None:
    assert isinstance(result, np.ndarray) and result.dtype == np.uint8
    assert result.ndim == 3 and result.shape[2] == 3 and min(result.shape[:2]) > 0
    assert result.flags.c_contiguous


def decode_outcome(raw: bytes, name: str, max_pixels: int = DataConfig().max_pixels) -> str:
    """load_image and read_mask on ``raw``: an RGB array, or ImageLoadError naming ``name``."""
    outcome = ""
    for reader in (load_image, read_mask):
        try:
            result = reader(raw, name, max_pixels=max_pixels)
        except ImageLoadError as exc:
            assert exc.name == name and str(exc).startswith(f"{name}: ") and exc.reason
            outcome = f"ImageLoadError: {exc.reason.split(' (')[0]}"
            event(f"outcome: ImageLoadError: {_kind_of(exc.reason)}")
        else:
            if reader is load_image:
                check_image(result)
                outcome = "decoded"
            else:
                assert result.dtype == bool and result.ndim == 2
    if outcome == "decoded":
        event("outcome: decoded")
    return outcome


def _kind_of(message: str) -> str:
    """``message`` with its names and numbers blanked, so that the events group alike."""
    message = re.sub(r"'[^']*'", "<name>", message.split(" (")[0])
    return re.sub(r"\b\d+\b", "N", message)


def listing_outcome(source: Path) -> str:
    """list_images + iter_images on ``source``: ArchiveError naming it, or a listing whose
    every ref decodes or is skipped with its name and a reason."""
    try:
        listing = list_images(source)
    except ArchiveError as exc:
        assert source.name in str(exc)
        detail = str(exc).split(source.name, 1)[1].lstrip(": ")
        event(f"outcome: ArchiveError: {_kind_of(detail)}")
        return "refused"
    names = {ref.name for ref in listing}
    assert len(names) == len(listing), "two refs share a name"
    for skipped in listing.skipped:
        assert skipped.name and skipped.reason
    loaded = 0
    for item in iter_images(listing):
        if isinstance(item, SkippedFile):
            assert item.name in names and item.reason
            event(f"outcome: skipped: {_kind_of(item.reason)}")
        else:
            check_image(item[1])
            loaded += 1
    event(f"outcome: {loaded} decoded" if loaded < 3 else "outcome: 3+ decoded")
    return "listed"


# ------------------------------------------------------------------------------ seed files
def encoded(fmt: str, mode: str = "RGB", size: tuple[int, int] = (19, 13), **params) -> bytes:
    """A small noisy image of ``mode`` encoded as ``fmt`` (every decoder path is reached)."""
    rng = np.random.default_rng(3)
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    buffer = io.BytesIO()
    image.convert(mode).save(buffer, fmt, **params)
    return buffer.getvalue()


SEEDS = {
    "png": encoded("PNG"),
    "png-palette": encoded("PNG", "P"),
    "png-16bit": encoded("PNG", "I;16"),
    "png-gray-alpha": encoded("PNG", "LA"),
    "jpeg": encoded("JPEG"),
    "jpeg-progressive": encoded("JPEG", progressive=True),
    "jpeg-gray": encoded("JPEG", "L"),
    "tiff": encoded("TIFF"),
    "tiff-lzw": encoded("TIFF", compression="tiff_lzw"),
    "tiff-deflate": encoded("TIFF", compression="tiff_adobe_deflate"),
    "tiff-packbits": encoded("TIFF", compression="packbits"),
    "tiff-jpeg": encoded("TIFF", compression="jpeg"),
    "tiff-float": encoded("TIFF", "F"),
    "tiff-int32": encoded("TIFF", "I"),
    "bmp": encoded("BMP"),
    "bmp-palette": encoded("BMP", "P"),
}
PNG = SEEDS["png"]
EXTENSIONS = [".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".PNG"]


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(width: int, height: int, color_type: int = 2, pixels: bytes = b"") -> bytes:
    """A PNG whose header declares ``width`` x ``height`` with only ``pixels`` of data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(pixels))
        + png_chunk(b"IEND", b"")
    )


def bmp_declaring(width: int, height: int, bpp: int, compression: int) -> bytes:
    """A BMP (BITMAPINFOHEADER) declaring any size, depth and compression, with 64 bytes."""
    pixels = bytes(range(64))
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, bpp, compression, 0, 0, 0, 0, 0)
    palette = bytes(4 * 2 ** min(bpp, 8)) if bpp <= 8 else b""
    offset = 14 + len(info) + len(palette)
    head = struct.pack("<2sIHHI", b"BM", offset + len(pixels), 0, 0, offset)
    return head + info + palette + pixels


def tiff_declaring(width: int, height: int, bits: int, samples: int, compression: int) -> bytes:
    """A baseline little-endian TIFF declaring any size with 64 bytes of strip data."""
    entries = [
        (256, 4, 1, width),  # ImageWidth, LONG
        (257, 4, 1, height),  # ImageLength
        (258, 3, 1, bits),  # BitsPerSample, SHORT
        (259, 3, 1, compression),
        (262, 3, 1, 1 if samples == 1 else 2),  # Photometric: black-is-zero or RGB
        (273, 4, 1, 0),  # StripOffsets, patched below
        (277, 3, 1, samples),
        (278, 4, 1, height),  # RowsPerStrip
        (279, 4, 1, 64),  # StripByteCounts
    ]
    ifd_size = 2 + 12 * len(entries) + 4
    data_offset = 8 + ifd_size
    out = bytearray(b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(entries)))
    for tag, kind, count, value in entries:
        value = data_offset if tag == 273 else value
        packed = struct.pack("<HI", value & 0xFFFF, 0) if kind == 3 else struct.pack("<I", value)
        out += struct.pack("<HHI", tag, kind, count) + packed[:4]
    out += struct.pack("<I", 0) + bytes(range(64))
    return bytes(out)


def jpeg_declaring(width: int, height: int) -> bytes:
    """The seed JPEG with its SOF header patched to declare ``width`` x ``height``."""
    raw = bytearray(SEEDS["jpeg"])
    sof = raw.index(b"\xff\xc0")
    raw[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(raw)


# ------------------------------------------------------------------------------ raw zips
@dataclass
class Member:
    """One zip member as written by :func:`raw_zip`: every header field is chosen."""

    name: bytes
    payload: bytes  # the compressed bytes
    method: int = zipfile.ZIP_STORED
    file_size: int = 0  # declared uncompressed size
    crc: int = 0
    flags: int = 0  # 0x800: the name is UTF-8
    external_attr: int = 0
    extract_version: int = 20


def member(
    name: str | bytes, data: bytes, method: int = zipfile.ZIP_DEFLATED, **fields: int
) -> Member:
    """An honest member (sizes and CRC of ``data``) unless ``fields`` override them."""
    raw_name = name.encode("utf-8") if isinstance(name, str) else name
    if method == zipfile.ZIP_DEFLATED:
        compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
        payload = compressor.compress(data) + compressor.flush()
    elif method == zipfile.ZIP_BZIP2:
        payload = bz2.compress(data)
    else:
        payload = data
    flags = 0x800 if isinstance(name, str) and not name.isascii() else 0
    values = {"file_size": len(data), "crc": zlib.crc32(data), "flags": flags} | fields
    return Member(raw_name, payload, method, **values)


def raw_zip(members: list[Member]) -> bytes:
    """A zip archive of ``members`` written field by field (no check of any kind)."""
    out = bytearray()
    central = bytearray()
    for m in members:
        offset = len(out)
        out += struct.pack(
            "<4s2B4HL2L2H", b"PK\x03\x04", m.extract_version, 0, m.flags, m.method, 0, 33,
            m.crc, len(m.payload), m.file_size, len(m.name), 0,
        )  # fmt: skip
        out += m.name + m.payload
        central += struct.pack(
            "<4s4B4HL2L5H2L", b"PK\x01\x02", 20, 3, m.extract_version, 0, m.flags, m.method,
            0, 33, m.crc, len(m.payload), m.file_size, len(m.name), 0, 0, 0, 0,
            m.external_attr, offset,
        )  # fmt: skip
        central += m.name
    end = struct.pack(
        "<4s4H2LH", b"PK\x05\x06", 0, 0, len(members), len(members), len(central), len(out), 0
    )
    return bytes(out + central + end)


SYMLINK_ATTR = (0o120777 << 16) | 0x10


def deflate_bomb(mib: int) -> bytes:
    """A raw deflate stream of ``mib`` MiB of zeros, 1 KB per MiB, built in milliseconds:
    a full flush resets the compressor, so the block of one MiB repeats byte for byte."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(bytes(MiB)) + compressor.flush(zlib.Z_FULL_FLUSH)
    return block * mib + compressor.flush()


def honest_stream(mib: int) -> tuple[bytes, int]:
    """A deflate stream of ``mib`` MiB at about 120:1 (under the 200:1 limit) and its CRC."""
    rng = random.Random(0)
    chunk = bytearray(MiB)
    for i in range(0, MiB, 1024):
        chunk[i : i + 2] = rng.randbytes(2)
    compressor = zlib.compressobj(1, zlib.DEFLATED, -15)
    block = compressor.compress(bytes(chunk)) + compressor.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(mib):
        crc = zlib.crc32(chunk, crc)
    return block * mib + compressor.flush(), crc


# ------------------------------------------------------------------------------ properties
@fuzz("random_bytes")
@given(raw=st.binary(min_size=0, max_size=2048), ext=st.sampled_from(EXTENSIONS))
def test_random_bytes_are_refused_by_name(raw: bytes, ext: str) -> None:
    decode_outcome(raw, f"upload/random{ext}")


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, bytes]:
    """A seed image truncated, with bytes overwritten, or with bytes inserted."""
    kind = draw(st.sampled_from(sorted(SEEDS)))
    raw = bytearray(SEEDS[kind])
    how = draw(st.sampled_from(["truncate", "overwrite", "insert", "header"]))
    if how == "truncate":
        raw = raw[: draw(st.integers(0, len(raw) - 1))]
    elif how in ("overwrite", "header"):  # "header": within the first 64 bytes
        limit = min(len(raw), 64) if how == "header" else len(raw)
        for _ in range(draw(st.integers(1, 8))):
            raw[draw(st.integers(0, limit - 1))] = draw(st.integers(0, 255))
    else:
        at = draw(st.integers(0, len(raw)))
        raw[at:at] = draw(st.binary(min_size=1, max_size=64))
    return f"{kind}-{how}", bytes(raw)


@fuzz("mutated_image")
@given(case=mutated())
def test_truncated_or_corrupted_images_are_refused_by_name(case: tuple[str, bytes]) -> None:
    kind, raw = case
    decode_outcome(raw, f"{kind}.png")


@st.composite
def declaring(draw: st.DrawFn) -> tuple[str, bytes]:
    """A PNG, BMP, TIFF or JPEG header declaring an arbitrary (often huge) size."""
    fmt = draw(st.sampled_from(["png", "bmp", "tiff", "jpeg"]))
    side = st.one_of(st.integers(0, 600), st.integers(0, 2**31 - 1))
    width, height = draw(side), draw(side)
    if fmt == "png":
        return fmt, png_declaring(width, height, draw(st.sampled_from([0, 2, 3, 4, 6])))
    if fmt == "bmp":
        signed = st.one_of(st.integers(-600, 600), st.integers(-(2**31), 2**31 - 1))
        bpp = draw(st.sampled_from([0, 1, 4, 8, 16, 24, 32, 64]))
        return fmt, bmp_declaring(draw(signed), draw(signed), bpp, draw(st.integers(0, 6)))
    if fmt == "tiff":
        bits, samples = draw(st.sampled_from([1, 8, 16, 32])), draw(st.sampled_from([1, 3, 4]))
        return fmt, tiff_declaring(width, height, bits, samples, draw(st.sampled_from([1, 5, 8])))
    return fmt, jpeg_declaring(min(width, 65535), min(height, 65535))


@fuzz("declared_size")
@given(case=declaring())
def test_declared_sizes_over_the_limit_are_refused_from_the_header(case: tuple[str, bytes]) -> None:
    fmt, raw = case
    outcome = decode_outcome(raw, f"declared.{fmt}", max_pixels=SMALL_MAX_PIXELS)
    try:
        with Image.open(io.BytesIO(raw)) as header:
            width, height = header.size
    except Exception:  # noqa: BLE001 - no header to compare with: the error was checked
        return
    if width * height > SMALL_MAX_PIXELS:
        assert outcome.startswith("ImageLoadError: image is") and "over the limit" in outcome


# ------------------------------------------------------------------------------ zip members
#: Name kinds a generated member is given, and whether each refuses the archive.
UNSAFE_KINDS = {"traversal", "absolute", "drive", "empty", "bad-utf8"}
SAFE_KINDS = ["plain", "plain", "plain", "hidden", "folder", "cp437"]
SEGMENT = st.text(alphabet="abcXYZ019 _-.é~", min_size=1, max_size=6).filter(
    lambda s: s not in (".", "..")
)
MEMBER_EXTENSIONS = EXTENSIONS + [".txt", ".zip", ""]


@st.composite
def member_names(draw: st.DrawFn) -> tuple[str, bytes, bool]:
    """(kind, raw name, whether the name is flagged UTF-8)."""
    kind = draw(st.sampled_from(SAFE_KINDS * 3 + sorted(UNSAFE_KINDS)))
    path = "/".join(draw(st.lists(SEGMENT, min_size=1, max_size=3)))
    path += draw(st.sampled_from(MEMBER_EXTENSIONS))
    text = {
        "plain": path,
        "hidden": draw(st.sampled_from([".git/", "__MACOSX/", "a/."])) + path,
        "folder": path + "/",
        "traversal": draw(st.sampled_from(["../", "a/../../", "..\\", "a\\..\\..\\"])) + path,
        "absolute": draw(st.sampled_from(["/", "\\", "//server/"])) + path,
        "drive": draw(st.sampled_from(["C:/", "c:", "Z:\\"])) + path,
        "empty": "",
    }.get(kind)
    if kind == "cp437":  # non-ASCII bytes, not flagged UTF-8: zipfile reads them as cp437
        high = draw(st.binary(min_size=1, max_size=8))
        return kind, bytes(0x80 | byte for byte in high) + b".png", False
    if kind == "bad-utf8":  # flagged UTF-8 but not
        return kind, b"\xff\xfe" + path.encode(), True
    assert text is not None
    return kind, text.encode("utf-8"), not text.isascii()


NESTED_ZIP = raw_zip([member("inner/in.png", PNG)])


@st.composite
def contents(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["png", "seed", "random", "empty", "nested-zip"]))
    if kind == "seed":
        return SEEDS[draw(st.sampled_from(sorted(SEEDS)))]
    if kind == "random":
        return draw(st.binary(max_size=512))
    return {"png": PNG, "empty": b"", "nested-zip": NESTED_ZIP}[kind]


def _listed_as(raw: bytes, utf8: bool) -> str:
    """The name zipfile reads for ``raw`` (UTF-8 when flagged, else cp437), ``\\`` as ``/``."""
    return raw.decode("utf-8" if utf8 else "cp437").replace("\\", "/")


@st.composite
def archives(draw: st.DrawFn) -> tuple[bytes, bool, bool]:
    """(zip bytes, must the archive be refused, may it be refused): members with any name,
    content, method, a symlink flag, repeated names, and sizes or CRCs that lie."""
    members: list[Member] = []
    names: list[str] = []  # the readable names so far, to repeat
    must = lies = False
    for _ in range(draw(st.integers(0, 6))):
        if names and draw(st.integers(0, 9)) == 0:  # repeat an earlier name (or its \\ twin)
            kind, previous = "repeat", draw(st.sampled_from(names))
            raw, utf8 = previous.replace("/", draw(st.sampled_from(["/", "\\"]))).encode(), True
        else:
            kind, raw, utf8 = draw(member_names())
        data = b"" if kind == "folder" else draw(contents())
        method = draw(
            st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2])
        )
        m = member(raw, data, method, flags=0x800 if utf8 else 0)
        if draw(st.integers(0, 9)) == 0:
            m.external_attr, must = SYMLINK_ATTR, True
        if draw(st.integers(0, 9)) == 0:  # a lying header: any declared size, any CRC
            m.file_size = draw(st.integers(0, 2**32 - 1))
            m.crc, lies = draw(st.integers(0, 2**32 - 1)), True
        must = must or kind in UNSAFE_KINDS
        members.append(m)
        if kind != "bad-utf8":
            names.append(raw.decode("utf-8" if utf8 else "cp437"))
    seen: set[str] = set()
    for m in members:  # a file listed under the name of an earlier file or folder
        if m.flags & 0x800 and m.name.startswith(b"\xff"):
            continue  # bad-utf8: refused anyway
        listed_as = _listed_as(m.name, bool(m.flags & 0x800))
        must = must or (listed_as in seen and not m.name.endswith(b"/"))
        seen.add(listed_as)
    return raw_zip(members), must, must or lies


@fuzz("zip_members")
@given(case=archives())
def test_zip_members_of_any_kind_end_in_an_error_or_a_skip(case: tuple[bytes, bool, bool]) -> None:
    blob, must_refuse, may_refuse = case
    with sandbox() as root:
        archive = root / "in" / "upload.zip"
        archive.write_bytes(blob)
        with watched(root):
            outcome = listing_outcome(archive)
            assert (outcome == "refused") >= must_refuse, "an unsafe archive was listed"
            assert (outcome == "refused") <= may_refuse, "a safe archive was refused"
            staged = upload_outcome([archive], root)
            if outcome == "refused":
                assert staged == "refused"


def upload_outcome(paths: list[Path], root: Path, limits: Limits = Limits()) -> str:
    """stage_upload: None, UploadError (no server path in it) or a staged source that lies
    under ``root/stage`` (a folder) or is the uploaded zip, and lists cleanly."""
    stage = root / "stage"
    try:
        staged = stage_upload([str(p) for p in paths], stage, limits)
    except UploadError as exc:
        assert str(exc).startswith("images: ") and str(root) not in str(exc)
        event("upload: UploadError")
        return "refused"
    if staged is None:
        assert not paths
        return "nothing"
    assert isinstance(staged, StagedUpload) and staged.source is not None
    try:
        if staged.cleanup is not None:
            assert staged.source.parent == stage and staged.source == staged.cleanup
        else:
            assert staged.source in paths
        assert listing_outcome(staged.source) == "listed"
    finally:
        staged.close()
    assert not stage.exists() or not any(stage.iterdir()), "staging left files behind"
    event("upload: staged")
    return "staged"


SEED_ZIPS = {
    "raw": raw_zip([member("a.png", PNG), member("d/b.jpg", SEEDS["jpeg"]), member("c.txt", b"x")]),
    "stored": raw_zip([member("a.png", PNG, zipfile.ZIP_STORED)]),
    "bzip2": raw_zip([member("a.png", PNG, zipfile.ZIP_BZIP2), member("b.png", PNG)]),
}


def _zipfile_written(method: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        archive.writestr("x/a.png", PNG)
        archive.writestr("x/b.tif", SEEDS["tiff"])
        archive.comment = b"written by zipfile"
    return buffer.getvalue()


SEED_ZIPS["zipfile-deflated"] = _zipfile_written(zipfile.ZIP_DEFLATED)
SEED_ZIPS["zipfile-lzma"] = _zipfile_written(zipfile.ZIP_LZMA)


@st.composite
def mutated_zips(draw: st.DrawFn) -> bytes:
    """A seed archive truncated or with bytes overwritten (anywhere, or in the central
    directory and end record, the last 120 bytes)."""
    raw = bytearray(SEED_ZIPS[draw(st.sampled_from(sorted(SEED_ZIPS)))])
    how = draw(st.sampled_from(["truncate", "overwrite", "directory"]))
    if how == "truncate":
        return bytes(raw[: draw(st.integers(0, len(raw) - 1))])
    low = max(0, len(raw) - 120) if how == "directory" else 0
    for _ in range(draw(st.integers(1, 6))):
        raw[draw(st.integers(low, len(raw) - 1))] = draw(st.integers(0, 255))
    return bytes(raw)


@fuzz("mutated_zip")
@given(blob=mutated_zips())
def test_corrupt_zips_end_in_an_error_or_a_skip(blob: bytes) -> None:
    with sandbox() as root:
        archive = root / "in" / "broken.zip"
        archive.write_bytes(blob)
        with watched(root):
            listing_outcome(archive)
            upload_outcome([archive], root)


# ------------------------------------------------------------------------------ uploads
@st.composite
def uploads(draw: st.DrawFn) -> list[tuple[str, bytes]]:
    """0 to 4 uploaded files: any name and extension, images, random bytes, zips."""
    files = []
    for _ in range(draw(st.integers(0, 4))):
        stem = draw(st.text(alphabet="abc XYZ._-é~", min_size=1, max_size=8))
        ext = draw(st.sampled_from(EXTENSIONS + [".zip", ".ZIP", ".txt", ""]))
        assume(stem + ext not in (".", ".."))  # not a file name
        if ext.lower() == ".zip":
            data = draw(st.sampled_from([NESTED_ZIP, *SEED_ZIPS.values(), b"", b"PK\x05\x06"]))
        else:
            data = draw(contents())
        files.append((stem + ext, data))
    return files


@fuzz("upload")
@given(files=uploads())
def test_uploads_are_staged_inside_the_staging_folder_or_refused(
    files: list[tuple[str, bytes]],
) -> None:
    with sandbox() as root:
        paths = []
        for i, (name, data) in enumerate(files):  # one folder each: names may repeat
            path = root / "in" / str(i) / name
            path.parent.mkdir()
            path.write_bytes(data)
            paths.append(path)
        with watched(root):
            upload_outcome(paths, root, Limits(max_file_mb=1, max_images=3))


# ------------------------------------------------------------------------------ named cases
def _zip_file(root: Path, members: list[Member], name: str = "case.zip") -> Path:
    path = root / "in" / name
    path.write_bytes(raw_zip(members))
    return path


UNSAFE_ARCHIVES = {
    "zip slip ../x.png": ([member("ok.png", PNG), member("../x.png", PNG)], "'..' path component"),
    "zip slip a/../../x.png": ([member("a/../../x.png", PNG)], "'..' path component"),
    "zip slip ..\\x.png": ([member("..\\x.png", PNG)], "'..' path component"),
    "absolute /etc/x.png": ([member("/etc/x.png", PNG)], "absolute path"),
    "absolute \\x.png": ([member("\\x.png", PNG)], "absolute path"),
    "drive C:\\x.png": ([member("C:\\x.png", PNG)], "drive letter"),
    "symlink member": (
        [member("ok.png", PNG), member("link.png", b"/etc/passwd", external_attr=SYMLINK_ATTR)],
        "symbolic link",
    ),
    "empty member name": ([member("", PNG)], "empty name"),
    "duplicate member names": ([member("a.png", PNG), member("a.png", PNG)], "repeats the name"),
    "duplicate a\\b.png and a/b.png": (
        [member("a/b.png", PNG), member("a\\b.png", PNG)],
        "repeats the name",
    ),
    "non-UTF-8 name flagged UTF-8": (
        [member(b"caf\xe9.png", PNG, flags=0x800)],
        "not a valid zip archive",
    ),
    "version needed 9.9": ([member("a.png", PNG, extract_version=99)], "not a valid zip archive"),
    "ratio 1000:1 (16 MiB of zeros)": ([member("flat.bmp", bytes(16 * MiB))], "compression ratio"),
}


@pytest.mark.parametrize("case", sorted(UNSAFE_ARCHIVES))
def test_unsafe_archives_are_refused_naming_the_member(case: str) -> None:
    members, reason = UNSAFE_ARCHIVES[case]
    with sandbox() as root:
        archive = _zip_file(root, members)
        with watched(root):
            with pytest.raises(ArchiveError) as err:
                list_images(archive)
            assert "case.zip" in str(err.value) and reason in str(err.value)
            if reason != "not a valid zip archive":
                assert repr(members[-1].name.decode()) in str(err.value)  # the member, by name
            with pytest.raises(UploadError, match=r"case\.zip refused"):
                stage_upload([str(archive)], root / "stage", Limits())


def test_non_utf8_names_without_the_flag_are_read_as_cp437() -> None:
    with sandbox() as root:
        archive = _zip_file(root, [member(b"caf\x82.png", PNG), member(b"\xff\xfe.png", PNG)])
        listing = list_images(archive)
        assert sorted(ref.name for ref in listing) == ["caf\u00e9.png", "\u00a0\u25a0.png"]
        assert [type(item) for item in iter_images(listing)] == [tuple, tuple]


def test_bzip2_and_lzma_members_are_skipped_unread() -> None:
    """zipfile inflates them in one unbounded call (800 bytes of bzip2 make 1 GiB)."""
    with sandbox() as root:
        archive = root / "in" / "methods.zip"
        with zipfile.ZipFile(archive, "w") as z:
            z.writestr("b.png", PNG, compress_type=zipfile.ZIP_BZIP2)
            z.writestr("l.png", PNG, compress_type=zipfile.ZIP_LZMA)
            z.writestr("d.png", PNG, compress_type=zipfile.ZIP_DEFLATED)
        items = {getattr(i, "name", None) or i[0]: i for i in iter_images(list_images(archive))}
        assert isinstance(items["d.png"], tuple)
        assert "compressed with bzip2" in items["b.png"].reason
        assert "compressed with LZMA" in items["l.png"].reason


def test_a_member_lying_about_its_size_is_inflated_no_further() -> None:
    """256 KB inflating to 256 MiB, declaring 100 bytes: zipfile's own read inflates it all
    (up to 2 GiB at once) before cutting; the loader reads the declared 100 bytes only."""
    import tracemalloc

    with sandbox() as root:
        archive = _zip_file(
            root, [Member(b"bomb.png", deflate_bomb(256), zipfile.ZIP_DEFLATED, file_size=100)]
        )
        listing = list_images(archive)  # the declared sizes pass every check
        tracemalloc.start()
        try:
            (item,) = list(iter_images(listing))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert isinstance(item, SkippedFile) and "Bad CRC-32 for file 'bomb.png'" in item.reason
        assert peak < 4 * MiB, f"reading the member allocated {peak / MiB:.0f} MiB"


def test_files_and_members_over_the_byte_limit_are_skipped_unread() -> None:
    with sandbox() as root:
        folder = root / "in" / "folder"
        folder.mkdir()
        with open(folder / "huge.tif", "wb") as f:  # sparse: nothing is written to disk
            f.truncate(DataConfig().max_file_bytes + 1)
        (folder / "ok.png").write_bytes(PNG)
        items = list(iter_images(list_images(folder)))
        assert isinstance(items[1], tuple)
        assert items[0].name == "huge.tif" and "over the limit of" in items[0].reason
        archive = _zip_file(root, [member("big.png", bytes(2000)), member("ok.png", PNG)])
        skipped, ok = iter_images(list_images(archive), max_file_bytes=1000)
        assert isinstance(ok, tuple)
        assert skipped.name == "big.png" and "2000 bytes, over the limit of 1000" in skipped.reason


def test_a_png_declaring_a_huge_size_is_refused_from_its_header() -> None:
    with pytest.raises(ImageLoadError, match=r"^bomb\.png: image is 100000 x 100000 .*over"):
        load_image(png_declaring(100_000, 100_000), "bomb.png")


def test_nested_zips_are_skipped() -> None:
    with sandbox() as root:
        archive = _zip_file(root, [member("inner.zip", NESTED_ZIP), member("x.png", NESTED_ZIP)])
        listing = list_images(archive)
        assert [(s.name, s.reason) for s in listing.skipped] == [
            ("inner.zip", "not an image file extension")
        ]
        (item,) = iter_images(listing)
        assert isinstance(item, SkippedFile) and item.reason == "not a recognised image format"


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n0 0 moveto 8 8 lineto stroke\n"


@pytest.mark.parametrize("fmt", ["EPS", "GIF", "WEBP", "TGA", "PPM"])
def test_formats_outside_the_supported_ones_are_not_decoded(fmt: str) -> None:
    """Pillow's EPS plugin runs Ghostscript on the bytes: no plugin but the four formats of
    the supported extensions sees user data, whatever the file is called."""
    if fmt == "EPS":
        raw = EPS
    else:
        buffer = io.BytesIO()
        Image.new("RGB", (8, 8)).save(buffer, fmt)
        raw = buffer.getvalue()
    with pytest.raises(ImageLoadError, match=r"^x\.png: not a recognised image format$"):
        load_image(raw, "x.png")


@pytest.fixture(scope="module")
def many_entries(tmp_path_factory) -> Path:
    """A zip of DEFAULT_MAX_MEMBERS (100,000) zero-byte stored members, in 100 folders."""
    path = tmp_path_factory.mktemp("many") / "many.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for i in range(DEFAULT_MAX_MEMBERS):
            archive.writestr(f"d{i % 100}/{i}.png", b"")
    return path


@pytest.mark.slow
def test_a_100k_entry_zip_is_listed_and_skipped_quickly(many_entries: Path) -> None:
    start = time.perf_counter()
    listing = list_images(many_entries)
    items = list(iter_images(listing))
    seconds = time.perf_counter() - start
    assert len(listing) == DEFAULT_MAX_MEMBERS
    assert all(isinstance(i, SkippedFile) and i.reason == "empty file" for i in items)
    assert seconds < 60, f"{seconds:.1f} s for 100,000 entries"  # 3 s measured on 2 cores
    print(f"100,000-entry zip: listed and read in {seconds:.1f} s")
    with pytest.raises(ArchiveError, match="many.zip: archive has 100000 members, over the"):
        list_images(many_entries, max_members=DEFAULT_MAX_MEMBERS - 1)
    with pytest.raises(UploadError, match="100000 images, over the limit of 5000"):
        stage_upload([str(many_entries)], many_entries.parent / "stage", Limits())


# ------------------------------------------------------------------------------ peak RSS
PEAK_SCRIPT = """
import json, os, resource, sys
from engine.data import ArchiveError, SkippedFile, iter_images, list_images
from engine.imageio import ImageLoadError, load_image
source = sys.argv[1]
try:
    if os.path.isdir(source) or source.endswith(".zip"):
        items = list(iter_images(list_images(source)))
        outcomes = sorted({i.reason if isinstance(i, SkippedFile) else "decoded" for i in items})
        outcome = f"{len(items)} listed: " + "; ".join(outcomes)
    else:
        outcome = "decoded to %s" % (load_image(source).shape,)
except (ArchiveError, ImageLoadError) as exc:
    outcome = f"{type(exc).__name__}: {exc}"
try:  # VmHWM: the peak of this program (ru_maxrss keeps the parent's across exec on Linux)
    with open("/proc/self/status") as status:
        peak_kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
except OSError:
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if sys.platform == "darwin":
        peak_kib //= 1024
print(json.dumps({"outcome": outcome, "peak_mib": peak_kib / 1024}))
"""


def _bz2_bomb(mib: int) -> bytes:
    compressor = bz2.BZ2Compressor(9)
    block = bytes(16 * MiB)
    parts = [compressor.compress(block) for _ in range(mib // 16)]
    return b"".join(parts) + compressor.flush()


def _flat_image(path: Path, mode: str, fmt: str, **params) -> Path:
    side = int(DataConfig().max_pixels ** 0.5)  # 7071 x 7071: at the pixel limit
    Image.new(mode, (side, side), 7 if mode != "RGB" else (7, 8, 9)).save(path, fmt, **params)
    return path


def _build_worst_case(case: str, folder: Path, many: Path) -> Path:
    if case == "deflate bomb, header lying (1 GiB declared as 100 B)":
        bomb = Member(b"bomb.png", deflate_bomb(1024), zipfile.ZIP_DEFLATED, file_size=100)
        return _zip_file(folder, [bomb])
    if case == "bzip2 bomb, header lying (256 MiB declared as 100 B)":
        return _zip_file(
            folder, [Member(b"b.png", _bz2_bomb(256), zipfile.ZIP_BZIP2, file_size=100)]
        )
    if case == "600 MiB member, honest header (120:1)":
        payload, crc = honest_stream(600)
        assert 600 * MiB / len(payload) < DEFAULT_MAX_RATIO
        big = Member(b"big.tif", payload, zipfile.ZIP_DEFLATED, file_size=600 * MiB, crc=crc)
        return _zip_file(folder, [big])
    if case == "1 GiB file on disk (sparse)":
        (folder / "in" / "disk").mkdir()
        with open(folder / "in" / "disk" / "huge.tif", "wb") as f:
            f.truncate(1024 * MiB)
        return folder / "in" / "disk"
    if case == "PNG declaring 100000 x 100000":
        path = folder / "in" / "bomb.png"
        path.write_bytes(png_declaring(100_000, 100_000))
        return path
    if case == "50 Mpx float TIFF, flat (320 KB)":
        return _flat_image(
            folder / "in" / "flat.tif", "F", "TIFF", compression="tiff_adobe_deflate"
        )
    if case == "50 Mpx RGB PNG, flat (160 KB)":
        return _flat_image(folder / "in" / "flat.png", "RGB", "PNG")
    assert case == "100,000-entry zip"
    return many


WORST_CASES = {  # case: what the outcome must say
    "deflate bomb, header lying (1 GiB declared as 100 B)": "Bad CRC-32 for file 'bomb.png'",
    "bzip2 bomb, header lying (256 MiB declared as 100 B)": "compressed with bzip2",
    "600 MiB member, honest header (120:1)": "over the limit of 536870912",
    "1 GiB file on disk (sparse)": "over the limit of 536870912",
    "PNG declaring 100000 x 100000": "over the limit of 50000000",
    "50 Mpx float TIFF, flat (320 KB)": "decoded to (7071, 7071, 3)",
    "50 Mpx RGB PNG, flat (160 KB)": "decoded to (7071, 7071, 3)",
    "100,000-entry zip": "100000 listed: empty file",
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(WORST_CASES))
def test_peak_rss_of_the_worst_cases(case: str, many_entries: Path) -> None:
    with sandbox() as root:
        source = _build_worst_case(case, root, many_entries)
        env = dict(os.environ, PYTHONPATH=str(ROOT), TMPDIR=str(root / "tmp"))
        with watched(root):
            done = subprocess.run(
                [sys.executable, "-c", PEAK_SCRIPT, str(source)],
                capture_output=True, text=True, env=env, cwd=ROOT, timeout=300,
            )  # fmt: skip
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"peak RSS, {case}: {result['peak_mib']:.0f} MiB ({result['outcome']})")
        assert WORST_CASES[case] in result["outcome"]
        assert result["peak_mib"] < RSS_BOUND_MIB
