"""``protoatlas export --batch ID --type ID [--type ID ...]`` over a storage-only workspace
(no engine): the scope reaches every region-level format, and a wrong id is a one-line
error, not a traceback."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import zipfile

import pytest

from protoatlas.cli import main
from storage import Workspace
from tests.storage_fixtures import make_batch, with_pngs

NAME = "scoped"


def run(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """Two batches over three types: A and B confirmed, C proposed. Returns (home,
    {letter: id}, {region id: (batch id, type id)}, {type id: name}), the workspace closed
    (the command opens it)."""
    home = tmp_path_factory.mktemp("cli-scope")
    with Workspace.open(home, NAME, embedding_dim=16) as ws:
        ws.ingest_batch(with_pngs(make_batch(6, n_types=3, seed=3, name="one"), 1))
        ids = sorted(t.id for t in ws.list_types())
        ws.ingest_batch(
            with_pngs(make_batch(5, seed=6, name="two", existing_types=ids, image_prefix="two"), 2)
        )
        for t in ids[:2]:
            ws.confirm_type(t, expected_version=ws.get_type(t).version, actor="ann")
        regions = {
            r.id: (r.batch_id, r.type_id)
            for b in ws.batches()
            for r in ws.regions_for_batch(b.id, with_masks=False)
        }
        names = {t.id: t.name for t in ws.list_types()}
    return home, dict(zip("ABC", ids)), regions, names


def export(home, fmt, out, *scope) -> tuple[int, str, str]:
    return run(
        ["export", "--home", str(home), "--workspace", NAME, "--format", fmt, "--out", str(out)]
        + list(scope)
    )


def test_csv_of_two_types(home, tmp_path):
    root, t, regions, _ = home
    out = tmp_path / "r.csv"
    code, stdout, err = export(root, "csv", out, "--type", str(t["A"]), "--type", str(t["C"]))
    assert code == 0, err
    assert f"wrote {out}" in stdout
    with open(out, newline="") as fh:
        got = {int(r["region_id"]) for r in csv.DictReader(fh)}
    assert got == {r for r, (_, ty) in regions.items() if ty in (t["A"], t["C"])}


def test_coco_of_one_batch_and_one_type(home, tmp_path):
    root, t, regions, _ = home
    out = tmp_path / "c.json"
    code, _, err = export(root, "coco", out, "--batch", "2", "--type", str(t["B"]))
    assert code == 0, err
    doc = json.loads(out.read_text())
    assert [c["id"] for c in doc["categories"]] == [t["B"]]
    want = {r for r, (b, ty) in regions.items() if b == 2 and ty == t["B"]}
    assert want and {a["id"] for a in doc["annotations"]} == want
    assert {im["batch"] for im in doc["images"]} == {"two"}


def test_crops_and_yolo_of_one_batch(home, tmp_path):
    root, t, regions, names = home
    code, _, err = export(root, "crops", tmp_path / "k.zip", "--batch", "1")
    assert code == 0, err
    with zipfile.ZipFile(tmp_path / "k.zip") as z:
        got = set(z.namelist())
    want = {
        f"{names[ty]}/{r}.png"
        for r, (b, ty) in regions.items()
        if b == 1 and ty in (t["A"], t["B"])
    }
    assert got == want
    code, _, err = export(root, "yolo", tmp_path / "y.zip", "--batch", "1", "--type", str(t["A"]))
    assert code == 0, err
    with zipfile.ZipFile(tmp_path / "y.zip") as z:
        assert z.read("classes.txt").decode().split() == [names[t["A"]]]
        assert all(n.startswith(("classes", "images/1/", "labels/1/")) for n in z.namelist())


def test_wrong_ids_are_one_line_errors(home, tmp_path):
    root, t, _, names = home
    cases = [
        (["--batch", "99"], "no batch with id 99"),
        (["--type", str(t["A"]), "--type", "77"], "no type with id 77"),
    ]
    for scope, message in cases:
        code, _, err = export(root, "label-studio", tmp_path / "x.json", *scope)
        assert code == 2 and err.strip() == f"protoatlas: error: {message}", err
    code, _, err = export(root, "coco", tmp_path / "x.json", "--type", str(t["C"]))
    assert code == 2 and "Traceback" not in err
    assert f"type {t['C']} ({names[t['C']]}) is proposed" in err and "confirmed types only" in err
    code, _, err = export(root, "audit-json", tmp_path / "a.json", "--batch", "1")
    assert code == 2 and "audit log is exported whole" in err
    assert not list(tmp_path.iterdir())
    with pytest.raises(SystemExit):  # argparse: an id is a number
        run(["export", "--home", str(root), "--format", "csv", "--out", "x", "--type", "A"])
