"""SPO for control: self-play preference optimisation with no reward model.

Swamy, Dann, Kidambi, Wu, Agarwal, "A Minimaximalist Approach to Reinforcement Learning from Human
Feedback" (ICML 2024). Each new trajectory's reward is its win rate against a queue of the agent's
own recent trajectories, ``r(xi) = mean_{xi' in queue} P(xi > xi')``, spread evenly over its H steps
(``r / H`` per step), then any RL learner optimises it; here the shared PPO. Because it only ever
asks "which of these two is better", it works for intransitive and noisy preference functions.

The preference oracle is any labeler with ``prefers_first(scores_a, scores_b)`` (Bradley-Terry,
intransitive mixtures) or ``label(...)`` returning 1 / 0 / 0.5 / NaN (the B-Pref teacher; a skipped
query counts as a draw); ``score(episode)`` gives what it compares (by default the env return).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from rlxf.algorithms.control.ppo import PPO, PPOConfig
from rlxf.algorithms.control.rollout import EpisodeRecorder, Rollout
from rlxf.data.transitions import Episode
from rlxf.policies.control import single_thread


def _spo_ppo() -> PPOConfig:
    return PPOConfig(gamma=1.0, lam=0.95, epochs=10, anneal=False, ent_coef=0.0, lr=1e-3)


@dataclass
class SPOConfig:
    ppo: PPOConfig = field(default_factory=_spo_ppo)
    queue_size: int = 32  # the most recent own trajectories a new one is compared against
    max_episode_steps: int = 500  # cap on one episode-collection pass


def episode_return(ep: Episode) -> np.ndarray:
    """The default thing a labeler compares: the env's (hidden) return."""
    return np.array(ep.ret)


def win_probability(labeler, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """One answer per pair as a number in [0, 1]: 1 if the first wins, 0 if not, 0.5 tie or skip."""
    if hasattr(labeler, "prefers_first"):
        return np.asarray(labeler.prefers_first(a, b), dtype=float)
    labels = np.asarray(labeler.label(a, b), dtype=float)
    return np.where(np.isnan(labels), 0.5, labels)


def win_rates(labeler, new: list[Episode], queue: list[Episode], score: Callable = episode_return) -> np.ndarray:
    """``[len(new)]``: each new trajectory's mean win against every queued one (one query each)."""
    sa = np.stack([score(e) for e in new])
    sq = np.stack([score(e) for e in queue])
    a = np.repeat(sa, len(queue), axis=0)
    b = np.tile(sq, (len(new),) + (1,) * (sq.ndim - 1))
    return win_probability(labeler, a, b).reshape(len(new), len(queue)).mean(1)


def spread_rewards(ro: Rollout, episodes: list[Episode], rewards: np.ndarray) -> torch.Tensor:
    """``[n_envs, T]`` per-step rewards: row ``i``'s episode gets ``rewards[i] / H_i`` on each of its steps.

    With episode collection env ``i``'s first episode is row ``i``'s valid steps.
    """
    out = torch.zeros_like(ro.raw_rewards)
    for i, (ep, r) in enumerate(zip(episodes, rewards)):
        out[i, : len(ep)] = float(r) / len(ep)
    return out


class SPO:
    """PPO whose reward is the win rate against a queue of its own trajectories."""

    def __init__(self, cfg: SPOConfig, labeler, score: Callable = episode_return, env_spec=None):
        self.cfg, self.labeler, self.score = cfg, labeler, score
        self.ppo = PPO(cfg.ppo, env_spec)
        self.queue: deque[Episode] = deque(maxlen=cfg.queue_size)
        self.queries = 0

    def iteration(self) -> dict:
        """One episode per env copy, scored against the queue (or each other, at the start), one PPO update."""
        self.ppo.obs = self.ppo.env.reset()
        ro = self.ppo.collect(until_done=True, n_steps=self.cfg.max_episode_steps)
        episodes = EpisodeRecorder(self.ppo.env.n_envs).add(ro)
        if len(episodes) != ro.obs.shape[0]:  # an env hit the cap without ending: cut it as truncated
            raise RuntimeError(f"SPO: an episode ran past max_episode_steps={self.cfg.max_episode_steps}; "
                               f"set it to at least the env's time limit")
        opponents = list(self.queue) or episodes
        wins = win_rates(self.labeler, episodes, opponents, self.score)
        self.queries += len(episodes) * len(opponents)
        stats = self.ppo.update(ro, spread_rewards(ro, episodes, wins))
        self.queue.extend(episodes)
        return {"mean_return": float(np.mean([e.ret for e in episodes])), "win_rate": float(wins.mean()), **stats}

    def train(self, iterations: int, log: Callable | None = None) -> list[dict]:
        history = []
        with single_thread():
            for it in range(iterations):
                row = {"iteration": it, "steps": self.ppo.steps_done, **self.iteration()}
                history.append(row)
                if log is not None:
                    log(row)
        return history
