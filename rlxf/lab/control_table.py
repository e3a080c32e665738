"""The control lab's methods x tasks table: one registry of control methods, each a runner that trains
from scratch on a named task at a small budget and returns its held-out per-episode scores.

A method registers as an import path, so its dependencies (MuJoCo, Meta-World, ...) load only when a
lab asks for it::

    METHODS["beso"] = ControlMethod(
        "rlxf.algorithms.control.beso:table_run", tasks=("reach_modes",), metric="success",
        about="score-based diffusion policy (BESO) from multimodal goal demonstrations")

``run(task, seed, scale)`` trains with seed ``seed`` and returns one score per held-out episode (success
in {0, 1} or the episode's return), as a list or array; ``scale`` multiplies the method's default
budget (the lab's smoke test uses a small one). :func:`run_cell` adds the mean and its standard error.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rlxf.algorithms.evaluate import mean_se
from rlxf.core.config import ConfigError
from rlxf.lab.registry import resolve


@dataclass(frozen=True)
class ControlMethod:
    run: str  # "module:function", called as function(task, seed, scale) -> per-episode scores
    tasks: tuple[str, ...]  # the task names it accepts
    metric: str  # "success" or "return"
    about: str = ""  # one line for the report


METHODS: dict[str, ControlMethod] = {}
METHODS["slim"] = ControlMethod(
    "rlxf.algorithms.control.slim:table_run", tasks=("reacher", "pusher"), metric="return",
    about="SLIM: PPO with one critic head per reward term, each term's advantage normalised, then averaged")
METHODS["ppo_summed"] = ControlMethod(
    "rlxf.algorithms.control.slim:table_run_ppo", tasks=("reacher", "pusher"), metric="return",
    about="PPO with one critic on the summed reward (SLIM's baseline, same settings and env steps)")
METHODS["skillmimic_hl"] = ControlMethod(
    "rlxf.algorithms.control.skillmimic:table_run", tasks=("puck_compose",), metric="success",
    about="SkillMimic: push skills imitated from state-only demos, a high-level PPO picks them")
METHODS["ppo_scratch"] = ControlMethod(
    "rlxf.algorithms.control.skillmimic:table_run_scratch", tasks=("puck_compose",), metric="success",
    about="PPO from scratch on the composite PuckBall task at the high-level policy's env steps")
METHODS["tscac"] = ControlMethod(
    "rlxf.algorithms.control.tscac:table_run", tasks=("short_video",), metric="return",
    about="two-stage constrained actor-critic: per-signal policies, then watch time near them (watch time)")
METHODS["lagrangian"] = ControlMethod(
    "rlxf.algorithms.control.tscac:lagrangian_table_run", tasks=("short_video",), metric="return",
    about="primal-dual constrained PPO with one critic per signal (watch time)")
METHODS["sim2rec"] = ControlMethod(
    "rlxf.algorithms.control.sim2rec:table_run", tasks=("short_video_heldout",), metric="return",
    about="PPO across a set of user simulators with a history extractor (held-out watch time)")
METHODS["single_sim"] = ControlMethod(
    "rlxf.algorithms.control.sim2rec:single_sim_table_run", tasks=("short_video_heldout",), metric="return",
    about="PPO on one nominal user simulator (held-out watch time)")
METHODS["bc_scripted"] = ControlMethod(
    "rlxf.algorithms.control.metaworld:table_run_bc", tasks=("metaworld_reach", "metaworld_push", "metaworld_pick_place"),
    metric="success", about="Meta-World ML1: BC on 25 episodes of the bundled scripted expert (held-out variations)")
METHODS["sac_metaworld"] = ControlMethod(
    "rlxf.algorithms.control.metaworld:table_run_sac", tasks=("metaworld_reach", "metaworld_push", "metaworld_pick_place"),
    metric="success", about="Meta-World ML1: SAC on the env reward, 5000 env steps")
METHODS["pbrl_metaworld"] = ControlMethod(
    "rlxf.algorithms.control.metaworld:table_run_pbrl", tasks=("metaworld_reach", "metaworld_push", "metaworld_pick_place"),
    metric="success", about="Meta-World ML1: PbRL (PPO on a reward ensemble, 200 simulated-labeler queries), 20000 env steps")
METHODS["beso"] = ControlMethod(
    "rlxf.algorithms.control.beso:table_run", tasks=("goal_reach2d",), metric="success",
    about="BESO: score-based diffusion policy (3 DDIM steps, action chunks) from two-style goal demonstrations")
METHODS["bc_mlp"] = ControlMethod(
    "rlxf.algorithms.control.beso:table_run_bc", tasks=("goal_reach2d",), metric="success",
    about="behaviour cloning with a Gaussian MLP acting by its mean (BESO's baseline, same demonstrations)")
METHODS["iql"] = ControlMethod(
    "rlxf.algorithms.control.pgd:table_run_iql", tasks=("pendulum_medium_replay",), metric="return",
    about="IQL on a medium-replay-style Pendulum dataset (partly trained SAC, mixed exploration)")
METHODS["iql_pgd"] = ControlMethod(
    "rlxf.algorithms.control.pgd:table_run", tasks=("pendulum_medium_replay",), metric="return",
    about="IQL on the real data plus policy-guided diffusion samples (guided by IQL's own policy)")
METHODS["doc"] = ControlMethod(
    "rlxf.algorithms.control.doc:doc_table_run", tasks=("gamble",), metric="return",
    about="Dichotomy of Control: future-conditioned BC whose latent may not carry luck (MI penalty)")
METHODS["rvs"] = ControlMethod(
    "rlxf.algorithms.control.doc:rvs_table_run", tasks=("gamble",), metric="return",
    about="return-conditioned BC (RvS / DT-style), conditioned on the best return in the data")
METHODS["doc_no_mi"] = ControlMethod(
    "rlxf.algorithms.control.doc:doc_no_mi_table_run", tasks=("gamble",), metric="return",
    about="DoC without its MI penalty (ablation)")
METHODS["ppo"] = ControlMethod(
    "rlxf.algorithms.control.demo_rl:ppo_table_run", tasks=("prize_lock",), metric="return",
    about="PPO from scratch (12288 env steps)")
METHODS["bc"] = ControlMethod(
    "rlxf.algorithms.control.demo_rl:bc_table_run", tasks=("prize_lock",), metric="return",
    about="BC on 2 noisy demonstrations of a small-prize expert")
METHODS["ppo_demo_kl"] = ControlMethod(
    "rlxf.algorithms.control.demo_rl:ppo_demo_kl_table_run", tasks=("prize_lock",), metric="return",
    about="demonstration-regularised RL: BC on the 2 demos, then PPO with KL towards BC (same env steps)")
METHODS["robomatrix"] = ControlMethod(
    "rlxf.algorithms.control.robomatrix:table_run", tasks=("tabletop_unseen",), metric="success",
    about="RoboMatrix: BC skill library sequenced by a simulated LM planner (error 0.1) on unseen task combinations")
METHODS["flat"] = ControlMethod(
    "rlxf.algorithms.control.robomatrix:flat_table_run", tasks=("tabletop_unseen",), metric="success",
    about="flat BC policy on the seen task combinations' demos (the skill library's data and gradient steps)")


def check_cells(methods, tasks, what: str = "table") -> list[tuple[str, str]]:
    """The (method, task) cells of ``methods`` x ``tasks`` that exist; unknown names are a ConfigError
    naming the option, and so is a pair with no method that runs on the task."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"{what}.methods: unknown method(s) {unknown}; known: {sorted(METHODS)}")
    known_tasks = sorted({t for m in METHODS.values() for t in m.tasks})
    bad = [t for t in tasks if t not in known_tasks]
    if bad:
        raise ConfigError(f"{what}.tasks: unknown task(s) {bad}; known: {known_tasks}")
    cells = [(m, t) for m in methods for t in tasks if t in METHODS[m].tasks]
    empty = [t for t in tasks if not any(t in METHODS[m].tasks for m in methods)]
    if empty:
        raise ConfigError(f"{what}.tasks: no method in {list(methods)} runs on {empty}")
    return cells


def run_cell(method: str, task: str, seed: int, scale: float = 1.0) -> dict:
    """Train ``method`` on ``task`` and score it: per-episode scores, their mean and standard error."""
    entry = METHODS[method]
    scores = np.asarray(resolve(entry.run, f"table method {method}")(task, seed, scale), dtype=float)
    if scores.ndim != 1 or len(scores) == 0:
        raise ValueError(f"method {method} on {task} returned scores of shape {scores.shape}; expected [episodes]")
    mean, se = mean_se(scores)
    return {"method": method, "task": task, "metric": entry.metric, "scores": scores.tolist(), "mean": mean, "se": se}


def format_cells(cells: list[dict]) -> str:
    """The methods x tasks table, one row per (task, method) cell, grouped by task in the order listed:
    ``mean +- se`` of held-out success or return, and how many scores (episodes, or seeds) are behind it."""
    lines = [f"{'task':<24}{'method':<18}{'metric':<9}{'mean +- se':>22}{'n':>6}"]
    for task in dict.fromkeys(c["task"] for c in cells):
        for c in (c for c in cells if c["task"] == task):
            n = len(c["seed_means"]) if "seed_means" in c else len(c["scores"])
            value = f"{c['mean']:.3g} +- {c['se']:.2g}"
            lines.append(f"{task:<24}{c['method']:<18}{c['metric']:<9}{value:>22}{n:>6}")
    return "\n".join(lines)
