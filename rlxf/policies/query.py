"""A learned query policy: which question to ask next, from the questions asked and the answers so far.

``QueryPolicy`` (Zhang, Jain & Jamieson, "Learning to Actively Learn: A Robust Approach", 2020): a GRU reads
the history, one step per answered query, its input the asked candidate's history features and the answer.
Each candidate is scored by a small MLP over its ``feature_dim`` features and a projection of the GRU state,
so one policy scores any number of candidates described by the same features; an optional head guesses
the answer to the learning problem (for the threshold toy, which threshold it is).

``LearnedRule`` is the one interface the feedback app's selection rules and PbRL's query selection use: it
holds the GRU state of one questioning session, ``scores`` candidates, ``choose`` the best ``k`` and
``observe`` an answer. ``pair_features`` turns an ensemble's ``P_k(first wins)`` into the candidate features
both callers pass: the ensemble mean, its standard deviation over members, and ``1 - |2 mean - 1|``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

PAIR_FEATURES = 3  # feature_dim of pair_features


class QueryPolicy(nn.Module):
    """GRU over ``(history features of the asked candidate, answer)``; candidate logits from a small MLP over
    each candidate's ``feature_dim`` features and a projection of the GRU state; an optional guess head."""

    def __init__(self, feature_dim: int, history_dim: int | None = None, n_guesses: int = 0, hidden: int = 64,
                 scorer_hidden: int = 32, state_dim: int = 8):
        super().__init__()
        history_dim = feature_dim if history_dim is None else history_dim
        self.feature_dim, self.history_dim, self.hidden = feature_dim, history_dim, hidden
        self.cell = nn.GRUCell(2 * history_dim + 1, hidden)
        self.state = nn.Linear(hidden, state_dim)
        self.scorer = nn.Sequential(nn.Linear(feature_dim + state_dim, scorer_hidden), nn.Tanh(),
                                    nn.Linear(scorer_hidden, 1))
        self.guess = nn.Linear(hidden, n_guesses) if n_guesses else None

    def start(self, batch: int) -> Tensor:
        """The state before any answer, ``[batch, hidden]``."""
        return torch.zeros(batch, self.hidden)

    def observe(self, h: Tensor, asked: Tensor, answers: Tensor) -> Tensor:
        """The state after answers ``[B]`` (1 = yes / first wins, 0 = no) to candidates with history features
        ``asked [B, history_dim]``."""
        sign = (2 * answers.float() - 1)[:, None]
        return self.cell(torch.cat([asked, sign, asked * sign], -1), h)

    def logits(self, h: Tensor, features: Tensor) -> Tensor:
        """Candidate logits ``[B, N]`` for features ``[N, d]`` (shared by the batch) or ``[B, N, d]``."""
        if features.dim() == 2:
            features = features.expand(h.shape[0], -1, -1)
        state = self.state(h)[:, None, :].expand(-1, features.shape[1], -1)
        return self.scorer(torch.cat([features, state], -1)).squeeze(-1)

    def guess_logits(self, h: Tensor) -> Tensor:
        if self.guess is None:
            raise ValueError("this QueryPolicy has no guess head (n_guesses=0)")
        return self.guess(h)


class LearnedRule:
    """One questioning session of a ``QueryPolicy``: score candidates, pick the best, feed answers back."""

    def __init__(self, policy: QueryPolicy):
        if policy.history_dim != policy.feature_dim:
            raise ValueError(f"learned rule: the policy must read the same features it scores (history_dim "
                             f"{policy.history_dim} != feature_dim {policy.feature_dim})")
        self.policy = policy
        self.h = policy.start(1)

    def _features(self, features) -> Tensor:
        f = torch.as_tensor(np.asarray(features, dtype=np.float32))
        if f.dim() != 2 or f.shape[1] != self.policy.feature_dim:
            raise ValueError(f"learned rule: candidate features must be [N, {self.policy.feature_dim}], "
                             f"got {list(f.shape)}")
        return f

    @torch.no_grad()
    def scores(self, features) -> np.ndarray:
        """The policy's logit for each candidate, ``[N]``."""
        return self.policy.logits(self.h, self._features(features))[0].numpy()

    def choose(self, features, k: int = 1) -> np.ndarray:
        """Indices of the ``k`` highest-scoring candidates, best first (ties: the earlier candidate)."""
        return np.argsort(-self.scores(features), kind="stable")[:k]

    @torch.no_grad()
    def observe(self, features, answer: float) -> None:
        """Feed the answer to the candidate with features ``[d]`` into the session's state."""
        f = self._features(np.asarray(features, dtype=np.float32)[None])
        self.h = self.policy.observe(self.h, f, torch.tensor([float(answer)]))


def pair_features(p_first) -> np.ndarray:
    """``[N, 3]`` candidate features from ``p_first [K, N]``, each member's probability that the first of a
    pair wins: mean, std over members, and ``1 - |2 mean - 1|`` (1 at a coin flip, 0 when sure).
    Leading batch dimensions pass through: ``[..., K, N]`` -> ``[..., N, 3]``."""
    p = np.asarray(p_first, dtype=np.float64)
    mean = p.mean(-2)
    return np.stack([mean, p.std(-2), 1 - np.abs(2 * mean - 1)], -1).astype(np.float32)
