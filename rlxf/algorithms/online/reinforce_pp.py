"""REINFORCE++ on the controller: token-level KL in the reward, returns-to-go, global whitening.

Hu, "REINFORCE++: A Simple and Efficient Approach for Aligning Large Language Models" (2025):
no critic and no per-prompt baseline; each token's advantage is its reward-to-go (the score on
the last token minus the per-token KL penalties after it), normalised over the whole batch,
then optimised with the PPO clipped surrogate averaged over tokens.
"""

from __future__ import annotations

from rlxf.algorithms.online.controller import Method
from rlxf.objectives.policy_gradient import whiten


class ReinforcePP(Method):
    uses_reference = False
    reduction = "token"

    def __init__(self, clip: float = 0.2):
        self.clip = clip

    def prepare(self, batch, ctx) -> None:
        steps = batch.steps.replace(rewards=batch.token_rewards)
        batch.extra["adv"] = whiten(steps.returns_to_go("rewards"), steps.mask)
