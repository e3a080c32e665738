"""What the label store holds: projects, labelers, items, assignments and labels, and its errors."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

KINDS = ("preference", "ranking", "rating", "critique")
CHOICES = ("a", "b", "tie", "skip")
RECORD_KINDS = {"preference": ("comparison",), "ranking": ("ranking",), "rating": ("rating",),
                "critique": ("critique", "correction")}  # the records each project kind exports
DEFAULT_SETTINGS = {"overlap": 1, "selection": "uniform", "scale": [1, 5], "max_critique_chars": 4000,
                    "nu": 1.0, "eps": 0.0, "seed": 0, "query_policy": ""}  # query_policy: "" = the shipped one


class StoreError(ValueError):
    """A request the store refuses; ``status`` is the matching HTTP status code."""

    status = 400


class NotFound(StoreError):
    status = 404


class Conflict(StoreError):
    status = 409


@dataclass(frozen=True)
class Project:
    id: int
    name: str
    kind: str
    settings: dict = field(hash=False)


@dataclass(frozen=True)
class Labeler:
    id: int
    project_id: int
    name: str


@dataclass(frozen=True)
class Item:
    id: int
    prompt: str
    responses: tuple[str, ...]
    meta: dict = field(hash=False)


@dataclass(frozen=True)
class Assignment:
    id: int
    labeler_id: int
    item: Item
    shown: tuple[int, ...]  # indices into item.responses, in display order


@dataclass(frozen=True)
class Label:
    id: int
    labeler: str
    item: Item
    shown: tuple[int, ...]
    kind: str
    value: dict = field(hash=False)
    created: float


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
