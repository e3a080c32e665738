"""Driving the feedback app over HTTP: a client for one labeler, simulated labelers, and a
way to run the app in a background thread, so the whole loop is testable without people."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx
import numpy as np


class LabelClient:
    """One labeler's session against a running app (``base`` like ``http://127.0.0.1:8000``)."""

    def __init__(self, base: str, token: str, timeout: float = 30.0):
        self.http = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def next(self) -> dict | None:
        """The next assignment (a dict with ``prompt`` and the shown ``responses``), or None when done."""
        r = self.http.get("/api/next")
        r.raise_for_status()
        data = r.json()
        return None if data["done"] else data

    def submit(self, assignment: dict, value: dict) -> int:
        """Submit an answer; returns the label id once the server has stored it durably."""
        r = self.http.post("/api/labels", json={"assignment_id": assignment["assignment_id"],
                                                "item_id": assignment["item_id"], "value": value})
        if r.status_code != 200:
            raise RuntimeError(f"label refused: HTTP {r.status_code}: {r.text}")
        return r.json()["label_id"]


def bradley_terry_answer(gold: Callable[[str, str], float], beta: float, rng: np.random.Generator):
    """An answer function for preference assignments: a Bradley-Terry labeler on ``gold``
    (P(first preferred) = sigma(beta * (g_a - g_b)), as ``BradleyTerryLabeler``)."""
    from rlxf.labelers.simulated import BradleyTerryLabeler

    labeler = BradleyTerryLabeler(beta, seed=int(rng.integers(2**31)))

    def answer(a: dict) -> dict:
        g = [gold(a["prompt"], r) for r in a["responses"]]
        return {"choice": "a" if bool(labeler.prefers_first(np.array([g[0]]), np.array([g[1]]))[0]) else "b"}

    return answer


@dataclass
class SessionLog:
    """What a simulated labeler did: acknowledged label ids, request latencies, errors."""

    acked: list[int] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def simulate_labeler(client: LabelClient, answer: Callable[[dict], dict], stop: threading.Event | None = None,
                     max_labels: int | None = None, log: SessionLog | None = None) -> SessionLog:
    """Label until the queue is empty, ``stop`` is set or ``max_labels`` are done."""
    log = log or SessionLog()
    while (stop is None or not stop.is_set()) and (max_labels is None or len(log.acked) < max_labels):
        try:
            t0 = time.perf_counter()
            a = client.next()
            t1 = time.perf_counter()
            if a is None:
                break
            lid = client.submit(a, answer(a))
            t2 = time.perf_counter()
        except (httpx.HTTPError, RuntimeError) as e:
            if stop is not None and stop.is_set():
                break
            log.errors.append(f"{type(e).__name__}: {e}")
            if len(log.errors) > 20:
                break
            continue
        log.acked.append(lid)
        log.latencies += [t1 - t0, t2 - t1]
    return log


@contextmanager
def serve_in_background(app, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run ``app`` with uvicorn in a daemon thread; yields its base URL, stops it on exit."""
    import uvicorn

    from rlxf.app.server import listening_socket

    sock = listening_socket(host, port)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("the app did not start within 30 s")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
