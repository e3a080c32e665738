"""PPO with a value head and GAE, with the PPO-max stabilisers, on the controller.

Schulman et al., "Proximal Policy Optimization Algorithms" (2017); stabilisers from Zheng et
al., "Secrets of RLHF in Large Language Models Part I: PPO" (2023): the critic starts from the
reward model, the reward is normalised and clipped (controller ``reward_norm``/``reward_clip``),
the KL penalty is per token in the reward (``kl.mode = "reward"``), the value loss is clipped,
advantages are whitened over the batch and gradients are clipped globally
(``optim.max_grad_norm``). Logs approx-KL, clip fraction and the critic's explained variance.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor

from rlxf.algorithms.online.controller import Method
from rlxf.objectives.policy_gradient import gae, ppo_clip_loss, value_loss, whiten
from rlxf.policies.logprobs import token_batch


class Critic(torch.nn.Module):
    """Per-token values ``V(s_t)`` from a sequence-classification model's scalar head applied to
    every position: the value of the state before response token t, ``[B, T]`` (rows in the
    policy's flush layout, :func:`rlxf.policies.logprobs.token_batch`)."""

    def __init__(self, model, pad_token_id: int):
        super().__init__()
        self.model = model
        self.pad = pad_token_id

    @classmethod
    def from_reward_model(cls, rm) -> "Critic":
        """A trainable copy of a :class:`~rlxf.rewards.model.RewardModel` (PPO-max's critic init)."""
        model = copy.deepcopy(rm.model)
        model.requires_grad_(True)
        return cls(model, rm.tokenizer.pad_token_id)

    def forward(self, prompt_ids: list[list[int]], response_ids: list[list[int]]) -> Tensor:
        b = token_batch(prompt_ids, response_ids, self.pad, "flush").to(next(self.model.parameters()).device)
        trunk = getattr(self.model, self.model.base_model_prefix)
        hidden = trunk(input_ids=b.ids, attention_mask=b.attn, position_ids=b.positions,
                       use_cache=False).last_hidden_state
        return b.pick(self.model.score(hidden))[..., 0].float()


def explained_variance(pred: Tensor, target: Tensor, mask: Tensor) -> float:
    """``1 - Var(target - pred) / Var(target)`` over real steps (1 is perfect, <= 0 is useless)."""
    m = mask > 0
    var = target[m].var()
    return float(1 - (target[m] - pred[m]).var() / var) if var > 0 else float("nan")


class PPO(Method):
    uses_reference = False
    reduction = "token"

    def __init__(self, critic: Critic, clip: float = 0.2, value_clip: float = 0.2, vf_coef: float = 0.5,
                 gamma: float = 1.0, lam: float = 0.95, whiten_advantages: bool = True):
        self.critic, self.clip, self.value_clip, self.vf_coef = critic, clip, value_clip, vf_coef
        self.gamma, self.lam, self.whiten = gamma, lam, bool(whiten_advantages)

    def modules(self):
        return {"critic": self.critic}

    @torch.no_grad()
    def prepare(self, batch, ctx) -> None:
        s = batch.samples
        T = batch.steps.num_steps
        values = self.critic(s.prompt_ids, s.response_ids)[:, :T]
        mask = batch.steps.mask
        adv, returns = gae(batch.token_rewards, values, mask, self.gamma, self.lam)
        # a method whose rollout trains fewer tokens than GAE runs over (RLGF) sets "policy_mask"
        trained = batch.extra.get("policy_mask", mask)
        batch.extra.update(values=values, returns=returns, adv=whiten(adv, trained) if self.whiten else adv * trained)

    def loss(self, batch, groups, reducer, ctx):
        rows = batch.rows(groups)
        steps = batch.policy_steps(ctx.policy, rows)
        T = steps.num_steps
        s = batch.samples
        values = self.critic([s.prompt_ids[i] for i in rows], [s.response_ids[i] for i in rows])[:, :T]
        old_v, ret = batch.extra["values"][rows, :T], batch.extra["returns"][rows, :T]
        vmask = batch.extra["value_mask"][rows, :T] * steps.mask if "value_mask" in batch.extra else steps.mask
        if "policy_mask" in batch.extra:
            steps = steps.replace(mask=steps.mask * batch.extra["policy_mask"][rows, :T].to(steps.mask))
        pg = reducer(ppo_clip_loss(steps, batch.extra["adv"][rows, :T], self.clip), steps.mask)
        vl = reducer(value_loss(values, old_v, ret, vmask, self.value_clip or None), vmask)
        share = len(groups) * batch.k / reducer.n_rows
        metrics = {"loss": (pg + self.vf_coef * vl).item(), "policy_loss": pg.item(), "value_loss": vl.item(),
                   "explained_variance": explained_variance(values.detach(), ret, vmask) * share}
        return pg + self.vf_coef * vl, metrics, steps
