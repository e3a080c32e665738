"""KTO training on unpaired feedback: single responses marked desirable or undesirable.

Ethayarajh et al., "KTO: Model Alignment as Prospect Theoretic Optimization", ICML 2024.
The reference point z0 = max(0, mean log pi/pi_ref) is measured on mismatched pairs
(x_i, y_j), j != i, over the whole global batch before its micro-batches run; z0 carries no
gradient, so measuring it apart is exact and gradient accumulation stays exact. Each example's
mismatched completion is fixed once (a seeded cycle through the data, so no example is paired
with its own completion), which lets the reference's log-probs of the mismatched pairs be
precomputed too, like the matched ones.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from rlxf.algorithms.batching import epoch_batches, visited_indices
from rlxf.algorithms.loop import OptimConfig, train
from rlxf.algorithms.preference_data import Example, check_both_classes
from rlxf.core.runs import Run
from rlxf.core.steps import Steps
from rlxf.objectives.preference import kto_loss, kto_reference_point
from rlxf.policies.language import LanguagePolicy
from rlxf.policies.logprobs import chunks, fused_activations, logits_chunk_size, pad_rows, response_logps, unpadded


def mismatched_partners(n: int, seed: int) -> list[int]:
    """For each example, another example whose completion it is paired with for z0 (a derangement)."""
    if n < 2:
        raise ValueError("KTO needs at least 2 examples to form mismatched pairs")
    order = np.random.default_rng([seed, 7]).permutation(n)
    partner = [0] * n
    for k, i in enumerate(order):
        partner[i] = int(order[k - 1])
    return partner


def _score(model, pad: int, prompts, completions, batch_size: int = 256) -> list[torch.Tensor]:
    """Per-token log-probs of every completion (unpadded), in chunks of at most ``batch_size`` whose
    response logits fit the memory budget of :func:`logits_chunk_size`."""
    size = logits_chunk_size(model, max((len(c) for c in completions), default=1), batch_size)
    return [row for part in chunks(len(prompts), size)
            for row in unpadded(response_logps(model, pad, prompts[part], completions[part])[0])]


def train_unpaired(run: Run, stage: str, policy: LanguagePolicy, ref: LanguagePolicy, examples: Sequence[Example],
                   cfg: OptimConfig, seed: int, beta: float = 0.1, lambda_d: float = 1.0, lambda_u: float = 1.0,
                   quiet: bool = False, precompute_ref: bool = True, fast_kernels: bool = True) -> None:
    """Minimise the KTO loss averaged over each global batch of ``(prompt, completion, desirable)``."""
    check_both_classes(examples, stage)
    pad = policy.tokenizer.pad_token_id
    prompts = [e[0] for e in examples]
    completions = [e[1] for e in examples]
    labels = torch.tensor([e[2] for e in examples])
    partner = mismatched_partners(len(examples), seed)
    mis_completions = [completions[j] for j in partner]
    make_batch = epoch_batches(len(examples), cfg.batch_size, seed)
    if precompute_ref:  # only the examples the run's batches visit, keyed by index
        visited = visited_indices(make_batch, cfg.steps)
        with torch.no_grad():
            ref_match = dict(zip(visited, _score(ref.model, pad, [prompts[i] for i in visited],
                                                 [completions[i] for i in visited])))
            ref_mis = dict(zip(visited, _score(ref.model, pad, [prompts[i] for i in visited],
                                               [mis_completions[i] for i in visited])))
    z0_cache: dict[tuple, torch.Tensor] = {}

    def with_ref(idx: list[int], comps: list[list[int]], cached, steps: Steps) -> Steps:
        if precompute_ref:
            return steps.replace(ref_logps=pad_rows([cached[i] for i in idx], steps.num_steps))
        with torch.no_grad():
            ref_steps, _ = response_logps(ref.model, pad, [prompts[i] for i in idx], comps)
        return steps.replace(ref_logps=ref_steps.logps)

    def reference_point(batch: list[int]) -> torch.Tensor:
        key = tuple(batch)
        if key not in z0_cache:
            z0_cache.clear()
            comps = [mis_completions[i] for i in batch]
            with torch.no_grad():
                steps, _ = response_logps(policy.model, pad, [prompts[i] for i in batch], comps)
            z0_cache[key] = kto_reference_point(with_ref(batch, comps, ref_mis if precompute_ref else None, steps))
        return z0_cache[key]

    def loss_fn(micro: list[int], batch: list[int]):
        z0 = reference_point(batch)
        comps = [completions[i] for i in micro]
        steps, _ = response_logps(policy.model, pad, [prompts[i] for i in micro], comps)
        steps = with_ref(micro, comps, ref_match if precompute_ref else None, steps)
        good = labels[micro].to(steps.logps.device)
        per_example = kto_loss(steps, good, z0, beta, lambda_d, lambda_u)
        value = per_example.sum() / len(batch)
        with torch.no_grad():
            reward = beta * steps.seq_logratio()
            metrics = {"loss": value.item(), "kl_ref_point": float(z0) * len(micro) / len(batch),
                       "reward_desirable": reward[good].sum().item() / len(batch),
                       "reward_undesirable": reward[~good].sum().item() / len(batch)}
        return value, metrics

    with fused_activations(policy.model, fast_kernels):
        train(run, stage, policy.model, cfg, make_batch, loss_fn, quiet=quiet)
