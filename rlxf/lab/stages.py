"""What every lab shares: named stages run in order in one run directory, then a report.

A lab subclasses :class:`StagedLab`, lists its stages in :meth:`~StagedLab.stages` and fills its
report with :meth:`~StagedLab.report_sections`; running, skipping, resuming, seeding and
writing the page are done here once. A finished stage is skipped; an unfinished one starts
again (from its last checkpoint where its trainer keeps one, with the metrics it logged after
that checkpoint dropped); each is seeded from (run seed, stage name).
"""

from __future__ import annotations

import json
import time
from dataclasses import MISSING, asdict, fields, is_dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from rlxf.algorithms.batching import step_rng
from rlxf.algorithms.loop import check_schedules
from rlxf.core.config import load_config, to_toml
from rlxf.core.config import ConfigError
from rlxf.core.runs import Run
from rlxf.core.cluster import SCALE_KEYS, connect_ray, scale_of
from rlxf.lab import report


def seed_stage(seed: int, name: str) -> None:
    """Seed the global generators from (run seed, stage name), so a stage is reproducible
    whether or not earlier stages ran in this process (new heads, dropout, ...)."""
    salt = sum(ord(ch) * 31**i for i, ch in enumerate(name)) % 2**31
    torch.manual_seed(int(step_rng(seed, 0, salt).integers(2**62)))
    np.random.seed(salt)


def drop_partial_metrics(run: Run, name: str) -> None:
    """Before an unfinished stage runs again: with no checkpoint it starts over, so every metric
    it logged goes; with one, its trainer resumes and drops those after it (``Run.load_checkpoint``)."""
    if not (run.dir / "stages" / name / "checkpoint.pt").exists():
        run.truncate_metrics(name, after_step=-1)


def run_identity(cfg) -> str:
    """The ``config.toml`` a run of ``cfg`` is identified by: the whole config less where metrics go
    and where the work runs (a resumed run may change those), and less settings added after runs
    existed that are at their defaults (:func:`omit_new_defaults`)."""
    table = asdict(cfg)
    for key in ("report_to", *SCALE_KEYS):
        table["run"].pop(key)
    omit_new_defaults(cfg, table)
    return to_toml(table)


def omit_new_defaults(cfg, table: dict) -> None:
    """Drop from ``table`` (``asdict(cfg)``) every field marked ``metadata={"identity": "omit_default"}``
    whose value is its default, in nested sections too: a run made before the setting existed keeps
    the same ``config.toml``, so it still resumes."""
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if f.metadata.get("identity") == "omit_default" and value == _default(f):
            table.pop(f.name, None)
        elif is_dataclass(value) and isinstance(table.get(f.name), dict):
            omit_new_defaults(value, table[f.name])


def _default(f):
    return f.default_factory() if f.default_factory is not MISSING else f.default


class StagedLab:
    """A lab run: ``Config`` (a dataclass with ``lab`` and ``run`` fields), :meth:`stages`,
    :meth:`format_table` and :meth:`report_sections` are the lab's; the rest is shared."""

    Config: type
    title = "rlxf run"  # the report's heading, before the run directory

    def __init__(self, cfg, fresh: bool = False, quiet: bool = False, log: Callable[[str], None] = print):
        self.cfg, self.quiet, self.log = cfg, quiet, log
        self.seed = cfg.run.seed
        scale = scale_of(cfg.run)
        if scale.problems():
            raise ConfigError("; ".join(scale.problems()))
        check_schedules(cfg)
        self.validate()
        if scale.executor == "ray":  # a missing Ray or an unreachable cluster stops the run before it writes
            connect_ray(scale)
        self.run = Run(cfg.run.dir, run_identity(cfg), fresh=fresh, report_to=cfg.run.report_to, scale=scale)

    @classmethod
    def reopen(cls, run_dir: str | Path) -> StagedLab:
        """The lab of an existing run directory, from its ``config.toml``, to rewrite its report:
        inputs are not checked again and nothing in the directory changes but the report."""
        run_dir = Path(run_dir)
        cfg = load_config(cls.Config, run_dir / "config.toml")
        lab = cls.__new__(cls)
        lab.cfg, lab.quiet, lab.log, lab.seed = cfg, True, lambda _msg: None, cfg.run.seed
        lab.run = Run.existing(run_dir)
        return lab

    # -- what a lab fills in ----------------------------------------------------------------
    def validate(self) -> None:
        """Find bad input before the first stage starts: nothing is written on failure."""

    def stages(self) -> list[tuple[str, Callable[[], dict]]]:
        """(name, function) of every stage in order; each function returns the stage's result."""
        raise NotImplementedError

    def source_digests(self) -> dict[str, str]:
        """Digest of the live input each stage read, by stage name: a finished stage whose input
        changed since it ran runs again, with every stage after it. None by default."""
        return {}

    @staticmethod
    def format_table(summary: dict) -> str:
        raise NotImplementedError

    def report_sections(self, summary: dict) -> list[str]:
        """HTML sections of the report between its heading and the stage results (plots are
        written beside it as they are made); by default the summary table."""
        return [report.pre(self.format_table(summary))]

    # -- shared -----------------------------------------------------------------------------
    def run_stages(self, until: str | None = None) -> None:
        """Run every unfinished stage of :meth:`stages` in order, each seeded from its name;
        with ``until``, stop after that stage."""
        stages = self.stages()
        names = [name for name, _ in stages]
        if until is not None and until not in names:
            raise ValueError(f"until: no stage {until!r} in this run (stages: {', '.join(names)})")
        self._reset_stale_stages(names)
        for name, fn in stages[: names.index(until) + 1 if until else None]:
            if self.run.is_done(name):
                self.log(f"[{name}] done already, skipping")
                continue
            t0 = time.time()
            self.log(f"[{name}] running")
            drop_partial_metrics(self.run, name)
            seed_stage(self.seed, name)
            result = fn()
            result["seconds"] = round(time.time() - t0, 1)
            self.run.mark_done(name, result)
            self.log(f"[{name}] finished in {result['seconds']}s")

    def _reset_stale_stages(self, names: list[str]) -> None:
        for name, digest in self.source_digests().items():
            if not self.run.is_done(name) or self.run.result(name).get("source_digest") == digest:
                continue
            later = names[names.index(name):]
            self.log(f"[{name}] its input changed since it ran: running {', '.join(later)} again")
            for stale in reversed(later):  # last first: a kill midway leaves a consistent prefix done
                self.run.reset_stage(stale)

    def unfinished(self) -> list[str]:
        return [name for name, _ in self.stages() if not self.run.is_done(name)]

    def summary(self) -> dict:
        """The run's results table, as its last stage wrote it to ``summary.json``."""
        return json.loads((self.run.dir / "summary.json").read_text())

    def write_report(self) -> Path:
        """(Re)write ``report.html`` and its plots from what the run directory holds."""
        return report.write_page(self.run, f"{self.title}: {self.run.dir}", self.report_sections(self.summary()))

    def execute(self) -> dict:
        """Run the unfinished stages, then write the report; returns the summary."""
        self.run_stages()
        self.write_report()
        return self.summary()
