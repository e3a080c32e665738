"""Sim2Rec on the ShortVideo simulator: train across a set of user models, transfer to a held-out one.

Chen et al., "Sim2Rec: A Simulator-based Decision-making Approach to Optimize Real-World Long-term
User Engagement in Sequential Recommender Systems". Any one user simulator is wrong somewhere, so the
policy is trained with PPO across a *set* of simulators whose user models differ (here in how much
users reward repeating a topic, ``repeat_bonus``, and how much taste matters, ``taste_weight``), and an
environment-parameter extractor reads the session's interaction history to infer which user it faces:
:class:`ContextPolicy` runs an LSTM over the observation's history window and feeds its last state,
with the current candidates, to the policy's MLP. The baseline is PPO on one (nominal) simulator.
Both are scored on a held-out user model that is in neither training set (:data:`HELDOUT`).

The original's simulator set is built from logged data and its extractor is larger (LSTM 64 units);
both are reconstructed here at toy scale.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from rlxf.algorithms.control.ppo import PPO, PPOConfig
from rlxf.algorithms.control.tscac import session_metrics, table_runner
from rlxf.policies.control import CategoricalMLPPolicy
from rlxf.tasks.short_video import CANDIDATE_FEATURES, HISTORY_FEATURES, ShortVideo, UserModel

N_CANDIDATES, HISTORY = 5, 6
NOMINAL = UserModel()  # the one simulator the baseline trains on: repeats neither help nor hurt
SIMULATOR_SET = tuple(UserModel(repeat_bonus=b, taste_weight=w) for b in (-2.0, -1.0, 1.0, 2.0) for w in (1.5, 4.0))
HELDOUT = UserModel(repeat_bonus=-1.5, taste_weight=2.0, quality_weight=3.0)  # in no training set


def simulators(models) -> functools.partial:
    """An env factory: ShortVideo sessions whose user model is drawn from ``models``."""
    return functools.partial(ShortVideo, models=tuple(models), n_candidates=N_CANDIDATES, history=HISTORY)


class ContextPolicy(CategoricalMLPPolicy):
    """``pi(a | s, phi(h))``: an LSTM extractor ``phi`` over the last ``history`` interactions (oldest first)
    gives a context vector, concatenated with the current part of the observation (progress and the
    candidates) before the usual categorical MLP. Observations are ShortVideo's layout."""

    def __init__(self, n_actions: int = N_CANDIDATES, history: int = HISTORY, hidden: int = 64, context: int = 16):
        self.n_now, self.history = 1 + n_actions * CANDIDATE_FEATURES, history
        super().__init__(self.n_now + context, n_actions, hidden)
        self.extractor = nn.LSTM(HISTORY_FEATURES, context, batch_first=True)

    def context(self, obs: Tensor) -> Tensor:
        """``phi(h)``: ``obs [B, D] -> [B, context]``."""
        hist = obs[:, self.n_now :].reshape(obs.shape[0], self.history, HISTORY_FEATURES).flip(1)
        return self.extractor(hist)[1][0][-1]

    def logits(self, obs: Tensor) -> Tensor:
        flat = obs.reshape(-1, obs.shape[-1])
        out = self.net(torch.cat([flat[:, : self.n_now], self.context(flat)], -1))
        return out.reshape(*obs.shape[:-1], -1)


@dataclass
class Sim2RecConfig:
    steps: int = 60_000
    n_envs: int = 8
    n_steps: int = 64
    epochs: int = 4
    minibatch_size: int = 256
    lr: float = 1e-3
    gamma: float = 0.95
    lam: float = 0.9
    ent_coef: float = 0.01
    hidden: int = 64
    seed: int = 0


def train(cfg: Sim2RecConfig, models, context: bool) -> PPO:
    """PPO on sessions drawn from ``models``; ``context`` uses :class:`ContextPolicy`, else the plain MLP."""
    pcfg = PPOConfig(env="short_video_set", n_envs=cfg.n_envs, n_steps=cfg.n_steps, total_steps=cfg.steps,
                     epochs=cfg.epochs, minibatch_size=cfg.minibatch_size, lr=cfg.lr, gamma=cfg.gamma, lam=cfg.lam,
                     ent_coef=cfg.ent_coef, hidden=cfg.hidden, seed=cfg.seed)
    policy_fn = (lambda env: ContextPolicy(hidden=cfg.hidden)) if context else None
    ppo = PPO(pcfg, simulators(models), policy_fn=policy_fn)
    ppo.learn()
    return ppo


def train_sim2rec(cfg: Sim2RecConfig) -> PPO:
    return train(cfg, SIMULATOR_SET, context=True)


def train_single_sim(cfg: Sim2RecConfig) -> PPO:
    return train(cfg, (NOMINAL,), context=False)


def heldout_watch(policy, model: UserModel = HELDOUT, n_episodes: int = 400, seed: int = 20_000) -> np.ndarray:
    """Per-session watch time of ``policy`` (sampling) on fresh sessions of ``model``."""
    return session_metrics(policy, n_episodes=n_episodes, seed=seed, spec=simulators((model,)))["watch"]


def compare(seeds=(0, 1, 2), steps: int = 60_000, n_episodes: int = 400, progress: bool = True) -> list[dict]:
    """Sim2Rec vs the single-simulator policy per seed, both on the same held-out sessions."""
    rows = []
    runs = [(seed, name, fn) for seed in seeds for name, fn in (("sim2rec", train_sim2rec), ("single_sim", train_single_sim))]
    for seed, name, fn in tqdm(runs, desc="sim2rec vs single simulator", disable=not progress):
        watch = heldout_watch(fn(Sim2RecConfig(steps=steps, seed=seed)).policy, n_episodes=n_episodes, seed=60_000 + seed)
        rows.append({"method": name, "seed": seed, "watch": float(watch.mean())})
    return rows


def _heldout(train_fn, seed: int, scale: float) -> np.ndarray:
    cfg = Sim2RecConfig(steps=max(1024, int(60_000 * scale)), seed=seed)
    return heldout_watch(train_fn(cfg).policy, n_episodes=100, seed=90_000 + seed)


# control-lab runners on "short_video_heldout": per-session held-out watch time of 100 fresh sessions
table_run = table_runner("short_video_heldout", lambda seed, scale: _heldout(train_sim2rec, seed, scale))
single_sim_table_run = table_runner("short_video_heldout", lambda seed, scale: _heldout(train_single_sim, seed, scale))


def main(argv=None) -> None:
    import argparse

    from rlxf.algorithms.evaluate import mean_se, paired_gain

    ap = argparse.ArgumentParser(description="Sim2Rec vs one simulator, on a held-out ShortVideo user model")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=60_000)
    ap.add_argument("--episodes", type=int, default=400)
    args = ap.parse_args(argv)
    rows = compare(tuple(args.seeds), args.steps, args.episodes)
    for r in rows:
        print(f"{r['method']:<11} seed {r['seed']}: held-out watch time {r['watch']:.3f}")
    s2r = [r["watch"] for r in rows if r["method"] == "sim2rec"]
    one = [r["watch"] for r in rows if r["method"] == "single_sim"]
    d, se = paired_gain(s2r, one)
    print(f"sim2rec {mean_se(s2r)[0]:.3f}, single_sim {mean_se(one)[0]:.3f}, sim2rec - single_sim {d:+.3f} +- {se:.3f}")


if __name__ == "__main__":
    main()
