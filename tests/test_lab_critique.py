"""The critique lab: config errors named before anything is written, the summary's shape on a tiny
run, resuming, and (slow) the guide's table reproduced within noise."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from rlxf.core.config import ConfigError, load_config
from rlxf.lab import critique as lab_critique
from rlxf.lab.critique import CritiqueLab
from rlxf.lab.registry import lab_class, lab_of

ROOT = Path(__file__).resolve().parents[1]
TINY = ['tasks=["arithmetic"]', "arithmetic.n=40", "rounds=2",
        'critics=[{name="always", miss=1.0}, {name="good", miss=0.1, false_alarm=0.05, misplace=0.1}]']


def _config(tmp_path, *extra):
    toml = tmp_path / "lab.toml"
    toml.write_text('lab = "critique"\n')
    return toml, load_config(CritiqueLab.Config, toml, [f'run.dir="{tmp_path / "run"}"', *TINY, *extra])


@pytest.fixture(scope="module")
def lab_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("critique_lab")
    toml, cfg = _config(tmp)
    assert lab_class(lab_of(toml)) is CritiqueLab
    lab = CritiqueLab(cfg, quiet=True, log=lambda _m: None)
    return lab, lab.execute()


def test_summary_holds_every_measure_per_task_and_critic(lab_run):
    lab, summary = lab_run
    assert json.loads((lab.run.dir / "summary.json").read_text()) == summary
    t = summary["arithmetic"]
    assert list(summary) == ["arithmetic"] and t["n"] == 40 and list(t["critics"]) == ["always", "good"]
    for r in t["critics"].values():
        assert set(r) == {"verdict_accuracy", "by_difficulty", "localisation", "closed_loop"}
        assert list(r["closed_loop"]) == ["self", "cross", "iterative"]
        for mode, loop in r["closed_loop"].items():
            assert sum(loop["transitions"].values()) == 40
            assert len(loop["per_round"]) == (2 if mode == "iterative" else 1)
            right_after = loop["transitions"]["c->c"] + loop["transitions"]["i->c"]
            assert loop["accuracy"] == pytest.approx(right_after / 40)
    always = t["critics"]["always"]
    # accepting everything changes nothing: verdict accuracy is the pool's share of right answers
    assert always["verdict_accuracy"] == 0.5 and always["localisation"] == 0.0
    assert always["closed_loop"]["cross"]["accuracy"] == 0.5 and always["closed_loop"]["self"]["vs_direct"] == 0.0
    assert t["critics"]["good"]["verdict_accuracy"] > always["verdict_accuracy"]


def test_report_has_the_table_and_plot(lab_run):
    lab, summary = lab_run
    page = (lab.run.dir / "report.html").read_text()
    assert "critique_critics.png" in page and (lab.run.dir / "critique_critics.png").is_file()
    assert "good" in lab.format_table(summary) and "c-&gt;i" in page


def test_rerun_resumes_without_measuring_again(lab_run, tmp_path):
    lab, summary = lab_run
    messages = []
    again = CritiqueLab(lab.cfg, log=messages.append)
    assert again.execute() == summary
    assert all("skipping" in m for m in messages if m.startswith("[")), messages


@pytest.mark.parametrize("extra, option", [
    (['tasks=["chess"]'], "tasks"),
    (['tasks=["arithmetic", "arithmetic"]'], "tasks"),
    (['arithmetic.task="code"'], "arithmetic.task"),
    (["arithmetic.n=0"], "arithmetic.n"),
    (["rounds=0"], "rounds"),
    (["corrector.skill=2.0"], "corrector.skill"),
    (['critics=[{name="a", misplace=-0.1}]'], "critics[0].misplace"),
    (['critics=[{name="a"}, {name="a"}]'], "distinct"),
    (['trained=["nonesuch"]'], "trained"),
])
def test_bad_config_names_the_option_and_writes_nothing(tmp_path, extra, option):
    _, cfg = _config(tmp_path, *extra)
    with pytest.raises(ConfigError, match=re.escape(option)):
        CritiqueLab(cfg, quiet=True, log=lambda _m: None)
    assert not (tmp_path / "run").exists()


def _guide_table() -> dict[tuple[str, str], list[float]]:
    """The lab table in docs/critique.md: (task, critic) -> [verdict, loc., direct, cross]."""
    text = (ROOT / "docs" / "critique.md").read_text()
    block = text.split("<!-- critique lab table -->", 1)[1].split("```", 2)[1]
    rows = {}
    for line in block.splitlines():
        cells = line.split()
        if len(cells) >= 7 and cells[0] in ("arithmetic", "code"):
            rows[cells[0], cells[1]] = [float(c) for c in cells[2:6]]
    return rows


@pytest.mark.slow
def test_guide_table_reproduced_within_noise(tmp_path):
    """``rlxf run configs/lab_critique.toml`` reproduces the guide's table: each critic's verdict
    accuracy, localisation, direct and cross-critique accuracy within 2 binomial standard errors of
    the guide's figure (the simulated roles are seeded, so a change of code that moves one further
    is a change of behaviour, not noise)."""
    from rlxf.cli import main

    guide = _guide_table()
    assert guide
    assert main(["run", str(ROOT / "configs" / "lab_critique.toml"), "--set", f'run.dir="{tmp_path / "run"}"',
                 "--quiet"]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    for (task, critic), want in guide.items():
        r, n = summary[task]["critics"][critic], summary[task]["n"]
        got = [r["verdict_accuracy"], r["localisation"], summary[task]["direct"], r["closed_loop"]["cross"]["accuracy"]]
        for name, g, w in zip(("verdict", "localisation", "direct", "cross"), got, want):
            se = math.sqrt(max(w * (1 - w), 1 / n) / (n / 2 if name == "localisation" else n))
            assert abs(g - w) <= 2 * se, (task, critic, name, g, w)
