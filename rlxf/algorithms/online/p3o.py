"""P3O on the controller: clipped pairwise updates from two samples of each prompt.

Wu et al., "Pairwise Proximal Policy Optimization" (2023): samples 2j and 2j+1 of a prompt form
a pair; only their KL-penalised reward difference enters (:func:`rlxf.objectives.p3o.p3o_loss`).
"""

from __future__ import annotations

from rlxf.algorithms.online.controller import Method
from rlxf.objectives.p3o import p3o_loss


class P3O(Method):
    uses_reference = False
    min_samples = 2

    def __init__(self, clip: float = 0.2):
        self.clip = clip

    def prepare(self, batch, ctx) -> None:
        if batch.k % 2:
            raise ValueError(f"p3o pairs samples: samples_per_prompt must be even, got {batch.k}")
        batch.extra["total"] = batch.token_rewards.sum(-1)

    def loss(self, batch, groups, reducer, ctx):
        rows = batch.rows(groups)
        steps = batch.policy_steps(ctx.policy, rows)
        total = batch.extra["total"][rows]
        per_pair = p3o_loss(steps[0::2], steps[1::2], total[0::2], total[1::2], self.clip)
        loss = per_pair.sum() / (reducer.n_rows / 2)
        return loss, {"loss": loss.item()}, steps
