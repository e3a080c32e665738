"""A sparse-reward key-and-door grid that writes an event caption on every step, like NetHack's message line.

ONI's setting in miniature: the agent is a gymnasium controller (flat observation, four moves), the only
environment reward is +1 for climbing the stairs, and every step leaves a caption ("you pick up the red
key", "the red door is locked", "you bump into the stone wall", "" for a plain move) that an LM can judge
without seeing the game. Layout: a ``width`` x ``height`` room cut in two by a wall with one locked door;
the agent starts anywhere in the left half, the key lies in its top-left corner and the stairs in the
bottom-right corner of the right half, so only the start is random. Stepping on the key picks
it up, walking into the door with the key unlocks it (the door cell then becomes floor), and reaching the
stairs ends the episode. Episodes are truncated (not terminated) after ``max_steps``. The door and key
colour and the wall material are drawn per episode, so the captions an agent sees keep changing.

The env keeps every step's caption in ``captions`` (cleared only by :meth:`take_captions`), so a learner
that steps a vector of these envs can read the captions of its rollout afterwards.
"""

from __future__ import annotations

import random
from collections import deque

import gymnasium as gym
import numpy as np

MOVES = ((0, -1), (0, 1), (-1, 0), (1, 0))  # up, down, left, right
COLOURS = ("red", "blue", "green", "yellow", "purple", "white", "black", "orange")
MATERIALS = ("stone", "brick", "wooden", "mossy")
SOUNDS = ("a distant bell", "water dripping", "a door creak", "footsteps")
PROGRESS = ("pick up", "unlock", "stairs")  # the caption phrases that mean progress toward the goal


class CaptionGrid(gym.Env):
    """The key-and-door grid (see the module docstring). ``noise`` is the chance per step of a flavour
    caption ("you hear water dripping") on an otherwise silent move."""

    def __init__(self, width: int = 7, height: int = 5, max_steps: int = 40, noise: float = 0.05):
        if width < 5 or width % 2 == 0 or height < 2:
            raise ValueError(f"caption_grid: width must be odd and >= 5 and height >= 2, got {width} x {height}")
        if max_steps < 1:
            raise ValueError(f"caption_grid: max_steps must be >= 1, got {max_steps}")
        self.width, self.height, self.max_steps, self.noise = width, height, max_steps, noise
        self.wall_x = width // 2
        self.door = (self.wall_x, height // 2)
        self.key, self.stairs = (0, 0), (width - 1, height - 1)
        self.observation_space = gym.spaces.Box(0.0, 1.0, (width * height + 2,), np.float32)
        self.action_space = gym.spaces.Discrete(4)
        self.captions: list[str] = []
        self.rng = random.Random(0)
        self.pos = (0, 0)
        self.has_key = self.door_open = False
        self.t = 0
        self.colour, self.material = COLOURS[0], MATERIALS[0]

    # -- gymnasium ---------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options=None):
        super().reset(seed=seed)
        if seed is not None:
            self.rng = random.Random(seed)
        self.pos = self.rng.choice([(x, y) for x in range(self.wall_x) for y in range(self.height) if (x, y) != self.key])
        self.colour, self.material = self.rng.choice(COLOURS), self.rng.choice(MATERIALS)
        self.has_key = self.door_open = False
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        dx, dy = MOVES[int(action)]
        x, y = self.pos[0] + dx, self.pos[1] + dy
        caption, reward, terminated = "", 0.0, False
        if not (0 <= x < self.width and 0 <= y < self.height) or (x == self.wall_x and (x, y) != self.door):
            caption = f"you bump into the {self.material} wall"
        elif (x, y) == self.door and not self.door_open:
            if self.has_key:
                self.door_open = True
                caption = f"you unlock the {self.colour} door"
            else:
                caption = f"the {self.colour} door is locked"
        else:
            self.pos = (x, y)
            if self.pos == self.key and not self.has_key:
                self.has_key = True
                caption = f"you pick up the {self.colour} key"
            elif self.pos == self.stairs:
                caption, reward, terminated = "you climb the stairs", 1.0, True
            elif self.rng.random() < self.noise:
                caption = f"you hear {self.rng.choice(SOUNDS)}"
        self.t += 1
        self.captions.append(caption)
        truncated = not terminated and self.t >= self.max_steps
        return self._obs(), reward, terminated, truncated, {"caption": caption}

    # -- helpers -----------------------------------------------------------------------------------
    def _obs(self) -> np.ndarray:
        obs = np.zeros(self.width * self.height + 2, np.float32)
        obs[self._cell(self.pos)] = 1.0
        obs[-2:] = float(self.has_key), float(self.door_open)
        return obs

    def _cell(self, p: tuple[int, int]) -> int:
        return p[1] * self.width + p[0]

    def take_captions(self, n: int) -> list[str]:
        """The captions of the last ``n`` steps, oldest first; everything logged so far is forgotten."""
        if n > len(self.captions):
            raise ValueError(f"caption_grid: asked for the last {n} captions but only {len(self.captions)} were logged")
        out = self.captions[len(self.captions) - n :]
        self.captions = []
        return out

    def expert_action(self) -> int:
        """A shortest-path move toward the key, then the door, then the stairs (the optimal policy)."""
        target = self.stairs if self.door_open else (self.door if self.has_key else self.key)
        return self._first_move(target)

    def _first_move(self, target: tuple[int, int]) -> int:
        """Breadth-first search over passable cells (the target itself always counts as reachable)."""
        start, seen = self.pos, {self.pos: None}
        queue = deque([start])
        while queue:
            cur = queue.popleft()
            if cur == target:
                break
            for a, (dx, dy) in enumerate(MOVES):
                nxt = (cur[0] + dx, cur[1] + dy)
                if nxt in seen or not (0 <= nxt[0] < self.width and 0 <= nxt[1] < self.height):
                    continue
                if nxt[0] == self.wall_x and (nxt != self.door or (not self.door_open and nxt != target)):
                    continue
                seen[nxt] = (cur, a)
                queue.append(nxt)
        move, cur = 0, target
        while seen.get(cur) is not None:
            cur, move = seen[cur]
        return move

    def words(self) -> list[str]:
        """Every word a caption can contain (the vocabulary of a bag-of-words caption model)."""
        text = " ".join(["you bump into the wall unlock door the is locked pick up key climb stairs hear",
                         *COLOURS, *MATERIALS, *SOUNDS])
        return sorted(set(text.split()))


def make(width: int = 7, height: int = 5, max_steps: int = 40, noise: float = 0.05) -> CaptionGrid:
    return CaptionGrid(width, height, max_steps, noise)
