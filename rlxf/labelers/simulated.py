"""Simulated labelers: feedback drawn from a gold reward through a model of a person.

Every labeler is seeded and driven by gold reward only. Pairwise labels use one encoding
everywhere: 1.0 = the first response is preferred, 0.0 = the second, 0.5 = "equal" (a tie),
NaN = skipped (no answer).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

FIRST, SECOND, TIE = 1.0, 0.0, 0.5
SKIP = float("nan")


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


def _check_beta(beta: float) -> float:
    if not beta >= 0:
        raise ValueError(f"labeler rationality (beta) must be >= 0, got {beta}")
    return beta


class BradleyTerryLabeler:
    """Answers which of two responses is preferred, by the Bradley-Terry model on gold reward.

    ``rationality`` is beta: larger is more reliable, ``inf`` always picks the higher gold.
    """

    def __init__(self, rationality: float = 1.0, seed: int = 0):
        self.beta = _check_beta(rationality)
        self.rng = np.random.default_rng(seed)

    def prefers_first(self, gold_a, gold_b) -> np.ndarray:
        """Boolean array: True where the first response of the pair is preferred."""
        p = bradley_terry_prob(gold_a, gold_b, self.beta)
        return self.rng.random(p.shape) < p


def myopic_returns(terms: Sequence[Sequence[float]], gamma: float = 1.0) -> np.ndarray:
    """sum_t gamma^(H - t) r_t per segment (t = 1..H, H its own length): a myopic labeler
    (gamma < 1) weighs the last steps most. B-Pref (Lee et al. 2021). ``[n]``."""
    if not 0 < gamma <= 1:
        raise ValueError(f"myopia gamma must be in (0, 1], got {gamma}")
    out = np.empty(len(terms))
    for i, seg in enumerate(terms):
        seg = np.asarray(seg, dtype=float).reshape(-1)
        out[i] = float(np.sum(seg * gamma ** np.arange(len(seg) - 1, -1, -1)))
    return out


class BPrefLabeler:
    """The B-Pref simulated teacher (Lee et al. 2021): Bradley-Terry on (myopic) segment returns,
    with skipping, ties and mistakes.

    For each pair, in this order: skip (NaN) when both returns are below ``skip_below``;
    "equal" (0.5) when they differ by less than ``tie_below``; otherwise the first is preferred
    with probability sigma(beta * (R_a - R_b)); finally a decided answer is flipped with
    probability ``mistake_rate``. ``gamma`` < 1 discounts early steps (myopia).
    """

    def __init__(self, beta: float = 1.0, gamma: float = 1.0, mistake_rate: float = 0.0,
                 tie_below: float = 0.0, skip_below: float = -math.inf, seed: int = 0):
        if not 0 <= mistake_rate <= 1:
            raise ValueError(f"mistake_rate must be in [0, 1], got {mistake_rate}")
        if tie_below < 0:
            raise ValueError(f"tie_below must be >= 0, got {tie_below}")
        self.beta, self.gamma = _check_beta(beta), gamma
        self.mistake_rate, self.tie_below, self.skip_below = mistake_rate, tie_below, skip_below
        self.rng = np.random.default_rng(seed)

    def returns(self, terms) -> np.ndarray:
        """Segment returns from per-step terms (list of lists) or totals (1-d array)."""
        if isinstance(terms, np.ndarray) and terms.ndim == 1:
            return terms.astype(float)
        return myopic_returns(terms, self.gamma)

    def prob_first(self, terms_a, terms_b) -> np.ndarray:
        """P(first preferred) among decided answers, mistakes included."""
        p = bradley_terry_prob(self.returns(terms_a), self.returns(terms_b), self.beta)
        return (1 - self.mistake_rate) * p + self.mistake_rate * (1 - p)

    def label(self, terms_a, terms_b) -> np.ndarray:
        """Labels ``[n]``: 1.0 first preferred, 0.0 second, 0.5 equal, NaN skipped."""
        ra, rb = self.returns(terms_a), self.returns(terms_b)
        first = self.rng.random(ra.shape) < bradley_terry_prob(ra, rb, self.beta)
        flip = self.rng.random(ra.shape) < self.mistake_rate
        labels = np.where(first ^ flip, FIRST, SECOND)
        labels = np.where(np.abs(ra - rb) < self.tie_below, TIE, labels)
        return np.where(np.maximum(ra, rb) < self.skip_below, SKIP, labels)


class PlackettLuceLabeler:
    """Ranks k responses by the Plackett-Luce model on gold: the best is drawn with probability
    softmax(beta * g), then the best of the rest, and so on (sampled with the Gumbel-max trick)."""

    def __init__(self, beta: float = 1.0, seed: int = 0):
        self.beta = _check_beta(beta)
        self.rng = np.random.default_rng(seed)

    def rank(self, gold) -> np.ndarray:
        """``gold`` ``[n, k]`` (or ``[k]``) -> orders, response indices best first, same shape."""
        g = np.atleast_2d(np.asarray(gold, dtype=float))
        if math.isinf(self.beta):
            keys = g + 1e-9 * self.rng.random(g.shape)  # random order among exact ties
        else:
            keys = self.beta * g + self.rng.gumbel(size=g.shape)
        order = np.argsort(-keys, axis=1)
        return order if np.ndim(gold) == 2 else order[0]


def plackett_luce_prob(gold_in_order, beta: float = 1.0) -> float:
    """P(this order) = prod_i exp(beta g_(i)) / sum_{j >= i} exp(beta g_(j)), best first."""
    s = beta * np.asarray(gold_in_order, dtype=float)
    return float(np.exp(sum(s[i] - np.logaddexp.reduce(s[i:]) for i in range(len(s)))))


class LikertLabeler:
    """Rates single responses on a 1..levels scale by an ordered-logit model:
    P(rating <= j) = sigma(cut_j - beta * g). ``cuts`` (levels - 1 increasing values on the gold
    scale) default to evenly spaced quantiles of ``reference_gold``."""

    def __init__(self, levels: int = 5, beta: float = 1.0, cuts: Sequence[float] | None = None,
                 reference_gold: Sequence[float] | None = None, seed: int = 0):
        if levels < 2:
            raise ValueError(f"a Likert scale needs at least 2 levels, got {levels}")
        if cuts is None:
            if reference_gold is None:
                raise ValueError("LikertLabeler needs cuts or reference_gold to place its cut points")
            cuts = np.quantile(np.asarray(reference_gold, dtype=float), np.arange(1, levels) / levels)
        cuts = np.asarray(cuts, dtype=float)
        if cuts.shape != (levels - 1,) or np.any(np.diff(cuts) <= 0):
            raise ValueError(f"cuts must be {levels - 1} strictly increasing numbers, got {cuts.tolist()}")
        self.levels, self.beta, self.cuts = levels, _check_beta(beta), cuts
        self.rng = np.random.default_rng(seed)

    @property
    def scale(self) -> tuple[int, int]:
        return 1, self.levels

    def probs(self, gold) -> np.ndarray:
        """P(rating = 1..levels) per response, ``[n, levels]``."""
        g = np.asarray(gold, dtype=float).reshape(-1, 1)
        cdf = 1 / (1 + np.exp(-(self.beta * self.cuts[None] - self.beta * g)))
        cdf = np.concatenate([np.zeros((len(g), 1)), cdf, np.ones((len(g), 1))], 1)
        return np.diff(cdf, axis=1)

    def rate(self, gold) -> np.ndarray:
        """Integer ratings in 1..levels, ``[n]``."""
        g = np.asarray(gold, dtype=float).reshape(-1)
        noise = self.rng.logistic(size=g.shape)
        if math.isinf(self.beta):
            latent = g
        elif self.beta == 0:
            latent = np.where(noise > 0, np.inf, -np.inf)
        else:
            latent = g + noise / self.beta  # rating <= j  iff  latent <= cut_j
        return 1 + np.searchsorted(self.cuts, latent)


class IntransitiveLabeler:
    """A mixture of gold criteria: each comparison is judged by one criterion, drawn with
    probability ``weights[m]``, through Bradley-Terry with ``beta``. Different criteria disagree,
    so preferences over three responses form cycles at the rate :func:`cycle_probability` gives
    (the intransitive preferences self-play methods are built for)."""

    def __init__(self, weights: Sequence[float], beta: float = math.inf, seed: int = 0):
        w = np.asarray(weights, dtype=float)
        if w.ndim != 1 or len(w) < 1 or np.any(w < 0) or not w.sum() > 0:
            raise ValueError(f"weights must be non-negative numbers, one per criterion, got {list(weights)}")
        self.weights, self.beta = w / w.sum(), _check_beta(beta)
        self.rng = np.random.default_rng(seed)

    def _check(self, scores_a, scores_b):
        a, b = np.atleast_2d(np.asarray(scores_a, float)), np.atleast_2d(np.asarray(scores_b, float))
        if a.shape != b.shape or a.shape[1] != len(self.weights):
            raise ValueError(f"criterion scores must be [n, {len(self.weights)}] for both sides, "
                             f"got {a.shape} and {b.shape}")
        return a, b

    def prob_first(self, scores_a, scores_b) -> np.ndarray:
        """P(first preferred) = sum_m w_m sigma(beta (g_m(a) - g_m(b))), ``[n]``."""
        a, b = self._check(scores_a, scores_b)
        return bradley_terry_prob(a, b, self.beta) @ self.weights

    def prefers_first(self, scores_a, scores_b) -> np.ndarray:
        a, b = self._check(scores_a, scores_b)
        m = self.rng.choice(len(self.weights), size=len(a), p=self.weights)
        p = bradley_terry_prob(a[np.arange(len(a)), m], b[np.arange(len(b)), m], self.beta)
        return self.rng.random(len(a)) < p


def cycle_probability(p_ab, p_bc, p_ca) -> np.ndarray:
    """P(three independent comparisons form a cycle) = P(a>b)P(b>c)P(c>a) + P(b>a)P(c>b)P(a>c)."""
    p_ab, p_bc, p_ca = (np.asarray(x, dtype=float) for x in (p_ab, p_bc, p_ca))
    return p_ab * p_bc * p_ca + (1 - p_ab) * (1 - p_bc) * (1 - p_ca)
