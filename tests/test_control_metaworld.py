"""Meta-World ML1 through the shared control core: the success metric of ``evaluate`` on toy envs
(hand-computed), the ML1 adapter's train/test variations, and the claim: BC from Meta-World's
scripted experts reaches success >= 0.8 on reach-v3."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from rlxf.algorithms.control.rollout import evaluate


class Counter(gym.Env):
    """Episode k of an env copy (k = 0, 1, ...) lasts k + 1 steps and pays 1 per step; ``info["success"]``
    is 1 only on an episode's last step, and only when the action is positive."""

    observation_space = gym.spaces.Box(-1, 1, (1,), np.float32)
    action_space = gym.spaces.Box(-1, 1, (1,), np.float32)

    def __init__(self):
        self.k, self.t = -1, 0

    def reset(self, *, seed=None, options=None):
        self.k, self.t = self.k + 1, 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.t += 1
        end = self.t == self.k + 1
        return np.zeros(1, np.float32), 1.0, end, False, {"success": float(end and action[0] > 0)}


class Const:
    def __init__(self, a):
        self.a = a

    def greedy(self, obs):
        return torch.full((obs.shape[0], 1), self.a)


def test_evaluate_gives_each_copy_a_fixed_share_of_the_episodes():
    # 5 episodes on 2 copies: copy 0 plays episodes 0, 1, 2 (returns 1, 2, 3), copy 1 plays 0, 1 (returns 1, 2)
    out = evaluate(Const(1.0), Counter, n_episodes=5, n_envs=2)
    assert out.tolist() == [1.0, 2.0, 3.0, 1.0, 2.0]
    assert evaluate(Const(1.0), Counter, n_episodes=3).tolist() == [1.0, 1.0, 1.0]  # one episode per copy


def test_success_metric_reads_the_last_step_of_each_episode():
    # success sits on the terminating step, which same-step autoreset reports in final_info
    assert evaluate(Const(1.0), Counter, n_episodes=5, n_envs=2, metric="success").tolist() == [1.0] * 5
    assert evaluate(Const(-1.0), Counter, n_episodes=4, metric="success").tolist() == [0.0] * 4
    with pytest.raises(ValueError, match="metric"):
        evaluate(Const(1.0), Counter, n_episodes=2, metric="reward")


mw = pytest.importorskip("metaworld")


def test_ml1_adapter_splits_variations_and_shows_the_goal():
    from rlxf.tasks.gym_envs import EnvError
    from rlxf.tasks.metaworld_envs import ScriptedExpert, env_id, ml1_tasks

    train, test = ml1_tasks("reach-v3", "train"), ml1_tasks("reach-v3", "test")
    assert len(train) == len(test) == 50 and {t.data for t in train}.isdisjoint({t.data for t in test})
    env = gym.make(env_id("reach-v3", "test"))
    goals = []
    for seed in (0, 1, 2):
        obs, _ = env.reset(seed=seed)
        assert obs.shape == (39,) and obs.dtype == np.float32
        goals.append(obs[-3:].copy())
    assert np.abs(goals[0]).sum() > 0.1 and not np.allclose(goals[0], goals[1])  # the goal is in the observation
    assert np.allclose(env.reset(seed=1)[0][-3:], goals[1])  # the variation is drawn from the reset seed
    act = ScriptedExpert("reach-v3").greedy(torch.as_tensor(obs)[None])
    assert act.shape == (1, 4) and act.abs().max() <= 1.0
    env.close()
    with pytest.raises(EnvError, match="not a v3 task"):
        ml1_tasks("reach-v2")


@pytest.fixture(scope="module")
def bc_reach():
    from rlxf.algorithms.control.metaworld import bc_from_experts

    policy, data = bc_from_experts("reach-v3", seed=0, n_demos=25, steps=800)
    return policy, data


@pytest.mark.slow
def test_bc_from_scripted_experts_reaches_on_held_out_variations(bc_reach):
    """Pre-registered (committed before its first run): BC (Gaussian MLP, 800 steps) on 25 scripted-expert
    episodes of reach-v3 (train variations, seed 0) reaches success >= 0.8 over Meta-World's 50 evaluation
    episodes on the test variations (seed 10_000)."""
    from rlxf.algorithms.control.metaworld import success_rate

    policy, data = bc_reach
    assert len(data.episodes) == 25 and data.env_id == "rlxf/ML1-reach-v3"
    scores = success_rate(policy, "reach-v3", seed=10_000)
    print(f"\nBC from 25 scripted reach demos: success {scores.mean():.2f} over {len(scores)} test episodes")
    assert len(scores) == 50 and scores.mean() >= 0.8
