"""Critique items: answers to judge, half right and half subtly wrong, with their gold verdicts.

An item is a question, an answer and the gold judgment of that answer (correct or not, and the
1-based first wrong step). Every critic here is scored on such items (CriticBench's verdict
accuracy, localisation, the closed loop), and trainers of critics draw their examples from them.

- Arithmetic (:func:`arithmetic_items`): a correct answer is the canonical worked solution; a wrong
  one is that solution with exactly one step corrupted (a slip, a wrong operator, a precedence
  error or a mis-copied answer, :func:`rlxf.tasks.arithmetic.corrupt`), continued consistently, so
  it reads as plausibly as a right one. Difficulty = the number of operators (1-3 steps of work).
- Code (:func:`code_items`): a correct answer is the reference body of a code problem; a wrong one
  is the body with one injected bug (:func:`rlxf.tasks.code.mutants`) that fails a hidden test.
  Difficulty = the body's length: 1 line (1), 2-6 lines (2), 7 or more (3).

Gold for code is the hidden tests. Bodies that are the reference or one of its single-change
mutants are our own template code and run in this process (fast); any other answer runs in the
sandbox (:mod:`rlxf.tasks.sandbox`).
"""

from __future__ import annotations

import ast
import random
from dataclasses import dataclass, field
from functools import lru_cache

from rlxf.critique.format import Verdict
from rlxf.tasks import arithmetic as ar
from rlxf.tasks import code as cd

TASKS = ("arithmetic", "code")


@dataclass(frozen=True)
class CritiqueItem:
    """One answer to judge and its gold judgment.

    ``correct``: arithmetic, the final answer is right and every step valid; code, every hidden test
    passes. ``first_wrong_step``: 1-based index into :func:`answer_steps` (None when correct).
    ``difficulty``: 1 (easy) to 3 (hard), see the module docstring."""

    task: str
    question: str
    answer: str
    correct: bool
    first_wrong_step: int | None
    difficulty: int
    meta: dict = field(default_factory=dict)


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"critique bench: task must be one of {TASKS}, got {task!r}")


def _wrong_flags(n: int, wrong_share: float, rng: random.Random) -> list[bool]:
    """``n`` flags of which ``round(n * wrong_share)`` are True, in a seeded order."""
    if not 0.0 <= wrong_share <= 1.0:
        raise ValueError(f"critique bench: wrong_share must be in [0, 1], got {wrong_share}")
    k = round(n * wrong_share)
    flags = [True] * k + [False] * (n - k)
    rng.shuffle(flags)
    return flags


# -- steps and gold ---------------------------------------------------------------------------


def _code_lines(answer: str) -> list[str]:
    return answer.rstrip("\n").split("\n")


def answer_steps(item: CritiqueItem) -> list[str]:
    """The steps ``first_wrong_step`` counts: arithmetic, the answer's lines (stripped); code, the
    body's lines as written (indentation kept)."""
    _check_task(item.task)
    return ar.split_steps(item.answer) if item.task == "arithmetic" else _code_lines(item.answer)


def _normalised(body: str) -> list[str] | None:
    """A body's lines after a round trip through ``ast`` (None when it does not parse)."""
    try:
        return ast.unparse(ast.parse("\n".join(line[4:] for line in _code_lines(body)))).split("\n")
    except SyntaxError:
        return None


def _first_difference(reference: str, body: str) -> int | None:
    """The 1-based line of ``body`` that first differs from ``reference`` (same line count only)."""
    ref, got = _normalised(reference), _normalised(body)
    if ref is None or got is None or len(ref) != len(got) or len(got) != len(_code_lines(body)):
        return None
    return next((i + 1 for i, (a, b) in enumerate(zip(ref, got)) if a != b), None)


def _passes_in_process(p: cd.Problem, body: str) -> bool:
    """Every hidden test of ``p`` passes; only for the reference and its mutants (our own code)."""
    space: dict = {}
    exec(cd.program(p, body), space)
    got = cd._outputs(space[p.id], list(p.tests))
    return got == [repr(out) for _, out in p.tests]


@lru_cache(maxsize=4096)
def _code_verdict(problem_id: str, answer: str) -> Verdict:
    p = cd.problem(problem_id)
    if answer == p.solution:
        return Verdict(True)
    if answer in _mutants(problem_id):
        passed = _passes_in_process(p, answer)
    else:
        passed = cd.check([p], [answer])[0].pass_rate == 1.0
    return Verdict(True) if passed else Verdict(False, _first_difference(p.solution, answer))


@lru_cache(maxsize=512)
def _mutants(problem_id: str) -> frozenset[str]:
    return frozenset(cd.mutants(cd.problem(problem_id).solution))


def gold_verdict(task: str, question: str, answer: str, meta: dict | None = None) -> Verdict:
    """The gold judgment of ``answer`` to ``question``.

    Arithmetic: correct iff :func:`~rlxf.tasks.arithmetic.check_answer` and every step of
    :func:`~rlxf.tasks.arithmetic.check_steps` hold; the first wrong step is the first invalid
    line. Code: correct iff every hidden test passes; the first wrong step is the first line that
    differs from the reference body (None when the answer is shaped differently). ``meta`` may
    name the code problem (``{"problem_id": ...}``); otherwise the question must be its prompt."""
    _check_task(task)
    if task == "arithmetic":
        labels = ar.check_steps(question, answer)
        if all(labels) and ar.check_answer(question, answer):
            return Verdict(True)
        return Verdict(False, labels.index(False) + 1 if False in labels else None)
    problem_id = (meta or {}).get("problem_id") or cd.CodeTask().by_prompt(question).id
    return _code_verdict(problem_id, answer)


# -- builders ---------------------------------------------------------------------------------


def _item(task: str, question: str, answer: str, difficulty: int, meta: dict) -> CritiqueItem:
    v = gold_verdict(task, question, answer, meta)
    return CritiqueItem(task, question, answer, bool(v.correct), v.first_wrong_step, difficulty, meta)


def arithmetic_items(n: int, seed: int = 0, difficulties=(1, 2, 3), wrong_share: float = 0.5) -> list[CritiqueItem]:
    """``n`` arithmetic items, difficulties taken in turn (difficulty ``d`` = problems with ``d``
    operators), ``round(n * wrong_share)`` of them wrong by one corrupted step. Questions are
    distinct while the difficulty has unused problems left. Seeded: the same arguments give the
    same items."""
    if not difficulties or any(d not in (1, 2, 3) for d in difficulties):
        raise ValueError(f"arithmetic_items: difficulties must be among 1, 2, 3, got {difficulties!r}")
    rng = random.Random(f"critique-bench|arithmetic|{seed}")
    flags = _wrong_flags(n, wrong_share, rng)
    seen: set[str] = set()
    items = []
    for i, wrong in enumerate(flags):
        d = difficulties[i % len(difficulties)]
        for _ in range(50):
            q = ar.generate_problem(rng, (d, d))
            if q not in seen:
                break
        seen.add(q)
        answer = ar.solve(q)
        if wrong:
            answer = ar.corrupt(q, answer, rng)
        items.append(_item("arithmetic", q, answer, d, {"source": "corrupt" if wrong else "solve"}))
    return items


def code_difficulty(body: str) -> int:
    """1 for a one-line body, 2 for 2-6 lines, 3 for longer ones."""
    lines = len(_code_lines(body))
    return 1 if lines == 1 else 2 if lines <= 6 else 3


def code_items(n: int, seed: int = 0, wrong_share: float = 0.5) -> list[CritiqueItem]:
    """``n`` code items over distinct problems (while they last; seeded), ``round(n * wrong_share)``
    of them the reference body with one injected bug that fails a hidden test (a mutant that fails
    none is skipped for another)."""
    rng = random.Random(f"critique-bench|code|{seed}")
    flags = _wrong_flags(n, wrong_share, rng)
    ids = sorted(cd.all_problems())
    order: list[str] = []
    items = []
    for wrong in flags:
        if not order:
            order = rng.sample(ids, len(ids))
        pid = order.pop()
        p = cd.problem(pid)
        answer = p.solution
        if wrong:
            shuffled = rng.sample(sorted(_mutants(pid)), len(_mutants(pid)))
            answer = next((m for m in shuffled if not _code_verdict(pid, m).correct), None)
            if answer is None:
                raise ValueError(f"code_items: no mutant of {pid!r} fails a hidden test")
        items.append(_item("code", p.prompt, answer, code_difficulty(p.solution), {"problem_id": pid}))
    return items


__all__ = ["CritiqueItem", "TASKS", "answer_steps", "arithmetic_items", "code_difficulty", "code_items",
           "gold_verdict"]
