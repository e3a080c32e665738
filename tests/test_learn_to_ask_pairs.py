"""Learning to Actively Learn for preference pairs: the simulated problems by hand, the shipped pair policy
plugged into the feedback app (``--selection learned``), PbRL and the control lab, and the held-out claim."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rlxf.algorithms.active.pairs import (PairConfig, PairProblems, batch_pair_features, compare_rules, fit_members,
                                          load_pair_policy, rollout_pairs, sample_pair_problems)
from rlxf.algorithms.evaluate import mean_se, paired_gain
from rlxf.app.cli import main as label_main
from rlxf.app.selection import QueryQueue, choose_learned
from rlxf.data.label_store import LabelStore, StoreError
from rlxf.policies.query import LearnedRule, pair_features


def test_ranking_accuracy_answers_and_batched_features_by_hand():
    u = torch.tensor([[0.0, 1.0, 2.0]])
    pr = PairProblems(torch.zeros(1, 3, 1), u, torch.tensor([1.0]), torch.tensor([[0.6, 0.8]]),
                      torch.ones(1, 2, 2), torch.zeros(1, 2, 1))
    # pairs (0,1) (0,2) (1,2): scores 2, 1, 0 order none right; scores 0, 2, 1 get (0,1) and (0,2)
    assert pr.ranking_accuracy(torch.tensor([[2.0, 1.0, 0.0], [0.0, 2.0, 1.0]])).tolist() == pytest.approx([0, 2 / 3])
    # P(2 beats 0) = sigmoid(2) = 0.881: coin 0.6 says yes, 0.8 yes; P(0 beats 2) = 0.119: no
    assert pr.answer(torch.tensor([2]), torch.tensor([0]), 0).item() == 1.0
    assert pr.answer(torch.tensor([0]), torch.tensor([2]), 1).item() == 0.0
    s = torch.randn(3, 4, 5)
    a, b = torch.triu_indices(5, 5, 1)
    batched = batch_pair_features(s, a, b)
    for i in range(3):
        one = pair_features(torch.sigmoid(s[i][:, a] - s[i][:, b]).numpy())
        assert np.allclose(batched[i].numpy(), one)


def test_members_fit_their_own_anchored_weighted_bradley_terry_loss():
    diffs = torch.tensor([[[1.0, 0.0], [0.5, -1.0]]])  # one problem, two asked pairs, d = 2
    labels = torch.tensor([[1.0, 0.0]])
    weights = torch.tensor([[[1.0, 0.0], [2.0, 1.0]]])  # member 1 drops the first label
    anchor = torch.tensor([[[0.0, 0.0], [1.0, -1.0]]])
    w = fit_members(anchor.clone(), diffs, labels, weights, anchor, ridge=0.5, steps=8)
    for k in range(2):
        wk = w[0, k]
        p = torch.sigmoid(diffs[0] @ wk)
        grad = (weights[0, :, k] * (p - labels[0])) @ diffs[0] + 0.5 * (wk - anchor[0, k])
        assert grad.abs().max() < 1e-5  # stationary: the minimum of a strictly convex loss
    assert not torch.allclose(w[0, 0], w[0, 1])


def test_rules_pick_their_own_argmax_and_the_learned_rule_follows_the_policy():
    policy, cfg = load_pair_policy()
    problems = sample_pair_problems(cfg, 4, seed=3)
    for rule in ("uniform", "disagreement", "uncertainty", "learned"):
        quality, _, _ = rollout_pairs(problems, cfg, rule, policy)
        assert quality.shape == (4, cfg.budget + 1) and bool(((quality >= 0) & (quality <= 1)).all())
    # the first learned query is the argmax of the shipped policy's scores on the prior ensemble's features
    a, b = torch.triu_indices(cfg.n_items, cfg.n_items, 1)
    scores = torch.einsum("bnd,bkd->bkn", problems.x, problems.anchor)
    feats = batch_pair_features(scores, a, b)
    rule = LearnedRule(policy)
    expected = [int(np.argmax(rule.scores(f.numpy()))) for f in feats]
    assert policy.logits(policy.start(4), feats).argmax(-1).tolist() == expected
    with pytest.raises(ValueError, match="pair rule 'best'"):
        rollout_pairs(problems, cfg, "best", policy)


def test_a_bad_policy_file_is_named_with_its_option(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_text("not a policy")
    with pytest.raises(ValueError, match=r"pbrl.query_policy: .*bad.pt.* is not a pair query policy"):
        load_pair_policy(bad, "pbrl.query_policy")
    with pytest.raises(ValueError, match="query_policy: no query policy file"):
        load_pair_policy(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="n_items >= 2"):
        PairConfig(n_items=1)


def test_app_learned_selection_uses_the_shipped_pair_policy(tmp_path, capsys):
    proj = str(tmp_path / "proj")
    assert label_main(["label", "init", "--project", proj, "--selection", "learned"]) == 0
    assert label_main(["label", "init", "--project", str(tmp_path / "p2"), "--selection", "learned",
                       "--query-policy", str(tmp_path / "missing.pt")]) == 2
    assert "--query-policy: no query policy file" in capsys.readouterr().err
    assert not (tmp_path / "p2" / "project.json").exists()
    store = LabelStore.open(tmp_path / "labels.sqlite")
    project, _ = store.create_project("p", "preference", selection="learned")
    store.add_items(project, [("p0", ["a", "b", "c", "d"], {})])
    s = np.array([[0.0, 1.0, -1.0, 0.3], [0.5, 0.2, 0.0, -0.4], [1.0, 0.0, 0.1, 0.0]])
    queue = QueryQueue(store, project, lambda its: [s] * len(its))
    shipped = LearnedRule(load_pair_policy()[0])
    ref = list(shipped.policy.state_dict().values())
    assert all(torch.equal(x, y) for x, y in zip(queue.learned.policy.state_dict().values(), ref))
    a, b = np.triu_indices(4, k=1)
    feats = pair_features(1 / (1 + np.exp(-(s[:, a] - s[:, b]))))
    best = int(np.argmax(shipped.scores(feats)))
    assignment = queue.next(store.labeler_for_token(project, store.add_labeler(project, "ann")))
    assert sorted(assignment.shown) == [int(a[best]), int(b[best])]
    bad, _ = store.create_project("q", "preference", selection="learned", query_policy=str(tmp_path / "x.pt"))
    with pytest.raises(StoreError, match=r"query_policy \(label init --query-policy\): no query policy file"):
        QueryQueue(store, bad, lambda its: [s] * len(its))
    store.close()


def test_pbrl_and_the_control_lab_run_the_shipped_pair_policy(tmp_path):
    from rlxf.algorithms.control.pbrl import PbRL, PbRLConfig
    from rlxf.algorithms.control.ppo import PPOConfig
    from rlxf.core.config import ConfigError, load_config
    from rlxf.lab.control import ControlLab

    cfg = PbRLConfig(ppo=PPOConfig(n_envs=2, total_steps=256, seed=1), selection="learned", budget=30,
                     first_queries=6, queries_per_round=4, warmup_rollouts=2, segment_len=10, candidate_factor=3)
    pbrl = PbRL(cfg)
    fresh = LearnedRule(load_pair_policy()[0])
    seen = []
    choose = pbrl.learned.choose
    pbrl.learned.choose = lambda f, k=1: seen.append((f, choose(f, k))) or seen[-1][1]
    for _ in range(2):
        pbrl._record(pbrl.ppo.collect())
    pbrl.query_round(6)  # uniform: no model yet
    assert pbrl.query_round(4) == 4
    feats, idx = seen[-1]
    assert idx.tolist() == np.argsort(-fresh.scores(feats), kind="stable")[:4].tolist()
    with pytest.raises(ValueError, match="pbrl.query_policy: no query policy file"):
        PbRL(PbRLConfig(selection="learned", query_policy=str(tmp_path / "none.pt")))
    lab = [f'run.dir="{tmp_path / "lab"}"', 'pbrl.selections=["uniform", "learned"]']
    ControlLab(load_config(ControlLab.Config, "configs/lab_control.toml", lab)).validate()
    bad = load_config(ControlLab.Config, "configs/lab_control.toml", lab + [f'pbrl.query_policy="{tmp_path}/no.pt"'])
    with pytest.raises(ConfigError, match="pbrl.query_policy: no query policy file"):
        ControlLab(bad).validate()
    assert not (tmp_path / "lab" / "stages").exists()


@pytest.mark.slow
def test_shipped_pair_policy_beats_uniform_pairs_on_held_out_preference_problems():
    """Pre-registered claim (Learning to Actively Learn, pair version): the shipped pair policy
    (``pair_policy.pt``, trained by ``python -m rlxf.algorithms.active.pairs --seed 0 --iterations 600 --save``
    on problems from seeds 0..599) against uniformly random pairs on 500 held-out simulated preference problems
    (seed 9_000_000, never drawn in training or while building it), each rule with 10 labels, the same
    labeler coins and bootstrap weights. Score: the ensemble mean's final pairwise ranking accuracy.
    Pass: the paired gain over uniform >= 2 paired SE and > 0. Disagreement and uncertainty sampling are
    reported in the assertion message, not asserted."""
    policy, cfg = load_pair_policy()
    acc = compare_rules(policy, cfg, problems=500, seed=9_000_000)
    report = {r: mean_se(a) for r, a in acc.items()}
    report.update({f"learned-{r}": paired_gain(acc["learned"], acc[r]) for r in ("uniform", "disagreement",
                                                                                 "uncertainty")})
    gain, se = report["learned-uniform"]
    assert gain >= 2 * se and gain > 0, report
    assert math.isfinite(se)


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="first run (2026-12-07): trained 0.805 +- 0.007, untrained init 0.808 +- "
                   "0.007, uniform 0.774 +- 0.007; trained - untrained -0.0024 +- 0.0063 paired: the initial "
                   "scorer already beats uniform, training did not add to it")
def test_training_is_what_beats_uniform_pairs():
    """Pre-registered control for the claim above: the shipped pair policy against its own untrained
    initialisation (``make_pair_policy`` with the shipped config, seed 0), both greedy, on 500 fresh held-out
    problems (seed 9_000_001), 10 labels, same coins and bootstrap weights. Score: final pairwise ranking
    accuracy. Pass: trained - untrained >= 2 paired SE and > 0."""
    from rlxf.algorithms.active.pairs import make_pair_policy

    policy, cfg = load_pair_policy()
    trained = compare_rules(policy, cfg, problems=500, seed=9_000_001)
    untrained = compare_rules(make_pair_policy(cfg), cfg, problems=500, seed=9_000_001)
    gain, se = paired_gain(trained["learned"], untrained["learned"])
    assert gain >= 2 * se and gain > 0, (gain, se, mean_se(trained["learned"]), mean_se(untrained["learned"]),
                                         mean_se(trained["uniform"]))
