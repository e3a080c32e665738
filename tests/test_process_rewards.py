"""Process rewards: per-step scores, Monte-Carlo prover values and progress (PAV), and the
comparison of outcome RM, PRM and PAV at one label budget on the arithmetic task."""

import math
import random

import pytest
import torch

from rlxf.policies.tiny import tiny_scorer, tiny_tokenizer
from rlxf.rewards.process import ProcessRewardModel, progress, rollout_values
from rlxf.tasks.arithmetic import ArithmeticProver, check_steps, corrupt, solve


def test_last_step_score_is_the_sequence_score():
    tok = tiny_tokenizer(["a", "b", "c"])
    prm = ProcessRewardModel(tiny_scorer(tok, n_layer=1, n_embd=16, n_head=2, seed=3), tok)
    prompts, responses = [[4, 5], [6]], [[5, 6, 4], [4]]
    steps = prm.step_scores(prompts, responses, [[0, 2], [0]])
    seq = prm.score(prompts, responses)
    assert [s[-1] for s in steps] == pytest.approx(seq.tolist(), abs=1e-5)
    # position -1 reads the prompt's last token: the score of the prompt alone
    before = prm.step_scores(prompts, responses, [[-1], [-1]])
    assert [b[0] for b in before] == pytest.approx(prm.score([[4], [6]], [[5], []]).tolist(), abs=1e-5)
    # an intermediate step is scored as if the response stopped there
    assert steps[0][0] == pytest.approx(prm.score([[4, 5]], [[5]]).item(), abs=1e-5)


def test_progress_drops_exactly_at_the_first_error():
    problem = "3+4*2-5="
    good = solve(problem).split("\n")
    exact = ArithmeticProver(problem, slip=0.0)
    q = rollout_values(good, exact.complete, exact.is_correct, 3, random.Random(0))
    assert q == [1.0] * (len(good) + 1) and progress(q) == [0.0] * len(good)
    bad = corrupt(problem, solve(problem), random.Random(4)).split("\n")
    first_error = check_steps(problem, "\n".join(bad)).index(False)
    q = rollout_values(bad, exact.complete, exact.is_correct, 3, random.Random(0))
    a = progress(q)
    assert a[first_error] == -1.0 and all(x == 0.0 for i, x in enumerate(a) if i != first_error)


def test_prover_success_rate_matches_hand_computation():
    # "2*3=": two lines, each slipping by +-1 with prob 0.2; success = no slip (0.64) or a slip on
    # the product undone by the opposite slip on the answer (0.2 * 0.2 * 0.5)
    prover = ArithmeticProver("2*3=", slip=0.2)
    n, rng = 6000, random.Random(1)
    rate = sum(prover.is_correct(prover.complete([], rng)) for _ in range(n)) / n
    p = 0.64 + 0.02
    assert abs(rate - p) < 4 * math.sqrt(p * (1 - p) / n)


def test_process_verifiers_beat_outcome_rm_at_same_budget():
    from rlxf.lab.verifiers import verifier_comparison

    torch.manual_seed(0)
    r = verifier_comparison(n_train=300, n_test=100, n_candidates=16, steps=80, rollouts=8, seed=0)
    auc = r["prefix_auc"]  # ranking partial solutions of held-out problems: is the prefix still right?
    assert auc["prm"] > auc["orm"] + 0.1 and auc["pav"] > auc["orm"] + 0.1
    bon = r["best_of_n_accuracy"]  # gold accuracy of the best-of-N pick
    assert bon["pav"][16] > bon["orm"][16] and bon["pav"][4] > bon["orm"][4]
    assert bon["pav"][16] > bon["pav"][1]  # the PAV pick beats a random sample
