"""Reading and writing feedback records as JSONL, JSON, Parquet or a saved Hugging Face dataset.

The format follows the path: ``*.jsonl`` (one JSON object a line), ``*.json`` (an array of
objects, an object holding one such array, columns as arrays, or JSON lines as
``Dataset.to_json`` writes them), ``*.parquet``, a directory written by
``datasets.Dataset.save_to_disk``, or the name of a dataset already in the local Hugging Face
cache (read offline: nothing is downloaded); an in-memory ``datasets.Dataset`` may stand in for
a path when reading. ``columns`` (a rename map, ``{"question": "prompt"}``) maps a dataset's own
column names onto the ones rlxf reads. Rows use TRL's conventions (standard, implicit
prompt, and conversational), so datasets built for TRL load as they are. Every error
names the file, the line (1-based, JSONL) or row (0-based, as ``dataset[i]``), and the
field at fault.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from itertools import takewhile
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq

from rlxf.data.records import KINDS, Comparison, Demonstration, Record, RecordError

Source = str | os.PathLike | datasets.Dataset
Row = dict[str, Any]

_BATCH = 1024
_FORMATS = "a .jsonl, .json or .parquet file, or a directory written by Dataset.save_to_disk"
_SUFFIXES = (".jsonl", ".json", ".parquet")
# The columns that hold a prompt's responses (or a whole conversation) rather than extra data.
RESPONSE_FIELDS = ("chosen", "rejected", "completion", "completions", "messages", "corrected")


class DataError(ValueError):
    """Bad feedback data, reported as ``FILE, line N: field 'F' PROBLEM (expected ...)``."""

    def __init__(self, source: Any, where: str | None, message: str, field: str | None = None) -> None:
        self.source, self.where, self.field = str(source), where, field
        place = f"{self.source}, {where}" if where else self.source
        super().__init__(f"{place}: {message}")


# -- reading --------------------------------------------------------------------------


def read_records(path: Source, kind: str = "comparison", tokenizer: Any = None,
                 columns: dict[str, str] | None = None) -> list[Record]:
    """Read and validate every row of ``path`` as records of ``kind``.

    Nothing is returned unless every row is valid, so a training run never starts on
    half a dataset. ``tokenizer`` (with a chat template) renders conversational rows;
    ``columns`` renames the dataset's columns first.
    """
    return list(iter_records(path, kind, tokenizer, columns))


def iter_records(path: Source, kind: str = "comparison", tokenizer: Any = None,
                 columns: dict[str, str] | None = None) -> Iterator[Record]:
    """Stream records from ``path`` one row at a time, for files too big to hold twice.

    Unlike ``read_records`` it yields rows before later ones are checked, so a bad row
    raises ``DataError`` only when reached.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown record kind {kind!r} (expected one of {', '.join(KINDS)})")
    source, rows = open_rows(path, columns)
    return (to_record(kind, row, tokenizer, source, where) for where, row in rows)


def open_rows(path: Source, columns: dict[str, str] | None = None) -> tuple[str, Iterator[tuple[str, Row]]]:
    """The name errors should show for ``path``, and its raw rows as ``(where, row)`` with the
    ``columns`` renames applied (a rename of a column the first row lacks is an error)."""
    source, rows = _open_rows(path)
    return source, (_renamed(rows, columns, source) if columns else rows)


def to_record(kind: str, row: Row, tokenizer: Any, source: str, where: str) -> Record:
    """One raw row as a record of ``kind``; a field problem becomes a ``DataError`` naming
    ``source``, ``where`` and the field."""
    return _to_record(KINDS[kind], row, tokenizer, source, where)


def detect_kind(path: Source, columns: dict[str, str] | None = None) -> str:
    """The record kind ``path`` holds, read from the columns of its first row: "comparison"
    (chosen/rejected), "ranking" (completions/order), "rating", "critique", "correction",
    "unpaired" (completion + a true/false label), "demonstration" (completion, or chat
    ``messages``) or "prompt" (a prompt alone, extra columns allowed)."""
    source, rows = open_rows(path, columns)
    first = next(rows, None)
    if first is None:
        raise DataError(source, None, "holds no rows (expected at least one)")
    cols = {k for k, v in first[1].items() if v is not None}
    for kind, needs in (("comparison", {"chosen", "rejected"}), ("ranking", {"completions", "order"}),
                        ("rating", {"completion", "rating"}), ("critique", {"completion", "critique"}),
                        ("correction", {"completion", "corrected"}), ("unpaired", {"completion", "label"})):
        if needs <= cols:
            return kind
    if "completion" in cols or "messages" in cols:
        return "demonstration"
    if "prompt" in cols:
        return "prompt"
    raise DataError(source, first[0], f"has columns {', '.join(sorted(cols)) or '(none)'}; cannot tell what kind "
                                      "of data this is (expected prompt/chosen/rejected, prompt/completion/label, "
                                      "prompt/completion, messages, or prompt alone)")


def _open_rows(path: Source) -> tuple[str, Iterator[tuple[str, Row]]]:
    """Pick the reader for ``path``; return the name errors should show and its rows."""
    if isinstance(path, (datasets.Dataset, datasets.DatasetDict)):
        name = f"in-memory {type(path).__name__}"
        return name, _dataset_rows(path, name)
    name, path = str(path), Path(path)
    if not path.exists():
        if path.suffix in _SUFFIXES or not name or os.path.isabs(name) or name.startswith("."):
            raise DataError(path, None, f"no such file or directory (expected {_FORMATS})")
        return name, _dataset_rows(_load_cached(name), name)
    if path.is_dir():
        return str(path), _dataset_rows(_load_dir(path), path)
    if path.suffix == ".jsonl":
        return str(path), _jsonl_rows(path)
    if path.suffix == ".json":
        return str(path), _json_rows(path)
    if path.suffix == ".parquet":
        return str(path), _parquet_rows(path)
    raise DataError(path, None, f"unknown format '{path.suffix}' (expected {_FORMATS})")


def _load_cached(name: str) -> Any:
    """A dataset by name from the local Hugging Face cache, offline; its "train" split when it has
    several. Not cached is an error: a run never downloads."""
    import huggingface_hub.constants as hub
    from unittest import mock

    offline = [mock.patch.object(datasets.config, "HF_HUB_OFFLINE", True),
               mock.patch.object(datasets.config, "HF_DATASETS_OFFLINE", True),
               mock.patch.object(hub, "HF_HUB_OFFLINE", True)]
    try:
        for patch in offline:
            patch.start()
        ds = datasets.load_dataset(name, download_mode="reuse_dataset_if_exists")
    except Exception as e:  # noqa: BLE001 - offline misses surface as several exception types
        raise DataError(name, None, f"is not a file or directory, nor a dataset in the local Hugging Face cache "
                                    f"({type(e).__name__}; nothing is downloaded) (expected {_FORMATS}, or the "
                                    "name of a cached dataset)") from None
    finally:
        for patch in offline:
            patch.stop()
    if isinstance(ds, datasets.DatasetDict) and "train" in ds:
        return ds["train"]
    return ds


def _renamed(rows: Iterator[tuple[str, Row]], columns: dict[str, str], source: str) -> Iterator[tuple[str, Row]]:
    for i, (where, row) in enumerate(rows):
        if i == 0:
            have = ", ".join(sorted(row)) or "(none)"
            for old, new in columns.items():
                if old not in row:
                    raise DataError(source, where, f"has no column '{old}' to rename to '{new}' (data.columns; "
                                                   f"the columns are: {have})", field=old)
                if new in row and new not in columns:
                    raise DataError(source, where, f"has both '{old}' and '{new}'; renaming '{old}' to '{new}' "
                                                   f"would hide one (data.columns)", field=new)
        yield where, {columns.get(k, k): v for k, v in row.items()}


def _jsonl_rows(path: Path) -> Iterator[tuple[str, Row]]:
    """Yield ``("line N", row)`` for each non-blank line, reading one line at a time."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            where = f"line {lineno}"
            try:
                row = json.loads(raw)
            except json.JSONDecodeError as e:
                raise DataError(path, where, f"not valid JSON ({e.msg} at column {e.colno})") from None
            except UnicodeDecodeError:
                raise DataError(path, where, "not valid UTF-8 text") from None
            if not isinstance(row, dict):
                raise DataError(path, where, f"is a JSON {type(row).__name__} (expected a JSON object)")
            yield where, row


def _json_rows(path: Path) -> Iterator[tuple[str, Row]]:
    """Rows of a ``.json`` file: an array of objects, an object whose one value is such an
    array (``{"data": [...]}``), an object of equal-length column arrays, or JSON lines."""
    try:
        data = json.loads(path.read_bytes())
    except UnicodeDecodeError:
        raise DataError(path, None, "not valid UTF-8 text") from None
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # several top-level values: JSON lines in a .json file
            yield from _jsonl_rows(path)
            return
        raise DataError(path, None, f"not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    if isinstance(data, dict):
        data = _json_object_rows(path, data)
    if not isinstance(data, list):
        raise DataError(path, None, f"holds a JSON {type(data).__name__} (expected an array of objects)")
    for index, row in enumerate(data):
        if not isinstance(row, dict):
            raise DataError(path, f"row {index}", f"is a JSON {type(row).__name__} (expected a JSON object)")
        yield f"row {index}", row


def _json_object_rows(path: Path, data: dict) -> list:
    """A single JSON object as rows: the one array it holds, or its columns zipped."""
    arrays = [v for v in data.values() if isinstance(v, list) and v and all(isinstance(r, dict) for r in v)]
    if len(data) == 1 and arrays:
        return arrays[0]
    if data and all(isinstance(v, list) for v in data.values()):
        lengths = {k: len(v) for k, v in data.items()}
        if len(set(lengths.values())) > 1:
            shown = ", ".join(f"'{k}' has {n}" for k, n in lengths.items())
            raise DataError(path, None, f"holds columns of different lengths ({shown}) (expected equal lengths)")
        return [dict(zip(data, values)) for values in zip(*data.values())]
    raise DataError(path, None, "holds a JSON object that is neither rows nor columns (expected an array of "
                                'objects, {"data": [objects]}, or {"column": [values], ...})')


def _parquet_rows(path: Path) -> Iterator[tuple[str, Row]]:
    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=_BATCH)
    except (pa.ArrowException, OSError) as e:
        raise DataError(path, None, f"is not a readable Parquet file ({e})") from None
    index = 0
    for batch in batches:
        for row in batch.to_pylist():
            yield f"row {index}", row
            index += 1


def _load_dir(path: Path) -> datasets.Dataset:
    try:
        return datasets.load_from_disk(str(path))
    except FileNotFoundError:
        raise DataError(path, None, f"is a directory but not a saved dataset (expected {_FORMATS})") from None


def _dataset_rows(ds: Any, source: Any) -> Iterator[tuple[str, Row]]:
    if isinstance(ds, datasets.DatasetDict):
        splits = ", ".join(ds)
        raise DataError(source, None, f"holds splits ({splits}) (expected a single Dataset: pick one split)")
    index = 0
    for table in ds.with_format("arrow").iter(batch_size=_BATCH):
        for row in table.to_pylist():
            yield f"row {index}", row
            index += 1


def _to_record(cls: type, row: Row, tokenizer: Any, source: str, where: str) -> Record:
    """Build one record, turning a field problem into an error that names file and row."""
    try:
        return cls.from_row(_as_text(cls, row, tokenizer))
    except RecordError as e:
        raise DataError(source, where, str(e), field=e.field) from None


# -- TRL conventions: implicit prompts and chat messages -------------------------------


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) and "role" in m for m in value)


def _is_chat(column: str, value: Any) -> bool:
    """A ranking's ``completions`` holds several responses, so it is a list of message lists."""
    if column == "completions":
        return isinstance(value, list) and bool(value) and all(_is_messages(v) for v in value)
    return _is_messages(value)


def _as_text(cls: type, row: Row, tokenizer: Any) -> Row:
    """Return ``row`` with conversational fields rendered to text; plain rows pass through."""
    if cls is Comparison and row.get("prompt") is None:
        row = _split_implicit_prompt(row)
    if cls is Demonstration and row.get("prompt") is None and row.get("messages") is not None:
        row = _split_messages(row)
    columns = [c for c in ("prompt", *cls.RESPONSE_COLUMNS) if row.get(c) is not None]
    chat = [c for c in columns if _is_chat(c, row[c])]
    if not chat:
        return row
    for c in columns:
        if c not in chat:
            problem = f"is plain text while '{chat[0]}' holds chat messages"
            raise RecordError(c, problem, "one format for all fields")
    if "prompt" not in chat:
        raise RecordError("prompt", "is missing", f"chat messages, like '{chat[0]}'")
    if not getattr(tokenizer, "chat_template", None):
        raise RecordError(
            chat[0],
            "holds chat messages but no tokenizer with a chat template was given",
            "a chat template to render them: give one with --chat-template FILE (a Jinja file; "
            "model.chat_template in a config), or a tokenizer whose chat_template is set",
        )
    return {**row, **_render(tokenizer, row, chat)}


def prompt_row(row: Row, kind: str) -> Row:
    """A row of any ``kind`` as a prompt-only row: its prompt (TRL's implicit prompt or the
    messages before the last assistant reply when it has no ``prompt``) and its extra columns.
    Raises ``RecordError`` naming the field when there is no prompt to take."""
    if row.get("prompt") is None and kind == "comparison":
        row = _split_implicit_prompt(row)
    if row.get("prompt") is None and row.get("messages") is not None:
        row = _split_messages(row)
    return {k: v for k, v in row.items() if k not in RESPONSE_FIELDS}


def is_conversational(row: Row) -> bool:
    """Whether ``row``'s prompt or responses are chat messages (TRL's conversational format)."""
    return any(_is_chat(c, row.get(c)) for c in ("prompt", *RESPONSE_FIELDS) if row.get(c) is not None)


def _split_implicit_prompt(row: Row) -> Row:
    """TRL's implicit prompt: the messages ``chosen`` and ``rejected`` share are the prompt."""
    chosen, rejected = row.get("chosen"), row.get("rejected")
    if not (_is_messages(chosen) and _is_messages(rejected)):
        return row  # plain text needs an explicit prompt; from_row reports it missing
    n = sum(1 for _ in takewhile(lambda pair: pair[0] == pair[1], zip(chosen, rejected)))
    if n == 0:
        raise RecordError("prompt", "is missing", "a prompt, or chosen/rejected messages that start the same")
    for column, messages in (("chosen", chosen), ("rejected", rejected)):
        if len(messages) == n:
            raise RecordError(column, "has no messages after the shared prompt", "at least one response message")
    return {**row, "prompt": chosen[:n], "chosen": chosen[n:], "rejected": rejected[n:]}


def _split_messages(row: Row) -> Row:
    """TRL's conversational SFT row: the last assistant message is the completion, the
    messages before it the prompt."""
    messages = row["messages"]
    if not _is_messages(messages):
        raise RecordError("messages", "is not a list of {role, content} messages", "a list of chat messages")
    last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
    if last is None or last == 0:
        raise RecordError("messages", "has no assistant message after a prompt", "a conversation ending in an "
                                                                                 "assistant reply")
    rest = {k: v for k, v in row.items() if k != "messages"}
    return {**rest, "prompt": messages[:last], "completion": [messages[last]]}


def _render(tokenizer: Any, row: Row, chat: list[str]) -> Row:
    """Render the prompt (with the generation prompt) and each response as the text the
    full conversation adds after it, as TRL does."""
    prompt = row["prompt"]
    text = _apply(tokenizer, "prompt", prompt, add_generation_prompt=True)
    responses = [(c, i, m) for c in chat if c != "prompt" for i, m in _responses(c, row[c])]
    fulls = [_apply(tokenizer, c, prompt + m) for c, _, m in responses]
    # Some templates render the prompt alone differently from inside the whole
    # conversation; keep only the text every rendering shares, like TRL.
    for full in fulls:
        text = "".join(a for a, _ in takewhile(lambda ab: ab[0] == ab[1], zip(text, full)))
    out: Row = {"prompt": text}
    for (column, index, _), full in zip(responses, fulls):
        if index is None:
            out[column] = full[len(text) :]
        else:
            out.setdefault(column, []).append(full[len(text) :])
    return out


def _responses(column: str, value: Any) -> list[tuple[int | None, list]]:
    return list(enumerate(value)) if column == "completions" else [(None, value)]


def _apply(tokenizer: Any, column: str, messages: list, add_generation_prompt: bool = False) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception as e:  # templates raise anything (jinja, KeyError, their own checks)
        problem = f"could not be rendered ({type(e).__name__}: {e})"
        raise RecordError(column, problem, "messages the chat template accepts") from e


# -- writing --------------------------------------------------------------------------


def write_records(records: Iterable[Record], path: str | os.PathLike) -> Path:
    """Write records of one kind to ``path`` atomically; return the path.

    The format follows the path (``.jsonl``, ``.parquet``, or no suffix for a
    ``save_to_disk`` directory). Output goes to a temporary sibling first and is moved
    into place only when complete, so a crash never leaves a half-written dataset.
    """
    path = Path(path)
    writer = _writer_for(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer(_rows(records, path), path)
    return path


def _writer_for(path: Path):
    """Pick the writer, refusing targets that would be surprising to overwrite."""
    if path.suffix in (".jsonl", ".parquet"):
        if path.is_dir():
            raise DataError(path, None, "is a directory (expected a file path to write to)")
        return _write_jsonl if path.suffix == ".jsonl" else _write_parquet
    if path.suffix and not path.is_dir():
        raise DataError(path, None, f"unknown format '{path.suffix}' (expected .jsonl, .parquet, or a directory)")
    if path.exists() and not _is_saved_dataset(path):
        raise DataError(path, None, "exists and is not a saved dataset; refusing to replace it")
    return _write_dataset_dir


def _is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and any((path / f).exists() for f in ("state.json", "dataset_dict.json"))


def _rows(records: Iterable[Record], path: Path) -> Iterator[Row]:
    """Yield each record's row, checking that all records are of one kind."""
    first: type | None = None
    for i, record in enumerate(records):
        if not hasattr(record, "to_row"):
            raise DataError(path, f"record {i}", f"is a {type(record).__name__} (expected a feedback record)")
        first = first or type(record)
        if type(record) is not first:
            raise DataError(
                path, f"record {i}", f"is a {type(record).__name__} (expected a {first.__name__} like record 0)"
            )
        yield record.to_row()
    if first is None:
        raise DataError(path, None, "no records to write")


def _columns(rows: Iterable[Row]) -> dict[str, list]:
    """Rows to columns; an optional field absent from some rows becomes null there."""
    columns: dict[str, list] = {}
    for i, row in enumerate(rows):
        for key in row:
            columns.setdefault(key, [None] * i)
        for key, values in columns.items():
            values.append(row.get(key))
    return columns


def _write_jsonl(rows: Iterable[Row], path: Path) -> None:
    with _atomic(path) as tmp, open(tmp, "x", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n")
        _sync(f)


def _write_parquet(rows: Iterable[Row], path: Path) -> None:
    table = pa.table(_columns(rows))
    with _atomic(path) as tmp, open(tmp, "xb") as f:
        pq.write_table(table, f)
        _sync(f)


def _write_dataset_dir(rows: Iterable[Row], path: Path) -> None:
    dataset = datasets.Dataset.from_dict(_columns(rows))
    with _atomic(path) as tmp:
        dataset.save_to_disk(str(tmp))


def _sync(f: Any) -> None:
    f.flush()
    os.fsync(f.fileno())


@contextmanager
def _atomic(target: Path) -> Iterator[Path]:
    """Yield a temporary sibling path; on success move it onto ``target``, on any
    failure delete it. Same directory, so the final rename is atomic."""
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        _move_into_place(tmp, target)
    except BaseException:
        _remove(tmp)
        raise


def _move_into_place(tmp: Path, target: Path) -> None:
    """``os.replace`` for files; a directory cannot replace a non-empty one, so move the
    old directory aside first and put it back if the swap fails."""
    if not (tmp.is_dir() and target.exists()):
        os.replace(tmp, target)
        return
    old = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.old")
    os.replace(target, old)
    try:
        os.replace(tmp, target)
    except BaseException:
        os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()
