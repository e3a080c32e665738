"""The scale settings of ``[run]``: bad values, a missing Ray and an unreachable cluster are clear errors
(exit 2) before any stage writes; none of the settings is part of a run's identity."""

from __future__ import annotations

import socket
import sys
import time

import pytest

from rlxf.core.cluster import ScaleSettings, unreachable
from test_train_cli import OFFLINE, _train, data, model_dir  # noqa: F401 (fixtures)


def test_problems_name_each_bad_option():
    assert ScaleSettings().problems() == [] and not ScaleSettings(learner_workers=2).distributed
    bad = ScaleSettings(executor="dask", learner_workers=0, rollout_workers=0, strategy="zero3", rollout_cpus=0,
                        timeout_s=0, learner_threads=-1).problems()
    for text in ("run.executor must be one of local, ray, got 'dask'", "run.learner_workers must be >= 1, got 0",
                 "run.rollout_workers must be >= 1, got 0", "run.strategy must be one of ddp, fsdp, got 'zero3'",
                 "run.rollout_cpus must be a CPU share", "run.timeout_s must be > 0", "run.learner_threads must be >= 0"):
        assert any(text in line for line in bad), (text, bad)
    assert ScaleSettings(learner_workers=2).problems() == ['run.learner_workers = 2 needs run.executor = "ray"']
    assert ScaleSettings(executor="ray", learner_workers=2).distributed


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


def test_an_address_that_takes_no_connection_is_named_in_seconds():
    port = _closed_port()
    assert "Connection refused" in unreachable(f"127.0.0.1:{port}")
    assert unreachable("auto") == "" and unreachable("ray://") == ""


@pytest.mark.parametrize("setting, says", [
    (["--set", "run.learner_workers=2"], 'run.learner_workers = 2 needs run.executor = "ray"'),
    (["--set", 'run.strategy="zero3"'], "run.strategy must be one of ddp, fsdp"),
])
def test_bad_scale_settings_stop_before_the_run_exists(capsys, model_dir, data, tmp_path, setting, says):
    rc, _, err = _train(capsys, "dpo", model_dir, data["prefs"], tmp_path / "run", *OFFLINE, *setting)
    assert rc == 2 and says in err and not (tmp_path / "run").exists()


def test_an_unreachable_cluster_stops_the_run_in_seconds_before_it_writes(capsys, model_dir, data, tmp_path,
                                                                       monkeypatch):
    port = _closed_port()
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    start = time.monotonic()
    rc, _, err = _train(capsys, "dpo", model_dir, data["prefs"], tmp_path / "run", *OFFLINE,
                        "--set", 'run.executor="ray"')
    assert rc == 2 and not (tmp_path / "run").exists()
    assert f"cannot reach the Ray cluster at '127.0.0.1:{port}' ($RAY_ADDRESS)" in err and "ray start --head" in err
    assert time.monotonic() - start < 60  # Ray's own client would wait minutes


def test_a_missing_ray_names_the_extra_to_install(capsys, model_dir, data, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    rc, _, err = _train(capsys, "dpo", model_dir, data["prefs"], tmp_path / "run", *OFFLINE,
                        "--set", 'run.executor="ray"')
    assert rc == 2 and "needs Ray, which is not installed: pip install 'rlxf[ray]'" in err
    assert not (tmp_path / "run").exists()


def test_scale_settings_are_not_part_of_what_ran(capsys, model_dir, data, tmp_path):
    """A run may resume with other scale settings: they are left out of its config.toml."""
    rc, _, err = _train(capsys, "dpo", model_dir, data["prefs"], tmp_path / "run", *OFFLINE,
                        "--set", "run.rollout_workers=3", "--set", "run.timeout_s=7")
    assert rc == 0, err
    text = (tmp_path / "run" / "config.toml").read_text()
    assert "rollout_workers" not in text and "timeout_s" not in text and "executor" not in text
    rc, _, err = _train(capsys, "dpo", model_dir, data["prefs"], tmp_path / "run", *OFFLINE)
    assert rc == 0, err  # the same run, resumed (finished) with other settings: no "different config" error
