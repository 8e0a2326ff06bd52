"""The suite evaluation: suite files, one row per set plus the mean, both discovery protocols."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from engine.synth import SynthConfig, write_mvtec
from protoatlas import evaluation as ev
from protoatlas.cli import main
from tests.conftest import TEST_IMAGE_SIZE
from tests.service_fixtures import fast_config

SMALL = ["--image-size", str(TEST_IMAGE_SIZE), "--quiet", "--device", "cpu"]
TYPES = ("scratch", "spot", "missing")


@pytest.fixture(scope="module")
def two_sets(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("suite")
    cfg = SynthConfig(size=(TEST_IMAGE_SIZE, TEST_IMAGE_SIZE))
    return [
        write_mvtec(
            root / f"set{seed}",
            cfg,
            n_train=10,
            n_test_good=3,
            n_per_type=4,
            types=TYPES,
            seed=seed,
        )
        for seed in (1, 2)
    ]


def test_a_suite_file_resolves_paths_beside_it_and_names_bad_rows(tmp_path) -> None:
    (tmp_path / "data").mkdir()
    suite = tmp_path / "suite.csv"
    suite.write_text(
        "# comment\npath,clusters,name\ndata,3,mine\nsynth:pcb:4,6,\n/abs/where,auto,\n"
    )
    sets = ev.read_suite(suite)
    assert [s.name for s in sets] == ["mine", "synth_pcb_4", "where"]
    assert sets[0].path == str((tmp_path / "data").resolve()) and sets[0].clusters == 3
    assert sets[1].path == "synth:pcb:4" and sets[2].clusters == "auto"
    suite.write_text("path,clusters\ndata,three\n")
    with pytest.raises(ValueError, match=r"suite.csv, row 2: clusters"):
        ev.read_suite(suite)
    suite.write_text("path,clusters\n,3\n")
    with pytest.raises(ValueError, match=r"row 2: empty path"):
        ev.read_suite(suite)
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        ev.read_suite(tmp_path / "nope.csv")
    with pytest.raises(ValueError, match="unknown generated set"):
        with ev.materialised("synth:marble"):
            pass


def test_eval_detect_prints_one_row_per_set_and_the_mean(two_sets, tmp_path, capsys) -> None:
    out = tmp_path / "detect.json"
    args = ["eval-detect", "--json", str(out), *SMALL]
    for root in two_sets:
        args += ["--mvtec", str(root)]
    assert main(args) == 0
    got = json.loads(out.read_text())
    assert [r["data"] for r in got] == ["set1", "set2"]
    for r in got:
        assert 0.0 <= r["recall"] <= 1.0 and 0.0 <= r["false_alarm_rate"] <= 1.0
        assert r["image_auroc"] > 0.8 and r["pixel_auroc"] > 0.8
        assert set(r["at_rates"]) == {"0.01", "0.02", "0.05", "0.1"}
    table = capsys.readouterr().out
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert [r.split("|")[1].strip() for r in rows] == ["data", "set1", "set2", "mean"]
    mean = sum(r["image_auroc"] for r in got) / 2
    assert f"{mean:.3f}" in rows[-1]


def test_eval_discover_reports_both_protocols_and_the_k_found_with_auto(two_sets) -> None:
    res = ev.eval_discover(two_sets[0], fast_config(), clusters=3, baselines=False)
    assert res.n_defect_images == 12 and res.n_types == 3
    assert {(m.method, m.protocol) for m in res.methods} == {
        (ev.FULL_METHOD, "typed"),
        (ev.FULL_METHOD, "product"),
    }
    typed = res.method(ev.FULL_METHOD, "typed")
    assert typed.k_found == 3 and res.k_auto >= 1
    # every defective image gets a type in the typed protocol: these synthetic types are easy
    assert typed.nmi > 0.5 and typed.accuracy > 0.6
    row = ev.discover_row(res)
    assert row["typed_nmi"] == typed.nmi and row["k_auto"] == res.k_auto
    assert math.isnan(row["baseline_typed_nmi"])
