"""The critique items: gold verdicts agree with the task checkers, shares and difficulties as asked, seeded."""

from collections import Counter

import pytest

from rlxf.critique.bench import (CritiqueItem, answer_steps, arithmetic_items, code_difficulty, code_items,
                                 gold_verdict)
from rlxf.critique.format import Verdict
from rlxf.tasks import arithmetic as ar
from rlxf.tasks import code as cd


@pytest.fixture(scope="module")
def arith():
    return arithmetic_items(90, seed=3)


@pytest.fixture(scope="module")
def code():
    return code_items(40, seed=1)


def test_arithmetic_gold_matches_the_checkers(arith):
    for it in arith:
        labels = ar.check_steps(it.question, it.answer)
        assert it.correct == (all(labels) and ar.check_answer(it.question, it.answer))
        if it.correct:
            assert it.first_wrong_step is None and it.answer == ar.solve(it.question)
        else:  # one corrupted step, continued consistently: exactly one invalid line, the named one
            assert labels.count(False) == 1 and it.first_wrong_step == labels.index(False) + 1
            assert len(answer_steps(it)) == len(labels)


def test_arithmetic_shares_difficulties_and_seed(arith):
    assert Counter(it.correct for it in arith) == {True: 45, False: 45}
    assert Counter(it.difficulty for it in arith) == {1: 30, 2: 30, 3: 30}
    for it in arith:  # difficulty d = d operators
        assert len(ar.parse_problem(it.question)[1]) == it.difficulty
    assert len({it.question for it in arith if it.difficulty == 3}) == 30
    assert arithmetic_items(90, seed=3) == arith
    assert arithmetic_items(90, seed=4) != arith
    assert Counter(it.correct for it in arithmetic_items(10, seed=0, wrong_share=0.3)) == {True: 7, False: 3}
    assert {it.difficulty for it in arithmetic_items(6, difficulties=(2,))} == {2}


def test_arithmetic_gold_verdict_on_hand_written_answers():
    assert gold_verdict("arithmetic", "3+4*2=", "4*2=8\n3+8=11\nanswer: 11") == Verdict(True)
    assert gold_verdict("arithmetic", "3+4*2=", "4*2=9\n3+9=12\nanswer: 12") == Verdict(False, 1)
    assert gold_verdict("arithmetic", "3+4*2=", "3+4=7\n7*2=14\nanswer: 14") == Verdict(False, 1)  # precedence
    assert gold_verdict("arithmetic", "3+4*2=", "4*2=8\n3+8=11\nanswer: 12") == Verdict(False, 3)
    # any * may go first: a valid order other than the canonical one is correct
    assert gold_verdict("arithmetic", "2*3+4*5=", "4*5=20\n2*3=6\n6+20=26\nanswer: 26") == Verdict(True)


def test_code_gold_matches_the_hidden_tests(code):
    assert Counter(it.correct for it in code) == {True: 20, False: 20}
    assert len({it.meta["problem_id"] for it in code}) == 40
    for it in code:
        p = cd.problem(it.meta["problem_id"])
        assert it.question == p.prompt and it.difficulty == code_difficulty(p.solution)
        if it.correct:
            assert it.answer == p.solution and it.first_wrong_step is None
        else:  # one injected bug on the named line; the line differs from the reference's
            assert it.answer in cd.mutants(p.solution)
            steps, ref = answer_steps(it), p.solution.rstrip("\n").split("\n")
            assert len(steps) == len(ref) and steps[it.first_wrong_step - 1] != ref[it.first_wrong_step - 1]
            assert steps[:it.first_wrong_step - 1] == ref[:it.first_wrong_step - 1]
    assert code_items(40, seed=1) == code
    # the in-process gold agrees with the sandbox on a few items of each kind
    sample = [it for it in code if it.correct][:2] + [it for it in code if not it.correct][:3]
    rates = cd.check([cd.problem(it.meta["problem_id"]) for it in sample], [it.answer for it in sample])
    assert [r.pass_rate == 1.0 for r in rates] == [it.correct for it in sample]


def test_code_gold_verdict_from_the_prompt_and_an_unseen_answer():
    p = cd.problem("keep_above_3")
    assert gold_verdict("code", p.prompt, p.solution) == Verdict(True)
    assert gold_verdict("code", p.prompt, "    return [x for x in xs if x >= 3]\n") == Verdict(False, 1)
    # not a mutant of the reference: judged in the sandbox; a different shape names no line
    assert gold_verdict("code", p.prompt, "    out = [x for x in xs if x > 3]\n    return out\n") == Verdict(True)
    assert gold_verdict("code", p.prompt, "    out = []\n    return out\n") == Verdict(False, None)
    assert code_difficulty("    return 1\n") == 1 and code_difficulty("    a\n" * 7) == 3


def test_items_mix_and_errors():
    assert [CritiqueItem("arithmetic", "1+1=", "answer: 2", True, None, 1).meta] == [{}]
    with pytest.raises(ValueError, match="task must be one of"):
        gold_verdict("poetry", "q", "a")
    with pytest.raises(ValueError, match="wrong_share"):
        arithmetic_items(4, wrong_share=1.5)
    with pytest.raises(ValueError, match="difficulties"):
        arithmetic_items(4, difficulties=(4,))
