"""Nash-MD-PG on the controller: play against a geometric mixture of the policy and the reference.

Munos et al., "Nash Learning from Human Feedback" (ICML 2024), the deep variant: the gradient
``grad log pi(y) * [P(y > y') - 1/2 - tau log(pi(y)/mu(y))]`` with the opponent y' drawn from
``pi^beta(y) ∝ pi(y)^(1-beta) mu(y)^beta`` (beta = 0 is self-play, 1 a best response to SFT).

Instead of a second sampler, the opponent is the policy's own group: the other samples of the
same prompt, importance-weighted by ``(mu(y')/pi(y'))^beta`` and self-normalised, which is the
sequence-level mixture the paper defines (TRL mixes per-token logits instead). The preference
comes from an oracle; no reward model is needed.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlxf.algorithms.online.controller import Method
from rlxf.objectives.game import nash_md_pg_loss


def mixture_win_rate(pref: Tensor, ref_minus_behaviour: Tensor, beta: float) -> Tensor:
    """``[G, k]`` win probability of each sample against the group's geometric mixture.

    ``pref [G, k, k]``: P(row beats column); ``ref_minus_behaviour [G, k]``: log mu(y) - log pi(y)
    of each sample under the sampling policy. Opponent j != i gets weight proportional to
    ``exp(beta * ref_minus_behaviour[j])``.
    """
    G, k = ref_minus_behaviour.shape
    logw = (beta * ref_minus_behaviour)[:, None, :].expand(G, k, k).clone()
    logw[:, torch.arange(k), torch.arange(k)] = float("-inf")  # never play yourself
    w = torch.softmax(logw, dim=-1)
    return (w * pref).sum(-1)


class NashMD(Method):
    """``preference(samples, i, j) -> P(i beats j)``; ``mixture``: beta of the opponent;
    ``tau``: the game's KL regulariser (default: the run's KL coefficient)."""

    reduction = "sum"
    min_samples = 2

    def __init__(self, preference, mixture: float = 0.25, tau: float | None = None):
        if not 0.0 <= mixture <= 1.0:
            raise ValueError(f"method_args.mixture must be in [0, 1], got {mixture}")
        self.preference, self.mixture, self.tau = preference, mixture, tau

    def prepare(self, batch, ctx) -> None:
        k, B = batch.k, len(batch.samples)
        rows = torch.arange(B)
        i = rows.repeat_interleave(k)
        j = (rows // k * k).repeat_interleave(k) + torch.arange(k).repeat(B)
        pref = torch.as_tensor(self.preference(batch.samples, i, j)).float().view(-1, k, k)
        s = batch.steps
        ref_minus = (s.masked(s.ref_logps - s.old_logps)).sum(-1).view(-1, k)
        win = mixture_win_rate(pref, ref_minus, self.mixture).reshape(-1)
        batch.extra["win"] = win
        batch.parts["win_rate"] = win
        batch.stats["win_rate_vs_mixture"] = float(win.mean())

    def loss(self, batch, groups, reducer, ctx):
        rows = batch.rows(groups)
        steps = batch.policy_steps(ctx.policy, rows)
        tau = ctx.kl_coef if self.tau is None else self.tau
        per_seq = nash_md_pg_loss(steps, batch.extra["win"][rows], tau)
        loss = per_seq.sum() / reducer.n_rows
        return loss, {"loss": loss.item()}, steps
