"""The quickstart pipeline with a user's model and comparisons: chat rows rendered with the model's own
template (or model.chat_template), and unusable files reported by their own name before any stage runs."""

from __future__ import annotations

import json

import pytest

from rlxf.algorithms.preference_data import PreferenceDataWarning
from rlxf.core.config import load_config
from rlxf.data.io import DataError, read_records
from rlxf.lab.config import PipelineConfig
from rlxf.lab.pipeline import Pipeline, PipelineError
from rlxf.policies.language import LanguagePolicy
from rlxf.policies.tiny import CHAT_TEMPLATE, tiny_causal_lm, tiny_tokenizer

WORDS = "a b c d user: assistant:".split()
TINY = ["sft.optim.steps=1", "sft.corpus_size=16", "sft.optim.batch_size=8"]


def model_dir(path, template: str | None):
    tok = tiny_tokenizer(WORDS)
    tok.chat_template = template
    LanguagePolicy(tiny_causal_lm(tok, n_layer=1, n_embd=16, n_head=2, max_positions=32), tok).save_pretrained(path)
    return path


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def chat_rows(n=3):
    return [{"prompt": [{"role": "user", "content": "a b"}], "chosen": [{"role": "assistant", "content": "c"}],
             "rejected": [{"role": "assistant", "content": "d"}]}] * n


def pipeline(tmp_path, *sets):
    cfg = load_config(PipelineConfig, None, [f'run.dir="{tmp_path / "run"}"', *TINY, *sets])
    return Pipeline(cfg, quiet=True, log=lambda _m: None)


def test_chat_comparisons_render_with_the_models_own_template(tmp_path):
    init = model_dir(tmp_path / "model", CHAT_TEMPLATE)
    data = write_jsonl(tmp_path / "chat_prefs.jsonl", chat_rows())
    pipe = pipeline(tmp_path, f'model.init="{init}"', f'comparisons.path="{data}"')
    pipe.run_stages(until="comparisons")
    (first, *_) = read_records(pipe.run.stage_dir("comparisons") / "comparisons.jsonl")
    assert (first.prompt, first.chosen, first.rejected) == ("user: a b\nassistant:", " c\n", " d\n")
    assert LanguagePolicy.from_pretrained(pipe.run.dir / "stages" / "sft" / "model").tokenizer.chat_template == CHAT_TEMPLATE


def test_a_tokenizer_without_a_template_takes_model_chat_template(tmp_path):
    init = model_dir(tmp_path / "model", None)
    data = write_jsonl(tmp_path / "chat_prefs.jsonl", chat_rows())
    with pytest.raises(DataError, match=r"chat_prefs\.jsonl, line 1: .*--chat-template FILE"):
        pipeline(tmp_path, f'model.init="{init}"', f'comparisons.path="{data}"')
    template = tmp_path / "template.jinja"
    template.write_text(CHAT_TEMPLATE)
    pipe = pipeline(tmp_path, f'model.init="{init}"', f'comparisons.path="{data}"', f'model.chat_template="{template}"')
    assert pipe._user_comparisons[0].prompt == "user: a b\nassistant:"
    with pytest.raises(PipelineError, match="model.chat_template .*nowhere.jinja is not a file"):
        pipeline(tmp_path, f'model.init="{init}"', 'model.chat_template="nowhere.jinja"')


def test_unusable_comparison_files_are_named_before_any_stage_runs(tmp_path):
    init = model_dir(tmp_path / "model", CHAT_TEMPLATE)
    empty = write_jsonl(tmp_path / "empty.jsonl", [])
    with pytest.raises(DataError, match=r"empty\.jsonl: holds no comparisons"):
        pipeline(tmp_path, f'comparisons.path="{empty}"')
    long_prompt = " ".join(["a"] * 40)  # the model has 32 positions
    too_long = write_jsonl(tmp_path / "long.jsonl", [{"prompt": long_prompt, "chosen": "c", "rejected": "d"}])
    with pytest.warns(PreferenceDataWarning, match=r"long\.jsonl: dropped 1 of 1"), \
            pytest.raises(DataError, match=r"long\.jsonl: no usable records left"):
        pipeline(tmp_path, f'model.init="{init}"', f'comparisons.path="{too_long}"')
    assert not (tmp_path / "run").exists()  # nothing was written: no stage ran
    mixed = write_jsonl(tmp_path / "mixed.jsonl", [{"prompt": long_prompt, "chosen": "c", "rejected": "d"},
                                                   {"prompt": "a", "chosen": "c", "rejected": "d"}])
    with pytest.warns(PreferenceDataWarning, match=r"mixed\.jsonl: dropped 1 of 2 records: 1 where the prompt fills"):
        pipe = pipeline(tmp_path, f'model.init="{init}"', f'comparisons.path="{mixed}"')
    assert not pipe.run.dir.joinpath("stages", "sft").exists()  # reported when the run was set up, before SFT


def test_rlxf_run_takes_chat_template_as_a_flag(tmp_path, capsys):
    """``rlxf run CONFIG --chat-template FILE`` sets model.chat_template; without it the error names the flag."""
    from rlxf.cli import main

    init = model_dir(tmp_path / "model", None)
    data = write_jsonl(tmp_path / "chat_prefs.jsonl", chat_rows())
    config = tmp_path / "run.toml"
    config.write_text(f'[run]\ndir = "{tmp_path / "run"}"\n[model]\ninit = "{init}"\n'
                      f'[comparisons]\npath = "{data}"\n')
    nowhere = tmp_path / "nowhere.jinja"
    assert main(["run", str(config), "--quiet", "--chat-template", str(nowhere)]) == 2
    assert f"model.chat_template (--chat-template): {nowhere} is not a file" in capsys.readouterr().err
    assert main(["run", str(config), "--quiet"]) == 2
    assert "--chat-template FILE" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # both refused before anything was written
