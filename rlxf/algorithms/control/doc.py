"""Dichotomy of Control (DoC) and its baseline, return-conditioned behaviour cloning (RvS / DT-style).

Yang, Schuurmans, Abbeel, Nachum, "Dichotomy of Control: Separating What You Can Control from What You
Cannot" (ICLR 2023). Return-conditioned BC learns ``pi(a | s, R)`` and acts with a high target ``R``; in a
stochastic environment the highest returns in the data often came from luck, so it copies the actions
that happened to be lucky. DoC conditions the policy on a learned latent ``z`` of the future instead and
forbids ``z`` to carry information about what the action did not control: the mutual information between
``z`` and the future's return given ``(s, a)`` is penalised with a contrastive estimate whose energy ``f``
is learned. A value head ``V(s, z)`` and a prior ``p(z | s)`` read the latent; acting picks the latent
of highest value that the prior supports and follows ``pi(a | s, z*)``.

Here the future of a step is summarised by its return-to-go, put into ``n_bins`` bins (as the official
tabular model does), and the latent is discrete with ``K`` values that every loss marginalises exactly
(no sampling, no straight-through estimator). Both learners read the one offline dataset type
(:class:`TransitionDataset`) and train through the shared loop :func:`rlxf.algorithms.loop.train`.
``doc_table_run`` / ``rvs_table_run`` are the control lab's runners on the ``gamble`` task
(:mod:`rlxf.tasks.gamble`).
"""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from rlxf.algorithms.control.offline import record_dataset
from rlxf.algorithms.control.rollout import evaluate
from rlxf.algorithms.loop import OptimConfig, train
from rlxf.core.runs import Run
from rlxf.data.transitions import DatasetError, TransitionDataset
from rlxf.objectives.control import doc_loss, doc_mi_estimate
from rlxf.policies.control import CategoricalMLPPolicy, mlp, single_thread

GAMBLE_ENV = "rlxf/Gamble-v0"


def returns_to_go(dataset: TransitionDataset) -> Tensor:
    """Undiscounted return-to-go of every step, ``[N]``, in the order of ``dataset.transitions()``."""
    return torch.cat([e.rewards.double().flip(0).cumsum(0).flip(0) for e in dataset.episodes]).float()


def return_bins(rtg: Tensor, n_bins: int) -> tuple[Tensor, Tensor, Tensor]:
    """Equal-width bins over ``[min, max]`` of ``rtg``: ``(bin [N], mean return per bin [B], frequency [B])``.
    An empty bin's value is its centre."""
    if n_bins < 2:
        raise ValueError(f"DoC: n_bins must be >= 2, got {n_bins}")
    lo, hi = float(rtg.min()), float(rtg.max())
    width = max(hi - lo, 1e-6) / n_bins
    idx = ((rtg - lo) / width).floor().long().clamp(0, n_bins - 1)
    count = torch.bincount(idx, minlength=n_bins).float()
    total = torch.zeros(n_bins).index_add_(0, idx, rtg.float())
    centre = lo + width * (torch.arange(n_bins) + 0.5)
    value = torch.where(count > 0, total / count.clamp_min(1), centre)
    return idx, value, count / count.sum()


def return_conditioned_bc_loss(policy, obs: Tensor, rtg: Tensor, actions: Tensor, scale: float) -> Tensor:
    """Return-conditioned BC ``-log pi(a_t | s_t, R_t / scale)`` per step, ``[N]`` (RvS; Decision
    Transformer's objective without the sequence model). ``rtg`` is the step's return-to-go."""
    return -policy.log_prob(torch.cat([obs, (rtg / scale).unsqueeze(-1)], -1), actions)


@dataclass
class DoCConfig:
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(steps=500, batch_size=128, lr=3e-3,
                                                                  checkpoint_every=0, max_grad_norm=0.0))
    n_bins: int = 4  # return-to-go bins: the future the latent may encode
    latents: int = 0  # K; 0 = n_actions * n_bins (room to encode the action and the luck)
    mi_weight: float = 1.0  # weight of the MI penalty (the official code's energy_weight)
    min_prior: float = 0.01  # acting considers latents with prior p(z | s) at least this
    hidden: int = 64
    seed: int = 0


def _discrete_only(dataset: TransitionDataset, who: str) -> int:
    if not dataset.discrete:
        raise DatasetError(f"{who}: dataset {dataset.env_id or ''} has continuous actions; this learner needs "
                           f"discrete actions")
    return int(max(int(e.actions.max()) for e in dataset.episodes)) + 1


class DoC(nn.Module):
    """DoC's networks over a discrete latent ``z`` in ``0..K-1``: posterior ``q(z | s, a, b)`` (``b`` the
    future's return bin), policy ``pi(a | s, z)``, value ``V(b | s, z)``, prior ``p(z | s)`` and the MI
    critic's energy ``f(s, a, z) -> [B]``. Returns are scaled by ``scale`` inside."""

    def __init__(self, obs_dim: int, n_actions: int, n_bins: int, latents: int, hidden: int = 64):
        super().__init__()
        self.n_actions, self.n_bins, self.latents = n_actions, n_bins, latents
        self.posterior = mlp(obs_dim + n_actions + n_bins, latents, hidden, out_gain=1.0)
        self.policy = CategoricalMLPPolicy(obs_dim + latents, n_actions, hidden)
        self.value = mlp(obs_dim + latents, 1, hidden, out_gain=0.01)
        self.prior = mlp(obs_dim, latents, hidden, out_gain=0.01)
        self.energy = mlp(obs_dim + n_actions + latents, n_bins, hidden, out_gain=1.0)
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("log_bin_prior", torch.zeros(n_bins))

    def _each_latent(self, x: Tensor) -> Tensor:
        """``x [N, d] -> [N, K, d + K]``: ``x`` next to every latent's one-hot."""
        eye = torch.eye(self.latents, dtype=x.dtype).expand(x.shape[0], -1, -1)
        return torch.cat([x.unsqueeze(1).expand(-1, self.latents, -1), eye], -1)

    def losses(self, obs: Tensor, actions: Tensor, rtg: Tensor, bins: Tensor, mi_weight: float) -> dict[str, Tensor]:
        """:func:`doc_loss`'s per-example terms on a batch of steps."""
        a1 = nn.functional.one_hot(actions.long(), self.n_actions).float()
        b1 = nn.functional.one_hot(bins.long(), self.n_bins).float()
        q = torch.softmax(self.posterior(torch.cat([obs, a1, b1], -1)), -1)
        sz = self._each_latent(obs)
        action_logps = self.policy.log_prob(sz, actions.long().unsqueeze(1).expand(-1, self.latents))
        value_errors = self.value(sz).squeeze(-1) - (rtg / self.scale).unsqueeze(-1)
        prior_logps = torch.log_softmax(self.prior(obs), -1)
        energies = self.energy(self._each_latent(torch.cat([obs, a1], -1)))
        mi = doc_mi_estimate(energies, bins, self.log_bin_prior)
        return doc_loss(q, action_logps, value_errors, prior_logps, mi, mi_weight)

    @torch.no_grad()
    def latent_values(self, obs: Tensor) -> Tensor:
        """``V(s, z)``, the expected return-to-go given the latent, for every latent, ``[N, K]``."""
        return self.value(self._each_latent(obs)).squeeze(-1) * self.scale

    @torch.no_grad()
    def choose_latent(self, obs: Tensor, min_prior: float = 0.01) -> Tensor:
        """``z* = argmax_z V(s, z)`` among latents the prior gives at least ``min_prior``, ``[N]``."""
        prior = torch.softmax(self.prior(obs), -1)
        allowed = prior >= torch.minimum(torch.full_like(prior[:, :1], min_prior), prior.max(-1, keepdim=True).values)
        return self.latent_values(obs).masked_fill(~allowed, -float("inf")).argmax(-1)

    @torch.no_grad()
    def greedy(self, obs: Tensor, min_prior: float = 0.01) -> Tensor:
        z = nn.functional.one_hot(self.choose_latent(obs, min_prior), self.latents).float()
        return self.policy.greedy(torch.cat([obs, z], -1))


class DoCPolicy(nn.Module):
    """A trained :class:`DoC` acting greedily with its chosen latent (``greedy(obs)``, as ``evaluate`` needs)."""

    def __init__(self, model: DoC, min_prior: float):
        super().__init__()
        self.model, self.min_prior = model, min_prior

    @torch.no_grad()
    def greedy(self, obs: Tensor) -> Tensor:
        return self.model.greedy(obs.float(), self.min_prior)


def _batches(n: int, cfg: OptimConfig, seed: int):
    def make_batch(step: int) -> list[int]:
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        return torch.randint(0, n, (cfg.batch_size,), generator=g).tolist()

    return make_batch


def train_doc(dataset: TransitionDataset, run: Run, cfg: DoCConfig, stage: str = "doc",
              quiet: bool = True) -> DoCPolicy:
    """DoC on a dataset of discrete-action episodes; returns the acting policy."""
    n_actions = _discrete_only(dataset, "train_doc")
    torch.manual_seed(cfg.seed)
    tr = dataset.transitions()
    rtg = returns_to_go(dataset)
    bins, _, freq = return_bins(rtg, cfg.n_bins)
    model = DoC(dataset.obs_shape[0], n_actions, cfg.n_bins, cfg.latents or n_actions * cfg.n_bins, cfg.hidden)
    model.scale.fill_(max(float(rtg.abs().max()), 1e-6))
    model.log_bin_prior.copy_(torch.log(freq.clamp_min(1e-8)))

    def loss_fn(micro: list[int], batch: list[int]):
        idx = torch.tensor(micro)
        terms = model.losses(tr.obs[idx], tr.actions[idx], rtg[idx], bins[idx], cfg.mi_weight)
        loss = sum(t.sum() for t in terms.values()) / len(batch)
        return loss, {k: float(v.detach().mean()) for k, v in terms.items()}

    with single_thread():
        train(run, stage, model, cfg.optim, _batches(len(bins), cfg.optim, cfg.seed), loss_fn, quiet=quiet)
    return DoCPolicy(model.eval(), cfg.min_prior)


class ReturnConditionedPolicy(nn.Module):
    """``pi(a | s, R / scale)`` acting as a decision transformer does: each episode starts with the target
    return and lowers it by every reward received (``evaluate`` reports rewards through ``observe``)."""

    def __init__(self, policy: CategoricalMLPPolicy, scale: float, target: float):
        super().__init__()
        self.policy, self.scale, self.target = policy, scale, target
        self.rtg: Tensor | None = None

    def observe(self, rewards, done) -> None:
        """Rewards just received (``None`` at the start) and which env copies' episodes ended."""
        done = torch.as_tensor(np.asarray(done, dtype=bool))
        if self.rtg is None or self.rtg.shape[0] != done.shape[0]:
            self.rtg = torch.full((done.shape[0],), self.target)
        if rewards is not None:
            self.rtg = self.rtg - torch.as_tensor(np.asarray(rewards), dtype=torch.float32)
        self.rtg = torch.where(done, torch.full_like(self.rtg, self.target), self.rtg)

    @torch.no_grad()
    def greedy(self, obs: Tensor) -> Tensor:
        if self.rtg is None or self.rtg.shape[0] != obs.shape[0]:
            self.rtg = torch.full((obs.shape[0],), self.target)
        return self.policy.greedy(torch.cat([obs.float(), (self.rtg / self.scale).unsqueeze(-1)], -1))


@dataclass
class RvSConfig:
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(steps=500, batch_size=128, lr=3e-3,
                                                                  checkpoint_every=0, max_grad_norm=0.0))
    target: float | None = None  # the return to condition on; None = the best episode return in the data
    hidden: int = 64
    seed: int = 0


def train_rvs(dataset: TransitionDataset, run: Run, cfg: RvSConfig, stage: str = "rvs",
              quiet: bool = True) -> ReturnConditionedPolicy:
    """Return-conditioned BC (:func:`return_conditioned_bc_loss`); returns the DT-style acting policy."""
    n_actions = _discrete_only(dataset, "train_rvs")
    torch.manual_seed(cfg.seed)
    tr, rtg = dataset.transitions(), returns_to_go(dataset)
    best = max(e.ret for e in dataset.episodes)
    scale = max(float(rtg.abs().max()), 1e-6)
    policy = CategoricalMLPPolicy(dataset.obs_shape[0] + 1, n_actions, cfg.hidden)

    def loss_fn(micro: list[int], batch: list[int]):
        idx = torch.tensor(micro)
        loss = return_conditioned_bc_loss(policy, tr.obs[idx], rtg[idx], tr.actions[idx], scale).sum() / len(batch)
        return loss, {"nll": loss.item()}

    with single_thread():
        train(run, stage, policy, cfg.optim, _batches(len(rtg), cfg.optim, cfg.seed), loss_fn, quiet=quiet)
    return ReturnConditionedPolicy(policy.eval(), scale, best if cfg.target is None else cfg.target)


# -- the control lab's runners: the gamble task -------------------------------------------------


@contextlib.contextmanager
def scratch_run():
    """A throwaway run directory for a lab cell (its metrics are not kept)."""
    with tempfile.TemporaryDirectory(prefix="rlxf-cell-") as d:
        yield Run(d, "cell = 1\n")


def gamble_dataset(seed: int, n_episodes: int = 1000) -> TransitionDataset:
    """``n_episodes`` episodes of a uniformly random policy on the gamble (its lucky runs are the best)."""
    return record_dataset(CategoricalMLPPolicy(3, 2), GAMBLE_ENV, n_episodes, eps=(1.0,), seed=seed)


def _gamble_cell(task: str, seed: int, scale: float, learner: str, mi_weight: float = 1.0) -> np.ndarray:
    if task != "gamble":
        raise ValueError(f"{learner} runs on task 'gamble' only, got {task!r}")
    steps = max(20, int(500 * scale))
    data = gamble_dataset(seed, max(50, int(1000 * min(scale * 4, 1.0))))
    optim = OptimConfig(steps=steps, batch_size=128, lr=3e-3, checkpoint_every=0, max_grad_norm=0.0)
    with scratch_run() as run:
        policy = (train_doc(data, run, DoCConfig(optim, mi_weight=mi_weight, seed=seed)) if learner == "doc"
                  else train_rvs(data, run, RvSConfig(optim, seed=seed)))
    n_eval = max(20, int(500 * min(scale * 4, 1.0)))
    return evaluate(policy, GAMBLE_ENV, n_episodes=n_eval, seed=50_000 + 1000 * seed)  # disjoint seeds per seed


def doc_table_run(task: str, seed: int, scale: float = 1.0) -> np.ndarray:
    """DoC trained on 1000 random-policy gamble episodes; returns of 500 held-out episodes."""
    return _gamble_cell(task, seed, scale, "doc")


def doc_no_mi_table_run(task: str, seed: int, scale: float = 1.0) -> np.ndarray:
    """DoC without its MI penalty (``mi_weight = 0``): the ablation that shows what the penalty does."""
    return _gamble_cell(task, seed, scale, "doc", mi_weight=0.0)


def rvs_table_run(task: str, seed: int, scale: float = 1.0) -> np.ndarray:
    """Return-conditioned BC on the same data, conditioned on the best return in it."""
    return _gamble_cell(task, seed, scale, "rvs")


def main(argv: list[str] | None = None) -> dict:
    """``python -m rlxf.algorithms.control.doc``: DoC against return-conditioned BC on the gamble."""
    import argparse

    from rlxf.lab.control_compare import compare

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--scale", type=float, default=1.0, help="multiplies the default budget (data, steps, episodes)")
    p.add_argument("--plot", default="doc_gamble.png")
    a = p.parse_args(argv)
    return compare("gamble", ["doc", "rvs", "doc_no_mi"], a.seeds, a.scale, pair_over="episodes", plot=a.plot)


if __name__ == "__main__":
    main()
