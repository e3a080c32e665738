"""CritiQ (Guo et al. 2025): data-quality criteria mined from a few pairwise preferences, then a
quality scorer built from the accepted criteria selects SFT data.

Here the "documents" are SFT rows of the arithmetic task of mixed, hidden quality (right worked
solutions, a wrong step, the second answer format, a repeated line, a truncated solution, stray
spaces); the hidden quality is a weighted sum of three checkable features (:data:`HIDDEN_WEIGHTS`)
that a simulated annotator prefers, with noise.

- **Criteria** are checkable statements about one example: a :class:`Criterion` is a named
  feature with a direction (:func:`template_library`). A proposer (any :class:`TextModel`) names
  criteria; its reply is matched to the library by name or by the words of the description.
- **Worker**: a :class:`TextModel` judges a pair under one criterion (:func:`worker_request` ->
  ``Judgment: A | B | tie``).
- **CritiQ Flow** (:func:`critiq_flow`): per-criterion accuracy against the preferences (ties left
  out, as the paper's evaluator does) decides keep (>= 0.75), revise (0.5 < acc < 0.75: the manager
  rewrites the criterion, here by choosing a refined variant after reading the pairs it got wrong)
  or ban (<= 0.5: replaced by new proposals), over epochs; the final criteria are those at >= 0.75,
  and a pair's judgment is the majority vote over them (:func:`majority_vote`).
- **CritiQ Scorer**: the final criteria annotate a larger pool of pairs, a Bradley-Terry MLP on
  each example's feature vector learns from those labels (:func:`train_scorer`, with
  :func:`rlxf.rewards.losses.soft_bt_loss`), and the top-k rows by score are selected.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from rlxf.algorithms.loop import OptimConfig
from rlxf.core.runs import Run
from rlxf.lab.rlvr import prover_on_rows
from rlxf.labelers.roles import SimulatedRole, TextModel
from rlxf.policies.control import single_thread
from rlxf.policies.language import LanguagePolicy
from rlxf.rewards.losses import soft_bt_loss
from rlxf.tasks.arithmetic import ALT_ANSWER, ArithmeticTask, check_answer, check_steps, corrupt, solve, split_steps

Example = dict  # {"prompt": "3+4*2=", "completion": "4*2=8\n3+8=11\nanswer: 11", "kind": "clean"}
JUDGMENTS = ("A", "B", "tie")

# -- examples of hidden quality -----------------------------------------------------------------

KINDS = {"clean": 0.30, "spaced": 0.10, "alt_format": 0.15, "wrong_step": 0.20, "repeated": 0.12, "truncated": 0.13}


def degrade(prompt: str, kind: str, rng: random.Random) -> str:
    """The canonical solution of ``prompt`` turned into a row of ``kind`` (see :data:`KINDS`)."""
    text = solve(prompt)
    lines = split_steps(text)
    if kind == "clean":
        return text
    if kind == "spaced":  # stray spaces: the checker ignores them, so quality is unchanged
        return "\n".join(line.replace("=", " = ", 1) if rng.random() < 0.7 else line for line in lines)
    if kind == "alt_format":
        return text.replace("answer: ", ALT_ANSWER)
    if kind == "wrong_step":
        return corrupt(prompt, text, rng)
    if kind == "repeated":  # one working line written three times (a stutter)
        k = rng.randrange(len(lines) - 1)
        return "\n".join(lines[:k + 1] + [lines[k]] * 2 + lines[k + 1:])
    if kind == "truncated":  # cut inside a working line: no answer line, the last line unfinished
        k = rng.randrange(len(lines) - 1)
        return "\n".join(lines[:k] + [lines[k][:rng.randrange(1, len(lines[k]) - 1)]])
    raise ValueError(f"degrade: unknown kind {kind!r}; expected one of {sorted(KINDS)}")


def example_pool(n: int, seed: int = 0, kinds: dict[str, float] | None = None,
                 task: ArithmeticTask | None = None) -> list[Example]:
    """``n`` SFT rows on distinct train problems of ``task`` (default ``ArithmeticTask(0)``), each
    of a kind drawn with the ``kinds`` weights (default :data:`KINDS`)."""
    kinds = kinds or KINDS
    rng = random.Random(f"critiq|pool|{seed}")
    rows = (task or ArithmeticTask(0)).corpus(n)
    names, weights = list(kinds), list(kinds.values())
    return [{"prompt": r["prompt"], "completion": degrade(r["prompt"], kind, rng), "kind": kind}
            for r in rows for kind in [rng.choices(names, weights)[0]]]


# -- features: checkable quantities of one example ----------------------------------------------


def _lines(ex: Example) -> list[str]:
    return split_steps(ex["completion"])


FEATURES: dict[str, Callable[[Example], float]] = {
    "answer_correct": lambda ex: float(check_answer(ex["prompt"], ex["completion"])),
    "answer_lenient": lambda ex: float(check_answer(ex["prompt"], ex["completion"], lenient=True)),
    "has_answer_line": lambda ex: float(_lines(ex)[-1].replace(" ", "").startswith("answer")),
    "valid_step_share": lambda ex: float(np.mean(check_steps(ex["prompt"], ex["completion"]))),
    "all_steps_valid": lambda ex: float(all(check_steps(ex["prompt"], ex["completion"]))),
    "repeated_share": lambda ex: 1.0 - len(set(_lines(ex))) / len(_lines(ex)),
    "n_lines": lambda ex: float(len(_lines(ex))),
    "n_chars": lambda ex: float(len(ex["completion"])),
    "digit_share": lambda ex: sum(c.isdigit() for c in ex["completion"]) / max(len(ex["completion"]), 1),
    "space_share": lambda ex: ex["completion"].count(" ") / max(len(ex["completion"]), 1),
    "product_in_problem": lambda ex: float("*" in ex["prompt"]),
}
HIDDEN_WEIGHTS = {"valid_step_share": 2.0, "has_answer_line": 2.0, "repeated_share": -6.0}


def feature_vector(ex: Example) -> list[float]:
    """Every feature of :data:`FEATURES` on ``ex``, in that order (the scorer's input)."""
    return [f(ex) for f in FEATURES.values()]


def hidden_quality(ex: Example) -> float:
    """The quality the simulated annotator prefers: ``sum(w * feature)`` over :data:`HIDDEN_WEIGHTS`."""
    return sum(w * FEATURES[name](ex) for name, w in HIDDEN_WEIGHTS.items())


# -- preferences --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preference:
    a: Example
    b: Example
    label: str  # "A" or "B": the preferred one


def simulated_preferences(examples: list[Example], n_pairs: int = 30, noise: float = 0.1, seed: int = 0,
                          min_gap: float = 0.25) -> list[Preference]:
    """``n_pairs`` annotated pairs of distinct ``examples`` whose hidden qualities differ by at least
    ``min_gap`` (the annotator is shown pairs with a visible difference); the label names the higher
    hidden quality, flipped with probability ``noise``."""
    if not 0.0 <= noise < 0.5:
        raise ValueError(f"simulated_preferences: noise must be in [0, 0.5), got {noise}")
    rng = random.Random(f"critiq|prefs|{seed}")
    quality = [hidden_quality(ex) for ex in examples]
    out = []
    for _ in range(10_000 * n_pairs):
        if len(out) == n_pairs:
            return out
        i, j = rng.sample(range(len(examples)), 2)
        if abs(quality[i] - quality[j]) < min_gap:
            continue
        label = "A" if quality[i] > quality[j] else "B"
        if rng.random() < noise:
            label = "B" if label == "A" else "A"
        out.append(Preference(examples[i], examples[j], label))
    raise ValueError(f"simulated_preferences: found only {len(out)} pairs {min_gap} apart in quality; "
                     f"pass more varied examples or a smaller min_gap")


# -- criteria -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Criterion:
    """A checkable statement: an example is better when ``direction * FEATURES[feature](ex)`` is
    higher. ``refinements`` are the names of sharper variants the manager may rewrite it into."""

    name: str
    description: str
    feature: str
    direction: int = 1
    refinements: tuple[str, ...] = ()

    def value(self, ex: Example) -> float:
        return self.direction * FEATURES[self.feature](ex)


def template_library() -> dict[str, Criterion]:
    """The criteria a proposer may name: the three behind the hidden quality, sharper and blunter
    variants of them, and plausible decoys (length, digits, spacing, problem type)."""
    crits = [
        Criterion("valid_steps", "a larger share of the lines are correct reductions", "valid_step_share", 1,
                  ("all_steps_valid",)),
        Criterion("complete", "the solution is complete and ends with an answer line", "has_answer_line"),
        Criterion("no_repetition", "no working line is repeated", "repeated_share", -1),
        Criterion("answer_correct", "the last line is answer: N with N the value of the problem", "answer_correct", 1,
                  ("valid_steps", "complete")),
        Criterion("answer_lenient", "the final number is right in either answer format", "answer_lenient", 1,
                  ("answer_correct", "complete")),
        Criterion("all_steps_valid", "every line is a correct reduction", "all_steps_valid", 1, ("valid_steps",)),
        Criterion("more_lines", "solutions with more lines show more work", "n_lines", 1,
                  ("valid_steps", "no_repetition")),
        Criterion("shorter", "shorter solutions are clearer", "n_chars", -1, ("no_repetition",)),
        Criterion("digit_rich", "a larger share of the characters are digits", "digit_share", 1, ("compact",)),
        Criterion("compact", "the lines have no stray spaces", "space_share", -1),
        Criterion("product_problem", "problems with a product are more instructive", "product_in_problem"),
    ]
    return {c.name: c for c in crits}


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def match_criterion(text: str, library: dict[str, Criterion], min_overlap: float = 0.5) -> Criterion | None:
    """The library criterion a proposal names: ``name`` or ``name: description`` with a known name,
    else the criterion whose description shares the most words (Jaccard >= ``min_overlap``)."""
    head = text.strip().strip("-* ").split(":", 1)[0].strip()
    if head in library:
        return library[head]
    words = _words(text)
    scored = [(len(words & _words(c.description)) / max(len(words | _words(c.description)), 1), c.name)
              for c in library.values()]
    best, name = max(scored)
    return library[name] if best >= min_overlap else None


# -- requests and replies -----------------------------------------------------------------------


def render_example(ex: Example) -> str:
    return f"Problem: {ex['prompt']}\nSolution:\n{ex['completion']}"


def _parse_example(block: str) -> Example:
    m = re.match(r"Problem: (.*?)\nSolution:\n(.*)", block.strip("\n"), re.S)
    if m is None:
        raise ValueError(f"not a rendered example: {block[:60]!r}")
    return {"prompt": m[1], "completion": m[2]}


def worker_request(criterion: Criterion, a: Example, b: Example) -> str:
    """The worker's request: which of two examples better satisfies one criterion."""
    return (f"Criterion: {criterion.name}: {criterion.description}\n"
            "Which example satisfies the criterion better? Think briefly, then end with "
            "'Judgment: A', 'Judgment: B' or 'Judgment: tie'.\n"
            f"### Example A\n{render_example(a)}\n### Example B\n{render_example(b)}\n### End")


def parse_judgment(reply: str) -> str | None:
    """``A``, ``B`` or ``tie`` from the reply's last ``Judgment:`` line; None if there is none."""
    found = re.findall(r"judgment:\s*(a|b|tie)\b", reply.lower())
    return {"a": "A", "b": "B", "tie": "tie"}[found[-1]] if found else None


def _request_examples(request: str) -> tuple[Example, Example]:
    body = request.split("### Example A\n", 1)[1]
    a, rest = body.split("\n### Example B\n", 1)
    return _parse_example(a), _parse_example(rest.split("\n### End", 1)[0])


def judge_by_values(criterion: Criterion, a: Example, b: Example) -> str:
    """The exact judgment: the example with the higher criterion value, ``tie`` when equal."""
    va, vb = criterion.value(a), criterion.value(b)
    return "tie" if abs(va - vb) < 1e-9 else "A" if va > vb else "B"


def simulated_worker(library: dict[str, Criterion], error: float = 0.1, seed: int = 0) -> SimulatedRole:
    """A worker that computes the named criterion on both examples; with probability ``error`` it
    replies one of the other two judgments. A criterion it does not know is judged ``tie``."""

    def right(request: str) -> str:
        name = request.split("\n", 1)[0].removeprefix("Criterion: ").split(":", 1)[0]
        if name not in library:
            return "Unknown criterion.\nJudgment: tie"
        verdict = judge_by_values(library[name], *_request_examples(request))
        return f"Compared {name} on both.\nJudgment: {verdict}"

    def wrong(request: str, reply: str, rng: random.Random) -> str:
        return f"Judgment: {rng.choice([j for j in JUDGMENTS if j != parse_judgment(reply)])}"

    return SimulatedRole(right, wrong, error, seed)


def proposer_request(preferences: list[Preference], n: int, exclude: list[str]) -> str:
    """The proposer's request: ``n`` new checkable criteria, one ``name: description`` a line,
    after reading the preferred and rejected example of a few pairs."""
    shown = "\n".join(f"### Preferred\n{render_example(p.a if p.label == 'A' else p.b)}\n"
                      f"### Rejected\n{render_example(p.b if p.label == 'A' else p.a)}" for p in preferences[:4])
    return (f"Here are pairs of arithmetic solutions a person compared.\n{shown}\n"
            f"Propose {n} checkable criteria for the quality of a solution, one per line as "
            f"'name: description'. Do not repeat: {', '.join(exclude) or 'none'}.")


def parse_proposals(reply: str, library: dict[str, Criterion]) -> list[Criterion]:
    """The library criteria a proposer's reply names (one per line), in order, without repeats."""
    out: dict[str, Criterion] = {}
    for line in reply.splitlines():
        if line.strip() and (c := match_criterion(line, library)) is not None:
            out.setdefault(c.name, c)
    return list(out.values())


def simulated_proposer(library: dict[str, Criterion], seed: int = 0) -> SimulatedRole:
    """A proposer that names library criteria not excluded, in a seeded random order (it does not
    know which are good): the template library behind the proposer interface."""
    rng = random.Random(f"critiq|proposer|{seed}")

    def right(request: str) -> str:
        n = int(re.search(r"Propose (\d+)", request)[1])
        exclude = set(request.rsplit("Do not repeat: ", 1)[1].rstrip(".").split(", "))
        names = [c for c in library if c not in exclude]
        rng.shuffle(names)
        return "\n".join(f"{c}: {library[c].description}" for c in names[:n])

    return SimulatedRole(right, lambda request, reply, rng: reply, 0.0, seed)


def manager_request(criterion: Criterion, accuracy: float, wrong: list[Preference],
                    library: dict[str, Criterion]) -> str:
    """The manager's request for a mid criterion: rewrite it, reflecting on the pairs it judged
    against the preference (preferred example first); candidate refinements are listed."""
    options = "\n".join(f"- {r}: {library[r].description}" for r in criterion.refinements if r in library)
    cases = "\n".join(f"### Preferred\n{render_example(p.a if p.label == 'A' else p.b)}\n"
                      f"### Other\n{render_example(p.b if p.label == 'A' else p.a)}\n### End" for p in wrong)
    return (f"Criterion: {criterion.name}: {criterion.description}\n"
            f"It agreed with {accuracy:.2f} of the preferences. Rewrite it so that it explains the pairs "
            f"it got wrong. Refined variants:\n{options or '- none'}\nPairs it got wrong:\n{cases}\n"
            "Reply with one line 'Criterion: name: description'.")


def simulated_manager(library: dict[str, Criterion]) -> SimulatedRole:
    """A manager that reads the wrongly judged pairs and picks the refined variant that prefers the
    preferred example in most of them (the criterion itself when it has no refinement)."""

    def right(request: str) -> str:
        name = request.split("\n", 1)[0].removeprefix("Criterion: ").split(":", 1)[0]
        options = re.findall(r"^- (\w+): ", request.split("Refined variants:\n", 1)[1].split("Pairs it", 1)[0], re.M)
        cases = re.findall(r"### Preferred\n(.*?)\n### Other\n(.*?)\n### End", request, re.S)
        pairs = [(_parse_example(p), _parse_example(o)) for p, o in cases]
        best = max(options, key=lambda r: sum(judge_by_values(library[r], p, o) == "A" for p, o in pairs),
                   default=name)
        return f"Criterion: {best}: {library[best].description if best in library else ''}"

    return SimulatedRole(right, lambda request, reply, rng: reply, 0.0, 0)


# -- the flow -----------------------------------------------------------------------------------


def criterion_accuracy(judgments: list[str | None], labels: list[str]) -> float:
    """Share of the decided judgments (A or B) that name the preferred example; ties and unparsed
    replies are left out, and a criterion that decides nothing scores 0."""
    decided = [(j, y) for j, y in zip(judgments, labels) if j in ("A", "B")]
    return sum(j == y for j, y in decided) / len(decided) if decided else 0.0


def fate(accuracy: float, thresholds: tuple[float, float] = (0.5, 0.75)) -> str:
    """``keep`` (>= high), ``revise`` (low < acc < high) or ``ban`` (<= low)."""
    low, high = thresholds
    return "keep" if accuracy >= high else "revise" if accuracy > low else "ban"


def majority_vote(per_criterion: list[list[str | None]]) -> list[str]:
    """One judgment per pair from the criteria's judgments: A if #A - #B > 0, B if < 0, else tie."""
    out = []
    for votes in zip(*per_criterion):
        margin = sum(v == "A" for v in votes) - sum(v == "B" for v in votes)
        out.append("A" if margin > 0 else "B" if margin < 0 else "tie")
    return out


def judge(worker: TextModel, criterion: Criterion, pairs: list[tuple[Example, Example]]) -> list[str | None]:
    """The worker's judgment of every pair under ``criterion``."""
    return [parse_judgment(r) for r in worker.complete([worker_request(criterion, a, b) for a, b in pairs])]


@dataclass
class FlowResult:
    final: list[Criterion]
    accuracy: dict[str, float]               # the best accuracy of every criterion evaluated
    history: list[dict] = field(default_factory=list)  # {"epoch", "criterion", "accuracy", "fate"}


def critiq_flow(preferences: list[Preference], worker: TextModel, proposer: TextModel, manager: TextModel,
                library: dict[str, Criterion], n_criteria: int = 6, epochs: int = 3,
                thresholds: tuple[float, float] = (0.5, 0.75)) -> FlowResult:
    """Mine criteria from ``preferences``: each epoch judges every pair under every current
    criterion, keeps the good, asks the manager to rewrite the mid and bans the low (the proposer
    replaces them); after ``epochs`` rounds a last evaluation scores the last set, and the final
    criteria are those whose best accuracy over all evaluations is >= high (as the paper's code does)."""
    if not preferences:
        raise ValueError("critiq_flow: no preferences to mine criteria from")
    bad = [i for i, p in enumerate(preferences) if p.label not in ("A", "B")]
    if bad:
        raise ValueError(f"critiq_flow: preference {bad[0]} has label {preferences[bad[0]].label!r}; expected 'A' or 'B'")
    pairs = [(p.a, p.b) for p in preferences]
    labels = [p.label for p in preferences]

    def propose(n: int, exclude: set[str]) -> list[Criterion]:
        reply = proposer.complete([proposer_request(preferences, n, sorted(exclude))])[0]
        return [c for c in parse_proposals(reply, library) if c.name not in exclude][:n]

    current = propose(n_criteria, set())
    banned: set[str] = set()
    accuracy: dict[str, float] = {}
    best: dict[str, tuple[float, Criterion]] = {}
    history: list[dict] = []
    for epoch in range(epochs + 1):
        judged = {c.name: judge(worker, c, pairs) for c in current}
        for c in current:
            accuracy[c.name] = criterion_accuracy(judged[c.name], labels)
            if accuracy[c.name] >= best.get(c.name, (-1.0, c))[0]:
                best[c.name] = (accuracy[c.name], c)
            history.append({"epoch": epoch, "criterion": c.name, "accuracy": accuracy[c.name],
                            "fate": fate(accuracy[c.name], thresholds)})
        if epoch == epochs:
            break
        kept: dict[str, Criterion] = {}
        for c in current:
            verdict = fate(accuracy[c.name], thresholds)
            if verdict == "keep":
                kept.setdefault(c.name, c)
            elif verdict == "revise":
                wrong = [p for p, j in zip(preferences, judged[c.name]) if j in ("A", "B") and j != p.label]
                reply = manager.complete([manager_request(c, accuracy[c.name], wrong, library)])[0]
                new = match_criterion(reply.removeprefix("Criterion:"), library) or c
                if new.name in banned:
                    new = c
                kept.setdefault(new.name, new)
            else:
                banned.add(c.name)
        fresh = propose(n_criteria - len(kept), banned | set(kept)) if len(kept) < n_criteria else []
        current = list(kept.values()) + fresh
    final = [c for acc, c in best.values() if acc >= thresholds[1]]
    return FlowResult(final, {name: acc for name, (acc, _) in best.items()}, history)


# -- the scorer ---------------------------------------------------------------------------------


def annotate(worker: TextModel, criteria: list[Criterion], pairs: list[tuple[Example, Example]]) -> list[str]:
    """Majority-vote judgments of ``pairs`` under ``criteria`` (the worker judges each once per criterion)."""
    if not criteria:
        raise ValueError("annotate: no criteria to judge with (the flow accepted none)")
    return majority_vote([judge(worker, c, pairs) for c in criteria])


@dataclass
class Scorer:
    """A Bradley-Terry MLP on standardised :func:`feature_vector` inputs."""

    net: torch.nn.Module
    mean: torch.Tensor
    std: torch.Tensor

    @torch.no_grad()
    def score(self, examples: list[Example]) -> np.ndarray:
        x = (torch.tensor([feature_vector(e) for e in examples]) - self.mean) / self.std
        return self.net(x).squeeze(-1).numpy()


def train_scorer(pairs: list[tuple[Example, Example]], labels: list[str], seed: int = 0, hidden: int = 16,
                 steps: int = 300, lr: float = 1e-2) -> Scorer:
    """Fit the scorer on labelled pairs with :func:`soft_bt_loss` (A = 1, B = 0, tie = 0.5), full batch."""
    if len(labels) != len(pairs):
        raise ValueError(f"train_scorer: {len(labels)} labels for {len(pairs)} pairs; expected one label per pair")
    bad = [i for i, y in enumerate(labels) if y not in JUDGMENTS]
    if bad:
        raise ValueError(f"train_scorer: label of row {bad[0]} is {labels[bad[0]]!r}; expected one of {JUDGMENTS}")
    torch.manual_seed(seed)
    xa = torch.tensor([feature_vector(a) for a, _ in pairs])
    xb = torch.tensor([feature_vector(b) for _, b in pairs])
    both = torch.cat([xa, xb])
    mean, std = both.mean(0), both.std(0).clamp_min(1e-6)
    net = torch.nn.Sequential(torch.nn.Linear(xa.shape[1], hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1))
    p = torch.tensor([{"A": 1.0, "B": 0.0, "tie": 0.5}[y] for y in labels])
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    with single_thread():
        for _ in range(steps):
            opt.zero_grad()
            loss = soft_bt_loss(net((xa - mean) / std).squeeze(-1), net((xb - mean) / std).squeeze(-1), p).mean()
            loss.backward()
            opt.step()
    return Scorer(net.eval(), mean, std)


def random_pairs(examples: list[Example], n: int, seed: int = 0) -> list[tuple[Example, Example]]:
    rng = random.Random(f"critiq|pairs|{seed}")
    return [tuple(examples[i] for i in rng.sample(range(len(examples)), 2)) for _ in range(n)]


def select_top_k(examples: list[Example], scores, k: int) -> list[Example]:
    """The ``k`` examples with the highest scores (stable: earlier rows win ties)."""
    if not 0 < k <= len(examples):
        raise ValueError(f"select_top_k: k must be in 1..{len(examples)}, got {k}")
    order = np.argsort(-np.asarray(scores), kind="stable")[:k]
    return [examples[i] for i in sorted(order)]


def critiq_select(pool: list[Example], preferences: list[Preference], k: int, worker: TextModel,
                  proposer: TextModel, manager: TextModel, library: dict[str, Criterion] | None = None,
                  n_annotated: int = 1000, seed: int = 0, **flow_kwargs) -> tuple[list[Example], FlowResult, Scorer]:
    """The whole method: mine criteria, annotate ``n_annotated`` random pool pairs with them,
    train the scorer, return the top ``k`` rows of ``pool`` (with the flow's result and the scorer)."""
    library = library or template_library()
    flow = critiq_flow(preferences, worker, proposer, manager, library, **flow_kwargs)
    pairs = random_pairs(pool, n_annotated, seed)
    scorer = train_scorer(pairs, annotate(worker, flow.final, pairs), seed)
    return select_top_k(pool, scorer.score(pool), k), flow, scorer


def sft_on_rows(run: Run, rows: list[Example], cfg: OptimConfig, seed: int = 0) -> LanguagePolicy:
    """A fresh tiny char-level GPT-2 (2 layers, 64 wide, as the arithmetic prover) fine-tuned on
    ``rows``, on one thread (the same numbers on any machine, and faster on a busy one)."""
    with single_thread():
        policy = prover_on_rows(run, rows, cfg, seed)
    policy.model.eval()
    return policy


def summary(flow: FlowResult) -> str:
    """A JSON line of the final criteria and every criterion's last accuracy."""
    return json.dumps({"final": [c.name for c in flow.final],
                       "accuracy": {k: round(v, 3) for k, v in sorted(flow.accuracy.items())}})


__all__ = ["Criterion", "FEATURES", "FlowResult", "HIDDEN_WEIGHTS", "KINDS", "Preference", "Scorer", "annotate",
           "criterion_accuracy", "critiq_flow", "critiq_select", "degrade", "example_pool", "fate", "feature_vector",
           "hidden_quality", "judge", "judge_by_values", "majority_vote", "manager_request", "match_criterion",
           "parse_judgment", "parse_proposals", "proposer_request", "random_pairs", "select_top_k", "sft_on_rows",
           "simulated_manager", "simulated_preferences", "simulated_proposer", "simulated_worker", "summary",
           "template_library", "train_scorer", "worker_request"]
