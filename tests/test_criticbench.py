"""CriticBench and self-check: certainty, voting, the benchmark's scores and self-check's filtering."""

import math

import numpy as np
import pytest

from rlxf.algorithms.critique.criticbench import (accuracy_by_certainty, certainty, certainty_bucket, criticbench,
                                                  final_answer, majority, paired_gain, policy_items,
                                                  question_certainty, self_check, train_verifier)
from rlxf.critique.bench import arithmetic_items
from rlxf.critique.format import render_critique
from rlxf.critique.simulated import ALWAYS_CORRECT, CriticProfile, simulated_critic


class RejectsValue:
    """A scripted critic: rejects every answer whose last line is ``answer: <value>``."""

    def __init__(self, value):
        self.value, self.requests = value, []

    def complete(self, requests):
        self.requests += requests
        return [render_critique(f"answer: {self.value}\n#" not in r) for r in requests]


def test_certainty_formula_and_buckets():
    assert certainty(4, 8) == pytest.approx(-math.log10(0.5))
    assert certainty(6, 8) == pytest.approx(-math.log10(0.25))
    assert certainty(8, 8) == pytest.approx(math.log10(16))  # unanimous: half a dissenting sample
    assert certainty(0, 8) == 0.0
    assert [certainty_bucket(c) for c in (0.0, 0.3, 0.6, 0.9, 1.0, 1.2)] == ["low", "low", "mid", "mid", "high", "high"]
    with pytest.raises(ValueError, match="0 <= m <= k"):
        certainty(9, 8)


def test_final_answer_and_majority():
    assert final_answer("4*2=8\n3+8=11\nanswer: 11") == "11"
    assert final_answer("4*2=8\nanswer = 11") is None and final_answer("") is None
    assert majority(["3", None, "5", "5", "3", None, None]) == ("3", 2)  # tie: the first seen; None never wins
    assert majority([None, None]) == (None, 0)
    assert question_certainty(["answer: 1"] * 6 + ["answer: 2", "x"]) == pytest.approx(-math.log10(0.25))


def test_self_check_drops_rejected_samples_below_the_threshold():
    problems = ["2+3=", "1+1=", "4*2="]
    samples = [["answer: 6"] * 5 + ["answer: 5"] * 3,      # majority wrong (6), certainty 0.43
               ["answer: 6"] * 8,                          # unanimous and wrong: not critiqued
               ["answer: 6"] * 4 + ["answer: 8"] * 4]      # every 6 rejected: 8 wins
    critic = RejectsValue(6)
    r = self_check(critic, problems, samples, threshold=1.0)
    assert r["majority"].tolist() == [0.0, 0.0, 0.0]  # the 4-4 tie goes to the first seen (6)
    assert r["self_check"].tolist() == [1.0, 0.0, 1.0]
    assert r["single"].tolist() == [0.0, 0.0, 0.0]
    assert r["critiqued"].tolist() == [True, False, True] and r["critic_requests"] == 16 == len(critic.requests)
    assert r["certainty"][1] == pytest.approx(math.log10(16))
    # threshold 0: never critiqued, self-check is plain majority; all rejected: the majority stands
    r0 = self_check(RejectsValue(6), problems, samples, threshold=0.0)
    assert r0["critic_requests"] == 0 and r0["self_check"].tolist() == r0["majority"].tolist()
    r_all = self_check(RejectsValue(5), ["2+3="], [["answer: 5"] * 7 + ["answer: 6"]], threshold=1.0)
    assert r_all["self_check"].tolist() == [0.0]  # 6, the one kept, is wrong
    r_none = self_check(RejectsValue(5), ["2+3="], [["answer: 5"] * 7 + ["oops"]], threshold=1.0)
    assert r_none["self_check"].tolist() == [1.0]  # no answer kept: the majority (5) stands
    accs = accuracy_by_certainty(r, "self_check")
    assert accs == {"low": {"accuracy": 1.0, "n": 2}, "high": {"accuracy": 0.0, "n": 1}}


def test_paired_gain_on_hand_numbers():
    mean, se = paired_gain(np.array([1, 1, 0, 1]), np.array([0, 1, 0, 0]))
    assert mean == pytest.approx(0.5) and se == pytest.approx(np.std([1, 0, 0, 1], ddof=1) / 2)


def test_criticbench_scores_by_difficulty_and_certainty():
    items = arithmetic_items(60, seed=2)
    perfect = criticbench(simulated_critic(CriticProfile()), items)
    assert perfect["accuracy"] == 1.0 and perfect["by_difficulty"] == {1: 1.0, 2: 1.0, 3: 1.0}
    assert perfect["by_certainty"] == {}
    accept_all = criticbench(simulated_critic(ALWAYS_CORRECT), items)
    assert accept_all["accuracy"] == 0.5 and accept_all["reject_wrong"] == 0.0
    samples = [["3+4=7\nanswer: 7"] * 8, ["3+4=7\nanswer: 7"] * 4 + ["3+4=8\nanswer: 8"] * 4]
    pitems = policy_items(["3+4=", "3+4="], samples)
    assert [it.correct for it in pitems] == [True] * 12 + [False] * 4
    assert [it.first_wrong_step for it in pitems[-4:]] == [1] * 4 and pitems[0].difficulty == 1
    by_c = criticbench(simulated_critic(ALWAYS_CORRECT), pitems)["by_certainty"]
    assert by_c == {"low": {"accuracy": 0.5, "n": 8}, "high": {"accuracy": 1.0, "n": 8}}


def test_train_verifier_smoke(tmp_path):
    """The trained-verifier path runs end to end: a 1-layer critic LM, a few steps, judged by criticbench."""
    from rlxf.algorithms.loop import OptimConfig
    from rlxf.core.runs import Run

    items = arithmetic_items(8, seed=5)
    cfg = OptimConfig(steps=3, batch_size=4, lr=3e-3, checkpoint_every=10**6)
    critic = train_verifier(Run(tmp_path, "verifier", fresh=True), "verifier", items, cfg, n_layer=1, n_embd=16)
    assert critic.policy.model.config.n_layer == 1 and not critic.policy.model.training
    out = criticbench(critic, items)
    assert out["n"] == 8 and 0.0 <= out["accuracy"] <= 1.0 and critic.requests == 8


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="measured with deterministic training (session 13): self-check 0.417, majority "
                   "0.392, single 0.315; vs majority +0.025 (se 0.015, 1.7 se: short of 2), vs single +0.102 (5.8 se). "
                   "Session 12's +0.057 (4.1 se) and CI's +0.028 came from provers that multi-threaded CPU training "
                   "made differently in each process")
def test_self_check_beats_self_consistency_and_single_samples(arith_prover):
    """CriticBench's self-check claim at toy scale. The weak arithmetic prover samples k = 8 answers
    (temperature 1, sampler seed 0) to each of 600 held-out problems; a simulated critic of set
    quality (gold-driven, misses a wrong answer and rejects a right one each with probability 0.25:
    75% verdict accuracy) judges the samples of every problem whose certainty is below C = 1.
    Equal policy samples: all three use the same 8 samples per problem (single = the first one).
    Threshold, fixed before the first run: self-check's accuracy beats plain majority voting AND a
    single sample by >= 2 paired standard errors over the 600 problems."""
    from rlxf.lab.rlvr import sample_responses
    from rlxf.tasks.arithmetic import ArithmeticTask

    problems = ArithmeticTask(seed=0).prompts(600, "test")
    samples = sample_responses(arith_prover, problems, 8, 0)
    critic = simulated_critic(CriticProfile(miss=0.25, false_alarm=0.25, notes=False), seed=0)
    r = self_check(critic, problems, samples, threshold=1.0)
    vs_majority, vs_single = paired_gain(r["self_check"], r["majority"]), paired_gain(r["self_check"], r["single"])
    print({k: float(np.mean(r[k])) for k in ("self_check", "majority", "single", "critiqued")},
          "gain vs majority", vs_majority, "vs single", vs_single,
          "by certainty", accuracy_by_certainty(r, "self_check"), accuracy_by_certainty(r, "majority"))
    assert vs_majority[0] >= 2 * vs_majority[1]
    assert vs_single[0] >= 2 * vs_single[1]
