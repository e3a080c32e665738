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


BEST = pt.join(["digit", "know", "sign", "add"])


def test_rule_by_hand():
    assert pt.rule_answer([], "same", 3) == "3" and pt.rule_answer([], "say", 3) == "maybe"
    assert pt.rule_answer([], "tell", 3) == "unknown" and pt.rule_answer([], "prev", 0) == "1"
    assert pt.rule_answer(["sign"], "prev", 0) == "9" and pt.rule_answer(["sign", "fast"], "prev", 0) == "1"
    assert pt.rule_answer(["add", "fast"], "next", 9) == "9" and pt.rule_answer(["steps", "fast"], "next", 9) == "0"
    assert pt.rule_answer(["steps"], "same", 4) == "5" and pt.rule_answer(["words"], "same", 4) == "maybe"
    assert pt.error_type("prev", 0, "1") == "sign" and pt.error_type("next", 4, "4") == "arith"
    assert pt.error_type("say", 4, "maybe") == "format" and pt.error_type("tell", 4, "unknown") == "refusal"
    assert pt.error_type("next", 4, "5") is None
    assert pt.fragments_of("be helpful . reply  fast . nonsense") == ["helpful", "fast"]


def test_score_is_the_metric_on_hand_checked_cases(task):
    """The empty prompt gets exactly the 'same' questions right, the four fixes all, the trap 4 kinds."""
    qs = task.split("test")
    kinds = Counter(q.kind for q in qs)
    want = {"": kinds["same"] / 500, BEST: 1.0,
            pt.join(["fast"]): (kinds["same"] + kinds["say"] + kinds["echo"] + kinds["tell"]) / 500,
            task.hand_written: (kinds["same"] + kinds["say"] + kinds["echo"]) / 500,
            pt.join(["words"]): 0.0}
    got = task.score(list(want), "test")
    assert np.allclose(got, list(want.values()), atol=0.01), (got, want)
    assert got[1] > got[2] > got[3] > got[0] > got[4]  # fragments change the score


def test_model_follows_the_rule_on_random_prompts(task):
    rng = random.Random(7)
    prompts = [pt.join(pt.random_prompt(rng)) for _ in range(40)]
    got = task.score(prompts, "eval")
    want = np.array([task.rule_score(p, "eval") for p in prompts])
    assert np.abs(got - want).mean() < 0.01 and np.abs(got - want).max() <= 0.06


def test_errors_and_counting(task):
    before = Counter(task.calls)
    task.score(["", BEST, ""], "eval")
    recs = task.errors("", "train", range(20))
    qs = task.split("train")[:20]
    assert [r.question for r in recs] == [q.text for q in qs if q.kind != "same"]
    want = {"say": "format", "echo": "format", "tell": "refusal", "prev": "sign", "next": "arith"}
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
