"""The torch CartPole and Acrobot step exactly as gymnasium's CartPole-v1 and Acrobot-v1 do."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from rlxf.tasks.torch_control import CartPole, Acrobot, make_torch_env


@pytest.mark.parametrize("env_id,cls", [("CartPole-v1", CartPole), ("Acrobot-v1", Acrobot)])
def test_torch_env_matches_gymnasium_step_by_step(env_id, cls):
    """From gymnasium's own reset states, 64 copies under random actions: every next state, reward and
    termination equals gymnasium's (float64, to 1e-9) until gymnasium's episode ends."""
    n, rng = 64, np.random.default_rng(0)
    gyms = [gym.make(env_id).unwrapped for _ in range(n)]
    states = np.stack([np.asarray(e.reset(seed=i)[0] if env_id.startswith("Cart") else (e.reset(seed=i), e.state)[1],
                                  dtype=np.float64) for i, e in enumerate(gyms)])
    for e, s in zip(gyms, states):
        e.state = s.copy()
    env = cls(n, seed=0, dtype=torch.float64)
    env.state = torch.tensor(states)
    alive = np.ones(n, dtype=bool)
    checked = 0
    for _ in range(60):
        actions = rng.integers(0, cls.n_actions, n)
        state, reward, terminated = env._dynamics(env.state, torch.tensor(actions))
        for i in np.flatnonzero(alive):
            _, r, term, _, _ = gyms[i].step(int(actions[i]))
            assert np.allclose(state[i].numpy(), np.asarray(gyms[i].state, dtype=np.float64), atol=1e-9), (i, checked)
            assert float(reward[i]) == r and bool(terminated[i]) == term
            alive[i] &= not term
            checked += 1
        env.state = state
    assert checked > 10 * n  # enough steps were compared (episodes under random actions last ~20-80 steps)


def test_observations_resets_and_time_limit():
    """Acrobot's observation is (cos, sin, cos, sin, velocities); a step that ends an episode returns a fresh
    reset state (within gymnasium's reset range); the time limit ends an episode without termination."""
    env = make_torch_env("acrobot", 4, seed=1, max_steps=3)
    o = env.reset()
    assert o.shape == (4, 6) and torch.allclose(o[:, 0] ** 2 + o[:, 1] ** 2, torch.ones(4))
    for t in range(3):
        s = env.step(torch.ones(4, dtype=torch.long))
    assert s.done.all() and not s.terminated.any() and (env.t == 0).all() and env.state.abs().max() <= 0.1
    cp = CartPole(3, params={"length": torch.tensor([0.5, 1.0, 2.0])})
    assert cp.p["length"].tolist() == [0.5, 1.0, 2.0] and cp.p["gravity"].tolist() == pytest.approx([9.8] * 3)
    with pytest.raises(ValueError, match="unknown.*polelength"):
        CartPole(2, params={"polelength": 1.0})
