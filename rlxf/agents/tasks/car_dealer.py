"""Car dealer: the agent sells a car to a scripted buyer with a hidden budget (LMRL-Gym's car-dealer task, with
a rule-based buyer instead of a fine-tuned LM simulator).

Prices are in thousands, on a grid of 2 from 10 to 50; the list price is 50. Each episode draws a buyer
persona (student, family or executive; the first observation says which) and a budget from the persona's
range, and the buyer's opening counteroffer lies 6 to 12 below the budget. Each turn the seller either says
``offer P`` or ``accept`` (take the buyer's standing counteroffer). An offer at or below the budget is
bought at once; one above it costs the buyer patience, and the buyer raises the counteroffer by half the
distance to the budget (rounded up to the grid) or, out of patience, leaves.

Reward (LMRL-Gym): the sale price on a deal, 0 without one (the buyer leaves, or ``max_turns`` runs out);
0 on the turns before. No buyer pays more than the budget, so the budget is the optimal return; the expert
(which may read the hidden budget) offers it at once. ``success()`` is a deal at the budget: the best price
this buyer would pay (any deal at all is easy; random offers close one most of the time).
"""

from __future__ import annotations

import random

from rlxf.agents.env import TextEnv

PRICES = tuple(range(10, 52, 2))
SKILLS = {"expert": 1.0, "noisy": 0.5, "random": 0.0}
"""Skill levels of the scripted datasets (the probability of the expert's action each turn; see
:func:`rlxf.agents.episodes.scripted_dataset`)."""
PERSONAS = {  # name -> (budget range, patience, what the buyer says first)
    "student": ((20, 30), 2, "i am a student and need a cheap car"),
    "family": ((26, 38), 3, "we need a safe car for our family"),
    "executive": ((34, 46), 4, "i want a car that looks good"),
}


def _round_up(price: float) -> int:
    return min(PRICES[-1], next((p for p in PRICES if p >= price), PRICES[-1]))


class CarDealer(TextEnv):
    """Sell to a scripted buyer (see the module docstring)."""

    name = "car_dealer"

    def __init__(self, max_turns: int = 10, invalid_penalty: float = -1.0):
        super().__init__(max_turns, invalid_penalty)
        self.persona, self.budget, self.patience, self.counter = "", 0, 0, 0
        self.price: int | None = None

    def _reset(self) -> str:
        self.persona = self.rng.choice(sorted(PERSONAS))
        (low, high), self.patience, line = PERSONAS[self.persona]
        self.budget = self.rng.choice([p for p in PRICES if low <= p <= high])
        self.counter = self.budget - self.rng.choice((6, 8, 10, 12))
        self.price = None
        return f"buyer : {line} . the list price is {PRICES[-1]} . i offer {self.counter}"

    def parse(self, action: str):
        words = action.strip().lower().split()
        if words == ["accept"]:
            return "accept"
        if len(words) == 2 and words[0] == "offer" and words[1].isdigit() and int(words[1]) in PRICES:
            return int(words[1])
        return None

    def _step(self, move):
        if move == "accept" or move <= self.budget:
            self.price = self.counter if move == "accept" else move
            return f"buyer : deal at {self.price}", float(self.price), True, {"price": self.price}
        self.patience -= 1
        if self.patience <= 0:
            return "buyer : that is too much . i am leaving", 0.0, True, {"price": None}
        self.counter = _round_up(self.counter + (self.budget - self.counter) / 2)
        return f"buyer : {move} is too much . i offer {self.counter}", 0.0, False, {}

    def success(self) -> bool:
        return self.price == self.budget

    def expert_action(self) -> str:
        return f"offer {self.budget}"

    def random_action(self, rng: random.Random) -> str:
        return rng.choice(["accept"] + [f"offer {p}" for p in PRICES])

    def words(self) -> list[str]:
        text = " ".join(["buyer : deal at the list price is . i offer is too much that am leaving accept offer",
                         *(line for _, _, line in PERSONAS.values()), *map(str, range(0, PRICES[-1] + 1))])
        return list(dict.fromkeys(text.split()))


def make(max_turns: int = 10) -> CarDealer:
    return CarDealer(max_turns)
