"""Per-step tensors: the one type every objective consumes.

A language-model response of T tokens and a control episode of T actions are the
same thing to an objective: a ``[batch, steps]`` grid of log-probabilities under the
policy, optionally under a frozen reference and a behaviour policy, a mask of real
steps, and where they exist per-step rewards and values. Losses never see tokens or
joint angles, only this.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor

_OPTIONAL = ("ref_logps", "old_logps", "rewards", "values")


@dataclass
class Steps:
    """A batch of step sequences, every tensor shaped ``[batch, steps]``.

    ``mask`` is 1.0 on real steps and 0.0 on padding; padded entries of the other
    tensors may hold anything (even NaN) and are never read by the reductions.
    """

    logps: Tensor
    mask: Tensor
    ref_logps: Tensor | None = None
    old_logps: Tensor | None = None
    rewards: Tensor | None = None
    values: Tensor | None = None

    def __post_init__(self) -> None:
        if self.logps.dim() != 2:
            raise ValueError(f"Steps.logps must be [batch, steps], got shape {tuple(self.logps.shape)}")
        self.mask = self.mask.to(self.logps.dtype)
        for name in ("mask",) + _OPTIONAL:
            t = getattr(self, name)
            if t is not None and t.shape != self.logps.shape:
                raise ValueError(
                    f"Steps.{name} has shape {tuple(t.shape)}, expected {tuple(self.logps.shape)} like logps"
                )

    # -- shape ------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return self.logps.shape[0]

    @property
    def num_steps(self) -> int:
        return self.logps.shape[1]

    def lengths(self) -> Tensor:
        """Number of real steps per sequence, ``[batch]``."""
        return self.mask.sum(-1)

    # -- reductions -------------------------------------------------------
    def _field(self, x: Tensor | str | None) -> Tensor:
        if x is None:
            return self.logps
        if isinstance(x, str):
            t = getattr(self, x)
            if t is None:
                raise ValueError(f"Steps.{x} is not set; this objective needs it")
            return t
        return x

    def masked(self, x: Tensor | str | None = None) -> Tensor:
        """``x`` with padded steps set to exactly zero (NaN-safe), ``[batch, steps]``."""
        return torch.where(self.mask > 0, self._field(x), torch.zeros((), dtype=self.logps.dtype, device=self.logps.device))

    def sum(self, x: Tensor | str | None = None) -> Tensor:
        """Sum over real steps, ``[batch]``. ``x`` is a tensor, a field name, or logps."""
        return self.masked(x).sum(-1)

    def mean(self, x: Tensor | str | None = None) -> Tensor:
        """Mean over real steps, ``[batch]`` (a sequence with no steps gives 0)."""
        return self.sum(x) / self.lengths().clamp(min=1)

    def discounted_sum(self, x: Tensor | str | None = None, gamma: float = 1.0) -> Tensor:
        """``sum_t gamma^t x_t`` over real steps, t counted from each sequence's first real step, ``[batch]``."""
        t = (self.mask.cumsum(-1) - 1).clamp(min=0)
        return (self.masked(x) * gamma**t).sum(-1)

    def returns_to_go(self, x: Tensor | str = "rewards", gamma: float = 1.0) -> Tensor:
        """``G_t = sum_{k>=t} gamma^(k-t) x_k`` over real steps (0 on padding), ``[batch, steps]``."""
        v = self.masked(x)
        out = torch.zeros_like(v)
        running = torch.zeros_like(v[:, 0])
        for i in range(v.shape[1] - 1, -1, -1):
            m = self.mask[:, i]
            running = v[:, i] + gamma * running * m + running * (1 - m)
            out[:, i] = running * m
        return out

    # -- policy/reference -------------------------------------------------
    def logratio(self) -> Tensor:
        """Per-step ``log pi - log pi_ref`` with zeros on padding, ``[batch, steps]``."""
        return self.masked(self.logps - self._field("ref_logps"))

    def seq_logratio(self) -> Tensor:
        """``log pi(y|x) - log pi_ref(y|x)`` summed over the sequence, ``[batch]``."""
        return self.logratio().sum(-1)

    # -- plumbing ---------------------------------------------------------
    def replace(self, **changes) -> "Steps":
        return replace(self, **changes)

    def _map(self, fn) -> "Steps":
        kw = {f.name: (fn(getattr(self, f.name)) if getattr(self, f.name) is not None else None) for f in fields(self)}
        return Steps(**kw)

    def __getitem__(self, idx) -> "Steps":
        return self._map(lambda t: t[idx])

    def detach(self) -> "Steps":
        return self._map(Tensor.detach)

    def to(self, *args, **kwargs) -> "Steps":
        return self._map(lambda t: t.to(*args, **kwargs))

    @staticmethod
    def cat(parts: list["Steps"]) -> "Steps":
        """Concatenate along the batch, right-padding shorter step axes with masked zeros."""
        if not parts:
            raise ValueError("Steps.cat needs at least one Steps")
        width = max(p.num_steps for p in parts)
        names = [f.name for f in fields(Steps)]
        out = {}
        for name in names:
            ts = [getattr(p, name) for p in parts]
            if all(t is None for t in ts):
                out[name] = None
                continue
            if any(t is None for t in ts):
                raise ValueError(f"Steps.cat: field {name} is set on some parts and not others")
            out[name] = torch.cat([torch.nn.functional.pad(t, (0, width - t.shape[1])) for t in ts])
        return Steps(**out)
