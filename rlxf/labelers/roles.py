"""Capable-LM roles (critic, judge, planner, proposer, editor) behind one text-in, text-out interface.

A method that asks a stronger model for help (rank these steps, rewrite this thought, is this
document relevant?) calls ``role.complete(requests) -> replies``, a batch of texts in and out. Two
implementations serve it:

- :class:`SimulatedRole` plays the role from gold, with a set error profile: with probability
  ``error`` the reply is the profile's wrong answer instead of the right one. Tests and labs use it,
  so a method's claim is measured against a role of known quality.
- :class:`LMRole` asks a real language model (e.g. SmolLM2-Instruct through its chat template).

The method parses the reply itself, so the same method code runs with either.

    critic = SimulatedRole(right=rank_by_gold, wrong=shuffle_ranking, error=0.2, seed=0)
    replies = critic.complete(["Rank the steps ...", ...])
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch


class TextModel(Protocol):
    """Text in, text out, in batches: the one interface every capable-LM role sits behind."""

    def complete(self, requests: list[str]) -> list[str]: ...


@dataclass
class SimulatedRole:
    """A role played from gold. ``right(request)`` is the reply a perfect model gives (the role
    computes it from the task's gold); with probability ``error`` (per request, seeded) the reply is
    ``wrong(request, right_reply, rng)`` instead. ``calls`` and ``requests`` count what was asked,
    for compute accounting."""

    right: Callable[[str], str]
    wrong: Callable[[str, str, random.Random], str]
    error: float = 0.0
    seed: int = 0
    calls: int = 0
    requests: int = 0
    rng: random.Random = field(init=False, repr=False)

    def __post_init__(self):
        if not 0.0 <= self.error <= 1.0:
            raise ValueError(f"SimulatedRole: error must be in [0, 1], got {self.error}")
        self.rng = random.Random(f"role|{self.seed}")

    def complete(self, requests: list[str]) -> list[str]:
        self.calls += 1
        self.requests += len(requests)
        out = []
        for request in requests:
            reply = self.right(request)
            if self.rng.random() < self.error:
                reply = self.wrong(request, reply, self.rng)
            out.append(reply)
        return out


@dataclass
class LMRole:
    """A role played by a language model: each request is sent as one user message through the
    model's chat template when it has one (``chat=True``), else as a bare prompt, and the reply is
    the decoded completion (greedy at ``temperature=0``)."""

    policy: object  # rlxf.policies.language.LanguagePolicy
    max_new_tokens: int = 64
    temperature: float = 0.0
    chat: bool = True
    seed: int = 0
    calls: int = 0
    requests: int = 0
    generated_tokens: int = 0

    def _prompt(self, request: str) -> str:
        tok = self.policy.tokenizer
        if self.chat and getattr(tok, "chat_template", None):
            return tok.apply_chat_template([{"role": "user", "content": request}], tokenize=False,
                                           add_generation_prompt=True)
        return request

    @torch.no_grad()
    def complete(self, requests: list[str]) -> list[str]:
        self.calls += 1
        self.requests += len(requests)
        ids = self.policy.encode([self._prompt(r) for r in requests])
        rollout = self.policy.sample(ids, n=1, max_new_tokens=self.max_new_tokens,
                                     temperature=max(self.temperature, 1e-4),
                                     generator=torch.Generator().manual_seed(self.seed + self.calls))
        self.generated_tokens += sum(len(r) for r in rollout.response_ids)
        return [self.policy.decode(r) for r in rollout.response_ids]


__all__ = ["LMRole", "SimulatedRole", "TextModel"]
