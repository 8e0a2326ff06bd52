"""Prototype learning on cached tokens: recovery of known groups, labels, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.config import ProtoAtlasConfig
from engine.discovery import NO_TYPE, BatchAnalysis, DiscoveryModel, RegionRecord
from engine.metrics import cluster_metrics
from engine.protonet import PoolSettings, PrototypeHead
from engine.prototrain import embed_all, train_head
from engine.tokens import RegionTokens

GRID = (4, 4)
T, C = 16, 32
N_PER_GROUP = 12
N_GROUPS = 3
#: The 4 anomaly tokens of every crop (the centre of the 4 x 4 grid).
CENTRE = np.array([5, 6, 9, 10])


def group_tokens(
    seed: int = 0, n_per_group: int = N_PER_GROUP, n_groups: int = N_GROUPS
) -> tuple[RegionTokens, np.ndarray]:
    """Crops whose anomaly tokens carry one of ``n_groups`` orthogonal directions (plus
    noise); the other tokens are small shared noise. Returns tokens and the true group."""
    rng = np.random.default_rng(seed)
    directions = np.linalg.qr(rng.normal(size=(C, n_groups)))[0].T * 6.0
    truth = np.repeat(np.arange(n_groups), n_per_group)
    n = len(truth)
    tokens = rng.normal(0, 0.3, (n, T, C))
    tokens[:, CENTRE] += directions[truth][:, None, :] + rng.normal(0, 1.0, (n, len(CENTRE), C))
    anomaly = np.full((n, T), -0.5)
    anomaly[:, CENTRE] = 1.5
    anomaly = (anomaly - anomaly.mean(1, keepdims=True)) / anomaly.std(1, keepdims=True)
    regions = np.zeros((n, T, 3))
    regions[:, :, 1] = 1.0
    regions[:, CENTRE] = (0.0, 0.0, 1.0)
    return RegionTokens(
        tokens.astype(np.float32), anomaly.astype(np.float32), regions.astype(np.float32), GRID
    ), truth


def analysis_of(tokens: RegionTokens) -> BatchAnalysis:
    """One region per image, every image anomalous."""
    n = len(tokens)
    records = [
        RegionRecord(i, (0, 0, 10, 10), (0, 0, 10, 10), np.ones((10, 10), bool), 100, 1.0, False)
        for i in range(n)
    ]
    return BatchAnalysis(
        shapes=[(10, 10)] * n,
        scores=np.ones(n, np.float32),
        is_anomalous=np.ones(n, bool),
        maps=[np.zeros((10, 10))] * n,
        regions=records,
        tokens=tokens,
        value_range=(0.0, 1.0),
    )


def config(**discovery) -> ProtoAtlasConfig:
    # the head alone: these tokens carry no image context (tests/test_image_context.py)
    base = {"embedding_dim": 16, "head_epochs": 8, "scorer_hidden": 16, "context_weight": 0.0}
    return ProtoAtlasConfig(device="cpu").with_overrides(discovery={**base, **discovery})


def head_for(cfg: ProtoAtlasConfig, n_prototypes: int = 3, seed: int = 0) -> PrototypeHead:
    d = cfg.discovery
    return PrototypeHead(
        C,
        d.embedding_dim,
        n_prototypes,
        PoolSettings(
            d.guidance_beta, d.region_factors, d.residual_power, d.learn_factors, d.scorer_hidden
        ),
        seed,
    )


def nearest_type(result) -> np.ndarray:
    """Type id of each region's nearest prototype (the grouping, outlier flags aside)."""
    return result.type_ids[(result.embeddings @ result.prototypes.T).argmax(axis=1)]


@pytest.fixture(scope="module")
def groups() -> tuple[RegionTokens, np.ndarray]:
    return group_tokens()


@pytest.mark.parametrize("epochs", [0, 8])  # training-free and trained
def test_discover_recovers_three_groups(groups, epochs) -> None:
    tokens, truth = groups
    model = DiscoveryModel(config(head_epochs=epochs))
    result = model.discover(analysis_of(tokens), 3)
    assert len(result.type_ids) == 3 and result.new_type_ids == [0, 1, 2]
    scores = cluster_metrics(truth, nearest_type(result))
    assert scores.ari > 0.9, scores
    assert result.region_outlier.mean() <= 0.1  # few members are left out as outliers
    kept = ~result.region_outlier
    assert (result.region_type[kept] == nearest_type(result)[kept]).all()
    assert (result.image_type == result.region_type).all()  # one region per image
    assert (result.image_outlier == result.region_outlier).all()
    assert ((result.region_confidence >= 0) & (result.region_confidence <= 1)).all()
    assert result.embeddings.shape == (len(truth), 16)
    np.testing.assert_allclose(np.linalg.norm(result.embeddings, axis=1), 1.0, atol=1e-5)
    assert (result.train.epochs == epochs) and (epochs == 0 or np.isfinite(result.train.final_loss))
    # the attention of every region concentrates on its anomaly tokens
    assert (result.attention[:, CENTRE].sum(axis=1) > 0.5).all()


def test_auto_finds_three_groups(groups) -> None:
    tokens, truth = groups
    result = DiscoveryModel(config()).discover(analysis_of(tokens), "auto")
    assert len(result.type_ids) == 3 and max(result.k_scores, key=result.k_scores.get) == 3
    assert cluster_metrics(truth, nearest_type(result)).ari > 0.9


def test_labelled_regions_keep_their_labels(groups) -> None:
    tokens, truth = groups
    labels = np.full(len(truth), -1)
    labels[[0, 1, 2]] = 0  # three regions of group 0, known type 0
    labels[[12, 13]] = 1  # two regions of group 1, known type 1
    labels[30] = 0  # a reviewer put a region that looks like group 2 into type 0
    model = DiscoveryModel(config())
    result = model.discover(analysis_of(tokens), 1, labels=labels)
    labelled = labels >= 0
    assert (result.region_type[labelled] == labels[labelled]).all()
    assert not result.region_outlier[labelled].any()
    assert (result.image_type[labelled] == labels[labelled]).all()
    # known types 0 and 1 plus one novel type; the rest still groups by truth
    assert len(result.type_ids) == 3
    rest = ~labelled
    assert cluster_metrics(truth[rest], nearest_type(result)[rest]).ari > 0.8


def test_supervised_terms_change_training(groups) -> None:
    tokens, truth = groups
    cfg = config()
    labels = np.where(np.arange(len(truth)) % 3 == 0, truth, -1)
    heads = []
    for lab in (np.full(len(truth), -1), labels):
        head = head_for(cfg)
        head.set_prototypes(torch.eye(3, 16))
        report = train_head(head, tokens, lab, 3, cfg.discovery, seed=0, device=torch.device("cpu"))
        assert report.epochs == 8 and len(report.losses) == 8
        assert np.isfinite(report.losses).all()
        heads.append(head)
    assert not torch.equal(heads[0].projector.weight, heads[1].projector.weight)


def test_training_is_deterministic_for_a_seed(groups) -> None:
    tokens, truth = groups
    cfg = config()

    def run(seed: int, global_seed: int) -> np.ndarray:
        torch.manual_seed(global_seed)  # whatever ran before must not matter
        head = head_for(cfg, seed=seed)
        head.set_prototypes(torch.eye(3, 16))
        train_head(
            head,
            tokens,
            np.full(len(truth), -1),
            0,
            cfg.discovery,
            seed=seed,
            device=torch.device("cpu"),
        )
        return embed_all(head, tokens, torch.device("cpu"))[0]

    first, second = run(0, 1), run(0, 2)
    assert np.array_equal(first, second)
    assert not np.array_equal(first, run(1, 1))
    # and through DiscoveryModel: same seed, same types and embeddings
    a = DiscoveryModel(config()).discover(analysis_of(tokens), 3)
    torch.manual_seed(123)
    b = DiscoveryModel(config()).discover(analysis_of(tokens), 3)
    assert np.array_equal(a.embeddings, b.embeddings)
    assert np.array_equal(a.region_type, b.region_type)


def test_train_head_checks_labels_and_skips_when_nothing_to_train(groups) -> None:
    tokens, truth = groups
    cfg = config()
    head = head_for(cfg)
    with pytest.raises(ValueError, match="35 labels for 36 regions"):
        train_head(
            head, tokens, np.full(35, -1), 0, cfg.discovery, seed=0, device=torch.device("cpu")
        )
    before = {k: v.clone() for k, v in head.state_dict().items()}
    report = train_head(
        head,
        tokens,
        np.full(36, -1),
        0,
        cfg.discovery,
        seed=0,
        device=torch.device("cpu"),
        epochs=0,
    )
    assert report.epochs == 0 and report.losses == []
    assert all(torch.equal(before[k], v) for k, v in head.state_dict().items())
    one = tokens.select([0])
    assert (
        train_head(
            head, one, np.full(1, -1), 0, cfg.discovery, seed=0, device=torch.device("cpu")
        ).epochs
        == 0
    )


def test_discover_with_no_regions_gives_an_empty_result() -> None:
    empty = RegionTokens.empty(C, GRID)
    analysis = BatchAnalysis(
        shapes=[(10, 10)] * 2,
        scores=np.zeros(2, np.float32),
        is_anomalous=np.zeros(2, bool),
        maps=[np.zeros((10, 10))] * 2,
        regions=[],
        tokens=empty,
        value_range=(0.0, 1.0),
    )
    result = DiscoveryModel(config()).discover(analysis, 3)
    assert len(result.region_type) == 0 and (result.image_type == NO_TYPE).all()
    assert result.embeddings.shape == (0, 16)
