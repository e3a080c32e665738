"""Critique quality measured by outcome: verdict accuracy, first-error localisation and RealCritic's
closed loop.

- :func:`verdict_accuracy`: how often the critic's verdict (accept / reject) agrees with gold.
- :func:`localisation`: of the wrong answers, how often it names exactly the first wrong step.
- :func:`closed_loop`: a corrector reads each critique and rewrites rejected answers; the score is
  the accuracy of the answers after correction (RealCritic's effectiveness), with the 2x2 transition
  matrix from before to after (``c->i`` counts right answers a false alarm broke, which a higher
  accuracy can hide). Over several rounds the critic judges the corrected answers again until it
  accepts them; ``per_round`` holds the accuracy after each round, padded with the last value.
- :func:`critique_eval`: RealCritic's modes for several critics with one corrector: ``direct`` (the
  corrector answers on its own, no critique), ``self`` (the critic judges the answers the model
  wrote itself: the direct answers), ``cross`` (the answers of the item pool, written by others)
  and ``iterative`` (the pool over ``rounds`` rounds).

Critics and correctors are any :class:`rlxf.labelers.roles.TextModel`; their replies are read with
:func:`rlxf.critique.format.parse_critique`, so simulated roles, tiny trained LMs and SmolLM2 are
measured by the same code. Gold comes from :func:`rlxf.critique.bench.gold_verdict` only.
"""

from __future__ import annotations

import math
from dataclasses import replace

from rlxf.algorithms.evaluate import paired_gain
from rlxf.critique.bench import CritiqueItem, gold_verdict
from rlxf.critique.format import Verdict, corrector_prompt, critic_prompt, parse_critique, verdict_line
from rlxf.labelers.roles import TextModel

MODES = ("direct", "self", "cross", "iterative")
TRANSITIONS = ("c->c", "c->i", "i->c", "i->i")


def critique_items(critic: TextModel, items: list[CritiqueItem]) -> list[Verdict]:
    """The critic's verdict on each item (one batched call)."""
    texts = critic.complete([critic_prompt(it.question, it.answer) for it in items])
    return [parse_critique(t) for t in texts]


def _by_difficulty(items: list[CritiqueItem], hits: list[bool]) -> dict[int, float]:
    out: dict[int, list[bool]] = {}
    for it, hit in zip(items, hits):
        out.setdefault(it.difficulty, []).append(hit)
    return {d: sum(h) / len(h) for d, h in sorted(out.items())}


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


def score_verdicts(items: list[CritiqueItem], verdicts: list[Verdict]) -> dict:
    """Verdict accuracy and localisation of given verdicts (what :func:`verdict_accuracy` and
    :func:`localisation` report), so one critic pass serves both."""
    if len(items) != len(verdicts) or not items:
        raise ValueError(f"score_verdicts: {len(verdicts)} verdicts for {len(items)} items (expected as many, >= 1)")
    hits = [v.accepts == it.correct for it, v in zip(items, verdicts)]
    wrong = [(it, v) for it, v in zip(items, verdicts) if not it.correct and it.first_wrong_step is not None]
    located = [v.first_wrong_step == it.first_wrong_step for it, v in wrong]
    return {"accuracy": _mean(hits), "by_difficulty": _by_difficulty(items, hits), "n": len(items),
            "accept_right": _mean(v.accepts for it, v in zip(items, verdicts) if it.correct),
            "reject_wrong": _mean(not v.accepts for it, v in zip(items, verdicts) if not it.correct),
            "localisation": _mean(located), "localisation_by_difficulty": _by_difficulty([it for it, _ in wrong], located),
            "n_wrong": len(wrong)}


def verdict_accuracy(critic: TextModel, items: list[CritiqueItem]) -> dict:
    """``{"accuracy", "by_difficulty": {d: acc}, "n", "accept_right", "reject_wrong"}``: the share
    of items whose verdict (a missing verdict accepts) matches gold, overall and per difficulty, and
    the rates on right and wrong answers apart."""
    s = score_verdicts(items, critique_items(critic, items))
    return {k: s[k] for k in ("accuracy", "by_difficulty", "n", "accept_right", "reject_wrong")}


def localisation(critic: TextModel, items: list[CritiqueItem]) -> dict:
    """``{"localisation", "by_difficulty", "n"}``: the share of wrong items (with a known first wrong
    step) whose critique rejects them at exactly that step."""
    s = score_verdicts(items, critique_items(critic, items))
    return {"localisation": s["localisation"], "by_difficulty": s["localisation_by_difficulty"], "n": s["n_wrong"]}


def _is_right(item: CritiqueItem, answer: str) -> bool:
    return answer == item.answer and item.correct or \
        answer != item.answer and bool(gold_verdict(item.task, item.question, answer, item.meta).correct)


def transitions(start: list[bool], final: list[bool]) -> dict[str, int]:
    """The 2x2 matrix from correctness before to after, as counts: ``c->c``, ``c->i``, ``i->c``, ``i->i``."""
    out = dict.fromkeys(TRANSITIONS, 0)
    for a, b in zip(start, final):
        out[f"{'c' if a else 'i'}->{'c' if b else 'i'}"] += 1
    return out


def closed_loop(critic: TextModel, corrector: TextModel, items: list[CritiqueItem], rounds: int = 1) -> dict:
    """RealCritic's effectiveness: critique, then correct the rejected answers, for ``rounds`` rounds
    (an answer leaves the loop once its critique accepts it).

    Returns ``{"accuracy", "start_accuracy", "per_round", "transitions", "fixed", "broken", "n",
    "start", "final", "critic_calls", "corrector_calls"}``: ``fixed`` = i->c / wrong at the start,
    ``broken`` = c->i / right at the start; ``start``/``final`` are per-item correctness (for paired
    comparisons); the call counts are requests sent to each role."""
    if rounds < 1:
        raise ValueError(f"closed_loop: rounds must be at least 1, got {rounds}")
    if not items:
        raise ValueError("closed_loop: no items")
    answers = [it.answer for it in items]
    right = [it.correct for it in items]
    start = list(right)
    active = list(range(len(items)))
    per_round: list[float] = []
    critic_calls = corrector_calls = 0
    for _ in range(rounds):
        if active:
            texts = critic.complete([critic_prompt(items[i].question, answers[i]) for i in active])
            critic_calls += len(active)
            rejected = [(i, t) for i, t in zip(active, texts) if not parse_critique(t).accepts]
            if rejected:
                fixed = corrector.complete([corrector_prompt(items[i].question, answers[i], t) for i, t in rejected])
                corrector_calls += len(rejected)
                for (i, _), new in zip(rejected, fixed):
                    answers[i] = new
                    right[i] = _is_right(items[i], new)
            active = [i for i, _ in rejected]
        per_round.append(_mean(right))
    trans = transitions(start, right)
    n_right, n_wrong = sum(start), len(start) - sum(start)
    return {"accuracy": per_round[-1], "start_accuracy": _mean(start), "per_round": per_round, "transitions": trans,
            "fixed": trans["i->c"] / n_wrong if n_wrong else float("nan"),
            "broken": trans["c->i"] / n_right if n_right else float("nan"),
            "n": len(items), "start": start, "final": right, "critic_calls": critic_calls,
            "corrector_calls": corrector_calls}


def direct_answers(corrector: TextModel, items: list[CritiqueItem]) -> list[CritiqueItem]:
    """RealCritic's direct mode: the corrector answers each question on its own (asked to redo an
    empty answer from step 1, no critique text); the answers become items with their gold."""
    texts = corrector.complete([corrector_prompt(it.question, "", verdict_line(False, 1)) for it in items])
    out = []
    for it, answer in zip(items, texts):
        v = gold_verdict(it.task, it.question, answer, it.meta)
        out.append(replace(it, answer=answer, correct=bool(v.correct), first_wrong_step=v.first_wrong_step))
    return out


def paired_se(a: list[bool], b: list[bool]) -> float:
    """The standard error of mean(a) - mean(b) over paired items (:func:`rlxf.algorithms.evaluate.paired_gain`)."""
    return paired_gain(a, b)[1]


def critique_eval(critics: dict[str, TextModel], corrector: TextModel, items: list[CritiqueItem],
                  modes=MODES, rounds: int = 3) -> list[dict]:
    """One row per (critic, mode) (one ``direct`` row, critic ``-``): ``{"critic", "mode", "accuracy",
    "start_accuracy", "per_round", "transitions", "fixed", "broken", "n", "vs_direct", "vs_direct_se"}``;
    ``vs_direct`` is the paired gain over the direct answers of the same questions (when ``direct``
    or ``self`` is among the modes). ``self`` and ``cross`` run one round, ``iterative`` ``rounds``."""
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise ValueError(f"critique_eval: modes must be a non-empty list among {MODES}, got {list(modes)}")
    own = direct_answers(corrector, items) if {"direct", "self"} & set(modes) else None
    base = [it.correct for it in own] if own else None
    rows = []

    def row(critic: str, mode: str, result: dict) -> dict:
        r = {"critic": critic, "mode": mode, **{k: v for k, v in result.items() if k not in ("start", "final")}}
        if base is not None:
            r["vs_direct"] = result["accuracy"] - _mean(base)
            r["vs_direct_se"] = paired_se(result["final"], base)
        return r

    if "direct" in modes:
        rows.append(row("-", "direct", {"accuracy": _mean(base), "start_accuracy": _mean(base),
                                         "per_round": [_mean(base)], "transitions": transitions(base, base),
                                         "fixed": 0.0, "broken": 0.0, "n": len(base), "final": base}))
    for name, critic in critics.items():
        for mode in modes:
            if mode == "self":
                rows.append(row(name, mode, closed_loop(critic, corrector, own, 1)))
            elif mode in ("cross", "iterative"):
                rows.append(row(name, mode, closed_loop(critic, corrector, items, 1 if mode == "cross" else rounds)))
    return rows


def format_table(rows: list[dict]) -> str:
    """The critique-eval table: accuracy after correction per critic and mode, its paired gain over
    direct (± SE), accuracy per round, and the transition counts."""
    head = (f"{'critic':<16} {'mode':<9} {'n':>5} {'before':>6} {'after':>6} {'vs direct':>15} "
            f"{'c->c':>5} {'c->i':>5} {'i->c':>5} {'i->i':>5}  per round")
    lines = [head, "-" * len(head)]
    for r in rows:
        gain = f"{r['vs_direct']:+.3f} ± {r['vs_direct_se']:.3f}" if "vs_direct" in r else "-"
        t = r["transitions"]
        lines.append(f"{r['critic']:<16} {r['mode']:<9} {r['n']:>5} {r['start_accuracy']:>6.3f} {r['accuracy']:>6.3f} "
                     f"{gain:>15} {t['c->c']:>5} {t['c->i']:>5} {t['i->c']:>5} {t['i->i']:>5}  "
                     + " ".join(f"{a:.3f}" for a in r["per_round"]))
    return "\n".join(lines)


__all__ = ["MODES", "TRANSITIONS", "closed_loop", "critique_eval", "critique_items", "direct_answers",
           "format_table", "localisation", "paired_se", "score_verdicts", "transitions", "verdict_accuracy"]
