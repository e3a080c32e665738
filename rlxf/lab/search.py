"""The search lab: gold against search compute for each search method on each built-in task.

    .venv/bin/rlxf run configs/lab_search.toml

Tasks and methods are found by import path (:data:`TASKS`, :data:`METHODS`), so a method's
module loads only when a config names it. Each task is set up once per process (its setup
trains what the task needs), each ``<task>.<method>`` is one resumable stage that prepares the
method once and searches at every budget, and a last stage writes ``summary.json`` shaped
``{task: {method: {budget: {"gold", "generations"}}}}``. The report has the table, one plot of
gold against generations per task, and one small search tree drawn.

This module also holds the arithmetic task's setup and two of its methods: :data:`SAMPLE`
(independent samples, the most likely one answers) and :data:`BEAM_IMPLICIT` (From r to Q*:
step-level beam search on a DPO policy valued by its implicit reward against the reference).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from matplotlib import ticker

from rlxf.algorithms.loop import OptimConfig
from rlxf.algorithms.offline_preference import train_pairs
from rlxf.core.config import ConfigError
from rlxf.core.runs import Run, atomic_write_text
from rlxf.lab import report
from rlxf.lab.config import RunSection
from rlxf.lab.rlvr import train_prover
from rlxf.lab.registry import resolve
from rlxf.lab.stages import StagedLab, seed_stage
from rlxf.objectives.preference import dpo_loss
from rlxf.policies.language import LanguagePolicy
from rlxf.search import Expander, ImplicitReward, StepSplit, Tree, beam_search, delimiter_steps
from rlxf.tasks.arithmetic import ArithmeticTask, check_answer


@dataclass
class TaskSetup:
    """A task ready to search: its trained policy (None when each method builds its own), the held-out
    prompts gold is measured on, and whatever else the task's methods need (``extras``)."""

    name: str
    policy: Any | None
    prompts: list[str]
    extras: dict = field(default_factory=dict)


@dataclass
class SearchMethod:
    """One search method of the lab: ``search(setup, prepared, budget, seed) -> {"gold", "generations"}``,
    after ``prepare(setup, run, seed) -> prepared`` (once per task, e.g. training a PRM) when given."""

    name: str
    search: Callable[..., dict]
    prepare: Callable[..., Any] | None = None


# -- the arithmetic task ----------------------------------------------------------------------

MAX_NEW_TOKENS = 48  # the longest worked solution of a 3-operator problem is ~35 characters


@dataclass
class DPOSettings:
    """How :func:`train_dpo_prover` makes preference pairs and trains: ``samples`` responses per
    train problem from the prover, one (right, wrong) pair per problem that has both."""

    problems: int = 800
    samples: int = 4
    beta: float = 1.0  # at 0.1 (lr 5e-5 to 3e-4) the tiny policy's own gold fell at temperature 1
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(steps=100, batch_size=32, lr=1e-4,
                                                                     checkpoint_every=10**6))


@dataclass
class ArithmeticSettings:
    """How :func:`arithmetic_setup` trains the task's prover (SFT on ``corpus`` worked solutions) and
    :data:`BEAM_IMPLICIT` its DPO policy; tests shrink them through :data:`ARITHMETIC`."""

    sft_steps: int = 1000
    corpus: int = 4000
    n_ops: tuple[int, int] = (2, 3)  # operators per problem
    dpo: DPOSettings = field(default_factory=DPOSettings)


ARITHMETIC = ArithmeticSettings()


def arithmetic_setup(run: Run, seed: int, n_prompts: int) -> TaskSetup:
    """A weak char-level prover (2-layer GPT-2, SFT 1000 steps on 4000 worked solutions: about 30%
    exact at temperature 1) and ``n_prompts`` test problems of ``ArithmeticTask(seed)``."""
    task = ArithmeticTask(seed=seed, n_ops=ARITHMETIC.n_ops)
    policy = train_prover(run, task, OptimConfig(steps=ARITHMETIC.sft_steps, batch_size=32, lr=3e-3,
                                                 checkpoint_every=10**6), corpus_size=ARITHMETIC.corpus, seed=seed)
    policy.model.eval()
    return TaskSetup("arithmetic", policy, task.prompts(n_prompts, "test"),
                     {"task": task, "check": check_answer, "max_new_tokens": MAX_NEW_TOKENS})


def trees_of(policy: LanguagePolicy, prompts: list[str]) -> list[Tree]:
    return [Tree(p, ids) for p, ids in zip(prompts, policy.encode(prompts))]


def outcome(trees: list[Tree], picks: list, check: Callable[[str, str], float]) -> dict:
    """What a lab method returns for ``trees`` and their answers ``picks`` (nodes, None for no answer):
    mean ``gold`` of the picks under ``check``, ``generations`` (sampled steps and rollouts), and
    ``forward_tokens``, ``per_prompt`` gold and the first prompt's ``tree`` (which the lab saves)."""
    golds = [float(check(t.prompt, t.response_text(n))) if n is not None else 0.0 for t, n in zip(trees, picks)]
    return {"gold": sum(golds) / len(golds), "generations": sum(t.compute.generations + t.compute.rollouts for t in trees),
            "forward_tokens": sum(t.compute.forward_tokens for t in trees), "per_prompt": golds, "tree": trees[0]}


def sample_n(policy: LanguagePolicy, prompts: list[str], n: int, seed: int, max_new_tokens: int = MAX_NEW_TOKENS,
             temperature: float = 1.0) -> list[Tree]:
    """``n`` whole responses per prompt in one sampling call, each a child of its prompt's root
    (repeats merge into one child's ``count``)."""
    trees = trees_of(policy, prompts)
    whole = StepSplit((), max_new_tokens)
    Expander(policy, whole, k=n, temperature=temperature, max_response_tokens=max_new_tokens,
             seed=seed).expand([(t, t.root) for t in trees])
    return trees


def most_likely(tree: Tree):
    """The sampled response the policy finds most likely (highest log-probability), or None."""
    kids = tree.children(tree.root)
    return max(kids, key=lambda n: n.logp) if kids else None


def sample_search(setup: TaskSetup, prepared, budget: int, seed: int) -> dict:
    trees = sample_n(setup.policy, setup.prompts, budget, seed, setup.extras.get("max_new_tokens", MAX_NEW_TOKENS))
    return outcome(trees, [most_likely(t) for t in trees], setup.extras["check"])


SAMPLE = SearchMethod("sample", sample_search)
"""``budget`` samples per prompt from the task's policy at temperature 1; the answer is the one
with the highest sequence log-probability under the policy (no reward, no verifier)."""


def verifier_pairs(policy: LanguagePolicy, problems: list[str], samples: int, seed: int,
                   check: Callable[[str, str], float] = check_answer) -> list[tuple[list[int], list[int], list[int]]]:
    """One (prompt, right, wrong) pair of token ids per problem whose finished samples include both
    (a wrong answer, not a response cut off at the length limit): the verifiable reward labels the
    training data; search never sees it."""
    trees = sample_n(policy, problems, samples, seed)
    pairs = []
    for t in trees:
        kids = t.children(t.root)
        good = [n for n in kids if n.finished and check(t.prompt, n.text)]
        bad = [n for n in kids if n.finished and not check(t.prompt, n.text)]
        if good and bad:
            pairs.append((t.root.ids, good[0].ids, bad[0].ids))
    return pairs


def train_dpo_prover(run: Run, stage: str, prover: LanguagePolicy, task: ArithmeticTask, seed: int,
                     settings: DPOSettings | None = None, quiet: bool = True) -> tuple[LanguagePolicy, LanguagePolicy]:
    """DPO on verifier-labelled pairs of the prover's own samples (train problems): returns the
    trained policy and its frozen reference (the prover)."""
    settings = settings or ARITHMETIC.dpo
    ref = prover.reference()
    policy = prover.copy()
    pairs = verifier_pairs(prover, task.prompts(settings.problems, "train"), settings.samples, seed)
    train_pairs(run, stage, policy, ref, pairs, dpo_loss, {"beta": settings.beta}, settings.optim, seed, quiet=quiet)
    policy.model.eval()
    return policy, ref


def implicit_beam(policy: LanguagePolicy, ref: LanguagePolicy, prompts: list[str], width: int, k: int, seed: int,
                  beta: float = 1.0, max_new_tokens: int = MAX_NEW_TOKENS, max_step_tokens: int = 16) -> list[Tree]:
    """From r to Q*: beam search over lines (one sampling call per level for every prompt), each
    kept node sampling ``k`` next lines, valued by the implicit reward ``beta * sum log pi/pi_ref``."""
    trees = trees_of(policy, prompts)
    expander = Expander(policy, delimiter_steps(policy.tokenizer, "\n", max_step_tokens), k=k,
                        max_response_tokens=max_new_tokens, seed=seed)
    beam_search(trees, expander, ImplicitReward(ref, beta), width=width)
    return trees


BEAM_K = 4  # next lines sampled per kept node


def beam_prepare(setup: TaskSetup, run: Run, seed: int):
    return train_dpo_prover(run, "dpo", setup.policy, setup.extras["task"], seed)


def beam_search_method(setup: TaskSetup, prepared, budget: int, seed: int) -> dict:
    policy, ref = prepared
    trees = implicit_beam(policy, ref, setup.prompts, budget, BEAM_K, seed,
                          max_new_tokens=setup.extras.get("max_new_tokens", MAX_NEW_TOKENS))
    return outcome(trees, [t.best() for t in trees], setup.extras["check"])


BEAM_IMPLICIT = SearchMethod("beam_implicit", beam_search_method, beam_prepare)
"""From r to Q*: the prover DPO-trained on its own verifier-labelled samples; beam search of width
``budget`` over lines, ``BEAM_K`` lines sampled per kept node, valued by the DPO policy's implicit
reward against the prover; the answer is the finished response with the highest implicit reward."""


# -- the lab ----------------------------------------------------------------------------------

TASKS: dict[str, str] = {
    "arithmetic": "rlxf.lab.search:arithmetic_setup",
    "code": "rlxf.algorithms.search.rethink:lab_setup",
    "tictactoe": "rlxf.algorithms.search.board:lab_setup",
    "retrieval": "rlxf.algorithms.search.cr_planner:lab_setup",
}
"""Each task's setup ``(run, seed, n_prompts) -> TaskSetup``, by import path."""

METHODS: dict[str, dict[str, str]] = {
    "arithmetic": {"sample": "rlxf.lab.search:SAMPLE", "beam_implicit": "rlxf.lab.search:BEAM_IMPLICIT",
                   "agent_q": "rlxf.algorithms.search.agent_q:LAB_METHOD",
                   "meds3_pvs": "rlxf.algorithms.search.meds3:LAB_METHOD",
                   "outcome_bon": "rlxf.algorithms.search.meds3:OUTCOME_BON"},
    "code": {"sample": "rlxf.algorithms.search.rethink:SAMPLE", "mcts": "rlxf.algorithms.search.rethink:MCTS",
             "rethink": "rlxf.algorithms.search.rethink:RETHINK"},
    "tictactoe": {"policy": "rlxf.algorithms.search.board:POLICY", "mcts": "rlxf.algorithms.search.board:MCTS"},
    "retrieval": {"no_critic": "rlxf.algorithms.search.cr_planner:NO_CRITIC",
                  "cr_planner": "rlxf.algorithms.search.cr_planner:CR_PLANNER"},
}
"""Each task's methods (:class:`SearchMethod` objects), by import path."""


@dataclass
class TaskSection:
    """One task's part of the lab: ``n_prompts`` held-out prompts, the ``methods`` to run (names of
    :data:`METHODS`) and the search ``budgets`` each runs at (per prompt; each method says what a
    unit is: samples, beam width, simulations...)."""

    n_prompts: int = 32
    budgets: list[int] = field(default_factory=lambda: [1, 4])
    methods: list[str] = field(default_factory=list)


@dataclass
class SearchLabConfig:
    lab: str = "search"
    run: RunSection = field(default_factory=lambda: RunSection(dir="runs/search"))
    tasks: list[str] = field(default_factory=lambda: ["arithmetic"])
    arithmetic: TaskSection = field(default_factory=lambda: TaskSection(methods=["sample", "beam_implicit"]))
    code: TaskSection = field(default_factory=TaskSection)
    tictactoe: TaskSection = field(default_factory=TaskSection)
    retrieval: TaskSection = field(default_factory=TaskSection)


class SearchLab(StagedLab):
    """Runs the search lab in ``cfg.run.dir``: one stage per (task, method), then ``summary``."""

    Config = SearchLabConfig
    title = "Search lab"

    def __init__(self, cfg: SearchLabConfig, fresh: bool = False, quiet: bool = False,
                 log: Callable[[str], None] = print):
        self._setups: dict[str, TaskSetup] = {}
        super().__init__(cfg, fresh, quiet, log)

    def validate(self) -> None:
        """Every task and method known and importable, budgets and prompt counts positive."""
        c = self.cfg
        if not c.tasks or len(set(c.tasks)) != len(c.tasks):
            raise ConfigError(f"tasks: expected a non-empty list of distinct task names, got {c.tasks}")
        for task in c.tasks:
            if task not in TASKS:
                raise ConfigError(f"tasks: unknown task {task!r}; known tasks: {', '.join(TASKS)}")
            sec = getattr(c, task)
            if not sec.methods or len(set(sec.methods)) != len(sec.methods):
                raise ConfigError(f"{task}.methods: expected a non-empty list of distinct methods, got {sec.methods}; "
                                  f"known for {task}: {', '.join(METHODS[task])}")
            if not sec.budgets or any(b < 1 for b in sec.budgets):
                raise ConfigError(f"{task}.budgets: expected a non-empty list of integers >= 1, got {sec.budgets}")
            if sec.n_prompts < 1:
                raise ConfigError(f"{task}.n_prompts must be at least 1, got {sec.n_prompts}")
            resolve(TASKS[task], f"tasks: {task}")
            for name in sec.methods:
                if name not in METHODS[task]:
                    raise ConfigError(f"{task}.methods: unknown method {name!r}; known for {task}: "
                                      f"{', '.join(METHODS[task])}")
                if not isinstance(resolve(METHODS[task][name], f"{task}.methods: {name}"), SearchMethod):
                    raise ConfigError(f"{task}.methods: {name}: {METHODS[task][name]} is not a SearchMethod")

    def stages(self) -> list[tuple[str, Callable[[], dict]]]:
        out = [(f"{task}.{name}", lambda t=task, m=name: self._search(t, m))
               for task in self.cfg.tasks for name in getattr(self.cfg, task).methods]
        return out + [("summary", self._summary)]

    def setup(self, task: str) -> TaskSetup:
        """The task's setup, built once per process (seeded from the run seed and the task)."""
        if task not in self._setups:
            seed_stage(self.seed, f"{task}.setup")
            make = resolve(TASKS[task], f"tasks: {task}")
            self._setups[task] = make(self.run, self.seed, getattr(self.cfg, task).n_prompts)
        return self._setups[task]

    def _search(self, task: str, name: str) -> dict:
        """Prepare the method once, then search at every budget; a returned ``tree`` is saved as JSONL."""
        setup = self.setup(task)
        seed_stage(self.seed, f"{task}.{name}")  # the same draws whether or not the setup was built just now
        method = resolve(METHODS[task][name], f"{task}.methods: {name}")
        t0 = time.time()
        prepared = method.prepare(setup, self.run, self.seed) if method.prepare else None
        out: dict = {"n_prompts": len(setup.prompts), "prepare_seconds": round(time.time() - t0, 1), "budgets": {}}
        for budget in getattr(self.cfg, task).budgets:
            t0 = time.time()
            got = method.search(setup, prepared, budget, self.seed)
            missing = {"gold", "generations"} - set(got)
            if missing:
                raise ValueError(f"{task}.{name}: search returned no {sorted(missing)} at budget {budget}")
            if isinstance(got.get("tree"), Tree):
                got["tree"].save(self.run.stage_dir(f"{task}.{name}") / f"tree_{budget}.jsonl")
            out["budgets"][str(budget)] = {"gold": float(got["gold"]), "generations": int(got["generations"]),
                                           "seconds": round(time.time() - t0, 1)}
            self.log(f"[{task}.{name}] budget {budget}: gold {got['gold']:.3f}, {got['generations']} generations")
        return out

    def _summary(self) -> dict:
        summary = {task: {name: {b: {k: r[k] for k in ("gold", "generations")}
                                 for b, r in self.run.result(f"{task}.{name}")["budgets"].items()}
                          for name in getattr(self.cfg, task).methods} for task in self.cfg.tasks}
        atomic_write_text(self.run.dir / "summary.json", json.dumps(summary, indent=2))
        return {"tasks": list(summary)}

    def n_prompts(self, task: str) -> int:
        """The prompts gold was measured on (a setup may find fewer than the config asks for)."""
        stage = f"{task}.{getattr(self.cfg, task).methods[0]}"
        return self.run.result(stage)["n_prompts"] if self.run.is_done(stage) else getattr(self.cfg, task).n_prompts

    def format_table(self, summary: dict) -> str:
        return format_table(summary, {task: self.n_prompts(task) for task in summary})

    def report_sections(self, summary: dict) -> list[str]:
        """What was run, the table, gold against generations per task, and one small tree drawn."""
        n = {task: self.n_prompts(task) for task in summary}
        plot_gold(summary, n, self.run.dir / "search_gold.png")
        sections = [report.paragraph(
            "Gold of each search method's answers against the search compute it spent, on each task's held-out "
            "prompts. Generations: policy sampling sequences (sampled steps, samples and rollouts), per prompt in "
            "the plot and the table. ± is the binomial standard error over prompts, sqrt(g (1 - g) / n), an upper "
            "bound for gold in [0, 1]."),
            report.pre(self.format_table(summary)), report.image("search_gold.png", "gold against generations")]
        tree = smallest_tree(self.run)
        if tree is not None:
            where, text = tree
            sections += [report.heading(f"A search tree ({where})"),
                         report.paragraph("Each line is a step: N visits, q the mean value backed up through it, "
                                          "v its own value and the value's source."), report.pre(text)]
        return sections


def binomial_se(gold: float, n: int) -> float:
    return math.sqrt(max(gold * (1 - gold), 0.0) / n) if n else float("nan")


def format_table(summary: dict, n_prompts: dict[str, int] | None = None) -> str:
    """One row per (task, method, budget): gold (± its binomial SE when ``n_prompts`` is given) and
    generations per prompt."""
    head = f"{'task':<11} {'method':<14} {'budget':>6} {'gold':>6} {'± se':>6} {'gens/prompt':>11}"
    lines = [head, "-" * len(head)]
    for task, methods in summary.items():
        n = (n_prompts or {}).get(task)
        for name, by_budget in methods.items():
            for budget, r in by_budget.items():
                se = f"{binomial_se(r['gold'], n):.3f}" if n else "-"
                gens = f"{r['generations'] / n:.1f}" if n else str(r["generations"])
                lines.append(f"{task:<11} {name:<14} {budget:>6} {r['gold']:>6.3f} {se:>6} {gens:>11}")
    return "\n".join(lines)


def plot_gold(summary: dict, n_prompts: dict[str, int], path) -> None:
    """One panel per task: gold against generations per prompt (log scale), one line per method."""
    fig, axes = report.plt.subplots(1, len(summary), figsize=(4.6 * len(summary), 3.8), squeeze=False)
    for ax, (task, methods) in zip(axes[0], summary.items()):
        for i, (name, by_budget) in enumerate(methods.items()):
            pts = sorted((r["generations"] / n_prompts[task], r["gold"]) for r in by_budget.values())
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=f"C{i}", label=name, ms=4)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda x, _: f"{x:g}"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_title(task)
        ax.set_xlabel("generations per prompt")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0, 0].set_ylabel("gold")
    fig.tight_layout()
    report.save_figure(fig, path)


def smallest_tree(run: Run, max_lines: int = 40, min_nodes: int = 8) -> tuple[str, str] | None:
    """Where the smallest saved tree worth drawing came from, and its drawing in at most about
    ``max_lines`` lines (deep levels summarised). Worth drawing: deeper than one level with at least
    ``min_nodes`` nodes, else deeper than one level, else any with a child."""
    trees = [(Tree.load(f), f) for f in sorted(run.dir.glob("stages/*/tree_*.jsonl"))]
    trees = [(t, f) for t, f in trees if len(t.nodes) > 1]
    if not trees:
        return None
    deep = [(t, f) for t, f in trees if max(n.depth for n in t.nodes) > 1]
    pool = [(t, f) for t, f in deep if len(t.nodes) >= min_nodes] or deep or trees
    tree, f = min(pool, key=lambda x: len(x[0].nodes))
    depth = max(n.depth for n in tree.nodes)
    text = tree.draw()
    while text.count("\n") >= max_lines and depth > 1:
        depth -= 1
        text = tree.draw(max_depth=depth)
    return f"{f.parent.name}, budget {f.stem.removeprefix('tree_')}: the first prompt", text
