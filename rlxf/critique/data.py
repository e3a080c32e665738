"""Training rows for critics and correctors from exported critique and correction records
(the feedback app's ``rlxf label export --record critique`` / ``--record correction``).

A critic learns ``critic_prompt(question, answer)`` -> the critique ending in its verdict line; a
corrector learns ``corrector_prompt(question, answer, critique)`` -> the corrected answer. Both are
:class:`~rlxf.data.records.Demonstration` rows (prompt, completion), what SFT trainers read.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Iterable

from rlxf.critique.format import corrector_prompt, critic_prompt, parse_critique, render_critique
from rlxf.data.io import read_records
from rlxf.data.records import Correction, Critique, Demonstration


class CritiqueDataError(ValueError):
    """Records that cannot become training rows; the message names the record."""


def critique_target(record: Critique) -> str | None:
    """The critique as a critic should write it: its notes (the text without verdict lines),
    then one verdict line from :attr:`Critique.judgment`; None when the record judges nothing."""
    judged = record.judgment
    if judged.correct is None:
        return None
    notes = [line for line in record.critique.splitlines() if parse_critique(line).correct is None and line.strip()]
    return render_critique(judged.correct, judged.first_wrong_step, notes)


def critic_rows(critiques: Iterable[Critique], unjudged: str = "error") -> list[Demonstration]:
    """One critic SFT row per critique. A critique with neither verdict fields nor a verdict line
    in its text (a free-text critique) is an error naming it, or left out with ``unjudged="skip"``."""
    if unjudged not in ("error", "skip"):
        raise ValueError(f"unjudged must be 'error' or 'skip', got {unjudged!r}")
    rows = []
    for n, record in enumerate(critiques):
        target = critique_target(record)
        if target is None:
            if unjudged == "skip":
                continue
            raise CritiqueDataError(f"critique record {n} (prompt {record.prompt[:40]!r}) has no verdict: give it "
                                    "'verdict' (and 'first_wrong_step'), or pass unjudged='skip'")
        rows.append(Demonstration(critic_prompt(record.prompt, record.response), target))
    return rows


def corrector_rows(critiques: list[Critique], corrections: Iterable[Correction]) -> list[Demonstration]:
    """One corrector SFT row per correction, paired with the critique of the same prompt and
    response. The export writes both from one label, in label order, so the k-th correction of a
    (prompt, response) belongs to its k-th critique when every critique of it has a correction;
    otherwise, with several critiques of it, the pairing is ambiguous and an error."""
    by_key: dict[tuple[str, str], list[Critique]] = defaultdict(list)
    for record in critiques:
        by_key[(record.prompt, record.response)].append(record)
    corrections = list(corrections)
    fixes: dict[tuple[str, str], list[Correction]] = defaultdict(list)
    for fix in corrections:
        fixes[(fix.prompt, fix.response)].append(fix)
    pair: dict[int, Critique] = {}
    for key, group in fixes.items():
        found = by_key.get(key, [])
        if not found:
            raise CritiqueDataError(f"correction of prompt {key[0][:40]!r} has no critique of the same prompt and "
                                    "response (export both record kinds from the same project)")
        if len(found) > 1 and len(found) != len(group):
            raise CritiqueDataError(f"prompt {key[0][:40]!r}: {len(found)} critiques but {len(group)} corrections "
                                    "of the same response; cannot tell which critique each correction follows")
        for k, fix in enumerate(group):
            pair[id(fix)] = found[min(k, len(found) - 1)]
    return [Demonstration(corrector_prompt(fix.prompt, fix.response, critique_target(pair[id(fix)])
                                           or pair[id(fix)].critique), fix.corrected) for fix in corrections]


def read_training_rows(critique_path: str | Path, correction_path: str | Path | None = None,
                       unjudged: str = "error") -> tuple[list[Demonstration], list[Demonstration]]:
    """(critic rows, corrector rows) from exported files (JSONL, Parquet or a saved dataset)."""
    critiques = read_records(critique_path, kind="critique")
    corrections = read_records(correction_path, kind="correction") if correction_path is not None else []
    return critic_rows(critiques, unjudged), corrector_rows(critiques, corrections)


__all__ = ["CritiqueDataError", "corrector_rows", "critic_rows", "critique_target", "read_training_rows"]
