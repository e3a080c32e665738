"""Constrained RLHF on the controller: Lagrange multipliers keep component rewards at their thresholds.

Moskovitz et al., "Confronting Reward Model Overoptimization with Constrained RLHF" (ICLR 2024).
Each constrained component reward r_i (a named part of the run's ``Scorer``) should stay at its
proxy point theta_i, the value beyond which optimising it stops helping the true objective.
The task being maximised is the negative KL to the reference; the policy follows the mixed
advantage ``A = (N - sum_i lambda_i) A_KL + sum_i lambda_i A_i`` (N constraints), with
leave-one-out advantages per component. Multipliers are ``sigmoid(l_i)`` for the inequality
v_i >= theta_i (mu-PPO) and ``tanh(l_i)`` for the equality v_i = theta_i (xi-PPO, the paper's
best); ``l_i`` descends ``lambda_i (v_i - theta_i)`` with v_i the batch mean of r_i.

:class:`CostConstrainedRLOO` is the other direction, a cost held under a limit: maximise the
(KL-shaped) reward subject to E[cost] <= d, as the harmless RLHF of Mistral-Plus (Zheng et al.,
2024) asks of its direct-from-base run. Its Lagrangian ``E[R] - lambda (E[c] - d)`` gives the
advantage ``(A_R - lambda A_c) / (1 + lambda)`` (leave-one-out advantages; the division keeps the
scale as lambda grows) and the dual step ``lambda <- max(0, lambda + eta (mean c - d))`` after each
rollout. The paper's own RL settings are not known here; this is the standard Lagrangian method.
"""

from __future__ import annotations

import math

from torch import Tensor

from rlxf.algorithms.online.controller import Method
from rlxf.algorithms.online.rloo import RLOO
from rlxf.objectives.policy_gradient import rloo_advantages

KINDS = {"equality": (math.tanh, lambda x: 1 - math.tanh(x) ** 2),
         "at_least": (lambda x: 1 / (1 + math.exp(-x)), lambda x: math.exp(-x) / (1 + math.exp(-x)) ** 2)}


def mixed_advantages(kl_adv: Tensor, component_adv: dict[str, Tensor], lambdas: dict[str, float]) -> Tensor:
    """``(N - sum_i lambda_i) * A_KL + sum_i lambda_i * A_i`` over the N constrained components."""
    total = (len(lambdas) - sum(lambdas.values())) * kl_adv
    for name, lam in lambdas.items():
        total = total + lam * component_adv[name]
    return total


def lagrange_step(logit: float, value: float, threshold: float, kind: str, lr: float) -> float:
    """One gradient-descent step of the multiplier's logit on ``lambda(logit) * (value - threshold)``."""
    _, dlam = KINDS[kind]
    return logit - lr * (value - threshold) * dlam(logit)


class ConstrainedRLOO(Method):
    """``thresholds``: component name -> theta; ``kind``: "equality" (xi-PPO) or "at_least" (mu-PPO);
    ``lagrange_lr``: step of the multipliers' logits (the paper: 0.1)."""

    reduction = "sum"
    min_samples = 2

    def __init__(self, thresholds: dict[str, float], kind: str = "equality", lagrange_lr: float = 0.1,
                 clip: float = 0.2):
        if kind not in KINDS:
            raise ValueError(f"method_args.kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if not thresholds:
            raise ValueError("method_args.thresholds: name at least one reward component to constrain")
        self.thresholds, self.kind, self.lr, self.clip = dict(thresholds), kind, lagrange_lr, clip
        self.logits = {name: 0.0 for name in self.thresholds}

    def lambdas(self) -> dict[str, float]:
        lam, _ = KINDS[self.kind]
        return {name: lam(x) for name, x in self.logits.items()}

    def prepare(self, batch, ctx) -> None:
        missing = sorted(set(self.thresholds) - set(batch.parts))
        if missing:
            raise ValueError(f"method_args.thresholds names {', '.join(missing)}, which the scorer does not "
                             f"produce (it has: {', '.join(sorted(batch.parts))})")
        s, k = batch.steps, batch.k
        neg_kl = -s.sum(s.old_logps - s.ref_logps)  # the task: stay close to the reference
        kl_adv = rloo_advantages(neg_kl.view(-1, k)).reshape(-1)
        comp = {n: rloo_advantages(batch.parts[n].view(-1, k)).reshape(-1) for n in self.thresholds}
        lambdas = self.lambdas()
        batch.extra["adv"] = mixed_advantages(kl_adv, comp, lambdas)
        for name, theta in self.thresholds.items():
            value = float(batch.parts[name].mean())
            batch.stats[f"lambda_{name}"] = lambdas[name]
            batch.stats[f"constraint_{name}"] = value - theta
            self.logits[name] = lagrange_step(self.logits[name], value, theta, self.kind, self.lr)

    def state(self) -> dict:
        return {"lagrange_logits": dict(self.logits)}

    def load_state(self, state: dict) -> None:
        self.logits.update(state.get("lagrange_logits", {}))


def cost_penalised_advantages(reward_adv: Tensor, cost_adv: Tensor, lam: float) -> Tensor:
    """The Lagrangian's advantage ``(A_R - lambda * A_c) / (1 + lambda)``."""
    return (reward_adv - lam * cost_adv) / (1 + lam)


def dual_ascent_step(lam: float, mean_cost: float, limit: float, lr: float) -> float:
    """One projected ascent step of the multiplier: ``max(0, lambda + lr * (mean_cost - limit))``."""
    return max(0.0, lam + lr * (mean_cost - limit))


class CostConstrainedRLOO(RLOO):
    """RLOO on the KL-shaped reward with the expected cost held under ``limit``: ``cost`` names the
    part of the batch (a reward component or monitor of the run's ``Scorer``) that is the cost;
    ``lagrange_lr`` is the multiplier's step, ``init_lambda`` its start."""

    def __init__(self, limit: float, lagrange_lr: float = 0.5, init_lambda: float = 0.0, cost: str = "cost",
                 clip: float = 0.2):
        super().__init__(clip)
        for name, v in (("limit", limit), ("lagrange_lr", lagrange_lr), ("init_lambda", init_lambda)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"method_args.{name} must be a number >= 0, got {v!r}")
        self.limit, self.lr, self.lam, self.cost = float(limit), float(lagrange_lr), float(init_lambda), cost

    def prepare(self, batch, ctx) -> None:
        if self.cost not in batch.parts:
            raise ValueError(f"method_args.cost = {self.cost!r}: the scorer gives no such part "
                             f"(it has: {', '.join(sorted(batch.parts)) or 'none'})")
        k, cost = batch.k, batch.parts[self.cost]
        reward_adv = rloo_advantages(batch.token_rewards.sum(-1).view(-1, k)).reshape(-1)
        cost_adv = rloo_advantages(cost.view(-1, k)).reshape(-1)
        batch.extra["adv"] = cost_penalised_advantages(reward_adv, cost_adv, self.lam)
        mean_cost = float(cost.mean())
        batch.stats.update(lagrange_lambda=self.lam, cost=mean_cost, cost_over_limit=mean_cost - self.limit)
        self.lam = dual_ascent_step(self.lam, mean_cost, self.limit, self.lr)

    def state(self) -> dict:
        return {"lagrange_lambda": self.lam}

    def load_state(self, state: dict) -> None:
        self.lam = state.get("lagrange_lambda", self.lam)
