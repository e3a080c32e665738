"""Game On: a language model as the RL experimenter, proposing curricula and keeping a skill library.

Zhang et al., "Game On: Towards Language Models as RL Experimenters" (2024). An LM runs the experiment
instead of a person, in three modules; here each is a small piece of code around rlxf control PPO:

- **Curriculum** (:func:`experimenter_prompt`, :func:`parse_proposal`): every round the experimenter (any
  :class:`~rlxf.labelers.roles.TextModel`) reads the goal, the task menu, the skill library and the recent
  results as text, and replies ``TASK level-<d> FROM <start>``: the next task, and where training starts
  (``current`` policy, a library skill ``level-<k>``, or ``scratch``). A reply that does not parse is an
  event, counted in ``invalid``: the round then continues the last task from the current policy.
- **Embodiment** (:class:`GameOn`): loads the chosen start, sets the task on the vector env, and runs PPO
  (:class:`~rlxf.algorithms.control.ppo.PPO`, unchanged) for ``round_steps`` env steps as its tool.
- **Analysis** (:func:`results_text`): success is read off the training episodes themselves (no extra env
  steps) and reported as text; a task whose success reaches ``learned_at`` is stored in the skill library
  (its parameters and success), which only grows.

The control task (:class:`MazeExit`) has a difficulty knob: find the exit of a fixed maze from a start
``level`` distance bands away, within the start's distance plus ``slack`` steps, reward 1 on arrival and 0
otherwise, so a far start is rarely solved by exploring from scratch. The baselines are fixed curricula
(:func:`baselines`): the ladder (levels 1..L in order, equal rounds each, blind to results) and uniform
level sampling. All arms train for the same env steps and are scored by the final greedy policy's success
on the farthest level on held-out episodes (:func:`compare`; ``python -m rlxf.agents.game_on`` prints the
table).

:func:`simulated_experimenter` plays the experimenter from the prompt alone: continue a task while its
success is in between, move one level up from the hardest learned skill once a task is learned, and step
back halfway when a task gives almost no success; with probability ``error`` it proposes a random task
from a random start instead. Differences from the paper: a maze task instead of block stacking, PPO on
the current task instead of re-training PAC offline on all data, a rule for "learned" instead of a VLM
reading learning curves, and tasks that are single skills (no decomposition into skill sequences).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
from torch import Tensor

from rlxf.agents.tasks.maze import distances
from rlxf.algorithms.control.ppo import PPO, PPOConfig
from rlxf.algorithms.control.rollout import Rollout, evaluate
from rlxf.algorithms.evaluate import mean_se
from rlxf.labelers.roles import SimulatedRole, TextModel

MOVES = ((0, -1), (0, 1), (-1, 0), (1, 0))  # up, down, left, right
STARTS = ("current", "scratch")  # the non-library starting points a proposal may name


class MazeExit(gym.Env):
    """Find the exit of a fixed maze from a start ``level`` bands away. The maze is a perfect maze on a
    ``size`` x ``size`` grid (randomised depth-first search from ``maze_seed``) with the exit in the
    bottom-right corner; cells are grouped into ``levels`` bands by their path distance to the exit, and an
    episode of level ``d`` starts on a random cell of band ``d`` (the farthest band is ``levels``). Reward 1
    and termination on reaching the exit; truncation after the start's distance plus ``slack`` steps, so a
    far start is rarely solved by exploring. A move into a wall stays put. The observation is the one-hot
    cell. ``level`` may be changed between episodes (the next reset uses it); ``None`` draws a level
    uniformly for every episode."""

    def __init__(self, level: int | None = 1, levels: int = 6, size: int = 6, slack: int = 4, maze_seed: int = 0):
        if size < 2 or slack < 0 or levels < 1:
            raise ValueError(f"maze_exit: need size >= 2, slack >= 0 and levels >= 1, got size={size}, "
                             f"slack={slack}, levels={levels}")
        self.size, self.levels, self.slack = size, levels, slack
        self.open = _perfect_maze(size, random.Random(f"maze|{maze_seed}"))
        self.exit = (size - 1, size - 1)
        self.distance = _distances(self.open, self.exit)
        far = max(self.distance.values())
        if far < levels:
            raise ValueError(f"maze_exit: the maze's farthest cell is {far} moves from the exit, fewer than "
                             f"levels={levels}; use fewer levels or a larger size")
        self.bands = [sorted(c for c, k in self.distance.items() if far * (d - 1) / levels < k <= far * d / levels)
                      for d in range(1, levels + 1)]
        self.level = level
        self._check_level()
        self.observation_space = gym.spaces.Box(0.0, 1.0, (size * size,), np.float32)
        self.action_space = gym.spaces.Discrete(4)
        self.rng = random.Random(0)
        self.pos = self.exit
        self.t = self.limit = 0

    def _check_level(self) -> None:
        if self.level is not None and not 1 <= self.level <= self.levels:
            raise ValueError(f"maze_exit: level must be in 1..{self.levels}, got {self.level}")

    def _obs(self) -> np.ndarray:
        obs = np.zeros(self.size * self.size, dtype=np.float32)
        obs[self.pos[1] * self.size + self.pos[0]] = 1.0
        return obs

    def reset(self, *, seed: int | None = None, options=None):
        super().reset(seed=seed)
        if seed is not None:
            self.rng = random.Random(seed)
        self._check_level()
        level = self.level or self.rng.randint(1, self.levels)
        self.pos = self.rng.choice(self.bands[level - 1])
        self.t, self.limit = 0, self.distance[self.pos] + self.slack
        return self._obs(), {}

    def step(self, action):
        mx, my = MOVES[int(action)]
        nxt = (self.pos[0] + mx, self.pos[1] + my)
        if nxt in self.open[self.pos]:
            self.pos = nxt
        self.t += 1
        arrived = self.pos == self.exit
        return self._obs(), float(arrived), arrived, not arrived and self.t >= self.limit, {}


def _perfect_maze(size: int, rng: random.Random) -> dict[tuple[int, int], set[tuple[int, int]]]:
    """Open passages of a maze carved by randomised depth-first search: every cell reachable by one path."""
    cells = [(x, y) for x in range(size) for y in range(size)]
    passages: dict[tuple[int, int], set[tuple[int, int]]] = {c: set() for c in cells}
    stack, seen = [(0, 0)], {(0, 0)}
    while stack:
        x, y = stack[-1]
        nbrs = [(x + dx, y + dy) for dx, dy in MOVES if (x + dx, y + dy) in passages and (x + dx, y + dy) not in seen]
        if not nbrs:
            stack.pop()
            continue
        nxt = rng.choice(nbrs)
        passages[(x, y)].add(nxt)
        passages[nxt].add((x, y))
        seen.add(nxt)
        stack.append(nxt)
    return passages


def _distances(passages: dict, goal: tuple[int, int]) -> dict[tuple[int, int], int]:
    """Moves from every cell to ``goal``, by the text maze's breadth-first search on the maze drawn at double
    scale (cell (x, y) at (2x, 2y), each passage as the open cell between its two cells)."""
    grid = {(2 * x, 2 * y) for x, y in passages} | {(a[0] + b[0], a[1] + b[1]) for a, nbrs in passages.items() for b in nbrs}
    doubled = distances(grid, (2 * goal[0], 2 * goal[1]))
    return {(x, y): doubled[(2 * x, 2 * y)] // 2 for x, y in passages}


def task_name(d: int | None) -> str:
    """``level-<d>``; ``level-mix`` (``None``) draws a level uniformly for every episode."""
    return "level-mix" if d is None else f"level-{d}"


def fixed_curriculum(rounds: int, target: int) -> list[int]:
    """The baseline schedule: levels 1..``target`` in order, each trained for an equal share of the rounds."""
    if rounds < target:
        raise ValueError(f"fixed_curriculum: rounds ({rounds}) must be >= the number of levels ({target})")
    return [1 + i * target // rounds for i in range(rounds)]


# -- the curriculum module: prompt, parse, and a simulated experimenter -----------------------------------

@dataclass
class Result:
    """One training round as the analysis module reports it."""

    task: int | None  # None: level-mix
    start: str
    steps: int
    episodes: int
    successes: int

    @property
    def success(self) -> float:
        return self.successes / max(self.episodes, 1)


def results_text(r: Result) -> str:
    return (f"{task_name(r.task)} from {r.start}, {r.steps} steps, {r.episodes} episodes, "
            f"success {r.success:.2f}")


def experimenter_prompt(target: int, library: dict[int, float], history: list[Result], steps_left: int,
                        show: int = 4) -> str:
    """What the experimenter reads each round: goal, task menu, skill library, the last ``show`` results."""
    lib = ", ".join(f"{task_name(d)} ({s:.2f})" for d, s in sorted(library.items())) or "empty"
    recent = "\n".join(f"- {results_text(r)}" for r in history[-show:]) or "- none yet"
    return (f"You run a reinforcement-learning experiment. Goal: a policy that succeeds on {task_name(target)}.\n"
            f"Tasks: level-1 to {task_name(target)} (start in that distance band from the maze exit; higher is farther and harder), "
            f"or level-mix (a level drawn at random for every episode).\n"
            f"Skill library: {lib}\n"
            f"Recent training rounds:\n{recent}\n"
            f"Environment steps left: {steps_left}\n"
            f"Choose the next task to train and where to start: the current policy, a library skill, or scratch.\n"
            f"Answer with one line: TASK level-<n> FROM <current|scratch|level-<k>>")


_PROPOSAL = re.compile(r"TASK\s+level-(\d+|mix)\s+FROM\s+(current|scratch|level-(\d+))", re.IGNORECASE)


def parse_proposal(reply: str, target: int, library: dict[int, float]) -> tuple[int | None, str] | None:
    """``(task, start)`` from ``TASK level-<d> FROM <start>``, or None when the reply has no such line, the
    task is off the menu, or the start names a skill that is not in the library."""
    m = _PROPOSAL.search(reply)
    if m is None:
        return None
    task = None if m.group(1).lower() == "mix" else int(m.group(1))
    start = m.group(2).lower()
    if task is not None and not 1 <= task <= target:
        return None
    if m.group(3) is not None:
        if int(m.group(3)) not in library:
            return None
        start = task_name(int(m.group(3)))
    return task, start


def _read_prompt(prompt: str) -> tuple[int, dict[int, float], list[tuple[int | None, float]]]:
    """Target, library and recent ``(task, success)`` pairs, read back from :func:`experimenter_prompt`."""
    target = int(re.search(r"succeeds on level-(\d+)", prompt).group(1))
    lib_line = re.search(r"Skill library: (.*)", prompt).group(1)
    library = {int(d): float(s) for d, s in re.findall(r"level-(\d+) \(([\d.]+)\)", lib_line)}
    recent = [(None if d == "mix" else int(d), float(s))
              for d, s in re.findall(r"- level-(\d+|mix) from .*success ([\d.]+)", prompt)]
    return target, library, recent


def curriculum_rule(prompt: str, learned_at: float = 0.8, hopeless: float = 0.1) -> str:
    """The experimenter a perfect role plays (the toy check's rule): continue a task whose last success is in
    between; once it is learned, go one level above the hardest learned skill, starting from that skill; when a
    task more than one level above the library gives almost no success, step back halfway toward the hardest
    learned skill, starting from it (the next level up is never given up on: it continues from the current policy)."""
    target, library, recent = _read_prompt(prompt)
    best = max(library, default=0)
    start = task_name(best) if best else "current"
    if not recent:
        return "TASK level-1 FROM current"
    task, success = recent[-1]
    if task is None or success >= learned_at or task <= best:
        nxt = min(best + 1, target)
        return f"TASK {task_name(nxt)} FROM {start if nxt > best else 'current'}"
    if success <= hopeless and task > best + 1:
        return f"TASK {task_name(max(best + 1, (best + task) // 2))} FROM {start}"
    return f"TASK {task_name(task)} FROM current"


def simulated_experimenter(error: float = 0.0, seed: int = 0, learned_at: float = 0.8) -> SimulatedRole:
    """:func:`curriculum_rule` as a role; with probability ``error`` a random task from a random start."""

    def wrong(prompt: str, right: str, rng: random.Random) -> str:
        target, library, _ = _read_prompt(prompt)
        starts = list(STARTS) + [task_name(d) for d in library]
        return f"TASK level-{rng.randint(1, target)} FROM {rng.choice(starts)}"

    return SimulatedRole(right=lambda p: curriculum_rule(p, learned_at), wrong=wrong, error=error, seed=seed)


class FixedCurriculum:
    """The baseline as a :class:`TextModel`: replies with the next task of a fixed schedule, from the current
    policy, whatever the prompt says."""

    def __init__(self, schedule: list[int | None]):
        self.schedule, self.calls = schedule, 0

    def complete(self, requests: list[str]) -> list[str]:
        out = []
        for _ in requests:
            out.append(f"TASK {task_name(self.schedule[min(self.calls, len(self.schedule) - 1)])} FROM current")
            self.calls += 1
        return out


# -- the embodiment and analysis modules ------------------------------------------------------------------

@dataclass
class GameOnConfig:
    """Budget and task: ``rounds`` rounds of ``round_steps`` env steps on a ``size`` x ``size`` maze of ``levels``
    levels. PPO: 8 envs x 32 steps, 10 epochs, gamma 0.95, lambda 0.9, an entropy bonus of 0.01, 32 hidden units,
    and no lr or clip annealing (a round does not know when the experiment ends)."""

    levels: int = 6  # the target task is the farthest level
    size: int = 6
    slack: int = 4
    rounds: int = 16
    round_steps: int = 1024
    learned_at: float = 0.8
    ppo: PPOConfig = field(default_factory=lambda: PPOConfig(n_envs=8, n_steps=32, epochs=10, minibatch_size=256,
                                                             lr=1e-3, gamma=0.95, lam=0.9, anneal=False,
                                                             ent_coef=0.01, hidden=32))
    seed: int = 0

    def __post_init__(self):
        if self.round_steps % (self.ppo.n_envs * self.ppo.n_steps):
            raise ValueError(f"game_on.round_steps ({self.round_steps}) must be a multiple of one rollout "
                             f"(n_envs * n_steps = {self.ppo.n_envs * self.ppo.n_steps})")
        if not 0.0 <= self.learned_at <= 1.0:
            raise ValueError(f"game_on.learned_at must be in [0, 1], got {self.learned_at}")


@dataclass
class Skill:
    task: int
    success: float
    params: Tensor  # the actor's and critic's parameters, flat


class GameOn:
    """The experiment loop: each round the experimenter proposes, PPO trains, the analysis reports back."""

    def __init__(self, cfg: GameOnConfig, experimenter: TextModel):
        self.cfg, self.experimenter = cfg, experimenter
        ppo_cfg = PPOConfig(**{**cfg.ppo.__dict__, "seed": cfg.seed, "total_steps": 0})
        self.ppo = PPO(ppo_cfg, self.make_env)
        self.envs: list[MazeExit] = [e.unwrapped for e in self.ppo.env.envs.envs]
        self.scratch = self.ppo.flat.param.detach().clone()
        self.library: dict[int, Skill] = {}
        self.history: list[Result] = []
        self.prompts: list[str] = []
        self.replies: list[str] = []
        self.invalid = 0
        self._counts = [0, 0]  # episodes ended, successes, in the current round

    def make_env(self, level: int = 1) -> MazeExit:
        """The seed's maze at ``level`` (every arm and evaluation of a seed sees the same maze)."""
        cfg = self.cfg
        return MazeExit(level, cfg.levels, cfg.size, cfg.slack, maze_seed=cfg.seed)

    def _count(self, ppo: PPO, ro: Rollout) -> Tensor:
        """PPO's reward hook, used only to watch: count the round's finished episodes and arrivals."""
        self._counts[0] += int((ro.done & ro.valid).sum())
        self._counts[1] += int((ro.terminated & ro.valid).sum())
        return ro.rewards

    def _load(self, start: str) -> None:
        if start == "current":
            return
        params = self.scratch if start == "scratch" else self.library[int(start.split("-")[1])].params
        self.ppo.flat.param.data.copy_(params)
        self.ppo.opt.state.clear()  # a fresh start: no Adam moments from another task

    def round(self) -> Result:
        cfg = self.cfg
        steps_left = (cfg.rounds - len(self.history)) * cfg.round_steps
        library = {d: s.success for d, s in self.library.items()}
        prompt = experimenter_prompt(cfg.levels, library, self.history, steps_left)
        reply = self.experimenter.complete([prompt])[0]
        self.prompts.append(prompt)
        self.replies.append(reply)
        proposal = parse_proposal(reply, cfg.levels, library)
        if proposal is None:
            self.invalid += 1
            proposal = (self.history[-1].task if self.history else 1, "current")
        task, start = proposal
        self._load(start)
        for env in self.envs:
            env.level = task
        self.ppo.obs = self.ppo.env.reset()  # episodes of the old task are dropped, not scored
        self._counts = [0, 0]
        self.ppo.cfg.total_steps += cfg.round_steps
        self.ppo.learn(self._count)
        result = Result(task, start, cfg.round_steps, *self._counts)
        self.history.append(result)
        known = self.library.get(task)
        if task is not None and result.success >= cfg.learned_at and (known is None or result.success > known.success):
            self.library[task] = Skill(task, result.success, self.ppo.flat.param.detach().clone())
        return result

    def run(self) -> list[Result]:
        while len(self.history) < self.cfg.rounds:
            self.round()
        return self.history

    def success(self, task: int | None = None, n_episodes: int = 200, seed: int = 10_000) -> np.ndarray:
        """Per-episode success (1 or 0) of the current greedy policy on ``task`` (default the target), on
        ``n_episodes`` fresh episodes seeded from ``seed``."""
        cfg = self.cfg
        return evaluate(self.ppo.policy, lambda: self.make_env(task or cfg.levels), n_episodes, seed)


def baselines(cfg: GameOnConfig) -> dict[str, FixedCurriculum]:
    """The fixed curricula: the ladder of levels in order (equal rounds each) and uniform level sampling."""
    return {"ladder": FixedCurriculum(fixed_curriculum(cfg.rounds, cfg.levels)), "uniform": FixedCurriculum([None])}


def compare(cfg: GameOnConfig, arms: dict[str, TextModel], n_episodes: int = 200, seed: int = 10_000) -> dict:
    """Run each arm's experiment for the same env steps; per-episode target success of each final greedy policy
    on the same held-out episodes (``success``), with each arm's finished :class:`GameOn` (``games``)."""
    games = {name: GameOn(cfg, model) for name, model in arms.items()}
    for game in games.values():
        game.run()
    return {"success": {k: g.success(n_episodes=n_episodes, seed=seed) for k, g in games.items()}, "games": games}


def main(seeds=(0, 1, 2), error: float = 0.1) -> None:
    """Print the comparison table: target success per seed for Game On and the two fixed curricula."""
    print("| seed | Game On | ladder | uniform | Game On - ladder | library | invalid replies |")
    print("|---|---|---|---|---|---|---|")
    for seed in seeds:
        cfg = GameOnConfig(seed=seed)
        out = compare(cfg, {"game_on": simulated_experimenter(error, seed, cfg.learned_at), **baselines(cfg)})
        s, game = out["success"], out["games"]["game_on"]
        gain, se = mean_se(s["game_on"] - s["ladder"])
        print(f"| {seed} | {s['game_on'].mean():.3f} | {s['ladder'].mean():.3f} | {s['uniform'].mean():.3f} | "
              f"{gain:+.3f} ({se:.3f}) | {', '.join(map(task_name, sorted(game.library))) or '-'} | {game.invalid} |")


__all__ = ["FixedCurriculum", "baselines", "GameOn", "GameOnConfig", "MazeExit", "Result", "Skill", "compare",
           "curriculum_rule", "experimenter_prompt", "fixed_curriculum", "parse_proposal", "results_text",
           "simulated_experimenter"]

if __name__ == "__main__":
    main()
