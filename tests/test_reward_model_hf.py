"""Outcome reward models: HF interoperability, accuracy against the Bayes-optimal rate, and
training from ties, rankings and ratings."""

import math

import numpy as np
import pytest
import torch

from rlxf.algorithms.loop import OptimConfig
from rlxf.algorithms.reward_training import (
    train_ranking_reward_model,
    train_rating_reward_model,
    train_reward_model,
)
from rlxf.core.runs import Run
from rlxf.labelers.simulated import LikertLabeler, PlackettLuceLabeler
from rlxf.rewards.evaluation import pairwise_accuracy
from rlxf.rewards.losses import RewardDataError
from rlxf.rewards.model import RewardModel


def test_bt_reward_model_within_5_points_of_bayes_optimal(pipeline_run):
    """The session pipeline's BT reward model (about 2000 beta=1 comparisons): its held-out accuracy
    against gold labels is within 5 points of the Bayes-optimal accuracy implied by beta."""
    r = pipeline_run[0].run.result("reward_model")
    assert 0.75 <= r["bayes_optimal_accuracy"] <= 0.85  # gold scaled so a beta=1 labeler is right 75-85%
    assert abs(r["held_out_accuracy_vs_gold"] - r["bayes_optimal_accuracy"]) <= 0.05
    # expected agreement with a fresh labeler can never beat the Bayes-optimal rate
    assert r["held_out_accuracy_vs_labeler"] <= r["bayes_optimal_accuracy"] + 1e-9


def test_saved_reward_model_scores_the_same_in_transformers(pipeline_run, task):
    from transformers import AutoModelForSequenceClassification

    pipeline = pipeline_run[0]
    path = pipeline._model_dir("reward_model")
    rm = RewardModel.from_pretrained(path)
    hf = AutoModelForSequenceClassification.from_pretrained(path, local_files_only=True).eval()
    corpus = task.corpus(6, seed=5, split="test")
    prompts, responses = [s.prompt for s in corpus], [s.response for s in corpus]
    ours = rm.score_texts(prompts, responses)
    p_ids, r_ids = rm.encode_pairs(prompts, responses)
    with torch.no_grad():
        alone = [hf(input_ids=torch.tensor([p + r])).logits[0, 0].item() for p, r in zip(p_ids, r_ids)]
    assert ours.tolist() == pytest.approx(alone, abs=1e-4)
    assert len(set(len(p + r) for p, r in zip(p_ids, r_ids))) > 1  # the batch really was padded


def _rm_and_data(pipeline_run, task, n, seed):
    pipeline = pipeline_run[0]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        rm = RewardModel.from_pretrained(pipeline._model_dir("sft"))
    rng = np.random.default_rng(seed)
    prompts = task.sample_prompts(n, "train", rng)
    return rm, prompts, rng


def _held_out_accuracy(rm, task):
    corpus = task.corpus(400, seed=77, split="test")
    a, b = corpus[0::2], corpus[1::2]
    sa = rm.score_texts([s.prompt for s in a], [s.response for s in a])
    sb = rm.score_texts([s.prompt for s in a], [s.response for s in b])
    ga = [task.gold(s.prompt, s.response) for s in a]
    gb = [task.gold(x.prompt, y.response) for x, y in zip(a, b)]
    return pairwise_accuracy(sa, sb, ga, gb)


def test_all_tie_comparisons_are_rejected_before_training(pipeline_run, task, tmp_path):
    rm, prompts, _ = _rm_and_data(pipeline_run, task, 4, 0)
    p, r = rm.encode_pairs(prompts, ["a", "b", "c", "d"])
    pairs = [(p[i], r[i], r[(i + 1) % 4]) for i in range(4)]
    with pytest.raises(RewardDataError, match="every labelled row is a tie"):
        train_reward_model(Run(tmp_path / "r", "x"), "rm", rm, pairs, OptimConfig(steps=1), 0, True,
                           labels=[0.5, 0.5, 0.5, math.nan])
    assert not (tmp_path / "r" / "metrics.jsonl").exists()


def test_plackett_luce_and_rating_training_learn_gold(pipeline_run, task, tmp_path):
    cfg = OptimConfig(steps=40, batch_size=16, lr=1e-3, warmup_steps=5, checkpoint_every=0)
    # rankings of 4 responses
    rm, prompts, rng = _rm_and_data(pipeline_run, task, 320, 1)
    base = _held_out_accuracy(rm, task)
    texts = [[task.sample_response(p, rng) for _ in range(4)] for p in prompts]
    gold = np.array([[task.gold(p, t) for t in ts] for p, ts in zip(prompts, texts)])
    orders = PlackettLuceLabeler(beta=1.0, seed=1).rank(gold)
    rows = []
    for p, ts, order in zip(prompts, texts, orders):
        p_ids, r_ids = rm.encode_pairs([p] * 4, ts)
        rows.append((p_ids[0], r_ids, order.tolist()))
    train_ranking_reward_model(Run(tmp_path / "pl", "x"), "rm", rm, rows, cfg, 0, True)
    ranked = _held_out_accuracy(rm, task)
    assert ranked > max(base, 0.6)
    # Likert ratings of single responses
    rm, prompts, rng = _rm_and_data(pipeline_run, task, 640, 2)
    texts = [task.sample_response(p, rng) for p in prompts]
    gold = np.array([task.gold(p, t) for p, t in zip(prompts, texts)])
    labeler = LikertLabeler(levels=5, beta=1.0, reference_gold=gold, seed=2)
    p_ids, r_ids = rm.encode_pairs(prompts, texts)
    rows = list(zip(p_ids, r_ids, labeler.rate(gold).tolist()))
    train_rating_reward_model(Run(tmp_path / "rt", "x"), "rm", rm, rows, labeler.scale, cfg, 0, True)
    assert _held_out_accuracy(rm, task) > 0.6
    with pytest.raises(RewardDataError, match="row 1 has rating 6"):
        train_rating_reward_model(Run(tmp_path / "bad", "x"), "rm", rm, [rows[0], rows[1][:2] + (6,)], (1, 5),
                                  cfg, 0, True)


def test_follow_up_likelihood_reward(tmp_path):
    from rlxf.algorithms.sft import train_sft
    from rlxf.policies.language import LanguagePolicy
    from rlxf.policies.tiny import tiny_causal_lm, tiny_tokenizer
    from rlxf.rewards.follow_up import follow_up_logps, follow_up_reward

    tok = tiny_tokenizer(["q", "good", "bad", "thanks", "wrong", "ok"])
    lm = LanguagePolicy(tiny_causal_lm(tok, n_layer=1, n_embd=32, n_head=2, seed=0), tok)
    # by hand, before training: FLR = mean log p(positive follow-up) - mean log p(negative one)
    steps = lm.score(lm.encode(["q good"]), lm.encode(["thanks ok"]))
    assert follow_up_logps(lm, ["q"], ["good"], "thanks ok").item() == pytest.approx(steps.mean().item(), abs=1e-5)
    want = steps.mean() - lm.score(lm.encode(["q good"]), lm.encode(["wrong"])).mean()
    assert follow_up_reward(lm, ["q"], ["good"], ("thanks ok",), ("wrong",)).item() == pytest.approx(want.item(), abs=1e-5)
    # users thank good answers and complain about bad ones 90% of the time; FLR learns to tell them apart
    rng = np.random.default_rng(0)
    texts = []
    for _ in range(400):
        answer = "good" if rng.random() < 0.5 else "bad"
        happy = (answer == "good") == (rng.random() < 0.9)
        texts.append(f"{answer} {'thanks' if happy else 'wrong'}")
    train_sft(Run(tmp_path / "flr", "x"), "sft", lm, lm.encode(["q"] * len(texts)), lm.encode_responses(texts),
              OptimConfig(steps=60, batch_size=32, lr=1e-2, checkpoint_every=0), 0, True)
    r = follow_up_reward(lm, ["q", "q"], ["good", "bad"], ("thanks",), ("wrong",))
    assert r[0] > 1.0 and r[1] < -1.0  # log(0.9 / 0.1) = 2.2 at the optimum
