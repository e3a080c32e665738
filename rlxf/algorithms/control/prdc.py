"""PRDC: offline TD3 whose actor is pulled towards the nearest dataset state-action pair.

Ran, Li, Zhang, Zhang, Yu, "Policy Regularization with Dataset Constraint for Offline Reinforcement
Learning" (ICML 2023). Critic: TD3 (twin Q, target networks, target-policy smoothing; Fujimoto et
al. 2018). Actor, every ``policy_delay`` steps: ``-lambda Q(s, pi(s)) + min_{(s',a') in D}
||(beta s) + pi(s) - (beta s') + a'||`` with ``lambda = alpha / mean|Q|`` (exact nearest neighbour by
``torch.cdist`` in place of the paper's KD-tree). Continuous actions only. Runs through the shared
training loop; the actor's loss sees the critic through detached weights, so each loss trains only
its own network.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from rlxf.algorithms.control.iql import QNet
from rlxf.algorithms.control.targets import load_target_state, target_state
from rlxf.algorithms.loop import OptimConfig, single_learner, train
from rlxf.core.runs import Run
from rlxf.data.transitions import DatasetError, TransitionDataset
from rlxf.objectives.control import prdc_actor_loss, prdc_constraint
from rlxf.policies.control import mlp, single_thread


@dataclass
class PRDCConfig:
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(steps=2000, batch_size=256, lr=3e-4,
                                                                    checkpoint_every=0, max_grad_norm=0.0))
    alpha: float = 2.5
    beta: float = 2.0  # state scale in the neighbour search
    gamma: float = 0.99
    tau: float = 0.005
    policy_noise: float = 0.2
    noise_clip: float = 0.5
    policy_delay: int = 2
    hidden: int = 64
    seed: int = 0


class DeterministicActor(nn.Module):
    """``pi(s) = scale * tanh(MLP(s))`` inside an action box of half-width ``scale``."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int, scale: float):
        super().__init__()
        self.net, self.scale = mlp(obs_dim, act_dim, hidden, 0.01), scale

    def forward(self, obs: Tensor) -> Tensor:
        return self.scale * torch.tanh(self.net(obs))

    @torch.no_grad()
    def greedy(self, obs: Tensor) -> Tensor:
        return self(obs)

    @torch.no_grad()
    def act(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        return self(obs), torch.zeros(obs.shape[0])


class PRDCModel(nn.Module):
    def __init__(self, obs_dim: int, act_dim: int, hidden: int, scale: float):
        super().__init__()
        self.actor = DeterministicActor(obs_dim, act_dim, hidden, scale)
        self.actor_target = DeterministicActor(obs_dim, act_dim, hidden, scale)
        self.q, self.q_target = QNet(obs_dim, act_dim, False, hidden), QNet(obs_dim, act_dim, False, hidden)
        self.actor_target.load_state_dict(self.actor.state_dict())
        self.q_target.load_state_dict(self.q.state_dict())
        self.actor_target.requires_grad_(False)
        self.q_target.requires_grad_(False)

    @torch.no_grad()
    def polyak(self, tau: float) -> None:
        for target, source in ((self.actor_target, self.actor), (self.q_target, self.q)):
            for t, s in zip(target.parameters(), source.parameters()):
                t.lerp_(s, tau)


def train_prdc(dataset: TransitionDataset, run: Run, cfg: PRDCConfig, action_scale: float | None = None,
               stage: str = "prdc", quiet: bool = True) -> DeterministicActor:
    """Train PRDC on ``dataset`` (continuous actions); returns the actor."""
    if dataset.discrete:
        raise DatasetError("PRDC needs continuous actions; this dataset's actions are discrete (use IQL or BC)")
    torch.manual_seed(cfg.seed)
    tr = dataset.transitions()
    scale = action_scale if action_scale is not None else float(tr.actions.abs().max())
    model = PRDCModel(dataset.obs_shape[0], tr.actions.shape[-1], cfg.hidden, scale)
    n, state = tr.obs.shape[0], {"step": 0}

    def make_batch(step: int) -> list[int]:
        state["step"] = step
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        return torch.randint(0, n, (cfg.optim.batch_size,), generator=g).tolist()

    def loss_fn(micro: list[int], batch: list[int]):
        i = torch.tensor(micro)
        s, a, r, s2, d = tr.obs[i], tr.actions[i], tr.rewards[i], tr.next_obs[i], tr.terminals[i]
        with torch.no_grad():
            noise = (torch.randn_like(a) * cfg.policy_noise * scale).clamp(-cfg.noise_clip * scale, cfg.noise_clip * scale)
            a2 = (model.actor_target(s2) + noise).clamp(-scale, scale)
            target = r + cfg.gamma * (1 - d) * model.q_target.min(s2, a2)
        q1, q2 = model.q.both(s, a)
        loss = (F.mse_loss(q1, target, reduction="sum") + F.mse_loss(q2, target, reduction="sum")) / len(batch)
        metrics = {"critic": loss.item()}
        if state["step"] % cfg.policy_delay == 0:
            pi = model.actor(s)
            frozen = {k: v.detach() for k, v in model.q.q1.named_parameters()}
            q_pi = functional_call(model.q.q1, frozen, (torch.cat([s, pi], -1),)).squeeze(-1)
            constraint = prdc_constraint(s, pi, tr.obs, tr.actions, cfg.beta)
            actor = prdc_actor_loss(q_pi, constraint, cfg.alpha).sum() / len(batch)
            loss = loss + actor
            metrics |= {"actor": actor.item(), "constraint": constraint.mean().item()}
            if micro[0] == batch[0]:
                model.polyak(cfg.tau)
        return loss, metrics

    single_learner(run, stage, "PRDC moves its target networks once per step, in the batch's first "
                   "micro-batch, which only the first worker holds")
    with single_thread():
        train(run, stage, model, cfg.optim, make_batch, loss_fn, quiet=quiet, extra_state=lambda: target_state(model),
              on_resume=lambda state: load_target_state(model, state))
    return model.actor
