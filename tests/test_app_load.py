"""The real server (``rlxf label serve`` under uvicorn, in its own process) under load and
under SIGKILL: every label acknowledged to a simulated labeler is in the database."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import numpy as np

from rlxf.app.client import LabelClient, SessionLog, simulate_labeler
from rlxf.app.project import init_project, open_project

LOAD_SECONDS = 60
LABELERS = 20


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _make_project(tmp_path, n_items: int, n_labelers: int) -> tuple[str, list[str]]:
    directory = tmp_path / "proj"
    init_project(directory, "preference", overlap=1)
    store, project = open_project(directory)
    try:
        store.add_items(project, [(f"prompt {i}", [f"left {i}", f"right {i}"], {}) for i in range(n_items)])
        tokens = [store.add_labeler(project, f"sim{k}") for k in range(n_labelers)]
    finally:
        store.close()
    return str(directory), tokens


class Server:
    """``rlxf label serve`` in a child process on a loopback port."""

    def __init__(self, directory: str, port: int):
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "rlxf.cli", "label", "serve", "--project", directory,
                                      "--host", "127.0.0.1", "--port", str(port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 90
        while True:
            try:
                if httpx.get(self.url + "/label", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                err = self.proc.stderr.read().decode() if self.proc.poll() is not None else "timed out"
                self.proc.kill()
                raise RuntimeError(f"server did not start: {err}")
            time.sleep(0.2)

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
        self.proc.wait(timeout=30)


class Labelers:
    """Simulated labelers, one thread each, answering 'a' until ``stop`` is set."""

    def __init__(self, url: str, tokens: list[str]):
        self.stop = threading.Event()
        self.logs = [SessionLog() for _ in tokens]
        self.clients = [LabelClient(url, t) for t in tokens]
        self.threads = [threading.Thread(target=simulate_labeler, args=(c, lambda a: {"choice": "a"}, self.stop),
                                         kwargs={"log": log}, daemon=True) for c, log in zip(self.clients, self.logs)]
        for t in self.threads:
            t.start()

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)
        for c in self.clients:
            c.close()

    def acked(self) -> list[int]:
        return [i for log in self.logs for i in log.acked]


def test_sigkill_loses_no_acknowledged_label(tmp_path):
    directory, tokens = _make_project(tmp_path, n_items=3000, n_labelers=4)
    port = _free_port()
    server = Server(directory, port)
    labelers = Labelers(server.url, tokens)
    deadline = time.time() + 30
    while len(labelers.acked()) < 60 and time.time() < deadline:
        time.sleep(0.05)
    server.stop(signal.SIGKILL)  # mid-stream: labelers are submitting right now
    labelers.finish()
    acked = set(labelers.acked())
    assert len(acked) >= 60

    store, project = open_project(directory)
    try:
        assert store.integrity_check() == "ok"
        stored = {l.id for l in store.labels(project)}
        assert acked <= stored, f"lost {len(acked - stored)} acknowledged labels"
    finally:
        store.close()

    # restart the real server on the recovered database: labeling goes on where it stopped
    server = Server(directory, _free_port())
    try:
        client = LabelClient(server.url, tokens[0])
        label_id = client.submit(client.next(), {"choice": "b"})
        client.close()
    finally:
        server.stop()
    store, project = open_project(directory)
    try:
        after = {l.id for l in store.labels(project)}
        assert after == stored | {label_id} and store.integrity_check() == "ok"
    finally:
        store.close()


def test_twenty_labelers_for_a_minute_without_errors(tmp_path):
    directory, tokens = _make_project(tmp_path, n_items=12000, n_labelers=LABELERS)
    server = Server(directory, _free_port())
    try:
        t0 = time.perf_counter()
        labelers = Labelers(server.url, tokens)
        time.sleep(LOAD_SECONDS)
        labelers.finish()
        elapsed = time.perf_counter() - t0
    finally:
        server.stop()
    logs, acked = labelers.logs, labelers.acked()
    latencies = np.array([x for log in logs for x in log.latencies])
    assert [e for log in logs for e in log.errors] == []
    assert all(len(log.acked) > 0 for log in logs)  # every labeler was served
    store, project = open_project(directory)
    try:
        stored = {l.id for l in store.labels(project)}
        assert len(acked) == len(set(acked)) and set(acked) <= stored
        assert store.integrity_check() == "ok"
    finally:
        store.close()
    print(f"\nload: {LABELERS} labelers, {elapsed:.0f} s, {len(acked)} labels, {len(acked) / elapsed:.1f} labels/s, "
          f"p95 latency {1000 * np.percentile(latencies, 95):.1f} ms (median {1000 * np.median(latencies):.1f} ms) "
          f"over {len(latencies)} requests")
