"""Label values: checking what a labeler submitted, and turning labels into feedback records."""

from __future__ import annotations

import math
from typing import Any

from rlxf.data.label_store.entities import CHOICES, Label, Project, StoreError
from rlxf.data.records import Comparison, Correction, Critique, Ranking, Rating, Record

def validate_value(project: Project, n_shown: int, value: Any) -> dict:
    """Check a submitted label against the project's kind; return its clean form.

    preference: ``{"choice": "a"|"b"|"tie"|"skip"}``; ranking: ``{"order": [...]}``, a
    permutation of the shown positions, best first; rating: ``{"ratings": [...]}``, one
    per shown response within the scale; critique: ``{"critique": text}`` with an
    optional ``"corrected"`` response, at most ``max_critique_chars`` each.
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
        if text is None or (key == "corrected" and text == ""):
            continue
        if not isinstance(text, str):
            raise StoreError(f"'{key}' must be a string")
        if len(text) > limit:
            raise StoreError(f"'{key}' is {len(text)} characters; the limit is {limit}")
        clean[key] = text
    if not clean.get("critique", "").strip():
        raise StoreError("'critique' must be a non-empty string")
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
    out: list[Record] = [Critique(item.prompt, texts[0], v["critique"])]
    if v.get("corrected"):
        out.append(Correction(item.prompt, texts[0], v["corrected"]))
    return out
