"""BESO: goal-conditioned imitation with a score-based diffusion policy (Reuss, Li, Jia, Lioutikov, RSS 2023).

The policy is a denoiser over the next 4 actions given the state and the goal
(:mod:`rlxf.algorithms.control.diffusion`: EDM preconditioning, log-logistic training noise, goal dropped with
probability 0.1 for classifier-free guidance); it acts by sampling such a chunk with 3 DDIM steps and playing
it before sampling again. Because it samples instead of regressing to a mean, it keeps every mode of the
demonstrations, where a Gaussian MLP behaviour-cloning policy (``train_bc``, acting by its mean) averages them.
Without chunks (one action per sample) the mode is redrawn every step and the path zig-zags into the obstacle.

Toy task ``rlxf/GoalReach2D-v0``: reach a goal drawn per episode in the top-right corner from the bottom-left
around a square obstacle; half of the demonstrations go round on the left ("up"), half below ("right"), so the
average of the two heads into the obstacle. ``route`` says which way a rollout went.
``python -m rlxf.algorithms.control.beso`` prints the success and route shares of both policies and plots
their trajectories.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from rlxf.algorithms.control.compatible import demonstrate, train_policy
from rlxf.algorithms.control.diffusion import DiffusionConfig, Denoiser, sample, train_denoiser
from rlxf.algorithms.control.rollout import EpisodeRecorder, ZeroCritic, collect
from rlxf.algorithms.evaluate import mean_se, paired_gain
from rlxf.algorithms.loop import OptimConfig
from rlxf.data.transitions import Episode, TransitionDataset
from rlxf.policies.control import single_thread
from rlxf.tasks.gym_envs import make_env
from rlxf.tasks.reach2d import OBSTACLE

ENV_ID = "rlxf/GoalReach2D-v0"


def beso_config(steps: int = 2000, seed: int = 0) -> DiffusionConfig:
    """BESO's defaults (sigma_data 0.5, sigma in [0.005, 1], rho 5, 3 DDIM steps, goal dropout 0.1) on a
    small MLP."""
    return DiffusionConfig(OptimConfig(steps=steps, batch_size=256, lr=3e-3, checkpoint_every=0, max_grad_norm=1.0),
                           cond_drop=0.1, hidden=128, seed=seed)


def demonstrations(n: int, seed: int, noise: float = 0.1) -> TransitionDataset:
    """``n`` successful scripted demonstrations on ``rlxf/GoalReach2D-v0``, half of each style."""
    eps = (demonstrate("up", n // 2, seed=seed, noise=noise, env_id=ENV_ID)
           + demonstrate("right", n - n // 2, seed=seed + 500_009, noise=noise, env_id=ENV_ID))
    return TransitionDataset(eps, ENV_ID, {"styles": ["up", "right"], "seed": seed, "noise": noise})


class BesoPolicy(nn.Module):
    """Samples a chunk of the next ``chunk`` actions from the denoiser given ``obs = (position, goal)`` and
    plays it open loop before sampling again (every env copy at once: :meth:`reset` at the start of a batch
    of episodes). ``cfg_weight`` is the classifier-free guidance weight (1: goal-conditioned, 0: goal-free)."""

    def __init__(self, model: Denoiser, cfg: DiffusionConfig, chunk: int, cfg_weight: float = 1.0, seed: int = 0):
        super().__init__()
        self.model, self.cfg, self.chunk, self.cfg_weight = model, cfg, chunk, cfg_weight
        self.gen = torch.Generator().manual_seed(seed)
        self.reset()

    def reset(self) -> None:
        self.t, self.plan = 0, None

    @torch.no_grad()
    def greedy(self, obs: Tensor) -> Tensor:
        if self.plan is None or self.t % self.chunk == 0 or len(self.plan) != len(obs):
            x = sample(self.model, obs.float(), self.cfg, self.gen, self.cfg_weight)
            self.plan, self.t = x.view(len(obs), self.chunk, -1).clamp(-1, 1), 0
        a = self.plan[:, self.t]
        self.t += 1
        return a

    def act(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        return self.greedy(obs), torch.zeros(len(obs))


def action_chunks(dataset: TransitionDataset, chunk: int) -> tuple[Tensor, Tensor]:
    """``(obs [N, d], next chunk actions [N, chunk * a])`` for every step; past an episode's end the
    chunk is padded with zero actions (stay)."""
    obs, acts = [], []
    for e in dataset.episodes:
        a = torch.cat([e.actions.float(), torch.zeros(chunk - 1, e.actions.shape[1])])
        obs.append(e.obs[: len(e)].float())
        acts.append(torch.stack([a[t: t + chunk].flatten() for t in range(len(e))]))
    return torch.cat(obs), torch.cat(acts)


def train_beso(dataset: TransitionDataset, cfg: DiffusionConfig, chunk: int = 4, quiet: bool = True) -> BesoPolicy:
    """Fit the action-chunk denoiser on every step of ``dataset``; the goal dims of obs are droppable."""
    obs, chunks = action_chunks(dataset, chunk)
    droppable = torch.arange(obs.shape[1]) >= 2  # (x, y) stay, the goal is dropped
    return BesoPolicy(train_denoiser(chunks, obs, cfg, droppable, quiet=quiet), cfg, chunk, seed=cfg.seed)


class _Greedy:
    def __init__(self, policy):
        self.policy = policy

    @torch.no_grad()
    def act(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        return self.policy.greedy(obs), torch.zeros(len(obs))


def route(episode: Episode) -> str:
    """"up" if the path passed left of the obstacle, "right" if below it, "both" or "none" otherwise."""
    lo, hi = OBSTACLE
    x, y = episode.obs[:, 0].numpy(), episode.obs[:, 1].numpy()
    left = bool(((x <= lo) & (y > lo) & (y < hi)).any())
    below = bool(((y <= lo) & (x > lo) & (x < hi)).any())
    return {(True, False): "up", (False, True): "right", (True, True): "both"}.get((left, below), "none")


def rollouts(policy, n_episodes: int, seed: int) -> list[Episode]:
    """One greedy episode per env copy (start states and goals from ``seed``) through the shared collector."""
    env = make_env(ENV_ID, n_envs=n_episodes, seed=seed)
    if hasattr(policy, "reset"):
        policy.reset()
    with single_thread():
        ro, _ = collect(env, _Greedy(policy), ZeroCritic(), env.reset(), 60, until_done=True)
    env.close()
    return EpisodeRecorder(n_episodes).add(ro)


def scores(episodes: list[Episode]) -> tuple[np.ndarray, list[str]]:
    """Per-episode success (0/1) and route."""
    return np.array([float(e.rewards.sum() > 0) for e in episodes]), [route(e) for e in episodes]


def study(seed: int, n_demos: int = 100, n_episodes: int = 100, steps: int = 2000, bc_steps: int = 400,
          quiet: bool = True) -> dict:
    """BESO and BC-MLP on the same demonstrations (seed ``seed``), each scored on the same ``n_episodes``
    held-out starts and goals: success per episode and the routes taken."""
    data = demonstrations(n_demos, seed)
    beso = train_beso(data, beso_config(steps, seed), quiet=quiet)
    bc = train_policy(data.episodes, seed=seed, steps=bc_steps)
    out = {}
    for name, pol in (("beso", beso), ("bc_mlp", bc)):
        eps = rollouts(pol, n_episodes, 90_000 + seed)
        out[name], out[f"{name}_routes"] = scores(eps)
        out[f"{name}_paths"] = [e.obs[:, :2].numpy() for e in eps]
    return out


def route_shares(success: np.ndarray, routes: list[str]) -> dict[str, float]:
    """Share of each route among the successful episodes."""
    won = [r for s, r in zip(success, routes) if s > 0]
    return {k: (won.count(k) / len(won) if won else 0.0) for k in ("up", "right")}


def table_run(task: str, seed: int, scale: float = 1.0, method: str = "beso") -> np.ndarray:
    """The control lab's runner on ``goal_reach2d``: per-episode held-out success."""
    if task != "goal_reach2d":
        raise ValueError(f"{method}: unknown task {task!r}; expected 'goal_reach2d'")
    n_demos = max(4, int(100 * min(scale, 1.0)))
    steps = max(20, int(2000 * scale))
    data = demonstrations(n_demos, seed)
    if method == "beso":
        pol = train_beso(data, beso_config(steps, seed))
    else:
        pol = train_policy(data.episodes, seed=seed, steps=max(20, int(400 * scale)))
    return scores(rollouts(pol, max(10, int(100 * min(scale, 1.0))), 90_000 + seed))[0]


def table_run_bc(task: str, seed: int, scale: float = 1.0) -> np.ndarray:
    return table_run(task, seed, scale, method="bc_mlp")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="BESO vs BC-MLP on rlxf/GoalReach2D-v0 (two demonstration styles)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--episodes", type=int, default=100, help="held-out episodes per seed")
    ap.add_argument("--plot", default=None, help="save both policies' trajectories (PNG)")
    args = ap.parse_args(argv)
    results = [study(s, n_episodes=args.episodes, quiet=False) for s in args.seeds]
    for s, r in zip(args.seeds, results):
        print(f"seed {s}: success BESO {r['beso'].mean():.3f} (routes {route_shares(r['beso'], r['beso_routes'])})"
              f"  BC-MLP {r['bc_mlp'].mean():.3f}")
    beso = np.concatenate([r["beso"] for r in results])
    bc = np.concatenate([r["bc_mlp"] for r in results])
    (mb, sb), (mc, sc) = mean_se(beso), mean_se(bc)
    gain, se = paired_gain(beso, bc)
    shares = route_shares(beso, sum((r["beso_routes"] for r in results), []))
    print(f"BESO {mb:.3f} +- {sb:.3f}, BC-MLP {mc:.3f} +- {sc:.3f}, paired gain {gain:.3f} +- {se:.3f} "
          f"({len(beso)} paired episodes); BESO's successful routes: up {shares['up']:.2f}, "
          f"right {shares['right']:.2f}")
    if args.plot:
        from rlxf.lab.report import plt, save_figure  # plotting only for the command-line report

        fig, axes = plt.subplots(1, 2, figsize=(8, 4), sharey=True)
        lo, hi = OBSTACLE
        for ax, name in zip(axes, ("beso", "bc_mlp")):
            ax.add_patch(plt.Rectangle((lo, lo), hi - lo, hi - lo, color="0.7"))
            for path in results[0][f"{name}_paths"][:40]:
                ax.plot(path[:, 0], path[:, 1], lw=0.8, alpha=0.7)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.set_title(f"{'BESO' if name == 'beso' else 'BC-MLP'}: success {results[0][name].mean():.2f}")
        save_figure(fig, Path(args.plot))
        print(f"saved {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
