"""Small Python functions to synthesize, with hidden unit tests: the code task.

Problems come from templates with constants (``sum_multiples_of_3``, ``caesar_7``, ...), a few
hundred in all, each a prompt (the signature and a docstring with one example), a reference body
and hidden tests (inputs drawn from a seed fixed by the problem, outputs from the reference).
A response is the function body that follows the prompt, or a whole ``def`` of the function;
its gold is the pass rate on the hidden tests, run in :mod:`rlxf.tasks.sandbox`, and
:meth:`CodeTask.feedback` gives the errors and failing cases as text.

:func:`inject_bug` mutates a reference body (a comparison, an operator, a constant, ``and``/``or``)
so that some hidden test fails: SFT data that makes a small policy write plausible, fixable bugs.
"""

from __future__ import annotations

import ast
import random
import re
import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable

from rlxf.rewards.specs import completion_text
from rlxf.tasks.sandbox import Limits, RunResult, run_many

N_TESTS = 10
N_PUBLIC = 3
CHAT_ASK = "Complete this Python function.\n\n"  # the request in CodeTask.rows(chat=True)
_FENCE = re.compile(r"```(?:python)?\n(.*?)(?:```|$)", re.S)


@dataclass(frozen=True)
class Problem:
    """One problem: ``id`` (also the function's name), its ``prompt``, the reference ``solution``
    body (indented, follows the prompt), the hidden ``tests`` as ``(args, expected)`` (gold), and
    ``public`` tests (the docstring's example and two more) that execution feedback may show."""

    id: str
    prompt: str
    solution: str
    tests: tuple = field(repr=False)
    public: tuple = field(repr=False, default=())


# -- templates --------------------------------------------------------------------------------


def _ints(rng: random.Random, lo: int = -3, hi: int = 12) -> list:
    return [[rng.randint(lo, hi) for _ in range(rng.randint(0, 8))]]


def _text(rng: random.Random) -> list:
    words = ["apple", "banana", "kiwi", "a", "sea", "tree", "zebra", "moon", "river", "io", "stone", "xyz",
             "elephant", "mountains"]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(0, 5)))]


def _small(rng: random.Random) -> list:
    return [rng.randint(0, 15)]


@dataclass(frozen=True)
class Template:
    """A family of problems: ``name``, ``doc`` and ``body`` are format strings over each dict of
    ``params``; ``arg`` names the single argument and ``inputs`` draws its value(s)."""

    name: str
    arg: str
    doc: str
    body: str
    params: tuple
    inputs: Callable[[random.Random], list]


def _grid(**ranges) -> tuple:
    keys = list(ranges)
    out = [{}]
    for k in keys:
        out = [dict(d, **{k: v}) for d in out for v in ranges[k]]
    return tuple(out)


TEMPLATES = (
    Template("sum_multiples_of_{k}", "xs", "Return the sum of the numbers in xs that are multiples of {k}.",
             "return sum(x for x in xs if x % {k} == 0)", _grid(k=range(2, 10)), _ints),
    Template("count_letter_{c}", "s", "Return how many times the letter '{c}' occurs in s.",
             "n = 0\nfor ch in s:\n    if ch == '{c}':\n        n += 1\nreturn n", _grid(c="aeiostnr"), _text),
    Template("scale_{a}_add_{b}", "xs", "Return a list with x * {a} + {b} for each x in xs.",
             "return [x * {a} + {b} for x in xs]", _grid(a=range(1, 5), b=range(0, 5)), _ints),
    Template("keep_above_{t}", "xs", "Return the numbers in xs greater than {t}, in order.",
             "return [x for x in xs if x > {t}]", _grid(t=range(0, 10)), _ints),
    Template("clamp_{lo}_{hi}", "xs", "Return xs with each number clamped to the range [{lo}, {hi}].",
             "return [min(max(x, {lo}), {hi}) for x in xs]",
             tuple({"lo": lo, "hi": lo + w} for lo in range(4) for w in range(3, 7)), _ints),
    Template("running_total_from_{s}", "xs", "Return the running totals of xs, starting the total at {s}.",
             "out = []\ntotal = {s}\nfor x in xs:\n    total += x\n    out.append(total)\nreturn out",
             _grid(s=range(0, 6)), _ints),
    Template("every_{k}th", "xs", "Return every {k}th element of xs (the {k}th, the {k2}th, ...).",
             "return [xs[i] for i in range({k} - 1, len(xs), {k})]",
             tuple({"k": k, "k2": 2 * k} for k in range(2, 7)), _ints),
    Template("power_sum_{p}", "xs", "Return the sum of x ** {p} over the numbers x in xs.",
             "return sum(x ** {p} for x in xs)", _grid(p=range(1, 5)), _ints),
    Template("caesar_{k}", "s", "Shift each lowercase letter of s forward by {k} places in the alphabet "
             "(wrapping from z to a); keep other characters.",
             "out = ''\nfor ch in s:\n    if 'a' <= ch <= 'z':\n"
             "        out += chr((ord(ch) - ord('a') + {k}) % 26 + ord('a'))\n    else:\n        out += ch\nreturn out",
             _grid(k=range(1, 26)), _text),
    Template("count_from_{lo}_below_{hi}", "xs", "Return how many numbers x in xs satisfy {lo} <= x < {hi}.",
             "return sum(1 for x in xs if {lo} <= x < {hi})",
             tuple({"lo": lo, "hi": lo + w} for lo in range(6) for w in range(2, 6)), _ints),
    Template("fizz_{a}_buzz_{b}", "n", "Return the strings for 1..n: 'FizzBuzz' for multiples of both {a} and "
             "{b}, 'Fizz' for multiples of {a}, 'Buzz' for multiples of {b}, else the number.",
             "out = []\nfor i in range(1, n + 1):\n    if i % {a} == 0 and i % {b} == 0:\n        out.append('FizzBuzz')\n"
             "    elif i % {a} == 0:\n        out.append('Fizz')\n    elif i % {b} == 0:\n        out.append('Buzz')\n"
             "    else:\n        out.append(str(i))\nreturn out",
             tuple({"a": a, "b": b} for a in range(2, 8) for b in range(a + 1, 8)), _small),
    Template("top_{k}_sum", "xs", "Return the sum of the {k} largest numbers in xs (all of them if fewer).",
             "return sum(sorted(xs, reverse=True)[:{k}])", _grid(k=range(1, 6)), _ints),
    Template("first_index_above_{t}", "xs", "Return the index of the first number in xs greater than {t}, or -1.",
             "for i, x in enumerate(xs):\n    if x > {t}:\n        return i\nreturn -1", _grid(t=range(0, 10)), _ints),
    Template("rotate_left_{k}", "xs", "Return xs rotated left by {k} places (an empty list stays empty).",
             "if not xs:\n    return []\nk = {k} % len(xs)\nreturn xs[k:] + xs[:k]", _grid(k=range(1, 7)), _ints),
    Template("repeat_letters_{k}", "s", "Return s with every character repeated {k} times.",
             "return ''.join(ch * {k} for ch in s)", _grid(k=range(2, 6)), _text),
    Template("pairs_summing_to_{t}", "xs", "Return how many pairs i < j have xs[i] + xs[j] == {t}.",
             "n = 0\nfor i in range(len(xs)):\n    for j in range(i + 1, len(xs)):\n        if xs[i] + xs[j] == {t}:\n"
             "            n += 1\nreturn n", _grid(t=range(2, 13)), _ints),
    Template("longest_run_of_{v}", "xs", "Return the length of the longest run of consecutive {v}s in xs.",
             "best = 0\nrun = 0\nfor x in xs:\n    if x == {v}:\n        run += 1\n        best = max(best, run)\n"
             "    else:\n        run = 0\nreturn best", _grid(v=range(0, 6)),
             lambda rng: [[rng.randint(0, 6) for _ in range(rng.randint(0, 12))]]),
    Template("quadratic_{a}_{b}_{c}", "x", "Return {a} * x * x + {b} * x + {c}.",
             "return {a} * x * x + {b} * x + {c}", _grid(a=range(1, 4), b=range(0, 4), c=range(0, 4)),
             lambda rng: [rng.randint(-10, 10)]),
    Template("words_longer_than_{k}", "s", "Return the words of s (split on spaces) longer than {k} letters.",
             "return [w for w in s.split() if len(w) > {k}]", _grid(k=range(1, 7)), _text),
    Template("replace_{a}_with_{b}", "s", "Return s with every '{a}' replaced by '{b}'.",
             "out = ''\nfor ch in s:\n    if ch == '{a}':\n        out += '{b}'\n    else:\n        out += ch\nreturn out",
             _grid(a="aeiou", b="xyz"), _text),
    Template("term_{a}_step_{d}", "n", "Return the n-th term (n starts at 0) of the sequence {a}, {a1}, {a2}, ...",
             "return {a} + n * {d}", tuple({"a": a, "d": d, "a1": a + d, "a2": a + 2 * d}
                                           for a in range(5) for d in range(1, 6)), _small),
)


def _indent(body: str) -> str:
    return "".join(f"    {line}\n" for line in body.split("\n"))


def _reference(name: str, arg: str, body: str) -> Callable:
    space: dict = {}
    exec(f"def {name}({arg}):\n{_indent(body)}", space)  # our own template code, not a candidate's
    return space[name]


def _outputs(fn: Callable, pool: list) -> list[str]:
    """``repr`` of ``fn`` on each input of ``pool``, or the exception's name (mutants may raise)."""
    out = []
    for args, _ in pool:
        try:
            out.append(repr(fn(*args)))
        except Exception as e:  # noqa: BLE001 - a mutant of our own template, e.g. a modulo by zero
            out.append(type(e).__name__)
    return out


def _catching(arg: str, body: str, pool: list, most: int = N_TESTS // 2) -> list:
    """Up to ``most`` cases of ``pool``, chosen greedily so that together they tell apart as many
    of the body's single-change mutants as they can from the reference. Mutants of the template
    bodies end quickly (no ``while`` loops), so they run here, not in the sandbox."""
    want = [repr(out) for _, out in pool]
    caught = []
    for m in mutants(_indent(body)):
        got = _outputs(_reference("m", arg, "\n".join(line[4:] for line in m.rstrip("\n").split("\n"))), pool)
        diff = {i for i, (g, w) in enumerate(zip(got, want)) if g != w}
        if diff:
            caught.append(diff)
    chosen: list[int] = []
    while caught and len(chosen) < most:
        best = max(range(len(pool)), key=lambda i: sum(i in d for d in caught))
        chosen.append(best)
        caught = [d for d in caught if best not in d]
    return [pool[i] for i in chosen]


def _build(t: Template, p: dict) -> Problem:
    name = t.name.format(**p)
    body = t.body.format(**p)
    fn = _reference(name, t.arg, body)
    rng = random.Random(zlib.crc32(name.encode()))
    by_output: dict[str, list] = {}
    seen = set()
    for _ in range(80):
        args = t.inputs(rng)
        if repr(args) not in seen:
            seen.add(repr(args))
            out = fn(*args)
            by_output.setdefault(repr(out), []).append((args, out))
    # Round-robin over distinct outputs, so a constant answer cannot pass most hidden tests ...
    groups = list(by_output.values())
    pool = [g[i] for i in range(max(map(len, groups))) for g in groups if i < len(g)]
    tests = _catching(t.arg, body, pool)  # ... led by inputs that catch single-change bugs
    tests += [c for c in pool if c not in tests][:N_TESTS + 1 - len(tests)]
    example_at = max(range(len(tests)), key=lambda i: len(repr(tests[i][0])))  # the most telling input
    (ex_args, ex_out), hidden = tests[example_at], tests[:example_at] + tests[example_at + 1:]
    example = f"{name}({', '.join(map(repr, ex_args))})"
    prompt = (f"def {name}({t.arg}):\n    \"\"\"{t.doc.format(**p)}\n\n    >>> {example}\n    {ex_out!r}\n    \"\"\"\n")
    public = [(ex_args, ex_out)] + [c for c in pool if c not in tests][:N_PUBLIC - 1]
    return Problem(name, prompt, _indent(body), tuple(hidden), tuple(public))


@lru_cache(maxsize=1)
def all_problems() -> dict[str, Problem]:
    """Every problem by id, in template order (the same on every call and machine)."""
    problems = [_build(t, p) for t in TEMPLATES for p in t.params]
    return {p.id: p for p in problems}


@lru_cache(maxsize=1)
def _by_prompt() -> dict[str, Problem]:
    return {p.prompt: p for p in all_problems().values()}


def problem(problem_id: str) -> Problem:
    try:
        return all_problems()[problem_id]
    except KeyError:
        raise KeyError(f"code task: no problem {problem_id!r} (ids look like 'sum_multiples_of_3'; "
                       f"{len(all_problems())} problems exist)") from None


# -- responses and checking -------------------------------------------------------------------


def program(p: Problem, response: str) -> str:
    """The code a response stands for: its fenced block if it has one; the response alone if it
    defines the function itself; otherwise the prompt followed by the response read as a body,
    which ends before its first unindented line (what a model writes after the function is not
    part of it)."""
    text = completion_text(response)
    m = _FENCE.search(text)
    if m:
        text = m.group(1)
    if re.search(rf"^def {re.escape(p.id)}\(", text, re.M):
        return text
    lines = text.split("\n")
    end = next((i for i, line in enumerate(lines) if line.strip() and not line[0].isspace()), len(lines))
    return p.prompt + "\n".join(lines[:end])


def check(problems: list[Problem], responses: list[str], limits: Limits = Limits(), workers: int = 2,
          public: bool = False) -> list[RunResult]:
    """Run each response against its problem's hidden tests (or its ``public`` ones), ``workers``
    sandboxes at a time."""
    jobs = [(program(p, r), p.id, list(p.public if public else p.tests)) for p, r in zip(problems, responses)]
    return run_many(jobs, limits, workers)


def pass_rate_reward(prompts, completions, problem_id, **_) -> list[float]:
    """A reward for ``rlxf train --reward rlxf.tasks.code:pass_rate_reward`` (TRL's signature): the
    hidden-test pass rate of each completion; the data needs a ``problem_id`` column."""
    return [r.pass_rate for r in check([problem(i) for i in problem_id], list(completions))]


# -- injected bugs ----------------------------------------------------------------------------

_SWAPS = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq, ast.NotEq: ast.Eq,
          ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Add, ast.Mod: ast.FloorDiv, ast.FloorDiv: ast.Mod,
          ast.And: ast.Or, ast.Or: ast.And}


def _changes(tree: ast.AST) -> list[Callable[[], None]]:
    """Every single change a bug can make in ``tree``, each applied in place when called: an
    operator or ``and``/``or`` swapped, a comparison loosened or tightened, an int constant +-1."""
    out: list[Callable[[], None]] = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.BinOp, ast.BoolOp)) and type(node.op) in _SWAPS:
            out.append(lambda n=node: setattr(n, "op", _SWAPS[type(n.op)]()))
        elif isinstance(node, ast.Compare):
            out += [lambda n=node, i=i: n.ops.__setitem__(i, _SWAPS[type(n.ops[i])]())
                    for i, op in enumerate(node.ops) if type(op) in _SWAPS]
        elif isinstance(node, ast.Constant) and type(node.value) is int:
            out += [lambda n=node, d=d: setattr(n, "value", n.value + d) for d in (-1, 1)]
    return out


def mutants(body: str) -> list[str]:
    """Every body (indented, as ``body``) that differs from ``body`` by one change of :func:`_changes`."""
    source = "\n".join(line[4:] for line in body.rstrip("\n").split("\n"))
    out = []
    for k in range(len(_changes(ast.parse(source)))):
        tree = ast.parse(source)
        _changes(tree)[k]()
        out.append(_indent(ast.unparse(tree)))
    return out


def inject_bug(body: str, rng: random.Random) -> str:
    """``body`` with one random change (:func:`mutants`). The result may still pass every test;
    :func:`buggy_solutions` keeps only those that fail one."""
    options = mutants(body)
    if not options:
        raise ValueError(f"inject_bug: nothing to change in {body!r}")
    return rng.choice(options)


def buggy_solutions(problems: list[Problem], seed: int = 0, tries: int = 4, limits: Limits = Limits(),
                    workers: int = 2) -> list[tuple[str, RunResult] | None]:
    """For each problem, a body with an injected bug that fails at least one hidden test, and its
    run result; None where ``tries`` mutants all passed (the change made no difference)."""
    rng = random.Random(f"code-bugs|{seed}")
    out: list[tuple[str, RunResult] | None] = [None] * len(problems)
    todo = list(range(len(problems)))
    for _ in range(tries):
        if not todo:
            break
        bodies = [inject_bug(problems[i].solution, rng) for i in todo]
        results = check([problems[i] for i in todo], bodies, limits, workers)
        for i, body, res in zip(todo, bodies, results):
            if res.pass_rate < 1.0:
                out[i] = (body, res)
        todo = [i for i in todo if out[i] is None]
    return out


# -- the task ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CodeTask:
    """The problems split into train and test by a hash of (seed, id); gold is the pass rate."""

    seed: int = 0
    test_fraction: float = 0.2
    limits: Limits = Limits()
    workers: int = 2

    def split_of(self, problem_id: str) -> str:
        h = zlib.crc32(f"{self.seed}|{problem_id}".encode()) / 2**32
        return "test" if h < self.test_fraction else "train"

    def problems(self, split: str = "train") -> list[Problem]:
        if split not in ("train", "test"):
            raise ValueError(f"CodeTask: split must be 'train' or 'test', got {split!r}")
        return [p for p in all_problems().values() if self.split_of(p.id) == split]

    def rows(self, split: str = "train", chat: bool = False) -> list[dict]:
        """Prompt rows for ``rlxf train`` with :func:`pass_rate_reward`: ``{"prompt", "problem_id"}``.
        ``chat=True`` makes each prompt a user message asking to complete the function (TRL's
        conversational format, rendered with the model's chat template): instruction-tuned models
        answer it with code, where the bare prompt draws prose."""
        if chat:
            return [{"prompt": [{"role": "user", "content": CHAT_ASK + p.prompt}], "problem_id": p.id}
                    for p in self.problems(split)]
        return [{"prompt": p.prompt, "problem_id": p.id} for p in self.problems(split)]

    def by_prompt(self, prompt: str) -> Problem:
        """The problem ``prompt`` states: its prompt exactly, or a text that holds it (a chat rendering)."""
        found = _by_prompt().get(prompt)
        if found is not None:
            return found
        for name in re.findall(r"def (\w+)\(", prompt):
            p = all_problems().get(name)
            if p is not None and p.prompt.strip() in prompt:
                return p
        raise KeyError(f"CodeTask: {prompt[:60]!r}... is not the prompt of any code problem")

    def run(self, prompts: list[str], responses: list[str], public: bool = False) -> list[RunResult]:
        return check([self.by_prompt(p) for p in prompts], responses, self.limits, self.workers, public)

    def gold(self, prompt: str, response: str) -> float:
        """The pass rate of ``response`` on the hidden tests of the problem ``prompt`` states."""
        return self.run([prompt], [response])[0].pass_rate

    def feedback(self, prompt: str, response: str, public: bool = True) -> str:
        """Execution feedback as text: tests passed, the error, the first failing cases. By default
        on the public tests, so a search that refines from feedback never sees the hidden tests
        gold is measured on; ``public=False`` reports the hidden ones."""
        return self.run([prompt], [response], public)[0].feedback()

    def sft_rows(self, bug_rate: float = 0.5, split: str = "train") -> list[dict]:
        """One SFT row per problem of ``split``: the reference body, or with probability
        ``bug_rate`` (drawn per problem, seeded) a body with a bug that fails a hidden test.
        Rows: ``{"prompt", "completion", "problem_id", "pass_rate"}``."""
        if not 0.0 <= bug_rate <= 1.0:
            raise ValueError(f"CodeTask.sft_rows: bug_rate must be in [0, 1], got {bug_rate}")
        rng = random.Random(f"code-sft|{self.seed}")
        problems = self.problems(split)
        buggy = [p for p in problems if rng.random() < bug_rate]
        bugs = dict(zip((p.id for p in buggy), buggy_solutions(buggy, self.seed, limits=self.limits,
                                                                  workers=self.workers)))
        rows = []
        for p in problems:
            body, rate = (bugs[p.id][0], bugs[p.id][1].pass_rate) if bugs.get(p.id) else (p.solution, 1.0)
            rows.append({"prompt": p.prompt, "completion": body, "problem_id": p.id, "pass_rate": rate})
        return rows


@dataclass
class CodeVerifier:
    """A search evaluator (see :mod:`rlxf.search.values`): the pass rate of each finished leaf,
    all leaves of a call run in parallel sandboxes; None on unfinished nodes."""

    task: CodeTask = field(default_factory=CodeTask)
    source: str = "tests"

    def __call__(self, items):
        done = [(t, n) for t, n in items if n.terminal]
        rates = self.task.run([t.prompt for t, _ in done], [t.response_text(n) for t, n in done])
        by_node = {id(n): r.pass_rate for (_, n), r in zip(done, rates)}
        return [by_node.get(id(n)) for _, n in items]


__all__ = ["CodeTask", "CodeVerifier", "Problem", "TEMPLATES", "all_problems", "buggy_solutions", "check",
           "inject_bug", "mutants", "pass_rate_reward", "problem", "program"]
