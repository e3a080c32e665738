"""Learned rewards for control: an MLP scalar head over (observation, action) steps, and ensembles.

A segment's predicted return is the sum of per-step rewards over its real steps (padding past a
termination contributes exactly 0, like the absorbing state it stands for), and a pair is compared
by Bradley-Terry on those sums (Christiano et al., "Deep RL from Human Preferences", 2017). An
ensemble of independently initialised members, each fit on its own bootstrap resample, gives the
mean reward, a disagreement signal for active queries, and posterior-like samples for randomised
exploration.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rlxf.data.transitions import Episode
from rlxf.policies.control import single_thread
from rlxf.rewards.model import bradley_terry_loss


@dataclass
class Segments:
    """A batch of fixed-length segments: ``obs [B, H, d]``, ``actions [B, H]`` (long) or ``[B, H, a]``,
    ``mask [B, H]`` (0 past an episode's termination), ``gold [B, H]`` the hidden env reward (0 on padding)."""

    obs: Tensor
    actions: Tensor
    mask: Tensor
    gold: Tensor

    def __getitem__(self, idx) -> "Segments":
        return Segments(self.obs[idx], self.actions[idx], self.mask[idx], self.gold[idx])

    def __len__(self) -> int:
        return self.obs.shape[0]

    @staticmethod
    def cat(parts: list["Segments"]) -> "Segments":
        return Segments(*(torch.cat([getattr(p, f) for p in parts]) for f in ("obs", "actions", "mask", "gold")))

    def gold_returns(self) -> Tensor:
        """Summed gold reward over real steps, ``[B]``: what a simulated labeler compares."""
        return (self.gold * self.mask).sum(-1)


class StepReward(nn.Module):
    """``r(s, a)``: a two-layer MLP on the observation and the (one-hot, if discrete) action."""

    def __init__(self, obs_dim: int, action_dim: int, discrete: bool, hidden: int = 64):
        super().__init__()
        self.action_dim, self.discrete = action_dim, discrete
        self.body = nn.Sequential(nn.Linear(obs_dim + action_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, 1)

    def _inputs(self, obs: Tensor, actions: Tensor) -> Tensor:
        a = F.one_hot(actions.long().clamp(min=0), self.action_dim).float() if self.discrete else actions.float()
        return torch.cat([obs.float(), a], dim=-1)

    def features(self, obs: Tensor, actions: Tensor) -> Tensor:
        """The last hidden layer, ``[..., hidden]``: the features the linear head reads."""
        return self.body(self._inputs(obs, actions))

    def forward(self, obs: Tensor, actions: Tensor) -> Tensor:
        return self.head(self.features(obs, actions)).squeeze(-1)

    def segment_returns(self, seg: Segments) -> Tensor:
        """Predicted return of each segment, ``[B]``; padded steps contribute 0 (NaN-safe)."""
        obs = torch.where(seg.mask[..., None] > 0, seg.obs, torch.zeros(()))
        return torch.where(seg.mask > 0, self(obs, seg.actions), torch.zeros(())).sum(-1)


class SegmentRewardEnsemble(nn.Module):
    """``n_members`` :class:`StepReward` models trained on bootstrap resamples of the same comparisons."""

    def __init__(self, obs_dim: int, action_dim: int, discrete: bool, n_members: int = 3, hidden: int = 64, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.members = nn.ModuleList(StepReward(obs_dim, action_dim, discrete, hidden) for _ in range(n_members))
        self.gen = torch.Generator().manual_seed(seed)
        self.scale = 1.0

    def __len__(self) -> int:
        return len(self.members)

    @torch.no_grad()
    def step_rewards(self, obs: Tensor, actions: Tensor, member: int | None = None) -> Tensor:
        """Per-step reward ``[...]``: the ensemble mean, or one ``member``, divided by ``self.scale``."""
        if member is not None:
            return self.members[member](obs, actions) / self.scale
        return torch.stack([m(obs, actions) for m in self.members]).mean(0) / self.scale

    @torch.no_grad()
    def segment_returns(self, seg: Segments) -> Tensor:
        """Each member's predicted segment returns, ``[K, B]`` (unscaled)."""
        return torch.stack([m.segment_returns(seg) for m in self.members])

    @torch.no_grad()
    def pair_disagreement(self, a: Segments, b: Segments) -> Tensor:
        """Std over members of ``P(a > b) = sigma(R_a - R_b)``, ``[B]`` (Christiano et al. 2017)."""
        return torch.sigmoid(self.segment_returns(a) - self.segment_returns(b)).std(0)

    @torch.no_grad()
    def segment_features(self, seg: Segments) -> Tensor:
        """Mean over real steps of member 0's last hidden layer, ``[B, hidden]``."""
        f = self.members[0].features(torch.where(seg.mask[..., None] > 0, seg.obs, torch.zeros(())), seg.actions)
        return (f * seg.mask[..., None]).sum(1) / seg.mask.shape[1]

    def fit(self, first: Segments, second: Segments, label: Tensor, steps: int = 100, lr: float = 1e-3,
            batch_size: int = 64) -> float:
        """``steps`` Adam steps of Bradley-Terry per member, each on minibatches of its own bootstrap
        resample of the pairs (warm-started: call again as data grows).

        ``label [N]`` is 1.0 where ``first`` was preferred (0.5 for a tie). Returns the last
        minibatch loss. ``self.scale`` becomes the RMS per-step reward on the labelled segments, so
        ``step_rewards`` hands the agent rewards of order 1 with their sign (and the 0 of padding) intact.
        """
        with single_thread():
            return self._fit(first, second, label, steps, lr, batch_size)

    def _fit(self, first: Segments, second: Segments, label: Tensor, steps: int, lr: float, batch_size: int) -> float:
        n, last = len(label), 0.0
        for member in self.members:
            opt = torch.optim.Adam(member.parameters(), lr=lr)
            boot = torch.randint(0, n, (n,), generator=self.gen)
            for _ in range(steps):
                idx = boot[torch.randint(0, n, (min(batch_size, n),), generator=self.gen)]
                ra, rb = member.segment_returns(first[idx]), member.segment_returns(second[idx])
                y = label[idx].float()
                loss = (y * bradley_terry_loss(ra, rb) + (1 - y) * bradley_terry_loss(rb, ra)).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                last = loss.item()
        with torch.no_grad():
            both = Segments.cat([first, second])
            obs = torch.where(both.mask[..., None] > 0, both.obs, torch.zeros(()))
            r = torch.stack([m(obs, both.actions) for m in self.members]).mean(0)
            self.scale = float(((r**2 * both.mask).sum() / both.mask.sum()).sqrt().clamp(min=1e-6))
        return last


def sample_segments(episodes: list[Episode], n: int, length: int, gen: torch.Generator,
                    by_length: bool = False) -> Segments:
    """``n`` windows of ``length`` steps from random episodes, padded (mask 0, reward 0) past their end.

    Episodes are drawn uniformly, or in proportion to their length with ``by_length`` (so each step of
    a dataset is about equally likely to be seen).
    """
    obs_dim = episodes[0].obs.shape[-1]
    act_shape = tuple(episodes[0].actions.shape[1:])
    obs, act = torch.zeros(n, length, obs_dim), torch.zeros((n, length) + act_shape, dtype=episodes[0].actions.dtype)
    mask, gold = torch.zeros(n, length), torch.zeros(n, length)
    if by_length:
        lengths = torch.tensor([float(len(e)) for e in episodes])
        picks = torch.multinomial(lengths, n, replacement=True, generator=gen).tolist()
    else:
        picks = torch.randint(0, len(episodes), (n,), generator=gen).tolist()
    for i, e in enumerate(picks):
        ep = episodes[e]
        start = int(torch.randint(0, max(1, len(ep) - length + 1), (1,), generator=gen))
        k = min(length, len(ep) - start)
        obs[i, :k], act[i, :k] = ep.obs[start : start + k], ep.actions[start : start + k]
        mask[i, :k], gold[i, :k] = 1.0, ep.rewards[start : start + k]
    return Segments(obs, act, mask, gold)
