"""APOHF's pieces by hand (gradient features, the diagonal exploration bonus, the duel, the BCE, Adam
against PyTorch's), its loop's bookkeeping (same initial weights every refit, the reported prompt among
the queried ones), and (slow) the C3 claim on synthetic prompts against random pairs and the linear
dueling bandit."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rlxf.algorithms.dueling import duel_pair
from rlxf.algorithms.evaluate import paired_gain
from rlxf.algorithms.prompts import apohf
from rlxf.algorithms.prompts.apohf import (ApohfConfig, DuelRuns, backprop, duel_bce, exploration_variance,
                                           fit_duels, forward, gradient_features, init_mlp, linear_bandit,
                                           run_duels, standardise)


def _tiny():
    """h(x) = 2 relu(x) + 0.5 on scalar x: one hidden unit (w1 = 1, b1 = 0), w2 = 2, b2 = 0.5."""
    return [np.array([[[1.0]]], np.float32), np.array([[[0.0]]], np.float32),
            np.array([[[2.0]]], np.float32), np.array([[[0.5]]], np.float32)]


X = np.array([[1.0], [2.0], [-1.0]], np.float32)


def test_gradient_features_by_hand():
    # (dW1, db1, dW2, db2) = (w2 x [x > 0], w2 [x > 0], relu(x), 1)
    g = gradient_features(_tiny(), X)[0]
    assert g.tolist() == [[2, 2, 1, 1], [4, 2, 2, 1], [0, 0, 0, 1]]
    assert forward(_tiny(), X)[0][0].tolist() == [2.5, 4.5, 0.5]


def test_exploration_bonus_and_duel_by_hand():
    g = gradient_features(_tiny(), X)[0]
    history = np.array([[0, 2]])  # one past duel: g(0) - g(2) = (2, 2, 1, 0), so U = 0.1 + that squared
    var = exploration_variance(g, history, arm1=1, lam=0.1)
    # against arm 1 (h = 4.5): candidate 0 differs by (-2, 0, -1, 0), candidate 2 by (-4, -2, -2, 0)
    assert var == pytest.approx([4 / 4.1 + 1 / 1.1, 0.0, 16 / 4.1 + 4 / 4.1 + 4 / 1.1])
    h = forward(_tiny(), X)[0][0]
    rng = np.random.default_rng(0)
    # nu = 1: ucb 2.5 + 1.373 = 3.873 for candidate 0 beats 0.5 + 2.918 = 3.418 for candidate 2
    a1, a2, value = duel_pair(h, lambda a: exploration_variance(g, history, a, 0.1), 1.0, rng)
    assert (a1, a2) == (1, 0) and value == pytest.approx(2.5 + math.sqrt(var[0]) - 4.5)
    # nu = 4 doubles the bonus: 2.5 + 2.746 = 5.246 against 0.5 + 5.836 = 6.336
    assert duel_pair(h, lambda a: exploration_variance(g, history, a, 0.1), 4.0, rng)[:2] == (1, 2)
    # nu = 0: no exploration, the runner-up by h
    assert duel_pair(h, lambda a: exploration_variance(g, history, a, 0.1), 0.0, rng)[:2] == (1, 0)


def _torch_mlp(params, x):
    a = torch.as_tensor(x)
    for k in range(0, len(params), 2):
        a = a @ params[k] + params[k + 1]
        if k < len(params) - 2:
            a = torch.relu(a)
    return a[..., 0]


def test_backprop_matches_autograd():
    params = init_mlp(2, 5, (4, 3), [np.random.default_rng(i) for i in range(2)])
    x = np.random.default_rng(5).standard_normal((2, 7, 5)).astype(np.float32)
    weights = np.random.default_rng(6).standard_normal((2, 7)).astype(np.float32)
    tp = [torch.tensor(p, requires_grad=True) for p in params]
    (_torch_mlp(tp, x) * torch.from_numpy(weights)).sum().backward()
    h, inputs = forward(params, x)
    for mine, theirs in zip(backprop(params, inputs, weights), tp):
        assert np.allclose(mine, theirs.grad.numpy(), atol=1e-5)
    for p in tp:
        p.grad = None
    _torch_mlp(tp, x)[1, 3].backward()
    assert np.allclose(gradient_features(params, x)[1, 3], torch.cat([p.grad[1].flatten() for p in tp]), atol=1e-5)


def test_linear_utility_gradient_is_the_input():
    params = init_mlp(1, 4, (), [np.random.default_rng(0)], kind="linear")
    assert len(params) == 1 and np.abs(params[0]).max() <= 0.5  # U(-1/sqrt(4), 1/sqrt(4)), no bias
    x = np.random.default_rng(1).standard_normal((6, 4)).astype(np.float32)
    assert np.allclose(gradient_features(params, x)[0], x)


def test_duel_bce_by_hand():
    loss, dlogit = duel_bce(np.array([[0.0, 2.0]]), np.array([[0.0, 0.0]]), np.array([[1.0, 0.5]]))
    assert loss[0] == pytest.approx((math.log(2) + math.log(1 + math.exp(2)) - 0.5 * 2) / 2)
    s = 1 / (1 + math.exp(-2))
    assert dlogit[0].tolist() == pytest.approx([(0.5 - 1) / 2, (s - 0.5) / 2])
    big, _ = duel_bce(np.array([[800.0]]), np.array([[0.0]]), np.array([[0.0]]))  # no overflow
    assert big[0] == pytest.approx(800.0)


def test_fit_is_pytorch_adam_with_weight_decay_from_the_initial_weights():
    params = init_mlp(1, 3, (4,), [np.random.default_rng(3)])
    x = np.random.default_rng(4).standard_normal((1, 5, 3)).astype(np.float32)
    first, second, y = np.array([[0, 1, 2, 3]]), np.array([[4, 2, 0, 1]]), np.array([[1.0, 0.0, 1.0, 0.5]])
    mine = fit_duels(params, x, first, second, y, steps=7, lr=0.05, weight_decay=0.02)
    tp = [torch.tensor(p[0], requires_grad=True) for p in params]
    opt = torch.optim.Adam(tp, lr=0.05, weight_decay=0.02)
    xt = torch.from_numpy(x[0])
    for _ in range(7):
        h = _torch_mlp(tp, xt)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(h[first[0]] - h[second[0]],
                                                                    torch.tensor(y[0], dtype=torch.float32))
        opt.zero_grad()
        loss.backward()
        opt.step()
    for a, b in zip(mine, tp):
        assert np.allclose(a[0], b.detach().numpy(), atol=1e-5)
    assert not np.allclose(mine[0], params[0])  # it moved, and the initial weights did not


def test_every_refit_starts_from_the_same_initial_weights():
    x = np.random.default_rng(0).standard_normal((8, 3)).astype(np.float32)
    cfg = ApohfConfig(steps=5, n_init=2)
    runs = DuelRuns.start(x, [cfg], [7])
    init = [p.copy() for p in runs.init]
    runs.add(np.array([[0, 1]]), np.array([1.0]))
    runs.add(np.array([[2, 3]]), np.array([0.0]))
    assert all(np.array_equal(a, b) for a, b in zip(runs.init, init))
    again = fit_duels(init, runs.x, runs.first, runs.second, runs.y, 5, cfg.lr, cfg.lam / (2 + 50))
    assert all(np.array_equal(a, b) for a, b in zip(runs.params, again))
    assert runs.n_duels == 2 and runs.first.tolist() == [[0, 2]] and runs.y.tolist() == [[1.0, 0.0]]


def test_reported_prompt_is_the_best_queried_one_not_the_best_overall():
    x = np.eye(4, dtype=np.float32)
    runs = DuelRuns.start(x, [ApohfConfig(hidden=(), model="linear", lam=1e-10)], [0])
    runs.params = [np.array([[[1.0], [2.0], [3.0], [9.0]]], np.float32)]  # h = (1, 2, 3, 9)
    runs.first, runs.second, runs.y = np.array([[0]]), np.array([[2]]), np.array([[0.0]])
    assert runs.reported().tolist() == [2]  # candidate 3 has the highest h but was never asked about
    pairs = runs.next_pairs()  # past n_init = 5? no: 1 duel < 5, so a random pair
    assert pairs.shape == (1, 2) and pairs[0, 0] != pairs[0, 1]


def test_random_pairs_and_the_rule_after_the_initial_duels():
    x = np.random.default_rng(0).standard_normal((6, 3)).astype(np.float32)
    runs = DuelRuns.start(x, [ApohfConfig(steps=3, n_init=1), ApohfConfig(steps=3, n_init=1, nu=-1.0)], [0, 0])
    runs.add(np.array([[0, 1], [0, 1]]), np.array([1.0, 1.0]))
    pair = runs.next_pairs()[0]
    assert pair[0] == int(np.argmax(runs.utility()[0]))  # arm 1 is the argmax of h over all candidates
    seen = {tuple(sorted(runs.next_pairs()[1])) for _ in range(60)}
    assert len(seen) > 8  # nu = -1: random pairs (15 possible)


def test_a_person_with_a_clear_order_gets_one_of_their_top_two_reported():
    """12 candidates, a person whose utility is 5 x a random rank (nearly deterministic answers):
    after 30 duels each of 3 runs reports one of the person's top two (chance: 1 in 6 per run)."""
    x = np.random.default_rng(2).standard_normal((12, 4)).astype(np.float32)
    utility = np.tile(np.random.default_rng(12).permutation(12) * 5.0, (3, 1))
    reported, _ = run_duels(x, apohf.bt_oracle(utility, seed=0), [ApohfConfig(steps=50, lr=2e-2, nu=10.0)] * 3,
                            [0, 1, 2], rounds=30)
    assert (utility[0, reported[:, -1]] >= 50).all()


def test_standardise_uses_fifty_random_candidates_and_the_magnitude():
    score = np.arange(200.0)
    out = standardise(score, np.random.default_rng(0))
    ref = score[np.random.default_rng(0).integers(200, size=50)]
    assert out == pytest.approx(10 * (score - ref.mean()) / ref.std())


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="nu"):
        ApohfConfig(nu=-2).check()
    with pytest.raises(ValueError, match="model"):
        ApohfConfig(model="tree").check()
    with pytest.raises(ValueError, match="steps"):
        ApohfConfig(steps=0).check()
    with pytest.raises(ValueError, match="share"):
        DuelRuns.start(np.zeros((3, 2)), [ApohfConfig(), linear_bandit()], [0, 0])
    with pytest.raises(ValueError, match="one seed per config"):
        DuelRuns.start(np.zeros((3, 2)), [ApohfConfig()], [0, 1])


def test_cli_prints_the_table(capsys):
    apohf.main(["--rounds", "8", "--candidates", "12", "--dim", "4", "--seeds", "0", "1"])
    out = capsys.readouterr().out
    assert "apohf minus random_pairs after 8 duels" in out and "linear_bandit" in out


# -- the claim ------------------------------------------------------------------------------------
CLAIM_SEEDS = [100, 101, 102, 103, 104, 105]


@pytest.fixture(scope="module")
def claim():
    return apohf.synthetic_comparison(CLAIM_SEEDS, rounds=150)


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason=(
    "measured on its first run (seeds 100-105): z-score after 150 duels apohf 2.235 +- 0.203, random pairs "
    "1.514 +- 0.258, linear bandit 2.374 +- 0.156; apohf minus random pairs +0.720, paired SE 0.452 (1.6 SE). "
    "Not retuned."))
def test_claim_apohf_beats_random_pairs(claim):
    """C3's toy check, pre-registered before its first run: 200 synthetic prompts (32-dim unit
    embeddings, hidden score from a fixed random tanh MLP), a Bradley-Terry person on the standardised
    score x 10, 150 duels, seeds 100-105 (tuning used seeds 0-2 and picked nu = 100, 50 Adam steps at
    lr 2e-2 per refit). The hidden score (z-scored over the pool) of APOHF's reported prompt after 150
    duels beats random pairs (same network, training and reporting, nu = -1) by at least 2 paired
    standard errors."""
    gain, se = paired_gain(claim["apohf"][:, -1], claim["random_pairs"][:, -1])
    assert gain >= 2 * se, f"apohf minus random pairs {gain:.3f}, paired SE {se:.3f}"


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason=(
    "measured on its first run (seeds 100-105): apohf minus the linear dueling bandit after 150 duels "
    "-0.140, paired SE 0.269 (-0.5 SE); the linear bandit leads at every checkpoint (10-150 duels). Not retuned."))
def test_claim_apohf_beats_the_linear_dueling_bandit(claim):
    """As above, against the linear dueling bandit (linear utility, same rule): at least 2 paired SE."""
    gain, se = paired_gain(claim["apohf"][:, -1], claim["linear_bandit"][:, -1])
    assert gain >= 2 * se, f"apohf minus linear bandit {gain:.3f}, paired SE {se:.3f}"
