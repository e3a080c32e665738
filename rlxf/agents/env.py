"""The text-environment interface: ``reset() -> observation`` and ``step(action) -> (observation, reward,
terminated, truncated, info)``, as in gymnasium but with text on both sides.

A task subclasses :class:`TextEnv` and writes four hooks: ``_reset`` (new episode, first observation),
``parse`` (the model's action text to a move, or None when it is not a legal action), ``_step`` (apply a
parsed move) and ``success``. Optional hooks give the reference policies datasets and tests need:
``expert_action`` (the optimal or gold policy's next action) and ``random_action`` (a uniformly random
legal one). The base class does the rest the same way for every task:

- an action that does not parse is an environment event, never an exception: the episode goes on, the
  reward is ``invalid_penalty`` and ``info["invalid"]`` is True;
- after ``max_turns`` turns (invalid ones included) an unfinished episode is *truncated*, not terminated,
  so value targets bootstrap from the last observation, as in control;
- stepping a finished episode, or one never reset, is a programming error and raises :class:`EnvError`.

Environments are plug-ins by import path, like reward functions: :func:`make_env` takes a built-in name
(:data:`ENVS`) or ``file.py:factory`` / ``module:factory``, where the factory returns a TextEnv.
"""

from __future__ import annotations

import importlib
import random
from typing import Any

StepResult = tuple[str, float, bool, bool, dict]


class EnvError(RuntimeError):
    """An environment used out of order (step before reset, step after the end) or a bad plug-in."""


class TextEnv:
    """Base class of every text environment (see the module docstring for the hooks)."""

    name: str = "text_env"
    max_turns: int = 20
    invalid_penalty: float = -1.0

    def __init__(self, max_turns: int | None = None, invalid_penalty: float | None = None):
        if max_turns is not None:
            if max_turns < 1:
                raise ValueError(f"{self.name}: max_turns must be >= 1, got {max_turns}")
            self.max_turns = max_turns
        if invalid_penalty is not None:
            self.invalid_penalty = invalid_penalty
        self.turn = 0
        self.done = True
        self.rng = random.Random(0)

    # -- the interface --------------------------------------------------------------------------
    def reset(self, seed: int | None = None) -> str:
        """Start an episode (``seed`` fixes everything random in it) and return the first observation."""
        self.rng = random.Random(seed)
        self.turn, self.done = 0, False
        return self._reset()

    def step(self, action: str) -> StepResult:
        if self.done:
            raise EnvError(f"{self.name}: step() called on a finished episode (or before reset()); call reset()")
        move = self.parse(action)
        if move is None:
            obs, reward, terminated, info = self.invalid_observation(action), self.invalid_penalty, False, {}
            info["invalid"] = True
        else:
            obs, reward, terminated, info = self._step(move)
            info.setdefault("invalid", False)
        self.turn += 1
        truncated = not terminated and self.turn >= self.max_turns
        self.done = terminated or truncated
        info["turn"] = self.turn
        return obs, float(reward), bool(terminated), bool(truncated), info

    # -- hooks a task writes ---------------------------------------------------------------------
    def _reset(self) -> str:
        raise NotImplementedError

    def parse(self, action: str) -> Any | None:
        """The move ``action`` names, or None when it is not a legal action (never raise on model text)."""
        raise NotImplementedError

    def _step(self, move: Any) -> tuple[str, float, bool, dict]:
        """Apply a parsed move: ``(observation, reward, terminated, info)``."""
        raise NotImplementedError

    def success(self) -> bool:
        """Whether the episode so far reached the task's goal."""
        raise NotImplementedError

    def invalid_observation(self, action: str) -> str:
        """What the agent sees after an action that does not parse."""
        return f"invalid action: {action.strip()[:60]!r}"

    def expert_action(self) -> str:
        """The next action of the task's optimal (or gold) reference policy, from the true state."""
        raise NotImplementedError(f"{self.name} has no expert policy")

    def random_action(self, rng: random.Random) -> str:
        """A uniformly random legal action."""
        raise NotImplementedError(f"{self.name} has no random policy")

    def words(self) -> list[str]:
        """Every whitespace-separated word an observation or action can contain (for tiny word-level
        tokenizers; see :func:`rlxf.agents.render.agent_tokenizer`). Empty when not enumerable."""
        return []


class VecTextEnv:
    """``n`` environments stepped together. ``reset(seeds)`` starts all of them; ``step(actions)`` takes one
    action per environment still running (``active()``) and returns lists in that order."""

    def __init__(self, envs: list[TextEnv]):
        if not envs:
            raise ValueError("VecTextEnv needs at least one environment")
        self.envs = envs

    def __len__(self) -> int:
        return len(self.envs)

    def reset(self, seeds: list[int]) -> list[str]:
        if len(seeds) != len(self.envs):
            raise ValueError(f"reset: {len(seeds)} seeds for {len(self.envs)} environments")
        return [env.reset(seed) for env, seed in zip(self.envs, seeds)]

    def active(self) -> list[int]:
        return [i for i, env in enumerate(self.envs) if not env.done]

    def step(self, actions: list[str]) -> list[StepResult]:
        running = self.active()
        if len(actions) != len(running):
            raise ValueError(f"step: {len(actions)} actions for {len(running)} running environments")
        return [self.envs[i].step(a) for i, a in zip(running, actions)]


ENVS: dict[str, str] = {
    # one line per built-in task: "name": "rlxf.agents.tasks.<module>:<factory>"
    "corridor": "rlxf.agents.tasks.corridor:make",
    "maze": "rlxf.agents.tasks.maze:make",
    "maze_po": "rlxf.agents.tasks.maze:make_po",
    "wordle": "rlxf.agents.tasks.wordle:make",
    "web": "rlxf.agents.tasks.web:make",
    "twenty_questions": "rlxf.agents.tasks.dialogue:make_twenty_questions",
    "guess_my_city": "rlxf.agents.tasks.dialogue:make_guess_my_city",
    "car_dealer": "rlxf.agents.tasks.car_dealer:make",
    "endgame": "rlxf.agents.tasks.endgame:make",
    "tools": "rlxf.agents.tasks.tools:make",
}
"""Built-in environments by name -> ``module:factory``."""


def make_env(spec: str, **kwargs) -> TextEnv:
    """A text environment from a built-in name (:data:`ENVS`), ``module:factory`` or ``file.py:factory``;
    ``kwargs`` go to the factory. Errors name the spec and what was expected."""
    from rlxf.rewards.specs import RewardSpecError, load_function

    target = ENVS.get(spec, spec)
    if ":" not in target:
        raise EnvError(f"environment {spec!r}: not a built-in ({', '.join(sorted(ENVS)) or 'none registered'}) "
                       "and not file.py:factory or module:factory")
    try:
        if not target.endswith(".py") and "/" not in target and target.split(":")[0].startswith("rlxf."):
            module, _, attr = target.partition(":")
            factory = getattr(importlib.import_module(module), attr)
        else:
            factory = load_function(target, "environment")
    except RewardSpecError as e:
        raise EnvError(str(e)) from None
    try:
        env = factory(**kwargs)
    except TypeError as e:
        raise EnvError(f"environment {spec!r}: the factory does not take these options ({e})") from None
    if not isinstance(env, TextEnv):
        raise EnvError(f"environment {spec!r}: the factory returned a {type(env).__name__}, expected a "
                       "rlxf.agents.env.TextEnv")
    return env
