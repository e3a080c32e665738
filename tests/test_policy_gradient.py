"""Policy-gradient objectives against numbers worked out by hand."""

import math

import pytest
import torch

from rlxf.core.steps import Steps
from rlxf.objectives.policy_gradient import (
    adaptive_kl_beta,
    gae,
    grpo_advantages,
    kl_estimate,
    kl_k1,
    kl_k2,
    kl_k3,
    kl_penalized_rewards,
    ppo_clip_loss,
    reinforce_loss,
    rloo_advantages,
    value_loss,
    whiten,
)

NAN = float("nan")


def close(t, expected, tol=1e-5):
    got = t.flatten().tolist()
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert abs(g - e) <= tol, (got, expected)


def test_kl_estimators_on_hand_numbers():
    # step 0: pi=0.5, ref=0.25 -> rho=0.5; step 1: pi=0.2, ref=0.4 -> rho=2; step 2 is padding
    steps = Steps(
        logps=torch.tensor([[math.log(0.5), math.log(0.2), NAN]]),
        ref_logps=torch.tensor([[math.log(0.25), math.log(0.4), NAN]]),
        mask=torch.tensor([[1, 1, 0]]),
    )
    l2 = math.log(2)
    close(kl_k1(steps), [l2, -l2, 0.0])
    close(kl_k2(steps), [0.5 * l2**2, 0.5 * l2**2, 0.0])
    close(kl_k3(steps), [(0.5 - 1) + l2, (2 - 1) - l2, 0.0])
    for kind, fn in (("k1", kl_k1), ("k2", kl_k2), ("k3", kl_k3)):
        assert torch.equal(kl_estimate(steps, kind), fn(steps))
    assert torch.equal(kl_estimate(steps), kl_k3(steps))
    with pytest.raises(ValueError, match="k4"):
        kl_estimate(steps, "k4")


def test_k3_nonnegative():
    g = torch.Generator().manual_seed(0)
    steps = Steps(logps=torch.randn(16, 9, generator=g) * 3, ref_logps=torch.randn(16, 9, generator=g) * 3,
                  mask=torch.ones(16, 9))
    assert (kl_k3(steps) >= 0).all()
    assert (kl_k2(steps) >= 0).all()
    assert (kl_k1(steps) < 0).any()  # k1 can be negative per sample


def test_k1_k3_unbiased_k2_biased_by_monte_carlo():
    pi, ref = [0.5, 0.3, 0.2], [0.2, 0.3, 0.5]
    exact = sum(p * math.log(p / q) for p, q in zip(pi, ref))  # KL(pi || ref) = 0.2749
    k2_expect = sum(p * 0.5 * math.log(q / p) ** 2 for p, q in zip(pi, ref))  # 0.2939
    n = 100_000
    a = torch.multinomial(torch.tensor(pi), n, replacement=True, generator=torch.Generator().manual_seed(1))
    steps = Steps(logps=torch.tensor(pi).log()[a][:, None], ref_logps=torch.tensor(ref).log()[a][:, None],
                  mask=torch.ones(n, 1))
    assert abs(kl_k1(steps).mean().item() - exact) < 0.015  # std error ~0.0023
    assert abs(kl_k3(steps).mean().item() - exact) < 0.005  # std error ~0.0008
    k2 = kl_k2(steps).mean().item()
    assert abs(k2 - k2_expect) < 0.004 and abs(k2 - exact) > 0.015


def test_rloo_and_grpo_on_a_2x3_grid():
    r = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 6.0]])
    close(rloo_advantages(r), [1 - 2.5, 2 - 2.0, 3 - 1.5, 0 - 3.0, 0 - 3.0, 6 - 0.0])
    s2 = math.sqrt((4 + 4 + 16) / 2)  # unbiased std of row 2; row 1 has std 1
    close(grpo_advantages(r), [-1, 0, 1, -2 / s2, -2 / s2, 4 / s2], tol=1e-4)
    close(grpo_advantages(r, scale=False), [-1, 0, 1, -2, -2, 4])
    with pytest.raises(ValueError, match="at least 2"):
        rloo_advantages(torch.ones(3, 1))
    with pytest.raises(ValueError, match="at least 2"):
        grpo_advantages(torch.ones(3, 1))
    # identical rewards: no signal, and no division by zero
    assert torch.equal(grpo_advantages(torch.ones(1, 4)), torch.zeros(1, 4))


def test_whiten_uses_only_real_entries():
    x = torch.tensor([[1.0, 3.0, NAN], [5.0, NAN, NAN]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    close(whiten(x, mask), [-1.0, 0.0, 0.0, 1.0, 0.0, 0.0], tol=1e-5)  # mean 3, std 2


def test_reinforce_loss_is_minus_advantage_times_sequence_logp():
    steps = Steps(logps=torch.tensor([[-1.0, -2.0], [-0.5, NAN]]), mask=torch.tensor([[1, 1], [1, 0]]))
    close(reinforce_loss(steps, torch.tensor([2.0, -1.0])), [-2 * -3.0, 1 * -0.5])


def test_ppo_clip_zero_gradient_when_clipped():
    # rows: (ratio, advantage) = (1.5, +1) clipped, (0.5, +1) not, (0.5, -1) clipped, (1.5, -1) not
    ratios, adv = [1.5, 0.5, 0.5, 1.5], [1.0, 1.0, -1.0, -1.0]
    old = torch.full((4, 1), -1.0)
    logps = (old + torch.tensor(ratios).log()[:, None]).requires_grad_()
    steps = Steps(logps=logps, old_logps=old, mask=torch.ones(4, 1))
    loss = ppo_clip_loss(steps, torch.tensor(adv), clip=0.2)
    close(loss, [-1.2 * 1, -0.5 * 1, 0.8, 1.5])
    loss.sum().backward()
    # d(-rho A)/d logp = -rho A where unclipped, 0 where the clip is active
    close(logps.grad, [0.0, -0.5, 0.0, 1.5])


def test_ppo_clip_per_step_advantages_and_padding():
    old = torch.tensor([[0.0, 0.0, NAN]])
    steps = Steps(logps=torch.tensor([[0.0, math.log(1.1), NAN]], requires_grad=True), old_logps=old,
                  mask=torch.tensor([[1, 1, 0]]))
    loss = ppo_clip_loss(steps, torch.tensor([[2.0, -1.0, NAN]]))
    close(loss, [-2.0, 1.1, 0.0])
    loss.sum().backward()
    assert torch.isfinite(steps.logps.grad).all()
    with pytest.raises(ValueError, match="old_logps"):
        ppo_clip_loss(Steps(logps=torch.zeros(1, 2), mask=torch.ones(1, 2)), torch.ones(1))


def test_clip_higher_bound():
    old = torch.zeros(1, 1)
    steps = Steps(logps=torch.tensor([[math.log(1.25)]]), old_logps=old, mask=torch.ones(1, 1))
    close(ppo_clip_loss(steps, torch.ones(1), clip=0.2), [-1.2])
    close(ppo_clip_loss(steps, torch.ones(1), clip=0.2, clip_high=0.28), [-1.25])


def test_value_loss_plain_and_clipped():
    values = torch.tensor([[1.0, 0.1, NAN]], requires_grad=True)
    old = torch.tensor([[0.0, 0.5, NAN]])
    ret = torch.tensor([[1.0, 1.0, NAN]])
    mask = torch.tensor([[1, 1, 0]])
    close(value_loss(values, old, ret, mask), [0.0, 0.81, 0.0])
    # step 0 moved from 0 to 1 toward R=1: the clipped estimate 0.2 gives (0.2-1)^2 = 0.64 > 0
    clipped = value_loss(values, old, ret, mask, clip=0.2)
    close(clipped, [0.64, max(0.81, (0.3 - 1) ** 2), 0.0])
    clipped.sum().backward()
    assert torch.isfinite(values.grad).all()


def test_gae_terminated_vs_truncated_by_hand():
    g, lam = 0.9, 0.8
    r = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [1.0, 2.0, NAN]])
    v = torch.tensor([[0.5, 1.0, 1.5], [0.5, 1.0, 1.5], [0.5, 1.0, NAN]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 1], [1, 1, 0]])
    terminated = torch.tensor([True, False, True])
    boot = torch.tensor([0.0, 2.0, 0.0])
    adv, ret = gae(r, v, mask, gamma=g, lam=lam, bootstrap_value=boot, terminated=terminated)

    d0, d1 = 1 + g * 1.0 - 0.5, 2 + g * 1.5 - 1.0
    term2 = 3 + g * 0.0 - 1.5  # terminated: nothing after the last step
    trunc2 = 3 + g * 2.0 - 1.5  # truncated: bootstrap V(s_T) = 2
    a_term = [d0 + g * lam * (d1 + g * lam * term2), d1 + g * lam * term2, term2]
    a_trunc = [d0 + g * lam * (d1 + g * lam * trunc2), d1 + g * lam * trunc2, trunc2]
    short1 = 2 + 0.0 - 1.0
    a_short = [d0 + g * lam * short1, short1, 0.0]
    close(adv, a_term + a_trunc + a_short)
    close(ret, [a + b for a, b in zip(a_term + a_trunc + a_short, [0.5, 1.0, 1.5] * 2 + [0.5, 1.0, -0.0])])

    # defaults: all terminated, no bootstrap needed
    adv_default, _ = gae(r[:1], v[:1], mask[:1], gamma=g, lam=lam)
    close(adv_default, a_term)
    with pytest.raises(ValueError, match="bootstrap_value"):
        gae(r, v, mask, gamma=g, lam=lam, terminated=terminated)


def test_kl_penalized_rewards_sum_to_score_minus_beta_kl():
    steps = Steps(
        logps=torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, NAN]], requires_grad=True),
        ref_logps=torch.tensor([[-1.5, -2.0, -2.0], [-0.5, -1.0, NAN]]),
        mask=torch.tensor([[1, 1, 1], [1, 1, 0]]),
    )
    rewards = kl_penalized_rewards(torch.tensor([10.0, 20.0]), steps, beta=0.1)
    close(rewards, [-0.05, 0.0, 0.1 + 10.0, 0.05, 20.0, 0.0])
    close(rewards.sum(-1), [10 - 0.1 * (0.5 + 0 - 1.0), 20 - 0.1 * (-0.5 + 0)])
    assert not rewards.requires_grad
    with pytest.raises(ValueError, match="no real steps"):
        kl_penalized_rewards(torch.zeros(1), Steps(logps=torch.zeros(1, 2), ref_logps=torch.zeros(1, 2),
                                                    mask=torch.zeros(1, 2)), beta=0.1)


def test_adaptive_kl_beta_follows_ziegler():
    # error clipped to +0.2 when KL is twice the target
    assert adaptive_kl_beta(0.1, kl=12.0, target=6.0, horizon=10_000, n_steps=256) == pytest.approx(
        0.1 * (1 + 0.1 * 0.2 * 256 / 10_000))
    assert adaptive_kl_beta(0.1, kl=6.3, target=6.0, horizon=10_000, n_steps=256) == pytest.approx(
        0.1 * (1 + 0.1 * 0.05 * 256 / 10_000))
    assert adaptive_kl_beta(0.1, kl=0.0, target=6.0, horizon=100, n_steps=100) == pytest.approx(0.1 * (1 - 0.02))
