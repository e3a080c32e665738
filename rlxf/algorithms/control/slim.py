"""SLIM-style multiple critics on a MuJoCo arm: one critic head per reward term against one critic on the sum.

Emukpere et al., "SLIM: Skill Learning with Multiple Critics" (2024), combine competing rewards through
several critics instead of one critic on their sum. Here that is the shared PPO with ``reward_terms``
(:mod:`rlxf.algorithms.control.ppo`): each head learns one term's return, each term's advantage is
normalised on its own and the normalised advantages are averaged for the actor. The skill-discovery
reward and the hierarchical planner of the paper are not built. The baseline is the same PPO with one
critic on the env's reward, which for these tasks is exactly the sum of the terms. Both are scored by
the greedy policy's summed return on held-out episodes, at equal env steps::

    python -m rlxf.algorithms.control.slim --seeds 0 1 2 --steps 60000 --plot runs/slim/slim_reacher.png --gif runs/slim/slim_reacher.gif
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from rlxf.algorithms.control.ppo import PPO, PPOConfig
from rlxf.algorithms.evaluate import mean_se, paired_gain


@dataclass(frozen=True)
class SlimTask:
    env: str
    terms: tuple[str, ...]  # info keys whose sum is the env's reward
    steps: int  # default training budget (env steps)


TASKS = {
    # a 2-joint arm reaching a random target in 50 steps: distance to the target vs control effort
    "reacher": SlimTask("Reacher-v5", ("reward_dist", "reward_ctrl"), 60_000),
    # a 7-joint arm pushing a puck to a goal in 100 steps: hand to puck, puck to goal, control effort
    "pusher": SlimTask("Pusher-v5", ("reward_near", "reward_dist", "reward_ctrl"), 100_000),
}
METHODS = ("ppo", "slim")


def config(task: str, method: str, seed: int, steps: int | None = None) -> PPOConfig:
    """The PPO settings both methods share on ``task``; ``slim`` adds one critic head per reward term."""
    if task not in TASKS:
        raise ValueError(f"unknown SLIM task {task!r}; known: {sorted(TASKS)}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    t = TASKS[task]
    cfg = PPOConfig(env=t.env, n_envs=8, n_steps=64, total_steps=steps or t.steps, epochs=10, minibatch_size=256,
                    lr=3e-4, anneal=False, gamma=0.99, lam=0.95, norm_obs=True, seed=seed)
    return replace(cfg, reward_terms=t.terms) if method == "slim" else cfg


def train(task: str, method: str, seed: int, steps: int | None = None, eval_every: int = 0) -> tuple[PPO, list[dict]]:
    """Train ``method`` on ``task`` with ``seed``; the agent and its evaluation history."""
    ppo = PPO(config(task, method, seed, steps))
    history = ppo.learn(eval_every=eval_every, n_eval=20)
    return ppo, history


def held_out_returns(ppo: PPO, n_episodes: int = 50) -> np.ndarray:
    """Greedy summed returns on ``n_episodes`` episodes with seeds no training run uses."""
    return ppo.evaluate(n_episodes, seed=777_000)


def table_run(task: str, seed: int, scale: float = 1.0, method: str = "slim") -> np.ndarray:
    """The control lab's runner: train at ``scale`` x the task's budget, return held-out returns."""
    steps = max(512, int(TASKS[task].steps * scale))
    return held_out_returns(train(task, method, seed, steps)[0])


def table_run_ppo(task: str, seed: int, scale: float = 1.0) -> np.ndarray:
    return table_run(task, seed, scale, method="ppo")


def compare(task: str, seeds, steps: int | None = None, eval_every: int = 0) -> dict:
    """Both methods on each seed: per-seed held-out means, their paired difference and the curves."""
    rows, curves, agents = {m: [] for m in METHODS}, {m: [] for m in METHODS}, {}
    for seed in tqdm(list(seeds), desc=f"slim vs ppo on {task}"):
        for m in METHODS:
            ppo, hist = train(task, m, seed, steps, eval_every)
            rows[m].append(float(held_out_returns(ppo).mean()))
            curves[m].append(hist)
            agents[m] = ppo
    diff, se = paired_gain(rows["slim"], rows["ppo"])
    return {"rows": rows, "diff": diff, "se": se, "curves": curves, "agents": agents}


def plot_curves(curves: dict, path: str) -> None:
    """Greedy return against env steps, one line per method and seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for m, colour in zip(METHODS, ("tab:blue", "tab:orange")):
        for i, hist in enumerate(curves[m]):
            ax.plot([r["steps"] for r in hist], [r["eval_return"] for r in hist], color=colour, alpha=0.7,
                    label=("one critic (summed reward)" if m == "ppo" else "one critic per term (SLIM)") if i == 0 else None)
    ax.set_xlabel("env steps")
    ax.set_ylabel("greedy return (20 episodes)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", default="reacher", choices=sorted(TASKS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=None, help="env steps per run (default: the task's budget)")
    ap.add_argument("--plot", default=None, help="write learning curves to this PNG")
    ap.add_argument("--gif", default=None, help="write a GIF of the last seed's SLIM policy")
    args = ap.parse_args(argv)
    out = compare(args.task, args.seeds, args.steps, eval_every=4096 if args.plot else 0)
    for m in METHODS:
        mean, se = mean_se(out["rows"][m])
        print(f"{m:>5}: held-out return {mean:.3f} +- {se:.3f}  per seed {[round(x, 3) for x in out['rows'][m]]}")
    print(f"slim - ppo: {out['diff']:.3f} +- {out['se']:.3f} (paired over seeds {args.seeds})")
    if args.plot:
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        plot_curves(out["curves"], args.plot)
        print(f"curves: {args.plot}")
    if args.gif:
        from rlxf.tasks.render import episode_frames, write_gif

        agent = out["agents"]["slim"]
        frames, ret = episode_frames(_ObsNormalised(agent), TASKS[args.task].env, seed=0, max_steps=100)
        write_gif(frames, args.gif, fps=20)
        print(f"gif: {args.gif} (return {ret:.2f})")


class _ObsNormalised:
    """The agent's policy acting on raw observations, normalised by its frozen training statistics."""

    def __init__(self, agent: PPO):
        self.policy, self.env = agent.policy, agent.env

    def greedy(self, obs):
        import torch

        return self.policy.greedy(torch.as_tensor(self.env.normalize(obs.numpy()), dtype=torch.float32))


if __name__ == "__main__":
    main()
