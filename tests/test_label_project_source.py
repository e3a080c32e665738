"""A pipeline run can take its comparisons from a feedback-app project: the labels given
so far are read when the run starts, and a later invocation retrains on new labels."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rlxf.app.client import LabelClient, bradley_terry_answer, serve_in_background, simulate_labeler
from rlxf.app.project import init_project, open_project
from rlxf.app.server import create_app
from rlxf.core.config import load_config
from rlxf.data.io import read_records
from rlxf.lab.config import PipelineConfig
from rlxf.lab.pipeline import Pipeline, PipelineError

TINY = ["sft.corpus_size=2000", "sft.optim.steps=40", "reward_model.optim.steps=8", "reward_model.held_out_pairs=40",
        "dpo.optim.steps=4", "rloo.enabled=false", "eval.n_prompts=40"]


def _config(run_dir, project) -> PipelineConfig:
    return load_config(PipelineConfig, None, [f'run.dir="{run_dir}"', f'comparisons.project="{project}"', *TINY])


def _label(directory, token, n: int, task, seed: int) -> list[int]:
    store, project = open_project(directory)
    try:
        with serve_in_background(create_app(store, project)) as url:
            client = LabelClient(url, token)
            log = simulate_labeler(client, bradley_terry_answer(task.gold, 1.0, np.random.default_rng(seed)),
                                   max_labels=n)
            client.close()
    finally:
        store.close()
    assert not log.errors and len(log.acked) == n
    return log.acked


@pytest.fixture
def project(tmp_path, task):
    directory = tmp_path / "labels"
    init_project(directory, "preference", overlap=1)
    store, proj = open_project(directory)
    rng = np.random.default_rng(0)
    try:
        prompts = task.sample_prompts(60, "train", rng)
        store.add_items(proj, [(p, [task.sample_response(p, rng), task.sample_response(p, rng)], {})
                               for p in prompts])
        token = store.add_labeler(proj, "sim")
    finally:
        store.close()
    return directory, token


def test_stages_retrain_on_labels_given_since_the_last_invocation(tmp_path, project, task):
    directory, token = project
    _label(directory, token, 25, task, seed=1)
    cfg = _config(tmp_path / "run", directory)
    messages: list[str] = []
    Pipeline(cfg, quiet=True, log=messages.append).execute()
    run = tmp_path / "run"
    done = {s: json.loads((run / "stages" / s / "done.json").read_text()) for s in ("sft", "comparisons")}
    assert done["comparisons"]["n_pairs"] == 25 and done["comparisons"]["source"] == str(directory)

    # the stage's file holds exactly the labelled pairs, chosen side as the labeler answered
    store, proj = open_project(directory)
    try:
        expected = {(l.item.prompt, l.item.responses[l.shown[0 if l.value["choice"] == "a" else 1]])
                    for l in store.labels(proj)}
    finally:
        store.close()
    written = read_records(run / "stages" / "comparisons" / "comparisons.jsonl")
    assert {(r.prompt, r.chosen) for r in written} == expected

    _label(directory, token, 15, task, seed=2)
    messages.clear()
    Pipeline(cfg, quiet=True, log=messages.append).execute()
    assert json.loads((run / "stages" / "comparisons" / "done.json").read_text())["n_pairs"] == 40
    assert json.loads((run / "stages" / "sft" / "done.json").read_text()) == done["sft"]  # SFT is not redone
    assert "[sft] done already, skipping" in messages
    assert any("input changed" in m for m in messages)
    for stage in ("reward_model", "dpo"):
        assert f"[{stage}] running" in messages
        steps = [r["step"] for r in _metrics(run) if r["stage"] == stage]
        assert sorted(steps) == sorted(set(steps)), f"{stage} metrics were duplicated by the rerun"

    # no new labels: nothing runs again
    messages.clear()
    Pipeline(cfg, quiet=True, log=messages.append).execute()
    assert not any(m.endswith("running") for m in messages), messages


def _metrics(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_bad_project_source_is_refused_before_anything_is_written(tmp_path, project):
    directory, _ = project
    with pytest.raises(PipelineError, match="comparisons.project: .*no preference labels yet"):
        Pipeline(_config(tmp_path / "run1", directory), quiet=True)
    with pytest.raises(PipelineError, match=r"comparisons.project: .*project.json not found"):
        Pipeline(_config(tmp_path / "run2", tmp_path / "missing"), quiet=True)
    cfg = _config(tmp_path / "run3", directory)
    cfg.comparisons.path = str(tmp_path / "pairs.jsonl")
    with pytest.raises(PipelineError, match="not both"):
        Pipeline(cfg, quiet=True)
    assert not any((tmp_path / f"run{i}").exists() for i in (1, 2, 3))
