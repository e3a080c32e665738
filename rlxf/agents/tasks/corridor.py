"""The smallest text environment: walk a corridor to its far end. The unit-test task of the agent code
(rendering, datasets, learners); real tasks live beside it.

Cells 0..length-1, start at 0, goal at the last cell. Actions ``left`` / ``right``; reward -1 per move and 0
on reaching the goal (LMRL-Gym's maze convention); walking into the wall at cell 0 is a legal no-op move.
"""

from __future__ import annotations

import random

from rlxf.agents.env import TextEnv


class Corridor(TextEnv):
    name = "corridor"

    def __init__(self, length: int = 4, max_turns: int = 8, invalid_penalty: float = -2.0):
        super().__init__(max_turns, invalid_penalty)
        if length < 2:
            raise ValueError(f"corridor: length must be >= 2, got {length}")
        self.length = length
        self.pos = 0

    def _observe(self) -> str:
        return f"at {self.pos} goal {self.length - 1}"

    def _reset(self) -> str:
        self.pos = 0
        return self._observe()

    def parse(self, action: str):
        word = action.strip().lower()
        return word if word in ("left", "right") else None

    def _step(self, move: str):
        self.pos = max(0, self.pos - 1) if move == "left" else self.pos + 1
        at_goal = self.pos == self.length - 1
        return self._observe(), 0.0 if at_goal else -1.0, at_goal, {}

    def success(self) -> bool:
        return self.pos == self.length - 1

    def expert_action(self) -> str:
        return "right"

    def random_action(self, rng: random.Random) -> str:
        return rng.choice(["left", "right"])

    def words(self) -> list[str]:
        return ["at", "goal", "left", "right", "invalid", "action:"] + [str(i) for i in range(self.length)]


def make(length: int = 4, max_turns: int = 8) -> Corridor:
    return Corridor(length, max_turns)
