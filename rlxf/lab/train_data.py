"""A user's dataset, read, checked and tokenized for one training method before any stage runs.

:func:`prepare_data` reads ``--data`` in any format :mod:`rlxf.data.io` reads (JSONL, JSON,
Parquet, a ``save_to_disk`` directory, a cached ``datasets`` name), renames columns, renders
chat rows with the tokenizer's template, and turns the rows into the token items a method of
``kind_needed`` trains on: comparison pairs, KTO examples, demonstrations or prompts. Prompts
longer than ``max_prompt_length`` are cut from the left and rows with no room for a response are
dropped, each with one warning; a held-out split is set aside (seeded) unless ``eval_path`` is
given. Bad input and an empty result raise :class:`~rlxf.data.io.DataError` naming the file,
row and field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rlxf.algorithms.preference_data import (
    check_both_classes,
    checked_comparisons,
    checked_responses,
    pairs_as_unpaired,
)
from rlxf.data.io import DataError, detect_kind, is_conversational, open_rows, prompt_row, to_record
from rlxf.data.records import KINDS, RecordError

NEEDS = ("comparison", "unpaired", "prompt", "demonstration")
# The dataset kinds each need accepts ("prompt" accepts every kind: it keeps the prompts).
ACCEPTS = {"comparison": ("comparison",), "unpaired": ("unpaired", "comparison"),
           "demonstration": ("demonstration",), "prompt": None}
EXPECTED = {"comparison": "prompt/chosen/rejected rows (preference data)",
            "unpaired": "prompt/completion/label rows, or prompt/chosen/rejected rows to split",
            "demonstration": "prompt/completion rows or chat 'messages' (SFT data)",
            "prompt": "rows with a prompt"}


@dataclass
class DataSettings:
    """``path``: the training data; ``eval_path``: held-out data (else ``eval_fraction`` of
    ``path`` is held out); ``kind``: "auto" (from the columns) or a record kind; ``columns``:
    renames, ``{"question": "prompt"}``; lengths in tokens."""

    path: str = ""
    eval_path: str = ""
    eval_fraction: float = 0.05
    kind: str = "auto"
    max_prompt_length: int = 512
    max_length: int = 1024
    columns: dict[str, str] = field(default_factory=dict)


@dataclass
class PreparedData:
    """Token items of the kind a method needs (``Pair``, KTO ``Example``, prompt ids, or
    ``(prompt_ids, response_ids)``), the source rows they came from (extra columns included;
    for prompts, the prompt as written, chat messages or text), and the rendered prompt texts,
    each aligned with its items."""

    train: list
    eval: list
    train_rows: list[dict]
    eval_rows: list[dict]
    prompt_texts: list[str]
    eval_prompt_texts: list[str]
    report: dict
    conversational: bool


@dataclass
class _Part:
    items: list
    rows: list[dict]
    prompts: list[str]
    report: dict
    conversational: bool


def prepare_data(settings: DataSettings, kind_needed: str, tokenizer: Any, seed: int) -> PreparedData:
    """Read, check, tokenize and split ``settings.path`` (and ``eval_path``) for a method that
    trains on ``kind_needed`` (one of :data:`NEEDS`)."""
    if kind_needed not in NEEDS:
        raise ValueError(f"kind_needed must be one of {', '.join(NEEDS)}, got {kind_needed!r}")
    if not settings.path:
        raise DataError("--data", None, "no training data given (expected a dataset file, directory or name)")
    if not 0 <= settings.eval_fraction < 1:
        raise DataError("data.eval_fraction", None, f"is {settings.eval_fraction} (expected a number in [0, 1))")
    if settings.max_prompt_length < 1 or settings.max_length < 2:
        raise DataError("data.max_length", None, f"max_prompt_length={settings.max_prompt_length}, max_length="
                                                 f"{settings.max_length} (expected at least 1 and 2 tokens)")
    if settings.kind != "auto" and settings.kind not in KINDS:
        raise DataError("data.kind", None, f"is {settings.kind!r} (expected auto or one of {', '.join(KINDS)})")
    main = _read(settings.path, settings, kind_needed, tokenizer)
    if settings.eval_path:
        held = _read(settings.eval_path, settings, kind_needed, tokenizer)
        train, eval_ = main, held
        split = {"eval_source": settings.eval_path}
    else:
        train, eval_ = _split(main, settings.eval_fraction, seed)
        split = {"eval_source": f"{settings.eval_fraction:g} of {settings.path} held out (seed {seed})"}
    if kind_needed == "unpaired":
        train, eval_ = _unrolled(train), _unrolled(eval_)
    report = {**main.report, **split, "train_items": len(train.items), "eval_items": len(eval_.items)}
    if settings.eval_path:
        report["eval"] = held.report
    return PreparedData(train.items, eval_.items, train.rows, eval_.rows, train.prompts, eval_.prompts, report,
                        main.conversational)


def _read(path: str, s: DataSettings, need: str, tokenizer: Any) -> _Part:
    """One data source as token items of ``need``, with its report."""
    kind = detect_kind(path, s.columns) if s.kind == "auto" else s.kind
    source, rows = open_rows(path, s.columns)
    accepts = ACCEPTS[need]
    if accepts is not None and kind not in accepts:
        raise DataError(source, None, f"holds {kind} data (expected {EXPECTED[need]}, for this method)")
    raw, records, conversational = [], [], False
    record_kind = "prompt" if need == "prompt" else kind
    for where, row in rows:
        if need == "prompt":
            try:
                row = prompt_row(row, kind)
            except RecordError as e:
                raise DataError(source, where, str(e), field=e.field) from None
        conversational = conversational or is_conversational(row)
        raw.append(row)
        records.append(to_record(record_kind, row, tokenizer, source, where))
    if not records:
        raise DataError(source, None, "holds no rows (expected at least one)")
    stats: dict = {}
    args = (tokenizer, s.max_length, source, s.max_prompt_length, stats)
    if record_kind == "comparison":
        kept, items = checked_comparisons(records, *args)
        lengths = [len(p) + max(len(c), len(r)) for p, c, r in items]
    else:
        kept, items = checked_responses(records, *args)
        lengths = [len(p) + len(c) for p, c in items]
        if need == "prompt":
            items = [p for p, _ in items]
        elif need == "unpaired":
            items = [(p, c, records[i].label) for i, (p, c) in zip(kept, items)]
            check_both_classes(items, source)
    prompts = [records[i].prompt for i in kept]
    dropped = {reason: len(r) for reason, r in stats.get("dropped", {}).items()}
    report = {"source": source, "kind": kind, "rows_read": len(records), "rows_kept": len(kept),
              "rows_dropped": sum(dropped.values()), "dropped": dropped,
              "prompts_truncated": stats.get("truncated", 0),
              "tokens_per_row": {"min": min(lengths), "mean": float(np.mean(lengths)), "max": max(lengths)},
              "first_prompt": prompts[0], "conversational": conversational}
    return _Part(items, [raw[i] for i in kept], prompts, report, conversational)


def _split(part: _Part, fraction: float, seed: int) -> tuple[_Part, _Part]:
    """A seeded held-out split of ``fraction`` of the rows (at least one when there are two or
    more rows and ``fraction > 0``). Comparisons used as KTO data are split by pair, before
    they are unrolled, so both halves of a pair stay on one side."""
    n = len(part.items)
    n_eval = 0 if fraction == 0 or n < 2 else min(n - 1, max(1, round(fraction * n)))
    held = set(np.random.default_rng(seed).permutation(n)[:n_eval].tolist())
    halves = []
    for keep in (lambda i: i not in held, lambda i: i in held):
        idx = [i for i in range(n) if keep(i)]
        halves.append(_Part([part.items[i] for i in idx], [part.rows[i] for i in idx],
                            [part.prompts[i] for i in idx], part.report, part.conversational))
    return halves[0], halves[1]


def _unrolled(part: _Part) -> _Part:
    """Comparison pairs as KTO examples (chosen desirable, rejected undesirable), rows doubled;
    unpaired data as it is."""
    if part.report["kind"] != "comparison":
        return part
    twice = lambda xs: [x for x in xs for _ in range(2)]  # noqa: E731
    return _Part(pairs_as_unpaired(part.items), twice(part.rows), twice(part.prompts), part.report,
                 part.conversational)
