"""Dichotomy of Control against return-conditioned BC on the gamble: losses by hand, smoke runs, and the
pre-registered claim that DoC beats return-conditioned BC where the best returns in the data were luck."""

import math

import numpy as np
import pytest
import torch

from rlxf.algorithms.control.doc import (DoCConfig, ReturnConditionedPolicy, RvSConfig, doc_table_run,
                                         gamble_dataset, return_bins, return_conditioned_bc_loss, returns_to_go,
                                         rvs_table_run, scratch_run, train_doc, train_rvs)
from rlxf.algorithms.control.rollout import evaluate
from rlxf.algorithms.evaluate import paired_gain
from rlxf.algorithms.loop import OptimConfig
from rlxf.data.transitions import DatasetError, Episode, TransitionDataset
from rlxf.lab.control_table import METHODS
from rlxf.objectives.control import doc_loss, doc_mi_estimate
from rlxf.tasks.gamble import Gamble


def test_mi_estimate_matches_hand_computed_value():
    energies = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])  # one example, latents z0 and z1, two return bins
    log_prior = torch.log(torch.tensor([0.5, 0.5]))
    mi = doc_mi_estimate(energies, torch.tensor([0]), log_prior)
    assert mi[0, 0].item() == pytest.approx(1.0 - math.log(0.5 * math.e + 0.5))
    assert mi[0, 1].item() == pytest.approx(0.0 - math.log(0.5 + 0.5 * math.e**2))
    mi1 = doc_mi_estimate(energies, torch.tensor([1]), torch.log(torch.tensor([0.25, 0.75])))
    assert mi1[0, 1].item() == pytest.approx(2.0 - math.log(0.25 + 0.75 * math.e**2))


def test_doc_loss_terms_match_hand_computed_values_and_route_gradients():
    q = torch.tensor([[0.25, 0.75]], requires_grad=True)
    action_logps = torch.log(torch.tensor([[0.5, 0.8]]))
    value_errors = torch.tensor([[1.0, -2.0]], requires_grad=True)
    prior_logps = torch.log(torch.tensor([[0.5, 0.5]])).requires_grad_()
    mi = torch.tensor([[0.2, 0.4]], requires_grad=True)
    t = doc_loss(q, action_logps, value_errors, prior_logps, mi, mi_weight=2.0)
    assert t["action"].item() == pytest.approx(-(0.25 * math.log(0.5) + 0.75 * math.log(0.8)))
    assert t["value"].item() == pytest.approx(0.25 * 1 + 0.75 * 4)
    assert t["prior"].item() == pytest.approx(0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5))
    assert t["critic"].item() == pytest.approx(-(0.25 * 0.2 + 0.75 * 0.4))
    assert t["mi"].item() == pytest.approx(2.0 * (0.25 * 0.2 + 0.75 * 0.4))
    # prior and critic read the latent without shaping it; the value term shapes it (errors^2 = [1, 4])
    (t["prior"] + t["critic"]).sum().backward(retain_graph=True)
    assert q.grad is None or torch.all(q.grad == 0)
    t["value"].sum().backward(retain_graph=True)
    assert torch.allclose(q.grad, torch.tensor([[1.0, 4.0]]))
    q.grad, mi.grad = None, None
    t["mi"].sum().backward()
    assert torch.allclose(q.grad, torch.tensor([[0.4, 0.8]])) and (mi.grad is None or torch.all(mi.grad == 0))


class _Linear:
    """A stub policy: ``log pi(a | x) = log_softmax(x W)_a``."""

    def __init__(self, w):
        self.w = torch.tensor(w)

    def log_prob(self, x, a):
        return torch.log_softmax(x @ self.w, -1).gather(-1, a.long().unsqueeze(-1)).squeeze(-1)


def test_return_conditioned_bc_loss_matches_hand_computed_value():
    pol = _Linear([[1.0, 0.0], [0.0, 0.0], [0.0, 2.0]])
    obs = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss = return_conditioned_bc_loss(pol, obs, torch.tensor([2.0, 4.0]), torch.tensor([0, 1]), scale=4.0)
    # x = [1, 0, 0.5] -> logits [1, 1]; x = [0, 1, 1] -> logits [0, 2]
    assert loss.tolist() == pytest.approx([math.log(2.0), math.log(1 + math.exp(-2.0))])


def _ep(rewards):
    n = len(rewards)
    return Episode(torch.zeros(n + 1, 3), torch.zeros(n, dtype=torch.long), torch.tensor(rewards), True, False)


def test_returns_to_go_and_bins_by_hand():
    ds = TransitionDataset([_ep([1.0, 0.0, 6.0]), _ep([1.0])])
    rtg = returns_to_go(ds)
    assert rtg.tolist() == [7.0, 6.0, 6.0, 1.0]
    idx, value, freq = return_bins(rtg, 2)  # width 3 over [1, 7]
    assert idx.tolist() == [1, 1, 1, 0]
    assert value.tolist() == pytest.approx([1.0, 19 / 3]) and freq.tolist() == pytest.approx([0.25, 0.75])


def test_return_conditioned_policy_lowers_its_target_by_the_rewards_received():
    pol = ReturnConditionedPolicy(None, scale=1.0, target=5.0)
    pol.observe(None, np.ones(2, bool))
    pol.observe(np.array([1.0, 6.0]), np.array([False, True]))
    assert pol.rtg.tolist() == [4.0, 5.0]  # the second env's episode ended: a fresh target


def test_gamble_pays_safe_one_and_shares_luck_across_actions():
    env = Gamble()
    assert env.expected_return(0) == pytest.approx(3.0) and env.expected_return(1) == pytest.approx(1.8)
    draws = []
    for action in (0, 1):
        env.reset(seed=5)
        draws.append([env.step(action)[4]["lucky"] for _ in range(3)])
    assert draws[0] == draws[1]
    env.reset(seed=0)
    assert env.step(0)[1] == 1.0


def test_doc_and_rvs_train_and_act_on_a_tiny_dataset():
    data = gamble_dataset(seed=7, n_episodes=60)
    optim = OptimConfig(steps=5, batch_size=32, lr=3e-3, checkpoint_every=0)
    with scratch_run() as run:
        doc = train_doc(data, run, DoCConfig(optim, seed=1))
        rvs = train_rvs(data, run, RvSConfig(optim, seed=1))
    assert doc.model.latents == 8 and rvs.target == max(e.ret for e in data.episodes)
    for pol in (doc, rvs):
        scores = evaluate(pol, "rlxf/Gamble-v0", n_episodes=4, seed=3)
        assert scores.shape == (4,) and np.all((scores >= 0) & (scores <= 18))
    continuous = TransitionDataset([Episode(torch.zeros(2, 3), torch.zeros(1, 2), torch.ones(1), True, False)])
    with scratch_run() as run, pytest.raises(DatasetError, match="continuous actions"):
        train_doc(continuous, run, DoCConfig(optim))


def test_table_runners_are_registered_and_run_small():
    assert METHODS["doc"].tasks == ("gamble",) and METHODS["rvs"].tasks == ("gamble",)
    for run in (doc_table_run, rvs_table_run):
        scores = run("gamble", 0, 0.05)
        assert len(scores) >= 20
    with pytest.raises(ValueError, match="gamble"):
        doc_table_run("cartpole", 0, 0.05)


CLAIM_SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def gamble_results():
    """Per seed: the same 1000-episode random dataset for both learners and the same 500 held-out episodes."""
    out = {}
    for seed in CLAIM_SEEDS:
        out[seed] = (doc_table_run("gamble", seed), rvs_table_run("gamble", seed))
    return out


@pytest.mark.slow
def test_doc_beats_return_conditioned_bc_where_luck_made_the_best_returns(gamble_results):
    """Pre-registered claim (Yang et al., ICLR 2023), committed before its first run. On the gamble (3 steps,
    safe pays 1, the gamble 6 with probability 0.1), from 1000 uniformly random episodes, DoC (default
    DoCConfig: 500 steps) has a higher mean return than return-conditioned BC (RvS, conditioned on the best
    return in the data, same steps) by >= 2 paired standard errors over the 1500 paired held-out episodes
    (500 per seed, seeds 0, 1, 2, the same env seeds for both), and a higher mean on every seed."""
    doc = np.concatenate([gamble_results[s][0] for s in CLAIM_SEEDS])
    rvs = np.concatenate([gamble_results[s][1] for s in CLAIM_SEEDS])
    gain, se = paired_gain(doc, rvs)
    per_seed = {s: (float(gamble_results[s][0].mean()), float(gamble_results[s][1].mean())) for s in CLAIM_SEEDS}
    assert gain >= 2 * se and gain > 0, (gain, se, per_seed)
    assert all(d > r for d, r in per_seed.values()), per_seed
