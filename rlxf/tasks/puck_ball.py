"""PuckBall: a small MuJoCo body (a puck on a table, moved by velocity commands) and a ball it pushes.

The physics is a tiny MJCF model (two slide joints each for the puck and the ball; velocity actuators
on the puck; a damped ball), so an env step is a few microseconds of MuJoCo. Three envs share it:

* :class:`SkillImitationEnv` imitates one skill of a state-only demonstration set with SkillMimic's
  unified reward (``rlxf.rewards.imitation``), starting each episode at a random frame of a random clip
  (reference state initialisation) and conditioning the policy on a one-hot skill label;
* :class:`ComposeEnv`, the composite task: push the ball onto a goal that lies diagonally away, which
  needs two pushes in different directions and a walk around the ball between them;
* :class:`SkillSelectEnv`: ComposeEnv seen by a high-level policy whose discrete action picks a
  frozen skill policy that then runs for ``hold`` low-level steps.

The state (also the demonstrations' observation row) is ``[hand xy, ball xy, hand vel, ball vel,
contact]``; policies see the translation-free ``[5 (hand - ball), hand vel, ball vel]`` plus the
skill label or the goal. Demonstrations come from :func:`scripted_command`, rlxf's own state-feedback
controller ("go behind the ball, then push it in direction d"), stored as a TransitionDataset whose
actions are zeros: the learner sees states only.
"""

from __future__ import annotations

import functools

import gymnasium as gym
import numpy as np
import torch

from rlxf.data.transitions import DatasetError, Episode, TransitionDataset
from rlxf.rewards.imitation import ImitationWeights, unified_imitation_reward
from rlxf.tasks import render as _render  # noqa: F401  (picks MuJoCo's off-screen GL before mujoco loads)

XML = """
<mujoco model="puck_ball">
  <option timestep="0.01" integrator="implicitfast"/>
  <visual><global offwidth="320" offheight="320"/></visual>
  <worldbody>
    <light pos="0 0 3" dir="0 0 -1" directional="true"/>
    <camera name="top" pos="0 0 2.0" xyaxes="1 0 0 0 1 0"/>
    <geom name="table" type="plane" size="1.5 1.5 0.05" rgba="0.55 0.6 0.55 1" contype="0" conaffinity="0"/>
    <body name="goal" mocap="true" pos="0 0 0.002">
      <geom type="cylinder" size="0.08 0.002" rgba="0.2 0.8 0.2 0.5" contype="0" conaffinity="0"/>
    </body>
    <body name="hand" pos="0 0 0.05">
      <joint name="hand_x" type="slide" axis="1 0 0"/>
      <joint name="hand_y" type="slide" axis="0 1 0"/>
      <geom name="hand" type="sphere" size="0.05" mass="1" rgba="0.2 0.3 0.9 1"/>
    </body>
    <body name="ball" pos="0 0 0.05">
      <joint name="ball_x" type="slide" axis="1 0 0" damping="0.5"/>
      <joint name="ball_y" type="slide" axis="0 1 0" damping="0.5"/>
      <geom name="ball" type="sphere" size="0.05" mass="0.2" rgba="0.9 0.4 0.1 1"/>
    </body>
  </worldbody>
  <actuator>
    <velocity name="vx" joint="hand_x" kv="20"/>
    <velocity name="vy" joint="hand_y" kv="20"/>
  </actuator>
</mujoco>
"""

RADIUS = 0.05  # of the puck and of the ball
MAX_SPEED = 0.5  # m/s: an action of 1 commands this hand velocity
FRAME_SKIP = 5  # 5 x 10 ms physics steps per control step
SKILLS = {"push_right": (1.0, 0.0), "push_up": (0.0, 1.0), "push_left": (-1.0, 0.0), "push_down": (0.0, -1.0)}
STATE_DIM = 9  # hand xy, ball xy, hand vel, ball vel, contact
LOW_OBS_DIM = 6  # what a skill sees of the world, before its label


class PuckBall:
    """The physics: set and read the 9-number state, step with a velocity command, render from above."""

    def __init__(self):
        import mujoco

        self.mj = mujoco
        self.model = mujoco.MjModel.from_xml_string(XML)
        self.data = mujoco.MjData(self.model)
        self.contact = 0.0
        self.set_goal((9.0, 9.0))  # off the table until a task sets one
        self._renderer = None

    def set_state(self, state) -> None:
        s = np.asarray(state, dtype=float)
        self.data.qpos[:] = s[0:4]
        self.data.qvel[:] = s[4:8]
        self.contact = float(s[8]) if s.shape[0] > 8 else 0.0
        self.mj.mj_forward(self.model, self.data)

    def set_goal(self, goal) -> None:
        self.data.mocap_pos[0, :2] = goal

    def state(self) -> np.ndarray:
        return np.concatenate([self.data.qpos, self.data.qvel, [self.contact]]).astype(np.float64)

    def step(self, action) -> np.ndarray:
        """Command hand velocity ``MAX_SPEED * clip(action, -1, 1)`` for one control step; the new state.
        ``contact`` is 1 when the puck touched the ball at any physics step of the control step."""
        self.data.ctrl[:] = MAX_SPEED * np.clip(np.asarray(action, dtype=float), -1.0, 1.0)
        touched = False
        for _ in range(FRAME_SKIP):
            self.mj.mj_step(self.model, self.data)
            touched = touched or self.data.ncon > 0  # the puck and the ball are the only colliding pair
        self.contact = float(touched)
        return self.state()

    def render(self, width: int = 160, height: int = 160) -> np.ndarray:
        if self._renderer is None or (self._renderer.height, self._renderer.width) != (height, width):
            self.close()
            self._renderer = self.mj.Renderer(self.model, height, width)
        self._renderer.update_scene(self.data, camera="top")
        return self._renderer.render().copy()

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None


def low_obs(state: np.ndarray) -> np.ndarray:
    """What a skill sees: ``[5 (hand - ball), hand vel, ball vel]`` (translation-free), ``[..., 6]``."""
    s = np.asarray(state)
    return np.concatenate([5.0 * (s[..., 0:2] - s[..., 2:4]), s[..., 4:6], s[..., 6:8]], axis=-1)


def scripted_command(state: np.ndarray, direction) -> np.ndarray:
    """The reference controller: walk (around the ball if needed) to the point behind it along
    ``direction``, then push at 0.3 m/s while steering the contact point back onto the push line."""
    h, b, d = state[0:2], state[2:4], np.asarray(direction, dtype=float)
    rel = h - b
    along = rel @ d
    lat = rel - along * d
    touch = 2 * RADIUS
    if along < -0.8 * touch and np.linalg.norm(lat) < 0.03:  # behind the ball and lined up: push
        v = 0.3 * d - 4.0 * lat
    else:
        side = lat / np.linalg.norm(lat) if np.linalg.norm(lat) > 1e-6 else np.array([-d[1], d[0]])
        if along < -touch:  # behind: slide across to the push line
            target = b - d * (touch + 0.04)
        elif along > -0.5 * touch and np.linalg.norm(lat) < touch + 0.02:  # in front: step aside first
            target = b + side * (touch + 0.06)
        else:  # beside: to the diagonal point behind the ball on this side
            target = b + side * (touch + 0.05) - d * (touch + 0.04)
        v = 4.0 * (target - h)
    speed = np.linalg.norm(v)
    v = v * min(1.0, 0.45 / speed) if speed > 0 else v
    return v / MAX_SPEED


class ScriptedSkill:
    """:func:`scripted_command` as a policy on PuckBall observation batches (``greedy``), for tests and as
    the reference's own score in reports; it reads only the first ``LOW_OBS_DIM`` numbers."""

    def __init__(self, direction):
        self.direction = np.asarray(direction, dtype=float)

    def greedy(self, obs: torch.Tensor) -> torch.Tensor:
        rows = [scripted_command(np.concatenate([o[:2] / 5, [0, 0], o[2:6], [0]]), self.direction) for o in obs.numpy()]
        return torch.tensor(np.array(rows), dtype=torch.float32).reshape(len(rows), 2)


def random_start(rng: np.random.Generator, ball_box: float = 0.15) -> np.ndarray:
    """A state with the ball near the middle of the table and the hand at rest 0.12-0.25 m away."""
    ball = rng.uniform(-ball_box, ball_box, 2)
    angle, r = rng.uniform(0, 2 * np.pi), rng.uniform(0.12, 0.25)
    hand = ball + r * np.array([np.cos(angle), np.sin(angle)])
    return np.concatenate([hand, ball, np.zeros(5)])


def record_skill_demos(n_per_skill: int = 16, length: int = 60, seed: int = 0, skills=tuple(SKILLS)) -> TransitionDataset:
    """State-only demonstrations: ``n_per_skill`` clips of ``length`` steps per skill, from random starts,
    played by :func:`scripted_command`. Actions are stored as zeros (nothing reads them); each
    episode's skill name is in ``meta["skills"]``."""
    unknown = [s for s in skills if s not in SKILLS]
    if unknown:
        raise ValueError(f"record_skill_demos: unknown skill(s) {unknown}; known: {list(SKILLS)}")
    rng = np.random.default_rng(seed)
    sim, episodes, labels = PuckBall(), [], []
    for name in skills:
        for _ in range(n_per_skill):
            sim.set_state(random_start(rng))
            states = [sim.state()]
            for _ in range(length):
                states.append(sim.step(scripted_command(states[-1], SKILLS[name])))
            episodes.append(Episode(torch.tensor(np.stack(states), dtype=torch.float32), torch.zeros(length, 2),
                                    torch.zeros(length), False, True))
            labels.append(name)
    return TransitionDataset(episodes, "rlxf/PuckBall", {"skills": labels, "state_only": True, "seed": seed})


@functools.lru_cache(maxsize=4)
def default_demos(seed: int = 0) -> TransitionDataset:
    return record_skill_demos(seed=seed)


def demo_skills(demos: TransitionDataset) -> list[str]:
    """Each episode's skill name, checked: one per episode, every one a known skill, 9-number states."""
    labels = demos.meta.get("skills")
    if labels is None or len(labels) != len(demos.episodes):
        raise DatasetError(f"skill demonstrations need meta['skills'] with one name per episode "
                           f"({len(demos.episodes)}), got {labels!r:.80}")
    bad = sorted(set(labels) - set(SKILLS))
    if bad:
        raise DatasetError(f"skill demonstrations: meta['skills'] holds unknown skill(s) {bad}; known: {list(SKILLS)}")
    if demos.obs_shape != (STATE_DIM,):
        raise DatasetError(f"skill demonstrations: states have shape {demos.obs_shape}, expected ({STATE_DIM},) "
                           f"= hand xy, ball xy, hand vel, ball vel, contact")
    return list(labels)


class _PuckBallEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": int(1 / (0.01 * FRAME_SKIP))}

    def __init__(self, render_mode: str | None = None, width: int = 160, height: int = 160):
        self.sim = PuckBall()
        self.render_mode, self.width, self.height = render_mode, width, height

    def render(self):
        return self.sim.render(self.width, self.height)

    def close(self):
        self.sim.close()


class SkillImitationEnv(_PuckBallEnv):
    """Imitate a clip of the skill demonstrations with the unified reward.

    Each episode picks a skill (``skill`` fixed, or uniformly), a clip of that skill and a start frame
    (reference state initialisation), sets the physics to that frame's state and then pays
    :func:`unified_imitation_reward` against the clip's next frames. The episode is truncated at the
    clip's end and terminated when the ball strays ``ball_fail`` or the hand ``hand_fail`` metres from the
    reference (a tight ball limit ends at once an episode that knocks the ball off its reference path).
    Observation: ``low_obs`` plus the one-hot skill label.
    """

    def __init__(self, demos: TransitionDataset | None = None, skill: str | None = None,
                 weights: ImitationWeights = ImitationWeights(), mode: str = "product", ball_fail: float = 0.08,
                 hand_fail: float = 0.15,
                 render_mode: str | None = None, width: int = 160, height: int = 160):
        super().__init__(render_mode, width, height)
        self.demos = demos if demos is not None else default_demos()
        labels = demo_skills(self.demos)
        if skill is not None and skill not in labels:
            raise ValueError(f"SkillImitationEnv: skill {skill!r} has no demonstrations; have {sorted(set(labels))}")
        self.names = list(SKILLS)
        self.clips = {n: [e.obs.numpy().astype(float) for e, l in zip(self.demos.episodes, labels) if l == n]
                      for n in self.names}
        self.skill, self.weights, self.mode = skill, weights, mode
        self.ball_fail, self.hand_fail = ball_fail, hand_fail
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (LOW_OBS_DIM + len(SKILLS),), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)

    def _obs(self, state) -> np.ndarray:
        return np.concatenate([low_obs(state), np.eye(len(SKILLS))[self.k]]).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        have = [n for n in self.names if self.clips[n]]
        name = self.skill if self.skill is not None else have[int(self.np_random.integers(len(have)))]
        self.k = self.names.index(name)
        clips = self.clips[name]
        self.ref = clips[int(self.np_random.integers(len(clips)))]
        self.t = int(self.np_random.integers(len(self.ref) - 10))
        self.sim.set_state(self.ref[self.t])
        return self._obs(self.sim.state()), {"skill": name}

    def step(self, action):
        s = self.sim.step(action)
        self.t += 1
        r = self.ref[self.t]
        terms = unified_imitation_reward(s[0:2], s[4:6], s[2:4], s[8], r[0:2], r[4:6], r[2:4], r[8],
                                         self.weights, self.mode)
        stray = np.linalg.norm(s[2:4] - r[2:4]) > self.ball_fail or np.linalg.norm(s[0:2] - r[0:2]) > self.hand_fail
        info = {k: float(v) for k, v in terms.items()}
        return self._obs(s), float(terms["reward"]), bool(stray), self.t >= len(self.ref) - 1, info


class ComposeEnv(_PuckBallEnv):
    """The composite task: push the ball within ``tol`` of a goal 0.25-0.4 m away along both axes
    (signs random), in ``max_steps`` steps. Reward: 10 x the decrease of the ball-goal distance each
    step, plus 1 on reaching the goal, which ends the episode; ``reward="success"`` pays only that 1,
    so an episode's return is its success. Observation: ``low_obs`` plus ``2.5 (goal - ball)``."""

    def __init__(self, reward: str = "shaped", tol: float = 0.08, max_steps: int = 120,
                 render_mode: str | None = None, width: int = 160, height: int = 160):
        super().__init__(render_mode, width, height)
        if reward not in ("shaped", "success"):
            raise ValueError(f"ComposeEnv: reward must be 'shaped' or 'success', got {reward!r}")
        self.reward_kind, self.tol, self.max_steps = reward, tol, max_steps
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (LOW_OBS_DIM + 2,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)

    def _obs(self, state) -> np.ndarray:
        return np.concatenate([low_obs(state), 2.5 * (self.goal - state[2:4])]).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        start = random_start(self.np_random, ball_box=0.1)
        self.goal = start[2:4] + self.np_random.choice([-1.0, 1.0], 2) * self.np_random.uniform(0.25, 0.4, 2)
        self.sim.set_goal(self.goal)  # before set_state, whose forward pass places the marker
        self.sim.set_state(start)
        self.t, self.dist = 0, float(np.linalg.norm(self.goal - start[2:4]))
        return self._obs(start), {}

    def step(self, action):
        s = self.sim.step(action)
        self.t += 1
        dist = float(np.linalg.norm(self.goal - s[2:4]))
        success = dist < self.tol
        shaped = 10.0 * (self.dist - dist) + float(success)
        self.dist = dist
        reward = shaped if self.reward_kind == "shaped" else float(success)
        return self._obs(s), reward, success, self.t >= self.max_steps, {"success": success}


class SkillSelectEnv(gym.Env):
    """ComposeEnv for a high-level policy: action ``k`` runs skill ``k`` of ``library`` (frozen, greedy)
    for ``hold`` low-level steps (fewer if the episode ends); the reward is their sum."""

    metadata = _PuckBallEnv.metadata

    def __init__(self, library: dict, hold: int = 8, render_mode: str | None = None, **compose_kwargs):
        if not library:
            raise ValueError("SkillSelectEnv: the skill library is empty")
        self.base = ComposeEnv(render_mode=render_mode, **compose_kwargs)
        self.skills, self.hold, self.render_mode = list(library.values()), hold, render_mode
        self.observation_space = self.base.observation_space
        self.action_space = gym.spaces.Discrete(len(self.skills))
        self.frames: list[np.ndarray] = []  # low-level frames of the last step, when rendering

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        self.obs, info = self.base.reset(seed=seed, options=options)
        return self.obs, info

    def step(self, action):
        skill, total = self.skills[int(action)], 0.0
        self.frames = []
        for _ in range(self.hold):
            with torch.no_grad():
                a = skill.greedy(torch.as_tensor(self.obs[None]))[0].numpy()
            self.obs, r, term, trunc, info = self.base.step(a)
            total += r
            if self.render_mode == "rgb_array":
                self.frames.append(self.base.render())
            if term or trunc:
                break
        return self.obs, total, term, trunc, info

    def render(self):
        return self.base.render()

    def close(self):
        self.base.close()
