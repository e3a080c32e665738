"""Configs: TOML + --set overrides onto dataclasses; unknown keys name the key and the file."""

import pytest

from rlxf.core.config import ConfigError, load_config, parse_override, to_toml
from rlxf.lab.config import PipelineConfig


def test_toml_then_overrides(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[run]\nseed = 3\n[dpo]\nbeta = 0.5\n[dpo.optim]\nsteps = 7\n')
    cfg = load_config(PipelineConfig, path, ["dpo.beta=0.25", 'run.dir="x/y"', "dpo.loss_args={eps=0.2}"])
    assert cfg.run.seed == 3 and cfg.run.dir == "x/y"
    assert cfg.dpo.beta == 0.25 and cfg.dpo.optim.steps == 7
    assert cfg.dpo.loss_args == {"eps": 0.2}
    assert cfg.sft.optim.steps == PipelineConfig().sft.optim.steps  # untouched default


def test_unknown_key_names_key_and_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[dpo]\nbetta = 1\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: unknown key 'dpo\.betta'"):
        load_config(PipelineConfig, path)
    with pytest.raises(ConfigError, match=r"--set sft\.nope=1: unknown key 'sft\.nope'"):
        load_config(PipelineConfig, None, ["sft.nope=1"])


def test_type_errors_and_int_widening():
    with pytest.raises(ConfigError, match="dpo.beta: expected a number"):
        load_config(PipelineConfig, None, ["dpo.beta=abc"])
    with pytest.raises(ConfigError, match="expected an integer"):
        load_config(PipelineConfig, None, ["sft.optim.steps=1.5"])
    assert load_config(PipelineConfig, None, ["dpo.beta=1"]).dpo.beta == 1.0


def test_a_setting_with_fixed_choices_names_them(tmp_path):
    assert load_config(PipelineConfig, None, ["reward_model.pooling=sum"]).reward_model.pooling == "sum"
    path = tmp_path / "c.toml"
    path.write_text('[reward_model]\npooling = "mean"\n')
    with pytest.raises(ConfigError, match=r"c\.toml: reward_model\.pooling: expected one of 'last', 'sum', got 'mean'"):
        load_config(PipelineConfig, path)


def test_override_parsing():
    assert parse_override("a.b=3") == (["a", "b"], 3)
    assert parse_override("a=hello") == (["a"], "hello")
    with pytest.raises(ConfigError):
        parse_override("novalue")


def test_to_toml_round_trip(tmp_path):
    from dataclasses import asdict

    cfg = load_config(PipelineConfig, None, ["dpo.beta=0.3", "dpo.loss_args={eps=0.1}", 'model.init="tiny"'])
    path = tmp_path / "resolved.toml"
    path.write_text(to_toml(asdict(cfg)))
    assert load_config(PipelineConfig, path) == cfg
