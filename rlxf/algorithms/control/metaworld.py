"""Meta-World ML1 with rlxf's control core: BC from the scripted experts, SAC, and preference-based RL
from a simulated labeler, each scored by Meta-World's success rate over 50 held-out episodes.

Every method trains on the ML1 train variations (``rlxf/ML1-<task>``) and is scored on the test
variations (``rlxf/ML1-<task>-test``) by :func:`success_rate` (the shared ``evaluate`` under
``metric="success"``). Demonstrations are whole expert episodes recorded by the shared
``record_dataset`` into a :class:`~rlxf.data.transitions.TransitionDataset`.

    python -m rlxf.algorithms.control.metaworld bc --task reach-v3 --gif runs/metaworld/bc_reach.gif
    python -m rlxf.algorithms.control.metaworld sac --task push-v3 --steps 5000
    python -m rlxf.algorithms.control.metaworld pbrl --task reach-v3 --steps 20000 --queries 200
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from rlxf.algorithms.control.offline import OfflineConfig, record_dataset, train_bc
from rlxf.algorithms.control.rollout import evaluate
from rlxf.algorithms.loop import OptimConfig
from rlxf.core.runs import Run
from rlxf.data.transitions import TransitionDataset
from rlxf.tasks.metaworld_envs import TASKS, ScriptedExpert, env_id

TABLE_TASKS = {"metaworld_reach": "reach-v3", "metaworld_push": "push-v3", "metaworld_pick_place": "pick-place-v3"}
N_EVAL = 50  # Meta-World's success metric: the success rate over 50 evaluation episodes
EVAL_ENVS = 10  # env copies the 50 episodes share (making a Meta-World env takes ~0.2 s)


def success_rate(policy, task: str, seed: int, n_episodes: int = N_EVAL, obs_rms=None) -> np.ndarray:
    """Per-episode success (0/1) of ``policy`` (greedy) on ``n_episodes`` test-variation episodes;
    ``obs_rms``: the training statistics a policy trained on normalised observations needs."""
    return evaluate(policy, env_id(task, "test"), n_episodes, seed=seed, obs_rms=obs_rms, metric="success",
                    n_envs=min(EVAL_ENVS, n_episodes))


def expert_dataset(task: str, n_demos: int, seed: int, max_steps: int = 100) -> TransitionDataset:
    """``n_demos`` episodes of Meta-World's scripted expert on the train variations, each cut at
    ``max_steps`` (the experts finish reach in ~30-60 steps and then hold the goal)."""
    return record_dataset(ScriptedExpert(task), env_id(task), n_demos, eps=(0.0,) * 5, seed=seed,
                          max_episode_steps=max_steps)


def bc_from_experts(task: str = "reach-v3", seed: int = 0, n_demos: int = 25, steps: int = 800,
                    run_dir: str | Path | None = None):
    """Behaviour cloning (Gaussian MLP, shared ``train_bc``) on scripted-expert demonstrations.
    Returns ``(policy, dataset)``."""
    data = expert_dataset(task, n_demos, seed)
    run = Run(run_dir or tempfile.mkdtemp(prefix="mw_bc_"), "x = 1\n", fresh=True)
    cfg = OfflineConfig(OptimConfig(steps=steps, batch_size=256, lr=3e-3, checkpoint_every=0), hidden=64, seed=seed)
    return train_bc(data, run, cfg), data


def train_sac(task: str, seed: int, steps: int = 5_000):
    """SAC on the env reward of the train variations; returns the agent (``agent.actor`` acts)."""
    from rlxf.algorithms.control.sac import SAC, SACConfig

    agent = SAC(SACConfig(env=env_id(task), total_steps=steps, warmup_steps=min(2_000, steps // 4), hidden=128,
                          lr=3e-4, seed=seed))
    agent.learn()
    return agent


def train_pbrl(task: str, seed: int, steps: int = 20_000, queries: int = 200):
    """Preference-based RL (the shared PbRL: PPO on a reward ensemble fitted to segment comparisons
    from a Bradley-Terry labeler on the hidden env reward). Returns the agent (``agent.ppo.policy`` acts)."""
    from rlxf.algorithms.control.pbrl import PbRL, PbRLConfig
    from rlxf.algorithms.control.ppo import PPOConfig

    ppo = PPOConfig(env=env_id(task), n_envs=8, n_steps=64, total_steps=steps, epochs=10, minibatch_size=256,
                    lr=3e-4, gamma=0.99, lam=0.95, ent_coef=0.0, norm_obs=True, seed=seed)
    agent = PbRL(PbRLConfig(ppo=ppo, budget=queries, first_queries=min(50, queries), queries_per_round=10,
                            segment_len=50, rationality=1.0, seed=seed))
    agent.train()
    return agent


def _task(table_task: str) -> str:
    if table_task not in TABLE_TASKS:
        raise ValueError(f"Meta-World table task must be one of {sorted(TABLE_TASKS)}, got {table_task!r}")
    return TABLE_TASKS[table_task]


def table_run_bc(task: str, seed: int, scale: float = 1.0) -> np.ndarray:
    """Control lab: BC from ``25 * scale`` scripted demos (at least 2), scored on 50 (scale < 1: fewer) episodes."""
    name = _task(task)
    policy, _ = bc_from_experts(name, seed, n_demos=max(2, round(25 * scale)), steps=max(20, round(800 * scale)))
    return success_rate(policy, name, seed + 10_000, n_episodes=N_EVAL if scale >= 1 else max(2, round(N_EVAL * scale)))


def table_run_sac(task: str, seed: int, scale: float = 1.0) -> np.ndarray:
    """Control lab: SAC for ``5000 * scale`` env steps on the train variations."""
    name = _task(task)
    agent = train_sac(name, seed, steps=max(200, round(5_000 * scale)))
    return success_rate(agent.actor, name, seed + 10_000, n_episodes=N_EVAL if scale >= 1 else max(2, round(N_EVAL * scale)))


def table_run_pbrl(task: str, seed: int, scale: float = 1.0) -> np.ndarray:
    """Control lab: PbRL for ``20000 * scale`` env steps and ``200 * scale`` queries (simulated labeler)."""
    name = _task(task)
    agent = train_pbrl(name, seed, steps=max(1_024, round(20_000 * scale)), queries=max(10, round(200 * scale)))
    return success_rate(agent.ppo.policy, name, seed + 10_000, obs_rms=agent.ppo.env.obs_rms,
                        n_episodes=N_EVAL if scale >= 1 else max(2, round(N_EVAL * scale)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rlxf.algorithms.control.metaworld",
                                description="Meta-World ML1: BC from scripted experts, SAC, PbRL (success over 50 episodes)")
    p.add_argument("method", choices=("bc", "sac", "pbrl", "expert"))
    p.add_argument("--task", choices=TASKS, default="reach-v3")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help="env steps (sac, pbrl) or BC gradient steps")
    p.add_argument("--demos", type=int, default=25, help="bc: scripted demonstrations")
    p.add_argument("--queries", type=int, default=200, help="pbrl: preference queries")
    p.add_argument("--gif", help="write a GIF of one test episode of the learned policy here")
    p.add_argument("--out", help="append the result as a JSON line to this file")
    a = p.parse_args(argv)
    if a.gif and a.method == "pbrl":
        p.error("--gif: the PbRL policy acts on normalised observations; GIFs are for bc, sac and expert")
    if a.gif:
        import rlxf.tasks.render  # noqa: F401  (picks the off-screen GL backend before mujoco starts)
    t0 = time.time()
    rms = None
    if a.method == "expert":
        policy = ScriptedExpert(a.task)
    elif a.method == "bc":
        policy, data = bc_from_experts(a.task, a.seed, a.demos, a.steps or 800)
        print(f"{data.n_steps} demonstration steps from {len(data.episodes)} scripted episodes")
    elif a.method == "sac":
        policy = train_sac(a.task, a.seed, a.steps or 5_000).actor
    else:
        agent = train_pbrl(a.task, a.seed, a.steps or 20_000, a.queries)
        policy, rms = agent.ppo.policy, agent.ppo.env.obs_rms
    scores = success_rate(policy, a.task, a.seed + 10_000, obs_rms=rms)
    row = {"method": a.method, "task": a.task, "seed": a.seed, "steps": a.steps, "success": float(scores.mean()),
           "episodes": len(scores), "seconds": round(time.time() - t0, 1)}
    print(json.dumps(row))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        with open(a.out, "a") as f:
            f.write(json.dumps(row) + "\n")
    if a.gif:
        from rlxf.tasks.render import episode_frames, write_gif

        frames, _ = episode_frames(policy, env_id(a.task, "test"), seed=a.seed + 10_000, max_steps=150, every=2)
        print(f"wrote {write_gif(frames, a.gif, fps=20)} ({len(frames)} frames)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
