"""Meta-World ML1 tasks as rlxf environments, and Meta-World's scripted experts as rlxf policies.

An ML1 benchmark (``metaworld.ML1(name, seed)``) holds one manipulation task (``reach-v3``,
``push-v3``, ``pick-place-v3``, ...) with 50 *train* and 50 *test* variations (goal and object
positions). :class:`ML1Env` is a gymnasium env over one split: every reset draws one variation of
the split (from the env's own seeded RNG), so training sees the train variations and evaluation the
held-out test ones. The goal position stays in the observation (39-D, as in MT1) because the
learners here are single-task learners, not meta-learners; ``goal_observable=False`` hides it as
ML1's meta-RL setting does. Episodes are truncated at Meta-World's 500 steps (and on the test ids
end at the first success, as Meta-World's evaluation does; training leaves that off); ``info["success"]``
is Meta-World's own task-specific success flag, which :func:`rlxf.algorithms.control.rollout.evaluate`
reads under ``metric="success"`` (Meta-World's 50-episode success rate: an episode succeeds if any
of its steps does, i.e. it would end there under ``terminate_on_success``).

Gymnasium ids (registered in :mod:`rlxf.tasks.gym_envs`; metaworld is imported only when one is made)::

    rlxf/ML1-reach-v3, rlxf/ML1-push-v3, rlxf/ML1-pick-place-v3      (train variations)
    rlxf/ML1-reach-v3-test, ...                  (test variations; an episode ends at its first success)

The ML1 object is built directly, so the vector entry point's ``meta_batch_size`` (whose default
20 fails for ML1; 10 works) never comes into play.
"""

from __future__ import annotations

import functools
import pickle

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from rlxf.tasks.gym_envs import EnvError

TASKS = ("reach-v3", "push-v3", "pick-place-v3")


def _metaworld():
    try:
        import metaworld
    except ImportError:
        raise EnvError("Meta-World is not installed: pip install -e '.[metaworld]' (metaworld==3.1.1)") from None
    return metaworld


@functools.lru_cache(maxsize=None)
def _ml1(name: str, benchmark_seed: int):
    """The ML1 benchmark object (both splits; building it takes seconds, so once per process)."""
    return _metaworld().ML1(name, seed=benchmark_seed)


@functools.lru_cache(maxsize=None)
def ml1_tasks(name: str, split: str = "train", benchmark_seed: int = 0, goal_observable: bool = True) -> tuple:
    """The 50 task variations of ML1 ``name``'s ``split`` (train | test), as Meta-World ``Task`` s."""
    metaworld = _metaworld()
    if split not in ("train", "test"):
        raise EnvError(f"Meta-World split must be 'train' or 'test', got {split!r}")
    if name not in metaworld.ML1.ENV_NAMES:
        raise EnvError(f"Meta-World task {name!r} is not a v3 task; e.g. {', '.join(TASKS)}")
    bench = _ml1(name, benchmark_seed)
    tasks = bench.train_tasks if split == "train" else bench.test_tasks
    out = []
    for t in tasks:  # the observability travels inside each task's pickled data
        data = pickle.loads(t.data)
        data["partially_observable"] = not goal_observable
        out.append(type(t)(env_name=t.env_name, data=pickle.dumps(data)))
    return tuple(out)


class ML1Env(gym.Env):
    """One Meta-World ML1 task; each episode is one variation of ``split`` drawn at reset."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 80}

    def __init__(self, task: str = "reach-v3", split: str = "train", benchmark_seed: int = 0,
                 goal_observable: bool = True, render_mode: str | None = None, width: int = 160, height: int = 160,
                 camera_name: str = "corner", terminate_on_success: bool = False):
        tasks = ml1_tasks(task, split, benchmark_seed, goal_observable)
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS

        cls = ALL_V3_ENVIRONMENTS[task]
        self.task_name, self.tasks, self.terminate_on_success = task, tasks, terminate_on_success
        self.env = cls(render_mode=render_mode, camera_name=camera_name if render_mode else None,
                       width=width, height=height)
        self.env.set_task(tasks[0])
        self.observation_space = self.env.observation_space
        self.action_space = self.env.action_space
        self.render_mode = render_mode
        self.max_path_length = self.env.max_path_length
        self._rng = np.random.default_rng()

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self.env.set_task(self.tasks[int(self._rng.integers(len(self.tasks)))])
        obs, info = self.env.reset()
        return obs.astype(np.float32), info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(np.asarray(action, dtype=np.float64))
        terminated = bool(terminated or (self.terminate_on_success and info["success"]))
        return obs.astype(np.float32), float(reward), terminated, truncated, info

    def render(self):
        frame = self.env.render()  # Meta-World's off-screen frames come out upside down
        return None if frame is None else np.ascontiguousarray(frame[::-1])

    def close(self):
        self.env.close()


def env_id(task: str, split: str = "train") -> str:
    """The gymnasium id of ML1 ``task`` (e.g. ``reach-v3``) on ``split`` (registered in ``gym_envs``)."""
    if task not in TASKS:
        raise EnvError(f"Meta-World ML1 ids are registered for {', '.join(TASKS)}; got {task!r} "
                       f"(other tasks: pass lambda: ML1Env(task) as the env spec)")
    return f"rlxf/ML1-{task}" + ("-test" if split == "test" else "")


class ScriptedExpert:
    """Meta-World's bundled hand-written policy for a task (``metaworld.policies``), with the rlxf
    policy interface (``greedy``/``act`` on a batch of observations); actions clipped to [-1, 1]."""

    def __init__(self, task: str):
        import warnings

        _metaworld()
        from metaworld.policies import ENV_POLICY_MAP

        if task not in ENV_POLICY_MAP:
            raise EnvError(f"Meta-World has no scripted policy for {task!r}")
        self.policy = ENV_POLICY_MAP[task]()
        warnings.filterwarnings("ignore", message="Constant\\(s\\) may be too high")

    @torch.no_grad()
    def greedy(self, obs: Tensor) -> Tensor:
        acts = [np.clip(self.policy.get_action(o.double().numpy()), -1.0, 1.0) for o in obs]
        return torch.as_tensor(np.stack(acts), dtype=torch.float32)

    @torch.no_grad()
    def act(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        return self.greedy(obs), torch.zeros(obs.shape[0])
