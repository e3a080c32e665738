"""Demonstration-regularised RL: behaviour cloning on a few demonstrations, then PPO with a KL penalty
towards the BC policy.

Tiapkin, Belomestny, Calandriello, Moulines, Munos, Naumov, Perrault, Valko, Ménard, "Demonstration-
Regularized RL" (ICLR 2024). Phase 1 clones the demonstrations (:func:`train_bc`); phase 2 maximises
``V^pi - lambda KL(pi || pi_BC)``. Here phase 2 is the shared PPO (:class:`PPO`) started from the BC
policy with ``PPOConfig.prior_kl = lambda`` (:func:`rlxf.objectives.control.prior_kl` per visited
state). The paper's algorithms are optimistic value iteration with theory only; PPO is this library's
stand-in, so the claim measured here is the practical one: with scarce demonstrations from a suboptimal
expert, the regularised RL beats RL alone and BC alone at equal environment steps.

The lab task ``prize_lock`` (:mod:`rlxf.tasks.lock`): a combination lock that RL from scratch almost
never opens, with demonstrations that open it but take the small prize.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from torch import Tensor, nn

from rlxf.algorithms.control.doc import scratch_run
from rlxf.algorithms.control.offline import OfflineConfig, record_dataset, train_bc
from rlxf.algorithms.control.ppo import PPO, PPOConfig
from rlxf.algorithms.control.rollout import evaluate
from rlxf.algorithms.loop import OptimConfig
from rlxf.data.transitions import TransitionDataset
from rlxf.tasks.lock import demo_action

LOCK_ENV = "rlxf/PrizeLock-v0"
# PPO on the lock: the library's CartPole defaults with a budget of 12288 env steps (48 rollouts)
LOCK_PPO = PPOConfig(env=LOCK_ENV, total_steps=12_288)
LOCK_PRIOR_KL = 0.05  # lambda: the prize's gain (0.5) outweighs the KL of switching the last action
LOCK_BC = OptimConfig(steps=300, batch_size=64, lr=3e-3, checkpoint_every=0)
LOCK_SMOOTHING = 0.1  # BC's log-barrier weight: every action keeps some probability (the paper's BC phase)


class LockDemonstrator(nn.Module):
    """The scripted PrizeLock demonstrator as a policy (``greedy``): it knows the key, takes the small
    prize. ``record_dataset``'s epsilon makes it noisy."""

    @torch.no_grad()
    def greedy(self, obs: Tensor) -> Tensor:
        rng = np.random.default_rng(0)  # unused at eps 0
        return torch.tensor([demo_action(o, rng) for o in obs.numpy()])


def lock_demos(n_episodes: int, seed: int, eps: float = 0.2) -> TransitionDataset:
    """``n_episodes`` demonstrations on the lock, each action random with probability ``eps``."""
    return record_dataset(LockDemonstrator(), LOCK_ENV, n_episodes, eps=(eps,), seed=seed)


def train_lock_bc(demos: TransitionDataset, seed: int, steps: int | None = None):
    """BC on the demonstrations with PPO's policy architecture, so PPO can start from it."""
    optim = LOCK_BC if steps is None else replace(LOCK_BC, steps=steps)
    with scratch_run() as run:
        return train_bc(demos, run, OfflineConfig(optim, hidden=LOCK_PPO.hidden, seed=seed, smoothing=LOCK_SMOOTHING), n_actions=4)


def demo_regularised_ppo(demos: TransitionDataset | None, cfg: PPOConfig, bc_steps: int | None = None) -> PPO:
    """PPO on ``cfg.env``; with ``demos``, started from BC on them and regularised towards it by
    ``cfg.prior_kl``. Returns the trained agent (``cfg.total_steps`` env steps, the demos not counted)."""
    agent = PPO(cfg)
    if demos is not None:
        agent.start_from(train_lock_bc(demos, cfg.seed, bc_steps))
    agent.learn()
    return agent


def _lock_cell(task: str, seed: int, scale: float, method: str, n_demos: int = 2) -> np.ndarray:
    if task != "prize_lock":
        raise ValueError(f"{method} runs on task 'prize_lock' only, got {task!r}")
    demos = lock_demos(n_demos, seed=seed)
    bc_steps = max(10, int(LOCK_BC.steps * min(1.0, scale * 4)))
    if method == "bc":
        policy = train_lock_bc(demos, seed, bc_steps)
    else:
        steps = max(256, int(LOCK_PPO.total_steps * scale) // 256 * 256)
        cfg = replace(LOCK_PPO, total_steps=steps, seed=seed, prior_kl=LOCK_PRIOR_KL if method == "ppo_demo_kl" else 0.0)
        policy = demo_regularised_ppo(demos if method == "ppo_demo_kl" else None, cfg, bc_steps).policy
    return evaluate(policy, LOCK_ENV, n_episodes=10, seed=70_000 + 1000 * seed)


def ppo_table_run(task: str, seed: int, scale: float = 1.0) -> np.ndarray:
    """PPO from scratch on the lock (12288 env steps at scale 1); greedy returns of 10 episodes."""
    return _lock_cell(task, seed, scale, "ppo")


def bc_table_run(task: str, seed: int, scale: float = 1.0) -> np.ndarray:
    """BC on 2 noisy demonstrations of the small-prize expert (no env steps)."""
    return _lock_cell(task, seed, scale, "bc")


def ppo_demo_kl_table_run(task: str, seed: int, scale: float = 1.0) -> np.ndarray:
    """BC on the same 2 demonstrations, then PPO (same env steps as ``ppo``) with KL towards BC."""
    return _lock_cell(task, seed, scale, "ppo_demo_kl")


def main(argv: list[str] | None = None) -> dict:
    """``python -m rlxf.algorithms.control.demo_rl``: BC-then-KL-regularised PPO against PPO and BC on the lock."""
    import argparse

    from rlxf.lab.control_compare import compare

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--scale", type=float, default=1.0, help="multiplies the default env-step and BC budgets")
    p.add_argument("--plot", default="demo_rl_lock.png")
    a = p.parse_args(argv)
    return compare("prize_lock", ["ppo_demo_kl", "ppo", "bc"], a.seeds, a.scale, pair_over="seeds", plot=a.plot)


if __name__ == "__main__":
    main()
