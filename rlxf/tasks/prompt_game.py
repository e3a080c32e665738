"""A multi-step prompt task (for PROMST): a frozen tiny GPT-2, conditioned on a prompt of instruction
fragments, walks the corridor text environment (:mod:`rlxf.agents.tasks.corridor`) over several turns,
and failed episodes fail in typed ways.

Each turn the model reads ``<prompt> obs: at <p> goal <g> act:`` and says ``left``, ``right`` or (not an
action) ``go``. It was trained in-process to follow a hidden rule (:func:`rule_action`):

- with no prompt it walks into the wall at cell 0 (the state stops changing: ``loop``), says ``go`` on
  even cells from 2 on (``format``), and steps back from odd cells from 3 on (it oscillates until the
  turn limit: ``timeout``);
- ``wall`` ("never bump the wall"), ``say`` ("say left or right") and ``ahead`` ("keep moving ahead")
  fix one each; with all three every episode reaches its goal;
- ``rush`` ("rush to the end") is a trap: it walks right on cells 0-2 whatever else the prompt says (the
  loop and the early format errors gone at once) but says ``go`` from cell 3 on, which nothing fixes;
- ``careful`` hurts (a step back next to the goal), the rest do nothing.

An episode starts at cell ``start`` of a corridor whose goal is ``goal``; its metric is the share of
the way it walked, ``(best cell - start) / (goal - start)`` (1 on reaching the goal). The ``train``
split has 12 episodes, ``test`` the other 32 (start, goal) pairs. :meth:`PromptGame.episodes` plays a prompt on a split and
returns each :class:`Episode` with its trace and failure type (what PROMST's feedback rules read);
:meth:`PromptGame.score` is the mean metric; ``calls`` counts prompt evaluations per split.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from rlxf.agents.tasks.corridor import Corridor
from rlxf.tasks import prompt_tasks as pt

GAME_FRAGMENTS: dict[str, str] = {
    "wall": "never bump the wall",
    "say": "say left or right",
    "ahead": "keep moving ahead",
    "rush": "rush to the end",
    "careful": "be very careful",
    "polite": "be polite",
    "expert": "you are an expert",
    "focus": "stay focused",
    "plan": "make a plan",
}
"""The game's fragment library."""

GAME_ERRORS = ("format", "loop", "timeout")
GAME_HAND_WRITTEN = "you are an expert . say left or right"
"""The game's hand-written prompt, written with the game before any optimiser ran."""

MAX_TURNS = 16
LOOP_ROUNDS = 4  # a state unchanged for more than this many rounds is a loop
GAME_WORDS = tuple(sorted({w for p in GAME_FRAGMENTS.values() for w in p.split()}
                          | {".", "obs:", "at", "goal", "act:", "left", "right", "go"} | {str(d) for d in range(10)}))


def rule_action(names, p: int, g: int) -> str:
    """The hidden rule the frozen model was trained to follow: its action at cell ``p`` with goal ``g``."""
    s = set(names)
    if "careful" in s and p == g - 1:
        return "left"
    if "rush" in s:
        return "right" if p < 3 else "go"
    if p == 0:
        return "right" if "wall" in s else "left"
    if p % 2 == 0 and p >= 2 and "say" not in s:
        return "go"
    if p % 2 == 1 and p >= 3 and "ahead" not in s:
        return "left"
    return "right"


def context(p: int, g: int) -> str:
    return f"obs: at {p} goal {g} act:"


def rule_act(prompts: list[str], contexts: list[str]) -> list[str]:
    """What a perfectly trained policy does: the hidden rule (``PromptGame(respond=rule_act)``)."""
    out = []
    for prompt, ctx in zip(prompts, contexts):
        words = ctx.split()
        out.append(rule_action(pt.fragments_of(prompt, GAME_FRAGMENTS), int(words[2]), int(words[4])))
    return out


def _game_examples(names: list[list[str]], seed: int) -> tuple[list[str], list[str]]:
    rng = random.Random(f"prompt-game|{seed}")
    cells = []
    for _ in names:
        g = rng.randint(2, 9)
        cells.append((rng.randrange(g), g))
    return [context(p, g) for p, g in cells], [rule_action(n, p, g) for n, (p, g) in zip(names, cells)]


GAME_SPEC = pt.FrozenSpec("corridor", rule_action, GAME_FRAGMENTS, GAME_WORDS, _game_examples)


def _starts(seed: int, n: int) -> list[tuple[int, int]]:
    """``n`` distinct (start, goal) pairs, goal 2..9."""
    pairs = [(s, g) for g in range(2, 10) for s in range(g)]
    return random.Random(f"prompt-game-split|{seed}").sample(pairs, n)


_ALL = _starts(0, 44)  # every (start, goal) pair
GAME_SPLITS = {"train": _ALL[:12], "test": _ALL[12:]}


class StartCorridor(Corridor):
    """The corridor, started at cell ``start`` instead of 0."""

    def __init__(self, length: int, start: int, max_turns: int = MAX_TURNS):
        super().__init__(length, max_turns)
        self.start = start

    def _reset(self) -> str:
        self.pos = self.start
        return self._observe()


@dataclass
class Step:
    cell: int
    action: str
    feedback: str


@dataclass
class Episode:
    """One played episode: its start and goal, the steps, the metric and the failure type (None on success)."""

    start: int
    goal: int
    steps: list[Step]
    metric: float
    failure: str | None


def failure_type(steps: list[Step], success: bool) -> str | None:
    """PROMST's failure types, in order: an invalid action in the last two steps (``format``), the state
    unchanged for more than LOOP_ROUNDS rounds (``loop``), else the turn limit (``timeout``)."""
    if success:
        return None
    if any(s.feedback == "invalid" for s in steps[-2:]):
        return "format"
    run = 0
    for a, b in zip(steps, steps[1:]):
        run = run + 1 if a.cell == b.cell else 0
        if run >= LOOP_ROUNDS:
            return "loop"
    return "timeout"


@dataclass
class PromptGame:
    """The corridor game under a frozen prompt-conditioned policy. ``calls[split]`` counts prompt
    evaluations (each plays every episode of the split once)."""

    seed: int = 0
    calls: Counter = field(default_factory=Counter)
    name: str = "corridor"
    respond: Callable[[list[str], list[str]], list[str]] | None = None  # in place of the model (tests)

    def __post_init__(self):
        self.tok, self.model = (None, None) if self.respond else pt.frozen_model(GAME_SPEC, self.seed)
        self._played: dict[tuple[str, str], list[Episode]] = {}

    @property
    def hand_written(self) -> str:
        return GAME_HAND_WRITTEN

    def split(self, split: str) -> list[tuple[int, int]]:
        if split not in GAME_SPLITS:
            raise ValueError(f"prompt game split must be one of {list(GAME_SPLITS)}, got {split!r}")
        return GAME_SPLITS[split]

    def _play(self, prompts: list[str], split: str) -> None:
        """Play every (prompt, episode) pair not played yet, all in lockstep (one model call per turn)."""
        todo = [(p, s, g) for p in dict.fromkeys(prompts) if (p, split) not in self._played for s, g in self.split(split)]
        envs = [StartCorridor(g + 1, s) for _, s, g in todo]
        obs = [env.reset(seed=0) for env in envs]
        steps: list[list[Step]] = [[] for _ in todo]
        live = list(range(len(todo)))
        while live:
            prompts, contexts = [todo[i][0] for i in live], [context(envs[i].pos, todo[i][2]) for i in live]
            acts = (self.respond(prompts, contexts) if self.respond
                    else pt.answer(self.tok, self.model, prompts, contexts))
            for i, act in zip(list(live), acts):
                cell = envs[i].pos
                obs[i], _, term, trunc, info = envs[i].step(act)
                steps[i].append(Step(cell, act, "invalid" if info.get("invalid") else obs[i]))
                if term or trunc:
                    live.remove(i)
        for (p, s, g), env, st in zip(todo, envs, steps):
            best = max([s] + [x.cell for x in st] + [env.pos])
            metric = 1.0 if env.success() else (best - s) / (g - s)
            self._played.setdefault((p, split), []).append(Episode(s, g, st, metric, failure_type(st, env.success())))

    def episodes(self, prompt: str, split: str = "train") -> list[Episode]:
        """Every episode of ``split`` played with ``prompt`` (counts as one call on the split)."""
        self.split(split)
        self.calls[split] += 1
        self._play([prompt], split)
        return self._played[prompt, split]

    def score(self, prompts: list[str], split: str = "train") -> np.ndarray:
        """The mean episode metric of each prompt on ``split`` (one call per prompt)."""
        self.split(split)
        self.calls[split] += len(prompts)
        self._play(prompts, split)
        return np.array([np.mean([e.metric for e in self._played[p, split]]) for p in prompts])

    def rule_score(self, prompt: str, split: str = "train") -> float:
        """The metric the hidden rule gives (a perfectly trained policy); not counted."""
        return float(PromptGame(respond=rule_act).score([prompt], split)[0])


__all__ = ["GAME_ERRORS", "GAME_FRAGMENTS", "GAME_HAND_WRITTEN", "GAME_SPEC", "Episode", "PromptGame", "Step",
           "failure_type", "rule_act", "rule_action"]
