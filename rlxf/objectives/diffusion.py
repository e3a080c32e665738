"""Score-based (EDM-style) diffusion: noise levels, preconditioning, the denoising loss, one sampler step
and the two guidance rules, each a named function shared by BESO and Policy-Guided Diffusion.

Karras et al.'s parameterisation (variance exploding: ``x_sigma = x + sigma * eps``): a network ``F`` is
wrapped as the denoiser ``D(x; sigma) = c_skip x + c_out F(c_in x, c_noise)`` with
``c_skip = sd^2 / (sigma^2 + sd^2)``, ``c_out = sigma sd / sqrt(sigma^2 + sd^2)``, ``c_in = 1 / sqrt(sigma^2 + sd^2)``
and ``c_noise = log(sigma) / 4`` (``sd`` the data's standard deviation), and is trained so that ``F`` hits the
effective target ``(x - c_skip x_sigma) / c_out``: the same as weighting ``||D - x||^2`` by ``1 / c_out^2``.
Sampling runs the probability-flow ODE from ``sigma_max`` to 0 on a Karras grid (``karras_sigmas``);
``ddim_step`` is its deterministic first-order step.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def edm_scalings(sigma: Tensor, sigma_data: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(c_skip, c_out, c_in, c_noise)`` for noise levels ``sigma`` (any shape)."""
    var = sigma**2 + sigma_data**2
    return sigma_data**2 / var, sigma * sigma_data / var.sqrt(), 1.0 / var.sqrt(), sigma.log() / 4


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float) -> Tensor:
    """``n`` noise levels from ``sigma_max`` down to ``sigma_min`` spaced evenly in ``sigma^(1/rho)``, then 0:
    ``[n + 1]``."""
    if n < 1:
        raise ValueError(f"sampler steps = {n}: expected at least 1")
    ramp = torch.linspace(0, 1, n) if n > 1 else torch.zeros(1)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return torch.cat([(hi + ramp * (lo - hi)) ** rho, torch.zeros(1)])


def log_logistic_sigmas(n: int, loc: float, scale: float, sigma_min: float, sigma_max: float,
                        generator: torch.Generator | None = None) -> Tensor:
    """Training noise levels with ``log sigma ~ Logistic(loc, scale)`` truncated to ``[sigma_min, sigma_max]``
    (BESO's training density), drawn by inverting the CDF between the two ends."""
    cdf = lambda s: torch.sigmoid(torch.tensor((math.log(s) - loc) / scale))  # noqa: E731
    u = cdf(sigma_min) + torch.rand(n, generator=generator) * (cdf(sigma_max) - cdf(sigma_min))
    return (loc + scale * torch.logit(u)).exp()


def log_normal_sigmas(n: int, p_mean: float, p_std: float, generator: torch.Generator | None = None) -> Tensor:
    """Training noise levels with ``log sigma ~ N(p_mean, p_std^2)`` (EDM's training density)."""
    return (p_mean + p_std * torch.randn(n, generator=generator)).exp()


def denoising_loss(f_out: Tensor, x: Tensor, noised: Tensor, sigma: Tensor, sigma_data: float) -> Tensor:
    """Per-sample EDM loss ``mean_dims (F - (x - c_skip x_sigma) / c_out)^2`` with ``F`` the raw network
    output at ``c_in x_sigma`` and ``noised = x_sigma``; ``sigma`` is ``[B]``. Returns ``[B]``."""
    c_skip, c_out, _, _ = (c.view((-1,) + (1,) * (x.dim() - 1)) for c in edm_scalings(sigma, sigma_data))
    target = (x - c_skip * noised) / c_out
    return ((f_out - target) ** 2).flatten(1).mean(1)


def ddim_step(x: Tensor, denoised: Tensor, sigma: float, sigma_next: float) -> Tensor:
    """One deterministic DDIM step from noise level ``sigma`` to ``sigma_next``: in this parameterisation the
    Euler step of the probability-flow ODE, ``x + (sigma_next - sigma) (x - D) / sigma``
    ``= (sigma_next / sigma) x + (1 - sigma_next / sigma) D``."""
    ratio = sigma_next / sigma
    return ratio * x + (1 - ratio) * denoised


def classifier_free(d_uncond: Tensor, d_cond: Tensor, weight: float) -> Tensor:
    """Classifier-free guidance of the denoised estimate: ``D_u + w (D_c - D_u)`` (``w = 1`` conditional,
    ``w = 0`` unconditional, ``w > 1`` pushes further toward the condition)."""
    return d_uncond + weight * (d_cond - d_uncond)


def pgd_guidance_scale(k: int, n_steps: int, coef: float, cos_coef: float = 0.3) -> float:
    """Policy-guided diffusion's coefficient at sampling step ``k`` of ``n_steps``:
    ``coef * ((1 - k / K) + cos_coef * sin(pi (k + 1) / K))``, and 0 at the last step."""
    if k >= n_steps - 1:
        return 0.0
    return coef * ((1 - k / n_steps) + cos_coef * math.sin(math.pi * (k + 1) / n_steps))


def unit_norm(grad: Tensor, eps: float = 1e-8) -> Tensor:
    """Each sample's gradient (all dims after the first) scaled to unit Euclidean norm."""
    norm = grad.flatten(1).norm(dim=1).clamp_min(eps)
    return grad / norm.view((-1,) + (1,) * (grad.dim() - 1))
