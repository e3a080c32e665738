"""A text maze with full (FO) or partial (PO) observation, after LMRL-Gym's maze task.

The default layout is LMRL-Gym's "double T" maze (10 x 13, goal at row 8 column 6; its dead-end arms make
suboptimal data that value methods can stitch). Actions are ``move up|down|left|right``; moving into a wall
is a legal move that leaves the agent where it was. Rewards follow LMRL-Gym's standard reward: -1 per move,
0 on the move that reaches the goal (which ends the episode), ``invalid_penalty`` (-4) for text that is not
one of the four moves. So from a cell ``d`` moves from the goal the best return is ``-(d - 1)``.

- FO (``maze``): every observation gives the goal, the agent's position and the adjacent walls,
  e.g. ``goal 8 6 position 1 1 walls up down left``.
- PO (``maze_po``): only the adjacent walls (``walls up down left``); the agent must work out where it is
  from the history of its moves.

An episode starts at a uniformly random open cell other than the goal (LMRL-Gym's reset), drawn from the
reset seed, or at a fixed ``start``. LMRL-Gym allows 100 moves; the default here is 25, which keeps episodes
short enough for tiny models (the farthest cell of the double T is 12 moves away).
"""

from __future__ import annotations

import random
from collections import deque

from rlxf.agents.env import TextEnv

Cell = tuple[int, int]

LAYOUTS: dict[str, list[str]] = {
    # '#' wall, '.' open, 'G' goal (open); rows top to bottom
    "double_t": [
        "#############",
        "#.....#.....#",
        "###.#####.###",
        "###.#####.###",
        "###.#####.###",
        "###.......###",
        "######.######",
        "######.######",
        "######G######",
        "#############",
    ],
}
"""Built-in layouts by name."""

MOVES: dict[str, Cell] = {"up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}
ACTIONS = [f"move {d}" for d in MOVES]

SKILLS = {"expert": 1.0, "noisy": 0.5, "random": 0.0}
"""Skill levels of the scripted datasets (probability of the expert's move per turn; see
:func:`rlxf.agents.episodes.scripted_dataset`)."""


class MazeError(ValueError):
    """A layout or start cell that cannot make a maze."""


def parse_layout(rows: list[str]) -> tuple[set[Cell], Cell]:
    """The open cells and the goal of a layout drawn with ``#``, ``.`` and one ``G``. Checks it is
    rectangular, walled on its border, and that every open cell can reach the goal."""
    if not rows or any(len(r) != len(rows[0]) for r in rows):
        raise MazeError("maze layout: rows must be non-empty strings of equal length")
    open_cells: set[Cell] = set()
    goals = []
    for r, row in enumerate(rows):
        for c, ch in enumerate(row):
            if ch not in "#.G":
                raise MazeError(f"maze layout: row {r} column {c} is {ch!r}; expected '#', '.' or 'G'")
            if ch == "#":
                continue
            if r in (0, len(rows) - 1) or c in (0, len(row) - 1):
                raise MazeError(f"maze layout: row {r} column {c} is open on the border; wall the border with '#'")
            open_cells.add((r, c))
            if ch == "G":
                goals.append((r, c))
    if len(goals) != 1:
        raise MazeError(f"maze layout: expected exactly one goal 'G', found {len(goals)}")
    goal = goals[0]
    unreachable = open_cells - set(distances(open_cells, goal))
    if unreachable:
        raise MazeError(f"maze layout: cells {sorted(unreachable)} cannot reach the goal {goal}")
    return open_cells, goal


def distances(open_cells: set[Cell], goal: Cell) -> dict[Cell, int]:
    """Moves from each reachable open cell to ``goal`` (breadth-first search)."""
    dist = {goal: 0}
    queue = deque([goal])
    while queue:
        r, c = queue.popleft()
        for dr, dc in MOVES.values():
            nxt = (r + dr, c + dc)
            if nxt in open_cells and nxt not in dist:
                dist[nxt] = dist[(r, c)] + 1
                queue.append(nxt)
    return dist


class Maze(TextEnv):
    """The maze; ``observe="full"`` (FO) or ``"partial"`` (PO, walls only)."""

    max_turns = 25
    invalid_penalty = -4.0

    def __init__(self, layout: str | list[str] = "double_t", observe: str = "full",
                 start: Cell | None = None, max_turns: int | None = None, invalid_penalty: float | None = None):
        if observe not in ("full", "partial"):
            raise MazeError(f"maze: observe must be 'full' or 'partial', got {observe!r}")
        self.name = "maze" if observe == "full" else "maze_po"
        super().__init__(max_turns, invalid_penalty)
        if isinstance(layout, str):
            if layout not in LAYOUTS:
                raise MazeError(f"maze: unknown layout {layout!r}; built-in layouts: {', '.join(LAYOUTS)}")
            layout = LAYOUTS[layout]
        self.rows = list(layout)
        self.open, self.goal = parse_layout(self.rows)
        self.dist = distances(self.open, self.goal)
        if start is not None:
            start = (int(start[0]), int(start[1]))
            if start not in self.open or start == self.goal:
                raise MazeError(f"maze: start {start} is not an open cell other than the goal {self.goal}")
        self.start = start
        self.starts = sorted(self.open - {self.goal})
        self.observe = observe
        self.pos = self.start or self.starts[0]

    # -- observations --------------------------------------------------------------------------
    def walls(self, cell: Cell | None = None) -> list[str]:
        """The directions (in :data:`MOVES` order) in which ``cell`` (default: the agent's) has a wall."""
        r, c = cell or self.pos
        return [d for d, (dr, dc) in MOVES.items() if (r + dr, c + dc) not in self.open]

    def _observe(self) -> str:
        walls = "walls " + (" ".join(self.walls()) or "none")
        if self.observe == "partial":
            return walls
        return f"goal {self.goal[0]} {self.goal[1]} position {self.pos[0]} {self.pos[1]} {walls}"

    # -- TextEnv hooks ---------------------------------------------------------------------------
    def _reset(self) -> str:
        self.pos = self.start or self.rng.choice(self.starts)
        return self._observe()

    def parse(self, action: str):
        words = action.lower().split()
        return words[1] if len(words) == 2 and words[0] == "move" and words[1] in MOVES else None

    def _step(self, move: str):
        dr, dc = MOVES[move]
        nxt = (self.pos[0] + dr, self.pos[1] + dc)
        if nxt in self.open:
            self.pos = nxt
        at_goal = self.pos == self.goal
        return self._observe(), 0.0 if at_goal else -1.0, at_goal, {"position": self.pos}

    def success(self) -> bool:
        return self.pos == self.goal

    def expert_action(self) -> str:
        """A shortest-path move (the first in :data:`MOVES` order that gets one step closer)."""
        r, c = self.pos
        for d, (dr, dc) in MOVES.items():
            if self.dist.get((r + dr, c + dc), len(self.dist)) < self.dist[self.pos]:
                return f"move {d}"
        raise RuntimeError(f"{self.name}: no move gets closer from {self.pos} (is the episode over?)")

    def random_action(self, rng: random.Random) -> str:
        return rng.choice(ACTIONS)

    def optimal_return(self, cell: Cell) -> float:
        """The best return from ``cell``: -1 for each move but the last, which reaches the goal for 0."""
        return -float(self.dist[cell] - 1)

    def words(self) -> list[str]:
        numbers = [str(i) for i in range(max(len(self.rows), len(self.rows[0])))]
        return ["goal", "position", "walls", "none", "move", *MOVES, "invalid", "action:", *numbers]


def make(layout: str = "double_t", start: Cell | None = None, max_turns: int = Maze.max_turns) -> Maze:
    """The fully observed maze (``maze``)."""
    return Maze(layout, "full", start, max_turns)


def make_po(layout: str = "double_t", start: Cell | None = None, max_turns: int = Maze.max_turns) -> Maze:
    """The partially observed maze (``maze_po``): walls only, no position or goal."""
    return Maze(layout, "partial", start, max_turns)
