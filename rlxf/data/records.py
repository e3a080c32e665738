"""Feedback records: one small frozen dataclass per kind of feedback.

Each record checks itself when built, so a record that exists is a valid one. Rows
(``to_row``/``from_row``) use the column names the Hugging Face / TRL ecosystem already
uses: ``prompt``, ``chosen``, ``rejected``, ``completion``, ``label``. A record's
``response`` field is the ``completion`` column, and a ranking's ``responses`` are the
``completions`` column.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar


class RecordError(ValueError):
    """A record field holds a bad value; ``field`` names the row column at fault."""

    def __init__(self, field: str, problem: str, expected: str) -> None:
        self.field, self.problem, self.expected = field, problem, expected
        super().__init__(f"field '{field}' {problem} (expected {expected})")


# -- field checks ---------------------------------------------------------------------


def _describe(value: Any) -> str:
    """Say what a bad value is, briefly: its type, and the value when it is short."""
    text = repr(value)
    return f"is {text} ({type(value).__name__})" if len(text) <= 40 else f"is a {type(value).__name__}"


def _text(field: str, value: Any) -> str:
    if not isinstance(value, str):
        raise RecordError(field, _describe(value), "a non-empty string")
    if not value:
        raise RecordError(field, "is empty", "a non-empty string")
    return value


def _number(field: str, value: Any) -> float:
    # bool is an int subclass; True as a rating is almost surely a wrong column.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RecordError(field, _describe(value), "a number")
    if not math.isfinite(value):
        raise RecordError(field, f"is {value}", "a finite number")
    return float(value)


def _require(row: dict[str, Any], field: str, expected: str) -> Any:
    """Fetch a column, treating a null the same as a missing column."""
    value = row.get(field)
    if value is None:
        raise RecordError(field, "is missing", expected)
    return value


def _texts(row: dict[str, Any], *fields: str) -> list[str]:
    return [_require(row, f, "a string") for f in fields]


# -- records --------------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """A pairwise preference: ``chosen`` beats ``rejected`` for ``prompt``.

    ``strength`` optionally says how strongly (e.g. a margin or a labeler's confidence).
    """

    prompt: str
    chosen: str
    rejected: str
    strength: float | None = None

    RESPONSE_COLUMNS: ClassVar[tuple[str, ...]] = ("chosen", "rejected")

    def __post_init__(self) -> None:
        for name in ("prompt", "chosen", "rejected"):
            _text(name, getattr(self, name))
        if self.strength is not None:
            object.__setattr__(self, "strength", _number("strength", self.strength))

    def to_row(self) -> dict[str, Any]:
        row: dict[str, Any] = {"prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected}
        if self.strength is not None:
            row["strength"] = self.strength
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Comparison:
        return cls(*_texts(row, "prompt", "chosen", "rejected"), strength=row.get("strength"))


@dataclass(frozen=True)
class Ranking:
    """Several responses to one prompt, ranked: ``order`` lists response indices best first."""

    prompt: str
    responses: tuple[str, ...]
    order: tuple[int, ...]

    RESPONSE_COLUMNS: ClassVar[tuple[str, ...]] = ("completions",)

    def __post_init__(self) -> None:
        _text("prompt", self.prompt)
        if not isinstance(self.responses, (list, tuple)) or len(self.responses) < 2:
            raise RecordError("completions", _describe(self.responses), "a list of at least 2 strings")
        object.__setattr__(self, "responses", tuple(_text("completions", r) for r in self.responses))
        object.__setattr__(self, "order", self._check_order(self.order, len(self.responses)))

    @staticmethod
    def _check_order(order: Any, n: int) -> tuple[int, ...]:
        """``order`` must be a permutation of ``0..n-1``: every response ranked exactly once."""
        expected = f"each index 0..{n - 1} exactly once, best first"
        if not isinstance(order, (list, tuple)):
            raise RecordError("order", _describe(order), expected)
        for i in order:
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n:
                raise RecordError("order", f"contains {i!r}", expected)
        if len(set(order)) != len(order):
            dup = next(i for i in order if order.count(i) > 1)
            raise RecordError("order", f"has duplicate index {dup}", expected)
        if len(order) != n:
            raise RecordError("order", f"ranks {len(order)} of {n} responses", expected)
        return tuple(order)

    def to_row(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "completions": list(self.responses), "order": list(self.order)}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Ranking:
        (prompt,) = _texts(row, "prompt")
        responses = _require(row, "completions", "a list of strings")
        order = _require(row, "order", "a list of response indices, best first")
        return cls(prompt, responses, order)


@dataclass(frozen=True)
class Rating:
    """A score for one response on a stated scale, e.g. 4 on ``(1, 5)``."""

    prompt: str
    response: str
    rating: float
    scale: tuple[float, float]

    RESPONSE_COLUMNS: ClassVar[tuple[str, ...]] = ("completion",)

    def __post_init__(self) -> None:
        _text("prompt", self.prompt)
        _text("completion", self.response)
        scale = self.scale
        if not isinstance(scale, (list, tuple)) or len(scale) != 2:
            raise RecordError("scale", _describe(scale), "a pair [low, high]")
        low, high = _number("scale", scale[0]), _number("scale", scale[1])
        if not low < high:
            raise RecordError("scale", f"is [{low}, {high}]", "a pair [low, high] with low < high")
        rating = _number("rating", self.rating)
        if not low <= rating <= high:
            raise RecordError("rating", f"is {rating}", f"a number within the scale [{low}, {high}]")
        object.__setattr__(self, "scale", (low, high))
        object.__setattr__(self, "rating", rating)

    def to_row(self) -> dict[str, Any]:
        row = {"prompt": self.prompt, "completion": self.response}
        return {**row, "rating": self.rating, "scale": list(self.scale)}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Rating:
        prompt, response = _texts(row, "prompt", "completion")
        rating = _require(row, "rating", "a number")
        return cls(prompt, response, rating, _require(row, "scale", "a pair [low, high]"))


VERDICTS = ("correct", "incorrect")


def check_verdict(critique: str | None, verdict: Any, first_wrong_step: Any) -> None:
    """Check a critique's structured verdict: ``verdict`` is None, "correct" or "incorrect";
    ``first_wrong_step`` is None or a 1-based step number, given only with "incorrect"; and when
    ``critique`` text ends in its own ``verdict:`` line (:mod:`rlxf.critique.format`), both must
    say the same (neither wins: a disagreement is an error)."""
    from rlxf.critique.format import parse_critique  # lazy: rlxf.critique may grow imports of rlxf.data

    if verdict is not None and verdict not in VERDICTS:
        raise RecordError("verdict", _describe(verdict), "'correct', 'incorrect' or null")
    if first_wrong_step is not None:
        if isinstance(first_wrong_step, bool) or not isinstance(first_wrong_step, int) or first_wrong_step < 1:
            raise RecordError("first_wrong_step", _describe(first_wrong_step), "a step number >= 1 (1-based) or null")
        if verdict != "incorrect":
            raise RecordError("first_wrong_step", f"is {first_wrong_step} with verdict {verdict!r}",
                              "a step only with verdict 'incorrect'")
    if verdict is None or critique is None:
        return
    written = parse_critique(critique)
    given = (verdict == "correct", first_wrong_step)
    if written.correct is not None and (written.correct, written.first_wrong_step) != given:
        said = "correct" if written.correct else f"incorrect {written.first_wrong_step or ''}".strip()
        fields = verdict + (f" {first_wrong_step}" if first_wrong_step else "")
        raise RecordError("verdict", f"is '{fields}' but the critique text's verdict line says '{said}'",
                          "the verdict fields and the text's verdict line to agree")


@dataclass(frozen=True)
class Critique:
    """Feedback on one response: free text, and optionally a structured ``verdict``
    ("correct" | "incorrect") with the 1-based ``first_wrong_step`` of an incorrect response
    (see :func:`check_verdict`). Rows without the verdict columns (older exports) still load."""

    prompt: str
    response: str
    critique: str
    verdict: str | None = None
    first_wrong_step: int | None = None

    RESPONSE_COLUMNS: ClassVar[tuple[str, ...]] = ("completion",)

    def __post_init__(self) -> None:
        _text("prompt", self.prompt)
        _text("completion", self.response)
        _text("critique", self.critique)
        check_verdict(self.critique, self.verdict, self.first_wrong_step)

    @property
    def judgment(self):
        """The critique's :class:`~rlxf.critique.format.Verdict`: from the verdict fields when
        given, else parsed from the text (``Verdict(None)`` when neither judges)."""
        from rlxf.critique.format import Verdict, parse_critique

        if self.verdict is None:
            return parse_critique(self.critique)
        return Verdict(self.verdict == "correct", self.first_wrong_step)

    def to_row(self) -> dict[str, Any]:
        row: dict[str, Any] = {"prompt": self.prompt, "completion": self.response, "critique": self.critique}
        if self.verdict is not None:
            row["verdict"] = self.verdict
        if self.first_wrong_step is not None:
            row["first_wrong_step"] = self.first_wrong_step
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Critique:
        return cls(*_texts(row, "prompt", "completion", "critique"), verdict=row.get("verdict"),
                   first_wrong_step=row.get("first_wrong_step"))


@dataclass(frozen=True)
class Correction:
    """A response and the improved version a labeler wrote for it."""

    prompt: str
    response: str
    corrected: str

    RESPONSE_COLUMNS: ClassVar[tuple[str, ...]] = ("completion", "corrected")

    def __post_init__(self) -> None:
        _text("prompt", self.prompt)
        _text("completion", self.response)
        _text("corrected", self.corrected)

    def to_row(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "completion": self.response, "corrected": self.corrected}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Correction:
        return cls(*_texts(row, "prompt", "completion", "corrected"))


@dataclass(frozen=True)
class Demonstration:
    """A response to imitate (TRL's prompt-completion SFT format)."""

    prompt: str
    response: str

    RESPONSE_COLUMNS: ClassVar[tuple[str, ...]] = ("completion",)

    def __post_init__(self) -> None:
        _text("prompt", self.prompt)
        _text("completion", self.response)

    def to_row(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "completion": self.response}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Demonstration:
        return cls(*_texts(row, "prompt", "completion"))


@dataclass(frozen=True)
class Unpaired:
    """A single response marked desirable (``label=True``) or not, as KTO uses."""

    prompt: str
    completion: str
    label: bool

    RESPONSE_COLUMNS: ClassVar[tuple[str, ...]] = ("completion",)

    def __post_init__(self) -> None:
        _text("prompt", self.prompt)
        _text("completion", self.completion)
        if not isinstance(self.label, bool):
            raise RecordError("label", _describe(self.label), "true or false")

    def to_row(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "completion": self.completion, "label": self.label}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Unpaired:
        prompt, completion = _texts(row, "prompt", "completion")
        return cls(prompt, completion, _require(row, "label", "true or false"))


@dataclass(frozen=True)
class Prompt:
    """A prompt alone, for online methods that sample their own responses.

    ``columns`` keeps the row's other fields (an ``answer`` to check against, a topic, ...),
    which reward functions receive as keyword arguments.
    """

    prompt: str
    columns: dict[str, Any] = field(default_factory=dict, hash=False, compare=True)

    RESPONSE_COLUMNS: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        _text("prompt", self.prompt)
        if not isinstance(self.columns, dict):
            raise RecordError("columns", _describe(self.columns), "a mapping of extra column names to values")
        if "prompt" in self.columns:
            raise RecordError("columns", "repeats 'prompt'", "extra columns other than 'prompt'")

    def to_row(self) -> dict[str, Any]:
        return {"prompt": self.prompt, **self.columns}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Prompt:
        (prompt,) = _texts(row, "prompt")
        return cls(prompt, {k: v for k, v in row.items() if k != "prompt"})


Record = Comparison | Ranking | Rating | Critique | Correction | Demonstration | Unpaired | Prompt

KINDS: dict[str, type] = {
    "comparison": Comparison,
    "ranking": Ranking,
    "rating": Rating,
    "critique": Critique,
    "correction": Correction,
    "demonstration": Demonstration,
    "unpaired": Unpaired,
    "prompt": Prompt,
}
