"""Contrastive Preference Learning: preference learning straight into the policy, no RL.

Hejna, Rafailov, Sikchi, Finn, Niekum, Knox, Sadigh, "Contrastive Preference Learning:
Learning from Human Feedback without RL", ICLR 2024 (arXiv 2310.13639).

Preferences are modelled by regret: a segment's score is its discounted sum of optimal
advantages, and under maximum-entropy RL ``A*(s, a) = alpha * log pi*(a|s)``. It takes the
same :class:`Steps` as DPO, so it trains a controller or a language model alike.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from rlxf.core.steps import Steps


def cpl_score(segment: Steps, alpha: float = 0.1, gamma: float = 1.0) -> Tensor:
    """Segment score ``S = sum_t gamma^t * alpha * log pi(a_t|s_t)`` over real steps, ``[batch]``."""
    return alpha * segment.discounted_sum(gamma=gamma)


def cpl_loss(
    chosen: Steps,
    rejected: Steps,
    alpha: float = 0.1,
    lam: float = 0.5,
    gamma: float = 1.0,
    bc_coeff: float = 0.0,
) -> Tensor:
    """CPL loss per segment pair, ``[batch]``.

    ``-log[exp(S+) / (exp(S+) + exp(lam * S-))] = -log sigma(S+ - lam * S-)``, plus
    ``bc_coeff * (-mean log pi)`` over both segments' real steps (CPL-BC; the paper pairs it
    with ``lam = 1``). ``lam`` in (0, 1] is the conservative bias ("contrastive_bias" in the
    official code): it shrinks the dispreferred score, favouring in-distribution actions.
    Defaults follow the MetaWorld configs (alpha 0.1, lam 0.5). No reference policy is used.
    """
    if not 0.0 < lam <= 1.0:
        raise ValueError(f"cpl_loss: lam (the conservative bias) must be in (0, 1], got {lam}")
    loss = -F.logsigmoid(cpl_score(chosen, alpha, gamma) - lam * cpl_score(rejected, alpha, gamma))
    n = (chosen.lengths() + rejected.lengths()).clamp(min=1)
    bc = -(chosen.sum() + rejected.sum()) / n
    return loss + bc_coeff * bc
