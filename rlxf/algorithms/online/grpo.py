"""GRPO and Dr. GRPO on the controller: group-normalised advantages with a clipped ratio.

GRPO (Shao et al., "DeepSeekMath", 2024): ``A_i = (R_i - mean R) / std R`` over a prompt's G
samples, broadcast to every token, PPO-clipped, averaged per sequence then over sequences; KL to
the reference usually as a k3 loss term (``kl.mode = "loss"``, ``kl.estimator = "k3"``).
Dr. GRPO (Liu et al., "Understanding R1-Zero-Like Training: A Critical Perspective", 2025)
drops the std division and the per-sequence length normalisation (a constant divisor instead).
"""

from __future__ import annotations

from rlxf.algorithms.online.controller import Method
from rlxf.objectives.policy_gradient import grpo_advantages


class GRPO(Method):
    uses_reference = False
    reduction = "sequence"
    min_samples = 2
    scale = True

    def __init__(self, clip: float = 0.2, clip_high: float = 0.0):
        self.clip, self.clip_high = clip, clip_high or None

    # the loss is Method.loss: the clipped ratio on extra["adv"], reduced per sequence
    def prepare(self, batch, ctx) -> None:
        total = batch.token_rewards.sum(-1)
        batch.extra["adv"] = grpo_advantages(total.view(-1, batch.k), scale=self.scale).reshape(-1)


class DrGRPO(GRPO):
    reduction = "constant"
    scale = False
