"""Multi-turn episodes: running actors in text environments, scripted policies of set skill, offline
datasets on disk, and success rates.

An *actor* chooses the next action of every running episode at once::

    actor(envs: list[TextEnv], episodes: list[TextEpisode]) -> list[str]

Scripted actors read the true state through ``env.expert_action()`` / ``env.random_action(rng)``; an LM
actor (:func:`rlxf.agents.render.lm_actor`) reads only the episode's text.
"""

from __future__ import annotations

import json
import math
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from rlxf.agents.env import TextEnv, VecTextEnv


@dataclass
class TextEpisode:
    """One episode: ``observations`` has one more entry than ``actions``/``rewards`` (the last is what the
    agent saw when it ended). ``truncated`` means the turn limit cut it (bootstrap from the last
    observation); ``terminated`` that the task ended it. ``policy`` names what produced it (a skill level,
    a method). ``action_ids``/``action_logps`` keep an LM actor's sampled tokens (never written to disk)."""

    env: str
    seed: int
    observations: list[str]
    actions: list[str] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    invalid: list[bool] = field(default_factory=list)
    terminated: bool = False
    truncated: bool = False
    success: bool = False
    policy: str = ""
    action_ids: list[list[int]] | None = None
    action_logps: list[list[float]] | None = None

    def __len__(self) -> int:
        return len(self.actions)

    @property
    def done(self) -> bool:
        return self.terminated or self.truncated

    @property
    def ret(self) -> float:
        return float(sum(self.rewards))

    def returns_to_go(self, gamma: float = 1.0, bootstrap: float = 0.0) -> list[float]:
        """``G_t = r_t + gamma G_{t+1}`` per turn; the tail is ``bootstrap`` (the value of the last observation)
        when the episode was truncated, else 0."""
        g = bootstrap if self.truncated else 0.0
        out = []
        for r in reversed(self.rewards):
            g = r + gamma * g
            out.append(g)
        return out[::-1]


Actor = Callable[[list[TextEnv], list[TextEpisode]], list[str]]


def run_episodes(make: Callable[[], TextEnv], actor: Actor, seeds: list[int], policy: str = "",
                 batch: int = 64) -> list[TextEpisode]:
    """Play one episode per seed with ``actor``, ``batch`` environments at a time; episodes in seed order."""
    out: list[TextEpisode] = []
    for start in range(0, len(seeds), batch):
        chunk = seeds[start : start + batch]
        vec = VecTextEnv([make() for _ in chunk])
        first = vec.reset(chunk)
        episodes = [TextEpisode(env=e.name, seed=s, observations=[o], policy=policy)
                    for e, s, o in zip(vec.envs, chunk, first)]
        while running := vec.active():
            actions = actor([vec.envs[i] for i in running], [episodes[i] for i in running])
            if len(actions) != len(running):
                raise ValueError(f"the actor returned {len(actions)} actions for {len(running)} running episodes")
            for i, action, (obs, reward, term, trunc, info) in zip(running, actions, vec.step(actions)):
                ep = episodes[i]
                ep.actions.append(action)
                ep.rewards.append(reward)
                ep.invalid.append(bool(info.get("invalid", False)))
                ep.observations.append(obs)
                ep.terminated, ep.truncated = term, trunc
                if term or trunc:
                    ep.success = bool(vec.envs[i].success())
        out.extend(episodes)
    return out


def skill_actor(skill: float, seed: int = 0) -> Actor:
    """A scripted policy of set skill: each turn, the expert's action with probability ``skill``, else a
    uniformly random legal action (skill 1 is the optimal reference policy, 0 the random one)."""
    if not 0.0 <= skill <= 1.0:
        raise ValueError(f"skill must be in [0, 1], got {skill}")
    rng = random.Random(seed)

    def act(envs: list[TextEnv], episodes: list[TextEpisode]) -> list[str]:
        return [env.expert_action() if rng.random() < skill else env.random_action(rng) for env in envs]

    return act


def scripted_dataset(make: Callable[[], TextEnv], skills: dict[str, float], episodes_per_skill: int,
                     seed: int = 0) -> list[TextEpisode]:
    """An offline dataset of mixed quality: ``episodes_per_skill`` episodes from :func:`skill_actor` at each
    named skill level (the name goes in ``episode.policy``). Environment seeds are distinct across the
    whole dataset and start at ``seed * 1_000_000``, so held-out evaluation seeds can avoid them."""
    out: list[TextEpisode] = []
    base = seed * 1_000_000
    for k, (name, skill) in enumerate(skills.items()):
        seeds = [base + k * episodes_per_skill + i for i in range(episodes_per_skill)]
        out.extend(run_episodes(make, skill_actor(skill, seed=base + k), seeds, policy=name))
    return out


def success_rate(episodes: list[TextEpisode]) -> tuple[float, float]:
    """Mean success and its standard error."""
    if not episodes:
        raise ValueError("success_rate of no episodes")
    x = [float(e.success) for e in episodes]
    m = sum(x) / len(x)
    se = math.sqrt(m * (1 - m) / (len(x) - 1)) if len(x) > 1 else float("nan")
    return m, se


# -- disk: one JSON object per line -------------------------------------------------------------

_FIELDS = {"env": str, "seed": int, "observations": list, "actions": list, "rewards": list, "invalid": list,
           "terminated": bool, "truncated": bool, "success": bool, "policy": str}


class EpisodeFileError(ValueError):
    """An episode file that cannot be read: names the file, line and field."""


def write_episodes(path: str | os.PathLike, episodes: list[TextEpisode]) -> Path:
    """Write ``episodes`` as JSON lines, atomically (a crash leaves no half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        for ep in episodes:
            row = {k: v for k, v in asdict(ep).items() if k in _FIELDS}
            f.write(json.dumps(row) + "\n")
    os.replace(tmp, path)
    return path


def read_episodes(path: str | os.PathLike) -> list[TextEpisode]:
    """Read a file written by :func:`write_episodes` (or by hand), checking every line's fields."""
    path = Path(path)
    if not path.is_file():
        raise EpisodeFileError(f"{path}: no such episode file")
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise EpisodeFileError(f"{path}:{n}: not JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise EpisodeFileError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
        for key in ("env", "observations", "actions", "rewards"):
            if key not in row:
                raise EpisodeFileError(f"{path}:{n}: missing field {key!r}")
        for key, kind in _FIELDS.items():
            if key in row and not isinstance(row[key], kind):
                raise EpisodeFileError(f"{path}:{n}: field {key!r} should be a {kind.__name__}, "
                                       f"got {type(row[key]).__name__}")
        t = len(row["actions"])
        if len(row["observations"]) != t + 1:
            raise EpisodeFileError(f"{path}:{n}: field 'observations' has {len(row['observations'])} entries; "
                                   f"expected one more than the {t} actions")
        if len(row["rewards"]) != t:
            raise EpisodeFileError(f"{path}:{n}: field 'rewards' has {len(row['rewards'])} entries for {t} actions")
        if not all(isinstance(r, (int, float)) and math.isfinite(r) for r in row["rewards"]):
            raise EpisodeFileError(f"{path}:{n}: field 'rewards' must hold finite numbers")
        row.setdefault("invalid", [False] * t)
        row.setdefault("seed", 0)
        out.append(TextEpisode(**{k: row[k] for k in _FIELDS if k in row}))
    return out
