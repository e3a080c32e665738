"""The direct-preference lab end to end through the CLI, on the session pipeline's SFT model and
comparisons with a small budget: every objective gets a row, a plot and held-out metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlxf import cli

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "lab_direct.toml"
OBJECTIVES = ["dpo", "simpo", "kto"]


@pytest.fixture(scope="module")
def lab_run(pipeline_run, tmp_path_factory):
    pipe, _ = pipeline_run
    run_dir = tmp_path_factory.mktemp("direct") / "lab"
    comparisons = pipe.run.dir / "stages" / "comparisons" / "comparisons.jsonl"
    sets = [f'run.dir="{run_dir}"', f'direct.sft_model="{pipe.run.dir / "stages" / "sft" / "model"}"',
            f'comparisons.path="{comparisons}"', f"direct.objectives={json.dumps(OBJECTIVES)}",
            "direct.optim.steps=6", "direct.optim.batch_size=16", "direct.optim.warmup_steps=2",
            "direct.held_out_pairs=48", "eval.n_prompts=64"]
    argv = ["run", str(CONFIG), "--quiet"] + [x for s in sets for x in ("--set", s)]
    assert cli.main(argv) == 0
    return run_dir, argv


def test_every_objective_is_trained_evaluated_and_reported(lab_run):
    run_dir, _ = lab_run
    summary = json.loads((run_dir / "summary.json").read_text())
    assert list(summary) == ["sft", *OBJECTIVES]
    assert abs(summary["sft"]["kl"]) < 1e-3  # SFT samples scored by SFT itself: zero KL
    for name, row in summary.items():
        assert row["gold_se"] > 0 and row["kl_se"] >= 0 and row["mean_length"] > 0, name
    html = (run_dir / "report.html").read_text()
    for name in OBJECTIVES:
        assert name in html
    assert (run_dir / "gold_vs_kl.png").stat().st_size > 1000 and (run_dir / "reward_accuracy.png").is_file()


def test_held_out_metrics_start_at_the_reference_and_move(lab_run):
    run_dir, _ = lab_run
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r["stage"] == "direct_dpo_eval"]
    assert [r["step"] for r in evals] == [0, 6]
    assert evals[0]["kl"] == pytest.approx(0.0, abs=1e-6) and evals[0]["reward_accuracy"] == 0.0
    assert evals[1]["kl"] > 0 and evals[1]["reward_margin"] > 0
    done = json.loads((run_dir / "stages" / "direct_kto" / "done.json").read_text())
    assert done["held_out"]["kl"] > 0 and 0 <= done["held_out"]["reward_accuracy"] <= 1


def test_rerun_skips_finished_stages(lab_run, capsys):
    run_dir, argv = lab_run
    before = (run_dir / "summary.json").read_text()
    assert cli.main([a for a in argv if a != "--quiet"]) == 0
    err = capsys.readouterr().err
    assert err.count("done already, skipping") == 2 + len(OBJECTIVES) + 1
    assert (run_dir / "summary.json").read_text() == before


def test_unknown_objective_is_refused_before_anything_runs(tmp_path, capsys):
    argv = ["run", str(CONFIG), "--quiet", "--set", f'run.dir="{tmp_path / "x"}"', "--set",
            'direct.objectives=["dpo", "nope"]']
    assert cli.main(argv) == 2
    assert "unknown objective 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
