"""Follow-up likelihood as reward (FLR; Zhang et al. 2025, "Aligning Language Models Using
Follow-up Likelihood as Reward Signal").

How well a response went shows in the user's likely next turn. FLR appends template follow-ups
after (prompt, response) and reads their log-likelihood from a language model:
r = mean_f log p(f | x, y) over positive follow-ups - mean_f log p(f | x, y) over negative ones.
The templates are reconstructed (the paper's exact ones are not pinned); pass your own.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlxf.policies.language import LanguagePolicy

POSITIVE = ("Thanks, that's helpful.", "Great, that answers my question.")
NEGATIVE = ("That's not what I asked.", "This is wrong.")


def follow_up_logps(lm: LanguagePolicy, prompts: list[str], responses: list[str], follow_up: str,
                    per_token: bool = True) -> Tensor:
    """log p(follow_up | prompt, response) per example, ``[batch]``; per token when ``per_token``
    (so long and short templates weigh alike)."""
    ctx = [p + r for p, r in zip(lm.encode(prompts), lm.encode_responses(responses, add_eos=False))]
    fu = lm.encode([follow_up])[0]
    if not fu:
        raise ValueError(f"follow-up {follow_up!r} encodes to no tokens")
    steps = lm.score(ctx, [fu] * len(ctx))
    return steps.mean() if per_token else steps.sum()


def follow_up_reward(lm: LanguagePolicy, prompts: list[str], responses: list[str],
                     positive: tuple[str, ...] = POSITIVE, negative: tuple[str, ...] = NEGATIVE,
                     per_token: bool = True) -> Tensor:
    """FLR score per (prompt, response), ``[batch]``: mean log-likelihood of the positive
    follow-ups minus that of the negative ones under ``lm``."""
    if not positive or not negative:
        raise ValueError("follow_up_reward needs at least one positive and one negative follow-up")
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    pos = torch.stack([follow_up_logps(lm, prompts, responses, f, per_token) for f in positive]).mean(0)
    neg = torch.stack([follow_up_logps(lm, prompts, responses, f, per_token) for f in negative]).mean(0)
    return pos - neg
