"""Learning from language feedback and filtered samples: small data transforms plus supervised losses.

- Chain of Hindsight (Liu, Sferrazza, Abbeel, ICLR 2024): ranked outputs joined with feedback
  phrases into one sequence; NLL on the output tokens only.
- SuperHF (Mukobi et al., arXiv 2310.16763, 2023): keep the top-k of a superbatch of samples by
  reward; NLL on them plus a KL penalty to the frozen initial policy.
- ILF (Scheurer et al., "Training Language Models with Language Feedback at Scale", 2023):
  pick the refinement that best uses the feedback; NLL on it.

Losses return ``[batch]`` like every objective; token alignment is the caller's: a sequence's
``Steps`` row holds ``log pi(ids[i] | ids[:i])`` for ``i >= 1`` with ``mask = loss_mask[1:]``.
"""

from __future__ import annotations

from typing import Callable, Sequence, TypeVar

from torch import Tensor

from rlxf.core.steps import Steps
from rlxf.objectives.preference import nll_loss

C = TypeVar("C")


# -- Chain of Hindsight -------------------------------------------------------------


def chain_of_hindsight(
    prompt: Sequence[int], parts: Sequence[tuple[Sequence[int], Sequence[int]]]
) -> tuple[list[int], list[int]]:
    """Join ``prompt`` and ``(feedback, output)`` token pieces into one sequence with a loss mask.

    Returns ``(ids, loss_mask)``, both of length ``len(ids)``; ``loss_mask[i] = 1`` exactly when
    ``ids[i]`` belongs to an output, so prompt, feedback and template tokens carry no loss.
    """
    ids, mask = list(prompt), [0] * len(prompt)
    for feedback, output in parts:
        ids += list(feedback) + list(output)
        mask += [0] * len(feedback) + [1] * len(output)
    return ids, mask


def chain_of_hindsight_pair(
    prompt: str,
    chosen: str,
    rejected: str,
    encode: Callable[[str], list[int]],
    good: str = "A helpful answer:",
    bad: str = "An unhelpful answer:",
    chosen_first: bool = True,
    sep: str = " ",
) -> tuple[list[int], list[int]]:
    """Text form for one comparison: ``prompt good y+ bad y-`` (or ``bad`` first), encoded piecewise.

    Each piece after the prompt is encoded as ``sep + piece`` so the mask boundaries are exact;
    the paper shows both orders, so draw ``chosen_first`` at random per example. At inference,
    condition on ``prompt + sep + good``.
    """
    ranked = [(good, chosen), (bad, rejected)]
    order = ranked if chosen_first else ranked[::-1]
    parts = [(encode(sep + phrase), encode(sep + output)) for phrase, output in order]
    return chain_of_hindsight(encode(prompt), parts)


def chain_of_hindsight_loss(steps: Steps) -> Tensor:
    """Chain of Hindsight loss: token-averaged NLL on output tokens only, ``[batch]``.

    ``steps.mask`` must be the (shifted) loss mask from :func:`chain_of_hindsight`. The paper
    mixes in a pretraining NLL on separate data; the trainer adds that batch's loss itself.
    """
    return nll_loss(steps)


# -- SuperHF ------------------------------------------------------------------------------


def superhf_select(rewards: Tensor, k: int = 1) -> Tensor:
    """Indices of the ``k`` highest-reward completions per prompt: ``[prompts, samples] -> [prompts, k]``."""
    return rewards.topk(k, dim=-1).indices


def superhf_loss(steps: Steps, kl_coef: float = 0.35, token_kl: Tensor | None = None) -> Tensor:
    """SuperHF loss on the kept completions: ``NLL + kl_coef * KL(pi || pi_0)``, both token-averaged, ``[batch]``.

    Mukobi et al., "SuperHF: Supervised Iterative Learning from Human Feedback", 2023 (KL
    coefficient 0.35 from the repo's default config). ``token_kl`` ``[batch, steps]`` is the exact
    per-position KL over the vocabulary when the caller has full logits (as the official code
    does). Without it, the sampled-token estimate ``0.5 * (log pi - log pi_0)^2`` (Schulman's k2)
    is used: its gradient is the reverse-KL gradient for tokens sampled from pi, whereas k1's would
    only rescale the NLL. Needs ``steps.ref_logps`` (log-probs under the frozen pi_0) in that case.
    """
    kl = 0.5 * steps.logratio() ** 2 if token_kl is None else token_kl
    return nll_loss(steps) + kl_coef * steps.mean(kl)


# -- ILF -------------------------------------------------------------------------------------


def ilf_refinement_prompt(prompt: str, output: str, feedback: str) -> str:
    """The conditioning text from which the model writes refinements of ``output`` given ``feedback``."""
    return f"{prompt}\n\nDraft: {output}\n\nFeedback: {feedback}\n\nImproved answer:"


def ilf_select(contexts: Sequence[C], refinements: Sequence[Sequence[str]], score: Callable[[C, str], float]) -> list[int]:
    """Per example, the index of the refinement that ``score(context, refinement)`` rates highest.

    ``context`` is whatever the judge needs, typically ``(prompt, output, feedback)``; the judge
    is an instruction-following LM or a reward model asked how well the feedback was used.
    """
    if len(contexts) != len(refinements):
        raise ValueError(f"ilf_select: {len(contexts)} contexts but {len(refinements)} refinement lists")
    picks = []
    for i, (ctx, cands) in enumerate(zip(contexts, refinements)):
        if not cands:
            raise ValueError(f"ilf_select: example {i} has no refinements to choose from")
        picks.append(max(range(len(cands)), key=lambda j: score(ctx, cands[j])))
    return picks


def ilf_loss(steps: Steps) -> Tensor:
    """ILF loss: token-averaged NLL of the selected refinement given the prompt, ``[batch]``.

    Scheurer et al. 2023: fine-tuning on (x, best refinement) approximates minimising KL to
    the feedback-defined target p(y|x) proportional to pi(y|x) exp(reward).
    """
    return nll_loss(steps)

