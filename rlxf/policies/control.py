"""Tiny control policies and a critic: MLPs that turn observations into ``Steps``.

An episode segment of T actions becomes the same ``[batch, steps]`` grid of log-probabilities a
language-model response does, so DPO, CPL or PPO train these with the losses the LMs use.
Shapes: observations ``[..., obs_dim]``; discrete actions ``[...]`` (long), continuous
``[..., act_dim]``; log-probs ``[...]`` (summed over action dimensions).
"""

from __future__ import annotations

import contextlib
import copy
import math

import torch
from torch import Tensor, nn

from rlxf.core.steps import Steps


def mlp(inp: int, out: int, hidden: int, out_gain: float) -> nn.Sequential:
    """Two tanh hidden layers, orthogonal init, small last layer (the usual PPO recipe).

    The init runs on one thread: the QR behind ``orthogonal_`` gives different bits for a square
    ``hidden x hidden`` matrix at 1 and at 2+ intra-op threads, so a seed would otherwise give a
    different network in a process with a different thread count (cores, affinity, OMP_NUM_THREADS).
    """
    layers = [nn.Linear(inp, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, out)]
    with single_thread():
        for layer in layers:
            if isinstance(layer, nn.Linear):
                nn.init.orthogonal_(layer.weight, gain=out_gain if layer is layers[-1] else math.sqrt(2))
                nn.init.zeros_(layer.bias)
    return nn.Sequential(*layers)


_mlp = mlp  # the name the policies below use


def _pad_safe(x: Tensor, mask: Tensor, fill) -> Tensor:
    """``x`` with padded positions (mask 0, broadcast over trailing dims) replaced by ``fill``.

    Padding may hold NaN; a NaN input row poisons weight gradients even when its output is
    masked, so it must never reach the network.
    """
    m = (mask > 0).reshape(mask.shape + (1,) * (x.dim() - mask.dim()))
    return torch.where(m, x, torch.as_tensor(fill, dtype=x.dtype, device=x.device))


class _MLPPolicy(nn.Module):
    """Shared ``act`` / ``steps`` plumbing; subclasses define ``distribution(obs)``."""

    def distribution(self, obs: Tensor) -> torch.distributions.Distribution:
        raise NotImplementedError

    def log_prob(self, obs: Tensor, actions: Tensor) -> Tensor:
        """``log pi(a|s)``, shape ``obs.shape[:-1]``."""
        raise NotImplementedError

    def _sample(self, obs: Tensor, generator: torch.Generator | None) -> Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def greedy(self, obs: Tensor) -> Tensor:
        """The most likely action (argmax logits, or the Gaussian mean): deterministic evaluation."""
        raise NotImplementedError

    def entropy(self, obs: Tensor) -> Tensor:
        """Entropy of ``pi(.|s)``, shape ``obs.shape[:-1]``."""
        return self.distribution(obs).entropy()

    @torch.no_grad()
    def act(self, obs: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Sample ``(action, logp)`` for a batch of observations, without gradient (rollouts)."""
        return self._sample_logp(obs, generator)

    def _sample_logp(self, obs: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        action = self._sample(obs, generator)
        return action, self.log_prob(obs, action)

    def steps(self, obs: Tensor, actions: Tensor, mask: Tensor, ref: nn.Module | None = None, **fields) -> Steps:
        """``Steps`` of the given actions: ``obs [B, T, obs_dim]``, ``mask [B, T]``.

        ``logps`` carry gradient; ``ref_logps`` come from ``ref`` (any policy with ``log_prob``)
        under no_grad. Extra ``fields`` (``old_logps``, ``rewards``, ``values``) pass through.
        """
        obs = _pad_safe(obs, mask, 0.0)
        actions = _pad_safe(actions, mask, 0)
        ref_logps = None
        if ref is not None:
            with torch.no_grad():
                ref_logps = ref.log_prob(obs, actions)
        return Steps(logps=self.log_prob(obs, actions), mask=mask, ref_logps=ref_logps, **fields)

    def frozen_copy(self) -> "_MLPPolicy":
        """A deep copy with gradients off and in eval mode: a reference policy."""
        ref = copy.deepcopy(self).eval()
        ref.requires_grad_(False)
        return ref


class CategoricalMLPPolicy(_MLPPolicy):
    """Discrete actions: ``pi(a|s) = softmax(MLP(s))_a``."""

    def __init__(self, obs_dim: int, n_actions: int, hidden: int = 64):
        super().__init__()
        self.net = _mlp(obs_dim, n_actions, hidden, out_gain=0.01)

    def logits(self, obs: Tensor) -> Tensor:
        return self.net(obs)

    def distribution(self, obs: Tensor) -> torch.distributions.Categorical:
        return torch.distributions.Categorical(logits=self.logits(obs))

    def log_prob(self, obs: Tensor, actions: Tensor) -> Tensor:
        logp = torch.log_softmax(self.logits(obs), dim=-1)
        return logp.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)

    def _sample(self, obs: Tensor, generator: torch.Generator | None) -> Tensor:
        return self._sample_logp(obs, generator)[0]

    def _sample_logp(self, obs: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        logp = torch.log_softmax(self.logits(obs), dim=-1)  # one forward for the action and its log-prob
        flat = logp.exp().reshape(-1, logp.shape[-1])
        action = torch.multinomial(flat, 1, generator=generator).reshape(logp.shape[:-1])
        return action, logp.gather(-1, action.unsqueeze(-1)).squeeze(-1)

    @torch.no_grad()
    def greedy(self, obs: Tensor) -> Tensor:
        return self.logits(obs).argmax(-1)


class GaussianMLPPolicy(_MLPPolicy):
    """Continuous actions: ``a ~ N(MLP(s), diag(exp(log_std))^2)`` with a state-independent,
    learned ``log_std`` (initialised to 0). Actions are unbounded; clip them in the environment."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 64):
        super().__init__()
        self.net = _mlp(obs_dim, act_dim, hidden, out_gain=0.01)
        self.log_std = nn.Parameter(torch.zeros(act_dim))

    def mean(self, obs: Tensor) -> Tensor:
        return self.net(obs)

    def distribution(self, obs: Tensor) -> torch.distributions.Independent:
        mean = self.mean(obs)
        return torch.distributions.Independent(torch.distributions.Normal(mean, self.log_std.exp().expand_as(mean)), 1)

    def log_prob(self, obs: Tensor, actions: Tensor) -> Tensor:
        return self.distribution(obs).log_prob(actions)

    def _sample(self, obs: Tensor, generator: torch.Generator | None) -> Tensor:
        mean = self.mean(obs)
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
        return mean + self.log_std.exp() * noise

    @torch.no_grad()
    def greedy(self, obs: Tensor) -> Tensor:
        return self.mean(obs)


class MLPCritic(nn.Module):
    """State-value function ``V(s)``: ``obs [..., obs_dim] -> [...]``. With ``heads = K > 1`` it has one
    output per reward term on a shared trunk (multi-critic PPO): ``obs [..., obs_dim] -> [..., K]``."""

    def __init__(self, obs_dim: int, hidden: int = 64, heads: int = 1):
        super().__init__()
        self.heads = heads
        self.net = _mlp(obs_dim, heads, hidden, out_gain=1.0)

    def _out(self, x: Tensor) -> Tensor:
        return x.squeeze(-1) if self.heads == 1 else x

    def values(self, obs: Tensor, mask: Tensor | None = None) -> Tensor:
        """``V(s)`` per step, ``[B, T]`` for ``obs [B, T, obs_dim]``; with ``mask``, padding gives 0."""
        if mask is None:
            return self._out(self.net(obs))
        v = self._out(self.net(_pad_safe(obs, mask, 0.0)))
        m = mask if self.heads == 1 else mask[..., None]
        return torch.where(m > 0, v, torch.zeros((), dtype=v.dtype, device=v.device))

    def forward(self, obs: Tensor) -> Tensor:
        return self.values(obs)


class FlatParameters:
    """The parameters of some modules re-homed as views into one buffer, their gradients as
    views into another: zeroing, gradient clipping and an optimiser step then cost one op
    each instead of one per tensor, which matters for MLPs this small (PPO takes 20 such
    steps per rollout). Modules keep working as before; ``state_dict`` and ``load_state_dict``
    read and write through the views. Optimise ``[flat.param]``."""

    def __init__(self, *modules: nn.Module):
        params = [p for m in modules for p in m.parameters()]
        self.param = nn.Parameter(torch.cat([p.detach().reshape(-1) for p in params]))
        self.param.grad = torch.zeros_like(self.param)
        offset = 0
        for p in params:
            n = p.numel()
            p.data = self.param.data[offset : offset + n].view_as(p)
            p.grad = self.param.grad[offset : offset + n].view_as(p)
            offset += n

    def zero_grad(self) -> None:
        self.param.grad.zero_()

    def clip_grad_norm(self, max_norm: float) -> Tensor:
        """Scale the gradient to norm at most ``max_norm`` (as ``clip_grad_norm_``); the norm before."""
        norm = torch.linalg.vector_norm(self.param.grad)
        self.param.grad.mul_(torch.clamp(max_norm / (norm + 1e-6), max=1.0))
        return norm


def make_policy(obs_dim: int, action_dim: int, discrete: bool, hidden: int = 64) -> _MLPPolicy:
    """A categorical policy over ``action_dim`` actions, or a Gaussian one over ``action_dim`` dims."""
    return (CategoricalMLPPolicy if discrete else GaussianMLPPolicy)(obs_dim, action_dim, hidden)


@contextlib.contextmanager
def single_thread():
    """Run a block on one intra-op thread: tiny MLPs on small batches are fastest that way, and on a
    shared, busy machine several threads per process slow everything down many times over."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)
