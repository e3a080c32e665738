"""Learning-rate schedules of the shared loop: the refined schedule (Defazio et al., "When, Why and
How Much? Adaptive Learning Rate Scheduling by Refinement") against hand-computed numbers, the loop
following each schedule, config errors, and the claim on the quickstart's SFT and reward-model stages."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rlxf.algorithms.loop import (OptimConfig, linear_lambda, lr_lambda, median_filter, refined_schedule,
                                  train)
from rlxf.core.config import ConfigError, load_config
from rlxf.core.runs import Run
from rlxf.lab.config import PipelineConfig


@pytest.mark.parametrize("steps", [2, 5, 17, 200])
@pytest.mark.parametrize("sigma", [0.0, 0.1, 0.5])
def test_constant_norms_give_exactly_linear_decay(steps, sigma):
    eta = refined_schedule(np.full(steps, 0.7), sigma)
    np.testing.assert_allclose(eta, 1 - np.arange(steps) / (steps - 1), rtol=0, atol=1e-12)


def test_refined_schedule_hand_computed():
    # sigma 0 (width 1, no smoothing): w = [1, 1/4, 1, 1], sums after t = [9/4, 2, 1, 0],
    # eta = [9/4, 1/2, 1, 0] / (9/4)
    np.testing.assert_allclose(refined_schedule([1.0, 2.0, 1.0, 1.0], 0.0), [1, 2 / 9, 4 / 9, 0], atol=1e-12)
    # sigma 0.5, T 4: width 2*floor(1)+1 = 3; reflect padding [2 | 1 2 1 1 | 1] gives medians [2, 1, 1, 1],
    # w = [1/4, 1, 1, 1], sums after = [3, 2, 1, 0], eta = [3/4, 2, 1, 0] / 2: a warm-up from a large first norm
    np.testing.assert_allclose(refined_schedule([1.0, 2.0, 1.0, 1.0], 0.5), [0.375, 1, 0.5, 0], atol=1e-12)


def test_median_filter_reflects_the_ends():
    np.testing.assert_array_equal(median_filter(np.array([1.0, 5, 2, 8, 3]), 3), [5, 2, 5, 3, 8])
    np.testing.assert_array_equal(median_filter(np.array([1.0, 5, 2]), 1), [1, 5, 2])
    with pytest.raises(ValueError, match="odd"):
        median_filter(np.array([1.0, 2.0]), 2)


def test_bad_norms_are_refused():
    with pytest.raises(ValueError, match="finite and positive"):
        refined_schedule([1.0, 0.0, 1.0], 0.1)
    with pytest.raises(ValueError, match="at least 2"):
        refined_schedule([1.0], 0.1)


def _fit(run_dir, cfg: OptimConfig) -> list[dict]:
    """A linear regression through the shared loop; returns its logged metrics."""
    torch.manual_seed(0)
    x, y = torch.randn(16, 3), torch.randn(16, 1)
    model = torch.nn.Linear(3, 1)
    run = Run(run_dir, "")

    def loss_fn(micro, batch):
        loss = ((model(x[micro]) - y[micro]) ** 2).sum() / len(batch)
        return loss, {"loss": loss.item()}

    train(run, "fit", model, cfg, lambda step: list(range(16)), loss_fn, quiet=True)
    return run.metrics("fit")


def test_the_loop_follows_each_schedule(tmp_path):
    base = dict(steps=12, batch_size=16, lr=0.05, warmup_steps=3, checkpoint_every=0)
    cosine = _fit(tmp_path / "cosine", OptimConfig(**base))  # the default: unchanged
    linear = _fit(tmp_path / "linear", OptimConfig(**base, schedule="linear"))
    refined = _fit(tmp_path / "refined", OptimConfig(**base, schedule="refined", refine_from=str(tmp_path / "linear"),
                                                     refine_sigma=0.2))
    f_cos, f_lin = lr_lambda(3, 12), linear_lambda(3, 12)
    assert [r["lr"] for r in cosine] == [round(0.05 * f_cos(t), 6) for t in range(12)]
    assert [r["lr"] for r in linear] == [round(0.05 * f_lin(t), 6) for t in range(12)]
    assert linear[-1]["lr"] == round(0.05 / 9, 6) and f_lin(12) == 0.0
    norms = [r["grad_norm"] for r in linear]
    assert len(norms) == 12 and all(n > 0 for n in norms)  # a first run yields its per-step norms
    eta = refined_schedule(norms, 0.2)
    assert [r["lr"] for r in refined] == [round(0.05 * e, 6) for e in eta]
    assert max(r["lr"] for r in refined) == 0.05 and refined[-1]["lr"] == 0.0


def test_schedule_errors_name_the_setting(tmp_path):
    with pytest.raises(ConfigError, match="sft.optim.schedule: expected one of 'cosine', 'linear', 'refined'"):
        load_config(PipelineConfig, None, ['sft.optim.schedule="step"'])
    from rlxf.lab.pipeline import Pipeline

    run_dir = tmp_path / "run"
    cfg = load_config(PipelineConfig, None, [f'run.dir="{run_dir}"', 'reward_model.optim.schedule="refined"'])
    with pytest.raises(ConfigError, match="reward_model.optim.schedule = 'refined' needs reward_model.optim.refine_from"):
        Pipeline(cfg, quiet=True)
    cfg = load_config(PipelineConfig, None, [f'run.dir="{run_dir}"', 'sft.optim.schedule="refined"',
                                             f'sft.optim.refine_from="{tmp_path / "nowhere"}"'])
    with pytest.raises(ConfigError, match="sft.optim.refine_from: .*nowhere holds no metrics.jsonl"):
        Pipeline(cfg, quiet=True)
    cfg = load_config(PipelineConfig, None, [f'run.dir="{run_dir}"', "sft.optim.refine_sigma=-1"])
    with pytest.raises(ConfigError, match="sft.optim.refine_sigma must be >= 0"):
        Pipeline(cfg, quiet=True)
    assert not run_dir.exists()  # refused before anything was written
    base = dict(steps=12, batch_size=16, lr=0.05, checkpoint_every=0)
    _fit(tmp_path / "first", OptimConfig(**{**base, "steps": 10}, schedule="linear"))
    with pytest.raises(ConfigError, match="has 10 gradient norms of stage fit, but the refined run has optim.steps = 12"):
        _fit(tmp_path / "second", OptimConfig(**base, schedule="refined", refine_from=str(tmp_path / "first")))


def test_a_relative_refine_from_is_made_absolute_before_the_run_starts(tmp_path, monkeypatch):
    """Data-parallel learner workers run in another directory, so the checked config (and the run's
    config.toml) carries refine_from as an absolute path, resolved from where the command ran."""
    from rlxf.lab.pipeline import Pipeline

    (tmp_path / "first").mkdir()
    (tmp_path / "first" / "metrics.jsonl").write_text("")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(PipelineConfig, None, [f'run.dir="{tmp_path / "run"}"', 'sft.optim.schedule="refined"',
                                             'sft.optim.refine_from="first"'])
    lab = Pipeline(cfg, quiet=True)
    assert cfg.sft.optim.refine_from == str(tmp_path.resolve() / "first")
    assert f'refine_from = "{tmp_path.resolve() / "first"}"' in (lab.run.dir / "config.toml").read_text()


# -- the claim ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def schedule_results(tmp_path_factory):
    from rlxf.lab.schedules import compare_seed

    out = tmp_path_factory.mktemp("schedules")
    return [compare_seed(seed, out) for seed in (0, 1, 2)]


def _claim(results, stage):
    from rlxf.lab.schedules import summarise

    table = summarise(results)[stage]
    for other in ("linear", "cosine"):
        gain, se = table[f"refined-{other}"]
        assert gain + 2 * se < 0, f"{stage}: refined - {other} = {gain:+.4f} +- {se:.4f} ({table})"


@pytest.mark.slow
@pytest.mark.long
def test_refined_schedule_beats_linear_and_cosine_on_the_sft_stage(schedule_results):
    """Pre-registered claim (issue 22): on the quickstart's SFT stage (its settings and 600 steps), the
    refined schedule (from the linear run's gradient norms, sigma 0.1) reaches a lower held-out NLL per
    token than both linear and cosine decay: the paired-by-seed difference refined - other is below
    zero by at least 2 standard errors, over seeds 0, 1, 2."""
    _claim(schedule_results, "sft")


@pytest.mark.slow
@pytest.mark.long
@pytest.mark.xfail(strict=True, reason=(
    "measured (seeds 0-2, the quickstart's 200 steps): held-out expected BT loss refined 0.6472 +- 0.0033, "
    "linear 0.5339 +- 0.0063, cosine 0.5344 +- 0.0071; refined - linear +0.1133 +- 0.0031, refined - cosine "
    "+0.1128 +- 0.0037 (paired by seed): refined is worse. In the linear run the reward model's gradient "
    "norms rise about fivefold (median 0.21 over its 20 warm-up steps, about 1.0 after), so w = g^-2 puts "
    "the schedule into the first steps: only 13 of 200 steps keep more than 10% of the peak rate"))
def test_refined_schedule_beats_linear_and_cosine_on_the_reward_model_stage(schedule_results):
    """Pre-registered claim (issue 22): on the quickstart's reward-model stage (its settings and 200
    steps, from the seed's linear-schedule SFT model and comparisons), the refined schedule reaches a
    lower held-out expected Bradley-Terry loss than both linear and cosine decay: the paired-by-seed
    difference refined - other is below zero by at least 2 standard errors, over seeds 0, 1, 2."""
    _claim(schedule_results, "reward_model")
