"""Offline multi-turn learners on text episodes: BC, filtered BC, Monte-Carlo return regression and ILQL
with Q-guided decoding (the LMRL-Gym baselines), all on the shared loop :func:`rlxf.algorithms.loop.train`.

Every learner sees an episode as its turns. Turn ``t``'s *context* is the chat-template rendering of the
last ``context_turns`` observations and the actions between them (all of the history by default; one turn
is enough where the observation is Markov, as in a fully observed maze), and its *action* the ids the agent
wrote plus EOS (:mod:`rlxf.agents.render`). BC is SFT on (context, action) pairs; filtered BC keeps the top
fraction of episodes by return first.

The value learners are token-level, as in ILQL: a copy of the policy's transformer carries Q heads with one
value per next token (``Q(s, .)``, ``[vocab]``) and a V head. Inside a turn a token's reward is 0, its
discount 1 and its next state the one after it; a turn's last token gets the turn's reward, discount
``gamma`` and the next observation's state (bootstrapped unless the task terminated; a truncated episode
bootstraps, as in control). Monte-Carlo regression fits one Q head to the turn's return-to-go (optional CQL
term). ILQL fits double Q heads to ``r + gamma V(s')``, V by expectile regression on the min of Polyak-averaged
target Q heads, plus an optional CQL term. Decoding samples from ``log pi_BC + beta (Q - V)``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from rlxf.agents.episodes import Actor, TextEpisode
from rlxf.agents.render import Contexts, action_ids, context_ids, encode_episode
from rlxf.algorithms.batching import epoch_batches
from rlxf.algorithms.control.targets import load_target_state, target_state
from rlxf.algorithms.loop import OptimConfig, single_learner, train
from rlxf.algorithms.sft import train_sft
from rlxf.core.runs import Run
from rlxf.objectives.agents import (
    cql_loss,
    gather_tokens,
    ilql_q_loss,
    ilql_v_loss,
    mc_return_loss,
    q_guided_logits,
    td_targets,
)
from rlxf.policies.fast_decode import GPT2Decoder, supports
from rlxf.policies.language import LanguagePolicy
from rlxf.policies.logprobs import pad_tokens, token_batch

METHODS = ("bc", "filtered_bc", "mc", "ilql")


# -- episodes as turns ----------------------------------------------------------------------------


def window(episode: TextEpisode, t: int, context_turns: int | None) -> TextEpisode:
    """The part of ``episode`` that turn ``t``'s context shows: observations ``lo..t`` and the actions
    between them, ``lo = t - context_turns + 1`` (0 when ``context_turns`` is None)."""
    if context_turns is not None and context_turns < 1:
        raise ValueError(f"context_turns must be >= 1 or None, got {context_turns}")
    lo = 0 if context_turns is None else max(0, t - context_turns + 1)
    ids = None if episode.action_ids is None else episode.action_ids[lo:t]
    return TextEpisode(env=episode.env, seed=episode.seed, observations=episode.observations[lo : t + 1],
                       actions=episode.actions[lo:t], rewards=episode.rewards[lo:t], action_ids=ids)


@dataclass
class Turns:
    """One row per turn of a set of episodes: token ids of its context, its action (with EOS) and the next
    context, its reward, whether the task ended there (``done``; a truncation is not done), and the
    discounted return-to-go from it to the episode's end."""

    contexts: list[list[int]] = field(default_factory=list)
    actions: list[list[int]] = field(default_factory=list)
    next_contexts: list[list[int]] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    done: list[bool] = field(default_factory=list)
    returns: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.actions)


def episode_turns(policy: LanguagePolicy, episodes: list[TextEpisode], context_turns: int | None = None,
                  gamma: float = 1.0) -> Turns:
    """The turns of ``episodes`` as token ids (see :class:`Turns`). A context longer than the model's
    positions is an error naming the episode and turn (set ``context_turns`` to shorten it)."""
    positions = getattr(policy.model.config, "n_positions", None) or getattr(
        policy.model.config, "max_position_embeddings", None)
    out = Turns()
    for n, ep in enumerate(episodes):
        acts = action_ids(policy, ep)
        if context_turns is None:  # every context is a prefix of the whole episode's ids
            enc = encode_episode(policy, ep, final_observation=True)
            ctx = [enc.ids[:start] for start, _ in enc.spans] + [enc.ids]
        else:
            ctx = [context_ids(policy, window(ep, t, context_turns)) for t in range(len(ep) + 1)]
        rtg = ep.returns_to_go(gamma)
        for t in range(len(ep)):
            if positions and len(ctx[t]) + len(acts[t]) > positions:
                raise ValueError(f"episode {n} (env {ep.env}, seed {ep.seed}) turn {t}: context and action take "
                                 f"{len(ctx[t]) + len(acts[t])} tokens, more than the model's {positions} "
                                 "positions; set context_turns to keep fewer past turns")
            out.contexts.append(ctx[t])
            out.actions.append(acts[t])
            out.next_contexts.append(ctx[t + 1])
            out.rewards.append(float(ep.rewards[t]))
            out.done.append(bool(ep.terminated and t == len(ep) - 1))
            out.returns.append(float(rtg[t]))
    if not out.actions:
        raise ValueError("the episodes hold no turns to learn from")
    return out


def top_fraction(episodes: list[TextEpisode], fraction: float) -> list[TextEpisode]:
    """Filtered BC's data: the ``ceil(fraction * n)`` episodes of highest return (ties keep dataset order)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"filtered BC: fraction must be in (0, 1], got {fraction}")
    keep = max(1, math.ceil(fraction * len(episodes)))
    order = sorted(range(len(episodes)), key=lambda i: (-episodes[i].ret, i))
    return [episodes[i] for i in sorted(order[:keep])]


# -- behaviour cloning ---------------------------------------------------------------------------


def train_bc(run: Run, stage: str, policy: LanguagePolicy, episodes: list[TextEpisode], cfg: OptimConfig,
             context_turns: int | None = None, seed: int = 0, fraction: float = 1.0, quiet: bool = True) -> None:
    """Behaviour cloning: the NLL of every action token given its turn's context (SFT on turns). With
    ``fraction < 1``, filtered BC (%BC): only the top ``fraction`` of episodes by return."""
    data = episode_turns(policy, top_fraction(episodes, fraction) if fraction < 1.0 else episodes, context_turns)
    train_sft(run, stage, policy, data.contexts, data.actions, cfg, seed, quiet=quiet)


# -- token-level value heads -----------------------------------------------------------------------


@dataclass
class ValueConfig:
    """Settings of Monte-Carlo regression and ILQL (LMRL-Gym's ILQL: tau 0.95, gamma 0.99, Polyak 0.005,
    cql 0, beta 8; the defaults here are for tiny models and a few hundred steps)."""

    optim: OptimConfig = field(default_factory=lambda: OptimConfig(steps=300, batch_size=64, lr=1e-3,
                                                                    checkpoint_every=0))
    gamma: float = 0.99
    expectile: float = 0.9
    polyak: float = 0.05  # rate of the target Q heads, per optimiser step
    cql_weight: float = 1.0
    beta: float = 4.0  # decoding: log pi_BC + beta (Q - V)
    context_turns: int | None = None
    seed: int = 0


class TokenValues(nn.Module):
    """A transformer (a copy of the policy's, so it starts from the BC features) with token-level Q heads
    (``[hidden] -> [vocab]``), their Polyak-averaged ``q_target`` copies and a V head. ``mc`` models use
    only the first Q head and decode with it alone."""

    def __init__(self, trunk: nn.Module, hidden: int, vocab: int, mc: bool = False):
        super().__init__()
        self.trunk, self.mc = trunk, mc
        self.q = nn.ModuleList([nn.Linear(hidden, vocab) for _ in range(1 if mc else 2)])
        self.q_target = copy.deepcopy(self.q).requires_grad_(False)
        self.v = nn.Linear(hidden, 1)

    @classmethod
    def from_policy(cls, policy: LanguagePolicy, mc: bool = False, seed: int = 0) -> "TokenValues":
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            cfg = policy.model.config
            return cls(copy.deepcopy(policy.model.base_model), cfg.hidden_size, cfg.vocab_size, mc)

    def hidden(self, ids: Tensor, attn: Tensor) -> Tensor:
        return self.trunk(input_ids=ids, attention_mask=attn).last_hidden_state

    @torch.no_grad()
    def polyak(self, rate: float) -> None:
        for t, s in zip(self.q_target.parameters(), self.q.parameters()):
            t.lerp_(s, rate)

    def decoding(self, h: Tensor) -> tuple[Tensor, Tensor | None]:
        """``(Q(s, .), V(s))`` used at decoding: MC's Q head and no V, or ILQL's min target Q and V."""
        if self.mc:
            return self.q[0](h), None
        return torch.minimum(*(head(h) for head in self.q_target)), self.v(h).squeeze(-1)


@dataclass
class TokenBatchValues:
    """A batch of turns on the value model, per action token ``[B, T]``: the taken tokens, mask, the hidden
    states predicting each token, the next states' hidden states, and rewards/discounts/done per token."""

    tokens: Tensor
    mask: Tensor
    h: Tensor
    h_next: Tensor
    rewards: Tensor
    discounts: Tensor
    done: Tensor
    returns: Tensor


def turn_batch(model: TokenValues, data: Turns, idx: list[int], pad_id: int, gamma: float) -> TokenBatchValues:
    """Run the value model's transformer on turns ``idx`` (their contexts + actions, and next contexts)."""
    b = token_batch([data.contexts[i] for i in idx], [data.actions[i] for i in idx], pad_id, "right")
    h = b.pick(model.hidden(b.ids, b.attn))
    n_ids, n_attn = pad_tokens([data.next_contexts[i] for i in idx], pad_id)
    hn = model.hidden(n_ids, n_attn)[torch.arange(len(idx)), n_attn.sum(-1) - 1]  # [B, H]: the next state
    last = (b.mask.sum(-1).long() - 1).unsqueeze(-1)
    at_last = torch.zeros_like(b.mask).scatter(1, last, 1.0)
    rewards = at_last * torch.tensor([data.rewards[i] for i in idx]).unsqueeze(-1)
    discounts = torch.where(at_last > 0, gamma, 1.0)
    done = at_last * torch.tensor([float(data.done[i]) for i in idx]).unsqueeze(-1)
    returns = torch.tensor([data.returns[i] for i in idx]).unsqueeze(-1).expand_as(b.mask)
    return TokenBatchValues(b.targets, b.mask, h, hn, rewards, discounts, done, returns)


def next_values(v: Tensor, v_next: Tensor, mask: Tensor) -> Tensor:
    """V of each token's next state ``[B, T]``: the following token's state inside the turn, the next
    context's (``v_next [B]``) after the turn's last token."""
    shifted = torch.cat([v[:, 1:], torch.zeros_like(v[:, :1])], 1)
    last = (mask.sum(-1).long() - 1).unsqueeze(-1)
    return shifted.scatter(1, last, v_next.unsqueeze(-1))


def mc_losses(model: TokenValues, tb: TokenBatchValues, cfg: ValueConfig) -> dict[str, Tensor]:
    """Monte-Carlo regression per token (unreduced, ``[B, T]``): Q regression and the CQL term."""
    q_all = model.q[0](tb.h)
    return {"q": mc_return_loss(gather_tokens(q_all, tb.tokens), tb.returns),
            "cql": cfg.cql_weight * cql_loss(q_all, tb.tokens)}


def ilql_losses(model: TokenValues, tb: TokenBatchValues, cfg: ValueConfig) -> dict[str, Tensor]:
    """ILQL's losses per token (unreduced, ``[B, T]``): double-Q TD, V expectile, CQL on both heads."""
    q_all = [head(tb.h) for head in model.q]
    with torch.no_grad():
        q_t = torch.minimum(*(gather_tokens(head(tb.h), tb.tokens) for head in model.q_target))
    v = model.v(tb.h).squeeze(-1)
    v_next = model.v(tb.h_next).squeeze(-1)
    targets = td_targets(tb.rewards, next_values(v, v_next, tb.mask).detach(), tb.discounts, tb.done)
    q1, q2 = (gather_tokens(q, tb.tokens) for q in q_all)
    return {"q": ilql_q_loss(q1, q2, targets), "v": ilql_v_loss(q_t, v, cfg.expectile),
            "cql": cfg.cql_weight * sum(cql_loss(q, tb.tokens) for q in q_all)}


def train_values(run: Run, stage: str, policy: LanguagePolicy, episodes: list[TextEpisode], cfg: ValueConfig,
                 method: str = "ilql", quiet: bool = True) -> TokenValues:
    """Fit token-level values (``method`` "mc" or "ilql") on ``episodes``; returns the value model. The
    loss is the mean over the global batch's action tokens of the summed per-token terms."""
    if method not in ("mc", "ilql"):
        raise ValueError(f"value method must be 'mc' or 'ilql', got {method!r}")
    data = episode_turns(policy, episodes, cfg.context_turns, cfg.gamma)
    model = TokenValues.from_policy(policy, mc=method == "mc", seed=cfg.seed)
    losses = mc_losses if method == "mc" else ilql_losses
    make_batch = epoch_batches(len(data), cfg.optim.batch_size, cfg.seed)
    pad = policy.tokenizer.pad_token_id

    def loss_fn(micro: list[int], batch: list[int]):
        if method == "ilql" and micro[0] == batch[0]:  # once per optimiser step, in its first micro-batch
            model.polyak(cfg.polyak)
        n_tokens = sum(len(data.actions[i]) for i in batch)
        tb = turn_batch(model, data, micro, pad, cfg.gamma)
        parts = {k: (v * tb.mask).sum() / n_tokens for k, v in losses(model, tb, cfg).items()}
        return sum(parts.values()), {k: v.item() for k, v in parts.items()}

    single_learner(run, stage, "ILQL moves its target heads once per step, in the batch's first micro-batch")
    train(run, stage, model, cfg.optim, make_batch, loss_fn, quiet=quiet, extra_state=lambda: target_state(model),
          on_resume=lambda state: load_target_state(model, state))
    return model


# -- acting -------------------------------------------------------------------------------------------


def guided_actor(policy: LanguagePolicy, values: TokenValues | None = None, beta: float = 0.0,
                 context_turns: int | None = None, max_new_tokens: int = 8, temperature: float = 1.0,
                 generator: torch.Generator | None = None) -> Actor:
    """An actor sampling each action token from ``log pi(.|s) + beta (Q(s, .) - V(s))`` at ``temperature``
    (:func:`rlxf.objectives.agents.q_guided_logits`); without ``values`` it samples the policy itself. The
    context is the one the learners trained on (the last ``context_turns`` turns)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    eos, pad = policy.tokenizer.eos_token_id, policy.tokenizer.pad_token_id

    guided = values is not None and beta != 0.0
    contexts = Contexts(policy)  # the whole history, one turn longer each call

    def pick(logits: Tensor, h: Tensor | None) -> list[int]:
        """One token for each alive row from its policy logits (and value model hidden state)."""
        if guided:
            q_all, v = values.decoding(h)
            logits = q_guided_logits(logits, q_all, v, beta)
        return torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=generator).squeeze(1).tolist()

    @torch.no_grad()
    def act(envs, episodes: list[TextEpisode]) -> list[str]:
        prompts = (contexts(episodes) if context_turns is None
                   else [context_ids(policy, window(ep, len(ep), context_turns)) for ep in episodes])
        out: list[list[int]] = [[] for _ in prompts]
        alive = list(range(len(prompts)))
        # GPT-2 models decode from a key/value cache (rlxf.policies.fast_decode): one prefill per turn, not a
        # whole forward pass per token; other models rerun the growing context for each token
        cached = supports(policy.model) and (not guided or supports(values.trunk))
        if cached:
            ids, attn = pad_tokens(prompts, pad, left=True)
            pos = (attn.cumsum(-1) - 1).clamp(min=0)
            decoders = [GPT2Decoder(policy.model)] + ([GPT2Decoder(values.trunk)] if guided else [])
            last = [d.prefill(ids, attn, pos, max_new_tokens) for d in decoders]
        for t in range(max_new_tokens):
            if cached:
                rows = torch.tensor(alive)
                logits, h = last[0][rows], (last[1][rows] if guided else None)
            else:
                ids, attn = pad_tokens([prompts[i] + out[i] for i in alive], pad)
                end = (torch.arange(len(alive)), attn.sum(-1) - 1)
                logits = policy.model(input_ids=ids, attention_mask=attn).logits[end].float()
                h = values.hidden(ids, attn)[end] if guided else None
            for i, tok in zip(alive, pick(logits, h)):
                out[i].append(tok)
            alive = [i for i in alive if out[i][-1] != eos]
            if not alive or t == max_new_tokens - 1:
                break
            if cached:  # every row steps (finished rows' outputs are never read again)
                pos = pos[:, -1:] + 1
                tokens = torch.tensor([o[-1] for o in out])
                last = [d.step(tokens, pos) for d in decoders]
        return [policy.decode(ids) for ids in out]

    return act


def train_offline(method: str, run: Run, policy: LanguagePolicy, episodes: list[TextEpisode], bc: OptimConfig,
                  values: ValueConfig | None = None, fraction: float = 0.1,
                  generator: torch.Generator | None = None, bc_done: bool = False) -> Actor:
    """Train one of :data:`METHODS` on ``episodes`` (``policy`` is trained in place: BC on all episodes, or on
    the top ``fraction`` for filtered BC) and return its actor: the policy, or the BC policy guided by the
    value model for "mc" and "ilql". With ``bc_done`` the value methods take ``policy`` as the BC policy
    already trained on ``episodes`` and skip BC (so several methods can guide one BC policy)."""
    if method not in METHODS:
        raise ValueError(f"offline method must be one of {', '.join(METHODS)}, got {method!r}")
    values = values or ValueConfig()
    turns = values.context_turns
    if not (bc_done and method in ("mc", "ilql")):
        train_bc(run, "bc", policy, episodes, bc, turns, values.seed, fraction if method == "filtered_bc" else 1.0)
    if method in ("bc", "filtered_bc"):
        return guided_actor(policy, context_turns=turns, generator=generator)
    model = train_values(run, method, policy, episodes, values, method)
    return guided_actor(policy, model, values.beta, turns, generator=generator)
