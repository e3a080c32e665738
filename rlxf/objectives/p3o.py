"""P3O: pairwise proximal policy optimisation from comparisons of two samples of one prompt.

Wu et al., "Pairwise Proximal Policy Optimization: Harnessing Relative Feedback for LLM
Alignment" (2023). Only the reward difference of two responses to the same prompt enters, so
the update is invariant to any prompt-dependent shift of the reward. This is the V1 form
(each response's sequence ratio clipped separately); the joint-clipping V2 is not implemented.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlxf.core.steps import Steps


def p3o_loss(first: Steps, second: Steps, reward_first: Tensor, reward_second: Tensor, clip: float = 0.2) -> Tensor:
    """Per pair, ``[B]``: with ``A = (r_1 - r_2) / 2`` and sequence ratios ``rho_i = pi(y_i)/pi_old(y_i)``,
    ``-min(rho_1 A, clip(rho_1) A) - min(rho_2 (-A), clip(rho_2) (-A))``.

    At ``rho = 1`` its gradient is ``-(r_1 - r_2)/2 * grad(log pi(y_1) - log pi(y_2))``, the pairwise
    policy gradient. Rewards (KL-penalised if wanted) are constants; needs ``old_logps``.
    """
    adv = ((reward_first - reward_second) / 2).detach()

    def term(s: Steps, a: Tensor) -> Tensor:
        ratio = torch.exp(s.sum() - s.sum("old_logps"))
        return -torch.minimum(ratio * a, ratio.clamp(1 - clip, 1 + clip) * a)

    return term(first, adv) + term(second, -adv)
