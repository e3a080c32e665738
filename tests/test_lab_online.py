"""The online over-optimisation lab (configs/lab_overoptimisation.toml) shows what it exists for.

Three seeds (run.seed = 0, 1, 2) of the lab as documented, in three processes at once. Thresholds,
fixed before the first run ("beyond noise": paired over the 3 seeds, standard error = sample
standard deviation of the 3 per-seed differences / sqrt(3)):

- Turn-down: single-RM PPO's training gold, averaged over 20-step windows, falls from its peak
  window to its last window by more than 0 and by at least 2 standard errors, while its proxy
  (the reward model's score) over the same two windows rises by more than 0 and at least 2
  standard errors.
- Mitigation: on 500 held-out prompts, at least one of ppo_wco, ppo_uwo, ppo_chi2 and
  constrained ends with more gold than single-RM PPO, by more than 0 and at least 2 standard
  errors.
"""

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from rlxf.lab.online import compare_runs, seed_comparison, turn_down

ROOT = Path(__file__).resolve().parents[1]
SEEDS = (0, 1, 2)
MITIGATIONS = ("ppo_wco", "ppo_uwo", "ppo_chi2", "constrained")


def _beyond_noise(mean_se: tuple[float, float]) -> bool:
    mean, se = mean_se
    return mean > 0 and mean >= 2 * se


@pytest.fixture(scope="module")
def seed_runs(tmp_path_factory):
    """The documented command for each seed, all three processes (one thread each) at once: on two cores
    they take about 1.5 runs' time, where two at a time took 2 (the third ran alone on one core).
    Each process is single-threaded and seeded, so its figures do not depend on what runs beside it."""
    tmp = tmp_path_factory.mktemp("overopt")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(seed: int) -> Path:
        out = tmp / f"overopt_{seed}"
        subprocess.run([sys.executable, "-m", "rlxf.cli", "run", "configs/lab_overoptimisation.toml", "--quiet",
                        "--set", f"run.seed={seed}", "--set", f'run.dir="{out}"'], cwd=ROOT, env=env, check=True)
        return out

    with ThreadPoolExecutor(len(SEEDS)) as pool:
        return list(pool.map(run, SEEDS))


@pytest.mark.slow
def test_single_rm_ppo_over_optimises_and_a_mitigation_keeps_more_gold(seed_runs):
    summaries = [json.loads((d / "summary.json").read_text()) for d in seed_runs]
    print("\n" + compare_runs([str(d) for d in seed_runs]))
    c = seed_comparison(summaries)
    assert _beyond_noise(c["gold_drop"]), c["gold_drop"]
    assert _beyond_noise(c["proxy_rise"]), c["proxy_rise"]
    gains = {m: c["gain_vs_baseline"][m] for m in MITIGATIONS}
    assert any(_beyond_noise(g) for g in gains.values()), gains
    for d in seed_runs:  # the turn-down is drawn against the training step in the report
        assert "online_curves.png" in (d / "report.html").read_text()
        assert (d / "online_curves.png").stat().st_size > 1000


def test_turn_down_and_seed_comparison_on_hand_computed_numbers():
    # the rm monitor, when logged, is the proxy (ensemble runs learn from another reward)
    curve = [{"gold_reward": g, "proxy_reward": 9.0, "rm_reward": p}
             for g, p in zip([1, 1, 3, 3, 0, 0, 5], [0, 0, 1, 1, 2, 2, 7])]
    assert turn_down(curve, window=2) == {"train_peak_step": 2, "train_peak_gold": 3.0, "train_peak_proxy": 1.0,
                                          "train_end_gold": 0.0, "train_end_proxy": 2.0}  # the partial window is left out
    assert turn_down(curve[:1], window=2)["train_end_gold"] == 1.0  # shorter than a window: one window

    def summary(drop: float, gain: float) -> dict:
        ppo = {"gold": -1.0, "kl": 3.0, "train_peak_gold": 2.0, "train_end_gold": 2.0 - drop,
               "train_peak_proxy": 0.0, "train_end_proxy": 1.0}
        return {"sft": {"gold": 0.0, "kl": 0.0}, "ppo": ppo, "x": {"gold": -1.0 + gain, "kl": 1.0}}

    c = seed_comparison([summary(3.0, 1.0), summary(1.0, 1.0), summary(2.0, 4.0)])
    assert c["gold_drop"] == pytest.approx((2.0, 1.0 / 3**0.5))  # drops 3, 1, 2: sd 1 over sqrt(3) seeds
    assert c["proxy_rise"] == pytest.approx((1.0, 0.0))
    assert c["gain_vs_baseline"]["x"] == pytest.approx((2.0, 3**0.5 / 3**0.5))  # gains 1, 1, 4: sd sqrt(3)
    assert set(c["gain_vs_baseline"]) == {"x"} and c["gold"]["sft"] == (0.0, 0.0)
