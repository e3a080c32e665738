"""Numbers for the owner's project page: progress, agreement, pace and label distribution."""

from __future__ import annotations

import itertools
import time
from collections import Counter, defaultdict

from rlxf.data.label_store import Label


def _pairwise_verdicts(label: Label) -> dict[tuple[int, int], int]:
    """What a label says about each pair of responses (i < j, item indices):
    +1 if i was preferred, -1 if j was, 0 for a tie. Skips and critiques say nothing."""
    v, shown = label.value, label.shown
    if label.kind == "preference":
        if v["choice"] == "skip":
            return {}
        i, j = shown[0], shown[1]
        verdict = {"a": 1, "b": -1, "tie": 0}[v["choice"]]
        return {(i, j): verdict} if i < j else {(j, i): -verdict}
    if label.kind == "ranking":
        rank = {shown[pos]: place for place, pos in enumerate(v["order"])}
        return {(i, j): 1 if rank[i] < rank[j] else -1 for i, j in itertools.combinations(sorted(rank), 2)}
    if label.kind == "rating":
        r = dict(zip(shown, v["ratings"]))
        return {(i, j): (r[i] > r[j]) - (r[i] < r[j]) for i, j in itertools.combinations(sorted(r), 2)}
    return {}


def agreement(labels: list[Label]) -> dict:
    """Share of (labeler, labeler, item, response pair) overlaps on which two labelers gave
    the same verdict, with the number of such overlaps; None when there are none."""
    by_item: dict[int, list[dict]] = defaultdict(list)
    for label in labels:
        by_item[label.item.id].append(_pairwise_verdicts(label))
    agree = total = 0
    for verdicts in by_item.values():
        for x, y in itertools.combinations(verdicts, 2):
            for pair in x.keys() & y.keys():
                total += 1
                agree += x[pair] == y[pair]
    return {"rate": agree / total if total else None, "overlaps": total}


def distribution(labels: list[Label]) -> dict[str, int]:
    """Counts of answers: choices, top-ranked display position, ratings, or critique lengths and verdicts."""
    counts: Counter = Counter()
    for label in labels:
        v = label.value
        if label.kind == "preference":
            counts[v["choice"]] += 1
        elif label.kind == "ranking":
            counts[f"first: response {v['order'][0] + 1}"] += 1
        elif label.kind == "rating":
            counts.update(f"{r:g}" for r in v["ratings"])
        else:
            n = len(v.get("critique", ""))  # a marked verdict may come without words
            counts["no text" if n == 0 else "short (<100 chars)" if n < 100 else "long (100+ chars)"] += 1
            counts["with correction"] += "corrected" in v
            counts[f"verdict: {v['verdict']}" if "verdict" in v else "no verdict"] += 1
    return dict(sorted(counts.items()))


def pace(labels: list[Label], now: float | None = None) -> dict:
    """Labels in the last hour, and the average rate since the first label."""
    now = time.time() if now is None else now
    if not labels:
        return {"last_hour": 0, "per_hour": 0.0}
    first = min(l.created for l in labels)
    hours = max((now - first) / 3600.0, 1 / 60)  # at least a minute, so one label is not "infinite pace"
    return {"last_hour": sum(l.created >= now - 3600 for l in labels), "per_hour": len(labels) / hours}


def project_stats(counts: dict[str, int], labels: list[Label], labeler_names: list[str], overlap: int) -> dict:
    per_labeler = Counter(l.labeler for l in labels)
    target = counts["items"] * overlap
    return {
        "items": counts["items"],
        "labels": counts["labels"],
        "target_labels": target,
        "progress": counts["labels"] / target if target else 0.0,
        "labelers": {name: per_labeler.get(name, 0) for name in labeler_names},
        "agreement": agreement(labels),
        "pace": pace(labels),
        "distribution": distribution(labels),
    }
