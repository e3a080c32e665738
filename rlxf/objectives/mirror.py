"""Mirror-learning policy objectives: ``r A - D(r, A)`` with a hand-made or learned drift ``D``.

Kuba et al.'s mirror learning writes PPO's clipped surrogate as the ratio objective minus a drift,
``min(r A, clip(r) A) = r A - ReLU((r - clip(r)) A)``; Lu et al.'s LPO learns the drift instead, and
Jackson et al.'s TA-LPO gives it the training progress ``n / N`` too (notes: ALGORITHMS-control-prompts.md
section C7). A drift here is any function ``(ratio, adv, progress) -> D >= 0`` on equal-shaped tensors;
:func:`mirror_policy_loss` turns one into the loss a PPO-style learner minimises.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F


def mirror_policy_loss(ratio: Tensor, adv: Tensor, drift: Tensor) -> Tensor:
    """``-(r A - D)`` per sample (unreduced): the mirror-learning policy loss. ``adv`` is detached."""
    return -(ratio * adv.detach() - drift)


def clip_drift(ratio: Tensor, adv: Tensor, progress: float = 0.0, eps: float = 0.2) -> Tensor:
    """PPO's clip as a drift, ``ReLU((r - clip(r, 1 - eps, 1 + eps)) A)``: with it the mirror loss equals
    PPO's clipped surrogate loss, value and gradient."""
    return F.relu((ratio - ratio.clamp(1.0 - eps, 1.0 + eps)) * adv.detach())


def dpo_drift(ratio: Tensor, adv: Tensor, progress: float = 0.0, alpha: float = 2.0, beta: float = 0.6) -> Tensor:
    """The closed form distilled from a learned LPO drift ("Discovered Policy Optimisation"):
    ``ReLU((r-1)A - alpha tanh((r-1)A / alpha))`` for ``A >= 0`` and
    ``ReLU(log(r) A - beta tanh(log(r) A / beta))`` for ``A < 0``."""
    adv = adv.detach()
    pos = (ratio - 1.0) * adv
    neg = torch.log(ratio) * adv
    return torch.where(adv >= 0, F.relu(pos - alpha * torch.tanh(pos / alpha)), F.relu(neg - beta * torch.tanh(neg / beta)))


def drift_features(ratio: Tensor, adv: Tensor, progress: float | Tensor | None = None) -> Tensor:
    """LPO's drift input ``clip([log r, (log r)^2, 1 - r, (1 - r)^2, the same four times A], -2, 2)``,
    ``[..., 8]``; with ``progress`` (TA-LPO) ``[x, progress x]``, ``[..., 16]``. Every feature is 0 at
    ``r = 1``, so a bias-free network gives ``D(1, A) = 0``."""
    log_r, one = torch.log(ratio), 1.0 - ratio
    base = torch.stack([log_r, log_r**2, one, one**2], -1)
    x = torch.cat([base, base * adv.detach()[..., None]], -1).clamp(-2.0, 2.0)
    if progress is None:
        return x
    return torch.cat([x, torch.as_tensor(progress, dtype=x.dtype) * x], -1)
