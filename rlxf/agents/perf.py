"""PerfRL on the code task: rewrite a slow program into a cheaper one that still passes its tests,
trained with RRHF on a deterministic cost.

A problem of :mod:`rlxf.tasks.code` whose template has rewrites in :data:`REWRITES` gets a slow
program (an equivalent body that wastes work: a loop where a builtin or a closed form does), a
reference fast one (PIE's "fast" program) and other equivalent bodies. The cost of a program is
the number of bytecode instructions its own code executes on the hidden tests, counted in the
sandbox (:func:`rlxf.tasks.sandbox.run` with ``count=True``): the same on every run, where wall
time on a shared machine is not. The reward orders candidates as PerfRL does: it does not run
(-1) < it runs but fails a test (0) < it passes (its speed-up, the slow program's cost over its own).

The policy reads and writes programs as code tokens with the problem's constants written ``K0``,
``K1``, ... (:func:`model_text`); :func:`program_text` puts them back. RRHF
(:func:`rlxf.objectives.ranking.rrhf_loss`) ranks, for each training problem, k candidates: samples
of the current policy, the slow program and the reference, scored by length-normalised
log-likelihood, with the NLL of the best candidate added; it runs on the shared loop.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from functools import lru_cache

import torch

from rlxf.algorithms.batching import epoch_batches
from rlxf.algorithms.evaluate import paired_gain
from rlxf.algorithms.loop import OptimConfig, train
from rlxf.algorithms.sft import train_sft
from rlxf.core.runs import Run
from rlxf.objectives.ranking import rrhf_loss
from rlxf.policies.control import single_thread
from rlxf.policies.language import LanguagePolicy
from rlxf.policies.tiny import tiny_causal_lm, tiny_tokenizer
from rlxf.tasks import code
from rlxf.tasks.sandbox import Limits, RunResult, run_many

# Template name -> (slow body, reference fast body, other equivalent bodies), as format strings over
# the template's parameters (see rlxf.tasks.code.TEMPLATES); every body passes the hidden tests.
REWRITES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "sum_multiples_of_{k}": (
        "n = 0\nfor i in range(len(xs)):\n    if xs[i] % {k} == 0:\n        n = n + xs[i]\nreturn n",
        "return sum([x for x in xs if x % {k} == 0])",
        ("return sum(x for x in xs if x % {k} == 0)",
         "n = 0\nfor x in xs:\n    if x % {k} == 0:\n        n += x\nreturn n")),
    "count_letter_{c}": (
        "n = 0\nfor i in range(len(s)):\n    if s[i] == '{c}':\n        n = n + 1\nreturn n",
        "return s.count('{c}')",
        ("return sum(1 for ch in s if ch == '{c}')", "return len([ch for ch in s if ch == '{c}'])")),
    "term_{a}_step_{d}": (
        "t = {a}\nfor i in range(n):\n    t = t + {d}\nreturn t",
        "return {a} + n * {d}",
        ("return sum([{d}] * n) + {a}", "return {a} + sum({d} for i in range(n))")),
    "pairs_summing_to_{t}": (
        "n = 0\nfor i in range(len(xs)):\n    for j in range(len(xs)):\n        if i < j and xs[i] + xs[j] == {t}:\n"
        "            n += 1\nreturn n",
        "n = 0\nseen = {{}}\nfor x in xs:\n    n += seen.get({t} - x, 0)\n    seen[x] = seen.get(x, 0) + 1\nreturn n",
        ("n = 0\nfor i in range(len(xs)):\n    n += xs[i + 1:].count({t} - xs[i])\nreturn n",)),
    "replace_{a}_with_{b}": (
        "out = ''\nfor i in range(len(s)):\n    if s[i] == '{a}':\n        out = out + '{b}'\n    else:\n"
        "        out = out + s[i]\nreturn out",
        "return s.replace('{a}', '{b}')",
        ("return ''.join('{b}' if ch == '{a}' else ch for ch in s)",)),
    "rotate_left_{k}": (
        "if not xs:\n    return []\nfor i in range({k}):\n    xs = xs[1:] + xs[:1]\nreturn xs",
        "if not xs:\n    return []\nk = {k} % len(xs)\nreturn xs[k:] + xs[:k]",
        ("if not xs:\n    return []\nfor i in range({k} % len(xs)):\n    xs = xs[1:] + xs[:1]\nreturn xs",)),
    "repeat_letters_{k}": (
        "out = ''\nfor ch in s:\n    for i in range({k}):\n        out = out + ch\nreturn out",
        "return ''.join(ch * {k} for ch in s)",
        ("out = ''\nfor ch in s:\n    out += ch * {k}\nreturn out",)),
    "top_{k}_sum": (
        "xs = list(xs)\nt = 0\nfor i in range({k}):\n    if xs:\n        m = max(xs)\n        xs.remove(m)\n"
        "        t = t + m\nreturn t",
        "return sum(sorted(xs, reverse=True)[:{k}])",
        ("xs = sorted(xs)\nt = 0\nfor i in range({k}):\n    if xs:\n        t += xs.pop()\nreturn t",)),
    "power_sum_{p}": (
        "t = 0\nfor x in xs:\n    y = 1\n    for i in range({p}):\n        y = y * x\n    t = t + y\nreturn t",
        "return sum([x ** {p} for x in xs])",
        ("t = 0\nfor x in xs:\n    t += x ** {p}\nreturn t",)),
    "keep_above_{t}": (
        "out = []\nfor i in range(len(xs)):\n    if xs[i] > {t}:\n        out = out + [xs[i]]\nreturn out",
        "return [x for x in xs if x > {t}]",
        ("out = []\nfor x in xs:\n    if x > {t}:\n        out.append(x)\nreturn out",)),
}

_TOKEN = re.compile(r"'[^']*'|\*\*|==|!=|<=|>=|\+=|-=|\*=|//|\w+|[^\s\w]")
SEP = "=>"  # ends the slow program in a prompt


# -- programs as model text --------------------------------------------------------------------


def code_tokens(body: str) -> list[str]:
    """A function body as the policy's words: each line is ``@<indent level>`` then its code tokens."""
    words = []
    for line in body.split("\n"):
        if line.strip():
            words.append(f"@{(len(line) - len(line.lstrip(' '))) // 4}")
            words += _TOKEN.findall(line)
    return words


def body_of(words: list[str]) -> str:
    """The body (unindented) the words of :func:`code_tokens` stand for; words before the first
    ``@<level>`` or with an unreadable level make a line Python will reject, as they should."""
    lines: list[list[str]] = []
    for w in words:
        if re.fullmatch(r"@\d", w):
            lines.append(["    " * int(w[1:])])
        elif lines:
            lines[-1].append(w)
        else:
            lines.append(["?", w])
    return "\n".join(parts[0] + " ".join(parts[1:]) for parts in lines)


@dataclass(frozen=True)
class PerfProblem:
    """A code-task problem with its rewrites: ``params`` are the template's constants, ``names`` the
    placeholder of each (``K0``, ...); bodies are unindented and concrete."""

    problem: code.Problem = field(repr=False)
    template: str
    params: dict = field(repr=False)
    slow: str = field(repr=False)
    fast: str = field(repr=False)
    others: tuple = field(repr=False)

    @property
    def id(self) -> str:
        return self.problem.id

    def placeholders(self, body_format: str) -> str:
        """A body format with constants written ``K0``, ``K1``, ... (the policy never sees the values)."""
        return body_format.format(**{k: f"K{i}" for i, k in enumerate(self.params)})

    def model_text(self, body_format: str) -> str:
        """A body format as the policy's words (:func:`code_tokens` of :meth:`placeholders`)."""
        return " ".join(code_tokens(self.placeholders(body_format)))

    def program_text(self, text: str) -> str:
        """The concrete body a policy's words stand for (placeholders replaced by the constants)."""
        values = list(self.params.values())

        def value(m: re.Match) -> str:
            i = int(m.group(1))
            return str(values[i]) if i < len(values) else m.group(0)

        return re.sub(r"\bK(\d)\b", value, body_of(text.split()))

    def prompt_text(self) -> str:
        return self.model_text(REWRITES[self.template][0]) + " " + SEP


@lru_cache(maxsize=1)
def perf_problems() -> dict[str, PerfProblem]:
    """Every code-task problem of a template with rewrites, by id, in template order."""
    out = {}
    for t in code.TEMPLATES:
        if t.name not in REWRITES:
            continue
        slow, fast, others = REWRITES[t.name]
        for p in t.params:
            name = t.name.format(**p)
            keys = [k for k in p if "{" + k + "}" in t.name]  # the constants the name shows, in order
            params = {k: p[k] for k in keys}
            out[name] = PerfProblem(code.problem(name), t.name, params, slow.format(**p), fast.format(**p),
                                    tuple(o.format(**p) for o in others))
    return out


def split(seed: int = 0, test_fraction: float = 0.5) -> tuple[list[PerfProblem], list[PerfProblem]]:
    """Train and test problems by the code task's hashed split."""
    task = code.CodeTask(seed=seed, test_fraction=test_fraction)
    probs = list(perf_problems().values())
    return ([p for p in probs if task.split_of(p.id) == "train"], [p for p in probs if task.split_of(p.id) == "test"])


# -- cost and reward ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """A candidate's measured outcome: ``status`` of the sandbox run, ``passed`` every hidden test,
    ``cost`` in bytecode instructions, ``speedup`` = the slow program's cost over its cost when it
    passed, else 1.0 (the slow program is kept, as PIE scores a wrong rewrite)."""

    status: str
    passed: bool
    cost: int
    speedup: float

    @property
    def reward(self) -> float:
        """-1 if it does not run, 0 if it fails a test, else its speed-up."""
        if self.status != "ok":
            return -1.0
        return self.speedup if self.passed else 0.0


class CostMeter:
    """Runs bodies in the sandbox with instruction counting, once per (problem, body): the count is
    deterministic, so a cache changes no figure."""

    def __init__(self, limits: Limits = Limits(cpu_s=2.0, wall_s=10.0), workers: int = 2):
        self.limits, self.workers = limits, workers
        self._runs: dict[tuple[str, str], RunResult] = {}

    def runs(self, problems: list[PerfProblem], bodies: list[str]) -> list[RunResult]:
        keys = [(p.id, b) for p, b in zip(problems, bodies)]
        todo = list(dict.fromkeys(k for k in keys if k not in self._runs))
        by_id = perf_problems()
        jobs = {k: (code.program(by_id[k[0]].problem, code._indent(k[1])), k[0], list(by_id[k[0]].problem.tests))
                for k in todo}
        for k, (text, _, tests) in list(jobs.items()):
            try:  # compiling runs nothing: text that does not parse needs no sandbox
                compile(text, "<candidate>", "exec")
            except (SyntaxError, ValueError) as e:
                self._runs[k] = RunResult("error", f"{type(e).__name__} while loading: {e}", [], len(tests))
                del jobs[k]
        for k, res in zip(jobs, run_many(list(jobs.values()), self.limits, self.workers, count=True)):
            self._runs[k] = res
        return [self._runs[k] for k in keys]

    def outcomes(self, problems: list[PerfProblem], bodies: list[str]) -> list[Outcome]:
        slow = self.runs(problems, [p.slow for p in problems])
        for p, r in zip(problems, slow):
            if r.status != "ok" or r.pass_rate < 1.0:
                raise RuntimeError(f"perf: the slow program of {p.id} fails its tests: {r.feedback()}")
        out = []
        for r, s in zip(self.runs(problems, bodies), slow):
            passed = r.status == "ok" and r.pass_rate == 1.0
            out.append(Outcome(r.status, passed, r.cost, s.cost / max(r.cost, 1) if passed else 1.0))
        return out


# -- the policy ----------------------------------------------------------------------------------


def _unindent(body: str) -> str:
    return "\n".join(line[4:] for line in body.rstrip("\n").split("\n"))


def bug_texts(p: PerfProblem) -> list[str]:
    """The policy's words of every one-change mutant (:func:`rlxf.tasks.code.mutants`) of the
    reference and the other rewrites (a reference such as ``s.count(...)`` has none of its own)."""
    _, fast, others = REWRITES[p.template]
    return [" ".join(code_tokens(_unindent(m))) for body in (fast, *others)
            for m in code.mutants(code._indent(p.placeholders(body)))]


@lru_cache(maxsize=1)
def vocabulary() -> tuple[str, ...]:
    """Every word a program of :data:`REWRITES` (or a mutant of a rewrite) can contain."""
    words = {SEP, "K0", "K1", "K2", "K3"} | {f"@{i}" for i in range(4)}
    one_per_template = {p.template: p for p in perf_problems().values()}  # the words hide the constants
    for p in one_per_template.values():
        for body in (REWRITES[p.template][0], REWRITES[p.template][1], *REWRITES[p.template][2]):
            words.update(p.model_text(body).split())
        for text in bug_texts(p):
            words.update(text.split())
    return tuple(sorted(words))


MIX = {"fast": 0.3, "other": 0.3, "slow": 0.2, "bug": 0.2}


def sft_rows(problems: list[PerfProblem], mix: dict[str, float], n_per_problem: int, seed: int) -> list[tuple]:
    """``(problem, target words)`` pairs drawn per problem from ``mix``: weights of ``"fast"``
    (the reference), ``"other"`` (another equivalent rewrite), ``"slow"`` (the program copied) and
    ``"bug"`` (the reference with one change): fine-tuning data of mixed quality, as PIE's pairs are."""
    unknown = set(mix) - {"fast", "other", "slow", "bug"}
    if unknown:
        raise ValueError(f"perf sft_rows: unknown kinds {sorted(unknown)} in mix (use fast, other, slow, bug)")
    rng = random.Random(f"perf-sft|{seed}")
    kinds, weights = zip(*mix.items())
    rows = []
    for p in problems:
        slow, fast, others = REWRITES[p.template]
        pick = {"fast": lambda: p.model_text(fast), "slow": lambda: p.model_text(slow),
                "other": lambda: p.model_text(rng.choice(others)), "bug": lambda: rng.choice(bug_texts(p))}
        rows += [(p, pick[rng.choices(kinds, weights)[0]]()) for _ in range(n_per_problem)]
    return rows


def make_policy(seed: int = 0, n_layer: int = 2, n_embd: int = 64) -> LanguagePolicy:
    """A fresh tiny GPT-2 over the code words."""
    tok = tiny_tokenizer(list(vocabulary()))
    return LanguagePolicy(tiny_causal_lm(tok, n_layer=n_layer, n_embd=n_embd, max_positions=160, seed=seed), tok)


def finetune(run: Run, policy: LanguagePolicy, problems: list[PerfProblem], cfg: OptimConfig, seed: int = 0,
             mix: dict[str, float] = MIX, n_per_problem: int = 20) -> None:
    """The baseline: SFT on slow -> rewrite pairs of mixed quality (:func:`sft_rows`)."""
    rows = sft_rows(problems, mix, n_per_problem, seed)
    train_sft(run, "perf_sft", policy, policy.encode([p.prompt_text() for p, _ in rows]),
              policy.encode_responses([t for _, t in rows]), cfg, seed, quiet=True)


def sample_bodies(policy: LanguagePolicy, problems: list[PerfProblem], n: int, generator: torch.Generator,
                  max_new_tokens: int = 64) -> tuple[list[list[int]], list[str]]:
    """``n`` sampled rewrites per problem (grouped by problem): their token ids and concrete bodies."""
    roll = policy.sample(policy.encode([p.prompt_text() for p in problems]), n=n, max_new_tokens=max_new_tokens,
                         generator=generator)
    bodies = [problems[i // n].program_text(policy.decode(r)) for i, r in enumerate(roll.response_ids)]
    return roll.response_ids, bodies


def train_rrhf(run: Run, policy: LanguagePolicy, problems: list[PerfProblem], meter: CostMeter, cfg: OptimConfig,
               samples: int = 2, seed: int = 0, ft_weight: float = 1.0) -> None:
    """RRHF: each step samples ``samples`` rewrites for ``cfg.batch_size`` problems, adds the slow
    program and the reference (k = samples + 2), measures each, and minimises the rank term plus
    ``ft_weight`` times the best candidate's length-normalised NLL (``ft_weight=0``: ranking only)."""
    order = epoch_batches(len(problems), cfg.batch_size, seed)

    def make_batch(step: int) -> list[tuple]:
        chosen = [problems[i] for i in order(step)]
        ids, bodies = sample_bodies(policy, chosen, samples, torch.Generator().manual_seed(seed * 100_003 + step))
        rows = []
        for j, p in enumerate(chosen):
            slow, fast, _ = REWRITES[p.template]
            cand_ids = ids[j * samples:(j + 1) * samples] + policy.encode_responses(
                [p.model_text(slow), p.model_text(fast)])
            cand = bodies[j * samples:(j + 1) * samples] + [p.slow, p.fast]
            rewards = [o.reward for o in meter.outcomes([p] * len(cand), cand)]
            rows.append((policy.encode([p.prompt_text()])[0], cand_ids, rewards))
        return rows

    def loss_fn(micro: list[tuple], batch: list[tuple]):
        k = len(micro[0][1])
        steps = policy.steps([r[0] for r in micro for _ in range(k)], [c for r in micro for c in r[1]])
        scores = ((steps.logps * steps.mask).sum(1) / steps.mask.sum(1)).view(len(micro), k)
        rewards = torch.tensor([r[2] for r in micro], dtype=scores.dtype)
        best_nll = -scores.gather(1, rewards.argmax(1, keepdim=True)).squeeze(1)
        rank, ft = rrhf_loss(scores, rewards, best_nll)
        loss = (rank + ft_weight * ft).sum() / len(batch)
        return loss, {"rank": rank.sum().item() / len(batch), "ft": ft.sum().item() / len(batch),
                      "reward": rewards.mean().item() * len(micro) / len(batch)}

    train(run, "perf_rrhf", policy.model, cfg, make_batch, loss_fn, quiet=True)


def evaluate(policy: LanguagePolicy, problems: list[PerfProblem], meter: CostMeter, n: int = 8,
             seed: int = 0) -> dict[str, list[float]]:
    """Per problem over ``n`` samples at temperature 1: mean ``speedup`` (1.0 for a rewrite that
    fails), ``opt`` (the share passing with a speed-up of at least 1.1, PIE's %OPT) and ``error``
    (the share that does not pass every test)."""
    _, bodies = sample_bodies(policy, problems, n, torch.Generator().manual_seed(10_007 + seed))
    outs = meter.outcomes([p for p in problems for _ in range(n)], bodies)
    per = [outs[i * n:(i + 1) * n] for i in range(len(problems))]
    return {"speedup": [sum(o.speedup for o in g) / n for g in per],
            "opt": [sum(o.passed and o.speedup >= 1.1 for o in g) / n for g in per],
            "error": [sum(not o.passed for o in g) / n for g in per]}


def sft_baseline(run: Run, seed: int, train_p: list[PerfProblem], sft_steps: int = 150, width: int = 64,
                 layers: int = 1) -> LanguagePolicy:
    """The claim's baseline: a fresh tiny GPT-2 after ``sft_steps`` SFT steps (batch 32) on :data:`MIX`."""
    policy = make_policy(seed, n_layer=layers, n_embd=width)
    finetune(run, policy, train_p, OptimConfig(steps=sft_steps, batch_size=32, lr=3e-3, checkpoint_every=0), seed)
    return policy


def experiment(run_dir: str, seed: int = 0, sft_steps: int = 150, rrhf_steps: int = 30, ft_weight: float = 1.0,
               n_eval: int = 4, width: int = 64, layers: int = 1, meter: CostMeter | None = None) -> dict[str, dict[str, list[float]]]:
    """The claim's measurement for one seed: an SFT baseline on the train problems, then RRHF from
    it (batches of 8 problems, k = 4); both evaluated on the held-out problems of the fixed split
    (:func:`evaluate`, the same sampling seed). It runs on one intra-op thread (fastest for a tiny
    model on a busy machine, and the thread count changes float rounding, hence the figures)."""
    meter = meter or CostMeter()
    train_p, test_p = split(0)
    run = Run(run_dir, f"perf {seed} {sft_steps} {rrhf_steps} {ft_weight} {width} {layers}", fresh=True)
    with single_thread():
        policy = sft_baseline(run, seed, train_p, sft_steps, width, layers)
        before = evaluate(policy, test_p, meter, n_eval, seed)
        train_rrhf(run, policy, train_p, meter,
                   OptimConfig(steps=rrhf_steps, batch_size=8, lr=1e-3, checkpoint_every=0), seed=seed,
                   ft_weight=ft_weight)
        return {"sft": before, "rrhf": evaluate(policy, test_p, meter, n_eval, seed)}


def controls(run_dir: str, seed: int = 0, extra_steps: int = 30, n_eval: int = 4,
             meter: CostMeter | None = None) -> dict[str, dict[str, list[float]]]:
    """What RRHF's gain is made of: from the same SFT baseline and for the same extra gradient steps
    (batches of 8), more SFT on the same mixed data, SFT on the references alone (what RRHF's
    fine-tuning term mostly imitates), RRHF without its fine-tuning term, and RRHF; each evaluated
    as in :func:`experiment`."""
    meter = meter or CostMeter()
    train_p, test_p = split(0)
    extra = OptimConfig(steps=extra_steps, batch_size=8, lr=1e-3, checkpoint_every=0)
    more = {"sft_more_mixed": lambda run, pol: finetune(run, pol, train_p, extra, seed + 1000),
            "sft_more_reference": lambda run, pol: finetune(run, pol, train_p, extra, seed + 1000, mix={"fast": 1.0}),
            "rrhf_no_ft": lambda run, pol: train_rrhf(run, pol, train_p, meter, extra, seed=seed, ft_weight=0.0),
            "rrhf": lambda run, pol: train_rrhf(run, pol, train_p, meter, extra, seed=seed)}
    with single_thread():
        base = sft_baseline(Run(f"{run_dir}/sft", f"perf controls {seed}", fresh=True), seed, train_p)
        out = {"sft": evaluate(base, test_p, meter, n_eval, seed)}
        for name, step in more.items():
            policy = base.copy()
            step(Run(f"{run_dir}/{name}", f"perf controls {seed} {name} {extra_steps}", fresh=True), policy)
            out[name] = evaluate(policy, test_p, meter, n_eval, seed)
    return out


def paired(a: list[float], b: list[float]) -> tuple[float, float]:
    """Mean and standard error of the paired differences ``b - a``."""
    return paired_gain(b, a)


def main(seeds: tuple[int, ...] = (0, 1, 2), run_root: str = "runs/perf", with_controls: bool = False) -> None:
    """Print the claim's table (SFT vs RRHF on the held-out problems, per seed, with paired SEs), or
    with ``with_controls`` the rows of :func:`controls` against the same SFT baseline."""
    meter = CostMeter()
    for seed in seeds:
        out = (controls(f"{run_root}/controls{seed}", seed, meter=meter) if with_controls
               else experiment(f"{run_root}/seed{seed}", seed, meter=meter))
        for name in list(out)[1:]:
            for k in ("speedup", "opt", "error"):
                a, b = out["sft"][k], out[name][k]
                d, se = paired(a, b)
                print(f"seed {seed} {name:18} {k:8} sft {sum(a) / len(a):6.3f}  {sum(b) / len(b):6.3f}  "
                      f"diff {d:+.3f} (se {se:.3f})", flush=True)


if __name__ == "__main__":
    import sys

    main(with_controls="--controls" in sys.argv[1:])
