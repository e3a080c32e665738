"""PPO for gymnasium control, on the same clipped objective and GAE the language side uses.

Schulman et al., "Proximal Policy Optimization Algorithms" (2017). Each transition of a rollout is
a one-step ``Steps`` row for :func:`ppo_clip_loss`; advantages come from :func:`advantages` (GAE per
episode fragment, truncation bootstrapped, termination not). Defaults are the tuned CartPole-v1
settings of rl-baselines3-zoo (8 envs x 32 steps, 20 epochs, gamma 0.98, lambda 0.8, linearly
annealed lr 1e-3 and clip 0.2). ``learn`` takes an optional ``reward_fn`` so preference-based RL
and SPO train the agent on a learned or self-play reward with the very same update.

Multi-critic PPO (SLIM, Emukpere et al. 2024): with ``reward_terms`` (``info`` keys of the env) the
critic gets one head per term, each head learns its own term's return, the per-term GAE advantages
are normalised separately (:func:`normalise_advantages`) and combined with ``term_weights``
(:func:`combine_advantages`) into the one advantage the clipped actor loss uses.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from rlxf.algorithms.control.rollout import Rollout, advantages, collect, evaluate, term_advantages
from rlxf.core.runs import Run
from rlxf.core.steps import Steps
from rlxf.objectives.control import prior_kl
from rlxf.objectives.control import combine_advantages, normalise_advantages
from rlxf.objectives.policy_gradient import ppo_clip_loss, value_loss
from rlxf.policies.control import FlatParameters, MLPCritic, make_policy, single_thread
from rlxf.tasks.gym_envs import make_env


@dataclass
class PPOConfig:
    env: str = "CartPole-v1"
    n_envs: int = 8
    n_steps: int = 32  # per env per rollout
    total_steps: int = 100_000
    epochs: int = 20
    minibatch_size: int = 256
    lr: float = 1e-3
    anneal: bool = True  # linear decay of lr and clip to 0
    gamma: float = 0.98
    lam: float = 0.8
    clip: float = 0.2
    vf_coef: float = 0.5
    ent_coef: float = 0.0
    max_grad_norm: float = 0.5
    hidden: int = 64
    norm_obs: bool = False
    norm_reward: bool = False
    max_episode_steps: int | None = None
    seed: int = 0
    reward_terms: tuple[str, ...] = ()  # info keys: one critic head per term (multi-critic); () = one critic
    term_weights: tuple[float, ...] = ()  # the terms' weights in the actor's advantage; () = equal
    prior_kl: float = 0.0  # lambda of KL(pi || prior) per state (demonstration-regularised RL; see start_from)


# (ppo, rollout) -> per-step rewards [n_envs, T] used in place of the env's reward
RewardFn = Callable[["PPO", Rollout], torch.Tensor]


class PPO:
    """A PPO agent: its env, actor, critic and optimiser; ``learn`` runs the whole loop."""

    prior = None  # a frozen prior policy that ``prior_kl`` regularises towards (set by ``start_from``)

    def __init__(self, cfg: PPOConfig, env_spec=None, policy_fn: Callable | None = None):
        """``policy_fn(env) -> policy`` builds a custom actor (default: :func:`make_policy`'s MLP)."""
        self.cfg = cfg
        torch.manual_seed(cfg.seed)
        self.spec = env_spec if env_spec is not None else cfg.env
        terms = tuple(cfg.reward_terms)
        if cfg.term_weights and len(cfg.term_weights) != len(terms):
            raise ValueError(f"ppo.term_weights has {len(cfg.term_weights)} entries for {len(terms)} reward_terms "
                             f"{list(terms)}; give one weight per term or none")
        self.term_weights = torch.tensor(cfg.term_weights or [1.0] * len(terms), dtype=torch.float32)
        self.env = make_env(self.spec, cfg.n_envs, cfg.seed, norm_obs=cfg.norm_obs, norm_reward=cfg.norm_reward,
                            gamma=cfg.gamma, max_episode_steps=cfg.max_episode_steps, reward_terms=terms)
        self.policy = (policy_fn(self.env) if policy_fn is not None
                       else make_policy(self.env.obs_dim, self.env.action_dim, self.env.discrete, cfg.hidden))
        self.critic = MLPCritic(self.env.obs_dim, cfg.hidden, heads=max(1, len(terms)))
        self.flat = FlatParameters(self.policy, self.critic)
        self.opt = torch.optim.Adam([self.flat.param], lr=cfg.lr, eps=1e-5, fused=True)
        self.obs = self.env.reset()
        self.steps_done = 0
        self.gen = torch.Generator().manual_seed(cfg.seed)

    def start_from(self, prior) -> None:
        """Demonstration-regularised RL (Tiapkin et al., ICLR 2024): the policy becomes a copy of
        ``prior`` (e.g. BC on demonstrations, same architecture) and ``update`` adds ``cfg.prior_kl``
        times :func:`prior_kl` towards a frozen copy of it. Call before ``learn``."""
        if self.cfg.norm_obs:
            raise ValueError("ppo.norm_obs must be false with a prior policy: the prior reads the env's raw observations")
        try:
            self.policy.load_state_dict(prior.state_dict())
        except RuntimeError as e:
            raise ValueError(f"the prior policy does not match PPO's policy ({self.env.obs_dim} observations, "
                             f"{self.env.action_dim} actions, hidden {self.cfg.hidden}): {e}") from None
        self.prior = prior.frozen_copy()

    def progress_left(self) -> float:
        return max(0.0, 1.0 - self.steps_done / self.cfg.total_steps) if self.cfg.anneal else 1.0

    def collect(self, until_done: bool = False, n_steps: int | None = None) -> Rollout:
        ro, self.obs = collect(self.env, self.policy, self.critic, self.obs, n_steps or self.cfg.n_steps, until_done)
        self.steps_done += ro.n_steps
        return ro

    def update(self, ro: Rollout, rewards: torch.Tensor | None = None) -> dict:
        """``epochs`` passes of minibatch PPO over the rollout; ``rewards`` override the env's
        (``[N, T, K]`` per-term rewards for a multi-critic agent)."""
        cfg = self.cfg
        if self.critic.heads > 1:
            rew = ro.reward_terms if rewards is None else rewards.float()
            adv, ret = term_advantages(ro, rew, cfg.gamma, cfg.lam)  # [N, T, K]
        else:
            rew = ro.rewards if rewards is None else rewards.float()
            adv, ret = advantages(ro, rew, cfg.gamma, cfg.lam)
        real = ro.valid.flatten()
        obs, act = ro.obs.flatten(0, 1)[real], ro.actions.flatten(0, 1)[real]
        old_logp, old_v = ro.logps.flatten()[real], ro.values.flatten(0, 1)[real]
        adv, ret = adv.flatten(0, 1)[real], ret.flatten(0, 1)[real]
        frac = self.progress_left()
        for g in self.opt.param_groups:
            g["lr"] = cfg.lr * frac
        clip = max(cfg.clip * frac, 1e-3)
        n = obs.shape[0]
        whole = n <= cfg.minibatch_size  # one minibatch per epoch: the same tensors every time
        if whole:
            batch = self._minibatch(obs, act, old_logp, old_v, adv, ret, slice(None), self.term_weights)
        for _ in range(cfg.epochs):
            perm = None if whole else torch.randperm(n, generator=self.gen)
            for start in range(0, n, cfg.minibatch_size):
                if not whole:
                    batch = self._minibatch(obs, act, old_logp, old_v, adv, ret, perm[start : start + cfg.minibatch_size],
                                            self.term_weights)
                o, a, old_lp, old_val, adv_mb, ret_mb, ones = batch
                steps = Steps(logps=self.policy.log_prob(o, a)[:, None], mask=ones, old_logps=old_lp)
                pg = ppo_clip_loss(steps, adv_mb, clip=clip).mean()
                v = _column(self.critic.values(o))  # [m, K]: the heads' losses averaged
                vl = value_loss(v, old_val, ret_mb, torch.ones_like(v)).mean()
                loss = pg + cfg.vf_coef * vl
                if cfg.ent_coef:
                    loss = loss - cfg.ent_coef * self.policy.entropy(o).mean()
                if cfg.prior_kl:
                    loss = loss + cfg.prior_kl * self._prior_kl(o)
                self.flat.zero_grad()
                loss.backward()
                self.flat.clip_grad_norm(cfg.max_grad_norm)
                self.opt.step()
        with torch.no_grad():
            stats = {"policy_loss": pg.item(), "value_loss": vl.item(), "entropy": self.policy.entropy(obs).mean().item()}
        return stats

    def _prior_kl(self, obs: torch.Tensor) -> torch.Tensor:
        if self.prior is None:
            raise ValueError(f"ppo.prior_kl = {self.cfg.prior_kl} needs a prior policy: call agent.start_from(bc_policy)")
        return prior_kl(self.policy.distribution(obs), self.prior.distribution(obs)).mean()

    @staticmethod
    def _minibatch(obs, act, old_logp, old_v, adv, ret, idx, term_weights=None) -> tuple:
        """The rows ``idx`` as ``[m, 1]`` step tensors (values and returns ``[m, K]`` with K critic
        heads), advantages normalised within the minibatch, per term before they are combined."""
        a = normalise_advantages(adv[idx])
        if a.dim() == 2:
            a = combine_advantages(a, term_weights)
        ones = torch.ones(a.numel(), 1)
        return obs[idx], act[idx], old_logp[idx][:, None], _column(old_v[idx]), a[:, None], _column(ret[idx]), ones

    def evaluate(self, n_episodes: int = 20, seed: int = 10_000) -> np.ndarray:
        rms = self.env.obs_rms if self.cfg.norm_obs else None
        return evaluate(self.policy, self.spec, n_episodes, seed, obs_rms=rms,
                        max_episode_steps=self.cfg.max_episode_steps)

    def learn(self, reward_fn: RewardFn | None = None, eval_every: int = 0, target: float | None = None,
              n_eval: int = 20, run: Run | None = None, stage: str = "ppo", log: Callable | None = None) -> list[dict]:
        """Train until ``total_steps`` (or until the eval mean reaches ``target``); returns eval history.

        Every ``eval_every`` env steps the greedy policy plays ``n_eval`` episodes; ``train_s`` in
        the history excludes evaluation time. Metrics go to ``run`` when given.
        """
        history: list[dict] = []
        train_s, next_eval = 0.0, eval_every
        with single_thread():
            while self.steps_done < self.cfg.total_steps:
                t0 = time.perf_counter()
                ro = self.collect()
                rewards = reward_fn(self, ro) if reward_fn is not None else None
                stats = self.update(ro, rewards)
                train_s += time.perf_counter() - t0
                if eval_every and self.steps_done >= next_eval:
                    next_eval += eval_every
                    ret = self.evaluate(n_eval)
                    row = {"steps": self.steps_done, "train_s": train_s, "eval_return": float(ret.mean()), **stats}
                    history.append(row)
                    if log is not None:  # first, so a hook can add fields to the logged row
                        log(row)
                    if run is not None:
                        run.log(stage, self.steps_done, **row)
                    if target is not None and ret.mean() >= target:
                        break
        return history


def _column(x: torch.Tensor) -> torch.Tensor:
    """``[m] -> [m, 1]``; per-head ``[m, K]`` stays."""
    return x[:, None] if x.dim() == 1 else x
