"""The in-process executor: sampling and scoring are plain calls in the driver."""

from __future__ import annotations

import torch

from rlxf.core.steps import Steps
from rlxf.executors.generation import GenerationBackend, HFBackend
from rlxf.policies.language import LanguagePolicy, Rollout


def shard_seeds(seed: int, shards: int) -> list[int]:
    """One generator seed per rollout shard, the same for every backend."""
    return [seed] if shards == 1 else [(seed + 1_000_003 * i) % 2**62 for i in range(shards)]


def split_prompts(prompts: list, shards: int) -> list[list]:
    """Contiguous, nearly equal shards of the prompt list (order kept)."""
    size, rest = divmod(len(prompts), shards)
    out, start = [], 0
    for i in range(shards):
        end = start + size + (1 if i < rest else 0)
        out.append(prompts[start:end])
        start = end
    return out


def merge_rollouts(parts: list[Rollout]) -> Rollout:
    parts = [p for p in parts if p.response_ids]
    return Rollout([x for p in parts for x in p.prompt_ids], [x for p in parts for x in p.response_ids],
                   [x for p in parts for x in p.finished], Steps.cat([p.steps for p in parts]))


def weights_of(policy: LanguagePolicy) -> dict[str, torch.Tensor]:
    """The policy's state dict, detached, on the CPU: what a generation engine loads for a version."""
    return {k: v.detach().cpu() for k, v in policy.model.state_dict().items()}


def score_samples(ref: LanguagePolicy, scorer, samples, step: int):
    """Reference log-probs ``[B, T]`` (None when ``ref`` is None) and the scorer's ``(reward, parts)``."""
    ref_logps = None if ref is None else ref.score(samples.prompt_ids, samples.response_ids).logps
    return ref_logps, scorer(samples, step)


class LocalExecutor:
    """Runs ``shards`` rollout shards one after another in this process, with a ``backend``
    (a :class:`~rlxf.executors.generation.GenerationBackend` class) built on the driver's policy."""

    def __init__(self, shards: int = 1, backend: type[GenerationBackend] = HFBackend):
        if shards < 1:
            raise ValueError(f"executor shards must be >= 1, got {shards}")
        self.shards, self.backend = shards, backend
        self.exact_logprobs = backend.exact_logprobs
        self._engine, self._version = None, None

    def sample(self, policy, version, prompts, n, max_new_tokens, temperature, top_p, seed) -> Rollout:
        if self._engine is None or self._engine.policy is not policy:
            self._engine, self._version = self.backend(policy), None
        if not self._engine.in_place and version != self._version:
            self._engine.load_weights(weights_of(policy))
        self._version = version
        return merge_rollouts([
            self._engine.generate(part, n, max_new_tokens, temperature, top_p, s)
            for part, s in zip(split_prompts(prompts, self.shards), shard_seeds(seed, self.shards)) if part
        ])

    def score(self, ref, scorer, samples, step):
        return score_samples(ref, scorer, samples, step)

    def close(self) -> None:
        self._engine = None
