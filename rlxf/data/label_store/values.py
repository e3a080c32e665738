"""Label values: checking what a labeler submitted, and turning labels into feedback records."""

from __future__ import annotations

import math
from typing import Any

from rlxf.data.label_store.entities import CHOICES, Item, Label, Project, StoreError
from rlxf.data.records import Comparison, Correction, Critique, Ranking, Rating, Record, RecordError, check_verdict


def response_steps(item: Item, index: int) -> list[str]:
    """The steps a labeler marks in response ``index`` of ``item``: the item's explicit
    ``meta["steps"][index]`` when given, else the response's non-blank lines (indentation
    kept, so code reads as code)."""
    explicit = (item.meta.get("steps") or [None] * len(item.responses))[index]
    if explicit is not None:
        return list(explicit)
    return [line.rstrip() for line in item.responses[index].split("\n") if line.strip()]


def check_item_steps(meta: Any, n_responses: int) -> str | None:
    """What is wrong with an item's optional ``meta["steps"]`` (None when it is fine): one
    entry per response, each null (split the response into lines) or a non-empty list of strings
    (blank ones allowed: a task may count blank lines as steps)."""
    if not isinstance(meta, dict) or meta.get("steps") is None:
        return None
    steps = meta["steps"]
    if not isinstance(steps, list) or len(steps) != n_responses:
        return f"field 'meta.steps' must be a list with one entry per response ({n_responses})"
    for k, entry in enumerate(steps):
        if entry is not None and not (isinstance(entry, list) and entry and all(isinstance(t, str) for t in entry)):
            return f"field 'meta.steps' entry {k} must be null or a non-empty list of strings"
    return None


def validate_value(project: Project, n_shown: int, value: Any, n_steps: int | None = None) -> dict:
    """Check a submitted label against the project's kind; return its clean form.

    preference: ``{"choice": "a"|"b"|"tie"|"skip"}``; ranking: ``{"order": [...]}``, a
    permutation of the shown positions, best first; rating: ``{"ratings": [...]}``, one
    per shown response within the scale; critique: ``{"critique": text}`` with an
    optional ``"corrected"`` response, at most ``max_critique_chars`` each, and an optional
    ``"verdict"`` ("correct" | "incorrect") with ``"first_wrong_step"`` (1-based, at most
    ``n_steps``, the number of steps shown). With a verdict the text may be left empty.
    """
    if not isinstance(value, dict):
        raise StoreError("'value' must be a JSON object")
    kind, s = project.kind, project.settings
    if kind == "preference":
        if value.get("choice") not in CHOICES:
            raise StoreError(f"'choice' must be one of {', '.join(CHOICES)}")
        return {"choice": value["choice"]}
    if kind == "ranking":
        order = value.get("order")
        if (not isinstance(order, list) or sorted(order) != list(range(n_shown))
                or not all(type(i) is int for i in order)):
            raise StoreError(f"'order' must rank every shown position 0..{n_shown - 1} once, best first")
        return {"order": order}
    if kind == "rating":
        low, high = s["scale"]
        ratings = value.get("ratings")
        ok = isinstance(ratings, list) and len(ratings) == n_shown and all(
            isinstance(r, (int, float)) and not isinstance(r, bool) and math.isfinite(r) and low <= r <= high
            for r in ratings)
        if not ok:
            raise StoreError(f"'ratings' must hold {n_shown} number(s) within the scale [{low}, {high}]")
        return {"ratings": [float(r) for r in ratings]}
    limit = s["max_critique_chars"]
    clean = {}
    for key in ("critique", "corrected"):
        text = value.get(key)
        blank = text == "" if key == "corrected" else isinstance(text, str) and not text.strip()
        if text is None or (blank and (key == "corrected" or value.get("verdict") is not None)):
            continue  # an empty correction, or no words beside a marked verdict
        if not isinstance(text, str):
            raise StoreError(f"'{key}' must be a string")
        if len(text) > limit:
            raise StoreError(f"'{key}' is {len(text)} characters; the limit is {limit}")
        clean[key] = text
    verdict, step = value.get("verdict"), value.get("first_wrong_step")
    if verdict is None and not clean.get("critique", "").strip():
        raise StoreError("'critique' must be a non-empty string (or mark a 'verdict')")
    try:
        check_verdict(clean.get("critique"), verdict, step)
    except RecordError as e:
        raise StoreError(f"'{e.field}' {e.problem} (expected {e.expected})") from None
    if step is not None and n_steps is not None and step > n_steps:
        raise StoreError(f"'first_wrong_step' is {step} but the response was shown as {n_steps} step(s)")
    if verdict is not None:
        clean["verdict"] = verdict
    if step is not None:
        clean["first_wrong_step"] = step
    return clean


def label_to_records(label: Label, scale: tuple[float, float]) -> list[Record]:
    """The feedback records one label stands for (none for a tie or a skip)."""
    item, shown, v = label.item, label.shown, label.value
    texts = [item.responses[i] for i in shown]
    if label.kind == "preference":
        if v["choice"] not in ("a", "b"):
            return []
        a, b = texts[0], texts[1]
        return [Comparison(item.prompt, a, b) if v["choice"] == "a" else Comparison(item.prompt, b, a)]
    if label.kind == "ranking":
        return [Ranking(item.prompt, tuple(texts), tuple(v["order"]))]
    if label.kind == "rating":
        return [Rating(item.prompt, t, r, scale) for t, r in zip(texts, v["ratings"])]
    out: list[Record] = [critique_record(label)]
    if v.get("corrected"):
        out.append(Correction(item.prompt, texts[0], v["corrected"]))
    return out


def critique_record(label: Label) -> Critique:
    """A critique label as a record; a verdict given without text gets its verdict line as text."""
    from rlxf.critique.format import verdict_line

    v = label.value
    verdict, step = v.get("verdict"), v.get("first_wrong_step")
    text = v.get("critique") or verdict_line(verdict == "correct", step)
    return Critique(label.item.prompt, label.item.responses[label.shown[0]], text, verdict, step)
