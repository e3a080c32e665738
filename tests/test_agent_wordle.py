"""The wordle environment (rlxf.agents.tasks.wordle): letter feedback on hand examples (repeated letters
included), rules and rewards, invalid words, the 6-guess end, the consistent-guess expert solving every
target within 6, and the mixed offline datasets."""

from __future__ import annotations

import random

import pytest

from rlxf.agents.env import EnvError, make_env
from rlxf.agents.episodes import run_episodes, scripted_dataset, skill_actor, success_rate
from rlxf.agents.render import agent_tokenizer
from rlxf.agents.tasks.wordle import (SKILLS, START, WORDS, WordleError, best_guess, consistent, feedback,
                                      make)

G, Y, X = "green", "yellow", "gray"


def test_feedback_by_hand():
    assert feedback("crane", "cigar") == (G, Y, Y, X, X)
    assert feedback("water", "water") == (G,) * 5
    # one 'e' in the target, already matched in place: the other two 'e's are gray
    assert feedback("geese", "those") == (X, X, X, G, G)
    # one 'e' in the target, not in place: only the first unmatched 'e' is yellow
    assert feedback("speed", "abide") == (X, X, Y, X, Y)


def test_consistent_and_best_guess_by_hand():
    words = ["night", "light", "about", "fruit"]
    history = [("crane", feedback("crane", "light"))]  # all gray: keeps words without c r a n e
    assert consistent(words, history) == ["light"]
    history = [("ghost", feedback("ghost", "light"))]  # g y, h y, o x, s x, t g
    assert consistent(words, history) == ["night", "light"]
    # within the -ight words every guess leaves the other two together; "lingo" tells all four apart
    assert best_guess(["fight", "light", "night", "lingo"]) == "lingo"
    assert best_guess(["fight", "light", "night"]) == "fight"  # all tie (largest group 2): the first


def test_rules_rewards_and_observation():
    env = make(target="water")
    assert env.reset(0) == START
    turns = [("crane", "c gray r yellow a yellow n gray e yellow", -1.0, False),
             ("  WATER ", "w green a green t green e green r green", 0.0, True)]  # case and spaces ignored
    for action, obs, reward, solved in turns:
        assert env.step(action)[:4] == (obs, reward, solved, False)
    assert env.success() and env.history[0] == ("crane", (X, Y, Y, X, Y))
    with pytest.raises(EnvError):
        env.step("water")


def test_invalid_words_are_penalised_and_use_a_guess():
    env = make(target="water")
    env.reset(0)
    for bad in ["zzzzz", "crane now", "", "cran", "green"]:
        obs, r, term, trunc, info = env.step(bad)
        assert r == -1.0 and info["invalid"] and not term and obs.startswith("invalid action")
    assert env.turn == 5 and env.history == []


def test_six_guesses_end_the_game():
    env = make(target="water")
    env.reset(0)
    steps = [env.step(w) for w in ["crane", "about", "chair", "ghost", "lemon", "piano"]]
    assert [s[2] for s in steps] == [False] * 5 + [True]  # terminated: out of guesses
    assert not any(s[3] for s in steps) and not env.success()
    assert sum(s[1] for s in steps) == -6.0


def test_target_follows_the_seed():
    env = make()
    targets = [env.reset(s) and env.target for s in range(60)]
    assert targets == [env.reset(s) and env.target for s in range(60)]
    assert len(set(targets)) > 20


def test_expert_solves_every_target_within_six_with_consistent_guesses():
    lengths = []
    for target in WORDS:
        ep = run_episodes(lambda: make(target=target), skill_actor(1.0), [0])[0]
        assert ep.success and ep.terminated and len(ep) <= 6, (target, ep.actions)
        assert ep.ret == -(len(ep) - 1)
        history = []
        for guess in ep.actions:
            assert guess in consistent(WORDS, history)
            history.append((guess, feedback(guess, target)))
        lengths.append(len(ep))
    assert max(lengths) <= 6


def test_random_action_is_a_uniform_valid_word():
    env, rng = make(), random.Random(0)
    picks = [env.random_action(rng) for _ in range(2000)]
    assert set(picks) == set(WORDS) and all(env.parse(w) for w in picks)


def test_datasets_are_mixed():
    data = scripted_dataset(make, SKILLS, 60, seed=5)
    rates = {name: success_rate([e for e in data if e.policy == name])[0] for name in SKILLS}
    assert rates["expert"] == 1.0 and rates["expert"] > rates["random"] and rates["noisy"] > rates["random"]
    assert rates["random"] < 0.4
    vocab = set(agent_tokenizer(make().words()).get_vocab())
    assert {w for e in data for s in e.observations + e.actions for w in s.split()} <= vocab


def test_registered_by_name():
    env = make_env("wordle", target="plant")
    env.reset(0)
    assert env.name == "wordle" and env.target == "plant"


def test_bad_options_are_named():
    with pytest.raises(WordleError, match="not in the word list"):
        make(target="zebra")
    with pytest.raises(WordleError, match="word 1"):
        make(words=["apple", "pear"])
    with pytest.raises(WordleError, match="repeats"):
        make(words=["apple", "Apple"])
    with pytest.raises(WordleError, match="at least two"):
        make(words=["apple"])
