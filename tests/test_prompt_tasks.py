"""The prompt task (rlxf.tasks.prompt_tasks) and the editor role (rlxf.algorithms.prompts.editor)."""

import random
from collections import Counter

import numpy as np
import pytest

from rlxf.algorithms.prompts import editor as E
from rlxf.tasks import prompt_tasks as pt


@pytest.fixture(scope="module")
def task():
    return pt.prompt_task()


BEST = pt.join(["digit", "know", "sign", "add", "scale"])


def test_rule_by_hand():
    assert pt.rule_answer([], "same", 3) == "3" and pt.rule_answer([], "say", 3) == "maybe"
    assert pt.rule_answer([], "tell", 3) == "unknown" and pt.rule_answer([], "prev", 0) == "1"
    assert pt.rule_answer(["sign"], "prev", 0) == "9" and pt.rule_answer(["sign", "fast"], "prev", 0) == "1"
    assert pt.rule_answer(["add", "fast"], "next", 9) == "9" and pt.rule_answer(["steps", "fast"], "next", 9) == "0"
    assert pt.rule_answer(["steps"], "same", 4) == "5" and pt.rule_answer(["work"], "same", 4) == "maybe"
    assert pt.rule_answer(["scale"], "twice", 7) == "4" and pt.rule_answer(["know", "short"], "tell", 7) == "unknown"
    assert pt.error_type("twice", 7, "7") == "scale"
    assert pt.error_type("prev", 0, "1") == "sign" and pt.error_type("next", 4, "4") == "arith"
    assert pt.error_type("say", 4, "maybe") == "format" and pt.error_type("tell", 4, "unknown") == "refusal"
    assert pt.error_type("next", 4, "5") is None
    assert pt.fragments_of("be helpful . reply  fast . nonsense") == ["helpful", "fast"]


def _hand_cases(task):
    kinds = Counter(q.kind for q in task.split("test"))
    zero = sum(q.kind == "twice" and q.x == 0 for q in task.split("test"))  # 2 * 0 = 0: right by accident
    return {"": (kinds["same"] + zero) / 500, BEST: 1.0,
            pt.join(["fast"]): (kinds["same"] + kinds["say"] + kinds["echo"] + kinds["tell"] + zero) / 500,
            task.hand_written: (kinds["same"] + kinds["say"] + kinds["echo"] + zero) / 500,
            pt.join(["words"]): zero / 500}


def test_score_is_the_metric_on_hand_checked_cases():
    """With the rule as the model: the empty prompt gets exactly the 'same' questions right, the five
    fixes all, the trap 4 kinds, the hand-written prompt 3, 'words' none (plus, but for the five fixes,
    the 'twice' questions with x = 0, whose wrong answer x is right)."""
    task = pt.PromptTask(respond=pt.rule_respond)
    want = _hand_cases(task)
    assert task.score(list(want), "test").tolist() == pytest.approx(list(want.values()), abs=1e-12)


@pytest.mark.slow
def test_trained_model_follows_the_rule(task):
    """The frozen model is close to the rule (not exact: it gets a few digit cells wrong) and
    fragments change its score in the rule's order. Slow only on a machine without the cached
    weights (training: about 1 minute of CPU)."""
    want = _hand_cases(task)
    got = task.score(list(want), "test")
    assert np.abs(got - list(want.values())).max() <= 0.08, (got, want)
    assert got[1] > got[2] > got[3] > got[0] > got[4]
    rng = random.Random(7)
    prompts = [pt.join(pt.random_prompt(rng)) for _ in range(40)]
    got = task.score(prompts, "eval")
    rule = np.array([task.rule_score(p, "eval") for p in prompts])
    assert np.abs(got - rule).mean() < 0.01 and np.abs(got - rule).max() <= 0.06


def test_errors_and_counting():
    task = pt.PromptTask(respond=pt.rule_respond)
    before = Counter(task.calls)
    task.score(["", BEST, ""], "eval")
    recs = task.errors("", "train", range(20))
    qs = task.split("train")[:20]
    assert [r.question for r in recs] == [q.text for q in qs if pt.rule_answer([], q.kind, q.x) != q.gold]
    assert len(recs) >= 15
    want = {"say": "format", "echo": "format", "tell": "refusal", "prev": "sign", "next": "arith", "twice": "scale"}
    assert all(r.error == want[r.kind] for r in recs)
    assert task.calls["eval"] - before["eval"] == 3 and task.calls["train"] - before["train"] == 1
    with pytest.raises(ValueError, match="split must be one of"):
        task.score([""], "dev")
    with pytest.raises(ValueError, match="unknown prompt task"):
        pt.prompt_task("nope")


def test_simulated_editor_follows_feedback():
    ed = E.simulated_editor(error=0.0, seed=0)
    req = E.editor_request("be helpful", ["- [refusal] x3: said unknown", "- [format]: said maybe"])
    assert E.error_counts(req) == Counter({"refusal": 3, "format": 1})
    new = pt.fragments_of(E.parse_prompt(ed.complete([req])[0]))
    assert new[0] == "helpful" and new[1:] in (["know"], ["fast"])
    # removal rewrites: words causes format errors and is removed when the additions are present
    req = E.editor_request(pt.join(["words", "digit", "fast"]), ["- [format] x2: said maybe"])
    assert pt.fragments_of(E.parse_prompt(ed.complete([req])[0])) == ["digit", "fast"]
    # a fully wrong editor makes a random edit: one fragment more or fewer
    noisy = E.simulated_editor(error=1.0, seed=0)
    outs = [pt.fragments_of(E.parse_prompt(r)) for r in noisy.complete([req] * 50)]
    assert all(abs(len(o) - 3) == 1 for o in outs) and len({tuple(o) for o in outs}) > 3
    assert noisy.calls == 1 and noisy.requests == 50
    assert E.parse_prompt("blah <START> x . y <END> z") == "x . y" and E.parse_prompt(" plain ") == "plain"
