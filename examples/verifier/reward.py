"""The example verifier: does the reply name the right capital?

Use it as ``--reward examples/verifier/reward.py:correct``. It has TRL's reward signature:
``prompts`` and ``completions`` hold one entry per sample, and ``answer`` is the data's
``answer`` column, repeated to match. A completion is a string, or (conversational data) a
list of messages whose last one is the assistant's reply.
"""

import re


def text_of(completion) -> str:
    """The reply's text, for a plain string or a list of chat messages."""
    if isinstance(completion, list):
        return completion[-1]["content"] if completion else ""
    return completion


def words(text: str) -> str:
    """Lower-case words separated by single spaces (punctuation, hyphens and apostrophes are breaks)."""
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def correct(prompts, completions, answer, **kwargs) -> list[float]:
    """1.0 where the reply contains the answer as whole words (any case or punctuation), else 0.0."""
    return [float(f" {words(a)} " in f" {words(text_of(c))} ") for c, a in zip(completions, answer)]
