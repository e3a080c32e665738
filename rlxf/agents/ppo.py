"""Multi-turn PPO with turn-level credit, on the online controller.

A rollout plays whole episodes in a text environment with :func:`rlxf.agents.render.lm_actor` and lays
each one out as a single token sequence: the prompt is the first observation, the response everything after
it (the agent's actions, the environment's later observations, and the last observation). The controller's
mask is the action mask, so the policy loss, the KL to the reference and the behaviour log-probs cover only
the tokens the agent wrote; the observations are context.

Credit is assigned per turn, as LMRL-Gym's PPO does: the value of turn ``t`` is the critic's value of the
context before the turn's first action token; GAE runs over turns (the shared
:func:`rlxf.objectives.policy_gradient.gae`) with the turn's environment reward plus the KL penalties of its
tokens as its reward; a truncated episode bootstraps from the value of its last observation, a terminated one
does not. The turn's advantage is then spread onto every token of its action, and the value loss is on the
turns' first tokens. The update itself is :class:`rlxf.algorithms.online.ppo.PPO`'s (clipped policy loss,
clipped value loss).

The controller's "prompts" are environment seeds (:func:`seed_prompts`); ``samples_per_prompt`` episodes are
played from each chosen seed. Episodes run in the driver process, whatever the executor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from rlxf.agents.env import TextEnv, make_env
from rlxf.agents.episodes import TextEpisode, run_episodes, success_rate
from rlxf.agents.render import encode_episode, lm_actor
from rlxf.algorithms.online.controller import OnlineError
from rlxf.algorithms.online.ppo import PPO, Critic
from rlxf.core.steps import Steps
from rlxf.objectives.policy_gradient import gae, whiten
from rlxf.policies.language import LanguagePolicy, Rollout


def seed_prompts(seeds: list[int]) -> list[list[int]]:
    """The controller's prompt list for multi-turn PPO: prompt ``i`` stands for environment seed ``seeds[i]``."""
    return [[int(s)] for s in seeds]


@dataclass
class EpisodeLayout:
    """Where each turn sits in the episodes' token rows ``[B, W]`` (W = the longest response).

    ``turn`` is the turn index of each action token (-1 elsewhere); ``starts [B, N]`` the column of each
    turn's first action token (N = the most turns; 0 on padding, with ``turn_mask`` 0); ``last [B]`` the
    column whose value is that of the last observation (a placeholder token after it); ``rewards [B, N]``
    the environment's reward per turn; ``terminated [B]`` whether the task ended the episode (no bootstrap)."""

    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    action_mask: Tensor
    logps: Tensor
    turn: Tensor
    starts: Tensor
    turn_mask: Tensor
    last: Tensor
    rewards: Tensor
    terminated: Tensor


def layout_episodes(policy: LanguagePolicy, episodes: list[TextEpisode]) -> EpisodeLayout:
    """Lay out ``episodes`` (played by an LM actor, so they keep their sampled ids and log-probs) as
    prompt/response rows for the controller. Errors when an episode is longer than the model's context."""
    positions = getattr(policy.model.config, "n_positions", None) or getattr(
        policy.model.config, "max_position_embeddings", None)
    eos = policy.tokenizer.eos_token_id
    prompts, responses, per_row = [], [], []
    for i, ep in enumerate(episodes):
        if ep.action_logps is None or len(ep.action_logps) != len(ep):
            raise ValueError(f"episode {i} (seed {ep.seed}) has no sampled log-probs for its actions; multi-turn PPO "
                             "trains on episodes played by rlxf.agents.render.lm_actor")
        enc = encode_episode(policy, ep, final_observation=True)
        head = enc.spans[0][0]
        ids = enc.ids + [eos]  # a placeholder: the critic reads the last observation's value before it
        if positions is not None and len(ids) > positions:
            raise OnlineError(f"episode {i} (seed {ep.seed}) is {len(ids)} tokens, more than the model's "
                              f"{positions} positions; use a model with more positions or lower the env's max_turns")
        prompts.append(ids[:head])
        responses.append(ids[head:])
        per_row.append([(a - head, b - head) for a, b in enc.spans])
    B, W, N = len(episodes), max(len(r) for r in responses), max(len(ep) for ep in episodes)
    mask, logps = torch.zeros(B, W), torch.zeros(B, W)
    turn = torch.full((B, W), -1, dtype=torch.long)
    starts, turn_mask, rewards = torch.zeros(B, N, dtype=torch.long), torch.zeros(B, N), torch.zeros(B, N)
    for i, (ep, spans) in enumerate(zip(episodes, per_row)):
        for t, (a, b) in enumerate(spans):
            mask[i, a:b] = 1.0
            turn[i, a:b] = t
            logps[i, a:b] = torch.tensor(ep.action_logps[t][: b - a])
            starts[i, t] = a
        turn_mask[i, : len(ep)] = 1.0
        rewards[i, : len(ep)] = torch.tensor(ep.rewards)
    last = torch.tensor([len(r) - 1 for r in responses])
    terminated = torch.tensor([ep.terminated for ep in episodes])
    return EpisodeLayout(prompts, responses, mask, logps, turn, starts, turn_mask, last, rewards, terminated)


def turn_rewards(env_rewards: Tensor, token_rewards: Tensor, turn: Tensor) -> Tensor:
    """Each turn's reward ``[B, N]``: the environment's reward plus the sum of the per-token rewards (the KL
    penalties) of the turn's action tokens (``turn [B, W]``, -1 off actions)."""
    out = env_rewards.clone()
    on = turn >= 0
    rows = torch.arange(turn.shape[0]).unsqueeze(1).expand_as(turn)
    out.index_put_((rows[on], turn[on]), token_rewards[:, : turn.shape[1]][on].to(out.dtype), accumulate=True)
    return out


def spread(per_turn: Tensor, turn: Tensor) -> Tensor:
    """Per-token values ``[B, W]``: each action token gets its turn's entry of ``per_turn [B, N]``; 0 off actions."""
    on = turn >= 0
    picked = per_turn.gather(1, turn.clamp(min=0))
    return torch.where(on, picked, torch.zeros((), dtype=per_turn.dtype))


def turn_advantages(layout: EpisodeLayout, token_values: Tensor, token_rewards: Tensor, gamma: float,
                    lam: float) -> tuple[Tensor, Tensor]:
    """Turn-level GAE: ``(advantages, returns)``, both ``[B, N]``. ``token_values [B, W]`` is the critic's value
    of the state before each response token, so turn ``t``'s value is read at its first action token and the
    bootstrap of a truncated episode at the placeholder after its last observation."""
    values = token_values.gather(1, layout.starts) * layout.turn_mask
    bootstrap = token_values.gather(1, layout.last.unsqueeze(1)).squeeze(1)
    rewards = turn_rewards(layout.rewards, token_rewards, layout.turn)
    return gae(rewards, values, layout.turn_mask, gamma, lam, bootstrap_value=bootstrap,
               terminated=layout.terminated)


class MultiTurnPPO(PPO):
    """PPO over whole episodes of a text environment with turn-level GAE (module docstring).

    ``env`` is a built-in environment name or ``file.py:factory`` (:func:`rlxf.agents.env.make_env`), with
    ``env_args`` for its factory; or pass ``make`` (a no-argument factory) instead. ``gamma``/``lam`` are per
    turn. Defaults follow LMRL-Gym's PPO: clip 0.2, value clip 0.2, GAE lambda 0.95."""

    uses_reference = False

    def __init__(self, critic: Critic, env: str = "", env_args: dict | None = None,
                 make: Callable[[], TextEnv] | None = None, clip: float = 0.2, value_clip: float = 0.2,
                 vf_coef: float = 0.5, gamma: float = 1.0, lam: float = 0.95, whiten_advantages: bool = True):
        super().__init__(critic, clip, value_clip, vf_coef, gamma, lam, whiten_advantages)
        if make is None and not env:
            raise OnlineError("multi-turn PPO needs an environment: set method_args.env (a built-in name or "
                              "file.py:factory) or pass make=")
        self.make = make if make is not None else (lambda: make_env(env, **(env_args or {})))
        self._layout: EpisodeLayout | None = None
        self.episodes: list[TextEpisode] = []

    def rollout(self, executor, policy: LanguagePolicy, index: int, prompts: list[list[int]], cfg,
                seed: int) -> Rollout:
        if any(len(p) != 1 for p in prompts):
            raise OnlineError("multi-turn PPO's prompts are environment seeds, one per prompt: build them with "
                              "rlxf.agents.ppo.seed_prompts(seeds)")
        seeds = [p[0] for p in prompts for _ in range(cfg.samples_per_prompt)]
        actor = lm_actor(policy, cfg.max_new_tokens, cfg.temperature, torch.Generator().manual_seed(seed % 2**63))
        # batch = all rows: rows of one env seed differ only through the shared generator's draws
        self.episodes = run_episodes(self.make, actor, seeds, policy="ppo", batch=len(seeds))
        lay = layout_episodes(policy, self.episodes)
        self._layout = lay
        dev = policy.device
        return Rollout(lay.prompt_ids, lay.response_ids, [True] * len(seeds),
                       Steps(logps=lay.logps.to(dev), mask=lay.action_mask.to(dev)))

    @torch.no_grad()
    def prepare(self, batch, ctx) -> None:
        lay, s = self._layout, batch.samples
        T = batch.steps.num_steps
        values = self.critic(s.prompt_ids, s.response_ids)[:, :T].cpu()
        adv_t, ret_t = turn_advantages(lay, values, batch.token_rewards.cpu(), self.gamma, self.lam)
        mask = lay.action_mask[:, :T]
        adv = spread(adv_t, lay.turn[:, :T])
        first = torch.zeros_like(mask).scatter_(1, lay.starts, 1.0) * mask  # each turn's first action token
        dev = batch.steps.mask.device
        batch.extra.update(values=values.to(dev), returns=spread(ret_t, lay.turn[:, :T]).to(dev),
                           value_mask=first.to(dev),
                           adv=(whiten(adv, mask) if self.whiten else adv * mask).to(dev))
        rate, _ = success_rate(self.episodes)
        batch.stats.update(success=rate, env_return=sum(e.ret for e in self.episodes) / len(self.episodes),
                           turns=sum(len(e) for e in self.episodes) / len(self.episodes),
                           invalid=sum(sum(e.invalid) for e in self.episodes) / max(1, sum(len(e) for e in self.episodes)))
