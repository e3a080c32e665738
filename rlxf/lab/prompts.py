"""The prompt lab: the task metric of the best prompt found so far against the number of human or
simulated queries, for each prompt-optimisation method, against random search and the hand-written
prompt.

    .venv/bin/rlxf run configs/lab_prompts.toml

A method is a :class:`PromptMethod` found by import path in :data:`METHODS` (its module loads only
when a config names it). Each ``<task>.<method>`` stage runs the method once per seed with a budget of
queries; it returns the best prompt so far after every query, and the lab scores those prompts on the
task's held-out ``test`` split at the config's checkpoints. A last stage writes ``summary.json``
shaped ``{task: {"hand_written": metric, "methods": {method: {"query": what one query is,
"curve": {queries: {"mean", "se", "per_seed"}}}}}}``. The report has the table and one plot per task.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from rlxf.algorithms.evaluate import mean_se
from rlxf.core.config import ConfigError
from rlxf.core.runs import atomic_write_text
from rlxf.lab import report
from rlxf.lab.config import RunSection
from rlxf.lab.registry import resolve
from rlxf.lab.stages import StagedLab, seed_stage


@dataclass
class PromptProblem:
    """What every prompt method works on, for one task and seed: the task (a
    :class:`rlxf.tasks.prompt_tasks.PromptTask`: frozen model, splits, metric, error records), a pool
    of candidate prompts with their feature vectors (for methods that select among candidates), the
    hand-written prompt, and ``extras`` a method may cache things in."""

    task: Any
    seed: int
    candidates: list[str]
    features: np.ndarray  # [n_candidates, dim]
    hand_written: str
    extras: dict = field(default_factory=dict)


@dataclass
class PromptMethod:
    """One prompt-optimisation method of the lab. ``optimise(problem, budget, seed)`` spends ``budget``
    queries and returns the best prompt so far after each one (``budget`` entries, in order).
    ``query`` says what one query is (a duel a person answers, one prompt scored on the eval split,
    one point of a ranking...). ``metric(problem, prompts, split)``, when given, scores what
    ``optimise`` returned (e.g. soft prompts); by default the task's own metric scores text prompts."""

    name: str
    optimise: Callable[[PromptProblem, int, int], list]
    query: str
    metric: Callable[[PromptProblem, list, str], np.ndarray] | None = None


METHODS: dict[str, str] = {
    "random_search": "rlxf.lab.prompts:RANDOM_SEARCH",
    "apohf": "rlxf.lab.prompts:APOHF",
    "apohf_random_pairs": "rlxf.lab.prompts:APOHF_RANDOM_PAIRS",
    "linear_bandit": "rlxf.lab.prompts:LINEAR_BANDIT",
    "zo_ranksgd_soft": "rlxf.lab.prompts:ZO_RANKSGD",
    "prompt_agent": "rlxf.lab.prompts:PROMPT_AGENT",
    "beam": "rlxf.lab.prompts:BEAM",
    "greedy": "rlxf.lab.prompts:GREEDY",
    "random_mutation": "rlxf.lab.prompts:RANDOM_MUTATION",
    "promst": "rlxf.lab.prompts:PROMST",
    "promst_score_model": "rlxf.lab.prompts:PROMST_SCORE_MODEL",
    "ape": "rlxf.lab.prompts:APE",
}
"""Each method (a :class:`PromptMethod`), by import path ``module:ATTR``."""

TASKS = ("kinds",)  # rlxf.tasks.prompt_tasks' built-in tasks


# -- the problem ------------------------------------------------------------------------------------
def candidate_prompts(n: int, seed: int) -> list[str]:
    """``n`` distinct random prompts of library fragments (the empty prompt included when drawn)."""
    from rlxf.tasks.prompt_tasks import join, random_prompt

    rng = random.Random(f"prompt-candidates|{seed}")
    out: dict[str, None] = {}
    for _ in range(100 * n):
        out.setdefault(join(random_prompt(rng)), None)
        if len(out) == n:
            break
    return list(out)


def prompt_embeddings(task, prompts: list[str]) -> np.ndarray:
    """Each prompt's feature vector ``[n, n_embd]``: the frozen model's last hidden states over
    ``<bos> prompt``, mean-pooled over the prompt's tokens and scaled to unit length."""
    import torch

    tok, model = task.tok, task.model
    rows = [[tok.bos_token_id] + tok.convert_tokens_to_ids(p.split()) for p in prompts]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), tok.pad_token_id)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r)
    mask = (ids != tok.pad_token_id).long()
    pos = torch.arange(width).expand(len(rows), -1)  # fixed positions, as the task's model reads its inputs
    with torch.no_grad():
        hidden = model.transformer(ids, attention_mask=mask, position_ids=pos).last_hidden_state
    pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    return torch.nn.functional.normalize(pooled, dim=-1).double().numpy()


def prompt_problem(task_name: str, seed: int, n_candidates: int) -> PromptProblem:
    """The task (its frozen model built once per process), ``n_candidates`` random candidate prompts
    drawn from ``seed`` and their embeddings (:func:`prompt_embeddings`)."""
    from rlxf.tasks.prompt_tasks import prompt_task

    task = prompt_task(task_name)
    candidates = candidate_prompts(n_candidates, seed)
    return PromptProblem(task, seed, candidates, prompt_embeddings(task, candidates), task.hand_written)


def duel_candidates(task_name: str, n: int, seed: int = 0, n_questions: int = 6) -> list[dict]:
    """Candidates for a prompt-duel project in the feedback app (``rlxf label add-prompts --task``):
    ``n`` random prompts, each with the frozen model's answers to the first ``n_questions`` eval
    questions (what a labeler judges) and its embedding."""
    from rlxf.tasks.prompt_tasks import answer

    problem = prompt_problem(task_name, seed, n)
    qs = problem.task.split("eval")[:n_questions]
    out = []
    for prompt, emb in zip(problem.candidates, problem.features):
        said = answer(problem.task.tok, problem.task.model, [prompt] * len(qs), qs)
        out.append({"prompt": prompt, "shown": "\n".join(f"{q.text} {a}" for q, a in zip(qs, said)),
                    "embedding": [round(float(v), 6) for v in emb]})
    return out


# -- the baselines and APOHF ------------------------------------------------------------------------
def random_search(problem: PromptProblem, budget: int, seed: int) -> list[str]:
    """Score random candidates (without repeats) on the eval split, one per query; the best so far is
    the highest-scoring one seen."""
    order = np.random.default_rng(seed).permutation(len(problem.candidates))[:budget]
    if len(order) < budget:
        raise ConfigError(f"random_search: budget {budget} exceeds the {len(order)} candidates (raise n_candidates)")
    scores = problem.task.score([problem.candidates[i] for i in order], "eval")
    best = np.maximum.accumulate(scores)
    first_best = [int(np.flatnonzero(scores[: k + 1] == best[k])[0]) for k in range(budget)]
    return [problem.candidates[order[j]] for j in first_best]


RANDOM_SEARCH = PromptMethod("random_search", random_search, "one candidate prompt scored on the eval split")


def simulated_person_utility(problem: PromptProblem, seed: int) -> np.ndarray:
    """The simulated person's utility of each candidate: its eval-split metric standardised over 50
    random candidates and multiplied by 10 (APOHF's simulation); cached per problem and seed."""
    from rlxf.algorithms.prompts.apohf import standardise

    key = ("person", seed)
    if key not in problem.extras:
        problem.extras[key] = standardise(problem.task.score(problem.candidates, "eval"), np.random.default_rng(seed))
    return problem.extras[key]


def duel_method(name: str, cfg_of: Callable[[], Any], what: str) -> PromptMethod:
    """A lab method that duels candidates with the APOHF loop under the config ``cfg_of()``; a
    Bradley-Terry person on :func:`simulated_person_utility` answers."""

    def optimise(problem: PromptProblem, budget: int, seed: int) -> list[str]:
        from rlxf.algorithms.prompts.apohf import bt_oracle, run_duels

        person = bt_oracle(simulated_person_utility(problem, seed)[None], seed=10_000 + seed)
        reported, _ = run_duels(problem.features, person, [cfg_of()], [seed], budget)
        return [problem.candidates[i] for i in reported[0]]

    return PromptMethod(name, optimise, what)


def _apohf_cfg(**kw):
    from rlxf.algorithms.prompts.apohf import LAB_CONFIG

    return replace(LAB_CONFIG, **kw)


def _linear_cfg():
    from rlxf.algorithms.prompts.apohf import LAB_CONFIG, linear_bandit

    return linear_bandit(LAB_CONFIG)


APOHF = duel_method("apohf", _apohf_cfg, "a duel of two prompts' answers, answered by a simulated person")
APOHF_RANDOM_PAIRS = duel_method("apohf_random_pairs", lambda: _apohf_cfg(nu=-1.0),
                                 "a duel (random pair) answered by a simulated person")
LINEAR_BANDIT = duel_method("linear_bandit", _linear_cfg, "a duel answered by a simulated person")


# -- ZO-RankSGD on a soft prompt ---------------------------------------------------------------------
def soft_prompt_accuracy(task, points: np.ndarray, split: str) -> np.ndarray:
    """The task metric of soft prompts ``[n, k * n_embd]``: each is k vectors read by the frozen model in
    place of a text prompt's token embeddings (``<bos> soft Q: ... A:``, left-padded at the task's fixed
    positions), its greedy answers scored against gold on ``split``."""
    import torch

    from rlxf.tasks.prompt_tasks import WIDTH

    tok, model = task.tok, task.model
    wte = model.get_input_embeddings()
    pts = torch.as_tensor(np.atleast_2d(points), dtype=torch.float32)
    k = pts.shape[1] // wte.embedding_dim
    qs = task.split(split)
    q_ids = [tok.convert_tokens_to_ids(q.text.split()) for q in qs]
    gold = torch.tensor(tok.convert_tokens_to_ids([q.gold for q in qs]))
    pos = torch.arange(WIDTH).expand(len(qs), -1)
    out = []
    with torch.no_grad():
        for soft in pts.view(len(pts), k, -1):
            embeds = wte(torch.full((len(qs), WIDTH), tok.pad_token_id)).clone()
            mask = torch.zeros(len(qs), WIDTH, dtype=torch.long)
            for i, ids in enumerate(q_ids):
                start = WIDTH - len(ids) - k - 1
                embeds[i, start] = wte.weight[tok.bos_token_id]
                embeds[i, start + 1:start + 1 + k] = soft
                embeds[i, start + 1 + k:] = wte(torch.tensor(ids))
                mask[i, start:] = 1
            hidden = model.transformer(inputs_embeds=embeds, attention_mask=mask, position_ids=pos).last_hidden_state
            out.append(float((model.lm_head(hidden[:, -1]).argmax(-1) == gold).float().mean()))
    task.calls[split] += len(pts)
    return np.array(out)


def hand_written_point(problem: PromptProblem) -> np.ndarray:
    """The hand-written prompt as a soft prompt: its token embeddings, flattened."""
    tok, wte = problem.task.tok, problem.task.model.get_input_embeddings()
    ids = tok.convert_tokens_to_ids(problem.hand_written.split())
    return wte.weight[ids].detach().double().numpy().reshape(-1)


ZO_SETTINGS = {"m": 6, "mu": 0.1, "eta": 0.3}
"""ZO-RankSGD on the soft prompt: points per ranking, smoothing radius, step size (mu and eta picked on
tuning seed 50, which no reported figure uses, among six settings from (0.05, 0.15) to (1.0, 3.0))."""


def zo_soft_prompt(problem: PromptProblem, budget: int, seed: int) -> list[np.ndarray]:
    """ZO-RankSGD on a soft prompt started at the hand-written prompt's token embeddings: each round a
    simulated person ranks m perturbed soft prompts by their eval accuracy (ties in random order); one
    query is one ranked point. The best prompt so far is the current iterate."""
    from rlxf.algorithms.prompts.zo_ranksgd import SimulatedRanker, zo_ranksgd

    c = ZO_SETTINGS
    iterates: list[np.ndarray] = []
    ranker = SimulatedRanker(lambda pts: -soft_prompt_accuracy(problem.task, pts, "eval"), seed=10_000 + seed)
    zo_ranksgd(ranker, hand_written_point(problem), steps=budget // c["m"], m=c["m"], mu=c["mu"], eta=c["eta"],
               seed=seed, gold=lambda x: iterates.append(x.copy()) or 0.0)
    return [iterates[q // c["m"]] for q in range(1, budget + 1)]


ZO_RANKSGD = PromptMethod("zo_ranksgd_soft", zo_soft_prompt, "one soft prompt in a ranking of "
                          f"{ZO_SETTINGS['m']}, ranked by a simulated person",
                          metric=lambda problem, points, split: soft_prompt_accuracy(problem.task, np.stack(points), split))


# -- editor-driven searches: PromptAgent, its baselines, PROMST ---------------------------------------
def search_method(module: str, name: str, what: str) -> PromptMethod:
    """``module.run(name, task, budget, seed)``'s trace (its output after each eval call, the simulated
    editor at error rate 0.2) as a lab method."""

    def optimise(problem: PromptProblem, budget: int, seed: int) -> list[str]:
        import importlib

        return importlib.import_module(module).run(name, problem.task, budget, seed).trace

    return PromptMethod(name, optimise, what)


_EDIT = "one prompt scored on the eval split (children written by the simulated editor)"
_AGENT = "rlxf.algorithms.prompts.prompt_agent"
PROMPT_AGENT = search_method(_AGENT, "prompt_agent", _EDIT)
BEAM = search_method(_AGENT, "beam", _EDIT)
GREEDY = search_method(_AGENT, "greedy", _EDIT)
RANDOM_MUTATION = search_method(_AGENT, "random_mutation", "one randomly edited prompt scored on the eval split")
PROMST = search_method("rlxf.algorithms.prompts.promst", "promst", _EDIT + " from grouped error feedback")
PROMST_SCORE_MODEL = search_method("rlxf.algorithms.prompts.promst", "promst_score_model",
                                   _EDIT + ", pre-filtered by the score model")
APE = search_method("rlxf.algorithms.prompts.promst", "ape", "one prompt scored on the eval split (resampled, no feedback)")


# -- the lab ----------------------------------------------------------------------------------------
@dataclass
class PromptLabConfig:
    lab: str = "prompts"
    run: RunSection = field(default_factory=lambda: RunSection(dir="runs/prompts"))
    tasks: list[str] = field(default_factory=lambda: ["kinds"])
    methods: list[str] = field(default_factory=lambda: ["random_search", "apohf"])
    budget: int = 60  # queries per method and seed
    checkpoints: list[int] = field(default_factory=lambda: [5, 10, 20, 40, 60])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    n_candidates: int = 200  # the candidate pool of the selection methods


class PromptLab(StagedLab):
    """Runs the prompt lab in ``cfg.run.dir``: one stage per (task, method), then ``summary``."""

    Config = PromptLabConfig
    title = "Prompt lab"

    def __init__(self, cfg: PromptLabConfig, fresh: bool = False, quiet: bool = False,
                 log: Callable[[str], None] = print):
        self._problems: dict[tuple[str, int], PromptProblem] = {}
        super().__init__(cfg, fresh, quiet, log)

    def validate(self) -> None:
        c = self.cfg
        if not c.tasks or len(set(c.tasks)) != len(c.tasks) or set(c.tasks) - set(TASKS):
            raise ConfigError(f"tasks: expected distinct names among {list(TASKS)}, got {c.tasks}")
        if not c.methods or len(set(c.methods)) != len(c.methods):
            raise ConfigError(f"methods: expected a non-empty list of distinct methods, got {c.methods}; "
                              f"known: {', '.join(METHODS)}")
        for name in c.methods:
            if name not in METHODS:
                raise ConfigError(f"methods: unknown method {name!r}; known: {', '.join(METHODS)}")
            if not isinstance(resolve(METHODS[name], f"methods: {name}"), PromptMethod):
                raise ConfigError(f"methods: {name}: {METHODS[name]} is not a PromptMethod")
        if c.budget < 1:
            raise ConfigError(f"budget must be at least 1 query, got {c.budget}")
        if not c.checkpoints or sorted(set(c.checkpoints)) != c.checkpoints or c.checkpoints[0] < 1 \
                or c.checkpoints[-1] > c.budget:
            raise ConfigError(f"checkpoints: expected increasing query counts in 1..budget={c.budget}, got {c.checkpoints}")
        if not c.seeds or len(set(c.seeds)) != len(c.seeds):
            raise ConfigError(f"seeds: expected a non-empty list of distinct integers, got {c.seeds}")
        if c.n_candidates < 2:
            raise ConfigError(f"n_candidates must be at least 2, got {c.n_candidates}")

    def stages(self) -> list[tuple[str, Callable[[], dict]]]:
        out = [(f"{task}.{name}", lambda t=task, m=name: self._optimise(t, m))
               for task in self.cfg.tasks for name in self.cfg.methods]
        return out + [("summary", self._summary)]

    def problem(self, task: str, seed: int) -> PromptProblem:
        if (task, seed) not in self._problems:
            self._problems[task, seed] = prompt_problem(task, seed, self.cfg.n_candidates)
        return self._problems[task, seed]

    def _optimise(self, task: str, name: str) -> dict:
        """Run the method at every seed; score its best-so-far prompts on ``test`` at the checkpoints."""
        method = resolve(METHODS[name], f"methods: {name}")
        c = self.cfg
        per_seed, prompts = {}, {}
        for seed in c.seeds:
            problem = self.problem(task, seed)
            seed_stage(seed, f"{task}.{name}")
            best = method.optimise(problem, c.budget, seed)
            if len(best) != c.budget:
                raise ValueError(f"{name}: optimise returned {len(best)} prompts for a budget of {c.budget}")
            picked = [best[q - 1] for q in c.checkpoints]
            score = method.metric or (lambda pr, ps, split: pr.task.score(ps, split))
            per_seed[str(seed)] = [float(v) for v in score(problem, picked, "test")]
            prompts[str(seed)] = [p if isinstance(p, str) else None for p in picked]
            self.log(f"[{task}.{name}] seed {seed}: test metric at {c.checkpoints[-1]} queries {per_seed[str(seed)][-1]:.3f}")
        return {"query": method.query, "checkpoints": c.checkpoints, "per_seed": per_seed, "prompts": prompts}

    def _summary(self) -> dict:
        c = self.cfg
        summary: dict = {}
        for task in c.tasks:
            problem = self.problem(task, c.seeds[0])
            methods = {}
            for name in c.methods:
                r = self.run.result(f"{task}.{name}")
                table = np.array([r["per_seed"][str(s)] for s in c.seeds])  # [seeds, checkpoints]
                methods[name] = {"query": r["query"], "curve": {
                    str(q): dict(zip(("mean", "se"), mean_se(table[:, k])), per_seed=table[:, k].tolist())
                    for k, q in enumerate(c.checkpoints)}}
            summary[task] = {"hand_written": float(problem.task.score([problem.hand_written], "test")[0]),
                             "hand_written_prompt": problem.hand_written, "methods": methods}
        atomic_write_text(self.run.dir / "summary.json", json.dumps(summary, indent=2))
        return {"tasks": list(summary)}

    @staticmethod
    def format_table(summary: dict) -> str:
        return format_table(summary)

    def report_sections(self, summary: dict) -> list[str]:
        plot_curves(summary, self.run.dir / "prompt_curves.png")
        c = self.cfg
        return [report.paragraph(
            f"Test-split metric of each method's best prompt so far against the queries it spent, mean ± SE over "
            f"seeds {c.seeds}; the dashed line is the hand-written prompt. What one query is differs by method "
            "(the last column of the table)."),
            report.pre(format_table(summary)), report.image("prompt_curves.png", "metric against queries")]


def format_table(summary: dict) -> str:
    """One row per (task, method): the test metric (mean ± SE over seeds) at each checkpoint."""
    lines = []
    for task, t in summary.items():
        names = list(t["methods"])
        qs = list(t["methods"][names[0]]["curve"]) if names else []
        head = f"{'task':<7} {'method':<20} " + " ".join(f"{'q=' + q:>13}" for q in qs) + "  one query"
        lines += [head, "-" * len(head)]
        for name, m in t["methods"].items():
            cells = " ".join(f"{m['curve'][q]['mean']:>6.3f} ±{m['curve'][q]['se']:>5.3f}" for q in qs)
            lines.append(f"{task:<7} {name:<20} {cells}  {m['query']}")
        lines.append(f"{task:<7} {'hand-written':<20} {t['hand_written']:>6.3f} ({t['hand_written_prompt']!r})")
    return "\n".join(lines)


def plot_curves(summary: dict, path) -> None:
    """One panel per task: test metric of the best prompt so far against queries, one line per method
    (± SE band), the hand-written prompt dashed."""
    fig, axes = report.plt.subplots(1, len(summary), figsize=(6.0 * len(summary), 4.2), squeeze=False)
    for ax, (task, t) in zip(axes[0], summary.items()):
        for i, (name, m) in enumerate(t["methods"].items()):
            qs = [int(q) for q in m["curve"]]
            mean = np.array([m["curve"][q]["mean"] for q in m["curve"]])
            se = np.array([m["curve"][q]["se"] for q in m["curve"]])
            ax.plot(qs, mean, "o-", color=f"C{i}", label=name, ms=4)
            ax.fill_between(qs, mean - se, mean + se, color=f"C{i}", alpha=0.15)
        ax.axhline(t["hand_written"], color="grey", ls="--", lw=1, label="hand-written")
        ax.set_title(task)
        ax.set_xlabel("queries (human or simulated)")
        ax.set_ylabel("test metric of the best prompt so far")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    report.save_figure(fig, path)
