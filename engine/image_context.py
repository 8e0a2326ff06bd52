"""The image context of a region in the space defect types are grouped and classified in.

A region's head embedding describes its crop. Two descriptors of the region's *whole image*
go beside it (:class:`engine.tokens.RegionTokens` ``image_pooled`` / ``image_residual``):

- the backbone's pooled global feature: which product, fabric or framing the image shows
  (defect types often come with one of several products in a batch);
- the anomaly-weighted residual: the PRN residuals of the image's patches pooled by the
  softmax of its standardised anomaly map (:func:`engine.detector.weighted_residual`), i.e.
  how its most anomalous cells depart from normal at the detector's fine strides, which
  tiny defects (a few cells) leave too small a mark on a crop's coarse tokens to show.

Each of the three parts is centred on the discovery batch, the two context parts projected
on their leading principal axes there (``DiscoveryConfig.context_components``), each part
made unit (:class:`ContextMeans`, kept in the model so that later batches are placed
alike); the two context parts are weighted by ``DiscoveryConfig.context_weight`` and the
concatenation made unit again. The projection matters for later batches: in the raw 1280-d
pooled feature a type's members sit much closer to their own mean than any new image does,
so new images of a known type fell outside its outlier threshold.
Measured on the suite in docs/decisions.md (*Image context in discovery*).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.clustering import normalise
from engine.tokens import RegionTokens


@dataclass(frozen=True)
class ContextMeans:
    """Centres of the three parts and the principal axes of the two context parts, from
    the regions a head was trained on."""

    #: (d,) mean head embedding.
    embedding: np.ndarray
    #: (P,) mean pooled global feature.
    pooled: np.ndarray
    #: (R,) mean anomaly-weighted residual.
    residual: np.ndarray
    #: (k_p, P) leading principal axes of the centred pooled features.
    pooled_axes: np.ndarray
    #: (k_r, R) leading principal axes of the centred residuals.
    residual_axes: np.ndarray

    @property
    def dim(self) -> int:
        """Dimension of the embeddings with context."""
        return len(self.embedding) + len(self.pooled_axes) + len(self.residual_axes)

    @classmethod
    def fit(cls, embeddings: np.ndarray, tokens: RegionTokens, components: int) -> "ContextMeans":
        """Means of ``embeddings`` (R, d) and of the context of ``tokens``, and the context
        parts' ``components`` leading principal axes (zero rows beyond the rank, so that
        the dimension never depends on the batch). Tokens without context give
        zero-width means: their context parts are zero."""
        empty = np.zeros((len(tokens), 0), np.float32)
        pooled = tokens.image_pooled if tokens.has_context else empty
        residual = tokens.image_residual if tokens.has_context else empty
        assert pooled is not None and residual is not None
        pooled_mean, residual_mean = pooled.mean(axis=0), residual.mean(axis=0)
        return cls(
            embeddings.mean(axis=0).astype(np.float32),
            pooled_mean.astype(np.float32),
            residual_mean.astype(np.float32),
            _principal_axes(pooled - pooled_mean, components),
            _principal_axes(residual - residual_mean, components),
        )

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {
            "embedding": self.embedding,
            "pooled": self.pooled,
            "residual": self.residual,
            "pooled_axes": self.pooled_axes,
            "residual_axes": self.residual_axes,
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "ContextMeans":
        return cls(**{k: arrays[k].astype(np.float32) for k in cls.__dataclass_fields__})


def _principal_axes(centred: np.ndarray, components: int) -> np.ndarray:
    """(components, D) leading right singular vectors of ``centred`` (N, D); rows beyond
    N - 1 and D are zero."""
    axes = np.zeros((components, centred.shape[1]), np.float32)
    k = min(components, len(centred) - 1, centred.shape[1])
    if k > 0:
        _, _, vt = np.linalg.svd(centred.astype(np.float64), full_matrices=False)
        axes[:k] = vt[:k]
    return axes


def with_context(
    embeddings: np.ndarray, tokens: RegionTokens, means: ContextMeans, weight: float
) -> np.ndarray:
    """(R, means.dim) unit embeddings: the centred head ``embeddings`` (R, d) beside the
    centred context of ``tokens`` on its principal axes, each part unit, the context parts
    weighted by ``weight``. Tokens without context (stored by an older version) get zero
    context parts."""
    n = len(embeddings)
    parts = [normalise(embeddings - means.embedding)]
    for values, mean, axes in (
        (tokens.image_pooled, means.pooled, means.pooled_axes),
        (tokens.image_residual, means.residual, means.residual_axes),
    ):
        if values is not None and values.shape == (n, len(mean)):
            parts.append(weight * normalise((values - mean) @ axes.T))
        else:
            parts.append(np.zeros((n, len(axes)), np.float32))
    return normalise(np.concatenate(parts, axis=1))
