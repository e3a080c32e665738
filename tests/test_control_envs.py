"""Shared vector envs: truncation vs termination, normalisation, clear errors; PPO solves CartPole."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from rlxf.algorithms.control.rollout import EpisodeRecorder, advantages, collect, fragments
from rlxf.policies.control import CategoricalMLPPolicy, MLPCritic
from rlxf.tasks.gym_envs import EnvError, RunningMeanStd, make_env

from control_helpers import solved_cartpole


class Counter(gym.Env):
    """obs = [t]; reward 1 per step; terminates after ``end`` steps if ``end`` is set."""

    def __init__(self, end=None, nan_at=None):
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.end, self.nan_at = end, nan_at

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.array([0.0], np.float32), {}

    def step(self, action):
        self.t += 1
        obs = np.array([np.nan if self.t == self.nan_at else self.t], np.float32)
        return obs, 1.0, self.end is not None and self.t >= self.end, False, {}


def constant_critic(c):
    critic = MLPCritic(1, hidden=4)
    with torch.no_grad():
        critic.net[-1].weight.zero_()
        critic.net[-1].bias.fill_(c)
    return critic


@pytest.mark.parametrize("terminates", [True, False])
def test_truncation_is_bootstrapped_and_termination_is_not(terminates):
    c, gamma = 10.0, 0.5
    # the same 3-step episode, ended by termination or by a 3-step time limit
    env = make_env((lambda: Counter(end=3)) if terminates else (lambda: Counter()), n_envs=1,
                   max_episode_steps=None if terminates else 3)
    policy, critic = CategoricalMLPPolicy(1, 2, hidden=4), constant_critic(c)
    ro, _ = collect(env, policy, critic, env.reset(), n_steps=3)
    assert ro.done[0].tolist() == [False, False, True]
    assert bool(ro.terminated[0, 2]) == terminates and bool(ro.truncated[0, 2]) == (not terminates)
    _, ret = advantages(ro, ro.rewards, gamma=gamma, lam=1.0)
    boot = 0.0 if terminates else c  # V(final_obs) = c only when truncated
    by_hand = [1 + gamma + gamma**2 + gamma**3 * boot, 1 + gamma + gamma**2 * boot, 1 + gamma * boot]
    assert ret[0].tolist() == pytest.approx(by_hand)


def test_fragments_cut_rows_at_episode_ends_and_rollout_end_bootstraps_next_value():
    done = torch.tensor([[False, True, False, False], [False, False, False, True]])
    index, mask = fragments(done, torch.ones_like(done))
    rows = [index[i][mask[i] > 0].tolist() for i in range(len(index))]
    assert rows == [[0, 1], [2, 3], [4, 5, 6, 7]]
    env = make_env(lambda: Counter(end=2), n_envs=1)
    ro, _ = collect(env, CategoricalMLPPolicy(1, 2, hidden=4), constant_critic(4.0), env.reset(), n_steps=3)
    _, ret = advantages(ro, ro.rewards, gamma=1.0, lam=1.0)
    assert ret[0].tolist() == pytest.approx([2.0, 1.0, 1.0 + 4.0])  # last row cut: bootstrap V(next obs)


def test_unknown_env_id_is_a_clear_error():
    with pytest.raises(EnvError, match="'NoSuchEnv-v9'.*expected a registered gymnasium id"):
        make_env("NoSuchEnv-v9")


def test_nan_observation_is_a_clear_error():
    env = make_env(lambda: Counter(nan_at=2), n_envs=2)
    env.reset()
    env.step(np.zeros(2, dtype=int))
    with pytest.raises(EnvError, match="non-finite observation.*expected finite values of shape \\(1,\\)"):
        env.step(np.zeros(2, dtype=int))


def test_dataset_shape_mismatch_is_a_clear_error():
    env = make_env("CartPole-v1", n_envs=1)
    with pytest.raises(EnvError, match="data.arrow: observations have shape \\(3,\\).*expects \\(4,\\)"):
        env.check_obs_shape((3,), "data.arrow")


def test_running_stats_match_numpy_and_normalised_obs_are_standardised():
    rng = np.random.default_rng(0)
    data = rng.normal(3.0, 2.0, size=(600, 2))
    rms = RunningMeanStd((2,))
    for chunk in np.split(data, 6):
        rms.update(chunk)
    assert np.allclose(rms.mean, data.mean(0), atol=1e-6) and np.allclose(rms.var, data.var(0), atol=1e-4)
    env = make_env("CartPole-v1", n_envs=4, norm_obs=True, norm_reward=True, gamma=0.99)
    env.reset()
    seen, scaled = [], []
    for _ in range(400):
        res = env.step(rng.integers(0, 2, size=4))
        seen.append(res.obs)
        scaled.append(res.rewards)
    z = np.concatenate(seen[200:])
    assert np.abs(z.mean(0)).max() < 0.35 and np.all(np.abs(z.std(0) - 1) < 0.35)
    # CartPole's raw reward is 1; the scaled one is 1 / std(discounted return), well below 1
    assert 0.0 < np.mean(scaled[200:]) < 0.5


class _FixedActions:
    """A policy that plays a given action sequence (to drive two envs identically)."""

    def __init__(self, actions):
        self.actions, self.t = actions, 0

    def act(self, obs):
        a = self.actions[self.t]
        self.t += 1
        return torch.as_tensor(a), torch.zeros(len(a))


def test_rollouts_and_recorded_episodes_keep_the_env_observations_under_normalisation():
    """With ``norm_obs`` the policy sees standardised observations, but learned rewards and recorded
    episodes read the env's own: the same as an unnormalised env stepped with the same actions."""
    actions = np.random.default_rng(1).uniform(-2, 2, size=(230, 3, 1)).astype(np.float32)
    critic = MLPCritic(3, 8)
    normed, plain = make_env("Pendulum-v1", n_envs=3, seed=5, norm_obs=True), make_env("Pendulum-v1", n_envs=3, seed=5)
    ro_n, _ = collect(normed, _FixedActions(actions), critic, normed.reset(), 230)
    ro_p, _ = collect(plain, _FixedActions(actions), critic, plain.reset(), 230)
    assert ro_p.raw_obs is None and torch.equal(ro_p.env_obs, ro_p.obs)
    assert torch.allclose(ro_n.env_obs, ro_p.obs) and torch.allclose(ro_n.env_next_obs, ro_p.next_obs)
    assert not torch.allclose(ro_n.obs, ro_p.obs, atol=0.1)  # the policy's view is standardised
    eps_n, eps_p = EpisodeRecorder(3).add(ro_n), EpisodeRecorder(3).add(ro_p)  # 200-step time limit
    assert len(eps_n) == 3 and all(torch.allclose(a.obs, b.obs) for a, b in zip(eps_n, eps_p))
    cos, sin = eps_n[0].obs[:, 0], eps_n[0].obs[:, 1]
    assert torch.allclose(cos**2 + sin**2, torch.ones(()), atol=1e-5)


@pytest.mark.slow
def test_ppo_solves_cartpole():
    ppo, start, history = solved_cartpole()
    assert start < 100 and ppo.steps_done <= 60_000
    assert history[-1]["eval_return"] >= 475, history


def test_ppo_updates_a_gaussian_policy_on_a_mujoco_env():
    """Smoke test of the MuJoCo path (the claim below is in the slow tier): one rollout and one PPO
    update on InvertedPendulum-v5 under observation normalisation move the parameters, finitely."""
    pytest.importorskip("mujoco", reason="the optional mujoco extra is not installed (pip install -e '.[mujoco]')")
    from rlxf.algorithms.control.ppo import PPO, PPOConfig

    ppo = PPO(PPOConfig(env="InvertedPendulum-v5", n_envs=2, n_steps=64, epochs=2, anneal=False, norm_obs=True))
    before = ppo.flat.param.detach().clone()
    ro = ppo.collect()
    stats = ppo.update(ro)
    assert ro.actions.shape == (2, 64, 1) and ro.raw_obs is not None and ppo.env.obs_rms.count > 64
    assert all(np.isfinite(v) for v in stats.values()) and not torch.equal(before, ppo.flat.param)


@pytest.mark.slow
def test_ppo_balances_a_mujoco_inverted_pendulum():
    """MuJoCo ids run through the same envs and PPO (the optional ``mujoco`` extra, which the test
    extras install): InvertedPendulum-v5 goes from a greedy return of a few dozen steps to its
    1000-step maximum in 20k env steps (seeds 0-3 all reach 1000)."""
    pytest.importorskip("mujoco", reason="the optional mujoco extra is not installed (pip install -e '.[mujoco]')")
    from rlxf.algorithms.control.ppo import PPO, PPOConfig

    ppo = PPO(PPOConfig(env="InvertedPendulum-v5", seed=0, total_steps=20_480, n_envs=8, n_steps=256,
                        minibatch_size=64, epochs=10, gamma=0.99, lam=0.95, lr=3e-4, anneal=False, norm_obs=True))
    assert ppo.env.obs_dim == 4 and not ppo.env.discrete
    start = float(ppo.evaluate().mean())
    ppo.learn()
    end = float(ppo.evaluate().mean())
    assert start < 100 and end >= 900, (start, end)
