"""RL with verifiable rewards on the arithmetic task: the strict verifier, the mixed-format
demonstrations, and a run in which RLVR raises exact-match accuracy by 20 points."""

import copy

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


@pytest.fixture(scope="module")
def prover(tmp_path_factory):
    """The demonstration's SFT prover (40% of demonstrations end ``answer = N``), trained once,
    and its scores on 150 held-out problems."""
    from rlxf.core.runs import Run
    from rlxf.lab.rlvr import demo_prover, prover_scores

    task = ArithmeticTask()
    policy = demo_prover(Run(tmp_path_factory.mktemp("prover"), "prover"), task, mixed_format=0.4)
    test = task.prompts(150, "test")
    return task, policy, test, prover_scores(policy, test)


def test_rlvr_raises_exact_match_by_20_points_over_the_sft_prover(prover, tmp_path):
    """The SFT prover fails the strict verifier whenever it copies the second source's format;
    100 GRPO steps on the 0/1 verifier reward alone must raise its exact-match accuracy
    (temperature 1, the policy's own distribution) by 20 points on held-out problems, by
    learning the verifier's format, while its arithmetic (lenient match) does not get worse."""
    from rlxf.algorithms.online.rlvr import train_rlvr
    from rlxf.core.runs import Run
    from rlxf.lab.rlvr import prover_scores, rlvr_config

    task, sft_policy, test, before = prover
    policy = copy.deepcopy(sft_policy)
    train_rlvr(Run(tmp_path / "rlvr", "rlvr"), "rlvr", policy, task, rlvr_config("grpo", 100, 1e-4))
    sft, rl = before["t1"], prover_scores(policy, test)["t1"]
    assert sft["second_format"] > 0.25  # the SFT prover copies the second source's habit
    assert rl["exact_match"] - sft["exact_match"] >= 0.20
    assert rl["second_format"] < sft["second_format"] / 3
    assert rl["lenient_match"] >= sft["lenient_match"] - 0.03


def test_sharpening_raises_exact_match_with_no_reward_at_all(prover, tmp_path):
    """SFT-sharpening on the verifiable task: best-of-8 by the base model's likelihood, then
    maximum likelihood on the pick. The verifier only monitors, yet exact match rises, because
    the prover's most likely answers are more often right (and in the majority format) than
    its samples (Huang et al. 2025)."""
    from rlxf.algorithms.online.controller import train_online
    from rlxf.core.runs import Run
    from rlxf.lab.rlvr import prover_scores, rlvr_config
    from rlxf.rewards.scoring import Scorer, verifier_reward

    task, sft_policy, test, before = prover
    policy = copy.deepcopy(sft_policy)
    scorer = Scorer({}, {"verifier": verifier_reward(policy.decode, check_answer)})
    run = Run(tmp_path / "sharp", "sharp")
    train_online(run, "sharp", policy, sft_policy, policy.encode(task.prompts(2000, "train")), scorer,
                 rlvr_config("sharpening", 100, 1e-4), 0, quiet=True)
    assert all(m["proxy_reward"] == 0 for m in run.metrics("sharp"))  # the verifier never reached the learner
    gain = prover_scores(policy, test)["t1"]["exact_match"] - before["t1"]["exact_match"]
    assert gain >= 0.15
