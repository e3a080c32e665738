"""RoboMatrix at toy scale: a library of learned skills sequenced by a planner from a text task.

Mao et al., "RoboMatrix: A Skill-centric Hierarchical Framework for Scalable Robot Task Planning and
Execution in Open-World" (arXiv 2412.00171). Skills, not tasks, are what is learned: the same
demonstrations of the *seen* tasks of :mod:`rlxf.tasks.tabletop2d` are cut into skill segments
("pick <object>": until the object is held; "place <place>": until it is let go), and each skill is a
small policy trained by behaviour cloning (:func:`rlxf.algorithms.control.offline.train_bc`) on an
object-free view: the gripper's cell and the offset to the skill's target. A planner turns the task
text into skill calls, one per line (``pick(red block)`` / ``place(left bin)``); the agent grounds each
argument to a cell and runs the skill's policy until the skill's end condition holds. The planner is any
:class:`~rlxf.labelers.roles.TextModel`: :func:`simulated_planner` (a
:class:`~rlxf.labelers.roles.SimulatedRole` with a set error rate; its wrong replies ground the wrong
object or place, drop a step, or are not a plan at all) or an ``LMRole`` (SmolLM2; see docs/control.md).
A reply that does not parse is counted as invalid and its episode fails.

The named baseline is the task-centric one: a flat BC policy on the env's observation (which holds the
current goal as one-hot object and place) trained on the same seen-task demonstrations with as many
gradient steps as the whole library. Both are scored on tasks whose (object, place) pairings no
demonstration showed (:func:`rlxf.tasks.tabletop2d.split_combos`), single and two-goal.
"""

from __future__ import annotations

import argparse
import re
import tempfile
from dataclasses import dataclass
from functools import partial
from typing import Callable

import numpy as np
import torch

from rlxf.algorithms.control.offline import OfflineConfig, train_bc
from rlxf.algorithms.control.rollout import evaluate
from rlxf.algorithms.evaluate import mean_se, paired_gain
from rlxf.algorithms.loop import OptimConfig
from rlxf.core.runs import Run
from rlxf.data.transitions import Episode, TransitionDataset
from rlxf.labelers.roles import SimulatedRole, TextModel
from rlxf.policies.control import single_thread
from rlxf.tasks.tabletop2d import (BLOCKS, GRASP, HEIGHT, PLACE_NAMES, PLACES, RELEASE, WIDTH, Tabletop2D,
                                   move_toward, parse_task, scripted_action, split_combos, task_text)

SKILLS = ("pick", "place")
SCALE = np.array([WIDTH - 1, HEIGHT - 1], dtype=np.float32)
_CALL = re.compile(r"^\s*(?:\d+[.)]\s*)?(\w+)\((.*?)\)\s*$")


# -- skills ----------------------------------------------------------------------------------------
def skill_target(env: Tabletop2D, skill: str, arg: int) -> np.ndarray:
    """Where a skill goes: the object's cell (pick) or the bin's (place)."""
    return env.pos[arg].copy() if skill == "pick" else np.array(PLACES[PLACE_NAMES[arg]])


def skill_obs(env: Tabletop2D, target: np.ndarray) -> np.ndarray:
    """A skill's view, object-free: the gripper's cell and the offset to its target, both scaled."""
    return np.concatenate([env.gripper / SCALE, (target - env.gripper) / SCALE]).astype(np.float32)


def skill_done(env: Tabletop2D, skill: str) -> bool:
    return env.held is not None if skill == "pick" else env.held is None


def demonstrations(tasks, n_episodes: int, seed: int, noise: float = 0.2) -> tuple[TransitionDataset, dict]:
    """``n_episodes`` demonstrator episodes on ``tasks``, executed with ``noise`` random actions but
    labelled with the demonstrator's action (so the data covers recoveries). Returns the flat dataset
    (env observations) and one dataset per skill (the same steps in the skills' view)."""
    env, rng = Tabletop2D(tasks), np.random.default_rng(seed)
    flat: list[Episode] = []
    per_skill: dict[str, list[Episode]] = {s: [] for s in SKILLS}
    for k in range(n_episodes):
        obs, _ = env.reset(seed=seed * 100_003 + k)
        rows, segs, done = [], {s: [] for s in SKILLS}, False
        while not done:
            expert = scripted_action(env)
            goal = env.goal()
            skill = "place" if env.held is not None else "pick"
            arg = goal[1] if skill == "place" else goal[0]
            sobs = skill_obs(env, skill_target(env, skill, arg))
            act = int(rng.integers(6)) if rng.random() < noise else expert
            nobs, r, term, trunc, _ = env.step(act)
            rows.append((obs, expert, r, nobs))
            segs[skill].append((sobs, expert, skill_obs(env, skill_target(env, skill, arg))))
            obs, done = nobs, term or trunc
        flat.append(_episode([o for o, *_ in rows] + [rows[-1][3]], [a for _, a, *_ in rows], [r for *_, r, _ in rows]))
        for s, seg in segs.items():
            if seg:
                per_skill[s].append(_episode([o for o, *_ in seg] + [seg[-1][2]], [a for _, a, _ in seg],
                                             [0.0] * len(seg)))
    return (TransitionDataset(flat, "rlxf/Tabletop2D", {"seed": seed}),
            {s: TransitionDataset(e, f"skill:{s}", {"seed": seed}) for s, e in per_skill.items()})


def _episode(obs, actions, rewards) -> Episode:
    return Episode(torch.as_tensor(np.stack(obs)), torch.as_tensor(actions, dtype=torch.long),
                   torch.as_tensor(rewards, dtype=torch.float32), True, False)


@dataclass
class Budget:
    demos: int = 200  # demonstration episodes of the seen tasks (shared by the library and the flat policy)
    bc_steps: int = 1500  # per skill; the flat policy gets len(SKILLS) times as many
    batch_size: int = 256
    hidden: int = 64


def train_agents(seed: int, budget: Budget = Budget(), seen=None) -> tuple[dict, torch.nn.Module]:
    """The skill library (one BC policy per skill) and the flat BC policy, from the same demonstrations."""
    seen = seen if seen is not None else split_combos()[0]
    flat_data, skill_data = demonstrations(seen, budget.demos, seed)

    def bc(data, steps, name, tmp):
        cfg = OfflineConfig(OptimConfig(steps=steps, batch_size=budget.batch_size, lr=3e-3, checkpoint_every=0),
                            hidden=budget.hidden, seed=seed)
        return train_bc(data, Run(f"{tmp}/{name}", "robomatrix = 1\n", fresh=True), cfg, n_actions=6, stage=name)

    with tempfile.TemporaryDirectory() as tmp:
        library = {s: bc(skill_data[s], budget.bc_steps, s, tmp) for s in SKILLS}
        flat = bc(flat_data, budget.bc_steps * len(SKILLS), "flat", tmp)
    return library, flat


# -- the planner ------------------------------------------------------------------------------------
def planner_prompt(text: str, objects=BLOCKS) -> str:
    return (f"Task: {text}.\nSkills: pick(<object>), place(<place>).\n"
            f"Objects: {', '.join(o.name for o in objects)}. Places: {', '.join(PLACE_NAMES)}.\n"
            "Reply with the skill calls, one per line, and nothing else.")


def task_of(prompt: str) -> str:
    return prompt.split("\n", 1)[0].removeprefix("Task: ").rstrip(".")


def scripted_plan(prompt: str, objects=BLOCKS) -> str:
    """The right plan for a planner prompt: pick and place per goal, in order."""
    lines = []
    for o, p in parse_task(task_of(prompt), objects):
        lines += [f"pick({objects[o].name})", f"place({PLACE_NAMES[p]})"]
    return "\n".join(lines)


def corrupt_plan(prompt: str, right: str, rng, objects=BLOCKS) -> str:
    """A planner's wrong reply: the wrong object or place grounded, a step dropped, or no plan."""
    lines = right.split("\n")
    kind = rng.choice(("object", "place", "drop", "prose"))
    if kind == "prose":
        return "Sure! First I will find the block and then carry it over to the bin."
    if kind == "drop":
        return "\n".join(lines[:-1])
    i = rng.randrange(0 if kind == "object" else 1, len(lines), 2)
    names = [o.name for o in objects] if kind == "object" else list(PLACE_NAMES)
    current = lines[i][lines[i].index("(") + 1:-1]
    lines[i] = f"{lines[i].split('(')[0]}({rng.choice([n for n in names if n != current])})"
    return "\n".join(lines)


def simulated_planner(error: float = 0.0, seed: int = 0, objects=BLOCKS) -> SimulatedRole:
    """A planner played from gold that answers wrongly (:func:`corrupt_plan`) with probability ``error``."""
    return SimulatedRole(right=lambda q: scripted_plan(q, objects),
                         wrong=lambda q, r, rng: corrupt_plan(q, r, rng, objects), error=error, seed=seed)


def parse_plan(reply: str, objects=BLOCKS) -> list[tuple[str, int]] | None:
    """Skill calls from a reply, grounded to indices; None when any non-empty line is not a known skill
    on a known argument (pick takes an object, place a place), or there is no call."""
    names = [o.name for o in objects]
    plan = []
    for line in reply.strip().split("\n"):
        if not line.strip():
            continue
        m = _CALL.match(line.strip().lower())
        if m is None:
            return None
        skill, arg = m.group(1), m.group(2).strip().removeprefix("the ")
        known = names if skill == "pick" else list(PLACE_NAMES) if skill == "place" else []
        if arg not in known:
            return None
        plan.append((skill, known.index(arg)))
    return plan or None


# -- agents -----------------------------------------------------------------------------------------
class ScriptedSkill:
    """A skill played by the demonstrator's rule on the skill's view (the same ``greedy`` as a learned
    one): step toward the target, then ``arrive`` (grasp or release)."""

    def __init__(self, skill: str):
        self.arrive = GRASP if skill == "pick" else RELEASE

    def greedy(self, obs: torch.Tensor) -> torch.Tensor:
        offsets = torch.round(obs[:, 2:] * torch.as_tensor(SCALE)).long().tolist()
        return torch.tensor([move_toward((0, 0), d, self.arrive) for d in offsets])


SCRIPTED_LIBRARY = {s: ScriptedSkill(s) for s in SKILLS}


def run_skills(env: Tabletop2D, plan: list[tuple[str, int]], library: dict, cap: int = 20,
               on_event: Callable | None = None) -> float:
    """Execute ``plan`` from the env's current state with the library's policies; the episode's return.
    ``on_event(env, skill, arg, info)`` is called after a step whose ``info`` reports a slip or a bounce
    (where a person watching would correct the robot)."""
    ret = 0.0
    with torch.no_grad():
        for skill, arg in plan:
            target = skill_target(env, skill, arg)
            for _ in range(cap):
                a = int(library[skill].greedy(torch.as_tensor(skill_obs(env, target))[None])[0])
                _, r, term, trunc, info = env.step(a)
                ret += r
                if on_event is not None and ("slip" in info or "bounced" in info):
                    on_event(env, skill, arg, info)
                if term or trunc:
                    return ret
                if skill_done(env, skill):
                    break
    return ret


def play_skills(tasks: list, library: dict, planner: TextModel, seed: int, n_episodes: int) -> tuple[np.ndarray, int]:
    """Per-episode success of the planner + library on ``tasks``, and how many replies did not parse.
    Episode ``k`` is the env reset with seed ``seed + k`` (its task drawn from that seed): the same
    episodes :func:`play_flat` plays through the shared ``evaluate``. The agent is stateful (a plan per
    episode, a current skill), so it runs its episodes one at a time here."""
    envs = [Tabletop2D(tasks) for _ in range(n_episodes)]
    for k, env in enumerate(envs):
        env.reset(seed=seed + k)
    replies = planner.complete([planner_prompt(task_text(env.task)) for env in envs])
    out, invalid = np.zeros(n_episodes), 0
    for k, (env, reply) in enumerate(zip(envs, replies)):
        plan = parse_plan(reply)
        if plan is None:
            invalid += 1
            continue
        out[k] = run_skills(env, plan, library)
    return out, invalid


def play_flat(tasks: list, policy, seed: int, n_episodes: int) -> np.ndarray:
    """Per-episode success of a flat policy (greedy) through the shared ``evaluate``: env copy ``k``
    resets with seed ``seed + k``, the episodes :func:`play_skills` plays."""
    return evaluate(policy, partial(Tabletop2D, tasks), n_episodes, seed)


def unseen_tasks() -> list:
    """Held-out pairings: each single one, and each ordered two-goal task of two of them."""
    singles = split_combos()[1]
    return singles + [a + b for a in singles for b in singles if a != b]


def compare(seed: int, n_episodes: int = 200, error: float = 0.1, budget: Budget = Budget()) -> dict:
    """Train both agents with ``seed`` and play ``n_episodes`` paired unseen-task episodes."""
    with single_thread():
        library, flat = train_agents(seed, budget)
        tasks, eval_seed = unseen_tasks(), 1_000_000 + 1_000 * seed
        planner = simulated_planner(error, seed)
        skills, invalid = play_skills(tasks, library, planner, eval_seed, n_episodes)
        scripted, _ = play_skills(tasks, library, simulated_planner(0.0), eval_seed, n_episodes)
        flat_scores = play_flat(tasks, flat, eval_seed, n_episodes)
        seen = split_combos()[0]
        flat_seen = play_flat(seen, flat, eval_seed, n_episodes)
    return {"robomatrix": skills, "scripted_planner": scripted, "flat": flat_scores, "flat_seen": flat_seen,
            "invalid": invalid}


def table_run(task: str, seed: int, scale: float = 1.0, method: str = "robomatrix") -> np.ndarray:
    """Control-lab runner: train at ``scale`` x the default budget, score on unseen tasks."""
    if task != "tabletop_unseen":
        raise ValueError(f"robomatrix: unknown task {task!r}; expected 'tabletop_unseen'")
    b = Budget()
    budget = Budget(max(8, int(b.demos * scale)), max(20, int(b.bc_steps * scale)), b.batch_size, b.hidden)
    with single_thread():
        library, flat = train_agents(seed, budget)
        n = max(20, int(200 * scale))
        if method == "flat":
            return play_flat(unseen_tasks(), flat, 1_000_000 + seed, n)
        return play_skills(unseen_tasks(), library, simulated_planner(0.1, seed), 1_000_000 + seed, n)[0]


def flat_table_run(task: str, seed: int, scale: float = 1.0) -> np.ndarray:
    return table_run(task, seed, scale, method="flat")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="RoboMatrix (skill library + planner) vs a flat BC policy on "
                                             "unseen Tabletop2D task combinations")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--episodes", type=int, default=200)
    ap.add_argument("--error", type=float, default=0.1, help="the simulated planner's error rate")
    ap.add_argument("--lm", default="", help="plan with this language model through LMRole instead (e.g. "
                                             "smollm2): success and invalid replies on unseen tasks, first seed")
    args = ap.parse_args(argv)
    if args.lm:
        from rlxf.labelers.roles import LMRole
        from rlxf.policies.loading import ModelSettings, load_policy

        planner = LMRole(load_policy(ModelSettings(path=args.lm)), max_new_tokens=40)
        with single_thread():
            library, _ = train_agents(args.seeds[0])
        scores, invalid = play_skills(unseen_tasks(), library, planner, 1_000_000, args.episodes)
        print(f"planner {args.lm}: success {scores.mean():.3f} on {args.episodes} unseen-task episodes; "
              f"invalid replies {invalid}")
        return
    rows = [compare(s, args.episodes, args.error) for s in args.seeds]
    cat = {k: np.concatenate([r[k] for r in rows]) for k in ("robomatrix", "scripted_planner", "flat", "flat_seen")}
    for k, v in cat.items():
        print(f"{k:>18}: success {mean_se(v)[0]:.3f} +- {mean_se(v)[1]:.3f}")
    gain, se = paired_gain(cat["robomatrix"], cat["flat"])
    print(f"robomatrix - flat (paired, unseen): {gain:+.3f} +- {se:.3f}; invalid plans "
          f"{sum(r['invalid'] for r in rows)} of {len(cat['flat'])}")


if __name__ == "__main__":
    main()
