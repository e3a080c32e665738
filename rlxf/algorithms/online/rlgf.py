"""RL with a guide policy (RLGF) on the controller: PPO++, AggreVaTeD and D2LOLS.

Chang, Brantley, Ramamurthy, Misra and Sun, "Learning to Generate Better Than Your LLM" (2023).
A guide ``pi_g`` (a better model sharing the learner's tokenizer) takes part in the rollout:

- **PPO++**: with probability ``beta`` a sequence is rolled in by the guide for a prefix of
  uniform random length (0 .. its own response length - 1), then the learner rolls out. The
  guide's prefix stays in the response but is masked: only the learner's tokens are trained and
  their behaviour log-probs are the learner's. The guide acts as a restart distribution.
- **AggreVaTeD**: with probability ``beta`` the learner rolls in to a uniform random position
  h, takes its action there, and the guide rolls out. Only the learner's action at h is trained,
  on the guide's advantage: GAE over the guide's states with the value head, which is fitted on
  the guide's states only (so it estimates the guide's value V^g; the learner's switch state h
  reads it by generalisation).
- **D2LOLS**: AggreVaTeD for the first ``tau`` rollouts, then PPO++.

Rows that are not guided (probability ``1 - beta``) are plain PPO rows. The update is PPO's
(:class:`rlxf.algorithms.online.ppo.PPO`) with per-row masks for the policy and the value loss.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from rlxf.algorithms.online.ppo import PPO, Critic
from rlxf.core.steps import Steps
from rlxf.policies.language import LanguagePolicy, Rollout

PI, GUIDE = 1, 2  # who sampled a response position (0 = padding)


def row_segments(ro: Rollout) -> list[tuple[list[int], list[float]]]:
    """Each row's tokens and their behaviour log-probs."""
    logps = ro.steps.logps.tolist()
    return [(r, logps[i][: len(r)]) for i, r in enumerate(ro.response_ids)]


def switch_points(lengths: list[int], rng: np.random.Generator) -> list[int]:
    """A switch position uniform over each sequence, ``0 .. length - 1``."""
    return [int(rng.integers(0, n)) for n in lengths]


def splice(heads: list[tuple[list[int], list[float]]], tails: list[tuple[list[int], list[float]]],
           head_owner: int, tail_owner: int, tail_finished: list[bool], max_new_tokens: int):
    """Join each row's head and tail into one response, the tail cut to ``max_new_tokens`` in all.

    Returns ``(response_ids, finished, logps [B, W], owner [B, W])``: ``owner`` names who sampled
    each position (:data:`PI`, :data:`GUIDE`, 0 on padding); ``finished`` is the tail's unless it
    was cut."""
    responses, finished, logps = [], [], []
    owners = []
    for (h, hl), (t, tl), fin in zip(heads, tails, tail_finished):
        room = max_new_tokens - len(h)
        responses.append(h + t[:room])
        logps.append(hl + tl[:room])
        owners.append([head_owner] * len(h) + [tail_owner] * len(t[:room]))
        finished.append(bool(fin) and len(t) <= room)
    width = max(1, max(len(r) for r in responses))
    lp = torch.zeros(len(responses), width)
    own = torch.zeros(len(responses), width, dtype=torch.long)
    for i, (l, o) in enumerate(zip(logps, owners)):
        lp[i, : len(l)] = torch.tensor(l)
        own[i, : len(o)] = torch.tensor(o, dtype=torch.long)
    return responses, finished, lp, own


def owner_counts(owner: Tensor) -> tuple[float, float]:
    """Tokens in the rollout's responses sampled by the learner and by the guide."""
    return float((owner == PI).sum()), float((owner == GUIDE).sum())


class RLGF(PPO):
    """Guided PPO: AggreVaTeD rollouts (guide rolls out) for rollout index < ``tau``, PPO++ rollouts
    (guide rolls in) after. ``beta`` is the per-sequence guide probability of the PPO++ phase,
    ``out_beta`` that of the AggreVaTeD phase; the guide samples at ``guide_temperature``/``guide_top_p``."""

    def __init__(self, critic: Critic, guide: LanguagePolicy, beta: float = 0.8, tau: float = 0,
                 out_beta: float = 1.0, guide_temperature: float = 1.0, guide_top_p: float = 1.0,
                 clip: float = 0.2, value_clip: float = 0.2, vf_coef: float = 0.5, gamma: float = 1.0,
                 lam: float = 0.95, whiten_advantages: bool = True):
        super().__init__(critic, clip, value_clip, vf_coef, gamma, lam, whiten_advantages)
        for name, p in (("beta", beta), ("out_beta", out_beta)):
            if not 0 <= p <= 1:
                raise ValueError(f"{type(self).__name__}: {name} must be in [0, 1], got {p}")
        if tau < 0:
            raise ValueError(f"{type(self).__name__}: tau must be >= 0, got {tau}")
        self.guide, self.beta, self.tau, self.out_beta = guide, float(beta), tau, float(out_beta)
        self.guide_temperature, self.guide_top_p = guide_temperature, guide_top_p
        self._masks: tuple[Tensor, Tensor] | None = None  # set by rollout, read by prepare
        self._counts = (0.0, 0.0)

    def phase(self, index: int) -> str:
        return "aggrevated" if index < self.tau else "ppo++"

    # -- rollouts ----------------------------------------------------------------------------
    def _guide_sample(self, prompts: list[list[int]], cfg, seed: int) -> Rollout:
        gen = torch.Generator(device=self.guide.device).manual_seed(seed)
        return self.guide.sample(prompts, 1, cfg.max_new_tokens, self.guide_temperature, self.guide_top_p, gen)

    def rollout(self, executor, policy: LanguagePolicy, index: int, prompts: list[list[int]], cfg, seed: int):
        if self.phase(index) == "aggrevated":
            return self.roll_out_with_guide(executor, policy, index, prompts, cfg, seed)
        return self.roll_in_with_guide(executor, policy, index, prompts, cfg, seed)

    def roll_in_with_guide(self, executor, policy, index, prompts, cfg, seed) -> Rollout:
        """PPO++: guided rows start from a guide prefix of uniform length; the learner finishes them."""
        k, T = cfg.samples_per_prompt, cfg.max_new_tokens
        rng = np.random.default_rng(seed % 2**63)
        guided = rng.random(len(prompts) * k) < self.beta
        if not guided.any():  # plain PPO's rollout, the same call with the same seed
            ro = executor.sample(policy, index, prompts, k, T, cfg.temperature, cfg.top_p, seed)
            self._masks, self._counts = (ro.steps.mask, ro.steps.mask), (float(ro.steps.mask.sum()), 0.0)
            return ro
        rows = [p for p in prompts for _ in range(k)]
        heads = [([], [])] * len(rows)
        where = np.flatnonzero(guided).tolist()
        g = row_segments(self._guide_sample([rows[i] for i in where], cfg, seed + 1))
        cuts = switch_points([len(t) for t, _ in g], rng)
        for i, (t, _), h in zip(where, g, cuts):
            heads[i] = (t[:h], [0.0] * h)  # the guide's log-probs are never read (masked)
        cont = executor.sample(policy, index, [r + h for r, (h, _) in zip(rows, heads)], 1, T, cfg.temperature,
                               cfg.top_p, seed)
        responses, finished, logps, owner = splice(heads, row_segments(cont), GUIDE, PI, cont.finished, T)
        mask = (owner == PI).float()
        self._masks, self._counts = (mask, mask), owner_counts(owner)
        return self._on_device(Rollout(rows, responses, finished, Steps(logps=logps * mask, mask=mask)), cont)

    def roll_out_with_guide(self, executor, policy, index, prompts, cfg, seed) -> Rollout:
        """AggreVaTeD: guided rows keep the learner's tokens up to and including a uniform switch
        position h, and the guide finishes them. The controller's mask covers h onward (GAE runs over
        the guide's states); the policy mask is h alone, the value mask the guide's positions."""
        k, T = cfg.samples_per_prompt, cfg.max_new_tokens
        rng = np.random.default_rng(seed % 2**63)
        ro = executor.sample(policy, index, prompts, k, T, cfg.temperature, cfg.top_p, seed)
        own = row_segments(ro)
        guided = (rng.random(len(own)) < self.out_beta).tolist()
        cuts = switch_points([len(t) for t, _ in own], rng)
        heads = [(t[: h + 1], l[: h + 1]) if g else (t, l) for (t, l), h, g in zip(own, cuts, guided)]
        tails, tail_finished = [([], [])] * len(own), list(ro.finished)
        # the guide continues where the learner's head did not end the response
        where = [i for i, (t, _) in enumerate(heads) if guided[i] and len(t) < len(own[i][0])]
        if where:
            g = self._guide_sample([ro.prompt_ids[i] + heads[i][0] for i in where], cfg, seed + 1)
            for i, seg, fin in zip(where, row_segments(g), g.finished):
                tails[i], tail_finished[i] = seg, fin
        responses, finished, logps, owner = splice(heads, tails, PI, GUIDE, tail_finished, T)
        positions = torch.arange(owner.shape[1]).expand_as(owner)
        switch = torch.tensor([len(h) - 1 if g else -1 for (h, _), g in zip(heads, guided)])[:, None]
        policy_mask = ((owner == PI) & ((switch < 0) | (positions == switch))).float()
        value_mask = ((owner == PI) & (switch < 0) | (owner == GUIDE)).float()
        mask = ((owner > 0) & (positions >= switch.clamp(min=0))).float()
        self._masks, self._counts = (policy_mask, value_mask), owner_counts(owner)
        return self._on_device(Rollout(ro.prompt_ids, responses, finished, Steps(logps=logps * policy_mask, mask=mask)),
                               ro)

    def _on_device(self, spliced: Rollout, sampled: Rollout) -> Rollout:
        """``spliced`` (built on the CPU) and the stashed masks on the device the learner sampled on."""
        device = sampled.steps.logps.device
        self._masks = tuple(m.to(device) for m in self._masks)
        return Rollout(spliced.prompt_ids, spliced.response_ids, spliced.finished, spliced.steps.to(device))

    # -- update ------------------------------------------------------------------------------
    def prepare(self, batch, ctx) -> None:
        """PPO's advantages with the rollout's policy and value masks (whitened over trained tokens),
        and the rollout's token counts by who sampled them."""
        policy_mask, value_mask = self._masks
        self._masks = None
        keep = batch.steps.mask  # the controller zeroes rows that no reward scored
        batch.extra.update(policy_mask=policy_mask * keep, value_mask=value_mask * keep)
        super().prepare(batch, ctx)
        pi_tokens, guide_tokens = self._counts
        batch.stats.update(policy_tokens=pi_tokens, guide_tokens=guide_tokens)


class PPOPlusPlus(RLGF):
    """PPO++: the guide rolls in (a random prefix) with probability ``beta``, the learner rolls out."""

    def __init__(self, critic: Critic, guide: LanguagePolicy, beta: float = 0.8, guide_temperature: float = 1.0,
                 guide_top_p: float = 1.0, clip: float = 0.2, value_clip: float = 0.2, vf_coef: float = 0.5,
                 gamma: float = 1.0, lam: float = 0.95, whiten_advantages: bool = True):
        super().__init__(critic, guide, beta, 0, 1.0, guide_temperature, guide_top_p, clip, value_clip, vf_coef,
                         gamma, lam, whiten_advantages)


class AggreVaTeD(RLGF):
    """AggreVaTeD-style: the learner rolls in, takes one action, the guide rolls out (probability ``beta``)."""

    def __init__(self, critic: Critic, guide: LanguagePolicy, beta: float = 1.0, guide_temperature: float = 1.0,
                 guide_top_p: float = 1.0, clip: float = 0.2, value_clip: float = 0.2, vf_coef: float = 0.5,
                 gamma: float = 1.0, lam: float = 0.95, whiten_advantages: bool = True):
        super().__init__(critic, guide, 0.0, float("inf"), beta, guide_temperature, guide_top_p, clip, value_clip,
                         vf_coef, gamma, lam, whiten_advantages)


class D2LOLS(RLGF):
    """AggreVaTeD for the first ``tau`` rollouts (guide probability ``out_beta``), then PPO++ (``beta``)."""

    def __init__(self, critic: Critic, guide: LanguagePolicy, beta: float = 0.8, tau: int = 20,
                 out_beta: float = 1.0, guide_temperature: float = 1.0, guide_top_p: float = 1.0,
                 clip: float = 0.2, value_clip: float = 0.2, vf_coef: float = 0.5, gamma: float = 1.0,
                 lam: float = 0.95, whiten_advantages: bool = True):
        super().__init__(critic, guide, beta, tau, out_beta, guide_temperature, guide_top_p, clip, value_clip,
                         vf_coef, gamma, lam, whiten_advantages)
