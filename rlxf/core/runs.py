"""A run is a directory: its resolved config, metrics, stage results and checkpoints.

Everything is written atomically (write beside, then rename), so a run killed at any
instant, SIGKILL included, leaves either the old file or the new one, never half of
one. Started again with the same config, a run skips finished stages, resumes the
unfinished one from its last checkpoint, and drops metric lines logged after that
checkpoint, so every (stage, step) appears exactly once.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
import tomllib
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from rlxf.core.trackers import Trackers
from rlxf.core.cluster import ScaleSettings


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        _fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def torch_save_atomic(obj: Any, path: str | Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def _as_dict(config_text: str) -> dict:
    try:
        return tomllib.loads(config_text)
    except tomllib.TOMLDecodeError:
        return {"config": config_text}


class RunError(RuntimeError):
    """A run directory that cannot be used as asked (e.g. it holds a different config)."""


class Run:
    """The directory of one run. ``config_text`` is the resolved config as TOML.
    ``report_to`` names trackers (:mod:`rlxf.core.trackers`) that get every metrics line too."""

    def __init__(self, directory: str | Path, config_text: str, fresh: bool = False,
                 report_to: Sequence[str] = (), scale: ScaleSettings | None = None):
        self.dir = Path(directory)
        self.scale = scale or ScaleSettings()  # where the run's stages put their work
        self.trackers = Trackers(report_to, self.dir, _as_dict(config_text), self.dir.name)  # checks first
        cfg_path = self.dir / "config.toml"
        if fresh and self.dir.exists():
            shutil.rmtree(self.dir)
        if cfg_path.exists() and cfg_path.read_text() != config_text:
            raise RunError(
                f"{self.dir} already holds a run with a different config; "
                f"pass --fresh to start over or choose another directory with --set run.dir=..."
            )
        self.dir.mkdir(parents=True, exist_ok=True)
        if not cfg_path.exists():
            atomic_write_text(cfg_path, config_text)
        self.metrics_path = self.dir / "metrics.jsonl"
        self._repair_metrics()

    def __getstate__(self) -> dict:
        """A copy for another process (a data-parallel learner worker): absolute paths, no trackers,
        which stay with the driver."""
        state = dict(self.__dict__)
        state["dir"], state["metrics_path"] = self.dir.resolve(), self.metrics_path.resolve()
        state["trackers"] = Trackers((), state["dir"], {}, self.dir.name)
        return state

    @classmethod
    def existing(cls, directory: str | Path) -> "Run":
        """A read-only view of a run directory that exists (to rebuild its report): its config is
        not checked again, its metrics are not repaired, and no tracker is started."""
        run = cls.__new__(cls)
        run.dir = Path(directory)
        run.scale = ScaleSettings()
        if not (run.dir / "config.toml").is_file():
            raise RunError(f"{run.dir} is not a run directory (no config.toml)")
        run.trackers = Trackers((), run.dir, {}, run.dir.name)
        run.metrics_path = run.dir / "metrics.jsonl"
        return run

    # -- stages -----------------------------------------------------------
    def stage_dir(self, name: str) -> Path:
        d = self.dir / "stages" / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def _done_path(self, name: str) -> Path:
        return self.dir / "stages" / name / "done.json"

    def is_done(self, name: str) -> bool:
        return self._done_path(name).exists()

    def mark_done(self, name: str, result: dict) -> None:
        self.sync_metrics()
        atomic_write_text(self._done_path(name), json.dumps(result, indent=2))
        ckpt = self.dir / "stages" / name / "checkpoint.pt"
        with contextlib.suppress(FileNotFoundError):
            ckpt.unlink()

    def reset_stage(self, name: str) -> None:
        """Forget that ``name`` ran: its done marker, checkpoint and metrics (outputs are
        overwritten atomically when it runs again)."""
        for leaf in ("done.json", "checkpoint.pt"):
            with contextlib.suppress(FileNotFoundError):
                (self.dir / "stages" / name / leaf).unlink()
        self.truncate_metrics(name, after_step=-1)

    def result(self, name: str) -> dict:
        return json.loads(self._done_path(name).read_text())

    # -- checkpoints ------------------------------------------------------
    def save_checkpoint(self, stage: str, step: int, state: dict) -> None:
        """Atomically store ``state`` as the stage's checkpoint at ``step`` (after the metrics logged so far)."""
        self.sync_metrics()
        torch_save_atomic({"step": step, "state": state}, self.stage_dir(stage) / "checkpoint.pt")

    def load_checkpoint(self, stage: str, truncate: bool = True) -> tuple[int, dict] | None:
        """Return (step, state) of the stage's last checkpoint, dropping metrics logged after it
        unless ``truncate`` is False (data-parallel ranks other than 0 only read)."""
        path = self.dir / "stages" / stage / "checkpoint.pt"
        blob = torch.load(path, map_location="cpu", weights_only=False) if path.exists() else None
        if truncate:
            self.truncate_metrics(stage, after_step=-1 if blob is None else blob["step"])
        return None if blob is None else (blob["step"], blob["state"])

    def checkpoint_step(self, stage: str) -> int | None:
        """The step of the stage's last checkpoint (None without one), read without loading its tensors."""
        path = self.dir / "stages" / stage / "checkpoint.pt"
        if not path.exists():
            return None
        return torch.load(path, map_location="cpu", weights_only=False, mmap=True)["step"]

    # -- metrics ----------------------------------------------------------
    def _repair_metrics(self) -> None:
        """Drop a trailing half-written line left by a kill mid-write."""
        if not self.metrics_path.exists():
            return
        data = self.metrics_path.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data[: data.rfind(b"\n") + 1]
            atomic_write_bytes(self.metrics_path, keep)

    def log(self, stage: str, step: int, **values: Any) -> None:
        """Append one metrics line for (stage, step). The line reaches the operating system at once (a
        killed process loses nothing); it is made durable on disk with the next checkpoint or done
        marker (:meth:`sync_metrics`), not line by line: an fsync per line cost about 2 ms, more than a
        tiny model's training step, and lines after the last checkpoint are dropped on resume anyway."""
        line = json.dumps({"stage": stage, "step": step, **values}, sort_keys=True)
        with open(self.metrics_path, "a") as f:
            f.write(line + "\n")
        self.trackers.log(stage, step, values)

    def sync_metrics(self) -> None:
        """fsync the metrics file, so the lines a checkpoint or done marker follows survive a machine crash."""
        with contextlib.suppress(FileNotFoundError):  # nothing logged yet: nothing to sync, and no empty file made
            with open(self.metrics_path, "rb") as f:
                os.fsync(f.fileno())

    def metrics(self, stage: str | None = None) -> list[dict]:
        if not self.metrics_path.exists():
            return []
        rows = [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]
        return [r for r in rows if stage is None or r["stage"] == stage]

    def truncate_metrics(self, stage: str, after_step: int) -> None:
        """Remove lines of ``stage`` whose step is greater than ``after_step``."""
        rows = self.metrics()
        keep = [r for r in rows if r["stage"] != stage or r["step"] <= after_step]
        if len(keep) != len(rows):
            atomic_write_text(self.metrics_path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in keep))
