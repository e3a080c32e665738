"""Follow-up likelihood (FLR) as the reward of an online run: the policy learns to give the
answers after which a judge LM expects the user to say thanks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rlxf.algorithms.loop import OptimConfig
from rlxf.algorithms.online.controller import KLSettings, OnlineConfig, train_online
from rlxf.algorithms.sft import train_sft
from rlxf.core.runs import Run
from rlxf.policies.language import LanguagePolicy
from rlxf.policies.tiny import tiny_causal_lm, tiny_tokenizer
from rlxf.rewards.follow_up import follow_up_logps, follow_up_reward, follow_up_reward_fn
from rlxf.rewards.scoring import Samples, Scorer

WORDS = ["q", "good", "bad", "thanks", "wrong"]
POS, NEG = ("thanks",), ("wrong",)


def _lm(seed: int) -> LanguagePolicy:
    tok = tiny_tokenizer(WORDS)
    return LanguagePolicy(tiny_causal_lm(tok, n_layer=1, n_embd=32, n_head=2, seed=seed), tok)


def _sft(lm: LanguagePolicy, texts: list[str], path) -> None:
    train_sft(Run(path, "x"), "sft", lm, lm.encode(["q"] * len(texts)), lm.encode_responses(texts),
              OptimConfig(steps=60, batch_size=32, lr=1e-2, checkpoint_every=0), 0, True)


def _talks(rng: np.random.Generator, n: int = 400) -> list[str]:
    """Conversations where users thank "good" answers and complain about "bad" ones 90% of the time."""
    talks = []
    for _ in range(n):
        answer = "good" if rng.random() < 0.5 else "bad"
        happy = (answer == "good") == (rng.random() < 0.9)
        talks.append(f"{answer} {'thanks' if happy else 'wrong'}")
    return talks


def test_follow_up_likelihood_reward_by_hand_and_after_training(tmp_path):
    lm = _lm(0)
    # by hand, before training: FLR = mean log p(positive follow-up) - mean log p(negative one)
    steps = lm.score(lm.encode(["q good"]), lm.encode(["thanks q"]))
    assert follow_up_logps(lm, ["q"], ["good"], "thanks q").item() == pytest.approx(steps.mean().item(), abs=1e-5)
    want = steps.mean() - lm.score(lm.encode(["q good"]), lm.encode(["wrong"])).mean()
    assert follow_up_reward(lm, ["q"], ["good"], ("thanks q",), NEG).item() == pytest.approx(want.item(), abs=1e-5)
    # FLR learns to tell good answers from bad ones
    _sft(lm, _talks(np.random.default_rng(0)), tmp_path / "flr")
    r = follow_up_reward(lm, ["q", "q"], ["good", "bad"], POS, NEG)
    assert r[0] > 1.0 and r[1] < -1.0  # log(0.9 / 0.1) = 2.2 at the optimum


def _flr_of_samples(judge: LanguagePolicy, policy: LanguagePolicy, n: int, seed: int) -> np.ndarray:
    ro = policy.sample(policy.encode(["q"]), n=n, max_new_tokens=3, generator=torch.Generator().manual_seed(seed))
    return follow_up_reward(judge, ["q"] * n, [policy.decode(r) for r in ro.response_ids], POS, NEG).numpy()


def test_follow_up_reward_fn_matches_the_text_reward(tmp_path):
    judge = _lm(1)
    s = Samples(judge.encode(["q", "q"]), judge.encode_responses(["good", "bad"]), [True, True], 1)
    want = follow_up_reward(judge, ["q", "q"], ["good", "bad"], POS, NEG)
    assert torch.allclose(follow_up_reward_fn(judge, POS, NEG)(s), want, atol=1e-5)


@pytest.mark.slow
def test_online_run_on_follow_up_likelihood_raises_it(tmp_path):
    """RLOO whose only reward is FLR under a judge that has seen users thank "good" answers and
    complain about "bad" ones 90% of the time. Beyond noise (fixed before the first run): the mean
    FLR of 512 samples after training exceeds that of 512 samples of the starting policy by more
    than 2 standard errors of the difference, and the share of "good" answers rises."""
    judge, policy = _lm(1), _lm(2)
    rng = np.random.default_rng(0)
    _sft(judge, _talks(rng), tmp_path / "judge")
    _sft(policy, ["good" if rng.random() < 0.5 else "bad" for _ in range(400)], tmp_path / "policy")
    before = _flr_of_samples(judge, policy, 512, seed=5)
    cfg = OnlineConfig(method="rloo", samples_per_prompt=4, max_new_tokens=3, kl=KLSettings(coef=0.01),
                       optim=OptimConfig(steps=30, batch_size=8, lr=3e-3, checkpoint_every=0))
    scorer = Scorer({"flr": (follow_up_reward_fn(judge, POS, NEG), 1.0)})
    torch.manual_seed(0)
    train_online(Run(tmp_path / "rl", "x"), "rl", policy, policy.reference(), policy.encode(["q"]), scorer, cfg,
                 seed=0, quiet=True)
    after = _flr_of_samples(judge, policy, 512, seed=6)
    diff = after.mean() - before.mean()
    se = math.sqrt(before.var(ddof=1) / len(before) + after.var(ddof=1) / len(after))
    assert diff > 2 * se, (before.mean(), after.mean(), se)
    good = lambda x: float((x > 0).mean())  # noqa: E731 - FLR > 0: the judge expects thanks
    assert good(after) > good(before)
