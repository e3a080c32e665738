"""The text maze (rlxf.agents.tasks.maze): layout, observations (FO and PO), rules and rewards, invalid
actions, truncation, the shortest-path expert reaching the optimal return from every cell, and the mixed
offline datasets."""

from __future__ import annotations

import random

import pytest

from rlxf.agents.env import EnvError, make_env
from rlxf.agents.episodes import (read_episodes, run_episodes, scripted_dataset, skill_actor, success_rate,
                                  write_episodes)
from rlxf.agents.render import agent_tokenizer
from rlxf.agents.tasks.maze import ACTIONS, SKILLS, Maze, MazeError, make, make_po


def test_double_t_layout_goal_and_distances():
    env = make()
    assert env.goal == (8, 6)
    assert len(env.open) == 10 + 3 * 2 + 7 + 3  # rows 1, 2-4, 5, 6-8
    # (1,1): 2 right, 4 down, 3 right, 3 down
    assert env.dist[(1, 1)] == 12 and env.dist[(1, 11)] == 12 and env.dist[(5, 6)] == 3
    assert env.optimal_return((1, 1)) == -11.0


def test_fo_observation_and_wall_rules():
    env = make(start=(1, 1))
    assert env.reset(0) == "goal 8 6 position 1 1 walls up down left"
    obs, r, term, trunc, info = env.step("move up")  # into the wall: a legal move that stays put
    assert (obs, r, term, trunc, info["invalid"]) == ("goal 8 6 position 1 1 walls up down left", -1.0, False,
                                                      False, False)
    obs, r, *_ = env.step("Move  RIGHT")
    assert obs == "goal 8 6 position 1 2 walls up down" and r == -1.0 and env.pos == (1, 2)


def test_reaching_the_goal_gives_zero_and_ends():
    env = make(start=(7, 6))
    env.reset(0)
    obs, r, term, trunc, _ = env.step("move down")
    assert (r, term, trunc, env.success()) == (0.0, True, False, True)
    assert obs == "goal 8 6 position 8 6 walls down left right"
    with pytest.raises(EnvError):
        env.step("move up")


def test_invalid_actions_are_penalised_events():
    env = make(start=(5, 6))
    env.reset(0)
    for bad in ["move north", "up", "move up now", "", "go down"]:
        obs, r, term, trunc, info = env.step(bad)
        assert r == -4.0 and info["invalid"] and not term and env.pos == (5, 6)
        assert obs.startswith("invalid action")
    assert env.turn == 5


def test_truncation_at_max_turns():
    env = make(start=(1, 1), max_turns=3)
    env.reset(0)
    results = [env.step("move left") for _ in range(3)]
    assert [t[3] for t in results] == [False, False, True]
    assert not any(t[2] for t in results) and not env.success()


def test_po_hides_the_position():
    env = make_po(start=(2, 3))
    assert env.reset(0) == "walls left right"
    assert env.step("move down")[0] == "walls left right"  # (3,3) looks the same as (2,3)
    assert env.pos == (3, 3)
    assert env.name == "maze_po" and make().name == "maze"


def test_random_starts_follow_the_seed():
    env = make()
    starts = [env.reset(s) and env.pos for s in range(40)]
    assert starts == [env.reset(s) and env.pos for s in range(40)]
    assert len(set(starts)) > 10 and env.goal not in starts


@pytest.mark.parametrize("maker", [make, make_po])
def test_expert_reaches_the_optimal_return_from_every_cell(maker):
    cells = sorted(make().open - {(8, 6)})
    for cell in cells:
        ep = run_episodes(lambda: maker(start=cell), skill_actor(1.0), [0])[0]
        assert ep.success and ep.terminated and ep.ret == make().optimal_return(cell), cell
    route = run_episodes(lambda: maker(start=(1, 1)), skill_actor(1.0), [0])[0].actions
    assert route == ["move right"] * 2 + ["move down"] * 4 + ["move right"] * 3 + ["move down"] * 3


def test_random_action_is_uniform_over_the_moves():
    env, rng = make(), random.Random(0)
    picks = [env.random_action(rng) for _ in range(400)]
    assert set(picks) == set(ACTIONS) and all(env.parse(a) for a in picks)
    assert min(picks.count(a) for a in ACTIONS) > 70


def test_datasets_are_mixed_and_round_trip(tmp_path):
    data = scripted_dataset(make, SKILLS, 60, seed=3)
    rates = {name: success_rate([e for e in data if e.policy == name])[0] for name in SKILLS}
    assert rates["expert"] == 1.0 and rates["expert"] > rates["noisy"] > rates["random"]
    assert 0 < rates["random"] < 0.5
    back = read_episodes(write_episodes(tmp_path / "maze.jsonl", data))
    assert [(e.actions, e.rewards, e.success) for e in back] == [(e.actions, e.rewards, e.success) for e in data]
    vocab = agent_tokenizer(make().words()).get_vocab()
    text = {w for e in data for s in e.observations + e.actions for w in s.split()}
    assert text <= set(vocab)


def test_registered_by_name():
    assert make_env("maze").name == "maze"
    env = make_env("maze_po", start=(1, 1), max_turns=7)
    assert (env.name, env.max_turns, env.observe) == ("maze_po", 7, "partial")


@pytest.mark.parametrize("layout, message", [
    (["###", "#G", "###"], "equal length"),
    (["#.#", "#G#", "###"], "border"),
    (["#####", "#G#G#", "#####"], "exactly one goal"),
    (["#####", "#G#.#", "#####"], "cannot reach"),
    (["####", "#Gx#", "####"], "'x'"),
])
def test_bad_layouts_are_named(layout, message):
    with pytest.raises(MazeError, match=message):
        Maze(layout)


def test_bad_options_are_named():
    with pytest.raises(MazeError, match="start"):
        make(start=(0, 0))
    with pytest.raises(MazeError, match="start"):
        make(start=(8, 6))
    with pytest.raises(MazeError, match="unknown layout"):
        make(layout="spiral")
    with pytest.raises(MazeError, match="observe"):
        Maze(observe="some")
