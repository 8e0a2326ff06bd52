"""The trainable part of discovery (torch modules only; training lives in ``prototrain.py``).

* :class:`GuidedAttentionPool` -- anomaly-map-guided attention with a Region Guidance Factor
  (ProtoAnomalyNCD). One attention logit per crop token::

      logit_t = beta * a_t + sum_r gamma_r * f_{t,r} + p * log |x_t| + s(x_t)

  ``a_t`` is the crop's anomaly map at the token (standardised within the crop),
  ``f_{t,r}`` the fraction of the token's pixels in region r (background, object, anomaly),
  ``gamma`` the Region Guidance Factor (anomaly > object > background), ``|x_t|`` the norm of
  the (residual) token -- for a residual, its own anomaly evidence at the crop's zoom -- and
  ``s`` a small learned scorer, zero at initialisation so that an untrained pool is the
  training-free guided pooling. The crop descriptor is the softmax-weighted sum of tokens.
* :class:`PrototypeHead` -- the pool, a linear projector onto the ``embedding_dim`` sphere
  (initialised as a random orthonormal projection, which approximately keeps the
  descriptors' angles: exactly when ``embedding_dim`` >= the token channels) and
  one cosine prototype per type: known types (reviewer-confirmed) first, then novel ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

#: Small constant under logs and divisions.
_EPS = 1e-6


@dataclass(frozen=True)
class PoolSettings:
    """Initial values of the guided attention (see :class:`engine.config.DiscoveryConfig`)."""

    beta: float
    region_factors: tuple[float, float, float]
    residual_power: float
    learn_factors: bool
    scorer_hidden: int


class GuidedAttentionPool(nn.Module):
    """Attention pooling of crop tokens guided by the anomaly map and the region codes."""

    def __init__(self, channels: int, settings: PoolSettings) -> None:
        super().__init__()
        factors = torch.tensor(settings.region_factors, dtype=torch.float32)
        beta = torch.tensor(float(settings.beta))
        if settings.learn_factors:
            self.gamma = nn.Parameter(factors)
            self.beta = nn.Parameter(beta)
        else:
            self.register_buffer("gamma", factors)
            self.register_buffer("beta", beta)
        self.residual_power = float(settings.residual_power)
        self.norm = nn.LayerNorm(channels)
        hidden = nn.Linear(channels, settings.scorer_hidden)
        score = nn.Linear(settings.scorer_hidden, 1)
        nn.init.zeros_(score.weight)
        nn.init.zeros_(score.bias)
        self.scorer = nn.Sequential(hidden, nn.GELU(), score)

    def logits(
        self, tokens: torch.Tensor, anomaly: torch.Tensor, regions: torch.Tensor
    ) -> torch.Tensor:
        """(N, T) attention logits."""
        logit = self.beta * anomaly + regions @ self.gamma
        if self.residual_power:
            logit = logit + self.residual_power * torch.log(tokens.norm(dim=-1) + _EPS)
        return logit + self.scorer(self.norm(tokens))[..., 0]

    def forward(
        self,
        tokens: torch.Tensor,
        anomaly: torch.Tensor,
        regions: torch.Tensor,
        valid: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled (N, C) descriptors and (N, T) attention weights."""
        logit = self.logits(tokens, anomaly, regions)
        if valid is not None:
            logit = logit.masked_fill(~valid, float("-inf"))
        weights = torch.softmax(logit, dim=1)
        return (weights[..., None] * tokens).sum(dim=1), weights


class PrototypeHead(nn.Module):
    """Guided pool -> projector -> L2-normalised embedding -> cosine prototypes."""

    def __init__(
        self,
        channels: int,
        embedding_dim: int,
        n_prototypes: int,
        settings: PoolSettings,
        seed: int,
    ) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        # The scorer's hidden layer uses torch's default init (global RNG): seed it too, so
        # that the head depends on ``seed`` only, not on what ran before in the process.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.pool = GuidedAttentionPool(channels, settings)
        self.projector = nn.Linear(channels, embedding_dim, bias=False)
        with torch.no_grad():  # orthonormal rows (or columns when d > C): keeps angles
            if embedding_dim <= channels:
                q, _ = torch.linalg.qr(torch.randn(channels, embedding_dim, generator=gen))
                self.projector.weight.copy_(q.t())
            else:
                q, _ = torch.linalg.qr(torch.randn(embedding_dim, channels, generator=gen))
                self.projector.weight.copy_(q)
        self.prototypes = nn.Parameter(torch.zeros(n_prototypes, embedding_dim))

    @property
    def embedding_dim(self) -> int:
        return self.projector.out_features

    def embed(
        self,
        tokens: torch.Tensor,
        anomaly: torch.Tensor,
        regions: torch.Tensor,
        valid: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, d) unit embeddings and (N, T) attention weights."""
        pooled, weights = self.pool(tokens, anomaly, regions, valid)
        pooled = F.normalize(pooled, dim=-1)
        return F.normalize(self.projector(pooled), dim=-1), weights

    def similarities(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(N, K) cosine similarity of embeddings to every prototype."""
        return embeddings @ F.normalize(self.prototypes, dim=-1).t()

    def set_prototypes(self, centres: torch.Tensor) -> None:
        """Replace the prototypes (e.g. by k-means centres); the count may change."""
        self.prototypes = nn.Parameter(F.normalize(centres.detach().float(), dim=-1).clone())


def sharpen_temperature(
    epoch: int, epochs: int, start: float, end: float, warmup_fraction: float
) -> float:
    """Teacher temperature, linear from ``start`` to ``end`` over the warm-up (SimGCD)."""
    warm = max(1, math.ceil(epochs * warmup_fraction))
    t = min(1.0, epoch / warm)
    return start + (end - start) * t
