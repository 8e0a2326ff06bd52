"""Workspace commands: ``discover --home`` (persist_run), ``doctor``, ``export``,
``import-labels``."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path

import duckdb
import pytest

from protoatlas import cli
from protoatlas.cli import main
from protoatlas.service import WorkspaceService, region_table
from tests.service_fixtures import copy_home, data_root, fast_cli, shared_base

NAME = "default"


def run(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """``discover --home`` on the tiny data set: (home, data root, stdout)."""
    data = data_root(shared_base(tmp_path_factory), "tiny")
    tmp = tmp_path_factory.mktemp("cli-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli, "_config_from", fast_cli(cli._config_from))
        code, out, err = run(
            [
                "discover",
                "--normals",
                str(data / "train" / "good"),
                "--images",
                str(data / "test"),
                "--out",
                str(tmp / "out.csv"),
                "--home",
                str(tmp / "home"),
                "--image-size",
                "128",
                "--device",
                "cpu",
                "--quiet",
            ]
        )
    assert code == 0, err
    return tmp / "home", data, out


def header(path: Path) -> list[str]:
    with open(path, newline="") as fh:
        return next(csv.reader(fh))


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_discover_home_stores_the_batch_and_doctor_says_sound(stored) -> None:
    home, data, out = stored
    assert "stored as batch 1 in workspace" in out
    n_images = sum(1 for _ in (data / "test").rglob("*.png"))
    with WorkspaceService(home, NAME) as svc:
        (batch,) = svc.ws.batches()
        assert (batch.name, batch.n_images) == ("test", n_images) and batch.n_regions > 0
        assert svc.ws.latest_model_version().kind == "discover"
        assert svc.tokens_path(batch.id).is_file()
        assert {t.status for t in svc.ws.list_types()} == {"proposed"}
        names = {n for _, n, _, _ in svc.ws.batch_images(batch.id)}
        assert names == {
            p.relative_to(data / "test").as_posix() for p in (data / "test").rglob("*.png")
        }
    code, out, _ = run(["doctor", "--home", str(home)])
    assert code == 0 and out.strip().endswith("0 error(s), 0 warning(s): workspace is sound")


def test_doctor_warns_on_missing_tokens_and_fails_on_a_broken_audit_chain(stored, tmp_path) -> None:
    home = copy_home(stored[0], tmp_path / "home")
    (home / NAME / "tokens" / "batch-1.npz").unlink()
    code, out, _ = run(["doctor", "--home", str(home), "--workspace", NAME])
    assert code == 0, out
    assert "warning: crop tokens missing" in out and "batch 1 (test)" in out
    assert out.strip().endswith("0 error(s), 1 warning(s): workspace is sound")

    con = duckdb.connect(str(home / NAME / "workspace.duckdb"))
    try:
        con.execute(
            "UPDATE audit_log SET actor = 'mallory' WHERE seq = (SELECT min(seq) FROM audit_log)"
        )
    finally:
        con.close()
    code, out, _ = run(["doctor", "--home", str(home)])
    assert code == 1, out
    assert "error:" in out and out.strip().endswith("workspace is NOT sound")


REGION_COLUMNS = [
    "image",
    "batch",
    "region_id",
    "top",
    "left",
    "bottom",
    "right",
    "area",
    "anomaly_score",
    "type",
    "type_status",
    "source",
    "confidence",
    "is_normal",
]


def test_export_formats(stored, tmp_path) -> None:
    home = copy_home(stored[0], tmp_path / "home")
    with WorkspaceService(home, NAME) as svc:
        t = svc.ws.list_types()[0]
        svc.ws.confirm_type(t.id, expected_version=t.version, actor="alice")
        n_regions = len(region_table(svc.ws).region_ids)
        n_images = svc.ws.batches()[0].n_images
        n_audit = len(svc.ws.audit(limit=1000))
    files = {
        fmt: tmp_path / f"export.{fmt}"
        for fmt in ("csv", "parquet", "images-csv", "coco", "audit-json")
    }
    for fmt, path in files.items():
        code, stdout, err = run(
            ["export", "--home", str(home), "--format", fmt, "--out", str(path)]
        )
        assert code == 0, err
        assert path.is_file() and f"wrote {path}" in stdout

    assert header(files["csv"]) == REGION_COLUMNS
    assert len(rows(files["csv"])) == n_regions
    got = duckdb.sql(f"SELECT * FROM read_parquet('{files['parquet'].as_posix()}')")
    assert got.columns == REGION_COLUMNS and len(got.fetchall()) == n_regions
    assert header(files["images-csv"])[:2] == ["image", "label"]
    assert len(rows(files["images-csv"])) == n_images

    coco = json.loads(files["coco"].read_text())
    assert set(coco) >= {"images", "categories", "annotations"}
    assert len(coco["images"]) == n_images
    assert [c["name"] for c in coco["categories"]] == [t.name]  # confirmed types only
    assert len(coco["annotations"]) == t.n_regions
    ann = coco["annotations"][0]
    assert set(ann) >= {"id", "image_id", "category_id", "bbox", "area", "segmentation"}

    audit = json.loads(files["audit-json"].read_text())
    assert len(audit) == n_audit
    assert set(audit[0]) == {
        "seq",
        "ts",
        "actor",
        "action",
        "target",
        "type_ids",
        "before",
        "after",
        "prev_hash",
        "hash",
    }
    assert audit[0]["action"] == "ingest_batch" and audit[-1]["action"] == "confirm_type"
    assert all(b["prev_hash"] == a["hash"] for a, b in zip(audit, audit[1:]))


def test_import_labels_round_trip(stored, tmp_path) -> None:
    """Export the image labels of a reviewed copy, import them into an unreviewed copy."""
    reviewed = copy_home(stored[0], tmp_path / "reviewed")
    plain = copy_home(stored[0], tmp_path / "plain")
    with WorkspaceService(reviewed, NAME) as svc:
        for t, name in zip(svc.ws.list_types(), ("scratch", "spot")):
            svc.ws.rename_type(t.id, name, expected_version=t.version, actor="alice")
    labels = tmp_path / "labels.csv"
    code, _, err = run(
        ["export", "--home", str(reviewed), "--format", "images-csv", "--out", str(labels)]
    )
    assert code == 0, err
    exported = {r["image"]: r["label"] for r in rows(labels)}
    named = {img: lab for img, lab in exported.items() if lab in ("scratch", "spot")}
    assert named, exported

    code, out, err = run(
        ["import-labels", "--home", str(plain), "--labels", str(labels), "--actor", "importer"]
    )
    assert code == 0, err
    assert f"{len(exported)} rows" in out
    with WorkspaceService(plain, NAME) as svc:
        ws = svc.ws
        types = {t.name: t for t in ws.list_types()}
        for name in set(named.values()):
            assert types[name].status == "confirmed" and types[name].origin != "model"
        image_of = {img: name for b in ws.batches() for img, name, _, _ in ws.batch_images(b.id)}
        table = region_table(ws)
        for rid, img, tid, reviewed_, normal in zip(
            table.region_ids, table.image_ids, table.type_ids, table.reviewed, table.is_normal
        ):
            label = exported[image_of[int(img)]]
            if label in named.values():
                assert tid == types[label].id and reviewed_ and not normal
            elif label == "good":
                assert normal
        assert ws.audit(limit=1)[0].action == "import_labels"
        assert ws.audit(limit=1)[0].actor == "importer"
