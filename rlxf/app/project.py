"""A label project on disk: a directory with ``project.json`` and, by default, ``labels.sqlite``.

``project.json`` names the project and its database: the SQLite file in the directory,
or a ``postgresql://`` URL. Every ``rlxf label`` command starts from the directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rlxf.core.runs import atomic_write_text
from rlxf.data.io import DataError
from rlxf.data.label_store import PROJECT_FILE as CONFIG
from rlxf.data.label_store import (
    RECORD_KINDS,
    SQLITE_FILE,
    LabelStore,
    Project,
    StoreError,
    export_records,
    open_project_dir,
)


def init_project(directory: str | Path, kind: str, name: str | None = None, database: str | None = None,
                 **settings: Any) -> str:
    """Create the project directory and its database; returns the owner token."""
    directory = Path(directory)
    if (directory / CONFIG).exists():
        raise StoreError(f"{directory / CONFIG} already exists: this directory already holds a label project")
    name = name or directory.resolve().name
    store = LabelStore.open(database or directory / SQLITE_FILE)
    try:
        _, token = store.create_project(name, kind, **settings)
    finally:
        store.close()
    atomic_write_text(directory / CONFIG, json.dumps({"name": name, "database": database or SQLITE_FILE}, indent=2))
    return token


def open_project(directory: str | Path) -> tuple[LabelStore, Project]:
    """The store and project of a project directory (see ``open_project_dir``)."""
    return open_project_dir(directory)


def read_items(path: str | Path) -> list[tuple[str, list[str], dict]]:
    """Items from a JSONL file: each line has ``prompt`` and ``responses`` (or TRL's
    ``completions``, or a ``chosen``/``rejected`` pair); an optional ``meta`` object is kept."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected JSONL with 'prompt' and 'responses')")
    items = []
    with path.open() as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise DataError(path, f"line {n}", f"not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise DataError(path, f"line {n}", "expected a JSON object")
            responses = row.get("responses", row.get("completions"))
            if responses is None and "chosen" in row and "rejected" in row:
                responses = [row["chosen"], row["rejected"]]
            prompt = row.get("prompt")
            if not isinstance(prompt, str) or not prompt:
                raise DataError(path, f"line {n}", "field 'prompt' is missing or empty (expected a string)", "prompt")
            if (not isinstance(responses, list) or len(responses) < 2
                    or not all(isinstance(r, str) and r for r in responses)):
                raise DataError(path, f"line {n}", "field 'responses' is not a list of 2 or more non-empty strings",
                                "responses")
            meta = row.get("meta") or {}
            if not isinstance(meta, dict):
                raise DataError(path, f"line {n}", "field 'meta' must be an object", "meta")
            items.append((prompt, responses, meta))
    if not items:
        raise DataError(path, None, "holds no items")
    return items


def export_project(directory: str | Path, out: str | Path, record: str | None = None) -> tuple[Path, int]:
    """Write the project's labels as an rlxf/TRL dataset (format from ``out``'s suffix)."""
    from rlxf.data.io import write_records

    store, project = open_project(directory)
    try:
        allowed = RECORD_KINDS[project.kind]
        record = record or allowed[0]
        if record not in allowed:
            raise StoreError(f"--record must be one of {', '.join(allowed)} for a {project.kind} project")
        records = export_records(store, project).get(record, [])
    finally:
        store.close()
    if not records:
        raise StoreError(f"project {project.name!r} has no {record} labels to export yet")
    return write_records(records, out), len(records)
