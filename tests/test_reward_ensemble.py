"""Ensemble aggregation (Coste et al.) and reward evaluation metrics against hand computations."""

import numpy as np
import pytest
import torch

from rlxf.lab.best_of_n import bon_curve
from rlxf.rewards.ensemble import RewardEnsemble, aggregate, member_indices
from rlxf.rewards.evaluation import (
    bt_calibration_error,
    ensemble_agreement,
    expected_calibration_error,
    gold_correlation,
    pairwise_accuracy,
)


def test_aggregations_by_hand():
    s = torch.tensor([[1.0, 0.0], [3.0, 0.0], [2.0, 3.0]])  # 3 members x 2 samples
    assert aggregate(s, "mean").tolist() == pytest.approx([2.0, 1.0])
    assert aggregate(s, "wco").tolist() == pytest.approx([1.0, 0.0])
    # population variances: 2/3 and 2; UWO = mean - 0.5 var
    assert aggregate(s, "uwo", 0.5).tolist() == pytest.approx([2.0 - 1 / 3, 1.0 - 1.0])
    with pytest.raises(ValueError, match="unknown ensemble aggregation 'median'"):
        aggregate(s, "median")


def test_conservative_aggregation_avoids_disputed_sample():
    # sample 1 has the higher mean but members disagree on it: WCO and UWO pick sample 0
    s = torch.tensor([[1.0, 4.0], [1.0, -1.0], [1.0, 2.0]])
    assert aggregate(s, "mean").argmax().item() == 1
    assert aggregate(s, "wco").argmax().item() == 0
    assert aggregate(s, "uwo", 0.5).argmax().item() == 0


def test_member_indices():
    assert member_indices(5, 2, 0, bootstrap=False) == [0, 1, 2, 3, 4]
    a, b = member_indices(1000, 0, 0, True), member_indices(1000, 1, 0, True)
    assert a != b and len(a) == 1000
    # a bootstrap resample leaves out about 1/e of the rows
    assert abs(1 - len(set(a)) / 1000 - np.exp(-1)) < 0.05


def test_ensemble_scores_members(reward_model):
    ens = RewardEnsemble([reward_model, reward_model], method="wco")
    p, r = reward_model.encode_pairs(["sea " + "x :"], ["a b"])
    single = reward_model.score(p, r)
    assert ens.member_scores(p, r).shape == (2, 1)
    assert ens.score(p, r).item() == pytest.approx(single.item())


def test_metrics_by_hand():
    assert pairwise_accuracy([1, 0, 2, 5], [0, 1, 2, 1], [1, 1, 0, 3], [0, 0, 1, 3]) == pytest.approx((1 + 0 + 0.5) / 3)
    # bins: [0.1, 0.15] -> bin 1, mean p 0.125, outcome 0; [0.9] -> bin 9, outcome 1
    ece = expected_calibration_error([0.1, 0.15, 0.9], [0, 0, 1])
    assert ece == pytest.approx(2 / 3 * 0.125 + 1 / 3 * 0.1)
    assert bt_calibration_error([0.0], [0.0], [1.0]) == pytest.approx(0.5)
    c = gold_correlation([1, 2, 3, 10], [2, 4, 6, 8])
    assert c["spearman"] == pytest.approx(1.0) and c["pearson"] < 1.0
    agree = ensemble_agreement([[1, 0], [1, 1], [0, 0]], [[0, 1], [0, 2], [1, 1]])
    # pair 0: votes (T, T, F) -> majority 2/3; pair 1: (F, F, F) unanimous
    assert agree == {"unanimous": 0.5, "majority": pytest.approx((2 / 3 + 1) / 2)}


def test_bon_curve_by_hand():
    gold = np.array([[1.0, 5.0, 2.0, 0.0]])
    proxy = np.array([[0.0, 1.0, 3.0, 2.0]])
    c = bon_curve(gold, proxy, [1, 2, 4])
    assert c[1] == {"gold": 2.0, "proxy": 1.5}
    assert c[2] == {"gold": (5.0 + 2.0) / 2, "proxy": 2.0}  # groups {0,1} -> 1, {2,3} -> 2
    assert c[4] == {"gold": 2.0, "proxy": 3.0}
