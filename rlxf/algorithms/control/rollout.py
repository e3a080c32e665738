"""Collecting experience from a :class:`VecEnv` and turning it into per-episode ``[batch, steps]`` grids.

A rollout is a ``[n_envs, T]`` grid in which episodes end mid-row. ``fragments`` cuts every row at
its episode ends into one row per episode piece, so the shared :func:`gae` sees one sequence per row
with the right ending: terminated (no bootstrap), truncated by the time limit (bootstrap
``V(final_obs)``) or cut by the end of the rollout (bootstrap ``V(next obs)``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from rlxf.data.transitions import Episode
from rlxf.objectives.policy_gradient import gae
from rlxf.policies.control import single_thread
from rlxf.tasks.gym_envs import RunningMeanStd, VecEnv, make_env


@dataclass
class Rollout:
    """Experience as ``[n_envs, T]`` grids (``obs``/``actions`` carry trailing feature dims)."""

    obs: Tensor
    next_obs: Tensor  # the true next observation, also on the last step of an episode
    actions: Tensor
    logps: Tensor
    values: Tensor  # [n_envs, T], or [n_envs, T, K] from a critic with one head per reward term
    rewards: Tensor  # as the env gave them (normalised if the env normalises)
    raw_rewards: Tensor  # the env's own reward: the gold reward in preference experiments
    terminated: Tensor  # bool
    truncated: Tensor  # bool
    final_values: Tensor  # V(final_obs) on truncated steps
    last_value: Tensor  # [n_envs] V of the observation after the last step
    valid: Tensor  # bool: False on steps after an env finished (episode collection)
    raw_obs: Tensor | None = None  # obs / next_obs before normalisation; None when the env does not normalise
    raw_next_obs: Tensor | None = None
    reward_terms: Tensor | None = None  # [n_envs, T, K] raw reward terms when the env reports them (multi-critic)

    @property
    def done(self) -> Tensor:
        return self.terminated | self.truncated

    @property
    def env_obs(self) -> Tensor:
        """The observations as the env produced them (unnormalised): what learned rewards and datasets
        read, so they do not drift with the policy's running observation statistics."""
        return self.obs if self.raw_obs is None else self.raw_obs

    @property
    def env_next_obs(self) -> Tensor:
        return self.next_obs if self.raw_next_obs is None else self.raw_next_obs

    @property
    def n_steps(self) -> int:
        return int(self.valid.sum())


def _as_tensor(x: np.ndarray, discrete: bool | None = None) -> Tensor:
    t = torch.as_tensor(x)
    if discrete:
        return t.long()
    return t.float() if t.is_floating_point() else t


class ZeroCritic:
    """A critic that values every state at 0, for :func:`collect` when no value estimate is needed."""

    def values(self, obs: Tensor) -> Tensor:
        return torch.zeros(obs.shape[0])


@torch.no_grad()
def collect(env: VecEnv, policy, critic, obs: np.ndarray, n_steps: int,
            until_done: bool = False) -> tuple[Rollout, np.ndarray]:
    """Run ``n_steps`` vector steps from ``obs``; returns the rollout and the next observation.

    ``until_done``: stop each env after its first episode end (steps after are invalid) and stop
    early once all have ended; ``n_steps`` is then the cap. ``obs`` must be the env's latest
    observation: under normalisation its raw version is read from ``env.raw_obs``.
    """
    cols: dict[str, list] = {k: [] for k in ("obs", "next", "act", "logp", "val", "rew", "raw", "term", "trunc", "fval", "valid")}
    raw_obs: list[Tensor] | None = [] if env.norm_obs else None
    raw_next: list[Tensor] = []
    terms: list[Tensor] = []
    alive = np.ones(env.n_envs, dtype=bool)
    for _ in range(n_steps):
        o = torch.as_tensor(obs)
        action, logp = policy.act(o)
        value = critic.values(o)
        if raw_obs is not None:
            raw_obs.append(torch.as_tensor(env.raw_obs))
        res = env.step(action.numpy())
        if raw_obs is not None:
            raw_next.append(torch.as_tensor(res.raw_final_obs))
        fval = np.zeros(tuple(value.shape), dtype=np.float32)
        if res.truncated.any():
            trunc = res.truncated.reshape(-1, *[1] * (len(value.shape) - 1))
            fval = critic.values(torch.as_tensor(res.final_obs)).numpy() * trunc
        if res.reward_terms is not None:
            terms.append(torch.as_tensor(res.reward_terms))
        for k, v in (("obs", o), ("next", res.final_obs), ("act", action), ("logp", logp), ("val", value), ("rew", res.rewards),
                     ("raw", res.raw_rewards), ("term", res.terminated), ("trunc", res.truncated),
                     ("fval", fval), ("valid", alive.copy())):
            cols[k].append(torch.as_tensor(v))
        obs = res.obs
        if until_done:
            alive &= ~res.done
            if not alive.any():
                break
    last_value = critic.values(torch.as_tensor(obs))
    stack = {k: torch.stack(v, dim=1) for k, v in cols.items()}
    ro = Rollout(stack["obs"].float(), stack["next"].float(), stack["act"], stack["logp"].float(), stack["val"].float(),
                 stack["rew"].float(), stack["raw"].float(), stack["term"].bool(), stack["trunc"].bool(),
                 stack["fval"].float(), last_value.float(), stack["valid"].bool())
    if raw_obs is not None:
        ro.raw_obs, ro.raw_next_obs = torch.stack(raw_obs, dim=1), torch.stack(raw_next, dim=1)
    if terms:
        ro.reward_terms = torch.stack(terms, dim=1).float()
    return ro, obs


def fragments(done: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Cut each row of a ``[N, T]`` grid after every done step: ``(index [F, L], mask [F, L])``.

    ``index`` points into the flattened grid (``n * T + t``); padding points at 0 with mask 0.
    Invalid steps are dropped.
    """
    n_rows, width = done.shape
    done_rows, valid_rows = done.bool().tolist(), valid.bool().tolist()  # plain lists: no per-element tensor indexing
    pieces: list[list[int]] = []
    for n in range(n_rows):
        cur: list[int] = []
        for t in range(width):
            if not valid_rows[n][t]:
                continue
            cur.append(n * width + t)
            if done_rows[n][t]:
                pieces.append(cur)
                cur = []
        if cur:
            pieces.append(cur)
    longest = max(len(p) for p in pieces)
    index = torch.tensor([p + [0] * (longest - len(p)) for p in pieces], dtype=torch.long)
    mask = torch.tensor([[1.0] * len(p) + [0.0] * (longest - len(p)) for p in pieces])
    return index, mask


def advantages(ro: Rollout, rewards: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """GAE advantages and returns on the rollout grid ``[N, T]`` (0 on invalid steps).

    Terminated episodes get no bootstrap; truncated ones ``V(final_obs)``; rows cut by the rollout's
    end ``V(next obs)`` (:func:`grid_advantages`).
    """
    return grid_advantages(rewards, ro.values, ro.done, ro.terminated, ro.truncated, ro.final_values, ro.last_value,
                           gamma, lam, ro.valid)


def term_advantages(ro: Rollout, rewards: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """GAE per reward term: ``rewards [N, T, K]`` against the critic's heads ``ro.values [N, T, K]``;
    advantages and returns ``[N, T, K]``, term ``k`` computed exactly as :func:`advantages` on its own."""
    pairs = [grid_advantages(rewards[..., k], ro.values[..., k], ro.done, ro.terminated, ro.truncated,
                             ro.final_values[..., k], ro.last_value[..., k], gamma, lam, ro.valid)
             for k in range(rewards.shape[-1])]
    return torch.stack([a for a, _ in pairs], -1), torch.stack([r for _, r in pairs], -1)


def grid_advantages(rewards: Tensor, values: Tensor, done: Tensor, terminated: Tensor, truncated: Tensor,
                    final_values: Tensor, last_value: Tensor, gamma: float, lam: float,
                    valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """GAE advantages and returns on a grid of ``N`` env streams x ``T`` steps, where episodes end
    anywhere in a row (``done [N, T]``). An episode that ended ``terminated`` gets no bootstrap, one
    ``truncated`` gets ``final_values`` (the value of its final observation, at that step), and the
    piece a row's end cuts off gets ``last_value [N]``. Computed per episode fragment by the shared
    :func:`gae`; ``valid`` (default all) drops steps."""
    valid = torch.ones_like(done, dtype=torch.bool) if valid is None else valid
    index, mask = fragments(done, valid)
    width = done.shape[1]
    last = index.gather(1, (mask.sum(1).long() - 1).unsqueeze(1)).squeeze(1)
    term = terminated.flatten()[last].bool()
    trunc = truncated.flatten()[last].bool()
    boot = torch.where(trunc, final_values.flatten()[last], last_value[last // width])
    adv, ret = gae(rewards.flatten()[index], values.flatten()[index], mask, gamma, lam,
                   bootstrap_value=boot, terminated=term)
    flat_adv = torch.zeros(done.numel())
    flat_ret = torch.zeros(done.numel())
    real = mask > 0
    flat_adv[index[real]] = adv[real]
    flat_ret[index[real]] = ret[real]
    return flat_adv.view_as(values), flat_ret.view_as(values)


@torch.no_grad()
def evaluate(policy, spec, n_episodes: int = 20, seed: int = 10_000, obs_rms: RunningMeanStd | None = None,
             deterministic: bool = True, max_steps: int = 100_000, metric: str = "return", n_envs: int | None = None,
             **env_kwargs) -> np.ndarray:
    """One score per episode of ``n_episodes``, ``[n_episodes]``.

    ``metric="return"``: the undiscounted return. ``metric="success"``: 1.0 if some step of the episode
    reports ``info["success"]`` (Meta-World's success flag), else 0.0: over 50 episodes, Meta-World's
    success rate. By default every episode runs in its own env copy (and under ``success`` stops at its
    first success, as under Meta-World's ``terminate_on_success``); ``n_envs`` fewer copies each play a
    fixed share of the episodes in turn (cheaper where making an env is slow), which needs episodes that
    end by themselves. With ``obs_rms`` the observations are normalised by those (frozen) training statistics.
    """
    if metric not in ("return", "success"):
        raise ValueError(f"evaluate: metric must be 'return' or 'success', got {metric!r}")
    n_envs = n_episodes if n_envs is None else min(n_envs, n_episodes)
    if metric == "success":
        env_kwargs["reward_terms"] = ("success",)
    with single_thread():
        env = make_env(spec, n_envs=n_envs, seed=seed, norm_obs=obs_rms is not None, obs_rms=obs_rms,
                       update_stats=False, **env_kwargs)
        return _evaluate(policy, env, n_episodes, deterministic, max_steps, metric)


def _evaluate(policy, env, n_episodes: int, deterministic: bool, max_steps: int, metric: str) -> np.ndarray:
    """Copy ``i`` plays ``quota[i]`` episodes in turn (a fixed share, so short episodes are not favoured)."""
    n = env.n_envs
    quota = np.full(n, n_episodes // n) + (np.arange(n) < n_episodes % n)
    one_each = n == n_episodes
    scores: list[list[float]] = [[] for _ in range(n)]
    current = np.zeros(n)
    obs = env.reset()
    if hasattr(policy, "observe"):  # a stateful policy (e.g. return-conditioned) hears episode starts
        policy.observe(None, np.ones(env.n_envs, dtype=bool))
    for _ in range(max_steps):
        o = torch.as_tensor(obs)
        action = policy.greedy(o) if deterministic else policy.act(o)[0]
        res = env.step(action.numpy())
        if hasattr(policy, "observe"):  # ... and its rewards and episode ends
            policy.observe(res.raw_rewards, res.done)
        if metric == "success":
            current = np.maximum(current, res.reward_terms[:, 0] > 0)
            ended = res.done | (current > 0) if one_each else res.done
        else:
            current += res.raw_rewards
            ended = res.done
        for i in np.flatnonzero(ended):
            if len(scores[i]) < quota[i]:
                scores[i].append(float(current[i]))
        current[ended] = 0.0
        obs = res.obs
        if all(len(s) >= q for s, q in zip(scores, quota)):
            break
    env.close()
    for i, s in enumerate(scores):  # episodes cut by max_steps count with their score so far
        if len(s) < quota[i]:
            s.append(float(current[i]))
    return np.array([x for s in scores for x in s])


class EpisodeRecorder:
    """Stitches consecutive rollouts of a vector env into finished :class:`Episode` s."""

    def __init__(self, n_envs: int):
        self.open: list[list[tuple]] = [[] for _ in range(n_envs)]

    def add(self, ro: Rollout, iteration: int = 0) -> list[Episode]:
        """Append the rollout's steps; return the episodes that ended in it."""
        done: list[Episode] = []
        env_obs, env_next = ro.env_obs, ro.env_next_obs  # unnormalised, so stored episodes do not drift
        for n in range(ro.obs.shape[0]):
            for t in range(ro.obs.shape[1]):
                if not ro.valid[n, t]:
                    continue
                self.open[n].append((env_obs[n, t], env_next[n, t], ro.actions[n, t], ro.raw_rewards[n, t]))
                if ro.done[n, t]:
                    steps = self.open[n]
                    obs = torch.stack([s[0] for s in steps] + [steps[-1][1]])
                    done.append(Episode(obs, torch.stack([s[2] for s in steps]), torch.stack([s[3] for s in steps]),
                                        bool(ro.terminated[n, t]), bool(ro.truncated[n, t]), iteration))
                    self.open[n] = []
            if not ro.valid[n].all():  # episode collection: an env's steps stop at its episode end
                self.open[n] = []
        return done
