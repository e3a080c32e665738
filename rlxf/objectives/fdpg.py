"""f-DPG: on-policy minimisation of an f-divergence to the KL-tilted target distribution.

Go et al., "Aligning Language Models with Preferences through f-divergence Minimization" (ICML
2023). The target is ``p(y) ∝ pi_ref(y) exp(r(y)/beta)``; with ``u = pi(y)/p(y)`` the gradient of
``D_f(pi || p)`` is ``E_{y~pi}[f'(u) grad log pi(y)]``. The normaliser Z of p is estimated by
importance sampling from the policy's own samples: ``Z ≈ mean_i pi_ref(y_i) exp(r_i/beta) / pi(y_i)``.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from rlxf.core.steps import Steps


def _fprime_reverse_kl(log_u: Tensor) -> Tensor:  # f(u) = u log u
    return log_u + 1


def _fprime_forward_kl(log_u: Tensor) -> Tensor:  # f(u) = -log u
    return -torch.exp(-log_u)


def _fprime_js(log_u: Tensor) -> Tensor:  # f(u) = u log u - (1 + u) log((1 + u)/2)
    return log_u - (torch.nn.functional.softplus(log_u) - math.log(2))


def _fprime_tv(log_u: Tensor) -> Tensor:  # f(u) = |u - 1| / 2
    return 0.5 * torch.sign(log_u)


F_PRIMES: dict[str, Callable[[Tensor], Tensor]] = {
    "reverse_kl": _fprime_reverse_kl, "forward_kl": _fprime_forward_kl, "js": _fprime_js, "tv": _fprime_tv,
}


def fdpg_log_u(steps: Steps, rewards: Tensor, beta: float, group: int = 0) -> Tensor:
    """``log(pi(y)/p(y))`` per sample, ``[B]``. ``log Z`` is estimated by importance sampling over each
    run of ``group`` consecutive samples (one prompt's samples; p depends on the prompt), or over
    the whole batch when ``group = 0``."""
    log_w = (rewards / beta - steps.seq_logratio()).detach()  # log [pi_ref exp(r/beta) / pi]
    k = group or len(log_w)
    if len(log_w) % k:
        raise ValueError(f"fdpg_log_u: batch of {len(log_w)} is not a whole number of groups of {k}")
    grouped = log_w.view(-1, k)
    log_z = torch.logsumexp(grouped, 1, keepdim=True) - math.log(k)
    return (log_z - grouped).reshape(-1)


def fdpg_loss(steps: Steps, rewards: Tensor, beta: float = 0.1, divergence: str = "reverse_kl",
              group: int = 0, baseline: bool = True) -> Tensor:
    """Per sample, ``[B]``: ``(f'(u) - b) * log pi(y)``, whose gradient estimates grad D_f(pi || p).

    ``divergence``: reverse_kl, forward_kl, js or tv; ``group`` as in :func:`fdpg_log_u`. With
    ``baseline`` the mean of f'(u) over each group is subtracted (less variance).
    """
    if divergence not in F_PRIMES:
        raise ValueError(f"fdpg_loss: unknown divergence {divergence!r}; expected one of {sorted(F_PRIMES)}")
    weight = F_PRIMES[divergence](fdpg_log_u(steps, rewards, beta, group))
    if baseline:
        k = group or len(weight)
        weight = (weight.view(-1, k) - weight.view(-1, k).mean(1, keepdim=True)).reshape(-1)
    return weight.detach() * steps.sum()
