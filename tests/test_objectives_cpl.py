"""CPL against hand-computed numbers, and CPL/DPO on a control (Gaussian-policy) batch."""

from __future__ import annotations

import math

import pytest
import torch

from rlxf.core.steps import Steps
from rlxf.objectives.cpl import cpl_loss, cpl_score
from rlxf.objectives.preference import dpo_loss

NAN = float("nan")

# Segment pairs; None = padding. Row 1 of the rejected segments is left-padded, so its
# discount must start at its first real step.
CHOSEN = [[-0.2, -0.4, -0.1], [-0.3, -0.6, None]]
REJECTED = [[-1.0, -0.9, -1.2], [None, -0.8, -1.4]]


def make(rows, pad_extra=0):
    lp = torch.tensor([[NAN if v is None else v for v in r] + [NAN] * pad_extra for r in rows], dtype=torch.float64)
    mask = torch.tensor([[0.0 if v is None else 1.0 for v in r] + [0.0] * pad_extra for r in rows], dtype=torch.float64)
    return Steps(logps=lp.requires_grad_(True), mask=mask)


def score(row, alpha, gamma):
    real = [v for v in row if v is not None]
    return sum(gamma**t * alpha * v for t, v in enumerate(real))


def logsig(x):
    return -math.log1p(math.exp(-x))


def test_score_by_hand():
    got = cpl_score(make(REJECTED), alpha=0.1, gamma=0.9)
    assert got.tolist() == pytest.approx([score(r, 0.1, 0.9) for r in REJECTED])


def test_cpl_by_hand():
    a, lam, g = 0.1, 0.5, 0.9
    exp = [
        -math.log(math.exp(score(CHOSEN[i], a, g)) / (math.exp(score(CHOSEN[i], a, g)) + math.exp(lam * score(REJECTED[i], a, g))))
        for i in range(2)
    ]
    got = cpl_loss(make(CHOSEN), make(REJECTED), alpha=a, lam=lam, gamma=g)
    assert got.shape == (2,)
    assert got.tolist() == pytest.approx(exp, abs=1e-12)


def test_cpl_bc_by_hand():
    a, g, bc = 0.1, 1.0, 1.0
    exp = []
    for c, r in zip(CHOSEN, REJECTED):
        real = [v for v in c + r if v is not None]
        exp.append(-logsig(score(c, a, g) - score(r, a, g)) + bc * -sum(real) / len(real))
    got = cpl_loss(make(CHOSEN), make(REJECTED), alpha=a, lam=1.0, gamma=g, bc_coeff=bc)
    assert got.tolist() == pytest.approx(exp, abs=1e-12)


def test_cpl_padding_and_micro_batch_invariance():
    base = cpl_loss(make(CHOSEN), make(REJECTED), gamma=0.9, bc_coeff=0.5)
    padded = cpl_loss(make(CHOSEN, pad_extra=3), make(REJECTED, pad_extra=1), gamma=0.9, bc_coeff=0.5)
    assert torch.isfinite(base).all()
    assert torch.allclose(base, padded)
    c, r = make(CHOSEN), make(REJECTED)
    parts = torch.cat([cpl_loss(c[i : i + 1], r[i : i + 1], gamma=0.9, bc_coeff=0.5) for i in range(2)])
    assert torch.allclose(base, parts)


def test_cpl_gradient_signs():
    c, r = make(CHOSEN, pad_extra=1), make(REJECTED, pad_extra=1)
    cpl_loss(c, r, alpha=0.1, lam=0.5, gamma=0.9).sum().backward()
    assert (c.logps.grad[c.mask > 0] < 0).all()
    assert (r.logps.grad[r.mask > 0] > 0).all()
    assert (c.logps.grad[c.mask == 0] == 0).all() and (r.logps.grad[r.mask == 0] == 0).all()


def test_cpl_conservative_bias_is_checked():
    with pytest.raises(ValueError, match="lam"):
        cpl_loss(make(CHOSEN), make(REJECTED), lam=0.0)


def test_cpl_and_dpo_accept_a_control_batch():
    """A control batch: per-step action log-probs of a Gaussian policy, episodes of different lengths."""
    torch.manual_seed(0)
    batch, horizon, act_dim = 4, 6, 2
    mu = torch.zeros(act_dim, requires_grad=True)
    log_std = torch.zeros(act_dim, requires_grad=True)

    def segment(actions, lengths):
        pi = torch.distributions.Normal(mu, log_std.exp())
        ref = torch.distributions.Normal(torch.full((act_dim,), 0.3), torch.ones(act_dim))
        mask = (torch.arange(horizon)[None, :] < torch.tensor(lengths)[:, None]).float()
        return Steps(
            logps=pi.log_prob(actions).sum(-1),  # [batch, steps]
            mask=mask,
            ref_logps=ref.log_prob(actions).sum(-1),
        )

    chosen = segment(torch.randn(batch, horizon, act_dim) * 0.5, [6, 4, 5, 6])
    rejected = segment(torch.randn(batch, horizon, act_dim) * 2.0 + 1.0, [6, 6, 3, 5])
    for loss in (cpl_loss(chosen, rejected, gamma=0.99), dpo_loss(chosen, rejected, beta=0.1)):
        assert loss.shape == (batch,) and torch.isfinite(loss).all()
        mu.grad = log_std.grad = None
        loss.mean().backward(retain_graph=True)
        assert mu.grad is not None and torch.isfinite(mu.grad).all() and mu.grad.abs().sum() > 0
