"""Vectorised gymnasium environments: the one place control code makes, steps and normalises envs.

``VecEnv`` wraps a gymnasium (1.x) ``SyncVectorEnv`` in same-step autoreset mode, so a step that
ends an episode returns the *next* episode's first observation and reports the last observation of
the finished one in ``final_obs``. That is what makes time-limit truncation bootstrappable
(``V(final_obs)``) while a termination is not. Observation and reward normalisation follow the
usual running-statistics recipe (Welford mean/variance; rewards scaled by the running std of the
discounted return). Environments that need no download: CartPole-v1, Acrobot-v1, Pendulum-v1,
MountainCarContinuous-v0; MuJoCo ids work when the optional ``mujoco`` package is installed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import gymnasium as gym
import numpy as np

import rlxf.tasks.render  # noqa: F401  (picks MuJoCo's off-screen GL backend before any MuJoCo env is made)

EnvSpec = str | Callable[[], gym.Env]

# rlxf's own environments, made by id like the gymnasium ones
if "rlxf/Reach2D-v0" not in gym.registry:  # two equally good, incompatible ways around an obstacle (reach2d.py)
    gym.register(id="rlxf/Reach2D-v0", entry_point="rlxf.tasks.reach2d:Reach2D", max_episode_steps=40)
if "rlxf/GoalReach2D-v0" not in gym.registry:  # Reach2D with a goal per episode in the observation (BESO)
    gym.register(id="rlxf/GoalReach2D-v0", entry_point="rlxf.tasks.reach2d:goal_reach2d", max_episode_steps=40)
if "rlxf/ShortVideo-v0" not in gym.registry:  # a simulated user's short-video session: watch time, likes, shares
    gym.register(id="rlxf/ShortVideo-v0", entry_point="rlxf.tasks.short_video:ShortVideo")
if "rlxf/Gamble-v0" not in gym.registry:  # luck, not the action, made the best returns (gamble.py; DoC vs RvS)
    gym.register(id="rlxf/Gamble-v0", entry_point="rlxf.tasks.gamble:Gamble")
if "rlxf/PrizeLock-v0" not in gym.registry:  # hard exploration with a suboptimal demonstrator (lock.py)
    gym.register(id="rlxf/PrizeLock-v0", entry_point="rlxf.tasks.lock:PrizeLock", max_episode_steps=30)
for _task in ("reach-v3", "push-v3", "pick-place-v3"):  # Meta-World ML1 (metaworld_envs.py); imported on make only
    for _suffix, _split in (("", "train"), ("-test", "test")):  # test: an episode ends at its first success
        if f"rlxf/ML1-{_task}{_suffix}" not in gym.registry:
            gym.register(id=f"rlxf/ML1-{_task}{_suffix}", entry_point="rlxf.tasks.metaworld_envs:ML1Env",
                         kwargs={"task": _task, "split": _split, "terminate_on_success": _split == "test"},
                         max_episode_steps=500, disable_env_checker=True)


class EnvError(ValueError):
    """An environment that cannot be made or that produced input the learner cannot use."""


class RunningMeanStd:
    """Running mean and variance of vectors (parallel Welford; Chan et al. 1979)."""

    def __init__(self, shape: tuple[int, ...] = ()):
        self.mean = np.zeros(shape, dtype=np.float64)
        self.var = np.ones(shape, dtype=np.float64)
        self.count = 1e-4

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float64)
        b_mean, b_var, b_n = x.mean(axis=0), x.var(axis=0), x.shape[0]
        delta, total = b_mean - self.mean, self.count + b_n
        self.mean = self.mean + delta * b_n / total
        m2 = self.var * self.count + b_var * b_n + delta**2 * self.count * b_n / total
        self.var, self.count = m2 / total, total

    def state_dict(self) -> dict:
        return {"mean": self.mean.copy(), "var": self.var.copy(), "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.var, self.count = np.array(state["mean"]), np.array(state["var"]), float(state["count"])


def _make_one(spec: EnvSpec, max_episode_steps: int | None) -> gym.Env:
    if callable(spec):
        env = spec()
        if max_episode_steps is not None:
            env = gym.wrappers.TimeLimit(env, max_episode_steps)
        return env
    try:
        return gym.make(spec, max_episode_steps=max_episode_steps)
    except gym.error.Error as e:  # NameNotFound, VersionNotFound, missing optional dependency
        known = ", ".join(sorted(k for k in gym.registry if "/" not in k and k[0].isupper())[:12])
        raise EnvError(
            f"environment id {spec!r} cannot be made ({type(e).__name__}: {e}); expected a registered "
            f"gymnasium id such as CartPole-v1, Acrobot-v1, Pendulum-v1 or MountainCarContinuous-v0 "
            f"(registered: {known}, ...)"
        ) from None


@dataclass
class StepResult:
    """One vector step, every array ``[n_envs, ...]``. ``final_obs`` is meaningful where ``done``."""

    obs: np.ndarray
    rewards: np.ndarray  # normalised if reward normalisation is on
    raw_rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    final_obs: np.ndarray
    episode_returns: list[float] = field(default_factory=list)  # raw returns of episodes ended here
    raw_final_obs: np.ndarray | None = None  # ``final_obs`` before normalisation (None when not normalising)
    reward_terms: np.ndarray | None = None  # ``[n_envs, K]`` raw reward terms read from ``info`` (None unless asked for)

    @property
    def done(self) -> np.ndarray:
        return self.terminated | self.truncated


class VecEnv:
    """``n_envs`` copies of an environment stepped together, with optional normalisation.

    ``spec`` is a gymnasium id or a zero-argument factory (for hand-made envs). Continuous actions
    are clipped to the action box before stepping. Every observation is checked to be finite.
    ``reward_terms`` names ``info`` keys (e.g. Reacher's ``reward_dist``, ``reward_ctrl``) whose values
    each step reports as ``StepResult.reward_terms``, for critics that learn one reward term each.
    """

    def __init__(self, spec: EnvSpec, n_envs: int = 8, seed: int = 0, norm_obs: bool = False,
                 norm_reward: bool = False, gamma: float = 0.99, max_episode_steps: int | None = None,
                 obs_rms: RunningMeanStd | None = None, update_stats: bool = True, clip: float = 10.0,
                 reward_terms: tuple[str, ...] = ()):
        if n_envs < 1:
            raise EnvError(f"n_envs must be >= 1, got {n_envs}")
        self.name = spec if isinstance(spec, str) else getattr(spec, "__name__", "custom env")
        first = _make_one(spec, max_episode_steps)
        fns = [lambda e=first: e] + [lambda: _make_one(spec, max_episode_steps) for _ in range(n_envs - 1)]
        self.envs = gym.vector.SyncVectorEnv(fns, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
        self.n_envs, self.seed, self.gamma, self.clip = n_envs, seed, gamma, clip
        self.reward_terms = tuple(reward_terms)
        obs_space, act_space = self.envs.single_observation_space, self.envs.single_action_space
        if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
            raise EnvError(f"{self.name}: expected a flat Box observation space, got {obs_space}")
        self.obs_shape: tuple[int, ...] = tuple(obs_space.shape)
        self.discrete = isinstance(act_space, gym.spaces.Discrete)
        if not self.discrete and not isinstance(act_space, gym.spaces.Box):
            raise EnvError(f"{self.name}: expected a Discrete or Box action space, got {act_space}")
        self.action_space = act_space
        self.norm_obs, self.norm_reward, self.update_stats = norm_obs, norm_reward, update_stats
        self.obs_rms = obs_rms if obs_rms is not None else RunningMeanStd(self.obs_shape)
        self.ret_rms = RunningMeanStd(())
        self._ret = np.zeros(n_envs)
        self._ep_ret = np.zeros(n_envs)
        self._t = 0
        self._seeded = False
        self.raw_obs: np.ndarray | None = None  # the latest observation before normalisation (kept only when normalising)

    # -- spaces -----------------------------------------------------------
    @property
    def obs_dim(self) -> int:
        return self.obs_shape[0]

    @property
    def action_dim(self) -> int:
        """Number of actions (discrete) or the action vector's length (continuous)."""
        return int(self.action_space.n) if self.discrete else int(self.action_space.shape[0])

    def check_obs_shape(self, shape: tuple[int, ...], source: str) -> None:
        """Raise if observations of ``shape`` from ``source`` (e.g. a dataset) cannot feed this env's policy."""
        if tuple(shape) != self.obs_shape:
            raise EnvError(f"{source}: observations have shape {tuple(shape)}, but {self.name} expects {self.obs_shape}")

    # -- stepping ---------------------------------------------------------
    def _check(self, obs: np.ndarray) -> None:
        bad = ~np.isfinite(obs).all(axis=-1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise EnvError(f"{self.name}: env {i} returned a non-finite observation {obs[i].tolist()} at step "
                           f"{self._t}; expected finite values of shape {self.obs_shape}")

    def normalize(self, obs: np.ndarray) -> np.ndarray:
        """Observations scaled by the running statistics (identity when ``norm_obs`` is off)."""
        if not self.norm_obs:
            return obs.astype(np.float32)
        z = (obs - self.obs_rms.mean) / np.sqrt(self.obs_rms.var + 1e-8)
        return np.clip(z, -self.clip, self.clip).astype(np.float32)

    def _keep_raw(self, obs: np.ndarray) -> None:
        if self.norm_obs:  # without normalisation the returned observations are the raw ones: no copy on the hot path
            self.raw_obs = obs.astype(np.float32)

    def reset(self) -> np.ndarray:
        """Start new episodes in every copy; only the first reset is seeded (later ones continue the RNG)."""
        obs, _ = self.envs.reset(seed=None if self._seeded else self.seed)
        self._seeded = True
        self._check(obs)
        self._keep_raw(obs)
        if self.norm_obs and self.update_stats:
            self.obs_rms.update(obs)
        self._ret[:] = 0.0
        self._ep_ret[:] = 0.0
        return self.normalize(obs)

    def step(self, actions: np.ndarray) -> StepResult:
        actions = np.asarray(actions)
        if not self.discrete:
            actions = np.clip(actions, self.action_space.low, self.action_space.high)
        obs, rew, term, trunc, info = self.envs.step(actions)
        self._t += 1
        self._check(obs)
        done = term | trunc
        final = obs.copy()
        if done.any():
            for i in np.flatnonzero(done):
                final[i] = info["final_obs"][i]
            self._check(final)
        self._keep_raw(obs)
        if self.norm_obs and self.update_stats:
            self.obs_rms.update(obs)
        rew = rew.astype(np.float64)
        self._ep_ret += rew
        returns = self._ep_ret[done].tolist()
        self._ep_ret[done] = 0.0
        scaled = rew
        if self.norm_reward:
            self._ret = self._ret * self.gamma + rew
            if self.update_stats:
                self.ret_rms.update(self._ret)
            scaled = np.clip(rew / np.sqrt(self.ret_rms.var + 1e-8), -self.clip, self.clip)
            self._ret[done] = 0.0
        return StepResult(self.normalize(obs), scaled.astype(np.float32), rew.astype(np.float32), term, trunc,
                          self.normalize(final), returns, final.astype(np.float32) if self.norm_obs else None,
                          self._terms(info, done) if self.reward_terms else None)

    def _terms(self, info: dict, done: np.ndarray) -> np.ndarray:
        """``[n_envs, K]`` reward terms from a vector step's ``info``; an env that just finished reports
        its last step's terms in ``final_info`` (same-step autoreset)."""
        out = np.zeros((self.n_envs, len(self.reward_terms)), dtype=np.float32)
        final = info.get("final_info", {})
        for k, name in enumerate(self.reward_terms):
            for i in range(self.n_envs):
                src = final if done[i] else info
                if name not in src or not src.get("_" + name, np.ones(self.n_envs, bool))[i]:
                    keys = sorted(key for key in src if not key.startswith("_") and key not in ("final_obs", "final_info"))
                    raise EnvError(f"{self.name}: reward term {name!r} is not in the step's info (keys: {keys}); "
                                   f"reward_terms must name info entries the env reports every step")
                out[i, k] = src[name][i]
        return out

    def close(self) -> None:
        self.envs.close()


def make_env(spec: EnvSpec, n_envs: int = 8, seed: int = 0, **kwargs) -> VecEnv:
    """A :class:`VecEnv`; ``kwargs`` as its constructor (normalisation, time limit, shared stats)."""
    return VecEnv(spec, n_envs=n_envs, seed=seed, **kwargs)


class ParameterisedCartPole(gym.Env):
    """CartPole-v1 with continuous task parameters, set per episode by :meth:`set_task`: the pole's
    half-length (m; 0.5 in CartPole-v1) and the push force (N; 10). The observation is CartPole's four
    numbers followed by the task parameters scaled to [0, 1] within ``low``/``high``, so one policy can
    act on every task. A short pole falls fast and a weak push recovers slowly: together they span
    tasks from easy to impossible."""

    PARAMS = ("pole_half_length", "force")
    LOW, HIGH = (0.05, 1.0), (1.5, 15.0)

    def __init__(self, task=None, low=LOW, high=HIGH):
        from gymnasium.envs.classic_control.cartpole import CartPoleEnv

        self.inner = CartPoleEnv()
        self.low, self.high = np.asarray(low, dtype=float), np.asarray(high, dtype=float)
        inner = self.inner.observation_space
        self.observation_space = gym.spaces.Box(np.concatenate([inner.low, np.zeros(2)]).astype(np.float32),
                                                np.concatenate([inner.high, np.ones(2)]).astype(np.float32))
        self.action_space = self.inner.action_space
        self.set_task((self.low + self.high) / 2 if task is None else task)

    def set_task(self, task) -> None:
        """Use ``task`` = (pole half-length, force) from the next reset on; outside the box is an error."""
        task = np.asarray(task, dtype=float)
        if task.shape != (2,) or np.any(task < self.low - 1e-9) or np.any(task > self.high + 1e-9):
            raise EnvError(f"ParameterisedCartPole: task {task.tolist()} is outside the box "
                           f"{self.low.tolist()}..{self.high.tolist()} of {self.PARAMS}")
        self.task = task

    def _obs(self, obs: np.ndarray) -> np.ndarray:
        scaled = (self.task - self.low) / (self.high - self.low)
        return np.concatenate([obs, scaled]).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        c = self.inner
        c.length, c.force_mag = float(self.task[0]), float(self.task[1])
        c.polemass_length = c.masspole * c.length
        obs, info = c.reset(seed=seed, options=options)
        return self._obs(obs), info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.inner.step(action)
        return self._obs(obs), reward, terminated, truncated, info
