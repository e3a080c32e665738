"""PROMST: prompt optimisation for multi-step tasks, from human-designed feedback rules, with a learned
score model that pre-filters candidates.

One expansion of a prompt:

1. play every training episode with it (:meth:`rlxf.tasks.prompt_game.PromptGame.episodes`);
2. turn each failed episode into a feedback string by the **feedback rules** (:data:`FEEDBACK_RULES`:
   a template per failure type, filled with the last two steps' cell, action and environment reply);
3. group the strings by failure type (at most ``group_cap`` per group) and have the summariser role
   write one summary line per group (``- [type] xN: ...``);
4. ask the editor role (the PromptLLM) for ``n_children`` new prompts from the summaries and the ancestor
   prompts (each request carries its candidate number, as sampling would make each reply differ).

The search is depth-first: score the children, keep the best ``n_selected`` and expand each in turn,
until level ``>= min_level`` with the best child's score falling on three successive levels, or no
failure is left, or the budget of evaluations is spent. The output is the best-scored prompt.

With ``score_model=True``, ``3 * n_children`` candidates are written and a ridge regression on fragment
indicators, fitted to every prompt scored so far, picks the ``n_children`` to evaluate. The baseline
``feedback=False`` is APE-style resampling: the editor gets no feedback and rewrites at random.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from tqdm.auto import tqdm

from rlxf.algorithms.prompts import editor as E
from rlxf.algorithms.prompts.prompt_agent import Budget, Search
from rlxf.labelers.roles import SimulatedRole, TextModel
from rlxf.tasks import prompt_tasks as pt
from rlxf.tasks.prompt_game import GAME_FRAGMENTS, MAX_TURNS, Episode, PromptGame

FEEDBACK_RULES: dict[str, str] = {
    "format": "The response was in the wrong format. {last} Answer with one of the allowed actions only.",
    "loop": "The agent was stuck in a local loop: the state did not change for more than 4 rounds. {last} "
            "Hint: when an action leaves the state unchanged, choose another action.",
    "timeout": "The episode failed over the query time limit ({turns} turns) without reaching the goal. {last}",
}
"""Human-designed feedback rules: failure type -> feedback template."""

GAME_REWRITES: dict[str, list[E.Edit]] = {
    "format": [("add", "say"), ("add", "rush"), ("add", "focus")],
    "loop": [("add", "wall"), ("add", "rush"), ("add", "plan")],
    "timeout": [("add", "ahead"), ("remove", "careful"), ("add", "rush")],
}
"""The simulated PromptLLM's rewrites for the game's failure types."""


def rule_feedback(ep: Episode) -> str:
    """The feedback string of a failed episode."""
    last = " ".join(f"At cell {s.cell} the response was {s.action!r}; the environment replied {s.feedback!r}."
                    for s in ep.steps[-2:])
    return FEEDBACK_RULES[ep.failure].format(last=last, turns=MAX_TURNS)


def summary_request(kind: str, lines: list[str]) -> str:
    return f"Summarise these {len(lines)} failures of type [{kind}] in one line:\n" + "\n".join(lines)


def simulated_summariser(error: float = 0.0, seed: int = 0) -> SimulatedRole:
    """The SumLLM role: one line ``- [type] xN: <the first failure's text>``; wrong replies name another type."""

    def parse(request: str) -> tuple[str, int, str]:
        head, *lines = request.split("\n")
        kind = head.split("[", 1)[1].split("]", 1)[0]
        return kind, len(lines), (lines[0] if lines else "")

    def right(request: str) -> str:
        kind, n, first = parse(request)
        return f"- [{kind}] x{n}: {first}"

    def wrong(request: str, _reply: str, rng: random.Random) -> str:
        kind, n, first = parse(request)
        return f"- [{rng.choice([k for k in FEEDBACK_RULES if k != kind])}] x{n}: {first}"

    return SimulatedRole(right, wrong, error=error, seed=seed)


def grouped_feedback(failures: list[tuple[str, str]], summariser: TextModel, group_cap: int = 8) -> list[str]:
    """Feedback ``(failure type, text)`` grouped by type (``group_cap`` per group), one summary line each."""
    groups: dict[str, list[str]] = defaultdict(list)
    for kind, text in failures:
        if len(groups[kind]) < group_cap:
            groups[kind].append(text)
    if not groups:
        return []
    kinds = sorted(groups)
    return summariser.complete([summary_request(k, groups[k]) for k in kinds])


def indicators(prompts: list[str], library: dict[str, str] = GAME_FRAGMENTS) -> np.ndarray:
    """``[n, len(library) + 1]``: which fragments each prompt contains, and a constant."""
    names = list(library)
    rows = [[float(n in set(pt.fragments_of(p, library))) for n in names] + [1.0] for p in prompts]
    return np.array(rows)


def ridge_predict(train_prompts: list[str], train_scores: list[float], prompts: list[str], lam: float = 1.0,
                  library: dict[str, str] = GAME_FRAGMENTS) -> np.ndarray:
    """The score model: ridge regression on fragment indicators (the constant unpenalised)."""
    x, y = indicators(train_prompts, library), np.asarray(train_scores, dtype=float)
    pen = lam * np.eye(x.shape[1])
    pen[-1, -1] = 0.0
    w = np.linalg.solve(x.T @ x + pen, x.T @ y)
    return indicators(prompts, library) @ w


@dataclass
class Problem:
    """What PROMST optimises: ``score(prompts) -> metrics`` (one evaluation each), ``failures(prompt)
    -> [(failure type, feedback text)]`` from the human-designed rules, the fragment library the
    score model reads, and the starting prompt."""

    score: Callable[[list[str]], np.ndarray]
    failures: Callable[[str], list[tuple[str, str]]]
    library: dict[str, str]
    init: str


def game_problem(game: PromptGame) -> Problem:
    """The corridor game: scored on the training episodes, feedback from :data:`FEEDBACK_RULES`."""
    return Problem(lambda ps: game.score(ps, "train"),
                   lambda p: [(e.failure, rule_feedback(e)) for e in game.episodes(p, "train") if e.failure],
                   GAME_FRAGMENTS, game.hand_written)


def kinds_problem(task: pt.PromptTask, batch: int = 20, seed: int = 0) -> Problem:
    """The one-step prompt task: scored on the eval split, feedback from the wrong answers on a random
    train batch (one line per error record, its type the error type)."""
    rng = random.Random(f"promst-kinds|{seed}")
    n = len(task.split("train"))

    def failures(prompt: str) -> list[tuple[str, str]]:
        recs = task.errors(prompt, "train", rng.sample(range(n), batch))
        return [(r.error, line) for r, line in zip(recs, E.feedback_lines(recs))]

    return Problem(lambda ps: task.score(ps, "eval"), failures, pt.FRAGMENTS, task.hand_written)


@dataclass
class Promst:
    """One PROMST run's state: the problem, the roles, the budget and every scored prompt."""

    problem: Problem
    editor: TextModel
    summariser: TextModel
    budget: Budget
    n_children: int = 4
    n_selected: int = 2
    min_level: int = 2
    feedback: bool = True
    score_model: bool = False
    seed: int = 0
    scored: dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        if self.n_children < 1 or not 1 <= self.n_selected <= self.n_children:
            raise ValueError(f"PROMST needs n_children >= 1 and 1 <= n_selected <= n_children, got "
                             f"{self.n_children}, {self.n_selected}")
        self.rng = random.Random(f"promst|{self.seed}")

    def best(self) -> str:
        return max(self.scored, key=self.scored.get)

    def evaluate(self, prompts: list[str]) -> list[float]:
        out = []
        for p in prompts[: self.budget.left]:
            self.scored[p] = float(self.problem.score([p])[0])
            self.budget.trace.append(self.best())
            out.append(self.scored[p])
        return out

    def candidates(self, prompt: str, trajectory: list[str], n: int) -> list[str]:
        lines = grouped_feedback(self.problem.failures(prompt), self.summariser) if self.feedback else []
        requests = [E.editor_request(prompt, lines, trajectory) + f"\nCandidate {i + 1} of {n}." for i in range(n)]
        return [E.parse_prompt(r) for r in self.editor.complete(requests)]

    def children(self, prompt: str, trajectory: list[str]) -> list[tuple[str, float]]:
        if self.score_model:
            pool = self.candidates(prompt, trajectory, 3 * self.n_children)
            known = list(self.scored)
            pred = ridge_predict(known, [self.scored[p] for p in known], pool, library=self.problem.library)
            order = sorted(range(len(pool)), key=lambda i: (-pred[i], self.rng.random()))
            kids = [pool[i] for i in order[: self.n_children]]
        else:
            kids = self.candidates(prompt, trajectory, self.n_children)
        return list(zip(kids, self.evaluate(kids)))

    def search(self, prompt: str, trajectory: list[str], level: int, falls: int, last_best: float) -> None:
        """Depth-first: expand ``prompt``, recurse into its best ``n_selected`` children."""
        if self.budget.left <= 0 or self.scored.get(prompt, 0.0) >= 1.0:
            return
        kids = sorted(self.children(prompt, trajectory), key=lambda kv: -kv[1])
        if not kids:
            return
        best = kids[0][1]
        falls = falls + 1 if best < last_best else 0
        if level >= self.min_level and falls >= 3:
            return
        for kid, _ in kids[: self.n_selected]:
            self.search(kid, trajectory + [prompt], level + 1, falls, best)


def promst(problem: Problem, editor: TextModel, budget: int, seed: int = 0, summariser: TextModel | None = None,
           n_children: int = 4, n_selected: int = 2, min_level: int = 2, feedback: bool = True,
           score_model: bool = False) -> Search:
    """PROMST from ``problem.init`` for ``budget`` evaluations (the root's included); a new tree grows
    from the best prompt so far whenever one stops before the budget is spent."""
    run = Promst(problem, editor, summariser or simulated_summariser(seed=seed), Budget(budget), n_children,
                 n_selected, min_level, feedback, score_model, seed)
    root = problem.init
    run.evaluate([root])
    while run.budget.left > 0:
        before = run.budget.left
        run.search(run.best() if run.scored else root, [], 0, 0, -np.inf)
        if run.budget.left == before or run.scored[run.best()] >= 1.0:
            break
    return Search(run.best(), run.budget.padded())


def game_editor(error: float = 0.2, seed: int = 0) -> SimulatedRole:
    """The simulated PromptLLM for the game (its rewrites steered by the summarised feedback)."""
    return E.simulated_editor(GAME_REWRITES, GAME_FRAGMENTS, error=error, seed=seed)


VARIANTS = {"promst": {}, "promst_score_model": {"score_model": True}, "ape": {"feedback": False}}
"""PROMST with rule feedback, the same with the score model, and APE-style resampling (no feedback)."""


def run(name: str, task: PromptGame | pt.PromptTask, budget: int, seed: int, editor_error: float = 0.2) -> Search:
    """A :data:`VARIANTS` entry on the corridor game or the one-step prompt task, with the simulated
    roles seeded by ``seed``."""
    if name not in VARIANTS:
        raise ValueError(f"unknown PROMST variant {name!r}; known: {', '.join(VARIANTS)}")
    if isinstance(task, PromptGame):
        problem, editor = game_problem(task), game_editor(editor_error, seed)
    else:
        problem, editor = kinds_problem(task, seed=seed), E.simulated_editor(error=editor_error, seed=seed)
    return promst(problem, editor, budget, seed, **VARIANTS[name])


__all__ = ["FEEDBACK_RULES", "GAME_REWRITES", "VARIANTS", "Problem", "Promst", "game_problem", "kinds_problem", "game_editor", "grouped_feedback", "indicators", "promst",
           "ridge_predict", "rule_feedback", "run", "simulated_summariser"]


def evals_to_reach(trace_scores: np.ndarray, target: float) -> int | None:
    """How many evaluations a run's best-so-far took to reach ``target`` (None if it never did)."""
    hit = np.flatnonzero(np.asarray(trace_scores) >= target - 1e-12)
    return int(hit[0]) + 1 if len(hit) else None


def compare(game: PromptGame, budget: int, seeds, variants=tuple(VARIANTS), editor_error: float = 0.2) -> dict:
    """Per variant and seed: the output prompt's test metric and the best-so-far training score after
    each evaluation (``{"test": [seeds], "train_curve": [seeds x budget]}``), plus ``hand_written``."""
    out = {"hand_written": {"test": np.repeat(game.score([game.hand_written], "test"), len(seeds))}}
    for name in variants:
        runs = [run(name, game, budget, s, editor_error) for s in tqdm(seeds, desc=name, leave=False)]
        out[name] = {"test": game.score([r.prompt for r in runs], "test"),
                     "train_curve": np.array([game.score(r.trace, "train") for r in runs])}
    return out


def main(argv=None) -> None:
    import argparse

    from rlxf.algorithms.evaluate import mean_se, paired_gain

    ap = argparse.ArgumentParser(description="PROMST against APE-style resampling on the corridor game")
    ap.add_argument("--budget", type=int, default=40, help="evaluations on the training episodes per run")
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(100, 108)))
    ap.add_argument("--editor-error", type=float, default=0.2)
    args = ap.parse_args(argv)
    res = compare(PromptGame(), args.budget, args.seeds, editor_error=args.editor_error)
    print(f"test metric (32 episodes) at {args.budget} evaluations, seeds {args.seeds}")
    for name, r in res.items():
        m, se = mean_se(r["test"])
        print(f"{name:20s} {m:.4f} +- {se:.4f}   {' '.join(f'{a:.3f}' for a in r['test'])}")
    for base in ("ape", "hand_written"):
        g, se = paired_gain(res["promst"]["test"], res[base]["test"])
        print(f"promst - {base}: {g:+.4f} (paired SE {se:.4f})")
    targets = res["promst"]["train_curve"][:, -1]
    for name in ("promst", "promst_score_model"):
        hits = [evals_to_reach(c, t) for c, t in zip(res[name]["train_curve"], targets)]
        got = [h for h in hits if h is not None]
        print(f"{name:20s} evaluations to reach promst's final training score: {hits} "
              f"(reached on {len(got)}/{len(hits)} seeds, mean {np.mean(got) if got else float('nan'):.1f})")


if __name__ == "__main__":
    main()
