"""The reported type confidence: a prototype softmax whose temperature is fitted on the batch.

The head's training sharpens the types (a teacher at temperature 0.04, an entropy term), so
the trained similarities separate every region from the second-nearest prototype by about
0.5 cosine, and a softmax at a fixed small temperature says about 1.00 for every region.
:func:`fit_temperature` chooses the temperature that makes the prototype softmax predict
the types of each region's nearest neighbours in the *untrained* guided descriptor space
(the embedding before the head's training: :func:`neighbour_agreement`), by minimising the
cross-entropy between the two. The confidence so tracks how far the regions' own
descriptors agree with the types found: a batch whose types the descriptors do not
support gets low confidences throughout (docs/decisions.md, *Confidence*).

Pure numpy / scipy: no torch.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar

from engine.calibration import even_sample
from engine.clustering import normalise, softmax
from engine.config import DiscoveryConfig

#: Probabilities are floored here before their logarithm (a type no neighbour has).
_LOG_FLOOR = 1e-12


def neighbour_agreement(x: np.ndarray, labels: np.ndarray, n_types: int, k: int) -> np.ndarray:
    """(N, n_types): per row of ``x``, the fraction of its ``k`` nearest other rows (cosine)
    in each type of ``labels`` (0..n_types-1); ties in similarity go to the lower index."""
    xn = normalise(x)
    n = len(xn)
    k = int(min(k, n - 1))
    out = np.zeros((n, n_types), np.float64)
    if k < 1:
        out[np.arange(n), labels] = 1.0
        return out
    sims = xn @ xn.T
    np.fill_diagonal(sims, -np.inf)
    nearest = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    np.add.at(out, (np.repeat(np.arange(n), k), labels[nearest].reshape(-1)), 1.0 / k)
    return out


def fit_temperature(sims: np.ndarray, targets: np.ndarray, bounds: tuple[float, float]) -> float:
    """The temperature in ``bounds`` minimising the mean cross-entropy between ``targets``
    (rows summing to 1) and ``softmax(sims / T)`` (a bounded search over log T)."""
    lo, hi = bounds

    def loss(log_t: float) -> float:
        p = softmax(sims, float(np.exp(log_t))).astype(np.float64)
        return float(-(targets * np.log(np.maximum(p, _LOG_FLOOR))).sum(axis=1).mean())

    found = minimize_scalar(loss, bounds=(np.log(lo), np.log(hi)), method="bounded")
    return float(np.exp(found.x))


def calibrated_temperature(
    untrained: np.ndarray, sims: np.ndarray, assigned: np.ndarray, cfg: DiscoveryConfig
) -> float:
    """The reported confidence's temperature for regions with untrained embeddings
    ``untrained``, similarities ``sims`` (R, K) to the K prototypes and types ``assigned``;
    ``cfg.confidence_temperature`` when there is nothing to fit (one type or region)."""
    n, n_types = sims.shape
    if n < 2 or n_types < 2:
        return float(cfg.confidence_temperature)
    rows = even_sample(n, cfg.calibration_max_regions)
    targets = neighbour_agreement(
        untrained[rows], assigned[rows], n_types, cfg.calibration_neighbours
    )
    return fit_temperature(sims[rows], targets, cfg.calibration_temperatures)
