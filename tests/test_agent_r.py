"""Agent-R on the arithmetic task (rlxf.algorithms.search.agent_r): the reflection marker, the step
critic, revision and good rows walked out of a hand-built tree (loss on the completion only), the
injected wrong step, recovery scoring, the self-training loop end to end, and (slow) the claim:
after an injected wrong step the Agent-R model reaches the right answer more often than the same
loop trained on correct paths only.
"""

from __future__ import annotations

import copy
import random

import numpy as np
import pytest
import torch

from rlxf.algorithms.loop import OptimConfig
from rlxf.algorithms.search import agent_r as A
from rlxf.core.runs import Run
from rlxf.lab.rlvr import arithmetic_tokenizer
from rlxf.policies.language import LanguagePolicy
from rlxf.policies.tiny import tiny_causal_lm
from rlxf.search import Tree
from rlxf.tasks.arithmetic import ArithmeticTask, check_steps, solve

PROBLEM = "3+4*2="


@pytest.fixture(scope="module")
def tok():
    return arithmetic_tokenizer()


def hand_tree(tok) -> Tree:
    """root -> "4*2=8" -> "3+8=11" -> {"answer: 11" (1), "answer: 12" (0)}; "4*2=8" -> "3+8=12" (an
    unexpanded leaf whose rollouts failed, 0); root -> "4*2=9" -> "3+9=12" -> "answer: 12" (0)."""
    tree = Tree(PROBLEM, tok(PROBLEM, add_special_tokens=False).input_ids)
    spec = [(0, "4*2=8\n", False, 0.5), (1, "3+8=11\n", False, 0.5), (2, "answer: 11", True, 1.0),
            (2, "answer: 12", True, 0.0), (1, "3+8=12\n", False, 0.0), (0, "4*2=9\n", False, 0.0),
            (6, "3+9=12\n", False, 0.0), (7, "answer: 12", True, 0.0)]
    for parent, text, done, value in spec:
        tree.add(tree.nodes[parent], text=text, ids=tok(text, add_special_tokens=False).input_ids, finished=done,
                 terminal=done, value=value)
    return tree


def test_the_marker_is_one_line_of_the_arithmetic_alphabet_that_no_step_starts_like(tok):
    ids = tok(A.MARKER, add_special_tokens=False).input_ids
    assert tok.unk_token_id not in ids and tok.decode(ids) == A.MARKER and A.MARKER.endswith("\n")
    lines = [line for p in ArithmeticTask(seed=0).prompts(200) for line in solve(p).split("\n")]
    assert not any(line[0] == A.MARKER[0] for line in lines)


def test_resolve_takes_back_the_line_before_each_marker_and_solved_needs_valid_steps():
    revised = "4*2=9\n" + A.MARKER + "4*2=8\n3+8=11\nanswer: 11"
    assert A.resolve(revised) == "4*2=8\n3+8=11\nanswer: 11"
    assert A.solved(PROBLEM, revised)
    assert not A.solved(PROBLEM, "4*2=9\n3+9=11\nanswer: 11")  # right answer from a wrong step
    assert not A.solved(PROBLEM, "4*2=8\n3+8=12\nanswer: 12") and not A.solved(PROBLEM, A.MARKER)


def test_the_step_critic_labels_the_last_step_from_gold_and_errs_at_its_rate():
    asks = [PROBLEM + "4*2=8\n", PROBLEM + "4*2=9\n", PROBLEM + "4*2=9\n3+9=12\n",
            PROBLEM + "4*2=8\n3+8=11\nanswer: 12"]
    assert A.step_critic(0.0).complete(asks) == ["Good", "Bad", "Good", "Bad"]  # a consistent carry is Good
    assert A.step_critic(1.0).complete(asks) == ["Bad", "Good", "Bad", "Good"]
    flips = A.step_critic(0.3, seed=4).complete([PROBLEM + "4*2=8\n"] * 2000)
    assert 0.25 < flips.count("Bad") / 2000 < 0.35
    with pytest.raises(ValueError, match="no '=' closing the problem"):
        A.judge_last_step("4*2")


def test_revision_rows_cut_each_bad_path_at_its_first_flagged_step(tok):
    tree = hand_tree(tok)
    flagged = A.bad_steps(tree, A.step_critic(0.0))
    assert flagged == {4, 5, 6}
    rows = A.revision_rows(tree, flagged, limit=10, rng=random.Random(0))
    got = sorted((r["prefix"], r["completion"]) for r in rows)
    assert got == sorted([
        ("4*2=8\n3+8=11\nanswer: 12\n", A.MARKER + "answer: 11"),  # a finished answer line gets its newline
        ("4*2=8\n3+8=12\n", A.MARKER + "3+8=11\nanswer: 11"),  # the unexpanded leaf whose rollouts failed
        ("4*2=9\n", A.MARKER + "4*2=8\n3+8=11\nanswer: 11"),  # cut at the first flagged step, not the end
    ])
    # a bad path whose steps the critic all let through gives no row; the limit samples distinct rows
    assert len(A.revision_rows(tree, {4, 5}, limit=10, rng=random.Random(0))) == 2
    assert len(A.revision_rows(tree, flagged, limit=2, rng=random.Random(0))) == 2
    # direct revision (the paper's ablation): the whole bad path, no critic needed
    ends = A.revision_rows(tree, set(), limit=10, rng=random.Random(0), cut="end")
    assert ("4*2=9\n3+9=12\nanswer: 12\n", A.MARKER + "4*2=8\n3+8=11\nanswer: 11") in {
        (r["prefix"], r["completion"]) for r in ends}
    assert len(ends) == 3


def test_good_rows_are_the_distinct_correct_answers_and_only_the_completion_takes_the_loss(tok):
    tree = hand_tree(tok)
    good = A.good_rows(tree, limit=5, rng=random.Random(0))
    assert good == [{"prompt": PROBLEM, "prefix": "", "completion": "4*2=8\n3+8=11\nanswer: 11"}]
    policy = LanguagePolicy(tiny_causal_lm(tok, n_layer=1, n_embd=16, n_head=2, seed=0), tok)
    rows = good + [{"prompt": PROBLEM, "prefix": "4*2=9\n", "completion": A.MARKER + "4*2=8"}]
    prompts, responses = A.sft_ids(policy, rows)
    assert [policy.decode(p) for p in prompts] == [PROBLEM, PROBLEM + "4*2=9\n"]
    assert policy.decode(responses[1]) == A.MARKER + "4*2=8" and responses[1][-1] == tok.eos_token_id


def test_an_injected_prefix_ends_right_after_its_one_wrong_step():
    rng = random.Random(3)
    for p in ArithmeticTask(seed=0).prompts(60, "test"):
        prefix = A.injected_prefix(p, rng)
        labels = check_steps(p, prefix.rstrip("\n"))
        assert prefix.endswith("\n") and labels[-1] is False and all(labels[:-1])
    a, b = (A.injected_prefix(PROBLEM, random.Random(9)) for _ in range(2))
    assert a == b


class Fixed:
    """A stand-in policy that continues every prompt with the text ``reply(prompt)``."""

    def __init__(self, tok, reply):
        self.tokenizer, self.reply = tok, reply
        self.model = torch.nn.Linear(1, 1)

    def encode(self, texts):
        return [self.tokenizer(t, add_special_tokens=False).input_ids for t in texts]

    def decode(self, ids):
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def sample(self, prompt_ids, **_):
        return type("R", (), {"response_ids": self.encode([self.reply(self.decode(p)) for p in prompt_ids])})


def test_recovery_judges_the_prefix_and_the_continuation_together(tok):
    problems = ArithmeticTask(seed=0).prompts(20, "test")
    redo = Fixed(tok, lambda text: A.MARKER + solve(text[: text.index("=") + 1]))
    carry_on = Fixed(tok, lambda text: "answer: 9999")
    assert A.recovery(redo, problems) == [True] * 20
    assert A.recovery(carry_on, problems) == [False] * 20
    # without an injection the continuation starts right after the problem
    assert A.recovery(Fixed(tok, lambda text: solve(text)), problems, inject=False) == [True] * 20


def test_self_training_runs_end_to_end_and_checks_its_inputs(tok, tmp_path):
    policy = LanguagePolicy(tiny_causal_lm(tok, n_layer=1, n_embd=16, n_head=2, max_positions=128, seed=0), tok)
    before = [p.detach().clone() for p in policy.model.parameters()]
    task = ArithmeticTask(seed=0)
    cfg = A.AgentRConfig(iterations=2, prompts_per_iteration=3, simulations=2, k=2, batch=2, demos_per_iteration=4,
                         max_response_tokens=24, sft=OptimConfig(steps=2, batch_size=4, checkpoint_every=10**6))
    run = Run(tmp_path / "run", "agent-r smoke", fresh=True)
    history = A.self_train(run, policy, task.prompts(6), cfg, demos=task.corpus(8))
    assert [h["iteration"] for h in history] == [0, 1]
    assert all(h["generations"] > 0 and h["forward_tokens"] > 0 for h in history)
    assert any((a != b).any() for a, b in zip(before, policy.model.parameters()))
    with pytest.raises(ValueError, match="need 6 training prompts, got 5"):
        A.self_train(run, policy, task.prompts(5), cfg, demos=task.corpus(8))
    with pytest.raises(ValueError, match="need 8 training demos, got 7"):
        A.self_train(run, policy, task.prompts(6), cfg, demos=task.corpus(7))


@pytest.mark.slow
def test_claim_agent_r_recovers_from_an_injected_wrong_step_more_often_than_correct_path_sft(arith_prover, tmp_path):
    """Claim (Agent-R): after a wrong step injected into the prefix (``corrupt``: one slip, wrong
    operator, precedence error or mis-copied answer), the model self-trained on revision trajectories
    reaches the right final answer more often than the same loop trained on correct paths only.

    Threshold, fixed before the first run: on 500 held-out test problems, each with the same injected
    prefix for both models, the paired difference in recovery (greedy) must be > 0 and at least 2
    standard errors of the paired differences.
    Equal training budget: both arms start from the same prover and run 2 iterations of the same MCTS
    settings (256 new training problems each, 16 simulations, k = 4, one rollout per new node), and
    each iteration trains the same 120 SFT steps of batch 32 (same lr and schedule) with the same
    256 demonstrations mixed in; only the rows differ (revision + good, or good only). Seeds and
    problems here are not those the settings were chosen on.
    """
    task = ArithmeticTask(seed=0)
    train = task.prompts(1024, "train")[512:]
    test = task.prompts(1000, "test")[500:]
    demos = task.corpus(4000)[-512:]
    cfg = A.AgentRConfig()  # the defaults: the settings the docstring names
    scores = {}
    for revise in (True, False):
        policy = copy.deepcopy(arith_prover)
        run = Run(tmp_path / f"revise_{revise}", f"agent-r claim {revise}", fresh=True)
        history = A.self_train(run, policy, train, cfg, revise=revise, seed=1, demos=demos)
        scores[revise] = np.array(A.recovery(policy, test, seed=1), dtype=float)
        print(f"revise={revise} recovery={scores[revise].mean():.3f} "
              f"clean={np.mean(A.recovery(policy, test, inject=False)):.3f} {history}")
    diff = scores[True] - scores[False]
    se = diff.std(ddof=1) / np.sqrt(len(diff))
    print(f"paired difference {diff.mean():+.3f} (SE {se:.3f})")
    assert diff.mean() > 0 and diff.mean() >= 2 * se
