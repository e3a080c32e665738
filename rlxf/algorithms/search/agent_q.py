"""Agent Q (Putta et al., 2024) on the arithmetic task: MCTS over worked lines, an AI critic
ranking each node's candidate lines, step-level preference pairs scored
``Q = alpha * Q_mcts + (1 - alpha) * Q_critic``, and off-policy DPO on them, iterated.

The paper's web page and history ``h_t`` is the problem plus the lines written so far; an action
is the next line; the sparse reward is the verifier on a rollout that the current policy
completes. The critic is any :class:`rlxf.labelers.roles.TextModel`, asked once per node to rank
that node's candidate lines (:class:`SimulatedRole` from gold with an error rate in tests; an
:class:`LMRole` works the same way). DPO's reference is the policy that sampled the data: its
per-token log-probs are logged in the tree when the steps are sampled, so no reference model runs
while training, and each iteration's policy is the next iteration's reference.
The baseline, :func:`outcome_pairs`, is trajectory-level DPO: whole responses that reach the right
answer preferred over those that do not.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from itertools import product

import torch

from rlxf.algorithms.loop import OptimConfig
from rlxf.algorithms.offline_preference import train_pairs
from rlxf.core.runs import Run
from rlxf.lab.rlvr import sample_responses
from rlxf.labelers.roles import SimulatedRole, TextModel
from rlxf.objectives.preference import dpo_loss, rpo_mean_loss
from rlxf.policies.language import LanguagePolicy
from rlxf.search import (Compute, Expander, First, Node, Rollouts, StepSplit, Tree, Verifier, delimiter_steps,
                         evaluate, mcts, step_pairs, uct)
from rlxf.search.expand import Item
from rlxf.tasks.arithmetic import check_answer, check_steps, split_steps

END = "<end>"  # how a step that ends the response without writing anything is shown to the critic
_REQUEST = re.compile(r"^Problem: (?P<problem>.*)\nWork so far:\n(?P<work>(?:.*\n)*?)Candidate next lines:\n"
                      r"(?P<cands>(?:\d+\. .*\n)+)Rank", re.M)


# -- the critic -------------------------------------------------------------------------------


def rank_request(problem: str, work: str, candidates: list[str]) -> str:
    """The critic's prompt: the problem, the lines so far and the numbered candidate next lines."""
    lines = "".join(f"{i}. {c.strip() or END}\n" for i, c in enumerate(candidates, 1))
    work = "".join(f"{line}\n" for line in split_steps(work) if line)
    return (f"Problem: {problem}\nWork so far:\n{work}Candidate next lines:\n{lines}"
            "Rank the candidates from best to worst: their numbers separated by commas, equally good ones "
            "joined by =, e.g. 2,1=3.")


def parse_request(request: str) -> tuple[str, list[str], list[str]]:
    """``(problem, work lines, candidate lines)`` of a :func:`rank_request` prompt."""
    m = _REQUEST.match(request)
    if m is None:
        raise ValueError(f"not an Agent Q ranking request (see rank_request): {request[:80]!r}")
    cands = [line.split(". ", 1)[1] for line in m["cands"].splitlines()]
    return m["problem"], m["work"].splitlines(), cands


def gold_ranking(request: str) -> str:
    """A perfect critic's reply: candidates that keep every line so far right, then those whose own
    line is right, then the rest; candidates of equal worth are tied (joined by ``=``)."""
    problem, work, cands = parse_request(request)

    def worth(c: str) -> int:
        lines = work if c == END else work + [c]
        labels = check_steps(problem, "\n".join(lines)) if lines else [False]
        done = c == END or c.replace(" ", "").startswith("answer:")
        ok = all(labels) and (not done or check_answer(problem, "\n".join(lines)))
        return 2 * ok + (ok if c == END else labels[-1])

    tiers = {}
    for i, c in enumerate(cands):
        tiers.setdefault(worth(c), []).append(str(i + 1))
    return ",".join("=".join(tiers[w]) for w in sorted(tiers, reverse=True))


def shuffled_ranking(request: str, reply: str, rng: random.Random) -> str:
    """A wrong reply: the candidates in a random strict order."""
    order = re.findall(r"\d+", reply)
    rng.shuffle(order)
    return ",".join(order)


def simulated_critic(error: float = 0.3, seed: int = 0) -> SimulatedRole:
    """A critic that ranks from gold, except that a share ``error`` of its rankings are shuffled."""
    return SimulatedRole(right=gold_ranking, wrong=shuffled_ranking, error=error, seed=seed)


def parse_ranking(reply: str, m: int) -> list[list[int]]:
    """Tiers of candidate indices (0-based), best first, from a reply such as ``"2,1=3"`` (``=``
    ties): the numbers 1..m in the order the reply names them; candidates it leaves out share a
    last tier (so any reply parses)."""
    tiers, seen = [], set()
    for part in reply.split(","):
        tier = [int(x) - 1 for x in re.findall(r"\d+", part) if 1 <= int(x) <= m and int(x) - 1 not in seen]
        seen.update(tier)
        if tier:
            tiers.append(list(dict.fromkeys(tier)))
    rest = [i for i in range(m) if i not in seen]
    return tiers + ([rest] if rest else [])


def rank_values(tiers: list[list[int]]) -> dict[int, float]:
    """Each candidate's process value from its rank among ``m``: 1 for the best down to 0 for the
    worst, evenly; tied candidates share the mean of their places; a lone candidate gets 0.5 (it
    was compared with nothing)."""
    m = sum(len(t) for t in tiers)
    out, place = {}, 0
    for tier in tiers:
        mean = sum(1.0 - p / (m - 1) if m > 1 else 0.5 for p in range(place, place + len(tier))) / len(tier)
        out.update(dict.fromkeys(tier, mean))
        place += len(tier)
    return out


@dataclass
class CriticRank:
    """An evaluator (:mod:`rlxf.search.values`) that asks ``critic`` to rank each parent's new
    children in one request per parent (all requests of a call in one batch) and values each child
    by its rank (:func:`rank_values`)."""

    critic: TextModel
    source: str = "critic"

    def __call__(self, items: list[Item]) -> list[float]:
        groups: dict[tuple[int, int], list[int]] = {}
        for i, (tree, node) in enumerate(items):
            groups.setdefault((id(tree), node.parent), []).append(i)
        requests = []
        for idx in groups.values():
            tree, first = items[idx[0]]
            parent = tree.nodes[first.parent]
            requests.append(rank_request(tree.prompt, tree.response_text(parent), [items[i][1].text for i in idx]))
        values: list[float] = [0.0] * len(items)
        for idx, reply in zip(groups.values(), self.critic.complete(requests)):
            for j, v in rank_values(parse_ranking(reply, len(idx))).items():
                values[idx[j]] = v
        return values


# -- collecting pairs ---------------------------------------------------------------------------


@dataclass
class AgentQConfig:
    """One Agent Q run. Per iteration: MCTS on ``prompts`` training problems (``simulations``
    selected leaves per tree, ``k`` sampled candidate lines per expansion, ``rollouts`` rollouts
    valuing each new node, UCB1 with ``c``), pairs of siblings whose ``alpha * Q_mcts + (1 - alpha) *
    Q_critic`` differ by at least ``min_gap``, then DPO (``beta``; ``nll`` > 0 adds the chosen
    line's NLL, RPO; ``optim``). The paper gives no values: these are ours. Plain DPO at lr 1e-3
    collapsed the small prover (gold 0.29 -> 0.01); DPO + NLL at lr 3e-4 keeps it near its level."""

    iterations: int = 2
    prompts: int = 256
    k: int = 4
    simulations: int = 4
    batch: int = 2
    rollouts: int = 1
    c: float = 1.0
    alpha: float = 0.5
    min_gap: float = 0.25
    beta: float = 0.1
    nll: float = 1.0
    max_response_tokens: int = 48
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(steps=80, batch_size=32, lr=3e-4,
                                                                     checkpoint_every=10**6))


@dataclass
class Batch:
    """Preference pairs (prompt ids, chosen ids, rejected ids) and the behaviour policy's logged
    per-token log-probs of each chosen and rejected response (off-policy DPO's reference)."""

    pairs: list = field(default_factory=list)
    ref_chosen: list = field(default_factory=list)
    ref_rejected: list = field(default_factory=list)

    def add(self, prompt: list[int], chosen: tuple[list[int], list[float]], rejected: tuple[list[int], list[float]]):
        self.pairs.append((list(prompt), list(chosen[0]), list(rejected[0])))
        self.ref_chosen.append(torch.tensor(chosen[1]))
        self.ref_rejected.append(torch.tensor(rejected[1]))


def tree_pairs(tree: Tree, batch: Batch, min_gap: float, alpha: float) -> None:
    """Add the tree's step-level pairs (:func:`rlxf.search.step_pairs`): the prefix before the two
    sibling lines is the prompt; each line's logged log-probs are its reference."""
    for row in step_pairs(tree, min_gap, alpha):
        w, lose = tree.nodes[row["chosen_node"]], tree.nodes[row["rejected_node"]]
        batch.add(tree.prefix_ids(tree.nodes[row["node"]]), (w.ids, w.logps), (lose.ids, lose.logps))


def critique(trees: list[Tree], critic: TextModel) -> None:
    """Set every expanded node's children's ``value`` to the critic's rank value (source ``critic``);
    their backed-up ``q`` (the MCTS value) is left as it is."""
    items = [(t, c) for t in trees for n in t.nodes if n.children for c in t.children(n)]
    evaluate(items, CriticRank(critic))


def search_trees(policy: LanguagePolicy, prompts: list[str], cfg: AgentQConfig, seed: int) -> list[Tree]:
    """MCTS with the verifier on finished lines and rollouts by ``policy`` elsewhere (the training
    reward), all trees side by side."""
    trees = [Tree(p, ids) for p, ids in zip(prompts, policy.encode(prompts))]
    expander = Expander(policy, delimiter_steps(policy.tokenizer, "\n"), k=cfg.k,
                        max_response_tokens=cfg.max_response_tokens, seed=seed)
    value = First([Verifier(check_answer), Rollouts(policy, check_answer, n=cfg.rollouts,
                                                    max_new_tokens=cfg.max_response_tokens, seed=seed + 1)])
    return mcts(trees, expander, value, simulations=cfg.simulations, rule=uct(cfg.c), batch=cfg.batch)


def step_level_pairs(policy: LanguagePolicy, prompts: list[str], critic: TextModel, cfg: AgentQConfig,
                     seed: int) -> tuple[Batch, Compute, list[Tree]]:
    """Agent Q's data for one iteration: search, critique, pairs; and what the search spent."""
    trees = search_trees(policy, prompts, cfg, seed)
    critique(trees, critic)
    batch = Batch()
    for tree in trees:
        tree_pairs(tree, batch, cfg.min_gap, cfg.alpha)
    return batch, total_compute(trees), trees


def total_compute(trees: list[Tree]) -> Compute:
    out = Compute()
    for t in trees:
        for name in Compute.__dataclass_fields__:
            setattr(out, name, getattr(out, name) + getattr(t.compute, name))
    return out


def outcome_pairs(policy: LanguagePolicy, prompts: list[str], forward_tokens: int, seed: int, per_round: int = 2,
                  max_new_tokens: int = 48) -> tuple[Batch, Compute]:
    """The baseline's data: rounds of ``per_round`` responses per prompt until the sampling has
    spent ``forward_tokens`` policy forward tokens (prefill plus sampled), then every (right
    answer, wrong answer) pair of responses to the same prompt."""
    ids = policy.encode(prompts)
    gen = torch.Generator(device=policy.device).manual_seed(seed)
    spent = Compute()
    done: list[list[tuple[list[int], list[float], bool]]] = [[] for _ in prompts]
    while spent.forward_tokens < forward_tokens:
        ro = policy.sample(ids, n=per_round, max_new_tokens=max_new_tokens, generator=gen)
        logps = ro.steps.logps.tolist()
        spent.sample_calls += 1
        spent.generations += len(ro.response_ids)
        spent.prefill_tokens += sum(len(p) for p in ids)
        spent.sampled_tokens += sum(len(r) for r in ro.response_ids)
        for r, resp in enumerate(ro.response_ids):
            ok = check_answer(prompts[r // per_round], policy.decode(resp))
            done[r // per_round].append((resp, logps[r][: len(resp)], ok))
    batch = Batch()
    for p, samples in zip(ids, done):
        for (w, lw, _), (lo, ll, _) in product([s for s in samples if s[2]], [s for s in samples if not s[2]]):
            batch.add(p, (w, lw), (lo, ll))
    return batch, spent


def offline_dpo(run: Run, stage: str, policy: LanguagePolicy, batch: Batch, beta: float, optim: OptimConfig,
                seed: int, nll: float = 0.0) -> None:
    """DPO on ``batch`` with its logged log-probs as the reference (no reference model runs); with
    ``nll > 0`` plus ``nll`` times the chosen response's token-averaged NLL (RPO, Pang et al. 2024)."""
    loss, kwargs = (rpo_mean_loss, {"beta": beta, "alpha": nll}) if nll > 0 else (dpo_loss, {"beta": beta})
    train_pairs(run, stage, policy, None, batch.pairs, loss, kwargs, optim, seed, quiet=True,
                ref_logps=(batch.ref_chosen, batch.ref_rejected))


def train_agent_q(run: Run, policy: LanguagePolicy, prompts: list[str], critic: TextModel, cfg: AgentQConfig,
                  seed: int = 0) -> list[dict]:
    """Agent Q's loop (its Algorithm 1): per iteration, step-level pairs from MCTS on the next
    ``cfg.prompts`` of ``prompts`` with the current policy, then off-policy DPO (the current
    policy is the reference). Trains ``policy`` in place; returns per iteration the pairs and the
    search's compute (``forward_tokens``, ``generations`` = sampled lines + rollouts)."""
    log = []
    for it in range(cfg.iterations):
        part = iteration_prompts(prompts, cfg.prompts, it)
        batch, spent, _ = step_level_pairs(policy, part, critic, cfg, seed + 1000 * it)
        if batch.pairs:
            offline_dpo(run, f"agent_q_{it}", policy, batch, cfg.beta, cfg.optim, seed + it, cfg.nll)
        log.append({"pairs": len(batch.pairs), "forward_tokens": spent.forward_tokens,
                    "generations": spent.generations + spent.rollouts})
    return log


def train_outcome_dpo(run: Run, policy: LanguagePolicy, prompts: list[str], budgets: list[int], cfg: AgentQConfig,
                      seed: int = 0) -> list[dict]:
    """The baseline's loop: as :func:`train_agent_q` but with :func:`outcome_pairs` spending
    ``budgets[it]`` policy forward tokens in iteration ``it`` (Agent Q's spend, for equal compute)."""
    log = []
    for it, budget in enumerate(budgets):
        part = iteration_prompts(prompts, cfg.prompts, it)
        batch, spent = outcome_pairs(policy, part, budget, seed + 1000 * it,
                                     max_new_tokens=cfg.max_response_tokens)
        if batch.pairs:
            offline_dpo(run, f"outcome_dpo_{it}", policy, batch, cfg.beta, cfg.optim, seed + it, cfg.nll)
        log.append({"pairs": len(batch.pairs), "forward_tokens": spent.forward_tokens,
                    "generations": spent.generations})
    return log


def iteration_prompts(prompts: list[str], n: int, it: int) -> list[str]:
    """Iteration ``it``'s ``n`` training prompts (fresh ones each iteration)."""
    part = prompts[it * n : (it + 1) * n]
    if len(part) < n:
        raise ValueError(f"Agent Q: iteration {it} needs prompts {it * n}..{(it + 1) * n - 1}, "
                         f"but only {len(prompts)} training prompts were given")
    return part


# -- evaluation and the lab ------------------------------------------------------------------------


@torch.no_grad()
def gold_per_prompt(policy: LanguagePolicy, problems: list[str], n: int = 4, seed: int = 0,
                    max_new_tokens: int = 48) -> list[float]:
    """Per problem, the share of ``n`` samples at temperature 1 with the exact answer."""
    groups = sample_responses(policy, problems, n, seed, max_new_tokens=max_new_tokens)
    return [sum(check_answer(p, t) for t in g) / n for p, g in zip(problems, groups)]


def most_visited(tree: Tree) -> Node:
    """The end of the path that follows, from the root, the most visited child (then the best valued)."""
    node = tree.root
    while node.children:
        node = max(tree.children(node), key=lambda n: (n.visits, n.value or 0.0))
    return node


def critic_search(policy: LanguagePolicy, prompts: list[str], critic: TextModel, simulations: int, seed: int,
                  k: int = 4, c: float = 1.0, max_new_tokens: int = 48) -> tuple[list[Tree], list[Node]]:
    """Agent Q + MCTS at test time: MCTS whose nodes the critic values (no verifier), then per tree
    the most visited path, completed by one sample from ``policy`` where it stops short of an answer."""
    trees = [Tree(p, ids) for p, ids in zip(prompts, policy.encode(prompts))]
    expander = Expander(policy, delimiter_steps(policy.tokenizer, "\n"), k=k, max_response_tokens=max_new_tokens,
                        seed=seed)
    mcts(trees, expander, CriticRank(critic), simulations=simulations, rule=uct(c), batch=2)
    ends = [most_visited(t) for t in trees]
    rest = Expander(policy, StepSplit((), max_new_tokens), k=1, max_response_tokens=max_new_tokens, seed=seed + 1)
    done = {id(t): n for t, n in rest.expand([(t, n) for t, n in zip(trees, ends) if not n.terminal])}
    return trees, [done.get(id(t), n) for t, n in zip(trees, ends)]


LAB_CONFIG = AgentQConfig()
"""The lab's training: two iterations of 256 train problems each (see :class:`AgentQConfig`)."""
LAB_CRITIC_ERROR = 0.3  # the simulated critic's error rate, in training and at test time


def lab_prepare(setup, run: Run, seed: int) -> LanguagePolicy:
    """Agent Q training of a copy of the task's prover on its train problems."""
    policy = setup.policy.copy()
    prompts = setup.extras["task"].prompts(LAB_CONFIG.prompts * LAB_CONFIG.iterations, "train")
    train_agent_q(run, policy, prompts, simulated_critic(LAB_CRITIC_ERROR, seed), LAB_CONFIG, seed)
    policy.model.eval()
    return policy


def lab_search(setup, prepared: LanguagePolicy, budget: int, seed: int) -> dict:
    from rlxf.lab.search import outcome

    trees, picks = critic_search(prepared, setup.prompts, simulated_critic(LAB_CRITIC_ERROR, seed + 7), budget, seed,
                                 max_new_tokens=setup.extras.get("max_new_tokens", 48))
    return outcome(trees, picks, setup.extras["check"])


def _method():
    from rlxf.lab.search import SearchMethod

    return SearchMethod("agent_q", lab_search, lab_prepare)


LAB_METHOD = _method()
"""Agent Q in the search lab: ``prepare`` trains the task's prover with :func:`train_agent_q`
(:data:`LAB_CONFIG`, critic error 0.3); ``search`` is :func:`critic_search` with ``budget``
MCTS simulations per problem (4 sampled lines per expansion), valued by a simulated critic of
error 0.3 (no verifier); ``generations`` counts sampled lines and the final completions."""
