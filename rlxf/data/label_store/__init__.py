"""The label store: where people's feedback lands, in SQLite (default) or PostgreSQL.

One database holds projects, the items to label (a prompt and two or more responses),
labelers (each with a secret token, of which only a SHA-256 hash is stored),
assignments (which item, and which of its responses, a labeler was shown) and labels.
Every statement is parameterised. A label is committed, and with SQLite fsynced to the
write-ahead log, before ``submit_label`` returns, so an acknowledged label survives a
SIGKILL of the server. The web app (``rlxf.app``) writes here; training reads the labels
back as ordinary feedback records with :func:`export_records`.
"""

from __future__ import annotations

import json
from pathlib import Path

from rlxf.data.label_store.entities import (
    CHOICES,
    DEFAULT_SETTINGS,
    KINDS,
    RECORD_KINDS,
    Assignment,
    Conflict,
    Item,
    Label,
    Labeler,
    NotFound,
    Project,
    StoreError,
    hash_token,
)
from rlxf.data.label_store.store import SCHEMA_VERSION, LabelStore
from rlxf.data.label_store.values import label_to_records, response_steps, validate_value
from rlxf.data.records import Record

__all__ = [
    "CHOICES", "DEFAULT_SETTINGS", "KINDS", "RECORD_KINDS", "SCHEMA_VERSION", "Assignment", "Conflict", "Item", "Label",
    "LabelStore", "Labeler", "NotFound", "Project", "StoreError", "export_records", "hash_token",
    "label_to_records", "open_project_dir", "read_project_records", "response_steps", "validate_value",
]


def export_records(store: LabelStore, project: Project) -> dict[str, list[Record]]:
    """Every label of ``project`` as records, grouped by record kind (e.g. 'comparison')."""
    groups: dict[str, list[Record]] = {}
    scale = tuple(project.settings["scale"])
    for label in store.labels(project):
        for rec in label_to_records(label, scale):
            groups.setdefault(type(rec).__name__.lower(), []).append(rec)
    return groups


# -- project directories ------------------------------------------------------------------

PROJECT_FILE = "project.json"
SQLITE_FILE = "labels.sqlite"


def open_project_dir(directory: str | Path) -> tuple[LabelStore, Project]:
    """Open the store and project of a label project directory (``rlxf label init``):
    its ``project.json`` names the project and its database (a file in the directory or
    a ``postgresql://`` URL)."""
    directory = Path(directory)
    path = directory / PROJECT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: create the project with 'rlxf label init --project {directory}'")
    try:
        cfg = json.loads(path.read_text())
        name, database = cfg["name"], cfg["database"]
    except (ValueError, KeyError, TypeError) as e:
        raise StoreError(f"{path}: expected a JSON object with 'name' and 'database' ({e})") from None
    target = database if database.startswith(("postgresql://", "postgres://")) else directory / database
    store = LabelStore.open(target)
    try:
        return store, store.project(name)
    except StoreError:
        store.close()
        raise


def read_project_records(directory: str | Path, record: str = "comparison") -> list[Record]:
    """Every label of a project directory as records of one kind (``comparison``,
    ``ranking``, ``rating``, ``critique`` or ``correction``), read fresh from the store:
    a training stage that calls this when it starts sees every label given so far."""
    store, project = open_project_dir(directory)
    try:
        return export_records(store, project).get(record, [])
    finally:
        store.close()
