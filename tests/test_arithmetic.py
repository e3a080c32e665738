"""The verifiable arithmetic task: generator, checkers, corruption, gold reward."""

import random
import re

import pytest

from rlxf.tasks.arithmetic import (
    ArithmeticTask,
    check_answer,
    check_steps,
    corpus,
    corrupt,
    evaluate,
    gold_reward,
    parse_problem,
    solve,
    split_steps,
)


def test_generator_is_deterministic_per_seed():
    assert ArithmeticTask(3).prompts(50) == ArithmeticTask(3).prompts(50)
    assert ArithmeticTask(3).prompts(20) == ArithmeticTask(3).prompts(50)[:20]
    assert ArithmeticTask(3).prompts(50) != ArithmeticTask(4).prompts(50)
    assert corpus(10, seed=5) == corpus(10, seed=5)


def test_problems_have_the_promised_shape():
    task = ArithmeticTask(0, n_ops=(2, 3), max_operand=9)
    prompts = task.prompts(300)
    assert len(set(prompts)) == 300
    n_ops = set()
    for p in prompts:
        assert re.fullmatch(r"\d(?:[+\-*]\d){2,3}=", p), p
        nums, ops = parse_problem(p)
        n_ops.add(len(ops))
        assert evaluate(p) == eval(p[:-1])  # Python's own precedence as the oracle
    assert n_ops == {2, 3}


def test_train_and_test_splits_are_disjoint():
    task = ArithmeticTask(7)
    train, test = task.prompts(1000, "train"), task.prompts(200, "test")
    assert not set(train) & set(test)
    assert {task.split_of(p) for p in train} == {"train"} and {task.split_of(p) for p in test} == {"test"}
    assert not {ex["prompt"] for ex in task.corpus(300)} & set(test)
    with pytest.raises(ValueError, match="split"):
        task.prompts(3, "valid")


def test_worked_solution_format_on_a_hand_example():
    assert solve("3+4*2=") == "4*2=8\n3+8=11\nanswer: 11"
    assert solve("9-3-2=") == "9-3=6\n6-2=4\nanswer: 4"
    assert corpus(1, seed=0)[0].keys() == {"prompt", "completion"}


def test_checker_accepts_correct_solutions():
    for ex in corpus(200, seed=1):
        p, s = ex["prompt"], ex["completion"]
        assert check_answer(p, s)
        assert all(check_steps(p, s))
        assert s.endswith(f"answer: {eval(p[:-1])}")
    # any order of the products is a valid reduction, and spaces are ignored
    assert check_steps("2*3+4*5=", "4*5=20\n2 * 3 = 6\n6+20=26\nanswer: 26") == [True] * 4


def test_step_checker_on_hand_written_mistakes():
    p = "3+4*2="
    assert check_steps(p, "4*2=9\n3+9=12\nanswer: 12") == [False, True, True]  # slip carried forward
    assert check_steps(p, "3+4=7\n7*2=14\nanswer: 14") == [False, True, True]  # precedence error
    assert check_steps(p, "4*2=8\n3+8=11\nanswer: 12") == [True, True, False]  # mis-copied answer
    assert check_steps(p, "4*2=8\nanswer: 11") == [True, False]  # answer before the work is done
    assert check_steps("9-3-2=", "3-2=1\n9-1=8\nanswer: 8") == [False, True, True]  # right-to-left subtraction
    assert check_steps(p, "4*3=12\n3+8=11\nanswer: 11") == [False, False, False]  # matches nothing
    assert check_steps(p, "") == [False] and not check_answer(p, "")
    assert not check_answer(p, "4*2=9\n3+9=12\nanswer: 12")
    assert check_answer(p, "answer: 11") and not check_answer(p, "answer: 11\nthanks")


def test_corruption_is_caught_at_exactly_the_corrupted_line():
    rng = random.Random(0)
    positions = set()
    for ex in corpus(200, seed=2):
        p, s = ex["prompt"], ex["completion"]
        bad = corrupt(p, s, rng)
        assert not check_answer(p, bad)
        good_lines, bad_lines = split_steps(s), split_steps(bad)
        first_diff = next(i for i, (a, b) in enumerate(zip(good_lines, bad_lines)) if a != b)
        labels = check_steps(p, bad)
        assert labels == [i != first_diff for i in range(len(bad_lines))], (p, bad, labels)
        positions.add(first_diff)
    assert len(positions) >= 3  # corruptions land on different steps, the answer line included


def test_corrupt_is_seeded_and_rejects_wrong_input():
    p, s = "3+4*2=", solve("3+4*2=")
    assert corrupt(p, s, random.Random(5)) == corrupt(p, s, random.Random(5))
    with pytest.raises(ValueError, match="not a correct"):
        corrupt(p, "4*2=9\n3+9=12\nanswer: 12", random.Random(0))


def test_gold_reward_terms_sum_to_total():
    p = "3+4*2="
    good, bad = solve(p), "4*2=9\n3+9=12\nanswer: 12"
    assert gold_reward(p, good) == [0.0, 0.0, 1.0]
    assert gold_reward(p, bad) == [0.0, 0.0, 0.0]
    assert gold_reward(p, "") == [0.0]
    dense_good, dense_bad = gold_reward(p, good, step_weight=0.5), gold_reward(p, bad, step_weight=0.5)
    assert len(dense_bad) == len(split_steps(bad))
    assert sum(dense_good) == pytest.approx(1.0 + 0.5)
    assert sum(dense_bad) == pytest.approx(0.5 * 2 / 3)
    assert dense_bad[0] == 0.0  # the wrong step earns nothing
    for ex in corpus(50, seed=3):
        terms = gold_reward(ex["prompt"], ex["completion"])
        assert sum(terms) == 1.0 and terms[-1] == 1.0
