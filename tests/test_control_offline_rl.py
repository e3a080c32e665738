"""IQL and PRDC: hand-computed losses, and the property each method is for on tiny offline problems."""

import math

import pytest
import torch

from rlxf.algorithms.control.iql import IQLConfig, train_iql
from rlxf.algorithms.control.offline import OfflineConfig, train_bc
from rlxf.algorithms.control.prdc import PRDCConfig, train_prdc
from rlxf.algorithms.loop import OptimConfig
from rlxf.core.runs import Run
from rlxf.data.transitions import DatasetError, Episode, TransitionDataset
from rlxf.objectives.control import awr_weights, expectile_loss, nearest_neighbour_distance, prdc_constraint


def test_expectile_loss_and_awr_weights_by_hand():
    assert expectile_loss(torch.tensor([-2.0, 1.0]), 0.7).tolist() == pytest.approx([0.3 * 4, 0.7 * 1])
    assert awr_weights(torch.tensor([0.1, 2.0]), beta=3.0).tolist() == pytest.approx([math.exp(0.3), 100.0])
    with pytest.raises(ValueError, match="tau must be in \\(0, 1\\)"):
        expectile_loss(torch.zeros(1), 1.0)


def test_prdc_constraint_is_the_distance_to_the_nearest_scaled_state_action():
    data_s, data_a = torch.tensor([[0.0], [1.0]]), torch.tensor([[0.5], [-0.5]])
    a = torch.tensor([[0.0]], requires_grad=True)
    d = prdc_constraint(torch.tensor([[0.9]]), a, data_s, data_a, beta=2.0)
    # keys (2s, a): (0, 0.5), (2, -0.5); query (1.8, 0): distances sqrt(3.49) and sqrt(0.29)
    assert d.item() == pytest.approx(math.sqrt(0.29), rel=1e-5)
    d.sum().backward()
    assert a.grad.item() == pytest.approx(0.5 / math.sqrt(0.29), rel=1e-4)  # descent moves a towards -0.5
    q, k = torch.randn(7, 3), torch.randn(50, 3)
    dist, idx = nearest_neighbour_distance(q, k, chunk=8)  # chunked search == brute force
    brute = ((q[:, None] - k[None]) ** 2).sum(-1).sqrt()
    assert torch.allclose(dist, brute.min(1).values, atol=1e-5) and torch.equal(idx, brute.argmin(1))


def one_step_dataset(actions, rewards, obs):
    eps = [Episode(torch.stack([o, torch.zeros_like(o)]), a.view(1, *a.shape), r.view(1), True, False)
           for o, a, r in zip(obs, actions, rewards)]
    return TransitionDataset(eps, "OneStep")


def test_iql_picks_the_rewarded_action_that_bc_imitates_away(tmp_path):
    # A one-step problem: action 1 earns 1, action 0 earns 0, and the data takes action 0 80% of the time.
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(500, 2, generator=g)
    actions = (torch.rand(500, generator=g) < 0.2).long()
    ds = one_step_dataset(actions, actions.float(), obs)
    run = Run(tmp_path, "t = 1\n")
    opt = OptimConfig(steps=300, batch_size=128, lr=3e-3, checkpoint_every=0, max_grad_norm=0.0)
    iql = train_iql(ds, run, IQLConfig(optim=opt, hidden=32), n_actions=2)
    bc = train_bc(ds, run, OfflineConfig(OptimConfig(steps=100, batch_size=128, lr=3e-3, checkpoint_every=0), hidden=32),
                  n_actions=2)
    test = torch.randn(200, 2, generator=g)
    assert iql.greedy(test).float().mean() > 0.9
    assert bc.greedy(test).float().mean() < 0.1


def test_prdc_keeps_the_actor_near_the_data_where_td3_extrapolates(tmp_path):
    # One step, reward = 10 + a: the critic's Q grows without bound in a, but the data only holds
    # a = s/2 + noise. (The offset makes |Q| ~ 10, so lambda = alpha / mean|Q| is small, as with real returns.)
    g = torch.Generator().manual_seed(0)
    obs = torch.rand(400, 1, generator=g) * 2 - 1
    actions = (0.5 * obs + 0.05 * torch.randn(400, 1, generator=g))
    ds = one_step_dataset(actions, 10 + actions.squeeze(-1), obs)
    run = Run(tmp_path, "t = 1\n")
    opt = OptimConfig(steps=300, batch_size=128, lr=3e-3, checkpoint_every=0, max_grad_norm=0.0)
    dist, mean_action = {}, {}
    for alpha in (2.5, 1000.0):
        actor = train_prdc(ds, run, PRDCConfig(optim=opt, alpha=alpha, hidden=32), action_scale=2.0, stage=f"a{alpha}")
        with torch.no_grad():
            pi = actor(obs)
            dist[alpha] = prdc_constraint(obs, pi, obs, actions, beta=2.0).mean().item()
            mean_action[alpha] = pi.mean().item()
    assert dist[2.5] < 0.3 < dist[1000.0], dist
    assert mean_action[1000.0] > 1.0 > mean_action[2.5]  # unconstrained TD3 runs towards the bound of 2
    with pytest.raises(DatasetError, match="PRDC needs continuous actions"):
        train_prdc(one_step_dataset(torch.zeros(3).long(), torch.zeros(3), torch.zeros(3, 1)), run, PRDCConfig())


@pytest.mark.parametrize("method", ["iql", "prdc"])
def test_an_interrupted_offline_control_stage_resumes_with_its_target_networks(tmp_path, monkeypatch, method):
    """Target networks are frozen parameters that move every step: a resumed stage must end exactly where an
    uninterrupted one does (before they were kept, a resume restarted them from the online networks)."""
    g = torch.Generator().manual_seed(0)
    discrete = method == "iql"
    episodes = []  # 3-step episodes cut by a time limit: every target is bootstrapped from the target networks
    for _ in range(16):
        acts = torch.randint(0, 2, (3,), generator=g) if discrete else torch.rand(3, 1, generator=g) - 0.5
        episodes.append(Episode(torch.randn(4, 2, generator=g), acts, torch.randn(3, generator=g), False, True))
    ds = TransitionDataset(episodes, "ThreeSteps")
    opt = OptimConfig(steps=6, batch_size=16, lr=1e-2, checkpoint_every=2)
    if discrete:
        fit = lambda run: train_iql(ds, run, IQLConfig(optim=opt, hidden=8), n_actions=2)  # noqa: E731
    else:
        fit = lambda run: train_prdc(ds, run, PRDCConfig(optim=opt, hidden=8, policy_delay=1), action_scale=1.0)  # noqa: E731
    whole = fit(Run(tmp_path / "whole", "t = 1\n"))

    real_log = Run.log

    def stop_at_4(self, stage, step, **values):
        if step == 4:
            raise KeyboardInterrupt
        real_log(self, stage, step, **values)

    monkeypatch.setattr(Run, "log", stop_at_4)
    with pytest.raises(KeyboardInterrupt):
        fit(Run(tmp_path / "cut", "t = 1\n"))
    monkeypatch.setattr(Run, "log", real_log)
    resumed = fit(Run(tmp_path / "cut", "t = 1\n"))
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
