"""Reward specs: user functions by file or module, built-in verifiers, and output checks."""

from __future__ import annotations

import math

import pytest

from rlxf.rewards.specs import (
    RewardSpecError,
    RewardValueError,
    checked_values,
    last_number,
    load_reward,
)

USER_FILE = '''
def correct(prompts, completions, answer, **kw):
    return [1.0 if c.strip() == a else 0.0 for c, a in zip(completions, answer)]

def skip_short(prompts, completions, **kw):
    return [None if len(c) < 3 else float(len(c)) for c in completions]

NOT_A_FUNCTION = 3
'''


@pytest.fixture()
def user_file(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text(USER_FILE)
    return path


def test_file_function_with_weight_gets_the_extra_columns(user_file):
    spec = load_reward(f"0.5*{user_file}:correct")
    assert spec.weight == 0.5 and spec.name == f"0.5*{user_file}:correct"
    values = checked_values(spec.name, spec.fn, ["a", "b"], ["4", "5 "], {"answer": ["4", "6"]}, step=0)
    assert values == [1.0, 0.0]


def test_none_means_no_reward_for_that_sample(user_file):
    spec = load_reward(f"{user_file}:skip_short")
    assert checked_values(spec.name, spec.fn, ["p"] * 2, ["ab", "abcd"], {}, step=3) == [None, 4.0]


def test_module_function_spec():
    spec = load_reward("math:hypot")  # any importable module:function
    assert spec.fn(3, 4) == 5.0 and spec.weight == 1.0


@pytest.mark.parametrize("spec, message", [
    ("nowhere.py:fn", "file nowhere.py does not exist"),
    ("{file}:missing", "has no 'missing' \\(it defines: correct, skip_short\\)"),
    ("{file}:NOT_A_FUNCTION", "NOT_A_FUNCTION in .* is a int, not a function"),
    ("no_such_module_xyz:fn", "cannot import module no_such_module_xyz"),
    ("just_a_name", "expected file.py:function or module:function"),
    ("regex:", "regex needs a pattern"),
    ("regex:(", "bad regular expression"),
    ("length_penalty:ten", "expected length_penalty:TARGET"),
    ("", "empty spec"),
])
def test_bad_specs_name_the_spec_and_what_was_expected(user_file, spec, message):
    spec = spec.replace("{file}", str(user_file))
    with pytest.raises(RewardSpecError, match=message):
        load_reward(spec)


def test_a_file_that_raises_on_import_is_named(tmp_path):
    bad = tmp_path / "broken.py"
    bad.write_text("raise RuntimeError('oops')\n")
    with pytest.raises(RewardSpecError, match="importing .*broken.py raised RuntimeError: oops"):
        load_reward(f"{bad}:fn")


def test_answer_match_compares_the_last_number():
    fn = load_reward("answer_match").fn
    comps = ["The answer is 7.", "7 or maybe 8", "no idea", "1,200"]
    assert fn(["q"] * 4, comps, answer=["7", "7", "7", "1200"]) == [1.0, 0.0, 0.0, 1.0]
    assert last_number("x = -3.5 then") == -3.5
    other = load_reward("answer_match:solution").fn
    assert other(["q"], ["12"], solution=[12]) == [1.0]
    with pytest.raises(KeyError, match="needs a column 'answer'"):
        fn(["q"], ["1"], solution=["1"])


def test_regex_and_length_penalty():
    assert load_reward(r"regex:^\d+$").fn(["q"] * 2, ["42", "forty two"]) == [1.0, 0.0]
    assert load_reward("2*length_penalty:3:0.5").fn(["q"] * 2, ["a b c", "a"]) == [-0.0, -1.0]
    assert load_reward("2*length_penalty:3:0.5").weight == 2.0
    assert load_reward("regex:a*b").fn(["q"], ["aab"]) == [1.0]  # a '*' that is not a weight


@pytest.mark.parametrize("out, message", [
    ([1.0], "returned 1 values at step 7 \\(expected 2"),
    ([1.0, math.nan], "returned nan for completion 1 at step 7"),
    ([1.0, "good"], "returned 'good' \\(str\\) for completion 1 at step 7"),
    (3.0, "returned a float at step 7"),
])
def test_unusable_outputs_stop_with_the_reward_and_step(out, message):
    with pytest.raises(RewardValueError, match=f"reward 'mine' {message}"):
        checked_values("mine", lambda p, c, **k: out, ["a", "b"], ["x", "y"], {}, step=7)


def test_a_reward_that_raises_is_named_with_the_step():
    def boom(prompts, completions, **kw):
        raise ZeroDivisionError("division by zero")

    with pytest.raises(RewardValueError, match="reward 'boom' raised at step 2: ZeroDivisionError"):
        checked_values("boom", boom, ["a"], ["x"], {}, step=2)


def test_booleans_and_numpy_numbers_are_numbers():
    import numpy as np

    assert checked_values("b", lambda p, c, **k: [True, np.float32(0.5)], ["a", "b"], ["x", "y"], {}, 0) == [1.0, 0.5]
