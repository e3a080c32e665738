"""Offline preference training: any pair loss from ``rlxf.objectives`` on fixed comparisons.

By default the reference's log-probs are computed once before training, which halves the
forward passes per step; ``precompute_ref=False`` scores each batch under the frozen
reference instead. Chosen and rejected go through the model in one forward pass
(:func:`rlxf.policies.logprobs.pair_logps`). Each micro-batch returns its share of the
global-batch mean, so gradient accumulation is exact.
"""

from __future__ import annotations

import inspect
from typing import Callable

import torch

from rlxf.algorithms.batching import epoch_batches, visited_indices
from rlxf.algorithms.loop import OptimConfig, train
from rlxf.core.runs import Run
from rlxf.core.steps import Steps
from rlxf.objectives.preference import dpo_margin
from rlxf.policies.language import LanguagePolicy
from rlxf.policies.logprobs import Pair, chunks, fused_activations, pad_rows, pair_logps, reference_logps


def pair_sums(chosen: Steps, rejected: Steps, beta: float) -> dict[str, float]:
    """Implicit-reward accuracy and margin (TRL's conventions) and the chosen and rejected
    log-probs, each summed over the batch's pairs."""
    margin = dpo_margin(chosen, rejected)
    return {"reward_accuracy": float((margin > 0).float().sum()), "reward_margin": float((beta * margin).sum()),
            "logps_chosen": float(chosen.sum().sum()), "logps_rejected": float(rejected.sum().sum())}


@torch.no_grad()
def evaluate_pairs(policy: LanguagePolicy, ref: LanguagePolicy, pairs: list[Pair], beta: float,
                   batch_size: int = 128) -> dict:
    """Held-out pair metrics: :func:`pair_sums` per pair, and the exact KL(pi || pi_ref) summed over
    the response positions (the per-position KL over the whole vocabulary), averaged over chosen
    and rejected responses. Each model scores a chunk's pairs in one packed forward pass where it
    supports packing (:func:`rlxf.policies.logprobs.pair_logps`: each prompt computed once)."""
    was_training = policy.model.training
    policy.model.eval()
    totals = dict.fromkeys(("reward_accuracy", "reward_margin", "logps_chosen", "logps_rejected", "kl"), 0.0)
    pad = policy.tokenizer.pad_token_id
    for part in chunks(len(pairs), batch_size):
        (chosen, rejected), (pv_w, pv_l) = pair_logps(policy.model, pad, pairs[part], full_vocab=True)
        (ref_w, ref_l), (rv_w, rv_l) = pair_logps(ref.model, pad, pairs[part], full_vocab=True)
        chosen, rejected = chosen.replace(ref_logps=ref_w.logps), rejected.replace(ref_logps=ref_l.logps)
        for k, v in pair_sums(chosen, rejected, beta).items():
            totals[k] += v
        for steps, pv, rv in ((chosen, pv_w, rv_w), (rejected, pv_l, rv_l)):
            kl_t = (pv.exp() * (pv - rv)).sum(-1)
            totals["kl"] += float(steps.sum(kl_t).sum()) / 2
    if was_training:
        policy.model.train()
    return {k: v / len(pairs) for k, v in totals.items()}


def check_logged(pairs: list[Pair], ref_logps: tuple[list, list], stage: str, device="cpu") -> tuple[list, list]:
    """Logged reference log-probs as tensors, one per chosen and rejected response, each as long as its response."""
    out = []
    for side, rows in zip(("chosen", "rejected"), ref_logps):
        if len(rows) != len(pairs):
            raise ValueError(f"{stage}: ref_logps has {len(rows)} {side} rows for {len(pairs)} pairs")
        rows = [torch.as_tensor(r, dtype=torch.float32, device=device) for r in rows]
        for i, (row, pair) in enumerate(zip(rows, pairs)):
            want = len(pair[1 if side == "chosen" else 2])
            if row.shape != (want,):
                raise ValueError(f"{stage}: ref_logps {side} row {i} has shape {tuple(row.shape)}, expected ({want},) "
                                 f"(one log-prob per response token)")
        out.append(rows)
    return out[0], out[1]


def visited_reference_logps(model, pad: int, pairs: list[Pair], cfg: OptimConfig, seed: int,
                            quiet: bool) -> tuple[dict, dict]:
    """Reference log-probs of only the pairs that ``cfg.steps`` batches of ``epoch_batches(seed)`` visit,
    keyed by pair index: a short run over a large dataset scores no pair it never trains on."""
    visited = visited_indices(epoch_batches(len(pairs), cfg.batch_size, seed), cfg.steps)
    chosen, rejected = reference_logps(model, pad, [pairs[i] for i in visited], quiet=quiet)
    return dict(zip(visited, chosen)), dict(zip(visited, rejected))


def train_pairs(run: Run, stage: str, policy: LanguagePolicy, ref: LanguagePolicy | None, pairs: list[Pair],
                loss: Callable[..., torch.Tensor], loss_kwargs: dict, cfg: OptimConfig, seed: int,
                quiet: bool = False, precompute_ref: bool = True, eval_pairs: list[Pair] | None = None,
                fast_kernels: bool = True, ref_logps: tuple[list, list] | None = None) -> dict:
    """Minimise ``loss(chosen, rejected, **loss_kwargs)`` averaged over each global batch.

    ``precompute_ref``: score the reference once up front (default) or on every batch.
    ``ref_logps``: per-token reference log-probs of every chosen and every rejected response
    (1-D tensors, one per pair) logged when the data was sampled, as off-policy DPO keeps them
    (Agent Q): no reference model runs and ``ref`` may be None (unless ``eval_pairs`` are given).
    ``eval_pairs``: held-out pairs measured before and after training (stage ``<stage>_eval``,
    steps 0 and ``cfg.steps``); the final measurements are returned. ``fast_kernels`` swaps in
    fused activation kernels of identical formula while training.
    """
    if not pairs:
        raise ValueError(f"{stage}: there are no preference pairs to train on")
    beta = loss_kwargs.get("beta", 1.0)
    if eval_pairs and ref is None:
        raise ValueError(f"{stage}: eval_pairs are measured against a reference policy; pass ref")
    evals = {r["step"] for r in run.metrics(f"{stage}_eval")}
    if eval_pairs and 0 not in evals:
        run.log(f"{stage}_eval", 0, **evaluate_pairs(policy, ref, eval_pairs, beta))
    pad = policy.tokenizer.pad_token_id
    if ref_logps is not None:
        ref_w, ref_l = check_logged(pairs, ref_logps, stage, policy.device)
        precompute_ref = True
    elif ref is None:
        raise ValueError(f"{stage}: train_pairs needs a reference policy or logged ref_logps")
    else:
        ref_w, ref_l = visited_reference_logps(ref.model, pad, pairs, cfg, seed, quiet) if precompute_ref else (None, None)
    make_batch = epoch_batches(len(pairs), cfg.batch_size, seed)
    global_tokens = "tokens_per_example" in inspect.signature(loss).parameters

    def loss_fn(micro: list[int], batch: list[int]):
        rows = [pairs[i] for i in micro]
        chosen, rejected = pair_logps(policy.model, pad, rows)
        if precompute_ref:
            ref_c = pad_rows([ref_w[i] for i in micro], chosen.num_steps)
            ref_r = pad_rows([ref_l[i] for i in micro], rejected.num_steps)
        else:
            with torch.no_grad():
                ref_c, ref_r = (s.logps for s in pair_logps(ref.model, pad, rows))
        chosen, rejected = chosen.replace(ref_logps=ref_c), rejected.replace(ref_logps=ref_r)
        kwargs = dict(loss_kwargs)
        if global_tokens:
            kwargs["tokens_per_example"] = sum(len(pairs[i][1]) for i in batch) / len(batch)
        per_pair = loss(chosen, rejected, **kwargs)
        value = per_pair.sum() / len(batch)
        with torch.no_grad():
            sums = pair_sums(chosen, rejected, beta)
        return value, {"loss": value.item(), **{k: v / len(batch) for k, v in sums.items()}}

    with fused_activations(policy.model, fast_kernels):
        train(run, stage, policy.model, cfg, make_batch, loss_fn, quiet=quiet)
    if not eval_pairs:
        return {}
    if cfg.steps not in evals:
        run.log(f"{stage}_eval", cfg.steps, **evaluate_pairs(policy, ref, eval_pairs, beta))
    final = [r for r in run.metrics(f"{stage}_eval") if r["step"] == cfg.steps][-1]
    return {k: v for k, v in final.items() if k not in ("stage", "step")}
