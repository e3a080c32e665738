"""SPO for control: win rates against a queue of own trajectories as the only reward."""

import numpy as np
import pytest
import torch

from rlxf.algorithms.control.ppo import PPOConfig
from rlxf.algorithms.control.spo import SPO, SPOConfig, spread_rewards, win_probability, win_rates
from rlxf.algorithms.control.rollout import Rollout
from rlxf.data.transitions import Episode
from rlxf.labelers.simulated import BPrefLabeler, BradleyTerryLabeler, IntransitiveLabeler


def ep(ret, length=None):
    length = length or max(1, int(ret))
    return Episode(torch.zeros(length + 1, 4), torch.zeros(length, dtype=torch.long),
                   torch.full((length,), ret / length), True, False)


def test_win_rate_is_the_mean_win_against_the_queue():
    perfect = BradleyTerryLabeler(float("inf"))
    queue = [ep(10), ep(20), ep(30), ep(40)]
    assert win_rates(perfect, [ep(25), ep(50), ep(5)], queue).tolist() == [0.5, 1.0, 0.0]
    # a B-Pref teacher's skipped query counts as a draw
    skipper = BPrefLabeler(beta=float("inf"), skip_below=100.0)
    assert win_probability(skipper, np.array([5.0]), np.array([3.0])).tolist() == [0.5]


def test_win_rate_is_spread_evenly_over_each_trajectory():
    ro = Rollout(*(torch.zeros(2, 4, 1) for _ in range(2)), *(torch.zeros(2, 4) for _ in range(5)),
                 torch.zeros(2, 4, dtype=torch.bool), torch.zeros(2, 4, dtype=torch.bool),
                 torch.zeros(2, 4), torch.zeros(2), torch.ones(2, 4, dtype=torch.bool))
    r = spread_rewards(ro, [ep(2, length=2), ep(4, length=4)], np.array([0.5, 1.0]))
    assert r.tolist() == [[0.25, 0.25, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]]


@pytest.mark.parametrize("kind", ["intransitive"])
def test_spo_improves_gold_return_without_a_reward_model(kind):
    # Half the comparisons judge the hidden return, the rest judge criteria that disagree with it
    # (steps spent pushing right; closeness of the cart to the centre): preferences form cycles.
    labeler = IntransitiveLabeler([0.5, 0.3, 0.2], beta=1.0, seed=0)

    def score(e):
        return np.array([e.ret, 0.1 * float((e.actions == 1).sum()), -10 * float(e.obs[:, 0].abs().mean())])

    spo = SPO(SPOConfig(ppo=PPOConfig(gamma=1.0, lam=0.95, epochs=10, anneal=False, seed=0)), labeler, score)
    start = spo.ppo.evaluate().mean()
    history = spo.train(12)
    # the first batch plays itself, then the queue fills (8, 16, 24 trajectories) and stays at 32
    assert spo.queries == 8 * 8 + 8 * (8 + 16 + 24) + 8 * 8 * 32
    assert start < 100
    assert spo.ppo.evaluate().mean() > 150 and history[-1]["mean_return"] > 3 * history[0]["mean_return"]
