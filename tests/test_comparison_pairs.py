"""One way from a comparisons file to token pairs: the quickstart pipeline and the direct lab keep the
same checked pairs from the same file, and a run tokenizes its comparisons once, however many stages
read them."""

from __future__ import annotations

import json

import pytest

from rlxf.algorithms.preference_data import PreferenceDataWarning, comparison_pairs
from rlxf.core.config import load_config
from rlxf.data.io import read_records
from rlxf.lab.config import PipelineConfig
from rlxf.lab.direct import DirectLab, DirectLabConfig
from rlxf.lab.pipeline import Pipeline
from rlxf.policies.language import LanguagePolicy
from rlxf.tasks.hidden_pref import HiddenPreferenceTask

TINY = ["sft.optim.steps=1", "sft.corpus_size=16", "sft.optim.batch_size=8"]


@pytest.fixture(scope="module")
def comparisons_file(tmp_path_factory):
    """Twelve usable comparisons, then a row whose chosen equals its rejected and a row whose prompt
    fills the tiny model's 64 positions: both carry no learning signal."""
    task = HiddenPreferenceTask()
    samples = task.corpus(24, seed=5)
    rows = [{"prompt": samples[i].prompt, "chosen": samples[i].response, "rejected": samples[i + 12].response}
            for i in range(12)]
    rows.insert(4, {"prompt": samples[0].prompt, "chosen": samples[1].response, "rejected": samples[1].response})
    rows.insert(9, {"prompt": " ".join([task.words[0]] * 70), "chosen": samples[2].response,
                    "rejected": samples[3].response})
    path = tmp_path_factory.mktemp("data") / "comparisons.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def setup(lab, cfg_type, run_dir, path, *extra):
    sets = [f'run.dir="{run_dir}"', f'comparisons.path="{path}"', *TINY, *extra]
    runner = lab(load_config(cfg_type, None, sets), quiet=True, log=lambda _m: None)
    runner.run_stages(until="comparisons")
    return runner


def test_pipeline_and_direct_lab_keep_the_same_checked_pairs(tmp_path, comparisons_file):
    pipe = setup(Pipeline, PipelineConfig, tmp_path / "pipe", comparisons_file)
    direct = setup(DirectLab, DirectLabConfig, tmp_path / "direct", comparisons_file,
                   f'direct.sft_model="{pipe._model_dir("sft")}"', "direct.held_out_pairs=3")
    policy = pipe.policy("sft")
    with pytest.warns(PreferenceDataWarning, match=r"dropped 2 of 14 records"):
        checked = comparison_pairs(read_records(comparisons_file), policy, max_length=64)
    assert len(checked) == 12
    with pytest.warns(PreferenceDataWarning, match=r"records 4\b.*records 9\b|records 9\b.*records 4\b"):
        assert pipe._pairs(policy) == checked
    with pytest.warns(PreferenceDataWarning, match=r"dropped 2 of 14 records"):
        train, held = direct._split(direct.policy("sft"))
    assert len(held) == 2 and train + held == checked  # at most a fifth is held out


def test_a_run_tokenizes_its_comparisons_once(tmp_path, comparisons_file, monkeypatch):
    pipe = setup(Pipeline, PipelineConfig, tmp_path / "pipe", comparisons_file)
    calls = []
    encode = LanguagePolicy.encode
    monkeypatch.setattr(LanguagePolicy, "encode", lambda self, texts: calls.append(len(texts)) or encode(self, texts))
    with pytest.warns(PreferenceDataWarning):
        first = pipe._pairs(pipe.policy("sft"))  # e.g. the reward-model stage
    n_calls = len(calls)
    assert n_calls > 0
    again = pipe._pairs(pipe.policy("sft"))  # the DPO stage loads its own copy of the SFT policy
    assert again == first and len(calls) == n_calls
