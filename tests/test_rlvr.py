"""RL with verifiable rewards on the arithmetic task: the strict verifier, the mixed-format
demonstrations, and a run in which RLVR raises exact-match accuracy by 20 points."""

import pytest

from rlxf.tasks.arithmetic import ALT_ANSWER, ArithmeticTask, check_answer, solve


def test_the_verifier_is_strict_about_the_answer_format_and_lenient_on_request():
    right = solve("3+4*2=")
    other = right.replace("answer: ", ALT_ANSWER)
    assert other.endswith("answer = 11")
    assert check_answer("3+4*2=", right) and not check_answer("3+4*2=", other)
    assert check_answer("3+4*2=", other, lenient=True)
    assert not check_answer("3+4*2=", other.replace("11", "14"), lenient=True)


def test_mixed_format_corpus_changes_only_the_last_line_of_about_that_share():
    task = ArithmeticTask()
    plain, mixed = task.corpus(2000), task.corpus(2000, mixed_format=0.4)
    assert [c["prompt"] for c in plain] == [c["prompt"] for c in mixed]
    changed = [a["completion"] != b["completion"] for a, b in zip(plain, mixed)]
    assert abs(sum(changed) / 2000 - 0.4) < 3 * (0.4 * 0.6 / 2000) ** 0.5
    for a, b in zip(plain, mixed):
        assert b["completion"] in (a["completion"], a["completion"].replace("answer: ", ALT_ANSWER))
    with pytest.raises(ValueError, match="mixed_format must be in"):
        task.corpus(3, mixed_format=1.5)


def test_rlvr_raises_exact_match_by_20_points_over_the_sft_prover(tmp_path):
    """A prover whose demonstrations end ``answer = N`` 40% of the time fails the strict verifier
    on those samples; 100 GRPO steps on the 0/1 verifier reward alone must raise its exact-match
    accuracy (temperature 1, the policy's own distribution) by 20 points on held-out problems,
    by learning the verifier's format, while its arithmetic (lenient match) does not get worse."""
    from rlxf.algorithms.online.rlvr import demo

    out = demo(str(tmp_path / "rlvr"), mixed_format=0.4, sft_steps=2000, rl_steps=100, n_test=150)
    sft, rl = out["sft"]["t1"], out["rlvr"]["t1"]
    assert sft["second_format"] > 0.25  # the SFT prover copies the second source's habit
    assert rl["exact_match"] - sft["exact_match"] >= 0.20
    assert rl["second_format"] < sft["second_format"] / 3
    assert rl["lenient_match"] >= sft["lenient_match"] - 0.03
