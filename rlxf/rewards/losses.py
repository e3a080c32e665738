"""Reward-model losses: pure functions of scores, unreduced (one term per example, ``[batch]``).

Bradley-Terry and its variants take the scores of the two responses of each pair; rankings
take scores already in ranked order; ratings take scores and their target ratings. The
``check_*`` functions validate feedback before training and name the offending row.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from rlxf.rewards.model import bradley_terry_loss

__all__ = [
    "bradley_terry_loss", "soft_bt_loss", "label_smoothed_bt_loss", "margin_bt_loss", "plackett_luce_loss",
    "rating_regression_loss", "rating_target", "flip_low_strength", "adaptive_margin", "preference_strength",
    "step_bce_loss", "step_regression_loss", "RewardDataError", "check_comparison_labels", "check_rankings", "check_ratings",
]


class RewardDataError(ValueError):
    """Feedback a reward model cannot be trained on; the message names the row."""


# -- pairwise -------------------------------------------------------------------------------


def soft_bt_loss(r_a: Tensor, r_b: Tensor, p_first: Tensor) -> Tensor:
    """Bradley-Terry cross-entropy with a soft label p = P(a preferred):
    -p log sigma(r_a - r_b) - (1 - p) log sigma(r_b - r_a). A tie is p = 0.5. ``[batch]``."""
    d = r_a - r_b
    return -p_first * F.logsigmoid(d) - (1 - p_first) * F.logsigmoid(-d)


def label_smoothed_bt_loss(r_chosen: Tensor, r_rejected: Tensor, eps: float = 0.1) -> Tensor:
    """(1 - eps)(-log sigma(d)) + eps(-log sigma(-d)), d = r_w - r_l: trusts each label only
    1 - eps ("Secrets of RLHF Part II", Wang et al. 2024; the cDPO smoothing on a reward)."""
    return soft_bt_loss(r_chosen, r_rejected, torch.full_like(r_chosen, 1 - eps))


def margin_bt_loss(r_chosen: Tensor, r_rejected: Tensor, margin: Tensor | float) -> Tensor:
    """-log sigma(r_w - r_l - m): the chosen must win by at least the margin m, which grows with
    preference strength ("Secrets of RLHF Part II"; Llama 2's margin loss). ``[batch]``."""
    return -F.logsigmoid(r_chosen - r_rejected - margin)


def preference_strength(member_margins: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and std over M reward models of r_m(chosen) - r_m(rejected), ``[M, batch] -> [batch]``
    each ("Secrets of RLHF Part II": negative mean = probably mislabelled, small = ambiguous)."""
    return member_margins.mean(0), member_margins.std(0, unbiased=member_margins.shape[0] > 1)


def flip_low_strength(strength: Tensor, fraction: float = 0.2) -> Tensor:
    """Which labels to flip, ``[batch]`` bool: the lowest-strength ``fraction`` of pairs, among
    those whose strength is negative (the ensemble disagrees with the label). Part II flips the
    lowest ~20%; restricting to negative strength is our choice, so a clean set is left alone."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"flip fraction must be in [0, 1], got {fraction}")
    k = int(math.floor(fraction * len(strength)))
    flip = torch.zeros_like(strength, dtype=torch.bool)
    if k:
        idx = torch.argsort(strength)[:k]
        flip[idx] = strength[idx] < 0
    return flip


def adaptive_margin(strength: Tensor, scale: float = 1.0) -> Tensor:
    """Margin per pair for :func:`margin_bt_loss`: ``scale * max(strength, 0)``, so clear pairs
    must be separated more and ambiguous ones not at all (Part II's adaptive margin)."""
    return scale * strength.clamp(min=0)


# -- rankings and ratings -------------------------------------------------------------------


def plackett_luce_loss(ranked_scores: Tensor, mask: Tensor | None = None) -> Tensor:
    """-log P(order) under Plackett-Luce: -sum_i [s_(i) - logsumexp_{j>=i} s_(j)], scores given
    best first, ``[batch, k] -> [batch]``. ``mask`` (1 = real) allows rankings of different
    lengths, padded at the end. With k = 2 this is the Bradley-Terry loss."""
    if mask is None:
        mask = torch.ones_like(ranked_scores)
    neg = torch.finfo(ranked_scores.dtype).min
    s = ranked_scores.masked_fill(mask <= 0, neg)
    # logsumexp over the suffix j >= i, by a reversed cumulative logsumexp
    suffix = torch.logcumsumexp(s.flip(-1), -1).flip(-1)
    terms = (s - suffix) * mask
    return -terms.sum(-1)


def rating_target(ratings: Tensor, scale: tuple[float, float]) -> Tensor:
    """Ratings mapped linearly from ``scale`` = (low, high) to [-1, 1]."""
    low, high = scale
    return 2 * (ratings - low) / (high - low) - 1


def rating_regression_loss(scores: Tensor, ratings: Tensor, scale: tuple[float, float]) -> Tensor:
    """(r(x, y) - t)^2 with t the rating mapped to [-1, 1]: a reward from absolute ratings."""
    return (scores - rating_target(ratings, scale)) ** 2


# -- process (per-step) ---------------------------------------------------------------------


def step_bce_loss(step_logits: Tensor, step_labels: Tensor, mask: Tensor) -> Tensor:
    """Per-step binary cross-entropy of a process reward model (Lightman et al. 2023's PRM
    objective), summed over real steps: ``[batch, steps] -> [batch]``. Labels may be soft."""
    terms = F.binary_cross_entropy_with_logits(step_logits, step_labels, reduction="none")
    return (terms * mask).sum(-1)


def step_regression_loss(step_values: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
    """Squared error per step summed over real steps, ``[batch, steps] -> [batch]``: fits a
    verifier to Monte-Carlo values such as a prover's success probability (PAV, Setlur et al.)."""
    return ((step_values - targets) ** 2 * mask).sum(-1)


# -- validation -----------------------------------------------------------------------------


def check_comparison_labels(labels, where: str = "comparisons") -> np.ndarray:
    """Labels in {0, 0.5, 1} (NaN = skipped rows, dropped by the caller); at least one must be
    decided, since ties alone say nothing about which response is better."""
    labels = np.asarray(labels, dtype=float)
    for i, v in enumerate(labels):
        if not (math.isnan(v) or v in (0.0, 0.5, 1.0)):
            raise RewardDataError(f"{where}: row {i} has label {v}; expected 1 (first preferred), "
                                  f"0 (second), 0.5 (tie) or NaN (skipped)")
    decided = labels[~np.isnan(labels)]
    if len(decided) == 0:
        raise RewardDataError(f"{where}: no labelled rows (all {len(labels)} rows were skipped)")
    if np.all(decided == 0.5):
        raise RewardDataError(f"{where}: every labelled row is a tie (rows 0..{len(labels) - 1}, e.g. row "
                              f"{int(np.flatnonzero(labels == 0.5)[0])}); a reward model needs some decided "
                              f"comparisons")
    return labels


def check_rankings(orders, where: str = "rankings") -> None:
    """Each row must rank distinct items, best first."""
    for i, order in enumerate(orders):
        order = list(order)
        if len(order) < 2:
            raise RewardDataError(f"{where}: row {i} ranks {len(order)} item(s); expected at least 2")
        dup = next((x for x in order if order.count(x) > 1), None)
        if dup is not None:
            raise RewardDataError(f"{where}: row {i} lists item {dup!r} more than once ({order}); "
                                  f"a ranking names each item exactly once")


def check_ratings(ratings, scale: tuple[float, float], where: str = "ratings") -> None:
    """Each rating must lie within ``scale`` = (low, high)."""
    low, high = scale
    if not low < high:
        raise RewardDataError(f"{where}: scale must be (low, high) with low < high, got {scale}")
    for i, r in enumerate(ratings):
        if not low <= float(r) <= high:
            raise RewardDataError(f"{where}: row {i} has rating {r}, outside the scale [{low}, {high}]")
