"""The noisy 1-D threshold problem of "Learning to Actively Learn" (Zhang, Jain, Jamieson 2020), toy scale,
and its hand-designed query rules.

A problem is a threshold ``t`` in ``0..n-1`` over the points ``0..n-1`` (point ``x`` has label 1 iff
``x >= t``) and a flip probability ``p``: each answer is the true label flipped with probability ``p``.
A learner asks ``budget`` labels, one at a time (a point may be asked again), then guesses ``t``. Its loss
is the 0/1 identification error (``guess != t``), the loss the paper's notes name; ``Problems.misclassified``
gives the fraction of points a guess labels wrongly, ``|guess - t| / n``, for reports.

Flips are drawn up front, one per (problem, answer number), so two rules run on the same ``Problems`` see
the same noise whatever they ask: their errors are paired.

Hand-designed rules, both reading the Bayes posterior over ``t`` under an assumed flip rate ``p_hat``
(uniform prior), both guessing its mode:
- ``uncertainty``: pool-based uncertainty sampling (Lewis & Gale 1994): ask the not-yet-asked point whose
  predicted label is most uncertain (``P(y=1)`` nearest 1/2);
- ``bisection``: noisy binary search (probabilistic bisection, Horstein 1963): ask the posterior median,
  repeats allowed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

NOISE_LEVELS = (0.0, 0.1, 0.2)


@dataclass
class Problems:
    """A batch of threshold problems: ``thresholds [B]`` (long), ``noise [B]`` (flip rates), ``flips [B, budget]``."""

    thresholds: Tensor
    noise: Tensor
    flips: Tensor
    n: int = 64

    def __len__(self) -> int:
        return len(self.thresholds)

    @property
    def budget(self) -> int:
        return self.flips.shape[1]

    def answer(self, x: Tensor, step: int) -> Tensor:
        """The (noisy) labels of points ``x [B]`` as the ``step``-th answer, float 0/1."""
        truth = x >= self.thresholds
        return (truth ^ self.flips[:, step]).float()

    def error(self, guess: Tensor) -> Tensor:
        """0/1 identification error of the guessed thresholds, ``[B]``."""
        return (guess != self.thresholds).float()

    def misclassified(self, guess: Tensor) -> Tensor:
        """Fraction of the ``n`` points the guessed threshold labels wrongly, ``[B]``."""
        return (guess - self.thresholds).abs().float() / self.n


def make_problems(thresholds, noise, budget: int = 12, n: int = 64, seed: int = 0) -> Problems:
    """Problems with the given thresholds and flip rates (broadcast to one length), flips drawn from ``seed``."""
    t = torch.as_tensor(thresholds, dtype=torch.long).reshape(-1)
    p = torch.as_tensor(noise, dtype=torch.float32).reshape(-1)
    t, p = torch.broadcast_tensors(t, p)
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= n):
        raise ValueError(f"thresholds must lie in 0..{n - 1}, got {int(t.min())}..{int(t.max())}")
    if p.numel() and (float(p.min()) < 0 or float(p.max()) >= 0.5):
        raise ValueError(f"noise must lie in [0, 0.5), got {float(p.min())}..{float(p.max())}")
    g = torch.Generator().manual_seed(seed)
    flips = torch.rand(len(t), budget, generator=g) < p[:, None]
    return Problems(t.clone(), p.clone(), flips, n)


def sample_problems(batch: int, budget: int = 12, n: int = 64, noise_levels=NOISE_LEVELS, seed: int = 0) -> Problems:
    """``batch`` problems from the uniform prior: ``t`` uniform on ``0..n-1``, ``p`` uniform on ``noise_levels``."""
    g = torch.Generator().manual_seed(seed + 7_919)
    t = torch.randint(0, n, (batch,), generator=g)
    p = torch.as_tensor(noise_levels, dtype=torch.float32)[torch.randint(0, len(noise_levels), (batch,), generator=g)]
    return make_problems(t, p, budget, n, seed)


def log_likelihood(asked: Tensor, answers: Tensor, n: int, p_hat: float) -> Tensor:
    """``log P(answers | t)`` for every threshold ``t``, ``[B, n]``; ``asked``/``answers`` are ``[B, S]``."""
    t = torch.arange(n)
    truth = (asked[:, :, None] >= t).float()  # [B, S, n]
    agree = (truth == answers[:, :, None]).float()
    return (agree * np.log(1 - p_hat) + (1 - agree) * np.log(p_hat)).sum(1)


def posterior(asked: Tensor, answers: Tensor, n: int, p_hat: float) -> Tensor:
    """Posterior over ``t`` under a uniform prior and flip rate ``p_hat``, ``[B, n]``."""
    return torch.softmax(log_likelihood(asked, answers, n, p_hat), dim=-1)


def run_rule(rule: str, problems: Problems, p_hat: float = 0.1) -> tuple[Tensor, Tensor]:
    """A hand-designed rule (``uncertainty`` or ``bisection``) on ``problems``: ``(asked [B, budget], guess [B])``."""
    if rule not in ("uncertainty", "bisection"):
        raise ValueError(f"rule {rule!r}: expected 'uncertainty' or 'bisection'")
    b, n = len(problems), problems.n
    asked = torch.zeros(b, 0, dtype=torch.long)
    answers = torch.zeros(b, 0)
    rows = torch.arange(b)
    for step in range(problems.budget):
        post = posterior(asked, answers, n, p_hat)
        if rule == "bisection":
            # asking x splits t <= x (label 1) from t > x: pick x with P(t <= x) nearest 1/2
            x = (post.cumsum(-1) - 0.5).abs().argmin(-1)
        else:
            uncertainty = -(post.cumsum(-1) - 0.5).abs()  # P(y_x = 1) = P(t <= x)
            seen = torch.zeros(b, n, dtype=torch.bool)
            seen[rows[:, None].expand_as(asked), asked] = True
            x = uncertainty.masked_fill(seen, -np.inf).argmax(-1)
        asked = torch.cat([asked, x[:, None]], 1)
        answers = torch.cat([answers, problems.answer(x, step)[:, None]], 1)
    return asked, posterior(asked, answers, n, p_hat).argmax(-1)
