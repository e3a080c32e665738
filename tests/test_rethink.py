"""RethinkMCTS on the code task: the code tokenizer, the editor's request and replies, rewriting a
thought in place, the rethink evaluator's accounting, the three lab methods end to end, and (slow)
the claim that rethink beats plain MCTS and sampling at equal generations."""

from __future__ import annotations

import random
import re

import numpy as np
import pytest

from rlxf.algorithms.search.rethink import (MCTS, RETHINK, SAMPLE, PublicTests, Rethink, Runner, best_of_samples,
                                            code_mcts, code_tokenizer, lab_setup, parse_request, reference_line,
                                            reply_line, rethink_request, rewrite, signature, simulated_editor, slip,
                                            spent)
from rlxf.lab.search import TaskSetup
from rlxf.policies.language import LanguagePolicy
from rlxf.policies.tiny import tiny_causal_lm
from rlxf.search import Tree
from rlxf.tasks.code import CodeTask, all_problems, problem


@pytest.fixture(scope="module")
def untrained():
    tok = code_tokenizer()
    return LanguagePolicy(tiny_causal_lm(tok, "gpt2", 1, 32, 4, 256, seed=0), tok)


def test_the_tokenizer_round_trips_every_signature_and_reference_body():
    tok = code_tokenizer()
    for p in all_problems().values():
        text = signature(p.prompt) + p.solution
        ids = tok(text, add_special_tokens=False).input_ids
        assert tok.unk_token_id not in ids and tok.decode(ids) == text, p.id
    assert signature(problem("caesar_3").prompt) == "def caesar_3(s):\n"
    assert tok.decode(tok("x %  3 == 0", add_special_tokens=False).input_ids) == "x %  3 == 0"


def test_the_request_names_the_line_and_the_simulated_editor_writes_the_reference_line():
    p = problem("count_letter_o")
    thought = "        if ch == 't':\n"
    before = "    n = 0\n    for ch in s:\n"
    request = rethink_request(p.prompt, before, thought, before + thought + "            n += 1\n    return n\n",
                              "passed 0/3 tests\ncount_letter_o('moon'): expected 2, got 0")
    assert parse_request(request) == ("count_letter_o", 2, "        if ch == 't':")
    assert "expected 2, got 0" in request and request.startswith("Rewrite line 2 ")
    assert reference_line(request) == "        if ch == 'o':"
    assert simulated_editor(error=0.0).complete([request]) == ["        if ch == 'o':"]
    # Past the reference's last line the editor keeps the thought.
    assert reference_line(rethink_request(p.prompt, before * 3, thought, "", "")) == "        if ch == 't':"
    with pytest.raises(ValueError, match="not a rethink request"):
        parse_request("fix this")


def test_a_slip_leaves_the_thought_or_moves_one_number_or_comparison():
    request = rethink_request(problem("keep_above_3").prompt, "", "    return xs\n", "    return xs\n", "passed 1/3 tests")
    right = reference_line(request)
    assert right == "    return [x for x in xs if x > 3]"
    rng = random.Random(0)
    seen = {slip(request, right, rng) for _ in range(200)}
    assert seen == {"    return xs", "    return [x for x in xs if x >= 3]", "    return [x for x in xs if x > 2]",
                    "    return [x for x in xs if x > 4]"}
    editor = simulated_editor(error=1.0, seed=1)
    assert all(r in seen for r in editor.complete([request] * 20)) and editor.requests == 20


def test_reply_line_takes_the_first_line_of_code():
    assert reply_line("```python\n    return n\n```", "    return 0\n") == "    return n"
    assert reply_line("\n\n    x = 1  \nmore", "t\n") == "    x = 1"
    assert reply_line("", "    return 0\n") == "    return 0"
    assert reply_line("def f(xs):\n    return sum(xs)", "    return 0\n") == "    return sum(xs)"


def test_rewrite_keeps_how_the_step_ended_and_sets_the_prior(untrained):
    enc = untrained.encode
    eos = untrained.tokenizer.eos_token_id
    tree = Tree("p", [1])
    last = tree.add(tree.root, ids=enc(["    return 0"])[0] + [eos], text="    return 0", finished=True, terminal=True,
                    prior=0.2)
    line = tree.add(tree.root, ids=enc(["    n = 0\n"])[0], text="    n = 0\n", prior=0.3)
    assert rewrite(untrained, last, "    return n") and last.ids == enc(["    return n"])[0] + [eos]
    assert last.text == "    return n" and last.prior == 1.0 and len(last.logps) == len(last.ids)
    assert rewrite(untrained, line, "    n = 1") and line.text == "    n = 1\n" and line.prior == 1.0
    assert not rewrite(untrained, line, "    n = 1")


def test_the_runner_runs_each_distinct_program_once():
    task = CodeTask()
    runner = Runner(task)
    p = problem("keep_above_3")
    bodies = [p.solution, "    return xs\n", p.solution]
    results = runner([p.prompt] * 3, bodies)
    assert runner.runs == 2 and [r.pass_rate for r in results] == [r.pass_rate for r in task.run([p.prompt] * 3,
                                                                                                   bodies, True)]
    runner([p.prompt], [p.solution])
    assert runner.runs == 2
    assert runner([p.prompt], ["    return xs\n"], public=False)[0].pass_rate == task.gold(p.prompt, "    return xs\n")
    assert runner.runs == 3


def test_rethink_rewrites_a_failing_thought_once_and_counts_the_edit(untrained):
    p = problem("keep_above_3")
    runner = Runner(CodeTask())
    eos = untrained.tokenizer.eos_token_id
    tree = Tree(p.prompt, untrained.encode([signature(p.prompt)])[0])
    node = tree.add(tree.root, ids=untrained.encode(["    return xs"])[0] + [eos], text="    return xs",
                    finished=True, terminal=True)
    value = PublicTests(untrained, runner)
    assert value([(tree, node)]) == [pytest.approx(runner([p.prompt], ["    return xs"])[0].pass_rate)]
    assert value.programs[id(tree)][-1][2].pass_rate < 1.0  # the bug shows on a public test

    rethink = Rethink(PublicTests(untrained, runner), simulated_editor(error=0.0), budget=10)
    assert rethink([(tree, node)]) == [1.0]
    assert node.text == "    return [x for x in xs if x > 3]" and node.prior == 1.0
    assert tree.compute.generations == 1 and tree.compute.rollouts == 0  # one editor reply, no rollout (terminal)
    assert [b for _, b, _ in rethink.value.programs[id(tree)]] == ["    return xs", node.text]
    assert rethink.value.answer(tree) == node.text

    # Once per node; and never past the budget (the edit and its revaluation cost 2).
    node.ids, node.text = untrained.encode(["    return xs"])[0] + [eos], "    return xs"
    assert rethink([(tree, node)]) == [pytest.approx(value.programs[id(tree)][0][2].pass_rate)]
    fresh = tree.add(tree.root, ids=list(node.ids), text=node.text, finished=True, terminal=True)
    tight = Rethink(PublicTests(untrained, runner), simulated_editor(error=0.0), budget=spent(tree) + 1)
    assert tight([(tree, fresh)])[0] < 1.0 and fresh.text == "    return xs"


def test_the_three_lab_methods_run_end_to_end(untrained):
    task = CodeTask()
    prompts = [p.prompt for p in task.problems("test")[:2]]
    setup = TaskSetup("code", untrained, prompts, {"task": task, "runner": Runner(task)})
    for method in (SAMPLE, MCTS, RETHINK):
        out = method.search(setup, None, 6, 0)
        assert set(out) == {"gold", "generations"} and 0.0 <= out["gold"] <= 1.0, method.name
    assert SAMPLE.search(setup, None, 6, 0)["generations"] == 12
    answers, trees = code_mcts(untrained, Runner(task), prompts, 6, seed=0, editor=simulated_editor(0.0))
    for tree, answer in zip(trees, answers):
        # One round (3 thoughts and a rollout for each open one); edits (+ rollout) only within the budget.
        kids = tree.children(tree.root)
        assert sum(k.count for k in kids) == 3 and 3 <= spent(tree) <= 6
        assert isinstance(answer, str)
    with pytest.raises(ValueError, match="budget 5 is below one round's cost"):
        code_mcts(untrained, Runner(task), prompts, 5)
    assert MCTS.search(setup, None, 2, 0)["generations"] <= 4  # width 1: one thought and its rollout per problem
    plain = best_of_samples(untrained, Runner(task), prompts, 3, seed=0)
    assert len(plain) == 2 and all(isinstance(b, str) for b in plain)


@pytest.fixture(scope="module")
def code_setup(tmp_path_factory):
    from rlxf.core.runs import Run

    return lab_setup(Run(tmp_path_factory.mktemp("rethink"), "code policy", fresh=True), seed=0, n_prompts=12)


@pytest.mark.slow
def test_claim_rethink_beats_plain_mcts_and_sampling_at_equal_generations(code_setup):
    """Claim (RethinkMCTS, Li et al. 2024): pass@1 on hidden tests of RethinkMCTS beats plain MCTS and
    best-of-N sampling (filtered by public tests) at equal generations.

    Setup: the lab's code policy (a tiny GPT-2 SFT'd on the train split's reference and buggy bodies)
    on 12 held-out problems; search seeds 1, 2, 3 (seed 0 was used while building); budget 12
    generations per problem for every method (sampling spends exactly 12; each MCTS round starts
    while budget is left; rethink's edits must fit in it). The editor is the simulated one (error 0.3).
    pass@1 = the share of problems whose one chosen program passes every hidden test.
    Threshold, fixed before the first run: for each baseline, the mean paired difference
    (rethink - baseline) over the 36 (seed, problem) pairs is at least 2 standard errors of that
    mean and positive; and no method spends more than 12 generations on any problem (sampling
    spends exactly 12). (This compute rule replaced "rethink spends at most each baseline's mean"
    after a first attempt hung in the MCTS loop before measuring anything.)"""
    task, runner, policy, prompts = code_setup.extras["task"], code_setup.extras["runner"], code_setup.policy, \
        code_setup.prompts
    solved = {"sample": [], "mcts": [], "rethink": []}
    gens = {k: [] for k in solved}
    for seed in (1, 2, 3):
        answers = {"sample": best_of_samples(policy, runner, prompts, 12, seed)}
        gens["sample"] += [12] * len(prompts)
        for name, editor in (("mcts", None), ("rethink", simulated_editor(0.3, seed))):
            answers[name], trees = code_mcts(policy, runner, prompts, 12, seed, editor)
            gens[name] += [spent(t) for t in trees]
        for name, bodies in answers.items():
            solved[name] += [r.pass_rate == 1.0 for r in runner(prompts, bodies, public=False)]
    rates = {k: float(np.mean(v)) for k, v in solved.items()}
    print("pass@1", rates, "generations per problem", {k: float(np.mean(v)) for k, v in gens.items()})
    assert max(max(v) for v in gens.values()) <= 12
    for base in ("sample", "mcts"):
        d = np.array(solved["rethink"], float) - np.array(solved[base], float)
        se = d.std(ddof=1) / np.sqrt(len(d))
        print(f"rethink - {base}: {d.mean():.3f} (SE {se:.3f})")
        assert d.mean() > 0 and d.mean() >= 2 * se, (base, rates)
