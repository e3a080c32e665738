"""MedS³ on the arithmetic task (rlxf.algorithms.search.meds3): the rollout schedule, the "comp"
backup, the look-back labels, PRM vote-sum, the PRM/ORM training rows and the lab methods on hand-computed
numbers and tiny models; the slow claim test pits PRM vote-sum against outcome-RM best-of-N."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch

from rlxf.algorithms.loop import OptimConfig
from rlxf.algorithms.search.meds3 import (LAB_METHOD, OUTCOME_BON, DepthRollouts, Evolved, MedS3Config,
                                          aggregate, comp_backup, comp_value, correct_trajectories, look_back,
                                          orm_rows, pick, prm_rows, response_steps, rollout_count, sample_responses,
                                          search_trees, self_evolve, step_probs, vote_sum)
from rlxf.core.runs import Run
from rlxf.lab.rlvr import arithmetic_tokenizer
from rlxf.lab.search import TaskSetup
from rlxf.policies.language import LanguagePolicy
from rlxf.policies.tiny import tiny_causal_lm, tiny_scorer
from rlxf.rewards.process import ProcessRewardModel
from rlxf.search import Tree
from rlxf.search.values import encode_steps
from rlxf.tasks.arithmetic import ArithmeticTask, check_answer

PROBLEM = "3+4*2="


@pytest.fixture(scope="module")
def tok():
    return arithmetic_tokenizer()


@pytest.fixture(scope="module")
def tiny(tok):
    return LanguagePolicy(tiny_causal_lm(tok, n_layer=1, n_embd=32, max_positions=128, seed=1), tok)


@pytest.fixture(scope="module")
def tiny_prm(tok):
    return ProcessRewardModel(tiny_scorer(tok, n_layer=1, n_embd=32, max_positions=128, seed=2), tok)


def tree_of(tok, spec):
    """A tree from ``(parent, text, value)`` rows (node ids in order; root 0)."""
    tree = Tree(PROBLEM, tok(PROBLEM, add_special_tokens=False).input_ids)
    for parent, text, value in spec:
        tree.add(tree.nodes[parent], text=text, ids=tok(text, add_special_tokens=False).input_ids).value = value
    return tree


def test_rollout_count_follows_the_papers_schedule():
    assert [rollout_count(d) for d in range(6)] == [20, 10, 6, 5, 5, 5]
    assert [rollout_count(d, base=8, floor=2) for d in range(4)] == [8, 4, 2, 2]


def test_comp_backup_halves_own_and_visit_weighted_children(tok):
    """a (own .6) with children b (own 1) and c (own 0, backed up twice): after the backups
    b = 1, c = 0, a = (.6 + (1*1 + 2*0) / 3) / 2 = .4667; the root (no own value) takes a's value."""
    tree = tree_of(tok, [(0, "a", 0.6), (1, "b", 1.0), (1, "c", 0.0)])
    root, a, b, c = tree.nodes
    comp_backup(tree, a, 0.6)
    assert (a.q, root.q) == (pytest.approx(0.6), pytest.approx(0.6))
    comp_backup(tree, b, 1.0)
    assert a.q == pytest.approx((0.6 + 1.0) / 2)
    comp_backup(tree, c, 0.0)
    comp_backup(tree, c, 0.0)
    want = (0.6 + (1 * 1.0 + 2 * 0.0) / 3) / 2
    assert (b.q, c.q, a.q, root.q) == (1.0, 0.0, pytest.approx(want), pytest.approx(want))
    assert (a.visits, root.visits, c.visits) == (4, 4, 2)
    assert comp_value(tree, a) == pytest.approx(want)


def test_look_back_punishes_a_step_that_lowers_the_value():
    # v~_i = v_i - (v_{i-1} - v_i): .8, .4 - .4 = 0, .6 + .2 = .8, .6 - 0 = .6
    assert look_back([0.8, 0.4, 0.6, 0.6]) == pytest.approx([0.8, 0.0, 0.8, 0.6])
    assert look_back([0.8, 0.4, 0.6], lam=0.5) == pytest.approx([0.8, 0.2, 0.7])
    assert look_back([0.2, 1.0, 0.2]) == [0.2, 1.0, 0.0]  # 1.8 and -0.6 clipped to [0, 1]
    assert look_back([0.5, 0.4], lam=0.0) == [0.5, 0.4]


def test_vote_sum_adds_scores_per_answer_unlike_best_of_n_or_majority():
    responses = ["x\nanswer: 7", "answer: 8", "y\nanswer: 7", "answer: 9", "answer:  9"]
    scores = [0.3, 0.9, 0.4, 0.35, 0.3]  # 7: .7, 8: .9, 9: .65 (spaces do not split a vote)
    assert vote_sum(responses, scores) == 1
    assert vote_sum(responses, [0.5, 0.9, 0.5, 0.1, 0.1]) == 0  # 7: 1.0 beats 8: .9; the first 7 is chosen
    assert vote_sum(responses, [1.0] * 5) == 0  # unit scores: majority, ties to the first answer seen


def test_aggregates_of_step_scores():
    s = [0.9, 0.5, 0.8]
    assert [aggregate(s, h) for h in ("min", "mean", "prod", "last")] == pytest.approx(
        [0.5, 2.2 / 3, 0.36, 0.8])
    with pytest.raises(ValueError, match="aggregate must be one of min, mean, prod, last, got 'max'"):
        aggregate(s, "max")


def test_prm_rows_use_comp_step_values_with_look_back_and_orm_rows_the_outcome(tok):
    """One path: right step (q .5), right step (q 1), answer (1): look-back labels .5, 1, 1; another
    path: right step, slip (q 0) -> label 0 - (.5 - 0) -> 0. The ORM row reads only the last token."""
    tree = tree_of(tok, [(0, "4*2=8\n", 0.5), (1, "3+8=11\n", 1.0), (2, "answer: 11", 1.0), (1, "3+8=12\n", 0.0)])
    for i in (1, 2, 3, 4):
        comp_backup(tree, tree.nodes[i], tree.nodes[i].value)
    q1 = (0.5 + (2 * 1.0 + 1 * 0.0) / 3) / 2
    rows = prm_rows([tree], tok)
    assert len(rows) == 2
    p, r, ends, targets = rows[0]
    assert p == tok(PROBLEM, add_special_tokens=False).input_ids and ends == [5, 12, 22]
    assert tok.decode(r) == "4*2=8\n3+8=11\nanswer: 11"
    assert targets == pytest.approx(look_back([q1, 1.0, 1.0]))
    assert rows[1][3] == pytest.approx(look_back([q1, 0.0]))
    assert correct_trajectories([tree]) == []  # nothing finished
    tree.nodes[3].finished = True
    assert correct_trajectories([tree]) == [(PROBLEM, "4*2=8\n3+8=11\nanswer: 11")]
    (p, r, ends, y), = orm_rows([(PROBLEM, "4*2=8\n3+8=12\nanswer: 12", 0.0)], tok)
    assert ends == [len(r) - 1] and y == [0.0]
    assert response_steps("a\nb\n\nc") == ["a\n", "b\n", "\n", "c"]


def test_depth_rollouts_spend_the_scheduled_completions_per_depth(tiny, tok):
    """Nodes at depths 1, 1, 2: n = 4, 4, 2 with base 8, floor 2; every completion is checked once."""
    tree = tree_of(tok, [(0, "4*2=8\n", None), (0, "4*2=9\n", None), (1, "3+8=11\n", None)])
    seen = []
    check = lambda p, r: seen.append(r) or 1.0  # noqa: E731
    out = DepthRollouts(tiny, check, base=8, floor=2, max_new_tokens=6)([(tree, n) for n in tree.nodes[1:]])
    assert out == [1.0, 1.0, 1.0] and len(seen) == 10 and tree.compute.rollouts == 10
    assert sum(r.startswith("4*2=8\n3+8=11\n") for r in seen) == 2


def test_search_trees_keep_comp_values_and_record_every_sampled_response(tiny):
    problems = ArithmeticTask(seed=0).prompts(3)
    found = search_trees(tiny, problems, simulations=4, k=2, batch=2, base=4, floor=2, max_response_tokens=12)
    rollouts = sum(t.compute.rollouts for t in found.trees)
    terminal = sum(1 for t in found.trees for n in t.nodes[1:] if n.terminal)
    assert len(found.samples) == rollouts + terminal > 0
    for t in found.trees:
        for n in t.nodes:
            if n.visits:
                assert n.q == pytest.approx(comp_value(t, n))
    assert all(s[2] == float(check_answer(s[0], s[1])) for s in found.samples)


def test_pick_reads_the_scorer_as_each_rule_says(tiny_prm):
    prompts = ["1+1=", "2*3="]
    cands = [["1+1=2\nanswer: 2", "1+1=3\nanswer: 3", "answer: 3"], ["2*3=6\nanswer: 6", "answer: 5"]]
    probs = step_probs(tiny_prm, [p for p, c in zip(prompts, cands) for _ in c], [r for c in cands for r in c])
    assert [len(s) for s in probs] == [2, 2, 1, 2, 1] and all(0 < x < 1 for s in probs for x in s)
    mins = [min(s) for s in probs]
    want_vs = [cands[0][vote_sum(cands[0], mins[:3])], cands[1][vote_sum(cands[1], mins[3:])]]
    assert pick(prompts, cands, tiny_prm, "vote_sum", "min") == want_vs
    lasts = [s[-1] for s in probs]
    want_best = [cands[0][int(np.argmax(lasts[:3]))], cands[1][int(np.argmax(lasts[3:]))]]
    assert pick(prompts, cands, tiny_prm, "best", "last") == want_best
    assert pick(prompts, cands, tiny_prm, "majority")[0] == "1+1=3\nanswer: 3"
    with pytest.raises(ValueError, match="pick rule must be"):
        pick(prompts, cands, tiny_prm, "max")


def test_self_evolve_and_the_lab_methods_run_end_to_end(tiny, tmp_path):
    """A tiny config: search, SFT on what is correct (if anything), PRM and ORM fitted; both lab
    methods then spend ``budget`` samples per prompt, and share one preparation."""
    cfg = MedS3Config(problems=4, simulations=3, k=2, base=4, floor=2, max_response_tokens=12,
                      reward=OptimConfig(steps=2, batch_size=8, lr=1e-3, checkpoint_every=10**6))
    run = Run(tmp_path / "run", "meds3 smoke", fresh=True)
    before = copy.deepcopy(tiny.model.state_dict())
    setup = TaskSetup("arithmetic", tiny, ArithmeticTask(seed=0).prompts(3, "test"),
                      {"task": ArithmeticTask(seed=0), "meds3": cfg})
    prepared = LAB_METHOD.prepare(setup, run, 0)
    assert isinstance(prepared, Evolved) and OUTCOME_BON.prepare(setup, run, 0) is prepared
    assert all(torch.equal(v, tiny.model.state_dict()[k]) for k, v in before.items())  # the input is untouched
    stages = {json.loads(line)["stage"] for line in run.metrics_path.read_text().splitlines()}
    assert prepared.stats["generations"] > 0 and {"meds3_prm", "meds3_orm"} <= stages
    for method in (LAB_METHOD, OUTCOME_BON):
        out = method.search(setup, prepared, 2, 0)
        assert out["generations"] == 6 and 0.0 <= out["gold"] <= 1.0
    assert [len(c) for c in sample_responses(tiny, setup.prompts, 2, 0)] == [2, 2, 2]


@pytest.mark.slow
def test_claim_prm_vote_sum_beats_outcome_rm_best_of_n_at_equal_samples(arith_prover, tmp_path):
    """MedS³'s claim at toy scale. The weak prover self-evolves on 256 training problems (step-level
    MCTS, 8 simulations, 3 children, rollout-mean values n = max(20 // (depth + 1), 5), comp backup,
    SFT on the correct leaves); a PRM fits the trees' step values with the look-back penalty and an
    outcome RM fits the verified outcome of every complete response the same search sampled (tree
    leaves and all rollouts, so the ORM sees at least the PRM's samples). On 500 held-out problems
    the evolved policy samples N = 8 responses each; P-VS (min step score, summed per answer) and
    ORM best-of-N choose among the SAME 8 samples with scorers of the same size, one forward each:
    equal generations (8 per prompt) and equal scored tokens.

    Threshold (set before the first run): the paired per-prompt gold difference P-VS - ORM-BoN over
    the 500 prompts has mean >= 2 standard errors (seed 0). Majority vote, PRM best-of-N and one sample
    (of the evolved policy and of the prover before SFT) are printed for reference.
    """
    task = ArithmeticTask(seed=0)
    ev = self_evolve(Run(tmp_path / "run", "meds3 claim", fresh=True), arith_prover, task, MedS3Config(), seed=0)
    test = task.prompts(500, "test")
    cands = sample_responses(ev.policy, test, 8, seed=0)
    gold = {name: np.array([check_answer(p, r) for p, r in zip(test, pick(test, cands, scorer, rule, how))], float)
            for name, scorer, rule, how in [("pvs", ev.prm, "vote_sum", "min"), ("orm_bon", ev.orm, "best", "last"),
                                             ("majority", None, "majority", "min"),
                                             ("prm_bon", ev.prm, "best", "min")]}
    first = np.array([check_answer(p, c[0]) for p, c in zip(test, cands)], float)
    prover = np.array([check_answer(p, c[0]) for p, c in zip(test, sample_responses(arith_prover, test, 1, seed=0))])
    diff = gold["pvs"] - gold["orm_bon"]
    se = diff.std(ddof=1) / math.sqrt(len(diff))
    print(f"\nMedS3 claim: {', '.join(f'{k} {v.mean():.3f}' for k, v in gold.items())}, one sample {first.mean():.3f} "
          f"(prover before SFT {prover.mean():.3f}); diff {diff.mean():.3f} se {se:.3f}; {ev.stats}")
    assert diff.mean() >= 2 * se > 0
