"""Experiment trackers a run also reports to: TensorBoard, Weights & Biases and Trackio.

``metrics.jsonl`` and ``report.html`` are always written; a tracker is an extra copy of the
same numbers where people already look. Each is the library itself, installed as an optional
extra (``pip install -e ".[tensorboard]"``, ``".[wandb]"``, ``".[trackio]"``). Scalars are
logged as ``STAGE/NAME`` against the stage's own step. W&B follows its usual settings
(``WANDB_MODE=offline`` logs without a network; ``WANDB_PROJECT`` picks the project).
"""

from __future__ import annotations

import atexit
import importlib.util
import math
import os
import zlib
from pathlib import Path
from typing import Any, Sequence

TRACKERS: dict[str, str] = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio"}
NONE = "none"


class TrackerError(ValueError):
    """A tracker that is unknown or not installed; raised before any stage runs."""


def check_trackers(names: Sequence[str], option: str = "report_to") -> list[str]:
    """Validate tracker names (``none`` means no tracker) and that their packages import."""
    names = [n for n in names if n != NONE]
    for name in names:
        if name not in TRACKERS:
            raise TrackerError(f"{option}: unknown tracker {name!r} (expected any of "
                               f"{', '.join([*TRACKERS, NONE])})")
        if not _installed(TRACKERS[name]):
            raise TrackerError(f"{option}: {name} is not installed; install it with "
                               f"pip install -e \".[{name}]\" (or drop it from {option})")
    return names


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _scalars(stage: str, values: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of a metrics line, tagged ``STAGE/NAME``."""
    out = {}
    for key, v in values.items():
        if isinstance(v, (int, float)) and math.isfinite(v):
            out[f"{stage}/{key}"] = float(v)
    return out


class _TensorBoard:
    def __init__(self, run_dir: Path, config: dict, name: str) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def log(self, stage: str, step: int, values: dict[str, Any]) -> None:
        for tag, v in _scalars(stage, values).items():
            self.writer.add_scalar(tag, v, step)

    def close(self) -> None:
        self.writer.close()


class _WandB:
    def __init__(self, run_dir: Path, config: dict, name: str) -> None:
        import wandb

        # one W&B run per run directory, so a resumed run appends to the same one
        run_id = f"rlxf-{zlib.crc32(str(run_dir.resolve()).encode()):08x}"
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "rlxf"), name=name, id=run_id,
                              resume="allow", dir=str(run_dir), config=config, reinit="create_new",
                              settings=wandb.Settings(console="off"))
        self.stages: set[str] = set()

    def log(self, stage: str, step: int, values: dict[str, Any]) -> None:
        if stage not in self.stages:  # each stage's curves run against its own step
            self.run.define_metric(f"{stage}/step")
            self.run.define_metric(f"{stage}/*", step_metric=f"{stage}/step")
            self.stages.add(stage)
        self.run.log({f"{stage}/step": step, **_scalars(stage, values)})

    def close(self) -> None:
        self.run.finish()


class _Trackio:
    def __init__(self, run_dir: Path, config: dict, name: str) -> None:
        import trackio

        self.trackio = trackio
        trackio.init(project=os.environ.get("TRACKIO_PROJECT", "rlxf"), name=name, config=config,
                                resume="allow")

    def log(self, stage: str, step: int, values: dict[str, Any]) -> None:
        self.trackio.log({f"{stage}/step": step, **_scalars(stage, values)})

    def close(self) -> None:
        self.trackio.finish()


_CLASSES = {"tensorboard": _TensorBoard, "wandb": _WandB, "trackio": _Trackio}


class Trackers:
    """The trackers of one run, opened on the first logged line and closed at exit."""

    def __init__(self, names: Sequence[str], run_dir: Path, config: dict, name: str) -> None:
        self.names = check_trackers(names)
        self.run_dir, self.config, self.name = Path(run_dir), config, name
        self.open: list | None = None

    def log(self, stage: str, step: int, values: dict[str, Any]) -> None:
        if not self.names:
            return
        if self.open is None:
            self.open = [_CLASSES[n](self.run_dir, self.config, self.name) for n in self.names]
            atexit.register(self.close)
        for tracker in self.open:
            tracker.log(stage, step, values)

    def close(self) -> None:
        for tracker in self.open or []:
            tracker.close()
        self.open = [] if self.open is not None else None
