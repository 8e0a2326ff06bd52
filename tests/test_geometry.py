"""Images of any size and aspect go through detection, discovery, a workspace and the app.

The workspace test ingests, reviews and exports images of 900 x 32, 288 x 122, 256 x 4096
and 1024 x 1024 pixels (height x width) in one batch; the property test pushes random sizes
from 32 to 10,000 px a side and aspects up to 1:32 through the detector and the ingest's
map check.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.config import ProtoAtlasConfig
from engine.synth import SynthConfig, generate
from engine.synth import _write_png as write_png
from storage.ingest import map_fits_image

#: (height, width) of the images the workspace test stores.
SHAPES = [(900, 32), (288, 122), (256, 4096), (1024, 1024)]


def _fast(size: int = 64) -> ProtoAtlasConfig:
    return ProtoAtlasConfig(device="cpu").with_overrides(
        backbone={
            "image_size": size,
            "batch_size": 4,
            "resize_mode": "native",
            "tile_size": 256,
            "tile_margin": 32,
        },
        crops={"output_size": 64},
        discovery={"head_epochs": 3, "n_references": 1},
        detector={"prototypes_per_scale": 8},
    )


@pytest.fixture(scope="module")
def odd_folders(tmp_path_factory) -> tuple[Path, Path]:
    """Normals (3 per shape) and a batch (1 good + 2 defects per shape) of texture scenes."""
    root = tmp_path_factory.mktemp("odd")
    for k, shape in enumerate(SHAPES):
        cfg = SynthConfig(kind="texture", size=shape, min_area_frac=1e-5, max_area_frac=0.3)
        samples = generate(cfg, n_normal=4, n_per_type=1, types=("spot", "missing"), seed=40 + k)
        tag = f"{shape[0]}x{shape[1]}"
        for i, s in enumerate(samples):
            folder = root / ("normals" if s.label == "good" and i < 3 else "batch")
            folder.mkdir(exist_ok=True)
            write_png(folder / f"{tag}_{s.label}_{i}.png", s.image)
    return root / "normals", root / "batch"


@pytest.mark.slow
def test_odd_shapes_are_ingested_reviewed_and_exported(odd_folders, tmp_path) -> None:
    from protoatlas.service import WorkspaceService
    from webapp.render import Renderer

    normals, batch = odd_folders
    with WorkspaceService(tmp_path / "home", "w", config=_fast()) as service:
        report = service.upload_batch(batch, normals, clusters=2, actor="t")
        assert report.n_images == 3 * len(SHAPES) and not report.skipped
        ws = service.ws
        shapes = {
            (d.height, d.width)
            for d in (ws.image_detail(i) for i, *_ in ws.batch_images(report.batch_id))
        }
        assert shapes == set(SHAPES)
        types = ws.list_types()
        assert types, "no types discovered"
        t = types[0]
        ws.confirm_type(t.id, expected_version=t.version, actor="t")
        ws.rename_type(t.id, "blob", expected_version=t.version + 1, actor="t")
        renderer = Renderer(service)
        for image_id, *_ in ws.batch_images(report.batch_id):
            detail = ws.image_detail(image_id)
            heat = renderer.heat(image_id)
            assert heat is not None and heat.shape == (detail.height, detail.width)
            for r in detail.regions:
                assert renderer.crop_path(r.id, image_id, r.box).is_file()
        csv_path = ws.export_assignments(tmp_path / "out.csv", fmt="csv", level="region")
        coco = json.loads(ws.export_coco(tmp_path / "coco.json").read_text())
        assert csv_path.read_text().count("\n") >= 1
        assert {(im["height"], im["width"]) for im in coco["images"]} <= set(SHAPES)
        assert not [p for p in service.doctor() if p.severity == "error"]


@pytest.mark.slow
@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(short=st.integers(32, 400), aspect=st.floats(1.0, 32.0), tall=st.booleans())
def test_any_size_and_aspect_is_detected_and_its_map_fits(
    fitted_small, short, aspect, tall
) -> None:
    long = min(10_000, int(round(short * aspect)))
    shape = (long, short) if tall else (short, long)
    rng = np.random.default_rng(short)
    image = rng.integers(0, 255, (*shape, 3), dtype=np.uint8)
    det = fitted_small
    out = det.score([image])[0]
    assert out.anomaly_map.shape == shape and np.isfinite(out.score)
    from engine.regions import shrink_to

    stored = shrink_to(out.anomaly_map, 256)
    assert map_fits_image(stored.shape, *shape)


def test_the_largest_sides_are_planned_without_decoding() -> None:
    from engine.preprocess import plan_geometry

    for hw in [(10_000, 10_000), (10_000, 313), (32, 1024), (313, 10_000)]:
        geom = plan_geometry(hw, 256, "native", 32)
        assert min(geom.input_hw) == 256 and max(geom.input_hw) % 32 == 0


@pytest.fixture(scope="module")
def fitted_small():
    from engine.detector import PatchCoreDetector

    rng = np.random.default_rng(0)
    normals = [rng.integers(0, 255, (64, 96, 3), dtype=np.uint8) for _ in range(4)]
    det = PatchCoreDetector(_fast())
    det.fit(normals)
    return det


def test_map_fits_image_rounding() -> None:
    assert map_fits_image((256, 108), 288, 122)  # the crash of the issue
    assert map_fits_image((8, 256), 128, 4096)
    assert map_fits_image((256, 9), 7200, 256)
    assert not map_fits_image((256, 150), 288, 122)
    assert not map_fits_image((50, 100), 100, 100)
