"""Tests for engine.data: listing folders and zips safely, loading with skips, MVTec layout."""

from __future__ import annotations

import io
import os
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.data import (
    ArchiveError,
    ImageRef,
    LazyImages,
    LoadReport,
    MVTecSample,
    NoUsableImagesError,
    SkippedFile,
    iter_images,
    list_images,
    load_images,
    load_mvtec,
    read_masks,
)

BOTTLE = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "mvtec_bottle"


def png_bytes(value: int = 128, size: tuple[int, int] = (8, 6), fmt: str = "PNG") -> bytes:
    """A small flat RGB image (width, height = ``size``) encoded as ``fmt``."""
    buffer = io.BytesIO()
    Image.new("RGB", size, (value, value // 2, 255 - value)).save(buffer, fmt)
    return buffer.getvalue()


def noisy_png() -> bytes:
    """An incompressible PNG, so cutting it in half damages pixel data."""
    rng = np.random.default_rng(1)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def put(path: Path, data: bytes = b"") -> Path:
    """Create ``path`` (and its parents) holding ``data``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def make_zip(path: Path, members: dict[str | zipfile.ZipInfo, bytes]) -> Path:
    """Write a deflated zip archive with the given members."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for member, data in members.items():
            archive.writestr(member, data)
    return path


# ---------------------------------------------------------------------------- directories


def test_list_nested_directory(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for name in ["b.png", "a/x.JPG", "a/b/y.bmp", "a/b/c/z.tiff", "a/b/c/w.jpeg", "a/t.TIF"]:
        put(root / name, png_bytes())
    for name in [
        "notes.txt",
        "a/b/readme.md",
        ".hidden.png",
        ".git/x.png",
        "a/.cache/y.png",
        "__MACOSX/a/._x.jpg",
    ]:
        put(root / name, png_bytes())
    refs = list_images(root)
    names = [r.name for r in refs]
    assert names == ["a/b/c/w.jpeg", "a/b/c/z.tiff", "a/b/y.bmp", "a/t.TIF", "a/x.JPG", "b.png"]
    assert all(r.path is not None and r.zip_path is None for r in refs)
    assert refs[-1].read_bytes() == png_bytes()


def test_list_follows_file_symlinks_anywhere(tmp_path: Path) -> None:
    """Data-versioning tools (git-annex, DVC) leave links to files kept elsewhere: they are
    images. Links to folders are followed inside the root only; loops end."""
    root = tmp_path / "data"
    put(root / "real.png", png_bytes())
    outside = put(tmp_path / "elsewhere" / "cached.png", png_bytes())
    os.symlink(outside, root / "linked.png")
    os.symlink(outside.parent, root / "outdir")
    os.symlink(root / "real.png", root / "alias.png")
    os.symlink(tmp_path / "gone.png", root / "broken.png")
    os.symlink(root, root / "loop")  # inside, but a loop: must terminate, no duplicates
    listing = list_images(str(root))
    assert [r.name for r in listing] == ["alias.png", "linked.png", "real.png"]
    assert listing[1].read_bytes() == png_bytes()
    reasons = {s.name: s.reason for s in listing.skipped}
    assert reasons["broken.png"] == "broken symbolic link"
    assert "outside" in reasons["outdir"]


def test_no_images_found_says_what_was_skipped(tmp_path: Path) -> None:
    root = tmp_path / "batch"
    put(root / "notes.txt", b"hello")
    os.symlink(tmp_path / "missing.png", root / "img.png")
    with pytest.raises(NoUsableImagesError) as err:
        load_images(list_images(root))
    text = str(err.value)
    assert str(root) in text and "img.png (broken symbolic link)" in text
    assert "notes.txt (not an image file extension)" in text
    lazy = LazyImages(list_images(root))
    with pytest.raises(NoUsableImagesError, match="broken symbolic link"):
        lazy.validate()


def test_list_missing_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope_dir"):
        list_images(tmp_path / "nope_dir")


def test_list_plain_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"single\.png.*directory or a \.zip"):
        list_images(put(tmp_path / "single.png", png_bytes()))


# ---------------------------------------------------------------------------- zips


def test_list_zip_nested_and_read_bytes(tmp_path: Path) -> None:
    deep = png_bytes(10)
    archive = make_zip(
        tmp_path / "set.zip",
        {
            "top.png": png_bytes(200),
            "dir/": b"",
            "dir/sub/deep.jpg": deep,
            "dir/readme.txt": b"hello",
            "__MACOSX/dir/sub/._deep.jpg": b"junk",
            ".hidden/x.png": png_bytes(),
        },
    )
    refs = list_images(archive)
    assert [r.name for r in refs] == ["dir/sub/deep.jpg", "top.png"]
    assert refs[0].zip_path == archive.resolve() and refs[0].member == "dir/sub/deep.jpg"
    assert refs[0].path is None
    assert refs[0].read_bytes() == deep
    images, report = load_images(refs)
    assert [name for name, _ in images] == ["dir/sub/deep.jpg", "top.png"]
    assert images[1][1].shape == (6, 8, 3) and report.skipped == []


def symlink_info(name: str) -> zipfile.ZipInfo:
    """A zip member marked as a unix symbolic link."""
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize(
    "member,reason",
    [
        ("../evil.png", "'..'"),
        ("ok/../../evil.png", "'..'"),
        ("/etc/evil.png", "absolute"),
        ("C:/evil.png", "drive letter"),
        (symlink_info("link.png"), "symbolic link"),
    ],
)
def test_unsafe_zip_member_refuses_archive(
    tmp_path: Path, member: str | zipfile.ZipInfo, reason: str
) -> None:
    archive = make_zip(tmp_path / "bad.zip", {"good.png": png_bytes(), member: b"/etc/passwd"})
    name = member.filename if isinstance(member, zipfile.ZipInfo) else member
    with pytest.raises(ArchiveError) as info:
        list_images(archive)
    message = str(info.value)
    assert "bad.zip" in message and repr(name) in message and reason in message


def test_zip_high_ratio_member_refused(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "bomb.zip", {"zeros.bmp": bytes(10_000_000)})
    with pytest.raises(ArchiveError, match=r"'zeros\.bmp'.*compression ratio"):
        list_images(archive, max_ratio=20)
    with pytest.raises(ArchiveError, match="compression ratio"):
        list_images(archive)  # ~1000:1 is over the default of 200 as well
    assert list_images(archive, max_ratio=100_000)[0].name == "zeros.bmp"


def test_zip_small_flat_image_not_ratio_checked(tmp_path: Path) -> None:
    flat = png_bytes(0, (200, 200), fmt="BMP")  # 120 KB that deflates far beyond 200:1
    archive = make_zip(tmp_path / "flat.zip", {"flat.bmp": flat})
    assert [r.name for r in list_images(archive)] == ["flat.bmp"]


def test_zip_total_size_and_member_count_limits(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "many.zip", {f"{i}.png": png_bytes() for i in range(5)})
    with pytest.raises(ArchiveError, match=r"many\.zip.*over the limit of 100"):
        list_images(archive, max_total_bytes=100)
    with pytest.raises(ArchiveError, match=r"many\.zip.*5 members, over the limit of 4"):
        list_images(archive, max_members=4)
    assert len(list_images(archive, max_members=5)) == 5


def test_not_a_zip(tmp_path: Path) -> None:
    fake = put(tmp_path / "fake.zip", b"plain text, not a zip")
    with pytest.raises(ArchiveError, match=r"fake\.zip is not a valid zip archive"):
        list_images(fake)


def test_image_ref_needs_exactly_one_source(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="either path"):
        ImageRef("x.png")
    with pytest.raises(ValueError, match="either path"):
        ImageRef("x.png", path=tmp_path, zip_path=tmp_path, member="x.png")


# ---------------------------------------------------------------------------- loading


def mixed_folder(root: Path) -> list[ImageRef]:
    """Two good images and three bad ones; returns the listing."""
    put(root / "good1.png", png_bytes(10))
    put(root / "good2.jpg", png_bytes(20, fmt="JPEG"))
    cut = noisy_png()
    put(root / "corrupt.png", cut[: len(cut) // 2])
    put(root / "empty.png", b"")
    put(root / "text.png", b"not an image at all")
    return list_images(root)


def test_load_images_skips_bad_files(tmp_path: Path) -> None:
    images, report = load_images(mixed_folder(tmp_path))
    assert [name for name, _ in images] == ["good1.png", "good2.jpg"]
    assert all(a.dtype == np.uint8 and a.shape == (6, 8, 3) for _, a in images)
    assert report.loaded == ["good1.png", "good2.jpg"]
    reasons = {s.name: s.reason for s in report.skipped}
    assert reasons["empty.png"] == "empty file"
    assert reasons["text.png"] == "not a recognised image format"
    assert reasons["corrupt.png"].startswith("corrupt or truncated image data")
    summary = report.summary()
    assert summary.startswith("loaded 2, skipped 3: ")
    assert "empty.png (empty file)" in summary


def test_iter_images_is_lazy_and_yields_skips(tmp_path: Path) -> None:
    stream = iter_images(mixed_folder(tmp_path))
    first = next(stream)
    assert isinstance(first, SkippedFile) and first.name == "corrupt.png"
    rest = list(stream)
    assert sum(isinstance(item, SkippedFile) for item in rest) == 2
    assert [item[0] for item in rest if isinstance(item, tuple)] == ["good1.png", "good2.jpg"]


def test_load_images_with_progress_bar(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    refs = [ref for ref in mixed_folder(tmp_path) if ref.name.startswith("good")]
    images, _ = load_images(refs, progress=True, desc="reading-test")
    assert len(images) == 2
    assert "reading-test" in capsys.readouterr().err


def test_load_images_pixel_limit_is_a_skip(tmp_path: Path) -> None:
    put(tmp_path / "small.png", png_bytes(size=(2, 2)))
    put(tmp_path / "large.png", png_bytes(size=(20, 20)))
    images, report = load_images(list_images(tmp_path), max_pixels=10)
    assert [name for name, _ in images] == ["small.png"]
    assert "over the limit of 10" in report.skipped[0].reason


def test_all_bad_raises_with_summary(tmp_path: Path) -> None:
    put(tmp_path / "empty.png", b"")
    put(tmp_path / "text.png", b"hello")
    with pytest.raises(NoUsableImagesError) as info:
        load_images(list_images(tmp_path))
    assert "loaded 0, skipped 2" in str(info.value) and "empty.png (empty file)" in str(info.value)
    assert info.value.report is not None and len(info.value.report.skipped) == 2


def test_empty_input_raises(tmp_path: Path) -> None:
    put(tmp_path / "readme.txt", b"no images here")
    with pytest.raises(NoUsableImagesError, match="no images found"):
        load_images(list_images(tmp_path))


def test_summary_truncates_long_lists() -> None:
    report = LoadReport(loaded=[], skipped=[SkippedFile(f"{i}.png", "bad") for i in range(25)])
    summary = report.summary()
    assert "19.png (bad)" in summary and "20.png" not in summary
    assert summary.endswith("... and 5 more")
    assert LoadReport(loaded=["a.png"], skipped=[]).summary() == "loaded 1, skipped 0"


# ---------------------------------------------------------------------------- MVTec


def mask_png(rows: slice, size: int = 8) -> bytes:
    """A size x size L mask with ``rows`` set to 255."""
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[rows] = 255
    buffer = io.BytesIO()
    Image.fromarray(mask, "L").save(buffer, "PNG")
    return buffer.getvalue()


def make_mvtec(root: Path) -> Path:
    """A tiny MVTec-style category: 3 train, 2 good + 2 crack + 1 scratch test images."""
    for i in range(3):
        put(root / "train" / "good" / f"{i:03d}.png", png_bytes(i))
    for i in range(2):
        put(root / "test" / "good" / f"{i:03d}.png", png_bytes(50 + i))
        put(root / "test" / "crack" / f"{i:03d}.png", png_bytes(100 + i))
        put(root / "ground_truth" / "crack" / f"{i:03d}_mask.png", mask_png(slice(0, 2 + i)))
    put(root / "test" / "scratch" / "000.png", png_bytes(200))
    put(root / "ground_truth" / "scratch" / "000_mask.png", mask_png(slice(7, 8)))
    return root


def test_load_mvtec_layout(tmp_path: Path) -> None:
    dataset = load_mvtec(make_mvtec(tmp_path / "widget"))
    assert dataset.root == tmp_path / "widget"
    assert [r.name for r in dataset.train] == [f"train/good/00{i}.png" for i in range(3)]
    assert [(s.ref.name, s.defect_type) for s in dataset.test] == [
        ("test/crack/000.png", "crack"),
        ("test/crack/001.png", "crack"),
        ("test/good/000.png", "good"),
        ("test/good/001.png", "good"),
        ("test/scratch/000.png", "scratch"),
    ]
    assert dataset.defect_types == ["crack", "scratch"]
    good = [s for s in dataset.test if s.defect_type == "good"]
    assert all(s.mask_ref is None for s in good)
    crack = dataset.test[1]
    assert crack.mask_ref is not None and crack.mask_ref.name == "ground_truth/crack/001_mask.png"


def test_read_masks(tmp_path: Path) -> None:
    dataset = load_mvtec(make_mvtec(tmp_path / "widget"))
    masks = read_masks(dataset.test, (8, 8, 3))
    assert masks.dtype == bool and masks.shape == (5, 8, 8)
    assert masks[0, :2].all() and not masks[0, 2:].any()  # crack 000: rows 0-1
    assert masks[1, :3].all() and not masks[1, 3:].any()  # crack 001: rows 0-2
    assert not masks[2].any() and not masks[3].any()  # good
    assert masks[4, 7].all() and not masks[4, :7].any()  # scratch
    bigger = read_masks(dataset.test, (16, 16))
    assert bigger.shape == (5, 16, 16) and bigger[0, :4].all() and not bigger[0, 4:].any()


def test_read_masks_good_only_and_bad_shape(tmp_path: Path) -> None:
    ref = ImageRef("x.png", path=tmp_path / "x.png")  # never read: good has no mask
    assert not read_masks([MVTecSample(ref, "good", None)], (4, 5)).any()
    with pytest.raises(ValueError, match="shape"):
        read_masks([], (0, 5))


def test_load_mvtec_missing_mask(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "widget")
    (root / "ground_truth" / "crack" / "001_mask.png").unlink()
    with pytest.raises(ValueError, match=r"test/crack/001\.png.*ground_truth/crack/001_mask\.png"):
        load_mvtec(root)


def test_load_mvtec_missing_train(tmp_path: Path) -> None:
    put(tmp_path / "widget" / "test" / "good" / "000.png", png_bytes())
    with pytest.raises(FileNotFoundError, match=r"train/good"):
        load_mvtec(tmp_path / "widget")
    with pytest.raises(FileNotFoundError, match="absent"):
        load_mvtec(tmp_path / "absent")


def test_real_mvtec_bottle() -> None:
    if not BOTTLE.is_dir():
        pytest.skip(f"real MVTec bottle data not available at {BOTTLE}")
    dataset = load_mvtec(BOTTLE)
    assert len(dataset.train) == 209
    assert len(dataset.test) == 83
    assert dataset.defect_types == ["broken_large", "broken_small", "contamination"]
    defects = [s for s in dataset.test if s.defect_type != "good"]
    assert len(defects) == 63 and all(s.mask_ref is not None for s in defects)
    images, report = load_images(dataset.train[:2])
    assert images[0][1].shape == (256, 256, 3) and not report.skipped
    assert read_masks(defects[:2], (256, 256)).any(axis=(1, 2)).all()
