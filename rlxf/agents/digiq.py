"""Digi-Q: a Q-function on frozen LM representations trained by TD on offline episodes, then Best-of-N
policy extraction (Bai, Zhou, Li, Levine, Kumar, "Digi-Q", arXiv 2502.15760).

1. A frozen copy of the (BC) policy is the encoder: a state is the last hidden state of its context, a
   state-action pair that of the context followed by the action's tokens.
2. Double Q and double V MLP heads on those features learn by TD on the offline turns:
   ``Q_i(s, a) <- r + gamma (1 - done) V'_i(s')`` and ``V_i(s) <- Q'_i(s, a_data)``, with Polyak-averaged
   target heads ``Q'``, ``V'`` (the paper's Bellman mode). No gradient reaches the LM, so the features are
   computed once.
3. Best-of-N: for each state of the data, ``n_candidates`` actions are sampled from the policy, the data's
   actions at that state are added, each is scored ``A = max(Q1, Q2) - max(V1, V2)`` (0 for an action the
   task cannot parse), and the policy imitates the argmax where its advantage, clamped to [0, 1], exceeds
   ``threshold``. The imitation is SFT on those (context, action) pairs through the shared loop.

Identical contexts (the same state) share one candidate set and one choice, so each is scored once.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor, nn

from rlxf.agents.episodes import TextEpisode
from rlxf.agents.offline import Turns, episode_turns
from rlxf.algorithms.control.targets import load_target_state, target_state
from rlxf.algorithms.loop import OptimConfig, single_learner, train
from rlxf.algorithms.sft import train_sft
from rlxf.core.runs import Run
from rlxf.objectives.agents import best_of_n_advantage, best_of_n_choice, double_regression_loss, td_targets
from rlxf.policies.control import mlp
from rlxf.policies.language import LanguagePolicy
from rlxf.policies.logprobs import chunks, pad_tokens


@dataclass
class DigiQConfig:
    """Digi-Q's settings (the paper: gamma 0.95, soft update 0.1, N = 16, threshold 0.1 on AitW General)."""

    critic: OptimConfig = field(default_factory=lambda: OptimConfig(steps=1500, batch_size=256, lr=2e-3,
                                                                     checkpoint_every=0))
    actor: OptimConfig = field(default_factory=lambda: OptimConfig(steps=100, batch_size=64, lr=3e-3,
                                                                    checkpoint_every=0))
    gamma: float = 0.95
    polyak: float = 0.1
    hidden: int = 64
    n_candidates: int = 16
    threshold: float = 0.1
    context_turns: int | None = None
    max_new_tokens: int = 8
    seed: int = 0


def unique_rows(rows: list[list[int]]) -> tuple[list[list[int]], list[int]]:
    """The distinct rows in first-seen order and, per row, the index of its distinct copy."""
    seen: dict[tuple[int, ...], int] = {}
    index = [seen.setdefault(tuple(r), len(seen)) for r in rows]
    return [list(r) for r in seen], index


@torch.no_grad()
def frozen_features(encoder: LanguagePolicy, rows: list[list[int]], batch: int = 512) -> Tensor:
    """The encoder's last hidden states over each row, mean-pooled, and at its last token, ``[len(rows),
    2 hidden]`` (no gradient). Both: where the next token is the same in every state (a fixed first action
    word), the last token's state need not tell states apart, and the mean over the row does."""
    pad = encoder.tokenizer.pad_token_id
    out = []
    for part in chunks(len(rows), batch):
        ids, attn = pad_tokens(rows[part], pad)
        h = encoder.model.base_model(input_ids=ids, attention_mask=attn).last_hidden_state.float()
        mean = (h * attn.unsqueeze(-1)).sum(1) / attn.sum(-1, keepdim=True)
        out.append(torch.cat([mean, h[torch.arange(ids.shape[0]), attn.sum(-1) - 1]], -1))
    return torch.cat(out)


def pair_features(encoder: LanguagePolicy, contexts: list[list[int]], actions: list[list[int]]) -> Tensor:
    """State-action features ``[phi(context + action) ; phi(context)]``, ``[n, 4 hidden]``: the action is read
    at its last word (a trailing EOS is dropped; the hidden state there says little about the action)."""
    eos = encoder.tokenizer.eos_token_id
    words = [a[:-1] if len(a) > 1 and a[-1] == eos else a for a in actions]
    return torch.cat([frozen_features(encoder, [c + a for c, a in zip(contexts, words)]),
                      frozen_features(encoder, contexts)], -1)


class Critic(nn.Module):
    """Double Q heads on state-action features, double V heads on state features, and their targets."""

    def __init__(self, pair_dim: int, state_dim: int, hidden: int):
        super().__init__()
        self.q = nn.ModuleList([mlp(pair_dim, 1, hidden, 1.0) for _ in range(2)])
        self.v = nn.ModuleList([mlp(state_dim, 1, hidden, 1.0) for _ in range(2)])
        self.q_target = copy.deepcopy(self.q).requires_grad_(False)
        self.v_target = copy.deepcopy(self.v).requires_grad_(False)
        for name, dim in (("pair", pair_dim), ("state", state_dim)):  # feature standardisation (set_scale)
            self.register_buffer(f"{name}_mean", torch.zeros(dim))
            self.register_buffer(f"{name}_std", torch.ones(dim))

    def set_scale(self, phi_sa: Tensor, phi_s: Tensor) -> None:
        """Standardise the features by the data's mean and deviation: raw hidden states are large enough
        to saturate the heads' tanh units."""
        for name, x in (("pair", phi_sa), ("state", phi_s)):
            getattr(self, f"{name}_mean").copy_(x.mean(0))
            getattr(self, f"{name}_std").copy_(x.std(0).clamp(min=1e-3))

    @torch.no_grad()
    def polyak(self, rate: float) -> None:
        for target, source in ((self.q_target, self.q), (self.v_target, self.v)):
            for t, s in zip(target.parameters(), source.parameters()):
                t.lerp_(s, rate)

    def heads(self, heads: nn.ModuleList, x: Tensor) -> tuple[Tensor, Tensor]:
        """Both heads of a pair (``q``, ``v`` or their targets) on raw features, ``[B]`` each."""
        name = "pair" if heads is self.q or heads is self.q_target else "state"
        x = (x - getattr(self, f"{name}_mean")) / getattr(self, f"{name}_std")
        return heads[0](x).squeeze(-1), heads[1](x).squeeze(-1)

    @torch.no_grad()
    def advantage(self, phi_sa: Tensor, phi_s: Tensor) -> Tensor:
        return best_of_n_advantage(*self.heads(self.q, phi_sa), *self.heads(self.v, phi_s))


def critic_losses(critic: Critic, phi_sa: Tensor, phi_s: Tensor, phi_next: Tensor, rewards: Tensor, done: Tensor,
                  gamma: float) -> dict[str, Tensor]:
    """Digi-Q's TD losses per transition, ``[B]`` each: Q_i towards ``r + gamma (1 - done) V'_i(s')``, V_i
    towards ``Q'_i(s, a_data)``."""
    with torch.no_grad():
        discounts = torch.full_like(rewards, gamma)
        q_targets = tuple(td_targets(rewards, v, discounts, done) for v in critic.heads(critic.v_target, phi_next))
        v_targets = critic.heads(critic.q_target, phi_sa)
    return {"q": double_regression_loss(critic.heads(critic.q, phi_sa), q_targets),
            "v": double_regression_loss(critic.heads(critic.v, phi_s), v_targets)}


def train_critic(run: Run, stage: str, encoder: LanguagePolicy, turns: Turns, cfg: DigiQConfig,
                 quiet: bool = True) -> Critic:
    """Fit the critic by TD on every turn, on frozen features computed once."""
    pairs, sa_idx = unique_rows([[len(c)] + c + a for c, a in zip(turns.contexts, turns.actions)])
    states, s_idx = unique_rows(turns.contexts + turns.next_contexts)
    f_sa = pair_features(encoder, [p[1 : 1 + p[0]] for p in pairs], [p[1 + p[0]:] for p in pairs])
    f_s = frozen_features(encoder, states)
    n = len(turns)
    phi_sa, phi_s, phi_next = f_sa[sa_idx], f_s[s_idx[:n]], f_s[s_idx[n:]]
    rewards, done = torch.tensor(turns.rewards), torch.tensor(turns.done, dtype=torch.float32)
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        critic = Critic(phi_sa.shape[1], phi_s.shape[1], cfg.hidden)
    critic.set_scale(phi_sa, phi_s)

    def make_batch(step: int) -> list[int]:
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        return torch.randint(0, n, (cfg.critic.batch_size,), generator=g).tolist()

    def loss_fn(micro: list[int], batch: list[int]):
        if micro[0] == batch[0]:  # once per optimiser step, in its first micro-batch
            critic.polyak(cfg.polyak)
        i = torch.tensor(micro)
        parts = critic_losses(critic, phi_sa[i], phi_s[i], phi_next[i], rewards[i], done[i], cfg.gamma)
        loss = sum(p.sum() for p in parts.values()) / len(batch)
        return loss, {k: v.sum().item() / len(batch) for k, v in parts.items()}

    single_learner(run, stage, "Digi-Q moves its target heads once per step, in the batch's first micro-batch")
    train(run, stage, critic, cfg.critic, make_batch, loss_fn, quiet=quiet, extra_state=lambda: target_state(critic),
          on_resume=lambda state: load_target_state(critic, state))
    return critic


def best_of_n_pairs(policy: LanguagePolicy, encoder: LanguagePolicy, critic: Critic, turns: Turns, cfg: DigiQConfig,
                    valid: Callable[[str], bool], generator: torch.Generator | None = None
                    ) -> tuple[list[list[int]], list[list[int]]]:
    """The (context, action) pairs Best-of-N imitates: per distinct state, the candidates (``n_candidates``
    samples from ``policy`` plus the data's actions there), the argmax of the advantage, kept where it
    clears the threshold; one pair per turn of the data whose state was kept."""
    states, s_idx = unique_rows(turns.contexts)
    cands: list[set[tuple[int, ...]]] = [set() for _ in states]
    for i, a in zip(s_idx, turns.actions):
        cands[i].add(tuple(a))
    ro = policy.sample(states, cfg.n_candidates, max_new_tokens=cfg.max_new_tokens, generator=generator)
    for k, r in enumerate(ro.response_ids):
        cands[k // cfg.n_candidates].add(tuple(r))
    options = [sorted(c) for c in cands]
    width = max(map(len, options))
    flat = [(s, list(a)) for s, opts in enumerate(options) for a in opts]
    phi_sa = pair_features(encoder, [states[s] for s, _ in flat], [a for _, a in flat])
    phi_s = frozen_features(encoder, states)
    adv = torch.zeros(len(states), width)
    ok = torch.zeros(len(states), width, dtype=torch.bool)
    present = torch.zeros(len(states), width, dtype=torch.bool)
    scores = critic.advantage(phi_sa, phi_s[torch.tensor([s for s, _ in flat])])
    col = 0
    for k, (s, a) in enumerate(flat):
        col = 0 if k == 0 or flat[k - 1][0] != s else col + 1
        adv[s, col], present[s, col], ok[s, col] = scores[k], True, valid(policy.decode(a))
    idx, keep = best_of_n_choice(adv, ok, present, cfg.threshold)
    contexts, actions = [], []
    for t, s in enumerate(s_idx):
        if keep[s]:
            contexts.append(turns.contexts[t])
            actions.append(list(options[s][idx[s]]))
    return contexts, actions


def train_digiq(run: Run, policy: LanguagePolicy, episodes: list[TextEpisode], cfg: DigiQConfig,
                valid: Callable[[str], bool], generator: torch.Generator | None = None, quiet: bool = True) -> dict:
    """Digi-Q on ``episodes``: the encoder is a frozen copy of ``policy`` as given (e.g. after BC), the
    critic learns by TD, and ``policy`` then imitates its Best-of-N choices for ``cfg.actor.steps`` steps.
    ``valid(text)`` says whether the task can parse an action. Returns what was kept and the critic."""
    encoder = policy.reference()
    turns = episode_turns(policy, episodes, cfg.context_turns, cfg.gamma)
    critic = train_critic(run, "digiq_critic", encoder, turns, cfg, quiet)
    contexts, actions = best_of_n_pairs(policy, encoder, critic, turns, cfg, valid, generator)
    if not contexts:
        raise ValueError(f"Digi-Q: no state's best candidate clears the threshold {cfg.threshold}; lower it")
    train_sft(run, "digiq_actor", policy, contexts, actions, cfg.actor, cfg.seed, quiet=quiet)
    return {"critic": critic, "kept_turns": len(contexts), "turns": len(turns)}
