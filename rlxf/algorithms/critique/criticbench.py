"""CriticBench and self-check (Luo et al. 2023, "Critique Ability of Large Language Models").

CriticBench scores a critic by verdict accuracy: on answers that are right or subtly wrong, does its
critique's verdict agree with gold? (A critique without a verdict line accepts the answer.) Here the
answers are :mod:`rlxf.critique.bench` items, scored by difficulty, and a policy's own samples
(:func:`policy_items`), scored also by the policy's certainty on the question: self-consistency over
``k`` samples, ``C(Q) = -log10(1 - m/k)`` with ``m`` the majority count (unanimous answers are
clipped to ``m/k = 1 - 1/(2k)``, i.e. half a dissenting sample). The paper finds critique hardest
where the policy is least certain.

Self-check (the paper's baseline for using critique): the policy samples ``k`` answers; when its
certainty is below ``threshold`` (``C = 1`` for weak models) a critic judges each sample, the rejected
ones are dropped and the rest majority-voted; otherwise (or when every sample is rejected) the plain
majority stands. :func:`self_check` returns self-check, plain self-consistency and single-sample
accuracy per problem on the same samples, so they compare at equal policy samples.
"""

from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np

from rlxf.algorithms.evaluate import paired_gain
from rlxf.algorithms.loop import OptimConfig
from rlxf.algorithms.sft import train_sft
from rlxf.core.runs import Run
from rlxf.critique.bench import CritiqueItem, gold_verdict
from rlxf.critique.evaluate import critique_items, score_verdicts
from rlxf.critique.format import CRITIC_CHARS, critic_prompt, parse_critique, render_critique
from rlxf.critique.simulated import difficulty_of
from rlxf.labelers.roles import LMRole, TextModel
from rlxf.policies.language import LanguagePolicy
from rlxf.policies.tiny import tiny_causal_lm, tiny_tokenizer
from rlxf.tasks.arithmetic import evaluate, split_steps

_ANSWER = re.compile(r"^answer\s*:\s*(-?\d+)$")
CERTAINTY_BUCKETS = ((0.0, 0.5, "low"), (0.5, 1.0, "mid"), (1.0, math.inf, "high"))
"""Certainty buckets ``[lo, hi)``; with k = 8 samples, low is a majority of at most 5, mid 6 or 7,
high unanimous."""


def final_answer(response: str) -> str | None:
    """The ``N`` of a response's last line ``answer: N`` (None when it has none)."""
    m = _ANSWER.match(split_steps(response)[-1])
    return m[1] if m else None


def majority(answers: list[str | None]) -> tuple[str | None, int]:
    """The most common answer other than None and its count (ties: the one seen first)."""
    votes = Counter(a for a in answers if a is not None)
    return votes.most_common(1)[0] if votes else (None, 0)


def certainty(m: int, k: int) -> float:
    """Self-consistency certainty ``-log10(1 - m/k)``, clipped at ``m = k`` to ``log10(2k)``."""
    if not 0 <= m <= k or k < 1:
        raise ValueError(f"certainty: need 0 <= m <= k and k >= 1, got m={m}, k={k}")
    return -math.log10(max(1.0 - m / k, 1.0 / (2 * k)))


def certainty_bucket(c: float) -> str:
    return next(name for lo, hi, name in CERTAINTY_BUCKETS if lo <= c < hi)


def question_certainty(samples: list[str]) -> float:
    """The policy's certainty on a question from its ``k`` sampled responses."""
    return certainty(majority([final_answer(s) for s in samples])[1], len(samples))


def policy_items(problems: list[str], samples: list[list[str]]) -> list[CritiqueItem]:
    """Every sampled response as an arithmetic critique item (gold from :func:`gold_verdict`),
    difficulty = the question's operator count, ``meta["certainty"]`` the policy's certainty on it."""
    items = []
    for q, group in zip(problems, samples):
        c = question_certainty(group)
        for a in group:
            v = gold_verdict("arithmetic", q, a)
            items.append(CritiqueItem("arithmetic", q, a, bool(v.correct), v.first_wrong_step,
                                      difficulty_of("arithmetic", q), {"certainty": c}))
    return items


def criticbench(critic: TextModel, items: list[CritiqueItem]) -> dict:
    """Verdict accuracy of ``critic`` on ``items`` (one pass of the critic): overall, by difficulty,
    on right and wrong answers apart, and by certainty bucket (``{name: {"accuracy", "n"}}``) for
    items that carry ``meta["certainty"]``."""
    verdicts = critique_items(critic, items)
    scores = score_verdicts(items, verdicts)
    out = {k: scores[k] for k in ("accuracy", "by_difficulty", "n", "accept_right", "reject_wrong")}
    buckets: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        if "certainty" in it.meta:
            buckets.setdefault(certainty_bucket(it.meta["certainty"]), []).append(i)
    out["by_certainty"] = {}
    for _, _, name in CERTAINTY_BUCKETS:
        if name in buckets:
            acc = score_verdicts([items[i] for i in buckets[name]], [verdicts[i] for i in buckets[name]])["accuracy"]
            out["by_certainty"][name] = {"accuracy": acc, "n": len(buckets[name])}
    return out


def self_check(critic: TextModel, problems: list[str], samples: list[list[str]], threshold: float = 1.0) -> dict:
    """Self-check against plain self-consistency and a single sample, on the same samples.

    Per problem (arrays, in order): ``self_check``, ``majority`` and ``single`` (the first sample)
    final-answer correctness, ``certainty`` and ``critiqued`` (whether the critic was asked).
    ``critic_requests`` counts the critiques asked for."""
    answers = [[final_answer(s) for s in group] for group in samples]
    certs = [certainty(majority(a)[1], len(a)) for a in answers]
    todo = [i for i, c in enumerate(certs) if c < threshold]
    requests = [critic_prompt(problems[i], s) for i in todo for s in samples[i]]
    verdicts = iter(parse_critique(t).accepts for t in critic.complete(requests)) if requests else iter(())
    picked = [majority(a)[0] for a in answers]
    for i in todo:
        kept = [a for a in answers[i] if next(verdicts)]
        if majority(kept)[0] is not None:
            picked[i] = majority(kept)[0]
    truth = [str(evaluate(q)) for q in problems]
    return {"self_check": np.array([p == t for p, t in zip(picked, truth)], dtype=float),
            "majority": np.array([majority(a)[0] == t for a, t in zip(answers, truth)], dtype=float),
            "single": np.array([a[0] == t for a, t in zip(answers, truth)], dtype=float),
            "certainty": np.array(certs), "critiqued": np.array([c < threshold for c in certs]),
            "critic_requests": len(requests)}


def train_verifier(run: Run, stage: str, items: list[CritiqueItem], cfg: OptimConfig, n_layer: int = 2,
                   n_embd: int = 64, seed: int = 0, quiet: bool = True) -> LMRole:
    """A tiny character-level critic LM SFT'd to write each item's gold verdict line (no notes) after
    its :func:`critic_prompt`: a trained verifier of ``n_layer`` x ``n_embd``, as a greedy critic."""
    tok = tiny_tokenizer(CRITIC_CHARS, split="chars")
    policy = LanguagePolicy(tiny_causal_lm(tok, "gpt2", n_layer, n_embd, 4, 128, seed=seed), tok)
    prompts = policy.encode([critic_prompt(it.question, it.answer) for it in items])
    targets = policy.encode_responses([render_critique(it.correct, it.first_wrong_step) for it in items])
    train_sft(run, stage, policy, prompts, targets, cfg, seed, quiet)
    policy.model.eval()
    return LMRole(policy, max_new_tokens=24, chat=False, seed=seed)


def accuracy_by_certainty(result: dict, key: str = "majority") -> dict[str, dict]:
    """Mean of ``result[key]`` per certainty bucket, with counts."""
    names = np.array([certainty_bucket(c) for c in result["certainty"]])
    return {name: {"accuracy": float(result[key][names == name].mean()), "n": int((names == name).sum())}
            for _, _, name in CERTAINTY_BUCKETS if (names == name).any()}


__all__ = ["CERTAINTY_BUCKETS", "accuracy_by_certainty", "certainty", "certainty_bucket", "criticbench",
           "final_answer", "majority", "paired_gain", "policy_items", "question_certainty", "self_check",
           "train_verifier"]
