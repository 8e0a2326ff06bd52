"""The discover / assign command line contract: CSV, run report, maps, errors, determinism."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.config import ProtoAtlasConfig
from engine.metrics import cluster_metrics
from engine.synth import SynthConfig, write_mvtec
from protoatlas.cli import main
from tests.conftest import TEST_IMAGE_SIZE

S = TEST_IMAGE_SIZE
SMALL = ["--image-size", str(S), "--device", "cpu"]
COLUMNS = [
    "image",
    "anomaly_score",
    "is_anomalous",
    "cluster",
    "confidence",
    "outlier",
    "nearest_type",
    "n_regions",
]
TYPES = ("scratch", "spot", "missing")


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    return write_mvtec(
        root, SynthConfig(size=(S, S)), n_train=12, n_test_good=2, n_per_type=3, types=TYPES, seed=1
    )


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _header(path: Path) -> list[str]:
    with open(path, newline="") as fh:
        return next(csv.reader(fh))


def _run(args: list[str]) -> tuple[int, str, str]:
    """main(args) with stdout and stderr captured (usable from module fixtures)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    return code, out.getvalue(), err.getvalue()


def _discover_args(demo: Path, out: Path, *extra: str) -> list[str]:
    return [
        "discover",
        "--normals",
        str(demo / "train/good"),
        "--images",
        str(demo / "test"),
        "--out",
        str(out),
        *SMALL,
        *extra,
    ]


@pytest.fixture(scope="module")
def discovered(demo, tmp_path_factory):
    """One quiet `discover --clusters 3 --save-model` run shared by several tests."""
    tmp = tmp_path_factory.mktemp("run")
    out = tmp / "types.csv"
    code, stdout, stderr = _run(
        _discover_args(
            demo, out, "--clusters", "3", "--quiet", "--save-model", str(tmp / "model.npz")
        )
    )
    assert code == 0, stderr
    return out, tmp / "model.npz", stdout, stderr


def _no_progress_bars(stderr: str) -> bool:
    return "it/s]" not in stderr and "%|" not in stderr and "s/it]" not in stderr


def test_discover_csv_contract(demo, discovered) -> None:
    out, _, stdout, _ = discovered
    assert _header(out) == COLUMNS
    rows = _rows(out)
    assert len(rows) == 2 + 3 * len(TYPES)  # one row per readable image
    names = {r["image"] for r in rows}
    assert names == (
        {f"good/{i:03d}.png" for i in range(2)}
        | {f"{t}/{i:03d}.png" for t in TYPES for i in range(3)}
    )
    for r in rows:
        anomalous = r["is_anomalous"] == "1"
        assert r["is_anomalous"] in ("0", "1") and r["outlier"] in ("0", "1")
        assert 0.0 <= float(r["confidence"]) <= 1.0
        float(r["anomaly_score"])
        if not anomalous:
            assert r["cluster"] == "" and r["outlier"] == "0"
        else:  # a type or an outlier, never both
            assert (r["cluster"] != "") != (r["outlier"] == "1")
        if r["cluster"]:
            assert r["cluster"] in {"0", "1", "2"} and float(r["confidence"]) > 0
        # every image has its nearest type (AnomalyNCD's protocol); only flagged images
        # have regions, and a typed image's nearest type is its type
        assert r["nearest_type"] in {"0", "1", "2"}
        assert (int(r["n_regions"]) > 0) == anomalous
        if r["cluster"]:
            assert r["nearest_type"] == r["cluster"]
    good = [r for r in rows if r["image"].startswith("good/")]
    bad = [r for r in rows if not r["image"].startswith("good/")]
    # no false alarm; the faintest scratch at this 128 px input may pass
    assert not any(r["is_anomalous"] == "1" for r in good)
    assert sum(r["is_anomalous"] == "1" for r in bad) >= len(bad) - 1
    typed = [r for r in bad if r["cluster"]]
    assert len(typed) >= 7
    truth = [r["image"].split("/")[0] for r in typed]
    assert cluster_metrics(truth, [r["cluster"] for r in typed]).nmi > 0.5
    assert "types.csv" in stdout and "3 types" in stdout


def test_discover_run_report(discovered) -> None:
    out, _, _, _ = discovered
    report = json.loads(out.with_name("types_report.json").read_text())
    rows = _rows(out)
    assert report["n_images"] == len(rows) == 11
    assert report["n_anomalous"] == sum(r["is_anomalous"] == "1" for r in rows) >= 8
    assert report["n_outlier_regions"] >= sum(r["outlier"] == "1" for r in rows)
    assert report["images"]["loaded"] == 11 and report["images"]["skipped"] == []
    assert report["normals"]["loaded"] == 12
    assert report["types"] == [0, 1, 2] and report["new_types"] == [0, 1, 2]
    assert report["k_silhouette"] == {}  # K was given
    lo, hi = ProtoAtlasConfig().discovery.calibration_temperatures
    assert lo <= report["confidence_temperature"] <= hi
    assert report["n_regions"] >= 8 and isinstance(report["threshold"], float)
    assert {"load", "fit", "detect", "regions", "types", "total"} <= set(report["seconds"])


def test_quiet_prints_no_progress_bars(discovered) -> None:
    assert _no_progress_bars(discovered[3])


def test_same_command_twice_gives_identical_csv(demo, discovered, tmp_path) -> None:
    out = tmp_path / "types.csv"
    code, _, stderr = _run(
        _discover_args(
            demo, out, "--clusters", "3", "--quiet", "--save-model", str(tmp_path / "model.npz")
        )
    )
    assert code == 0 and _no_progress_bars(stderr)
    assert out.read_bytes() == discovered[0].read_bytes()


def test_assign_with_the_saved_model(demo, discovered, tmp_path) -> None:
    first, model, _, _ = discovered
    out = tmp_path / "assigned.csv"
    code, stdout, stderr = _run(
        [
            "assign",
            "--model",
            str(model),
            "--images",
            str(demo / "test"),
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0, stderr
    assert _header(out) == COLUMNS
    before = {r["image"]: r for r in _rows(first)}
    after = {r["image"]: r for r in _rows(out)}
    assert set(after) == set(before)
    for name, row in after.items():  # the same images: same detection, same saved types
        assert row["anomaly_score"] == before[name]["anomaly_score"]
        assert row["is_anomalous"] == before[name]["is_anomalous"]
        if before[name]["cluster"]:
            assert row["cluster"] == before[name]["cluster"]
        assert row["nearest_type"] == before[name]["nearest_type"]
    report = json.loads(out.with_name("assigned_report.json").read_text())
    assert report["types"][:3] == [0, 1, 2] and report["normals"] is None
    assert "new)" in stdout


@pytest.mark.parametrize("value", ["zero", "0", "-2", "3.5"])
def test_bad_clusters_value_is_an_argparse_error(demo, tmp_path, capsys, value) -> None:
    with pytest.raises(SystemExit) as exc:
        main(_discover_args(demo, tmp_path / "x.csv", "--clusters", value, "--quiet"))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--clusters" in err and "expected a positive integer or 'auto'" in err
    assert not (tmp_path / "x.csv").exists()


def _write_maps(demo: Path, maps: Path) -> dict[str, str]:
    """Maps from the ground-truth masks (blurred), as .npy or 16-bit PNG; one image gets no
    map and one a map of another aspect ratio. Returns the expected skip reasons."""
    rng = np.random.default_rng(0)
    for i, image in enumerate(sorted((demo / "test").rglob("*.png"))):
        rel = image.relative_to(demo / "test")
        kind, stem = rel.parent.name, rel.stem
        amap = rng.uniform(0.0, 0.02, (S, S)).astype(np.float32)
        if kind != "good":
            mask = cv2.imread(str(demo / "ground_truth" / kind / f"{stem}_mask.png"), 0) > 0
            blob = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 3.0)
            amap += 0.9 * blob / blob.max()
        target = maps / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if rel.as_posix() == "spot/002.png":
            continue  # no map at all
        if rel.as_posix() == "good/001.png":
            amap = amap[:, : S // 2]  # another aspect ratio
        if i % 2:
            np.save(target.with_suffix(".npy"), amap)
        else:
            cv2.imwrite(str(target), np.round(amap * 65535).astype(np.uint16))
    return {"spot/002.png": "no anomaly map", "good/001.png": "another aspect ratio"}


def test_maps_dir_with_npy_and_16bit_png(demo, tmp_path) -> None:
    maps = tmp_path / "maps"
    reasons = _write_maps(demo, maps)
    assert list(maps.rglob("*.npy")) and list(maps.rglob("*.png"))
    out = tmp_path / "types.csv"
    model = tmp_path / "maps_model.npz"
    code, _, stderr = _run(
        _discover_args(
            demo, out, "--maps", str(maps), "--clusters", "3", "--quiet", "--save-model", str(model)
        )
    )
    assert code == 0, stderr
    rows = {r["image"]: r for r in _rows(out)}
    assert len(rows) == 9 and not set(reasons) & set(rows)
    for name, row in rows.items():  # flagged by MEBin from the maps alone
        assert row["is_anomalous"] == ("0" if name.startswith("good/") else "1"), name
    report = json.loads(out.with_name("types_report.json").read_text())
    skipped = {s["name"]: s["reason"] for s in report["images"]["skipped"]}
    assert set(skipped) == set(reasons)
    for name, needle in reasons.items():
        assert needle in skipped[name]
    assert report["threshold"] is None  # no detector was fitted
    assert "skipped 2" in stderr
    # a model made from maps sorts a later batch given its maps...
    again = tmp_path / "assigned.csv"
    code, _, stderr = _run(
        [
            "assign",
            "--model",
            str(model),
            "--images",
            str(demo / "test"),
            "--maps",
            str(maps),
            "--out",
            str(again),
            "--quiet",
        ]
    )
    assert code == 0, stderr
    assigned = {r["image"]: r for r in _rows(again)}
    assert set(assigned) == set(rows)
    for name, row in rows.items():
        assert assigned[name]["is_anomalous"] == row["is_anomalous"]
        if row["cluster"]:
            assert assigned[name]["cluster"] == row["cluster"]
    # ...and without them says what is missing, in one line
    code, _, stderr = _run(
        [
            "assign",
            "--model",
            str(model),
            "--images",
            str(demo / "test"),
            "--out",
            str(tmp_path / "x.csv"),
            "--quiet",
        ]
    )
    assert code == 2 and "no fitted detector" in stderr and "\n" not in stderr.strip()


def test_all_maps_missing_fails_with_one_line(demo, tmp_path) -> None:
    empty = tmp_path / "maps"
    empty.mkdir()
    code, _, stderr = _run(
        _discover_args(demo, tmp_path / "x.csv", "--maps", str(empty), "--quiet")
    )
    err = stderr.strip()
    assert code == 2 and "\n" not in err
    assert err.startswith("protoatlas: error: no image has a usable anomaly map")
    assert not (tmp_path / "x.csv").exists()


def test_zip_input_clusters_auto_and_progress_bars_without_quiet(demo, tmp_path) -> None:
    images = tmp_path / "batch.zip"
    with zipfile.ZipFile(images, "w") as zf:
        for path in sorted((demo / "test").rglob("*.png")):
            zf.write(path, "lot7/" + path.relative_to(demo / "test").as_posix())
    normals = tmp_path / "normals.zip"
    with zipfile.ZipFile(normals, "w") as zf:
        for path in sorted((demo / "train/good").glob("*.png")):
            zf.write(path, path.name)
    out = tmp_path / "types.csv"
    code, _, stderr = _run(
        [
            "discover",
            "--normals",
            str(normals),
            "--images",
            str(images),
            "--out",
            str(out),
            "--clusters",
            "auto",
            *SMALL,
        ]
    )
    assert code == 0, stderr
    rows = _rows(out)
    assert len(rows) == 11 and all(r["image"].startswith("lot7/") for r in rows)
    flagged = {r["image"] for r in rows if r["is_anomalous"] == "1"}
    defects = {f"lot7/{t}/{i:03d}.png" for t in TYPES for i in range(3)}
    assert flagged <= defects and len(defects - flagged) <= 1
    report = json.loads(out.with_name("types_report.json").read_text())
    assert report["k_silhouette"]  # clusters=auto: the silhouette of every K tried
    assert 1 <= len(report["types"]) <= 12
    assert {r["cluster"] for r in rows if r["cluster"]} <= {str(t) for t in report["types"]}
    assert not _no_progress_bars(stderr)  # bars are shown without --quiet
