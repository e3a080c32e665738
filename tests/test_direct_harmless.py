"""Direct harmless RLHF (Mistral-Plus, issue 23): the pipeline without SFT, the task's harmful-word
cost, and the cost-constrained RLOO (Lagrange multiplier with its dual step), hand-computed."""

from types import SimpleNamespace

import pytest
import torch

from rlxf.algorithms.online.constrained import CostConstrainedRLOO, cost_penalised_advantages, dual_ascent_step
from rlxf.core.config import load_config
from rlxf.lab.config import PipelineConfig
from rlxf.lab.pipeline import Pipeline, PipelineError
from rlxf.lab.stages import run_identity
from rlxf.tasks.hidden_pref import HiddenPrefConfig, HiddenPreferenceTask

HARMFUL = ["mura", "keme", "pavo", "pode"]  # the four highest-value words of task seed 0


def test_cost_penalised_advantages_by_hand():
    r, c = torch.tensor([1.0, -1.0, 0.5]), torch.tensor([2.0, 0.0, -2.0])
    # lambda = 0.5: (1 - 1) / 1.5 = 0, (-1 - 0) / 1.5, (0.5 + 1) / 1.5 = 1
    assert cost_penalised_advantages(r, c, 0.5).tolist() == pytest.approx([0.0, -2 / 3, 1.0])
    assert cost_penalised_advantages(r, c, 0.0).tolist() == pytest.approx(r.tolist())


def test_dual_ascent_step_by_hand():
    assert dual_ascent_step(0.0, 0.7, 0.2, 0.5) == pytest.approx(0.25)  # over the limit: up by 0.5 * 0.5
    assert dual_ascent_step(1.0, 0.0, 0.2, 0.5) == pytest.approx(0.9)  # under: down by 0.5 * 0.2
    assert dual_ascent_step(0.05, 0.0, 0.2, 0.5) == 0.0  # never below zero


def test_cost_constrained_rloo_prepare_by_hand():
    # one prompt, k = 2: rewards (KL-shaped token rewards summed) 3 and 1, costs 1 and 0
    batch = SimpleNamespace(k=2, token_rewards=torch.tensor([[1.0, 2.0], [1.0, 0.0]]),
                            parts={"cost": torch.tensor([1.0, 0.0])}, stats={}, extra={})
    m = CostConstrainedRLOO(limit=0.2, lagrange_lr=0.5, init_lambda=1.0)
    m.prepare(batch, None)
    # RLOO: A_R = (2, -2), A_c = (1, -1); (A_R - 1 * A_c) / 2 = (0.5, -0.5)
    assert batch.extra["adv"].tolist() == pytest.approx([0.5, -0.5])
    assert batch.stats["lagrange_lambda"] == 1.0 and batch.stats["cost"] == pytest.approx(0.5)
    assert m.lam == pytest.approx(1.0 + 0.5 * (0.5 - 0.2))
    assert m.state() == {"lagrange_lambda": pytest.approx(1.15)}
    fresh = CostConstrainedRLOO(limit=0.2)
    fresh.load_state(m.state())
    assert fresh.lam == pytest.approx(1.15)
    with pytest.raises(ValueError, match="method_args.cost = 'harm'.*it has: cost"):
        CostConstrainedRLOO(limit=0.2, cost="harm").prepare(batch, None)


@pytest.mark.parametrize("args,match", [({"limit": -0.1}, "limit must be a number >= 0"),
                                        ({"limit": 0.1, "lagrange_lr": float("nan")}, "lagrange_lr")])
def test_cost_constrained_rloo_rejects_bad_settings(args, match):
    with pytest.raises(ValueError, match=match):
        CostConstrainedRLOO(**args)


def test_task_cost_counts_harmful_words(task):
    harmful = HiddenPreferenceTask(HiddenPrefConfig(harmful_words=("mura", "keme")))
    prompt = task.prompts("test")[0]
    assert harmful.cost(prompt, "mura keme mura pavo") == 3.0
    assert harmful.cost(prompt, "") == 0.0
    assert task.cost(prompt, "mura keme") == 0.0  # no harmful words, no cost
    # gold does not change with the harmful words
    assert harmful.gold(prompt, "mura keme pavo") == task.gold(prompt, "mura keme pavo")
    with pytest.raises(ValueError, match="task.harmful_words: 'nope' not in the task's words"):
        HiddenPreferenceTask(HiddenPrefConfig(harmful_words=("mura", "nope")))
    with pytest.raises(ValueError, match="lists a word twice"):
        HiddenPreferenceTask(HiddenPrefConfig(harmful_words=("mura", "mura")))


def test_new_settings_at_their_defaults_leave_the_run_identity_as_it_was():
    text = run_identity(PipelineConfig())
    assert "enabled = true\ncorpus_size" not in text and "harmful_words" not in text
    assert "[sft]\ncorpus_size = 20000" in text  # the section reads as before these settings existed
    changed = run_identity(load_config(PipelineConfig, None, ["sft.enabled=false", 'task.harmful_words=["mura"]']))
    assert "[sft]\nenabled = false" in changed and 'harmful_words = ["mura"]' in changed


def config(tmp_path, *extra):
    return load_config(PipelineConfig, None, [
        f'run.dir="{tmp_path / "run"}"', "sft.enabled=false", f"task.harmful_words={HARMFUL}".replace("'", '"'),
        "comparisons.n_pairs=100", "reward_model.optim.steps=10", "reward_model.held_out_pairs=50",
        "dpo.enabled=false", "best_of_n.enabled=false", 'rloo.method="cost_constrained"',
        "rloo.method_args={limit=0.2}", "rloo.optim.steps=8", "rloo.optim.batch_size=16",
        "rloo.optim.checkpoint_every=4", "rloo.optim.warmup_steps=0", "eval.n_prompts=50", *extra])


@pytest.mark.parametrize("extra,match", [
    (['task.harmful_words=[]'], "set task.harmful_words"),
    (["rloo.method_args={limit=-1.0}"], "rloo.method_args.limit must be a number >= 0"),
    (["rloo.method_args={limit=0.2, lagrange_rate=1.0}"], "cost_constrained has no parameter lagrange_rate"),
    (['rloo.method="grpo"'], "rloo.method: the rloo stage trains with 'rloo' or 'cost_constrained'"),
    (['task.harmful_words=["zzz"]'], "task: task.harmful_words: 'zzz' not in the task's words"),
])
def test_bad_settings_stop_the_run_before_any_stage(tmp_path, extra, match):
    with pytest.raises(PipelineError, match=match):
        Pipeline(config(tmp_path, *extra), quiet=True, log=lambda _m: None)
    assert not (tmp_path / "run").exists()


def test_only_the_pipeline_lab_can_skip_sft(tmp_path):
    from rlxf.lab.online import OnlineLab

    cfg = load_config(OnlineLab.Config, None, [f'run.dir="{tmp_path / "run"}"', "sft.enabled=false"])
    with pytest.raises(PipelineError, match="sft.enabled = false: only the pipeline lab"):
        OnlineLab(cfg, quiet=True, log=lambda _m: None)


def test_pipeline_without_sft_trains_from_the_base_and_resumes(tmp_path):
    messages = []
    pipe = Pipeline(config(tmp_path), quiet=True, log=messages.append)
    summary = pipe.execute()
    assert [n for n, _ in pipe.stages()] == ["base", "comparisons", "reward_model", "rloo", "evaluate"]
    assert not (tmp_path / "run" / "stages" / "sft").exists() and not pipe.run.metrics("sft")
    assert list(summary) == ["base", "rloo"]  # gains and KL against the base policy
    assert summary["base"]["kl"] == pytest.approx(0.0, abs=1e-6) and summary["rloo"]["kl"] > 0
    assert {"gain_vs_base", "cost_mean", "cost_se"} <= summary["rloo"].keys()
    rows = pipe.run.metrics("rloo")
    assert all("lagrange_lambda" in r and "cost" in r for r in rows)
    # the untrained tiny base says the harmful words far more often than the limit: lambda rose
    assert rows[0]["cost"] > 0.2 and rows[-1]["lagrange_lambda"] > 0
    html = (tmp_path / "run" / "report.html").read_text()
    assert "gain vs base" in html and "against the base policy" in html
    messages.clear()
    assert Pipeline(config(tmp_path), quiet=True, log=messages.append).execute() == summary
    assert messages and all("done already" in m for m in messages)
