"""Offline control: Minari-layout datasets, TQ/SACo by hand, and offline CPL beating BC on gold return."""

import json
import math

import numpy as np
import pytest
import torch

from rlxf.algorithms.control.offline import OfflineConfig, label_segments, record_dataset, train_bc, train_offline_cpl
from rlxf.algorithms.control.rollout import evaluate
from rlxf.algorithms.loop import OptimConfig
from rlxf.core.runs import Run
from rlxf.data.transitions import (DatasetError, Episode, TransitionDataset, state_action_coverage,
                                   trajectory_quality, unique_state_actions)
from rlxf.objectives.preference import PAIR_LOSSES
from rlxf.policies.control import CategoricalMLPPolicy

from control_helpers import solved_cartpole


def ep(rewards, obs=None, actions=None, terminated=True):
    n = len(rewards)
    obs = torch.zeros(n + 1, 1) if obs is None else torch.tensor(obs, dtype=torch.float32).view(n + 1, 1)
    actions = torch.zeros(n, dtype=torch.long) if actions is None else torch.tensor(actions)
    return Episode(obs, actions, torch.tensor(rewards, dtype=torch.float32), terminated, not terminated)


def test_tq_matches_hand_computed_value():
    data = [ep([1, 1]), ep([1, 0, 1])]  # discounted (0.5) returns 1.5 and 1.25 -> g = 1.375
    random_data, expert = [ep([0, 1])], [ep([2, 2])]  # g = 0.5 and 3.0
    assert trajectory_quality(data, random_data, expert, gamma=0.5) == pytest.approx((1.375 - 0.5) / 2.5)
    assert trajectory_quality(expert, random_data, expert, gamma=0.5) == pytest.approx(1.0)
    with pytest.raises(DatasetError, match="same return"):
        trajectory_quality(data, expert, expert)


def test_saco_counts_unique_state_action_pairs():
    data = [ep([0, 0], obs=[0, 1, 2], actions=[0, 1]), ep([0, 0], obs=[0, 1, 5], actions=[0, 0])]
    # pairs (0,0), (1,1), (0,0) again, (1,0): 3 unique; the final observations are not state-action pairs
    assert unique_state_actions(data) == 3
    reference = [ep([0] * 6, obs=list(range(7)), actions=[0, 1, 0, 1, 0, 1])]
    assert state_action_coverage(data, reference) == pytest.approx(3 / 6)
    near = [ep([0, 0], obs=[0.001, 0.002, 0], actions=[0, 0])]
    assert unique_state_actions(near) == 2 and unique_state_actions(near, decimals=1) == 1


def test_dataset_round_trips_through_the_minari_layout(tmp_path):
    policy = CategoricalMLPPolicy(4, 2)
    ds = record_dataset(policy, "CartPole-v1", n_episodes=5, eps=(0.0, 1.0), seed=3)
    assert all(len(e.obs) == len(e) + 1 and e.terminated for e in ds.episodes)
    ds.save(tmp_path / "cp")
    meta = json.loads((tmp_path / "cp" / "data" / "metadata.json").read_text())
    assert meta["total_episodes"] == 5 and meta["total_steps"] == ds.n_steps and meta["env_spec"] == "CartPole-v1"
    back = TransitionDataset.load(tmp_path / "cp", obs_shape=(4,))
    for a, b in zip(ds.episodes, back.episodes):
        assert torch.equal(a.obs, b.obs) and torch.equal(a.actions, b.actions) and torch.equal(a.rewards, b.rewards)
        assert (a.terminated, a.truncated) == (b.terminated, b.truncated)
    tr = back.transitions()
    assert tr.obs.shape == (ds.n_steps, 4) and tr.terminals.sum() == 5
    assert torch.equal(tr.next_obs[0], ds.episodes[0].obs[1])


def test_dataset_errors_name_what_was_expected(tmp_path):
    ds = TransitionDataset([ep([1.0, 1.0], obs=[0, 1, 2])], "Toy")
    ds.save(tmp_path / "d")
    with pytest.raises(DatasetError, match="observations have shape \\(1,\\).*expects \\(4,\\)"):
        TransitionDataset.load(tmp_path / "d", obs_shape=(4,))
    TransitionDataset([ep([1.0, 1.0], obs=[0, math.nan, 2])], "Toy").save(tmp_path / "nan")
    with pytest.raises(DatasetError, match="observation row 1 is not finite"):
        TransitionDataset.load(tmp_path / "nan")
    with pytest.raises(DatasetError, match="no data/metadata.json"):
        TransitionDataset.load(tmp_path / "missing")


def test_offline_cpl_is_the_pair_loss_dpo_shares():
    torch.manual_seed(0)
    policy = CategoricalMLPPolicy(3, 2, hidden=8)
    obs, act, mask = torch.randn(2, 4, 3), torch.randint(0, 2, (2, 4)), torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    chosen, rejected = policy.steps(obs[:1], act[:1], mask[:1]), policy.steps(obs[1:], act[1:], mask[1:])
    lp = policy.log_prob(obs, act)
    s_plus, s_minus = 0.1 * lp[0, :3].sum(), 0.1 * lp[1, :2].sum()
    by_hand = -torch.nn.functional.logsigmoid(s_plus - 0.5 * s_minus)
    assert PAIR_LOSSES["cpl"](chosen, rejected, alpha=0.1, lam=0.5).item() == pytest.approx(by_hand.item(), rel=1e-5)
    ref = policy.frozen_copy()
    with torch.no_grad():
        ref.net[-1].bias.add_(torch.tensor([0.3, -0.3]))
    c_ref, r_ref = policy.steps(obs[:1], act[:1], mask[:1], ref=ref), policy.steps(obs[1:], act[1:], mask[1:], ref=ref)
    h = c_ref.seq_logratio() - r_ref.seq_logratio()
    assert PAIR_LOSSES["dpo"](c_ref, r_ref, beta=0.1).item() == pytest.approx(-math.log(1 / (1 + math.exp(-0.1 * h.item()))), rel=1e-5)


@pytest.fixture(scope="module")
def mixed_dataset():
    """The first 100 episodes to finish from copies of a PPO expert acting with epsilon 0..1.

    100, not 60: with 60 the greedy copy's first (500-step) episode may not have finished yet (max
    return 150, seen once while the expert's init still depended on torch's thread count)."""
    ppo, _, _ = solved_cartpole()
    return record_dataset(ppo.policy, "CartPole-v1", 100, eps=(0.0, 0.25, 0.5, 0.75, 1.0, 1.0), seed=1)


@pytest.mark.slow
def test_offline_cpl_from_2000_comparisons_beats_bc_on_gold_return(mixed_dataset, tmp_path):
    returns = [e.ret for e in mixed_dataset.episodes]
    assert min(returns) < 30 and max(returns) > 150  # mixed quality
    run = Run(tmp_path / "run", "test = 1\n")
    bc = train_bc(mixed_dataset, run, OfflineConfig(OptimConfig(steps=300, batch_size=256, checkpoint_every=0)))
    chosen, rejected = label_segments(mixed_dataset, 2000, length=100, rationality=1.0, seed=0)
    assert len(chosen) == 2000 and (chosen.gold_returns() >= rejected.gold_returns()).float().mean() > 0.9
    cpl = train_offline_cpl(chosen, rejected, 4, 2, True, run,
                            OfflineConfig(OptimConfig(steps=150, batch_size=64, checkpoint_every=0)))
    bc_ret = evaluate(bc, "CartPole-v1", 20, deterministic=False).mean()
    cpl_ret = evaluate(cpl, "CartPole-v1", 20, deterministic=False).mean()
    assert cpl_ret > bc_ret + 50, (cpl_ret, bc_ret)
    assert [m["step"] for m in run.metrics("cpl")][-1] == 149  # it ran through the shared training loop


def test_recorded_data_and_bc_depend_on_their_seeds_only(tmp_path):
    """The same seed records the same episodes (the random actions come from a seeded copy of the action space,
    not from the env's unseeded one) and BC with ``n_actions`` given starts from the same weights whatever the
    global generator's state; another seed records other data."""
    policy = CategoricalMLPPolicy(4, 2, 16)
    first = record_dataset(policy, "CartPole-v1", 4, eps=(0.5, 1.0), seed=3)
    torch.manual_seed(123)
    np.random.seed(5)
    again = record_dataset(policy, "CartPole-v1", 4, eps=(0.5, 1.0), seed=3)
    other = record_dataset(policy, "CartPole-v1", 4, eps=(0.5, 1.0), seed=4)
    assert all(torch.equal(a.actions, b.actions) for a, b in zip(first.episodes, again.episodes))
    assert not all(torch.equal(a.actions, b.actions) for a, b in zip(first.episodes, other.episodes))
    cfg = OfflineConfig(OptimConfig(steps=3, batch_size=8, checkpoint_every=0), hidden=16, seed=7)
    weights = []
    for global_seed in (0, 1):
        torch.manual_seed(global_seed)
        bc = train_bc(first, Run(tmp_path / f"bc{global_seed}", "x = 1\n"), cfg, n_actions=2)
        weights.append(torch.cat([p.detach().flatten() for p in bc.parameters()]))
    assert torch.equal(weights[0], weights[1])
