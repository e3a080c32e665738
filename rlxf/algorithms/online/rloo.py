"""RLOO on the controller: REINFORCE with a leave-one-out baseline over each prompt's k samples.

Ahmadian et al., "Back to Basics: Revisiting REINFORCE Style Optimization for Learning from
Human Feedback in LLMs" (2024). The sequence reward is the score minus the KL penalty (summed
token rewards); the loss is ``-A_i * sum_t log pi(y_t)``, with a PPO ratio and clip when a
rollout feeds more than one update (at one update per rollout the two are the same gradient).
"""

from __future__ import annotations

from rlxf.algorithms.online.controller import Method
from rlxf.objectives.policy_gradient import rloo_advantages


class RLOO(Method):
    reduction = "sum"
    min_samples = 2
    uses_reference = False

    def __init__(self, clip: float = 0.2):
        self.clip = clip

    def prepare(self, batch, ctx) -> None:
        total = batch.token_rewards.sum(-1)
        batch.extra["adv"] = rloo_advantages(total.view(-1, batch.k)).reshape(-1)
