"""Recommendation RL: the ShortVideo user simulator, TSCAC and its Lagrangian baseline, Sim2Rec (fast tier)."""

import math

import numpy as np
import pytest
import torch

from rlxf.algorithms.control.sim2rec import (HELDOUT, NOMINAL, SIMULATOR_SET, ContextPolicy, Sim2RecConfig,
                                             heldout_watch, train_single_sim, train_sim2rec)
from rlxf.algorithms.control.tscac import (ConstrainedConfig, constraint_multipliers, session_metrics,
                                           train_lagrangian, train_tscac, tscac_stage2_loss)
from rlxf.lab.control_table import METHODS
from rlxf.tasks.gym_envs import make_env
from rlxf.tasks.short_video import TERMS, ShortVideo, UserModel, obs_dim, respond


def test_user_response_by_hand():
    # default user: logit 3 * 1 + 2 * (0.75 - 0.5) = 3.5
    watch, likes, shares, leave = respond(UserModel(), 1.0, 0.75, 0.8, 0.4, 0.0)
    w = 1 / (1 + math.exp(-3.5))
    assert watch == pytest.approx(0.9706878, abs=1e-6) and w == pytest.approx(watch)
    assert likes == pytest.approx(0.8 * (1 + w) / 2) and likes == pytest.approx(0.788275, abs=1e-6)
    assert shares == pytest.approx(0.5 * 0.4 * (1 + w) / 2) and shares == pytest.approx(0.197069, abs=1e-6)
    assert leave == pytest.approx(0.05 + 0.3 * (1 - w)) and leave == pytest.approx(0.058794, abs=1e-6)
    # a repeat costs a fatigued user: logit -1 * 0 + 0 + (-2) = -2
    assert respond(UserModel(taste_weight=1.0, repeat_bonus=-2.0), 0.0, 0.5, 0, 0, 1.0)[0] == pytest.approx(0.1192029, abs=1e-6)


def test_session_dynamics_on_a_fixed_seed():
    env = ShortVideo(history=2, horizon=3, models=UserModel(leave_base=0.0, leave_gain=0.0))
    obs, _ = env.reset(seed=3)
    assert obs.shape == (obs_dim(5, 2),) == (1 + 25 + 10,)
    assert obs[0] == 0.0 and not obs[26:].any()  # no history yet
    cands = obs[1:26].reshape(5, 5)
    assert not cands[:, 4].any()  # nothing can repeat the (absent) previous topic
    obs2, reward, term, trunc, info = env.step(2)
    m, q, l, h, rep = cands[2]
    watch, likes, shares, _ = respond(env.model, m, q, l, h, rep)
    assert reward == pytest.approx(watch, abs=1e-6) and info["watch"] == pytest.approx(watch, abs=1e-6)
    assert info["likes"] == pytest.approx(likes, abs=1e-6) and info["shares"] == pytest.approx(shares, abs=1e-6)
    assert obs2[0] == pytest.approx(1 / 3)
    assert obs2[26:31] == pytest.approx([rep, m, q - 0.5, watch, 1.0], abs=1e-6) and not obs2[31:].any()
    assert not term and not trunc
    env.step(0)
    assert env.step(0)[3]  # truncated at the horizon, never left (leave probability 0)
    env = ShortVideo(models=UserModel(leave_base=1.0, leave_gain=0.0))
    env.reset(seed=0)
    assert env.step(0)[2]  # certain to leave: terminated after one video
    with pytest.raises(ValueError, match="action 7"):
        env.step(7)


def test_repeat_flag_marks_the_last_topic():
    env = ShortVideo()
    env.reset(seed=1)
    for a in (0, 3, 1):
        shown = env.topics[a]
        obs = env.step(a)[0]
        assert (obs[1:26].reshape(5, 5)[:, 4] == 1.0).tolist() == (env.topics == shown).tolist()


def test_user_model_rejects_bad_fields():
    with pytest.raises(ValueError, match="leave_base"):
        UserModel(leave_base=1.5)
    with pytest.raises(ValueError, match="leave_base \\+ leave_gain"):
        UserModel(leave_base=0.8, leave_gain=0.5)
    with pytest.raises(ValueError, match="models"):
        ShortVideo(models=("not a model",))


def test_vector_env_reports_watch_likes_shares_as_reward_terms():
    env = make_env("rlxf/ShortVideo-v0", n_envs=4, seed=0, reward_terms=TERMS)
    env.reset()
    for _ in range(30):
        res = env.step(np.zeros(4, dtype=int))
        assert res.reward_terms.shape == (4, 3)
        assert np.allclose(res.reward_terms[:, 0], res.raw_rewards)  # also on steps that ended a session
        assert (res.reward_terms[:, 1:] > 0).all()


def test_lagrangian_multiplier_update_by_hand():
    # below target -> the multiplier grows by lr * shortfall; above -> it shrinks, never below 0
    assert constraint_multipliers([0.0, 1.0], [0.5, 0.3], [0.55, 0.26], lr=2.0) == pytest.approx([0.1, 0.92])
    assert constraint_multipliers([0.0], [0.9], [0.5], lr=1.0) == [0.0]


def test_stage2_loss_by_hand():
    # lambda = (1, 1), S = 2: log w_1 = (ln .5 + ln .5)/2 - ln .5 + 0/2 = 0; log w_2 = (ln .2 + ln .8)/2 - ln .25 + 2/2
    # = ln 1.6 + 1; self-normalised to mean 1: w = 2 * softmax
    logp = torch.log(torch.tensor([0.3, 0.6])).requires_grad_()
    aux = torch.log(torch.tensor([[0.5, 0.2], [0.5, 0.8]]))
    loss = tscac_stage2_loss(logp, aux, torch.log(torch.tensor([0.5, 0.25])), torch.tensor([0.0, 2.0]), (1.0, 1.0), 100.0)
    r = 1.6 * math.e
    w = [2 / (1 + r), 2 * r / (1 + r)]
    assert loss.tolist() == pytest.approx([-w[0] * math.log(0.3), -w[1] * math.log(0.6)], abs=1e-6)
    assert loss.tolist() == pytest.approx([0.450146, 0.830662], abs=1e-5)
    loss.sum().backward()
    assert logp.grad.tolist() == pytest.approx([-w[0], -w[1]], abs=1e-6)  # weights are constants
    # clipped at max_weight
    assert tscac_stage2_loss(logp.detach(), aux, torch.log(torch.tensor([0.5, 0.25])), torch.tensor([0.0, 2.0]),
                             (1.0, 1.0), 1.5)[1].item() == pytest.approx(-1.5 * math.log(0.6), abs=1e-6)
    with pytest.raises(ValueError, match="aux_logps"):
        tscac_stage2_loss(logp, aux[:1], logp.detach(), logp.detach(), (1.0, 1.0))


def test_stage2_fit_recovers_the_closed_form_policy():
    """The notes' exact check: a 20-item bandit with known pi_i and A_0; the weighted likelihood on uniform
    behaviour samples fits pi* ∝ prod_i pi_i^(lambda_i/S) exp(A_0/S) to KL(pi* || pi_0) < 0.01."""
    g = torch.Generator().manual_seed(0)
    k, lam = 20, torch.tensor([0.6, 0.9])
    aux = torch.log_softmax(torch.randn(2, k, generator=g) * 1.5, -1)
    adv = torch.randn(k, generator=g)
    target = torch.log_softmax((lam[:, None] * aux).sum(0) / lam.sum() + adv / lam.sum(), -1)
    acts = torch.randint(0, k, (40_000,), generator=g)
    logits = torch.zeros(k, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=0.1)
    for _ in range(300):
        logp = torch.log_softmax(logits, -1)[acts]
        loss = tscac_stage2_loss(logp, aux[:, acts], torch.full_like(logp, -math.log(k)), adv[acts], lam, 1e9).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    fitted = torch.log_softmax(logits.detach(), -1)
    kl = (target.exp() * (target - fitted)).sum().item()
    assert kl < 0.01
    assert (target.exp() * (target - torch.full((k,), -math.log(k)))).sum().item() > 0.1  # uniform is far off


def test_context_policy_reads_history_through_the_extractor():
    torch.manual_seed(0)
    pol = ContextPolicy()
    obs = torch.rand(3, 4, 1 + 25 + 30)
    assert pol.logits(obs).shape == (3, 4, 5) and pol.log_prob(obs, torch.zeros(3, 4, dtype=torch.long)).shape == (3, 4)
    flat = obs[0]
    other_now = flat.clone()
    other_now[:, :26] = torch.rand(4, 26)
    assert torch.allclose(pol.context(flat), pol.context(other_now))  # the context sees only the history
    other_hist = flat.clone()
    other_hist[:, 26:] = torch.rand(4, 30)
    assert not torch.allclose(pol.context(flat), pol.context(other_hist))


def test_simulator_set_excludes_the_heldout_and_nominal_users():
    assert HELDOUT not in SIMULATOR_SET and NOMINAL not in SIMULATOR_SET and len(set(SIMULATOR_SET)) == 8


def test_smoke_tscac_lagrangian_and_metrics():
    cfg = ConstrainedConfig(steps=1024, seed=1)
    agent, aux = train_tscac(cfg)
    lagr, history = train_lagrangian(cfg)
    assert len(aux) == 2 and lagr.steps_done >= 3 * 1024 and all(min(h["lambdas"]) >= 0 for h in history)
    m = session_metrics(agent.policy, cfg.targets, n_episodes=16, seed=5)
    assert m["watch"].shape == (16,) and (m["watch"] > 0).all() and m["rates"].shape == (2,)
    assert m["violation"] == pytest.approx(float(np.maximum(0, 1 - m["rates"] / np.array(cfg.targets)).sum()))
    with pytest.raises(ValueError, match="kl_weights"):
        ConstrainedConfig(kl_weights=(1.0,))


def test_smoke_sim2rec_and_single_sim():
    cfg = Sim2RecConfig(steps=1024, seed=1)
    for fn in (train_sim2rec, train_single_sim):
        watch = heldout_watch(fn(cfg).policy, n_episodes=8, seed=3)
        assert watch.shape == (8,) and (watch > 0).all()


def test_methods_are_in_the_control_table():
    assert METHODS["tscac"].tasks == ("short_video",) == METHODS["lagrangian"].tasks
    assert METHODS["sim2rec"].tasks == ("short_video_heldout",) == METHODS["single_sim"].tasks


def test_table_runners_name_the_wrong_task():
    from rlxf.algorithms.control.sim2rec import table_run as s2r_run
    from rlxf.algorithms.control.tscac import table_run

    with pytest.raises(ValueError, match="'short_video'"):
        table_run("reacher", 0, 0.05)
    with pytest.raises(ValueError, match="'short_video_heldout'"):
        s2r_run("short_video", 0, 0.05)
