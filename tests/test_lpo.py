"""LPO / TA-LPO: drifts, the mirror loss, the batched inner learner, ES, and the pre-registered claims."""

import math

import pytest
import torch

from rlxf.algorithms.control.lpo import (BUILTIN_DRIFTS, BatchedMLP, InnerConfig, NeuralDrift, _advantages, drift_net,
                                         grouped, train_agents)
from rlxf.algorithms.control.lpo_meta import ESConfig, distil_clip, es_gradient, load_drift, meta_train
from rlxf.algorithms.evaluate import paired_gain
from rlxf.core.steps import Steps
from rlxf.objectives.mirror import clip_drift, dpo_drift, drift_features, mirror_policy_loss
from rlxf.objectives.policy_gradient import ppo_clip_loss


def test_inner_advantages_restart_at_each_episode_end_and_bootstrap_the_rollout_cut():
    """The inner learner's GAE (the shared one, per episode fragment) on one stream of 3 steps whose
    episode ends at step 1 (gamma 0.5, lambda 1), by hand: step 2 bootstraps the last value 4, step 1
    gets no bootstrap, step 0 carries step 1's advantage."""
    v, last = [1.0, 2.0, 3.0], 4.0
    buf = {"rew": [torch.ones(1, 1)] * 3, "done": [torch.tensor([[d]]) for d in (0.0, 1.0, 0.0)],
           "val": [torch.tensor([[x]]) for x in v]}
    adv = _advantages(buf, torch.tensor([[last]]), gamma=0.5, lam=1.0).flatten().tolist()
    a1 = 1 - v[1]
    assert adv == pytest.approx([1 + 0.5 * v[1] - v[0] + 0.5 * a1, a1, 1 + 0.5 * last - v[2]])


def test_clip_drift_gives_ppo_clip_loss_value_and_gradient():
    """With PPO's clip as the drift, the mirror loss -(rA - D) is PPO's clipped loss, value and gradient."""
    logp = torch.tensor([[0.3, -0.4, 0.05, 0.25, -0.3]], requires_grad=True)
    old = torch.zeros(1, 5)
    adv = torch.tensor([[1.0, 1.0, -2.0, -1.0, -0.5]])
    ppo = ppo_clip_loss(Steps(logps=logp, mask=torch.ones(1, 5), old_logps=old), adv, clip=0.2)
    (g_ppo,) = torch.autograd.grad(ppo.sum(), logp)
    r = torch.exp(logp - old)
    mirror = mirror_policy_loss(r, adv, clip_drift(r, adv, eps=0.2))
    (g_mirror,) = torch.autograd.grad(mirror.sum(), logp)
    assert torch.allclose(mirror, ppo) and torch.allclose(g_mirror, g_ppo)
    # by hand: r = e^0.3 = 1.35 > 1.2 with A = 1 is clipped: D = (1.35 - 1.2) * 1, gradient 0
    assert mirror[0, 0].item() == pytest.approx(-1.2) and g_mirror[0, 0].item() == 0.0
    assert g_mirror[0, 2].item() == pytest.approx(2.0 * math.exp(0.05))  # inside the clip range: -A r


def test_dpo_drift_hand_computed():
    r = torch.tensor([1.5, 0.5, 1.0])
    a = torch.tensor([1.0, -1.0, 3.0])
    d = dpo_drift(r, a)
    assert d[0].item() == pytest.approx(0.5 - 2.0 * math.tanh(0.25), abs=1e-6)
    x = math.log(0.5) * -1.0
    assert d[1].item() == pytest.approx(x - 0.6 * math.tanh(x / 0.6), abs=1e-6)
    assert d[2].item() == 0.0


def test_features_and_neural_drift_vanish_at_ratio_one():
    """LPO's features are 0 at r = 1, so the bias-free drift is 0 there for any weights and advantage;
    TA-LPO's input is [x, (n/N) x]; features are clipped to [-2, 2]."""
    r, a = torch.tensor([1.0, 1.0, 3.0]), torch.tensor([-5.0, 2.0, 4.0])
    x = drift_features(r, a)
    assert x.shape == (3, 8) and x[:2].abs().max() == 0.0
    lr = math.log(3.0)
    assert x[2].tolist() == pytest.approx([lr, lr**2, -2.0, 2.0, 2.0, 2.0, -2.0, 2.0])
    xt = drift_features(r, a, 0.25)
    assert xt.shape == (3, 16) and torch.allclose(xt[:, 8:], 0.25 * x)
    for temporal in (False, True):
        phi = torch.randn(drift_net(16, temporal).dim)
        d = NeuralDrift(phi, hidden=16, temporal=temporal)(r[None], a[None], 0.7)
        assert d[0, :2].tolist() == [0.0, 0.0] and (d >= 0).all()
    with pytest.raises(ValueError, match="needs"):
        NeuralDrift(torch.zeros(10), hidden=16)


def test_batched_mlp_matches_a_plain_mlp_per_agent():
    net = BatchedMLP([3, 5, 2])
    flat = net.init(4, torch.Generator().manual_seed(0), out_gain=1.0) + 0.1 * torch.randn(4, net.dim)
    x = torch.randn(4, 7, 3)
    out = net.forward(flat, x)
    for p in range(4):
        w1 = flat[p, :15].view(3, 5); b1 = flat[p, 15:20]; w2 = flat[p, 20:30].view(5, 2); b2 = flat[p, 30:32]
        assert torch.allclose(out[p], torch.tanh(x[p] @ w1 + b1) @ w2 + b2, atol=1e-6)
    w = net.init(1, torch.Generator().manual_seed(1), out_gain=1.0)[0, :15].view(3, 5)
    assert torch.allclose(w @ w.t(), 2.0 * torch.eye(3), atol=1e-5)  # orthogonal rows, gain sqrt 2


def test_grouped_applies_each_drift_to_its_agents():
    d = grouped([lambda r, a, p=0.0: torch.zeros_like(r), lambda r, a, p=0.0: r + p], per=2)
    r = torch.arange(8.0).view(4, 2)
    assert d(r, r, 1.0).tolist() == [[0, 0], [0, 0], [5, 6], [7, 8]]


def test_es_gradient_points_along_a_linear_fitness():
    """For f(phi) = c . phi the antithetic estimate (64 pairs) points along c (cosine > 0.8)."""
    gen = torch.Generator().manual_seed(0)
    c, phi, sigma = torch.randn(20, generator=gen), torch.zeros(20), 0.1
    eps = torch.randn(64, 20, generator=gen)
    g = es_gradient(eps, (phi + sigma * eps) @ c, (phi - sigma * eps) @ c, sigma)
    assert torch.cosine_similarity(g, c, dim=0) > 0.8


def test_distilled_drift_matches_ppo_clip():
    """ES's start: the network regressed on PPO's clip drift is within 0.03 RMS of it on a grid of
    ratios 0.6-1.6 and advantages -2..2 (the clip drift's mean there is ~0.07), at any progress for TA-LPO."""
    r = torch.exp(torch.linspace(-0.5, 0.5, 21)).repeat(9)[None]
    a = torch.linspace(-2, 2, 9).repeat_interleave(21)[None]
    target = clip_drift(r, a)
    for temporal in (False, True):
        phi = distil_clip(hidden=32, temporal=temporal, steps=800)
        for progress in (0.0, 0.9):
            d = NeuralDrift(phi, 32, temporal)(r, a, progress)
            assert ((d - target) ** 2).mean().sqrt() < 0.03


def test_inner_learner_learns_cartpole_and_pairs_share_initial_weights():
    """Four PPO-clip agents, 10 updates of 8 envs x 32 steps: greedy return well above a random policy's
    (~22 on CartPole); with init_pairs agents i and i + P/2 start from the same weights."""
    cfg = InnerConfig(updates=10, n_envs=8, eval_envs=8)
    out = train_agents(BUILTIN_DRIFTS["clip"], 4, cfg, seed=0)
    assert out["final"].mean() > 60 and out["curve"].shape == (10, 4)
    zero = InnerConfig(updates=1, n_envs=2, n_steps=4, epochs=1, minibatches=1, lr=0.0, eval_envs=2)
    paired = train_agents(BUILTIN_DRIFTS["clip"], 4, zero, seed=3, init_pairs=True)["theta"]
    assert torch.equal(paired[0], paired[2]) and not torch.equal(paired[0], paired[1])


def test_level_params_reach_each_agents_envs():
    """Per-agent levels become per-env physics: agent 1's 4 envs get force 1, agent 0's force 10; from rest
    one push moves the cart 10x faster under force 10 (x acceleration is linear in the force there)."""
    from rlxf.algorithms.control.lpo import _repeat_levels
    from rlxf.tasks.torch_control import CartPole
    params = _repeat_levels({"force_mag": torch.tensor([10.0, 1.0])}, 4)
    env = CartPole(8, params=params)
    state, _, _ = env._dynamics(torch.zeros(8, 4), torch.ones(8, dtype=torch.long))
    assert env.p["force_mag"].tolist() == [10.0] * 4 + [1.0] * 4
    assert state[0, 1] > 0 and torch.allclose(state[:4, 1], 10 * state[4:, 1])


# -- pre-registered claims ---------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="measured 2026-12-07 (first run, busy 2-core machine): ES drift - start "
                   "+4.0 +- 30.1 paired SE over 32 agents (start mean 293.6): far inside the noise; 20 generations of "
                   "8 pairs barely move phi against per-agent return noise of ~170")
def test_es_improves_the_meta_objective_over_its_starting_drift():
    """Pre-registered (committed before its first run). ES (8 antithetic pairs, 20 generations, sigma 0.03,
    Adam lr 0.02, seed 0) from the distilled PPO clip, on default CartPole with a short lifetime (10 updates
    of 8 envs x 32 steps). The meta-objective, the final greedy return, of 32 fresh agents (seed 555, the
    same initial weights for both drifts) is higher under the ES drift than under its start by at least
    2 paired standard errors."""
    inner = InnerConfig(updates=10, n_envs=8, eval_envs=8)
    es = ESConfig(generations=20, pairs=8, sigma=0.03, lr=0.02, levels="default", seed=0)
    start = distil_clip(es.hidden, es.temporal, seed=es.seed)
    phi, _ = meta_train(es, inner, phi0=start, progress=False)
    phis = torch.cat([phi.expand(32, -1), start.expand(32, -1)])
    final = train_agents(NeuralDrift(phis, es.hidden), 64, inner, seed=555, init_pairs=True)["final"]
    gain, se = paired_gain(final[:32].numpy(), final[32:].numpy())
    print(f"ES drift - start: {gain:+.1f} +- {se:.1f} (start mean {final[32:].mean():.1f})")
    assert gain >= 2 * se


@pytest.mark.slow
def test_shipped_lpo_drift_no_worse_than_ppo_clip_on_held_out_acrobot():
    """Pre-registered (committed before its first run). The shipped LPO drift (meta-trained on CartPole
    levels only) against PPO's exact clip on Acrobot, a task it never saw: 5 agents per drift with the same
    initial weights (seed 2024), 30 updates of 16 envs x 32 steps. Not worse: the paired mean difference
    of final greedy returns is above -2 paired standard errors."""
    lpo = load_drift("lpo")
    per = 5
    out = train_agents(grouped([lpo, BUILTIN_DRIFTS["clip"]], per), 2 * per, InnerConfig(env="acrobot"), seed=2024,
                       init_pairs=True)["final"]
    gain, se = paired_gain(out[:per].numpy(), out[per:].numpy())
    print(f"Acrobot: LPO {out[:per].mean():.1f}, clip {out[per:].mean():.1f}, LPO - clip {gain:+.1f} +- {se:.1f}")
    assert gain > -2 * se


@pytest.mark.slow
def test_shipped_lpo_drift_beats_its_starting_drift_on_fresh_training_levels():
    """Pre-registered (committed before its first run, after the small ES test above failed; that test is
    unchanged). The full ES run that made the shipped LPO drift (60 generations of 16 pairs from the
    distilled clip, seed 0) against its starting point, distil_clip(seed=0), on the meta-objective it
    was trained for: 96 fresh CartPole levels from the training distribution (seed 4242), one agent per
    level and drift with the same initial weights (seed 99), 30 updates. Claim: the mean final greedy return
    is higher under the shipped drift by at least 2 paired standard errors over the 96 levels."""
    from rlxf.algorithms.control.lpo_meta import sample_levels
    n = 96
    levels = sample_levels(n, torch.Generator().manual_seed(4242))
    start = NeuralDrift(distil_clip(32, False, seed=0), 32)
    out = train_agents(grouped([load_drift("lpo"), start], n), 2 * n, InnerConfig(), seed=99,
                       levels={k: torch.cat([v, v]) for k, v in levels.items()}, init_pairs=True)["final"]
    gain, se = paired_gain(out[:n].numpy(), out[n:].numpy())
    print(f"fresh levels: shipped LPO {out[:n].mean():.1f}, start {out[n:].mean():.1f}, gain {gain:+.1f} +- {se:.1f}")
    assert gain >= 2 * se


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="measured 2026-12-07 (first run): TA-LPO - LPO +6.4 +- 13.7 at 15 updates "
                   "(332.9 vs 326.6) and +4.5 +- 19.0 at 60 updates (381.3 vs 376.7), 48 levels: within noise")
def test_shipped_ta_lpo_beats_lpo_at_other_lifetimes():
    """Pre-registered (committed before its first run). TA-LPO's claim at toy scale: both shipped drifts were
    meta-trained at 30 updates; at 15 and at 60 updates, on 48 fresh training-distribution CartPole levels
    (seed 5151), one agent per level and drift with the same initial weights (seed 77), the mean final
    greedy return under TA-LPO is higher than under LPO by at least 2 paired standard errors, at each lifetime."""
    from dataclasses import replace

    from rlxf.algorithms.control.lpo_meta import sample_levels
    n = 48
    levels = sample_levels(n, torch.Generator().manual_seed(5151))
    both = {k: torch.cat([v, v]) for k, v in levels.items()}
    drift = grouped([load_drift("ta_lpo"), load_drift("lpo")], n)
    results = {}
    for updates in (15, 60):
        out = train_agents(drift, 2 * n, replace(InnerConfig(), updates=updates), seed=77, levels=both, init_pairs=True)["final"]
        results[updates] = paired_gain(out[:n].numpy(), out[n:].numpy()) + (float(out[:n].mean()), float(out[n:].mean()))
    print("TA-LPO - LPO:", {u: f"{g:+.1f} +- {se:.1f} ({ta:.1f} vs {lpo:.1f})" for u, (g, se, ta, lpo) in results.items()})
    assert all(g >= 2 * se for g, se, _, _ in results.values())
