"""PROMST on the multi-step corridor game (rlxf.tasks.prompt_game, rlxf.algorithms.prompts.promst)."""

import numpy as np
import pytest

from rlxf.algorithms.evaluate import mean_se, paired_gain
from rlxf.algorithms.prompts import promst as S
from rlxf.tasks import prompt_game as G
from rlxf.tasks import prompt_tasks as pt


@pytest.fixture
def game():
    """The game played by its hidden rule (no model training: the fast tests)."""
    return G.PromptGame(respond=G.rule_act)


@pytest.fixture(scope="module")
def trained():
    return G.PromptGame()


def test_rule_and_failure_types_by_hand():
    assert G.rule_action([], 0, 5) == "left" and G.rule_action(["wall"], 0, 5) == "right"
    assert G.rule_action([], 2, 5) == "go" and G.rule_action(["say"], 2, 5) == "right"
    assert G.rule_action([], 3, 5) == "left" and G.rule_action(["ahead"], 3, 5) == "right"
    assert G.rule_action(["rush", "say"], 4, 9) == "go" and G.rule_action(["rush"], 0, 9) == "right"
    assert G.rule_action(["careful", "wall", "say", "ahead"], 4, 5) == "left"
    steps = [G.Step(0, "left", "at 0 goal 3")] * 6
    assert G.failure_type(steps, False) == "loop" and G.failure_type(steps, True) is None
    assert G.failure_type(steps[:3] + [G.Step(2, "go", "invalid")], False) == "format"
    moving = [G.Step(c, "x", "") for c in [2, 3, 2, 3, 2, 3]]
    assert G.failure_type(moving, False) == "timeout"


def test_rule_play_by_hand(game):
    """Episodes under the rule, traced by hand: start 0 goal 3 with no prompt loops at 0 (metric 0);
    with 'wall' it walks to 2 and says 'go' there (format, metric 2/3); with wall, say, ahead it arrives."""
    env_eps = {(e.start, e.goal): e for e in game.episodes("", "test") + game.episodes("", "train")}
    assert (0, 3) in env_eps and env_eps[0, 3].failure == "loop" and env_eps[0, 3].metric == 0.0
    wall = {(e.start, e.goal): e for e in game.episodes(pt.join(["wall"], G.GAME_FRAGMENTS), "test")
            + game.episodes(pt.join(["wall"], G.GAME_FRAGMENTS), "train")}
    assert wall[0, 3].failure == "format" and wall[0, 3].metric == pytest.approx(2 / 3)
    assert [s.cell for s in wall[0, 3].steps[:3]] == [0, 1, 2]
    full = pt.join(["wall", "say", "ahead"], G.GAME_FRAGMENTS)
    assert game.score([full], "test")[0] == 1.0 and game.score([""], "test")[0] < 0.5
    eps = game.episodes("", "train")
    assert len(eps) == 12 and all((e.failure is None) == (e.metric == 1.0) for e in eps)
    starts0 = [e for e in eps if e.start == 0]
    assert all(e.failure == "loop" for e in starts0)
    before = game.calls["train"]
    game.score(["", full], "train")
    assert game.calls["train"] - before == 2


@pytest.mark.slow
def test_trained_policy_follows_the_rule(trained):
    """The frozen policy's scores are the rule's to within 0.05 (slow only without cached weights)."""
    prompts = [pt.join(n, G.GAME_FRAGMENTS) for n in [["wall", "say", "ahead"], [], ["rush"], ["wall"]]]
    prompts.append(trained.hand_written)
    got = trained.score(prompts, "test")
    want = [trained.rule_score(p, "test") for p in prompts]
    assert np.abs(got - want).max() <= 0.05, (got, want)


def test_feedback_rules_summary_and_score_model():
    ep = G.Episode(0, 3, [G.Step(0, "left", "at 0 goal 3")] * 6, 0.0, "loop")
    text = S.rule_feedback(ep)
    assert "stuck in a local loop" in text and "At cell 0 the response was 'left'" in text
    eps = [ep, ep, G.Episode(2, 5, [G.Step(2, "go", "invalid")], 0.0, "format")]
    lines = S.grouped_feedback([(e.failure, S.rule_feedback(e)) for e in eps], S.simulated_summariser())
    assert [ln.split(":")[0] for ln in lines] == ["- [format] x1", "- [loop] x2"]
    # the ridge score model recovers additive fragment effects
    lib = G.GAME_FRAGMENTS
    prompts = [pt.join(n, lib) for n in [[], ["wall"], ["say"], ["wall", "say"], ["ahead"], ["polite"]]]
    scores = [0.1, 0.4, 0.3, 0.6, 0.2, 0.1]
    pred = S.ridge_predict(prompts, scores, [pt.join(["wall", "say", "ahead"], lib)], lam=1e-6)
    assert pred[0] == pytest.approx(0.7, abs=1e-3)  # 0.1 + 0.3 + 0.2 + 0.1


def test_promst_spends_the_budget_and_improves(game):
    res = S.run("promst", game, 16, seed=0)
    assert len(res.trace) == 16 and res.trace[0] == game.hand_written
    vals = game.score(res.trace, "train")
    assert np.all(np.diff(vals) >= 0) and vals[-1] > vals[0]
    with pytest.raises(ValueError, match="unknown PROMST variant"):
        S.run("apo", game, 5, 0)


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="first run (seeds 100-107, budget 20): promst 1.000 +- 0.000, ape 0.911 +- 0.089 "
                   "(1.000 on 7 of 8 seeds, 0.291 on seed 100): gain +0.089, paired SE 0.089 (1.0 SE); this small "
                   "game is solved by resampling too on most seeds; not retuned")
def test_claim_rule_feedback_beats_ape_resampling(trained):
    """Pre-registered (committed before its first run) claim, PROMST (C2, expectation 1): at an equal
    budget of 20 evaluations on the 12 training episodes, PROMST with rule feedback grouped by type and
    summarised (simulated roles, editor error rate 0.2) ends with a prompt whose mean metric on the 32 test
    episodes beats APE-style resampling (the same tree, the editor given no feedback) by at least 2 paired
    standard errors over the fresh seeds 100-107. The budget of 20 was picked on seeds 0-2 (at 40 both
    often solve this small game: promst 1.000, ape 0.764; at 20: 1.000 and 0.318)."""
    res = S.compare(trained, 20, list(range(100, 108)), variants=("promst", "ape"))
    gain, se = paired_gain(res["promst"]["test"], res["ape"]["test"])
    assert gain > 0 and gain >= 2 * se, (gain, se, mean_se(res["promst"]["test"]), mean_se(res["ape"]["test"]))
