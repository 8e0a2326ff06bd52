"""The Image tab's viewer: its layers (full image, heat map, outlines) and the order its
next / previous keys walk (issue: review screens, "look closely")."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image

from benchmarks.bench_webapp import build_workspace
from protoatlas.service import WorkspaceService
from webapp.views import Views


@pytest.fixture()
def views(tmp_path):
    ws = build_workspace(tmp_path, n_images=6, n_types=2, side=96)
    service = WorkspaceService.over(ws)
    yield Views(service)
    service.close()


def _first(views: Views):
    r = views.service.regions_for_batch(views.service.batches()[0].id, with_masks=True)[0]
    return r, views.service.region_mask(r.mask).astype(bool)


def test_the_viewer_stacks_the_full_image_under_its_two_layers(views) -> None:
    r, _ = _first(views)
    html = views.viewer_html(r.image_id)
    assert f"pa/full/{r.image_id}.jpg" in html
    assert re.search(rf"pa/heat/{r.image_id}\.png\?v=\w+", html)
    assert re.search(rf"pa/outline/{r.image_id}\.png\?v=\w+", html)
    assert "data-w='96' data-h='96'" in html
    for control in ("pa-v-heat", "pa-v-outline", "pa-v-opacity", "data-zoom='1'"):
        assert control in html


def test_the_layer_stamp_changes_when_a_region_changes_type(views) -> None:
    r, _ = _first(views)
    before = views.viewer_html(r.image_id)
    views.service.rename_type(r.type_id, "renamed", actor="ann")
    after = views.viewer_html(r.image_id)
    stamp = re.compile(r"outline/\d+\.png\?v=(\w+)")
    assert stamp.search(before).group(1) != stamp.search(after).group(1)


def test_the_full_layer_is_the_image_at_its_own_size(views) -> None:
    r, _ = _first(views)
    with Image.open(io.BytesIO(views.renderer.full_bytes(r.image_id))) as im:
        assert im.size == (96, 96)
    with Image.open(views.service.image_path(r.image_id)) as src:
        a = np.asarray(src.convert("RGB"), np.float32)
    with Image.open(io.BytesIO(views.renderer.full_bytes(r.image_id))) as im:
        b = np.asarray(im.convert("RGB"), np.float32)
    assert np.abs(a - b).mean() < 6  # JPEG of pixel noise (sigma 6), not a thumbnail


def test_the_heat_layer_is_opaque_on_the_defect_and_clear_far_from_it(views) -> None:
    r, mask = _first(views)
    with Image.open(io.BytesIO(views.renderer.heat_layer_bytes(r.image_id))) as im:
        assert im.mode == "RGBA"
        rgba = np.asarray(im)
    f = rgba.shape[0] // mask.shape[0]
    assert f >= 2 and rgba.shape[:2] == (96 * f, 96 * f)  # small images are drawn larger
    alpha = rgba[..., 3][::f, ::f]
    ys, xs = np.nonzero(mask)
    assert alpha[int(ys.mean()), int(xs.mean())] > 200
    far = np.ones_like(mask)
    far[max(ys.min() - 20, 0) : ys.max() + 20, max(xs.min() - 20, 0) : xs.max() + 20] = False
    assert alpha[far].max() == 0


def test_the_outline_layer_draws_the_region_edge_only(views) -> None:
    r, mask = _first(views)
    with Image.open(io.BytesIO(views.renderer.outline_layer_bytes(r.image_id))) as im:
        rgba = np.asarray(im)
    f = rgba.shape[0] // mask.shape[0]
    alpha = rgba[..., 3]
    big = np.kron(mask, np.ones((f, f), bool))
    ys, xs = np.nonzero(big)
    cy, cx = int(ys.mean()), int(xs.mean())
    assert alpha[cy, cx] == 0  # the inside stays clear
    edge = alpha[ys.min() : ys.max() + 1, cx]
    assert edge.max() == 255  # the outline crosses the column through the centre
    assert alpha[big].mean() < 255 * 0.6  # an outline, not a filled mask


def test_next_and_previous_walk_the_pickers_order_and_stop_at_its_ends(views) -> None:
    order = [iid for _, iid in views.batch_images()]
    assert len(order) == 6
    assert views.step_image(order[0], 1) == order[1]
    assert views.step_image(order[2], -1) == order[1]
    assert views.step_image(order[0], -1) == order[0]
    assert views.step_image(order[-1], 1) == order[-1]
    assert views.step_image("not an id", 1) == order[0]
    assert views.step_image(None, 1) == order[0]


def test_warming_draws_the_first_browse_pages_ahead(views) -> None:
    folder = views.renderer.cache_dir / "images"
    assert not folder.exists() or not any(folder.iterdir())
    views.warm()
    assert len(list(folder.glob("*.jpg"))) == 6  # every image: fewer than one page
