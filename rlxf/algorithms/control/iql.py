"""Implicit Q-Learning from a fixed dataset (discrete or continuous actions).

Kostrikov, Nair, Levine, "Offline Reinforcement Learning with Implicit Q-Learning" (ICLR 2022).
V(s) is fit to an upper expectile of the target Q over dataset actions, Q(s,a) to
``r + gamma (1 - terminal) V(s')``, and the policy by advantage-weighted regression
``exp(beta (Q - V)) log pi(a|s)``; no action outside the dataset is ever evaluated. All three
networks (and the Polyak-averaged target Q) form one module, so the shared training loop
:func:`rlxf.algorithms.loop.train` runs it with checkpoints and resume; each loss only reaches its
own network's parameters (the others' outputs are detached).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rlxf.algorithms.control.targets import load_target_state, target_state
from rlxf.algorithms.loop import OptimConfig, single_learner, train
from rlxf.core.runs import Run
from rlxf.data.transitions import TransitionDataset
from rlxf.objectives.control import awr_loss, expectile_loss
from rlxf.policies.control import MLPCritic, mlp, make_policy, single_thread


@dataclass
class IQLConfig:
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(steps=1000, batch_size=256, lr=3e-4,
                                                                    checkpoint_every=0, max_grad_norm=0.0))
    expectile: float = 0.7
    beta: float = 3.0  # inverse temperature of the advantage weights
    gamma: float = 0.99
    tau: float = 0.005  # Polyak rate of the target Q
    hidden: int = 64
    seed: int = 0


class QNet(nn.Module):
    """Two Q heads; discrete: ``obs -> Q(s, .)`` gathered at ``a``; continuous: ``(obs, a) -> Q``."""

    def __init__(self, obs_dim: int, action_dim: int, discrete: bool, hidden: int):
        super().__init__()
        self.discrete = discrete
        inp, out = (obs_dim, action_dim) if discrete else (obs_dim + action_dim, 1)
        self.q1, self.q2 = mlp(inp, out, hidden, 1.0), mlp(inp, out, hidden, 1.0)

    def both(self, obs: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
        if self.discrete:
            idx = actions.long().unsqueeze(-1)
            return self.q1(obs).gather(-1, idx).squeeze(-1), self.q2(obs).gather(-1, idx).squeeze(-1)
        x = torch.cat([obs, actions], dim=-1)
        return self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)

    def min(self, obs: Tensor, actions: Tensor) -> Tensor:
        return torch.minimum(*self.both(obs, actions))


class IQLModel(nn.Module):
    def __init__(self, obs_dim: int, action_dim: int, discrete: bool, hidden: int):
        super().__init__()
        self.policy = make_policy(obs_dim, action_dim, discrete, hidden)
        self.q = QNet(obs_dim, action_dim, discrete, hidden)
        self.q_target = QNet(obs_dim, action_dim, discrete, hidden)
        self.q_target.load_state_dict(self.q.state_dict())
        self.q_target.requires_grad_(False)
        self.v = MLPCritic(obs_dim, hidden)

    @torch.no_grad()
    def polyak(self, tau: float) -> None:
        for t, s in zip(self.q_target.parameters(), self.q.parameters()):
            t.lerp_(s, tau)


def iql_losses(model: IQLModel, obs, actions, rewards, next_obs, terminals, cfg: IQLConfig) -> dict[str, Tensor]:
    """The three IQL losses per transition, ``[B]`` each."""
    with torch.no_grad():
        q_t = model.q_target.min(obs, actions)
        target = rewards + cfg.gamma * (1.0 - terminals) * model.v.values(next_obs)
    v = model.v.values(obs)
    q1, q2 = model.q.both(obs, actions)
    adv = (q_t - v).detach()
    return {
        "value": expectile_loss(q_t - v, cfg.expectile),
        "q": F.mse_loss(q1, target, reduction="none") + F.mse_loss(q2, target, reduction="none"),
        "policy": awr_loss(model.policy.log_prob(obs, actions), adv, cfg.beta),
    }


def train_iql(dataset: TransitionDataset, run: Run, cfg: IQLConfig, n_actions: int | None = None,
              stage: str = "iql", quiet: bool = True):
    """Train IQL on every transition of ``dataset``; returns the policy."""
    torch.manual_seed(cfg.seed)
    tr = dataset.transitions()
    if dataset.discrete:
        action_dim = n_actions or int(tr.actions.max()) + 1
    else:
        action_dim = tr.actions.shape[-1]
    model = IQLModel(dataset.obs_shape[0], action_dim, dataset.discrete, cfg.hidden)
    n = tr.obs.shape[0]

    def make_batch(step: int) -> list[int]:
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        return torch.randint(0, n, (cfg.optim.batch_size,), generator=g).tolist()

    def loss_fn(micro: list[int], batch: list[int]):
        if len(micro) == len(batch) or micro[0] == batch[0]:  # once per optimiser step
            model.polyak(cfg.tau)
        i = torch.tensor(micro)
        parts = iql_losses(model, tr.obs[i], tr.actions[i], tr.rewards[i], tr.next_obs[i], tr.terminals[i], cfg)
        loss = sum(p.sum() for p in parts.values()) / len(batch)
        return loss, {k: v.sum().item() / len(batch) for k, v in parts.items()}

    single_learner(run, stage, "IQL moves its target networks once per step, in the batch's first "
                   "micro-batch, which only the first worker holds")
    with single_thread():
        train(run, stage, model, cfg.optim, make_batch, loss_fn, quiet=quiet, extra_state=lambda: target_state(model),
              on_resume=lambda state: load_target_state(model, state))
    return model.policy
