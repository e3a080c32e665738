"""Expansion: sample ``k`` next steps for many nodes in one sampling call.

Every node's prefix (prompt plus its response so far) is one prompt of a single
:meth:`LanguagePolicy.sample` call with ``n = k``: each prefix is prefilled once and its key/value
cache shared by its ``k`` samples, and all nodes of a tree level (of any number of trees) decode
together. A step ends at a delimiter token (kept in the step) or at EOS, or after
``max_tokens``; per-token search is the special case of one token per step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from rlxf.policies.language import LanguagePolicy
from rlxf.search.tree import Node, Tree, count_call

Item = tuple[Tree, Node]


@dataclass(frozen=True)
class StepSplit:
    """Where a step ends: after any of ``stop_ids``, at EOS, or after ``max_tokens`` tokens."""

    stop_ids: tuple[int, ...]
    max_tokens: int


def delimiter_steps(tokenizer, delimiter: str = "\n", max_tokens: int = 16) -> StepSplit:
    """Steps end at any token whose text contains ``delimiter`` (BPE vocabularies merge newlines
    into other tokens, so one id is not enough)."""
    if not delimiter:
        raise ValueError("step delimiter must be a non-empty string")
    special = set(tokenizer.all_special_ids)
    stops = tuple(i for i in range(len(tokenizer))
                  if i not in special and delimiter in tokenizer.decode([i]))
    if not stops:
        raise ValueError(f"step delimiter {delimiter!r}: no token of the tokenizer contains it")
    return StepSplit(stops, max_tokens)


def token_steps() -> StepSplit:
    """One token per step (token-level search, e.g. implicit-reward beam search)."""
    return StepSplit((), 1)


def sample_items(policy: LanguagePolicy, items: list[Item], n: int, max_new_tokens: int, generator: torch.Generator,
                 temperature: float = 1.0, top_p: float = 1.0, stop_ids: tuple[int, ...] = ()):
    """``n`` continuations of each item's prefix in one sampling call (item i's are rows i*n..),
    charged to the items' trees: one call per tree, each prefix's prefill and the sampled tokens."""
    prefixes = [t.prefix_ids(node) for t, node in items]
    ro = policy.sample(prefixes, n=n, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                       generator=generator, stop_ids=stop_ids)
    count_call(items)
    for i, (tree, _) in enumerate(items):
        tree.compute.prefill_tokens += len(prefixes[i])
        tree.compute.sampled_tokens += sum(len(r) for r in ro.response_ids[i * n : (i + 1) * n])
    return ro


@dataclass
class Expander:
    """Samples ``k`` steps per node from ``policy``; identical samples of a node merge into one
    child (its ``count``). Each child's ``prior`` is its step probability normalised over its
    siblings, the policy prior of PUCT. A response reaching ``max_response_tokens`` is terminal."""

    policy: LanguagePolicy
    steps: StepSplit
    k: int = 4
    temperature: float = 1.0
    top_p: float = 1.0
    max_response_tokens: int = 64
    seed: int = 0
    generator: torch.Generator = field(init=False, repr=False)

    def __post_init__(self):
        if self.k < 1:
            raise ValueError(f"Expander.k must be >= 1, got {self.k}")
        self.generator = torch.Generator(device=self.policy.device).manual_seed(self.seed)

    def expand(self, items: list[Item]) -> list[Item]:
        """Expand every (tree, node) of ``items`` in one sampling call; returns the new children."""
        items = [(t, n) for t, n in items if not n.terminal]
        if not items:
            return []
        ro = sample_items(self.policy, items, self.k, self.steps.max_tokens, self.generator, self.temperature,
                          self.top_p, self.steps.stop_ids)
        logps = ro.steps.logps.tolist()
        out: list[Item] = []
        for i, (tree, node) in enumerate(items):
            rows = range(i * self.k, (i + 1) * self.k)
            tree.compute.generations += self.k
            steps = [(ro.response_ids[r], logps[r][: len(ro.response_ids[r])], ro.finished[r]) for r in rows]
            out += add_children(tree, node, steps, self.policy.decode, self.max_response_tokens)
        return out


def add_children(tree: Tree, node: Node, steps: list[tuple[list[int], list[float], bool]], decode,
                 max_response_tokens: int) -> list[Item]:
    """Add each ``(ids, logps, finished)`` step under ``node`` (repeats merge into one child's
    ``count``); priors are the step probabilities normalised over the new children."""
    done = len(tree.response_ids(node))
    children: dict[tuple[int, ...], Node] = {}
    for ids, logps, finished in steps:
        if tuple(ids) in children:
            children[tuple(ids)].count += 1
            continue
        children[tuple(ids)] = tree.add(node, ids=list(ids), text=decode(ids), logps=list(logps), finished=finished,
                                        terminal=finished or done + len(ids) >= max_response_tokens)
    kids = list(children.values())
    top = max(k.logp for k in kids)
    z = sum(math.exp(k.logp - top) for k in kids)
    for kid in kids:
        kid.prior = math.exp(kid.logp - top) / z
    return [(tree, kid) for kid in kids]


@dataclass
class TopTokens:
    """Deterministic token-level expansion: each node's ``k`` most likely next tokens, from one
    batched forward over all nodes' prefixes (the proposals of classic beam search; with
    :class:`rlxf.search.values.ImplicitReward` it is From r to Q*'s beam search)."""

    policy: LanguagePolicy
    k: int = 4
    max_response_tokens: int = 64

    def expand(self, items: list[Item]) -> list[Item]:
        items = [(t, n) for t, n in items if not n.terminal]
        if not items:
            return []
        prefixes = [t.prefix_ids(n) for t, n in items]
        eos = self.policy.tokenizer.eos_token_id
        was_training = self.policy.model.training
        self.policy.model.eval()
        with torch.no_grad():  # a one-token dummy response: its logits are the next-token distribution
            logits, _, _ = self.policy.logits(prefixes, [[eos]] * len(prefixes))
        self.policy.model.train(was_training)
        best = logits[:, 0].log_softmax(-1).topk(min(self.k, logits.shape[-1]), -1)
        out: list[Item] = []
        for (tree, node), prefix, lps, toks in zip(items, prefixes, best.values.tolist(), best.indices.tolist()):
            tree.compute.generations += len(toks)
            tree.compute.scored_tokens += len(prefix) + 1
            steps = [([t], [lp], t == eos) for t, lp in zip(toks, lps)]
            out += add_children(tree, node, steps, self.policy.decode, self.max_response_tokens)
        return out
