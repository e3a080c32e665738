"""From r to Q* (Rafailov et al., 2024) on the arithmetic task: beam search valued by a DPO policy's
implicit reward against plain sampling from the same policy at equal forward tokens."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from rlxf.core.runs import Run
from rlxf.lab.rlvr import arithmetic_tokenizer
from rlxf.lab.search import implicit_beam, most_likely, outcome, sample_n, train_dpo_prover
from rlxf.policies.language import LanguagePolicy
from rlxf.policies.tiny import tiny_causal_lm
from rlxf.search import ImplicitReward, Tree
from rlxf.tasks.arithmetic import ArithmeticTask, check_answer

N_PROMPTS = 500
WIDTH, K = 2, 4


def test_sampling_spends_one_call_and_the_most_likely_sample_answers():
    """``sample_n``: n whole responses per prompt in one sampling call, charged as prefill once per
    prompt plus the sampled tokens; ``most_likely`` takes the child of highest log-probability and
    ``outcome`` averages the picks' gold (0 for no pick) and adds up what the trees spent."""
    tok = arithmetic_tokenizer()
    policy = LanguagePolicy(tiny_causal_lm(tok, n_layer=1, n_embd=32, max_positions=128, seed=0), tok)
    trees = sample_n(policy, ["3+4*2=", "7-2*3="], 5, seed=0, max_new_tokens=12)
    for t in trees:
        kids = t.children(t.root)
        assert t.compute.sample_calls == 1 and t.compute.generations == 5 and sum(k.count for k in kids) == 5
        assert t.compute.forward_tokens == len(t.root.ids) + sum(len(k.ids) * k.count for k in kids)
        assert most_likely(t).logp == max(k.logp for k in kids)
    hand = [Tree(p, tok(p, add_special_tokens=False).input_ids) for p in ("3+4*2=", "7-2*3=", "1+1*1=")]
    right = hand[0].add(hand[0].root, text="4*2=8\n3+8=11\nanswer: 11")
    wrong = hand[1].add(hand[1].root, text="answer: 2")
    hand[0].compute.generations, hand[1].compute.rollouts = 3, 4
    got = outcome(hand, [right, wrong, None], check_answer)
    assert got["per_prompt"] == [1.0, 0.0, 0.0] and got["gold"] == pytest.approx(1 / 3) and got["generations"] == 7


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="measured on its first run: beam 0.226 vs sampling (N=19) 0.358 gold, paired "
                   "difference -0.132 +- 0.019; the implicit reward of the DPO policy's own samples runs against gold "
                   "(docs/search.md, From r to Q*)")
def test_implicit_reward_beam_beats_sampling_at_equal_forward_tokens(arith_prover, tmp_path):
    """Claim: beam search with DPO's implicit reward beats plain sampling on gold at equal compute.

    Policy: the weak arithmetic prover DPO-trained (beta 1, 100 steps) on one (right, wrong) pair of its
    own samples per train problem, labelled by the verifier; reference: the prover, frozen.
    Beam: width 2 over lines, 4 lines sampled per kept node, each node valued by
    ``beta * sum_t log pi/pi_ref`` (``ImplicitReward``); the answer is the finished response with the
    highest implicit reward. Baseline: N independent samples per prompt from the same DPO policy at
    temperature 1, the answer being the most likely one (sequence log-probability, no reward).
    Equal compute: N is the smallest count whose total forward tokens (prefills + sampled tokens) reach
    the beam's total forward tokens, which count every policy prefill and sampled token and every
    reference token of the implicit rewards; the test asserts sampling spent at least as much.
    Threshold (set before the first run): on 500 held-out test problems, the mean paired difference
    of gold (beam minus sampling) is at least 2 paired standard errors above 0.
    """
    task = ArithmeticTask(seed=0)
    prompts = task.prompts(N_PROMPTS, "test")
    torch.manual_seed(0)
    policy, ref = train_dpo_prover(Run(tmp_path / "run", "implicit beam claim", fresh=True), "dpo",
                                   copy.deepcopy(arith_prover), task, seed=0)
    trees = implicit_beam(policy, ref, prompts, WIDTH, K, seed=1)
    beam = outcome(trees, [t.best() for t in trees], check_answer)
    assert sum(t.compute.reference_tokens for t in trees) > 0

    # the sampling count: forward tokens per sample from a pilot, then checked on the real draw
    pilot = sample_n(policy, prompts[:100], 8, seed=7)
    per_sample = sum(t.compute.forward_tokens for t in pilot) / (8 * 100)
    n = max(1, math.ceil(beam["forward_tokens"] / (per_sample * N_PROMPTS)))
    while True:
        sampled = sample_n(policy, prompts, n, seed=2)
        base = outcome(sampled, [most_likely(t) for t in sampled], check_answer)
        if base["forward_tokens"] >= beam["forward_tokens"]:
            break
        n += 1

    # a diagnostic for the guide: how often each score ranks a right finished sample above a wrong one
    items = [(t, n) for t in sampled for n in t.children(t.root) if n.finished]
    right = np.array([check_answer(t.prompt, n.text) for t, n in items], dtype=bool)
    for name, score in (("implicit reward", ImplicitReward(ref, 1.0)(items)), ("log pi", [n.logp for _, n in items])):
        score = np.array(score)
        auc = (score[right][:, None] > score[~right][None, :]).mean()
        print(f"{name}: ranks a right sample above a wrong one in {auc:.2f} of pairs ({len(items)} samples)")

    diff = np.array(beam["per_prompt"]) - np.array(base["per_prompt"])
    se = diff.std(ddof=1) / math.sqrt(len(diff))
    print(f"beam gold {beam['gold']:.3f} ({beam['forward_tokens'] / N_PROMPTS:.0f} forward tokens/prompt), "
          f"sampling N={n} gold {base['gold']:.3f} ({base['forward_tokens'] / N_PROMPTS:.0f}); "
          f"paired difference {diff.mean():+.3f} +- {se:.3f}")
    assert diff.mean() >= 2 * se, f"beam minus sampling {diff.mean():+.3f}, paired SE {se:.3f}"
