"""Game-theoretic (Nash) preference objectives on per-step tensors: Nash-MD-PG, INPO, DNO.

Each is a pure function of ``Steps`` returning unreduced per-example terms. ``steps.logps`` is
the trained policy, ``steps.ref_logps`` the SFT reference mu, and (INPO, DNO) ``steps.old_logps``
the previous iterate pi_t. Formulas: ALGORITHMS.md sections 5a-5c.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from rlxf.core.steps import Steps


def nash_md_pg_loss(steps: Steps, win_prob: Tensor, tau: float = 0.008) -> Tensor:
    """Nash-MD-PG per sequence, ``[B]``: ``-[P(y > y') - 1/2 - tau * log(pi(y)/mu(y))] * log pi(y)``.

    Munos et al., "Nash Learning from Human Feedback" (ICML 2024): the policy-gradient form of
    mirror descent on the tau-regularised preference game. ``win_prob [B]`` is the preference of
    each sampled y over an opponent y' drawn from the geometric mixture of pi and mu; the
    bracket is a constant (detached) weight.
    """
    if win_prob.shape != (steps.batch_size,):
        raise ValueError(f"nash_md_pg_loss: win_prob must be [batch]={steps.batch_size}, got {tuple(win_prob.shape)}")
    weight = (win_prob - 0.5 - tau * steps.seq_logratio()).detach()
    return -weight * steps.sum()


def _seq(steps: Steps, field: str) -> Tensor:
    return steps.sum(field)


def inpo_loss(chosen: Steps, rejected: Steps, eta: float = 0.005, tau: float | None = None) -> Tensor:
    """INPO per pair, ``[B]``: ``(h_t - 1/(2 eta))^2`` with
    ``h_t = log pi(y_w)/pi(y_l) - (tau/eta) log mu(y_w)/mu(y_l) - ((eta - tau)/eta) log pi_t(y_w)/pi_t(y_l)``.

    Zhang et al., "Iterative Nash Policy Optimization" (ICLR 2025): online mirror descent on the
    regularised game from binary labels alone. ``tau`` defaults to ``eta / 3`` (the paper's choice).
    Needs ``ref_logps`` (mu) and ``old_logps`` (pi_t) on both sides.
    """
    tau = eta / 3 if tau is None else tau
    h = ((chosen.sum() - rejected.sum())
         - (tau / eta) * (_seq(chosen, "ref_logps") - _seq(rejected, "ref_logps"))
         - ((eta - tau) / eta) * (_seq(chosen, "old_logps") - _seq(rejected, "old_logps")))
    return (h - 1.0 / (2.0 * eta)) ** 2


def dno_loss(first: Steps, second: Steps, p_first: Tensor, eta: float = 0.1) -> Tensor:
    """Conceptual DNO per pair, ``[B]``: a soft-label logistic regression on ``eta * log(pi/pi_t)`` margins,
    ``-[p log sigma(eta m) + (1 - p) log sigma(-eta m)]`` with ``m = log pi/pi_t (y1) - log pi/pi_t (y2)``.

    Rosset et al., "Direct Nash Optimization" (2024): ``p_first [B] = sigma(r_t(y1) - r_t(y2))`` from
    the win rates r_t against pi_t; pi_t (``old_logps``) is the reference. Hard labels (p in {0, 1})
    give DNO-Prct's DPO step.
    """
    m = (first.sum() - _seq(first, "old_logps")) - (second.sum() - _seq(second, "old_logps"))
    p = p_first.detach()
    return -(p * F.logsigmoid(eta * m) + (1 - p) * F.logsigmoid(-eta * m))
