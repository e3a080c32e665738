"""Twenty questions and guess-my-city (rlxf.agents.tasks.dialogue): the oracle behind the TextModel interface
(right answers, a set error rate, any text model's reply mapped to the question's answers), rules and rewards,
invalid actions, truncation, the exact solver on hand-computed cases, the halving expert reaching the exact
optimum, and the mixed offline datasets."""

from __future__ import annotations

import random
import statistics

import pytest

from rlxf.agents.env import make_env
from rlxf.agents.episodes import read_episodes, run_episodes, scripted_dataset, skill_actor, write_episodes
from rlxf.agents.render import agent_tokenizer
from rlxf.agents.tasks.dialogue import (CATALOGUES, GUESS_MY_CITY, SKILLS, TWENTY_QUESTIONS, UNKNOWN, Catalogue,
                                        make_guess_my_city, make_twenty_questions, optimal_expected_turns,
                                        oracle_accuracy, oracle_request, simulated_oracle)

MAKERS = {"twenty_questions": make_twenty_questions, "guess_my_city": make_guess_my_city}


def _game(maker=make_twenty_questions, secret="horse", **kw):
    env = maker(**kw)
    env.reset(0)
    env.secret = secret
    return env


@pytest.mark.parametrize("cat", list(CATALOGUES.values()), ids=list(CATALOGUES))
def test_every_item_can_be_told_apart(cat):
    rows = {tuple(cat.answers[q][i] for q in cat.answers) for i in range(len(cat.items))}
    assert len(rows) == len(cat.items) == 16
    with pytest.raises(ValueError, match="no question tells 'a' from 'b'"):
        Catalogue("toy", "find it", ("a", "b", "c"), {"is it c ?": ("no", "no", "yes")})


def test_questions_get_the_secrets_answers_and_cost_a_turn():
    env = _game(secret="horse")
    assert env.step("is it an animal ?")[:4] == ("yes", -1.0, False, False)
    assert env.step("Can it FLY?")[:2] == ("no", -1.0)  # case, spacing and the question mark are free
    city = _game(make_guess_my_city, secret="lima")
    assert city.step("which continent is it on ?")[0] == "south america"
    assert city.step("what language do people speak there ?")[0] == "spanish"
    assert city.history == [("which continent is it on ?", "south america"),
                            ("what language do people speak there ?", "spanish")]


def test_guesses_end_the_game_only_when_right():
    env = _game(secret="horse")
    obs, r, term, trunc, info = env.step("guess cat")
    assert (obs, r, term, info["invalid"]) == ("no it is not cat", -1.0, False, False) and env.guessed == {"cat"}
    obs, r, term, trunc, _ = env.step("guess horse")
    assert (obs, r, term, trunc, env.success()) == ("correct", 0.0, True, False, True)


def test_invalid_actions_are_penalised_events():
    env = _game()
    for bad in ["guess unicorn", "is it a unicorn ?", "guess", "horse", "", "guess horse now"]:
        obs, r, term, trunc, info = env.step(bad)
        assert r == -1.0 and info["invalid"] and not term and obs.startswith("invalid action")
    assert env.history == [] and not env.success()
    assert _game(make_guess_my_city).parse("is it alive ?") is None  # another catalogue's question


def test_truncation_at_max_turns():
    env = _game(max_turns=3)
    results = [env.step("is it red ?") for _ in range(3)]
    assert [t[3] for t in results] == [False, False, True] and not any(t[2] for t in results)


def test_noisy_oracle_errs_at_its_rate_with_the_questions_answers():
    """4000 asks at error 0.3: a wrong reply is another of the question's answers, so the observed rate of
    mismatches is 0.3 (SE 0.007; the bound is 5 SE)."""
    oracle = simulated_oracle(GUESS_MY_CITY, error=0.3, seed=1)
    qs = list(GUESS_MY_CITY.answers)
    rng = random.Random(0)
    wrong = 0
    for _ in range(4000):
        q, i = rng.choice(qs), rng.randrange(16)
        reply = oracle.complete([oracle_request(GUESS_MY_CITY.items[i], q)])[0]
        assert reply in GUESS_MY_CITY.choices(q)
        wrong += reply != GUESS_MY_CITY.answers[q][i]
    assert abs(wrong / 4000 - 0.3) < 0.035
    with pytest.raises(ValueError, match="guess_my_city oracle: not a request about this catalogue"):
        oracle.complete(["what is it?"])


def test_noisy_episodes_follow_the_seed():
    a = run_episodes(lambda: make_twenty_questions(oracle_error=0.2), skill_actor(1.0), list(range(30)))
    b = run_episodes(lambda: make_twenty_questions(oracle_error=0.2), skill_actor(1.0), list(range(30)))
    assert [e.observations for e in a] == [e.observations for e in b]
    clean = run_episodes(make_twenty_questions, skill_actor(1.0), list(range(30)))
    assert [e.observations for e in a] != [e.observations for e in clean]
    assert all(e.success for e in a)  # the expert recovers from wrong answers within 20 turns here


class _Replies:
    """A stand-in text model (any TextModel works as the oracle)."""

    def __init__(self, reply):
        self.reply, self.seen = reply, []

    def complete(self, requests):
        self.seen += requests
        return [self.reply for _ in requests]


def test_any_text_model_can_be_the_oracle():
    model = _Replies("Yes, it is!")
    env = make_twenty_questions(oracle=model)
    env.reset(0)
    assert env.step("is it red ?")[0] == "yes"
    assert model.seen == [f"Is {env.secret} red? Answer with yes, no or one word."]
    env.oracle = _Replies("Bananas are yellow.")
    assert env.step("is it red ?")[0] == UNKNOWN and env.history[-1] == ("is it red ?", UNKNOWN)
    city = make_guess_my_city(oracle=_Replies("Well, Lima is in South America, not Europe."))
    city.reset(0)
    assert city.step("which continent is it on ?")[0] == "south america"  # the answer named first


def test_requests_name_the_secret():
    assert oracle_request("lima", "what language do people speak there ?") == \
        "What language do people speak in lima? Answer with yes, no or one word."
    assert oracle_request("cat", "can you eat it ?") == "Can you eat cat? Answer with yes, no or one word."


def test_oracle_accuracy_counts_right_answers():
    assert oracle_accuracy(simulated_oracle(TWENTY_QUESTIONS), TWENTY_QUESTIONS) == 1.0
    # always "yes": right on the pairs whose answer is yes (10+6+4+1+2+2+1+5+4+2+2+2+4+2+1+1+1 = 50 of 16 x 17)
    yes = sum(a == "yes" for ans in TWENTY_QUESTIONS.answers.values() for a in ans)
    assert yes == 50 and oracle_accuracy(_Replies("Yes."), TWENTY_QUESTIONS) == pytest.approx(50 / 272)
    # a city oracle that always says "europe" is right on the 6 european cities' continent only
    assert oracle_accuracy(_Replies("Europe!"), GUESS_MY_CITY) == pytest.approx(6 / (16 * 7))


def _cat(n: int, answers: dict) -> Catalogue:
    return Catalogue("toy", "find it", tuple(f"x{i}" for i in range(n)), answers)


def test_exact_solver_on_hand_computed_cases():
    # no questions: guess one by one, (n + 1) / 2 turns on average
    assert optimal_expected_turns(_cat(5, {})) == pytest.approx(3.0)
    # a question naming every item: ask it, then guess right (2 turns); with two items guessing is better (1.5)
    assert optimal_expected_turns(_cat(6, {"which ?": tuple("abcdef")})) == pytest.approx(2.0)
    assert optimal_expected_turns(_cat(2, {"which ?": ("a", "b")})) == pytest.approx(1.5)
    # a 2-bit code on 4 items: ask both bits and guess (1 + 1.5) ties guessing first (1 + 3/4 * 2)
    code = {"high ?": ("n", "n", "y", "y"), "odd ?": ("n", "y", "n", "y")}
    assert optimal_expected_turns(_cat(4, code)) == pytest.approx(2.5)
    # 3 items: guessing (1 + 2/3 * 1.5 = 2) beats a 1/2 question (1 + 1/3 * 1 + 2/3 * 1.5 = 2.33)
    assert optimal_expected_turns(_cat(3, {"a ?": ("y", "n", "n"), "b ?": ("n", "y", "n")})) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="question 'q' has 2 answers for 3 items"):
        _cat(3, {"q": ("y", "n")})


@pytest.mark.parametrize("name", list(MAKERS))
def test_halving_expert_reaches_the_exact_optimum(name):
    cat, maker = CATALOGUES[name], MAKERS[name]
    turns, returns = [], []
    for secret in cat.items:
        env = _game(maker, secret=secret)
        ret = 0.0
        while not env.done:
            ret += env.step(env.expert_action())[1]
        assert env.success()
        turns.append(env.turn)
        returns.append(ret)
    optimum = optimal_expected_turns(cat)
    assert optimum == {"twenty_questions": 4.625, "guess_my_city": 2.4375}[name]
    assert statistics.mean(turns) == pytest.approx(optimum)
    assert statistics.mean(returns) == pytest.approx(1.0 - optimum)  # -1 per turn but the last


@pytest.mark.parametrize("name", list(MAKERS))
def test_datasets_are_mixed_and_round_trip(name, tmp_path):
    data = scripted_dataset(MAKERS[name], SKILLS, 40, seed=2)
    mean = {s: statistics.mean(e.ret for e in data if e.policy == s) for s in SKILLS}
    wins = {s: statistics.mean(e.success for e in data if e.policy == s) for s in SKILLS}
    assert wins["expert"] == 1.0 and mean["expert"] > mean["noisy"] > mean["random"]
    assert wins["random"] < 0.9
    back = read_episodes(write_episodes(tmp_path / "d.jsonl", data))
    assert [(e.actions, e.rewards) for e in back] == [(e.actions, e.rewards) for e in data]
    vocab = set(agent_tokenizer(MAKERS[name]().words()).get_vocab())
    assert {w for e in data for s in e.observations + e.actions for w in s.split()} <= vocab


def test_registered_by_name():
    env = make_env("twenty_questions", oracle_error=0.1, max_turns=5)
    assert (env.name, env.max_turns, env.catalogue) == ("twenty_questions", 5, TWENTY_QUESTIONS)
    assert make_env("guess_my_city").catalogue is GUESS_MY_CITY
