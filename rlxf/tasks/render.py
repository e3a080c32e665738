"""Short videos of control policies: off-screen frames from a gymnasium env and GIFs written with imageio.

MuJoCo renders off-screen through OSMesa (Debian's ``libosmesa6``, which ``.ci/run`` installs) unless
``MUJOCO_GL`` is already set (``egl`` on a machine with a GPU). The choice must be made before mujoco
first creates a GL context, so import this module (or set the variable) before rendering.

    frames, ret = episode_frames(policy, "InvertedPendulum-v5", seed=0, max_steps=100)
    write_gif(frames, "runs/x/pendulum.gif", fps=25)
"""

from __future__ import annotations

import ctypes.util
import os
from pathlib import Path

import numpy as np
import torch

from rlxf.core.runs import atomic_write_bytes


def _offscreen_backend() -> str:
    """``osmesa`` where its library is installed, else ``egl`` (a GPU or a display may offer it)."""
    return "osmesa" if ctypes.util.find_library("OSMesa") else "egl"


if "MUJOCO_GL" not in os.environ:
    os.environ["MUJOCO_GL"] = _offscreen_backend()
    if os.environ["MUJOCO_GL"] == "osmesa":
        os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")


class RenderError(RuntimeError):
    """An environment that cannot draw frames here."""


def make_render_env(spec, width: int = 160, height: int = 160, **kwargs):
    """A single env of ``spec`` (a gymnasium id or a constructor) that returns RGB frames from ``render()``."""
    import gymnasium as gym

    try:
        if callable(spec):
            return spec(render_mode="rgb_array", **kwargs)
        extra = {"width": width, "height": height} if "mujoco" in str(gym.spec(spec).entry_point) else {}
        return gym.make(spec, render_mode="rgb_array", **extra, **kwargs)
    except Exception as e:  # missing pygame / GL library / render mode
        raise RenderError(f"environment {spec!r} cannot render frames here ({type(e).__name__}: {e}); MuJoCo "
                          f"envs need MUJOCO_GL=osmesa with Debian's libosmesa6, or egl with a GPU") from None


def episode_frames(policy, spec, seed: int = 0, max_steps: int = 200, every: int = 1, deterministic: bool = True,
                   width: int = 160, height: int = 160, **kwargs) -> tuple[list[np.ndarray], float]:
    """Run one episode of ``policy`` (``greedy``/``act`` on a batch of one) and keep every ``every``-th frame.

    Returns the frames (``[H, W, 3]`` uint8) and the episode's undiscounted return.
    """
    env = make_render_env(spec, width, height, **kwargs)
    obs, _ = env.reset(seed=seed)
    frames, ret = [], 0.0
    try:
        for t in range(max_steps):
            if t % every == 0:
                frames.append(np.asarray(env.render(), dtype=np.uint8))
            o = torch.as_tensor(np.asarray(obs), dtype=torch.float32)[None]
            with torch.no_grad():
                a = policy.greedy(o) if deterministic else policy.act(o)[0]
            obs, r, terminated, truncated, _ = env.step(a[0].numpy())
            ret += float(r)
            if terminated or truncated:
                break
        frames.append(np.asarray(env.render(), dtype=np.uint8))
    finally:
        env.close()
    return frames, ret


def write_gif(frames: list[np.ndarray], path: str | Path, fps: int = 25) -> Path:
    """Write ``frames`` as a looping GIF at ``path``, whole or not at all."""
    import imageio.v3 as iio

    if not frames:
        raise ValueError(f"no frames to write to {path}")
    data = iio.imwrite("<bytes>", np.stack(frames), extension=".gif", duration=1000 / fps, loop=0)
    path = Path(path)
    atomic_write_bytes(path, data)
    return path


def side_by_side(left: list[np.ndarray], right: list[np.ndarray], gap: int = 4) -> list[np.ndarray]:
    """Frames of two episodes next to each other (the shorter one holds its last frame)."""
    n = max(len(left), len(right))
    out = []
    for i in range(n):
        a, b = left[min(i, len(left) - 1)], right[min(i, len(right) - 1)]
        h = max(a.shape[0], b.shape[0])
        pad = lambda x: np.pad(x, ((0, h - x.shape[0]), (0, 0), (0, 0)), constant_values=255)  # noqa: E731
        out.append(np.concatenate([pad(a), np.full((h, gap, 3), 255, np.uint8), pad(b)], axis=1))
    return out
