"""The agents lab: every method runs on a task into one run directory, the table pairs each method with BC on
the same held-out seeds, the report plots PPO's curve, a rerun skips finished stages, and bad configs are named."""

from __future__ import annotations

import json

import pytest

from rlxf.core.config import ConfigError, load_config
from rlxf.lab.agents import AgentsLab, paired_difference
from rlxf.lab.registry import lab_class, lab_of

TINY = ['tasks=["corridor"]', 'methods=["bc", "ilql", "ppo"]', "episodes_per_skill=4", "eval_episodes=4", "model.n_layer=1", "model.n_embd=16",
        "model.n_head=2", "model.max_positions=256", "bc.steps=3", "bc.batch_size=8", "values.optim.steps=2",
        "values.optim.batch_size=8", "ppo.steps=2", "ppo.batch_size=2", "ppo.train_seeds=4"]


def test_paired_difference_on_hand_numbers():
    """d = 1, 0, 0, 1: mean 0.5, sd sqrt(1/3), SE sqrt(1/3) / 2."""
    m, se = paired_difference([1, 1, 0, 1], [0, 1, 0, 0])
    assert m == pytest.approx(0.5) and se == pytest.approx((1 / 3) ** 0.5 / 2)
    with pytest.raises(ValueError, match="equal lists"):
        paired_difference([1, 0], [1])


def test_agents_lab_runs_every_method_reports_and_resumes(tmp_path):
    assert lab_class(lab_of("configs/lab_agents.toml")) is AgentsLab
    small = [f'run.dir="{tmp_path / "lab"}"', *TINY]
    summary = AgentsLab(load_config(AgentsLab.Config, "configs/lab_agents.toml", small), quiet=True,
                        log=lambda _m: None).execute()
    row = summary["corridor"]
    assert set(row) == {"data", "bc", "ilql", "ppo"}
    assert row["data"]["episodes"] == 12
    run_dir = tmp_path / "lab"
    bc = json.loads((run_dir / "stages" / "bc_corridor" / "done.json").read_text())
    for m in ("ilql", "ppo"):
        r = json.loads((run_dir / "stages" / f"{m}_corridor" / "done.json").read_text())
        assert len(r["successes"]) == 4 and row[m]["success"] == pytest.approx(sum(r["successes"]) / 4)
        assert (row[m]["vs_bc"], row[m]["vs_bc_se"]) == pytest.approx(paired_difference(r["successes"], bc["successes"]))
    ppo_rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in ppo_rows if r["stage"] == "ppo_corridor" and "success" in r] == [0, 1]
    table = AgentsLab.format_table(summary)
    assert all(m in table for m in row if m != "data") and "corridor" in table
    assert table in (run_dir / "report.html").read_text().replace("&gt;", ">")
    assert (run_dir / "agents_curves.png").stat().st_size > 1000
    again = []
    rerun = AgentsLab(load_config(AgentsLab.Config, "configs/lab_agents.toml", small), log=again.append).execute()
    assert rerun == summary and all("done already" in line for line in again)


# The claim run: the guide's default config (configs/lab_agents.toml) on the fully and the partially observed maze,
# with a training seed (2) and held-out seeds (3 x 10^9 on) that no earlier run of the lab used.
CLAIM = ['tasks=["maze", "maze_po"]', 'methods=["bc", "ilql", "ppo"]', "eval_episodes=500",
         "eval_seed=3000000000", "run.seed=2"]


@pytest.mark.slow
def test_ppo_and_ilql_beat_bc_on_two_lab_tasks(tmp_path):
    """The issue's check: multi-turn PPO and ILQL beat BC on at least two tasks of the lab.

    Threshold, written before the first run: on each of maze and maze_po, held-out success of ILQL minus BC,
    and of PPO minus BC, is at least 2 standard errors of the paired difference over 500 held-out environment
    seeds (the same seeds for the three methods; one training seed, run seed 2, which no earlier lab run used,
    and held-out seeds from 3 x 10^9, which no earlier run played). Held equal: ILQL guides the very BC policy
    that is scored as BC, with a value model trained for as many gradient steps as BC (200, batch 32) on the
    same 120 episodes. PPO starts from that BC policy and adds 30 gradient steps on 30 rollouts of 16 episodes
    each (480 environment episodes the offline methods never see). (An earlier pre-registered run of this check
    on car_dealer and endgame failed; docs/agents.md gives its figures.)
    """
    cfg = load_config(AgentsLab.Config, "configs/lab_agents.toml", [f'run.dir="{tmp_path / "lab"}"', *CLAIM])
    summary = AgentsLab(cfg, quiet=True, log=lambda _m: None).execute()
    figures = {(t, m): (round(summary[t][m]["vs_bc"], 3), round(summary[t][m]["vs_bc_se"], 3))
               for t in ("maze", "maze_po") for m in ("ilql", "ppo")}
    print(AgentsLab.format_table(summary), figures)
    assert all(d >= 2 * se and d > 0 for d, se in figures.values()), figures


@pytest.mark.parametrize("override,message", [
    ('methods=["bc", "dqn"]', "unknown method"),
    ("eval_episodes=1", "eval_episodes"),
    ('methods=["ppo", "bc"]', "list \"bc\" before"),
    ('tasks=["no_such_env"]', "tasks"),
    ("values.context_turns=1", "context_turns"),
    ("eval_seed=1000", "eval_seed"),
])
def test_bad_configs_are_refused_before_any_stage(tmp_path, override, message):
    cfg = load_config(AgentsLab.Config, "configs/lab_agents.toml", [f'run.dir="{tmp_path / "x"}"', *TINY, override])
    with pytest.raises(ConfigError, match=message):
        AgentsLab(cfg, quiet=True, log=lambda _m: None)
    assert not (tmp_path / "x").exists()
