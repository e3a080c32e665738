"""Offline preference training: any pair loss from ``rlxf.objectives`` on fixed comparisons.

Reference log-probs are computed once before training (the frozen reference is then
dropped), which halves the forward passes per step and frees the reference's memory.
"""

from __future__ import annotations

from typing import Callable

import torch

from rlxf.algorithms.batching import epoch_batches
from rlxf.algorithms.loop import OptimConfig, train
from rlxf.core.runs import Run
from rlxf.core.steps import Steps
from rlxf.objectives.preference import dpo_margin
from rlxf.policies.language import LanguagePolicy

Pair = tuple[list[int], list[int], list[int]]  # prompt_ids, chosen_ids, rejected_ids


def reference_logps(ref: LanguagePolicy, pairs: list[Pair], batch_size: int = 256) -> tuple[list, list]:
    """Per-token reference log-probs of every chosen and rejected response (lists of tensors)."""
    prompts = [p[0] for p in pairs]
    out = []
    for col in (1, 2):
        responses = [p[col] for p in pairs]
        steps = ref.score(prompts, responses, batch_size)
        out.append([steps.logps[i, : len(r)].clone() for i, r in enumerate(responses)])
    return out[0], out[1]


def _pad(rows: list[torch.Tensor], width: int) -> torch.Tensor:
    return torch.stack([torch.nn.functional.pad(r, (0, width - r.shape[0])) for r in rows])


def train_pairs(run: Run, stage: str, policy: LanguagePolicy, ref: LanguagePolicy, pairs: list[Pair],
                loss: Callable[..., torch.Tensor], loss_kwargs: dict, cfg: OptimConfig, seed: int,
                quiet: bool = False) -> None:
    """Minimise ``loss(chosen, rejected, **loss_kwargs)`` averaged over each global batch."""
    ref_w, ref_l = reference_logps(ref, pairs)
    make_batch = epoch_batches(len(pairs), cfg.batch_size, seed)
    beta = loss_kwargs.get("beta", 1.0)

    def loss_fn(micro: list[int], batch: list[int]):
        rows = [pairs[i] for i in micro]
        prompts = [r[0] for r in rows]
        # chosen and rejected in one forward pass
        both = policy.steps(prompts + prompts, [r[1] for r in rows] + [r[2] for r in rows])
        n = len(rows)
        chosen = Steps(logps=both.logps[:n], mask=both.mask[:n],
                       ref_logps=_pad([ref_w[i] for i in micro], both.num_steps))
        rejected = Steps(logps=both.logps[n:], mask=both.mask[n:],
                         ref_logps=_pad([ref_l[i] for i in micro], both.num_steps))
        per_pair = loss(chosen, rejected, **loss_kwargs)
        value = per_pair.sum() / len(batch)
        with torch.no_grad():
            margin = dpo_margin(chosen, rejected)
            metrics = {
                "loss": value.item(),
                "reward_accuracy": (margin > 0).float().sum().item() / len(batch),
                "reward_margin": (beta * margin).sum().item() / len(batch),
                "logps_chosen": chosen.sum().sum().item() / len(batch),
                "logps_rejected": rejected.sum().sum().item() / len(batch),
            }
        return value, metrics

    train(run, stage, policy.model, cfg, make_batch, loss_fn, quiet=quiet)
