"""Evaluation helpers: summary statistics, sampled KL, best-of-N selection and its KL."""

from __future__ import annotations

import math

import numpy as np
import torch

from rlxf.core.steps import Steps


def mean_se(x) -> tuple[float, float]:
    """Mean and its standard error."""
    x = np.asarray(x, dtype=float)
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else 0.0


def paired_gain(x, baseline) -> tuple[float, float]:
    """Mean of x - baseline over the same prompts, and the standard error of that difference."""
    return mean_se(np.asarray(x, dtype=float) - np.asarray(baseline, dtype=float))


def auroc(positive, negative) -> float:
    """Area under the ROC curve: the probability that a random ``positive`` score exceeds a random
    ``negative`` one, ties counting half (the Mann-Whitney U statistic over ``len(pos) * len(neg)``)."""
    pos, neg = np.asarray(positive, dtype=float)[:, None], np.asarray(negative, dtype=float)[None, :]
    if pos.size == 0 or neg.size == 0:
        raise ValueError("auroc needs at least one positive and one negative score")
    return float((pos > neg).mean() + 0.5 * (pos == neg).mean())


def sampled_kl(policy_steps: Steps, ref_steps: Steps) -> torch.Tensor:
    """Per-sample estimate of KL(pi || pi_ref): sum_t log pi - log pi_ref over a response
    sampled from pi (unbiased; its mean over samples estimates the sequence KL), ``[batch]``."""
    return (policy_steps.logps - ref_steps.logps).mul(policy_steps.mask).sum(-1)


def best_of_n_kl(n: int) -> float:
    """Analytic KL of best-of-N from its sampling policy: log N - (N - 1) / N (Stiennon et al. 2020)."""
    return math.log(n) - (n - 1) / n


def best_of_n_index(scores: torch.Tensor) -> torch.Tensor:
    """Index of the highest-scoring sample per prompt, ``[P, N] -> [P]`` (first on ties)."""
    return scores.argmax(dim=1)
