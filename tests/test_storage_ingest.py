"""Ingest of a batch, retrain results, and the UI reads."""

from __future__ import annotations

import numpy as np
import pytest

from storage import (
    AssignmentsIn,
    ImageIn,
    ModelVersionIn,
    NewType,
    NotFoundError,
    PrototypeIn,
    RegionIn,
    ValidationError,
    Workspace,
    decode_rle,
    doctor,
)
from tests.storage_fixtures import counts, make_batch


@pytest.fixture()
def ws(tmp_path):
    with Workspace.open(tmp_path, "w", embedding_dim=16) as w:
        yield w


def _files(ws):
    return sorted(p.name for p in ws.images.iter_files()), sorted(
        p.name for p in ws.blobs.iter_files()
    )


def _truth(batch):
    """Per type key: (n regions, n distinct images, mean confidence) from the input."""
    a = batch.assignments
    img = np.asarray(batch.regions.image)[a.regions]
    out = {}
    for key in set(a.types):
        sel = np.array([t == key for t in a.types])
        out[key] = (int(sel.sum()), len(set(img[sel].tolist())), float(a.confidence[sel].mean()))
    return out


def test_ingest_stores_everything_and_the_types_page_matches_the_input(ws):
    batch = make_batch(40, n_types=4, with_maps=True)
    calls = []
    batch_id = ws.ingest_batch(batch, progress=lambda *a: calls.append(a))
    c = counts(ws)
    assert (c["batches"], c["images"], c["batch_images"], c["regions"]) == (1, 40, 40, 80)
    assert (c["embeddings"], c["assignments"], c["prototypes"], c["types"]) == (80, 80, 4, 4)
    assert {s for s, _, _ in calls} >= {"files", "regions", "embeddings", "assignments"}
    truth = _truth(batch)
    types = {t.name: t for t in ws.list_types()}
    assert sorted(types) == ["T1", "T2", "T3", "T4"]
    for k in range(4):
        t = types[f"T{k + 1}"]  # keys c0..c3 get T1..T4 in order
        n, n_img, conf = truth[f"c{k}"]
        assert (t.n_regions, t.n_images, t.status, t.version) == (n, n_img, "proposed", 1)
        assert t.mean_confidence == pytest.approx(conf)
    files = _files(ws)
    assert len(files[0]) == 40 and len(files[1]) == 41  # 40 maps + the model
    assert ws.latest_model_version().blob_path.read_bytes() == batch.model.model
    assert [b.name for b in ws.batches()] == ["batch"] and ws.batches()[0].id == batch_id
    entry = ws.audit()[0]
    assert entry.action == "ingest_batch" and entry.target["n_regions"] == 80
    assert doctor(ws) == []


def test_reuploaded_images_are_not_duplicated(ws):
    ws.ingest_batch(make_batch(10, seed=1))
    files_before = _files(ws)[0]
    again = make_batch(10, seed=1, name="again")
    ws.ingest_batch(again)
    c = counts(ws)
    assert c["images"] == 10 and c["batch_images"] == 20 and c["regions"] == 40
    assert _files(ws)[0] == files_before
    assert [t.name for t in sorted(ws.list_types(), key=lambda t: t.id)] == [
        f"T{i}" for i in range(1, 9)
    ]
    assert doctor(ws) == []


def test_identical_content_twice_in_one_batch_is_refused_before_writing(ws):
    batch = make_batch(3)
    batch.images[2].data = batch.images[0].data
    with pytest.raises(
        ValidationError, match="'img/000000.png' and 'img/000002.png' .* identical content"
    ):
        ws.ingest_batch(batch)
    assert counts(ws)["images"] == 0 and _files(ws) == ([], [])


@pytest.mark.parametrize(
    "spoil, message",
    [
        (lambda b: b.regions.boxes.__setitem__((0, 2), 999), "region 0: box .* outside"),
        (lambda b: b.regions.masks.__setitem__(1, np.zeros((3, 3), bool)), "region 1: mask shape"),
        (lambda b: b.assignments.types.__setitem__(0, "nope"), "type key 'nope'"),
        (lambda b: b.assignments.confidence.__setitem__(0, 1.5), "confidence"),
        (lambda b: setattr(b.images[1], "sha256", "0" * 64), "sha256 given"),
        (lambda b: setattr(b.images[1], "name", b.images[0].name), "appears twice"),
        (lambda b: b.new_types.append(NewType("c9", name="good")), "'good' is reserved"),
        (lambda b: setattr(b, "model", None), "embeddings need the model"),
        (lambda b: setattr(b.images[0], "anomaly_map", np.zeros((2, 9))), "anomaly map shape"),
    ],
)
def test_invalid_input_is_refused_and_nothing_changes(ws, spoil, message):
    ws.ingest_batch(make_batch(4, seed=3, name="first"))
    before, files = counts(ws), _files(ws)
    batch = make_batch(5, seed=4)
    spoil(batch)
    with pytest.raises(ValidationError, match=message):
        ws.ingest_batch(batch)
    assert counts(ws) == before
    assert _files(ws) == files  # refused before any file was written


def test_unknown_existing_type_id_rolls_back_the_whole_batch(ws):
    batch = make_batch(5, existing_types=[77])
    with pytest.raises(NotFoundError, match="no type with id 77"):
        ws.ingest_batch(batch)
    assert counts(ws)["regions"] == 0 and counts(ws)["batches"] == 0


def test_type_members_order_and_paging(ws):
    batch = make_batch(60, n_types=2, seed=5)
    ws.ingest_batch(batch)
    t = max(ws.list_types(), key=lambda t: t.n_regions)
    pages = [ws.type_members(t.id, limit=7, offset=o) for o in range(0, t.n_regions, 7)]
    members = [m for p in pages for m in p]
    assert len(members) == t.n_regions == len({m.region_id for m in members})
    conf = [m.confidence for m in members]
    assert conf == sorted(conf, reverse=True)
    border = ws.type_members(t.id, limit=5, order="borderline")
    assert [m.confidence for m in border] == sorted(conf)[:5]
    assert all(m.image_name.startswith("img/") for m in members)
    with pytest.raises(ValidationError, match="order must be"):
        ws.type_members(t.id, order="random")


def test_representatives_are_nearest_to_the_prototype_one_per_image(ws):
    batch = make_batch(50, n_types=3, seed=6)
    ws.ingest_batch(batch)
    t = max(ws.list_types(), key=lambda t: t.n_regions)
    reps = ws.representatives(t.id, n=6)
    assert len(reps) == 6 and len({r.image_id for r in reps}) == 6
    ids, emb = ws.embeddings()
    p_ids, protos, _ = ws.prototypes()
    proto = protos[list(p_ids).index(t.id)]
    members = {m.region_id: m for m in ws.type_members(t.id, limit=10_000)}
    sim = {
        rid: float(
            emb[list(ids).index(rid)]
            @ proto
            / np.linalg.norm(emb[list(ids).index(rid)])
            / np.linalg.norm(proto)
        )
        for rid in members
    }
    best_per_image: dict[int, float] = {}
    for rid, m in members.items():
        best_per_image[m.image_id] = max(best_per_image.get(m.image_id, -2), sim[rid])
    expected = sorted(best_per_image.values(), reverse=True)[:6]
    np.testing.assert_allclose([r.similarity for r in reps], expected, rtol=1e-5)


def test_image_detail_masks_maps_and_file(ws):
    batch = make_batch(6, with_maps=True, seed=7)
    batch_id = ws.ingest_batch(batch)
    region_ids = [r.id for r in ws.regions_for_batch(batch_id)]
    assert len(region_ids) == 12
    detail = ws.image_detail(ws.regions_for_batch(batch_id)[4].image_id)
    assert detail.path.read_bytes() == batch.images[2].data
    assert (detail.width, detail.height) == (32, 24)
    assert [r.id for r in detail.regions] == region_ids[4:6]
    for r, mask in zip(detail.regions, batch.regions.masks[4:6]):
        np.testing.assert_array_equal(decode_rle(r.mask), mask)
        assert r.area == mask.sum() and r.type_name.startswith("T")
    amap = ws.anomaly_map(batch_id, detail.id)
    np.testing.assert_allclose(amap, batch.images[2].anomaly_map, atol=1.0 / 65535)
    assert detail.batches[0].map_path.is_file()
    with pytest.raises(NotFoundError, match="no image with id 999"):
        ws.image_detail(999)


def test_vectors_round_trip_exactly(ws):
    batch = make_batch(20, seed=8)
    ws.ingest_batch(batch)
    ids, emb = ws.embeddings()
    assert ids.tolist() == list(range(1, 41))
    np.testing.assert_array_equal(emb, batch.regions.embeddings)
    p_ids, protos, n = ws.prototypes()
    np.testing.assert_array_equal(protos, np.stack([p.vector for p in batch.prototypes]))
    assert n.tolist() == [p.n_members for p in batch.prototypes]


def test_row_form_regions_image_paths_and_no_model(ws, tmp_path):
    src = tmp_path / "upload" / "a.PNG"
    src.parent.mkdir()
    src.write_bytes(b"\x89PNG-from-disk")
    mask = np.zeros((10, 20), bool)
    mask[2:4, 3:9] = True
    from storage import BatchIngest

    batch_id = ws.ingest_batch(
        BatchIngest(
            name="detect only",
            images=[
                ImageIn(
                    name="a.PNG",
                    width=20,
                    height=10,
                    path=src,
                    anomaly_score=0.9,
                    is_anomalous=True,
                )
            ],
            regions=[RegionIn(image=0, box=(2, 3, 4, 9), anomaly_score=0.8, mask=mask)],
        )
    )
    (region,) = ws.regions_for_batch(batch_id)
    assert region.area == 12 and region.type_id is None and region.source is None
    detail = ws.image_detail(region.image_id)
    assert detail.ext == "png" and detail.path.name.endswith(".png")
    assert ws.latest_model_version() is None
    assert doctor(ws) == []


def test_ingest_into_existing_types_bumps_their_versions(ws):
    ws.ingest_batch(make_batch(10, n_types=2, seed=9))
    t1, t2 = sorted(ws.list_types(), key=lambda t: t.id)
    ws.merge_types(t1.id, t2.id, expected={t1.id: 1, t2.id: 1}, actor="ann")
    batch = make_batch(10, seed=10, name="more", existing_types=[t1.id, t2.id])
    ws.ingest_batch(batch)
    (t,) = ws.list_types()  # t2 was merged: its new members went to t1
    assert t.id == t1.id and t.n_regions == 40 and t.version == 3
    assert ws.audit(type_id=t1.id)[0].action == "ingest_batch"
    assert doctor(ws) == []


def test_retrain_never_overwrites_reviewer_assignments(ws):
    ws.ingest_batch(make_batch(30, n_types=3, seed=11))
    types = sorted(ws.list_types(), key=lambda t: t.id)
    a, b, c = (t.id for t in types)
    mv1 = ws.latest_model_version()
    members_a = [m.region_id for m in ws.type_members(a, limit=1000)]
    moved = members_a[:3]
    ws.move_regions(moved, b, expected={a: 1, b: 1}, actor="ann")
    ws.mark_normal(members_a[3:4], expected={a: 2}, actor="ann")
    ids, emb = ws.embeddings()
    # The retrain puts every region into type c, proposes a new type and re-embeds.
    mv = ws.apply_retrain(
        ModelVersionIn(kind="retrain", model=b"v2", metrics={"loss": 0.1}),
        AssignmentsIn(
            regions=ids[:-1],
            types=[c] * (len(ids) - 2) + ["new"],
            confidence=np.full(len(ids) - 1, 0.7),
        ),
        prototypes=[
            PrototypeIn(type=c, vector=np.ones(16), n_members=5),
            PrototypeIn(type="new", vector=np.zeros(16), n_members=1),
        ],
        embeddings=(ids, emb * 2),
        new_types=[NewType("new", name="fresh")],
    )
    assert ws.latest_model_version().id == mv and ws.model_version(mv).parent == mv1.id
    after = {r.id: r for r in ws.regions_for_batch(1, with_masks=False)}
    for rid in moved:
        assert (after[rid].type_id, after[rid].source) == (b, "reviewer")
    assert after[members_a[3]].is_normal and after[members_a[3]].type_id is None
    last = ids[-1]  # not in the retrain: keeps its old assignment
    assert after[last].source == "model" and after[last].type_id in (a, b, c)
    changed = [r for r in after.values() if r.source == "model" and r.id != last]
    assert {r.type_id for r in changed} <= {c, types[-1].id + 1}
    assert {t.name for t in ws.list_types()} >= {"fresh"}
    entry = ws.audit(action="apply_retrain")[0]
    assert entry.target["n_kept_reviewer"] == 4
    e_ids, e2 = ws.embeddings(mv)
    np.testing.assert_array_equal(e2, emb * 2)
    assert ws.embeddings(mv1.id)[1].shape == emb.shape  # the old version is kept
    new_versions = {t.id: t.version for t in ws.list_types()}
    # a: move, mark_normal, retrain; b: move, retrain; c: retrain (each bumps once)
    assert (new_versions[a], new_versions[b], new_versions[c]) == (4, 3, 2)
    assert doctor(ws) == []


def test_retrain_with_unknown_region_changes_nothing(ws):
    ws.ingest_batch(make_batch(5, seed=12))
    before = counts(ws)
    with pytest.raises(NotFoundError, match="region id"):
        ws.apply_retrain(
            ModelVersionIn(kind="retrain"),
            AssignmentsIn(
                regions=np.array([1, 999]), types=[None, None], confidence=np.array([0.5, 0.5])
            ),
        )
    assert counts(ws) == before


def test_a_second_batch_can_reuse_a_model_version_but_not_its_prototypes(ws):
    ws.ingest_batch(make_batch(5, n_types=2, seed=13))
    ids = [t.id for t in sorted(ws.list_types(), key=lambda t: t.id)]
    again = make_batch(5, seed=14, name="assign-only", existing_types=ids)
    again.model = 1  # embedded by the existing model version 1
    before = counts(ws)
    with pytest.raises(ValidationError, match="model version 1 already has a prototype for type"):
        ws.ingest_batch(again)
    assert counts(ws) == before
    again.prototypes = []
    ws.ingest_batch(again)
    assert counts(ws)["model_versions"] == 1 and counts(ws)["embeddings"] == 20
    assert ws.batches()[1].model_version == 1
