"""``rlxf train METHOD`` and ``rlxf sample`` end to end on a tiny model saved as "the user's model".

Every run is a few optimiser steps on a one-layer model, so each test takes seconds; what they
check is the command's contract: help, dry run, the run directory and its model, resume, the
held-out table, and clear errors (exit 2) that leave no run directory behind.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlxf.cli import main
from rlxf.core.runs import Run
from rlxf.lab.train import methods_by_family
from rlxf.policies.tiny import tiny_causal_lm, tiny_tokenizer

WORDS = "a b c d e f g h yes no".split()
PROMPTS = [f"{x} {y}" for x in "abcd" for y in "efgh"]  # 16 prompts


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("user_model")
    tok = tiny_tokenizer(WORDS)
    tiny_causal_lm(tok, n_layer=1, n_embd=32, n_head=2).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("data")
    rows = PROMPTS * 2
    return {
        "prefs": _jsonl(d / "prefs.jsonl", [{"prompt": p, "chosen": "yes yes", "rejected": "no no"} for p in rows]),
        "sft": _jsonl(d / "sft.jsonl", [{"prompt": p, "completion": "yes no yes"} for p in rows]),
        "kto": _jsonl(d / "kto.jsonl", [{"prompt": p, "completion": c, "label": c == "yes"}
                                        for p in rows for c in ("yes", "no")]),
        "prompts": _jsonl(d / "prompts.jsonl", [{"prompt": p, "answer": "yes"} for p in rows]),
    }


def _train(capsys, method: str, model_dir: Path, data: Path, out: Path, *extra: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(["train", method, "--model", str(model_dir), "--data", str(data), "--output", str(out), "--quiet",
               *extra])
    got = capsys.readouterr()
    return rc, got.out, got.err


def _summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


OFFLINE = ["--set", "offline.optim.steps=4", "--set", "offline.optim.batch_size=4", "--set", "offline.optim.lr=0.01",
           "--set", "offline.optim.warmup_steps=0"]


def test_help_lists_every_method_and_a_methods_settings(capsys):
    assert main(["train", "--help"]) == 0
    text = capsys.readouterr().out
    for names in methods_by_family().values():
        for name in names:
            assert name in text
    assert main(["train", "dpo", "--help"]) == 0
    assert "offline.loss_args.beta = 0.1" in capsys.readouterr().out
    assert main(["train", "grpo", "--help"]) == 0
    text = capsys.readouterr().out
    assert "online.samples_per_prompt = 4" in text and "online.method_args.clip = 0.2" in text


def test_dry_run_reports_the_data_and_writes_nothing(capsys, model_dir, data, tmp_path):
    rc, out, _ = _train(capsys, "dpo", model_dir, data["prefs"], tmp_path / "run", "--dry-run")
    assert rc == 0
    assert "method: dpo" in out and "30 training and 2 held-out" in out
    assert "rows_kept: 32" in out and "first rendered prompt:" in out
    assert list(tmp_path.iterdir()) == []


def test_dpo_end_to_end_then_report_and_sample(capsys, model_dir, data, tmp_path):
    run = tmp_path / "run"
    rc, out, _ = _train(capsys, "dpo", model_dir, data["prefs"], run, *OFFLINE)
    assert rc == 0
    model = run / "model"
    assert out.strip().splitlines()[-1] == str(model.resolve())
    for name in ("summary.json", "report.html", "metrics.jsonl", "config.toml"):
        assert (run / name).is_file()
    assert "Learning curves" in (run / "report.html").read_text()
    assert len(Run(run, (run / "config.toml").read_text()).metrics("train")) == 4
    # every held-out pair has "yes yes" chosen: four steps at lr 0.01 order them all
    assert _summary(run)["metrics"]["reward_accuracy"]["trained"] == 1.0
    trained = AutoModelForCausalLM.from_pretrained(model)
    start = AutoModelForCausalLM.from_pretrained(model_dir)
    assert not torch.equal(trained.lm_head.weight, start.lm_head.weight)

    assert main(["report", str(run)]) == 0
    assert "reward_accuracy" in capsys.readouterr().out
    for target in (run, model):
        assert main(["sample", str(target), "--prompt", "a e", "--max-new-tokens", "3", "--n", "2"]) == 0
        lines = capsys.readouterr().out.strip().splitlines()
        assert [line.startswith("=== prompt 1, sample") for line in lines].count(True) == 2
        assert all(w in WORDS for line in lines if not line.startswith("===") for w in line.split())
    prompts = _jsonl(tmp_path / "prompts.jsonl", [{"prompt": "a e"}, {"prompt": "b f"}])
    assert main(["sample", str(run), "--prompts", str(prompts), "--max-new-tokens", "2"]) == 0
    assert "=== prompt 2, sample 1: b f" in capsys.readouterr().out
    (tmp_path / "bad.jsonl").write_text('{"text": "a e"}\n')
    assert main(["sample", str(run), "--prompts", str(tmp_path / "bad.jsonl")]) == 2
    assert "bad.jsonl, line 1: expected a JSON object with a prompt field" in capsys.readouterr().err


def test_an_interrupted_run_resumes_from_its_checkpoint(capsys, model_dir, data, tmp_path, monkeypatch):
    run = tmp_path / "run"
    args = [*OFFLINE, "--set", "offline.optim.steps=6", "--set", "offline.optim.checkpoint_every=2"]
    real_log = Run.log
    logged: list[int] = []

    def interrupt_at_step_3(self, stage, step, **values):
        if stage == "train" and step == 3:
            raise KeyboardInterrupt
        logged.append(step) if stage == "train" else None
        real_log(self, stage, step, **values)

    monkeypatch.setattr(Run, "log", interrupt_at_step_3)
    rc, _, err = _train(capsys, "dpo", model_dir, data["prefs"], run, *args)
    assert rc == 130 and "resume" in err
    assert logged == [0, 1, 2]
    assert (run / "stages" / "train" / "checkpoint.pt").is_file() and not (run / "model").exists()
    first = (run / "metrics.jsonl").read_text().splitlines()

    def record(self, stage, step, **values):
        logged.append(step) if stage == "train" else None
        real_log(self, stage, step, **values)

    logged.clear()
    monkeypatch.setattr(Run, "log", record)
    rc, out, _ = _train(capsys, "dpo", model_dir, data["prefs"], run, *args)
    assert rc == 0 and (run / "model" / "config.json").is_file()
    assert logged == [2, 3, 4, 5]  # continued after the checkpoint at step 1, not from 0
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert lines[:2] == first[:2]
    assert [json.loads(x)["step"] for x in lines if json.loads(x)["stage"] == "train"] == list(range(6))


def test_grpo_with_a_python_reward_file_and_a_monitor(capsys, model_dir, data, tmp_path):
    reward = tmp_path / "reward.py"
    reward.write_text("def fn(prompts, completions, answer, **kw):\n"
                      "    return [float(a in c.split()) for c, a in zip(completions, answer)]\n")
    run = tmp_path / "run"
    rc, out, err = _train(capsys, "grpo", model_dir, data["prompts"], run, "--reward", f"{reward}:fn",
                          "--monitor", "length_penalty:2",
                          "--set", "online.optim.steps=2", "--set", "online.optim.batch_size=2",
                          "--set", "online.max_new_tokens=3", "--set", "online.samples_per_prompt=2")
    assert rc == 0, err
    metrics = _summary(run)["metrics"]
    assert {f"reward {reward}:fn", "monitor length_penalty:2", "kl to start", "length"} <= set(metrics)
    assert metrics["kl to start"]["start"] == 0.0
    rows = Run(run, (run / "config.toml").read_text()).metrics("train")
    assert len(rows) == 2 and all("length_penalty:2_reward" in r and "proxy_reward" in r for r in rows)
    assert (run / "model" / "config.json").is_file()


def test_sft_lowers_held_out_nll(capsys, model_dir, data, tmp_path):
    run = tmp_path / "run"
    rc, _, err = _train(capsys, "sft", model_dir, data["sft"], run, "--set", "sft.optim.steps=4",
                        "--set", "sft.optim.batch_size=4", "--set", "sft.optim.lr=0.01")
    assert rc == 0, err
    nll = _summary(run)["metrics"]["nll_per_token"]
    assert nll["trained"] < nll["start"] - 0.5  # an untrained model is near log(14) = 2.6 nats per token


def test_reward_model_orders_held_out_pairs(capsys, model_dir, data, tmp_path):
    run = tmp_path / "run"
    rc, _, err = _train(capsys, "reward-model", model_dir, data["prefs"], run, "--set", "reward_model.optim.steps=6",
                        "--set", "reward_model.optim.batch_size=4", "--set", "reward_model.optim.lr=0.01")
    assert rc == 0, err
    assert _summary(run)["metrics"]["accuracy"]["trained"] == 1.0
    assert (run / "model" / "config.json").is_file()


def test_kto_separates_desirable_from_undesirable(capsys, model_dir, data, tmp_path):
    run = tmp_path / "run"
    rc, _, err = _train(capsys, "kto", model_dir, data["kto"], run, *OFFLINE)
    assert rc == 0, err
    m = _summary(run)["metrics"]
    assert m["reward_desirable"]["trained"] > 0 > m["reward_undesirable"]["trained"]


@pytest.mark.parametrize("method, args, says", [
    ("nope", [], "unknown method 'nope'"),
    ("grpo", [], "grpo learns from rewards"),
    ("dpo", ["--set", "offline.betta=0.2"], "unknown key 'offline.betta'"),
    ("dpo", ["--set", "offline.loss_args.gamma=1"], "dpo has no parameter gamma"),
    ("dpo", ["--reward", "answer_match"], "--reward: dpo learns from the labels"),
])
def test_bad_input_is_a_clear_error_and_leaves_no_run(capsys, model_dir, data, tmp_path, method, args, says):
    rc, _, err = _train(capsys, method, model_dir, data["prefs"] if method != "grpo" else data["prompts"],
                        tmp_path / "run", *args)
    assert rc == 2 and err.startswith("rlxf: error:") and says in err, err
    assert not (tmp_path / "run").exists()


def test_missing_data_is_a_clear_error(capsys, model_dir, tmp_path):
    capsys.readouterr()
    assert main(["train", "dpo", "--model", str(model_dir), "--output", str(tmp_path / "run")]) == 2
    assert "--data" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_toml_with_lab_train_runs_through_rlxf_run(capsys, model_dir, data, tmp_path):
    run = tmp_path / "run"
    config = tmp_path / "train.toml"
    config.write_text(f'lab = "train"\nmethod = "ipo"\n[run]\ndir = "{run}"\n[model]\npath = "{model_dir}"\n'
                      f'[data]\npath = "{data["prefs"]}"\n[offline.optim]\nsteps = 2\nbatch_size = 4\n')
    capsys.readouterr()
    assert main(["run", str(config), "--quiet"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str((run / "model").resolve())
    assert _summary(run)["method"] == "ipo"


def test_lora_adapters_are_saved_and_evaluated_after_a_restart(capsys, model_dir, data, tmp_path, monkeypatch):
    """A run stopped after its train stage evaluates the adapters it reads back from the output directory."""
    from rlxf.lab.train import TrainLab

    run = tmp_path / "run"
    args = [*OFFLINE, "--set", "lora.r=4", "--set", 'lora.save="adapters"']
    real = TrainLab.stage_evaluate

    def stop(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(TrainLab, "stage_evaluate", stop)
    assert _train(capsys, "dpo", model_dir, data["prefs"], run, *args)[0] == 130
    assert (run / "model" / "adapter_config.json").is_file() and not (run / "summary.json").exists()
    monkeypatch.setattr(TrainLab, "stage_evaluate", real)
    rc, _, err = _train(capsys, "dpo", model_dir, data["prefs"], run, *args)
    assert rc == 0, err
    metrics = _summary(run)["metrics"]
    assert metrics["reward_accuracy"]["trained"] == 1.0 and metrics["kl"]["trained"] > 0
    assert main(["sample", str(run), "--prompt", "a e", "--max-new-tokens", "2", "--raw"]) == 0


@pytest.mark.parametrize("method, extra", [
    ("ppo", ["--set", "online.updates_per_rollout=2"]),  # a critic from the model's own trunk
    ("spo", []),  # a preference: Bradley-Terry on the reward
    ("sharpening", []),  # no reward at all
])
def test_online_methods_that_need_more_than_a_reward(capsys, model_dir, data, tmp_path, method, extra):
    reward = ["--reward", "regex:yes"] if method != "sharpening" else ["--monitor", "regex:yes"]
    rc, _, err = _train(capsys, method, model_dir, data["prompts"], tmp_path / "run", *reward, *extra,
                        "--set", "online.optim.steps=2", "--set", "online.optim.batch_size=2",
                        "--set", "online.max_new_tokens=3", "--set", "online.optim.checkpoint_every=2")
    assert rc == 0, err
    assert "kl to start" in _summary(tmp_path / "run")["metrics"]


def test_a_saved_reward_model_and_a_judge_as_specs(capsys, model_dir, data, tmp_path):
    """online_dpo learns from a pairwise judge in a Python file and monitors a reward model trained by
    rlxf train; the held-out table gives the monitor for both models and the judge's verdict between them."""
    rm = tmp_path / "rm"
    assert _train(capsys, "reward-model", model_dir, data["prefs"], rm, "--set", "reward_model.optim.steps=2")[0] == 0
    judge = tmp_path / "judge.py"
    judge.write_text("def prefer(prompts, a, b):\n    return [0.5 + 0.4 * (('yes' in x) - ('yes' in y)) "
                     "for x, y in zip(a, b)]\n")
    run = tmp_path / "run"
    rc, _, err = _train(capsys, "online_dpo", model_dir, data["prompts"], run, "--reward", f"judge:{judge}:prefer",
                        "--monitor", str(rm / "model"), "--set", "online.optim.steps=2",
                        "--set", "online.optim.batch_size=2", "--set", "online.max_new_tokens=3",
                        "--set", "online.optim.checkpoint_every=2")
    assert rc == 0, err
    metrics = _summary(run)["metrics"]
    assert metrics[f"monitor {rm / 'model'}"]["start"] is not None
    assert 0 <= metrics[f"judge:{judge}:prefer win rate vs start"]["trained"] <= 1


def test_a_reward_that_raises_stops_the_run_at_its_first_step_naming_it(capsys, model_dir, data, tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def reward(prompts, completions, **columns):\n    raise ValueError('boom')\n")
    rc, _, err = _train(capsys, "grpo", model_dir, data["prompts"], tmp_path / "run", "--reward", f"{bad}:reward",
                        "--set", "online.optim.steps=2", "--set", "online.optim.batch_size=2",
                        "--set", "online.max_new_tokens=3", "--set", "online.optim.checkpoint_every=2")
    assert rc == 2 and f"rlxf: error: reward '{bad}:reward' raised at step 0: ValueError: boom" in err
    assert "before the run started" in err and not (tmp_path / "run").exists()  # checked before the run, nothing written
