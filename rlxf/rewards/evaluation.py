"""Reward evaluation: accuracy against gold, calibration, correlation, ensemble agreement.

All functions take plain arrays (numpy or torch) and return floats, so they work for any
scorer: a reward model, an ensemble aggregate, a process verifier or a judge.
"""

from __future__ import annotations

import numpy as np


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy().astype(float) if hasattr(x, "detach") else np.asarray(x, dtype=float)


def pairwise_accuracy(score_a, score_b, gold_a, gold_b) -> float:
    """Share of pairs the scorer orders like gold, over pairs with different gold (score ties count half)."""
    sa, sb, ga, gb = map(_np, (score_a, score_b, gold_a, gold_b))
    keep = ga != gb
    if not keep.any():
        raise ValueError("pairwise_accuracy: every pair has equal gold reward; nothing to rank")
    right = np.where(sa == sb, 0.5, (sa > sb) == (ga > gb))
    return float(right[keep].mean())


def expected_calibration_error(probs, outcomes, n_bins: int = 10) -> float:
    """ECE = sum_b (n_b / n) |mean outcome_b - mean prob_b| over equal-width probability bins."""
    p, y = _np(probs), _np(outcomes)
    if p.shape != y.shape or len(p) == 0:
        raise ValueError(f"ECE needs as many outcomes as probabilities, got {p.shape} and {y.shape}")
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        sel = bins == b
        if sel.any():
            ece += sel.mean() * abs(y[sel].mean() - p[sel].mean())
    return float(ece)


def bt_calibration_error(score_a, score_b, labels, n_bins: int = 10) -> float:
    """ECE of the Bradley-Terry probability sigma(r_a - r_b) against labels (1 = a preferred);
    ties (0.5) count as half an outcome and skipped rows (NaN) are dropped."""
    sa, sb, y = _np(score_a), _np(score_b), _np(labels)
    keep = ~np.isnan(y)
    return expected_calibration_error(1 / (1 + np.exp(-(sa - sb)[keep])), y[keep], n_bins)


def gold_correlation(scores, gold) -> dict[str, float]:
    """Pearson and Spearman (rank) correlation of scores with gold reward."""
    s, g = _np(scores), _np(gold)

    def ranks(x):
        return np.argsort(np.argsort(x, kind="stable"), kind="stable").astype(float)

    return {"pearson": float(np.corrcoef(s, g)[0, 1]), "spearman": float(np.corrcoef(ranks(s), ranks(g))[0, 1])}


def ensemble_agreement(member_a, member_b) -> dict[str, float]:
    """How much K members agree on pairs, from ``[K, n]`` scores of both sides:
    ``unanimous`` = share of pairs all members order the same way; ``majority`` = mean share of
    members siding with the majority on a pair."""
    a, b = _np(member_a), _np(member_b)
    votes = (a > b).mean(0)
    return {"unanimous": float(np.mean((votes == 0) | (votes == 1))),
            "majority": float(np.mean(np.maximum(votes, 1 - votes)))}
