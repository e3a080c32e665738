"""Simulated critics and correctors: roles played from gold with a set error profile.

A simulated critic reads :func:`~rlxf.critique.format.critic_prompt` requests and writes critiques
in the shared format; what it would say with no errors is the gold verdict
(:func:`rlxf.critique.bench.gold_verdict`), and its :class:`CriticProfile` says how often it
misses a wrong answer, rejects a right one, or names the wrong step. A profile may differ by
difficulty (``{1: easy_profile, 3: hard_profile}``): a critic's expertise.

A simulated corrector reads :func:`~rlxf.critique.format.corrector_prompt` requests: when the
critique accepts it returns the answer unchanged; when it rejects at step ``K`` it redoes the answer
from step ``K``. A redo can only help when every step before ``K`` was right (the corrector keeps
them), and then it gives a right answer with probability ``skill`` and a wrong one otherwise. So
a critique helps by outcome only when it rejects a wrong answer at or before its first wrong step,
and a false alarm can break a right answer.

Both are deterministic functions of the request text (draws are seeded by ``seed`` and the request),
so the same critic gives the same critique to the same answer in every mode and round, and results
do not depend on batching or order. Both follow :class:`rlxf.labelers.roles.TextModel`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from rlxf.critique.bench import CritiqueItem, answer_steps, code_difficulty, gold_verdict, TASKS
from rlxf.critique.format import parse_critique, render_critique
from rlxf.tasks import arithmetic as ar
from rlxf.tasks import code as cd

_END = "\n#\n"


@dataclass(frozen=True)
class CriticProfile:
    """How a simulated critic errs: ``miss`` = P(accept | answer wrong), ``false_alarm`` =
    P(reject | answer right, at a step drawn uniformly), ``misplace`` = P(it names another step than
    the first wrong one | it rejects a wrong answer). ``notes``: write one line per step before the
    verdict (``step k: ok`` ... ``step K: wrong``)."""

    miss: float = 0.0
    false_alarm: float = 0.0
    misplace: float = 0.0
    notes: bool = True

    def __post_init__(self):
        for name in ("miss", "false_alarm", "misplace"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"CriticProfile: {name} must be in [0, 1], got {value}")


ALWAYS_CORRECT = CriticProfile(miss=1.0, false_alarm=0.0)
"""Accepts every answer: RealCritic's trivial baseline (keeps a 50/50 pool at 50%)."""
RANDOM_FLIP = CriticProfile(miss=0.5, false_alarm=0.5, misplace=0.5)
"""A coin flip per answer, naming a random step when it rejects."""


# -- requests ---------------------------------------------------------------------------------


def split_request(task: str, text: str) -> tuple[str, str, str | None]:
    """``(question, answer, critique)`` of a critic request (critique None) or a corrector request.
    Arithmetic questions are one line; a code question is its problem's prompt."""
    if task not in TASKS:
        raise ValueError(f"split_request: task must be one of {TASKS}, got {task!r}")
    if not text.endswith(_END):
        raise ValueError(f"split_request: not a critic or corrector request (no final '#' line): {text[-40:]!r}")
    parts = text[: -len(_END)].split(_END, 1)
    head, critique = parts[0], parts[1] if len(parts) == 2 else None
    if task == "arithmetic":
        question, _, answer = head.partition("\n")
        return question, answer, critique
    prompt = cd.CodeTask().by_prompt(head).prompt
    if not head.startswith(prompt):
        raise ValueError(f"split_request: a code request must start with the problem's prompt: {head[:60]!r}")
    return prompt, head[len(prompt) + 1:], critique


def difficulty_of(task: str, question: str) -> int:
    """The bench's difficulty of a question: arithmetic, its number of operators (1-3); code, the
    reference body's length class (:func:`rlxf.critique.bench.code_difficulty`)."""
    if task == "arithmetic":
        return min(3, max(1, len(ar.parse_problem(question)[1])))
    return code_difficulty(cd.CodeTask().by_prompt(question).solution)


def _steps(task: str, question: str, answer: str) -> list[str]:
    return answer_steps(CritiqueItem(task, question, answer, False, None, 1))


# -- the critic -------------------------------------------------------------------------------


@dataclass
class SimulatedCritic:
    """A critic played from gold (see the module docstring); ``calls``/``requests`` count use."""

    profile: CriticProfile | dict[int, CriticProfile]
    seed: int = 0
    task: str = "arithmetic"
    calls: int = 0
    requests: int = 0

    def profile_for(self, question: str) -> CriticProfile:
        if isinstance(self.profile, CriticProfile):
            return self.profile
        d = difficulty_of(self.task, question)
        if d not in self.profile:
            raise ValueError(f"simulated critic: no profile for difficulty {d} (profiles for {sorted(self.profile)})")
        return self.profile[d]

    def critique(self, question: str, answer: str, rng: random.Random) -> str:
        prof = self.profile_for(question)
        gold = gold_verdict(self.task, question, answer)
        n = max(1, len(_steps(self.task, question, answer)))
        named: int | None = None  # the step it rejects at; None accepts
        if gold.correct:
            if rng.random() < prof.false_alarm:
                named = rng.randint(1, n)
        elif rng.random() >= prof.miss:
            named = gold.first_wrong_step or rng.randint(1, n)
            if n > 1 and rng.random() < prof.misplace:
                named = rng.choice([k for k in range(1, n + 1) if k != named])
        last = n if named is None else named
        notes = [f"step {k}: {'wrong' if k == named else 'ok'}" for k in range(1, last + 1)] if prof.notes else []
        return render_critique(named is None, named, notes)

    def complete(self, requests: list[str]) -> list[str]:
        self.calls += 1
        self.requests += len(requests)
        out = []
        for text in requests:
            question, answer, _ = split_request(self.task, text)
            out.append(self.critique(question, answer, random.Random(f"critic|{self.seed}|{text}")))
        return out


def simulated_critic(profile: CriticProfile | dict[int, CriticProfile], seed: int = 0,
                     task: str = "arithmetic") -> SimulatedCritic:
    """A gold-driven critic of ``task`` answers with ``profile`` (or one profile per difficulty)."""
    if task not in TASKS:
        raise ValueError(f"simulated_critic: task must be one of {TASKS}, got {task!r}")
    profiles = profile.values() if isinstance(profile, dict) else [profile]
    if not profiles or not all(isinstance(p, CriticProfile) for p in profiles):
        raise ValueError(f"simulated_critic: profile must be a CriticProfile or a dict of them by difficulty, "
                         f"got {profile!r}")
    return SimulatedCritic(profile, seed, task)


# -- the corrector ----------------------------------------------------------------------------


def reference_answer(task: str, question: str) -> str:
    """A right answer: the canonical worked solution, or the code problem's reference body."""
    return ar.solve(question) if task == "arithmetic" else cd.CodeTask().by_prompt(question).solution


def wrong_answer(task: str, question: str, rng: random.Random) -> str:
    """A plausible wrong answer: the solution with one corrupted step, or the reference body with
    an injected bug that fails a hidden test (any mutant when none fails)."""
    if task == "arithmetic":
        return ar.corrupt(question, ar.solve(question), rng)
    options = cd.mutants(reference_answer(task, question))
    rng.shuffle(options)
    return next((m for m in options if not gold_verdict(task, question, m).correct), options[0])


@dataclass
class SimulatedCorrector:
    """A corrector played from gold (see the module docstring); ``calls``/``requests`` count use."""

    skill: float = 1.0
    seed: int = 0
    task: str = "arithmetic"
    calls: int = 0
    requests: int = 0

    def correct(self, question: str, answer: str, critique: str, rng: random.Random) -> str:
        verdict = parse_critique(critique)
        if verdict.accepts:
            return answer
        redo_from = verdict.first_wrong_step or 1
        if answer.strip() and redo_from > 1:
            gold = gold_verdict(self.task, question, answer)
            if not gold.correct and gold.first_wrong_step is not None and gold.first_wrong_step < redo_from:
                return answer  # the kept steps hold the error: the redo continues from it
        return reference_answer(self.task, question) if rng.random() < self.skill else \
            wrong_answer(self.task, question, rng)

    def complete(self, requests: list[str]) -> list[str]:
        self.calls += 1
        self.requests += len(requests)
        out = []
        for text in requests:
            question, answer, critique = split_request(self.task, text)
            if critique is None:
                raise ValueError(f"simulated corrector: a request without a critique: {text[:60]!r}")
            out.append(self.correct(question, answer, critique, random.Random(f"corrector|{self.seed}|{text}")))
        return out


def simulated_corrector(skill: float = 1.0, seed: int = 0, task: str = "arithmetic") -> SimulatedCorrector:
    """A gold-driven corrector of ``task`` answers that redoes from the rejected step, right with
    probability ``skill``."""
    if task not in TASKS:
        raise ValueError(f"simulated_corrector: task must be one of {TASKS}, got {task!r}")
    if not 0.0 <= skill <= 1.0:
        raise ValueError(f"simulated_corrector: skill must be in [0, 1], got {skill}")
    return SimulatedCorrector(skill, seed, task)


__all__ = ["ALWAYS_CORRECT", "CriticProfile", "RANDOM_FLIP", "SimulatedCorrector", "SimulatedCritic",
           "difficulty_of", "reference_answer", "simulated_corrector", "simulated_critic", "split_request",
           "wrong_answer"]
