"""A small wordle: find a hidden 5-letter word from a built-in list of 50 in at most 6 guesses (LMRL-Gym's
wordle task at "Wordle-lite" size).

An action is one word of the list (any case, surrounding space ignored); anything else is invalid. After a
guess the agent sees each letter with its colour: ``green`` (right spot), ``yellow`` (in the word, elsewhere)
or ``gray`` (not in the word, or no more copies of it), e.g. ``c green r gray a yellow n gray e gray``.
Rewards follow LMRL-Gym: -1 per turn until solved, 0 for the guess that solves it, -1 for an invalid word. So
solving on guess ``k`` returns ``-(k - 1)``. Every turn, invalid ones included, uses one of the 6 guesses;
running out of guesses is the end of the game (terminated, nothing to bootstrap), not a truncation.

The expert only guesses words consistent with all feedback so far and, among those, the one whose feedback
splits the remaining candidates best (smallest largest group); it solves every target of the built-in list
within 6 guesses.
"""

from __future__ import annotations

import random
import string
from collections import Counter
from functools import lru_cache

from rlxf.agents.env import TextEnv

WORDS = (
    "about above actor apple beach black bread brick chair chest cloud crane dance dream drink earth field "
    "flame fruit ghost glass grape grass heart horse house juice knife lemon light money mouse night ocean "
    "paint piano plant queen river robot salad sheep smile snake storm sugar table tiger train water"
).split()
"""The built-in list: the targets and the only valid guesses."""

COLOURS = ("green", "yellow", "gray")
START = "guess the 5 letter word"
SKILLS = {"expert": 1.0, "noisy": 0.5, "random": 0.0}
"""Skill levels of the scripted datasets (see :func:`rlxf.agents.episodes.scripted_dataset`)."""


class WordleError(ValueError):
    """A word list or target that cannot make a game."""


@lru_cache(maxsize=1 << 16)
def feedback(guess: str, target: str) -> tuple[str, ...]:
    """The colour of each letter of ``guess`` against ``target``. Greens are given first; a letter is yellow
    only while ``target`` has copies of it not already matched, so repeated letters are not over-counted."""
    colours = ["gray"] * len(guess)
    left = Counter(t for g, t in zip(guess, target) if g != t)
    for i, (g, t) in enumerate(zip(guess, target)):
        if g == t:
            colours[i] = "green"
        elif left[g] > 0:
            colours[i] = "yellow"
            left[g] -= 1
    return tuple(colours)


def consistent(words: list[str], history: list[tuple[str, tuple[str, ...]]]) -> list[str]:
    """The words that would have given every feedback in ``history`` had they been the target."""
    return [w for w in words if all(feedback(g, w) == f for g, f in history)]


def best_guess(candidates: list[str]) -> str:
    """The candidate whose feedback leaves the smallest largest group of candidates (first on ties)."""
    def worst(guess: str) -> int:
        return max(Counter(feedback(guess, t) for t in candidates).values())

    return min(candidates, key=worst)


def check_words(words: list[str]) -> list[str]:
    """``words`` lower-cased, checked: at least two, distinct, each five letters a-z."""
    out = [w.lower() for w in words]
    for i, w in enumerate(out):
        if len(w) != 5 or any(ch not in string.ascii_lowercase for ch in w):
            raise WordleError(f"wordle: word {i} ({w!r}) is not five letters a-z")
    if len(set(out)) != len(out):
        raise WordleError(f"wordle: the word list repeats {sorted(w for w, n in Counter(out).items() if n > 1)}")
    if len(out) < 2:
        raise WordleError("wordle: the word list needs at least two words")
    return out


class Wordle(TextEnv):
    """The game; ``target`` fixes the hidden word, else each reset draws it from the reset seed."""

    name = "wordle"
    max_turns = 6
    invalid_penalty = -1.0

    def __init__(self, words: list[str] | None = None, target: str | None = None, max_turns: int | None = None,
                 invalid_penalty: float | None = None):
        super().__init__(max_turns, invalid_penalty)
        self.vocabulary = check_words(WORDS if words is None else words)
        if target is not None and target.lower() not in self.vocabulary:
            raise WordleError(f"wordle: target {target!r} is not in the word list")
        self.fixed_target = target and target.lower()
        self.target = self.fixed_target or self.vocabulary[0]
        self.history: list[tuple[str, tuple[str, ...]]] = []

    def step(self, action: str):
        obs, reward, terminated, truncated, info = super().step(action)
        if truncated:  # out of guesses: the game's own end, so nothing to bootstrap
            terminated, truncated = True, False
        return obs, reward, terminated, truncated, info

    def _reset(self) -> str:
        self.target = self.fixed_target or self.rng.choice(self.vocabulary)
        self.history = []
        return START

    def parse(self, action: str):
        word = action.strip().lower()
        return word if word in self.vocabulary else None

    def _step(self, guess: str):
        colours = feedback(guess, self.target)
        self.history.append((guess, colours))
        solved = guess == self.target
        obs = " ".join(f"{ch} {c}" for ch, c in zip(guess, colours))
        return obs, 0.0 if solved else -1.0, solved, {}

    def success(self) -> bool:
        return bool(self.history) and self.history[-1][0] == self.target

    def expert_action(self) -> str:
        """A guess consistent with all feedback so far that splits the remaining candidates best."""
        return best_guess(consistent(self.vocabulary, self.history))

    def random_action(self, rng: random.Random) -> str:
        return rng.choice(self.vocabulary)

    def words(self) -> list[str]:
        return [*START.split(), *self.vocabulary, *string.ascii_lowercase, *COLOURS, "invalid", "action:"]


def make(words: list[str] | None = None, target: str | None = None, max_turns: int = Wordle.max_turns) -> Wordle:
    """The wordle environment (``wordle``); ``max_turns`` is the number of guesses."""
    return Wordle(words, target, max_turns)
