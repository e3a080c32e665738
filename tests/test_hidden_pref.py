"""The built-in task and the simulated labeler: gold terms, splits, calibration, BT rates."""

import math

import numpy as np
import pytest
import torch

from rlxf.labelers.simulated import BradleyTerryLabeler, bayes_optimal_accuracy, bradley_terry_prob
from rlxf.tasks.hidden_pref import HiddenPrefConfig, HiddenPreferenceTask


def test_gold_terms_sum_to_total_and_follow_the_rules(task):
    prompt = task.prompts("train")[0]
    topic = prompt.split()[0]
    cluster = task.words[task.topics.index(topic) * 8 : task.topics.index(topic) * 8 + 8]
    w = cluster[0]
    once, twice = task.gold_terms(prompt, w), task.gold_terms(prompt, f"{w} {w}")
    assert sum(once) == pytest.approx(task.gold(prompt, w))
    assert len(once) == 2 and len(twice) == 3  # one term per word plus the end-of-sequence step
    c = task.cfg
    # the second copy pays the repetition penalty on top of what the first earned (same word after itself)
    fluency_first = task._next_logp(task.index[prompt.split()[-2]], task.topics.index(topic))[task.index[w]]
    fluency_again = task._next_logp(task.index[w], task.topics.index(topic))[task.index[w]]
    expected_gap = c.fluency_weight * (fluency_again - fluency_first) - c.repeat_penalty
    assert (twice[1] - twice[0]) / task.scale == pytest.approx(expected_gap, abs=1e-9)
    # length term: |1 - 7| vs |2 - 7| words from target
    assert once[-1] == pytest.approx(-task.scale * c.length_penalty * 6)
    assert twice[-1] == pytest.approx(-task.scale * c.length_penalty * 5)


def test_on_topic_words_earn_the_bonus(task):
    prompt = task.prompts("train")[0]
    t = task.topics.index(prompt.split()[0])
    on = [w for w in task.words if task.topic_of[task.index[w]] == t]
    off = [w for w in task.words if task.topic_of[task.index[w]] != t]
    # a word's first-step term minus value and fluency leaves the bonus
    def residual(w):
        i = task.index[w]
        flu = task._next_logp(task.index[prompt.split()[-2]], t)[i] + math.log(len(task.words))
        return task.gold_terms(prompt, w)[0] / task.scale - task.values[i] - task.cfg.fluency_weight * flu
    assert residual(on[0]) == pytest.approx(task.cfg.topic_bonus)
    assert residual(off[0]) == pytest.approx(0.0, abs=1e-9)


def test_splits_are_disjoint_and_large_enough(task):
    train, test = set(task.prompts("train")), set(task.prompts("test"))
    assert not train & test
    assert len(test) >= 500


def test_task_is_reproducible_from_its_seed():
    a, b = HiddenPreferenceTask(HiddenPrefConfig(seed=4)), HiddenPreferenceTask(HiddenPrefConfig(seed=4))
    assert a.corpus(20, seed=1) == b.corpus(20, seed=1)
    assert a.scale == b.scale
    assert HiddenPreferenceTask(HiddenPrefConfig(seed=5)).words != a.words


def test_beta1_labeler_is_right_75_to_85_percent_on_sft_pairs(task, sft_policy):
    prompts = task.prompts("test")[:600]
    ro = sft_policy.sample(sft_policy.encode(prompts), n=2, generator=torch.Generator().manual_seed(9))
    texts = [sft_policy.decode(r) for r in ro.response_ids]
    paired_prompts = [p for p in prompts for _ in range(2)]
    gold = np.array([task.gold(p, t, f) for p, t, f in zip(paired_prompts, texts, ro.finished)])
    rate = bayes_optimal_accuracy(gold[0::2], gold[1::2], beta=1.0)
    assert 0.75 <= rate <= 0.85


def test_labeler_preference_rate_matches_bradley_terry():
    n = 20000
    ga, gb = np.full(n, 0.7), np.zeros(n)
    for beta in (0.5, 1.0, 3.0):
        rate = BradleyTerryLabeler(beta, seed=1).prefers_first(ga, gb).mean()
        p = 1 / (1 + math.exp(-beta * 0.7))
        assert abs(rate - p) < 4 * math.sqrt(p * (1 - p) / n)
    perfect = BradleyTerryLabeler(math.inf, seed=0).prefers_first(np.array([1.0, -1.0]), np.zeros(2))
    assert perfect.tolist() == [True, False]
    assert bradley_terry_prob(np.array([0.0]), np.array([0.0]), math.inf)[0] == 0.5
    with pytest.raises(ValueError, match="rationality"):
        BradleyTerryLabeler(-1.0)
