"""The typed reviewer answer: parsing what a reviewer typed, its stored JSON, reading the
plain strings of older workspaces, and the handler table covering every question kind."""

from __future__ import annotations

import json

import pytest

from protoatlas.service import Answer
from protoatlas.service.answers import HANDLERS
from protoatlas.service.suggestions import KINDS


@pytest.mark.parametrize(
    "text,kind,name,expected",
    [
        ("yes", "confirm", "scratch", Answer("yes", name="scratch")),
        ("Y", "merge", None, Answer("yes")),
        (" n ", "split", "ignored", Answer("no")),
        ("skip", "label", None, Answer("skip")),
        ("7", "label", None, Answer("label", type_id=7)),
        ("crack", "label", None, Answer("label", label="crack")),
        ("good", "label", None, Answer("label", label="good")),
    ],
)
def test_parse_reads_what_a_reviewer_gives(text, kind, name, expected) -> None:
    assert Answer.parse(text, kind, name=name) == expected


@pytest.mark.parametrize(
    "text,kind",
    [("y", "label"), ("no", "label"), ("", "label"), ("maybe", "confirm"), ("3", "defect")],
)
def test_parse_refuses_an_answer_the_question_does_not_offer(text, kind) -> None:
    with pytest.raises(ValueError, match="answer"):
        Answer.parse(text, kind)


@pytest.mark.parametrize(
    "answer",
    [
        Answer("yes", name="a b"),
        Answer("no", moved_out=3),
        Answer("skip"),
        Answer("label", type_id=0),
        Answer("label", label="good"),
    ],
)
def test_dump_is_json_that_loads_back(answer) -> None:
    text = answer.dump()
    assert json.loads(text)["choice"] == answer.choice
    assert Answer.load(text) == answer


@pytest.mark.parametrize(
    "stored,expected",
    [
        (None, Answer("skip")),
        ("yes", Answer("yes")),
        ("yes:scratch", Answer("yes", name="scratch")),
        ("no", Answer("no")),
        ("no:2 moved out", Answer("no", moved_out=2)),
        ("12", Answer("label", type_id=12)),
        ("spot", Answer("label", label="spot")),
    ],
)
def test_load_reads_the_plain_strings_of_older_workspaces(stored, expected) -> None:
    assert Answer.load(stored) == expected


def test_standing_and_settled_no() -> None:
    assert Answer("no").is_standing_no and not Answer("no").is_settled_no
    assert Answer("no", moved_out=1).is_settled_no and not Answer("no", moved_out=1).is_standing_no
    assert not Answer("yes").is_standing_no and not Answer("yes", moved_out=2).is_settled_no


def test_load_refuses_an_unknown_choice() -> None:
    with pytest.raises(ValueError, match="unknown choice"):
        Answer.load('{"choice": "perhaps"}')


def test_every_question_kind_has_its_handlers() -> None:
    for kind in KINDS:
        choices = {c for k, c in HANDLERS if k == kind}
        assert choices == ({"label"} if kind == "label" else {"yes", "no"}), kind
