"""How a critique is written and read, shared by every critic, corrector and trainer.

A critique is free text whose last ``verdict:`` line carries the judgment::

    step 1: ok
    step 2: 4*2=9 is wrong
    verdict: incorrect 2

``verdict: correct`` accepts the answer; ``verdict: incorrect K`` rejects it and names step ``K``
(1-based) as the first wrong one (``K`` may be left out). The words used before the verdict are
free; only the verdict line is parsed, so a tiny character-level critic, a simulated critic and a
real instruction-tuned model can all be read the same way. A critique with no verdict line parses
to ``Verdict(None, None)``; callers that must decide treat it as "correct" (CriticBench's rule: an
unparsed judgment accepts the answer).

Requests are built by :func:`critic_prompt` (question and answer) and :func:`corrector_prompt`
(question, answer and critique), so a tiny critic trained on one format is asked in that format.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_VERDICT = re.compile(r"^\s*verdict\s*:\s*(correct|incorrect)(?:\s+(?:at\s+step\s+)?(\d+))?\s*$", re.I | re.M)
CRITIC_CHARS = sorted(set("0123456789+-*=:\n abcdefghijklmnopqrstuvwxyz#"))
"""The characters every critique, critic request and correction request here is written in (the
arithmetic task's alphabet plus lower-case letters and the ``#`` separator), for character-level
tiny critics: ``tiny_tokenizer(CRITIC_CHARS, split="chars")``."""


@dataclass(frozen=True)
class Verdict:
    """A critique's judgment: ``correct`` (None when the critique has no verdict line) and the
    1-based ``first_wrong_step`` it names (None when it accepts the answer or names no step)."""

    correct: bool | None
    first_wrong_step: int | None = None

    def __post_init__(self):
        if self.first_wrong_step is not None and (self.correct is not False or self.first_wrong_step < 1):
            raise ValueError(f"Verdict: a first wrong step ({self.first_wrong_step}) needs correct=False and a "
                             "step number >= 1")

    @property
    def accepts(self) -> bool:
        """Whether the answer passes (a missing verdict passes)."""
        return self.correct is not False


def verdict_line(correct: bool, first_wrong_step: int | None = None) -> str:
    """The last line of a critique."""
    Verdict(correct, first_wrong_step)  # checks the pair
    if correct:
        return "verdict: correct"
    return "verdict: incorrect" + (f" {first_wrong_step}" if first_wrong_step is not None else "")


def render_critique(correct: bool, first_wrong_step: int | None = None, notes: list[str] = ()) -> str:
    """A critique: one line per note, then the verdict line."""
    return "\n".join([*notes, verdict_line(correct, first_wrong_step)])


def parse_critique(text: str) -> Verdict:
    """The judgment of the last verdict line in ``text`` (``Verdict(None)`` when there is none)."""
    found = _VERDICT.findall(text)
    if not found:
        return Verdict(None)
    word, step = found[-1]
    correct = word.lower() == "correct"
    return Verdict(correct, None if correct or not step or int(step) < 1 else int(step))


def critic_prompt(question: str, answer: str) -> str:
    """The request a critic answers: the question, the answer to judge, then ``#`` (the critique follows)."""
    return f"{question}\n{answer}\n#\n"


def corrector_prompt(question: str, answer: str, critique: str) -> str:
    """The request a corrector answers: the critic's request plus the critique, then ``#`` (the
    corrected answer follows)."""
    return f"{critic_prompt(question, answer)}{critique}\n#\n"


__all__ = ["CRITIC_CHARS", "Verdict", "corrector_prompt", "critic_prompt", "parse_critique", "render_critique",
           "verdict_line"]
