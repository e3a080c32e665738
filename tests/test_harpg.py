"""Variance-reduced normalised policy gradient (N-HARPG), N-PG-IGT, normalised PG and REINFORCE."""

import math

import pytest
import torch

from rlxf.algorithms.control.harpg import (VRPG, VRPGConfig, gpomdp_surrogate, gradient_and_hvp,
                                           normalised_step)
from rlxf.policies.control import make_policy


def test_gpomdp_weights_are_discounted_rewards_to_go():
    # rewards (1, 1), gamma 0.5: G_0 = 1 + 0.5 = 1.5, G_1 = 0.5
    logps = torch.zeros(2, requires_grad=True)
    gpomdp_surrogate(logps, torch.tensor([1.0, 1.0]), 0.5).backward()
    assert logps.grad.tolist() == [1.5, 0.5]


def test_bandit_gradient_and_hessian_correction_by_hand():
    # one-step bandit, softmax over logits theta = (log 3, 0): p = (0.75, 0.25); action 0, reward 2.
    # grad log pi(0) = e_0 - p = (0.25, -0.25), so g = 2 * (0.25, -0.25) = (0.5, -0.5).
    # Hessian of log pi(0) = -(diag p - p p^T) = -[[0.1875, -0.1875], [-0.1875, 0.1875]].
    # v = (1, 0): grad log p . v = 0.25 -> g * 0.25 = (0.125, -0.125); grad(g . v) = 2 H v = (-0.375, 0.375).
    # B v = (0.125 - 0.375, -0.125 + 0.375) = (-0.25, 0.25).
    theta = torch.tensor([math.log(3.0), 0.0], requires_grad=True)
    logps = torch.log_softmax(theta, -1)[0:1]
    g, bv = gradient_and_hvp(logps, torch.tensor([2.0]), 0.99, [theta], torch.tensor([1.0, 0.0]))
    assert torch.allclose(g, torch.tensor([0.5, -0.5]))
    assert torch.allclose(bv, torch.tensor([-0.25, 0.25]))
    g_only, none = gradient_and_hvp(torch.log_softmax(theta, -1)[0:1], torch.tensor([2.0]), 0.99, [theta])
    assert none is None and torch.allclose(g_only, g)


def test_hessian_vector_product_matches_finite_difference():
    # on a fixed trajectory, B v - g (grad log p . v) is the Hessian-vector product d/de g(theta + e v)
    torch.manual_seed(0)
    policy = make_policy(4, 2, True, hidden=8).double()
    params = list(policy.parameters())
    obs, act, rew = torch.randn(6, 4, dtype=torch.float64), torch.randint(0, 2, (6,)), torch.rand(6, dtype=torch.float64)
    v = torch.randn(sum(p.numel() for p in params), dtype=torch.float64)

    def grads():
        logps = policy.log_prob(obs, act)
        score = torch.cat([x.reshape(-1) for x in torch.autograd.grad(logps.sum(), params, retain_graph=True)])
        g, bv = gradient_and_hvp(logps, rew, 0.9, params, v)
        return g, bv, score

    g, bv, score = grads()
    hvp = bv - g * (score @ v)

    def g_at(eps):
        with torch.no_grad():
            offset = 0
            for p in params:
                p.add_(eps * v[offset : offset + p.numel()].view_as(p))
                offset += p.numel()
        out = gradient_and_hvp(policy.log_prob(obs, act), rew, 0.9, params)[0]
        with torch.no_grad():
            offset = 0
            for p in params:
                p.sub_(eps * v[offset : offset + p.numel()].view_as(p))
                offset += p.numel()
        return out

    eps = 1e-5
    fd = (g_at(eps) - g_at(-eps)) / (2 * eps)
    assert hvp.abs().max() > 1e-3  # not trivially zero
    assert torch.allclose(hvp, fd, atol=1e-6, rtol=1e-5)


def test_normalised_step_has_norm_gamma():
    d = torch.tensor([3.0, -4.0])
    assert torch.linalg.vector_norm(normalised_step(d, 0.2)).item() == pytest.approx(0.2)
    assert normalised_step(torch.zeros(2), 0.2).abs().sum() == 0


@pytest.mark.parametrize("method", ["npg", "igt", "harpg"])
def test_each_normalised_iteration_moves_theta_by_gamma_with_one_trajectory(method):
    learner = VRPG(VRPGConfig(method=method, env="CartPole-v1", horizon=20, step=0.05, eta=0.5, hidden=8, seed=3))
    for i in range(3):
        before = learner.theta.clone()
        learner.iterate()
        assert torch.linalg.vector_norm(learner.theta - before).item() == pytest.approx(0.05, rel=1e-4)
        assert len(learner.returns) == i + 1  # one trajectory per iteration: equal iterations = equal samples


def test_bad_method_and_eta_are_named():
    with pytest.raises(ValueError, match="VRPGConfig.method"):
        VRPGConfig(method="ppo")
    with pytest.raises(ValueError, match="VRPGConfig.eta"):
        VRPGConfig(eta=0.0)


@pytest.mark.slow
@pytest.mark.long  # 238 s in a quiet full suite: outside test-all's hour (make test-long)
@pytest.mark.xfail(strict=True, reason=(
    "measured on seeds 0-4 (mean return AUC, paired gain +- SE): CartPole-v1 harpg 98.5 vs reinforce 55.8 "
    "(+42.7 +- 11.8, holds) but vs normalised PG 98.2 (+0.3 +- 7.6, tie); Acrobot-v1 harpg -468.4 vs reinforce "
    "-497.5 (+29.0 +- 14.6, 1.99 SE) and vs normalised PG -484.4 (+15.9 +- 22.6)"))
def test_harpg_beats_reinforce_and_normalised_pg_at_equal_trajectories():
    """Claim (issue 22): N-HARPG's mean return AUC (mean undiscounted return over every trajectory
    sampled while learning) is higher than REINFORCE's and than normalised PG's (momentum, no
    variance reduction) at equal trajectories, on CartPole-v1 (200 trajectories, horizon 200) and
    Acrobot-v1 (60 trajectories, horizon 500). Threshold, fixed before the first run: on each env and
    against each baseline, the paired-by-seed gain >= 2 SE over the 5 fresh seeds 0-4 (step sizes
    were picked on seeds 100-102). 325-406 s on one core of a busy 2-core machine.
    """
    from rlxf.algorithms.control.harpg import compare
    from rlxf.algorithms.evaluate import paired_gain

    res = compare(methods=("reinforce", "npg", "harpg"), seeds=range(5))
    gains = {(env, base): paired_gain(r["harpg"], r[base]) for env, r in res.items() for base in ("reinforce", "npg")}
    failed = {k: v for k, v in gains.items() if not (v[0] > 0 and v[0] >= 2 * v[1])}
    assert not failed, f"harpg minus baseline (gain, SE) that miss 2 SE: {failed}; AUCs per seed: {res}"


def test_table_reports_ratio_to_reinforce_oriented_so_higher_is_better():
    from rlxf.algorithms.control.harpg import table

    out = table({"A": {"reinforce": [1.0, 2.0, 3.0], "harpg": [2.0, 4.0, 6.0]},
                 "B": {"reinforce": [-4.0, -5.0, -6.0], "harpg": [-2.0, -2.5, -3.0]}})
    assert "A harpg/reinforce 2.00 (gain +2.0 +- 0.6)" in out  # gains 1, 2, 3: mean 2, SE 1/sqrt(3)
    assert "B harpg/reinforce 2.00 (gain +2.5 +- 0.3)" in out  # gains 2, 2.5, 3: mean 2.5, SE 0.5/sqrt(3)
