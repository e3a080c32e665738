"""Supervised fine-tuning: token-level negative log-likelihood of responses given prompts."""

from __future__ import annotations

from rlxf.algorithms.batching import epoch_batches
from rlxf.algorithms.loop import OptimConfig, train
from rlxf.core.runs import Run
from rlxf.policies.language import LanguagePolicy


def train_sft(run: Run, stage: str, policy: LanguagePolicy, prompt_ids: list[list[int]],
              response_ids: list[list[int]], cfg: OptimConfig, seed: int, quiet: bool = False) -> None:
    """Minimise the mean NLL per response token over each global batch (padding- and
    micro-batch-invariant: the denominator is the global batch's token count)."""
    make_batch = epoch_batches(len(prompt_ids), cfg.batch_size, seed)

    def loss_fn(micro: list[int], batch: list[int]):
        n_tokens = sum(len(response_ids[i]) for i in batch)
        steps = policy.steps([prompt_ids[i] for i in micro], [response_ids[i] for i in micro])
        nll = -steps.sum().sum() / n_tokens
        return nll, {"loss": nll.item()}

    train(run, stage, policy.model, cfg, make_batch, loss_fn, quiet=quiet)
