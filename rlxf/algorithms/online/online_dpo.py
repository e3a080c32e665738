"""Online iterative DPO and DNO on the controller: pairs from the current policy, a DPO step.

Online DPO, after Dong, Xiong et al., "RLHF Workflow: From Reward Modeling to Online RLHF"
(2024): sample k responses per prompt from the current policy, score them (reward model or
labeler), pair the best with the worst ("max_min") and take DPO steps (label smoothing as the
conservative variant) against the fixed reference. DNO-Prct (Rosset et al., "Direct Nash
Optimization", 2024) uses the previous iterate as the reference (the rollout's behaviour
log-probs) and keeps only large-margin pairs.
"""

from __future__ import annotations

import torch

from rlxf.algorithms.online.controller import Method
from rlxf.objectives.preference import cdpo_loss


class OnlineDPO(Method):
    min_samples = 2
    reduction = "sum"
    iterate_reference = False

    def __init__(self, beta: float = 0.1, label_smoothing: float = 0.0, min_margin: float = 0.0):
        self.beta, self.eps, self.min_margin = beta, label_smoothing, min_margin

    def prepare(self, batch, ctx) -> None:
        scores = batch.scores.view(-1, batch.k)
        best, worst = scores.argmax(1), scores.argmin(1)
        margin = scores.max(1).values - scores.min(1).values
        pairs = {}
        for g in range(scores.shape[0]):
            if margin[g] > self.min_margin:
                pairs[g] = (g * batch.k + int(best[g]), g * batch.k + int(worst[g]))
        batch.extra["pairs"] = pairs
        batch.stats["pairs"] = float(len(pairs))

    def loss(self, batch, groups, reducer, ctx):
        pairs = batch.extra["pairs"]
        mine = [pairs[g] for g in groups if g in pairs]
        n_total = max(1, sum(g in pairs for g in reducer.groups))
        if not mine:
            zero = sum(p.sum() for p in ctx.policy.model.parameters()) * 0.0
            return zero, {"loss": 0.0}, None
        rows = [c for c, _ in mine] + [r for _, r in mine]
        steps = batch.policy_steps(ctx.policy, rows)
        if self.iterate_reference:
            steps = steps.replace(ref_logps=steps.old_logps)
        n = len(mine)
        chosen, rejected = steps[:n], steps[n:]
        per_pair = cdpo_loss(chosen, rejected, self.beta, self.eps)
        loss = per_pair.sum() / n_total
        with torch.no_grad():
            acc = float((chosen.seq_logratio() > rejected.seq_logratio()).float().sum() / n_total)
        return loss, {"loss": loss.item(), "pair_accuracy": acc}, None


class DNO(OnlineDPO):
    iterate_reference = True

    def __init__(self, beta: float = 0.1, label_smoothing: float = 0.0, min_margin: float = 0.0):
        super().__init__(beta, label_smoothing, min_margin)


