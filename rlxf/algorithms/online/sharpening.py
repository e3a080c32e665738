"""SFT-sharpening (best-of-N distillation) on the controller.

Huang et al., "Self-Improvement in Language Models: The Sharpening Mechanism" (2025): sample N
responses from the current policy, keep the one the base model finds most likely (self-reward
``log pi_base(y|x)``, the reference here; ``length_normalised`` uses the per-token mean), and
fine-tune on it by maximum likelihood. No external reward: the scorer only monitors.
"""

from __future__ import annotations

from rlxf.algorithms.online.controller import Method


class SFTSharpening(Method):
    min_samples = 2
    reduction = "sequence"

    def __init__(self, length_normalised: bool = False):
        self.length_normalised = bool(length_normalised)

    def prepare(self, batch, ctx) -> None:
        ref = batch.steps.replace(logps=batch.steps.ref_logps)
        self_reward = ref.mean() if self.length_normalised else ref.sum()
        best = self_reward.view(-1, batch.k).argmax(1)
        batch.extra["best"] = [g * batch.k + int(b) for g, b in enumerate(best)]
        batch.stats["self_reward"] = float(self_reward.view(-1, batch.k).max(1).values.mean())

    def loss(self, batch, groups, reducer, ctx):
        rows = [batch.extra["best"][g] for g in groups]
        steps = batch.policy_steps(ctx.policy, rows)
        loss = -steps.mean().sum() / len(reducer.groups)
        return loss, {"loss": loss.item()}, None
