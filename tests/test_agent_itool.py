"""iTool (rlxf.agents.itool): deficiency mining finds the first call that leaves the gold plan, fine-grained
pairs share the context before it and differ only in that call, pair training prefers the ground-truth
call, the warm-up's difficulty labels; and (slow) the claim against plain SFT."""

from __future__ import annotations

import pytest
import torch

from rlxf.agents.episodes import TextEpisode
from rlxf.agents.itool import (StepPair, first_deficiency, gold_episodes, gold_turns, level_of, make_policy, mine,
                               train_pairs)
from rlxf.agents.offline import window
from rlxf.agents.render import context_ids
from rlxf.agents.tasks.tools import make
from rlxf.algorithms.loop import OptimConfig
from rlxf.core.runs import Run


def _question(level: int) -> int:
    return next(s for s in range(100) if level_of(s) == level)


def test_first_deficiency_is_the_first_call_off_the_gold_plan():
    seed = _question(1)
    env = make()
    env.reset(seed)
    plan = env.plan()  # lookup, calc p * q, answer
    p, q = int(plan[1].split()[1]), int(plan[1].split()[3])
    wrong = f"calc {p} * {q + 1}"
    ep = TextEpisode(env="tools", seed=seed, observations=["", "", ""], actions=[plan[0], wrong])
    assert first_deficiency(ep) == (1, plan[1])
    assert first_deficiency(TextEpisode(env="tools", seed=seed, observations=[""] * 4, actions=plan)) is None
    assert first_deficiency(TextEpisode(env="tools", seed=seed, observations=["", ""], actions=["answer 3"])) == (0, plan[0])


def test_mined_pairs_share_the_prefix_and_differ_in_the_call():
    policy = make_policy(0, n_layer=1, n_embd=16)  # untrained: it fails every question
    seeds = list(range(6))
    pairs, rate = mine(policy, seeds, torch.Generator().manual_seed(0))
    assert rate == 0.0 and 0 < len(pairs) <= len(seeds)
    for pair in pairs:
        assert pair.chosen != pair.rejected and pair.chosen[-1] == policy.tokenizer.eos_token_id
        assert policy.decode(pair.chosen).split()[0] in ("lookup",)  # an untrained policy is off at turn 0
        assert pair.level in (0, 1, 2)
    # the context is exactly the prompt of that turn: the first observation only, at turn 0
    assert pairs[0].context == context_ids(policy, TextEpisode(env="tools", seed=0, observations=[make().reset(0)]))


def test_gold_turn_difficulty_is_the_episode_length():
    policy = make_policy(0, n_layer=1, n_embd=16)
    eps = gold_episodes(list(range(10)))
    turns, difficulty = gold_turns(policy, eps)
    assert len(turns) == len(difficulty) == sum(len(e) for e in eps)
    assert difficulty[: len(eps[0])] == [len(eps[0])] * len(eps[0])
    ep = eps[0]
    assert turns.contexts[1] == context_ids(policy, window(ep, 1, None))


def test_pair_training_prefers_the_ground_truth_call(tmp_path):
    policy = make_policy(0, n_layer=1, n_embd=16)
    ctx = policy.encode(["user: task 3 apple\n"])[0]
    good, bad = policy.encode_responses(["calc 7 * 3", "calc 7 * 4"])
    pairs = [StepPair(ctx, good, bad, 1)] * 4

    def margin() -> float:
        with torch.no_grad():
            c, r = policy.steps([ctx], [good]), policy.steps([ctx], [bad])
            return float(c.mean() - r.mean())

    before = margin()
    train_pairs(Run(tmp_path, "t", fresh=True), "pairs", policy, pairs,
                OptimConfig(steps=10, batch_size=4, lr=1e-2, checkpoint_every=0), beta=2.5, gamma=0.5, nll_weight=0.0)
    assert margin() > before + 1.0


def test_replay_adds_the_gold_turns_nll(tmp_path):
    policy = make_policy(0, n_layer=1, n_embd=16)
    turns, _ = gold_turns(policy, gold_episodes(list(range(3))))
    ctx = policy.encode(["user: task 3 apple\n"])[0]
    good, bad = policy.encode_responses(["calc 7 * 3", "calc 7 * 4"])

    def gold_nll() -> float:
        with torch.no_grad():
            s = policy.steps(turns.contexts, turns.actions)
            return float(-(s.logps * s.mask).sum() / s.mask.sum())

    before = gold_nll()
    train_pairs(Run(tmp_path, "t", fresh=True), "pairs", policy, [StepPair(ctx, good, bad, 1)] * 4,
                OptimConfig(steps=10, batch_size=4, lr=1e-2, checkpoint_every=0), 2.5, 0.5, 0.0, replay=turns)
    assert gold_nll() < before - 0.5


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="measured on seed 0, 500 held-out questions: SFT 0.794, iTool 0.796, "
                   "paired difference +0.002 (SE 0.018), under the 2 SE threshold")
def test_itool_beats_more_sft_on_held_out_questions(tmp_path):
    """The claim (iTool: iterative RFT on mined fragment deficiencies improves tool use over plain SFT).

    Threshold, set before the first run on the reported seed: on seed 0, over 500 held-out questions
    played by both policies (the same questions and sampling seed, so paired), iTool's success minus
    SFT's is at least 2 paired standard errors above 0. Held equal: the easy-to-hard warm-up (shared),
    the gradient steps after it (2 rounds x 40 for iTool, 80 for SFT), the rows per step (iTool: 32 pairs
    + 32 gold turns; SFT: 64 gold turns) and the gold training questions. Settings were chosen on seed 11
    only (there: +0.088, paired SE 0.018, against an SFT baseline of 32 rows a step)."""
    from rlxf.agents.itool import experiment
    from rlxf.agents.perf import paired

    out = experiment(str(tmp_path / "run"), seed=0)
    diff, se = paired(out["sft"], out["itool"])
    print(f"sft {sum(out['sft']) / 500:.3f} itool {sum(out['itool']) / 500:.3f} diff {diff:+.3f} se {se:.3f}")
    assert diff >= 2 * se
