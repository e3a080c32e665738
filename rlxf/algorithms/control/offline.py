"""Offline control: record datasets from any policy, then learn from them without the environment.

``record_dataset`` plays a policy (epsilon-greedy per env copy, so one call can mix qualities) and
keeps whole episodes. ``train_bc`` (behaviour cloning) and ``train_offline_cpl`` (CPL from segment
comparisons labelled on the hidden env reward; Hejna et al., ICLR 2024) both run through the shared
training loop :func:`rlxf.algorithms.loop.train`, so they log to a run and resume from checkpoints.
"""

from __future__ import annotations

import copy

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from rlxf.algorithms.control.rollout import EpisodeRecorder, ZeroCritic, collect
from rlxf.algorithms.loop import OptimConfig, train
from rlxf.core.runs import Run
from rlxf.core.steps import Steps
from rlxf.data.transitions import TransitionDataset
from rlxf.labelers.simulated import BradleyTerryLabeler
from rlxf.objectives.control import bc_log_barrier, bc_loss
from rlxf.objectives.cpl import cpl_loss
from rlxf.policies.control import make_policy, single_thread
from rlxf.rewards.segments import Segments, sample_segments
from rlxf.tasks.gym_envs import make_env


class EpsilonGreedy(nn.Module):
    """Acts greedily with ``policy`` except, per env copy ``i``, uniformly at random with prob ``eps[i]``."""

    def __init__(self, policy, eps: np.ndarray, action_space, seed: int = 0):
        super().__init__()
        self.policy, self.eps = policy, np.asarray(eps, dtype=float)
        self.space = copy.deepcopy(action_space)  # its own generator, seeded: the same seed records the same data
        self.space.seed(int(seed))
        self.rng = np.random.default_rng(seed)

    @torch.no_grad()
    def act(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        greedy = self.policy.greedy(obs).numpy()
        rand = np.stack([self.space.sample() for _ in range(len(greedy))]).astype(greedy.dtype)
        pick = (self.rng.random(len(greedy)) < self.eps).reshape((-1,) + (1,) * (greedy.ndim - 1))
        return torch.as_tensor(np.where(pick, rand, greedy)), torch.zeros(len(greedy))


def record_dataset(policy, env_spec, n_episodes: int, eps=(0.0,), seed: int = 0,
                   max_episode_steps: int | None = None) -> TransitionDataset:
    """``n_episodes`` episodes of ``policy`` (epsilon-greedy with ``eps[i]`` in env copy ``i``).

    With ``eps=(0.0, 0.5, 1.0)`` a third of the env copies act greedily, a third half at random and
    a third at random: a mixed-quality dataset. Rewards are the env's own (raw) rewards.
    """
    env = make_env(env_spec, n_envs=len(eps), seed=seed, max_episode_steps=max_episode_steps)
    actor = EpsilonGreedy(policy, np.asarray(eps), env.action_space, seed)
    recorder, episodes, obs = EpisodeRecorder(env.n_envs), [], env.reset()
    with single_thread():
        while len(episodes) < n_episodes:
            ro, obs = collect(env, actor, ZeroCritic(), obs, 64)
            episodes.extend(recorder.add(ro))
    env.close()
    name = env_spec if isinstance(env_spec, str) else env.name
    return TransitionDataset(episodes[:n_episodes], name, {"eps": list(map(float, eps)), "seed": seed})


@dataclass
class OfflineConfig:
    optim: OptimConfig
    hidden: int = 64
    seed: int = 0
    smoothing: float = 0.0  # BC: weight of bc_log_barrier (discrete actions), keeping every action possible


def _policy_for(dataset: TransitionDataset, cfg: OfflineConfig, n_actions: int | None = None):
    """A fresh policy for ``dataset``, initialised from ``cfg.seed`` (not from the global generator's state)."""
    torch.manual_seed(cfg.seed)
    if n_actions is None:
        first = dataset.episodes[0]
        n_actions = int(max(int(e.actions.max()) for e in dataset.episodes)) + 1 if dataset.discrete else first.actions.shape[-1]
    return make_policy(dataset.obs_shape[0], n_actions, dataset.discrete, cfg.hidden)


def train_bc(dataset: TransitionDataset, run: Run, cfg: OfflineConfig, n_actions: int | None = None,
             stage: str = "bc", quiet: bool = True):
    """Behaviour cloning: maximise ``log pi(a|s)`` over every dataset step (plus ``cfg.smoothing`` times
    :func:`bc_log_barrier`). Returns the policy."""
    policy = _policy_for(dataset, cfg, n_actions)
    if cfg.smoothing and not dataset.discrete:
        raise ValueError(f"offline smoothing = {cfg.smoothing} needs discrete actions; dataset {dataset.env_id} is continuous")
    tr = dataset.transitions()
    n = tr.obs.shape[0]

    def make_batch(step: int) -> list[int]:
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        return torch.randint(0, n, (cfg.optim.batch_size,), generator=g).tolist()

    def loss_fn(micro: list[int], batch: list[int]):
        idx = torch.tensor(micro)
        steps = Steps(logps=policy.log_prob(tr.obs[idx], tr.actions[idx])[:, None], mask=torch.ones(len(idx), 1))
        loss = bc_loss(steps).sum() / len(batch)
        if cfg.smoothing:
            loss = loss + cfg.smoothing * bc_log_barrier(policy.distribution(tr.obs[idx]).logits).sum() / len(batch)
        return loss, {"nll": loss.item()}

    with single_thread():
        train(run, stage, policy, cfg.optim, make_batch, loss_fn, quiet=quiet)
    return policy


def label_segments(dataset: TransitionDataset, n_pairs: int, length: int, rationality: float = 1.0,
                   seed: int = 0) -> tuple[Segments, Segments]:
    """``n_pairs`` segment pairs from the dataset ordered (chosen, rejected) by a Bradley-Terry
    labeler of rationality ``rationality`` on the summed env reward (hidden from the learner)."""
    gen = torch.Generator().manual_seed(seed)
    a = sample_segments(dataset.episodes, n_pairs, length, gen, by_length=True)
    b = sample_segments(dataset.episodes, n_pairs, length, gen, by_length=True)
    first = torch.as_tensor(BradleyTerryLabeler(rationality, seed).prefers_first(
        a.gold_returns().numpy(), b.gold_returns().numpy()))
    pick = lambda x, y: torch.where(first.view((-1,) + (1,) * (x.dim() - 1)), x, y)  # noqa: E731
    chosen = Segments(*(pick(getattr(a, f), getattr(b, f)) for f in ("obs", "actions", "mask", "gold")))
    rejected = Segments(*(pick(getattr(b, f), getattr(a, f)) for f in ("obs", "actions", "mask", "gold")))
    return chosen, rejected


def train_offline_cpl(chosen: Segments, rejected: Segments, obs_dim: int, n_actions: int, discrete: bool,
                      run: Run, cfg: OfflineConfig, alpha: float = 0.1, lam: float = 0.5, bc_coeff: float = 0.0,
                      stage: str = "cpl", quiet: bool = True):
    """CPL on labelled segment pairs through :func:`cpl_loss` (the same function that trains LMs)."""
    torch.manual_seed(cfg.seed)
    policy = make_policy(obs_dim, n_actions, discrete, cfg.hidden)
    n = len(chosen)

    def make_batch(step: int) -> list[int]:
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        return torch.randint(0, n, (cfg.optim.batch_size,), generator=g).tolist()

    def loss_fn(micro: list[int], batch: list[int]):
        idx = torch.tensor(micro)
        c, r = chosen[idx], rejected[idx]
        loss = cpl_loss(policy.steps(c.obs, c.actions, c.mask), policy.steps(r.obs, r.actions, r.mask),
                        alpha=alpha, lam=lam, bc_coeff=bc_coeff).sum() / len(batch)
        return loss, {"cpl": loss.item()}

    with single_thread():
        train(run, stage, policy, cfg.optim, make_batch, loss_fn, quiet=quiet)
    return policy
