"""Follow-up likelihood as reward (FLR; Zhang et al. 2025, "Aligning Language Models Using
Follow-up Likelihood as Reward Signal").

How well a response went shows in the user's likely next turn. FLR appends template follow-ups
after (prompt, response) and reads their log-likelihood from a language model:
r = mean_f log p(f | x, y) over positive follow-ups - mean_f log p(f | x, y) over negative ones.
The templates are reconstructed (the paper's exact ones are not pinned); pass your own.
:func:`follow_up_reward_fn` makes it a reward component of an online run's scorer.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlxf.policies.language import LanguagePolicy
from rlxf.rewards.scoring import RewardFn, Samples

POSITIVE = ("Thanks, that's helpful.", "Great, that answers my question.")
NEGATIVE = ("That's not what I asked.", "This is wrong.")


def _contexts(lm: LanguagePolicy, prompts: list[str], responses: list[str]) -> list[list[int]]:
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    return [p + r for p, r in zip(lm.encode(prompts), lm.encode_responses(responses, add_eos=False))]


def _context_logps(lm: LanguagePolicy, contexts: list[list[int]], follow_up: str, per_token: bool) -> Tensor:
    fu = lm.encode([follow_up])[0]
    if not fu:
        raise ValueError(f"follow-up {follow_up!r} encodes to no tokens")
    steps = lm.score(contexts, [fu] * len(contexts))
    return steps.mean() if per_token else steps.sum()


def _flr(lm: LanguagePolicy, contexts: list[list[int]], positive: tuple[str, ...], negative: tuple[str, ...],
         per_token: bool) -> Tensor:
    if not positive or not negative:
        raise ValueError("follow-up likelihood reward needs at least one positive and one negative follow-up")
    pos = torch.stack([_context_logps(lm, contexts, f, per_token) for f in positive]).mean(0)
    neg = torch.stack([_context_logps(lm, contexts, f, per_token) for f in negative]).mean(0)
    return pos - neg


def follow_up_logps(lm: LanguagePolicy, prompts: list[str], responses: list[str], follow_up: str,
                    per_token: bool = True) -> Tensor:
    """log p(follow_up | prompt, response) per example, ``[batch]``; per token when ``per_token``
    (so long and short templates weigh alike)."""
    return _context_logps(lm, _contexts(lm, prompts, responses), follow_up, per_token)


def follow_up_reward(lm: LanguagePolicy, prompts: list[str], responses: list[str],
                     positive: tuple[str, ...] = POSITIVE, negative: tuple[str, ...] = NEGATIVE,
                     per_token: bool = True) -> Tensor:
    """FLR score per (prompt, response), ``[batch]``: mean log-likelihood of the positive
    follow-ups minus that of the negative ones under ``lm``."""
    return _flr(lm, _contexts(lm, prompts, responses), positive, negative, per_token)


def follow_up_reward_fn(lm: LanguagePolicy, positive: tuple[str, ...] = POSITIVE,
                        negative: tuple[str, ...] = NEGATIVE, per_token: bool = True) -> RewardFn:
    """FLR as a reward component for :class:`~rlxf.rewards.scoring.Scorer`. The sampled ids are
    scored directly (no decode/encode round trip), so ``lm`` must share the policy's tokenizer;
    a response's closing EOS is dropped, since the follow-up continues the conversation. Keep
    ``lm`` a frozen model, not the policy being trained."""
    eos = lm.tokenizer.eos_token_id

    def score(s: Samples) -> Tensor:
        contexts = [p + (r[:-1] if r and r[-1] == eos else r) for p, r in zip(s.prompt_ids, s.response_ids)]
        return _flr(lm, contexts, positive, negative, per_token)

    return score
