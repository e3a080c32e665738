"""MedS³ (Jiang et al., 2025, arXiv 2501.12051) on the arithmetic task: step-level MCTS self-evolution,
a soft PRM with the look-back penalty, and PRM vote-sum (P-VS) decoding.

1. **Search.** Step-level MCTS (one line a step) on training problems: every new node is valued by the
   mean correctness of ``n = max(base // (depth + 1), floor)`` policy completions (a finished answer by
   the verifier itself), and values go up with the "comp" backup
   ``V(node) = (V_own + sum_c N_c V_c / sum_c N_c) / 2`` (:func:`comp_backup`).
2. **Self-evolution.** The policy is fine-tuned on the correct trajectories of its trees, and searches again.
3. **PRM.** A process reward model fits each path's step values with the look-back penalty
   ``v~_i = v_i - lambda (v_{i-1} - v_i)`` (:func:`look_back`; soft labels, binary cross-entropy), so a
   step that lowers the value is punished even on a path that ends right.
4. **P-VS.** At test time ``N`` responses are sampled; each gets the minimum of its PRM step scores,
   and the answer with the largest score sum wins (:func:`vote_sum`).

The baseline, outcome-RM best-of-N, ranks the same ``N`` responses by an outcome RM trained on every
complete response the search sampled (tree leaves and rollouts) with its verified outcome.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import torch

from rlxf.algorithms.loop import OptimConfig
from rlxf.algorithms.reward_training import train_process_reward_model
from rlxf.algorithms.sft import train_sft
from rlxf.core.runs import Run
from rlxf.lab.rlvr import sample_responses
from rlxf.lab.search import SearchMethod, TaskSetup
from rlxf.lab.train import scalar_head
from rlxf.policies.language import LanguagePolicy
from rlxf.rewards.process import ProcessRewardModel
from rlxf.search import Expander, First, Node, Rollouts, Tree, Verifier, delimiter_steps, mcts, step_targets, uct
from rlxf.search.values import encode_steps
from rlxf.tasks.arithmetic import ArithmeticTask, check_answer, split_steps

Check = Callable[[str, str], float]
AGGREGATES = ("min", "mean", "prod", "last")


# -- search ---------------------------------------------------------------------------------


def rollout_count(depth: int, base: int = 20, floor: int = 5) -> int:
    """MedS³'s rollouts per new node: ``max(base // (depth + 1), floor)`` (paper: base 20, floor 5)."""
    return max(base // (depth + 1), floor)


@dataclass
class DepthRollouts:
    """Rollout-mean values with :func:`rollout_count` completions at each node's depth: one
    :class:`rlxf.search.Rollouts` per distinct count, one sampling call per count."""

    policy: LanguagePolicy
    check: Check
    base: int = 20
    floor: int = 5
    max_new_tokens: int = 48
    seed: int = 0
    source: str = "rollout"
    by_n: dict[int, Rollouts] = field(default_factory=dict, init=False, repr=False)

    def __call__(self, items):
        out: list[float | None] = [None] * len(items)
        groups: dict[int, list[int]] = {}
        for i, (_, node) in enumerate(items):
            groups.setdefault(rollout_count(node.depth, self.base, self.floor), []).append(i)
        for n, idx in sorted(groups.items()):
            if n not in self.by_n:
                self.by_n[n] = Rollouts(self.policy, self.check, n, self.max_new_tokens, seed=self.seed + n)
            for i, v in zip(idx, self.by_n[n]([items[i] for i in idx])):
                out[i] = v
        return out


def comp_value(tree: Tree, node: Node) -> float:
    """MedS³'s "comp" value: half the node's own value, half its visited children's visit-weighted
    value (the own value alone at a leaf; the children alone at the root, which has no value)."""
    kids = [k for k in tree.children(node) if k.visits]
    if not kids:
        return node.value if node.value is not None else node.q
    below = sum(k.visits * k.q for k in kids) / sum(k.visits for k in kids)
    return below if node.value is None else 0.5 * (node.value + below)


def comp_backup(tree: Tree, node: Node, value: float) -> None:
    """A backup for :func:`rlxf.search.mcts`: counts the visit on the path (:meth:`Tree.backup`), then
    recomputes :func:`comp_value` bottom-up so each node's ``q`` is its comp value."""
    tree.backup(node, value)
    while True:
        node.value_sum = comp_value(tree, node) * node.visits
        if node.parent is None:
            return
        node = tree.nodes[node.parent]


@dataclass
class Searched:
    """What a round of search produced: the trees, and every complete response it sampled (tree
    leaves and rollout completions) as ``(prompt, response, outcome)``."""

    trees: list[Tree]
    samples: list[tuple[str, str, float]]


def search_trees(policy: LanguagePolicy, problems: list[str], simulations: int = 12, k: int = 3, batch: int = 4,
                 c: float = 2.0, base: int = 20, floor: int = 5, max_response_tokens: int = 48, seed: int = 0,
                 check: Check = check_answer) -> Searched:
    """Step-level MCTS (UCT with constant ``c``, ``k`` children per expansion, comp backup) on every
    problem side by side; finished answers are valued by ``check``, other nodes by rollouts."""
    samples: list[tuple[str, str, float]] = []

    def recorded(prompt: str, response: str) -> float:
        score = float(check(prompt, response))
        samples.append((prompt, response, score))
        return score

    trees = [Tree(p, ids) for p, ids in zip(problems, policy.encode(problems))]
    expander = Expander(policy, delimiter_steps(policy.tokenizer, "\n"), k=k, max_response_tokens=max_response_tokens,
                        seed=seed)
    value = First([Verifier(recorded), DepthRollouts(policy, recorded, base, floor, max_response_tokens, seed + 1)])
    mcts(trees, expander, value, simulations=simulations, rule=uct(c), batch=batch, backup=comp_backup)
    return Searched(trees, samples)


def correct_trajectories(trees: list[Tree], accept: float = 0.9) -> list[tuple[str, str]]:
    """``(prompt, response)`` of every finished leaf valued at least ``accept`` (MedS³'s bear ratio)."""
    return [(t.prompt, t.response_text(n)) for t in trees for n in t.nodes
            if n.finished and n.value is not None and n.value >= accept]


# -- PRM and ORM data -------------------------------------------------------------------------


def look_back(values: list[float], lam: float = 1.0) -> list[float]:
    """MedS³'s labels: ``v~_1 = v_1`` and ``v~_i = v_i - lam (v_{i-1} - v_i)``, clipped to [0, 1]."""
    out = values[:1] + [v - lam * (prev - v) for prev, v in zip(values[:-1], values[1:])]
    return [min(1.0, max(0.0, v)) for v in out]


def response_steps(response: str) -> list[str]:
    """A response cut into its lines, each keeping its newline (as the search's steps do)."""
    return re.findall(r"[^\n]*\n|[^\n]+$", response)


Row = tuple[list[int], list[int], list[int], list[float]]


def prm_rows(trees: list[Tree], tokenizer, lam: float = 1.0) -> list[Row]:
    """Every root-to-leaf path of the trees with its step values (each node's comp value) after
    :func:`look_back`: ``(prompt_ids, response_ids, step_ends, targets)``."""
    rows = []
    for tree in trees:
        for path in step_targets(tree, "q"):
            p, r, ends = encode_steps(tokenizer, path["prompt"], path["steps"])
            if len(ends) == len(path["steps"]):
                rows.append((p, r, ends, look_back(path["targets"], lam)))
    return rows


def orm_rows(samples: list[tuple[str, str, float]], tokenizer) -> list[Row]:
    """Every sampled complete response with its outcome as one target at its last token."""
    rows = []
    for prompt, response, outcome in samples:
        p, r, ends = encode_steps(tokenizer, prompt, response_steps(response))
        if ends:
            rows.append((p, r, ends[-1:], [outcome]))
    return rows


def fit_scorer(run: Run, stage: str, base: LanguagePolicy, rows: list[Row], cfg: OptimConfig,
               seed: int) -> ProcessRewardModel:
    """A process reward model on ``base``'s trunk with a new scalar head (initialised from ``seed``),
    fitted to ``rows`` (soft-label binary cross-entropy per step)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = scalar_head(copy.deepcopy(base.model), base.tokenizer.pad_token_id)
    prm = ProcessRewardModel(model, base.tokenizer, device=base.device)
    train_process_reward_model(run, stage, prm, rows, cfg, seed, quiet=True, loss="bce")
    prm.model.eval()
    return prm


# -- decoding -------------------------------------------------------------------------------


def step_probs(prm: ProcessRewardModel, prompts: list[str], responses: list[str]) -> list[list[float]]:
    """sigmoid of ``prm``'s score at the end of every line of every response."""
    enc = [encode_steps(prm.tokenizer, p, response_steps(r)) for p, r in zip(prompts, responses)]
    scores = prm.step_scores([e[0] for e in enc], [e[1] for e in enc], [e[2] or [-1] for e in enc])
    return [torch.tensor(s).sigmoid().tolist() for s in scores]


def aggregate(probs: list[float], how: str = "min") -> float:
    """One score per response from its step scores: ``min``, ``mean``, ``prod`` or ``last``."""
    if how not in AGGREGATES:
        raise ValueError(f"PRM aggregate must be one of {', '.join(AGGREGATES)}, got {how!r}")
    return {"min": min, "mean": lambda s: sum(s) / len(s), "prod": lambda s: float(np.prod(s)),
            "last": lambda s: s[-1]}[how](probs)


def answer_of(response: str) -> str:
    """The answer a response votes for: its last line, spaces removed."""
    return split_steps(response)[-1].replace(" ", "")


def vote_sum(responses: list[str], scores: list[float]) -> int:
    """P-VS: the index of the first response whose answer has the largest sum of scores."""
    totals: dict[str, float] = {}
    for r, s in zip(responses, scores):
        totals[answer_of(r)] = totals.get(answer_of(r), 0.0) + s
    best = max(totals.values())
    return next(i for i, r in enumerate(responses) if totals[answer_of(r)] == best)


def pick(prompts: list[str], candidates: list[list[str]], prm: ProcessRewardModel, rule: str,
         how: str = "min") -> list[str]:
    """The chosen response per prompt: ``rule="vote_sum"`` (P-VS on aggregated step scores),
    ``"best"`` (the highest aggregated score: best-of-N; an ORM's ``"last"`` is its outcome
    score) or ``"majority"`` (the most frequent answer; the scorer is not read)."""
    if rule not in ("vote_sum", "best", "majority"):
        raise ValueError(f"pick rule must be 'vote_sum', 'best' or 'majority', got {rule!r}")
    if rule == "majority":
        return [c[vote_sum(c, [1.0] * len(c))] for c in candidates]
    flat_p = [p for p, c in zip(prompts, candidates) for _ in c]
    probs = step_probs(prm, flat_p, [r for c in candidates for r in c])
    out, at = [], 0
    for c in candidates:
        scores = [aggregate(s, how) for s in probs[at : at + len(c)]]
        at += len(c)
        out.append(c[vote_sum(c, scores)] if rule == "vote_sum" else c[int(np.argmax(scores))])
    return out


# -- the method end to end ----------------------------------------------------------------------


@dataclass
class MedS3Config:
    """Sizes of a toy-scale run. ``problems`` training problems per self-evolution ``iterations``;
    search as in :func:`search_trees`; ``lam`` the look-back factor; SFT for ``sft_epochs`` passes over
    the correct trajectories (``sft.steps`` is ignored); the PRM and the ORM with ``reward``."""

    problems: int = 256
    iterations: int = 1
    simulations: int = 12
    k: int = 3
    batch: int = 4
    c: float = 2.0
    base: int = 20
    floor: int = 5
    max_response_tokens: int = 48
    lam: float = 1.0
    sft_epochs: int = 4
    sft: OptimConfig = field(default_factory=lambda: OptimConfig(batch_size=32, lr=3e-4,
                                                                 checkpoint_every=10**6))
    reward: OptimConfig = field(default_factory=lambda: OptimConfig(steps=200, batch_size=32, lr=1e-3,
                                                                    checkpoint_every=10**6))


@dataclass
class Evolved:
    """The self-evolved policy, its look-back PRM and the outcome RM trained on the same samples."""

    policy: LanguagePolicy
    prm: ProcessRewardModel
    orm: ProcessRewardModel
    stats: dict


def self_evolve(run: Run, policy: LanguagePolicy, task: ArithmeticTask, cfg: MedS3Config, seed: int = 0) -> Evolved:
    """MedS³ on ``task``'s training problems: ``cfg.iterations`` rounds of search then SFT on the
    correct trajectories (of a copy of ``policy``), then the PRM (step values, look-back) and the
    ORM (outcomes of every sampled complete response) from all rounds' searches. Training stages
    are named ``meds3_sft_<round>``, ``meds3_prm`` and ``meds3_orm`` in ``run``."""
    evolved = policy.copy()
    problems = task.prompts(cfg.problems * cfg.iterations, "train")
    trees: list[Tree] = []
    samples: list[tuple[str, str, float]] = []
    stats: dict = {"correct": [], "sampled": []}
    for it in range(cfg.iterations):
        found = search_trees(evolved, problems[it * cfg.problems : (it + 1) * cfg.problems], cfg.simulations, cfg.k,
                             cfg.batch, cfg.c, cfg.base, cfg.floor, cfg.max_response_tokens, seed + 100 * it)
        trees += found.trees
        samples += found.samples
        good = correct_trajectories(found.trees)
        stats["correct"].append(len(good))
        stats["sampled"].append(len(found.samples))
        if good:
            sft = replace(cfg.sft, steps=max(1, cfg.sft_epochs * len(good) // cfg.sft.batch_size))
            train_sft(run, f"meds3_sft_{it}", evolved, evolved.encode([p for p, _ in good]),
                      evolved.encode_responses([r for _, r in good]), sft, seed + it, quiet=True)
    evolved.model.eval()
    prm = fit_scorer(run, "meds3_prm", policy, prm_rows(trees, policy.tokenizer, cfg.lam), cfg.reward, seed)
    orm = fit_scorer(run, "meds3_orm", policy, orm_rows(samples, policy.tokenizer), cfg.reward, seed)
    stats["generations"] = sum(t.compute.generations + t.compute.rollouts for t in trees)
    return Evolved(evolved, prm, orm, stats)


# -- the search lab ---------------------------------------------------------------------------

_PREPARED: dict[tuple, Evolved] = {}


def lab_prepare(setup: TaskSetup, run: Run, seed: int) -> Evolved:
    """Self-evolve ``setup.policy`` on its task (``extras["task"]``, else ``ArithmeticTask(seed)``) with
    :class:`MedS3Config` (or ``extras["meds3"]``); both lab methods share one preparation per run."""
    key = (str(run.dir), id(setup.policy), seed)
    if key not in _PREPARED:
        task = setup.extras.get("task") or ArithmeticTask(seed=seed)
        _PREPARED[key] = self_evolve(run, setup.policy, task, setup.extras.get("meds3") or MedS3Config(), seed)
    return _PREPARED[key]


def _lab_search(rule: str, scorer: str, how: str):
    def search(setup: TaskSetup, prepared: Evolved, budget: int, seed: int) -> dict:
        cands = sample_responses(prepared.policy, setup.prompts, budget, seed,
                                 max_new_tokens=setup.extras.get("max_new_tokens", 48))
        chosen = pick(setup.prompts, cands, getattr(prepared, scorer), rule, how)
        check = setup.extras.get("check", check_answer)
        golds = [float(check(p, r)) for p, r in zip(setup.prompts, chosen)]
        return {"gold": float(np.mean(golds)), "generations": budget * len(setup.prompts), "per_prompt": golds}

    return search


LAB_METHOD = SearchMethod("meds3_pvs", _lab_search("vote_sum", "prm", "min"), lab_prepare)
"""MedS³: ``budget`` samples of the self-evolved policy per prompt, chosen by PRM vote-sum (min step score)."""
OUTCOME_BON = SearchMethod("outcome_bon", _lab_search("best", "orm", "last"), lab_prepare)
"""The same samples chosen by the outcome RM trained on the search's samples (best-of-N)."""
