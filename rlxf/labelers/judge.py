"""A model judge: a trained reward model used as a labeler (RLAIF-style feedback from a model)."""

from __future__ import annotations

import numpy as np

from rlxf.labelers.simulated import bradley_terry_prob
from rlxf.rewards.model import RewardModel


class RewardModelJudge:
    """Labels pairs by the Bradley-Terry probability of a reward model's scores:
    P(a preferred) = sigma(beta * (r(x, a) - r(x, b))); ``beta = inf`` takes the higher score."""

    def __init__(self, reward_model: RewardModel, beta: float = float("inf"), seed: int = 0):
        if not beta >= 0:
            raise ValueError(f"judge beta must be >= 0, got {beta}")
        self.rm, self.beta = reward_model, beta
        self.rng = np.random.default_rng(seed)

    def prob_first(self, prompts: list[str], responses_a: list[str], responses_b: list[str]) -> np.ndarray:
        if not len(prompts) == len(responses_a) == len(responses_b):
            raise ValueError(f"judge: {len(prompts)} prompts but {len(responses_a)} and {len(responses_b)} responses")
        sa = self.rm.score_texts(prompts, responses_a).numpy()
        sb = self.rm.score_texts(prompts, responses_b).numpy()
        return bradley_terry_prob(sa, sb, self.beta)

    def prefers_first(self, prompts: list[str], responses_a: list[str], responses_b: list[str]) -> np.ndarray:
        """Boolean ``[n]``: True where the judge prefers the first response."""
        p = self.prob_first(prompts, responses_a, responses_b)
        return self.rng.random(p.shape) < p
