"""Multi-step arithmetic with worked steps: the verifiable task.

A problem is an expression over small non-negative integers with 2-3 operators among ``+ - *``
and standard precedence, written as a prompt ending in ``=``, e.g. ``"3+4*2="``. Every problem
the generator makes has non-negative intermediate results.

Response format (exact). Lines separated by ``"\\n"``; spaces are ignored when checking:

    4*2=8
    3+8=11
    answer: 11

Each working line ``a<op>b=c`` reduces one operation of the current expression, replacing
``a<op>b`` by ``c``. A reduction is valid when ``c`` is right and precedence allows it: any
``*`` may go first (products are associative), a ``+`` or ``-`` only when no ``*`` is left and
it is the leftmost operator. The last line is ``answer: N``. The canonical solution (``solve``)
takes the leftmost ``*`` first, then goes left to right.

Step labels (``check_steps``) are local: each line is judged against the expression the
previous lines lead to, as they wrote it. So a slip carried forward consistently flags only the
line where it happened, while ``check_answer`` judges the outcome.
"""

from __future__ import annotations

import random
import re
import zlib
from dataclasses import dataclass

OPS = "+-*"
_TOKEN = re.compile(r"\d+|[+\-*]")
_WORK = re.compile(r"^(-?\d+)([+\-*])(-?\d+)=(-?\d+)$")
_ANSWER = re.compile(r"^answer:(-?\d+)$")
_LENIENT = re.compile(r"^answer[:=](-?\d+)$")
ALT_ANSWER = "answer = "  # the second source's way of writing the final line (see ArithmeticTask.corpus)

Expr = tuple[list[int], list[str]]  # numbers n0..nk and operators o0..o(k-1)


# -- expressions ----------------------------------------------------------------------------


def parse_problem(problem: str) -> Expr:
    """``"3+4*2="`` -> ``([3, 4, 2], ["+", "*"])``; raises ValueError on anything else."""
    text = problem.replace(" ", "").removesuffix("=")
    tokens = _TOKEN.findall(text)
    if "".join(tokens) != text or len(tokens) % 2 == 0 or not tokens:
        raise ValueError(f"not an arithmetic problem: {problem!r} (expected e.g. '3+4*2=')")
    nums, ops = [int(t) for t in tokens[0::2]], tokens[1::2]
    if any(o not in OPS for o in ops) or any(not t.isdigit() for t in tokens[0::2]):
        raise ValueError(f"not an arithmetic problem: {problem!r} (expected e.g. '3+4*2=')")
    return nums, ops


def format_problem(nums: list[int], ops: list[str]) -> str:
    return "".join(f"{n}{o}" for n, o in zip(nums, ops)) + f"{nums[-1]}="


def _apply(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def _allowed(ops: list[str], i: int) -> bool:
    """May operator ``i`` be reduced now under standard precedence?"""
    return ops[i] == "*" or ("*" not in ops and i == 0)


def _reduce(expr: Expr, i: int, value: int) -> Expr:
    nums, ops = expr
    return nums[:i] + [value] + nums[i + 2 :], ops[:i] + ops[i + 1 :]


def _canonical_lines(expr: Expr) -> list[str]:
    """The canonical working lines from ``expr`` down to a single number, then the answer line."""
    lines = []
    while expr[1]:
        nums, ops = expr
        i = ops.index("*") if "*" in ops else 0
        value = _apply(nums[i], ops[i], nums[i + 1])
        lines.append(f"{nums[i]}{ops[i]}{nums[i + 1]}={value}")
        expr = _reduce(expr, i, value)
    return lines + [f"answer: {expr[0][0]}"]


def solve(problem: str) -> str:
    """The canonical worked solution of ``problem`` (see the module docstring for the format)."""
    return "\n".join(_canonical_lines(parse_problem(problem)))


def evaluate(problem: str) -> int:
    """The value of ``problem`` under standard precedence."""
    return int(solve(problem).rsplit(" ", 1)[1])


# -- checking -------------------------------------------------------------------------------


def split_steps(response: str) -> list[str]:
    """The steps of a response: its lines after stripping (an empty response is one empty step)."""
    return [line.strip() for line in response.strip().split("\n")]


def check_answer(problem: str, response: str, lenient: bool = False) -> bool:
    """True iff the response's last line is ``answer: N`` with N the value of ``problem``.

    The check is strict about the format, as a verifier is: ``answer = N`` (the convention of
    the second source in :meth:`ArithmeticTask.corpus`) fails. ``lenient=True`` accepts it too,
    which separates getting the arithmetic right from writing the answer the verifier's way."""
    m = (_LENIENT if lenient else _ANSWER).match(split_steps(response)[-1].replace(" ", ""))
    return m is not None and int(m[1]) == evaluate(problem)


def check_steps(problem: str, response: str) -> list[bool]:
    """One label per step (line): is it a correct, precedence-valid reduction of the expression
    the previous lines lead to, or (last line only) the answer that expression reduces to?

    A working line that matches an operation in the current expression moves the expression on
    as written, right or wrong; a line that matches nothing is False and changes nothing.
    """
    expr = parse_problem(problem)
    lines = split_steps(response)
    labels = []
    for k, line in enumerate(lines):
        text = line.replace(" ", "")
        if m := _ANSWER.match(text):
            labels.append(k == len(lines) - 1 and not expr[1] and int(m[1]) == expr[0][0])
            continue
        m = _WORK.match(text)
        if m is None:
            labels.append(False)
            continue
        a, op, b, c = int(m[1]), m[2], int(m[3]), int(m[4])
        nums, ops = expr
        matches = [i for i, o in enumerate(ops) if o == op and nums[i] == a and nums[i + 1] == b]
        if not matches:
            labels.append(False)
            continue
        i = next((i for i in matches if _allowed(ops, i)), matches[0])
        labels.append(_allowed(ops, i) and c == _apply(a, op, b))
        expr = _reduce(expr, i, c)
    return labels


def gold_reward(problem: str, response: str, step_weight: float = 0.0) -> list[float]:
    """Per-step gold reward terms, one per step of ``split_steps(response)``; they sum to the total.

    1.0 on the last step for a correct final answer. With ``step_weight > 0`` every valid step
    also earns ``step_weight / n_steps`` (dense process credit), so the total lies in
    ``[0, 1 + step_weight]``.
    """
    labels = check_steps(problem, response)
    terms = [step_weight * ok / len(labels) for ok in labels]
    terms[-1] += 1.0 if check_answer(problem, response) else 0.0
    return terms


# -- corruption (process labels) ------------------------------------------------------------


def _candidates(expr: Expr, prefix: list[str]) -> dict[str, list[list[str]]]:
    """Every plausible single wrong step at this point, each continued consistently to an answer."""
    nums, ops = expr
    out: dict[str, list[list[str]]] = {"slip": [], "wrong_op": [], "precedence": [], "answer": []}
    if not ops:
        out["answer"] = [prefix + [f"answer: {nums[0] + d}"] for d in (-1, 1) if nums[0] + d >= 0]
        return out
    i = ops.index("*") if "*" in ops else 0
    a, op, b = nums[i], ops[i], nums[i + 1]
    right = _apply(a, op, b)
    wrong_values = {"slip": [right + d for d in (-2, -1, 1, 2)], "wrong_op": [_apply(a, o, b) for o in OPS if o != op]}
    for kind, values in wrong_values.items():
        for v in sorted(set(values)):
            if v >= 0 and v != right:
                out[kind].append(prefix + [f"{a}{op}{b}={v}"] + _canonical_lines(_reduce(expr, i, v)))
    for j, o in enumerate(ops):
        v = _apply(nums[j], o, nums[j + 1])
        if o != "*" and not _allowed(ops, j) and v >= 0:
            line = f"{nums[j]}{o}{nums[j + 1]}={v}"
            out["precedence"].append(prefix + [line] + _canonical_lines(_reduce(expr, j, v)))
    return out


def corrupt(problem: str, solution: str, rng: random.Random) -> str:
    """A plausible wrong version of a correct ``solution``: exactly one step goes wrong (an
    arithmetic slip, a wrong operator, a precedence error, or a mis-copied answer) and the rest
    follows consistently from it, so ``check_steps`` flags exactly that line and the final
    answer is wrong. The kind is drawn uniformly among those possible, then the position.
    """
    lines = split_steps(solution)
    if not all(check_steps(problem, solution)) or not check_answer(problem, solution):
        raise ValueError(f"corrupt: solution is not a correct worked solution of {problem!r}: {solution!r}")
    truth = evaluate(problem)
    by_kind: dict[str, list[list[str]]] = {}
    expr = parse_problem(problem)
    for k, line in enumerate(lines):
        for kind, cands in _candidates(expr, lines[:k]).items():
            for cand in cands:
                text = "\n".join(cand)
                labels = check_steps(problem, text)
                if not check_answer(problem, text) and labels.count(False) == 1 and not labels[k]:
                    by_kind.setdefault(kind, []).append(text)
        m = _WORK.match(line.replace(" ", ""))
        if m:  # replay the (correct) line to move on
            nums, ops = expr
            a, op, b = int(m[1]), m[2], int(m[3])
            i = next(i for i, o in enumerate(ops) if o == op and nums[i] == a and nums[i + 1] == b and _allowed(ops, i))
            expr = _reduce(expr, i, int(m[4]))
    kind = rng.choice(sorted(by_kind))
    return rng.choice(by_kind[kind])


# -- the task -------------------------------------------------------------------------------


def generate_problem(rng: random.Random, n_ops: tuple[int, int] = (2, 3), max_operand: int = 9) -> str:
    """One problem with ``n_ops[0]..n_ops[1]`` operators, operands in ``0..max_operand`` and
    non-negative intermediate results (rejection sampling)."""
    while True:
        k = rng.randint(*n_ops)
        nums = [rng.randint(0, max_operand) for _ in range(k + 1)]
        ops = [rng.choice(OPS) for _ in range(k)]
        problem = format_problem(nums, ops)
        values = [int(line.split("=")[1]) for line in _canonical_lines((nums, ops))[:-1]]
        if min(values) >= 0:
            return problem


@dataclass(frozen=True)
class ArithmeticTask:
    """A seeded arithmetic task. Each problem belongs to one split, by a hash of (seed, problem),
    so ``prompts(n, "train")`` and ``prompts(n, "test")`` never share a problem; each call
    returns ``n`` distinct prompts and is a prefix of a longer call with the same arguments."""

    seed: int = 0
    n_ops: tuple[int, int] = (2, 3)
    max_operand: int = 9
    test_fraction: float = 0.1

    def split_of(self, problem: str) -> str:
        h = zlib.crc32(f"{self.seed}|{problem}".encode()) / 2**32
        return "test" if h < self.test_fraction else "train"

    def _sample(self, n: int, split: str, stream: str) -> list[str]:
        if split not in ("train", "test"):
            raise ValueError(f"ArithmeticTask: split must be 'train' or 'test', got {split!r}")
        rng = random.Random(f"arithmetic|{self.seed}|{split}|{stream}")
        seen: dict[str, None] = {}
        for _ in range(200 * n + 10_000):
            if len(seen) == n:
                return list(seen)
            p = generate_problem(rng, self.n_ops, self.max_operand)
            if self.split_of(p) == split:
                seen.setdefault(p)
        if len(seen) == n:
            return list(seen)
        raise ValueError(f"ArithmeticTask: could not find {n} distinct {split} problems (got {len(seen)}); "
                         f"raise max_operand or n_ops")

    def prompts(self, n: int, split: str = "train") -> list[str]:
        """``n`` distinct problems of ``split`` ("train" or "test"), e.g. ``"3+4*2="``."""
        return self._sample(n, split, "prompts")

    def corpus(self, n: int, mixed_format: float = 0.0) -> list[dict[str, str]]:
        """``n`` SFT examples ``{"prompt": "3+4*2=", "completion": "4*2=8\\n3+8=11\\nanswer: 11"}``
        from the train split (a separate stream from ``prompts``).

        ``mixed_format``: the fraction of examples (drawn per example, seeded) that come from a
        second source writing the last line ``answer = 11``: right arithmetic, a format the
        strict verifier rejects, as when demonstrations are pooled from annotators with their own
        conventions."""
        if not 0.0 <= mixed_format <= 1.0:
            raise ValueError(f"ArithmeticTask.corpus: mixed_format must be in [0, 1], got {mixed_format}")
        rng = random.Random(f"arithmetic|{self.seed}|format")
        out = []
        for p in self._sample(n, "train", "corpus"):
            text = solve(p)
            if rng.random() < mixed_format:
                text = text.replace("answer: ", ALT_ANSWER)
            out.append({"prompt": p, "completion": text})
        return out

    def gold_reward(self, prompt: str, response: str) -> list[float]:
        return gold_reward(prompt, response)


def corpus(n: int, seed: int = 0, **task_kwargs) -> list[dict[str, str]]:
    """``n`` correct worked solutions (prompt/completion dicts) from ``ArithmeticTask(seed, ...)``'s train split."""
    return ArithmeticTask(seed, **task_kwargs).corpus(n)


# A worked line the prover follows. Unlike _WORK it takes no negative operands: a prefix line such
# as "-3+4=1" is skipped (the behaviour the PAV results in docs/reward_models.md were measured with).
_PROVER_WORK = re.compile(r"^(\d+)([+\-*])(\d+)=(-?\d+)$")


class ArithmeticProver:
    """A prover policy for the arithmetic task: from any prefix it carries on from the expression
    the prefix's lines lead to (as written, right or wrong), reducing the leftmost ``*`` first and
    then left to right, and each remaining line (answer included) slips by +-1 with probability
    ``slip``. So its success probability after a wrong step is ~0 and after right steps is
    (1 - slip)^(remaining lines): a prover whose progress separates good and bad steps."""

    def __init__(self, problem: str, slip: float = 0.15):
        self.problem, self.slip = problem, slip
        self.start = parse_problem(problem)

    def _state(self, prefix: list[str]):
        nums, ops = list(self.start[0]), list(self.start[1])
        for line in prefix:
            m = _PROVER_WORK.match(line.replace(" ", ""))
            if not m:
                continue
            a, op, b, c = int(m[1]), m[2], int(m[3]), int(m[4])
            at = [i for i, o in enumerate(ops) if o == op and nums[i] == a and nums[i + 1] == b]
            if at:
                i = at[0]
                nums, ops = nums[:i] + [c] + nums[i + 2:], ops[:i] + ops[i + 1:]
        return nums, ops

    def complete(self, prefix: list[str], rng: random.Random) -> list[str]:
        if prefix and prefix[-1].replace(" ", "").startswith("answer:"):
            return []
        nums, ops = self._state(prefix)
        lines = []
        while ops:
            i = ops.index("*") if "*" in ops else 0
            a, op, b = nums[i], ops[i], nums[i + 1]
            c = a + b if op == "+" else a - b if op == "-" else a * b
            c += rng.choice((-1, 1)) if rng.random() < self.slip else 0
            lines.append(f"{a}{op}{b}={c}")
            nums, ops = nums[:i] + [c] + nums[i + 2:], ops[:i] + ops[i + 1:]
        answer = nums[0] + (rng.choice((-1, 1)) if rng.random() < self.slip else 0)
        return lines + [f"answer: {answer}"]

    def is_correct(self, steps: list[str]) -> bool:
        return bool(steps) and check_answer(self.problem, "\n".join(steps))
