"""Pure losses of the offline multi-turn learners: Monte-Carlo return regression, ILQL and its decoding.

Inputs are per-action-token tensors ``[B, T]`` (a turn's action tokens, padded) or token-level Q vectors
``[B, T, vocab]`` (one Q value per next token, as ILQL's Q head). Behaviour cloning is
:func:`rlxf.objectives.control.bc_loss` and the expectile is :func:`rlxf.objectives.control.expectile_loss`.

Snell, Kostrikov, Su, Yang, Levine, "Offline RL for Natural Language Generation with Implicit Language Q
Learning" (ICLR 2023); Abdulhai et al., "LMRL Gym" (2023) for the multi-turn baselines.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlxf.objectives.control import expectile_loss


def gather_tokens(q_all: Tensor, tokens: Tensor) -> Tensor:
    """``q_all[b, t, tokens[b, t]]``: the Q value of the token actually taken, ``[B, T]``."""
    return q_all.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def mc_return_loss(q: Tensor, returns: Tensor) -> Tensor:
    """Monte-Carlo regression ``(Q(s, a) - G)^2`` per token, ``[B, T]``: ``G`` is the discounted return from
    the token's turn to the episode's end (every token of a turn regresses its turn's return-to-go)."""
    return (q - returns) ** 2


def cql_loss(q_all: Tensor, tokens: Tensor) -> Tensor:
    """The token-level conservative term ``logsumexp_a Q(s, a) - Q(s, a_data)`` per token, ``[B, T]``:
    a cross-entropy that pushes down Q of tokens the data never took (Kumar et al. 2020; ILQL's CQL)."""
    return torch.logsumexp(q_all, -1) - gather_tokens(q_all, tokens)


def td_targets(rewards: Tensor, next_v: Tensor, discounts: Tensor, done: Tensor) -> Tensor:
    """Bellman targets ``r + discount (1 - done) V(s')`` per token, detached, ``[B, T]``.

    Within a turn the reward is 0, the discount 1 and ``s'`` the state after the token; on a turn's last
    token the reward is the turn's, the discount gamma, and ``s'`` the next observation's state (``done``
    only where the task terminated: a truncated episode bootstraps)."""
    return (rewards + discounts * (1.0 - done.float()) * next_v).detach()


def ilql_q_loss(q1: Tensor, q2: Tensor, targets: Tensor) -> Tensor:
    """Double-Q regression ``(Q1 - y)^2 + (Q2 - y)^2`` per token, ``[B, T]``."""
    return (q1 - targets) ** 2 + (q2 - targets) ** 2


def ilql_v_loss(q_target_min: Tensor, v: Tensor, tau: float) -> Tensor:
    """V by expectile regression on ``min(Q1', Q2')(s, a_data)`` (the target heads), per token ``[B, T]``:
    with ``tau`` in (0.5, 1) V tracks an upper expectile of Q over the data's actions, an in-sample max."""
    return expectile_loss(q_target_min.detach() - v, tau)


def q_guided_logits(bc_logits: Tensor, q_all: Tensor, v: Tensor | None, beta: float) -> Tensor:
    """ILQL's decoding ``log pi(a|s) = log pi_BC(a|s) + beta (Q(s, a) - V(s))`` (up to normalisation),
    ``[..., vocab]``. ``v`` (``[...]``) shifts every token equally, so it does not change the distribution;
    a learner without V (Monte-Carlo regression) passes None."""
    adv = q_all if v is None else q_all - v.unsqueeze(-1)
    return torch.log_softmax(bc_logits, -1) + beta * adv


def double_regression_loss(preds: tuple[Tensor, Tensor], targets: tuple[Tensor, Tensor]) -> Tensor:
    """``sum_i (pred_i - target_i)^2`` per example, ``[B]``: Digi-Q's double Q (or V) heads, each towards its own
    target network's target (Q_i to ``r + gamma V'_i(s')``, V_i to ``Q'_i(s, a_data)``)."""
    return sum((p - t.detach()) ** 2 for p, t in zip(preds, targets))


def best_of_n_advantage(q1: Tensor, q2: Tensor, v1: Tensor, v2: Tensor) -> Tensor:
    """Digi-Q's advantage of a candidate action ``max(Q1, Q2) - max(V1, V2)``, same shape as the inputs."""
    return torch.maximum(q1, q2) - torch.maximum(v1, v2)


def best_of_n_choice(advantage: Tensor, valid: Tensor, present: Tensor, threshold: float) -> tuple[Tensor, Tensor]:
    """Best-of-N policy extraction over ``advantage [S, N]`` (candidates per state; ``present`` False on
    padding, ``valid`` False on actions the task cannot parse, whose advantage counts as 0): the argmax
    candidate per state and whether to imitate it (its advantage clamped to [0, 1] exceeds ``threshold``)."""
    adv = torch.where(valid, advantage, torch.zeros_like(advantage))
    adv = torch.where(present, adv, torch.full_like(adv, float("-inf")))
    best, idx = adv.max(-1)
    return idx, best.clamp(0.0, 1.0) > threshold
