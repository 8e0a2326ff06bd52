"""The image context beside the head embedding: shapes, persistence, and that it separates
types a crop alone cannot (engine.image_context)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine.discovery import DiscoveryModel
from engine.image_context import ContextMeans, with_context
from engine.metrics import cluster_metrics
from engine.tokens import RegionTokens
from tests.test_prototrain import analysis_of, config, group_tokens, nearest_type

P, R = 12, 10


def context_of(kind: np.ndarray, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Pooled and residual descriptors of images of ``kind`` (0/1: e.g. two fabrics): one
    direction per kind plus noise, around a shared offset (what centring removes)."""
    rng = np.random.default_rng(seed)
    pooled_dirs = rng.normal(size=(2, P)) * 3.0
    residual_dirs = rng.normal(size=(2, R)) * 3.0
    n = len(kind)
    pooled = 10.0 + pooled_dirs[kind] + rng.normal(0, 0.5, (n, P))
    residual = -4.0 + residual_dirs[kind] + rng.normal(0, 0.5, (n, R))
    return pooled.astype(np.float32), residual.astype(np.float32)


@pytest.fixture(scope="module")
def four_types() -> tuple[RegionTokens, np.ndarray]:
    """Two crop groups x two image kinds = four types; the crops alone tell two apart."""
    tokens, crop_group = group_tokens(n_per_group=16, n_groups=2)
    kind = np.tile(np.repeat([0, 1], 8), 2)
    truth = 2 * crop_group + kind
    return tokens.with_context(*context_of(kind)), truth


def test_context_separates_types_the_crops_share(four_types) -> None:
    tokens, truth = four_types
    with_ctx = DiscoveryModel(config(context_weight=0.5)).discover(analysis_of(tokens), 4)
    alone = DiscoveryModel(config(context_weight=0.0)).discover(analysis_of(tokens), 4)
    nmi_ctx = cluster_metrics(truth, nearest_type(with_ctx)).nmi
    nmi_alone = cluster_metrics(truth, nearest_type(alone)).nmi
    assert nmi_ctx > 0.9 > nmi_alone + 0.2, (nmi_ctx, nmi_alone)
    # the embeddings carry the context parts and stay unit
    assert with_ctx.embeddings.shape == (len(truth), 16 + 2 * 4)  # 4 axes per context part
    assert alone.embeddings.shape == (len(truth), 16)
    np.testing.assert_allclose(np.linalg.norm(with_ctx.embeddings, axis=1), 1.0, atol=1e-5)


def test_embed_reproduces_the_discovery_embeddings(four_types) -> None:
    tokens, _ = four_types
    model = DiscoveryModel(config(context_weight=0.5))
    result = model.discover(analysis_of(tokens), 4)
    emb, _ = model.embed(tokens)
    np.testing.assert_allclose(emb, result.embeddings, atol=1e-5)


def test_saved_model_keeps_the_context_centres(four_types, tmp_path) -> None:
    tokens, _ = four_types
    model = DiscoveryModel(config(context_weight=0.5))
    model.fit([np.full((64, 64, 3), 128, np.uint8)] * 4, fit_detector=False)
    model.discover(analysis_of(tokens), 4)
    loaded = DiscoveryModel.load(model.save(tmp_path / "m.npz"))
    assert loaded.context_means is not None and model.context_means is not None
    np.testing.assert_allclose(loaded.context_means.pooled, model.context_means.pooled)
    np.testing.assert_allclose(loaded.embed(tokens)[0], model.embed(tokens)[0], atol=1e-5)


def test_tokens_without_context_keep_the_vector_size(four_types) -> None:
    """Tokens without context (e.g. from given anomaly maps) embed at the same size, with
    zero context parts, so every batch of a workspace stores one vector size."""
    tokens, _ = four_types
    bare = RegionTokens(tokens.tokens, tokens.anomaly, tokens.regions, tokens.grid)
    assert not bare.has_context and tokens.has_context
    cfg = config(context_weight=0.5, context_components=3)
    model = DiscoveryModel(cfg)
    result = model.discover(analysis_of(bare), 2)
    assert result.embeddings.shape[1] == 16 + 2 * 3 == cfg.discovery.vector_dim
    assert np.abs(result.embeddings[:, 16:]).max() == 0.0
    # a later batch with context embeds at that size too (the model has no axes for it)
    assert model.embed(tokens)[0].shape == (len(tokens), 16 + 2 * 3)
    # a tiny batch: fewer regions than axes still gives the configured size
    tiny = DiscoveryModel(cfg).discover(analysis_of(tokens.select([0, 20])), 2)
    assert tiny.embeddings.shape[1] == 16 + 2 * 3
    off = DiscoveryModel(config(context_weight=0.0))
    assert off.discover(analysis_of(tokens), 2).embeddings.shape[1] == 16
    assert off.config.discovery.vector_dim == 16


def test_tokens_stored_without_context_get_zero_context_parts(four_types) -> None:
    tokens, _ = four_types
    emb = np.random.default_rng(0).normal(size=(len(tokens), 16)).astype(np.float32)
    means = ContextMeans.fit(emb, tokens, 4)
    bare = RegionTokens(tokens.tokens, tokens.anomaly, tokens.regions, tokens.grid)
    out = with_context(emb, bare, means, 0.5)
    assert out.shape == (len(tokens), means.dim)
    assert np.abs(out[:, 16:]).max() == 0.0
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    full = with_context(emb, tokens, means, 0.5)
    # each context part weighs 0.5 against the unit head part before the final norm
    head, ctx = np.linalg.norm(full[:, :16], axis=1), np.linalg.norm(full[:, 16:], axis=1)
    np.testing.assert_allclose(ctx / head, np.sqrt(0.5), rtol=1e-4)


def test_concat_and_select_keep_the_context(four_types) -> None:
    tokens, _ = four_types
    a, b = tokens.select([0, 1, 2]), tokens.select([3, 4])
    joined = RegionTokens.concat([a, b])
    np.testing.assert_array_equal(joined.image_pooled, tokens.image_pooled[:5])
    np.testing.assert_array_equal(joined.image_residual, tokens.image_residual[:5])
    bare = RegionTokens(b.tokens, b.anomaly, b.regions, b.grid)
    assert not RegionTokens.concat([a, bare]).has_context  # all or nothing
    empty = RegionTokens.empty(tokens.tokens.shape[2], tokens.grid)
    assert RegionTokens.concat([empty, a]).has_context  # an empty part does not count


def test_stored_tokens_keep_their_context(four_types, tmp_path) -> None:
    """A batch's tokens are stored with their context (retraining reads them back)."""
    from protoatlas.service import WorkspaceService

    tokens, _ = four_types
    with WorkspaceService(tmp_path, "default") as service:
        ids = np.arange(len(tokens), dtype=np.int64)
        service._save_tokens(1, ids, tokens)
        got = service.load_tokens(1)
    assert got is not None
    back = got[1]
    assert back.has_context
    np.testing.assert_allclose(back.image_pooled, tokens.image_pooled)
    np.testing.assert_allclose(back.image_residual, tokens.image_residual)


def test_detector_context_is_the_weighted_residual_of_its_own_map() -> None:
    """``iter_score(context=True)`` pools the residuals with the image's own patch scores
    (the same descriptor the k-means baseline of eval-discover computes separately)."""
    from engine.detector import PatchCoreDetector, weighted_residual
    from engine.synth import SynthConfig, generate
    from tests.test_discovery import small_discovery_config

    sc = SynthConfig(size=(96, 96))
    normals = [s.image for s in generate(sc, n_normal=6, n_per_type=0, types=(), seed=3)]
    test = [s.image for s in generate(sc, n_normal=1, n_per_type=1, types=("spot",), seed=4)]
    det = PatchCoreDetector(small_discovery_config())
    det.fit(normals)
    plain = list(det.iter_score(test))
    described = list(det.iter_score(test, context=True))
    for p, d, (res, valid) in zip(plain, described, det.residual_features(test)):
        assert p.pooled is None and p.residual is None
        assert d.score == p.score and d.pooled is not None and d.pooled.ndim == 1
        np.testing.assert_allclose(
            d.residual, weighted_residual(res, valid, p.patch_scores), rtol=1e-4, atol=1e-5
        )


def test_a_model_saved_before_the_image_context_loads_without_it(four_types, tmp_path) -> None:
    from engine.detector import read_npz, write_npz

    tokens, _ = four_types
    bare = RegionTokens(tokens.tokens, tokens.anomaly, tokens.regions, tokens.grid)
    model = DiscoveryModel(config(context_weight=0.0))
    model.fit([np.full((64, 64, 3), 128, np.uint8)] * 4, fit_detector=False)
    model.discover(analysis_of(bare), 2)
    arrays = read_npz(model.save(tmp_path / "new.npz"))
    meta = json.loads(arrays["meta"].tobytes().decode())
    del meta["config"]["discovery"]["context_weight"]  # what an older version wrote
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    old = DiscoveryModel.load(write_npz(tmp_path / "old.npz", arrays))
    assert old.context_means is None and old.config.discovery.context_weight == 0.0
    assert old.config.discovery.vector_dim == 16 == old.embed(tokens)[0].shape[1]
    empty = old._empty_result(analysis_of(bare.select([])))
    assert empty.embeddings.shape == (0, 16)
