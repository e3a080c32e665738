"""Endgame: a won position of a small two-player game against an exact solver (the role of LMRL-Gym's
KQ-vs-K chess endgames against Stockfish, on Nim so that the solver is exact and instant).

Nim with three piles ``a b c`` of 1 to 5 objects; a move takes one or more objects from one pile
(``take 2 from b``); whoever takes the last object wins. Every episode starts from a position that is won
for the agent, who moves first (a nonzero xor of the pile sizes). The opponent is the solver (with
``opponent_skill`` < 1 it plays a random legal move instead, with that probability missing). The expert is
the same solver: it always moves to a zero xor, so it wins every episode.

Reward (LMRL-Gym's chess): +1 for a win, -1 for a loss, 0 otherwise; an illegal move (a pile that does not
exist, more objects than the pile holds) is an invalid action with penalty -1.
"""

from __future__ import annotations

import random
from functools import reduce
from operator import xor

from rlxf.agents.env import TextEnv

PILES = "abc"
SKILLS = {"expert": 1.0, "noisy": 0.5, "random": 0.0}
"""Skill levels of the scripted datasets (the probability of the expert's action each turn; see
:func:`rlxf.agents.episodes.scripted_dataset`)."""


def solver_move(piles: list[int]) -> tuple[int, int] | None:
    """The winning move ``(pile index, objects taken)`` of Nim (leave a zero xor), or None when the position
    is lost (every move leaves a nonzero xor) or empty."""
    x = reduce(xor, piles, 0)
    if x == 0:
        return None
    for i, n in enumerate(piles):
        if n ^ x < n:
            return i, n - (n ^ x)
    raise AssertionError("unreachable: a nonzero xor always has a winning move")


def legal_moves(piles: list[int]) -> list[tuple[int, int]]:
    return [(i, k) for i, n in enumerate(piles) for k in range(1, n + 1)]


class Endgame(TextEnv):
    """Nim against the solver (see the module docstring)."""

    name = "endgame"

    def __init__(self, max_size: int = 5, opponent_skill: float = 1.0, max_turns: int = 10,
                 invalid_penalty: float = -1.0):
        super().__init__(max_turns, invalid_penalty)
        if max_size < 1:
            raise ValueError(f"endgame: max_size must be >= 1, got {max_size}")
        if not 0.0 <= opponent_skill <= 1.0:
            raise ValueError(f"endgame: opponent_skill must be in [0, 1], got {opponent_skill}")
        self.max_size, self.opponent_skill = max_size, opponent_skill
        self.piles: list[int] = []
        self.won = False

    def _show(self) -> str:
        return "piles " + " ".join(f"{p} {n}" for p, n in zip(PILES, self.piles))

    def _reset(self) -> str:
        while True:
            self.piles = [self.rng.randint(1, self.max_size) for _ in PILES]
            if reduce(xor, self.piles, 0):
                break
        self.won = False
        return self._show() + " . your move"

    def parse(self, action: str):
        words = action.strip().lower().split()
        if len(words) != 4 or words[0] != "take" or words[2] != "from" or not words[1].isdigit():
            return None
        if words[3] not in PILES:
            return None
        i, k = PILES.index(words[3]), int(words[1])
        return (i, k) if 1 <= k <= self.piles[i] else None

    def _step(self, move):
        i, k = move
        self.piles[i] -= k
        if not any(self.piles):
            self.won = True
            return "you took the last object . you win", 1.0, True, {}
        reply = solver_move(self.piles)
        if reply is None or self.rng.random() >= self.opponent_skill:
            reply = self.rng.choice(legal_moves(self.piles))
        j, m = reply
        self.piles[j] -= m
        said = f"opponent takes {m} from {PILES[j]}"
        if not any(self.piles):
            return said + " . no objects left . you lose", -1.0, True, {}
        return f"{said} . {self._show()} . your move", 0.0, False, {}

    def success(self) -> bool:
        return self.won

    def expert_action(self) -> str:
        i, k = solver_move(self.piles) or max(legal_moves(self.piles), key=lambda m: (self.piles[m[0]], -m[1]))
        return f"take {k} from {PILES[i]}"

    def random_action(self, rng: random.Random) -> str:
        i, k = rng.choice(legal_moves(self.piles))
        return f"take {k} from {PILES[i]}"

    def words(self) -> list[str]:
        text = "piles your move take from opponent takes . you took the last object win no objects left lose"
        return list(dict.fromkeys(text.split() + list(PILES) + [str(n) for n in range(self.max_size + 1)]))


def make(max_size: int = 5, opponent_skill: float = 1.0, max_turns: int = 10) -> Endgame:
    return Endgame(max_size, opponent_skill, max_turns)
