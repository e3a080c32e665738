"""Simulated labelers: feedback drawn from a gold reward through a model of a person."""

from __future__ import annotations

import math

import numpy as np


def bradley_terry_prob(gold_a: np.ndarray, gold_b: np.ndarray, beta: float) -> np.ndarray:
    """P(a preferred to b) = sigma(beta * (g_a - g_b)); beta = inf is a perfect labeler
    (ties then split evenly). Bradley & Terry 1952; the B-Pref teacher model (Lee et al. 2021)."""
    diff = np.asarray(gold_a, dtype=float) - np.asarray(gold_b, dtype=float)
    if math.isinf(beta):
        return np.where(diff > 0, 1.0, np.where(diff < 0, 0.0, 0.5))
    return 1.0 / (1.0 + np.exp(-beta * diff))


def bayes_optimal_accuracy(gold_a: np.ndarray, gold_b: np.ndarray, beta: float) -> float:
    """The best accuracy any reward model can reach against this labeler's answers:
    mean of max(p, 1 - p) with p the labeler's preference probability."""
    p = bradley_terry_prob(gold_a, gold_b, beta)
    return float(np.mean(np.maximum(p, 1 - p)))


class BradleyTerryLabeler:
    """Answers which of two responses is preferred, by the Bradley-Terry model on gold reward.

    ``rationality`` is beta: larger is more reliable, ``inf`` always picks the higher gold.
    """

    def __init__(self, rationality: float = 1.0, seed: int = 0):
        if rationality < 0:
            raise ValueError(f"labeler rationality (beta) must be >= 0, got {rationality}")
        self.beta = rationality
        self.rng = np.random.default_rng(seed)

    def prefers_first(self, gold_a, gold_b) -> np.ndarray:
        """Boolean array: True where the first response of the pair is preferred."""
        p = bradley_terry_prob(gold_a, gold_b, self.beta)
        return self.rng.random(p.shape) < p
