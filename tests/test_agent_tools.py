"""The tool-use environment (rlxf.agents.tasks.tools): question levels, the lookup and calculator tools,
answers and rewards, invalid calls, truncation, the gold plan solving every question, and mixed datasets."""

from __future__ import annotations

import random

import pytest

from rlxf.agents.env import make_env
from rlxf.agents.episodes import run_episodes, scripted_dataset, skill_actor, success_rate
from rlxf.agents.render import agent_tokenizer
from rlxf.agents.tasks.tools import ITEMS, SKILLS, Tools, make


def _env(level, prices=None, question=None) -> Tools:
    env = make(level=level)
    env.reset(0)
    if prices is not None:
        env.prices = dict(prices)
    if question is not None:
        env.question = question
    return env


def test_questions_by_level():
    env = make(level=2)
    obs = env.reset(3)
    qty, item, extra = env.question
    assert obs == f"task {qty} {item} plus {extra}" and 2 <= qty <= 5 and extra != item and env.difficulty() == 2
    assert make(level=0).reset(3).split()[0] == "task" and len(make(level=0).reset(3).split()) == 2
    env = make()
    levels = set()
    for s in range(60):
        env.reset(s)
        levels.add(env.difficulty())
        assert all(1 <= env.prices[it] <= 9 for it in ITEMS)
    assert levels == {0, 1, 2}


def test_tools_answers_and_rewards():
    prices = {it: 1 for it in ITEMS} | {"apple": 7, "pear": 4}
    env = _env(2, prices, (3, "apple", "pear"))
    assert env.truth() == 25
    assert env.plan() == ["lookup apple", "lookup pear", "calc 7 * 3", "calc 21 + 4", "answer 25"]
    assert env.step("lookup apple")[:4] == ("apple costs 7", 0.0, False, False)
    assert env.step("calc 7 - 9")[0] == "result -2"
    assert env.step("calc 21 + 4")[0] == "result 25"
    obs, r, term, trunc, info = env.step("answer 25")
    assert (obs, r, term, trunc, info["invalid"], env.success()) == ("right", 1.0, True, False, False, True)
    env = _env(0, prices, (1, "pear", None))
    assert env.plan() == ["lookup pear", "answer 4"]
    assert env.step("answer 5")[:3] == ("wrong", 0.0, True) and not env.success()


@pytest.mark.parametrize("action", ["lookup banana", "calc 3 / 4", "calc 3 *", "answer 100", "answer -1",
                                   "buy apple", "", "answer 7 now"])
def test_invalid_calls_cost_a_turn(action):
    env = _env(1, {it: 2 for it in ITEMS}, (2, "fig", None))
    obs, r, term, trunc, info = env.step(action)
    assert info["invalid"] and r == 0.0 and not term and obs.startswith("invalid action")
    assert env.expert_action() == "lookup fig"


def test_expert_resumes_the_gold_plan_after_a_detour():
    env = _env(1, {it: 2 for it in ITEMS} | {"fig": 6}, (4, "fig", None))
    env.step("lookup fig")
    env.step("calc 6 * 5")  # a wrong argument: the gold call is still next
    assert env.expert_action() == "calc 6 * 4"
    env.step("calc 6 * 4")
    assert env.expert_action() == "answer 24"


def test_truncation_without_an_answer():
    env = make(level=0, max_turns=3)
    env.reset(1)
    outs = [env.step("lookup apple") for _ in range(3)]
    assert [o[3] for o in outs] == [False, False, True] and not any(o[2] for o in outs) and not env.success()


def test_gold_plan_solves_every_question_and_random_rarely_does():
    expert = run_episodes(lambda: make_env("tools"), skill_actor(1.0), list(range(200)), "expert")
    assert all(ep.success and ep.ret == 1.0 for ep in expert)
    assert {len(ep) for ep in expert} == {2, 3, 5}  # the three levels' plan lengths
    rand, _ = success_rate(run_episodes(make, skill_actor(0.0, seed=1), list(range(200)), "random"))
    assert rand < 0.1


def test_datasets_are_mixed_and_words_cover_them():
    data = scripted_dataset(make, SKILLS, 40, seed=0)
    rates = {k: success_rate([e for e in data if e.policy == k])[0] for k in SKILLS}
    assert rates["expert"] == 1.0 > rates["noisy"] > rates["random"]
    tok = agent_tokenizer(make().words())
    text = " ".join(o for e in data if e.policy == "expert" for o in e.observations + e.actions)
    assert tok.unk_token_id not in tok(text)["input_ids"]


def test_random_actions_are_legal():
    env, rng = make(), random.Random(0)
    env.reset(0)
    assert all(env.parse(env.random_action(rng)) is not None for _ in range(200))


def test_bad_level_is_named():
    with pytest.raises(ValueError, match="level"):
        Tools(level=3)
