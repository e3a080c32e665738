"""Ranking losses over k scored candidates per prompt."""

from __future__ import annotations

import torch
from torch import Tensor


def rrhf_loss(scores: Tensor, rewards: Tensor, best_nll: Tensor) -> tuple[Tensor, Tensor]:
    """RRHF (Yuan et al. 2023), per prompt: ``sum over pairs with r_i < r_j of max(0, p_i - p_j)``
    (the rank term) and ``best_nll``, the NLL of the highest-reward candidate (the fine-tuning term).

    ``scores`` ``[B, k]``: each candidate's length-normalised log-likelihood p_i; ``rewards``
    ``[B, k]``; ``best_nll`` ``[B]``. Returns the two terms per prompt, ``[B]`` each; ties in reward
    give no rank term. No reference model, value or KL: the ranking alone keeps the policy near the data."""
    if scores.shape != rewards.shape or scores.dim() != 2:
        raise ValueError(f"rrhf_loss: scores and rewards must both be [B, k], got {tuple(scores.shape)} and "
                         f"{tuple(rewards.shape)}")
    worse = (rewards.unsqueeze(2) < rewards.unsqueeze(1)).to(scores.dtype)  # [B, i, j]: r_i < r_j
    gaps = torch.relu(scores.unsqueeze(2) - scores.unsqueeze(1))  # max(0, p_i - p_j)
    return (worse * gaps).sum((1, 2)), best_nll
