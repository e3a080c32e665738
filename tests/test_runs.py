"""Run directories: atomic files, metrics that survive kills, resume that redoes nothing."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from rlxf.algorithms.loop import OptimConfig, train
from rlxf.core.runs import Run, RunError, atomic_dir, atomic_write_text


def test_atomic_write_replaces_whole_file_or_nothing(tmp_path):
    target = tmp_path / "f.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "d") as d:
            (d / "x").write_text("half")
            raise RuntimeError("killed mid-write")
    assert not (tmp_path / "d").exists()
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]


def test_half_written_metrics_line_is_dropped_and_truncation_on_resume(tmp_path):
    run = Run(tmp_path / "r", "x = 1\n")
    for step in range(5):
        run.log("a", step, loss=float(step))
    with open(run.metrics_path, "a") as f:
        f.write('{"stage": "a", "step": 5, "lo')  # a kill in the middle of a write
    run = Run(tmp_path / "r", "x = 1\n")
    assert [r["step"] for r in run.metrics("a")] == [0, 1, 2, 3, 4]
    run.save_checkpoint("a", 2, {"w": 1})
    step, state = run.load_checkpoint("a")
    assert step == 2 and state == {"w": 1}
    assert [r["step"] for r in run.metrics("a")] == [0, 1, 2]


def test_a_different_config_in_the_same_directory_is_refused(tmp_path):
    Run(tmp_path / "r", "x = 1\n")
    with pytest.raises(RunError, match="different config"):
        Run(tmp_path / "r", "x = 2\n")
    Run(tmp_path / "r", "x = 2\n", fresh=True)  # --fresh starts over


def _toy_training(run, steps, micro=0, stop_after=None, freeze_bias=False):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    if freeze_bias:  # a frozen weight, as a LoRA model's base is
        model.bias.requires_grad_(False)
    data = torch.randn(64, 3)
    target = data @ torch.tensor([1.0, -2.0, 0.5]) + 0.1

    def make_batch(step):
        if step == stop_after:
            raise KeyboardInterrupt  # stands in for a kill between two steps
        g = torch.Generator().manual_seed(step)
        return torch.randint(0, 64, (16,), generator=g).tolist()

    def loss_fn(micro_b, batch):
        pred = model(data[micro_b]).squeeze(-1)
        loss = ((pred - target[micro_b]) ** 2).sum() / len(batch)
        return loss, {"loss": loss.item()}

    cfg = OptimConfig(steps=steps, batch_size=16, micro_batch_size=micro, lr=0.05, checkpoint_every=3)
    train(run, "toy", model, cfg, make_batch, loss_fn, quiet=True)
    return model


def test_gradient_accumulation_gives_the_same_training(tmp_path):
    full = _toy_training(Run(tmp_path / "a", ""), steps=6)
    split = _toy_training(Run(tmp_path / "b", ""), steps=6, micro=5)  # uneven micro-batches
    for p, q in zip(full.parameters(), split.parameters()):
        assert torch.allclose(p, q, atol=1e-6)


def test_interrupted_training_resumes_to_identical_metrics(tmp_path):
    straight = Run(tmp_path / "a", "")
    _toy_training(straight, steps=10)
    broken = Run(tmp_path / "b", "")
    with pytest.raises(KeyboardInterrupt):
        _toy_training(broken, steps=10, stop_after=7)
    # checkpoints land after steps 2 and 5; the interruption came before step 7, so step 6 is redone
    assert [r["step"] for r in Run(tmp_path / "b", "").metrics("toy")] == list(range(7))
    _toy_training(Run(tmp_path / "b", ""), steps=10)
    a, b = straight.metrics("toy"), Run(tmp_path / "b", "").metrics("toy")
    assert [r["step"] for r in b] == list(range(10))
    assert [r["loss"] for r in a] == [r["loss"] for r in b]


def test_checkpoints_leave_frozen_weights_out_and_resume_identically(tmp_path):
    straight = Run(tmp_path / "a", "")
    _toy_training(straight, steps=10, freeze_bias=True)
    broken = Run(tmp_path / "b", "")
    with pytest.raises(KeyboardInterrupt):
        _toy_training(broken, steps=10, stop_after=7, freeze_bias=True)
    _step, state = Run(tmp_path / "b", "").load_checkpoint("toy")
    assert sorted(state["model"]) == ["weight"]  # the frozen bias comes back with the model
    _toy_training(Run(tmp_path / "b", ""), steps=10, freeze_bias=True)
    assert [r["loss"] for r in straight.metrics("toy")] == [r["loss"] for r in Run(tmp_path / "b", "").metrics("toy")]


TINY = ["sft.optim.steps=80", "sft.optim.checkpoint_every=10", "sft.corpus_size=2000", "comparisons.n_pairs=200",
        "reward_model.optim.steps=10", "reward_model.held_out_pairs=50", "dpo.optim.steps=30",
        "dpo.optim.checkpoint_every=10", "dpo.optim.batch_size=16", "rloo.optim.steps=6", "rloo.optim.batch_size=8",
        "eval.n_prompts=40", "best_of_n.n=4"]


def _cli(run_dir, *extra):
    args = [sys.executable, "-m", "rlxf.cli", "run", "rlxf/configs/quickstart.toml", "--quiet",
            "--set", f'run.dir="{run_dir}"']
    for s in TINY + list(extra):
        args += ["--set", s]
    return args


def _metric_keys(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return rows


def test_sigkill_mid_stage_then_same_command_completes_identically(tmp_path):
    kill_stage, after = "dpo", 15
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root}
    ref_dir, killed_dir = tmp_path / "ref", tmp_path / "killed"
    subprocess.run(_cli(ref_dir), check=True, cwd=root, env=env, capture_output=True)
    proc = subprocess.Popen(_cli(killed_dir), cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = killed_dir / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and sum(f'"stage": "{kill_stage}"' in line for line in metrics.read_text().splitlines()) >= after:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed_dir / "stages" / kill_stage / "done.json").exists()
    done_before = {p.parent.name for p in (killed_dir / "stages").glob("*/done.json")}
    mtimes = {n: (killed_dir / "stages" / n / "done.json").stat().st_mtime for n in done_before}
    subprocess.run(_cli(killed_dir), check=True, cwd=root, env=env, capture_output=True)
    # finished stages were not redone
    assert all((killed_dir / "stages" / n / "done.json").stat().st_mtime == t for n, t in mtimes.items())
    ref_rows, got_rows = _metric_keys(ref_dir), _metric_keys(killed_dir)
    keys = [(r["stage"], r["step"]) for r in got_rows]
    assert len(keys) == len(set(keys)), "a (stage, step) metrics line is duplicated"
    assert sorted(keys) == sorted((r["stage"], r["step"]) for r in ref_rows)
    ref_by_key = {(r["stage"], r["step"]): r for r in ref_rows}
    for r in got_rows:
        expected = ref_by_key[(r["stage"], r["step"])]
        assert r["loss"] == pytest.approx(expected["loss"], rel=1e-4, abs=1e-6)
    assert json.loads((killed_dir / "summary.json").read_text()).keys() == json.loads(
        (ref_dir / "summary.json").read_text()).keys()


def test_metrics_lines_are_synced_to_disk_with_each_checkpoint_and_done_marker_not_each_line(tmp_path, monkeypatch):
    """An fsync per metrics line cost more than a tiny training step: lines are written at once (a killed
    process loses none) and fsynced before the checkpoint or done marker that follows them."""
    run = Run(tmp_path / "r", "x = 1\n")
    synced = []
    real = os.fsync

    def counting(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real(fd)

    monkeypatch.setattr(os, "fsync", counting)
    for step in range(3):
        run.log("train", step, loss=1.0)
    assert str(run.metrics_path) not in synced and len(run.metrics("train")) == 3
    run.save_checkpoint("train", 2, {"w": torch.zeros(1)})
    assert synced.count(str(run.metrics_path)) == 1
    run.mark_done("train", {})
    assert synced.count(str(run.metrics_path)) == 2
