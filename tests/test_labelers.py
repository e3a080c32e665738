"""Simulated labelers behave as their models say: rates within sampling error (4 standard errors)."""

import itertools
import math

import numpy as np
import pytest

from rlxf.labelers.simulated import (
    BPrefLabeler,
    IntransitiveLabeler,
    LikertLabeler,
    PlackettLuceLabeler,
    bradley_terry_prob,
    cycle_probability,
    myopic_returns,
    plackett_luce_prob,
)


def within(observed: float, p: float, n: int, k: float = 4.0) -> bool:
    return abs(observed - p) <= k * math.sqrt(max(p * (1 - p), 1e-12) / n) + 1e-12


def test_bt_preference_rate_matches_sigmoid():
    n = 20000
    lab = BPrefLabeler(beta=1.0, seed=1)
    for d in (-1.0, 0.5, 2.0):
        labels = lab.label(np.full(n, d), np.zeros(n))
        assert within(labels.mean(), 1 / (1 + math.exp(-d)), n)


def test_mistake_rate_flips_a_perfect_labeler():
    n = 20000
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=n), rng.normal(size=n)
    labels = BPrefLabeler(beta=math.inf, mistake_rate=0.2, seed=2).label(a, b)
    wrong = np.mean(labels != (a > b))
    assert within(wrong, 0.2, n)


def test_ties_and_skips_exactly_where_configured():
    rng = np.random.default_rng(3)
    a, b = rng.uniform(-2, 2, 5000), rng.uniform(-2, 2, 5000)
    labels = BPrefLabeler(beta=1.0, tie_below=0.5, skip_below=-1.0, seed=4).label(a, b)
    skipped = np.maximum(a, b) < -1.0
    assert np.array_equal(np.isnan(labels), skipped)
    assert np.array_equal(labels[~skipped] == 0.5, (np.abs(a - b) < 0.5)[~skipped])
    decided = labels[~np.isnan(labels) & (labels != 0.5)]
    assert set(np.unique(decided)) == {0.0, 1.0}
    # P(skip) = P(both < -1) = (1/4)^2 for uniform(-2, 2)
    assert within(skipped.mean(), 1 / 16, 5000)


def test_myopic_returns_and_preference():
    assert myopic_returns([[1.0, 2.0, 3.0]], gamma=0.5)[0] == pytest.approx(0.25 + 1.0 + 3.0)
    early, late = [[2.0, 0.0, 0.0]], [[0.0, 0.0, 1.5]]
    assert BPrefLabeler(beta=math.inf, gamma=1.0).label(early, late)[0] == 1.0
    assert BPrefLabeler(beta=math.inf, gamma=0.5).label(early, late)[0] == 0.0


def test_plackett_luce_rankings_match_model():
    gold = np.array([1.0, 0.0, -0.5])
    n = 30000
    orders = PlackettLuceLabeler(beta=1.0, seed=5).rank(np.tile(gold, (n, 1)))
    total = 0.0
    for perm in itertools.permutations(range(3)):
        p = plackett_luce_prob(gold[list(perm)])
        total += p
        assert within(np.mean(np.all(orders == perm, axis=1)), p, n)
    assert total == pytest.approx(1.0)
    # k = 2 reduces to Bradley-Terry
    assert plackett_luce_prob([0.7, 0.0]) == pytest.approx(bradley_terry_prob(0.7, 0.0, 1.0))


def test_likert_rating_frequencies_match_ordered_logit():
    lab = LikertLabeler(levels=5, beta=2.0, cuts=[-1.0, -0.3, 0.3, 1.0], seed=6)
    n = 20000
    for g in (-0.8, 0.0, 1.2):
        ratings = lab.rate(np.full(n, g))
        probs = lab.probs([g])[0]
        assert probs.sum() == pytest.approx(1.0)
        assert ratings.min() >= 1 and ratings.max() <= 5
        for level in range(1, 6):
            assert within(np.mean(ratings == level), probs[level - 1], n)
    sharp = LikertLabeler(levels=5, beta=math.inf, cuts=[-1.0, -0.3, 0.3, 1.0])
    assert sharp.rate([-2.0, -0.5, 0.0, 0.5, 2.0]).tolist() == [1, 2, 3, 4, 5]


def test_intransitive_labeler_cycles_at_predicted_rate():
    # rock-paper-scissors: three criteria, each ranks the three items in a rotated order
    scores = {"a": [2.0, 0.0, 1.0], "b": [1.0, 2.0, 0.0], "c": [0.0, 1.0, 2.0]}
    lab = IntransitiveLabeler([1, 1, 1], beta=math.inf, seed=7)
    n = 20000
    rep = lambda x: np.tile(scores[x], (n, 1))  # noqa: E731
    ab = lab.prefers_first(rep("a"), rep("b"))
    bc = lab.prefers_first(rep("b"), rep("c"))
    ca = lab.prefers_first(rep("c"), rep("a"))
    observed = np.mean((ab & bc & ca) | (~ab & ~bc & ~ca))
    p = [lab.prob_first([scores[x]], [scores[y]])[0] for x, y in (("a", "b"), ("b", "c"), ("c", "a"))]
    assert p == pytest.approx([2 / 3] * 3)
    predicted = float(cycle_probability(*p))
    assert predicted == pytest.approx(1 / 3)
    assert within(observed, predicted, n)
    # a single criterion is transitive: no cycles at all
    one = IntransitiveLabeler([1, 0, 0], beta=math.inf, seed=8)
    x, y, z = (one.prefers_first(rep(u), rep(v)) for u, v in (("a", "b"), ("b", "c"), ("c", "a")))
    assert not np.any((x & y & z) | (~x & ~y & ~z))


def test_model_judge_agrees_with_gold(pipeline_run, task):
    from rlxf.labelers.judge import RewardModelJudge

    pipeline = pipeline_run[0]
    rm = pipeline.reward_model()
    corpus = task.corpus(600, seed=99, split="test")
    prompts = [s.prompt for s in corpus[0::2]]
    a = [s.response for s in corpus[0::2]]
    b = [task.sample_response(p, np.random.default_rng(i)) for i, p in enumerate(prompts)]
    gold_first = np.array([task.gold(p, x) > task.gold(p, y) for p, x, y in zip(prompts, a, b)])
    judge = RewardModelJudge(rm, beta=math.inf, seed=0)
    agree = np.mean(judge.prefers_first(prompts, a, b) == gold_first)
    assert agree > 0.7
