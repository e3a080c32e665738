"""The scaling guide (docs/scale.md) and the arithmetic of benchmarks/scaling.py's multi-node estimate."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def scaling():
    spec = importlib.util.spec_from_file_location("scaling_benchmark", ROOT / "benchmarks" / "scaling.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ring_allreduce_time_by_hand(scaling):
    # 1 GB over 4 nodes at 8 Gb/s (1 GB/s): each node moves 2*3/4 GB = 1.5 s; 4 buckets of 250 MB,
    # each 2*3 steps of 100 us = 2.4 ms
    assert scaling.ring_allreduce_s(1e9, 4, 8, latency_s=1e-4, bucket_bytes=250e6) == pytest.approx(1.5024, rel=1e-12)
    # a part-filled bucket pays the latency too: 251 MB is 2 buckets, 2*1 steps each over 2 nodes
    assert scaling.ring_allreduce_s(251e6, 2, 8, latency_s=1e-3, bucket_bytes=250e6) == pytest.approx(
        0.251 + 0.004, rel=1e-12)
    assert scaling.ring_allreduce_s(1e9, 1, 8) == 0.0


def test_default_allreduce_of_smollm2_at_10_gbit(scaling):
    # float32 gradients of 134,515,008 parameters = 538,060,032 bytes; 2 nodes at 1.25 GB/s move half of
    # 2x that each way = 0.4304480256 s; 21 buckets of 25 MiB, 2 steps of 100 us each = 4.2 ms
    assert scaling.ring_allreduce_s(4 * scaling.SMOLLM2_PARAMS, 2, 10) == pytest.approx(0.4346480256, rel=1e-12)


def test_estimated_rate_by_hand(scaling):
    # 4 nodes x 8 samples per 2.0 s step, plus the 1.5024 s all-reduce above: 32 / 3.5024 samples/s
    rate = scaling.estimated_rate(2.0, 8, 1e9, 4, 8, latency_s=1e-4, bucket_bytes=250e6)
    assert rate == pytest.approx(32 / 3.5024, rel=1e-12)
    assert scaling.estimated_rate(2.0, 8, 1e9, 1, 8) == pytest.approx(4.0, rel=1e-12)


def test_estimate_table_efficiency_is_rate_over_n_single_nodes(scaling):
    rows = scaling.estimate_table({"m": (2.0, 250_000_000)}, 8)
    by_nodes = {int(r.split()[2]): r.split() for r in rows[1:] if r.split()[1] == "10"}
    # 1 GB of gradients at 10 Gb/s over 16 nodes: 2*15/16 * 0.8 s + 2*15*39 buckets * 100 us = 1.617 s
    comm = 2 * 15 / 16 * 0.8 + 2 * 15 * 39 * 1e-4
    assert float(by_nodes[16][4]) == pytest.approx(comm, rel=1e-2)
    assert float(by_nodes[16][6]) == pytest.approx(2.0 / (2.0 + comm), abs=0.006)
    assert float(by_nodes[1][6]) == 1.0


# -- the guide, run as written ---------------------------------------------------------------------

def guide_blocks() -> list[str]:
    """The guide's bash blocks that run rlxf or start Ray (not the install or the benchmark)."""
    text = (ROOT / "docs" / "scale.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    return [b for b in blocks if "rlxf run" in b or "ray start" in b]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_test_script(blocks: list[str], port: int, temp_dir: str) -> str:
    """The blocks as one script, changed only where a test must: the cluster gets a free port instead of
    6379 and its own Ray temp directory (so no other Ray user on this machine finds it), and
    ``ray start`` blocks in the background so that the test, not ``ray stop`` (which stops every Ray
    instance of the user), stops exactly this cluster at the end."""
    script = "\n".join(blocks).replace(":6379", f":{port}").replace("--port=6379", f"--port={port}")
    start = re.search(r"^\.venv/bin/ray start --head.*$", script, flags=re.M).group(0)
    background = (f"{start.replace('ray start', 'ray start --block --temp-dir=' + temp_dir)} > ray-start.log 2>&1 &\n"
                  "echo $! > ray-start.pid\n"
                  f"for i in $(seq 120); do (exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null && break; sleep 1; done\n"
                  "sleep 5")
    return "set -e\n" + script.replace(start, background)


@pytest.mark.slow
def test_the_guide_runs_as_written_on_a_local_cluster(tmp_path):
    """docs/scale.md's commands, in order, in a directory that has the clone's .venv and configs: a run on
    a local Ray instance, a cluster from ``ray start --head`` joined through RAY_ADDRESS, and a run killed
    by ``kill -9`` and started again. Every run must finish with its summary, and the resumed run's
    metrics must equal, to 1e-5, those of the uninterrupted run with the same settings (scale-local: the
    same learner workers and seed; its sampling shards match too)."""
    for name in (".venv", "configs"):
        (tmp_path / name).symlink_to(ROOT / name)
    temp_dir = tempfile.mkdtemp(prefix="rlxf-ray-")  # short: Ray's socket paths must fit in 107 bytes
    script = as_test_script(guide_blocks(), free_port(), temp_dir)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_USAGE_STATS_ENABLED": "0"}
    try:
        proc = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=3600)
    finally:
        pid_file = tmp_path / "ray-start.pid"
        if pid_file.exists():
            pid = int(pid_file.read_text())
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)  # `ray start --block` stops the processes it started
                for _ in range(60):
                    os.kill(pid, 0)
                    time.sleep(1)
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = tmp_path / "runs"
    for name in ("scale-local", "scale-cluster", "scale-resume"):
        assert (runs / name / "summary.json").is_file(), f"{name} did not finish:\n{proc.stderr[-3000:]}"

    def metrics(name):
        rows = [json.loads(line) for line in (runs / name / "metrics.jsonl").read_text().splitlines()]
        return {(r["stage"], r["step"]): r for r in rows}

    local, resumed = metrics("scale-local"), metrics("scale-resume")
    assert local.keys() == resumed.keys()
    worst = max(abs(local[k][m] - resumed[k][m]) for k in local for m in local[k]
                if isinstance(local[k][m], float))
    assert worst <= 1e-5
