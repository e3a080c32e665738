"""Gamble: a short stochastic task where a lucky outcome, not the action, made the best returns.

Each of ``horizon`` steps the agent picks ``0`` (safe: reward 1) or ``1`` (gamble: reward ``payout``
with probability ``win``, else 0; mean 0.6 by default). The safe arm is better in expectation at every
step, but every high return in a random-policy dataset came from gambles that happened to pay. A learner
that conditions on a high return (return-conditioned BC, decision-transformer style) therefore gambles;
one that separates what the action controls from luck (DoC) plays safe.

The observation is the one-hot step index. The env draws its luck every step whatever the action, so
two policies evaluated on the same seeds face the same coin flips (paired episodes). Registered with
gymnasium as ``rlxf/Gamble-v0`` (see ``rlxf.tasks.gym_envs``).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

SAFE, GAMBLE = 0, 1


class Gamble(gym.Env):
    metadata = {"render_modes": []}

    def __init__(self, horizon: int = 3, payout: float = 6.0, win: float = 0.1):
        if horizon < 1 or not 0.0 < win < 1.0:
            raise ValueError(f"Gamble: horizon must be >= 1 and win in (0, 1); got horizon={horizon}, win={win}")
        self.horizon, self.payout, self.win = horizon, payout, win
        self.observation_space = gym.spaces.Box(0.0, 1.0, (horizon,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.t = 0

    def _obs(self) -> np.ndarray:
        obs = np.zeros(self.horizon, dtype=np.float32)
        obs[min(self.t, self.horizon - 1)] = 1.0
        return obs

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        lucky = self.np_random.random() < self.win  # drawn whatever the action: paired luck across policies
        reward = 1.0 if int(action) == SAFE else (self.payout if lucky else 0.0)
        self.t += 1
        return self._obs(), float(reward), self.t >= self.horizon, False, {"lucky": lucky}

    def expected_return(self, action: int) -> float:
        """The return of always playing ``action``: what a policy controls, with luck averaged out."""
        return self.horizon * (1.0 if action == SAFE else self.payout * self.win)
