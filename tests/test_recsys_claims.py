"""Recommendation RL claims, pre-registered (committed before their first run) on fresh seeds 0, 1, 2
(settings were tried on seed 100 only). Each trains several agents per seed: minutes on 2 cores, so
slow AND long (``make test-long``); the figures and commands are in docs/control.md.

TSCAC (``python -m rlxf.algorithms.control.tscac --seeds 0 1 2``): 30k env steps per stage (TSCAC: two
stage-1 policies and stage 2; the Lagrangian gets the same 90k in one run), scored on 400 fresh sessions
per seed (seed 50_000 + s), policies sampling. Claim: TSCAC's mean watch time is at least 95% of the
Lagrangian's AND its constraint violation (sum over likes and shares of max(0, 1 - rate / target)) is
lower by >= 2 paired standard errors over the 3 seeds.

Sim2Rec (``python -m rlxf.algorithms.control.sim2rec --seeds 0 1 2``): 60k env steps each; held-out user
model ``HELDOUT``, 400 fresh sessions per seed (seed 60_000 + s). Claim: Sim2Rec's mean held-out watch time
beats the single-(nominal-)simulator PPO policy's by >= 2 paired standard errors over the 3 seeds.
"""

import pytest

from rlxf.algorithms.evaluate import mean_se, paired_gain

pytestmark = [pytest.mark.slow, pytest.mark.long]


@pytest.fixture(scope="module")
def tscac_rows():
    from rlxf.algorithms.control.tscac import compare

    return compare(seeds=(0, 1, 2), steps=30_000, n_episodes=400, progress=False)


@pytest.fixture(scope="module")
def sim2rec_rows():
    from rlxf.algorithms.control.sim2rec import compare

    return compare(seeds=(0, 1, 2), steps=60_000, n_episodes=400, progress=False)


def _by(rows, method, key):
    return [r[key] for r in sorted(rows, key=lambda r: r["seed"]) if r["method"] == method]


@pytest.mark.xfail(strict=True, reason="first run (seeds 0,1,2, 30k steps per stage, 400 sessions): TSCAC watch 5.26/5.26/4.92 "
                   "(mean 5.149) vs the Lagrangian's 6.06/6.13/6.16 (mean 6.117), 84% of it; violation TSCAC 0.094/0.102/0.206 "
                   "(mean 0.134) vs 0.000 for the Lagrangian (+0.134 +- 0.036 paired): TSCAC's fixed lambdas miss both targets")
def test_tscac_violates_less_at_comparable_watch_time(tscac_rows):
    t_watch, l_watch = _by(tscac_rows, "tscac", "watch"), _by(tscac_rows, "lagrangian", "watch")
    assert mean_se(t_watch)[0] >= 0.95 * mean_se(l_watch)[0], (t_watch, l_watch)
    gain, se = paired_gain(_by(tscac_rows, "lagrangian", "violation"), _by(tscac_rows, "tscac", "violation"))
    assert gain > 0 and gain >= 2 * se, (gain, se, tscac_rows)


def test_sim2rec_transfers_better_than_one_simulator(sim2rec_rows):
    gain, se = paired_gain(_by(sim2rec_rows, "sim2rec", "watch"), _by(sim2rec_rows, "single_sim", "watch"))
    assert gain > 0 and gain >= 2 * se, (gain, se, sim2rec_rows)
