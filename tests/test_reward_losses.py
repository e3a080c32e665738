"""Reward-model losses against hand-computed values, and bad feedback rejected by row."""

import math

import pytest
import torch

from rlxf.rewards.losses import (
    RewardDataError,
    adaptive_margin,
    bradley_terry_loss,
    check_comparison_labels,
    check_rankings,
    check_ratings,
    flip_low_strength,
    label_smoothed_bt_loss,
    margin_bt_loss,
    plackett_luce_loss,
    preference_strength,
    rating_regression_loss,
    soft_bt_loss,
)


def sig(x):
    return 1 / (1 + math.exp(-x))


def test_bt_and_variants_by_hand():
    rw, rl = torch.tensor([1.0, -0.5]), torch.tensor([0.0, 0.5])
    assert bradley_terry_loss(rw, rl).tolist() == pytest.approx([-math.log(sig(1.0)), -math.log(sig(-1.0))])
    eps = 0.1
    want = [(1 - eps) * -math.log(sig(d)) + eps * -math.log(sig(-d)) for d in (1.0, -1.0)]
    assert label_smoothed_bt_loss(rw, rl, eps).tolist() == pytest.approx(want)
    assert margin_bt_loss(rw, rl, torch.tensor([0.3, 0.0])).tolist() == pytest.approx(
        [-math.log(sig(0.7)), -math.log(sig(-1.0))])
    # a tie (p = 1/2) is minimised at equal scores: the loss there is log 2, larger elsewhere
    tie = soft_bt_loss(torch.tensor([0.0, 1.0]), torch.tensor([0.0, 0.0]), torch.tensor([0.5, 0.5]))
    assert tie[0].item() == pytest.approx(math.log(2))
    assert tie[1].item() > tie[0].item()


def test_bt_gradient_pushes_chosen_up():
    rw, rl = torch.tensor([0.2], requires_grad=True), torch.tensor([0.4], requires_grad=True)
    bradley_terry_loss(rw, rl).sum().backward()
    assert rw.grad.item() == pytest.approx(-(1 - sig(-0.2)))
    assert rl.grad.item() == pytest.approx(1 - sig(-0.2))


def test_plackett_luce_by_hand():
    s = torch.tensor([[2.0, 1.0, 0.0]])
    want = -((2 - math.log(math.exp(2) + math.exp(1) + 1)) + (1 - math.log(math.exp(1) + 1)))
    assert plackett_luce_loss(s).item() == pytest.approx(want)
    # k = 2 is Bradley-Terry; a padded (masked) third item changes nothing
    assert plackett_luce_loss(torch.tensor([[0.3, -0.2]])).item() == pytest.approx(-math.log(sig(0.5)))
    padded = plackett_luce_loss(torch.tensor([[0.3, -0.2, 9.0]]), torch.tensor([[1.0, 1.0, 0.0]]))
    assert padded.item() == pytest.approx(-math.log(sig(0.5)))


def test_rating_regression_by_hand():
    # rating 4 on (1, 5) maps to 0.5; score 0.2 gives (0.2 - 0.5)^2
    assert rating_regression_loss(torch.tensor([0.2]), torch.tensor([4.0]), (1, 5)).item() == pytest.approx(0.09)


def test_strength_flipping_and_margin():
    margins = torch.tensor([[1.0, -2.0, 0.5, -0.1], [3.0, -1.0, 0.5, 0.1]])  # 2 models x 4 pairs
    mean, std = preference_strength(margins)
    assert mean.tolist() == pytest.approx([2.0, -1.5, 0.5, 0.0])
    assert std[0].item() == pytest.approx(math.sqrt(2.0))
    # the lowest 50% are pairs 1 and 3; only pair 1 has negative strength
    assert flip_low_strength(mean, 0.5).tolist() == [False, True, False, False]
    assert adaptive_margin(mean, 0.5).tolist() == pytest.approx([1.0, 0.0, 0.25, 0.0])


def test_bad_feedback_names_the_row():
    with pytest.raises(RewardDataError, match="row 1 lists item 2 more than once"):
        check_rankings([[0, 1, 2], [2, 0, 2]])
    with pytest.raises(RewardDataError, match="row 2 has rating 7.*outside the scale \\[1, 5\\]"):
        check_ratings([1, 5, 7], (1, 5))
    with pytest.raises(RewardDataError, match="every labelled row is a tie.*row 0"):
        check_comparison_labels([0.5, 0.5, float("nan")])
    with pytest.raises(RewardDataError, match="row 1 has label 2"):
        check_comparison_labels([1.0, 2.0])
    assert check_comparison_labels([0.5, 1.0]).tolist() == [0.5, 1.0]


class _FixedScores:
    """A stand-in reward model whose scores are given by hand: ``forward`` returns them in order."""

    def __init__(self, scores):
        self.scores = torch.tensor(scores)
        self.model = torch.nn.Linear(1, 1)

    def forward(self, prompts, responses):
        return self.scores[: len(responses)]


def _captured_loss(monkeypatch, scores, pairs, **kw):
    """The loss ``train_reward_model`` would optimise on one batch of every pair."""
    import rlxf.algorithms.reward_training as rt

    seen = {}
    monkeypatch.setattr(rt, "train", lambda run, stage, model, cfg, make_batch, loss_fn, quiet=False:
                        seen.update(loss_fn=loss_fn))
    rt.train_reward_model(None, "rm", _FixedScores(scores), pairs, rt.OptimConfig(batch_size=len(pairs)), 0,
                          True, **kw)
    rows = list(range(len(pairs)))
    return seen["loss_fn"](rows, rows)[0].item()


def test_train_reward_model_margin_loss_uses_the_margins(monkeypatch):
    """Regression: with ``labels`` given, loss="margin" applied label smoothing and ignored margins.
    The loss must be mean_i -log sigma(s_i (r_a - r_b) - m_i), s_i = +1 when a was preferred, -1 when b."""
    pairs = [([1], [2], [3]), ([1], [4], [5])]
    r_a, r_b, m = [1.0, 0.2], [0.5, 0.9], [0.3, 0.8]
    scores = r_a + r_b
    want_hard = (-math.log(sig(0.5 - 0.3)) - math.log(sig(-0.7 - 0.8))) / 2
    assert _captured_loss(monkeypatch, scores, pairs, loss="margin", margins=m) == pytest.approx(want_hard, rel=1e-5)
    # soft labels: pair 1 preferred b, so its margin applies to r_b - r_a
    want_soft = (-math.log(sig(0.5 - 0.3)) - math.log(sig(0.7 - 0.8))) / 2
    got = _captured_loss(monkeypatch, scores, pairs, loss="margin", margins=m, labels=[1.0, 0.0])
    assert got == pytest.approx(want_soft, rel=1e-5)
    smoothed = _captured_loss(monkeypatch, scores, pairs, loss="smoothed", labels=[1.0, 0.0])
    assert abs(got - smoothed) > 1e-3
    with pytest.raises(ValueError, match="one margin per pair"):
        _captured_loss(monkeypatch, scores, pairs, loss="margin", labels=[1.0, 0.0])
