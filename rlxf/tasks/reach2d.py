"""Reach2D: a 2-D reach around a square obstacle, with two equally good but incompatible ways to do it.

The agent starts near the bottom-left corner of the unit square and must reach the goal near the top-right
corner. A square obstacle fills the middle; touching it ends the episode. Going around on the left
("up then right") and on the right ("right then up") are equally short, but a policy that averages the two
heads for the obstacle. Observation: the position ``(x, y)``; action: a velocity in ``[-1, 1]^2``, moved
``step`` per unit. Reward 1 on reaching the goal (the episode ends), 0 otherwise, so the return is the success.

``scripted_action`` is the demonstrator: style ``"up"`` (up-then-right) or ``"right"`` (right-then-up), with
Gaussian action noise. Registered with gymnasium as ``rlxf/Reach2D-v0`` (see ``rlxf.tasks.gym_envs``).

Goal-conditioned variant ``rlxf/GoalReach2D-v0`` (``goal_range=(lo, hi)``): each episode's goal is drawn
uniformly from ``[lo, hi]^2`` and appended to the observation, ``(x, y, goal_x, goal_y)``.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

GOAL = np.array([0.9, 0.9], dtype=np.float32)
OBSTACLE = (0.25, 0.75)  # the square [lo, hi]^2
STYLES = ("up", "right")
GOAL_RANGE = (0.8, 0.95)  # the goal-conditioned variant's goals: uniform in [lo, hi]^2


class Reach2D(gym.Env):
    metadata = {"render_modes": []}

    def __init__(self, step: float = 0.1, goal_radius: float = 0.08, start_low: float = 0.05,
                 start_high: float = 0.2, goal_range: tuple[float, float] | None = None):
        self.step_size, self.radius = step, goal_radius
        self.start_low, self.start_high = start_low, start_high
        self.goal_range, self.goal = goal_range, GOAL.copy()
        self.observation_space = gym.spaces.Box(0.0, 1.0, (2 if goal_range is None else 4,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.pos = np.zeros(2, dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos = self.np_random.uniform(self.start_low, self.start_high, 2).astype(np.float32)
        if self.goal_range is not None:
            self.goal = self.np_random.uniform(*self.goal_range, 2).astype(np.float32)
        return self._obs(), {}

    def _obs(self) -> np.ndarray:
        return self.pos.copy() if self.goal_range is None else np.concatenate([self.pos, self.goal])

    def step(self, action):
        a = np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)
        self.pos = np.clip(self.pos + self.step_size * a, 0.0, 1.0).astype(np.float32)
        lo, hi = OBSTACLE
        crashed = bool(lo < self.pos[0] < hi and lo < self.pos[1] < hi)
        reached = bool(np.linalg.norm(self.pos - self.goal) <= self.radius)
        return self._obs(), float(reached), crashed or reached, False, {"crashed": crashed}


def scripted_action(pos: np.ndarray, style: str, noise: float = 0.0, rng: np.random.Generator | None = None,
                    step: float = 0.1, goal: np.ndarray = GOAL) -> np.ndarray:
    """A demonstrator's action at ``pos``: ``style`` "up" climbs to the goal's height first, then goes right;
    "right" goes right to the goal's column first, then up. Gaussian noise of std ``noise`` is added.
    ``goal`` defaults to the fixed task's."""
    if style not in STYLES:
        raise ValueError(f"demonstrator style {style!r}: expected one of {STYLES}")
    to_goal = np.clip((goal - pos) / step, -1.0, 1.0)
    first = 1 if style == "up" else 0  # the axis that moves first
    a = to_goal.copy()
    if abs(goal[first] - pos[first]) > 0.05:
        a[1 - first] = 0.0
    if noise > 0:
        a = a + (rng or np.random.default_rng()).normal(0.0, noise, 2)
    return np.clip(a, -1.0, 1.0).astype(np.float32)


def goal_reach2d(**kwargs) -> Reach2D:
    """``rlxf/GoalReach2D-v0`` (registered in :mod:`rlxf.tasks.gym_envs`): a goal per episode in ``GOAL_RANGE``."""
    return Reach2D(goal_range=GOAL_RANGE, **kwargs)
