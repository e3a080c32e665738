"""The car dealer (rlxf.agents.tasks.car_dealer): the buyer's persona, budget and counteroffers on hand numbers,
deals, the buyer leaving, invalid actions, truncation, the budget as the optimal return (reached by the
expert, never exceeded by any policy), and the mixed offline datasets."""

from __future__ import annotations

import random
import statistics

import pytest

from rlxf.agents.env import make_env
from rlxf.agents.episodes import read_episodes, run_episodes, scripted_dataset, skill_actor, write_episodes
from rlxf.agents.render import agent_tokenizer
from rlxf.agents.tasks.car_dealer import PERSONAS, PRICES, SKILLS, CarDealer, make


def _dealer(budget=30, counter=20, patience=3, **kw) -> CarDealer:
    env = make(**kw)
    env.reset(0)
    env.budget, env.counter, env.patience = budget, counter, patience
    return env


def test_reset_draws_a_persona_budget_and_opening_offer():
    env = make()
    seen = set()
    for seed in range(60):
        obs = env.reset(seed)
        (low, high), patience, line = PERSONAS[env.persona]
        assert low <= env.budget <= high and env.budget in PRICES and env.patience == patience
        assert env.budget - env.counter in (6, 8, 10, 12)
        assert obs == f"buyer : {line} . the list price is 50 . i offer {env.counter}"
        seen.add(env.persona)
        assert env.reset(seed) == obs  # the seed fixes the buyer
    assert seen == set(PERSONAS)


def test_an_offer_within_budget_is_bought_at_that_price():
    env = _dealer(budget=30)
    obs, r, term, trunc, info = env.step("offer 30")
    assert (obs, r, term, trunc, info["price"], env.success()) == ("buyer : deal at 30", 30.0, True, False, 30, True)
    env = _dealer(budget=30)
    assert env.step("Offer 24")[1] == 24.0 and not env.success()  # a lower price sells too, for less


def test_too_high_offers_raise_the_counter_by_half_the_gap_then_the_buyer_leaves():
    env = _dealer(budget=30, counter=20, patience=3)
    # 20 + 10/2 = 25 -> 26 on the grid of 2; then 26 + 2 = 28; then out of patience
    assert env.step("offer 40")[:4] == ("buyer : 40 is too much . i offer 26", 0.0, False, False)
    assert env.step("offer 34")[0] == "buyer : 34 is too much . i offer 28" and env.counter == 28
    obs, r, term, trunc, info = env.step("offer 32")
    assert (obs, r, term, info["price"], env.success()) == ("buyer : that is too much . i am leaving", 0.0, True,
                                                             None, False)


def test_accept_takes_the_standing_counteroffer():
    env = _dealer(budget=30, counter=20, patience=3)
    env.step("offer 50")
    assert env.step("accept")[:3] == ("buyer : deal at 26", 26.0, True)


def test_invalid_actions_are_penalised_events():
    env = _dealer()
    for bad in ["offer 51", "offer 11", "offer", "offer thirty", "sell it", "", "accept 20", "offer 30 now"]:
        obs, r, term, trunc, info = env.step(bad)
        assert r == -1.0 and info["invalid"] and not term and obs.startswith("invalid action")
    assert (env.patience, env.counter, env.turn) == (3, 20, 8)


def test_truncation_at_max_turns_is_no_deal():
    env = _dealer(budget=30, patience=4, max_turns=2)
    results = [env.step("offer 50") for _ in range(2)]
    assert [t[3] for t in results] == [False, True] and sum(t[1] for t in results) == 0.0
    assert not env.success()


def test_the_budget_is_the_optimum_the_expert_reaches_and_no_policy_beats():
    seeds = list(range(300))
    budgets = []
    env = make()
    for s in seeds:
        env.reset(s)
        budgets.append(env.budget)
    expert = run_episodes(make, skill_actor(1.0), seeds)
    assert [e.ret for e in expert] == budgets and all(e.success and len(e) == 1 for e in expert)
    for skill in (0.0, 0.5):
        for e, b in zip(run_episodes(make, skill_actor(skill, seed=1), seeds), budgets):
            assert max(0.0, max(e.rewards)) <= b
    assert len(set(budgets)) > 8


def test_random_action_covers_every_action():
    env, rng = make(), random.Random(0)
    env.reset(0)
    picks = {env.random_action(rng) for _ in range(2000)}
    assert picks == {"accept"} | {f"offer {p}" for p in PRICES} and all(env.parse(a) for a in picks)


def test_datasets_are_mixed_and_round_trip(tmp_path):
    data = scripted_dataset(make, SKILLS, 60, seed=4)
    mean = {s: statistics.mean(e.ret for e in data if e.policy == s) for s in SKILLS}
    assert mean["expert"] > mean["noisy"] > mean["random"] > 0
    deals = {s: statistics.mean(e.rewards[-1] > 0 for e in data if e.policy == s) for s in SKILLS}
    wins = {s: statistics.mean(e.success for e in data if e.policy == s) for s in SKILLS}
    assert wins["expert"] == 1.0 and wins["expert"] > wins["noisy"] > wins["random"]
    assert deals["random"] > 0.5 > wins["random"]  # random offers often sell, rarely at the budget
    back = read_episodes(write_episodes(tmp_path / "cars.jsonl", data))
    assert [(e.actions, e.rewards) for e in back] == [(e.actions, e.rewards) for e in data]
    vocab = set(agent_tokenizer(make().words()).get_vocab())
    assert {w for e in data for s in e.observations + e.actions for w in s.split()} <= vocab


def test_registered_by_name():
    env = make_env("car_dealer", max_turns=4)
    assert (env.name, env.max_turns) == ("car_dealer", 4)
    with pytest.raises(ValueError, match="max_turns must be >= 1"):
        make(max_turns=0)
