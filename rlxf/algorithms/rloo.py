"""Online RL against a reward model: REINFORCE with a leave-one-out baseline (RLOO).

Each step samples k responses per prompt from the current policy, scores them with the
reward model, folds the KL to the reference into the sequence reward
(R = r - kl_coef * sum_t log pi/pi_ref), and takes one policy-gradient step with
advantages R_i - mean_{j != i} R_j (Ahmadian et al. 2024, "Back to Basics").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from rlxf.algorithms.batching import step_rng
from rlxf.algorithms.loop import OptimConfig, train
from rlxf.core.runs import Run
from rlxf.objectives.policy_gradient import reinforce_loss, rloo_advantages
from rlxf.policies.language import LanguagePolicy


@dataclass
class RolloutSettings:
    samples_per_prompt: int = 4
    max_new_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    kl_coef: float = 0.05


def train_rloo(run: Run, stage: str, policy: LanguagePolicy, ref: LanguagePolicy,
               prompts: list[list[int]], reward_fn: Callable[[list[list[int]], list[list[int]]], torch.Tensor],
               cfg: OptimConfig, rollout: RolloutSettings, seed: int, quiet: bool = False,
               monitor: Callable[[list[list[int]], list[list[int]], list[bool]], dict] | None = None) -> None:
    """``cfg.batch_size`` prompts per step, ``rollout.samples_per_prompt`` samples each.
    ``monitor`` may add evaluation-only metrics (e.g. gold reward) to each step's log line."""
    k = rollout.samples_per_prompt

    def make_batch(step: int) -> list:
        rng = step_rng(seed, step)
        chosen = [prompts[i] for i in rng.integers(0, len(prompts), cfg.batch_size)]
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        ro = policy.sample(chosen, n=k, max_new_tokens=rollout.max_new_tokens, temperature=rollout.temperature,
                           top_p=rollout.top_p, generator=gen)
        ref_steps = ref.score(ro.prompt_ids, ro.response_ids)
        scores = reward_fn(ro.prompt_ids, ro.response_ids)
        kl = (ro.steps.logps - ref_steps.logps).mul(ro.steps.mask).sum(-1)
        total = scores - rollout.kl_coef * kl
        adv = rloo_advantages(total.view(-1, k)).reshape(-1)
        extra = monitor(ro.prompt_ids, ro.response_ids, ro.finished) if monitor else {}
        stats = {"proxy_reward": scores.mean().item(), "kl": kl.mean().item(),
                 "length": ro.steps.lengths().mean().item(), **extra}
        # a batch is a list of groups so micro-batches never split a prompt's k samples
        return [(ro.prompt_ids[g * k:(g + 1) * k], ro.response_ids[g * k:(g + 1) * k], adv[g * k:(g + 1) * k], stats)
                for g in range(cfg.batch_size)]

    def loss_fn(micro: list, batch: list):
        prompts_ = [p for g in micro for p in g[0]]
        responses = [r for g in micro for r in g[1]]
        adv = torch.cat([g[2] for g in micro])
        steps = policy.steps(prompts_, responses)
        loss = reinforce_loss(steps, adv).sum() / (len(batch) * k)
        share = len(micro) / len(batch)
        metrics = {"loss": loss.item(), **{key: v * share for key, v in batch[0][3].items()}}
        return loss, metrics

    train(run, stage, policy.model, cfg, make_batch, loss_fn, quiet=quiet)
