"""The search lab: config errors named before anything is written, the summary's shape and the
report on a tiny real run (the arithmetic task's prover and DPO policy shrunk to a few steps),
resuming, and (slow) the guide's table reproduced within noise."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from rlxf.algorithms.loop import OptimConfig
from rlxf.core.config import ConfigError, load_config
from rlxf.lab import search
from rlxf.lab.registry import lab_class, lab_of
from rlxf.lab.search import SearchLab, Tree, binomial_se

ROOT = Path(__file__).resolve().parents[1]
TINY = ['tasks=["arithmetic"]', "arithmetic.n_prompts=6", "arithmetic.budgets=[1, 3]",
        'arithmetic.methods=["sample", "beam_implicit"]']


def _config(tmp_path, *extra):
    toml = tmp_path / "lab.toml"
    toml.write_text('lab = "search"\n')
    return toml, load_config(SearchLab.Config, toml, [f'run.dir="{tmp_path / "run"}"', *TINY, *extra])


@pytest.fixture(scope="module")
def lab_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("search_lab")
    toml, cfg = _config(tmp)
    assert lab_class(lab_of(toml)) is SearchLab
    # one-operator problems, which a 60-step prover already gets right some of the time
    small = search.ArithmeticSettings(sft_steps=60, corpus=200, n_ops=(1, 1), dpo=search.DPOSettings(
        problems=24, samples=4, optim=OptimConfig(steps=2, batch_size=8, lr=1e-4, checkpoint_every=10**6)))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(search, "ARITHMETIC", small)
        lab = SearchLab(cfg, quiet=True, log=lambda _m: None)
        return lab, lab.execute(), cfg, small


def test_summary_is_task_method_budget_with_gold_and_generations(lab_run):
    lab, summary, _, _ = lab_run
    on_disk = json.loads((lab.run.dir / "summary.json").read_text())
    assert on_disk == summary
    assert list(summary) == ["arithmetic"] and list(summary["arithmetic"]) == ["sample", "beam_implicit"]
    for by_budget in summary["arithmetic"].values():
        assert list(by_budget) == ["1", "3"]
        for r in by_budget.values():
            assert set(r) == {"gold", "generations"} and 0.0 <= r["gold"] <= 1.0
            assert r["gold"] * 6 == pytest.approx(round(r["gold"] * 6))  # a share of the 6 prompts
    # sampling draws exactly budget whole responses per prompt
    assert [summary["arithmetic"]["sample"][b]["generations"] for b in ("1", "3")] == [6, 18]
    # beam search: every kept node samples 4 lines, so a wider beam spends more
    beam = summary["arithmetic"]["beam_implicit"]
    assert beam["1"]["generations"] % 4 == 0 and beam["3"]["generations"] > beam["1"]["generations"]


def test_trees_are_saved_and_the_report_draws_the_smallest(lab_run):
    lab, summary, _, _ = lab_run
    stage = lab.run.dir / "stages" / "arithmetic.beam_implicit"
    tree = Tree.load(stage / "tree_1.jsonl")
    assert tree.prompt == lab.setup("arithmetic").prompts[0] and len(tree.nodes) > 1
    assert all(n.source == "implicit" for n in tree.nodes[1:])
    html = (lab.run.dir / "report.html").read_text()
    sample_tree = Tree.load(lab.run.dir / "stages" / "arithmetic.sample" / "tree_1.jsonl")  # root + 1 sample
    assert len(sample_tree.nodes) == 2  # smaller, but one level deep: the report draws the beam's
    assert "A search tree (arithmetic.beam_implicit, budget 1: the first prompt)" in html
    assert tree.draw().splitlines()[1] in html.replace("&#x27;", "'")
    assert (lab.run.dir / "search_gold.png").stat().st_size > 1000
    row = summary["arithmetic"]["sample"]["3"]
    assert re.search(rf"arithmetic\s+sample\s+3\s+{row['gold']:.3f}\s+{binomial_se(row['gold'], 6):.3f}\s+3\.0", html)


def test_rerun_resumes_without_searching_again(lab_run):
    lab, summary, cfg, small = lab_run
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(search, "ARITHMETIC", small)
        again = SearchLab(cfg, quiet=True, log=(msgs := []).append)
        assert again.execute() == summary
    assert all("done already" in m for m in msgs) and len(msgs) == len(again.stages()) == 3
    assert again._setups == {}  # nothing was set up: no stage ran


def test_bad_configs_are_named_before_anything_is_written(tmp_path, monkeypatch):
    cases = [('tasks=["chess"]', "tasks: unknown task 'chess'; known tasks: arithmetic, code, tictactoe, retrieval"),
             ('arithmetic.methods=["sample", "mcts"]', "arithmetic.methods: unknown method 'mcts'; known for "
                                                        "arithmetic: sample, beam_implicit"),
             ("arithmetic.methods=[]", "arithmetic.methods: expected a non-empty list"),
             ("arithmetic.budgets=[4, 0]", r"arithmetic.budgets: expected a non-empty list of integers >= 1, got \[4, 0\]"),
             ("arithmetic.n_prompts=0", "arithmetic.n_prompts must be at least 1"),
             ('tasks=["arithmetic", "arithmetic"]', "tasks: expected a non-empty list of distinct task names")]
    for override, message in cases:
        _, cfg = _config(tmp_path, override)
        with pytest.raises(ConfigError, match=message):
            SearchLab(cfg, quiet=True)
    monkeypatch.setitem(search.METHODS["arithmetic"], "sample", "rlxf.algorithms.search.no_such_paper:LAB_METHOD")
    _, cfg = _config(tmp_path)
    with pytest.raises(ConfigError, match="arithmetic.methods: sample: cannot import rlxf.algorithms.search."
                                          "no_such_paper for rlxf.algorithms.search.no_such_paper:LAB_METHOD"):
        SearchLab(cfg, quiet=True)
    monkeypatch.setitem(search.METHODS["arithmetic"], "sample", "rlxf.lab.search:NO_SUCH_METHOD")
    with pytest.raises(ConfigError, match="arithmetic.methods: sample: rlxf.lab.search has no NO_SUCH_METHOD"):
        SearchLab(cfg, quiet=True)
    monkeypatch.setitem(search.METHODS["arithmetic"], "sample", "rlxf.lab.search:arithmetic_setup")
    with pytest.raises(ConfigError, match="is not a SearchMethod"):
        SearchLab(cfg, quiet=True)
    with pytest.raises(ConfigError, match="unknown key 'arithmetic.width'"):
        _config(tmp_path, "arithmetic.width=3")
    assert not (tmp_path / "run").exists()


def guide_table() -> dict[tuple[str, str, str], tuple[float, float]]:
    """(task, method, budget) -> (gold, generations per prompt) from the table in docs/search.md."""
    text = (ROOT / "docs" / "search.md").read_text()
    block = text.split("<!-- lab table -->")[1]
    rows = {}
    for line in block.split("```")[1].splitlines():
        parts = line.split()
        if len(parts) == 6 and re.fullmatch(r"\d+", parts[2]):
            rows[(parts[0], parts[1], parts[2])] = (float(parts[3]), float(parts[5]))
    return rows


@pytest.mark.slow
def test_the_guides_table_is_reproduced_within_noise(tmp_path):
    """Runs configs/lab_search.toml as the guide says (in a fresh directory) and compares every gold
    figure of the guide's table: each must lie within 2 binomial standard errors of the difference of
    two independent estimates, 2 * sqrt(2) * sqrt(g (1 - g) / n) with g the guide's figure (at least
    one prompt's worth, 1 / n), and generations per prompt within 25%. Adaptive searches spend what
    their values lead them to (MCTS stops at finished games, CR-Planner when it answers), and float
    rounding that differs with the thread count moves those values: two runs of the tic-tac-toe MCTS
    at 32 simulations spent 6.1 and 5.4 generations per position. The bound is there to catch a
    method that spends another budget (half or double), not that spread."""
    cfg = load_config(SearchLab.Config, ROOT / "configs" / "lab_search.toml", [f'run.dir="{tmp_path / "run"}"'])
    summary = SearchLab(cfg, quiet=True, log=lambda _m: None).execute()
    want = guide_table()
    got = {(t, m, b): r for t, ms in summary.items() for m, bs in ms.items() for b, r in bs.items()}
    assert set(want) == set(got), "the guide's table and the config's runs must list the same rows"
    for key, (gold, gens) in want.items():
        n = getattr(cfg, key[0]).n_prompts
        tol = max(2 * math.sqrt(2) * binomial_se(gold, n), 1 / n)
        assert abs(got[key]["gold"] - gold) <= tol, (key, got[key]["gold"], gold, tol)
        assert got[key]["generations"] / n == pytest.approx(gens, rel=0.25), key


def test_guide_table_parses():
    """The slow test's reader finds a row for every (task, method, budget) the config runs."""
    cfg = load_config(SearchLab.Config, ROOT / "configs" / "lab_search.toml")
    runs = {(t, m, str(b)) for t in cfg.tasks for m in getattr(cfg, t).methods for b in getattr(cfg, t).budgets}
    assert set(guide_table()) == runs
