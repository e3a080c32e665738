"""The control lab runs its stages into one run directory, reports them, and resumes without redoing them."""

import json

from rlxf.core.config import load_config
from rlxf.data.transitions import TransitionDataset
from rlxf.lab.control import ControlLab
from rlxf.lab.registry import lab_class, lab_of


def test_control_lab_runs_and_resumes(tmp_path):
    assert lab_class(lab_of("configs/lab_control.toml")) is ControlLab
    small = [f'run.dir="{tmp_path / "lab"}"', "ppo.total_steps=2048", "eval_every=2048", 'pbrl.selections=["uniform"]',
             "pbrl.budget=20", "offline.episodes=8", "offline.comparisons=40", "offline.bc_steps=5", "offline.cpl_steps=5",
             "table.methods=[]", "table.tasks=[]", "trueskill.reacher=false"]
    cfg = load_config(ControlLab.Config, "configs/lab_control.toml", small)
    logs = []
    summary = ControlLab(cfg, log=logs.append).execute()
    assert set(summary) == {"ppo", "pbrl_uniform", "offline"}
    assert summary["ppo"]["steps"] == 2048 and summary["pbrl_uniform"]["queries"] == 20
    assert 0.0 <= summary["offline"]["saco"] and summary["offline"]["bc_return"] > 0
    assert len(TransitionDataset.load(tmp_path / "lab" / "stages" / "offline" / "dataset", obs_shape=(4,)).episodes) == 8
    table = ControlLab.format_table(summary)
    assert "pbrl_uniform" in table and "TQ" in table
    again = []
    assert ControlLab(load_config(ControlLab.Config, "configs/lab_control.toml", small), log=again.append).execute() == summary
    assert again == [f"[{s}] done already, skipping" for s in summary]  # every stage was already done
    run_dir = tmp_path / "lab"
    assert json.loads((run_dir / "summary.json").read_text()) == summary
    assert table in (run_dir / "report.html").read_text().replace("&gt;", ">")
    assert (run_dir / "control_curves.png").stat().st_size > 1000
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    pbrl_rows = [r for r in rows if r["stage"] == "pbrl_uniform"]
    assert [r["queries"] for r in pbrl_rows] == [20]  # every evaluation row says how many queries were asked
    # a stage that died before finishing (done marker gone, its metrics lines left) runs again from the
    # start and leaves exactly one metrics line per (stage, step)
    (run_dir / "stages" / "pbrl_uniform" / "done.json").unlink()
    rerun = ControlLab(load_config(ControlLab.Config, "configs/lab_control.toml", small), log=again.append).execute()
    assert rerun["pbrl_uniform"]["queries"] == 20
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    keys = [(r["stage"], r["step"]) for r in rows]
    assert len(keys) == len(set(keys)) and ("pbrl_uniform", 2048) in keys


def test_report_command_rewrites_any_labs_report_and_refuses_an_unfinished_run(tmp_path, capsys):
    """``rlxf report`` reads the lab from the run's config.toml: a control run's report comes back
    with its own table and plot; a run with a stage not done is refused, naming the stage."""
    from rlxf.cli import main

    small = ["--set", f'run.dir="{tmp_path / "lab"}"', "--set", "ppo.total_steps=1024", "--set", "eval_every=1024",
             "--set", 'pbrl.selections=["uniform"]', "--set", "pbrl.budget=10", "--set", "offline.enabled=false",
             "--set", "table.methods=[]", "--set", "table.tasks=[]", "--set", "trueskill.reacher=false"]
    assert main(["run", "configs/lab_control.toml", "--quiet", *small]) == 0
    run_dir = tmp_path / "lab"
    (run_dir / "report.html").unlink()
    (run_dir / "control_curves.png").unlink()
    capsys.readouterr()
    assert main(["report", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "pbrl_uniform" in out and "eval return" in out
    page = (run_dir / "report.html").read_text()
    assert "control_curves.png" in page and "pbrl_uniform" in page and (run_dir / "control_curves.png").is_file()
    (run_dir / "stages" / "pbrl_uniform" / "done.json").unlink()
    assert main(["report", str(run_dir)]) == 2
    assert "pbrl_uniform" in capsys.readouterr().err


def test_methods_by_tasks_table_runs_each_cell_per_seed_and_checks_names_first(tmp_path, monkeypatch):
    """A table cell trains its method once per seed: one seed gives the SE over held-out episodes, several the
    SE over seed means; an unknown method or task, or a task no listed method runs on, stops the lab before
    it writes anything."""
    import pytest

    from rlxf.core.config import ConfigError
    from rlxf.lab import control_table

    (tmp_path / "toy_methods.py").write_text(
        "def run(task, seed, scale):\n"
        "    return [seed + 1.0, seed + 3.0] if task == 'a' else [10.0 * scale] * 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(control_table.METHODS, "toy", control_table.ControlMethod("toy_methods:run", ("a", "b"), "return"))
    monkeypatch.setitem(control_table.METHODS, "toy_a", control_table.ControlMethod("toy_methods:run", ("a",), "success"))
    base = [f'run.dir="{tmp_path / "lab"}"', 'pbrl.selections=[]', "offline.enabled=false", "ppo.total_steps=256",
            "eval_every=256", "trueskill.reacher=false"]
    one = load_config(ControlLab.Config, "configs/lab_control.toml",
                      base + ['table.methods=["toy", "toy_a"]', 'table.tasks=["a", "b"]', "table.scale=0.5"])
    summary = ControlLab(one, quiet=True, log=lambda _m: None).execute()
    # toy_a does not run on b; task a has two methods, so they are also ranked by TrueSkill
    assert set(summary) == {"ppo", "table_toy_a", "table_toy_b", "table_toy_a_a", "trueskill_a"}
    assert summary["table_toy_a"]["mean"] == 2.0 and abs(summary["table_toy_a"]["se"] - 1.0) < 1e-12  # sd sqrt2 / sqrt2
    assert summary["table_toy_b"]["scores"] == [5.0] * 3 and summary["table_toy_b"]["se"] == 0.0
    table = ControlLab.format_table(summary)
    rows = [line.split() for line in table.splitlines()]
    assert ["a", "toy", "return", "2", "+-", "1", "2"] in rows and ["b", "toy", "return", "5", "+-", "0", "3"] in rows
    assert ["a", "toy_a", "success", "2", "+-", "1", "2"] in rows
    seeds = load_config(ControlLab.Config, "configs/lab_control.toml",
                        [f'run.dir="{tmp_path / "lab2"}"'] + base[1:] + ['table.methods=["toy"]', 'table.tasks=["a"]',
                                                                          "table.seeds=[0, 1, 2]"])
    cell = ControlLab(seeds, quiet=True, log=lambda _m: None).execute()["table_toy_a"]
    assert cell["seed_means"] == [2.0, 3.0, 4.0] and cell["mean"] == 3.0 and abs(cell["se"] - 1 / 3**0.5) < 1e-12
    for bad, named in ((['table.methods=["nope"]', 'table.tasks=["a"]'], "table.methods"),
                       (['table.methods=["toy"]', 'table.tasks=["zz"]'], "table.tasks"),
                       (['table.methods=["toy_a"]', 'table.tasks=["b"]'], "no method")):
        cfg = load_config(ControlLab.Config, "configs/lab_control.toml",
                          [f'run.dir="{tmp_path / "bad"}"'] + base[1:] + bad)
        with pytest.raises(ConfigError, match=named):
            ControlLab(cfg, quiet=True, log=lambda _m: None)
        assert not (tmp_path / "bad").exists()


def test_lab_table_runs_the_registered_methods_that_have_no_smoke_test_of_their_own(tmp_path):
    """The real runners the other test files do not call (diffusion, recommendation, Meta-World), each at 5% of
    its budget through the lab: every cell returns per-episode scores of the right kind and the table lists them."""
    import pytest

    pytest.importorskip("metaworld")
    methods = ["beso", "bc_mlp", "iql", "iql_pgd", "tscac", "lagrangian", "sim2rec", "single_sim", "bc_scripted",
               "sac_metaworld", "pbrl_metaworld"]
    tasks = ["goal_reach2d", "pendulum_medium_replay", "short_video", "short_video_heldout", "metaworld_reach"]
    cfg = load_config(ControlLab.Config, "configs/lab_control.toml",
                      [f'run.dir="{tmp_path / "lab"}"', 'pbrl.selections=[]', "offline.enabled=false",
                       "ppo.total_steps=256", "eval_every=256", "trueskill.reacher=false", f"table.methods={json.dumps(methods)}",
                       f"table.tasks={json.dumps(tasks)}", "table.scale=0.05"])
    summary = ControlLab(cfg, quiet=True, log=lambda _m: None).execute()
    cells = {k: v for k, v in summary.items() if k.startswith("table_")}
    assert len(cells) == len(methods)  # each of these methods runs on exactly one of the tasks
    for name, cell in cells.items():
        scores = cell["scores"]
        assert len(scores) >= 2, name
        if cell["metric"] == "success":
            assert set(scores) <= {0.0, 1.0}, name
    table = ControlLab.format_table(summary)
    assert all(m in table for m in methods)


def test_trueskill_ranks_each_table_task_and_the_reacher_agents(tmp_path, monkeypatch):
    """BASALT-style tables in the lab: on a table task the methods are judged episode against episode on their
    held-out scores; with error-free judges the TrueSkill order is the gold order. The Reacher protocol's stage
    runs too (a small pool), and a bad selection rule is refused before anything is written."""
    import pytest

    from rlxf.core.config import ConfigError
    from rlxf.lab import control_table

    pytest.importorskip("mujoco")
    (tmp_path / "ranked_methods.py").write_text(
        "import numpy as np\n"
        "LEVEL = {'good': 3.0, 'mid': 2.0, 'bad': 1.0}\n"
        "def run(name):\n"
        "    return lambda task, seed, scale: LEVEL[name] + np.random.default_rng(seed).normal(0, 0.3, 30)\n"
        "good, mid, bad = run('good'), run('mid'), run('bad')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("good", "mid", "bad"):
        monkeypatch.setitem(control_table.METHODS, name,
                            control_table.ControlMethod(f"ranked_methods:{name}", ("t",), "return"))
    base = [f'run.dir="{tmp_path / "lab"}"', 'pbrl.selections=[]', "offline.enabled=false", "ppo.total_steps=256",
            "eval_every=256", 'table.methods=["bad", "good", "mid"]', 'table.tasks=["t"]', "trueskill.reacher=true",
            "trueskill.episodes=6", "trueskill.matches=60", "trueskill.mistake_rate=0.0"]
    summary = ControlLab(load_config(ControlLab.Config, "configs/lab_control.toml", base), quiet=True,
                         log=lambda _m: None).execute()
    ranked = summary["trueskill_t"]
    assert [r["agent"] for r in ranked["rows"]] == ranked["gold_order"] == ["good", "mid", "bad"]
    assert ranked["kendall_tau"] == 1.0 and ranked["games"] == 60
    assert sum(r["games"] for r in ranked["rows"]) == 120  # two agents per game
    reacher = summary["basalt_reacher"]
    assert len(reacher["rows"]) == 5 and reacher["games"] == 60 and -1.0 <= reacher["kendall_tau"] <= 1.0
    gif = tmp_path / "lab" / "basalt_reacher.gif"  # the top- and bottom-rated agents side by side, in the report
    assert gif.stat().st_size > 1000 and "basalt_reacher.gif" in (tmp_path / "lab" / "report.html").read_text()
    table = ControlLab.format_table(summary)
    assert "trueskill_t: TrueSkill from 60 judged pairs" in table and "mu-3sigma" in table
    cfg = load_config(ControlLab.Config, "configs/lab_control.toml",
                      [f'run.dir="{tmp_path / "bad"}"'] + base[1:] + ['trueskill.selection="best"'])
    with pytest.raises(ConfigError, match="trueskill.selection"):
        ControlLab(cfg, quiet=True, log=lambda _m: None)
    assert not (tmp_path / "bad").exists()
