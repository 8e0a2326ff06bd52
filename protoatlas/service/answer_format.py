"""A reviewer's answer as a typed value (:class:`Answer`) and its stored form: JSON in the
suggestion's ``answer`` column (what :mod:`protoatlas.service.answers` applies)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Literal, get_args

Choice = Literal["yes", "no", "skip", "label"]
#: Label answers that mark a region as a false alarm instead of typing it.
NORMAL_LABELS = ("good", "normal")
_YES, _NO = ("yes", "y"), ("no", "n")


@dataclass(frozen=True)
class Answer:
    """One reviewer answer, as stored (JSON) in ``suggestions.answer``.

    ``choice``: yes / no / skip, or ``label`` for "which type is region #N?" (then ``label``
    is the type name given or ``good``, or ``type_id`` the existing type picked); ``name``:
    the name a yes gave the type; ``moved_out``: how many picked members moved out first.
    """

    choice: Choice
    name: str | None = None
    label: str | None = None
    type_id: int | None = None
    moved_out: int = 0

    @property
    def is_standing_no(self) -> bool:
        """A "no" to "is it one type?" that asks the next retrain to re-sort the type."""
        return self.choice == "no" and self.moved_out == 0

    @property
    def is_settled_no(self) -> bool:
        """A "no" with the non-members picked out: settled, the type may be asked again."""
        return self.choice == "no" and self.moved_out > 0

    def dump(self) -> str:
        """The JSON stored in the suggestion (fields at their default left out)."""
        d = {
            k: v
            for k, v in asdict(self).items()
            if v is not None and not (k == "moved_out" and v == 0)
        }
        return json.dumps(d, sort_keys=True)

    @classmethod
    def load(cls, stored: str | None) -> "Answer":
        """Read a stored answer: JSON, None (a skipped question) or the plain strings of
        workspaces written before answers were JSON (``yes``, ``yes:<name>``, ``no``,
        ``no:<n> moved out``, a label)."""
        if stored is None:
            return cls("skip")
        text = stored.strip()
        if text.startswith("{"):
            d = json.loads(text)
            if d.get("choice") not in get_args(Choice):
                raise ValueError(f"stored answer {stored!r}: unknown choice")
            return cls(**d)
        head, _, rest = text.partition(":")
        if head == "no":
            moved = rest.split(" ", 1)[0]
            return cls("no", moved_out=int(moved) if moved.isdigit() else 0)
        if head == "yes":
            return cls("yes", name=rest or None)
        if text.lstrip("-").isdigit():
            return cls("label", type_id=int(text))
        return cls("label", label=text)

    @classmethod
    def parse(cls, text: str, kind: str, *, name: str | None = None) -> "Answer":
        """A reviewer's typed or clicked answer to a ``kind`` question: yes / no / skip (y, n
        alike), or for ``label`` questions a type id, a type name or ``good``."""
        word = str(text).strip()
        low = word.lower()
        if low == "skip":
            return cls("skip")
        if kind == "label":
            if low in _YES + _NO or not word:
                raise ValueError(
                    'answer "which type is this region?" with a type (its id or '
                    f"name) or good, not {word!r}"
                )
            if word.lstrip("-").isdigit():
                return cls("label", type_id=int(word))
            return cls("label", label=word)
        if low in _YES:
            return cls("yes", name=name or None)
        if low in _NO:
            return cls("no")
        raise ValueError(f"answer yes, no or skip to a {kind} question, not {word!r}")
