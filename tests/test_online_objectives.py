"""Nash, pairwise and f-divergence objectives against numbers worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from rlxf.core.steps import Steps
from rlxf.objectives.fdpg import fdpg_log_u, fdpg_loss
from rlxf.objectives.game import dno_loss, inpo_loss, nash_md_pg_loss
from rlxf.objectives.p3o import p3o_loss


def one(logp, ref=0.0, old=None):
    """A one-step sequence with log-probs under pi, mu and pi_t."""
    t = lambda x: torch.tensor([[float(x)]])  # noqa: E731
    return Steps(logps=t(logp).requires_grad_(), mask=t(1), ref_logps=t(ref), old_logps=t(logp if old is None else old))


def test_nash_md_pg_weight_and_gradient():
    s = one(-1.0, ref=-1.5)
    loss = nash_md_pg_loss(s, torch.tensor([0.8]), tau=0.2)
    weight = 0.8 - 0.5 - 0.2 * 0.5  # P - 1/2 - tau * log(pi/mu)
    assert loss.item() == pytest.approx(-weight * -1.0)
    loss.sum().backward()
    assert s.logps.grad.item() == pytest.approx(-weight)  # descent raises log pi of a winner


def test_inpo_hand_numbers():
    w, l = one(-1.0, ref=-2.0, old=-1.5), one(-3.0, ref=-2.5, old=-2.0)
    eta, tau = 0.5, 0.1
    h = (-1 + 3) - (tau / eta) * (-2 + 2.5) - ((eta - tau) / eta) * (-1.5 + 2.0)
    assert inpo_loss(w, l, eta, tau).item() == pytest.approx((h - 1 / (2 * eta)) ** 2)
    # default tau = eta / 3
    h3 = 2 - (1 / 3) * 0.5 - (2 / 3) * 0.5
    assert inpo_loss(w, l, eta).item() == pytest.approx((h3 - 1.0) ** 2)


def test_dno_soft_labels():
    a, b = one(-1.0, old=-1.2), one(-2.0, old=-1.9)
    m = 0.2 - (-0.1)
    p, eta = 0.7, 2.0
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    expected = -(p * math.log(sig(eta * m)) + (1 - p) * math.log(sig(-eta * m)))
    assert dno_loss(a, b, torch.tensor([p]), eta).item() == pytest.approx(expected, rel=1e-5)


def test_p3o_clips_each_ratio_and_is_shift_invariant():
    a, b = one(-1.0, old=-1.0), one(-2.0, old=-2.0 - math.log(2))  # rho_a = 1, rho_b = 2
    r1, r2 = torch.tensor([3.0]), torch.tensor([1.0])  # A = 1 for a, -1 for b
    loss = p3o_loss(a, b, r1, r2, clip=0.2)
    # a: -min(1*1, 1*1) = -1; b: -min(2*(-1), 1.2*(-1)) = 2
    assert loss.item() == pytest.approx(1.0)
    assert p3o_loss(a, b, r1 + 10, r2 + 10, clip=0.2).item() == pytest.approx(1.0)


def test_fdpg_log_u_uses_the_importance_sampled_normaliser():
    # two samples of one prompt, pi = pi_ref, rewards 0 and beta*log 3: w = 1 and 3, Z = 2
    s = Steps(logps=torch.zeros(2, 1), mask=torch.ones(2, 1), ref_logps=torch.zeros(2, 1))
    beta = 0.5
    log_u = fdpg_log_u(s, torch.tensor([0.0, beta * math.log(3)]), beta, group=2)
    assert log_u.tolist() == pytest.approx([math.log(2), math.log(2 / 3)], abs=1e-6)


@pytest.mark.parametrize("div, fprime", [
    ("reverse_kl", lambda u: math.log(u) + 1), ("forward_kl", lambda u: -1 / u),
    ("js", lambda u: math.log(2 * u / (1 + u))), ("tv", lambda u: 0.5 * math.copysign(1, u - 1)),
])
def test_fdpg_weights_are_f_prime_of_u(div, fprime):
    s = Steps(logps=torch.zeros(2, 1).requires_grad_(), mask=torch.ones(2, 1), ref_logps=torch.zeros(2, 1))
    beta = 0.5
    loss = fdpg_loss(s, torch.tensor([0.0, beta * math.log(3)]), beta, div, group=2, baseline=False)
    loss.sum().backward()
    us = [2.0, 2 / 3]
    assert s.logps.grad.flatten().tolist() == pytest.approx([fprime(u) for u in us], abs=1e-5)
    # the higher-reward sample (u < 1: under-weighted by pi) gets the lower weight, so descent raises it
    assert s.logps.grad[1, 0] < s.logps.grad[0, 0]


def test_nash_md_opponent_is_the_importance_weighted_geometric_mixture():
    from rlxf.algorithms.online.nash_md import mixture_win_rate

    # one group of 3 samples; P(row beats column)
    pref = torch.tensor([[[0.5, 0.8, 0.3], [0.2, 0.5, 0.6], [0.7, 0.4, 0.5]]])
    ref_minus = torch.tensor([[0.0, math.log(4.0), math.log(0.25)]])  # log mu(y) - log pi(y)
    # beta = 0: self-play, a plain mean over the other samples (SPO's reward)
    assert mixture_win_rate(pref, ref_minus, 0.0)[0].tolist() == pytest.approx([0.55, 0.4, 0.55])
    # beta = 0.5: opponent weights (mu/pi)^0.5 = 1, 2, 0.5, renormalised without the sample itself
    w = [[0, 2, 0.5], [1, 0, 0.5], [1, 2, 0]]
    want = [sum(w[i][j] * pref[0, i, j].item() for j in range(3)) / sum(w[i]) for i in range(3)]
    assert mixture_win_rate(pref, ref_minus, 0.5)[0].tolist() == pytest.approx(want)
    # beta = 1 against a sample the reference likes 16x more than the other: nearly a best response to it
    assert mixture_win_rate(pref, ref_minus, 1.0)[0, 0].item() == pytest.approx((4 * 0.8 + 0.25 * 0.3) / 4.25)


def test_constrained_rlhf_mixed_advantage_and_multiplier_steps():
    from rlxf.algorithms.online.constrained import lagrange_step, mixed_advantages

    kl_adv, a1, a2 = torch.tensor([1.0, -1.0]), torch.tensor([2.0, 0.0]), torch.tensor([0.0, 4.0])
    got = mixed_advantages(kl_adv, {"a": a1, "b": a2}, {"a": 0.5, "b": -0.25})
    # (N - sum lambda) = 2 - 0.25 = 1.75
    assert got.tolist() == pytest.approx([1.75 * 1 + 0.5 * 2, 1.75 * -1 + -0.25 * 4])
    # equality (tanh): above the threshold the multiplier falls (pushing the component down), below it rises
    assert lagrange_step(0.0, 2.0, 1.0, "equality", 0.1) == pytest.approx(-0.1)
    assert lagrange_step(0.0, 0.0, 1.0, "equality", 0.1) == pytest.approx(0.1)
    # at_least (sigmoid, derivative 1/4 at 0): a violated constraint raises the multiplier
    assert lagrange_step(0.0, 0.0, 1.0, "at_least", 0.1) == pytest.approx(0.025)


def test_occupancy_chi2_uses_the_cumulative_ratio_of_the_path():
    from rlxf.objectives.policy_gradient import occupancy_chi2

    logps = torch.tensor([[0.1, 0.2, -0.5], [0.3, 0.0, 0.0]])  # log pi - log pi_ref per step (ref = 0)
    s = Steps(logps=logps, mask=torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]]), ref_logps=torch.zeros(2, 3))
    want = [[math.expm1(0.1), math.expm1(0.3), math.expm1(-0.2)], [math.expm1(0.3), 0.0, 0.0]]
    assert occupancy_chi2(s).tolist() == [pytest.approx(r) for r in want]
    # the sqrt form divides by the root of the mean penalty over real steps (nothing trimmed at 4 values
    # with trim = 0: quantiles 0 and 1 keep everything)
    mean = (sum(want[0]) + want[1][0]) / 4
    got = occupancy_chi2(s, sqrt=True, trim=0.0)
    assert got.tolist() == [pytest.approx([v / math.sqrt(mean) for v in r]) for r in want]
