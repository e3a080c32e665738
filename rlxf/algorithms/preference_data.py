"""From user feedback records to token sequences a trainer can use, with the checks a user needs.

Records come from :func:`rlxf.data.io.read_records` (TRL's standard, implicit-prompt and
conversational formats; JSONL, Parquet or a ``save_to_disk`` directory). Rows that carry no
learning signal are dropped with one warning that names them (0-based record numbers in file
order): chosen identical to rejected, a response with no tokens, a prompt that leaves no room
for a response within ``max_length``. Responses longer than the room left are cut at the end
(TRL's ``keep_start``); with ``max_prompt_length``, prompts longer than that are cut from the
left (TRL's ``keep_end``), with one warning giving the count. A KTO dataset with one class only is
an error: its reference point then has nothing to be measured against. Every function takes a
tokenizer, or a policy (its tokenizer is used).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

from rlxf.data.io import DataError, Source, read_records
from rlxf.data.records import Comparison, Demonstration, Prompt, Unpaired
from rlxf.policies.logprobs import Pair

Example = tuple[list[int], list[int], bool]  # prompt_ids, completion_ids, desirable
Encoder = Any  # a Hugging Face tokenizer, or a LanguagePolicy (its tokenizer)


class PreferenceDataError(DataError):
    """Feedback data that cannot be trained on; the message names the source and rows."""


class PreferenceDataWarning(UserWarning):
    """Rows dropped from preference data because they carry no learning signal."""


def _rows(indices: list[int], limit: int = 10) -> str:
    shown = ", ".join(str(i) for i in indices[:limit])
    return shown + (f" and {len(indices) - limit} more" if len(indices) > limit else "")


def _tokenizer(encoder: Encoder) -> Any:
    return getattr(encoder, "tokenizer", encoder)


def encode(encoder: Encoder, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text, without special tokens (a policy's own ``encode`` when given a policy)."""
    if hasattr(encoder, "tokenizer"):
        return encoder.encode(list(texts))
    return encoder(list(texts), add_special_tokens=False).input_ids if texts else []


def encode_responses(encoder: Encoder, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each response followed by EOS (when the tokenizer has one)."""
    eos = _tokenizer(encoder).eos_token_id
    return [ids + ([] if eos is None else [eos]) for ids in encode(encoder, texts)]


def encode_prompts(encoder: Encoder, texts: Sequence[str], max_prompt_length: int | None = None,
                   source: str = "data", stats: dict | None = None) -> list[list[int]]:
    """Token ids of each prompt, the ones longer than ``max_prompt_length`` cut from the left
    (the end of a prompt is what the response follows), with one warning giving the count."""
    ids = encode(encoder, texts)
    cut = [] if max_prompt_length is None else [i for i, p in enumerate(ids) if len(p) > max_prompt_length]
    if cut:
        longest = max(len(ids[i]) for i in cut)
        warnings.warn(f"{source}: {len(cut)} of {len(ids)} prompts are longer than max_prompt_length="
                      f"{max_prompt_length} tokens (the longest has {longest}) and were cut from the left "
                      f"(records {_rows(cut)})", PreferenceDataWarning, stacklevel=3)
        ids = [p[-max_prompt_length:] for p in ids]
    if stats is not None:
        stats["truncated"] = len(cut)
    return ids


class _Dropped:
    """Collects dropped rows by reason and reports them in one warning (and in ``stats``)."""

    def __init__(self, source: str, stats: dict | None = None):
        self.source, self.reasons = source, {}
        if stats is not None:
            stats["dropped"] = self.reasons

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
            raise PreferenceDataError(self.source, None, f"no usable records left (all {total} were dropped, "
                                                         "see above)")


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


def comparison_pairs(records: Sequence[Comparison], policy: Encoder, max_length: int | None = None,
                     source: str = "comparisons") -> list[Pair]:
    """Token pairs ``(prompt, chosen + EOS, rejected + EOS)`` of the usable comparisons."""
    return checked_comparisons(records, policy, max_length, source)[1]


def checked_comparisons(records: Sequence[Comparison], policy: Encoder, max_length: int | None = None,
                        source: str = "comparisons", max_prompt_length: int | None = None,
                        stats: dict | None = None) -> tuple[list[int], list[Pair]]:
    """:func:`comparison_pairs`, and the index of the record each pair came from. ``stats``, when
    given, receives the number of truncated prompts and the dropped rows by reason."""
    eos = _tokenizer(policy).eos_token_id
    prompts = encode_prompts(policy, [r.prompt for r in records], max_prompt_length, source, stats)
    chosen = encode_responses(policy, [r.chosen for r in records])
    rejected = encode_responses(policy, [r.rejected for r in records])
    dropped, kept, pairs = _Dropped(source, stats), [], []
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


def unpaired_examples(records: Sequence[Unpaired], policy: Encoder, max_length: int | None = None,
                      source: str = "unpaired feedback") -> list[Example]:
    """Token examples ``(prompt, completion + EOS, desirable)`` for KTO, checking both classes are present."""
    kept, pairs = checked_responses(records, policy, max_length, source)
    out = [(p, c, bool(records[i].label)) for i, (p, c) in zip(kept, pairs)]
    check_both_classes(out, source)
    return out


def checked_responses(records: Sequence[Demonstration | Unpaired | Prompt], policy: Encoder,
                      max_length: int | None = None, source: str = "data", max_prompt_length: int | None = None,
                      stats: dict | None = None) -> tuple[list[int], list[tuple[list[int], list[int]]]]:
    """``(prompt, response + EOS)`` token pairs of records with one response (demonstrations,
    unpaired feedback; a prompt record gets an empty response), the rows without room or
    tokens for a response dropped, and the index of the record each pair came from."""
    eos = _tokenizer(policy).eos_token_id
    prompts = encode_prompts(policy, [r.prompt for r in records], max_prompt_length, source, stats)
    texts = [getattr(r, "response", getattr(r, "completion", None)) for r in records]
    with_response = all(t is not None for t in texts)
    responses = encode_responses(policy, texts) if with_response else [[] for _ in records]
    dropped, kept, out = _Dropped(source, stats), [], []
    for i, (p, c) in enumerate(zip(prompts, responses)):
        if _check_lengths(dropped, i, p, (c,) if with_response else (), eos, max_length):
            kept.append(i)
            out.append((p, _fit(p, c, max_length)))
    dropped.report(len(records))
    return kept, out


def check_both_classes(examples: Sequence[Example], source: str = "unpaired feedback") -> None:
    n_good = sum(1 for e in examples if e[2])
    if n_good == 0 or n_good == len(examples):
        have, missing = ("true", "false") if n_good else ("false", "true")
        raise PreferenceDataError(
            source, None, f"every one of the {len(examples)} records has label={have}; KTO needs desirable "
            f"(label=true) and undesirable (label=false) examples, so add some with label={missing}")


def pairs_as_unpaired(pairs: Sequence[Pair]) -> list[Example]:
    """Each token pair as two KTO examples: chosen desirable, rejected undesirable (KTO's paired-data setup)."""
    return [e for p, c, r in pairs for e in ((p, c, True), (p, r, False))]


def load_pairs(path: Source, policy: Encoder, max_length: int | None = None) -> list[Pair]:
    """Read comparisons from ``path`` (chat rows rendered with the policy's chat template) as token pairs."""
    return comparison_pairs(read_records(path, "comparison", _tokenizer(policy)), policy, max_length, str(path))


def load_unpaired(path: Source, policy: Encoder, max_length: int | None = None) -> list[Example]:
    """Read ``prompt/completion/label`` rows from ``path`` as KTO examples."""
    return unpaired_examples(read_records(path, "unpaired", _tokenizer(policy)), policy, max_length, str(path))
