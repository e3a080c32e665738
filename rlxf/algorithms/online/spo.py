"""SPO on the controller: reward = win rate against the policy's own samples, no reward model.

Swamy et al., "A Minimaximalist Approach to Reinforcement Learning from Human Feedback" (2024):
each response is scored by its average win probability against the other responses sampled
for the same prompt (the self-play opponent), given by a preference oracle; the trajectory
reward is then optimised by an ordinary policy-gradient method, here RLOO's leave-one-out
baseline with the KL penalty folded in.
"""

from __future__ import annotations

from rlxf.algorithms.online.rloo import RLOO
from rlxf.objectives.policy_gradient import kl_penalized_rewards, rloo_advantages
from rlxf.rewards.scoring import group_win_rate


class SPO(RLOO):
    """``preference(samples, i, j) -> P(i beats j)`` is the oracle (e.g. a labeler on gold)."""

    def __init__(self, preference, clip: float = 0.2):
        super().__init__(clip)
        self.win_rate = group_win_rate(preference)

    def prepare(self, batch, ctx) -> None:
        wins = self.win_rate(batch.samples)
        batch.parts["win_rate"] = wins
        batch.stats["win_rate_in_group"] = float(wins.mean())
        beta = ctx.kl_coef if ctx.cfg.kl.mode == "reward" else 0.0
        total = kl_penalized_rewards(wins, batch.steps, beta, ctx.cfg.kl.estimator).sum(-1)
        batch.extra["adv"] = rloo_advantages(total.view(-1, batch.k)).reshape(-1)
