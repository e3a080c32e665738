"""A tool-use task: answer a shopping question by calling a price lookup and a calculator.

Each episode draws fresh prices (1-9) for the items of :data:`ITEMS`, so they can only be learned by
calling the lookup tool, and a question of one of three levels (iTool's synthetic function-calling
data, easy to hard):

- level 0 ``task apple``: the price of one item (``lookup apple``, ``answer 7``);
- level 1 ``task 3 apple``: a quantity times a price (``lookup``, ``calc 7 * 3``, ``answer 21``);
- level 2 ``task 3 apple plus pear``: that plus another price (two lookups, two calcs, the answer).

Actions are tool calls: ``lookup ITEM`` (observation ``apple costs 7``), ``calc A OP B`` with OP one of
``+ - *`` (observation ``result 21``) and ``answer N``, which ends the episode with reward 1 when N is
right and 0 otherwise. Tool calls earn nothing; anything else is invalid. A call is only useful with
the right argument values, which is where iTool's "fragment deficiencies" live.

The expert is the gold call sequence of the question (:meth:`Tools.plan`), resumed where the agent's
own calls stopped matching it, so at any turn it names the ground-truth next call.
"""

from __future__ import annotations

import random

from rlxf.agents.env import TextEnv

ITEMS = ["apple", "pear", "plum", "fig", "lime", "kiwi", "date", "melon"]
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
MAX_NUMBER = 99  # numbers the agent can write (and the largest a gold call needs: 5 * 9 + 9 = 54)
SKILLS = {"expert": 1.0, "noisy": 0.7, "random": 0.0}


class Tools(TextEnv):
    name = "tools"

    def __init__(self, level: int | None = None, max_turns: int = 8, invalid_penalty: float = 0.0):
        super().__init__(max_turns, invalid_penalty)
        if level not in (None, 0, 1, 2):
            raise ValueError(f"tools: level must be 0, 1, 2 or None (any), got {level!r}")
        self.level = level
        self.prices: dict[str, int] = {}
        self.question: tuple = ()
        self.answered: int | None = None
        self.progress = 0  # how many gold calls the agent has made, in order

    # -- the question ---------------------------------------------------------------------------
    def truth(self) -> int:
        """The right answer to the current question."""
        qty, item, extra = self.question
        return qty * self.prices[item] + (self.prices[extra] if extra else 0)

    def plan(self) -> list[str]:
        """The gold tool calls of the current question, in order, ending with the answer."""
        qty, item, extra = self.question
        p = self.prices[item]
        calls = [f"lookup {item}"] + ([f"lookup {extra}"] if extra else [])
        if qty > 1:
            calls.append(f"calc {p} * {qty}")
        if extra:
            calls.append(f"calc {qty * p} + {self.prices[extra]}")
        return calls + [f"answer {self.truth()}"]

    def difficulty(self) -> int:
        """The question's level (0 easy .. 2 hard)."""
        qty, _, extra = self.question
        return 2 if extra else int(qty > 1)

    # -- the TextEnv hooks ----------------------------------------------------------------------
    def _reset(self) -> str:
        self.prices = {it: self.rng.randint(1, 9) for it in ITEMS}
        level = self.rng.randint(0, 2) if self.level is None else self.level
        item, extra = self.rng.sample(ITEMS, 2)
        qty = 1 if level == 0 else self.rng.randint(2, 5)
        self.question = (qty, item, extra if level == 2 else None)
        self.answered, self.progress = None, 0
        words = ["task"] + ([str(qty)] if qty > 1 else []) + [item] + (["plus", extra] if level == 2 else [])
        return " ".join(words)

    def parse(self, action: str):
        w = action.split()
        if len(w) == 2 and w[0] == "lookup" and w[1] in ITEMS:
            return ("lookup", w[1])
        if len(w) == 2 and w[0] == "answer" and _number(w[1]) is not None:
            return ("answer", _number(w[1]))
        if len(w) == 4 and w[0] == "calc" and w[2] in OPS and None not in (_number(w[1]), _number(w[3])):
            return ("calc", _number(w[1]), w[2], _number(w[3]))
        return None

    def _step(self, move):
        plan = self.plan()
        if self.progress < len(plan) and self.parse(plan[self.progress]) == move:
            self.progress += 1
        if move[0] == "lookup":
            return f"{move[1]} costs {self.prices[move[1]]}", 0.0, False, {}
        if move[0] == "calc":
            return f"result {OPS[move[2]](move[1], move[3])}", 0.0, False, {}
        self.answered = move[1]
        right = move[1] == self.truth()
        return ("right" if right else "wrong"), float(right), True, {}

    def success(self) -> bool:
        return self.answered is not None and self.answered == self.truth()

    def expert_action(self) -> str:
        return self.plan()[self.progress]

    def random_action(self, rng: random.Random) -> str:
        kind = rng.choice(["lookup", "calc", "answer"])
        if kind == "lookup":
            return f"lookup {rng.choice(ITEMS)}"
        if kind == "calc":
            return f"calc {rng.randint(0, 9)} {rng.choice(list(OPS))} {rng.randint(0, 9)}"
        return f"answer {rng.randint(0, MAX_NUMBER)}"

    def words(self) -> list[str]:
        fixed = ["task", "plus", "lookup", "calc", "answer", "costs", "result", "right", "wrong", "invalid",
                 "action:"]
        return fixed + ITEMS + list(OPS) + [str(n) for n in range(-9, MAX_NUMBER + 1)]


def _number(word: str) -> int | None:
    """An integer the agent may write (0..MAX_NUMBER), else None."""
    return int(word) if word.isdigit() and int(word) <= MAX_NUMBER else None


def make(level: int | None = None, max_turns: int = 8) -> Tools:
    return Tools(level, max_turns)
