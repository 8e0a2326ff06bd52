"""Active-learning strategies on hand-built review states (known geometry, no storage)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine.clustering import normalise
from protoatlas.service.suggestions import (
    ReviewState,
    SuggestConfig,
    candidates,
    confirm_questions,
    label_questions,
    merge_questions,
    new_type_questions,
    split_questions,
    suggest,
)

D = 16
E = np.eye(D, dtype=np.float32)


def group(direction: np.ndarray, n: int, noise: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return normalise(direction[None] + noise * rng.normal(size=(n, D))).astype(np.float32)


def make_state(
    parts: list[tuple[int, np.ndarray]],
    *,
    status: dict[int, str] | None = None,
    reviewed: list[bool] | None = None,
    normal: list[bool] | None = None,
    images: list[int] | None = None,
    prototypes: dict[int, np.ndarray] | None = None,
    mixed: set[int] | None = None,
) -> ReviewState:
    """A state from (type id or -1, embeddings) parts; region ids 1.., one image each
    unless ``images`` is given."""
    emb = np.concatenate([x for _, x in parts]).astype(np.float32)
    types = np.concatenate([np.full(len(x), t, np.int64) for t, x in parts])
    n = len(emb)
    status = status or {}
    ids = sorted({int(t) for t in types if t >= 0} | set(status))
    return ReviewState(
        region_ids=np.arange(1, n + 1, dtype=np.int64),
        image_ids=np.asarray(
            images if images is not None else np.arange(100, 100 + n), dtype=np.int64
        ),
        embeddings=emb,
        region_type=types,
        reviewed=np.asarray(reviewed if reviewed is not None else [False] * n, dtype=bool),
        is_normal=np.asarray(normal if normal is not None else [False] * n, dtype=bool),
        types={t: (f"T{t}", status.get(t, "proposed")) for t in ids},
        prototypes=prototypes or {},
        mixed=mixed or set(),
    )


def key(q) -> tuple[str, str]:
    return q.kind, json.dumps(q.target, sort_keys=True)


# ------------------------------------------------------------------------------- confirm
def test_confirm_ranks_a_compact_type_above_a_diffuse_one() -> None:
    rng = np.random.default_rng(0)
    state = make_state(
        [
            (1, group(E[0], 6, 0.05, 1)),
            (2, normalise(rng.normal(size=(6, D))).astype(np.float32)),
            (3, group(E[5], 6, 0.05, 2)),
        ],
        status={3: "confirmed"},
    )
    qs = {q.target["type_id"]: q for q in confirm_questions(state, SuggestConfig())}
    assert set(qs) == {1, 2}  # a confirmed type is not asked about again
    assert qs[1].score > 2 * qs[2].score
    ranked = [q.target["type_id"] for q in suggest(state) if q.kind == "confirm"]
    assert ranked == [1, 2]


def test_confirm_skips_types_below_the_minimum_size() -> None:
    state = make_state([(1, group(E[0], 1, 0.05, 1)), (2, group(E[1], 3, 0.05, 2))])
    assert [q.target["type_id"] for q in confirm_questions(state, SuggestConfig())] == [2]


def test_confirm_asks_about_a_type_a_reviewer_made_but_after_an_untouched_one() -> None:
    """A proposed type whose members a reviewer picked out of another is asked about (its
    answer names it); a reviewed member counts half, so an untouched type of the same size
    and shape comes first."""
    first = group(E[0], 6, 0.05, 1)
    second = first[:, [1, 0, *range(2, D)]]  # the same shape, turned onto another axis
    state = make_state([(1, first), (2, second)], reviewed=[False] * 6 + [True] * 6)
    qs = {q.target["type_id"]: q.score for q in confirm_questions(state, SuggestConfig())}
    assert set(qs) == {1, 2}
    assert 0 < qs[2] < qs[1]
    assert qs[2] == pytest.approx(qs[1] * np.log1p(3) / np.log1p(6), rel=1e-5)


# --------------------------------------------------------------------------------- split
def test_split_is_proposed_for_two_far_groups_not_for_a_tight_type() -> None:
    far_a, far_b = group(E[0], 5, 0.05, 1), group(E[1], 7, 0.05, 2)
    state = make_state(
        [(1, np.concatenate([far_a, far_b])), (2, group(E[2], 12, 0.01, 3))]
    )  # tight: halves point the same way
    qs = split_questions(state, SuggestConfig())
    assert [q.target["type_id"] for q in qs] == [1]
    groups = sorted(sorted(g) for g in qs[0].target["groups"])
    assert groups == [list(range(1, 6)), list(range(6, 13))]


def test_split_needs_enough_members() -> None:
    two = np.concatenate([group(E[0], 2, 0.05, 1), group(E[1], 3, 0.05, 2)])
    assert split_questions(make_state([(1, two)]), SuggestConfig()) == []


# --------------------------------------------------------------------------------- merge
def _merge_state(status: dict[int, str] | None = None) -> ReviewState:
    return make_state(
        [
            (1, group(E[0], 4, 0.05, 1)),
            (2, group(E[0], 5, 0.05, 2)),
            (3, group(E[4], 4, 0.05, 3)),
            (4, group(E[8], 4, 0.05, 4)),
        ],
        status=status,
    )


def test_merge_is_proposed_for_near_identical_prototypes_only() -> None:
    qs = merge_questions(_merge_state(), SuggestConfig())
    assert [sorted(q.target["type_ids"]) for q in qs] == [[1, 2]]
    assert qs[0].score > 0


def test_merge_is_never_proposed_for_two_confirmed_types() -> None:
    assert merge_questions(_merge_state({1: "confirmed", 2: "confirmed"}), SuggestConfig()) == []
    # one confirmed and one proposed type may still be the same
    qs = merge_questions(_merge_state({1: "confirmed"}), SuggestConfig())
    assert [sorted(q.target["type_ids"]) for q in qs] == [[1, 2]]


# --------------------------------------------------------------------------------- label
def test_label_questions_pick_the_smallest_margins_one_per_image() -> None:
    def mix(a: float) -> np.ndarray:  # cos to e0 = a, to e1 = sqrt(1 - a^2)
        return np.array([a * E[0] + np.sqrt(1 - a * a) * E[1]], np.float32)

    rows = [  # (embedding, image, reviewed, normal) -> margin |a - sqrt(1-a^2)|
        (mix(0.99), 10, False, False),  # r1: clear (margin 0.85)
        (mix(0.7072), 11, False, False),  # r2: borderline (margin ~0.0002)
        (mix(0.8), 11, False, False),  # r3: same image as r2, larger margin (0.2)
        (mix(0.75), 12, False, False),  # r4: margin ~0.09
        (mix(0.7071), 13, True, False),  # r5: reviewer already placed it
        (mix(0.7071), 14, False, True),  # r6: marked normal
    ]
    state = make_state(
        [(1, np.concatenate([r[0] for r in rows]))],
        images=[r[1] for r in rows],
        reviewed=[r[2] for r in rows],
        normal=[r[3] for r in rows],
        status={2: "proposed"},
        prototypes={1: E[0], 2: E[1]},
    )
    qs = label_questions(state, SuggestConfig())
    assert [q.target["region_id"] for q in qs] == [2, 4, 1]
    assert [q.target["image_id"] for q in qs] == [11, 12, 10]
    assert sorted(qs[0].target["options"]) == [1, 2]
    assert qs[0].score > qs[1].score > qs[2].score
    capped = label_questions(state, SuggestConfig(max_label_questions=2))
    assert [q.target["region_id"] for q in capped] == [2, 4]


def test_no_label_questions_with_a_single_type() -> None:
    state = make_state([(1, group(E[0], 4, 0.2, 1))])
    assert label_questions(state, SuggestConfig()) == []


# ------------------------------------------------------------------------------ new type
def test_new_type_groups_outliers_that_are_close_together() -> None:
    state = make_state(
        [
            (1, group(E[0], 4, 0.05, 1)),
            (-1, group(E[6], 4, 0.03, 2)),  # r5..r8: a tight group
            (-1, np.stack([E[10], E[12]])),  # r9, r10: scattered
            (-1, group(E[6], 1, 0.03, 3)),
        ],  # r11: like r5..r8 but reviewed
        reviewed=[False] * 10 + [True],
    )
    qs = new_type_questions(state, SuggestConfig())
    assert [sorted(q.target["region_ids"]) for q in qs] == [[5, 6, 7, 8]]
    assert qs[0].score > 0


def test_too_few_outliers_make_no_new_type() -> None:
    state = make_state([(1, group(E[0], 4, 0.05, 1)), (-1, group(E[6], 2, 0.03, 2))])
    assert new_type_questions(state, SuggestConfig()) == []


# --------------------------------------------------------------------------------- mixed
def test_a_mixed_type_boosts_its_split_and_its_members_label_questions() -> None:
    cfg = SuggestConfig()
    tight = group(E[2], 12, 0.01, 3)
    two = np.concatenate([group(E[0], 6, 0.05, 1), group(E[1], 6, 0.05, 2)])
    parts = [(1, tight), (2, two)]
    plain = {q.target["type_id"]: q for q in split_questions(make_state(parts), cfg)}
    assert set(plain) == {2}
    boosted = {
        q.target["type_id"]: q for q in split_questions(make_state(parts, mixed={1, 2}), cfg)
    }
    assert set(boosted) == {1, 2}  # the reviewer said "not one type": ask how to split it
    assert boosted[2].score == pytest.approx(plain[2].score * cfg.mixed_split_boost)

    # label questions: members of the mixed type come first, whatever their margin (type 2's
    # members sit between two prototypes, type 1's are clear)
    cfg = SuggestConfig(max_label_questions=100)
    protos = {1: E[2], 2: normalise((E[0] + E[1])[None])[0]}
    base = label_questions(make_state(parts, prototypes=protos), cfg)
    assert len(base) == 24 and state_types(base[:12], parts) == {2}
    mixed = label_questions(make_state(parts, prototypes=protos, mixed={1}), cfg)
    assert state_types(mixed[:12], parts) == {1} and state_types(mixed[12:], parts) == {2}
    plain_scores = {q.target["region_id"]: q.score for q in base}
    for q in mixed:
        if q.target["region_id"] <= 12:  # typical members of the mixed type, boosted
            assert q.score >= cfg.mixed_boost * cfg.typical_base
            assert q.score > max(plain_scores.values())
            assert "typical" in q.reason
        else:
            assert q.score == pytest.approx(plain_scores[q.target["region_id"]])


def test_a_mixed_type_asks_first_about_a_part_no_answer_has_named() -> None:
    """A type called mixed holds two groups; a reviewed region already sits in group A, so
    the first label question is about a typical member of group B, not a borderline one."""
    cfg = SuggestConfig(max_label_questions=100)
    a, b = group(E[0], 8, 0.05, 1), group(E[1], 8, 0.05, 2)
    border = normalise(
        (E[0] + E[1])[None] + 0.01 * np.random.default_rng(3).normal(size=(2, D))
    ).astype(np.float32)
    labelled = group(E[0], 1, 0.05, 4)
    parts = [(1, a), (1, b), (1, border), (3, labelled), (2, group(E[2], 4, 0.05, 5))]
    n = 8 + 8 + 2 + 1 + 4
    reviewed = [False] * n
    reviewed[18] = True
    protos = {1: normalise((E[0] + E[1])[None])[0], 2: E[2], 3: E[0]}
    state = make_state(
        parts, prototypes=protos, reviewed=reviewed, status={3: "confirmed"}, mixed={1}
    )
    qs = label_questions(state, cfg)
    first = qs[0].target["region_id"]
    assert 9 <= first <= 16, first  # group B (region ids 9..16)
    # group A members come after group B's: a reviewed region already covers them
    pos = {q.target["region_id"]: i for i, q in enumerate(qs)}
    assert max(pos[r] for r in range(9, 17)) < min(pos[r] for r in range(1, 9))
    # without the mixed flag, the questions are the plain lowest-margin ones
    plain = label_questions(
        make_state(parts, prototypes=protos, reviewed=reviewed, status={3: "confirmed"}), cfg
    )
    assert plain and not any("typical" in q.reason for q in plain)
    assert [q.score for q in plain] == sorted((q.score for q in plain), reverse=True)


def state_types(questions, parts) -> set[int]:
    types = np.concatenate([np.full(len(x), t) for t, x in parts])
    return {int(types[q.target["region_id"] - 1]) for q in questions}


# -------------------------------------------------------------------------------- random
def _busy_state() -> ReviewState:
    return make_state(
        [
            (1, group(E[0], 4, 0.05, 1)),
            (2, group(E[0], 5, 0.05, 2)),
            (3, np.concatenate([group(E[4], 6, 0.05, 3), group(E[5], 6, 0.05, 4)])),
            (-1, group(E[9], 4, 0.03, 5)),
        ]
    )


def test_random_strategy_is_a_seeded_permutation_of_the_candidates() -> None:
    state = _busy_state()
    cfg = SuggestConfig(queue_size=100)
    cands = candidates(state, cfg)
    assert {q.kind for q in cands} == {"confirm", "merge", "split", "new_type", "label"}
    one = suggest(state, cfg, strategy="random", rng=np.random.default_rng(1))
    assert sorted(map(key, one)) == sorted(map(key, cands))
    again = suggest(state, cfg, strategy="random", rng=np.random.default_rng(1))
    assert list(map(key, again)) == list(map(key, one))
    other = suggest(state, cfg, strategy="random", rng=np.random.default_rng(2))
    assert list(map(key, other)) != list(map(key, one))
    seeded = suggest(state, SuggestConfig(queue_size=100, seed=1), strategy="random")
    assert list(map(key, seeded)) == list(map(key, one))  # default rng: the config's seed
    ranked = suggest(state, cfg)
    assert [q.score for q in ranked] == sorted((q.score for q in ranked), reverse=True)
    assert len(suggest(state, SuggestConfig(queue_size=3), strategy="random")) == 3


def test_unknown_strategy_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown strategy"):
        suggest(_busy_state(), strategy="greedy")
