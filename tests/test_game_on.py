"""Game On: the maze task's rules and optimal policy, the experimenter's prompt, parser and rule, the
experiment loop (equal env steps, invalid replies, the skill library), and (slow) the claim against a fixed
curriculum."""

import numpy as np
import pytest
import torch

from rlxf.agents.game_on import (MOVES, GameOn, GameOnConfig, MazeExit, Result, baselines,
                                 compare, curriculum_rule, experimenter_prompt, fixed_curriculum, parse_proposal,
                                 simulated_experimenter)
from rlxf.algorithms.control.ppo import PPOConfig
from rlxf.algorithms.evaluate import mean_se


def optimal_action(env: MazeExit) -> int:
    """The move to the open neighbour one step closer to the exit."""
    x, y = env.pos
    return next(i for i, (dx, dy) in enumerate(MOVES)
                if (x + dx, y + dy) in env.open[env.pos] and env.distance[(x + dx, y + dy)] == env.distance[env.pos] - 1)


def test_maze_rules_bands_and_optimal_policy():
    env = MazeExit(level=6, levels=6, size=6, slack=2, maze_seed=3)
    assert len(env.distance) == 36  # a perfect maze: every cell reaches the exit
    n_passages = sum(len(v) for v in env.open.values()) // 2
    assert n_passages == 35  # a tree: one path between any two cells
    far = max(env.distance.values())
    for d, band in enumerate(env.bands, 1):
        assert band and all(far * (d - 1) / 6 < env.distance[c] <= far * d / 6 for c in band)
    assert sorted(c for b in env.bands for c in b) == sorted(c for c in env.distance if c != env.exit)
    obs, _ = env.reset(seed=0)
    assert env.pos in env.bands[5] and obs.sum() == 1 and obs[env.pos[1] * 6 + env.pos[0]] == 1
    # a move into a wall stays put
    x, y = env.pos
    walls = [i for i, (dx, dy) in enumerate(MOVES) if (x + dx, y + dy) not in env.open[env.pos]]
    assert walls and env.step(walls[0])[1:4] == (0.0, False, False) and env.pos == (x, y)
    # the optimal policy reaches the exit from every start of the farthest band, in exactly its distance
    for start in env.bands[5]:
        env.reset(seed=1)
        env.pos, env.t, env.limit = start, 0, env.distance[start] + env.slack
        for k in range(env.distance[start]):
            _, r, term, trunc, _ = env.step(optimal_action(env))
        assert (r, term, trunc) == (1.0, True, False) and env.t == env.distance[start]
    # wandering truncates after distance + slack steps without reward
    env.reset(seed=2)
    limit = env.limit
    stuck = next(i for i, (dx, dy) in enumerate(MOVES) if (env.pos[0] + dx, env.pos[1] + dy) not in env.open[env.pos])
    out = [env.step(stuck) for _ in range(limit)]
    assert [o[3] for o in out] == [False] * (limit - 1) + [True] and sum(o[1] for o in out) == 0.0


def test_level_mix_draws_every_level_and_bad_levels_are_refused():
    env = MazeExit(level=None, levels=4, size=5, maze_seed=1)
    band_of = {c: d for d, b in enumerate(env.bands, 1) for c in b}
    seen = set()
    for s in range(60):
        env.reset(seed=s)
        seen.add(band_of[env.pos])
    assert seen == {1, 2, 3, 4}
    with pytest.raises(ValueError, match="level must be in 1..4"):
        MazeExit(level=5, levels=4, size=5)
    with pytest.raises(ValueError, match="fewer than levels=40"):
        MazeExit(levels=40, size=3)


def test_parse_proposal():
    lib = {1: 0.9, 2: 0.85}
    assert parse_proposal("I think: TASK level-3 FROM level-2.", 6, lib) == (3, "level-2")
    assert parse_proposal("task Level-4 from Current", 6, lib) == (4, "current")
    assert parse_proposal("TASK level-mix FROM scratch", 6, lib) == (None, "scratch")
    assert parse_proposal("TASK level-7 FROM current", 6, lib) is None  # off the menu
    assert parse_proposal("TASK level-3 FROM level-3", 6, lib) is None  # not in the library
    assert parse_proposal("train harder on the maze", 6, lib) is None


def test_fixed_curriculum():
    assert fixed_curriculum(12, 6) == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6]
    assert fixed_curriculum(4, 3) == [1, 1, 2, 3]
    with pytest.raises(ValueError, match="rounds \\(2\\) must be >="):
        fixed_curriculum(2, 6)


def test_curriculum_rule_reads_the_prompt():
    def ask(library, history):
        return curriculum_rule(experimenter_prompt(6, library, history, 4096))

    r = lambda task, succ: Result(task, "current", 1024, 100, round(succ * 100))
    assert ask({}, []) == "TASK level-1 FROM current"
    assert ask({}, [r(1, 0.5)]) == "TASK level-1 FROM current"  # in between: keep going
    assert ask({1: 0.9}, [r(1, 0.9)]) == "TASK level-2 FROM level-1"  # learned: one level up from the skill
    assert ask({1: 0.9, 2: 0.8}, [r(5, 0.0)]) == "TASK level-3 FROM level-2"  # hopeless: step back halfway
    assert ask({1: 0.9, 2: 0.8}, [r(3, 0.05)]) == "TASK level-3 FROM current"  # the next level is kept
    assert ask({d: 0.9 for d in range(1, 7)}, [r(6, 0.9)]) == "TASK level-6 FROM current"  # target learned
    assert ask({1: 0.9}, [r(None, 0.3)]) == "TASK level-2 FROM level-1"


class Scripted:
    """A TextModel that replies from a list."""

    def __init__(self, replies):
        self.replies, self.calls = list(replies), 0

    def complete(self, requests):
        self.calls += 1
        return [self.replies.pop(0) for _ in requests]


def tiny(**kw) -> GameOnConfig:
    ppo = PPOConfig(n_envs=4, n_steps=16, epochs=2, minibatch_size=64, anneal=False, hidden=16)
    return GameOnConfig(**{"levels": 3, "size": 4, "rounds": 3, "round_steps": 128, "learned_at": 0.0, "ppo": ppo, **kw})


def test_loop_counts_steps_handles_invalid_replies_and_reuses_skills():
    game = GameOn(tiny(), Scripted(["TASK level-2 FROM current", "no idea", "TASK level-1 FROM level-2"]))
    game.run()
    assert game.ppo.steps_done == 3 * 128 and game.invalid == 1
    assert [(r.task, r.start) for r in game.history] == [(2, "current"), (2, "current"), (1, "level-2")]
    assert all(r.steps == 128 and 0 <= r.successes <= r.episodes > 0 for r in game.history)
    assert "level-2 from current, 128 steps" in game.prompts[1] and "Skill library: level-2" in game.prompts[2]
    assert sorted(game.library) == [1, 2]  # learned_at=0: every finished task is stored
    skill = game.library[2].params
    game._load("level-2")
    assert torch.equal(game.ppo.flat.param.detach(), skill)
    game._load("scratch")
    assert torch.equal(game.ppo.flat.param.detach(), game.scratch)
    with pytest.raises(ValueError, match="round_steps \\(100\\) must be a multiple"):
        tiny(round_steps=100)


def test_arms_train_for_equal_env_steps_and_score_the_same_episodes():
    cfg = tiny()
    out = compare(cfg, {"sim": simulated_experimenter(0.0, 0, cfg.learned_at), **baselines(cfg)}, n_episodes=16)
    assert {g.ppo.steps_done for g in out["games"].values()} == {3 * 128}
    assert [r.task for r in out["games"]["ladder"].history] == [1, 2, 3]
    assert [r.task for r in out["games"]["uniform"].history] == [None] * 3
    assert all(s.shape == (16,) and set(np.unique(s)) <= {0.0, 1.0} for s in out["success"].values())


def test_a_wrong_role_still_proposes_valid_tasks():
    role = simulated_experimenter(error=1.0, seed=0)
    prompt = experimenter_prompt(6, {1: 0.9}, [], 1024)
    for reply in role.complete([prompt] * 20):
        assert parse_proposal(reply, 6, {1: 0.9}) is not None


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=AssertionError, reason="measured: Game On - ladder = +0.000, +0.000, -1.000 on seeds 0-2 (mean -0.333, "
                   "se 0.333); both fixed curricula solve the farthest level on all three seeds, Game On's one-level-at-"
                   "a-time gate reaches it on seeds 0 and 1 only")
def test_game_on_beats_a_fixed_curriculum_at_equal_env_steps():
    """Claim (Game On): the experimenter's curriculum beats a fixed curriculum at equal env steps.

    Setup, fixed before the first run on these seeds: GameOnConfig defaults (6 levels on a 6x6 maze, 16 rounds
    of 1024 env steps); the experimenter is the simulated role with error 0.1; the baseline is the ladder (levels
    1..6 in order, equal rounds). Both arms train for exactly 16384 env steps (Game On reads success off its own
    training episodes). Score: the final greedy policy's success on the farthest level, 200 held-out episodes.
    Threshold: over training seeds 0, 1, 2 the mean per-seed difference (Game On - ladder) is > 0 and at least
    2 standard errors of the per-seed differences.
    """
    diffs = []
    for seed in (0, 1, 2):
        cfg = GameOnConfig(seed=seed)
        out = compare(cfg, {"game_on": simulated_experimenter(0.1, seed, cfg.learned_at),
                            "ladder": baselines(cfg)["ladder"]})
        diffs.append(out["success"]["game_on"].mean() - out["success"]["ladder"].mean())
    gain, se = mean_se(diffs)
    assert gain > 0 and gain >= 2 * se, (diffs, gain, se)
