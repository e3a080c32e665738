"""SAC: hand-computed targets and losses, and learning the best action of a one-step continuous task."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from rlxf.algorithms.control.sac import SAC, SACConfig, TanhGaussianActor
from rlxf.objectives.control import sac_actor_loss, sac_alpha_loss, soft_q_target
from rlxf.tasks.gym_envs import EnvError


def test_soft_target_and_losses_by_hand():
    t = soft_q_target(torch.tensor([1.0, 1.0]), torch.tensor([5.0, 5.0]), torch.tensor([-1.0, -1.0]),
                      torch.tensor([0.0, 1.0]), gamma=0.9, alpha=0.2)
    assert t.tolist() == pytest.approx([1 + 0.9 * (5 + 0.2), 1.0])  # a termination cuts the bootstrap
    assert sac_actor_loss(torch.tensor([3.0]), torch.tensor([-2.0]), 0.5).tolist() == [-4.0]
    assert sac_alpha_loss(torch.tensor(0.5), torch.tensor([-2.0]), -1.0).tolist() == [pytest.approx(1.5)]


def test_tanh_gaussian_log_prob_matches_a_change_of_variables():
    torch.manual_seed(0)
    actor = TanhGaussianActor(2, 1, 8, torch.tensor([2.0]))
    obs = torch.randn(20000, 2).mul(0).add(torch.tensor([0.3, -0.2]))
    a, logp = actor.sample(obs)
    assert a.abs().max() < 2.0
    # the density integrates to one: E_pi[1 / pi(a)] over the support [-2, 2] is its length, 4
    assert torch.exp(-logp).mean().item() == pytest.approx(4.0, rel=0.1)


class Target(gym.Env):
    """One step: any observation, reward -(a - 0.5)^2."""

    observation_space = gym.spaces.Box(-1, 1, (2,), np.float32)
    action_space = gym.spaces.Box(-1, 1, (1,), np.float32)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        return self.np_random.uniform(-1, 1, 2).astype(np.float32), {}

    def step(self, action):
        return self.observation_space.sample(), -float((action[0] - 0.5) ** 2), True, False, {}


def test_sac_learns_the_best_action_of_a_one_step_task():
    sac = SAC(SACConfig(total_steps=500, warmup_steps=150, batch_size=64, hidden=32), env_spec=Target)
    obs = torch.rand(100, 2) * 2 - 1
    assert (sac.actor.greedy(obs) - 0.5).abs().mean() > 0.3
    sac.learn()
    assert (sac.actor.greedy(obs) - 0.5).abs().mean() < 0.15
    with pytest.raises(EnvError, match="continuous"):
        SAC(SACConfig(env="CartPole-v1"))
