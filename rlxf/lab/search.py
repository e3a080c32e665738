"""The search lab: gold against search compute for each search method on each built-in task.

(Being built: the task and method contracts below are fixed; the lab's stages, table and report follow.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class TaskSetup:
    """A task ready to search: its trained policy (None when each method builds its own), the held-out
    prompts gold is measured on, and whatever else the task's methods need (``extras``)."""

    name: str
    policy: Any | None
    prompts: list[str]
    extras: dict = field(default_factory=dict)


@dataclass
class SearchMethod:
    """One search method of the lab: ``search(setup, prepared, budget, seed) -> {"gold", "generations"}``,
    after ``prepare(setup, run, seed) -> prepared`` (once per task, e.g. training a PRM) when given."""

    name: str
    search: Callable[..., dict]
    prepare: Callable[..., Any] | None = None
