"""Preference-based RL for control: segments of the agent's own experience, a simulated labeler on the
hidden env reward, a reward-model ensemble, and PPO on the learned reward.

Christiano et al., "Deep Reinforcement Learning from Human Preferences" (NeurIPS 2017) for the loop
and ensemble-disagreement queries; Wu & Sun, "Making RL with Preference-based Feedback Efficient via
Randomization" (ICLR 2024) for the randomised rule: pair a segment of the newest policy with one of
an older policy, ask only when the pair's feature difference is uncertain,
``||phi_a - phi_b||_{Sigma^-1} >= eps`` (``Sigma`` the ridge design matrix of asked differences), and
let the agent optimise one randomly drawn ensemble member per round (a posterior sample standing in
for the paper's Gaussian perturbation of the MLE; phi are member 0's last-layer features, the
neural-linear reading of the paper's linear features). With ``selection = "learned"`` a learned query policy
(``rlxf.policies.query.LearnedRule``, "Learning to Actively Learn"; by default the pair policy shipped with
:mod:`rlxf.algorithms.active.pairs`, or the file ``query_policy``) picks the pairs from their ensemble
features (``pair_features``) and is told each answer.

Segments are windows of ``segment_len`` steps; one that runs past its episode's termination is
padded with zero-reward steps (mask 0), so in CartPole, where every real step earns 1, comparing
segments says which one survived longer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from rlxf.algorithms.active.pairs import pair_rule
from rlxf.algorithms.control.ppo import PPO, PPOConfig, single_thread
from rlxf.algorithms.control.rollout import EpisodeRecorder, Rollout
from rlxf.data.transitions import Episode
from rlxf.labelers.simulated import BradleyTerryLabeler
from rlxf.policies.query import pair_features
from rlxf.rewards.segments import SegmentRewardEnsemble, Segments, sample_segments

SELECTIONS = ("uniform", "disagreement", "randomized", "learned")


@dataclass
class PbRLConfig:
    ppo: PPOConfig = field(default_factory=PPOConfig)
    budget: int = 500  # total preference queries
    # few queries, often, and only 50 up front: on CartPole (5 seeds) this reached 90% of true-reward PPO
    # with a median of 170 queries, against 500 for 100 up front and 41 per round (docs/control.md)
    first_queries: int = 50  # asked on the warm-up (initial policy) experience
    queries_per_round: int = 10
    schedule: str = "constant"  # constant | hyperbolic: round k asks queries_per_round / (1 + k / 2)
    query_every: int = 5  # PPO iterations between query rounds
    segment_len: int = 50
    selection: str = "disagreement"  # uniform | disagreement | randomized | learned
    query_policy: str = ""  # learned: a pair query policy file (empty: the shipped one, active/pairs.py)
    candidate_factor: int = 5  # candidate pairs per query to choose from
    threshold: float = 0.05  # randomized rule: minimum ||dphi||_{Sigma^-1} to ask
    ridge: float = 1.0  # randomized rule: Sigma starts as ridge * I
    n_members: int = 3
    rm_hidden: int = 32
    rm_steps: int = 30  # Adam steps per member per query round (warm-started)
    rm_lr: float = 1e-3
    rationality: float = 1.0  # beta of the Bradley-Terry labeler
    pool_episodes: int = 200  # most recent episodes segments are drawn from
    warmup_rollouts: int = 4
    seed: int = 0

    def __post_init__(self):
        if self.selection not in SELECTIONS:
            raise ValueError(f"pbrl.selection: unknown rule {self.selection!r}; expected one of {SELECTIONS}")
        if self.schedule not in ("constant", "hyperbolic"):
            raise ValueError(f"pbrl.schedule: unknown {self.schedule!r}; expected 'constant' or 'hyperbolic'")
        if self.budget < 1 or self.first_queries < 1:
            raise ValueError(f"pbrl.budget and pbrl.first_queries must be >= 1, got {self.budget}, {self.first_queries}")


def select_disagreement(ensemble: SegmentRewardEnsemble, a: Segments, b: Segments, n: int) -> Tensor:
    """Indices of the ``n`` candidate pairs the ensemble members disagree on most."""
    return ensemble.pair_disagreement(a, b).argsort(descending=True)[:n]


class RandomizedSelector:
    """Wu & Sun's query rule: ask about a pair only if ``||dphi||_{Sigma^-1} >= eps``, then add
    ``dphi dphi^T`` to ``Sigma``. Candidates are visited in the given order; fewer than ``n`` may be asked."""

    def __init__(self, dim: int, ridge: float = 1.0, threshold: float = 0.05):
        self.sigma = ridge * torch.eye(dim)
        self.threshold = threshold

    def uncertainty(self, dphi: Tensor) -> Tensor:
        """``sqrt(dphi^T Sigma^-1 dphi)`` per row, ``[B]``."""
        return (dphi * torch.linalg.solve(self.sigma, dphi.T).T).sum(-1).clamp(min=0).sqrt()

    def select(self, dphi: Tensor, n: int) -> Tensor:
        chosen: list[int] = []
        for i in range(dphi.shape[0]):
            if len(chosen) == n:
                break
            if float(self.uncertainty(dphi[i : i + 1])) >= self.threshold:
                chosen.append(i)
                self.sigma += torch.outer(dphi[i], dphi[i])
        return torch.tensor(chosen, dtype=torch.long)


class PbRL:
    """The loop: PPO collects experience, query rounds label segment pairs, the ensemble is refit,
    and PPO's rewards are the ensemble's (never the env's, which only the labeler sees)."""

    def __init__(self, cfg: PbRLConfig, env_spec=None, learned=None):
        if cfg.selection == "learned" and learned is None:
            learned = pair_rule(cfg.query_policy or None, "pbrl.query_policy")
        self.cfg, self.learned = cfg, learned
        self.ppo = PPO(cfg.ppo, env_spec)
        env = self.ppo.env
        self.ensemble = SegmentRewardEnsemble(env.obs_dim, env.action_dim, env.discrete, cfg.n_members, cfg.rm_hidden,
                                              cfg.seed)
        self.labeler = BradleyTerryLabeler(cfg.rationality, seed=cfg.seed)
        self.recorder = EpisodeRecorder(env.n_envs)
        self.pool: list[Episode] = []
        self.first: list[Segments] = []
        self.second: list[Segments] = []
        self.labels: list[Tensor] = []
        self.queries, self.iteration, self.member, self.rounds = 0, 0, None, 0
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.selector = RandomizedSelector(cfg.rm_hidden, cfg.ridge, cfg.threshold)

    def _record(self, ro: Rollout) -> None:
        self.pool.extend(self.recorder.add(ro, self.iteration))
        self.pool = self.pool[-self.cfg.pool_episodes :]

    def _candidates(self, m: int) -> tuple[Segments, Segments]:
        length, pool = self.cfg.segment_len, self.pool
        if self.cfg.selection == "randomized":
            newest = max(e.iteration for e in pool)
            new = [e for e in pool if e.iteration == newest]
            old = [e for e in pool if e.iteration < newest] or new
            return sample_segments(new, m, length, self.gen), sample_segments(old, m, length, self.gen)
        return sample_segments(pool, m, length, self.gen), sample_segments(pool, m, length, self.gen)

    def query_round(self, n: int) -> int:
        """Select and label up to ``n`` pairs, refit the ensemble; returns the number asked."""
        n = min(n, self.cfg.budget - self.queries)
        if n <= 0 or not self.pool:
            return 0
        a, b = self._candidates(n * self.cfg.candidate_factor)
        trained = bool(self.labels)
        if self.cfg.selection == "uniform" or not trained:
            idx = torch.arange(n)
        elif self.cfg.selection == "disagreement":
            idx = select_disagreement(self.ensemble, a, b, n)
        elif self.cfg.selection == "learned":
            feats = self.pair_features(a, b)
            idx = torch.as_tensor(self.learned.choose(feats, n), dtype=torch.long)
        else:
            idx = self.selector.select(self.ensemble.segment_features(a) - self.ensemble.segment_features(b), n)
        if idx.numel() == 0:
            return 0
        a, b = a[idx], b[idx]
        if self.cfg.selection == "randomized" and not trained:  # seed Sigma with the first asked pairs
            dphi = self.ensemble.segment_features(a) - self.ensemble.segment_features(b)
            self.selector.sigma += dphi.T @ dphi
        prefers = self.labeler.prefers_first(a.gold_returns().numpy(), b.gold_returns().numpy())
        if self.cfg.selection == "learned" and trained:
            for f, answer in zip(feats[idx.numpy()], np.asarray(prefers)):
                self.learned.observe(f, float(answer))
        self.first.append(a)
        self.second.append(b)
        self.labels.append(torch.as_tensor(np.asarray(prefers, dtype=np.float32)))
        self.queries += len(idx)
        self.ensemble.fit(Segments.cat(self.first), Segments.cat(self.second), torch.cat(self.labels),
                          self.cfg.rm_steps * (3 if not trained else 1), self.cfg.rm_lr)
        if self.cfg.selection == "randomized":
            self.member = int(torch.randint(0, len(self.ensemble), (1,), generator=self.gen))
        return len(idx)

    def pair_features(self, a: Segments, b: Segments) -> np.ndarray:
        """The learned rule's candidate features, ``[B, 3]``, from each member's ``P(a > b)``."""
        return pair_features(torch.sigmoid(self.ensemble.segment_returns(a) - self.ensemble.segment_returns(b)).numpy())

    def round_size(self, k: int) -> int:
        """Queries asked in the ``k``-th round after the first (before the budget cap)."""
        if self.cfg.schedule == "hyperbolic":
            return max(1, round(self.cfg.queries_per_round / (1 + k / 2)))
        return self.cfg.queries_per_round

    def learned_rewards(self, ppo: PPO, ro: Rollout) -> Tensor:
        """PPO's reward hook: record episodes, run a query round when due, return learned rewards."""
        self._record(ro)
        self.iteration += 1
        if self.iteration % self.cfg.query_every == 0:
            self.query_round(self.round_size(self.rounds))
            self.rounds += 1
        return self.ensemble.step_rewards(ro.env_obs, ro.actions, self.member)

    def train(self, eval_every: int = 0, target: float | None = None, log=None, run=None,
              stage: str = "pbrl") -> list[dict]:
        """Warm up on the initial policy, ask the first queries, then run PPO on the learned reward.
        Each evaluation row carries the queries asked so far; it goes to ``run`` (as ``stage``) when given."""
        with single_thread():
            for _ in range(self.cfg.warmup_rollouts):
                self._record(self.ppo.collect())
            self.query_round(self.cfg.first_queries)

        def stamp(row: dict) -> None:  # queries asked by the time of each evaluation
            row["queries"] = self.queries
            if log is not None:
                log(row)

        return self.ppo.learn(self.learned_rewards, eval_every=eval_every, target=target, log=stamp, run=run,
                              stage=stage)
