"""Shared, session-scoped fixtures: the expensive artefacts (an SFT policy, a reward model,
DPO and RLOO policies) are built once by one small pipeline run and reused by every test."""

from __future__ import annotations

import pytest

from rlxf.core.config import load_config
from rlxf.lab.config import PipelineConfig
from rlxf.tasks.hidden_pref import HiddenPreferenceTask

# A smaller budget than the quickstart that still shows every effect the tests check.
SMALL = [
    "sft.optim.steps=400",
    "comparisons.n_pairs=2000",
    "reward_model.optim.steps=120",
    "reward_model.held_out_pairs=600",
    "dpo.optim.steps=100",
    "rloo.optim.steps=100",
    "eval.n_prompts=500",
]


def small_config(run_dir, *extra: str) -> PipelineConfig:
    return load_config(PipelineConfig, None, [f"run.dir={str(run_dir)!r}".replace("'", '"'), *SMALL, *extra])


@pytest.fixture(scope="session")
def task() -> HiddenPreferenceTask:
    return HiddenPreferenceTask()


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory):
    """A finished small pipeline run: ``(pipeline, summary)``."""
    from rlxf.lab.pipeline import Pipeline

    cfg = small_config(tmp_path_factory.mktemp("pipeline") / "run")
    pipeline = Pipeline(cfg, quiet=True, log=lambda _m: None)
    summary = pipeline.execute()
    return pipeline, summary


@pytest.fixture(scope="session")
def sft_policy(pipeline_run):
    return pipeline_run[0].policy("sft")


@pytest.fixture(scope="session")
def reward_model(pipeline_run):
    return pipeline_run[0].reward_model()
