"""The command line contract: CSV columns, run report, bad inputs, one-line errors."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from engine.synth import SynthConfig, write_mvtec
from protoatlas.cli import main
from tests.conftest import TEST_IMAGE_SIZE

SMALL = ["--image-size", str(TEST_IMAGE_SIZE), "--quiet", "--device", "cpu"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    cfg = SynthConfig(size=(TEST_IMAGE_SIZE, TEST_IMAGE_SIZE))
    return write_mvtec(root, cfg, n_train=12, n_test_good=3, n_per_type=2, seed=1)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_detect_writes_one_row_per_image_with_paths_relative_to_images(
    demo, tmp_path, capsys
) -> None:
    out = tmp_path / "scores.csv"
    maps = tmp_path / "maps"
    code = main(
        [
            "detect",
            "--normals",
            str(demo / "train/good"),
            "--images",
            str(demo / "test"),
            "--out",
            str(out),
            "--maps",
            str(maps),
            "--labels",
            str(demo / "labels.csv"),
            *SMALL,
        ]
    )
    assert code == 0
    rows = _rows(out)
    assert list(rows[0]) == ["image", "anomaly_score", "is_anomalous"]
    assert len(rows) == 3 + 5 * 2
    names = {r["image"] for r in rows}
    assert "good/000.png" in names and "scratch/001.png" in names
    by_type = {}
    for r in rows:
        by_type.setdefault(r["image"].split("/")[0], []).append(float(r["anomaly_score"]))
    assert min(min(v) for k, v in by_type.items() if k != "good") > max(by_type["good"])
    assert sum(int(r["is_anomalous"]) for r in rows if not r["image"].startswith("good")) >= 8
    heat = cv2.imread(str(maps / "scratch" / "000.png"))
    assert heat is not None and heat.shape == (TEST_IMAGE_SIZE, TEST_IMAGE_SIZE, 3)
    report = json.loads((tmp_path / "scores_report.json").read_text())
    # every normal is scored as unseen, against the bank without its fold
    assert report["images"]["skipped"] == [] and report["fit"]["n_calibration_images"] == 12
    assert report["fit"]["n_folds"] == 5
    assert "image AUROC 1.0000" in capsys.readouterr().out


def _bad_batch(folder: Path, demo: Path) -> None:
    """Good images in several modes plus every kind of bad file."""
    folder.mkdir()
    rgb = np.asarray(Image.open(demo / "test/spot/000.png"))
    Image.fromarray(rgb).save(folder / "rgb.png")
    Image.fromarray(rgb).convert("RGBA").save(folder / "rgba.png")
    gray16 = (rgb.mean(axis=2) * 257).astype(np.uint16)
    Image.fromarray(gray16).save(folder / "gray16.png")
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.png").write_text("this is not an image")
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    (folder / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])


def test_bad_files_are_skipped_with_reasons_and_good_modes_are_scored(
    demo, tmp_path, capsys
) -> None:
    batch = tmp_path / "batch"
    _bad_batch(batch, demo)
    out = tmp_path / "scores.csv"
    code = main(
        [
            "detect",
            "--normals",
            str(demo / "train/good"),
            "--images",
            str(batch),
            "--out",
            str(out),
            *SMALL,
        ]
    )
    assert code == 0
    rows = {r["image"]: r for r in _rows(out)}
    assert set(rows) == {"rgb.png", "rgba.png", "gray16.png"}
    # RGBA drops alpha: same pixels as the RGB file, hence the same score
    assert rows["rgba.png"]["anomaly_score"] == rows["rgb.png"]["anomaly_score"]
    report = json.loads((tmp_path / "scores_report.json").read_text())
    reasons = {s["name"]: s["reason"] for s in report["images"]["skipped"]}
    assert reasons["empty.png"] == "empty file"
    assert "not a recognised image" in reasons["notes.png"]
    assert "truncated" in reasons["truncated.png"]
    err = capsys.readouterr().err
    assert "skipped 3" in err and "empty.png" in err


def test_nothing_usable_fails_with_one_line(demo, tmp_path, capsys) -> None:
    batch = tmp_path / "bad"
    batch.mkdir()
    (batch / "a.png").write_bytes(b"")
    (batch / "b.jpg").write_text("text")
    code = main(
        [
            "detect",
            "--normals",
            str(demo / "train/good"),
            "--images",
            str(batch),
            "--out",
            str(tmp_path / "x.csv"),
            *SMALL,
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("protoatlas: error: no usable images") and "\n" not in err
    assert "a.png (empty file)" in err
    assert not (tmp_path / "x.csv").exists()


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--device", "cuda"], "CUDA is not available"),
        (["--backbone", "nope_net"], "efficientnet_lite0"),
    ],
)
def test_configuration_errors_are_one_line(demo, tmp_path, capsys, args, needle) -> None:
    import torch

    if args[0] == "--device" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code = main(
        [
            "detect",
            "--normals",
            str(demo / "train/good"),
            "--images",
            str(demo / "test"),
            "--out",
            str(tmp_path / "x.csv"),
            "--quiet",
            *args,
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and needle in err and "\n" not in err


@pytest.mark.parametrize("value", ["-0.5", "nan", "heavy"])
def test_image_context_weight_must_be_a_number_at_least_zero(capsys, value) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["discover", "--normals", "n", "--images", "i", "--image-context-weight", value])
    assert exc.value.code == 2
    assert "--image-context-weight" in capsys.readouterr().err


def test_image_context_weight_reaches_the_discovery_config() -> None:
    from protoatlas.cli import _config_from, build_parser

    args = build_parser().parse_args(
        [
            "discover",
            "--normals",
            "n",
            "--images",
            "i",
            "--out",
            "o.csv",
            "--image-context-weight",
            "0",
        ]
    )
    assert _config_from(args).discovery.context_weight == 0.0
    plain = build_parser().parse_args(
        ["discover", "--normals", "n", "--images", "i", "--out", "o.csv"]
    )
    assert _config_from(plain).discovery.context_weight == 0.5


def test_missing_folder_is_named(tmp_path, capsys) -> None:
    code = main(
        [
            "detect",
            "--normals",
            str(tmp_path / "nowhere"),
            "--images",
            str(tmp_path),
            "--out",
            str(tmp_path / "x.csv"),
            "--quiet",
        ]
    )
    assert code == 2 and "nowhere" in capsys.readouterr().err


def test_zip_batch_and_traversal_archive(demo, tmp_path, capsys) -> None:
    good_zip = tmp_path / "batch.zip"
    with zipfile.ZipFile(good_zip, "w") as zf:
        zf.write(demo / "test/spot/000.png", "lot7/spot.png")
        zf.write(demo / "test/good/000.png", "lot7/deeper/ok.png")
    out = tmp_path / "scores.csv"
    assert (
        main(
            [
                "detect",
                "--normals",
                str(demo / "train/good"),
                "--images",
                str(good_zip),
                "--out",
                str(out),
                *SMALL,
            ]
        )
        == 0
    )
    assert sorted(r["image"] for r in _rows(out)) == ["lot7/deeper/ok.png", "lot7/spot.png"]
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../../etc/evil.png", b"x")
    code = main(
        [
            "detect",
            "--normals",
            str(demo / "train/good"),
            "--images",
            str(evil),
            "--out",
            str(tmp_path / "y.csv"),
            *SMALL,
        ]
    )
    assert code == 2 and "../../etc/evil.png" in capsys.readouterr().err


def test_save_model_and_eval_detect(demo, tmp_path, capsys) -> None:
    model = tmp_path / "m.npz"
    assert (
        main(
            [
                "detect",
                "--normals",
                str(demo / "train/good"),
                "--images",
                str(demo / "test/good"),
                "--out",
                str(tmp_path / "s.csv"),
                "--save-model",
                str(model),
                *SMALL,
            ]
        )
        == 0
    )
    assert model.is_file()
    result = tmp_path / "eval.json"
    assert main(["eval-detect", "--mvtec", str(demo), "--json", str(result), *SMALL]) == 0
    got = json.loads(result.read_text())
    assert got["image_auroc"] >= 0.95 and got["pixel_auroc"] >= 0.9 and got["aupro"] > 0.5
    assert got["n_train"] == 12 and got["n_test"] == 13
    assert "AUPRO(0.3)" in capsys.readouterr().out


def test_synth_writes_every_generated_kind(tmp_path) -> None:
    from engine.synth_surfaces import TILE_DEFECTS

    assert main(["synth", "--out", str(tmp_path / "t"), "--kind", "tile", "--quiet"]) == 0
    test = tmp_path / "t" / "test"
    assert sorted(p.name for p in test.iterdir()) == sorted((*TILE_DEFECTS, "good"))
    shapes = {Image.open(p).size for p in (test / "crack").iterdir()}
    modes = {Image.open(p).mode for p in (test / "crack").iterdir()}
    assert len(shapes) > 1 and modes == {"L"}
