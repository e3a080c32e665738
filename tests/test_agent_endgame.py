"""The endgame (rlxf.agents.tasks.endgame): the Nim solver against exhaustive game-tree search, rules and
rewards (win, loss, illegal moves), truncation, the solver as expert winning every episode, the solver as
opponent beating random play, and the mixed offline datasets."""

from __future__ import annotations

import itertools
import random
import statistics
from functools import lru_cache

import pytest

from rlxf.agents.env import make_env
from rlxf.agents.episodes import read_episodes, run_episodes, scripted_dataset, skill_actor, write_episodes
from rlxf.agents.render import agent_tokenizer
from rlxf.agents.tasks.endgame import SKILLS, Endgame, legal_moves, make, solver_move


@lru_cache(maxsize=None)
def _wins(piles: tuple[int, ...]) -> bool:
    """Whether the player to move wins (whoever takes the last object wins), by searching every move."""
    return any(not _wins(tuple(n - k if j == i else n for j, n in enumerate(piles)))
               for i, k in legal_moves(list(piles)))


def test_solver_agrees_with_exhaustive_search():
    for piles in itertools.product(range(6), repeat=3):
        move = solver_move(list(piles))
        assert (move is not None) == _wins(piles), piles
        if move is not None:
            i, k = move
            after = tuple(n - k if j == i else n for j, n in enumerate(piles))
            assert 1 <= k <= piles[i] and not _wins(after), piles


def _game(piles, **kw) -> Endgame:
    env = make(**kw)
    env.reset(0)
    env.piles = list(piles)
    return env


def test_reset_starts_from_a_won_position():
    env = make()
    starts = []
    for seed in range(50):
        obs = env.reset(seed)
        assert _wins(tuple(env.piles)) and all(1 <= n <= 5 for n in env.piles)
        assert obs == "piles a {} b {} c {} . your move".format(*env.piles)
        starts.append(tuple(env.piles))
    assert len(set(starts)) > 20


def test_taking_the_last_object_wins():
    env = _game([0, 2, 0])
    obs, r, term, trunc, _ = env.step("take 2 from b")
    assert (obs, r, term, trunc, env.success()) == ("you took the last object . you win", 1.0, True, False, True)


def test_the_solver_replies_and_can_win():
    env = _game([1, 2, 3])  # xor 0: every agent move loses against the solver
    obs, r, term, *_ = env.step("take 3 from c")  # leaves 1 2 0: the solver takes 1 from b (1 1 0)
    assert (obs, r, term, env.piles) == ("opponent takes 1 from b . piles a 1 b 1 c 0 . your move", 0.0, False,
                                         [1, 1, 0])
    env.step("take 1 from a")
    assert env.piles == [0, 0, 0] and not env.success()
    env = _game([0, 0, 3])
    assert env.step("take 2 from c")[:3] == ("opponent takes 1 from c . no objects left . you lose", -1.0, True)


def test_illegal_moves_are_penalised_events():
    env = _game([1, 0, 3])
    for bad in ["take 0 from a", "take 2 from a", "take 1 from b", "take 1 from d", "take two from c",
                "take 1", "", "take 1 from c now"]:
        obs, r, term, trunc, info = env.step(bad)
        assert r == -1.0 and info["invalid"] and not term and obs.startswith("invalid action")
    assert env.piles == [1, 0, 3] and env.turn == 8
    assert env.parse("TAKE 3 FROM C") == (2, 3)


def test_truncation_at_max_turns():
    env = _game([5, 5, 5], max_turns=2)
    results = [env.step("take 1 from a"), env.step("take 1 from b")]
    assert [t[3] for t in results] == [False, True] and not any(t[2] for t in results)


def test_expert_wins_every_episode_and_random_play_loses():
    seeds = list(range(300))
    expert = run_episodes(make, skill_actor(1.0), seeds)
    assert all(e.success and e.ret == 1.0 and e.terminated for e in expert)
    rand = run_episodes(make, skill_actor(0.0, seed=1), seeds)
    assert statistics.mean(e.success for e in rand) < 0.25
    # a careless opponent (random moves) loses more often to random play than the solver does
    weak = run_episodes(lambda: make(opponent_skill=0.0), skill_actor(0.0, seed=1), seeds)
    assert statistics.mean(e.success for e in weak) > statistics.mean(e.success for e in rand) + 0.2


def test_random_action_is_legal_and_covers_the_moves():
    env, rng = _game([2, 1, 3]), random.Random(0)
    picks = {env.random_action(rng) for _ in range(500)}
    assert len(picks) == 6 and all(env.parse(a) for a in picks)


def test_datasets_are_mixed_and_round_trip(tmp_path):
    data = scripted_dataset(make, SKILLS, 60, seed=5)
    wins = {s: statistics.mean(e.success for e in data if e.policy == s) for s in SKILLS}
    assert wins["expert"] == 1.0 and wins["expert"] > wins["noisy"] > wins["random"]
    back = read_episodes(write_episodes(tmp_path / "nim.jsonl", data))
    assert [(e.actions, e.rewards) for e in back] == [(e.actions, e.rewards) for e in data]
    vocab = set(agent_tokenizer(make().words()).get_vocab())
    assert {w for e in data for s in e.observations + e.actions for w in s.split()} <= vocab


def test_registered_by_name_and_bad_options():
    env = make_env("endgame", opponent_skill=0.5, max_turns=6)
    assert (env.name, env.opponent_skill, env.max_turns) == ("endgame", 0.5, 6)
    with pytest.raises(ValueError, match="opponent_skill must be in"):
        make(opponent_skill=1.5)
    with pytest.raises(ValueError, match="max_size must be >= 1"):
        make(max_size=0)
