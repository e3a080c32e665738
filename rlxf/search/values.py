"""Node values: each evaluator scores a batch of (tree, node) items in one pass and returns one
value per item, or None where it has nothing to say (a verifier on an unfinished node).

Sources: a verifier on terminal nodes, Monte-Carlo rollouts to the end, a learned value or
outcome reward model, a process reward model (the score at the last step), the policy's own
self-critique (P(yes) against P(no) after a question), and DPO's implicit reward
``beta * sum_t log pi/pi_ref`` (Rafailov et al., "From r to Q*", 2024: with per-token steps a
beam search on it is search on the implicit Q-function). :class:`Mix` averages several with
weights, :class:`First` takes the first that gives a value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch

from rlxf.core.steps import Steps
from rlxf.objectives.preference import token_rewards
from rlxf.policies.language import LanguagePolicy
from rlxf.search.expand import Item, sample_items

Check = Callable[[str, str], float]  # (prompt text, response text) -> score, e.g. check_answer


class Evaluator(Protocol):
    source: str

    def __call__(self, items: list[Item]) -> list[float | None]: ...


class SearchError(ValueError):
    """A search could not value a node it must (the message names the evaluator and the node)."""


def evaluate(items: list[Item], evaluator: Evaluator) -> None:
    """Set ``value`` and ``source`` of every item's node; every node needs a value."""
    if not items:
        return
    values = evaluator(items)
    if len(values) != len(items):
        raise SearchError(f"evaluator {evaluator.source!r} returned {len(values)} values for {len(items)} nodes")
    sources = getattr(evaluator, "last_sources", None) or [evaluator.source] * len(items)
    for (tree, node), v, src in zip(items, values, sources):
        if v is None:
            raise SearchError(f"evaluator {evaluator.source!r} gave no value for node {node.id} "
                              f"(terminal={node.terminal}); combine it with one that does, e.g. First(Verifier, PRM)")
        node.value, node.source = float(v), src


@dataclass
class Verifier:
    """``check(prompt, response)`` on terminal nodes (finished or cut at the length limit); None elsewhere."""

    check: Check
    source: str = "verifier"

    def __call__(self, items):
        return [float(self.check(t.prompt, t.response_text(n))) if n.terminal else None for t, n in items]


@dataclass
class Rollouts:
    """The mean of ``check`` over ``n`` completions of each node by ``policy`` (one sampling call
    for all nodes); a terminal node is checked as it is."""

    policy: LanguagePolicy
    check: Check
    n: int = 4
    max_new_tokens: int = 64
    temperature: float = 1.0
    seed: int = 0
    source: str = "rollout"
    generator: torch.Generator = field(init=False, repr=False)

    def __post_init__(self):
        self.generator = torch.Generator(device=self.policy.device).manual_seed(self.seed)

    def __call__(self, items):
        open_ = [(t, n) for t, n in items if not n.terminal]
        means = {}
        if open_:
            ro = sample_items(self.policy, open_, self.n, self.max_new_tokens, self.generator, self.temperature)
            for i, (t, node) in enumerate(open_):
                base = t.response_text(node)
                scores = [float(self.check(t.prompt, base + self.policy.decode(ro.response_ids[r])))
                          for r in range(i * self.n, (i + 1) * self.n)]
                means[id(node)] = sum(scores) / self.n
                t.compute.rollouts += self.n
        return [means[id(n)] if id(n) in means else float(self.check(t.prompt, t.response_text(n)))
                for t, n in items]


def _texts(items: list[Item]) -> tuple[list[str], list[str]]:
    return [t.prompt for t, _ in items], [t.response_text(n) for t, n in items]


@dataclass
class ModelValue:
    """A learned value or outcome reward model (a :class:`rlxf.rewards.model.RewardModel`): its
    score of the prompt and the response so far (with EOS where the response finished)."""

    model: object
    source: str = "value"

    def __call__(self, items):
        prompts, responses = _texts(items)
        p_ids, r_ids = self.model.encode_pairs(prompts, responses, add_eos=False)
        eos = self.model.tokenizer.eos_token_id
        r_ids = [r + [eos] if n.finished else r for r, (_, n) in zip(r_ids, items)]
        for (t, _), p, r in zip(items, p_ids, r_ids):
            t.compute.scored_tokens += len(p) + len(r)
        return self.model.score(p_ids, r_ids).tolist()


def encode_steps(tokenizer, prompt: str, steps: list[str]) -> tuple[list[int], list[int], list[int]]:
    """``prompt`` and the concatenated ``steps`` encoded separately, each step on its own, and the
    index of each non-empty step's last token in the response: what a PRM reads its scores at."""
    enc = lambda s: tokenizer(s, add_special_tokens=False).input_ids  # noqa: E731
    ids, ends = [], []
    for step in steps:
        piece = enc(step)
        if piece:
            ids += piece
            ends.append(len(ids) - 1)
    return enc(prompt), ids, ends


@dataclass
class PRM:
    """A :class:`rlxf.rewards.process.ProcessRewardModel`'s score at the end of the node's last
    step (each step re-encoded with the PRM's tokenizer, so it may differ from the policy's);
    ``sigmoid=True`` maps a logit head to (0, 1)."""

    prm: object
    sigmoid: bool = False
    source: str = "prm"

    def __call__(self, items):
        p_ids, r_ids, ends = [], [], []
        for t, node in items:
            p, ids, e = encode_steps(self.prm.tokenizer, t.prompt, [step.text for step in t.path(node)])
            p_ids.append(p)
            r_ids.append(ids)
            ends.append(e or [-1])
            t.compute.scored_tokens += len(p) + len(ids)
        scores = torch.tensor([s[-1] for s in self.prm.step_scores(p_ids, r_ids, ends)])
        return (scores.sigmoid() if self.sigmoid else scores).tolist()


@dataclass
class Critique:
    """The policy judging its own partial answer: ``template`` (with ``{prompt}`` and ``{response}``)
    ends in a question, and the value is P(yes) / (P(yes) + P(no)) for the first tokens of the
    ``yes`` and ``no`` answers."""

    policy: LanguagePolicy
    template: str = "{prompt}{response}\nIs this correct so far? Answer:"
    yes: str = " yes"
    no: str = " no"
    source: str = "critique"

    def __call__(self, items):
        y, n = (self.policy.encode([w])[0][:1] for w in (self.yes, self.no))
        if not y or not n or y == n:
            raise SearchError(f"Critique: the answers {self.yes!r} and {self.no!r} must start with different tokens")
        prompts = self.policy.encode([self.template.format(prompt=p, response=r) for p, r in zip(*_texts(items))])
        with torch.no_grad():
            logits, _, _ = self.policy.logits(prompts, [y] * len(prompts))
        pair = logits[:, 0, [y[0], n[0]]].softmax(-1)
        for (t, _), p in zip(items, prompts):
            t.compute.scored_tokens += len(p) + 1
        return pair[:, 0].tolist()


@dataclass
class ImplicitReward:
    """DPO's implicit reward of the response so far, ``beta * sum_t (log pi - log pi_ref)``
    (:func:`rlxf.objectives.preference.token_rewards` summed). The policy's log-probs are the
    ones recorded when the steps were sampled; only the reference runs (its tokens are counted)."""

    ref: LanguagePolicy
    beta: float = 0.1
    source: str = "implicit"

    def __call__(self, items):
        prompts = [t.root.ids for t, _ in items]
        responses = [t.response_ids(n) for t, n in items]
        policy_logps = [[lp for s in t.path(n) for lp in s.logps] for t, n in items]
        for (_, n), row, r in zip(items, policy_logps, responses):
            if len(row) != len(r):
                raise SearchError(f"ImplicitReward: node {n.id} has {len(r)} response tokens but {len(row)} recorded "
                                  "log-probs; it needs nodes sampled by an Expander")
        ref = self.ref.score(prompts, responses)
        width = ref.logps.shape[1]
        logps = torch.tensor([row + [0.0] * (width - len(row)) for row in policy_logps], device=ref.logps.device)
        steps = Steps(logps=logps, mask=ref.mask, ref_logps=ref.logps)
        for (t, _), p, r in zip(items, prompts, responses):
            t.compute.reference_tokens += len(p) + len(r)
        return token_rewards(steps, self.beta).sum(-1).tolist()


@dataclass
class Mix:
    """The weighted mean of ``parts`` (evaluator, weight) over those that give a value; the source
    names them, e.g. ``"prm+verifier"``."""

    parts: list[tuple[Evaluator, float]]
    source: str = "mix"
    last_sources: list[str] = field(default_factory=list, repr=False)

    def __call__(self, items):
        got = [(ev.source, w, ev(items)) for ev, w in self.parts]
        out, self.last_sources = [], []
        for i in range(len(items)):
            have = [(s, w, vals[i]) for s, w, vals in got if vals[i] is not None]
            total = sum(w for _, w, _ in have)
            out.append(sum(w * v for _, w, v in have) / total if have and total else None)
            self.last_sources.append("+".join(s for s, _, _ in have))
        return out


@dataclass
class First:
    """Each node's value from the first of ``parts`` that gives one (e.g. a verifier on terminal
    nodes, rollouts elsewhere); a part sees only the nodes the parts before it left without a value."""

    parts: list[Evaluator]
    source: str = "first"
    last_sources: list[str] = field(default_factory=list, repr=False)

    def __call__(self, items):
        out: list[float | None] = [None] * len(items)
        self.last_sources = [self.source] * len(items)
        todo = list(range(len(items)))
        for ev in self.parts:
            if not todo:
                break
            vals = ev([items[i] for i in todo])
            for i, v in zip(todo, vals):
                if v is not None:
                    out[i], self.last_sources[i] = v, ev.source
            todo = [i for i in todo if out[i] is None]
        return out


__all__ = ["Check", "Critique", "Evaluator", "First", "ImplicitReward", "Mix", "ModelValue", "PRM", "Rollouts",
           "SearchError", "Verifier", "encode_steps", "evaluate"]
