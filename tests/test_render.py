"""Off-screen frames and GIFs of control policies (rlxf/tasks/render.py)."""

import numpy as np
import pytest
import torch

from rlxf.tasks.render import RenderError, episode_frames, side_by_side, write_gif

pytest.importorskip("mujoco")


class ConstantPolicy:
    def __init__(self, a):
        self.a = torch.tensor([a], dtype=torch.float32)

    def greedy(self, obs):
        return self.a.expand(obs.shape[0], -1)


def test_mujoco_episode_renders_to_a_gif_that_reads_back(tmp_path):
    try:
        frames, ret = episode_frames(ConstantPolicy([3.0]), "InvertedPendulum-v5", seed=0, max_steps=40,
                                     width=64, height=48)
    except RenderError as e:
        pytest.skip(str(e))
    # a constant push topples the pole early. InvertedPendulum-v5 pays 1 per step except the terminating
    # one, so the episode had ret + 1 steps, and there is a frame before each step and one after the last
    assert 1 <= ret < 38 and len(frames) == int(ret) + 2
    assert frames[0].shape == (48, 64, 3) and frames[0].dtype == np.uint8
    assert not np.array_equal(frames[0], frames[-1])  # the pole moved
    import imageio.v3 as iio

    path = write_gif(frames, tmp_path / "a.gif", fps=20)
    back = iio.imread(path, index=None)
    assert back.shape[0] == len(frames) and back.shape[1:3] == (48, 64)


def test_side_by_side_holds_the_shorter_episode_and_write_gif_rejects_nothing(tmp_path):
    a = [np.zeros((4, 3, 3), np.uint8)] * 2
    b = [np.full((2, 5, 3), 7, np.uint8)] * 3
    out = side_by_side(a, b, gap=1)
    assert len(out) == 3 and out[0].shape == (4, 9, 3)
    assert (out[2][:, :3] == 0).all() and (out[2][:2, 4:] == 7).all() and (out[2][2:, 4:] == 255).all()
    with pytest.raises(ValueError, match="no frames"):
        write_gif([], tmp_path / "x.gif")
    assert not (tmp_path / "x.gif").exists()
