"""Agent-R (Yuan et al., 2025, "Agent-R: Training Language Model Agents to Reflect via Iterative
Self-Training") on the arithmetic task.

Each iteration searches training problems with MCTS from the current model (values: the training
signal :func:`solved`, gold's right answer by valid steps, on finished answers, and one rollout
judged by it elsewhere), then walks each tree into two kinds of SFT rows:

- *revision trajectories* (:func:`rlxf.search.revisions`): a bad path up to its first bad step, as
  a step critic judges it, then the reflection marker :data:`MARKER`, then a good path's steps from
  the two paths' common ancestor. The bad prefix is context (no loss); the marker and the good
  continuation take the loss;
- *good trajectories*: distinct correct answers, whole.

and fine-tunes the model on them (:func:`rlxf.algorithms.sft.train_sft`); the next iteration
searches with the updated model. The baseline (``revise=False``) is the same loop on good
trajectories only, with the same optimiser steps and batch size. :func:`recovery` measures the
claim: after a wrong step injected into the prefix (:func:`rlxf.tasks.arithmetic.corrupt`), how
often the model still ends with the right answer.

The paper's critic is the actor itself labelling each step of the bad path Good/Bad/Uncertain; the
tiny arithmetic model cannot answer questions, so the critic here is a :class:`SimulatedRole` that
labels a step from ``check_steps`` and is wrong with probability ``critic_error``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch

from rlxf.algorithms.loop import OptimConfig
from rlxf.algorithms.sft import train_sft
from rlxf.core.runs import Run
from rlxf.labelers.roles import SimulatedRole
from rlxf.policies.language import LanguagePolicy
from rlxf.search import Expander, First, Rollouts, Tree, Verifier, delimiter_steps, mcts, revisions, uct
from rlxf.tasks.arithmetic import check_answer, check_steps, corrupt, solve, split_steps

# The reflection marker, one line written in the arithmetic tokenizer's alphabet (rlxf.lab.rlvr.ALPHABET):
# it takes back what came since the step the revision restarts from.
MARKER = "::\n"
GOOD, BAD = "Good", "Bad"


@dataclass
class AgentRConfig:
    """One self-training run: ``iterations`` rounds of MCTS on ``prompts_per_iteration`` new
    training problems (``simulations`` selected leaves per tree, ``k`` samples per expansion,
    ``rollouts`` completions per new node, UCT constant ``c``: the paper's code uses 0.25, 1.0 here
    explores more failed branches) and SFT for
    ``sft.steps`` steps. Per tree at most ``revisions_per_tree`` revision and ``good_per_tree``
    good rows; ``min_gap``: the least value gap between a good and a bad path; ``cut``: where a
    bad path is spliced (``"first_bad"`` by the critic, or ``"end"``);
    ``demos_per_iteration`` demonstrations join each iteration's rows (the paper's general data)."""

    iterations: int = 2
    prompts_per_iteration: int = 256
    simulations: int = 16
    k: int = 4
    batch: int = 8
    rollouts: int = 1
    c: float = 1.0
    max_response_tokens: int = 48
    revisions_per_tree: int = 4
    good_per_tree: int = 2
    min_gap: float = 0.5
    critic_error: float = 0.1
    cut: str = "first_bad"
    demos_per_iteration: int = 256
    sft: OptimConfig = field(default_factory=lambda: OptimConfig(steps=120, batch_size=32, lr=1e-3, warmup_steps=10,
                                                                  checkpoint_every=10**6))


def resolve(response: str) -> str:
    """The response as its writer means it: each marker line takes back itself and the line before it."""
    lines: list[str] = []
    for line in response.split("\n"):
        if line.strip() == MARKER.strip():
            lines = lines[:-1]
        else:
            lines.append(line)
    return "\n".join(lines)


def _split_request(request: str) -> tuple[str, str]:
    """A critic request is ``problem`` (ending at its ``=``) followed by the response so far."""
    at = request.find("=")
    if at < 0:
        raise ValueError(f"step critic: request {request[:40]!r} has no '=' closing the problem")
    return request[: at + 1], request[at + 1 :]


def judge_last_step(request: str) -> str:
    """The gold label of the response's last step: Good when ``check_steps`` accepts it."""
    problem, response = _split_request(request)
    text = resolve(response).strip()
    return GOOD if not text or check_steps(problem, text)[-1] else BAD


def step_critic(error: float = 0.1, seed: int = 0) -> SimulatedRole:
    """The critic that finds the first bad step: gold step labels, flipped with probability ``error``."""
    return SimulatedRole(right=judge_last_step, wrong=lambda _req, label, _rng: BAD if label == GOOD else GOOD,
                         error=error, seed=seed)


def solved(problem: str, response: str) -> bool:
    """The training signal: the right answer reached by valid steps (revisions resolved), so that a
    right answer from wrong steps is not learned as a good path."""
    text = resolve(response).strip()
    return bool(text) and check_answer(problem, text) and all(check_steps(problem, text))


def search_trees(policy: LanguagePolicy, prompts: list[str], cfg: AgentRConfig, seed: int = 0) -> list[Tree]:
    """MCTS from ``policy`` on each prompt, all trees side by side (one sampling call per round)."""
    trees = [Tree(p, ids) for p, ids in zip(prompts, policy.encode(prompts))]
    expander = Expander(policy, delimiter_steps(policy.tokenizer, "\n"), k=cfg.k,
                        max_response_tokens=cfg.max_response_tokens, seed=seed)
    value = First([Verifier(solved),
                   Rollouts(policy, solved, n=cfg.rollouts, max_new_tokens=cfg.max_response_tokens, seed=seed)])
    was_training = policy.model.training
    policy.model.eval()
    mcts(trees, expander, value, simulations=cfg.simulations, rule=uct(cfg.c), batch=cfg.batch)
    policy.model.train(was_training)
    return trees


def bad_steps(tree: Tree, critic: SimulatedRole) -> set[int]:
    """The ids of the tree's steps the critic calls bad (one batched request, a step per request)."""
    nodes = tree.nodes[1:]
    labels = critic.complete([tree.prompt + tree.response_text(n) for n in nodes]) if nodes else []
    return {n.id for n, label in zip(nodes, labels) if label == BAD}


def revision_rows(tree: Tree, flagged: set[int], limit: int, rng: random.Random, min_gap: float = 0.5,
                  cut: str = "first_bad") -> list[dict]:
    """Up to ``limit`` distinct revision rows ``{prompt, prefix, completion}`` of ``tree``: a bad
    path (a wrong answer, or an unexpanded step whose rollouts failed) cut at its first step in
    ``flagged``; a path without a flagged step gives none. ``cut="end"`` (the paper's "direct
    revision" ablation) splices after the whole bad path instead. A prefix that ends in a finished
    answer line gets a newline, so the marker starts a line of its own."""
    rows = revisions(tree, MARKER, good_min=1.0, min_gap=min_gap, cut=cut,
                     is_bad=lambda _t, n: n.id in flagged, partial=True)
    unique = list({(r["prefix"], r["completion"]): r for r in rows
                   if cut == "end" or r["cut"] in flagged}.values())
    out = []
    for r in rng.sample(unique, min(limit, len(unique))):
        prefix = r["prefix"] if r["prefix"].endswith("\n") else r["prefix"] + "\n"
        out.append({"prompt": r["prompt"], "prefix": prefix, "completion": r["completion"]})
    return out


def good_rows(tree: Tree, limit: int, rng: random.Random) -> list[dict]:
    """Up to ``limit`` distinct correct (value 1) finished responses of ``tree``, whole."""
    texts = sorted({tree.response_text(n) for n in tree.nodes if n.finished and n.value is not None and n.value >= 1})
    return [{"prompt": tree.prompt, "prefix": "", "completion": t} for t in rng.sample(texts, min(limit, len(texts)))]


def sft_ids(policy: LanguagePolicy, rows: list[dict]) -> tuple[list[list[int]], list[list[int]]]:
    """Prompt ids (problem and prefix: no loss) and response ids (completion and EOS: the loss) per row."""
    return (policy.encode([r["prompt"] + r["prefix"] for r in rows]),
            policy.encode_responses([r["completion"] for r in rows]))


def self_train(run: Run, policy: LanguagePolicy, prompts: list[str], cfg: AgentRConfig, revise: bool = True,
               seed: int = 0, name: str = "agent_r", demos: list[dict] = ()) -> list[dict]:
    """Iterative self-training of ``policy`` in place on ``cfg.iterations`` slices of ``prompts``
    (and of ``demos``, ``{prompt, completion}`` rows mixed in as they are); with ``revise=False``
    it trains on good trajectories only (the baseline). Returns per iteration: the good and
    revision rows made, the search's generations (sampled steps and rollouts) and forward tokens,
    the critic's requests so far, and the trained (loss) tokens (steps x batch x mean completion)."""
    for what, have, per in (("prompts", prompts, cfg.prompts_per_iteration), ("demos", demos, cfg.demos_per_iteration)):
        if len(have) < cfg.iterations * per:
            raise ValueError(f"self_train: {cfg.iterations} iterations x {per} {what} need "
                             f"{cfg.iterations * per} training {what}, got {len(have)}")
    rng = random.Random(f"agent_r|{seed}")
    critic = step_critic(cfg.critic_error, seed)
    history = []
    for it in range(cfg.iterations):
        chunk = prompts[it * cfg.prompts_per_iteration : (it + 1) * cfg.prompts_per_iteration]
        trees = search_trees(policy, chunk, cfg, seed=seed * 1000 + it)
        good = [r for t in trees for r in good_rows(t, cfg.good_per_tree, rng)]
        revs = [r for t in trees if revise
                for r in revision_rows(t, bad_steps(t, critic) if cfg.cut == "first_bad" else set(),
                                       cfg.revisions_per_tree, rng, cfg.min_gap, cfg.cut)]
        general = [{"prompt": d["prompt"], "prefix": "", "completion": d["completion"]}
                   for d in demos[it * cfg.demos_per_iteration : (it + 1) * cfg.demos_per_iteration]]
        rows = good + revs + general
        if not rows:
            raise ValueError(f"self_train iteration {it}: the trees hold no correct answer to train on; "
                             "use a policy that solves some problems or more simulations")
        prompt_ids, response_ids = sft_ids(policy, rows)
        train_sft(run, f"{name}_{it}", policy, prompt_ids, response_ids, cfg.sft, seed + it, quiet=True)
        history.append({"iteration": it, "good": len(good), "revisions": len(revs),
                        "generations": sum(t.compute.generations + t.compute.rollouts for t in trees),
                        "forward_tokens": sum(t.compute.forward_tokens for t in trees),
                        "critic_requests": critic.requests,
                        "trained_tokens": cfg.sft.steps * cfg.sft.batch_size * sum(map(len, response_ids))
                        // len(response_ids)})
    policy.model.eval()
    return history


def injected_prefix(problem: str, rng: random.Random) -> str:
    """The canonical solution of ``problem`` with one wrong step (:func:`corrupt`), up to and
    including that step, ending in a newline."""
    lines = split_steps(corrupt(problem, solve(problem), rng))
    first_bad = check_steps(problem, "\n".join(lines)).index(False)
    return "\n".join(lines[: first_bad + 1]) + "\n"


@torch.no_grad()
def recovery(policy: LanguagePolicy, problems: list[str], seed: int = 0, max_new_tokens: int = 64,
             inject: bool = True) -> list[bool]:
    """Per problem: does the model's greedy continuation of the problem (after an injected wrong step
    when ``inject``) end with the right answer? Same injections for the same ``seed``."""
    rng = random.Random(f"agent_r|inject|{seed}")
    prefixes = [injected_prefix(p, rng) if inject else "" for p in problems]
    was_training = policy.model.training
    policy.model.eval()
    ro = policy.sample(policy.encode([p + x for p, x in zip(problems, prefixes)]), n=1,
                       max_new_tokens=max_new_tokens, temperature=1e-4, generator=torch.Generator().manual_seed(seed))
    policy.model.train(was_training)
    return [check_answer(p, x + policy.decode(r)) for p, x, r in zip(problems, prefixes, ro.response_ids)]
