"""Tabletop2D: a small grid world of a gripper, coloured objects and bins, with tasks given as text.

The table is a ``WIDTH x HEIGHT`` grid. Three bins sit on its edge (``PLACES``: "left bin", "right
bin", "top bin"); objects start on free cells of the interior and the gripper anywhere inside. A task is
one or more goals ``(object, place)`` done in order, written as text::

    put the red block in the left bin and the blue block in the top bin

Actions (``Discrete(6)``): 0 up, 1 down, 2 left, 3 right, 4 grasp, 5 release. Grasp picks up the
object under the gripper (not one already in a bin) when the gripper's grasp height, a primitive
parameter set with :meth:`Tabletop2D.set_params`, is within ``GRASP_TOL`` of the object's own
``grasp_height``; otherwise it slips (``info["slip"]`` says "high" or "low"). Release over a bin drops
the held object in it, except that a fragile object released without ``gentle`` bounces back onto
the cell beside the bin (``info["bounced"]``); release elsewhere puts it down on a free cell. Putting
an object in a bin the goals do not ask for ends the episode as a failure; meeting every goal ends it
with reward 1 (so the return is the success). ``horizon`` steps per goal truncate it.

Observation (floats in [0, 1]): the gripper's cell, per object its cell and whether it is held, then
the current goal (the first unmet one) as one-hot object and one-hot place. ``scripted_action`` is the
demonstrator (it reads the env's state).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

WIDTH, HEIGHT = 7, 5
PLACES = {"left bin": (0, 2), "right bin": (WIDTH - 1, 2), "top bin": (3, HEIGHT - 1)}
PLACE_NAMES = tuple(PLACES)
MOVES = ((0, 1), (0, -1), (-1, 0), (1, 0))  # up, down, left, right
GRASP, RELEASE = 4, 5
GRASP_TOL = 0.15
DEFAULT_PARAMS = {"height": 0.5, "gentle": False}


@dataclass(frozen=True)
class ObjectSpec:
    """An object's words (what a task or a knowledge key says) and its hidden physical needs."""

    colour: str
    shape: str
    material: str = "wooden"
    grasp_height: float = 0.5  # the gripper height that holds it
    fragile: bool = False  # bounces out of a bin unless released gently

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"

    @property
    def description(self) -> str:
        return f"{self.colour} {self.material} {self.shape}"


BLOCKS = (ObjectSpec("red", "block"), ObjectSpec("green", "block"), ObjectSpec("blue", "block"))

Goal = tuple[int, int]  # (object index, place index)
Task = tuple[Goal, ...]


def task_text(task: Task, objects=BLOCKS) -> str:
    """``put the red block in the left bin and the blue block in the top bin``."""
    parts = [f"the {objects[o].name} in the {PLACE_NAMES[p]}" for o, p in task]
    return "put " + " and ".join(parts)


_GOAL = re.compile(r"the (\w+ \w+) in the (\w+ bin)")


def parse_task(text: str, objects=BLOCKS) -> Task:
    """The goals a task text asks for; unknown objects or places are a ValueError naming them."""
    names = [o.name for o in objects]
    found = _GOAL.findall(text)
    if not text.startswith("put ") or not found:
        raise ValueError(f"task text {text!r}: expected 'put the <object> in the <place> [and ...]'")
    goals = []
    for obj, place in found:
        if obj not in names or place not in PLACES:
            raise ValueError(f"task text {text!r}: unknown object {obj!r} or place {place!r}; "
                             f"objects {names}, places {list(PLACE_NAMES)}")
        goals.append((names.index(obj), PLACE_NAMES.index(place)))
    return tuple(goals)


class Tabletop2D(gym.Env):
    metadata = {"render_modes": []}

    def __init__(self, tasks: list[Task] | tuple[Task, ...] = (((0, 0),),), objects=BLOCKS, horizon: int = 25):
        if not tasks:
            raise ValueError("Tabletop2D: tasks must hold at least one task")
        for task in tasks:
            for o, p in task:
                if not (0 <= o < len(objects) and 0 <= p < len(PLACES)):
                    raise ValueError(f"Tabletop2D: goal {(o, p)} names no object (0..{len(objects) - 1}) "
                                     f"or place (0..{len(PLACES) - 1})")
        self.tasks, self.objects, self.horizon = list(tasks), tuple(objects), horizon
        n = len(self.objects)
        self.observation_space = gym.spaces.Box(0.0, 1.0, (2 + 3 * n + n + len(PLACES),), np.float32)
        self.action_space = gym.spaces.Discrete(6)
        self.params = dict(DEFAULT_PARAMS)
        self.task: Task = self.tasks[0]

    # -- state ------------------------------------------------------------
    def set_params(self, height: float | None = None, gentle: bool | None = None) -> None:
        """Set the primitives' parameters: the grasp height (0 bottom .. 1 top) and gentle release."""
        if height is not None:
            self.params["height"] = float(np.clip(height, 0.0, 1.0))
        if gentle is not None:
            self.params["gentle"] = bool(gentle)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        options = options or {}
        drawn = self.np_random.integers(len(self.tasks))  # drawn either way, so a given task leaves the rest alike
        self.task = tuple(options["task"]) if "task" in options else self.tasks[drawn]
        cells = [(x, y) for x in range(1, WIDTH - 1) for y in range(HEIGHT - 1)]
        pick = self.np_random.choice(len(cells), len(self.objects), replace=False)
        self.pos = np.array([cells[i] for i in pick], dtype=np.int64)
        self.gripper = np.array(cells[self.np_random.integers(len(cells))], dtype=np.int64)
        self.held: int | None = None
        self.in_bin: list[int | None] = [None] * len(self.objects)
        self.params = dict(DEFAULT_PARAMS)
        self.t = 0
        return self._obs(), {"task": self.task}

    def goal(self) -> Goal | None:
        """The first goal not met yet (None when all are)."""
        return next(((o, p) for o, p in self.task if self.in_bin[o] != p), None)

    def _obs(self) -> np.ndarray:
        scale = np.array([WIDTH - 1, HEIGHT - 1], dtype=np.float32)
        parts = [self.gripper / scale]
        for i in range(len(self.objects)):
            parts += [self.pos[i] / scale, [float(self.held == i)]]
        goal = self.goal()
        onehot_o, onehot_p = np.zeros(len(self.objects)), np.zeros(len(PLACES))
        if goal is not None:
            onehot_o[goal[0]], onehot_p[goal[1]] = 1.0, 1.0
        return np.concatenate(parts + [onehot_o, onehot_p]).astype(np.float32)

    def _object_at(self, cell) -> int | None:
        return next((i for i in range(len(self.objects))
                     if self.in_bin[i] is None and i != self.held and tuple(self.pos[i]) == tuple(cell)), None)

    def step(self, action):
        action = int(action)
        if not 0 <= action < 6:
            raise ValueError(f"Tabletop2D: action {action} outside 0..5")
        self.t += 1
        info: dict = {}
        if action < 4:
            self.gripper = np.clip(self.gripper + MOVES[action], 0, [WIDTH - 1, HEIGHT - 1])
            if self.held is not None:
                self.pos[self.held] = self.gripper
        elif action == GRASP and self.held is None:
            i = self._object_at(self.gripper)
            if i is not None:
                need = self.objects[i].grasp_height
                if abs(self.params["height"] - need) <= GRASP_TOL + 1e-9:
                    self.held = i
                else:
                    info["slip"] = "high" if self.params["height"] > need else "low"
        elif action == RELEASE and self.held is not None:
            i, cell = self.held, tuple(self.gripper)
            bins = [p for p, c in enumerate(PLACES.values()) if c == cell]
            if bins and self.objects[i].fragile and not self.params["gentle"]:
                inward = np.sign(np.array([WIDTH // 2, HEIGHT // 2]) - self.gripper)
                self.pos[i] = self.gripper + inward
                self.held, info["bounced"] = None, True
            elif bins:
                self.in_bin[i], self.held = bins[0], None
            elif self._object_at(cell) is None:
                self.held = None
        wanted = dict(self.task)
        wrong = any(b is not None and wanted.get(i) != b for i, b in enumerate(self.in_bin))
        success = not wrong and self.goal() is None
        if wrong:
            info["wrong"] = True
        truncated = not (wrong or success) and self.t >= self.horizon * len(self.task)
        return self._obs(), float(success), wrong or success, truncated, info


def scripted_action(env: Tabletop2D) -> int:
    """The demonstrator's action: to the goal object (along x, then y), grasp, to the goal's bin, release."""
    goal = env.goal()
    if goal is None:
        return RELEASE
    obj, place = goal
    target = PLACES[PLACE_NAMES[place]] if env.held == obj else tuple(env.pos[obj])
    if env.held is not None and env.held != obj:
        return RELEASE
    return move_toward(env.gripper, target, GRASP if env.held is None else RELEASE)


def move_toward(cell, target, arrive: int) -> int:
    """The move that brings ``cell`` one step closer to ``target`` (x first), or ``arrive`` when there."""
    dx, dy = int(target[0] - cell[0]), int(target[1] - cell[1])
    if dx:
        return 3 if dx > 0 else 2
    if dy:
        return 0 if dy > 0 else 1
    return arrive


def split_combos(n_objects: int = 3, n_places: int = 3) -> tuple[list[Task], list[Task]]:
    """Single-goal tasks split so every object and place is seen, but the pairs ``o == p`` (mod) are
    held out: (seen, unseen)."""
    seen = [((o, p),) for o in range(n_objects) for p in range(n_places) if (o - p) % n_places]
    unseen = [((o, p),) for o in range(n_objects) for p in range(n_places) if not (o - p) % n_places]
    return seen, unseen


__all__ = ["BLOCKS", "DEFAULT_PARAMS", "GRASP", "GRASP_TOL", "HEIGHT", "ObjectSpec", "PLACES", "PLACE_NAMES",
           "RELEASE", "Tabletop2D", "WIDTH", "move_toward", "parse_task", "scripted_action", "split_combos",
           "task_text"]
