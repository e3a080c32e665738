"""Direct preference losses against hand-computed numbers (plain ``math``), plus padding,
micro-batching and gradient-sign properties."""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from rlxf.core.steps import Steps
from rlxf.objectives import preference as P
from rlxf.objectives.cpl import cpl_loss

NAN = float("nan")

# Two pairs, three steps; None marks padding. Row 1 of chosen and row 0 of rejected are padded.
CHOSEN = [[-1.0, -0.5, -2.0], [-0.3, -0.7, None]]
CHOSEN_REF = [[-1.2, -0.4, -2.5], [-0.5, -0.9, None]]
REJECTED = [[-1.5, -2.0, None], [-0.8, -1.1, -0.4]]
REJECTED_REF = [[-1.1, -1.8, None], [-0.6, -1.0, -0.5]]


def make(logps, ref=None, pad_extra=0):
    """Steps from nested lists (None = padding, stored as NaN), optionally with extra NaN padding."""
    rows = [[NAN if v is None else v for v in r] + [NAN] * pad_extra for r in logps]
    mask = [[0.0 if v is None else 1.0 for v in r] + [0.0] * pad_extra for r in logps]
    lp = torch.tensor(rows, dtype=torch.float64, requires_grad=True)
    rf = None
    if ref is not None:
        rf = torch.tensor([[NAN if v is None else v for v in r] + [NAN] * pad_extra for r in ref], dtype=torch.float64)
    return Steps(logps=lp, mask=torch.tensor(mask, dtype=torch.float64), ref_logps=rf)


def pair(pad_c=0, pad_r=0):
    return make(CHOSEN, CHOSEN_REF, pad_c), make(REJECTED, REJECTED_REF, pad_r)


# -- plain-python reference quantities ---------------------------------------------


def s(row):
    return sum(v for v in row if v is not None)


def n(row):
    return sum(1 for v in row if v is not None)


def mean(row):
    return s(row) / n(row)


def logsig(x):
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def sig(x):
    return 1.0 / (1.0 + math.exp(-x))


def logratio(i, which):
    lp, rf = (CHOSEN, CHOSEN_REF) if which == "c" else (REJECTED, REJECTED_REF)
    return s(lp[i]) - s(rf[i])


def mean_logratio(i, which):
    lp, rf = (CHOSEN, CHOSEN_REF) if which == "c" else (REJECTED, REJECTED_REF)
    return logratio(i, which) / n(lp[i])


def h(i):
    return logratio(i, "c") - logratio(i, "r")


def check(got, expected):
    assert got.shape == (2,)
    assert torch.allclose(got.double(), torch.tensor(expected, dtype=torch.float64), atol=1e-10), (got, expected)


# -- numbers --------------------------------------------------------------------------


def test_margin_and_implicit_reward_by_hand():
    c, r = pair()
    check(P.dpo_margin(c, r), [h(0), h(1)])
    check(P.implicit_reward(c, 0.3), [0.3 * logratio(0, "c"), 0.3 * logratio(1, "c")])


def test_dpo_by_hand():
    check(P.dpo_loss(*pair(), beta=0.2), [-logsig(0.2 * h(i)) for i in range(2)])


def test_cdpo_by_hand():
    b, e = 0.5, 0.2
    exp = [-(1 - e) * logsig(b * h(i)) - e * logsig(-b * h(i)) for i in range(2)]
    check(P.cdpo_loss(*pair(), beta=b, eps=e), exp)


def test_robust_dpo_by_hand():
    b, e = 0.5, 0.2
    exp = [((1 - e) * -logsig(b * h(i)) - e * -logsig(-b * h(i))) / (1 - 2 * e) for i in range(2)]
    check(P.robust_dpo_loss(*pair(), beta=b, eps=e), exp)


def test_robust_dpo_is_unbiased_under_label_flips():
    c, r = pair()
    b, e = 0.5, 0.2
    expected_over_flips = (1 - e) * P.robust_dpo_loss(c, r, b, e) + e * P.robust_dpo_loss(r, c, b, e)
    assert torch.allclose(expected_over_flips, P.dpo_loss(c, r, b))


def test_noise_variants_reduce_to_dpo_at_zero_eps():
    c, r = pair()
    assert torch.allclose(P.cdpo_loss(c, r, 0.3, 0.0), P.dpo_loss(c, r, 0.3))
    assert torch.allclose(P.robust_dpo_loss(c, r, 0.3, 0.0), P.dpo_loss(c, r, 0.3))
    with pytest.raises(ValueError, match="eps"):
        P.robust_dpo_loss(c, r, 0.3, 0.5)


def test_ipo_paper_form_by_hand():
    tau = 0.25
    check(P.ipo_loss(*pair(), tau=tau), [(h(i) - 1 / (2 * tau)) ** 2 for i in range(2)])


def test_ipo_mean_form_by_hand():
    tau = 0.25
    hm = [mean_logratio(i, "c") - mean_logratio(i, "r") for i in range(2)]
    check(P.ipo_mean_loss(*pair(), tau=tau), [(hm[i] - 1 / (2 * tau)) ** 2 for i in range(2)])


def test_rpo_paper_form_by_hand():
    b, eta = 0.1, 0.005
    check(P.rpo_loss(*pair(), beta=b, eta=eta), [-logsig(b * h(i)) - eta * b * s(CHOSEN[i]) for i in range(2)])


def test_rpo_mean_form_by_hand():
    b, a = 0.1, 1.0
    check(P.rpo_mean_loss(*pair(), beta=b, alpha=a), [-logsig(b * h(i)) - a * mean(CHOSEN[i]) for i in range(2)])


def test_fdpo_by_hand():
    b = 0.5
    u = {w: [math.exp(logratio(i, w)) for i in range(2)] for w in "cr"}
    rev = [-logsig(b * (math.log(u["c"][i]) - math.log(u["r"][i]))) for i in range(2)]
    fwd = [-logsig(b * (-1 / u["c"][i] + 1 / u["r"][i])) for i in range(2)]
    js = [
        -logsig(b * (math.log(2 * u["c"][i] / (1 + u["c"][i])) - math.log(2 * u["r"][i] / (1 + u["r"][i]))))
        for i in range(2)
    ]
    a = 0.3

    def fa(x):
        return (1 - x ** (-a)) / a

    alpha = [-logsig(b * (fa(u["c"][i]) - fa(u["r"][i]))) for i in range(2)]
    check(P.fdpo_reverse_kl_loss(*pair(), beta=b), rev)
    check(P.fdpo_forward_kl_loss(*pair(), beta=b), fwd)
    check(P.fdpo_js_loss(*pair(), beta=b), js)
    check(P.fdpo_alpha_loss(*pair(), beta=b, alpha=a), alpha)


def test_fdpo_alpha_limits():
    c, r = pair()
    assert torch.allclose(P.fdpo_alpha_loss(c, r, 0.5, alpha=0.0), P.dpo_loss(c, r, 0.5))
    assert torch.allclose(P.fdpo_alpha_loss(c, r, 0.5, alpha=1e-7), P.dpo_loss(c, r, 0.5), atol=1e-6)
    assert torch.allclose(P.fdpo_alpha_loss(c, r, 0.5, alpha=1.0), P.fdpo_forward_kl_loss(c, r, 0.5))
    assert torch.allclose(P.fdpo_reverse_kl_loss(c, r, 0.5), P.dpo_loss(c, r, 0.5))


def test_slic_by_hand():
    d, lam = 1.0, 0.1
    exp = [max(0.0, d - s(CHOSEN[i]) + s(REJECTED[i])) - lam * s(CHOSEN[i]) for i in range(2)]
    check(P.slic_loss(*pair(), delta=d, lam=lam), exp)
    assert exp[1] == pytest.approx(-lam * s(CHOSEN[1]))  # hinge inactive on pair 1: only the regulariser


def test_slic_ignores_reference():
    c, r = pair()
    c2, r2 = c.replace(ref_logps=None), r.replace(ref_logps=None)
    assert torch.allclose(P.slic_loss(c, r), P.slic_loss(c2, r2))
    assert torch.allclose(P.simpo_loss(c, r), P.simpo_loss(c2, r2))
    assert torch.allclose(P.orpo_loss(c, r), P.orpo_loss(c2, r2))


def test_hinge_by_hand():
    b = 0.4
    check(P.hinge_loss(*pair(), beta=b), [max(0.0, 1 - b * h(i)) for i in range(2)])


def test_simpo_by_hand():
    b, g = 2.0, 1.0
    check(
        P.simpo_loss(*pair(), beta=b, gamma=g),
        [-logsig(b * mean(CHOSEN[i]) - b * mean(REJECTED[i]) - g) for i in range(2)],
    )


def test_orpo_by_hand():
    lam = 0.1

    def log_odds(row):
        p = math.exp(mean(row))
        return math.log(p / (1 - p))

    exp = [-mean(CHOSEN[i]) - lam * logsig(log_odds(CHOSEN[i]) - log_odds(REJECTED[i])) for i in range(2)]
    check(P.orpo_loss(*pair(), lam=lam), exp)


def test_orpo_log1mexp_is_stable_at_both_ends():
    x = torch.tensor([-1e-9, -1e-3, -0.5, -5.0, -50.0], dtype=torch.float64)
    expected = [math.log(-math.expm1(v)) for v in x.tolist()]
    got = P._log1mexp(x)
    assert torch.allclose(got, torch.tensor(expected, dtype=torch.float64), rtol=1e-12)
    # float32 near P = 1 (mean log-prob ~ 0) stays finite with a finite gradient.
    c = Steps(logps=torch.zeros(1, 2, requires_grad=True), mask=torch.ones(1, 2))
    r = Steps(logps=torch.full((1, 2), -1.0), mask=torch.ones(1, 2))
    loss = P.orpo_loss(c, r)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(c.logps.grad).all()


def test_kto_by_hand():
    steps = make(CHOSEN, CHOSEN_REF)
    b, ld, lu, z0 = 0.5, 1.0, 1.33, 0.2
    desirable = torch.tensor([True, False])
    exp = [ld * (1 - sig(b * (logratio(0, "c") - z0))), lu * (1 - sig(b * (z0 - logratio(1, "c"))))]
    check(P.kto_loss(steps, desirable, torch.tensor(z0), beta=b, lambda_d=ld, lambda_u=lu), exp)


def test_kto_reference_point_by_hand():
    mism = make(REJECTED, REJECTED_REF)
    z = P.kto_reference_point(mism)
    assert z.dim() == 0 and not z.requires_grad
    assert z.item() == pytest.approx(max(0.0, (logratio(0, "r") + logratio(1, "r")) / 2))
    # a positive batch KL estimate passes through unclamped
    mism2 = make(CHOSEN, CHOSEN_REF)
    assert P.kto_reference_point(mism2).item() == pytest.approx((logratio(0, "c") + logratio(1, "c")) / 2)


def test_kto_reference_point_carries_no_gradient():
    steps = make(CHOSEN, CHOSEN_REF)
    z0 = P.kto_reference_point(steps)  # same tensors: any gradient through z0 would show up below
    loss = P.kto_loss(steps, torch.tensor([True, True]), z0, beta=0.5)
    loss.sum().backward()
    b = 0.5
    for i in range(2):
        sg = sig(b * (logratio(i, "c") - z0.item()))
        expected = -b * sg * (1 - sg)  # d/dr of 1 - sigma(beta (r - z0)), z0 held fixed
        for t in range(3):
            if CHOSEN[i][t] is not None:
                assert steps.logps.grad[i, t].item() == pytest.approx(expected)


def test_kto_gradient_signs_and_padding():
    desirable = torch.tensor([True, False])
    a = make(CHOSEN, CHOSEN_REF)
    la = P.kto_loss(a, desirable, 0.1)
    la.sum().backward()
    g = a.logps.grad
    assert (g[0, :3] < 0).all() and (g[1, :2] > 0).all() and g[1, 2] == 0
    b = make(CHOSEN, CHOSEN_REF, pad_extra=4)
    assert torch.allclose(la, P.kto_loss(b, desirable, 0.1))


def test_token_rewards_by_hand():
    steps = make(CHOSEN, CHOSEN_REF, pad_extra=2)
    tr = P.token_rewards(steps, beta=0.5)
    assert tr.shape == (2, 5)
    for i in range(2):
        for t in range(5):
            v = CHOSEN[i][t] if t < 3 else None
            expected = 0.0 if v is None else 0.5 * (v - CHOSEN_REF[i][t])
            assert tr[i, t].item() == pytest.approx(expected)
    assert torch.allclose(tr.sum(-1), P.implicit_reward(steps, 0.5))


def test_token_level_dpo_equals_sequence_dpo():
    c, r = pair()
    beta = 0.3
    token_form = -torch.nn.functional.logsigmoid(P.token_rewards(c, beta).sum(-1) - P.token_rewards(r, beta).sum(-1))
    assert torch.allclose(token_form, P.dpo_loss(c, r, beta))


# -- properties over the whole registry ------------------------------------------------

# hyperparameters for the gradient-sign test; SLiC needs a margin wide enough to be active on both pairs
SIGN_KWARGS = {"slic": {"delta": 3.0}}


def test_registry_names_and_signatures():
    expected = {
        "dpo", "cdpo", "robust_dpo", "ipo", "ipo_mean", "rpo", "rpo_mean", "fdpo_reverse_kl", "fdpo_forward_kl",
        "fdpo_js", "fdpo_alpha", "slic", "hinge", "simpo", "orpo", "cpl",
    }
    assert set(P.PAIR_LOSSES) == expected
    assert P.PAIR_LOSSES["cpl"] is cpl_loss
    for name, fn in P.PAIR_LOSSES.items():
        params = list(inspect.signature(fn).parameters)
        assert params[:2] == ["chosen", "rejected"], name
        assert fn.__doc__ and "[batch]" in fn.__doc__, name


@pytest.mark.parametrize("name", sorted(P.PAIR_LOSSES))
def test_padding_invariance(name):
    fn = P.PAIR_LOSSES[name]
    base = fn(*pair())
    padded = fn(*pair(pad_c=3, pad_r=1))
    assert base.shape == (2,) and torch.isfinite(base).all()
    assert torch.allclose(base, padded)


@pytest.mark.parametrize("name", sorted(P.PAIR_LOSSES))
def test_micro_batch_invariance(name):
    fn = P.PAIR_LOSSES[name]
    c, r = pair()
    whole = fn(c, r)
    parts = torch.cat([fn(c[i : i + 1], r[i : i + 1]) for i in range(2)])
    assert torch.allclose(whole, parts)


@pytest.mark.parametrize("name", sorted(P.PAIR_LOSSES))
def test_gradient_signs(name):
    """More chosen likelihood lowers the loss, more rejected likelihood raises it; padding gets none."""
    fn = P.PAIR_LOSSES[name]
    c, r = pair(pad_c=1, pad_r=1)
    loss = fn(c, r, **SIGN_KWARGS.get(name, {}))
    loss.sum().backward()
    assert torch.isfinite(c.logps.grad).all() and torch.isfinite(r.logps.grad).all()
    assert (c.logps.grad[c.mask > 0] < 0).all(), c.logps.grad
    assert (r.logps.grad[r.mask > 0] > 0).all(), r.logps.grad
    assert (c.logps.grad[c.mask == 0] == 0).all() and (r.logps.grad[r.mask == 0] == 0).all()


def test_losses_work_in_float32():
    c = Steps(logps=torch.tensor([[-1.0, -2.0]]), mask=torch.ones(1, 2), ref_logps=torch.tensor([[-1.5, -2.0]]))
    r = Steps(logps=torch.tensor([[-2.0, -2.0]]), mask=torch.ones(1, 2), ref_logps=torch.tensor([[-1.5, -2.0]]))
    for name, fn in P.PAIR_LOSSES.items():
        out = fn(c, r)
        assert out.dtype == torch.float32 and torch.isfinite(out).all(), name
