"""Reward-model ensembles and conservative aggregation against over-optimisation.

K members differ by seed (head initialisation and data order) or by bootstrap resamples of
the comparisons. Aggregations follow Coste et al. 2024, "Reward Model Ensembles Help Mitigate
Overoptimization": mean, worst-case (WCO: min over members) and uncertainty-weighted
(UWO: mean - lambda * variance over members).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from rlxf.rewards.model import RewardModel

AGGREGATIONS = ("mean", "wco", "uwo")


def aggregate(member_scores: Tensor, method: str = "mean", uwo_lambda: float = 0.5) -> Tensor:
    """Combine ``[K, ...]`` member scores into one score ``[...]``.

    ``uwo`` uses the population variance over members (the variance, not the std, as in the paper).
    """
    if member_scores.dim() < 1 or member_scores.shape[0] < 1:
        raise ValueError("aggregate needs member scores shaped [K, ...] with K >= 1")
    if method == "mean":
        return member_scores.mean(0)
    if method == "wco":
        return member_scores.min(0).values
    if method == "uwo":
        return member_scores.mean(0) - uwo_lambda * member_scores.var(0, unbiased=False)
    raise ValueError(f"unknown ensemble aggregation {method!r}; known: {', '.join(AGGREGATIONS)}")


def member_indices(n: int, member: int, seed: int, bootstrap: bool) -> list[int]:
    """Training rows of ensemble member ``member``: all rows, or a bootstrap resample (with replacement)."""
    if not bootstrap:
        return list(range(n))
    return np.random.default_rng([seed, member, 31]).integers(0, n, n).tolist()


class RewardEnsemble:
    """K reward models scored together; ``score`` aggregates, ``member_scores`` keeps them apart."""

    def __init__(self, members: list[RewardModel], method: str = "mean", uwo_lambda: float = 0.5):
        if not members:
            raise ValueError("a reward ensemble needs at least one member")
        aggregate(torch.zeros(1, 1), method)  # validates the name
        self.members, self.method, self.uwo_lambda = members, method, uwo_lambda

    @torch.no_grad()
    def member_scores(self, prompt_ids: list[list[int]], response_ids: list[list[int]]) -> Tensor:
        """``[K, batch]``."""
        return torch.stack([m.score(prompt_ids, response_ids) for m in self.members])

    def score(self, prompt_ids: list[list[int]], response_ids: list[list[int]]) -> Tensor:
        return aggregate(self.member_scores(prompt_ids, response_ids), self.method, self.uwo_lambda)
