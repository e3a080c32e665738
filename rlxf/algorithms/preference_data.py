"""From user preference records to token sequences a trainer can use, with the checks a user needs.

Records come from :func:`rlxf.data.io.read_records` (TRL's standard, implicit-prompt and
conversational formats; JSONL, Parquet or a ``save_to_disk`` directory). Rows that carry no
learning signal are dropped with one warning that names them (0-based record numbers in file
order): chosen identical to rejected, a response with no tokens, a prompt that leaves no room
for a response within ``max_length``. Responses longer than the room left are cut at the end
(TRL's ``keep_start``). A KTO dataset with one class only is an error: its reference point
then has nothing to be measured against.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from rlxf.data.io import Source, read_records
from rlxf.data.records import Comparison, Unpaired
from rlxf.policies.language import LanguagePolicy
from rlxf.policies.logprobs import Pair

Example = tuple[list[int], list[int], bool]  # prompt_ids, completion_ids, desirable


class PreferenceDataError(ValueError):
    """Preference data that cannot be trained on; the message names the source and rows."""


class PreferenceDataWarning(UserWarning):
    """Rows dropped from preference data because they carry no learning signal."""


def _rows(indices: list[int], limit: int = 10) -> str:
    shown = ", ".join(str(i) for i in indices[:limit])
    return shown + (f" and {len(indices) - limit} more" if len(indices) > limit else "")


class _Dropped:
    """Collects dropped rows by reason and reports them in one warning."""

    def __init__(self, source: str):
        self.source, self.reasons = source, {}

    def add(self, reason: str, index: int) -> None:
        self.reasons.setdefault(reason, []).append(index)

    def report(self, total: int) -> None:
        if not self.reasons:
            return
        parts = [f"{len(rows)} where {reason} (records {_rows(rows)})" for reason, rows in self.reasons.items()]
        n = sum(len(r) for r in self.reasons.values())
        warnings.warn(f"{self.source}: dropped {n} of {total} records: " + "; ".join(parts),
                      PreferenceDataWarning, stacklevel=3)
        if n == total:
            raise PreferenceDataError(f"{self.source}: no usable records left (all {total} were dropped, see above)")


def _fit(prompt: list[int], response: list[int], max_length: int | None) -> list[int]:
    return response if max_length is None else response[: max(0, max_length - len(prompt))]


def _check_lengths(dropped: _Dropped, i: int, prompt: list[int], responses: Sequence[list[int]],
                   eos: int, max_length: int | None) -> bool:
    if not prompt:
        dropped.add("the prompt has no tokens", i)
    elif max_length is not None and len(prompt) >= max_length:
        dropped.add(f"the prompt fills max_length={max_length} tokens", i)
    elif any(not [t for t in r if t != eos] for r in responses):
        dropped.add("a response has no tokens", i)
    else:
        return True
    return False


def comparison_pairs(records: Sequence[Comparison], policy: LanguagePolicy, max_length: int | None = None,
                     source: str = "comparisons") -> list[Pair]:
    """Token pairs ``(prompt, chosen + EOS, rejected + EOS)`` of the usable comparisons."""
    return checked_comparisons(records, policy, max_length, source)[1]


def checked_comparisons(records: Sequence[Comparison], policy: LanguagePolicy, max_length: int | None = None,
                        source: str = "comparisons") -> tuple[list[int], list[Pair]]:
    """:func:`comparison_pairs`, and the index of the record each pair came from."""
    eos = policy.tokenizer.eos_token_id
    prompts = policy.encode([r.prompt for r in records])
    chosen = policy.encode_responses([r.chosen for r in records])
    rejected = policy.encode_responses([r.rejected for r in records])
    dropped, kept, pairs = _Dropped(source), [], []
    for i, (p, c, r) in enumerate(zip(prompts, chosen, rejected)):
        if not _check_lengths(dropped, i, p, (c, r), eos, max_length):
            continue
        c, r = _fit(p, c, max_length), _fit(p, r, max_length)
        if c == r:
            dropped.add("chosen equals rejected" + (" after truncation" if chosen[i] != rejected[i] else ""), i)
            continue
        kept.append(i)
        pairs.append((p, c, r))
    dropped.report(len(records))
    return kept, pairs


def unpaired_examples(records: Sequence[Unpaired], policy: LanguagePolicy, max_length: int | None = None,
                      source: str = "unpaired feedback") -> list[Example]:
    """Token examples ``(prompt, completion + EOS, desirable)`` for KTO, checking both classes are present."""
    eos = policy.tokenizer.eos_token_id
    prompts = policy.encode([r.prompt for r in records])
    completions = policy.encode_responses([r.completion for r in records])
    dropped, out = _Dropped(source), []
    for i, (p, c, rec) in enumerate(zip(prompts, completions, records)):
        if _check_lengths(dropped, i, p, (c,), eos, max_length):
            out.append((p, _fit(p, c, max_length), bool(rec.label)))
    dropped.report(len(records))
    check_both_classes(out, source)
    return out


def check_both_classes(examples: Sequence[Example], source: str = "unpaired feedback") -> None:
    n_good = sum(1 for e in examples if e[2])
    if n_good == 0 or n_good == len(examples):
        have, missing = ("true", "false") if n_good else ("false", "true")
        raise PreferenceDataError(
            f"{source}: every one of the {len(examples)} records has label={have}; KTO needs desirable "
            f"(label=true) and undesirable (label=false) examples, so add some with label={missing}")


def pairs_as_unpaired(pairs: Sequence[Pair]) -> list[Example]:
    """Each token pair as two KTO examples: chosen desirable, rejected undesirable (KTO's paired-data setup)."""
    return [e for p, c, r in pairs for e in ((p, c, True), (p, r, False))]


def load_pairs(path: Source, policy: LanguagePolicy, max_length: int | None = None) -> list[Pair]:
    """Read comparisons from ``path`` (chat rows rendered with the policy's chat template) as token pairs."""
    return comparison_pairs(read_records(path, "comparison", policy.tokenizer), policy, max_length, str(path))


def load_unpaired(path: Source, policy: LanguagePolicy, max_length: int | None = None) -> list[Example]:
    """Read ``prompt/completion/label`` rows from ``path`` as KTO examples."""
    return unpaired_examples(read_records(path, "unpaired", policy.tokenizer), policy, max_length, str(path))
