"""SkillMimic at toy scale: skills imitated from state-only demonstrations, reused by a high-level policy.

Wang et al., "SkillMimic: Learning Reusable Basketball Skills from Demonstrations". Here the body is the
PuckBall puck (``rlxf.tasks.puck_ball``) and the skills are four pushes of the ball (right, up, left,
down). One skill-conditioned Gaussian policy (one-hot label in its observation) is trained with the
shared PPO on :class:`SkillImitationEnv`: reference state initialisation from the demonstration clips
and SkillMimic's unified reward ``r_body * r_obj * r_ig * r_cg`` (``rlxf.rewards.imitation``). The
demonstrations are states only: their actions are zeros and nothing reads them.

The trained skills are frozen and reused: a discrete PPO policy picks one every ``hold`` steps on the
composite task :class:`ComposeEnv` (push the ball onto a diagonal goal: two pushes and a walk around the
ball), against PPO learning the composite task from scratch at the same number of env steps of the
composite task (the skills' own imitation steps are reported separately).

    python -m rlxf.algorithms.control.skillmimic --seeds 0 1 2 --out runs/skillmimic
"""

from __future__ import annotations

import argparse
import functools
from dataclasses import dataclass, replace

import numpy as np
import torch

from rlxf.algorithms.control.ppo import PPO, PPOConfig
from rlxf.algorithms.control.rollout import evaluate
from rlxf.algorithms.evaluate import mean_se, paired_gain
from rlxf.data.transitions import TransitionDataset
from rlxf.tasks.puck_ball import (LOW_OBS_DIM, SKILLS, ComposeEnv, ScriptedSkill, SkillImitationEnv,
                                  SkillSelectEnv, default_demos)

TASK = "puck_compose"


@dataclass
class SkillMimicConfig:
    skill_steps: int = 300_000  # PPO env steps of skill imitation (all skills in one conditioned policy)
    compose_steps: int = 60_000  # env steps on the composite task, for the high-level policy and for scratch
    hold: int = 8  # low-level steps per high-level decision
    mode: str = "product"  # the unified reward's combination ("sum": the additive ablation)


SKILL_LOG_STD = -1.0  # initial log-std of the skill policy (the paper fixes it at -2.9; here it is learned from -1)
SKILL_PPO = PPOConfig(n_envs=8, n_steps=64, epochs=10, minibatch_size=256, lr=3e-4, gamma=0.95, lam=0.95)
HIGH_PPO = PPOConfig(n_envs=8, n_steps=16, epochs=10, minibatch_size=128, lr=1e-3, gamma=0.95, lam=0.9)
SCRATCH_PPO = PPOConfig(n_envs=8, n_steps=64, epochs=10, minibatch_size=256, lr=3e-4, gamma=0.98, lam=0.95)


class SkillPolicy:
    """One skill of a skill-conditioned policy: acts on the first ``LOW_OBS_DIM`` numbers of any PuckBall
    observation (ComposeEnv's included) with the skill's one-hot label appended; frozen."""

    def __init__(self, policy, index: int, n_skills: int):
        self.policy, self.label = policy, torch.eye(n_skills)[index]

    def _obs(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.cat([obs[..., :LOW_OBS_DIM], self.label.expand(obs.shape[:-1] + (len(self.label),))], -1)

    @torch.no_grad()
    def greedy(self, obs: torch.Tensor) -> torch.Tensor:
        return self.policy.greedy(self._obs(obs))

    @torch.no_grad()
    def act(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.policy.act(self._obs(obs))


def train_skills(demos: TransitionDataset | None = None, seed: int = 0, total_steps: int = 200_000,
                 mode: str = "product", log=None) -> PPO:
    """PPO on :class:`SkillImitationEnv` with a skill drawn per episode: one conditioned policy."""
    demos = demos if demos is not None else default_demos()
    spec = functools.partial(SkillImitationEnv, demos=demos, mode=mode)
    ppo = PPO(replace(SKILL_PPO, seed=seed, total_steps=total_steps), spec)
    ppo.policy.log_std.data.fill_(SKILL_LOG_STD)  # a small action noise from the start, as SkillMimic's fixed sigma
    ppo.learn(eval_every=total_steps // 4 if log else 0, n_eval=16, log=log)
    return ppo


@functools.lru_cache(maxsize=8)
def _trained(seed: int, total_steps: int, mode: str):
    return train_skills(seed=seed, total_steps=total_steps, mode=mode).policy.frozen_copy()


def skill_library(seed: int = 0, scale: float = 1.0, mode: str = "product") -> dict[str, SkillPolicy]:
    """The named skill policies (push_right, push_up, push_left, push_down) for PuckBall envs, trained
    once per process on the default demonstrations: ``library[name].greedy(obs)`` gives the action for
    any PuckBall observation batch ``[B, >= 6]``."""
    policy = _trained(seed, max(2048, int(SkillMimicConfig.skill_steps * scale)), mode)
    return {name: SkillPolicy(policy, i, len(SKILLS)) for i, name in enumerate(SKILLS)}


def imitation_returns(library: dict[str, SkillPolicy], n_episodes: int = 32, seed: int = 10_000,
                      mode: str = "product") -> dict[str, np.ndarray]:
    """Per skill, the greedy skill's unified-reward return per held-out imitation episode."""
    return {name: evaluate(skill, functools.partial(SkillImitationEnv, skill=name, mode=mode), n_episodes, seed + i)
            for i, (name, skill) in enumerate(library.items())}


def push_distances(library: dict, n_episodes: int = 20, seed: int = 30_000, steps: int = 60) -> dict[str, dict]:
    """Per skill, how far it pushes the ball along its direction in ``steps`` steps from composite-task
    starts, split by whether the hand starts behind the ball (push at once) or in front (walk around
    first): ``{"behind": mean metres, "front": mean metres}``."""
    out = {}
    for name, skill in library.items():
        d, rows = np.asarray(SKILLS[name]), []
        for i in range(n_episodes):
            env = ComposeEnv()
            obs, _ = env.reset(seed=seed + i)
            start = env.sim.state()
            for _ in range(steps):
                obs, *_ = env.step(skill.greedy(torch.as_tensor(obs[None]))[0].numpy())
            rows.append(((start[0:2] - start[2:4]) @ d > 0, (env.sim.state()[2:4] - start[2:4]) @ d))
            env.close()
        out[name] = {side: float(np.mean([m for f, m in rows if f == front]) if any(f == front for f, _ in rows)
                                 else float("nan")) for side, front in (("behind", False), ("front", True))}
    return out


def train_high_level(library: dict[str, SkillPolicy], seed: int, env_steps: int, hold: int = 8) -> PPO:
    """Discrete PPO over the frozen skills on the composite task; ``env_steps`` counts low-level steps."""
    spec = functools.partial(SkillSelectEnv, library=library, hold=hold)
    ppo = PPO(replace(HIGH_PPO, seed=seed, total_steps=max(1, env_steps // hold)), spec)
    ppo.learn()
    return ppo


def train_scratch(seed: int, env_steps: int) -> PPO:
    """PPO on the composite task's shaped reward from scratch, ``env_steps`` env steps."""
    ppo = PPO(replace(SCRATCH_PPO, seed=seed, total_steps=env_steps), ComposeEnv)
    ppo.learn()
    return ppo


def compose_success(policy, library: dict[str, SkillPolicy] | None = None, n_episodes: int = 200,
                    seed: int = 20_000, hold: int = 8) -> np.ndarray:
    """Per-episode success (0/1) of a greedy policy on held-out composite episodes: the high-level policy
    when ``library`` is given, else a low-level one. Episodes of seed ``seed + i`` are the same tasks
    for both, so the two are paired."""
    spec = (functools.partial(SkillSelectEnv, library=library, hold=hold, reward="success") if library is not None
            else functools.partial(ComposeEnv, reward="success"))
    return evaluate(policy, spec, n_episodes, seed)


def table_run(task: str, seed: int, scale: float) -> np.ndarray:
    """Control lab runner "skillmimic_hl": skills (seed ``seed``) then the high-level policy."""
    _check_task(task)
    cfg = SkillMimicConfig()
    library = skill_library(seed, scale)
    hl = train_high_level(library, seed, max(512, int(cfg.compose_steps * scale)), cfg.hold)
    return compose_success(hl.policy, library, n_episodes=50)


def table_run_scratch(task: str, seed: int, scale: float) -> np.ndarray:
    """Control lab runner "ppo_scratch": PPO from scratch on the composite task at the same env steps."""
    _check_task(task)
    return compose_success(train_scratch(seed, max(512, int(SkillMimicConfig.compose_steps * scale))).policy,
                           n_episodes=50)


def _check_task(task: str) -> None:
    if task != TASK:
        raise ValueError(f"skillmimic runs on task {TASK!r}, got {task!r}")


def write_gifs(library: dict[str, SkillPolicy], high_level, out: str, seed: int = 0, hold: int = 8) -> list[str]:
    """GIFs of one skill (push_up, from an imitation start) and of the high-level policy on the composite
    task, side by side with nothing else; returns the paths."""
    from rlxf.tasks.render import episode_frames, write_gif

    skill_frames, _ = episode_frames(library["push_up"], functools.partial(SkillImitationEnv, skill="push_up"),
                                     seed=seed, max_steps=60)
    env = SkillSelectEnv(library, hold=hold, render_mode="rgb_array")
    obs, _ = env.reset(seed=seed)
    frames = [env.render()]
    for _ in range(200):
        with torch.no_grad():
            k = high_level.greedy(torch.as_tensor(obs[None]))[0]
        obs, _, term, trunc, _ = env.step(int(k))
        frames += env.frames
        if term or trunc:
            break
    env.close()
    return [str(write_gif(skill_frames, f"{out}/skill_push_up.gif", fps=20)),
            str(write_gif(frames, f"{out}/compose_high_level.gif", fps=20))]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="SkillMimic at toy scale on PuckBall: skills, then a high-level policy")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies the skill and composite-task budgets")
    ap.add_argument("--episodes", type=int, default=200, help="held-out composite episodes per seed")
    ap.add_argument("--out", default="runs/skillmimic", help="where the GIFs go")
    args = ap.parse_args(argv)
    cfg = SkillMimicConfig()
    steps = int(cfg.compose_steps * args.scale)
    hl_all, scratch_all = [], []
    for seed in args.seeds:
        library = skill_library(seed, args.scale)
        imit = imitation_returns(library)
        if seed == args.seeds[0]:
            scripted = {n: ScriptedSkill(d) for n, d in SKILLS.items()}
            print("the reference controller's own imitation return (32 held-out episodes per skill):",
                  ", ".join(f"{k} {v.mean():.1f}" for k, v in imitation_returns(scripted).items()))
            print("the reference controller's push distances (behind / in front):",
                  ", ".join(f"{k} {v['behind']:.2f}/{v['front']:.2f}" for k, v in push_distances(scripted).items()))
        print(f"seed {seed}: learned skills' imitation return (unified reward, 32 held-out episodes per skill):",
              ", ".join(f"{k} {v.mean():.1f}" for k, v in imit.items()))
        print(f"seed {seed}: metres each skill pushes the ball its way in 60 steps from composite starts "
              "(hand behind the ball / in front of it):",
              ", ".join(f"{k} {v['behind']:.2f}/{v['front']:.2f}" for k, v in push_distances(library).items()))
        hl = train_high_level(library, seed, steps, cfg.hold)
        scratch = train_scratch(seed, steps)
        h, s = compose_success(hl.policy, library, args.episodes), compose_success(scratch.policy, None, args.episodes)
        hl_all.append(h)
        scratch_all.append(s)
        print(f"seed {seed}: composite success at {steps} env steps: skills+high-level {h.mean():.3f}, "
              f"PPO from scratch {s.mean():.3f}")
        if seed == args.seeds[0]:
            print("GIFs:", *write_gifs(library, hl.policy, args.out, seed))
    gain, se = paired_gain(np.concatenate(hl_all), np.concatenate(scratch_all))
    print(f"paired gain over {len(args.seeds)} seeds x {args.episodes} episodes: {gain:.3f} +- {se:.3f} "
          f"(skills+high-level {mean_se(np.concatenate(hl_all))[0]:.3f}, scratch {mean_se(np.concatenate(scratch_all))[0]:.3f})")


if __name__ == "__main__":
    main()
