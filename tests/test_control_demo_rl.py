"""Demonstration-regularised RL: the KL-to-prior term by hand, PPO started from and regularised towards
a BC prior, the lock task, and the pre-registered claim against RL alone and BC alone."""

import math

import numpy as np
import pytest
import torch

from rlxf.algorithms.control.demo_rl import (LOCK_ENV, bc_table_run, lock_demos, ppo_demo_kl_table_run,
                                             ppo_table_run)
from rlxf.algorithms.control.ppo import PPO, PPOConfig
from rlxf.algorithms.evaluate import paired_gain
from rlxf.lab.control_table import METHODS
from rlxf.objectives.control import bc_log_barrier, prior_kl
from rlxf.policies.control import CategoricalMLPPolicy
from rlxf.tasks.lock import KEY, PrizeLock, demo_action


def test_prior_kl_matches_hand_computed_values():
    p = torch.distributions.Categorical(probs=torch.tensor([[0.5, 0.5]]))
    q = torch.distributions.Categorical(probs=torch.tensor([[0.9, 0.1]]))
    assert prior_kl(p, q).item() == pytest.approx(0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1))
    g = torch.distributions.Independent(torch.distributions.Normal(torch.zeros(1, 1), torch.ones(1, 1)), 1)
    h = torch.distributions.Independent(torch.distributions.Normal(torch.ones(1, 1), 2 * torch.ones(1, 1)), 1)
    assert prior_kl(g, h).item() == pytest.approx(math.log(2.0) + (1 + 1) / 8 - 0.5)


def test_bc_log_barrier_matches_hand_computed_value():
    logps = torch.log(torch.tensor([[0.5, 0.25, 0.25]]))
    assert bc_log_barrier(logps).item() == pytest.approx(-(math.log(0.5) + 2 * math.log(0.25)) / 3)


def _cartpole(prior_kl_coef=0.0):
    return PPOConfig(n_envs=2, n_steps=16, total_steps=10_000, epochs=4, hidden=16, prior_kl=prior_kl_coef, seed=3)


def test_ppo_starts_from_the_prior_and_its_kl_term_pulls_towards_it():
    torch.manual_seed(0)
    prior = CategoricalMLPPolicy(4, 2, hidden=16)
    kls = {}
    for coef in (0.0, 10.0):
        agent = PPO(_cartpole(coef))
        agent.start_from(prior)
        obs = torch.randn(32, 4)
        assert torch.allclose(agent.policy.logits(obs), prior.logits(obs))
        ro = agent.collect()
        agent.update(ro)
        with torch.no_grad():
            kls[coef] = prior_kl(agent.policy.distribution(ro.obs.flatten(0, 1)),
                                 agent.prior.distribution(ro.obs.flatten(0, 1))).mean().item()
        assert not any(p.requires_grad for p in agent.prior.parameters())
    assert kls[10.0] < 0.5 * kls[0.0], kls


def test_ppo_prior_errors_name_the_option():
    agent = PPO(_cartpole(0.1))
    with pytest.raises(ValueError, match="prior_kl"):
        agent.update(agent.collect())
    with pytest.raises(ValueError, match="does not match"):
        PPO(_cartpole()).start_from(CategoricalMLPPolicy(3, 2, hidden=16))
    cfg = _cartpole()
    cfg.norm_obs = True
    with pytest.raises(ValueError, match="norm_obs"):
        PPO(cfg).start_from(CategoricalMLPPolicy(4, 2, hidden=16))


def test_lock_opens_with_the_key_and_resets_on_a_wrong_action():
    env = PrizeLock(length=3)
    obs, _ = env.reset(seed=0)
    for pos in range(3):
        assert demo_action(obs, np.random.default_rng(0)) == KEY[pos]
        obs, r, term, _, _ = env.step(KEY[pos])
        assert r == 0.0 and not term
    assert demo_action(obs, np.random.default_rng(0)) == 0  # the demonstrator takes the small prize
    assert env.step(1)[1:3] == (1.0, True)
    env.reset()
    env.step(KEY[0])
    obs = env.step((KEY[1] + 1) % 4)[0]
    assert obs.argmax() == 0


def test_lock_runners_are_registered_and_run_small():
    demos = lock_demos(2, seed=4)
    assert len(demos.episodes) == 2 and demos.env_id == LOCK_ENV
    for name, run in (("ppo", ppo_table_run), ("bc", bc_table_run), ("ppo_demo_kl", ppo_demo_kl_table_run)):
        assert "prize_lock" in METHODS[name].tasks
        scores = run("prize_lock", 0, 0.05)
        assert len(scores) == 10 and np.all(np.isin(scores, (0.0, 0.5, 1.0)))


CLAIM_SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def lock_results():
    return {m: np.array([run("prize_lock", s).mean() for s in CLAIM_SEEDS])
            for m, run in (("ppo_demo_kl", ppo_demo_kl_table_run), ("ppo", ppo_table_run), ("bc", bc_table_run))}


@pytest.mark.slow
def test_demo_regularised_ppo_beats_rl_alone_and_bc_alone(lock_results):
    """Pre-registered claim (Tiapkin et al., ICLR 2024), committed before its first run. Task named before
    measuring: PrizeLock (8-position combination lock, 4 actions, small prize 0.5, big prize 1.0, 30-step
    limit) with 2 demonstrations of a small-prize expert acting at random 20% of the time. Equal compute =
    equal environment steps: PPO alone and BC-then-PPO with KL towards BC (lambda 0.05) each get 12288 env
    steps; BC alone gets none (it cannot use them); both demo methods see the same 2 demonstrations. The
    score of a seed is the greedy return (mean of 10 episodes). On seeds 0, 1, 2, ppo_demo_kl's mean score
    beats PPO alone's and BC alone's by >= 2 paired standard errors over seeds (and by more than 0)."""
    for base in ("ppo", "bc"):
        gain, se = paired_gain(lock_results["ppo_demo_kl"], lock_results[base])
        assert gain > 0 and gain >= 2 * se, (base, gain, se, {k: v.tolist() for k, v in lock_results.items()})
