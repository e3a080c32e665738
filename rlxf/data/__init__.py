"""Feedback records and reading/writing them as JSONL, Parquet or Hugging Face datasets."""

from rlxf.data.io import (
    DataError,
    detect_kind,
    is_conversational,
    iter_records,
    open_rows,
    prompt_row,
    read_records,
    to_record,
    write_records,
)
from rlxf.data.records import (
    KINDS,
    Comparison,
    Correction,
    Critique,
    Demonstration,
    Prompt,
    Ranking,
    Rating,
    Record,
    RecordError,
    Unpaired,
)

__all__ = [
    "KINDS",
    "Comparison",
    "Correction",
    "Critique",
    "DataError",
    "Demonstration",
    "Prompt",
    "Ranking",
    "Rating",
    "Record",
    "RecordError",
    "Unpaired",
    "detect_kind",
    "is_conversational",
    "iter_records",
    "open_rows",
    "prompt_row",
    "read_records",
    "to_record",
    "write_records",
]
