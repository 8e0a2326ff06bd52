"""Guided attention pooling (anomaly map + Region Guidance Factor) and the prototype head."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.protonet import GuidedAttentionPool, PoolSettings, PrototypeHead, sharpen_temperature

T, C = 16, 8
#: Tokens 0..3 are the anomaly region, 4..11 object, 12..15 background.
ANOMALY_TOKENS = np.arange(4)


def settings(beta=1.0, factors=(-1.0, 0.0, 1.0), power=0.0, learn=True) -> PoolSettings:
    return PoolSettings(beta, factors, power, learn, scorer_hidden=8)


def inputs(n: int = 3, seed: int = 0):
    """Random tokens of equal norm (so the residual-norm term is uniform), no anomaly map,
    and one-hot region fractions."""
    gen = torch.Generator().manual_seed(seed)
    tokens = F.normalize(torch.randn(n, T, C, generator=gen), dim=-1) * 5.0
    anomaly = torch.zeros(n, T)
    regions = torch.zeros(n, T, 3)
    regions[:, :4, 2] = 1.0
    regions[:, 4:12, 1] = 1.0
    regions[:, 12:, 0] = 1.0
    return tokens, anomaly, regions


def anomaly_mass(pool: GuidedAttentionPool, tokens, anomaly, regions) -> np.ndarray:
    with torch.no_grad():
        _, weights = pool(tokens, anomaly, regions)
    assert torch.allclose(weights.sum(dim=1), torch.ones(len(weights)))
    return weights[:, ANOMALY_TOKENS].sum(dim=1).numpy()


@pytest.mark.parametrize("learn", [True, False])
def test_mass_on_anomaly_tokens_rises_with_the_anomaly_guidance_factor(learn) -> None:
    tokens, anomaly, regions = inputs()
    masses = [
        anomaly_mass(
            GuidedAttentionPool(C, settings(factors=(-1.0, 0.0, g), learn=learn)),
            tokens,
            anomaly,
            regions,
        )
        for g in (-1.0, 0.0, 0.5, 1.0, 2.0, 4.0)
    ]
    for lower, higher in zip(masses, masses[1:]):
        assert (higher > lower).all()
    # gamma = 0 for anomaly and object: uniform over those 12 tokens (background is -1)
    assert masses[1] == pytest.approx(4 / (12 + 4 * np.exp(-1.0)), rel=1e-5)
    assert (masses[-1] > 0.9).all()


def test_mass_rises_with_beta_when_the_map_peaks_on_the_anomaly_tokens() -> None:
    tokens, _, regions = inputs()
    regions = torch.zeros_like(regions)
    regions[..., 1] = 1.0  # all object: only the map guides
    amap = torch.full((3, T), -0.5)
    amap[:, ANOMALY_TOKENS] = 1.5
    amap = (amap - amap.mean(1, keepdim=True)) / amap.std(1, keepdim=True)
    masses = [
        anomaly_mass(GuidedAttentionPool(C, settings(beta=b)), tokens, amap, regions)
        for b in (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
    ]
    assert masses[0] == pytest.approx(4 / T, rel=1e-5)  # beta = 0: uniform
    for lower, higher in zip(masses, masses[1:]):
        assert (higher > lower).all()


def test_untrained_scorer_contributes_zero_and_logits_follow_the_formula() -> None:
    tokens, anomaly, regions = inputs()
    anomaly = torch.randn(3, T, generator=torch.Generator().manual_seed(3))
    tokens = tokens * torch.linspace(0.5, 2.0, T)[None, :, None]  # unequal norms
    pool = GuidedAttentionPool(C, settings(beta=0.7, factors=(-1.0, 0.2, 1.3), power=2.0))
    with torch.no_grad():
        assert torch.count_nonzero(pool.scorer(pool.norm(tokens))) == 0
        expected = (
            0.7 * anomaly
            + regions @ torch.tensor([-1.0, 0.2, 1.3])
            + 2.0 * torch.log(tokens.norm(dim=-1) + 1e-6)
        )
        assert torch.allclose(pool.logits(tokens, anomaly, regions), expected, atol=1e-5)


def test_residual_power_favours_large_residual_tokens() -> None:
    tokens, anomaly, regions = inputs()
    regions = torch.zeros_like(regions)
    regions[..., 1] = 1.0
    tokens[:, ANOMALY_TOKENS] *= 3.0
    flat = anomaly_mass(GuidedAttentionPool(C, settings(power=0.0)), tokens, anomaly, regions)
    sharp = anomaly_mass(GuidedAttentionPool(C, settings(power=2.0)), tokens, anomaly, regions)
    assert flat == pytest.approx(4 / T, rel=1e-5)
    # weight proportional to |x|^2: 4 * 9 / (4 * 9 + 12)
    assert sharp == pytest.approx(36 / 48, rel=1e-4)


def test_masked_tokens_get_zero_weight() -> None:
    tokens, anomaly, regions = inputs()
    valid = torch.ones(3, T, dtype=torch.bool)
    valid[:, ANOMALY_TOKENS] = False  # the tokens the guidance favours most
    valid[1, 5:9] = False
    pool = GuidedAttentionPool(C, settings(factors=(-1.0, 0.0, 5.0)))
    with torch.no_grad():
        pooled, weights = pool(tokens, anomaly, regions, valid)
    assert (weights[~valid] == 0).all()
    assert (weights[valid] > 0).all()
    assert torch.allclose(weights.sum(1), torch.ones(3))
    # the descriptor is a mix of the valid tokens only
    assert torch.allclose(pooled, (weights[..., None] * tokens * valid[..., None]).sum(1))


def test_head_embeddings_are_unit_and_the_projector_is_orthonormal() -> None:
    tokens, anomaly, regions = inputs(n=6)
    head = PrototypeHead(C, 6, 3, settings(), seed=0)
    emb, weights = head.embed(tokens, anomaly, regions)
    assert emb.shape == (6, 6) and weights.shape == (6, T)
    assert torch.allclose(emb.norm(dim=1), torch.ones(6), atol=1e-5)
    w = head.projector.weight.detach()  # d <= C: orthonormal rows
    assert torch.allclose(w @ w.t(), torch.eye(6), atol=1e-5)
    head.set_prototypes(torch.randn(5, 6) * 7)
    assert head.prototypes.shape == (5, 6)
    assert torch.allclose(head.prototypes.norm(dim=1), torch.ones(5), atol=1e-5)
    sims = head.similarities(emb)
    assert sims.shape == (6, 5) and (sims.abs() <= 1 + 1e-5).all()
    # d > C: orthonormal columns, so the cosines between pooled descriptors are kept exactly
    wide = PrototypeHead(C, 2 * C, 1, settings(), seed=0)
    emb, _ = wide.embed(tokens, anomaly, regions)
    with torch.no_grad():
        pooled = F.normalize(wide.pool(tokens, anomaly, regions)[0], dim=-1)
        assert torch.allclose(emb @ emb.t(), pooled @ pooled.t(), atol=1e-5)


def test_head_initialisation_depends_on_the_seed_only() -> None:
    """Two heads with the same seed are identical whatever the global torch RNG state."""
    torch.manual_seed(1)
    a = PrototypeHead(C, 6, 3, settings(), seed=4)
    torch.manual_seed(2)
    _ = torch.randn(10)
    b = PrototypeHead(C, 6, 3, settings(), seed=4)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    c = PrototypeHead(C, 6, 3, settings(), seed=5)
    assert not torch.equal(a.projector.weight, c.projector.weight)


def test_teacher_temperature_schedule() -> None:
    assert sharpen_temperature(0, 30, 0.07, 0.04, 0.3) == pytest.approx(0.07)
    mid = sharpen_temperature(4, 30, 0.07, 0.04, 0.3)
    assert 0.04 < mid < 0.07
    assert sharpen_temperature(9, 30, 0.07, 0.04, 0.3) == pytest.approx(0.04)
    assert sharpen_temperature(29, 30, 0.07, 0.04, 0.3) == pytest.approx(0.04)
