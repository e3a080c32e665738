"""Trackers: every metrics line of a run also reaches TensorBoard, W&B (offline) and Trackio."""

from __future__ import annotations

import importlib.util
import json
import time

import pytest

from rlxf.core import trackers as trackers_mod
from rlxf.core.runs import Run
from rlxf.core.trackers import TrackerError


def _log_some(run: Run) -> None:
    for step in range(3):
        run.log("sft", step, loss=1.0 / (step + 1), note="not a number", lr=1e-3)
    run.log("dpo", 0, loss=0.7)
    run.trackers.close()


def test_tensorboard_gets_each_stage_against_its_own_step(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = Run(tmp_path / "r", "[run]\nseed = 1\n", report_to=["tensorboard"])
    _log_some(run)
    events = EventAccumulator(str(tmp_path / "r" / "tensorboard"))
    events.Reload()
    assert set(events.Tags()["scalars"]) == {"sft/loss", "sft/lr", "dpo/loss"}
    assert [(e.step, round(e.value, 4)) for e in events.Scalars("sft/loss")] == [(0, 1.0), (1, 0.5), (2, 0.3333)]
    assert [(e.step, round(e.value, 4)) for e in events.Scalars("dpo/loss")] == [(0, 0.7)]


def _wandb_records(run_dir) -> tuple[list[dict], dict]:
    """The history rows and the config that an offline W&B run wrote to its .wandb file.
    W&B's service finishes writing it after ``finish()`` returns: wait for the exit record."""
    from wandb.proto import wandb_internal_pb2 as pb
    from wandb.sdk.internal import datastore

    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    deadline = time.monotonic() + 60
    while True:
        store = datastore.DataStore()
        store.open_for_scan(str(path))
        records = []
        while (data := store.scan_data()) is not None:
            records.append(pb.Record())
            records[-1].ParseFromString(data)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    rows, config = [], {}
    for record in records:
        if record.WhichOneof("record_type") == "run":
            config.update({i.key: json.loads(i.value_json) for i in record.run.config.update})
        if record.WhichOneof("record_type") == "history":
            items = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in record.history.item}
            rows.append({k: v for k, v in items.items() if not k.startswith("_")})
    return rows, config


def test_wandb_offline_run_holds_the_metrics_and_config(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = Run(tmp_path / "r", "[run]\nseed = 7\n", report_to=["wandb"])
    _log_some(run)
    history, config = _wandb_records(tmp_path / "r")
    assert [(h.get("sft/step"), h.get("sft/loss")) for h in history[:3]] == [(0, 1), (1, 0.5), (2, 1 / 3)]
    assert history[3] == {"dpo/step": 0, "dpo/loss": 0.7}
    assert config["run"] == {"seed": 7}


@pytest.mark.skipif(importlib.util.find_spec("trackio") is None, reason="trackio extra not installed")
def test_trackio_run_holds_the_metrics(tmp_path, monkeypatch):
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))
    monkeypatch.setenv("TRACKIO_PROJECT", "rlxf-test")
    import trackio

    run = Run(tmp_path / "r", "[run]\nseed = 1\n", report_to=["trackio"])
    _log_some(run)
    logs = trackio.SQLiteStorage.get_logs(project="rlxf-test", run="r")
    assert [(row["sft/step"], row["sft/loss"]) for row in logs[:3]] == [(0, 1.0), (1, 0.5), (2, 1 / 3)]


def test_unknown_or_missing_tracker_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    with pytest.raises(TrackerError, match="report_to: unknown tracker 'mlflow' \\(expected any of tensorboard"):
        Run(tmp_path / "a", "x = 1\n", report_to=["mlflow"])
    monkeypatch.setattr(trackers_mod, "_installed", lambda module: False)
    with pytest.raises(TrackerError, match='wandb is not installed; install it with pip install -e ".\\[wandb\\]"'):
        Run(tmp_path / "b", "x = 1\n", report_to=["wandb"])
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_none_means_no_tracker(tmp_path):
    run = Run(tmp_path / "r", "x = 1\n", report_to=["none"])
    run.log("sft", 0, loss=1.0)
    assert run.trackers.open is None and not (tmp_path / "r" / "tensorboard").exists()


def test_cli_report_to_a_missing_tracker_fails_before_any_stage(tmp_path, capsys, monkeypatch):
    from rlxf.cli import main

    monkeypatch.setattr(trackers_mod, "_installed", lambda module: False)
    code = main(["quickstart", "--set", f"run.dir={tmp_path / 'run'}", "--report-to", "tensorboard"])
    err = capsys.readouterr().err
    assert code == 2 and "report_to: tensorboard is not installed" in err
    assert not (tmp_path / "run").exists()


def test_a_run_resumes_with_different_trackers(tmp_path):
    """report_to is left out of the run's resolved config, so adding a tracker to a resumed run is allowed."""
    from rlxf.core.config import load_config
    from rlxf.lab.control import ControlLab

    def lab(*extra):
        cfg = load_config(ControlLab.Config, None, [f"run.dir={tmp_path / 'run'}", *extra])
        return ControlLab(cfg, log=lambda _m: None)

    first = lab()
    assert "report_to" not in (tmp_path / "run" / "config.toml").read_text()
    again = lab('run.report_to=["tensorboard"]')
    assert again.run.trackers.names == ["tensorboard"] and first.run.trackers.names == []
