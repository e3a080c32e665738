"""``rlxf sweep``: the grid, its checks before any trial, the results table against hand-computed
means and standard errors, and (slow) a 3 settings x 2 seeds sweep on Ray Tune that is interrupted
and resumed without rerunning or losing a finished trial."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rlxf.cli import main
from rlxf.core.cluster import scale_of
from rlxf.core.config import ConfigError, load_config
from rlxf.lab.config import PipelineConfig
from rlxf.lab import sweep

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "rlxf" / "configs" / "quickstart.toml"
TINY = ["sft.optim.steps=30", "sft.corpus_size=500", "comparisons.n_pairs=100", "reward_model.optim.steps=5",
        "reward_model.held_out_pairs=20", "dpo.optim.steps=10", "dpo.optim.batch_size=16", "rloo.enabled=false",
        "best_of_n.enabled=false", "eval.n_prompts=50"]


def test_values_split_on_top_level_commas_only():
    assert sweep.parse_param("dpo.beta=0.05, 0.1,0.2") == ("dpo.beta", ["0.05", "0.1", "0.2"])
    assert sweep.split_values('[1,2],{a=1,b=2},"x,y"') == ["[1,2]", "{a=1,b=2}", '"x,y"']
    for bad in ("dpo.beta", "dpo.beta=", "=0.1", "dpo.beta=0.1,,0.2"):
        with pytest.raises(ConfigError, match="SECTION.KEY=VALUE"):
            sweep.parse_param(bad)


def test_plan_is_every_combination_times_seeds_with_its_overrides(tmp_path):
    s = sweep.plan(QUICKSTART, ["dpo.beta=0.05,0.2", "dpo.optim.lr=1e-3,3e-3"], 2, ["run.seed=5"], str(tmp_path / "sw"))
    assert s.lab == "pipeline" and s.seeds == [5, 6] and len(s.trials) == 8
    first = s.trials[0]
    assert first.name == "dpo.beta=0.05_dpo.optim.lr=1e-3_seed5"
    assert first.overrides[:3] == ("run.seed=5", "dpo.beta=0.05", "dpo.optim.lr=1e-3")
    assert first.overrides[3] == "run.seed=5" and first.overrides[4] == f'run.dir="{tmp_path / "sw" / "trials" / first.name}"'
    assert [(t.setting, t.seed) for t in s.trials[:3]] == [
        ((("dpo.beta", "0.05"), ("dpo.optim.lr", "1e-3")), 5), ((("dpo.beta", "0.05"), ("dpo.optim.lr", "1e-3")), 6),
        ((("dpo.beta", "0.05"), ("dpo.optim.lr", "3e-3")), 5)]
    assert not (tmp_path / "sw").exists()  # planning writes nothing


@pytest.mark.parametrize("params, seeds, expected", [
    (["dpo.betta=0.1"], 1, "dpo.betta"),  # unknown key: named, with the section's keys
    (["dpo.beta=0.1,high"], 1, "--param dpo.beta=high: dpo.beta: expected a number"),
    (["run.seed=1,2"], 1, "--param run.seed: the sweep sets run.seed itself"),
    (["dpo.beta=0.1", "dpo.beta=0.2"], 1, "given twice"),
    (["dpo.beta=0.1"], 0, "--seeds must be >= 1"),
    ([], 1, "at least one --param"),
])
def test_a_bad_sweep_is_refused_before_any_trial_and_writes_nothing(tmp_path, capsys, params, seeds, expected):
    with pytest.raises(ConfigError, match=re.escape(expected)):
        sweep.plan(QUICKSTART, params, seeds, [], str(tmp_path / "sw"))
    args = ["sweep", str(QUICKSTART), "--seeds", str(seeds), "--dir", str(tmp_path / "sw")]
    assert main([*args, *(a for p in params for a in ("--param", p))]) == 2
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "sw").exists()


def test_unknown_key_error_lists_the_sections_keys(tmp_path):
    with pytest.raises(ConfigError) as e:
        sweep.plan(QUICKSTART, ["dpo.betta=0.1"], 1, [], str(tmp_path / "sw"))
    assert "unknown key 'dpo.betta'" in str(e.value) and "beta" in str(e.value) and "--param dpo.betta=0.1" in str(e.value)


def test_a_trial_directory_of_another_config_stops_the_sweep_unless_fresh(tmp_path):
    s = sweep.plan(QUICKSTART, ["dpo.beta=0.1"], 1, [], str(tmp_path / "sw"))
    d = s.trial_dir(s.trials[0])
    d.mkdir(parents=True)
    (d / "config.toml").write_text('lab = "pipeline"\n[dpo]\nbeta = 0.3\n')
    with pytest.raises(ConfigError, match="holds a run of another config"):
        sweep.plan(QUICKSTART, ["dpo.beta=0.1"], 1, [], str(tmp_path / "sw"))
    assert sweep.plan(QUICKSTART, ["dpo.beta=0.1"], 1, [], str(tmp_path / "sw"), fresh=True).trials == s.trials


def test_default_metric_is_gold_then_held_out_loss_else_a_clear_error():
    quick = list(sweep.numbers({"sft": {"gold_mean": 1.0, "kl": 0.0}, "dpo": {"gold_mean": 2.0, "kl": 0.5},
                                "best_of_16": {"gold_mean": 3.0}}))
    assert sweep.default_metric(quick, ["dpo.beta"]) == "dpo.gold_mean"  # the policy the swept key names
    assert sweep.default_metric(["x.gold", "x.kl"], ["online.lr"]) == "x.gold"  # the only gold figure
    with pytest.raises(sweep.SweepError, match="several gold means .*sft.gold_mean.*--metric"):
        sweep.default_metric(quick, ["comparisons.n_pairs"])
    train = list(sweep.numbers({"method": "sft", "held_out": 8, "metrics": {"nll_per_token": {"start": 3.0, "trained": 2.0}}}))
    assert train == ["held_out", "metrics.nll_per_token.start", "metrics.nll_per_token.trained"]  # strings and bools left out
    assert sweep.default_metric(train, ["sft.optim.lr"]) == "metrics.nll_per_token.trained"
    with pytest.raises(sweep.SweepError, match=r"no gold reward and no held-out loss.*keys: a, b\.c"):
        sweep.default_metric(["a", "b.c"], ["x.y"])


def _fake_trials(s: sweep.Sweep, values: dict[tuple[str, int], float]) -> None:
    """Finished trials' summaries only: what :func:`sweep.results` reads."""
    for t in s.trials:
        if (t.setting[0][1], t.seed) in values:
            s.trial_dir(t).mkdir(parents=True)
            row = {"gold_mean": values[(t.setting[0][1], t.seed)], "kl": 0.1}
            (s.trial_dir(t) / "summary.json").write_text(json.dumps({"sft": {"gold_mean": 0.0}, "dpo": row}))


def test_results_are_the_mean_and_standard_error_over_seeds_and_the_paired_difference(tmp_path):
    s = sweep.plan(QUICKSTART, ["dpo.beta=0.05,0.2,1.0"], 2, [], str(tmp_path / "sw"))
    _fake_trials(s, {("0.05", 0): 1.0, ("0.05", 1): 2.0, ("0.2", 0): 3.0, ("0.2", 1): 6.0, ("1.0", 0): 7.0})
    out = sweep.results(s)
    assert out["metric"] == "dpo.gold_mean"
    a, b, c = out["rows"]
    assert (a["mean"], a["se"]) == pytest.approx((1.5, 0.5))  # sd of (1, 2) = 1/sqrt(2); / sqrt(2)
    assert (b["mean"], b["se"]) == pytest.approx((4.5, 1.5))
    assert (b["vs_first"], b["vs_first_se"]) == pytest.approx((3.0, 1.0))  # differences (2, 4) by seed
    assert c["seeds"] == [0] and c["mean"] == 7.0 and c["se"] is None and "vs_first" not in c  # one seed: no s.e.
    table = (s.dir / "results.md").read_text()
    assert "| 0.2 | 2 | 4.5000 | 1.5000 | +3.0000 ± 1.0000 |" in table
    csv_rows = (s.dir / "results.csv").read_text().splitlines()
    assert csv_rows[0] == "dpo.beta,seeds,mean,se,vs_first,vs_first_se" and csv_rows[1].startswith("0.05,2,1.5,0.5,")
    assert json.loads((s.dir / "results.json").read_text()) == out
    assert 'src="sweep.png"' in (s.dir / "report.html").read_text() and (s.dir / "sweep.png").stat().st_size > 5000
    assert sweep.results(s, "dpo.kl")["rows"][0]["mean"] == pytest.approx(0.1)
    with pytest.raises(sweep.SweepError, match=r"--metric dpo\.nope: not in the summary .*keys: sft\.gold_mean, dpo\.gold_mean"):
        sweep.results(s, "dpo.nope")


# -- on Ray Tune ---------------------------------------------------------------------------------
def _cli(sweep_dir: Path, base_dir: Path, *extra: str) -> list[str]:
    args = [sys.executable, "-m", "rlxf.cli", "sweep", str(QUICKSTART), "--param", "dpo.beta=0.05,0.1,0.5",
            "--seeds", "2", "--dir", str(sweep_dir), "--set", f'run.dir="{base_dir}"', *extra]
    for s in TINY:
        args += ["--set", s]
    return args


def _stop(proc: subprocess.Popen) -> None:
    """Ctrl-C for the sweep's driver; the whole process group if it has not stopped within a minute."""
    os.kill(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.slow
def test_three_settings_by_two_seeds_interrupted_then_resumed(tmp_path):
    """A 3 x 2 sweep of dpo.beta on a tiny quickstart, one trial at a time, stopped after two trials
    finished: running it again (trials side by side now) keeps those two untouched (same files, same
    times), runs the other four, and the table is each setting's mean and standard error of the
    trials' own gold means."""
    sweep_dir = tmp_path / "sweep"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}
    log = tmp_path / "first.log"
    with log.open("w") as out:
        proc = subprocess.Popen(_cli(sweep_dir, tmp_path / "base", "--max-concurrent", "1"), cwd=ROOT, env=env,
                                stdout=out, stderr=out, start_new_session=True)
    deadline = time.time() + 400
    while time.time() < deadline and proc.poll() is None and len(list(sweep_dir.glob("trials/*/summary.json"))) < 2:
        time.sleep(0.2)
    assert proc.poll() is None, f"the sweep ended before it could be interrupted: {log.read_text()}"
    _stop(proc)
    kept = {p.parent.name: (p.stat().st_mtime_ns, p.read_text()) for p in sweep_dir.glob("trials/*/summary.json")}
    assert 2 <= len(kept) < 6
    assert proc.returncode == 130  # Ctrl-C, as for rlxf run
    assert "interrupted" in log.read_text() and "run the same command again to resume" in log.read_text()

    again = subprocess.run(_cli(sweep_dir, tmp_path / "base"), cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr
    assert f"6 trials in {sweep_dir}: {len(kept)} finished already, {6 - len(kept)} to run" in again.stderr
    for name, (mtime, text) in kept.items():
        path = sweep_dir / "trials" / name / "summary.json"
        assert (path.stat().st_mtime_ns, path.read_text()) == (mtime, text)
        assert f"[{name}] finished" not in again.stderr

    out = json.loads((sweep_dir / "results.json").read_text())
    assert out["metric"] == "dpo.gold_mean"
    assert [r["setting"]["dpo.beta"] for r in out["rows"]] == ["0.05", "0.1", "0.5"]
    for row in out["rows"]:
        beta = row["setting"]["dpo.beta"]
        gold = []
        for seed in (0, 1):
            d = sweep_dir / "trials" / f"dpo.beta={beta}_seed{seed}"
            config = (d / "config.toml").read_text()
            assert f"beta = {float(beta)!r}" in config and f"seed = {seed}" in config
            gold.append(json.loads((d / "summary.json").read_text())["dpo"]["gold_mean"])
        assert gold[0] != gold[1]  # the seed reached the run
        assert row["values"] == gold
        assert row["mean"] == pytest.approx(np.mean(gold))
        assert row["se"] == pytest.approx(np.std(gold, ddof=1) / math.sqrt(2))
    assert "| 0.1 | 2 |" in again.stdout and (sweep_dir / "sweep.png").stat().st_size > 5000


@pytest.mark.slow
def test_a_train_sweep_tabulates_held_out_loss_and_names_each_failed_trial(tmp_path):
    """An ``rlxf train`` SFT config over two data paths, one missing: the two trials of the real one
    finish and the table is their held-out loss (the default metric without gold); the two others
    fail, and the sweep exits 2 with one line per failed trial naming its own error."""
    from rlxf.policies.tiny import tiny_causal_lm, tiny_tokenizer

    model = tmp_path / "model"
    tok = tiny_tokenizer("a b c d e f g h yes no".split())
    tiny_causal_lm(tok, n_layer=1, n_embd=32, n_head=2).save_pretrained(model)
    tok.save_pretrained(model)
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{x} {y}", "completion": "yes no yes"}) + "\n"
                            for x in "abcd" for y in "efgh" for _ in range(2)))
    config = tmp_path / "sft.toml"
    config.write_text(f'lab = "train"\nmethod = "sft"\n[model]\npath = "{model}"\n[data]\neval_fraction = 0.25\n'
                      "[sft.optim]\nsteps = 4\nbatch_size = 4\nlr = 0.01\nwarmup_steps = 0\n")
    args = [sys.executable, "-m", "rlxf.cli", "sweep", str(config), "--param", f'data.path="{data}","/nope.jsonl"',
            "--seeds", "2", "--dir", str(tmp_path / "sweep")]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 2, done.stderr
    assert "2 of 4 trials did not finish (" in done.stderr and "Traceback" not in done.stderr
    for seed in (0, 1):
        assert f"data.path=--nope.jsonl-_seed{seed}: DataError: /nope.jsonl: no such file" in done.stderr
    out = json.loads((tmp_path / "sweep" / "results.json").read_text())
    assert out["metric"] == "metrics.nll_per_token.trained" and len(out["rows"]) == 1
    row = out["rows"][0]
    nll = [json.loads(d.read_text())["metrics"]["nll_per_token"]["trained"]
           for d in sorted((tmp_path / "sweep" / "trials").glob("data.path=-*sft.jsonl-_seed*/summary.json"))]
    assert len(nll) == 2 and row["values"] == nll and row["seeds"] == [0, 1]
    assert row["mean"] == pytest.approx(np.mean(nll)) and row["se"] == pytest.approx(np.std(nll, ddof=1) / math.sqrt(2))


def test_the_guides_commands_are_valid_sweeps(tmp_path):
    """Every ``rlxf sweep`` command in docs/sweep.md parses and plans (keys and values checked)."""
    import shlex

    from rlxf.cli import _parser

    text = (ROOT / "docs" / "sweep.md").read_text().replace("\\\n", " ")
    commands = [line.strip() for line in text.splitlines() if line.strip().startswith(".venv/bin/rlxf sweep")]
    assert len(commands) == 2
    for line in commands:
        args = _parser().parse_args(shlex.split(line)[1:])
        s = sweep.plan(ROOT / args.config, args.params, args.seeds, args.overrides, str(tmp_path / "sw"))
        assert len(s.trials) == len(s.params[0][1]) * args.seeds
    s = sweep.plan(ROOT / "configs" / "lab_direct.toml", ['direct.objectives=["dpo"],["ipo"]'], 1, [], str(tmp_path / "d"))
    assert [t.overrides[0] for t in s.trials] == ['direct.objectives=["dpo"]', 'direct.objectives=["ipo"]']


def test_trials_that_start_ray_workers_are_limited_to_what_the_cluster_holds(tmp_path):
    """A trial holds its own CPUs plus its learner workers' threads and its rollout actors' shares;
    the sweep runs no more at once than fit, and refuses a trial that cannot fit at all."""
    def plan(*sets):
        return sweep.plan(QUICKSTART, ["dpo.beta=0.1,0.2,0.5"], 2, list(sets), str(tmp_path / "sw"))

    local = plan()
    assert sweep.concurrency(local, local.trials, 2.0, 0, 1.0) == 0  # Tune's own count
    assert sweep.concurrency(local, local.trials, 2.0, 3, 1.0) == 3
    on_ray = plan("run.executor=\"ray\"", "run.learner_workers=2")
    scale = scale_of(load_config(PipelineConfig, QUICKSTART, list(on_ray.trials[0].overrides)).run)
    assert sweep.held_cpus(scale, 1.0) == 1 + 2 * 1 + 0.5  # 1 thread per worker, one rollout actor of 0.5
    assert sweep.held_cpus(scale, 4.0) == 4 + 2 * 2 + 0.5  # a 4-thread trial's workers get 2 threads each
    scale.learner_threads = 3
    assert sweep.held_cpus(scale, 1.0) == 1 + 2 * 3 + 0.5
    assert sweep.concurrency(on_ray, on_ray.trials, 8.0, 0, 1.0) == 2  # 8 // 3.5
    assert sweep.concurrency(on_ray, on_ray.trials, 8.0, 1, 1.0) == 1
    with pytest.raises(ConfigError, match="a trial holds 3.5 CPUs .* the Ray cluster has 2"):
        sweep.concurrency(on_ray, on_ray.trials, 2.0, 0, 1.0)
