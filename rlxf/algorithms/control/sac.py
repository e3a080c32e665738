"""Soft Actor-Critic for continuous actions (the off-policy learner preference methods can sit on).

Haarnoja, Zhou, Abbeel, Levine, "Soft Actor-Critic" (ICML 2018) and "Soft Actor-Critic Algorithms and
Applications" (2018): tanh-squashed Gaussian actor, twin Q with Polyak targets, automatic temperature
towards entropy ``-act_dim``. A time-limit truncation bootstraps from the true final observation
(``StepResult.final_obs``); only a termination cuts the target. Losses are in
:mod:`rlxf.objectives.control`. ``reward_fn`` (optional) replaces the env reward, e.g. by a learned one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

from rlxf.algorithms.control.iql import QNet
from rlxf.objectives.control import sac_actor_loss, sac_alpha_loss, soft_q_target
from rlxf.policies.control import mlp, single_thread
from rlxf.tasks.gym_envs import EnvError, make_env


@dataclass
class SACConfig:
    env: str = "Pendulum-v1"
    total_steps: int = 20_000
    warmup_steps: int = 1_000  # uniform random actions before learning
    batch_size: int = 256
    lr: float = 1e-3
    gamma: float = 0.99
    tau: float = 0.005
    hidden: int = 64
    buffer_size: int = 100_000
    seed: int = 0


class TanhGaussianActor(nn.Module):
    """``a = scale * tanh(u)``, ``u ~ N(mu(s), sigma(s)^2)``; log-prob with the tanh change of variables."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int, scale: Tensor):
        super().__init__()
        self.net = mlp(obs_dim, 2 * act_dim, hidden, 0.01)
        self.register_buffer("scale", scale.float())

    def sample(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """Reparameterised ``(action, log pi(action|s))``."""
        mu, log_std = self.net(obs).chunk(2, dim=-1)
        std = log_std.clamp(-5, 2).exp()
        u = mu + std * torch.randn_like(mu)
        logp = (-0.5 * ((u - mu) / std) ** 2 - std.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
        logp = logp - (2 * (math.log(2) - u - nn.functional.softplus(-2 * u))).sum(-1) - self.scale.log().sum()
        return self.scale * torch.tanh(u), logp

    @torch.no_grad()
    def greedy(self, obs: Tensor) -> Tensor:
        return self.scale * torch.tanh(self.net(obs).chunk(2, dim=-1)[0])

    @torch.no_grad()
    def act(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        return self.sample(obs)


class SAC:
    """An SAC agent on one env copy; ``learn`` interleaves one gradient step per env step."""

    def __init__(self, cfg: SACConfig, env_spec=None):
        self.cfg = cfg
        torch.manual_seed(cfg.seed)
        self.env = make_env(env_spec if env_spec is not None else cfg.env, n_envs=1, seed=cfg.seed)
        if self.env.discrete:
            raise EnvError(f"{self.env.name}: SAC here needs a continuous (Box) action space; use PPO for discrete")
        d, a = self.env.obs_dim, self.env.action_dim
        self.actor = TanhGaussianActor(d, a, cfg.hidden, torch.as_tensor(self.env.action_space.high))
        self.q, self.q_target = QNet(d, a, False, cfg.hidden), QNet(d, a, False, cfg.hidden)
        self.q_target.load_state_dict(self.q.state_dict())
        self.q_target.requires_grad_(False)
        self.log_alpha = torch.zeros((), requires_grad=True)
        self.target_entropy = -float(a)
        self.opt_actor = torch.optim.Adam(self.actor.parameters(), lr=cfg.lr)
        self.opt_q = torch.optim.Adam(self.q.parameters(), lr=cfg.lr)
        self.opt_alpha = torch.optim.Adam([self.log_alpha], lr=cfg.lr)
        n = cfg.buffer_size
        self.buf = {"obs": torch.zeros(n, d), "act": torch.zeros(n, a), "rew": torch.zeros(n),
                    "next": torch.zeros(n, d), "term": torch.zeros(n)}
        self.size, self.ptr, self.steps_done = 0, 0, 0
        self.rng = np.random.default_rng(cfg.seed)

    def _store(self, obs, act, rew, nxt, term) -> None:
        for k, v in (("obs", obs), ("act", act), ("rew", rew), ("next", nxt), ("term", term)):
            self.buf[k][self.ptr] = torch.as_tensor(v, dtype=torch.float32)
        self.ptr = (self.ptr + 1) % self.cfg.buffer_size
        self.size = min(self.size + 1, self.cfg.buffer_size)

    def update(self) -> dict:
        cfg = self.cfg
        i = torch.as_tensor(self.rng.integers(0, self.size, cfg.batch_size))
        s, a, r, s2, d = (self.buf[k][i] for k in ("obs", "act", "rew", "next", "term"))
        alpha = self.log_alpha.exp().item()
        with torch.no_grad():
            a2, logp2 = self.actor.sample(s2)
            target = soft_q_target(r, self.q_target.min(s2, a2), logp2, d, cfg.gamma, alpha)
        q1, q2 = self.q.both(s, a)
        q_loss = ((q1 - target) ** 2 + (q2 - target) ** 2).mean()
        self.opt_q.zero_grad()
        q_loss.backward()
        self.opt_q.step()
        a_new, logp = self.actor.sample(s)
        self.q.requires_grad_(False)
        actor_loss = sac_actor_loss(self.q.min(s, a_new), logp, alpha).mean()
        self.q.requires_grad_(True)
        self.opt_actor.zero_grad()
        actor_loss.backward()
        self.opt_actor.step()
        alpha_loss = sac_alpha_loss(self.log_alpha, logp, self.target_entropy).mean()
        self.opt_alpha.zero_grad()
        alpha_loss.backward()
        self.opt_alpha.step()
        with torch.no_grad():
            for t, p in zip(self.q_target.parameters(), self.q.parameters()):
                t.lerp_(p, cfg.tau)
        return {"q_loss": q_loss.item(), "actor_loss": actor_loss.item(), "alpha": alpha}

    def learn(self, reward_fn: Callable[[Tensor, Tensor], Tensor] | None = None, log: Callable | None = None,
              log_every: int = 1000) -> list[float]:
        """Run to ``total_steps``; returns the finished episodes' env returns."""
        cfg, returns = self.cfg, []
        obs = self.env.reset()
        with single_thread():
            while self.steps_done < cfg.total_steps:
                if self.steps_done < cfg.warmup_steps:
                    act = self.rng.uniform(self.env.action_space.low, self.env.action_space.high, (1, self.env.action_dim))
                else:
                    act = self.actor.act(torch.as_tensor(obs))[0].numpy()
                res = self.env.step(act)
                rew = res.rewards if reward_fn is None else reward_fn(torch.as_tensor(obs), torch.as_tensor(act)).numpy()
                self._store(obs[0], act[0], rew[0], res.final_obs[0], float(res.terminated[0]))
                obs = res.obs
                returns.extend(res.episode_returns)
                self.steps_done += 1
                if self.steps_done >= cfg.warmup_steps:
                    stats = self.update()
                    if log is not None and self.steps_done % log_every == 0:
                        log({"steps": self.steps_done, "episode_return": returns[-1] if returns else None, **stats})
        return returns
