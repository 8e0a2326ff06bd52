"""Storage building blocks: RLE, 16-bit PNG maps, content store, opening workspaces."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from storage import (
    StorageError,
    ValidationError,
    Workspace,
    decode_map,
    decode_rle,
    default_home,
    encode_map,
    encode_rle,
    rle_area,
    rle_from_json,
    rle_to_json,
)
from storage.files import ContentStore, sha256_bytes
from storage.png16 import decode_png16, encode_png16


# ------------------------------------------------------------------------------ RLE
def test_rle_is_coco_column_major_starting_with_zeros():
    mask = np.array([[0, 1, 1], [0, 1, 0]], dtype=bool)
    # column-major: col0 = 0,0  col1 = 1,1  col2 = 1,0  -> 0 0 1 1 1 0
    assert encode_rle(mask) == {"size": [2, 3], "counts": [2, 3, 1]}
    starts_with_one = np.array([[1, 0], [1, 1]], dtype=bool)  # 1 1 0 1
    assert encode_rle(starts_with_one)["counts"] == [0, 2, 1, 1]


@pytest.mark.parametrize("shape", [(1, 1), (7, 5), (64, 48), (3, 200)])
def test_rle_round_trip_random_masks(shape):
    rng = np.random.default_rng(sum(shape))
    for density in (0.0, 0.1, 0.5, 1.0):
        mask = rng.random(shape) < density
        rle = encode_rle(mask)
        assert sum(rle["counts"]) == mask.size
        assert rle_area(rle) == mask.sum()
        np.testing.assert_array_equal(decode_rle(rle), mask)
        np.testing.assert_array_equal(decode_rle(rle_to_json(rle)), mask)


def test_rle_rejects_bad_counts():
    with pytest.raises(ValidationError, match="sum to h\\*w"):
        decode_rle({"size": [2, 2], "counts": [1, 1]})
    with pytest.raises(ValidationError, match="not valid JSON"):
        rle_from_json("{nope")
    with pytest.raises(ValidationError, match="2-D"):
        encode_rle(np.zeros(4, dtype=bool))


# ---------------------------------------------------------------------------- maps
def test_png16_is_a_valid_png_and_round_trips():
    q = (np.arange(12 * 17, dtype=np.uint32) * 397 % 65536).astype(np.uint16).reshape(12, 17)
    png = encode_png16(q)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    np.testing.assert_array_equal(decode_png16(png), q)


def test_png16_opens_in_pillow_with_the_same_values():
    PIL = pytest.importorskip("PIL.Image")
    import io

    q = (np.random.default_rng(0).integers(0, 65536, (9, 13))).astype(np.uint16)
    img = PIL.open(io.BytesIO(encode_png16(q)))
    assert img.size == (13, 9)
    np.testing.assert_array_equal(np.array(img).astype(np.uint16), q)


def test_map_quantisation_error_is_within_half_a_level():
    rng = np.random.default_rng(1)
    m = (rng.random((40, 30)) * 7 - 2).astype(np.float32)
    png, lo, hi = encode_map(m)
    back = decode_map(png, lo, hi)
    assert back.shape == m.shape and back.dtype == np.float32
    assert lo == pytest.approx(m.min()) and hi == pytest.approx(m.max())
    assert np.abs(back - m).max() <= (hi - lo) / 65535 / 2 + 1e-5
    flat, lo2, hi2 = encode_map(np.full((3, 4), 2.5))
    np.testing.assert_allclose(decode_map(flat, lo2, hi2), 2.5)
    with pytest.raises(ValidationError, match="NaN"):
        encode_map(np.array([[np.nan, 1.0]]))


# --------------------------------------------------------------------- content store
def test_content_store_is_idempotent_and_checks_sha(tmp_path):
    store = ContentStore(tmp_path / "images")
    ref, new = store.put(b"hello", "PNG")
    sha = sha256_bytes(b"hello")
    assert ref == f"{sha}.png" and new
    assert store.path(ref) == tmp_path / "images" / sha[:2] / ref
    assert store.put(b"hello", "png") == (ref, False)
    with pytest.raises(ValidationError, match="sha256 given"):
        store.put(b"other", "png", sha=sha)
    (store.path(ref).parent / "junk.tmp-1").write_bytes(b"x")
    assert [p.name for p in store.orphans({ref})] == ["junk.tmp-1"]
    assert len(store.orphans(set())) == 2


# -------------------------------------------------------------------- open / close
def test_default_home_from_environment(monkeypatch, tmp_path):
    import storage.workspace as sw

    monkeypatch.setenv("PROTOATLAS_HOME", str(tmp_path / "data"))
    assert default_home() == tmp_path / "data"
    monkeypatch.delenv("PROTOATLAS_HOME")
    monkeypatch.setattr(sw, "SPACES_DATA", tmp_path / "absent")
    assert default_home() == Path("protoatlas-data")
    # on Spaces, the persistent /data
    monkeypatch.setattr(sw, "SPACES_DATA", tmp_path)
    assert default_home() == tmp_path / "protoatlas"


def test_open_creates_layout_and_uses_env_home(monkeypatch, tmp_path):
    monkeypatch.setenv("PROTOATLAS_HOME", str(tmp_path))
    with Workspace.open(name="lab") as ws:
        assert ws.root == tmp_path / "lab"
        assert (tmp_path / "lab" / "workspace.duckdb").is_file()
        assert (tmp_path / "lab" / "images").is_dir() and (tmp_path / "lab" / "blobs").is_dir()
        assert ws.embedding_dim == 256
        assert ws.schema_version() == 4


@pytest.mark.parametrize("bad", ["", "../x", "a/b", ".hidden", "x" * 65])
def test_bad_workspace_names_are_refused(tmp_path, bad):
    with pytest.raises(ValidationError, match="workspace name"):
        Workspace.open(tmp_path, bad)


def test_same_file_opened_twice_in_a_process_shares_one_writer(tmp_path):
    a = Workspace.open(tmp_path, "w", embedding_dim=8)
    b = Workspace.open(tmp_path, "w")
    assert a._h is b._h
    a.close()
    assert b.embedding_dim == 8  # still usable: the handle lives until the last close
    b.close()
    with pytest.raises(StorageError, match="closed"):
        b.list_types()


def test_embedding_dim_can_change_only_while_no_vector_is_stored(tmp_path):
    from tests.storage_fixtures import make_batch

    with Workspace.open(tmp_path, "w") as ws:
        assert ws.embedding_dim == 256
        ws.ingest_batch(make_batch(3, dim=12))  # first ingest decides
        assert ws.embedding_dim == 12
        with pytest.raises(ValidationError, match="stores 12-d embeddings; got 16-d"):
            ws.ingest_batch(make_batch(3, dim=16, seed=1, name="b2"))
        with pytest.raises(ValidationError, match="stores 12-d"):
            ws.set_embedding_dim(32)
    with pytest.raises(ValidationError, match="stores 12-d"):
        Workspace.open(tmp_path, "w", embedding_dim=64)


def test_read_only_open_needs_an_existing_current_workspace(tmp_path):
    from storage import NotFoundError

    with pytest.raises(NotFoundError, match="no workspace"):
        Workspace.open(tmp_path, "nope", read_only=True)
    Workspace.open(tmp_path, "w").close()
    with Workspace.open(tmp_path, "w", read_only=True) as ro:
        assert ro.list_types() == []
        with pytest.raises(StorageError, match="read-only"):
            with ro.transaction():
                pass
    assert not os.path.exists(tmp_path / "nope")


def test_rle_bbox_is_the_tight_box_of_the_foreground_without_decoding():
    from storage.rle import rle_bbox

    rng = np.random.default_rng(0)
    for _ in range(500):
        h, w = (int(v) for v in rng.integers(1, 16, 2))
        m = rng.random((h, w)) < rng.random() * 0.2
        box = rle_bbox(encode_rle(m))
        if not m.any():
            assert box is None
            continue
        ys, xs = np.nonzero(m)
        assert box == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)


def test_workspace_names_lists_the_workspaces_of_a_home(tmp_path):
    from storage import check_workspace_name, workspace_names

    assert workspace_names(tmp_path / "missing") == []
    for name in ("b-line", "a.line"):
        Workspace.open(tmp_path, name).close()
    (tmp_path / "not-a-workspace").mkdir()
    assert workspace_names(tmp_path) == ["a.line", "b-line"]
    assert check_workspace_name("ok_1") == "ok_1"
    for bad in ("", "../x", "-x", "a/b", "x" * 65):
        with pytest.raises(ValidationError, match="workspace name"):
            check_workspace_name(bad)
