"""MineRL BASALT's evaluation protocol without Minecraft: agents that get no reward are ranked by
TrueSkill from pairwise comparisons of their episodes, judged by people (side-by-side GIFs in the
feedback app) or by simulated judges driven by the task's hidden return (gold).

A match shows two agents' episodes on the same task and the same episode seed; the judge picks the
better one or calls a draw; both ratings move by the two-player TrueSkill update
(:mod:`rlxf.algorithms.trueskill`); the table ranks agents by ``mu - 3 sigma``. The stand-in task is
MuJoCo's Reacher-v5 (it renders off-screen) with agents of known quality: one Jacobian-transpose
controller with more or less action noise. Their gold ranking is the order of their mean return over
the episode pool, which the agents and the judges never see as a number (judges see only a pair).

    python -m rlxf.lab.basalt simulate --matches 150 --seed 0         # simulated judges -> TrueSkill table
    python -m rlxf.lab.basalt video-project --project runs/basalt     # GIF pairs for people (rlxf label serve)
    python -m rlxf.lab.basalt table --project runs/basalt             # TrueSkill table from their labels

The control lab calls :func:`basalt_table` (simulated judges) or :func:`trueskill_table` (any games).
"""

from __future__ import annotations

import argparse
import math
import secrets
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from rlxf.algorithms.trueskill import TrueSkill, leaderboard, most_informative_pair, rate_games
from rlxf.labelers.simulated import BPrefLabeler

TASK = "Reacher-v5"
PROMPT = ("Reacher: a two-link arm should bring its fingertip to the red target quickly and keep it there. "
          "Which episode does the task better?")
NOISES = (0.0, 0.3, 0.6, 1.0, 2.0)  # action-noise std of the five agents: quality falls with noise


class ReacherController:
    """Jacobian-transpose control of Reacher's fingertip toward the target, damped, plus Gaussian action
    noise of std ``noise`` (the agent's quality knob). Reads only the observation: no reward."""

    def __init__(self, noise: float = 0.0, seed: int = 0, gain: float = 3.0):
        self.noise, self.gain = noise, gain
        self.rng = np.random.default_rng(seed)

    def greedy(self, obs: torch.Tensor) -> torch.Tensor:
        o = obs.numpy().astype(np.float64)
        c1, c2, s1, s2 = o[:, 0], o[:, 1], o[:, 2], o[:, 3]
        s12, c12 = s1 * c2 + c1 * s2, c1 * c2 - s1 * s2
        jac = np.stack([np.stack([-0.1 * s1 - 0.11 * s12, -0.11 * s12], -1),
                        np.stack([0.1 * c1 + 0.11 * c12, 0.11 * c12], -1)], 1)  # d(tip xy)/d(q), links 0.1 and 0.11
        torque = -self.gain / 0.04 * np.einsum("bxq,bx->bq", jac, o[:, 8:10]) - 0.1 * o[:, 6:8]
        torque = torque + self.noise * self.rng.standard_normal(torque.shape)
        return torch.as_tensor(np.clip(torque, -1, 1), dtype=torch.float32)

    def act(self, obs: torch.Tensor):
        return self.greedy(obs), torch.zeros(obs.shape[0])


def reacher_agents(noises=NOISES, seed: int = 0) -> dict[str, ReacherController]:
    """One agent per noise level, named ``noise<std>``."""
    return {f"noise{n:g}": ReacherController(n, seed + k) for k, n in enumerate(noises)}


def episode_golds(agents: dict, spec=TASK, n_episodes: int = 40, seed: int = 0) -> dict[str, np.ndarray]:
    """Each agent's hidden return on episodes ``seed .. seed + n_episodes - 1`` (the same seeds for all)."""
    from rlxf.algorithms.control.rollout import evaluate

    return {name: evaluate(agent, spec, n_episodes=n_episodes, seed=seed) for name, agent in agents.items()}


def gold_order(golds: dict[str, np.ndarray]) -> list[str]:
    """Agents by mean gold return, best first."""
    return sorted(golds, key=lambda a: -float(np.mean(golds[a])))


def kendall_tau(order: list[str], reference: list[str]) -> float:
    """Kendall's tau-a between two orders of the same agents: (concordant - discordant) / pairs."""
    if sorted(order) != sorted(reference) or len(order) < 2:
        raise ValueError(f"kendall_tau: the orders must rank the same two or more agents; got {order} and {reference}")
    pos = {a: i for i, a in enumerate(reference)}
    ranks = [pos[a] for a in order]
    n = len(ranks)
    s = sum(1 if ranks[i] < ranks[j] else -1 for i in range(n) for j in range(i + 1, n))
    return s / (n * (n - 1) / 2)


def simulate_matches(golds: dict[str, np.ndarray], n_matches: int, judge: BPrefLabeler, ts: TrueSkill | None = None,
                     selection: str = "uniform", seed: int = 0) -> list[tuple[str, str, float]]:
    """``n_matches`` games judged on gold: each picks a pair of agents (uniformly, or BASALT's most
    informative pair under ``selection="active"``) and an episode seed shared by both; the judge's
    answer is the outcome (1.0 first better, 0.0 second, 0.5 draw; skipped answers are dropped)."""
    if selection not in ("uniform", "active"):
        raise ValueError(f"selection must be 'uniform' or 'active', got {selection!r}")
    ts, rng = ts or TrueSkill(), np.random.default_rng(seed)
    names = list(golds)
    n_eps = min(len(g) for g in golds.values())
    ratings = {a: ts.rating() for a in names}
    games = []
    for _ in range(n_matches):
        if selection == "active":
            a, b = most_informative_pair(ts, ratings)
            if rng.random() < 0.5:  # which side each agent is shown on
                a, b = b, a
        else:
            a, b = (names[i] for i in rng.choice(len(names), 2, replace=False))
        e = int(rng.integers(n_eps))
        y = float(judge.label(np.array([golds[a][e]]), np.array([golds[b][e]]))[0])
        if math.isnan(y):
            continue
        games.append((a, b, y))
        ratings = rate_games([(a, b, y)], ts=ts, start=ratings)
    return games


def trueskill_table(games, agents=None, ts: TrueSkill | None = None) -> list[dict]:
    """The BASALT-style table: one row per agent, best first by the conservative score ``mu - 3 sigma``,
    with ``agent``, ``mu``, ``sigma``, ``conservative``, ``games`` (played), ``wins``, ``draws``.

    ``games``: ``(first, second, outcome)`` in the order they were played, outcome 1.0 (first better),
    0.0 (second better) or 0.5 (draw); ``agents`` also lists agents that have not played yet.
    """
    games = list(games)
    ratings = rate_games(games, agents, ts)
    played = {a: [0, 0, 0] for a in ratings}  # games, wins, draws
    for a, b, y in games:
        for who, won in ((a, y == 1.0), (b, y == 0.0)):
            played[who][0] += 1
            played[who][1] += int(won)
            played[who][2] += int(y == 0.5)
    return [{"agent": a, "mu": r.mu, "sigma": r.sigma, "conservative": r.conservative, "games": played[a][0],
             "wins": played[a][1], "draws": played[a][2]} for a, r in leaderboard(ratings)]


def format_table(rows: list[dict]) -> str:
    """The table as text, best first."""
    lines = [f"{'rank':<5}{'agent':<16}{'mu':>8}{'sigma':>8}{'mu-3sigma':>11}{'games':>7}{'wins':>6}{'draws':>7}"]
    for i, r in enumerate(rows, 1):
        lines.append(f"{i:<5}{r['agent']:<16}{r['mu']:>8.2f}{r['sigma']:>8.2f}{r['conservative']:>11.2f}"
                     f"{r['games']:>7}{r['wins']:>6}{r['draws']:>7}")
    return "\n".join(lines)


def basalt_table(n_matches: int = 150, judge_beta: float = 0.2, mistake_rate: float = 0.1, tie_below: float = 2.0,
                 selection: str = "uniform", seed: int = 0, n_episodes: int = 40, noises=NOISES) -> dict:
    """The whole protocol with simulated judges on Reacher-v5: agents of known quality, their gold
    returns on a shared episode pool, ``n_matches`` judged games, the TrueSkill table, and how its order
    agrees with the gold order (Kendall tau, top-1). The judge is Bradley-Terry on the episodes' gold
    returns (``judge_beta`` per unit of return), calls a draw below ``tie_below`` and flips a decided
    answer with probability ``mistake_rate``."""
    golds = episode_golds(reacher_agents(noises, seed), TASK, n_episodes, seed=seed)
    judge = BPrefLabeler(beta=judge_beta, mistake_rate=mistake_rate, tie_below=tie_below, seed=seed)
    games = simulate_matches(golds, n_matches, judge, selection=selection, seed=seed)
    rows = trueskill_table(games, agents=list(golds))
    gold = gold_order(golds)
    for r in rows:
        r["gold_mean_return"] = float(np.mean(golds[r["agent"]]))
    order = [r["agent"] for r in rows]
    return {"rows": rows, "gold_order": gold, "kendall_tau": kendall_tau(order, gold), "top1": order[0] == gold[0],
            "games": len(games)}


# -- the feedback app: GIF pairs for people ------------------------------------------------------------


def add_video_matches(directory: str | Path, agents: dict, n_matches: int, spec=TASK, seed: int = 0,
                      max_steps: int = 50, every: int = 2) -> int:
    """Render ``n_matches`` same-seed episode pairs of random agent pairs into ``DIR/videos/`` (clip names
    are random, so they say nothing about the agent) and add them to the preference project in
    ``directory`` as video items: ``meta = {"videos": true, "agents": [a, b], "seed": s}``. Returns the count."""
    from rlxf.app.project import open_project
    from rlxf.tasks.render import episode_frames, write_gif

    store, project = open_project(directory)
    try:
        if project.kind != "preference":
            raise ValueError(f"{directory}: video matches need a preference project, this one is {project.kind!r}")
        videos = Path(directory) / "videos"
        videos.mkdir(parents=True, exist_ok=True)
        rng, names, items = np.random.default_rng(seed), list(agents), []
        for m in tqdm(range(n_matches), desc="rendering matches", disable=n_matches < 4):
            pair = [names[i] for i in rng.choice(len(names), 2, replace=False)]
            ep_seed = seed * 1000 + m
            clips = []
            for name in pair:
                frames, _ = episode_frames(agents[name], spec, seed=ep_seed, max_steps=max_steps, every=every)
                clip = f"clip-{secrets.token_hex(6)}.gif"
                write_gif(frames, videos / clip, fps=15)
                clips.append(clip)
            items.append((PROMPT, clips, {"videos": True, "agents": pair, "seed": ep_seed}))
        store.add_items(project, items)
    finally:
        store.close()
    return len(items)


def games_from_labels(labels) -> list[tuple[str, str, float]]:
    """Games from a preference project's labels of video items, in the order they were given: the agents
    as shown (left, right) and 1.0 / 0.0 / 0.5 for left better / right better / tie (skips dropped)."""
    outcome = {"a": 1.0, "b": 0.0, "tie": 0.5}
    games = []
    for label in labels:
        agents = label.item.meta.get("agents")
        if not agents or label.value.get("choice") not in outcome:
            continue
        games.append((agents[label.shown[0]], agents[label.shown[1]], outcome[label.value["choice"]]))
    return games


def table_from_project(directory: str | Path, ts: TrueSkill | None = None) -> list[dict]:
    """The TrueSkill table from every label given so far in a video-comparison project."""
    from rlxf.app.project import open_project

    store, project = open_project(directory)
    try:
        labels = store.labels(project)
        agents = sorted({a for item in store.items(project) for a in item.meta.get("agents", [])})
    finally:
        store.close()
    return trueskill_table(games_from_labels(labels), agents=agents, ts=ts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rlxf.lab.basalt", description="BASALT-style evaluation by comparisons")
    sub = p.add_subparsers(dest="cmd", required=True)
    sim = sub.add_parser("simulate", help="simulated judges on Reacher-v5 agents -> TrueSkill table")
    sim.add_argument("--matches", type=int, default=150)
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--selection", choices=("uniform", "active"), default="uniform")
    sim.add_argument("--judge-beta", type=float, default=0.2)
    sim.add_argument("--mistake-rate", type=float, default=0.1)
    sim.add_argument("--tie-below", type=float, default=2.0)
    vid = sub.add_parser("video-project", help="a label project of side-by-side episode GIFs for people")
    vid.add_argument("--project", required=True, metavar="DIR")
    vid.add_argument("--matches", type=int, default=12)
    vid.add_argument("--seed", type=int, default=0)
    tab = sub.add_parser("table", help="the TrueSkill table from a video project's labels")
    tab.add_argument("--project", required=True, metavar="DIR")
    a = p.parse_args(argv)
    if a.cmd == "simulate":
        out = basalt_table(a.matches, a.judge_beta, a.mistake_rate, a.tie_below, a.selection, a.seed)
        print(format_table(out["rows"]))
        print(f"gold order: {' > '.join(out['gold_order'])}")
        print(f"Kendall tau vs gold: {out['kendall_tau']:.2f}; top-1 {'right' if out['top1'] else 'wrong'}; "
              f"{out['games']} games")
        return 0
    if a.cmd == "video-project":
        import rlxf.tasks.render  # noqa: F401  (off-screen GL before mujoco starts)
        from rlxf.app.project import init_project

        if not (Path(a.project) / "project.json").exists():
            owner = init_project(a.project, "preference", seed=a.seed)
            print(f"created preference project in {a.project}; owner token: {owner}")
        n = add_video_matches(a.project, reacher_agents(seed=a.seed), a.matches, seed=a.seed)
        print(f"added {n} episode-pair items with their GIFs in {Path(a.project) / 'videos'}; next: "
              f"rlxf label add-labeler --project {a.project} NAME, then rlxf label serve --project {a.project}")
        return 0
    rows = table_from_project(a.project)
    print(format_table(rows) if rows else f"{a.project}: no video items yet")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
