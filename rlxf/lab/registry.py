"""Labs that ``rlxf run`` can execute, chosen by the config's top-level ``lab`` key.

A lab is a :class:`rlxf.lab.stages.StagedLab`: a ``Config`` dataclass attribute (which has
a ``lab: str`` field), its stages, its table and its report sections. Entries are import
paths so a lab's dependencies load only when it runs.
"""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path

from rlxf.core.config import ConfigError

LABS: dict[str, str] = {
    "pipeline": "rlxf.lab.pipeline:Pipeline",
    "control": "rlxf.lab.control:ControlLab",
    "online": "rlxf.lab.online:OnlineLab",
    "best_of_n": "rlxf.lab.best_of_n:BestOfNLab",
    "direct": "rlxf.lab.direct:DirectLab",
    "train": "rlxf.lab.train:TrainLab",
    "search": "rlxf.lab.search:SearchLab",
    "critique": "rlxf.lab.critique:CritiqueLab",
    "agents": "rlxf.lab.agents:AgentsLab",
    "meta": "rlxf.lab.meta:MetaLab",
    "prompts": "rlxf.lab.prompts:PromptLab",
}


def lab_class(name: str):
    if name not in LABS:
        raise ConfigError(f"lab: unknown lab {name!r}; known labs: {', '.join(sorted(LABS))}")
    module, attr = LABS[name].split(":")
    return getattr(importlib.import_module(module), attr)


def resolve(path: str, what: str):
    """The object at ``module:attr``; a module that does not import or lacks the attribute is a
    :class:`ConfigError` naming ``what`` (the config key) and the path."""
    module, attr = path.split(":")
    try:
        found = getattr(importlib.import_module(module), attr)
    except ImportError as e:
        raise ConfigError(f"{what}: cannot import {module} for {path} ({e})") from None
    except AttributeError:
        raise ConfigError(f"{what}: {module} has no {attr} (expected {path})") from None
    return found


def reopen(run_dir: str | Path):
    """The lab of an existing run directory, read back from its ``config.toml`` (to rewrite
    its report; see :meth:`rlxf.lab.stages.StagedLab.reopen`)."""
    config = Path(run_dir) / "config.toml"
    if not config.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no config.toml)")
    return lab_class(lab_of(config)).reopen(run_dir)


def lab_of(config_path: str | Path | None) -> str:
    """The ``lab`` named at the top of a TOML config (``pipeline`` when absent)."""
    if config_path is None or not Path(config_path).is_file():
        return "pipeline"
    try:
        table = tomllib.loads(Path(config_path).read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{config_path}: not valid TOML ({e})") from None
    lab = table.get("lab", "pipeline")
    if not isinstance(lab, str):
        raise ConfigError(f"{config_path}: lab must be a string naming a lab, got {lab!r}")
    return lab
