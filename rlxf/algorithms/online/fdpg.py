"""f-DPG on the controller: minimise an f-divergence to p(y) ∝ pi_ref(y) exp(r(y)/beta).

Go et al., "Aligning Language Models with Preferences through f-divergence Minimization" (2023).
The learner's reward (no KL penalty: beta already regularises) defines the target; log Z is
estimated per prompt from its k samples. ``divergence``: reverse_kl, forward_kl, js or tv.
"""

from __future__ import annotations

from rlxf.algorithms.online.controller import Method
from rlxf.objectives.fdpg import F_PRIMES, fdpg_loss


class FDPG(Method):
    min_samples = 2

    def __init__(self, beta: float = 0.1, divergence: str = "reverse_kl"):
        if divergence not in F_PRIMES:
            raise ValueError(f"fdpg: divergence must be one of {', '.join(sorted(F_PRIMES))}, got {divergence!r}")
        self.beta, self.divergence = beta, divergence

    def loss(self, batch, groups, reducer, ctx):
        rows = batch.rows(groups)
        steps = batch.policy_steps(ctx.policy, rows)
        per = fdpg_loss(steps, batch.scores[rows], self.beta, self.divergence, group=batch.k)
        loss = per.sum() / reducer.n_rows
        return loss, {"loss": loss.item()}, steps
