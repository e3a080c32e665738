"""Learning tests on a real pretrained model, SmolLM2-135M-Instruct, through ``rlxf train``.

Each test runs the command a user runs (``rlxf.cli.main``) with an example config from
``examples/`` at a smaller step budget, and checks a held-out figure from the run's
``summary.json``. The data are about capital cities, split by country (examples/make_data.py), so
every held-out row asks about a country the training rows never mention. The model comes from the
session's float copy of the GGUF (the ``smollm2_dir`` fixture), converted once per session.
The learning tests are ``slow``; the checks of the example files themselves are fast.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlxf.cli import main

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
DPO_STEPS = 20  # examples/dpo*.toml train 60 steps; the claim holds at this budget
GRPO_STEPS = 16  # examples/grpo.toml trains 48

# a fresh interpreter runs rlxf train and writes its exit code, peak resident memory and CPU time
CHILD = ("import json, resource, sys\n"
         "from rlxf.cli import main\n"
         "rc = main(sys.argv[2:])\n"
         "u = resource.getrusage(resource.RUSAGE_SELF)\n"
         "json.dump({'rc': rc, 'maxrss_kb': u.ru_maxrss, 'cpu_s': u.ru_utime + u.ru_stime}, open(sys.argv[1], 'w'))\n")


PREFS = (EXAMPLES / "prefs" / "train.jsonl", EXAMPLES / "prefs" / "eval.jsonl")
PROMPTS = (EXAMPLES / "verifier" / "prompts.jsonl", EXAMPLES / "verifier" / "eval.jsonl")


def train_args(config: str, data: tuple[Path, Path], model: Path, out: Path, *sets: str) -> list[str]:
    """``rlxf train --config examples/CONFIG`` on ``model`` into ``out``, with the config's data
    files given by absolute path (so the test runs from any directory)."""
    args = ["train", "--config", str(EXAMPLES / config), "--model", str(model), "--output", str(out),
            "--data", str(data[0]), "--eval-data", str(data[1]), "--quiet"]
    for s in sets:
        args += ["--set", s]
    return args


def run_in_child(args: list[str], out: Path) -> dict:
    """Run ``rlxf`` with ``args`` in a fresh process; its summary, peak RSS (MB), wall and CPU time (s)."""
    measured = out.parent / f"{out.name}.rusage.json"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", CHILD, str(measured), *args], check=True)
    wall = time.perf_counter() - start
    child = json.loads(measured.read_text())
    assert child["rc"] == 0
    summary = json.loads((out / "summary.json").read_text())
    return {"summary": summary, "maxrss_mb": child["maxrss_kb"] / 1024, "wall_s": wall, "cpu_s": child["cpu_s"]}


@pytest.fixture(scope="module")
def dpo_runs(smollm2_dir, tmp_path_factory):
    """DPO with full fine-tuning and with LoRA, each in its own process, at the test budget."""
    root = tmp_path_factory.mktemp("real-dpo")
    runs = {}
    for name, config in (("full", "dpo.toml"), ("lora", "dpo_lora.toml")):
        out = root / name
        runs[name] = run_in_child(train_args(config, PREFS, smollm2_dir, out, f"offline.optim.steps={DPO_STEPS}"), out)
        print(f"\nDPO {name}: accuracy {runs[name]['summary']['metrics']['reward_accuracy']['trained']:.3f}, "
              f"peak RSS {runs[name]['maxrss_mb']:.0f} MB, {runs[name]['wall_s']:.0f} s wall, "
              f"{runs[name]['cpu_s']:.0f} s CPU")
    return runs


@pytest.mark.slow
def test_dpo_on_chat_preferences_reaches_held_out_accuracy_080(dpo_runs):
    """DPO (beta 0.1, lr 1e-5, 20 steps of 8 conversational pairs, examples/dpo.toml) makes the
    implicit reward margin positive on at least 80% of the 174 held-out pairs (start: 0, the
    margin of the starting model against itself). Threshold fixed before the first run: 0.8."""
    accuracy = dpo_runs["full"]["summary"]["metrics"]["reward_accuracy"]["trained"]
    assert dpo_runs["full"]["summary"]["held_out"] == 174
    assert accuracy >= 0.8, accuracy


@pytest.mark.slow
def test_lora_dpo_matches_full_fine_tuning_with_less_memory(dpo_runs):
    """LoRA DPO (r 16, alpha 32, every block linear, lr 1e-4, examples/dpo_lora.toml; otherwise as
    the full run) reaches held-out accuracy within 0.05 of full fine-tuning, and its process's peak
    RSS is lower (each run measured in a fresh process). Thresholds fixed before the first run."""
    full, lora = dpo_runs["full"], dpo_runs["lora"]
    acc_full = full["summary"]["metrics"]["reward_accuracy"]["trained"]
    acc_lora = lora["summary"]["metrics"]["reward_accuracy"]["trained"]
    assert abs(acc_lora - acc_full) <= 0.05, (acc_lora, acc_full)
    assert lora["maxrss_mb"] < full["maxrss_mb"], (lora["maxrss_mb"], full["maxrss_mb"])


@pytest.mark.slow
def test_grpo_with_a_python_verifier_raises_held_out_reward(smollm2_dir, tmp_path):
    """GRPO (8 samples of at most 10 tokens per prompt, 4 prompts per step, lr 2e-5, 16 steps,
    examples/grpo.toml) with the verifier examples/verifier/reward.py:correct raises the mean reward
    on 500 held-out prompts (one sample each from the starting and the trained model, same seeds)
    by at least 2 paired standard errors. Threshold fixed before the first run."""
    out = tmp_path / "grpo"
    reward = f"{EXAMPLES / 'verifier' / 'reward.py'}:correct"
    start, cpu = time.perf_counter(), time.process_time()
    assert main(train_args("grpo.toml", PROMPTS, smollm2_dir, out, f"online.optim.steps={GRPO_STEPS}") +
                ["--reward", reward]) == 0
    summary = json.loads((out / "summary.json").read_text())
    m = summary["metrics"][f"reward {reward}"]
    print(f"\nGRPO: reward {m['start']:.3f} -> {m['trained']:.3f}, change {m['change']:+.3f} ± {m['change_se']:.3f} "
          f"on 500 held-out prompts, {time.perf_counter() - start:.0f} s wall, {time.process_time() - cpu:.0f} s CPU")
    assert summary["held_out"] >= 500  # the config evaluates the first 500 of them
    assert m["change"] >= 2 * m["change_se"] and m["change"] > 0, m


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name.replace('/', '_')}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_make_data_writes_the_committed_example_files(tmp_path, monkeypatch):
    """examples/make_data.py is deterministic: run into a scratch copy, it writes the committed
    files byte for byte, from training and held-out countries that do not overlap."""
    make_data = load_example("make_data")
    monkeypatch.setattr(make_data, "HERE", tmp_path / "examples")
    make_data.main()
    for path in (*PREFS, *PROMPTS):
        assert (tmp_path / "examples" / path.parent.name / path.name).read_bytes() == path.read_bytes(), path
    train, held_out = make_data.split_countries()
    assert not {c for c, _ in train} & {c for c, _ in held_out}


def test_example_reward_reads_strings_and_chat_messages():
    """reward.py:correct takes TRL's two completion forms and matches whole words only."""
    correct = load_example("verifier/reward").correct
    completions = ["The capital is Paris.", [{"role": "assistant", "content": "port-au-prince!"}], "Parisian", "Lyon"]
    answers = ["Paris", "Port-au-Prince", "Paris", "Paris"]
    assert correct(["q"] * 4, completions, answers) == [1.0, 1.0, 0.0, 0.0]
