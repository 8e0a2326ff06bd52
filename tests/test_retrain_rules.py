"""Which regions a retrain may move (protoatlas.service.retrain._retrained_assignments)."""

from __future__ import annotations

import numpy as np

from engine.discovery import NO_TYPE
from protoatlas.service.retrain import _retrained_assignments

# engine type ids 0..3 -> storage ids: 0 -> 5 (proposed), 1 -> 6 (proposed, called mixed),
# 2 -> 7 (confirmed, established), 3 -> a type the retrain creates
REF: dict[int, object] = {0: 5, 1: 6, 2: 7, 3: "r3"}


def _sims(rows: list[dict[int, float]]) -> np.ndarray:
    out = np.zeros((len(rows), 4))
    for i, row in enumerate(rows):
        for col, value in row.items():
            out[i, col] = value
    return out


def test_only_open_regions_move_and_new_types_form_from_them() -> None:
    current = np.array([-1, 5, 5, 6, 6, 7, 5, 8])
    new_type = np.array([3, 3, 2, 3, NO_TYPE, 0, 2, 0])
    sims = _sims(
        [
            {3: 0.9},
            {3: 0.9, 0: 0.1},  # unquestioned type -> a new type: stays
            {2: 0.9, 0: 0.5},  # unquestioned -> established, 0.4 closer: moves
            {3: 0.8, 1: 0.2},  # member of the mixed type: moves freely
            {1: 0.3},  # mixed member made an outlier: stays
            {0: 0.9, 2: 0.1},  # confirmed type's region to a proposal: stays
            {2: 0.55, 0: 0.5},  # established but only 0.05 closer: stays
            {0: 0.7},
        ]
    )  # its type (8) got no prototype: takes the new one
    got = _retrained_assignments(
        new_type, current, REF, {6}, sims=sims, established={7}, margin=0.1
    )
    assert got.tolist() == [3, 0, 2, 3, 1, 2, 0, 0]


def test_a_confirmed_type_that_is_not_established_pulls_nothing() -> None:
    current = np.array([5, 5])
    new_type = np.array([2, 2])
    sims = _sims([{2: 0.9, 0: 0.1}, {2: 0.9, 0: 0.1}])
    got = _retrained_assignments(
        new_type, current, REF, set(), sims=sims, established=set(), margin=0.1
    )
    assert got.tolist() == [0, 0]


def test_regions_of_unquestioned_types_never_move_between_proposals() -> None:
    current = np.array([5, 6])
    new_type = np.array([1, 0])
    sims = _sims([{1: 1.0, 0: -1.0}, {0: 1.0, 1: -1.0}])
    got = _retrained_assignments(
        new_type, current, REF, set(), sims=sims, established={7}, margin=0.1
    )
    assert got.tolist() == [0, 1]
