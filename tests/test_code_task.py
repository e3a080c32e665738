"""The code task: templated problems whose hidden tests separate right from wrong bodies, gold as
the pass rate, feedback as text, injected bugs, and the reward/verifier entry points."""

import ast
import collections
import random

import pytest

from rlxf.rewards.specs import load_reward
from rlxf.search.tree import Tree
from rlxf.search.values import evaluate
from rlxf.tasks.code import (TEMPLATES, CodeTask, CodeVerifier, all_problems, buggy_solutions, check, inject_bug,
                             mutants, problem, program)


def _one_per_template():
    by_family = {}
    for p in all_problems().values():
        family = next(t.name for t in TEMPLATES if _matches(t.name, p.id))
        by_family.setdefault(family, p)
    return list(by_family.values())


def _matches(pattern, name):
    head = pattern.split("{", 1)[0]
    return name.startswith(head)


def test_a_few_hundred_distinct_problems_with_informative_tests():
    problems = all_problems()
    assert 200 <= len(problems) <= 400
    for p in problems.values():
        assert p.prompt.startswith(f"def {p.id}(") and ">>>" in p.prompt and len(p.tests) == 10
        assert len(p.public) == 3 and not set(map(repr, p.public)) & set(map(repr, p.tests))
        assert f">>> {p.id}({repr(p.public[0][0][0])}" in p.prompt
        # No single answer passes more than half the hidden tests (so returning a constant scores <= 0.5).
        top = collections.Counter(repr(out) for _, out in p.tests).most_common(1)[0][1]
        assert top <= 5, p.id


def test_reference_solutions_pass_in_the_sandbox():
    sample = _one_per_template()
    assert len(sample) == len(TEMPLATES)
    results = check(sample, [p.solution for p in sample])
    assert [r.pass_rate for r in results] == [1.0] * len(sample)


def test_gold_is_the_pass_rate():
    """``x >= t`` instead of ``x > t`` is wrong exactly on the tests whose list holds a t."""
    task = CodeTask()
    share = lambda t: sum(t not in args[0] for args, _ in problem(f"keep_above_{t}").tests) / 10  # noqa: E731
    t = next(t for t in range(10) if 0 < share(t) < 1)
    p, want = problem(f"keep_above_{t}"), share(t)
    wrong = f"    return [x for x in xs if x >= {t}]\n"
    assert task.gold(p.prompt, wrong) == pytest.approx(want)
    text = task.feedback(p.prompt, wrong, public=False)
    assert text.startswith(f"passed {round(want * 10)}/10 tests") and f"keep_above_{t}([" in text and "expected" in text
    public_want = sum(t not in args[0] for args, _ in p.public)
    assert task.feedback(p.prompt, wrong).startswith(f"passed {public_want}/3 tests")
    assert task.gold(p.prompt, "    return [\n") == 0.0
    assert "SyntaxError" in task.feedback(p.prompt, "    return [\n")


def test_a_response_may_be_a_body_a_whole_function_or_a_fenced_block():
    task = CodeTask()
    p = problem("caesar_3")
    whole = p.prompt + p.solution
    fenced = f"Here it is:\n```python\n{whole}```\nDone."
    chat = [{"role": "assistant", "content": fenced}]
    assert program(p, p.solution) == whole and program(p, whole) == whole and program(p, chat) == whole
    assert [r.pass_rate for r in task.run([p.prompt] * 3, [p.solution, whole, fenced])] == [1.0, 1.0, 1.0]
    trailing = p.solution + "\nprint(caesar_3('abc'))\nThis shifts each letter.\n"
    assert program(p, trailing) == whole and task.gold(p.prompt, trailing) == 1.0
    rendered = f"<|im_start|>user\n{p.prompt}<|im_end|>\n<|im_start|>assistant\n"  # a chat template's rendering
    assert task.by_prompt(rendered) is p
    with pytest.raises(KeyError, match="not the prompt of any code problem"):
        task.by_prompt("def caesar_3(s):\n    pass\n")


def test_injected_bugs_change_one_thing_and_fail_a_test():
    problems = _one_per_template()
    rng = random.Random(0)
    for p in problems:
        body = inject_bug(p.solution, rng)
        before = ast.dump(ast.parse("\n".join(l[4:] for l in p.solution.rstrip().split("\n"))))
        after = ast.dump(ast.parse("\n".join(l[4:] for l in body.rstrip().split("\n"))))
        assert before != after
    bugs = buggy_solutions(problems, seed=1)
    assert sum(b is not None for b in bugs) >= len(problems) - 2
    for p, b in zip(problems, bugs):
        if b is not None:
            body, res = b
            assert res.pass_rate < 1.0 and body != p.solution
            assert check([p], [body])[0].pass_rate == res.pass_rate


def test_splits_are_disjoint_and_sft_rows_mix_bugs_in():
    task = CodeTask(seed=3)
    train, test = task.problems("train"), task.problems("test")
    assert {p.id for p in train}.isdisjoint(p.id for p in test)
    assert len(train) + len(test) == len(all_problems()) and 0.1 < len(test) / len(all_problems()) < 0.3
    clean = task.sft_rows(bug_rate=0.0, split="test")
    assert all(r["completion"] == problem(r["problem_id"]).solution and r["pass_rate"] == 1.0 for r in clean)
    rows = task.sft_rows(bug_rate=0.5, split="test")
    buggy = [r for r in rows if r["pass_rate"] < 1.0]
    assert 0.2 < len(buggy) / len(rows) < 0.8  # binomial(~55, 0.5): about 4 standard deviations either side
    assert all(r["completion"] != problem(r["problem_id"]).solution for r in buggy)
    with pytest.raises(ValueError, match="bug_rate"):
        task.sft_rows(bug_rate=2.0)


def test_prompt_rows_plain_and_chat():
    task = CodeTask()
    plain, chat = task.rows("test"), task.rows("test", chat=True)
    assert [r["problem_id"] for r in plain] == [p.id for p in task.problems("test")] == [r["problem_id"] for r in chat]
    p = problem(plain[0]["problem_id"])
    assert plain[0]["prompt"] == p.prompt
    assert chat[0]["prompt"] == [{"role": "user", "content": "Complete this Python function.\n\n" + p.prompt}]


def test_reward_spec_for_rlxf_train():
    reward = load_reward("rlxf.tasks.code:pass_rate_reward").fn
    p = problem("top_2_sum")
    chat = [{"role": "assistant", "content": p.prompt + p.solution}]
    values = reward([p.prompt] * 3, [p.solution, "    return 0\n", chat], problem_id=[p.id] * 3)
    zeros = sum(out == 0 for _, out in p.tests) / len(p.tests)
    assert values == [1.0, pytest.approx(zeros), 1.0]
    with pytest.raises(KeyError, match="no problem 'nope'"):
        reward(["x"], ["y"], problem_id=["nope"])


def test_verifier_values_finished_leaves_only():
    p = problem("every_3th")
    tree = Tree(p.prompt, [0])
    right = tree.add(tree.root, text=p.solution, finished=True, terminal=True)
    half = tree.add(tree.root, text="    return xs[", terminal=False)
    wrong = tree.add(tree.root, text="    return xs[::3]\n", finished=True, terminal=True)
    verifier = CodeVerifier()
    values = verifier([(tree, right), (tree, half), (tree, wrong)])
    assert values[0] == 1.0 and values[1] is None and values[2] == CodeTask().gold(p.prompt, "    return xs[::3]\n")
    assert values[2] < 1.0
    evaluate([(tree, right), (tree, wrong)], verifier)
    assert (right.value, right.source) == (1.0, "tests")


def test_hidden_tests_catch_most_one_change_bugs():
    """Over every problem, the hidden tests tell at least 95% of the reference's one-change mutants
    from it (measured 95.8% of 2,243 when written; the rest act like the reference on every input)."""
    from rlxf.tasks.code import _outputs, _reference

    total = caught = 0
    for p in all_problems().values():
        arg = p.prompt.split("(", 1)[1].split(")", 1)[0]
        want = [repr(out) for _, out in p.tests]
        for m in mutants(p.solution):
            fn = _reference("m", arg, "\n".join(line[4:] for line in m.rstrip("\n").split("\n")))
            total += 1
            caught += _outputs(fn, list(p.tests)) != want
    assert total > 2000 and caught / total >= 0.95
