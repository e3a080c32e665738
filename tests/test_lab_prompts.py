"""The prompt lab: config errors named before anything runs, and a tiny run (two seeds, a budget of 8
queries) through ``rlxf run``'s lab class with the task's frozen model replaced by its hidden rule (so
the run takes seconds): the summary's shape, random search's curve recomputed by hand, the hand-written
prompt's metric, the report and its plot, and resuming."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rlxf.core.config import ConfigError, load_config
from rlxf.lab import prompts as lab
from rlxf.lab.registry import lab_class, lab_of
from rlxf.tasks.prompt_tasks import FRAGMENTS, HAND_WRITTEN, PromptTask, fragments_of, rule_respond

TINY = ['methods=["random_search", "apohf"]', "budget=8", "checkpoints=[4, 8]", "seeds=[0, 1]", "n_candidates=30"]


def rule_task():
    """The ``kinds`` task answered by its hidden rule instead of the trained model (no training)."""
    return PromptTask("kinds", respond=rule_respond)


def rule_problem(task_name, seed, n_candidates):
    candidates = lab.candidate_prompts(n_candidates, seed)
    names = list(FRAGMENTS)
    feats = np.array([[fragments_of(c).count(k) for k in names] for c in candidates], float) + 1e-3
    return lab.PromptProblem(rule_task(), seed, candidates, feats / np.linalg.norm(feats, axis=1, keepdims=True),
                             HAND_WRITTEN[task_name])


def _config(tmp_path, *extra):
    toml = tmp_path / "lab.toml"
    toml.write_text('lab = "prompts"\n')
    return toml, load_config(lab.PromptLab.Config, toml, [f'run.dir="{tmp_path / "run"}"', *TINY, *extra])


@pytest.mark.parametrize("override,match", [
    ('methods=["random_search", "oracle"]', "methods: unknown method 'oracle'"),
    ("checkpoints=[8, 4]", "checkpoints"),
    ("checkpoints=[4, 9]", "checkpoints"),
    ('tasks=["chess"]', "tasks"),
    ("seeds=[]", "seeds"),
])
def test_bad_config_is_named_before_anything_runs(tmp_path, override, match):
    _, cfg = _config(tmp_path, override)
    with pytest.raises(ConfigError, match=match):
        lab.PromptLab(cfg, quiet=True, log=lambda _m: None)
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def lab_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prompt_lab")
    toml, cfg = _config(tmp)
    assert lab_class(lab_of(toml)) is lab.PromptLab
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lab, "prompt_problem", rule_problem)
        run = lab.PromptLab(cfg, quiet=True, log=lambda _m: None)
        return run, run.execute(), cfg


def test_summary_shape_and_the_hand_written_prompt(lab_run):
    run, summary, _ = lab_run
    assert json.loads((run.run.dir / "summary.json").read_text()) == summary
    t = summary["kinds"]
    assert t["hand_written"] == pytest.approx(rule_task().score([HAND_WRITTEN["kinds"]], "test")[0])
    assert list(t["methods"]) == ["random_search", "apohf"]
    for m in t["methods"].values():
        assert list(m["curve"]) == ["4", "8"] and m["query"]
        for point in m["curve"].values():
            assert len(point["per_seed"]) == 2 and point["mean"] == pytest.approx(np.mean(point["per_seed"]))
            assert all(0.0 <= v <= 1.0 for v in point["per_seed"])


def test_random_search_curve_by_hand(lab_run):
    """Random search scores candidates in a seeded random order; its best prompt after q queries is the
    first of the best eval scores among them, reported on test."""
    _, summary, _ = lab_run
    task = rule_task()
    for k, seed in enumerate([0, 1]):
        cands = lab.candidate_prompts(30, seed)
        order = np.random.default_rng(seed).permutation(30)[:8]
        ev = task.score([cands[i] for i in order], "eval")
        for q in (4, 8):
            best = cands[order[int(np.argmax(ev[:q]))]]
            assert summary["kinds"]["methods"]["random_search"]["curve"][str(q)]["per_seed"][k] == \
                pytest.approx(task.score([best], "test")[0])


def test_report_has_the_table_and_plot_and_a_rerun_resumes(lab_run, tmp_path):
    run, summary, cfg = lab_run
    page = (run.run.dir / "report.html").read_text()
    assert "hand-written" in page and "prompt_curves.png" in page
    assert (run.run.dir / "prompt_curves.png").stat().st_size > 5000
    assert "random_search" in lab.format_table(summary)
    messages = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lab, "prompt_problem", rule_problem)
        again = lab.PromptLab(cfg, quiet=True, log=messages.append).execute()
    assert again == summary and sum("done already" in m for m in messages) == 3


@pytest.fixture(scope="module")
def real_problem():
    return lab.prompt_problem("kinds", 0, 4)  # the trained frozen model (cached on disk after its first use)


def test_a_soft_prompt_of_the_hand_written_tokens_scores_what_the_text_scores(real_problem):
    task = real_problem.task
    point = lab.hand_written_point(real_problem)
    assert point.shape == (len(real_problem.hand_written.split()) * 64,)
    for split in ("eval", "train"):
        assert lab.soft_prompt_accuracy(task, point[None], split)[0] == pytest.approx(
            task.score([real_problem.hand_written], split)[0])


def test_zo_ranksgd_soft_prompt_spends_one_query_per_ranked_point(real_problem):
    before = real_problem.task.calls["eval"]
    best = lab.zo_soft_prompt(real_problem, 12, seed=0)  # 2 rounds of 6 ranked points
    assert len(best) == 12 and real_problem.task.calls["eval"] - before == 12
    x0 = lab.hand_written_point(real_problem)
    assert all(np.array_equal(b, x0) for b in best[:5])  # the first round ends at the 6th query
    assert not np.array_equal(best[5], x0) and np.array_equal(best[5], best[10]) and not np.array_equal(best[11], best[5])
