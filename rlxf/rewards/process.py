"""Process rewards: per-step scores from a transformer, trained on per-step labels (PRM) or on
per-step progress under a prover policy (PAV, Setlur et al. 2025, "Rewarding Progress: Scaling
Automated Process Verifiers").

A :class:`ProcessRewardModel` is an ordinary HF sequence-classification reward model whose
scalar head is read at the last token of every step instead of only at the end, so it saves
and loads like any reward model (its sequence score is its last step's score).

PAV targets: with a prover mu, Q_h = P(mu solves the problem | the first h steps) is estimated
by Monte-Carlo rollouts from each prefix; the progress of step h is A_h = Q_h - Q_{h-1}
(Q_0 = V^mu at the prompt). An outcome RM is the same model trained on one label at the end.
"""

from __future__ import annotations

import random
import re
from typing import Callable

import torch
from torch import Tensor

from rlxf.policies.logprobs import chunks
from rlxf.rewards.model import RewardModel


class ProcessRewardModel(RewardModel):
    """A reward model that also scores every step of a response."""

    def step_forward(self, prompt_ids: list[list[int]], response_ids: list[list[int]],
                     step_ends: list[list[int]]) -> tuple[Tensor, Tensor]:
        """Scores at the given response positions (the last token of each step), with gradient:
        ``[batch, max_steps]`` scores and mask. A position of -1 means the prompt's last token
        (the state before any step, e.g. for V at the start)."""
        ids, attn = self.right_padded(prompt_ids, response_ids)
        out = self.model(input_ids=ids.to(self.device), attention_mask=attn.to(self.device), output_hidden_states=True,
                         use_cache=False)
        per_token = self._head()(out.hidden_states[-1]).squeeze(-1).float()  # [B, T]
        S = max(1, max(len(e) for e in step_ends))
        pos = torch.zeros((len(prompt_ids), S), dtype=torch.long)
        mask = torch.zeros((len(prompt_ids), S))
        for i, ends in enumerate(step_ends):
            for k, e in enumerate(ends):
                pos[i, k] = len(prompt_ids[i]) + e
                mask[i, k] = 1
        return torch.gather(per_token, 1, pos.to(self.device)), mask.to(self.device)

    @torch.no_grad()
    def step_scores(self, prompt_ids, response_ids, step_ends, batch_size: int = 256) -> list[list[float]]:
        """Per-step scores without gradient, one list per response."""
        was_training = self.model.training
        self.model.eval()
        out = []
        for sl in chunks(len(prompt_ids), batch_size):
            s, m = self.step_forward(prompt_ids[sl], response_ids[sl], step_ends[sl])
            out += [row[: int(n)].tolist() for row, n in zip(s.cpu(), m.sum(-1).cpu())]
        self.model.train(was_training)
        return out


def progress(q: list[float]) -> list[float]:
    """Per-step progress A_h = Q_h - Q_{h-1} from ``q = [Q_0, Q_1, ..., Q_H]`` (PAV's advantage)."""
    return [b - a for a, b in zip(q[:-1], q[1:])]


def rollout_values(steps: list[str], complete: Callable[[list[str], random.Random], list[str]],
                   is_correct: Callable[[list[str]], bool], n_rollouts: int, rng: random.Random) -> list[float]:
    """Monte-Carlo Q_h for h = 0..H: the share of ``n_rollouts`` prover completions of the first h
    steps that end correct. ``complete(prefix, rng)`` returns the remaining steps. A complete
    response (h = H) is checked directly."""
    q = []
    for h in range(len(steps) + 1):
        prefix = steps[:h]
        if h == len(steps):
            q.append(float(is_correct(prefix)))
        else:
            q.append(sum(is_correct(prefix + complete(prefix, rng)) for _ in range(n_rollouts)) / n_rollouts)
    return q


def step_text(problem: str, response: str, unit: str = "line") -> tuple[str, str]:
    """Render a worked solution for a word-level tokenizer, so each step ends at a known token.

    ``unit="line"``: the prompt as characters separated by spaces, each step one space-free word.
    ``unit="number"``: numbers, operators and ``answer`` are words and every step ends with ``;``.
    """
    steps = [s.replace(" ", "") for s in response.strip().split("\n")]
    if unit == "line":
        return " ".join(problem.replace(" ", "")), " ".join(steps)
    if unit == "number":
        split = lambda t: " ".join(re.findall(r"\d+|answer|[^\d\s:]", t))  # noqa: E731
        return split(problem), " ".join(split(s) + " ;" for s in steps)
    raise ValueError(f"step_text unit must be 'line' or 'number', got {unit!r}")
