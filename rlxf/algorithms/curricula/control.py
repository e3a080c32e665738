"""A teacher choosing each episode's task for the PPO control learner, and the comparison of teachers.

Every env copy of PPO's vector env is a :class:`TeacherEnv`: at each reset it asks the teacher for
the next task parameters, and when the episode ends it reports (task, return) back. PPO itself is
unchanged (``rlxf.algorithms.control.ppo``), so two teachers given the same ``total_steps`` have
used exactly the same number of environment steps. The score is the mean greedy return over a fixed
grid of test tasks covering the whole box.

    .venv/bin/python -m rlxf.algorithms.curricula.control --seeds 0 1 2 --out runs/curriculum
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import gymnasium as gym
import numpy as np

from rlxf.algorithms.control.ppo import PPO, PPOConfig
from rlxf.algorithms.control.rollout import evaluate
from rlxf.algorithms.curricula.alp_gmm import ALPGMMTeacher, UniformTeacher
from rlxf.algorithms.evaluate import mean_se, paired_gain
from rlxf.tasks.gym_envs import ParameterisedCartPole

MAX_STEPS = 200  # episode limit of the curriculum task


class TeacherEnv(gym.Wrapper):
    """Draws the task of every new episode from ``teacher`` and reports each finished episode's return."""

    def __init__(self, env: gym.Env, teacher):
        super().__init__(env)
        self.teacher, self.episode_return = teacher, 0.0

    def reset(self, **kwargs):
        self.env.unwrapped.set_task(self.teacher.sample())
        self.episode_return = 0.0
        return self.env.reset(**kwargs)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.episode_return += float(reward)
        if terminated or truncated:
            self.teacher.update(self.env.unwrapped.task, self.episode_return)
        return obs, reward, terminated, truncated, info


def task_env(task=None) -> gym.Env:
    return gym.wrappers.TimeLimit(ParameterisedCartPole(task), MAX_STEPS)


def test_grid(per_dim: int = 5) -> np.ndarray:
    """The test tasks: a ``per_dim`` x ``per_dim`` grid over the whole box, ``[per_dim**2, 2]``."""
    axes = [np.linspace(lo, hi, per_dim) for lo, hi in zip(ParameterisedCartPole.LOW, ParameterisedCartPole.HIGH)]
    return np.array([(a, b) for a in axes[0] for b in axes[1]])


def grid_returns(policy, tasks: np.ndarray, seed: int = 10_000) -> np.ndarray:
    """Greedy return of one episode on each task, ``[len(tasks)]``."""
    made = iter(tasks)  # the vector env makes its copies in order: copy i plays tasks[i]
    return evaluate(policy, lambda: task_env(next(made)), n_episodes=len(tasks), seed=seed, max_steps=MAX_STEPS)


def make_teacher(name: str, seed: int, fit_rate: int = 50):
    low, high = ParameterisedCartPole.LOW, ParameterisedCartPole.HIGH
    if name == "uniform":
        return UniformTeacher(low, high, seed)
    if name == "alp_gmm":
        return ALPGMMTeacher(low, high, seed, fit_rate=fit_rate, ks=tuple(range(2, 6)), alp_scale=MAX_STEPS)
    raise ValueError(f"teacher must be 'uniform' or 'alp_gmm', got {name!r}")


def train_with_teacher(teacher_name: str, seed: int, total_steps: int = 15_000, ppo: PPOConfig | None = None,
                       fit_rate: int = 50) -> tuple[PPO, object]:
    """PPO on the parameterised CartPole with tasks from ``teacher_name``; returns (agent, teacher)."""
    teacher = make_teacher(teacher_name, seed, fit_rate)
    cfg = dataclasses.replace(ppo or PPOConfig(), env="ParameterisedCartPole", total_steps=total_steps, seed=seed,
                              max_episode_steps=None)
    agent = PPO(cfg, env_spec=lambda: TeacherEnv(task_env(), teacher))
    agent.learn()
    return agent, teacher


def compare(seeds, total_steps: int = 15_000, teachers=("uniform", "alp_gmm")) -> dict:
    """Mean grid return per teacher and seed, and the sampled tasks of each run."""
    tasks = test_grid()
    out = {"score": {t: [] for t in teachers}, "sampled": {t: [] for t in teachers}}
    for seed in seeds:
        for name in teachers:
            agent, teacher = train_with_teacher(name, seed, total_steps)
            out["score"][name].append(float(grid_returns(agent.policy, tasks).mean()))
            out["sampled"][name].append(np.array(teacher.sampled).tolist())
    return out


def plot_sampled(sampled: dict, path: Path) -> None:
    """Each teacher's sampled tasks over the run (one seed), coloured by when they were drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(sampled), figsize=(5 * len(sampled), 4), squeeze=False)
    for ax, (name, tasks) in zip(axes[0], sampled.items()):
        t = np.array(tasks)
        sc = ax.scatter(t[:, 0], t[:, 1], c=np.arange(len(t)), s=6, cmap="viridis")
        ax.set(title=f"{name}: tasks drawn", xlabel=ParameterisedCartPole.PARAMS[0],
               ylabel=ParameterisedCartPole.PARAMS[1])
        fig.colorbar(sc, ax=ax, label="episode")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="ALP-GMM against uniform task sampling for PPO on a parameterised CartPole")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=15_000, help="environment steps per run")
    ap.add_argument("--out", default="runs/curriculum")
    args = ap.parse_args(argv)
    out = Path(args.out)
    res = compare(args.seeds, args.steps)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"seeds": args.seeds, "steps": args.steps, "score": res["score"]}))
    plot_sampled({t: s[0] for t, s in res["sampled"].items()}, out / "sampled_tasks.png")
    for name, scores in res["score"].items():
        m, se = mean_se(scores)
        print(f"{name}: mean test-grid return {m:.1f} +- {se:.1f} ({', '.join(f'{s:.1f}' for s in scores)})")
    gain, se = paired_gain(res["score"]["alp_gmm"], res["score"]["uniform"])
    print(f"alp_gmm - uniform (paired by seed): {gain:+.1f} +- {se:.1f}; plot: {out / 'sampled_tasks.png'}")


if __name__ == "__main__":
    main()
