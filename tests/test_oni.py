"""ONI: the caption grid's rules, the reward formula, the asynchronous labeller, the two intrinsic reward
models, and (slow) the claim that ONI's intrinsic reward beats extrinsic-only PPO at equal env steps."""

from collections import Counter

import pytest
import torch

from rlxf.agents.oni import (AsyncLabeller, ClassifierReward, HashReward, ONI, ONIConfig, episode_counts, oni_reward,
                             parse_label, progress_judge)
from rlxf.agents.tasks.caption_grid import CaptionGrid
from rlxf.algorithms.control.ppo import PPOConfig

UP, DOWN, LEFT, RIGHT = range(4)


def grid_at(pos, **kw) -> CaptionGrid:
    env = CaptionGrid(**kw)
    env.reset(seed=0)
    env.pos = pos
    return env


def test_grid_rules_and_captions():
    env = grid_at((1, 0), noise=0.0)
    assert env.step(UP)[4]["caption"] == f"you bump into the {env.material} wall" and env.pos == (1, 0)
    obs, r, term, trunc, info = env.step(LEFT)
    assert info["caption"] == f"you pick up the {env.colour} key" and env.has_key and obs[-2] == 1.0
    env.pos = (2, 1)
    assert env.step(RIGHT)[4]["caption"] == f"you bump into the {env.material} wall"  # the dividing wall
    env.pos, env.has_key = (2, 2), False
    assert env.step(RIGHT)[4]["caption"] == f"the {env.colour} door is locked" and env.pos == (2, 2)
    env.has_key = True
    assert env.step(RIGHT)[4]["caption"] == f"you unlock the {env.colour} door" and env.pos == (2, 2) and env.door_open
    assert env.step(RIGHT)[4]["caption"] == "" and env.pos == (3, 2)  # the open door is floor now
    env.pos = (6, 3)
    _, r, term, trunc, info = env.step(DOWN)
    assert (r, term, trunc, info["caption"]) == (1.0, True, False, "you climb the stairs")
    assert len(env.captions) == 7 and env.take_captions(2) == ["", "you climb the stairs"] and env.captions == []


def test_grid_truncates_and_take_captions():
    env = grid_at((1, 0), max_steps=3, noise=0.0)
    outs = [env.step(UP) for _ in range(3)]
    assert [o[3] for o in outs] == [False, False, True] and not outs[-1][2]
    assert env.take_captions(2) == [f"you bump into the {env.material} wall"] * 2 and env.captions == []
    with pytest.raises(ValueError, match="only 0 were logged"):
        env.take_captions(1)


def test_expert_takes_the_shortest_path():
    # from (2, 4): 6 moves to the key at (0, 0), 4 to (2, 2), 1 bump to unlock, 1 onto the door, 5 to (6, 4)
    env = grid_at((2, 4), noise=0.0)
    steps = 0
    while True:
        _, r, term, trunc, _ = env.step(env.expert_action())
        steps += 1
        if term or trunc:
            break
    assert (steps, r) == (17, 1.0)
    for seed in range(20):
        env = CaptionGrid()
        env.reset(seed=seed)
        while not env.step(env.expert_action())[2]:
            assert env.t < env.max_steps


def test_oni_reward_formula():
    env_r = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    intrinsic = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    counts = torch.tensor([[1, 2, 1, 0]])
    # 0.4 / 1^3, 0.4 / 2^3 = 0.05, 2 * 1 + 0.4, and nothing without a caption
    got = oni_reward(env_r, intrinsic, counts, c_ext=2.0, c_llm=0.4, beta=3.0)
    assert torch.allclose(got, torch.tensor([[0.4, 0.05, 2.4, 0.0]]))
    assert torch.allclose(oni_reward(env_r, intrinsic, counts, 2.0, 0.4, 0.0), torch.tensor([[0.4, 0.4, 2.4, 0.0]]))


def test_episode_counts_carry_across_rollouts_not_episodes():
    running = [Counter(), Counter()]
    first = episode_counts([["a", "", "a"], ["b", "b", "a"]], torch.tensor([[False, False, False], [False, True, False]]),
                           running)
    assert first.tolist() == [[1, 0, 2], [1, 2, 1]]
    second = episode_counts([["a", "b"], ["a", "b"]], torch.tensor([[True, False], [False, False]]), running)
    assert second.tolist() == [[3, 1], [2, 1]]


def test_parse_label():
    assert [parse_label(r) for r in ["yes", " Yes, it is.", "no.", "NO", "maybe", ""]] == [1, 1, 0, 0, None, None]


def test_progress_judge_and_error_rate():
    from rlxf.agents.oni import QUESTION
    qs = [QUESTION.format(caption=c) for c in ["you pick up the red key", "you bump into the stone wall",
                                                "you climb the stairs", "the red door is locked"]]
    assert progress_judge(error=0.0).complete(qs) == ["yes", "no", "yes", "no"]
    assert progress_judge(error=1.0).complete(qs) == ["no", "yes", "no", "yes"]


def test_async_labeller_latency_and_throughput():
    judge = progress_judge(error=0.0)
    lab = AsyncLabeller(judge, latency=10, per_step=0.5)  # one answer per 2 steps
    lab.submit(["you pick up the red key", "", "you bump into the stone wall", "you pick up the red key"], step=0)
    assert lab.ready(9) == {}
    assert lab.ready(10) == {"you pick up the red key": 1}  # the second is served 2 steps later
    assert lab.ready(11) == {}
    assert lab.ready(12) == {"you bump into the stone wall": 0}
    lab.submit(["you pick up the red key"], step=20)  # asked once only
    assert lab.ready(100) == {} and judge.requests == 2


def test_async_labeller_counts_bad_replies():
    class Mumbler:
        def complete(self, requests):
            return ["perhaps"] * len(requests)

    lab = AsyncLabeller(Mumbler())
    lab.submit(["you climb the stairs"], step=0)
    assert lab.ready(5) == {"you climb the stairs": 0} and lab.bad_replies == 1
    with pytest.raises(ValueError, match="latency"):
        AsyncLabeller(Mumbler(), latency=-1)


def test_hash_reward_pays_only_labelled_captions():
    model = HashReward()
    model.update({"you pick up the red key": 1, "you bump into the stone wall": 0})
    assert model(["you pick up the red key", "you pick up the blue key", "you bump into the stone wall"]).tolist() == [1, 0, 0]


def test_classifier_generalises_to_unseen_captions():
    model = ClassifierReward(CaptionGrid().words())
    model.update({"you pick up the red key": 1, "you unlock the red door": 1, "you bump into the stone wall": 0,
                  "the red door is locked": 0, "you hear water dripping": 0})
    assert model(["you pick up the blue key", "you unlock the green door", "you bump into the brick wall",
                  "the blue door is locked"]).tolist() == [1, 1, 0, 0]
    assert model([""]).tolist() == [0]


@pytest.fixture(scope="module")
def small_cfg():
    ppo = PPOConfig(n_envs=4, n_steps=16, total_steps=256, epochs=1, minibatch_size=64, hidden=16)
    return dict(ppo=ppo, latency=8, per_step=0.5, grid=dict(width=5, height=3, max_steps=12))


def test_oni_runs_and_pays_intrinsic_reward(small_cfg):
    oni = ONI(ONIConfig(variant="classifier", seed=1, **small_cfg))
    oni.train()
    assert oni.ppo.steps_done == 256 and oni.labeller.asked and oni.model.table
    assert oni.intrinsic_paid != 0.0
    assert oni.success_rate(4).shape == (4,)
    plain = ONI(ONIConfig(variant="none", seed=1, **small_cfg))
    plain.train()
    assert plain.intrinsic_paid == 0.0 and not plain.labeller.asked
    with pytest.raises(ValueError, match="oni.variant"):
        ONIConfig(variant="motif")


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="measured on seeds 0-5: ONI-hash minus extrinsic-only greedy success "
                   "[+1, 0, +1, 0, -1, 0], mean +0.167, SE 0.307 (needs >= 2 SE); per-seed success is all or none, "
                   "and on the tuning seeds 100-105 it was [+1, 0, +0.6, 0, 0, +1]")
def test_claim_oni_beats_extrinsic_only_ppo_at_equal_steps():
    """ONI's claim at toy scale: on the sparse caption grid (7 x 5, 40 steps; a random walk reaches the
    stairs in about 0.5% of episodes), PPO with ONI-Retrieval's intrinsic reward (hash table of labels from
    a judge that is wrong 10% of the time, answers 256 env steps late, one answer per 20 steps) reaches the
    stairs more often than extrinsic-only PPO after the same 40960 environment steps.

    Held equal: env steps, PPO settings, network init and env seeds (the same training seed per pair).
    Threshold, fixed before the first run on these seeds: over 6 training seeds (0-5; the settings were
    chosen on seeds 100-105), the mean paired difference in greedy success on 100 shared evaluation grids
    is positive and at least 2 standard errors of the paired differences.
    """
    diffs = []
    for seed in range(6):
        rates = {}
        for variant in ("hash", "none"):
            oni = ONI(ONIConfig(variant=variant, seed=seed))
            oni.train()
            rates[variant] = float(oni.success_rate(100).mean())
        diffs.append(rates["hash"] - rates["none"])
    d = torch.tensor(diffs)
    se = float(d.std() / len(diffs) ** 0.5)
    print(f"ONI-hash minus extrinsic-only success per seed {diffs}; mean {float(d.mean()):+.3f}, SE {se:.3f}")
    assert float(d.mean()) > 0 and float(d.mean()) >= 2 * se
