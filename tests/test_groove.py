"""GROOVE: the regret-prioritised level buffer, held-out levels, and the pre-registered generalisation check."""

import pytest
import torch

from rlxf.algorithms.control.lpo import InnerConfig, grouped, train_agents
from rlxf.algorithms.control.lpo_meta import (LEVEL_RANGES, ESConfig, LevelBuffer, held_out_levels, load_drift,
                                              sample_levels)
from rlxf.algorithms.evaluate import paired_gain


def test_rank_prioritised_replay_probabilities_and_replacement():
    """Scores [1, 3, 2] have ranks [3, 1, 2]: P proportional to 1/rank, [2/11, 6/11, 3/11]. A full buffer
    swaps its lowest-scoring level for a new one only if the new score is higher; replays rescore."""
    buf = LevelBuffer(size=3)
    for i, s in enumerate([1.0, 3.0, 2.0]):
        buf.update(None, {"length": float(i)}, s, antagonist=10.0 + i)
    assert buf.replay_probs().tolist() == pytest.approx([2 / 11, 6 / 11, 3 / 11])
    buf.update(None, {"length": 9.0}, 0.5, antagonist=0.0)  # lower than every score: not kept
    assert [lv["length"] for lv in buf.levels] == [0.0, 1.0, 2.0]
    buf.update(None, {"length": 9.0}, 1.5, antagonist=5.0)  # beats the lowest (1.0): replaces it
    assert [lv["length"] for lv in buf.levels] == [9.0, 1.0, 2.0] and buf.antagonist[0] == 5.0
    buf.update(1, buf.levels[1], -4.0, antagonist=11.0)  # a replayed level gets its new regret
    assert buf.scores == [1.5, -4.0, 2.0]
    counts = torch.bincount(torch.tensor([buf.sample(torch.Generator().manual_seed(s)) for s in range(600)]), minlength=3)
    assert counts[2] > counts[0] > counts[1]  # highest regret replayed most


def test_levels_inside_and_outside_the_training_box():
    lv = sample_levels(200, torch.Generator().manual_seed(0))
    for k, (lo, hi) in LEVEL_RANGES.items():
        assert lo <= lv[k].min() and lv[k].max() <= hi
    held = held_out_levels(8)
    outside = held["outside"]
    assert len(outside["length"]) == 8
    for i in range(8):
        assert any(not (lo <= float(outside[k][i]) <= hi) for k, (lo, hi) in LEVEL_RANGES.items())
    with pytest.raises(ValueError, match="levels"):
        ESConfig(levels="plr")


def test_groove_meta_training_runs_end_to_end():
    """Three ES generations under GROOVE at a tiny budget: every generation scores its levels by regret, the
    buffer fills with the first generation's new levels, later pairs may replay them, and phi moves."""
    from rlxf.algorithms.control.lpo import InnerConfig as IC
    from rlxf.algorithms.control.lpo_meta import distil_clip, meta_train
    es = ESConfig(generations=3, pairs=2, levels="groove", buffer_size=4, seed=1)
    start = distil_clip(es.hidden, False, steps=20)
    phi, hist = meta_train(es, IC(updates=2, n_envs=2, n_steps=4, eval_envs=2), phi0=start, progress=False)
    assert [h["generation"] for h in hist] == [0, 1, 2] and hist[0]["replayed"] == 0
    assert all(abs(h["regret"]) <= 500 for h in hist) and not torch.equal(phi, start)


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="measured 2026-12-07 (first run): GROOVE 345.9, LPO 355.7 mean final return over "
                   "96 held-out (level, agent) pairs, GROOVE - LPO -9.8 +- 11.8 paired SE (inside the box -15.6 +- 18.2): "
                   "no gain at 60 generations")
def test_groove_drift_generalises_to_held_out_levels_better_than_uniform_lpo():
    """Pre-registered (committed before its first run). The shipped GROOVE drift against the shipped LPO
    drift, both meta-trained by the same script at the same number of ES generations (60) on CartPole
    levels (uniform for LPO, regret-prioritised for GROOVE), on 32 held-out levels (held_out_levels(16):
    16 inside the training box, 16 outside), 3 agents per level and drift with the same initial weights
    (seed 31337), the meta-training lifetime (30 updates). Claim: the mean final greedy return over the
    96 (level, agent) pairs is higher under GROOVE by at least 2 paired standard errors."""
    held = held_out_levels(16)
    levels = {k: torch.cat([held["inside"][k], held["outside"][k]]).repeat(3) for k in LEVEL_RANGES}
    n = len(levels["length"])
    both = {k: torch.cat([v, v]) for k, v in levels.items()}
    out = train_agents(grouped([load_drift("groove"), load_drift("lpo")], n), 2 * n, InnerConfig(), seed=31337,
                       levels=both, init_pairs=True)["final"]
    gain, se = paired_gain(out[:n].numpy(), out[n:].numpy())
    inside = torch.cat([torch.arange(16) + 32 * i for i in range(3)])
    g_in, se_in = paired_gain(out[inside].numpy(), out[n + inside].numpy())
    print(f"held-out levels: GROOVE {out[:n].mean():.1f}, LPO {out[n:].mean():.1f}, gain {gain:+.1f} +- {se:.1f} "
          f"(inside the box {g_in:+.1f} +- {se_in:.1f})")
    assert gain >= 2 * se
