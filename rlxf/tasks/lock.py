"""PrizeLock: a hard-exploration combination lock with a small and a big prize behind it.

Positions ``0..length``; the observation is the one-hot position. Below ``length`` only the action
``KEY[pos]`` (of 4) moves forward; any other sends the agent back to 0, reward 0. At the end, action 0
takes the small prize (reward 0.5) and action 1 the big one (reward 1.0), both ending the episode; the
others send it back to 0. A random policy opens the lock with probability ``4**-length`` per try, so RL
from scratch almost never sees a reward. ``demo_action`` is the demonstrator: it knows the key but takes
the small prize (a suboptimal expert), with probability ``eps`` acting at random instead. Registered
with gymnasium as ``rlxf/PrizeLock-v0`` (time limit 30 steps; see ``rlxf.tasks.gym_envs``).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

KEY = (2, 0, 3, 1, 2, 3, 0, 1, 3, 2)  # the correct action at each position (the first ``length`` are used)
SMALL, BIG = 0, 1
PRIZES = {SMALL: 0.5, BIG: 1.0}


class PrizeLock(gym.Env):
    metadata = {"render_modes": []}

    def __init__(self, length: int = 8):
        if not 1 <= length <= len(KEY):
            raise ValueError(f"PrizeLock: length must be in 1..{len(KEY)}, got {length}")
        self.length = length
        self.observation_space = gym.spaces.Box(0.0, 1.0, (length + 1,), np.float32)
        self.action_space = gym.spaces.Discrete(4)
        self.pos = 0

    def _obs(self) -> np.ndarray:
        obs = np.zeros(self.length + 1, dtype=np.float32)
        obs[self.pos] = 1.0
        return obs

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos = 0
        return self._obs(), {}

    def step(self, action):
        a = int(action)
        if self.pos == self.length and a in PRIZES:
            return self._obs(), PRIZES[a], True, False, {}
        self.pos = self.pos + 1 if self.pos < self.length and a == KEY[self.pos] else 0
        return self._obs(), 0.0, False, False, {}


def demo_action(obs: np.ndarray, rng: np.random.Generator, eps: float = 0.0) -> int:
    """The demonstrator's action at one-hot position ``obs``: the key, then the small prize; uniformly
    random with probability ``eps``."""
    if eps > 0 and rng.random() < eps:
        return int(rng.integers(4))
    pos, length = int(np.argmax(obs)), len(obs) - 1
    return SMALL if pos == length else KEY[pos]
