"""Classic-control environments in torch, stepping many copies at once: CartPole and Acrobot.

Meta-learning an RL objective (LPO, TA-LPO, GROOVE) trains hundreds of small agents per meta step;
gymnasium's one-env-at-a-time Python loop would dominate that. These envs hold every copy's state in
one ``[n, state]`` tensor and step them with a few tensor ops, with the dynamics, termination, reward
and reset ranges of gymnasium's ``CartPole-v1`` and ``Acrobot-v1`` (checked against gymnasium step by
step in ``tests/test_torch_control.py``). Every copy may have its own physics (a *level*): CartPole's
``gravity, masscart, masspole, length, force_mag`` are per-copy tensors.

Episodes reset automatically: a step that ends an episode returns the next episode's first
observation, with ``done`` set (termination or the time limit; the learner here does not bootstrap
through time-limit ends, see :mod:`rlxf.algorithms.control.lpo`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

CARTPOLE_DEFAULT = {"gravity": 9.8, "masscart": 1.0, "masspole": 0.1, "length": 0.5, "force_mag": 10.0}


@dataclass
class Step:
    obs: Tensor  # [n, obs_dim], after an automatic reset where done
    reward: Tensor  # [n]
    done: Tensor  # [n] bool: terminated or truncated
    terminated: Tensor  # [n] bool


class TorchEnv:
    """Shared reset and time-limit plumbing; subclasses define ``_reset_state``, ``_dynamics``, ``obs``."""

    obs_dim: int
    n_actions: int
    max_steps: int

    def __init__(self, n: int, seed: int = 0, dtype: torch.dtype = torch.float32, max_steps: int | None = None):
        self.n, self.dtype = n, dtype
        self.gen = torch.Generator().manual_seed(seed)
        if max_steps is not None:
            self.max_steps = max_steps
        self.t = torch.zeros(n, dtype=torch.long)
        self.state = self._reset_state(n)

    def _uniform(self, n: int, dim: int, low: float, high: float) -> Tensor:
        return torch.rand(n, dim, generator=self.gen, dtype=self.dtype) * (high - low) + low

    def reset(self) -> Tensor:
        self.state, self.t = self._reset_state(self.n), torch.zeros(self.n, dtype=torch.long)
        return self.obs(self.state)

    def step(self, action: Tensor) -> Step:
        state, reward, terminated = self._dynamics(self.state, action)
        self.t = self.t + 1
        done = terminated | (self.t >= self.max_steps)
        if done.any():
            state = torch.where(done[:, None], self._reset_state(self.n), state)
            self.t = torch.where(done, 0, self.t)
        self.state = state
        return Step(self.obs(state), reward, done, terminated)

    def _reset_state(self, n: int) -> Tensor:
        raise NotImplementedError

    def _dynamics(self, state: Tensor, action: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        raise NotImplementedError

    def obs(self, state: Tensor) -> Tensor:
        raise NotImplementedError


class CartPole(TorchEnv):
    """gymnasium ``CartPole-v1`` (Euler integration, tau 0.02, reward 1 per step including the last,
    x beyond 2.4 or the pole beyond 12 degrees terminates, 500 steps); ``params`` override the
    physics per copy (scalars or ``[n]`` tensors; keys of :data:`CARTPOLE_DEFAULT`)."""

    obs_dim, n_actions, max_steps = 4, 2, 500
    tau, x_threshold, theta_threshold = 0.02, 2.4, 12 * 2 * math.pi / 360

    def __init__(self, n: int, seed: int = 0, params: dict | None = None, **kw):
        unknown = set(params or {}) - set(CARTPOLE_DEFAULT)
        if unknown:
            raise ValueError(f"CartPole params: unknown {sorted(unknown)}; expected some of {sorted(CARTPOLE_DEFAULT)}")
        super().__init__(n, seed, **kw)
        p = {**CARTPOLE_DEFAULT, **(params or {})}
        self.p = {k: torch.as_tensor(v, dtype=self.dtype).expand(n) for k, v in p.items()}

    def _reset_state(self, n: int) -> Tensor:
        return self._uniform(n, 4, -0.05, 0.05)

    def _dynamics(self, state, action):
        p = self.p
        x, x_dot, theta, theta_dot = state.unbind(-1)
        force = torch.where(action == 1, p["force_mag"], -p["force_mag"])
        total_mass = p["masspole"] + p["masscart"]
        polemass_length = p["masspole"] * p["length"]
        cos, sin = torch.cos(theta), torch.sin(theta)
        temp = (force + polemass_length * theta_dot**2 * sin) / total_mass
        thetaacc = (p["gravity"] * sin - cos * temp) / (p["length"] * (4.0 / 3.0 - p["masspole"] * cos**2 / total_mass))
        xacc = temp - polemass_length * thetaacc * cos / total_mass
        new = torch.stack([x + self.tau * x_dot, x_dot + self.tau * xacc, theta + self.tau * theta_dot,
                           theta_dot + self.tau * thetaacc], -1)
        terminated = (new[:, 0].abs() > self.x_threshold) | (new[:, 2].abs() > self.theta_threshold)
        return new, torch.ones(self.n, dtype=self.dtype), terminated

    def obs(self, state: Tensor) -> Tensor:
        return state.float()


class Acrobot(TorchEnv):
    """gymnasium ``Acrobot-v1`` ("book" dynamics, one RK4 step of dt 0.2, torques -1/0/+1, reward -1
    per step and 0 on reaching the height, 500 steps)."""

    obs_dim, n_actions, max_steps = 6, 3, 500
    dt, max_vel_1, max_vel_2 = 0.2, 4 * math.pi, 9 * math.pi
    m1 = m2 = l1 = 1.0
    lc1 = lc2 = 0.5
    moi = 1.0

    def _reset_state(self, n: int) -> Tensor:
        return self._uniform(n, 4, -0.1, 0.1)

    def _dsdt(self, s: Tensor, a: Tensor) -> Tensor:
        m1, m2, l1, lc1, lc2, i1, g = self.m1, self.m2, self.l1, self.lc1, self.lc2, self.moi, 9.8
        theta1, theta2, dtheta1, dtheta2 = s.unbind(-1)
        d1 = m1 * lc1**2 + m2 * (l1**2 + lc2**2 + 2 * l1 * lc2 * torch.cos(theta2)) + i1 + i1
        d2 = m2 * (lc2**2 + l1 * lc2 * torch.cos(theta2)) + i1
        phi2 = m2 * lc2 * g * torch.cos(theta1 + theta2 - math.pi / 2.0)
        phi1 = (-m2 * l1 * lc2 * dtheta2**2 * torch.sin(theta2) - 2 * m2 * l1 * lc2 * dtheta2 * dtheta1 * torch.sin(theta2)
                + (m1 * lc1 + m2 * l1) * g * torch.cos(theta1 - math.pi / 2) + phi2)
        ddtheta2 = ((a + d2 / d1 * phi1 - m2 * l1 * lc2 * dtheta1**2 * torch.sin(theta2) - phi2)
                    / (m2 * lc2**2 + i1 - d2**2 / d1))
        ddtheta1 = -(d2 * ddtheta2 + phi1) / d1
        return torch.stack([dtheta1, dtheta2, ddtheta1, ddtheta2], -1)

    def _dynamics(self, state, action):
        a, dt = (action.to(self.dtype) - 1.0), self.dt
        k1 = self._dsdt(state, a)
        k2 = self._dsdt(state + dt / 2 * k1, a)
        k3 = self._dsdt(state + dt / 2 * k2, a)
        k4 = self._dsdt(state + dt * k3, a)
        ns = state + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
        wrap = lambda x: torch.remainder(x + math.pi, 2 * math.pi) - math.pi  # noqa: E731
        ns = torch.stack([wrap(ns[:, 0]), wrap(ns[:, 1]), ns[:, 2].clamp(-self.max_vel_1, self.max_vel_1),
                          ns[:, 3].clamp(-self.max_vel_2, self.max_vel_2)], -1)
        terminated = (-torch.cos(ns[:, 0]) - torch.cos(ns[:, 1] + ns[:, 0])) > 1.0
        return ns, torch.where(terminated, 0.0, -1.0).to(self.dtype), terminated

    def obs(self, state: Tensor) -> Tensor:
        s = state
        return torch.stack([torch.cos(s[:, 0]), torch.sin(s[:, 0]), torch.cos(s[:, 1]), torch.sin(s[:, 1]),
                            s[:, 2], s[:, 3]], -1).float()


ENVS = {"cartpole": CartPole, "acrobot": Acrobot}


def make_torch_env(name: str, n: int, seed: int = 0, **kw) -> TorchEnv:
    if name not in ENVS:
        raise ValueError(f"torch env {name!r} unknown; expected one of {sorted(ENVS)}")
    return ENVS[name](n, seed, **kw)
