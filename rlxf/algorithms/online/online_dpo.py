"""Online iterative DPO, DNO and INPO on the controller: pairs from the current policy, a pair loss.

Online DPO, after Dong, Xiong et al., "RLHF Workflow: From Reward Modeling to Online RLHF"
(2024): sample k responses per prompt from the current policy, score them (reward model or
labeler), pair the best with the worst ("max_min") and take DPO steps (label smoothing as the
conservative variant) against the fixed reference. DNO (Rosset et al., "Direct Nash
Optimization", 2024) uses the previous iterate as the reference (the rollout's behaviour
log-probs) and regresses on soft labels from win rates (``dno_loss``); its practical variant
DNO-Prct (``hard_labels=True``) takes DPO steps, and ``min_margin`` keeps only large-margin
pairs. INPO (Zhang et al., "Iterative Nash Policy Optimization", ICLR 2025) takes the same
pairs, ranked by a preference oracle's win rates within the group when one is given, and
regresses its mirror-descent target (``inpo_loss``) with the rollout policy as pi_t and the SFT
policy as mu.
"""

from __future__ import annotations

import torch

from rlxf.algorithms.online.controller import Method
from rlxf.objectives.game import dno_loss, inpo_loss
from rlxf.objectives.preference import cdpo_loss
from rlxf.rewards.scoring import group_win_rate


class OnlineDPO(Method):
    min_samples = 2
    reduction = "sum"
    iterate_reference = False

    def __init__(self, beta: float = 0.1, label_smoothing: float = 0.0, min_margin: float = 0.0):
        self.beta, self.eps, self.min_margin = beta, label_smoothing, min_margin

    def pair_scores(self, batch):
        """``[groups, k]`` scores that rank each group's samples (best is chosen, worst rejected)."""
        return batch.scores.view(-1, batch.k)

    def pair_loss(self, chosen, rejected, p_chosen):
        """Per-pair loss; ``p_chosen [n]`` is P(chosen preferred) from :meth:`pair_label`."""
        return cdpo_loss(chosen, rejected, self.beta, self.eps)

    def pair_label(self, best, worst):
        """P(chosen beats rejected) per group, from the ``pair_scores`` of the pair (hard here)."""
        return torch.ones_like(best)

    def prepare(self, batch, ctx) -> None:
        scores = self.pair_scores(batch)
        # samples no reward scored are out of the loss (zero mask): never a pair's chosen or rejected
        live = (batch.steps.mask.sum(-1) > 0).view_as(scores)
        top, low = scores.masked_fill(~live, float("-inf")), scores.masked_fill(~live, float("inf"))
        best, worst = top.argmax(1), low.argmin(1)
        hi, lo = top.max(1).values, low.min(1).values
        margin = hi - lo
        label = self.pair_label(hi, lo)
        pairs = {}
        for g in range(scores.shape[0]):
            if live[g].sum() >= 2 and margin[g] > self.min_margin:
                pairs[g] = (g * batch.k + int(best[g]), g * batch.k + int(worst[g]), float(label[g]))
        batch.extra["pairs"] = pairs
        batch.stats["pairs"] = float(len(pairs))

    def loss(self, batch, groups, reducer, ctx):
        pairs = batch.extra["pairs"]
        mine = [pairs[g] for g in groups if g in pairs]
        n_total = max(1, sum(g in pairs for g in reducer.groups))
        if not mine:
            zero = sum(p.sum() for p in ctx.policy.model.parameters()) * 0.0
            return zero, {"loss": 0.0}, None
        rows = [c for c, _, _ in mine] + [r for _, r, _ in mine]
        steps = batch.policy_steps(ctx.policy, rows)
        if self.iterate_reference:
            steps = steps.replace(ref_logps=steps.old_logps)
        n = len(mine)
        chosen, rejected = steps[:n], steps[n:]
        per_pair = self.pair_loss(chosen, rejected, torch.tensor([p for _, _, p in mine]))
        loss = per_pair.sum() / n_total
        with torch.no_grad():
            acc = float((chosen.seq_logratio() > rejected.seq_logratio()).float().sum() / n_total)
        return loss, {"loss": loss.item(), "pair_accuracy": acc}, None


class DNO(OnlineDPO):
    """Conceptual DNO: pairs ranked by r_t, each sample's win rate against its group (pi_t's
    other samples) under Bradley-Terry on the scores, and :func:`dno_loss` regressing
    ``eta * log(pi/pi_t)`` margins (eta = ``beta``) on soft labels sigma(r_t(y_w) - r_t(y_l)).
    ``hard_labels=True`` is DNO-Prct's DPO step: p = 1 - ``label_smoothing``."""

    iterate_reference = True
    uses_reference = False  # pi_t (the rollout policy) is its reference

    def __init__(self, beta: float = 0.1, label_smoothing: float = 0.0, min_margin: float = 0.0,
                 hard_labels: bool = False):
        super().__init__(beta, label_smoothing, min_margin)
        self.hard_labels = hard_labels

    def pair_scores(self, batch):
        s = batch.scores.view(-1, batch.k)
        return (torch.sigmoid(s[:, :, None] - s[:, None, :]).sum(-1) - 0.5) / (batch.k - 1)  # minus P(self > self)

    def pair_label(self, best, worst):
        return torch.full_like(best, 1 - self.eps) if self.hard_labels else torch.sigmoid(best - worst)

    def pair_loss(self, chosen, rejected, p_chosen):
        return dno_loss(chosen, rejected, p_chosen, self.beta)


class INPO(OnlineDPO):
    """``eta``: mirror-descent step (the target margin is 1/(2 eta)); ``tau``: pull toward the
    reference (default eta/3); ``preference(samples, i, j) -> P(i beats j)``: an optional oracle
    whose within-group win rates rank the samples instead of the scorer's rewards."""

    def __init__(self, eta: float = 0.5, tau: float | None = None, min_margin: float = 0.0, preference=None):
        super().__init__(min_margin=min_margin)
        self.eta, self.tau = eta, tau
        self.win_rate = None if preference is None else group_win_rate(preference)

    def pair_scores(self, batch):
        if self.win_rate is None:
            return super().pair_scores(batch)
        wins = self.win_rate(batch.samples)
        batch.stats["win_rate_in_group"] = float(wins.mean())
        return wins.view(-1, batch.k)

    def pair_loss(self, chosen, rejected, p_chosen):
        return inpo_loss(chosen, rejected, self.eta, self.tau)
